//! Results of a run: figures, the markdown tables written into docs/benchmarks.md (between two
//! markers, so the prose around them is kept), and the SVG plots.

use crate::daemon::{Setup, UdpPort};
use anyhow::{Context, Result};
use plotters::prelude::*;
use rtcam_viewer::Stages;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BEGIN: &str = "<!-- rtcam-bench results: begin (generated, do not edit) -->";
const END: &str = "<!-- rtcam-bench results: end -->";

pub struct TtffSample {
    pub stages: Stages,
    /// The pipeline was stopped when the viewer arrived (its offer started the camera).
    pub cold: bool,
}

pub struct FanoutRow {
    pub viewers: usize,
    /// rtcam's CPU over the window, percent of one core.
    pub cpu: f64,
    pub rss_kb: u64,
    /// This harness's own CPU over the window: it shares the machine with rtcam.
    pub harness_cpu: f64,
    pub load: String,
    /// The UDP sockets the server holds at the end of the window.
    pub udp_sockets: Option<usize>,
    /// Each viewer's received frames per second and fraction of packets lost.
    pub fps: Vec<f64>,
    pub loss: Vec<f64>,
}

pub struct Results {
    pub setup: Setup,
    pub smoke: bool,
    /// The core sections ran (not `--no-core`).
    pub core: bool,
    pub machine: String,
    pub versions: String,
    pub command: String,
    pub date: String,
    pub load_start: String,
    pub load_end: String,
    pub start_to_ready: Vec<Duration>,
    pub idle_cpu: f64,
    pub idle_rss_kb: u64,
    pub ttff: Vec<TtffSample>,
    pub latencies_ms: Vec<i64>,
    pub unreadable: u64,
    /// The same in headless Chromium (presented frames), when asked for.
    pub chromium_latencies_ms: Vec<i64>,
    pub chromium_unreadable: u64,
    /// Time to first frame in Chromium, ms from the page's offer to the first presented frame.
    pub chromium_ttff_ms: Vec<f64>,
    pub chromium_error: Option<String>,
    pub fanout: Vec<FanoutRow>,
    /// The same fan-out through Janus, when asked for.
    pub janus_fanout: Vec<FanoutRow>,
    /// The gst-launch feeder's CPU (Janus's "encoder"), for comparing totals.
    pub janus_feeder_cpu: Option<f64>,
    /// Janus pulling rtcam's RTSP door, the viewers watching through Janus: rtcam's CPU (one
    /// RTSP client whatever the row's viewer count).
    pub janus_rtsp_fanout: Vec<FanoutRow>,
    /// One client of each door against three WebRTC viewers (`--doors`).
    pub doors: Vec<DoorsRow>,
    /// One rtcam per UDP port mode (`--ports`).
    pub ports: Vec<PortsRun>,
}

/// One rtcam of the `--ports` comparison.
pub struct PortsRun {
    pub mode: UdpPort,
    /// Its `[webrtc] udp_port` (0: a port per session).
    pub udp_port: u16,
    /// Warm time-to-first-frame sessions, one after another.
    pub ttff: Vec<TtffSample>,
    pub fanout: Vec<FanoutRow>,
    /// Load average when this rtcam started → when its last row ended.
    pub load: String,
}

