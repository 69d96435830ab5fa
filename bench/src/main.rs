//! rtcam-bench: starts a release rtcam (test pattern, x264enc, embedded broker) as a child
//! process and measures it from outside with real WebRTC viewers in this process: start to
//! ready, idle cost, time to first frame by stage, glass-to-glass latency from a barcode in the
//! picture, and CPU, memory, frame rate and loss as viewers are added (and, with `--ports`, the
//! same with one shared UDP port against a port per session). Writes the results into
//! docs/benchmarks.md and SVG plots beside it.
//!
//! A separate workspace member, not part of the daemon: rtcam never links plotters or the viewer
//! (`rtcam-viewer`, shared with the tests).

mod daemon;
mod doors;
mod janus;
mod report;

use anyhow::{bail, Context, Result};
use clap::Parser;
use daemon::{ProcSample, Rtcam, Setup, UdpPort};
use report::{FanoutRow, PortsRun, Results, TtffSample};
use rtcam_viewer::janus::JanusViewer;
use rtcam_viewer::{Decoded, Viewer, ViewerOptions};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The viewers' ICE check interval (`--viewer-ice-check-ms`): an experiment to tell which
/// side's 200 ms default paces session setup.
static ICE_CHECK_INTERVAL: OnceLock<Duration> = OnceLock::new();

/// A viewer of rtcam. `decode` runs GStreamer's H.264 decoder and reads the capture-time
/// barcode; without it only RTP is counted (cheap enough for 32 in one process).
async fn viewer(broker: (&str, u16), root: &str, decode: bool) -> Result<Viewer> {
    let opts = ViewerOptions {
        no_decode: !decode,
        stamps: decode,
        ice_check_interval: ICE_CHECK_INTERVAL.get().copied(),
        sid_prefix: Some("b"),
        ..ViewerOptions::default()
    };
    Ok(Viewer::try_connect(broker, root, opts).await?)
}

/// rtcam's `[source] idle_stop_secs` in the benchmark's configuration (daemon.rs).
const IDLE_STOP: Duration = Duration::from_secs(daemon::IDLE_STOP_SECS);

#[derive(Parser, Debug)]
#[command(about = "Benchmarks rtcam: time to first frame, latency, fan-out cost")]
struct Args {
    /// The rtcam binary to measure (default: `rtcam` beside this binary, else target/release/rtcam;
    /// or RTCAM_BIN).
    #[arg(long)]
    rtcam: Option<PathBuf>,
    /// A short run that only checks the harness works (2 viewers, a few seconds); writes nothing.
    #[arg(long)]
    smoke: bool,
    /// Sessions for time to first frame, one after another.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Viewer counts for the fan-out table.
    #[arg(long, value_delimiter = ',', default_value = "0,1,4,8,16,32")]
    viewers: Vec<usize>,
    /// Seconds of each fan-out measuring window.
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// Seconds of the idle measuring window (long: one clock tick is 10 ms of CPU).
    #[arg(long, default_value_t = 20)]
    idle: u64,
    /// Seconds one decoding viewer collects latency samples for.
    #[arg(long, default_value_t = 20)]
    latency_secs: u64,
    /// rtcam starts for the start-to-ready figure.
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// The viewers' ICE check interval in ms. 50 is a browser's pace (Chromium checks a pair
    /// that is not yet writable every 48 ms); webrtc-rs's own default, 200, would measure the
    /// viewer library rather than rtcam.
    #[arg(long, default_value_t = 50)]
    viewer_ice_check_ms: u64,
    /// Sessions for time to first frame started on an idle camera (the pipeline stopped, so
    /// the viewer's arrival starts it); each waits out rtcam's idle stop first.
    #[arg(long, default_value_t = 10)]
    cold_sessions: usize,
    /// Also measure glass to glass in headless Chromium (tests/browser needs `npm ci`).
    #[arg(long)]
    chromium: bool,
    /// Page loads for time to first frame in Chromium (with --chromium).
    #[arg(long, default_value_t = 20)]
    chromium_sessions: usize,
    /// Also run the fan-out through Janus's streaming plugin (Debian package `janus`).
    #[arg(long)]
    janus: bool,
    /// Also measure rtcam with one client of each door (WebRTC over MQTT, RTSP, WHEP) against
    /// three WebRTC viewers over MQTT.
    #[arg(long)]
    doors: bool,
    /// Also compare rtcam's sessions on one shared UDP port (`[webrtc] udp_port`, a free port)
    /// with a port per session (`udp_port = 0`): an rtcam of each, time to first frame over
    /// `--sessions` sessions and CPU and memory with `--ports-viewers` viewers.
    #[arg(long)]
    ports: bool,
    /// Viewer counts of the --ports comparison.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    ports_viewers: Vec<usize>,
    /// Skip the core sections (start to ready, idle, time to first frame, glass to glass,
    /// fan-out) to run only those asked for (--ports, --doors, --janus, --chromium). The
    /// plots are then not drawn.
    #[arg(long)]
    no_core: bool,
    /// The markdown file whose results section is rewritten; plots go beside it.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.sessions = 2;
        args.viewers = vec![2];
        args.window = 2;
        args.idle = 1;
        args.latency_secs = 2;
        args.starts = 1;
        args.cold_sessions = 1;
        // Both port modes, one session each and no fan-out (the core run has one): seconds.
        args.ports = true;
        args.ports_viewers = Vec::new();
    }
    let _ = ICE_CHECK_INTERVAL.set(Duration::from_millis(args.viewer_ice_check_ms));
    let runtime = tokio::runtime::Runtime::new()?;
    let results = runtime.block_on(run(&args))?;
    print!("{}", report::summary(&results));
    if args.smoke {
        smoke_checks(&results)?;
    } else {
        report::write(&results, &args.out)?;
        let plots = if results.core { " and its plots" } else { "" };
        eprintln!("wrote {}{plots}", args.out.display());
    }
    // The runtime's viewer tasks may still hold sockets; they go with the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// What `make test` relies on: every stage measured, frames decoded with readable stamps.
