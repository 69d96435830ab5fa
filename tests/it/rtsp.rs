//! The RTSP door against clients nobody here wrote: ffmpeg (RTP over UDP and interleaved on
//! TCP) and GStreamer's `rtspsrc` decode the stream; a wrong password gets 401; a viewer token
//! is a password; an RTSP client and a WebRTC viewer watch at once from one encoder, and the
//! RTSP client shows in `sessions` as a viewer.

use crate::common;

use common::commander::{Commander, Protocol};
use common::viewer::Viewer;
use common::{free_port, start, test_config, OPERATOR};
use gstreamer as gst;
use gstreamer::prelude::*;
use rtcam::config::Config;
use serde_json::json;
use std::process::Output;
use std::time::Duration;

const FRAMES: usize = 30;
const WITHIN: Duration = Duration::from_secs(30);
const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The test config with the RTSP door on a free loopback port, the pipeline on demand.
fn rtsp_config(device: &str) -> Config {
    let mut c = test_config(device);
    c.rtsp.enabled = true;
    c.rtsp.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    c.source.always_on = false;
    c
}

fn url(rt: &common::Running, login: Option<(&str, &str)>) -> String {
    let addr = rt.app.rtsp_addr().expect("the RTSP door is open");
    match login {
        Some((user, password)) => format!("rtsp://{user}:{password}@{addr}/live"),
        None => format!("rtsp://{addr}/live"),
    }
}

/// ffmpeg decoding `frames` video frames from `url` over `transport` (`udp` or `tcp`).
async fn ffmpeg(url: &str, transport: &str, frames: usize) -> Output {
    let run = tokio::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-rtsp_transport",
            transport,
            "-i",
            url,
        ])
        .args(["-an", "-frames:v", &frames.to_string(), "-f", "null", "-"])
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WITHIN, run)
        .await
        .expect("ffmpeg finishes")
        .expect("ffmpeg runs (Debian package ffmpeg)")
}

