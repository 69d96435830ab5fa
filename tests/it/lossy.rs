//! rtcam over a lossy network: a viewer in its own network namespace watches through a router VM
//! that applies `tc netem` (tests/it/common/lossy.rs; the host kernel may lack sch_netem, the
//! guest's Debian kernel has it). rtcam runs in-process in the other namespace.
//!
//! - `lossy_viewer_*`: 5 % loss each way, 80 ms ± 20 ms delay each way. The viewer (a child
//!   process, as a browser does) NACKs what is missing and asks for a keyframe (PLI) when a
//!   packet stays lost; rtcam resends from its NACK buffer and forces keyframes. With a 10 s
//!   GOP only those requested keyframes can repair the picture in time. The viewer must
//!   decode at least half the source frame rate over 10 s.
//! - `chromium_*`: headless Chromium on rtcam's page through the same impairment: page, MQTT,
//!   ICE, DTLS and video all cross it. Half the source rate again, and the browser NACKs.
//! - `bitrate_*`: a clean viewer and a viewer whose path is cut to 250 kbit/s; the encoder's
//!   bitrate falls from its maximum to the floor the clean viewer's estimate sets, the cut
//!   viewer is paced below it, and the encoder climbs back once the limit is gone.
//!
//! One VM serves every scenario (booting costs ~10 s of TCG); they run one after the other.
//! Needs root, qemu-system-x86, busybox-static, cpio, kmod and iproute2 (`make test-deps`);
//! `RTCAM_SKIP_VM=1` skips it.

use crate::common;

use common::lossy::{LossyLink, CAM_ADDR, VIEWER_ADDR};
use common::viewer::{Viewer, ViewerOptions};
use rtcam::config::Config;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// The impairment issue 8 asks for, on each direction of the viewer's path.
const LOSSY: &str = "loss 5% delay 80ms 20ms distribution normal";
/// Source frame rate of the test pattern.
const FPS: u32 = 30;

#[test]
fn lossy_link() {
    if std::env::var_os("RTCAM_SKIP_VM").is_some() {
        eprintln!("RTCAM_SKIP_VM set: skipping the lossy-link test");
        return;
    }
    if let Err(why) = common::lossy::available() {
        panic!("the lossy-link test {why} (or set RTCAM_SKIP_VM=1)");
    }
    let started = Instant::now();
    let link = LossyLink::start("netem-lossy", "netem-l");
    let cam = link.cam.name.clone();
    common::netns::enter_named(&cam, move || {
        let mut link = link;
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                lossy_viewer_gets_a_watchable_stream(&mut link).await;
                chromium_gets_a_watchable_stream(&mut link).await;
                bitrate_follows_a_limited_viewer_and_recovers(&mut link).await;
            });
    });
    eprintln!("lossy_link took {:?}", started.elapsed());
}

/// rtcam reachable from the viewer's namespace through the router.
fn config(device: &str) -> Config {
    let mut c = common::test_config(device);
    c.mqtt.embedded_listen = format!("{CAM_ADDR}:{}", common::free_port())
        .parse()
        .unwrap();
    c.mqtt.embedded_listen_v5 = format!("{CAM_ADDR}:{}", common::free_port())
        .parse()
        .unwrap();
    c.webrtc.udp_addrs = vec![CAM_ADDR.parse().unwrap(), "127.0.0.1".parse().unwrap()];
    c.source.fps = FPS;
    c
}

/// The sessions as the `sessions` command reports them.
async fn sessions(rt: &common::Running) -> Vec<Value> {
    let v = rt
        .app
        .controller()
        .execute(
            rtcam::control::Command::Sessions,
            rtcam::control::exec::Requester::Mqtt,
        )
        .await
        .unwrap();
    v.as_array().cloned().unwrap_or_default()
}

/// What the child viewer reports each second.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    frames: u64,
    plis: u64,
    rtp: u64,
}

/// A viewer process in the viewer's namespace; its reports arrive on a channel.
struct RemoteViewer {
    child: tokio::process::Child,
    seen: tokio::sync::watch::Receiver<Seen>,
}

