//! End to end: rtcam (GStreamer test source, x264) → WebRTC → a Rust viewer that decodes the
//! H.264 with GStreamer, signalled over MQTT through the embedded broker and through mosquitto.

use crate::common;

use common::commander::{Commander, Protocol};
use common::viewer::{Viewer, ViewerOptions};
use common::{start, test_config, Mosquitto, Probe};
use std::time::Duration;

const FRAMES: usize = 60;
const WITHIN: Duration = Duration::from_secs(10);

fn assert_decoded(d: &common::viewer::Decoded) {
    assert!(
        d.frames >= FRAMES,
        "decoded {} frames ({} RTP packets) within {WITHIN:?}",
        d.frames,
        d.rtp_packets
    );
    assert_eq!((d.width, d.height), (320, 240), "decoded frame size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_decodes_video_through_embedded_broker() {
    let rt = start(test_config("embedded1")).await;
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    let d = viewer.wait_frames(FRAMES, WITHIN).await;
    assert_decoded(&d);
    eprintln!("first frame after {:?}", d.first_frame_after);
    // rtcam trickled its candidates and said when it was done.
    let end = viewer
        .messages
        .lock()
        .unwrap()
        .iter()
        .any(|m| m["type"] == "candidate" && m["candidate"] == "");
    assert!(end, "rtcam sends an empty candidate at end of gathering");
    viewer.bye().await;
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_decodes_video_through_mosquitto() {
    let mosquitto = Mosquitto::start();
    let mut config = test_config("mosq1");
    config.mqtt.url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let rt = start(config).await;
    let status = Probe::connect(rt.broker(), &[format!("{}/status", rt.root())]).await;
    let online = status
        .wait_json(
            &format!("{}/status", rt.root()),
            Duration::from_secs(5),
            |v| v["state"] == "online",
        )
        .await
        .expect("retained online status on mosquitto");
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));

    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    assert_decoded(&viewer.wait_frames(FRAMES, WITHIN).await);
    viewer.bye().await;

    let status_topic = format!("{}/status", rt.root());
    rt.app.stop().await;
    status
        .wait_json(&status_topic, Duration::from_secs(5), |v| {
            v["state"] == "offline"
        })
        .await
        .expect("offline status published on shutdown");
}

/// The answer's `a=extmap` line for the playout-delay extension in the video section of what
/// `viewer` received.
fn answered_playout_delay(viewer: &Viewer) -> Option<u8> {
    let messages = viewer.messages.lock().unwrap();
    let answer = messages.iter().find(|m| m["type"] == "answer")?;
    let sdp = answer["sdp"].as_str()?;
    let video = sdp.split("\r\nm=").find(|s| s.starts_with("video"))?;
    common::viewer::extmap_id(video, common::viewer::PLAYOUT_DELAY_URI)
}