fn smoke_checks(r: &Results) -> Result<()> {
    if r.core {
        if r.ttff.is_empty() || r.ttff.iter().any(|s| s.stages.first_frame.is_none()) {
            bail!("smoke: a session decoded no frame");
        }
        if r.latencies_ms.is_empty() {
            bail!("smoke: no latency stamp read back");
        }
    }
    for p in &r.ports {
        if p.ttff.is_empty() || p.ttff.iter().any(|s| s.stages.first_frame.is_none()) {
            bail!("smoke: a session with {:?} decoded no frame", p.mode);
        }
    }
    let rows = r
        .fanout
        .iter()
        .chain(&r.janus_rtsp_fanout)
        .chain(r.ports.iter().flat_map(|p| &p.fanout));
    if rows.clone().any(|row| row.fps.iter().any(|f| *f < 1.0)) {
        bail!("smoke: a fan-out viewer received no frames");
    }
    eprintln!("smoke: ok");
    Ok(())
}

async fn run(args: &Args) -> Result<Results> {
    let setup = Setup {
        binary: args.rtcam.clone().unwrap_or_else(daemon::default_binary),
        width: 1280,
        height: 720,
        fps: 30,
        bitrate_kbps: 2000,
        max_sessions: 40,
        udp_port: UdpPort::Shared,
    };
    let mut results = Results::new(&setup, args.smoke);
    results.core = !args.no_core;

    // Start to ready: separate starts, each to the first retained online status.
    for _ in 1..if args.no_core { 0 } else { args.starts } {
        let r = Rtcam::start(&setup).await?;
        results.start_to_ready.push(r.start_to_ready);
        r.stop();
    }
    let cam = Rtcam::start(&setup).await?;
    results.start_to_ready.push(cam.start_to_ready);
    let broker = (cam.broker.0.as_str(), cam.broker.1);
    eprintln!(
        "rtcam ready in {:?} (pid {})",
        cam.start_to_ready,
        cam.pid()
    );

    if !args.no_core {
        // Idle: settle first, so start-up work is not counted.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let a = cam.sample()?;
        tokio::time::sleep(Duration::from_secs(args.idle)).await;
        let b = cam.sample()?;
        results.idle_cpu = a.cpu_percent(&b);
        results.idle_rss_kb = b.rss_kb;
        eprintln!("idle: {:.2} % CPU, {} kB", results.idle_cpu, b.rss_kb);

        time_to_first_frame(broker, &cam.root, args, &mut results).await?;
        eprintln!("time to first frame: {} sessions", results.ttff.len());
        let (latencies, unreadable) = glass_to_glass(broker, &cam.root, args.latency_secs).await?;
        results.latencies_ms = latencies;
        results.unreadable = unreadable;
        eprintln!("latency: {} samples", results.latencies_ms.len());
    }
    if args.chromium {
        match chromium_latency(&cam.page_url, args.latency_secs, args.chromium_sessions).await {
            Ok((lat, unreadable, ttff)) => {
                results.chromium_latencies_ms = lat;
                results.chromium_unreadable = unreadable;
                results.chromium_ttff_ms = ttff;
            }
            // The browser is optional equipment; its failure is reported, not fatal.
            Err(e) => results.chromium_error = Some(format!("{e:#}")),
        }
        eprintln!("chromium: {} samples", results.chromium_latencies_ms.len());
    }

    // Fan-out: n viewers that count RTP but do not decode (32 decoders would starve rtcam of
    // the 2 cores it is measured on).
    for &n in if args.no_core {
        &[][..]
    } else {
        &args.viewers[..]
    } {
        let row = fanout(&rtcam_target(&cam), n, args.window, cam.pid()).await?;
        results.fanout.push(row);
    }
    // Before Janus pulls the RTSP door: its rows require rtcam to serve Janus alone.
    if args.doors {
        results.doors = doors::measure(&cam, args.window).await?;
    }
    if args.janus {
        janus_pulls_rtsp(&cam, args, &mut results).await?;
    }
    cam.stop();

    if args.ports {
        ports(&setup, args, &mut results).await?;
    }
    if args.janus {
        janus_alone(&setup, args, &mut results).await?;
    }
    results.load_end = report::loadavg();
    Ok(results)
}

