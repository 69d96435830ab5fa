//! Where a live frame's milliseconds go on this board: capture → encoded (conversion, encoder,
//! parser) and encoded → sent (waiting for the viewer's task, packetizing, SRTP, the socket).
//!
//! Pure state: the pipeline and the sessions record durations, telemetry takes a summary of
//! each window and starts the next. Bounded, so a window nobody reads costs a fixed amount.
//! Each sample also goes into a histogram that lives as long as the process, for `/metrics`
//! ([`super::histograms`]): a scraper computes its own quantiles over whatever span it wants.

use serde::Serialize;
use std::time::Duration;

/// Samples kept per window: a minute of 30 fps for a few viewers. Beyond it the oldest half is
/// dropped, which keeps the summary about the recent past.
const CAPACITY: usize = 4096;

/// Durations recorded since the last [`LatencyWindow::take`].
#[derive(Debug, Default)]
pub struct LatencyWindow {
    micros: Vec<u32>,
}

/// Percentiles of one window, in milliseconds (three decimals: encoders on small boards take
/// single milliseconds, and loopback sends take less than one).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

impl LatencyWindow {
    pub fn record(&mut self, d: Duration) {
        if self.micros.len() >= CAPACITY {
            self.micros.drain(..CAPACITY / 2);
        }
        self.micros
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    /// The window's summary (None when nothing was recorded), and a fresh window.
    pub fn take(&mut self) -> Option<LatencySummary> {
        if self.micros.is_empty() {
            return None;
        }
        let mut v = std::mem::take(&mut self.micros);
        v.sort_unstable();
        let at = |q: f64| {
            let i = ((v.len() - 1) as f64 * q).round() as usize;
            f64::from(v[i]) / 1000.0
        };
        Some(LatencySummary {
            samples: v.len(),
            p50_ms: at(0.5),
            p95_ms: at(0.95),
            max_ms: at(1.0),
        })
    }
}

/// The stages rtcam measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Capture timestamp (the camera driver's, or the test pattern's) → encoded frame out.
    CaptureToEncoded,
    /// Encoded frame out → written to a viewer's connection, one sample per viewer and frame.
    EncodedToSent,
    /// Capture → written to a viewer's connection: the whole of rtcam's share of the latency.
    CaptureToSent,
}

impl Stage {
    pub const ALL: [Stage; 3] = [
        Stage::CaptureToEncoded,
        Stage::EncodedToSent,
        Stage::CaptureToSent,
    ];

    /// The name telemetry and `/metrics` use.
    pub fn name(self) -> &'static str {
        match self {
            Stage::CaptureToEncoded => "capture_to_encoded",
            Stage::EncodedToSent => "encoded_to_sent",
            Stage::CaptureToSent => "capture_to_sent",
        }
    }
}

/// One window per stage (telemetry's), and the histograms behind `/metrics`.
#[derive(Debug, Default)]
pub struct StageLatency {
    capture_to_encoded: std::sync::Mutex<LatencyWindow>,
    encoded_to_sent: std::sync::Mutex<LatencyWindow>,
    capture_to_sent: std::sync::Mutex<LatencyWindow>,
    /// Every sample since start, never reset: a scrape must not take what telemetry reads.
    pub histograms: super::histograms::LatencyHistograms,
}

/// One telemetry window of [`StageLatency`]; a stage with no sample is left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageSummary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_to_encoded: Option<LatencySummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoded_to_sent: Option<LatencySummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_to_sent: Option<LatencySummary>,
}

impl StageLatency {
    /// Takes every stage's window (telemetry calls this once per interval).
    pub fn take(&self) -> StageSummary {
        let take = |w: &std::sync::Mutex<LatencyWindow>| {
            w.lock().unwrap_or_else(|p| p.into_inner()).take()
        };
        StageSummary {
            capture_to_encoded: take(&self.capture_to_encoded),
            encoded_to_sent: take(&self.encoded_to_sent),
            capture_to_sent: take(&self.capture_to_sent),
        }
    }

    pub fn record(&self, stage: Stage, d: Duration) {
        let window = match stage {
            Stage::CaptureToEncoded => &self.capture_to_encoded,
            Stage::EncodedToSent => &self.encoded_to_sent,
            Stage::CaptureToSent => &self.capture_to_sent,
        };
        window.lock().unwrap_or_else(|p| p.into_inner()).record(d);
        self.histograms.observe(stage, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_window_then_a_fresh_one() {
        let mut w = LatencyWindow::default();
        assert_eq!(w.take(), None);
        for ms in 1..=100 {
            w.record(Duration::from_millis(ms));
        }
        let s = w.take().unwrap();
        assert_eq!(s.samples, 100);
        assert_eq!(s.p50_ms, 51.0);
        assert_eq!(s.p95_ms, 95.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(w.take(), None, "taking starts a new window");
    }

    #[test]
    fn a_window_nobody_reads_stays_bounded() {
        let mut w = LatencyWindow::default();
        for _ in 0..(CAPACITY * 3) {
            w.record(Duration::from_micros(1500));
        }
        w.record(Duration::from_secs(10));
        let s = w.take().unwrap();
        assert!(s.samples <= CAPACITY);
        assert_eq!(s.p50_ms, 1.5);
        assert_eq!(s.max_ms, 10_000.0, "the newest sample is kept");
    }
}