fn assert_decoded(out: &Output, frames: usize) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ffmpeg failed: {err}");
    assert!(
        err.contains("Video: h264") && err.contains(&format!("frame={frames:>5}")),
        "ffmpeg decoded {frames} H.264 frames: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_decodes_over_udp_and_over_tcp() {
    let rt = start(rtsp_config("rtsp-ffmpeg")).await;
    assert_eq!(rt.app.media().encoders_running(), 0, "on demand: idle");
    let url = url(&rt, Some(OPERATOR));
    for transport in ["udp", "tcp"] {
        let out = ffmpeg(&url, transport, FRAMES).await;
        assert_decoded(&out, FRAMES);
    }
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_door_needs_no_login_and_rtspsrc_decodes() {
    let mut config = rtsp_config("rtsp-open");
    config.mqtt.users_file = String::new();
    let rt = start(config).await;
    let url = url(&rt, None);
    for protocols in ["udp", "tcp"] {
        let frames = rtspsrc_frames(&url, protocols, None, FRAMES).await;
        assert!(
            frames >= FRAMES,
            "rtspsrc over {protocols}: {frames} frames"
        );
    }
    rt.app.stop().await;
}

/// Frames GStreamer's `rtspsrc` decodes from `url` (RTP over `protocols`, with `login`), up
/// to `want`.
async fn rtspsrc_frames(
    url: &str,
    protocols: &str,
    login: Option<(&str, &str)>,
    want: usize,
) -> usize {
    gst::init().unwrap();
    let login = login
        .map(|(user, password)| format!("user-id={user} user-pw={password}"))
        .unwrap_or_default();
    let pipeline = gst::parse::launch(&format!(
        "rtspsrc location={url} protocols={protocols} latency=100 {login} ! rtph264depay \
         ! h264parse ! avdec_h264 ! fakesink name=out signal-handoffs=true"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    pipeline
        .by_name("out")
        .unwrap()
        .connect("handoff", false, move |_| {
            let _ = tx.send(());
            None
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut frames = 0;
    let _ = tokio::time::timeout(WITHIN, async {
        while frames < want && rx.recv().await.is_some() {
            frames += 1;
        }
    })
    .await;
    pipeline.set_state(gst::State::Null).unwrap();
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_a_token_is_a_password() {
    let mut config = rtsp_config("rtsp-auth");
    config.auth.secret = SECRET.into();
    let rt = start(config).await;
    for login in [
        None,
        Some((OPERATOR.0, "wrong")),
        Some(("nobody", OPERATOR.1)),
    ] {
        let out = ffmpeg(&url(&rt, login), "tcp", 1).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("401"),
            "{login:?} refused with 401: {err}"
        );
    }
    let authority = rtcam::auth::Authority::new(SECRET, "rtsp-auth");
    let now = std::time::SystemTime::now();
    let token = authority.mint(&authority.claims(
        Duration::from_secs(300),
        vec![rtcam::auth::Right::View],
        now,
    ));
    // ffmpeg keeps 127 characters of a URL's login, fewer than a token has: rtspsrc takes it
    // whole.
    let frames = rtspsrc_frames(&url(&rt, None), "tcp", Some(("nvr", &token)), 5).await;
    assert!(frames >= 5, "a token as the password: {frames} frames");
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_and_webrtc_viewers_share_one_encoder() {
    let rt = start(rtsp_config("rtsp-both")).await;
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    assert!(viewer.wait_frames(FRAMES, WITHIN).await.frames >= FRAMES);
    let url = url(&rt, Some(OPERATOR));
    // Long enough to look at rtcam while it plays.
    let rtsp = tokio::spawn(async move { ffmpeg(&url, "tcp", 300).await });
    let deadline = tokio::time::Instant::now() + WITHIN;
    while rt.app.viewers() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rt.app.viewers(), 2, "the RTSP client counts as a viewer");
    assert_eq!(rt.app.media().encoders_running(), 1, "one encoder for both");
    let c = Commander::connect(Protocol::V5, rt.broker(), &rt.root()).await;
    let r = c.request("sessions", json!({})).await;
    let transports: Vec<_> = r.body["result"]
        .as_array()
        .expect("a list of sessions")
        .iter()
        .map(|s| s["transport"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        transports.contains(&"rtsp".to_string()) && transports.contains(&"mqtt".to_string()),
        "{}",
        r.body
    );
    let rtsp_session = r.body["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["transport"] == "rtsp")
        .unwrap();
    assert_eq!(rtsp_session["state"], "connected", "{rtsp_session}");
    let before = viewer.decoded().frames;
    assert_decoded(&rtsp.await.unwrap(), 300);
    assert!(viewer.wait_frames(before + 15, WITHIN).await.frames >= before + 15);
    assert_eq!(rt.app.media().encoders_running(), 1);
    viewer.bye().await;
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtsp_client_beyond_max_sessions_is_refused() {
    let mut config = rtsp_config("rtsp-full");
    config.webrtc.max_sessions = 1;
    let rt = start(config).await;
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    assert!(viewer.wait_frames(5, WITHIN).await.frames >= 5);
    let out = ffmpeg(&url(&rt, Some(OPERATOR)), "tcp", 1).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("503"), "{err}");
    viewer.bye().await;
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_audio_the_door_serves_opus_beside_h264() {
    let mut config = rtsp_config("rtsp-audio");
    config.audio.enabled = true;
    let rt = start(config).await;
    let run = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-rtsp_transport", "tcp"])
        .args(["-i", &url(&rt, Some(OPERATOR))])
        .args(["-t", "2", "-f", "null", "-"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WITHIN, run)
        .await
        .expect("ffmpeg finishes")
        .expect("ffmpeg runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Video: h264") && err.contains("Audio: opus"),
        "both streams: {err}"
    );
    // The decoded sound reached the muxer: ffmpeg counts its bytes.
    assert!(!err.contains("audio:0kB"), "sound decoded: {err}");
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_ends_an_rtsp_client_and_frees_its_slot() {
    let rt = start(rtsp_config("rtsp-kick")).await;
    let url = url(&rt, Some(OPERATOR));
    // Far more frames than the test waits for: only the kick ends it.
    let rtsp = tokio::spawn(async move { ffmpeg(&url, "tcp", 100_000).await });
    let deadline = tokio::time::Instant::now() + WITHIN;
    while rt.app.viewers() < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = Commander::connect(Protocol::V5, rt.broker(), &rt.root()).await;
    // Its session counts the frames passed on to it.
    let r = loop {
        let r = c.request("sessions", json!({})).await;
        let sent = r.body["result"][0]["frames_sent"].as_u64().unwrap_or(0);
        if sent > 0 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let label = r.body["result"][0]["label"].as_str().unwrap().to_string();
    assert_eq!(r.body["result"][0]["transport"], "rtsp", "{}", r.body);
    assert!(
        r.body["result"][0]["frames_sent"].as_u64() > Some(0),
        "{}",
        r.body
    );
    let r = c.request("kick", json!({"label": label})).await;
    assert_eq!(r.body["result"]["ended"], true, "{}", r.body);
    let out = tokio::time::timeout(Duration::from_secs(10), rtsp)
        .await
        .expect("ffmpeg stops once kicked")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("frame=100000"), "{err}");
    while rt.app.viewers() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rt.app.viewers(), 0, "the slot is free");
    rt.app.stop().await;
}
