//! The VP8 fallback with real WebRTC viewers decoding with GStreamer: a viewer offering only
//! VP8 beside an H.264 viewer, one camera capture feeding both encoders; keyframe requests
//! reaching only the requester's encoder; the VP8 branch living exactly as long as its
//! viewers; and a VP8 viewer alone starting and stopping the on-demand pipeline.

use crate::common;

use common::viewer::{Viewer, ViewerOptions};
use common::{start, test_config};
use rtcam::media::{Media, MediaStats};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(30);

fn vp8_only() -> ViewerOptions {
    ViewerOptions {
        vp8_only: true,
        ..Default::default()
    }
}

/// Waits, bounded, until `pred` holds; false if it never did.
async fn eventually(within: Duration, pred: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !pred() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn count(media: &Media, pick: fn(&MediaStats) -> &AtomicU64) -> u64 {
    pick(media.stats()).load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: the VP8 and H.264 viewers' keyframe counts are compared across its steps"
)]
async fn vp8_viewer_beside_h264_with_its_own_keyframes() {
    let mut config = test_config("vp8both");
    // No scheduled keyframes: every keyframe seen after the joins was forced by a request.
    config.encoder.keyframe_interval = 100_000;
    let rt = start(config).await;
    let media = rt.app.media().clone();
    let h264 = Viewer::connect(rt.broker(), &rt.root()).await;
    assert!(h264.wait_frames(10, WITHIN).await.frames >= 10);
    assert!(
        !media.info().borrow().vp8_running,
        "no VP8 without a VP8 viewer"
    );
    assert_eq!(media.encoders_running(), 1);

    let vp8 = Viewer::connect_with(rt.broker(), &rt.root(), vp8_only()).await;
    let decoded = vp8.wait_frames(10, WITHIN).await;
    assert!(decoded.frames >= 10, "the VP8 viewer decoded {decoded:?}");
    assert_eq!((decoded.width, decoded.height), (320, 240), "{decoded:?}");
    assert!(media.info().borrow().vp8_running);
    assert_eq!(media.encoders_running(), 2, "H.264 and VP8");
    // Status names the second encoder while it runs; the sessions list says who gets what.
    let mut status = rt.app.status();
    tokio::time::timeout(
        WITHIN,
        status.wait_for(|s| {
            s.encoder
                .as_deref()
                .is_some_and(|e| e.ends_with(", vp8enc"))
        }),
    )
    .await
    .expect("R/status names vp8enc while it runs")
    .unwrap();
    let sessions = rt
        .app
        .controller()
        .execute(
            rtcam::control::Command::Sessions,
            rtcam::control::exec::Requester::Mqtt,
        )
        .await
        .unwrap();
    // Labelled in the order the offers came: the H.264 viewer first.
    let codec_of = |label: &str| {
        sessions
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["label"] == label)
            .map(|s| s["codec"].clone())
    };
    assert_eq!(codec_of("v1"), Some("H264".into()), "{sessions}");
    assert_eq!(codec_of("v2"), Some("VP8".into()), "{sessions}");
    // Each answer names only the codec its viewer gets.
    let answer = |v: &Viewer| {
        v.has_message("answer").unwrap()["sdp"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a264, avp8) = (answer(&h264), answer(&vp8));
    assert!(
        avp8.contains("VP8/90000") && !avp8.contains("H264"),
        "{avp8}"
    );
    assert!(
        a264.contains("H264/90000") && !a264.contains("VP8"),
        "{a264}"
    );
    assert!(
        count(&media, |s| &s.vp8_keyframes) >= 1,
        "VP8 starts on a keyframe"
    );

    // A bitrate change reaches the running VP8 encoder too (live, no rebuild); both viewers
    // keep decoding.
    media.set_bitrate(400);
    let seen = vp8.decoded().frames;
    assert!(vp8.wait_frames(seen + 10, WITHIN).await.frames >= seen + 10);
    assert_eq!(media.info().borrow().bitrate_kbps, 400);

    // Let the join requests' merge window (500 ms) pass, so each PLI below forces at once.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (h_before, v_before) = (
        count(&media, |s| &s.keyframes),
        count(&media, |s| &s.vp8_keyframes),
    );
    vp8.send_pli().await;
    assert!(
        eventually(WITHIN, || count(&media, |s| &s.vp8_keyframes) > v_before).await,
        "a VP8 viewer's PLI forced a VP8 keyframe"
    );
    assert_eq!(
        count(&media, |s| &s.keyframes),
        h_before,
        "and no H.264 keyframe"
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    let (h_before, v_before) = (
        count(&media, |s| &s.keyframes),
        count(&media, |s| &s.vp8_keyframes),
    );
    h264.send_pli().await;
    assert!(
        eventually(WITHIN, || count(&media, |s| &s.keyframes) > h_before).await,
        "an H.264 viewer's PLI forced an H.264 keyframe"
    );
    // The VP8 encoder makes keyframes only when asked (its interval is 100 000 frames too).
    assert_eq!(
        count(&media, |s| &s.vp8_keyframes),
        v_before,
        "and no VP8 keyframe"
    );

    // The last VP8 viewer leaves: its encoder goes, the H.264 viewer keeps decoding.
    vp8.bye().await;
    let mut info = media.info();
    tokio::time::timeout(WITHIN, info.wait_for(|i| !i.vp8_running))
        .await
        .expect("the VP8 branch stopped after its last viewer")
        .unwrap();
    assert_eq!(media.encoders_running(), 1);
    let seen = h264.decoded().frames;
    assert!(
        h264.wait_frames(seen + 15, WITHIN).await.frames >= seen + 15,
        "the H.264 viewer kept decoding through the VP8 branch's stop"
    );
    // And comes back for the next one.
    let again = Viewer::connect_with(rt.broker(), &rt.root(), vp8_only()).await;
    assert!(again.wait_frames(10, WITHIN).await.frames >= 10);
    again.bye().await;
    h264.bye().await;
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vp8_viewer_alone_starts_and_stops_the_camera() {
    let mut config = test_config("vp8alone");
    config.source.always_on = false;
    config.source.idle_stop_secs = 1;
    let rt = start(config).await;
    let media = rt.app.media().clone();
    assert!(!media.info().borrow().running, "idle before any viewer");
    let vp8 = Viewer::connect_with(rt.broker(), &rt.root(), vp8_only()).await;
    assert!(vp8.wait_frames(10, WITHIN).await.frames >= 10);
    assert!(count(&media, |s| &s.frames) > 0, "H.264 runs with it");
    vp8.bye().await;
    let mut info = media.info();
    tokio::time::timeout(WITHIN, info.wait_for(|i| !i.running && !i.vp8_running))
        .await
        .expect("the pipeline stopped after the VP8 viewer left")
        .unwrap();
    assert_eq!(media.encoders_running(), 0);
    rt.app.stop().await;
}