/// A viewer offering the playout-delay header extension, as Chromium does, finds it in the
/// answer, and every video packet carries a delay of none (0, 0): a browser then shows each
/// frame as soon as it is whole (src/session/peer/playout.rs). A viewer that does not offer it
/// is answered without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playout_delay_is_answered_and_on_every_video_packet() {
    let rt = start(test_config("playout")).await;
    let opts = ViewerOptions {
        playout_delay: true,
        ..ViewerOptions::default()
    };
    let viewer = Viewer::connect_with(rt.broker(), &rt.root(), opts).await;
    assert!(
        answered_playout_delay(&viewer).is_some(),
        "the answer's video section has no playout-delay extmap: {:?}",
        viewer.has_message("answer")
    );
    let d = viewer.wait_frames(FRAMES, WITHIN).await;
    assert_decoded(&d);
    assert_eq!(d.playout_delay, Some((0, 0)), "minimum and maximum delay");
    assert_eq!(
        d.playout_delay_packets, d.rtp_packets,
        "every video packet carries the extension"
    );
    viewer.bye().await;

    let plain = Viewer::connect(rt.broker(), &rt.root()).await;
    assert_eq!(
        answered_playout_delay(&plain),
        None,
        "not offered, not answered"
    );
    plain.bye().await;
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_with_all_candidates_and_no_trickle_works() {
    let rt = start(test_config("notrickle")).await;
    let viewer = Viewer::connect_with(
        rt.broker(),
        &rt.root(),
        ViewerOptions {
            no_trickle: true,
            ..Default::default()
        },
    )
    .await;
    assert_decoded(&viewer.wait_frames(FRAMES, WITHIN).await);
    viewer.bye().await;
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_share_one_encoder() {
    let rt = start(test_config("two")).await;
    let a = Viewer::connect(rt.broker(), &rt.root()).await;
    let b = Viewer::connect(rt.broker(), &rt.root()).await;
    let (da, db) = tokio::join!(a.wait_frames(FRAMES, WITHIN), b.wait_frames(FRAMES, WITHIN));
    assert_decoded(&da);
    assert_decoded(&db);
    assert_eq!(
        rt.app.media().encoders_running(),
        1,
        "one encoder feeds both viewers"
    );
    assert_eq!(rt.app.viewers(), 2);
    a.bye().await;
    // The remaining viewer keeps receiving after the other leaves.
    let before = b.decoded().frames;
    let after = b.wait_frames(before + 15, WITHIN).await.frames;
    assert!(
        after >= before + 15,
        "second viewer kept decoding ({before} → {after})"
    );
    b.bye().await;
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_from_rtcam_on_shutdown() {
    let rt = start(test_config("byeshut")).await;
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    assert!(viewer.wait_frames(5, WITHIN).await.frames >= 5);
    rt.app.stop().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while viewer.has_message("bye").is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bye = viewer
        .has_message("bye")
        .expect("rtcam said bye on shutdown");
    assert!(
        bye["reason"].as_str().unwrap().contains("shutting down"),
        "{bye}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_is_survived() {
    let mosquitto = Mosquitto::start();
    let port = mosquitto.port;
    let mut config = test_config("bounce");
    config.mqtt.url = format!("mqtt://127.0.0.1:{port}");
    let rt = start(config).await;
    let watcher = Viewer::connect(rt.broker(), &rt.root()).await;
    assert!(watcher.wait_frames(10, WITHIN).await.frames >= 10);

    // The broker goes away and comes back on the same port, empty: no retained status, no
    // subscriptions. rtcam must reconnect, subscribe and publish its status again.
    drop(mosquitto);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _mosquitto = Mosquitto::start_on(port);
    let status = Probe::connect(rt.broker(), &[format!("{}/status", rt.root())]).await;
    status
        .wait_json(
            &format!("{}/status", rt.root()),
            Duration::from_secs(5),
            |v| v["state"] == "online",
        )
        .await
        .expect("status republished after the broker came back");

    // The media path never depended on the broker: the watcher kept decoding throughout.
    let before = watcher.decoded().frames;
    assert!(watcher.wait_frames(before + 15, WITHIN).await.frames >= before + 15);
    // And a newcomer can start a session through the new broker.
    let newcomer = Viewer::connect(rt.broker(), &rt.root()).await;
    assert_decoded(&newcomer.wait_frames(FRAMES, WITHIN).await);
    newcomer.bye().await;
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_pli_forces_a_keyframe_and_a_flood_is_merged() {
    let mut config = test_config("pli");
    // No scheduled keyframes during the test: every one seen was forced.
    config.encoder.keyframe_interval = 100_000;
    let rt = start(config).await;
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    assert!(viewer.wait_frames(30, WITHIN).await.frames >= 30);
    let keyframes = || {
        rt.app
            .media()
            .stats()
            .keyframes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    tokio::time::sleep(Duration::from_millis(600)).await;

    let before = keyframes();
    viewer.send_pli().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while keyframes() == before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(keyframes() > before, "a PLI forced a keyframe");

    // Twenty requests at once cost at most two keyframes per 500 ms window.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = keyframes();
    for _ in 0..20 {
        viewer.send_pli().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let forced = keyframes() - before;
    assert!(
        (1..=2).contains(&forced),
        "{forced} keyframes for 20 requests"
    );
    viewer.bye().await;
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_runs_only_while_watched() {
    let mut config = test_config("ondemand");
    config.source.always_on = false;
    config.source.idle_stop_secs = 1;
    let rt = start(config).await;
    let media = rt.app.media().clone();
    let frames = || {
        media
            .stats()
            .frames
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(frames(), 0, "no viewer, no frames");
    assert_eq!(media.encoders_running(), 0);
    assert!(!media.info().borrow().running);

    // The first viewer starts the pipeline and gets video.
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    let d = viewer.wait_frames(FRAMES, WITHIN).await;
    assert_decoded(&d);
    eprintln!(
        "first frame after {:?} from an idle pipeline",
        d.first_frame_after
    );
    assert_eq!(media.encoders_running(), 1);

    // The last one leaving stops it after the grace period.
    viewer.bye().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while media.encoders_running() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        media.encoders_running(),
        0,
        "stopped after the last viewer left"
    );
    let stopped_at = frames();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(frames() <= stopped_at + 1, "no frames once stopped");

    // A snapshot starts it for the picture, then it stops again.
    let jpeg = media
        .snapshot()
        .await
        .expect("snapshot from an idle camera");
    assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while media.encoders_running() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(media.encoders_running(), 0);
    rt.app.stop().await;
}

/// How much brighter the top of the picture is than its bottom. The SMPTE bars (top two thirds)
/// are bright, the PLUGE strip at the bottom mostly black; the pattern scrolls sideways, so only
/// the vertical order is a stable mark.
async fn top_minus_bottom(viewer: &Viewer) -> f64 {
    let d = viewer
        .wait_frames(viewer.decoded().frames + 5, WITHIN)
        .await;
    let top = d.row_luma(0.15).expect("a decoded picture");
    let bottom = d.row_luma(0.85).expect("a decoded picture");
    top - bottom
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_turns_the_picture_a_viewer_sees() {
    let mut cfg = test_config("turned");
    cfg.source.rotation = rtcam::config::Rotation::R180;
    let rt = start(cfg).await;
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    assert!(viewer.wait_frames(10, WITHIN).await.frames >= 10);
    let turned = top_minus_bottom(&viewer).await;
    assert!(
        turned < -40.0,
        "rotation = 180: the dark strip is on top ({turned:.0})"
    );

    // `set` turns it back; the pipeline is rebuilt and the viewer keeps its session.
    let c = Commander::connect(Protocol::V5, rt.broker(), &rt.root()).await;
    let r = c.request("set", serde_json::json!({"rotation": 0})).await;
    assert_eq!(r.body["ok"], true, "{}", r.body);
    assert_eq!(r.body["result"]["pipeline_restarted"], true, "{}", r.body);
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let upright = top_minus_bottom(&viewer).await;
        if upright > 40.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after set rotation 0 the bars are still not on top ({upright:.0})"
        );
    }
    viewer.bye().await;
    rt.app.stop().await;
}
