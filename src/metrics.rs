//! `/metrics`: rtcam's figures in Prometheus' text format, read when the scraper asks.
//!
//! The only `prometheus` user. Each scrape builds a registry of what is true now: counters
//! straight from the atomics the pipeline, the sessions and the gate keep (they only grow, so
//! a viewer leaving takes nothing away), gauges from live state (the viewer count from the
//! session manager's watch channel, uptime from the start instant), the latency histograms
//! that live as long as the process, and the crate's standard `process_*` collector.
//!
//! Conventions (<https://prometheus.io/docs/practices/naming/>): base units (seconds, bytes;
//! a bitrate is bytes per second, as promtool's lint wants), counters end in `_total` and rates are left to `rate()`,
//! latencies are histograms, and no series is per session: a label per viewer would grow
//! without bound and session ids are secrets. `R/telemetry` keeps its own JSON, with rates and
//! per-session figures under labels; this module does not change it.

use crate::gate::GateStats;
use crate::media::Media;
use crate::session::Sessions;
use prometheus::{Gauge, IntCounter, Registry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The content type of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for the session manager's list (the per-viewer aggregates).
const SESSIONS_WAIT: Duration = Duration::from_secs(2);

/// What a scrape reads; cloned into the HTTP server's state.
#[derive(Clone)]
pub struct Metrics {
    pub device_id: String,
    /// When rtcam started, for `rtcam_uptime_seconds`.
    pub started: Instant,
    pub media: Media,
    /// For the per-viewer aggregates (RTT, estimates, pacing), folded over connected viewers.
    pub sessions: Sessions,
    /// The session manager's viewer count, current whenever a session comes or goes.
    pub viewers: watch::Receiver<usize>,
}

impl Metrics {
    /// The text for one scrape. `gate` is the MQTT gate's counts when the embedded broker
    /// is behind one.
    pub async fn render(&self, gate: Option<&GateStats>) -> Result<String, prometheus::Error> {
        let sessions = tokio::time::timeout(SESSIONS_WAIT, self.sessions.list())
            .await
            .unwrap_or_default();
        let labels = HashMap::from([("device".to_string(), self.device_id.clone())]);
        let r = Scrape(Registry::new_custom(None, Some(labels))?);
        r.0.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        r.0.register(Box::new(
            self.media.stats().latency.histograms.family.clone(),
        ))?;

        self.process_gauges(&r)?;
        self.media_counters(&r)?;
        self.viewer_metrics(&r, &sessions)?;
        if let Some(g) = gate {
            gate_counters(&r, g)?;
        }
        prometheus::TextEncoder::new().encode_to_string(&r.0.gather())
    }

    /// rtcam's process and the board now: uptime, streaming, the encoder's target rate, tokio
    /// tasks, the SoC temperature.
    fn process_gauges(&self, r: &Scrape) -> prometheus::Result<()> {
        r.gauge(
            "rtcam_uptime_seconds",
            "Seconds since rtcam started.",
            self.started.elapsed().as_secs_f64(),
        )?;
        let info = self.media.info().borrow().clone();
        r.gauge(
            "rtcam_streaming",
            "1 while streaming, 0 while switched off.",
            f64::from(u8::from(info.streaming)),
        )?;
        r.gauge(
            "rtcam_encoder_target_bytes_per_second",
            "Rate the H.264 encoder is set to (the configured bitrate or bitrate adaptation's choice), in bytes per second.",
            f64::from(info.bitrate_kbps) * 125.0,
        )?;
        r.gauge(
            "rtcam_tokio_tasks",
            "Tokio tasks alive in rtcam's runtime; one that keeps rising as viewers come and go is a leak.",
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as f64,
        )?;
        if let Some(c) = crate::board::soc_temperature() {
            r.gauge("rtcam_soc_temperature_celsius", "SoC temperature.", c)?;
        }
        Ok(())
    }

    /// What the pipeline made since start: frames, bytes, keyframes, restarts, sound.
    fn media_counters(&self, r: &Scrape) -> prometheus::Result<()> {
        let s = self.media.stats();
        r.counter("rtcam_frames_total", "H.264 frames encoded.", &s.frames)?;
        r.counter(
            "rtcam_encoded_bytes_total",
            "Bytes of H.264 the encoder produced; rate() * 8 is its bitrate.",
            &s.bytes,
        )?;
        r.counter(
            "rtcam_keyframes_total",
            "H.264 keyframes encoded.",
            &s.keyframes,
        )?;
        r.counter(
            "rtcam_vp8_frames_total",
            "Frames from the VP8 fallback encoder (viewers without H.264).",
            &s.vp8_frames,
        )?;
        r.counter(
            "rtcam_pipeline_restarts_total",
            "Media pipeline rebuilds after errors.",
            &s.restarts,
        )?;
        let audio = self.media.audio_stats();
        r.counter(
            "rtcam_audio_packets_total",
            "Opus packets from the microphone.",
            &audio.packets,
        )?;
        r.counter(
            "rtcam_talkback_samples_total",
            "Samples (48 kHz) of viewers' microphones played on the board.",
            &audio.talkback_samples,
        )
    }

    /// The viewers now, and what every viewer session did since start, without naming one.
    fn viewer_metrics(
        &self,
        r: &Scrape,
        sessions: &[crate::session::SessionInfo],
    ) -> prometheus::Result<()> {
        r.gauge(
            "rtcam_viewers",
            "Viewer sessions now.",
            *self.viewers.borrow() as f64,
        )?;
        r.gauge(
            "rtcam_viewers_paced",
            "Viewers held below the encoder's rate (keyframe-skipping).",
            sessions.iter().filter(|s| s.paced).count() as f64,
        )?;
        if let Some(ms) = sessions.iter().filter_map(|s| s.rtt_ms).reduce(f64::max) {
            r.gauge(
                "rtcam_viewers_max_rtt_seconds",
                "Highest ICE round-trip time among connected viewers.",
                ms / 1000.0,
            )?;
        }
        if let Some(kbps) = sessions.iter().filter_map(|s| s.estimate_kbps).min() {
            r.gauge(
                "rtcam_viewers_min_estimate_bytes_per_second",
                "Lowest of bitrate adaptation's estimates of what each viewer can take, in bytes per second.",
                kbps as f64 * 125.0,
            )?;
        }
        let v = &self.media.stats().viewers;
        r.counter(
            "rtcam_viewer_frames_sent_total",
            "Frames written to viewers, summed over viewers.",
            &v.frames_sent,
        )?;
        r.counter(
            "rtcam_viewer_bytes_sent_total",
            "Bytes of encoded video written to viewers, summed over viewers.",
            &v.bytes_sent,
        )?;
        r.counter(
            "rtcam_frames_dropped_total",
            "Frames viewers did not get: waiting for a keyframe, fallen behind, or paced.",
            &v.frames_skipped,
        )?;
        r.counter(
            "rtcam_nacked_packets_total",
            "RTP packets viewers asked to be resent (NACK).",
            &v.nacked_packets,
        )?;
        r.counter(
            "rtcam_retransmitted_packets_total",
            "RTP packets resent for viewers' NACKs.",
            &v.retransmitted_packets,
        )
    }
}

/// The MQTT gate's counts (the embedded broker's door for outside clients).
fn gate_counters(r: &Scrape, g: &GateStats) -> prometheus::Result<()> {
    r.counter(
        "rtcam_mqtt_gate_connections_total",
        "MQTT clients the gate admitted (embedded broker).",
        &g.connections,
    )?;
    r.counter(
        "rtcam_mqtt_gate_refused_connections_total",
        "MQTT connections the gate refused: caps, logins, client ids, last wills.",
        &g.refused_connections,
    )?;
    r.counter(
        "rtcam_mqtt_gate_refused_packets_total",
        "Subscriptions and publishes the gate refused.",
        &g.refused_packets,
    )
}

/// One scrape's registry, with the two ways rtcam fills it.
struct Scrape(Registry);

impl Scrape {
    fn gauge(&self, name: &str, help: &str, value: f64) -> prometheus::Result<()> {
        let g = Gauge::new(name, help)?;
        g.set(value);
        self.0.register(Box::new(g))
    }

    /// A counter with the value of `source`, which only ever grows.
    fn counter(&self, name: &str, help: &str, source: &AtomicU64) -> prometheus::Result<()> {
        let c = IntCounter::new(name, help)?;
        c.inc_by(source.load(Ordering::Relaxed));
        self.0.register(Box::new(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_counter_shows_its_source() {
        let r = Scrape(Registry::new());
        let source = AtomicU64::new(41);
        source.fetch_add(1, Ordering::Relaxed);
        r.counter("rtcam_things_total", "Things.", &source).unwrap();
        r.gauge("rtcam_level", "Level.", 0.5).unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&r.0.gather())
            .unwrap();
        assert!(
            text.contains("# TYPE rtcam_things_total counter\nrtcam_things_total 42\n"),
            "{text}"
        );
        assert!(text.contains("rtcam_level 0.5\n"), "{text}");
    }
}
