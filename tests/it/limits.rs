//! Limits and vanishing viewers: each limit exceeded gets a clean refusal while a viewer that
//! was already watching keeps decoding; a viewer process killed without a word is reaped.

use crate::common;

use common::commander::{Commander, Protocol};
use common::viewer::Viewer;
use common::{start, test_config, Probe};
use serde_json::json;
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(10);

/// An offer a real peer made, as a signalling payload.
async fn offer_payload() -> Vec<u8> {
    let sdp = common::real_offer_sdp().await;
    serde_json::to_vec(&json!({"type":"offer","sdp":sdp})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalling_and_command_limits_refuse_cleanly() {
    let mut config = test_config("limits");
    config.webrtc.max_sessions = 50;
    config.webrtc.offers_per_second = 2;
    config.webrtc.max_candidates_per_session = 3;
    config.control.commands_per_second = 2;
    let rt = start(config).await;
    let root = rt.root();
    let watcher = Viewer::connect(rt.broker(), &root).await;
    assert!(watcher.wait_frames(10, WITHIN).await.frames >= 10);
    let probe = Probe::connect(rt.broker(), &[format!("{root}/session/+/out")]).await;

    // Offers per second: a burst of 4 is allowed, the rest of a quick flood is refused.
    let offer = offer_payload().await;
    for i in 0..8 {
        probe
            .send(&format!("{root}/session/flood{i}/in"), offer.clone())
            .await;
    }
    let refused = probe
        .wait_error(&format!("{root}/session/flood7/out"), "rate_limited")
        .await;
    assert!(
        refused["message"].as_str().unwrap().contains("per second"),
        "{refused}"
    );
    probe
        .wait_json(&format!("{root}/session/flood0/out"), WITHIN, |v| {
            v["type"] == "answer"
        })
        .await
        .expect("the first offers of the burst were answered");

    // Candidates per session: the fourth is refused.
    let cand = br#"{"type":"candidate","candidate":"candidate:1 1 udp 2130706431 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}"#;
    for _ in 0..4 {
        probe
            .send(&format!("{root}/session/flood0/in"), cand.to_vec())
            .await;
    }
    probe
        .wait_error(&format!("{root}/session/flood0/out"), "rate_limited")
        .await;

    // Commands per second over MQTT.
    let c = Commander::connect(Protocol::V311, rt.broker(), &root).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        let r = c.request("status", json!({})).await;
        codes.push(r.body["error"]["code"].as_str().unwrap_or("ok").to_string());
    }
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    assert_eq!(codes[0], "ok");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        c.request("status", json!({})).await.body["ok"],
        true,
        "the budget refills"
    );

    // The watcher noticed none of it.
    let before = watcher.decoded().frames;
    assert!(watcher.wait_frames(before + 30, WITHIN).await.frames >= before + 30);
    watcher.bye().await;
    rt.app.stop().await;
}

/// Not a test on its own: the body of the viewer process that the next test kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by vanished_viewer_is_reaped as a child process"]
async fn viewer_process() {
    let Ok(spec) = std::env::var("RTCAM_TEST_VIEWER") else {
        return;
    };
    let (port, root) = spec.split_once(' ').unwrap();
    let viewer = Viewer::connect(("127.0.0.1", port.parse().unwrap()), root).await;
    assert!(viewer.wait_frames(10, WITHIN).await.frames >= 10);
    println!("VIEWING");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// Offers nobody follows up (replayed, or from a viewer that vanished) hold a slot only until
/// the connect timeout, so a handful of them cannot keep real viewers out for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_that_never_connect_free_their_slots_within_seconds() {
    let timeout = rtcam::session::viewer::CONNECT_TIMEOUT;
    assert!(timeout <= Duration::from_secs(10), "{timeout:?}");
    let mut config = test_config("unconnected");
    config.webrtc.max_sessions = 2;
    let rt = start(config).await;
    let root = rt.root();
    let probe = Probe::connect(rt.broker(), &[format!("{root}/session/+/out")]).await;
    // Offers without candidates from a peer that is already closed: nothing will connect.
    let offer = offer_payload().await;
    let sent = Instant::now();
    for sid in ["ghost1", "ghost2", "ghost3"] {
        probe
            .send(&format!("{root}/session/{sid}/in"), offer.clone())
            .await;
    }
    probe
        .wait_error(&format!("{root}/session/ghost3/out"), "too_many_sessions")
        .await;
    assert_eq!(rt.app.viewers(), 2);
    let bye = probe
        .wait_json(
            &format!("{root}/session/ghost1/out"),
            timeout + WITHIN,
            |v| v["type"] == "bye",
        )
        .await
        .expect("the unconnected session is ended");
    assert!(
        bye["reason"].as_str().unwrap().contains("not established"),
        "{bye}"
    );
    let deadline = Instant::now() + WITHIN;
    while rt.app.viewers() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rt.app.viewers(), 0, "both slots freed");
    let freed = sent.elapsed();
    eprintln!("slots freed {freed:?} after the offers");
    assert!(freed >= timeout, "not before the timeout: {freed:?}");
    assert!(freed < timeout + Duration::from_secs(3), "{freed:?}");
    // A real viewer gets in.
    let viewer = Viewer::connect(rt.broker(), &root).await;
    assert!(viewer.wait_frames(10, WITHIN).await.frames >= 10);
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_viewer_is_reaped() {
    let mut config = test_config("vanish");
    config.webrtc.disconnect_timeout_secs = 2;
    let rt = start(config).await;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "limits::viewer_process",
            "--ignored",
            "--nocapture",
        ])
        .env(
            "RTCAM_TEST_VIEWER",
            format!("{} {}", rt.broker.1, rt.root()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let viewing = tokio::time::timeout(WITHIN, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("VIEWING") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(viewing, Ok(true), "child viewer decoded video");
    assert_eq!(rt.app.viewers(), 1);

    // SIGKILL: no bye, no DTLS close, nothing.
    child.kill().await.unwrap();
    let killed = Instant::now();
    // ICE notices within a few seconds, then the 2 s disconnect timeout runs.
    while rt.app.viewers() > 0 && killed.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rt.app.viewers(), 0, "session reaped");
    eprintln!("reaped {:?} after the kill", killed.elapsed());
    assert!(
        rt.app
            .media()
            .stats()
            .frames
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    rt.app.stop().await;
}
