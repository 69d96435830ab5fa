//! `/metrics` of a running rtcam with a viewer, as Prometheus sees it: `promtool check metrics`
//! accepts it, values are current at the scrape (not the last telemetry tick), counters keep
//! their count when a viewer leaves, latencies are histograms, the standard `process_*`
//! metrics are there, and no series names a session.

use crate::common;

use common::viewer::Viewer;
use common::{start, test_config};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(10);

async fn scrape(addr: SocketAddr) -> String {
    let reply = common::http::get(addr, "/metrics", &[]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    reply.text()
}

/// The value of the one series of `name` (rtcam's series carry only the `device` label).
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `promtool check metrics` (Debian's `prometheus` package): the format and the naming
/// conventions. It exits non-zero and says why on any problem, lint included.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (make test-deps installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one scrape's every family checked against the conventions, then the same scrape live over time"
)]
async fn live_metrics_pass_promtool_and_follow_conventions() {
    let mut config = test_config("metrics");
    // Far longer than the test: nothing below may wait for a telemetry tick.
    config.control.telemetry_interval_secs = 3600;
    let rt = start(config).await;
    let addr = rt.app.http_addr();

    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    let text = scrape(addr).await;
    assert_eq!(value(&text, "rtcam_viewers"), Some(1.0), "{text}");
    assert!(
        value(&text, "rtcam_uptime_seconds").unwrap() > 0.0,
        "{text}"
    );

    assert!(viewer.wait_frames(30, WITHIN).await.frames >= 30);
    let text = scrape(addr).await;
    promtool_check(&text);
    assert!(
        text.contains("# TYPE rtcam_frame_latency_seconds histogram"),
        "{text}"
    );
    for stage in ["capture_to_encoded", "encoded_to_sent", "capture_to_sent"] {
        let stage_label = format!("stage=\"{stage}\"");
        let count: f64 = text
            .lines()
            .filter(|l| l.starts_with("rtcam_frame_latency_seconds_bucket{"))
            .find(|l| l.contains(&stage_label) && l.contains("le=\"+Inf\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{stage} buckets: {text}"));
        assert!(count > 0.0, "{stage}: {text}");
    }
    assert!(
        value(&text, "process_resident_memory_bytes").unwrap() > 1_000_000.0,
        "{text}"
    );
    assert!(
        value(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    assert!(value(&text, "process_open_fds").is_some(), "{text}");
    assert!(
        value(&text, "process_start_time_seconds").is_some(),
        "{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains(viewer.sid.as_str())
                && !line.contains("sid=")
                && !line.contains("session=")
                && !line.contains("label="),
            "no series names a session: {line}"
        );
    }
    for gone in ["_kbps", "_ms{", "fps_in", "cpu_percent"] {
        assert!(
            !text.contains(gone),
            "no {gone}: rates are rate()'s, units base units"
        );
    }

    // Counters keep what a viewer did after it leaves.
    let counters = [
        "rtcam_frames_total",
        "rtcam_viewer_frames_sent_total",
        "rtcam_viewer_bytes_sent_total",
        "rtcam_frames_dropped_total",
    ];
    let before: Vec<f64> = counters
        .iter()
        .map(|c| value(&text, c).unwrap_or_else(|| panic!("{c}: {text}")))
        .collect();
    assert!(before[1] >= 30.0, "{text}");
    viewer.bye().await;
    let deadline = Instant::now() + WITHIN;
    let after = loop {
        let text = scrape(addr).await;
        if value(&text, "rtcam_viewers") == Some(0.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "the viewer left: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (c, b) in counters.iter().zip(&before) {
        let a = value(&after, c).unwrap();
        assert!(a >= *b, "{c} went from {b} to {a} when the viewer left");
    }
    promtool_check(&after);
    rt.app.stop().await;
}
