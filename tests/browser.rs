//! Headless Chromium opens the page rtcam serves and decodes the live video: the page, its
//! bundled mqtt.js, the `/mqtt` WebSocket bridge, the embedded broker and WebRTC, all for real.
//! The browser is driven by tests/browser/view.mjs (playwright-core, Debian's chromium).

mod common;

use common::{start, test_config};
use std::process::Command;

fn view(url: &str, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/view.mjs");
    let out = Command::new("node")
        .arg(script)
        .args(["--url", url])
        .args(extra)
        .output()
        .expect("node runs (make test-deps installs the browser test's packages)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        report,
        format!("stdout:\n{stdout}\nstderr:\n{stderr}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_decodes_the_served_page() {
    let mut config = test_config("browser");
    // All interfaces, as on a board: the browser's candidates are mDNS names and it reaches
    // rtcam through whichever address answers its checks.
    config.webrtc.udp_addrs.clear();
    let rt = start(config).await;
    let url = format!("http://{}/", rt.app.http_addr());
    let (ok, report, output) = tokio::task::spawn_blocking(move || {
        view(
            &url,
            &[
                "--width",
                "320",
                "--height",
                "240",
                "--frames",
                "30",
                "--timeout",
                "30000",
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "browser did not decode the stream: {output}");
    assert!(
        report["framesDecoded"].as_u64().unwrap_or(0) >= 30,
        "{report}"
    );
    assert_eq!(report["frameWidth"], 320, "{report}");
    eprintln!("chromium: {report}");
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_is_told_when_the_camera_is_full() {
    let mut config = test_config("browserfull");
    config.webrtc.max_sessions = 1;
    config.webrtc.udp_addrs.clear();
    let rt = start(config).await;
    let watcher = common::viewer::Viewer::connect(rt.broker(), &rt.root()).await;
    let url = format!("http://{}/", rt.app.http_addr());
    let (ok, report, output) = tokio::task::spawn_blocking(move || {
        view(
            &url,
            &["--expect-error", "too_many_sessions", "--timeout", "20000"],
        )
    })
    .await
    .unwrap();
    assert!(ok, "page did not show too_many_sessions: {output}");
    eprintln!("chromium: {report}");
    watcher.bye().await;
    rt.app.stop().await;
}
