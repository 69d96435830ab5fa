//! Telemetry: what the device is doing, published on `R/telemetry` every interval and pushed
//! to viewers' control channels. `/metrics` reads its figures live instead (src/metrics.rs).
//!
//! Rates are differences of counters between two samples; the process figures come from /proc
//! and the SoC temperature from /sys/class/thermal where the board has one.

use super::Publication;
use crate::board::soc_temperature;
use crate::media::latency::StageSummary;
use crate::media::Media;
use crate::session::table::Label;
use crate::session::{SessionInfo, Sessions};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Telemetry {
    pub uptime_secs: u64,
    /// Encoded frames per second leaving the pipeline.
    pub fps_in: f64,
    /// Frames per second each viewer was sent, averaged over viewers.
    pub fps_out: f64,
    /// Encoder output rate.
    pub bitrate_kbps: f64,
    /// The bitrate the encoder is set to: the configured one, or what bitrate adaptation
    /// chose from the viewers' feedback (each session's `estimate_kbps`).
    pub target_bitrate_kbps: u32,
    pub frames_total: u64,
    /// Frames viewers skipped (falling behind, waiting for a keyframe).
    pub frames_dropped: u64,
    pub pipeline_restarts: u64,
    /// Frames from the VP8 fallback encoder (viewers without H.264), apart from `frames_total`.
    pub vp8_frames_total: u64,
    pub viewers: usize,
    pub sessions: Vec<SessionInfo>,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    /// Tokio tasks alive in rtcam's runtime: sessions, their peers' tasks, MQTT, HTTP
    /// connections. A count that keeps rising while viewers come and go is a leak.
    pub tokio_tasks: usize,
    /// Open file descriptors (sockets, camera, pipes); like `tokio_tasks`, a leak shows here.
    pub open_fds: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    pub streaming: bool,
    /// Where a frame's time goes inside rtcam over the last interval (capture → encoded →
    /// sent); stages without a frame in the interval are left out.
    pub latency: StageSummary,
    /// Opus packets the microphone branch produced (0 without `[audio]`).
    pub audio_packets_total: u64,
    /// Samples (48 kHz) of viewers' microphones the board's talkback sink received.
    pub talkback_samples_total: u64,
}

/// Turns counters into rates between calls.
pub struct Sampler {
    media: Media,
    sessions: Sessions,
    started: Instant,
    last: Option<Sample>,
}

struct Sample {
    at: Instant,
    frames: u64,
    bytes: u64,
    cpu_ticks: u64,
    sent: HashMap<Label, u64>,
}

impl Sampler {
    pub fn new(media: Media, sessions: Sessions) -> Self {
        Self {
            media,
            sessions,
            started: Instant::now(),
            last: None,
        }
    }

    pub async fn sample(&mut self) -> Telemetry {
        let now = Instant::now();
        let stats = self.media.stats();
        let frames = stats.frames.load(Ordering::Relaxed);
        let bytes = stats.bytes.load(Ordering::Relaxed);
        let cpu_ticks = process_cpu_ticks().unwrap_or(0);
        let sessions = self.sessions.list().await;
        let sent: HashMap<Label, u64> = sessions.iter().map(|s| (s.label, s.frames_sent)).collect();
        let mut t = Telemetry {
            uptime_secs: self.started.elapsed().as_secs(),
            frames_total: frames,
            frames_dropped: sessions.iter().map(|s| s.frames_skipped).sum(),
            pipeline_restarts: stats.restarts.load(Ordering::Relaxed),
            vp8_frames_total: stats.vp8_frames.load(Ordering::Relaxed),
            viewers: sessions.len(),
            rss_bytes: process_rss_bytes().unwrap_or(0),
            tokio_tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            open_fds: open_fds().unwrap_or(0),
            temperature_c: soc_temperature(),
            streaming: self.media.info().borrow().streaming,
            target_bitrate_kbps: self.media.info().borrow().bitrate_kbps,
            latency: stats.latency.take(),
            audio_packets_total: self.media.audio_stats().packets.load(Ordering::Relaxed),
            talkback_samples_total: self
                .media
                .audio_stats()
                .talkback_samples
                .load(Ordering::Relaxed),
            ..Default::default()
        };
        if let Some(last) = &self.last {
            let secs = now.duration_since(last.at).as_secs_f64().max(1e-3);
            t.fps_in = round1((frames - last.frames) as f64 / secs);
            t.bitrate_kbps = round1((bytes - last.bytes) as f64 * 8.0 / 1000.0 / secs);
            // USER_HZ is 100 on every Linux architecture rtcam runs on.
            t.cpu_percent =
                round1((cpu_ticks.saturating_sub(last.cpu_ticks)) as f64 / 100.0 / secs * 100.0);
            let per_viewer: Vec<f64> = sent
                .iter()
                .filter_map(|(label, n)| {
                    last.sent
                        .get(label)
                        .map(|before| (n - before) as f64 / secs)
                })
                .collect();
            if !per_viewer.is_empty() {
                t.fps_out = round1(per_viewer.iter().sum::<f64>() / per_viewer.len() as f64);
            }
        }
        t.sessions = sessions;
        self.last = Some(Sample {
            at: now,
            frames,
            bytes,
            cpu_ticks,
            sent,
        });
        t
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Publishes telemetry every `interval` and keeps the latest for the control plane.
pub async fn run(
    mut sampler: Sampler,
    interval: Duration,
    topic: String,
    latest: watch::Sender<Telemetry>,
    publications: mpsc::Sender<Publication>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Cancel-safe: level-triggered token.
            _ = shutdown.cancelled() => break,
            // Cancel-safe: an interval tick fires again next turn if dropped.
            _ = tick.tick() => {}
        }
        let t = sampler.sample().await;
        if let Ok(body) = serde_json::to_vec(&t) {
            let _ = publications.try_send(Publication::new(topic.clone(), body, false));
        }
        latest.send_replace(t);
    }
}

fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readers_work_on_linux() {
        assert!(process_cpu_ticks().is_some());
        assert!(process_rss_bytes().unwrap() > 1024 * 1024);
        // stdin, stdout, stderr at least.
        assert!(open_fds().unwrap() >= 3);
    }
}
