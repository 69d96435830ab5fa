//! Telemetry: what the device is doing, published on `R/telemetry` every interval and served as
//! Prometheus text on `/metrics`.
//!
//! Rates are differences of counters between two samples; the process figures come from /proc
//! and the SoC temperature from /sys/class/thermal where the board has one.

use super::Publication;
use crate::media::latency::{LatencySummary, StageSummary};
use crate::media::Media;
use crate::session::table::Label;
use crate::session::{SessionInfo, Sessions};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write;
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

/// Publishes telemetry every `interval` and keeps the latest for `/metrics`.
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

/// The same figures in Prometheus text exposition format.
pub fn prometheus(t: &Telemetry, device: &str) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP rtcam_{name} {help}\n# TYPE rtcam_{name} {kind}\nrtcam_{name}{{device=\"{device}\"}} {value}");
    };
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since rtcam started.",
        t.uptime_secs as f64,
    );
    metric(
        "frames_total",
        "counter",
        "Encoded frames produced.",
        t.frames_total as f64,
    );
    metric(
        "frames_dropped_total",
        "counter",
        "Frames viewers skipped.",
        t.frames_dropped as f64,
    );
    metric(
        "pipeline_restarts_total",
        "counter",
        "Media pipeline rebuilds after errors.",
        t.pipeline_restarts as f64,
    );
    metric(
        "vp8_frames_total",
        "counter",
        "Frames from the VP8 fallback encoder.",
        t.vp8_frames_total as f64,
    );
    metric("fps_in", "gauge", "Encoded frames per second.", t.fps_in);
    metric(
        "fps_out",
        "gauge",
        "Frames per second sent to each viewer, averaged.",
        t.fps_out,
    );
    metric(
        "bitrate_kbps",
        "gauge",
        "Encoder output in kbit/s.",
        t.bitrate_kbps,
    );
    metric(
        "target_bitrate_kbps",
        "gauge",
        "Bitrate the encoder is set to (bitrate adaptation's choice).",
        f64::from(t.target_bitrate_kbps),
    );
    metric("viewers", "gauge", "Connected viewers.", t.viewers as f64);
    metric(
        "cpu_percent",
        "gauge",
        "CPU used by rtcam, percent of one core.",
        t.cpu_percent,
    );
    metric(
        "rss_bytes",
        "gauge",
        "Resident memory of rtcam.",
        t.rss_bytes as f64,
    );
    metric(
        "tokio_tasks",
        "gauge",
        "Tokio tasks alive in rtcam's runtime.",
        t.tokio_tasks as f64,
    );
    metric(
        "open_fds",
        "gauge",
        "Open file descriptors of rtcam.",
        t.open_fds as f64,
    );
    metric(
        "streaming",
        "gauge",
        "1 while streaming, 0 while switched off.",
        f64::from(u8::from(t.streaming)),
    );
    metric(
        "audio_packets_total",
        "counter",
        "Opus packets from the microphone.",
        t.audio_packets_total as f64,
    );
    metric(
        "talkback_samples_total",
        "counter",
        "Samples of viewers' microphones played on the board.",
        t.talkback_samples_total as f64,
    );
    if let Some(c) = t.temperature_c {
        metric("soc_temperature_celsius", "gauge", "SoC temperature.", c);
    }
    let _ = writeln!(
        out,
        "# HELP rtcam_latency_ms Time a frame spends in rtcam over the last telemetry interval, by stage.\n# TYPE rtcam_latency_ms summary"
    );
    let stages: [(&str, Option<LatencySummary>); 3] = [
        ("capture_to_encoded", t.latency.capture_to_encoded),
        ("encoded_to_sent", t.latency.encoded_to_sent),
        ("capture_to_sent", t.latency.capture_to_sent),
    ];
    for (stage, summary) in stages {
        if let Some(l) = summary {
            for (q, v) in [("0.5", l.p50_ms), ("0.95", l.p95_ms), ("1", l.max_ms)] {
                let _ = writeln!(
                    out,
                    "rtcam_latency_ms{{device=\"{device}\",stage=\"{stage}\",quantile=\"{q}\"}} {v}"
                );
            }
            let _ = writeln!(
                out,
                "rtcam_latency_ms_count{{device=\"{device}\",stage=\"{stage}\"}} {}",
                l.samples
            );
        }
    }
    viewer_aggregates(&mut out, &t.sessions, device);
    out
}