/// The fan-out viewers of `cam`.
fn rtcam_target(cam: &Rtcam) -> Target {
    Target::Rtcam {
        host: cam.broker.0.clone(),
        port: cam.broker.1,
        root: cam.root.clone(),
    }
}

/// `--ports`: an rtcam with one UDP port shared by its sessions, then one with a port per
/// session, each measured alone with the same sessions and viewers as the core sections.
async fn ports(setup: &Setup, args: &Args, results: &mut Results) -> Result<()> {
    // The smoke run only checks both modes serve: one session each, no warm-up.
    let sessions = if args.smoke { 1 } else { args.sessions };
    for mode in [UdpPort::Shared, UdpPort::PerSession] {
        let setup = Setup {
            udp_port: mode,
            ..setup.clone()
        };
        let cam = Rtcam::start(&setup).await?;
        // The 1-minute load average, at start and end.
        let load1 = || {
            report::loadavg()
                .split(' ')
                .next()
                .unwrap_or("?")
                .to_string()
        };
        let load_start = load1();
        let broker = (cam.broker.0.as_str(), cam.broker.1);
        eprintln!("{mode:?}: rtcam with udp_port = {}", cam.udp_port);
        // The first viewer starts the pipeline; the sessions measured find it running.
        if !args.smoke {
            first_frame(broker, &cam.root, true, "warm-up").await?;
        }
        let ttff = warm_sessions(broker, &cam.root, sessions).await?;
        let mut fanout_rows = Vec::new();
        for &n in &args.ports_viewers {
            fanout_rows.push(fanout(&rtcam_target(&cam), n, args.window, cam.pid()).await?);
        }
        results.ports.push(PortsRun {
            mode,
            udp_port: cam.udp_port,
            ttff,
            fanout: fanout_rows,
            load: format!("{load_start} → {}", load1()),
        });
        cam.stop();
    }
    Ok(())
}

/// The same fan-out through Janus's streaming plugin fed its own stream (rtcam stopped).
async fn janus_alone(setup: &Setup, args: &Args, results: &mut Results) -> Result<()> {
    let j = janus::Janus::start(setup.width, setup.height, setup.fps, setup.bitrate_kbps)?;
    // Let Janus load and the feeder's first keyframe reach the mountpoint.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for &n in &args.viewers {
        let target = Target::Janus {
            base: j.base.clone(),
        };
        let row = fanout(&target, n, args.window, j.pid()).await?;
        results.janus_fanout.push(row);
    }
    if let Some(feeder) = j.feeder_pid() {
        let a = ProcSample::read(feeder)?;
        tokio::time::sleep(Duration::from_secs(args.window.min(5))).await;
        results.janus_feeder_cpu = Some(a.cpu_percent(&ProcSample::read(feeder)?));
    }
    Ok(())
}

