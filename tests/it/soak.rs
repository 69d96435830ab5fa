//! Churn soak: 1000 viewers join and leave one rtcam process, eight at a time, and afterwards
//! its memory, file descriptors and tokio tasks are back where they were after warm-up.
//!
//! rtcam runs as its own binary so `/proc/PID` describes rtcam alone. Each cycle is a real
//! WebRTC viewer: its own MQTT connection (client id = sid), offer, answer, trickled
//! candidates, ICE and DTLS connected, and the first RTP packet of video received. It is light
//! on purpose (no decoding, no interceptors) so a thousand fit in about two minutes on two
//! cores. Viewers leave three ways: `bye` then close (most), close without `bye` (DTLS
//! close_notify only), and vanish: a child process holding eight connected viewers is killed
//! with SIGKILL, so rtcam has to notice the silence through ICE. One cycle in twenty also
//! sends an offer that fails negotiation. The broker is mosquitto, so the figures are rtcam's
//! own.

use crate::common;

use common::free_port;
use common::viewer::{Viewer, ViewerOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Join/leave cycles in the soak (`RTCAM_SOAK_CYCLES` overrides, for a quick local run).
const CYCLES: usize = 1000;
/// Viewers joining and leaving at once.
const CONCURRENT: usize = 8;
/// Cycles before the baseline is taken: allocator pools, lazy statics and broker buffers
/// reach their working size here, not during the soak.
const WARM_UP: usize = 48;
/// Viewers per vanishing child process, and how many such processes are killed.
const VANISH_BATCH: usize = 8;
const VANISH_BATCHES: usize = 8;
/// Each step of a cycle (MQTT up, answer, connected, first packet) must happen within this.
const STEP: Duration = Duration::from_secs(20);
/// How much resident memory may differ from the baseline after the soak.
const RSS_SLACK_KB: i64 = 5 * 1024;

/// The rtcam binary under test; killed when dropped.
struct Rtcam {
    child: std::process::Child,
    broker_port: u16,
    http: SocketAddr,
    root: String,
    log: PathBuf,
    /// Stopped after rtcam (fields drop after `Drop::drop`).
    _mosquitto: common::Mosquitto,
    _dir: tempfile::TempDir,
}

impl Rtcam {
    fn start() -> Rtcam {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::test_config("soak");
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        config.http.listen = http;
        // Small and frequent keyframes: a joining viewer's first frame comes within ~0.5 s
        // (the keyframe merge interval) and encoding stays cheap.
        config.source.width = 160;
        config.source.height = 120;
        config.encoder.keyframe_interval = 15;
        // Room for every vanished viewer at once (they hold their sessions until ICE reports
        // them gone, a few seconds, while the next batches join) beside the churning ones:
        // the soak is about leaks, not the session limit, which tests/it/limits.rs covers.
        config.webrtc.max_sessions = 2 * (VANISH_BATCH * VANISH_BATCHES + CONCURRENT);
        config.webrtc.offers_per_second = 1000;
        // Vanished viewers are reaped once ICE reports them disconnected plus this.
        config.webrtc.disconnect_timeout_secs = 1;
        config.control.telemetry_interval_secs = 1;
        // mosquitto, not the embedded broker: rumqttd keeps a commit log for every topic it has
        // seen, for good (docs/reliability.md), which would be counted against rtcam here.
        let mosquitto = common::Mosquitto::start();
        config.mqtt.url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
        let broker_port = mosquitto.port;
        let path = dir.path().join("rtcam.toml");
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let log = dir.path().join("rtcam.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_rtcam"))
            .arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("rtcam binary starts");
        Rtcam {
            child,
            broker_port,
            http,
            root: "rtcam/soak".into(),
            log,
            _mosquitto: mosquitto,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Resident memory in KiB, from the kernel.
    fn rss_kb(&self) -> i64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Resident memory split as the kernel reports it: anonymous (heap, stacks) and file
    /// (code and data pages of the binary and its libraries).
    fn rss_split(&self) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .filter(|l| l.starts_with("RssAnon:") || l.starts_with("RssFile:"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// rtcam's own figures from `/metrics` (read live at each request).
    async fn metrics(&self) -> Option<Metrics> {
        let body = common::http::get(self.http, "/metrics", &[])
            .await
            .ok()?
            .text();
        let value = |name: &str| -> Option<f64> {
            let prefix = format!("rtcam_{name}{{device=\"soak\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.trim().parse().ok())
        };
        Some(Metrics {
            tasks: value("tokio_tasks")? as usize,
            viewers: value("viewers")? as usize,
            uptime: value("uptime_seconds")? as u64,
        })
    }

    /// Figures taken more than a second after now (so they reflect the present).
    async fn fresh_metrics(&self) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(20);
        let first = loop {
            if let Some(m) = self.metrics().await {
                break m;
            }
            assert!(Instant::now() < deadline, "no /metrics from rtcam");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        loop {
            if let Some(m) = self.metrics().await {
                if m.uptime > first.uptime + 1 {
                    return m;
                }
            }
            assert!(Instant::now() < deadline, "telemetry stopped updating");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until no session is left and the task count has settled; returns the figures.
    async fn quiet(&self, within: Duration) -> (Metrics, usize, i64) {
        let deadline = Instant::now() + within;
        let mut last: Option<Metrics> = None;
        loop {
            let m = self.fresh_metrics().await;
            let settled = m.viewers == 0 && last.as_ref().is_some_and(|l| l.tasks == m.tasks);
            if settled || Instant::now() > deadline {
                return (m, self.fds(), self.rss_kb());
            }
            last = Some(m);
        }
    }
}

impl Drop for Rtcam {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
struct Metrics {
    tasks: usize,
    viewers: usize,
    uptime: u64,
}

/// How a viewer leaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Leave {
    /// `bye` over MQTT, then close the peer connection.
    Bye,
    /// Close the peer connection only (DTLS close_notify), no `bye`.
    CloseOnly,
    /// Stay connected; the process holding it is killed.
    Stay,
}

impl Leave {
    async fn apply(self, viewer: Viewer) {
        match self {
            Leave::Bye => viewer.bye().await,
            // A vanishing viewer's process is killed before this; closing is what is left.
            Leave::CloseOnly | Leave::Stay => viewer.close().await,
        }
    }
}

/// One viewer joins: MQTT, offer, answer, candidates, connected, first video packet. A light
/// viewer (no decoding, no interceptors), so a thousand fit in the soak's time.
async fn join(broker_port: u16, root: &str) -> Result<Viewer, String> {
    let opts = ViewerOptions {
        no_decode: true,
        light: true,
        sid_prefix: Some("soak"),
        step_timeout: Some(STEP),
        ..ViewerOptions::default()
    };
    let viewer = Viewer::try_connect(("127.0.0.1", broker_port), root, opts)
        .await
        .map_err(|e| e.to_string())?;
    if viewer
        .wait_stage(|s| s.dtls_connected, STEP)
        .await
        .is_none()
    {
        let why = format!(
            "{}: not connected within {STEP:?} (state {:?})",
            viewer.sid,
            viewer.state()
        );
        viewer.close().await;
        return Err(why);
    }
    if viewer.wait_stage(|s| s.first_rtp, STEP).await.is_none() {
        let why = format!("{}: no video packet after connecting", viewer.sid);
        viewer.close().await;
        return Err(why);
    }
    Ok(viewer)
}

/// An offer that passes rtcam's checks but cannot be negotiated (no ICE credentials, no
/// fingerprint): rtcam builds a peer connection for it, fails, and must close it.
const UNUSABLE_OFFER: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";

/// Sends [`UNUSABLE_OFFER`] on a fresh session and waits for its `bad_sdp` error.
async fn refused_offer(broker_port: u16, root: &str) -> Result<(), String> {
    let sid = format!("soakbad{:016x}", rand::random::<u64>());
    let mut opts = MqttOptions::new(sid.clone(), "127.0.0.1", broker_port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe(format!("{root}/session/{sid}/out"), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    let mut offered = false;
    let outcome = tokio::time::timeout(STEP, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) if !offered => {
                    offered = true;
                    let offer = json!({"type":"offer","sdp":UNUSABLE_OFFER});
                    publish(&client, &format!("{root}/session/{sid}/in"), offer).await?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    return if v["code"] == "bad_sdp" {
                        Ok(())
                    } else {
                        Err(format!("{sid}: expected bad_sdp, got {v}"))
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(format!("{sid}: {e}")),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("{sid}: no reply to an unusable offer")));
    let _ = client.disconnect().await;
    // Let the DISCONNECT go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    outcome
}

/// The viewer's publish, its error as the text the soak collects.
async fn publish(client: &AsyncClient, topic: &str, body: Value) -> Result<(), String> {
    rtcam_viewer::publish(client, topic, body)
        .await
        .map_err(|e| e.to_string())
}

/// Runs `count` join/leave cycles, `CONCURRENT` at once; returns the errors.
async fn churn(rtcam: &Rtcam, count: usize) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENT {
        let (next, errors, root, port) = (
            next.clone(),
            errors.clone(),
            rtcam.root.clone(),
            rtcam.broker_port,
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                // One in twenty cycles also sends an offer that fails after rtcam has built
                // a peer connection for it.
                if i % 20 == 19 {
                    if let Err(e) = refused_offer(port, &root).await {
                        errors.lock().unwrap().push(e);
                    }
                }
                match join(port, &root).await {
                    // One in ten leaves without a word on MQTT.
                    Ok(v) => {
                        let how = if i % 10 == 9 {
                            Leave::CloseOnly
                        } else {
                            Leave::Bye
                        };
                        how.apply(v).await
                    }
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    errors
}

/// Not a test on its own: the child process whose viewers vanish (see `churn_soak`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by churn_soak as a child process"]
async fn vanishing_viewers() {
    let Ok(spec) = std::env::var("RTCAM_SOAK_VANISH") else {
        return;
    };
    let (port, root) = spec.split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    let joins = (0..VANISH_BATCH).map(|_| join(port, root));
    let mut held = Vec::new();
    for r in futures::future::join_all(joins).await {
        match r {
            Ok(v) => held.push(v),
            Err(e) => println!("FAILED {e}"),
        }
    }
    println!("READY {}", held.len());
    tokio::time::sleep(Duration::from_secs(120)).await;
    for v in held {
        Leave::Stay.apply(v).await;
    }
}

/// Starts a child holding `VANISH_BATCH` connected viewers, and SIGKILLs it once they are up.
/// Returns how many had connected, and the errors it reported.
async fn vanish_batch(rtcam: &Rtcam) -> (usize, Vec<String>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "soak::vanishing_viewers",
            "--ignored",
            "--nocapture",
        ])
        .env(
            "RTCAM_SOAK_VANISH",
            format!("{} {}", rtcam.broker_port, rtcam.root),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut errors = Vec::new();
    let ready = tokio::time::timeout(STEP * 2, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(e) = line.strip_prefix("FAILED ") {
                errors.push(e.to_string());
            }
            if let Some(n) = line.strip_prefix("READY ") {
                return n.parse().unwrap_or(0);
            }
        }
        0
    })
    .await
    .unwrap_or(0);
    // SIGKILL: no bye, no close_notify, no ICE goodbye; the sockets just fall silent.
    child.kill().await.unwrap();
    (ready, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "warm-up, soak and the figures after: the comparison needs the baseline taken in the same function"
)]
async fn churn_soak() {
    let cycles: usize = std::env::var("RTCAM_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CYCLES);
    let began = Instant::now();
    let rtcam = Rtcam::start();
    let probe = common::Probe::connect(
        ("127.0.0.1", rtcam.broker_port),
        &[format!("{}/status", rtcam.root)],
    )
    .await;
    probe
        .wait_json(&format!("{}/status", rtcam.root), STEP, |v| {
            v["state"] == "online"
        })
        .await
        .unwrap_or_else(|| panic!("rtcam online; its log:\n{}", rtcam.log_tail()));
    drop(probe);

    // Warm-up takes every path the soak takes, vanishing viewers included.
    let (warm_errors, (warm_vanished, warm_vanish_errors)) =
        tokio::join!(churn(&rtcam, WARM_UP), vanish_batch(&rtcam));
    assert!(
        warm_errors.is_empty() && warm_vanish_errors.is_empty(),
        "warm-up: {warm_errors:#?} {warm_vanish_errors:#?}"
    );
    assert_eq!(warm_vanished, VANISH_BATCH);
    let (base, base_fds, base_rss) = rtcam.quiet(Duration::from_secs(30)).await;
    eprintln!(
        "after warm-up ({WARM_UP} cycles, {:?}): RSS {base_rss} KiB ({}), {base_fds} fds, {} tokio tasks",
        began.elapsed(),
        rtcam.rss_split(),
        base.tasks
    );

    // The soak: most cycles from the in-process workers, the rest vanish in killed children,
    // running alongside.
    let soak_start = Instant::now();
    let vanishing = if cycles >= CYCLES { VANISH_BATCHES } else { 1 };
    let killer = async {
        let mut vanished = 0;
        let mut errors = Vec::new();
        for _ in 0..vanishing {
            let (n, e) = vanish_batch(&rtcam).await;
            vanished += n;
            errors.extend(e);
        }
        (vanished, errors)
    };
    let in_process = cycles - vanishing * VANISH_BATCH;
    let (errors, (vanished, vanish_errors)) = tokio::join!(churn(&rtcam, in_process), killer);
    let soak_time = soak_start.elapsed();
    assert!(
        errors.is_empty() && vanish_errors.is_empty(),
        "{} of {in_process} cycles failed: {errors:#?}\nvanishing: {vanish_errors:#?}\nrtcam's log:\n{}",
        errors.len(),
        rtcam.log_tail()
    );
    assert_eq!(
        vanished,
        vanishing * VANISH_BATCH,
        "every vanishing viewer connected"
    );
    eprintln!(
        "{cycles} cycles ({in_process} in process, {vanished} vanished) in {soak_time:?}: {:.1} per second",
        cycles as f64 / soak_time.as_secs_f64()
    );

    // Vanished sessions are reaped after ICE notices (seconds) plus the 1 s timeout; then the
    // figures must come back, within a bounded wait.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (end, end_fds) = loop {
        let m = rtcam.fresh_metrics().await;
        let fds = rtcam.fds();
        if (m.viewers == 0 && m.tasks <= base.tasks && fds <= base_fds) || Instant::now() > deadline
        {
            break (m, fds);
        }
    };
    let end_rss = rtcam.rss_kb();
    eprintln!(
        "after the soak: RSS {end_rss} KiB ({:+} KiB; {}), {end_fds} fds ({:+}), {} tokio tasks ({:+}); whole test {:?}",
        end_rss - base_rss,
        rtcam.rss_split(),
        end_fds as i64 - base_fds as i64,
        end.tasks,
        end.tasks as i64 - base.tasks as i64,
        began.elapsed()
    );
    assert_eq!(end.viewers, 0, "every session ended");
    assert!(
        end.tasks <= base.tasks,
        "tokio tasks: {} after warm-up, {} after the soak",
        base.tasks,
        end.tasks
    );
    assert!(
        end_fds <= base_fds,
        "open fds: {base_fds} after warm-up, {end_fds} after the soak"
    );
    assert!(
        (end_rss - base_rss).abs() <= RSS_SLACK_KB,
        "RSS: {base_rss} KiB after warm-up, {end_rss} KiB after the soak"
    );
}
