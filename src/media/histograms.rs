//! The histograms behind `/metrics`' `rtcam_frame_latency_seconds`: every sample of
//! [`super::latency::StageLatency`] since start, never reset (a scrape must not take what
//! telemetry reads). The pipeline and the sessions record into them; src/metrics.rs registers
//! [`LatencyHistograms::family`] into each scrape's registry. The only `prometheus` user in
//! media, and it only counts: rendering stays in src/metrics.rs.

use super::latency::Stage;
use prometheus::{Histogram, HistogramOpts, HistogramVec};
use std::time::Duration;

/// Latency buckets in seconds: single milliseconds (a hardware encoder, a loopback send) up to
/// the seconds a stalled pipeline or a viewer far behind would show.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
];

/// Every frame's latency by stage since start: `rtcam_frame_latency_seconds{stage}`.
#[derive(Debug, Clone)]
pub struct LatencyHistograms {
    /// Registered into each scrape's registry (src/metrics.rs); the children below share its
    /// storage.
    pub family: HistogramVec,
    /// One child per stage in [`Stage::ALL`]'s order, so recording a frame looks up nothing.
    stages: [Histogram; 3],
}

impl Default for LatencyHistograms {
    fn default() -> Self {
        let opts = HistogramOpts::new(
            "rtcam_frame_latency_seconds",
            "Time a frame spends in rtcam, by stage: capture_to_encoded, encoded_to_sent \
             (one sample per viewer), capture_to_sent.",
        )
        .buckets(LATENCY_BUCKETS.to_vec());
        // Cannot fail: the name, the label and the buckets are constants that the tests below
        // register and render.
        let family = HistogramVec::new(opts, &["stage"]).expect("valid histogram options");
        let stages = Stage::ALL.map(|s| family.with_label_values(&[s.name()]));
        Self { family, stages }
    }
}

impl LatencyHistograms {
    pub fn observe(&self, stage: Stage, d: Duration) {
        let i = Stage::ALL
            .iter()
            .position(|s| *s == stage)
            .unwrap_or_default();
        self.stages[i].observe(d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    #[test]
    fn latency_histograms_render_in_seconds_by_stage() {
        let h = LatencyHistograms::default();
        h.observe(Stage::CaptureToEncoded, Duration::from_micros(4500));
        h.observe(Stage::CaptureToSent, Duration::from_millis(30));
        h.observe(Stage::CaptureToSent, Duration::from_secs(3));
        let r = Registry::new();
        r.register(Box::new(h.family.clone())).unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .unwrap();
        assert!(
            text.contains("# TYPE rtcam_frame_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "rtcam_frame_latency_seconds_bucket{stage=\"capture_to_encoded\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "rtcam_frame_latency_seconds_bucket{stage=\"capture_to_sent\",le=\"0.035\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "rtcam_frame_latency_seconds_bucket{stage=\"capture_to_sent\",le=\"+Inf\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("rtcam_frame_latency_seconds_count{stage=\"capture_to_sent\"} 2"));
    }
}
