//! Headless Chromium opens the page rtcam serves and decodes the live video: the page, its
//! bundled mqtt.js, the `/mqtt` WebSocket bridge, the embedded broker and WebRTC, all for real.
//! The browser is driven by tests/browser/view.mjs and controls.mjs (playwright-core, Debian's
//! chromium).

use crate::common;

use common::netns::{self, Netns};
use common::{start, test_config};
use rtcam::config::ViewerCommands;
use std::process::Command;

fn view(url: &str, extra: &[&str]) -> (bool, serde_json::Value, String) {
    run_script("view.mjs", url, extra)
}

fn run_script(name: &str, url: &str, extra: &[&str]) -> (bool, serde_json::Value, String) {
    run_script_in(None, name, url, extra)
}

/// [`run_script`] with the browser in a network namespace of its own.
fn run_script_in(
    netns: Option<&Netns>,
    name: &str,
    url: &str,
    extra: &[&str],
) -> (bool, serde_json::Value, String) {
    // A test that failed while holding the lock poisons it; the next one may still run.
    let _one = common::BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let script = format!("{}/tests/browser/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = match netns {
        Some(ns) => ns.command("node"),
        None => Command::new("node"),
    }
    .arg(script)
    .args(["--url", url])
    .args(extra)
    .output()
    .expect("node runs (make test-deps installs the browser test's packages)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = common::script_report(&out.stdout);
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
    config.auth.secret = "page-secret-page-secret-page-secret".into();
    let rt = start(config).await;
    let authority =
        rtcam::auth::Authority::new("page-secret-page-secret-page-secret", "browsertoken");
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

/// What one encoder case asks of Chromium.
#[derive(Clone, Copy)]
struct EncoderCase {
    /// The element that must exist for the case to run.
    element: &'static str,
    /// `[encoder] element`; the VP8 case keeps the H.264 encoder chosen by `auto`.
    config_element: &'static str,
    /// Codecs the page may offer (`--offer-codecs`); None: everything Chromium has.
    offer: Option<&'static str>,
    width: u32,
    height: u32,
    fps: u32,
    mime: &'static str,
}

/// Every encoder CI has (x264enc, openh264enc, and vp8enc for browsers without H.264) produces
/// video Chromium decodes through the served page, in the codec the test expects. x264 runs
/// at 1080p, where the H.264 level (4) is above the 3.1 Chromium's offer names, to show the
/// level rtcam picks for the picture is one a browser takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_decodes_every_encoder_present() {
    gstreamer::init().expect("GStreamer initialises");
    let mut ran = Vec::new();
    for case in encoder_cases() {
        if gstreamer::ElementFactory::find(case.element).is_none() {
            eprintln!(
                "\n!!!!!!!! SKIPPED: GStreamer element {} is not installed; this machine cannot \
                 prove it produces decodable video (CI installs it) !!!!!!!!\n",
                case.element
            );
            continue;
        }
        chromium_decodes(case, ran.len()).await;
        ran.push(case.element);
    }
    eprintln!("encoders proven in Chromium: {ran:?}");
}

/// The encoders [`chromium_decodes_every_encoder_present`] tries.
fn encoder_cases() -> [EncoderCase; 3] {
    [
        EncoderCase {
            element: "x264enc",
            config_element: "x264enc",
            offer: None,
            width: 1920,
            height: 1080,
            // Ten frames a second keep a 1080p software encode and decode affordable on CI's
            // two cores; the level stays 4 (the frame size alone needs it).
            fps: 10,
            mime: "video/H264",
        },
        EncoderCase {
            element: "openh264enc",
            config_element: "openh264enc",
            offer: None,
            width: 320,
            height: 240,
            fps: 30,
            mime: "video/H264",
        },
        // The real fallback path: Chromium offers VP8 but no H.264, as Firefox without
        // OpenH264 does, and rtcam attaches its VP8 branch beside the running H.264 encoder.
        EncoderCase {
            element: "vp8enc",
            config_element: "auto",
            offer: Some("vp8"),
            width: 320,
            height: 240,
            fps: 30,
            mime: "video/VP8",
        },
    ]
}

/// rtcam with the case's encoder, and Chromium decoding it in the case's codec (the `n`th
/// case run, for the device name).
async fn chromium_decodes(case: EncoderCase, n: usize) {
    let started = std::time::Instant::now();
    let mut config = test_config(&format!("browserenc{n}"));
    config.webrtc.udp_addrs.clear();
    config.encoder.element = case.config_element.into();
    config.source.width = case.width;
    config.source.height = case.height;
    config.source.fps = case.fps;
    let rt = start(config).await;
    let url = format!("http://{}/", rt.app.http_addr());
    // Seen while the browser watches: the VP8 branch runs only for the VP8 case.
    let mut info = rt.app.media().info();
    let vp8_seen = tokio::spawn(async move {
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            info.wait_for(|i| i.vp8_running),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    });
    let frames = (case.fps * 2).to_string();
    let (w, h) = (case.width.to_string(), case.height.to_string());
    let (ok, report, output) = tokio::task::spawn_blocking(move || {
        let mut args = vec![
            "--width",
            w.as_str(),
            "--height",
            h.as_str(),
            "--frames",
            frames.as_str(),
            "--expect-codec",
            case.mime,
            "--timeout",
            "45000",
        ];
        if let Some(offer) = case.offer {
            args.extend(["--offer-codecs", offer]);
        }
        view(&url, &args)
    })
    .await
    .unwrap();
    assert!(
        ok,
        "{}: browser did not decode {} at {}x{}: {output}",
        case.element, case.mime, case.width, case.height
    );
    assert_eq!(report["mimeType"], case.mime, "{report}");
    assert!(
        report["framesDecoded"].as_u64().unwrap_or(0) >= u64::from(case.fps * 2),
        "{report}"
    );
    let media = rt.app.media();
    if case.offer.is_some() {
        assert!(vp8_seen.await.unwrap(), "the VP8 branch never ran");
        vp8_branch_goes_after_its_viewer(media).await;
    } else {
        vp8_seen.abort();
        assert!(
            !media.info().borrow().vp8_running,
            "no VP8 for an H.264 viewer"
        );
    }
    eprintln!(
        "chromium, {}: {report} ({:.1} s)",
        case.element,
        started.elapsed().as_secs_f64()
    );
    rt.app.stop().await;
}

/// The page said bye: the VP8 branch goes with the last VP8 viewer, while the H.264 encoder
/// (always on in tests) keeps producing frames.
async fn vp8_branch_goes_after_its_viewer(media: &rtcam::media::Media) {
    {
        let mut info = media.info();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            info.wait_for(|i| !i.vp8_running),
        )
        .await
        .expect("the VP8 branch stops after its last viewer left")
        .unwrap();
        assert_eq!(
            media.encoders_running(),
            1,
            "only the H.264 encoder is left"
        );
        let frames = || {
            media
                .stats()
                .frames
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let (before, deadline) = (
            frames(),
            std::time::Instant::now() + std::time::Duration::from_secs(20),
        );
        while frames() < before + 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "H.264 frames stopped when the VP8 branch went"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// "Any browser": headless Firefox ESR, driven over WebDriver BiDi (puppeteer-core,
/// tests/browser/firefox.mjs), decodes the served page's video in whichever codec it
/// negotiates. Without network access Firefox cannot fetch its OpenH264 plugin, so this is
/// normally the VP8 fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_decodes_the_served_page() {
    let mut config = test_config("browserfirefox");
    config.webrtc.udp_addrs.clear();
    let rt = start(config).await;
    let url = format!("http://{}/", rt.app.http_addr());
    let started = std::time::Instant::now();
    let (ok, report, output) = tokio::task::spawn_blocking(move || {
        run_script(
            "firefox.mjs",
            &url,
            &["--frames", "30", "--timeout", "60000"],
        )
    })
    .await
    .unwrap();
    assert!(ok, "Firefox did not decode the stream: {output}");
    assert!(
        report["framesDecoded"].as_u64().unwrap_or(0) >= 30,
        "{report}"
    );
    assert_eq!(report["frameWidth"], 320, "{report}");
    let mime = report["mimeType"].as_str().unwrap_or_default();
    assert!(
        mime.eq_ignore_ascii_case("video/VP8") || mime.eq_ignore_ascii_case("video/H264"),
        "{report}"
    );
    eprintln!(
        "firefox: {report} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
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

/// Talk from another machine: browsers lend the microphone only to a secure context, which
/// `http://127.0.0.1` is and a page from another machine's address is only over HTTPS.
/// Chromium runs in a network namespace of its own and opens the page over HTTPS at rtcam's
/// address on a veth link, trusting rtcam's self-signed certificate by the public-key hash
/// rtcam logs (`--ignore-certificate-errors-spki-list`), then talks to the board's sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_talks_over_https_from_another_machine() {
    if !netns::available() {
        eprintln!("skipped: network namespaces need root and iproute2");
        return;
    }
    // rtcam's end of the link stays in the test's namespace; the browser's goes into its own.
    // Deleting the namespace on drop deletes the pair.
    let view = Netns::new("brtls-view");
    netns::run(
        "ip",
        &[
            "link",
            "add",
            "brtls-cam",
            "type",
            "veth",
            "peer",
            "name",
            "brtls-v0",
            "netns",
            &view.name,
        ],
    );
    netns::run("ip", &["addr", "add", "10.231.7.1/24", "dev", "brtls-cam"]);
    netns::run("ip", &["link", "set", "brtls-cam", "up"]);
    view.ip(&["addr", "add", "10.231.7.2/24", "dev", "brtls-v0"]);
    view.ip(&["link", "set", "brtls-v0", "up"]);

    let state = tempfile::tempdir().unwrap();
    let mut config = test_config("browsertls");
    config.http.listen = "10.231.7.1:0".parse().unwrap();
    config.http.https_listen = "10.231.7.1:0".into();
    config.http.state_dir = state.path().to_str().unwrap().into();
    config.webrtc.udp_addrs = vec!["10.231.7.1".parse().unwrap()];
    config.source.width = 160;
    config.source.height = 120;
    config.audio.enabled = true;
    config.audio.talkback = true;
    config.audio.sink = "fake".into();
    let rt = start(config).await;
    let https = rt.app.https().expect("HTTPS is on").clone();
    let url = format!("https://{}/", https.addr);
    let spki = https.fingerprints.spki_sha256.clone();
    let (ok, report, output) = tokio::task::spawn_blocking(move || {
        run_script_in(
            Some(&view),
            "audio.mjs",
            &url,
            &["--timeout", "60000", "--talk-ms", "3000", "--spki", &spki],
        )
    })
    .await
    .unwrap();
    assert!(
        ok,
        "the page over HTTPS did not receive and send audio: {output}"
    );
    assert_eq!(report["secureContext"], true, "{report}");
    assert_eq!(
        report["origin"],
        format!("https://{}", https.addr),
        "{report}"
    );
    let played = rt
        .app
        .media()
        .audio_stats()
        .talkback_samples
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        played >= 48_000,
        "the board's sink got {played} samples: {report}"
    );
    eprintln!("chromium over HTTPS: {report}; talkback samples played: {played}");
    rt.app.stop().await;
}

/// The viewing buttons and the Talk note, on a page that is not a secure context: Chromium
/// reaches the camera by a name (`camera.test`, mapped to 127.0.0.1 inside Chromium only)
/// over plain HTTP, as a phone reaches a board. Fullscreen must take the stage and give it
/// back on a double click; picture-in-picture must be offered and entered (Debian's headless
/// Chromium does); Talk must be off, with a note linking to the camera's HTTPS address.
/// `RTCAM_SCREENSHOT=/tmp/page` keeps desktop and phone screenshots of the live page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_views_fullscreen_and_is_told_where_talk_works() {
    let state = tempfile::tempdir().unwrap();
    let mut config = test_config("browserview");
    config.webrtc.udp_addrs.clear();
    config.http.allowed_hosts = vec!["camera.test".into()];
    config.http.https_listen = "127.0.0.1:0".into();
    config.http.state_dir = state.path().to_str().unwrap().into();
    config.audio.enabled = true;
    config.audio.talkback = true;
    config.audio.sink = "fake".into();
    let rt = start(config).await;
    let url = format!("http://camera.test:{}/", rt.app.http_addr().port());
    let https_port = rt.app.https().expect("HTTPS is on").addr.port();
    let screenshot = std::env::var("RTCAM_SCREENSHOT").ok();
    let (ok, report, output) = tokio::task::spawn_blocking(move || {
        let mut args = vec!["--resolve", "camera.test", "--timeout", "45000"];
        if let Some(prefix) = screenshot.as_deref() {
            args.extend(["--screenshot", prefix]);
        }
        run_script("viewing.mjs", &url, &args)
    })
    .await
    .unwrap();
    assert!(ok, "the viewing buttons did not work: {output}");
    assert_eq!(report["fullscreen"]["entered"], "stage", "{report}");
    assert_eq!(report["pip"]["entered"], true, "{report}");
    assert_eq!(report["talk"]["secureContext"], false, "{report}");
    assert_eq!(report["talk"]["shown"], true, "{report}");
    assert_eq!(report["talk"]["disabled"], true, "{report}");
    assert_eq!(
        report["talk"]["link"],
        format!("https://camera.test:{https_port}/"),
        "{report}"
    );
    assert!(
        report["talk"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("accept its certificate")),
        "{report}"
    );
    eprintln!("chromium viewing: {report}");
    rt.app.stop().await;
}
