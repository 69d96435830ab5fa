//! Injected faults: a genuine GStreamer error from the encoder while a viewer watches. The
//! pipeline is rebuilt, the viewer keeps its track (no new offer), and the event shows in
//! `R/status` and in the log exactly once.

// The helpers of the `it` binary (tests/it/main.rs), in a binary of its own: this test
// installs the process's log subscriber to count rtcam's log lines, which other tests running
// in the same process would add to.
#[path = "it/common/mod.rs"]
mod common;

use common::viewer::Viewer;
use common::{start, test_config, Probe};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(20);

/// Everything rtcam logs in this test binary, kept to be counted.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Installs the capture as this process's subscriber, at rtcam's default levels, before
    /// `common::start` would install its own (which then leaves this one in place).
    fn install() -> LogCapture {
        let capture = LogCapture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,rumqttd=off,webrtc=warn,rtc=warn,rtcam=info",
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        capture
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoder_error_rebuilds_the_pipeline_and_viewers_keep_their_track() {
    let logs = LogCapture::install();
    let rt = start(test_config("fault-encoder")).await;
    let status_topic = format!("{}/status", rt.root());
    let probe = Probe::connect(rt.broker(), std::slice::from_ref(&status_topic)).await;
    probe
        .wait_json(&status_topic, WITHIN, |v| {
            v["pipeline"] == "running"
                && v["pipeline_restarts"] == 0
                && v.get("last_error").is_none()
        })
        .await
        .expect("status before the fault: running, no restarts, no error");
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    assert!(viewer.wait_frames(20, WITHIN).await.frames >= 20);

    const FAULT: &str = "injected encoder fault";
    rt.app.media().inject_encoder_error(FAULT);
    let status = probe
        .wait_json(&status_topic, WITHIN, |v| v["pipeline_restarts"] == 1)
        .await
        .expect("R/status counts the restart");
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains(FAULT) && last_error.contains("encoder"),
        "last_error names the fault and the element that failed: {status}"
    );

    // By now the failed pipeline is down (the restart is counted after it stopped), so 30 more
    // decoded frames (a second at 30 fps) can only come from the rebuilt one, on the same track.
    let at_fault = viewer.decoded().frames;
    let after = viewer.wait_frames(at_fault + 30, WITHIN).await;
    assert!(
        after.frames >= at_fault + 30,
        "the viewer decodes again after the rebuild: {after:?}"
    );
    probe
        .wait_json(&status_topic, WITHIN, |v| {
            v["pipeline"] == "running" && v["pipeline_restarts"] == 1 && v["viewers"] == 1
        })
        .await
        .expect("status: running again, one restart, the viewer still there");

    // No renegotiation: one offer (rtcam started one session), one answer, no bye, and the
    // same session is still the only one.
    let answers = viewer
        .messages
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "answer")
        .count();
    assert_eq!(answers, 1);
    assert!(viewer.has_message("bye").is_none());
    assert_eq!(rt.app.viewers(), 1);
    let text = logs.text();
    assert_eq!(logs.count("new session"), 1, "{text}");
    assert_eq!(
        logs.count("first encoded frame"),
        2,
        "two pipelines ran: {text}"
    );
    // The fault is logged exactly once, as an error naming it.
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("media pipeline failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{text}");
    assert!(
        failures[0].contains("ERROR") && failures[0].contains(FAULT),
        "{}",
        failures[0]
    );

    // Give a late duplicate (a second error message from the dying pipeline) time to show.
    let settle = Instant::now() + Duration::from_secs(1);
    while Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logs.count("media pipeline failed"), 1, "{}", logs.text());
    assert_eq!(
        rt.app
            .media()
            .stats()
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    viewer.bye().await;
    rt.app.stop().await;
}