/// Per-viewer figures folded over the viewers connected now. Prometheus gets no per-session
/// series: a label per session would grow its series without bound as viewers come and go,
/// and would name sessions to whoever reads `/metrics`. The `sessions` command has each
/// session's figures under its label.
fn viewer_aggregates(out: &mut String, sessions: &[SessionInfo], device: &str) {
    let mut metric = |name: &str, help: &str, value: Option<f64>| {
        let _ = writeln!(out, "# HELP rtcam_{name} {help}\n# TYPE rtcam_{name} gauge");
        if let Some(v) = value {
            let _ = writeln!(out, "rtcam_{name}{{device=\"{device}\"}} {v}");
        }
    };
    metric(
        "viewers_rtt_ms_max",
        "Highest round-trip time among connected viewers.",
        sessions.iter().filter_map(|s| s.rtt_ms).reduce(f64::max),
    );
    metric(
        "viewers_estimate_kbps_min",
        "Lowest of bitrate adaptation's estimates of what each viewer can take.",
        sessions
            .iter()
            .filter_map(|s| s.estimate_kbps)
            .min()
            .map(|k| k as f64),
    );
    metric(
        "viewers_paced",
        "Viewers held below the encoder's rate (keyframe-skipping).",
        Some(sessions.iter().filter(|s| s.paced).count() as f64),
    );
    metric(
        "viewers_nacked_packets",
        "Packets the connected viewers asked to be resent, summed over their sessions so far.",
        Some(sessions.iter().map(|s| s.nacked_packets).sum::<u64>() as f64),
    );
    metric(
        "viewers_retransmitted_packets",
        "Packets resent to the connected viewers for their NACKs, summed over their sessions so far.",
        Some(sessions.iter().map(|s| s.retransmitted_packets).sum::<u64>() as f64),
    );
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

/// The SoC temperature: the first thermal zone (on Raspberry Pi and most boards, the CPU).
fn soc_temperature() -> Option<f64> {
    let milli: f64 = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(round1(milli / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_help_type_and_labels() {
        let t = Telemetry {
            viewers: 2,
            fps_in: 29.9,
            vp8_frames_total: 12,
            temperature_c: Some(51.2),
            latency: StageSummary {
                capture_to_encoded: Some(LatencySummary {
                    samples: 30,
                    p50_ms: 4.5,
                    p95_ms: 7.25,
                    max_ms: 9.0,
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let text = prometheus(&t, "cam1");
        assert!(
            text.contains("# TYPE rtcam_viewers gauge\nrtcam_viewers{device=\"cam1\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("rtcam_fps_in{device=\"cam1\"} 29.9"));
        assert!(text.contains(
            "# TYPE rtcam_vp8_frames_total counter\nrtcam_vp8_frames_total{device=\"cam1\"} 12\n"
        ));
        assert!(text.contains("rtcam_soc_temperature_celsius{device=\"cam1\"} 51.2"));
        assert!(text.contains(
            "rtcam_latency_ms{device=\"cam1\",stage=\"capture_to_encoded\",quantile=\"0.95\"} 7.25"
        ));
        assert!(text
            .contains("rtcam_latency_ms_count{device=\"cam1\",stage=\"capture_to_encoded\"} 30"));
        assert!(
            !text.contains("stage=\"encoded_to_sent\""),
            "no sample, no line"
        );
    }

    fn session(generation: u64, rtt_ms: Option<f64>, estimate_kbps: Option<u64>) -> SessionInfo {
        SessionInfo {
            label: Label::of(generation),
            state: "connected",
            duration_secs: 5,
            codec: "H264",
            bitrate_kbps: 900,
            frames_sent: 150,
            frames_skipped: 1,
            keyframe_requests: 0,
            rtt_ms,
            time_to_first_frame_ms: Some(200),
            estimate_kbps,
            loss_percent: None,
            nacked_packets: 4,
            retransmitted_packets: 3,
            paced: generation == 2,
        }
    }

    #[test]
    fn prometheus_folds_viewers_and_names_no_session() {
        let t = Telemetry {
            viewers: 2,
            sessions: vec![
                session(1, Some(2.5), Some(1800)),
                session(2, Some(40.0), Some(600)),
            ],
            ..Default::default()
        };
        let text = prometheus(&t, "cam1");
        assert!(
            text.contains("rtcam_viewers_rtt_ms_max{device=\"cam1\"} 40\n"),
            "{text}"
        );
        assert!(text.contains("rtcam_viewers_estimate_kbps_min{device=\"cam1\"} 600\n"));
        assert!(text.contains("rtcam_viewers_paced{device=\"cam1\"} 1\n"));
        assert!(text.contains("rtcam_viewers_nacked_packets{device=\"cam1\"} 8\n"));
        assert!(text.contains("rtcam_viewers_retransmitted_packets{device=\"cam1\"} 6\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                !line.contains("sid=") && !line.contains("label=") && !line.contains("\"v1\""),
                "no per-session series: {line}"
            );
        }
        let none = prometheus(&Telemetry::default(), "cam1");
        assert!(
            !none.contains("rtcam_viewers_rtt_ms_max{"),
            "no viewer, no RTT sample"
        );
        assert!(none.contains("rtcam_viewers_paced{device=\"cam1\"} 0\n"));
    }

    #[test]
    fn proc_readers_work_on_linux() {
        assert!(process_cpu_ticks().is_some());
        assert!(process_rss_bytes().unwrap() > 1024 * 1024);
        // stdin, stdout, stderr at least.
        assert!(open_fds().unwrap() >= 3);
    }
}
