//! Headless Chromium opens the page rtcam serves and decodes the live video: the page, its
//! bundled mqtt.js, the `/mqtt` WebSocket bridge, the embedded broker and WebRTC, all for real.
//! The browser is driven by tests/browser/view.mjs and controls.mjs (playwright-core, Debian's
//! chromium).

mod common;

use common::{start, test_config};
use rtcam::config::ViewerCommands;
use std::process::Command;
use std::sync::Mutex;

/// One browser at a time: on a 2-core machine, parallel Chromiums starve each other's decoders
/// and the tests then fail on timeouts that say nothing about the page.
static BROWSER: Mutex<()> = Mutex::new(());

fn view(url: &str, extra: &[&str]) -> (bool, serde_json::Value, String) {
    run_script("view.mjs", url, extra)
}

fn run_script(name: &str, url: &str, extra: &[&str]) -> (bool, serde_json::Value, String) {
    // A test that failed while holding the lock poisons it; the next one may still run.
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let script = format!("{}/tests/browser/{name}", env!("CARGO_MANIFEST_DIR"));
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

/// The control bar and stats overlay against a camera that lets viewers change it: every control
/// is used once and its effect checked in the browser (decoded size, paused notice, download).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_controls_change_the_camera() {
    let mut config = test_config("browserctl");
    config.webrtc.udp_addrs.clear();
    // Small frames keep the resolution change cheap; 1 s telemetry brings the camera's RTT
    // into the overlay within the test's time.
    config.source.width = 160;
    config.source.height = 120;
    config.control.viewer_commands = ViewerCommands::All;
    config.control.telemetry_interval_secs = 1;
    let rt = start(config).await;
    let url = format!("http://{}/", rt.app.http_addr());
    let screenshot = std::env::var("RTCAM_SCREENSHOT").ok();
    let (ok, report, output) = tokio::task::spawn_blocking(move || {
        let mut args = vec![
            "--scenario",
            "all",
            "--width",
            "160",
            "--height",
            "120",
            "--to",
            "320x240",
            "--bitrate",
            "500",
            "--timeout",
            "60000",
        ];
        if let Some(path) = screenshot.as_deref() {
            args.extend(["--screenshot", path]);
        }
        run_script("controls.mjs", &url, &args)
    })
    .await
    .unwrap();
    assert!(ok, "the page's controls did not work: {output}");
    assert_eq!(report["resolution"]["frameWidth"], 320, "{report}");
    assert_eq!(report["snapshot"]["magic"], "ffd8", "{report}");
    assert_eq!(report["bitrate"]["result"]["bitrate_kbps"], 500, "{report}");
    // The camera really took the changes, not only the page.
    assert!(
        rt.app.media().info().borrow().streaming,
        "streaming was resumed"
    );
    eprintln!("chromium: {report}");
    rt.app.stop().await;
}

/// With the default configuration a viewer may only look: the changing controls are disabled
/// with the tooltip naming the setting, and a forced attempt shows the camera's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_controls_are_read_only_by_default() {
    let mut config = test_config("browserro");
    config.webrtc.udp_addrs.clear();
    config.source.width = 160;
    config.source.height = 120;
    let rt = start(config).await;
    let url = format!("http://{}/", rt.app.http_addr());
    let (ok, report, output) = tokio::task::spawn_blocking(move || {
        run_script(
            "controls.mjs",
            &url,
            &[
                "--scenario",
                "read-only",
                "--width",
                "160",
                "--height",
                "120",
                "--timeout",
                "45000",
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "read-only controls were not as expected: {output}");
    assert!(
        report["readOnly"]["forbiddenMessage"]
            .as_str()
            .is_some_and(|m| m.contains("viewer_commands")),
        "{report}"
    );
    eprintln!("chromium: {report}");
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_watches_with_a_token_link() {
    let mut config = test_config("browsertoken");
    config.webrtc.udp_addrs.clear();
    config.auth.secret = "page-secret".into();
    let rt = start(config).await;
    let authority = rtcam::auth::Authority::new("page-secret", "browsertoken");
    let token = authority.mint(&authority.claims(
        std::time::Duration::from_secs(600),
        vec![rtcam::auth::Right::View],
        std::time::SystemTime::now(),
    ));
    // The link `rtcam token` prints: the page passes the token to /config.json, /mqtt and the offer.
    let url = format!("http://{}/?token={token}", rt.app.http_addr());
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
    assert!(ok, "browser did not decode with a token link: {output}");
    assert_eq!(report["frameWidth"], 320, "{report}");
    rt.app.stop().await;
}

/// A camera with a microphone (the test tone) and talkback into a counting sink: Chromium on
/// the served page receives the sound (getStats: samples arriving, little concealment), then
/// presses Talk with its fake microphone and the board's sink receives the samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_hears_the_camera_and_talks_back() {
    let mut config = test_config("browseraudio");
    config.webrtc.udp_addrs.clear();
    config.source.width = 160;
    config.source.height = 120;
    config.audio.enabled = true;
    config.audio.talkback = true;
    config.audio.sink = "fake".into();
    let rt = start(config).await;
    let url = format!("http://{}/", rt.app.http_addr());
    let (ok, report, output) = tokio::task::spawn_blocking(move || {
        run_script(
            "audio.mjs",
            &url,
            &["--timeout", "45000", "--talk-ms", "3000"],
        )
    })
    .await
    .unwrap();
    assert!(ok, "the page did not receive and send audio: {output}");
    assert!(report["talkShown"] == true, "{report}");
    let played = rt
        .app
        .media()
        .audio_stats()
        .talkback_samples
        .load(std::sync::atomic::Ordering::Relaxed);
    // Three seconds of talking; at least one second of it reached the sink, under load.
    assert!(
        played >= 48_000,
        "the board's sink got {played} samples: {report}"
    );
    assert!(
        rt.app
            .media()
            .audio_stats()
            .packets
            .load(std::sync::atomic::Ordering::Relaxed)
            > 50,
        "the microphone branch produced packets"
    );
    eprintln!("chromium audio: {report}; talkback samples played: {played}");
    rt.app.stop().await;
}