/// The scale-out recipe (docs/scale-out.md): Janus's streaming plugin pulls rtcam's RTSP door
/// and the fan-out viewers watch through Janus. Each row is rtcam's CPU and memory; rtcam must
/// serve exactly one client (Janus) whatever the number of viewers, or the run fails.
async fn janus_pulls_rtsp(cam: &Rtcam, args: &Args, results: &mut Results) -> Result<()> {
    let j = janus::Janus::pulling(&cam.rtsp_url)?;
    // Janus connects on start; let the first keyframe reach the mountpoint.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for &n in &args.viewers {
        let target = Target::Janus {
            base: j.base.clone(),
        };
        let row = fanout_checking(&target, n, args.window, cam).await?;
        results.janus_rtsp_fanout.push(row);
    }
    Ok(())
}

/// [`fanout`] of rtcam's CPU, with rtcam's own viewer count read while the viewers watch.
async fn fanout_checking(target: &Target, n: usize, window: u64, cam: &Rtcam) -> Result<FanoutRow> {
    let (port, root) = (cam.broker.1, cam.root.clone());
    let watcher = tokio::spawn(async move {
        // Read once the viewers are in: after their first frames and the settling pause.
        tokio::time::sleep(Duration::from_secs(4)).await;
        daemon::viewers(port, &root).await
    });
    let row = fanout(target, n, window, cam.pid()).await?;
    let viewers = watcher.await??;
    eprintln!("fan-out {n} through Janus: rtcam serves {viewers} viewer(s)");
    if viewers != 1 {
        bail!("Janus pulling RTSP with {n} viewers: rtcam serves {viewers} viewers, not 1");
    }
    Ok(row)
}

/// Runs the connects concurrently, as viewers arriving together would.
async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            // A connect that panicked is a harness bug; the run goes on without that viewer.
            Err(e) => eprintln!("viewer task failed: {e}"),
        }
    }
    out
}

/// Time to first frame by stage, cold then warm.
async fn time_to_first_frame(
    broker: (&str, u16),
    root: &str,
    args: &Args,
    results: &mut Results,
) -> Result<()> {
    // Cold: the camera idle (pipeline stopped) when the viewer arrives, as for the first
    // viewer of the day. Each session waits out the idle stop first.
    for i in 0..args.cold_sessions {
        tokio::time::sleep(IDLE_STOP + Duration::from_millis(1500)).await;
        let label = format!("cold session {i}");
        results
            .ttff
            .push(first_frame(broker, root, true, &label).await?);
    }
    results
        .ttff
        .extend(warm_sessions(broker, root, args.sessions).await?);
    Ok(())
}

/// Warm: one session at a time, each ended before the next, with the pipeline running. The
/// gap outlasts the keyframe limiter's window (`keyframe_min_interval_ms`, 500 ms), so each
/// viewer gets its own forced keyframe as one arriving alone does; a viewer arriving within
/// that window of another shares the other's keyframe and waits up to the window for it.
async fn warm_sessions(broker: (&str, u16), root: &str, n: usize) -> Result<Vec<TtffSample>> {
    let mut out = Vec::new();
    for i in 0..n {
        tokio::time::sleep(daemon::SESSION_GAP).await;
        let label = format!("session {i}");
        out.push(first_frame(broker, root, false, &label).await?);
    }
    Ok(out)
}

/// One session's stages up to its first frame.
async fn first_frame(
    broker: (&str, u16),
    root: &str,
    cold: bool,
    label: &str,
) -> Result<TtffSample> {
    let v = viewer(broker, root, true)
        .await
        .context(label.to_string())?;
    if !v.wait_first_frame(Duration::from_secs(10)).await {
        eprintln!("{label}: no frame in 10 s");
    }
    let sample = TtffSample {
        stages: v.stages(),
        cold,
    };
    v.bye().await;
    Ok(sample)
}

/// Glass to glass: one decoding viewer reading the barcode from every picture for `secs`;
/// the ages in ms, and how many pictures had no readable barcode.
async fn glass_to_glass(broker: (&str, u16), root: &str, secs: u64) -> Result<(Vec<i64>, u64)> {
    let v = viewer(broker, root, true).await?;
    v.wait_first_frame(Duration::from_secs(10)).await;
    // The first second holds the join keyframe's catch-up; measure the steady state.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let skip = v.decoded().latencies_ms.len();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let c = v.decoded();
    v.bye().await;
    Ok((
        c.latencies_ms[skip.min(c.latencies_ms.len())..].to_vec(),
        c.unreadable,
    ))
}

/// What the fan-out viewers watch.
enum Target {
    Rtcam {
        host: String,
        port: u16,
        root: String,
    },
    Janus {
        base: String,
    },
}