/// rtcam serving a set of clients: its CPU and memory over the window, each client's frames.
pub struct DoorsRow {
    pub clients: &'static str,
    /// % of one core.
    pub cpu: f64,
    pub rss_kb: u64,
    /// Each client's kind and frame rate over the window.
    pub fps: Vec<(&'static str, f64)>,
}

impl Results {
    pub fn new(setup: &Setup, smoke: bool) -> Results {
        Results {
            setup: setup.clone(),
            smoke,
            core: true,
            machine: machine(),
            versions: versions(&setup.binary),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            load_start: loadavg(),
            load_end: String::new(),
            start_to_ready: Vec::new(),
            idle_cpu: 0.0,
            idle_rss_kb: 0,
            ttff: Vec::new(),
            latencies_ms: Vec::new(),
            unreadable: 0,
            chromium_latencies_ms: Vec::new(),
            chromium_unreadable: 0,
            chromium_ttff_ms: Vec::new(),
            chromium_error: None,
            fanout: Vec::new(),
            janus_fanout: Vec::new(),
            janus_feeder_cpu: None,
            janus_rtsp_fanout: Vec::new(),
            doors: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// CPU per added viewer: the least-squares slope over the rows with at least one viewer
    /// (the 0-viewer row may have the pipeline stopped, a different regime).
    pub fn cpu_per_viewer(rows: &[FanoutRow]) -> Option<f64> {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.viewers > 0)
            .map(|r| (r.viewers as f64, r.cpu))
            .collect();
        if pts.len() < 2 {
            return None;
        }
        let n = pts.len() as f64;
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (mx, my) = (sx / n, sy / n);
        let num: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let den: f64 = pts.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
        (den > 0.0).then(|| num / den)
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".into(), |kb| format!("{} GiB", kb / 1024 / 1024));
    format!(
        "{cpu}, {cores} cores, {mem} RAM, Linux {}",
        sh("uname", &["-r"])
    )
}

fn versions(binary: &Path) -> String {
    format!(
        "{} ({}), {}, {}",
        sh(&binary.to_string_lossy(), &["--version"]),
        sh("git", &["rev-parse", "--short", "HEAD"]),
        sh("rustc", &["--version"]),
        sh("gst-inspect-1.0", &["--version"])
            .lines()
            .nth(1)
            .unwrap_or("GStreamer ?")
    )
}

/// Nearest-rank percentile of sorted values.
fn pct<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0))
}