impl RemoteViewer {
    fn spawn(link: &LossyLink, rt: &common::Running) -> RemoteViewer {
        let mut child = link
            .viewer
            .tokio_command(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lossy::viewer_process",
                "--ignored",
                "--nocapture",
            ])
            .env(
                "RTCAM_TEST_VIEWER",
                format!("{} {} {}", CAM_ADDR, rt.broker.1, rt.root()),
            )
            // Its panics and retries belong in this test's output.
            .env("RTCAM_LOG", "warn,webrtc=error,rtc=error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, seen) = tokio::sync::watch::channel(Seen::default());
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(json) = line.strip_prefix("SEEN ") else {
                    continue;
                };
                if let Ok(v) = serde_json::from_str::<Value>(json) {
                    let _ = tx.send(Seen {
                        frames: v["frames"].as_u64().unwrap_or(0),
                        plis: v["plis"].as_u64().unwrap_or(0),
                        rtp: v["rtp"].as_u64().unwrap_or(0),
                    });
                }
            }
        });
        RemoteViewer { child, seen }
    }

    fn seen(&self) -> Seen {
        *self.seen.borrow()
    }

    /// Waits until `pred` holds for what the viewer saw, or `within` passes.
    async fn wait(&mut self, within: Duration, pred: impl Fn(&Seen) -> bool) -> Seen {
        let _ = tokio::time::timeout(within, self.seen.wait_for(|s| pred(s))).await;
        self.seen()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Not a test on its own: the viewer process the lossy-link test starts in the viewer's
/// namespace. It behaves as a browser on a lossy path (`ViewerOptions::recover`) and prints
/// what it decoded once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by lossy_link as a child process in a network namespace"]
async fn viewer_process() {
    let Ok(spec) = std::env::var("RTCAM_TEST_VIEWER") else {
        return;
    };
    let mut parts = spec.split(' ');
    let (host, port, root) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().parse::<u16>().unwrap(),
        parts.next().unwrap().to_string(),
    );
    // Signalling crosses the lossy path too (MQTT over TCP): on 5 % loss TCP's retransmission
    // timeouts can outlast the helper's 10 s answer deadline now and then. A page would try
    // again; so does this viewer, with a new session.
    let mut attempt = 0;
    let viewer = loop {
        let (host, root) = (host.clone(), root.clone());
        let joined = tokio::spawn(async move {
            Viewer::connect_with(
                (&host, port),
                &root,
                ViewerOptions {
                    udp_addrs: vec![format!("{VIEWER_ADDR}:0")],
                    recover: true,
                    ..Default::default()
                },
            )
            .await
        })
        .await;
        match joined {
            Ok(viewer) => break viewer,
            Err(e) if attempt < 3 => {
                attempt += 1;
                eprintln!("lossy viewer: joining failed ({e}); trying again");
            }
            Err(e) => panic!("lossy viewer: joining failed {attempt} times: {e}"),
        }
    };
    loop {
        let d = viewer.decoded();
        println!(
            "SEEN {}",
            serde_json::json!({"frames": d.frames, "plis": d.plis_sent, "rtp": d.rtp_packets})
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Issue 8: 5 % loss and 80 ms ± 20 ms each way; the stream stays watchable.
async fn lossy_viewer_gets_a_watchable_stream(link: &mut LossyLink) {
    link.netem_async(LOSSY);
    let mut c = config("lossy");
    // A 10 s GOP: in the measured 10 s at most one scheduled keyframe comes, so a picture
    // broken by a lost packet is repaired by the keyframes the viewer's PLIs force.
    c.encoder.keyframe_interval = 10 * FPS;
    let rt = common::start(c).await;
    let mut viewer = RemoteViewer::spawn(link, &rt);

    // Signalling (MQTT over TCP) and ICE both cross the lossy path: the viewer may retry.
    let first = viewer.wait(Duration::from_secs(90), |s| s.frames > 0).await;
    assert!(
        first.frames > 0,
        "the viewer decoded nothing through the lossy link: {first:?}"
    );
    // Measure after a settling second, over 10 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = viewer.seen();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = viewer.seen();
    let secs = t0.elapsed().as_secs_f64();
    let fps = (after.frames - before.frames) as f64 / secs;
    let list = sessions(&rt).await;
    let session = list.first().cloned().unwrap_or_default();
    let nacked = session["nacked_packets"].as_u64().unwrap_or(0);
    let resent = session["retransmitted_packets"].as_u64().unwrap_or(0);
    let keyframe_requests = session["keyframe_requests"].as_u64().unwrap_or(0);
    let keyframes = rt
        .app
        .media()
        .stats()
        .keyframes
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "lossy viewer: {fps:.1} fps decoded over {secs:.1} s (source {FPS}); {} RTP packets; \
         rtcam: {nacked} packets NACKed, {resent} resent, {keyframe_requests} PLI/FIR, {keyframes} keyframes; \
         viewer sent {} PLIs; loss reported {:?} %, estimate {:?} kbit/s",
        after.rtp - before.rtp,
        after.plis,
        session["loss_percent"],
        session["estimate_kbps"],
    );
    // Watchable: at least half the source rate. The threshold tells recovery from none: with
    // the viewer's jitter buffer and PLIs off (NACKs still on) this path gave 2.4 fps, since
    // reordered or late packets break frames and a broken frame breaks the 10 s GOP after it.
    assert!(
        fps >= f64::from(FPS) / 2.0,
        "only {fps:.1} fps decoded (source {FPS})"
    );
    // Retransmission was on: the viewer NACKed and rtcam resent from its send buffer.
    assert!(nacked > 0, "no NACK reached rtcam: {session}");
    assert!(resent > 0, "rtcam resent nothing: {session}");
    // Keyframe recovery: the viewer asked, rtcam forced keyframes beyond the scheduled ones.
    assert!(after.plis > 0, "the viewer never asked for a keyframe");
    assert!(keyframe_requests > 0, "no PLI reached rtcam: {session}");
    viewer.stop().await;
    rt.app.stop().await;
    link.netem_async("");
}

/// The same path with a browser: headless Chromium in the viewer's namespace opens rtcam's page
/// through the router and must decode 10 s worth of frames at no less than half the source
/// rate, NACKing what the path loses. Its DTLS handshake crosses the loss too (vendor/README.md
/// says which retransmission fix that needs).
async fn chromium_gets_a_watchable_stream(link: &mut LossyLink) {
    const FRAMES: u32 = 10 * FPS;
    link.netem_async(LOSSY);
    let mut c = config("lossy-page");
    c.http.listen = format!("{CAM_ADDR}:{}", common::free_port())
        .parse()
        .unwrap();
    let url = format!("http://{}/", c.http.listen);
    let configured = u64::from(c.encoder.bitrate_kbps);
    let rt = common::start(c).await;
    let script = format!("{}/tests/browser/view.mjs", env!("CARGO_MANIFEST_DIR"));
    let run = link
        .viewer
        .tokio_command("node")
        .arg(script)
        .args(["--url", &url, "--width", "320", "--height", "240"])
        .args(["--frames", &FRAMES.to_string(), "--timeout", "90000"])
        .output();
    tokio::pin!(run);
    // rtcam's side of the browser's session, sampled while the page watches: the session ends
    // when the page closes.
    let mut session = Value::Null;
    let mut every = tokio::time::interval(Duration::from_millis(500));
    let out = loop {
        tokio::select! {
            out = &mut run => break out.expect("node runs (make test-deps installs the browser test's packages)"),
            _ = every.tick() => {
                if let Some(s) = sessions(&rt).await.into_iter().next() {
                    session = s;
                }
            }
        }
    };
    let page = common::script_report(&out.stdout);
    eprintln!("Chromium through the lossy link: {page}");
    assert!(
        out.status.success(),
        "Chromium did not decode {FRAMES} frames through the lossy link: {page}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // From its first frame to its last sample (every 250 ms) the page decoded this many.
    let decoding_ms =
        page["elapsedMs"].as_f64().unwrap() - page["timeToFirstFrameMs"].as_f64().unwrap();
    let fps = page["framesDecoded"].as_f64().unwrap() / (decoding_ms / 1000.0);
    eprintln!(
        "Chromium: {fps:.1} fps decoded over {:.1} s (source {FPS})",
        decoding_ms / 1000.0
    );
    assert!(
        fps >= f64::from(FPS) / 2.0,
        "only {fps:.1} fps decoded: {page}"
    );
    assert!(
        page["nackCount"].as_u64().unwrap_or(0) > 0,
        "Chromium sent no NACK through 5 % loss: {page}"
    );
    eprintln!(
        "rtcam for Chromium: {} packets NACKed, {} resent, {} PLI/FIR, loss reported {} %, estimate {} kbit/s",
        session["nacked_packets"],
        session["retransmitted_packets"],
        session["keyframe_requests"],
        session["loss_percent"],
        session["estimate_kbps"]
    );
    assert!(
        session["retransmitted_packets"].as_u64().unwrap_or(0) > 0,
        "rtcam resent nothing the browser asked for: {session}"
    );
    // Random loss that retransmissions repair is no reason to lower the picture: the estimate
    // stays near the configured rate. The mean of Chromium's per-report loss fractions would
    // put it near 450 kbit/s; `LossCounter` reads the cumulative counters instead.
    assert!(
        session["estimate_kbps"].as_u64().unwrap_or(0) >= configured * 3 / 4,
        "rtcam's estimate for Chromium fell on random loss: {session}"
    );
    rt.app.stop().await;
    link.netem_async("");
}

/// Issue 4: one of two viewers' paths is cut to 250 kbit/s; the encoder follows it down, not
/// below a quarter of the clean viewer's estimate (below that the cut viewer is paced with
/// keyframe-skipping), and climbs back once the cut is gone.
#[expect(
    clippy::too_many_lines,
    reason = "one measurement over time: cut, follow down, pace, lift, recover, each phase timed from the last"
)]
async fn bitrate_follows_a_limited_viewer_and_recovers(link: &mut LossyLink) {
    const MAX: u32 = 1000;
    let mut c = config("adapt");
    c.encoder.bitrate_kbps = MAX;
    c.encoder.max_bitrate_kbps = MAX;
    c.encoder.min_bitrate_kbps = 150;
    c.encoder.follow_ratio = 0.25;
    let rt = common::start(c).await;
    let bitrate = || rt.app.media().info().borrow().bitrate_kbps;

    // The broker listens on the namespace's address only.
    let clean = Viewer::connect((CAM_ADDR, rt.broker.1), &rt.root()).await;
    let mut limited = RemoteViewer::spawn(link, &rt);
    assert!(
        clean.wait_frames(10, Duration::from_secs(30)).await.frames >= 10,
        "the clean viewer decodes"
    );
    let seen = limited
        .wait(Duration::from_secs(60), |s| s.frames > 10)
        .await;
    assert!(
        seen.frames > 10,
        "the limited viewer decodes before the cut: {seen:?}"
    );
    // A clean link keeps the encoder at its maximum (or brings it back there, should a
    // starved emulated router have dropped packets while everything started).
    let settle = Instant::now();
    while bitrate() < MAX && settle.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        bitrate(),
        MAX,
        "the encoder is at its maximum before the cut"
    );

    // The cut: a 250 kbit/s bottleneck with a short queue towards the viewer. What the encoder
    // sends beyond that is lost, the viewer's receiver reports say so.
    link.netem_on_async("eth1", "rate 250kbit limit 30");
    let cut = Instant::now();
    let mut lowest = MAX;
    while cut.elapsed() < Duration::from_secs(60) && lowest > MAX * 6 / 10 {
        lowest = lowest.min(bitrate());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = sessions(&rt).await;
    eprintln!(
        "after the cut: encoder at {lowest} kbit/s after {:?}; sessions {}",
        cut.elapsed(),
        serde_json::to_string(&list).unwrap()
    );
    assert!(
        lowest <= MAX * 6 / 10,
        "the encoder stayed at {lowest} kbit/s with a viewer cut to 250 kbit/s"
    );
    // The cut viewer's estimate keeps falling below what the encoder may go down to (a
    // quarter of the clean viewer's 1000): it is paced at its own rate, skipping to keyframes,
    // and the encoder stays at the floor for the clean viewer.
    let floor = MAX / 4;
    let paced_within = Instant::now() + Duration::from_secs(40);
    let paced = loop {
        let list = sessions(&rt).await;
        // Pacing may also flicker on during the descent, while the encoder's once-a-second
        // changes lag the estimate; the claim is about the viewer below the floor.
        let below_floor = |s: &&Value| {
            s["paced"] == true && s["estimate_kbps"].as_u64().unwrap_or(u64::MAX) < u64::from(floor)
        };
        if let Some(s) = list.iter().find(below_floor) {
            break Some(s.clone());
        }
        if Instant::now() > paced_within {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let paced = paced.unwrap_or_else(|| {
        panic!(
            "the cut viewer was never paced; encoder at {} kbit/s",
            bitrate()
        )
    });
    eprintln!(
        "paced after {:?}: {paced}; encoder at {} kbit/s",
        cut.elapsed(),
        bitrate()
    );
    // Within the 5 % adaptation does not bother the encoder with.
    assert!(
        bitrate() >= floor * 95 / 100,
        "the cut viewer dragged the encoder to {} kbit/s, below {floor}",
        bitrate()
    );

    // The cut lifted: clean reports raise the estimate by 8 % a second, back towards MAX.
    link.netem_on_async("eth1", "");
    let lifted = Instant::now();
    while lifted.elapsed() < Duration::from_secs(90) && bitrate() < MAX * 9 / 10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "after the cut was lifted: encoder at {} kbit/s after {:?}",
        bitrate(),
        lifted.elapsed()
    );
    assert!(
        bitrate() >= MAX * 9 / 10,
        "the encoder did not recover: {} kbit/s",
        bitrate()
    );
    // Both kept watching throughout.
    let before = clean.decoded().frames;
    assert!(
        clean
            .wait_frames(before + 30, Duration::from_secs(20))
            .await
            .frames
            >= before + 30,
        "the clean viewer still decodes"
    );
    let before = limited.seen().frames;
    let after = limited
        .wait(Duration::from_secs(20), |s| s.frames >= before + 30)
        .await;
    assert!(
        after.frames >= before + 30,
        "the limited viewer decodes again: {after:?}"
    );
    limited.stop().await;
    clean.bye().await;
    rt.app.stop().await;
}