enum AnyViewer {
    Rtcam(Viewer),
    Janus(JanusViewer),
}

impl AnyViewer {
    async fn connect(target: &Target) -> Result<AnyViewer> {
        Ok(match target {
            Target::Rtcam { host, port, root } => {
                AnyViewer::Rtcam(viewer((host, *port), root, false).await?)
            }
            Target::Janus { base } => AnyViewer::Janus(
                JanusViewer::connect(base, janus::MOUNTPOINT, ICE_CHECK_INTERVAL.get().copied())
                    .await?,
            ),
        })
    }
    fn decoded(&self) -> Decoded {
        match self {
            AnyViewer::Rtcam(v) => v.decoded(),
            AnyViewer::Janus(v) => v.decoded(),
        }
    }
    async fn wait_first_frame(&self, timeout: Duration) -> bool {
        match self {
            AnyViewer::Rtcam(v) => v.wait_first_frame(timeout).await,
            AnyViewer::Janus(v) => v.wait_first_frame(timeout).await,
        }
    }
    async fn close(self) {
        match self {
            AnyViewer::Rtcam(v) => v.bye().await,
            AnyViewer::Janus(v) => v.close().await,
        }
    }
}

/// n viewers connect together; once each has a frame and after 2 s to settle, the server's CPU
/// and RSS over the window, and each viewer's frame rate and loss over the same window.
async fn fanout(target: &Target, n: usize, window: u64, pid: u32) -> Result<FanoutRow> {
    let mut viewers = Vec::new();
    let connects = (0..n).map(|_| {
        let target = match target {
            Target::Rtcam { host, port, root } => Target::Rtcam {
                host: host.clone(),
                port: *port,
                root: root.clone(),
            },
            Target::Janus { base } => Target::Janus { base: base.clone() },
        };
        async move { AnyViewer::connect(&target).await }
    });
    for v in futures_join(connects).await {
        viewers.push(v?);
    }
    for v in &viewers {
        if !v.wait_first_frame(Duration::from_secs(20)).await {
            eprintln!("fan-out {n}: a viewer got no frame in 20 s");
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let me = std::process::id();
    let before: Vec<_> = viewers.iter().map(|v| v.decoded()).collect();
    let (a, own_a) = (ProcSample::read(pid)?, ProcSample::read(me)?);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let (b, own_b) = (ProcSample::read(pid)?, ProcSample::read(me)?);
    let secs = started.elapsed().as_secs_f64();
    let udp_sockets = daemon::udp_sockets(pid).ok();
    let after: Vec<_> = viewers.iter().map(|v| v.decoded()).collect();
    let mut row = FanoutRow {
        viewers: n,
        cpu: a.cpu_percent(&b),
        rss_kb: b.rss_kb,
        harness_cpu: own_a.cpu_percent(&own_b),
        load: report::loadavg(),
        udp_sockets,
        fps: Vec::new(),
        loss: Vec::new(),
    };
    for (x, y) in before.iter().zip(&after) {
        row.fps.push((y.rtp_frames - x.rtp_frames) as f64 / secs);
        let expected = y.expected.saturating_sub(x.expected);
        let got = y.rtp_packets.saturating_sub(x.rtp_packets);
        row.loss
            .push(expected.saturating_sub(got) as f64 / expected.max(1) as f64);
    }
    eprintln!(
        "fan-out {n}: server {:.1} % CPU, {} kB; harness {:.1} %",
        row.cpu, row.rss_kb, row.harness_cpu
    );
    for v in viewers {
        v.close().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(row)
}

/// Runs bench/chromium.mjs against rtcam's own viewer page; returns its latency samples, the
/// count of unreadable frames and its time-to-first-frame samples.
async fn chromium_latency(
    url: &str,
    secs: u64,
    sessions: usize,
) -> Result<(Vec<i64>, u64, Vec<f64>)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/chromium.mjs");
    let out = tokio::time::timeout(
        Duration::from_secs(secs + 60 + 12 * sessions as u64),
        tokio::process::Command::new("node")
            .arg(script)
            .arg(url)
            .arg(secs.to_string())
            .arg(sessions.to_string())
            .arg(daemon::SESSION_GAP.as_millis().to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("chromium did not finish")??;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim().lines().last().unwrap_or(""))
        .context("chromium.mjs printed no JSON")?;
    let lat = v["latencies_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
        .unwrap_or_default();
    let ttff = v["ttff_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    Ok((lat, v["unreadable"].as_u64().unwrap_or(0), ttff))
}