fn stage_row(name: &str, mut v: Vec<Duration>, total: usize) -> String {
    v.sort();
    format!(
        "| {name} | {} | {} | {} | {}/{total} |\n",
        ms(pct(&v, 50.0)),
        ms(pct(&v, 95.0)),
        ms(v.last().copied()),
        v.len()
    )
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// The markdown tables.
pub fn tables(r: &Results) -> String {
    let mut s = header(r);
    if r.core {
        s += &start_and_idle(r);
    }
    s += &time_to_first_frame(r);
    s += &glass_to_glass(r);
    s += &fan_out(r);
    s += &scale_out(r);
    s += &doors(r);
    s += &ports(r);
    if r.core {
        s +=
            "\n![latency distribution](bench/latency.svg)\n![CPU against viewers](bench/cpu.svg)\n";
    }
    s
}

/// The run: when, how, on what.
fn header(r: &Results) -> String {
    let mut s = String::new();
    if r.smoke {
        s += "**Smoke run: too short for figures; it only shows the harness works.**\n\n";
    }
    s += &format!(
        "Run {date} with `{cmd}`.\n\n\
         - machine: {m}\n- versions: {v}\n\
         - rtcam: test pattern {w}x{h}@{fps}, x264enc {kbps} kbit/s, embedded broker, loopback\n\
         - load average (1, 5, 15 min) at start: {ls}; at end: {le}\n\n",
        date = r.date,
        cmd = r.command,
        m = r.machine,
        v = r.versions,
        w = r.setup.width,
        h = r.setup.height,
        fps = r.setup.fps,
        kbps = r.setup.bitrate_kbps,
        ls = r.load_start,
        le = r.load_end,
    );
    s
}

/// Start to ready, and the idle cost.
fn start_and_idle(r: &Results) -> String {
    let mut s = String::new();
    let s2r: Vec<Duration> = {
        let mut v = r.start_to_ready.clone();
        v.sort();
        v
    };
    s += "### Start and idle\n\n| figure | value |\n|---|---|\n";
    s += &format!(
        "| start → ready (retained online status seen), p50 / max of {} | {} ms / {} ms |\n",
        s2r.len(),
        ms(pct(&s2r, 50.0)),
        ms(s2r.last().copied())
    );
    s += &format!("| CPU with no viewer | {:.2} % of a core |\n", r.idle_cpu);
    s += &format!(
        "| RSS with no viewer | {:.1} MB |\n\n",
        r.idle_rss_kb as f64 / 1024.0
    );
    s
}

/// Time to first frame by stage, warm and cold, and in Chromium.
fn time_to_first_frame(r: &Results) -> String {
    let mut s = String::new();
    for (cold, what) in [
        (false, "pipeline running, one session at a time"),
        (true, "camera idle: the viewer's offer starts the pipeline"),
    ] {
        let samples: Vec<&TtffSample> = r.ttff.iter().filter(|t| t.cold == cold).collect();
        if samples.is_empty() {
            continue;
        }
        s += &format!(
            "### Time to first frame, {what} ({} sessions)\n\n\
             Milliseconds from the viewer publishing its offer.\n\n\
             | stage | p50 | p95 | max | reached |\n|---|---|---|---|---|\n",
            samples.len()
        );
        let n = samples.len();
        let col = |f: fn(&Stages) -> Option<Duration>| -> Vec<Duration> {
            samples.iter().filter_map(|t| f(&t.stages)).collect()
        };
        s += &stage_row("answer received (MQTT round trip)", col(|s| s.answer), n);
        s += &stage_row("ICE connected", col(|s| s.ice_connected), n);
        s += &stage_row("DTLS done (peer connected)", col(|s| s.dtls_connected), n);
        s += &stage_row("first RTP packet", col(|s| s.first_rtp), n);
        s += &stage_row("first frame decoded", col(|s| s.first_frame), n);
        s += "\n";
    }
    if !r.chromium_ttff_ms.is_empty() {
        let mut t = r.chromium_ttff_ms.clone();
        t.sort_by(f64::total_cmp);
        let q = |p: f64| t[((t.len() - 1) as f64 * p / 100.0).round() as usize];
        s += &format!(
            "### Time to first frame in headless Chromium (rtcam's viewer page, {} page loads)\n\n\
             Milliseconds from the page's `rtcam:offer-sent` mark to the first presented frame \
             (`requestVideoFrameCallback`), pipeline running, {} ms between loads.\n\n\
             | p50 | p95 | max |\n|---|---|---|\n| {:.0} | {:.0} | {:.0} |\n\n",
            t.len(),
            crate::daemon::SESSION_GAP.as_millis(),
            q(50.0),
            q(95.0),
            t[t.len() - 1]
        );
    }
    s
}

/// Capture to picture, in the Rust viewer and in Chromium.
fn glass_to_glass(r: &Results) -> String {
    let mut s = String::new();
    let mut lat = r.latencies_ms.clone();
    lat.sort();
    let p = |q| pct(&lat, q).map_or("–".into(), |v: i64| v.to_string());
    if r.core {
        s += &format!(
        "### Glass to glass (Rust viewer, GStreamer avdec_h264)\n\n\
         Capture (barcode written) → picture decoded, {} pictures over the run, {} without a readable stamp.\n\n\
         | p50 | p90 | p99 | min | max |\n|---|---|---|---|---|\n| {} ms | {} ms | {} ms | {} ms | {} ms |\n\n",
        lat.len(),
        r.unreadable,
        p(50.0),
        p(90.0),
        p(99.0),
        lat.first().map_or("–".into(), |v| v.to_string()),
        lat.last().map_or("–".into(), |v| v.to_string()),
    );
    }

    if !r.chromium_latencies_ms.is_empty() {
        let mut lat = r.chromium_latencies_ms.clone();
        lat.sort();
        let p = |q| pct(&lat, q).map_or("–".into(), |v: i64| v.to_string());
        s += &format!(
            "### Glass to glass (headless Chromium, rtcam's viewer page)\n\n\
             Capture → frame presented (`requestVideoFrameCallback`, barcode read from a canvas), \
             {} frames, {} without a readable stamp. Software decoding (`--disable-gpu`).\n\n\
             | p50 | p90 | p99 | min | max |\n|---|---|---|---|---|\n| {} ms | {} ms | {} ms | {} ms | {} ms |\n\n",
            lat.len(),
            r.chromium_unreadable,
            p(50.0),
            p(90.0),
            p(99.0),
            lat.first().map_or("–".into(), |v| v.to_string()),
            lat.last().map_or("–".into(), |v| v.to_string()),
        );
    }
    if let Some(e) = &r.chromium_error {
        s += &format!(
            "Chromium latency not measured: {}\n\n",
            e.lines().next().unwrap_or("")
        );
    }
    s
}

/// CPU, memory, frame rate and loss as viewers are added; Janus beside (fed its own stream).
fn fan_out(r: &Results) -> String {
    let mut s = String::new();
    if r.fanout.is_empty() && r.janus_fanout.is_empty() {
        return s;
    }
    s += "### Fan-out\n\n\
          Viewers count RTP (frames by marker bit, loss by sequence gaps) without decoding.\n\n";
    if !r.fanout.is_empty() {
        s += &fanout_table("rtcam", &r.fanout);
    }
    let rtcam_slope = Results::cpu_per_viewer(&r.fanout);
    if let Some(slope) = rtcam_slope {
        s += &format!(
            "\nrtcam CPU per added viewer (least-squares slope over the rows with viewers): {slope:.2} % of a core.\n\n"
        );
    } else {
        s += "\n";
    }
    if !r.janus_fanout.is_empty() {
        s += "#### Janus streaming plugin, same viewers\n\n\
              Janus 1.x (Debian package) with only the streaming plugin and HTTP transport; one H.264 \
              RTP mountpoint fed by `gst-launch-1.0` with the same test pattern and x264enc settings \
              in its own process, so Janus's CPU below is fan-out only.\n\n";
        s += &fanout_table("Janus", &r.janus_fanout);
        if let Some(feeder) = r.janus_feeder_cpu {
            s += &format!(
                "\nThe feeder (test pattern + x264enc + RTP) took {feeder:.1} % of a core.\n"
            );
        }
        let janus_slope = Results::cpu_per_viewer(&r.janus_fanout);
        if let Some(j) = janus_slope {
            s += &format!("\nJanus CPU per added viewer: {j:.2} % of a core.\n");
        }
        if let (Some(a), Some(b)) = (rtcam_slope, janus_slope) {
            if b > 0.0 {
                s += &format!("\n**CPU per added viewer, rtcam ÷ Janus: {:.2}**\n", a / b);
            }
        }
        s += "\n";
    }
    s
}

/// rtcam's CPU and memory while Janus pulls its RTSP door and the viewers watch through Janus.
fn scale_out(r: &Results) -> String {
    let mut s = String::new();
    if !r.janus_rtsp_fanout.is_empty() {
        s += "#### Scale-out: Janus pulling rtcam's RTSP door\n\n\
              The recipe of docs/scale-out.md: Janus's streaming plugin pulls \
              `rtsp://…/live` from rtcam (one RTSP client, checked in rtcam's status at each row) \
              and the same viewers watch through Janus. The CPU and memory are rtcam's.\n\n";
        s += &fanout_table("rtcam", &r.janus_rtsp_fanout);
        if let Some(slope) = Results::cpu_per_viewer(&r.janus_rtsp_fanout) {
            s += &format!("\nrtcam CPU per added viewer through Janus: {slope:.2} % of a core.\n");
        }
        s += "\n";
    }
    s
}

/// rtcam's CPU and memory with one client of each door, against as many WebRTC viewers.
fn doors(r: &Results) -> String {
    if r.doors.is_empty() {
        return String::new();
    }
    let mut s = "### Doors\n\n\
         The same rtcam, window and settling as the fan-out rows. The WebRTC viewers are the \
         harness's own (`rtcam-viewer`, signalled over MQTT, counting RTP frames by marker bit); \
         the RTSP client is GStreamer in the harness process (`rtspsrc protocols=tcp latency=0 ! \
         rtph264depay ! fakesink`, counting access units); the WHEP client is \
         `rtcam_viewer::whep` (a `webrtc` crate peer posting its offer to `POST /whep` over plain \
         HTTP/1.1, counting RTP frames by marker bit).\n\n\
         | clients | rtcam CPU (% of a core) | rtcam RSS | fps per client |\n\
         |---|---|---|---|\n"
        .to_string();
    for row in &r.doors {
        let fps: Vec<String> = row
            .fps
            .iter()
            .map(|(kind, f)| format!("{kind} {f:.1}"))
            .collect();
        s += &format!(
            "| {} | {:.1} | {:.1} MB | {} |\n",
            row.clients,
            row.cpu,
            row.rss_kb as f64 / 1024.0,
            fps.join(", ")
        );
    }
    s + "\n"
}

/// The same rtcam with its sessions on one shared UDP port and with a port per session.
fn ports(r: &Results) -> String {
    if r.ports.is_empty() {
        return String::new();
    }
    let sessions = r.ports.iter().map(|p| p.ttff.len()).max().unwrap_or(0);
    let plural = if sessions == 1 { "" } else { "s" };
    let mut s = format!(
        "### Shared port vs a port per session\n\n\
         One rtcam per mode, one after the other, the configuration otherwise the same. Time to \
         first frame: {sessions} session{plural} one at a time with the pipeline running (a first, \
         uncounted session starts it), milliseconds from the viewer publishing its offer. CPU, \
         memory and UDP sockets: rtcam's, with the fan-out's viewers, settling and window.\n\n\
         | figure |"
    );
    for p in &r.ports {
        s += &match p.mode {
            UdpPort::Shared => format!(" shared port (`udp_port = {}`) |", p.udp_port),
            UdpPort::PerSession => " a port per session (`udp_port = 0`) |".to_string(),
        };
    }
    s += &format!("\n|---|{}\n", "---|".repeat(r.ports.len()));
    let stage = |f: fn(&Stages) -> Option<Duration>| {
        move |p: &PortsRun| {
            let mut v: Vec<Duration> = p.ttff.iter().filter_map(|t| f(&t.stages)).collect();
            v.sort();
            format!("{} / {} ms", ms(pct(&v, 50.0)), ms(pct(&v, 90.0)))
        }
    };
    let line = |label: &str, cell: &dyn Fn(&PortsRun) -> String| ports_line(&r.ports, label, cell);
    s += &line("time to first frame, p50 / p90", &stage(|s| s.first_frame));
    s += &line("ICE connected, p50 / p90", &stage(|s| s.ice_connected));
    s += &line(
        "DTLS done (peer connected), p50 / p90",
        &stage(|s| s.dtls_connected),
    );
    s += &ports_fanout(&r.ports);
    s += &line("load average (1 min), start → end", &|p| p.load.clone());
    s + "\n"
}

/// The `--ports` rows of rtcam's CPU, memory, sockets and viewers' frames, by viewer count.
fn ports_fanout(ports: &[PortsRun]) -> String {
    let counts: Vec<usize> = ports
        .first()
        .map(|p| p.fanout.iter().map(|f| f.viewers).collect())
        .unwrap_or_default();
    let mut s = String::new();
    for &n in &counts {
        let v = if n == 1 { "viewer" } else { "viewers" };
        let line = |what: &str, cell: fn(&FanoutRow) -> String| {
            ports_line(ports, &format!("{n} {v}: {what}"), &|p| {
                p.fanout
                    .iter()
                    .find(|f| f.viewers == n)
                    .map_or("–".into(), cell)
            })
        };
        s += &line("rtcam CPU (% of a core)", |f| format!("{:.1}", f.cpu));
        s += &line("rtcam RSS", |f| {
            format!("{:.1} MB", f.rss_kb as f64 / 1024.0)
        });
        s += &line("rtcam's UDP sockets", |f| {
            f.udp_sockets.map_or("–".into(), |u| u.to_string())
        });
        s += &line("fps per viewer (min), loss (max)", |f| {
            format!("{:.1}, {:.2} %", min(&f.fps), 100.0 * max(&f.loss))
        });
    }
    if counts.iter().filter(|&&n| n > 0).count() >= 2 {
        s += &ports_line(ports, "rtcam CPU per added viewer (% of a core)", &|p| {
            Results::cpu_per_viewer(&p.fanout).map_or("–".into(), |c| format!("{c:.2}"))
        });
    }
    s
}

/// One row of the `--ports` table: a label, then a cell per rtcam.
fn ports_line(ports: &[PortsRun], label: &str, cell: &dyn Fn(&PortsRun) -> String) -> String {
    let mut l = format!("| {label} |");
    for p in ports {
        l += &format!(" {} |", cell(p));
    }
    l + "\n"
}

fn fanout_table(server: &str, rows: &[FanoutRow]) -> String {
    let mut s = format!(
        "| viewers | {server} CPU (% of a core) | {server} RSS | harness CPU | fps per viewer (min / mean) | loss (max) | load avg |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for row in rows {
        let (fps, loss) = if row.viewers == 0 {
            ("–".to_string(), "–".to_string())
        } else {
            (
                format!("{:.1} / {:.1}", min(&row.fps), mean(&row.fps)),
                format!("{:.2} %", 100.0 * max(&row.loss)),
            )
        };
        s += &format!(
            "| {} | {:.1} | {:.1} MB | {:.1} | {} | {} | {} |\n",
            row.viewers,
            row.cpu,
            row.rss_kb as f64 / 1024.0,
            row.harness_cpu,
            fps,
            loss,
            row.load
        );
    }
    s
}

/// A short text summary for the terminal.
pub fn summary(r: &Results) -> String {
    tables(r)
}

/// Rewrites the results section of `out` (creating the file if needed) and draws the plots.
pub fn write(r: &Results, out: &Path) -> Result<()> {
    let dir = out.parent().unwrap_or(Path::new(".")).join("bench");
    if r.core {
        std::fs::create_dir_all(&dir)?;
        plot_latency(r, &dir.join("latency.svg"))?;
        plot_cpu(r, &dir.join("cpu.svg"))?;
    }
    let section = format!("{BEGIN}\n{}{END}", tables(r));
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{old}\n## Results\n\n{section}\n"),
    };
    std::fs::write(out, new).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn plot_latency(r: &Results, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let lat = &r.latencies_ms;
    let all = || lat.iter().chain(&r.chromium_latencies_ms);
    let hi = all().copied().max().unwrap_or(100).max(10) as u32 + 2;
    let lo = all().copied().min().unwrap_or(0).max(0) as u32;
    let top = [lat, &r.chromium_latencies_ms]
        .iter()
        .map(|l| {
            let mut bins = vec![0u32; (hi + 1) as usize];
            for &v in l.iter() {
                bins[v.clamp(0, i64::from(hi)) as usize] += 1;
            }
            bins.into_iter().max().unwrap_or(1)
        })
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Glass-to-glass latency, {}x{}@{}, {} pictures",
                r.setup.width,
                r.setup.height,
                r.setup.fps,
                lat.len()
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(
            (lo.saturating_sub(2)..hi).into_segmented(),
            0u32..top + top / 10 + 1,
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("capture → decoded (ms)")
        .y_desc("pictures")
        .draw()?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .margin(0)
                .style(BLUE.mix(0.6).filled())
                .data(lat.iter().map(|&v| (v.max(0) as u32, 1u32))),
        )?
        .label("Rust viewer (decoded)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], BLUE.mix(0.6).filled()));
    if !r.chromium_latencies_ms.is_empty() {
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .margin(0)
                    .style(RED.mix(0.5).filled())
                    .data(
                        r.chromium_latencies_ms
                            .iter()
                            .map(|&v| (v.max(0) as u32, 1u32)),
                    ),
            )?
            .label("headless Chromium (presented)")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], RED.mix(0.5).filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_cpu(r: &Results, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = || r.fanout.iter().chain(&r.janus_fanout);
    let max_n = all().map(|f| f.viewers).max().unwrap_or(1).max(1) as f64;
    let max_cpu = all().map(|f| f.cpu).fold(10.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("CPU against viewers (720p30, 2 Mbit/s)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_n * 1.05, 0.0..max_cpu)?;
    chart
        .configure_mesh()
        .x_desc("viewers")
        .y_desc("CPU, % of one core")
        .draw()?;
    let pts: Vec<(f64, f64)> = r.fanout.iter().map(|f| (f.viewers as f64, f.cpu)).collect();
    chart
        .draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2)))?
        .label("rtcam (its encoder included)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))?;
    if !r.janus_fanout.is_empty() {
        let pts: Vec<(f64, f64)> = r
            .janus_fanout
            .iter()
            .map(|f| (f.viewers as f64, f.cpu))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), RED.stroke_width(2)))?
            .label("Janus (fan-out only; its feeder excluded)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, RED.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
