//! Sound: rtcam with `[audio]` (the test tone) → Opus over WebRTC → a Rust viewer that decodes
//! it with GStreamer beside the video, and checks with RTCP sender reports that both streams'
//! RTP times map to the same clock; video-only offers and audio offers to a camera without audio
//! work as before. (The page and talkback are tested in `browser.rs`.)

use crate::common;

use common::viewer::{Decoded, Viewer, ViewerOptions};
use common::{start, test_config};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(30);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn audio_viewer() -> ViewerOptions {
    ViewerOptions {
        audio: true,
        ..Default::default()
    }
}

fn answer_sdp(viewer: &Viewer) -> String {
    viewer.has_message("answer").expect("an answer")["sdp"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until `done` holds for what the viewer has seen, or `WITHIN` passes.
async fn wait_for(viewer: &Viewer, done: impl Fn(&Decoded) -> bool) -> Decoded {
    let deadline = Instant::now() + WITHIN;
    loop {
        let d = viewer.decoded();
        if done(&d) || Instant::now() > deadline {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_video_arrive_in_step() {
    let mut config = test_config("audio1");
    config.audio.enabled = true;
    let rt = start(config).await;
    let viewer = Viewer::connect_with(rt.broker(), &rt.root(), audio_viewer()).await;
    let answer = answer_sdp(&viewer);
    assert!(
        answer.contains("m=audio") && answer.contains("opus/48000/2"),
        "{answer}"
    );
    // Enough of both, and a few seconds of packets timed by sender reports of both streams.
    let count = |d: &Decoded, audio: bool| {
        d.sync_offsets_ms
            .iter()
            .filter(|(a, _)| *a == audio)
            .count()
    };
    let d = wait_for(&viewer, |d| {
        d.frames >= 60 && d.audio_decoded >= 100 && count(d, true) >= 100 && count(d, false) >= 60
    })
    .await;
    assert!(d.frames >= 60, "video frames decoded: {}", d.frames);
    assert!(
        d.audio_decoded >= 100,
        "Opus buffers decoded: {} ({} packets)",
        d.audio_decoded,
        d.audio_packets
    );
    assert!(
        count(&d, true) >= 100 && count(&d, false) >= 60,
        "packets after sender reports (audio, video): ({}, {}); reports {:?}",
        count(&d, true),
        count(&d, false),
        d.sender_reports
    );
    // Each packet's arrival minus when its stream's sender report says it was sent: on loopback
    // a few ms plus the jitter of two busy cores. A receiver lines audio up with video by these
    // mappings, so what matters is that both streams agree: lip sync holds within ~45 ms of
    // audio early and ~125 ms late (ITU-R BT.1359); allow 80 ms between the medians.
    let audio = median(
        d.sync_offsets_ms
            .iter()
            .filter(|(a, _)| *a)
            .map(|(_, o)| *o)
            .collect(),
    );
    let video = median(
        d.sync_offsets_ms
            .iter()
            .filter(|(a, _)| !*a)
            .map(|(_, o)| *o)
            .collect(),
    );
    eprintln!("median arrival after sender-report time: audio {audio:.1} ms, video {video:.1} ms; reports {:?}", d.sender_reports);
    assert!(
        audio.abs() < 250.0 && video.abs() < 250.0,
        "audio {audio:.1} ms, video {video:.1} ms"
    );
    assert!(
        (audio - video).abs() < 80.0,
        "audio {audio:.1} ms vs video {video:.1} ms apart"
    );

    // And at the source: sound and picture captured together leave the pipeline together, so
    // sending each at once keeps them together. Sampled over two seconds while both flow.
    let stats = rt.app.media().audio_stats();
    let (mut audio_delay, mut video_delay) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        audio_delay.push(stats.audio_delay_us.load(Ordering::Relaxed) as f64 / 1000.0);
        video_delay.push(stats.video_delay_us.load(Ordering::Relaxed) as f64 / 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (audio_delay, video_delay) = (median(audio_delay), median(video_delay));
    eprintln!(
        "capture to leaving the pipeline: audio {audio_delay:.1} ms, video {video_delay:.1} ms"
    );
    assert!(
        (audio_delay - video_delay).abs() < 40.0,
        "audio leaves {audio_delay:.1} ms after capture, video {video_delay:.1} ms"
    );
    viewer.bye().await;
    rt.app.stop().await;
}

/// A camera with audio answers a video-only offer exactly as before: video, no audio section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_only_offer_to_a_camera_with_audio() {
    let mut config = test_config("audio2");
    config.audio.enabled = true;
    let rt = start(config).await;
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    let d = viewer.wait_frames(60, WITHIN).await;
    assert!(d.frames >= 60, "video frames decoded: {}", d.frames);
    assert!(!answer_sdp(&viewer).contains("m=audio"));
    assert_eq!(d.audio_packets, 0);
    viewer.bye().await;
    rt.app.stop().await;
}

/// An offer with audio to a camera without: the audio section is refused, the video plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_offer_to_a_camera_without_audio() {
    let rt = start(test_config("audio3")).await;
    let viewer = Viewer::connect_with(rt.broker(), &rt.root(), audio_viewer()).await;
    let d = viewer.wait_frames(60, WITHIN).await;
    assert!(d.frames >= 60, "video frames decoded: {}", d.frames);
    let answer = answer_sdp(&viewer);
    eprintln!("answer: {answer}");
    assert!(!answer.contains("opus"), "{answer}");
    assert_eq!(d.audio_packets, 0);
    assert_eq!(
        rt.app.media().audio_stats().packets.load(Ordering::Relaxed),
        0
    );
    viewer.bye().await;
    rt.app.stop().await;
}

/// A microphone that cannot be opened (here a Pulse device that does not exist) costs the sound,
/// not the picture: the pipeline is rebuilt without it and the viewer decodes video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_microphone_leaves_the_video() {
    let mut config = test_config("audio4");
    config.audio.enabled = true;
    config.audio.source = "pulse:rtcam-no-such-device".into();
    let rt = start(config).await;
    let viewer = Viewer::connect_with(rt.broker(), &rt.root(), audio_viewer()).await;
    let d = viewer.wait_frames(60, WITHIN).await;
    assert!(d.frames >= 60, "video frames decoded: {}", d.frames);
    let stats = rt.app.media().audio_stats();
    assert!(stats.mic_failed.load(Ordering::Relaxed));
    assert_eq!(stats.packets.load(Ordering::Relaxed), 0);
    assert_eq!(d.audio_packets, 0);
    viewer.bye().await;
    rt.app.stop().await;
}
