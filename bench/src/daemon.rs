//! The rtcam under test: a child process with a generated configuration (test pattern, x264enc,
//! embedded broker on free ports), its readiness as seen over MQTT, and its CPU and memory as
//! the kernel counts them in /proc.

use anyhow::{anyhow, bail, Context, Result};
use rtcam_viewer::ports::free_port;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the run asks of rtcam.
#[derive(Clone, Debug)]
pub struct Setup {
    pub binary: PathBuf,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub max_sessions: u32,
}

pub struct Rtcam {
    child: Child,
    pub broker: (String, u16),
    pub root: String,
    /// The viewer page, for the browser benchmark.
    pub page_url: String,
    /// The HTTP door (the page, `POST /whep`).
    pub http_addr: SocketAddr,
    /// The RTSP door (on loopback, open), for media servers pulling rtcam's stream.
    pub rtsp_url: String,
    /// Process start → retained `{"state":"online"}` seen by a client of its broker.
    pub start_to_ready: Duration,
    _dir: TempDir,
}

/// A directory removed on drop; the harness needs one file and no tempfile crate for it.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long rtcam keeps its pipeline after the last viewer leaves (default 10 s): short, so
/// the cold time-to-first-frame sessions do not wait long for an idle camera.
pub const IDLE_STOP_SECS: u64 = 2;
/// Between time-to-first-frame sessions: longer than rtcam's default
/// `keyframe_min_interval_ms` (500), shorter than the idle stop.
pub const SESSION_GAP: Duration = Duration::from_millis(700);

impl Rtcam {
    pub async fn start(setup: &Setup) -> Result<Rtcam> {
        let dir = std::env::temp_dir().join(format!("rtcam-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let dir = TempDir(dir);
        let port = free_port();
        let http_port = free_port();
        let rtsp_port = free_port();
        let config = format!(
            r#"[device]
id = "bench"
[mqtt]
url = "embedded"
embedded_listen = "127.0.0.1:{port}"
embedded_listen_v5 = "127.0.0.1:{v5}"
[http]
listen = "127.0.0.1:{http_port}"
https_listen = ""
[source]
kind = "test"
width = {w}
height = {h}
fps = {fps}
idle_stop_secs = {idle_stop}
[encoder]
element = "x264enc"
bitrate_kbps = {kbps}
[webrtc]
max_sessions = {max}
udp_addrs = ["127.0.0.1"]
# Fan-out connects every viewer at once; the default 5 offers/s would refuse most of them.
offers_per_second = 100
[control]
ha_discovery = false
# Idle until a client plays: a GLib thread waiting, nothing on the figures without one.
[rtsp]
enabled = true
listen = "127.0.0.1:{rtsp_port}"
"#,
            v5 = free_port(),
            http_port = http_port,
            w = setup.width,
            h = setup.height,
            fps = setup.fps,
            kbps = setup.bitrate_kbps,
            max = setup.max_sessions,
            idle_stop = IDLE_STOP_SECS,
            rtsp_port = rtsp_port,
        );
        let path = dir.0.join("rtcam.toml");
        std::fs::write(&path, config)?;
        let started = Instant::now();
        let child = Command::new(&setup.binary)
            .arg("--config")
            .arg(&path)
            .arg("run")
            .env(rtcam::media::stamp::ENV, "1")
            // Errors only: the webrtc crates warn on every session, noise in a benchmark's output.
            .env("RTCAM_LOG", "error,rumqttd=off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", setup.binary.display()))?;
        let root = "rtcam/bench".to_string();
        let mut rtcam = Rtcam {
            child,
            broker: ("127.0.0.1".into(), port),
            root,
            page_url: format!("http://127.0.0.1:{http_port}/"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], http_port)),
            rtsp_url: format!("rtsp://127.0.0.1:{rtsp_port}/live"),
            start_to_ready: Duration::ZERO,
            _dir: dir,
        };
        rtcam.start_to_ready = wait_online(port, &rtcam.root, started, &mut rtcam.child).await?;
        Ok(rtcam)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sample(&self) -> Result<ProcSample> {
        ProcSample::read(self.pid())
    }

    pub fn stop(mut self) {
        // SIGTERM for the orderly stop; the kill after is only for an rtcam that hangs.
        let _ = Command::new("kill").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The viewer count in rtcam's retained status (WebRTC and RTSP viewers alike).
pub async fn viewers(port: u16, root: &str) -> Result<u64> {
    let (client, mut eventloop) = status_client(port, root, "bench-viewers").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| anyhow!("no status from rtcam in 5 s"))??;
        if let Event::Incoming(Packet::Publish(p)) = event {
            let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
            let _ = client.disconnect().await;
            return v["viewers"]
                .as_u64()
                .ok_or_else(|| anyhow!("status without viewers: {v}"));
        }
    }
}

/// Polls the broker (it only exists once rtcam has started it) until the retained online status
/// arrives. Polling every 2 ms bounds the error of the figure to about that.
async fn wait_online(
    port: u16,
    root: &str,
    started: Instant,
    child: &mut Child,
) -> Result<Duration> {
    let deadline = started + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("rtcam exited before its broker came up: {status}");
        }
        if Instant::now() > deadline {
            bail!("rtcam's broker did not come up in 20 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (client, mut eventloop) = status_client(port, root, "bench-ready").await?;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), eventloop.poll())
            .await
            .map_err(|_| anyhow!("no online status from rtcam in 20 s"))?;
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                if v["state"] == "online" {
                    let at = started.elapsed();
                    let _ = client.disconnect().await;
                    return Ok(at);
                }
            }
            Ok(_) => {}
            // The broker listens before it accepts clients; try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// A client of rtcam's embedded broker subscribed to its retained status; its id starts with
/// `name` and ends with a random number, so runs never take each other's.
async fn status_client(port: u16, root: &str, name: &str) -> Result<(AsyncClient, EventLoop)> {
    let mut opts = MqttOptions::new(
        format!("{name}-{}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe(format!("{root}/status"), QoS::AtLeastOnce)
        .await?;
    Ok((client, eventloop))
}

/// CPU time and memory of a process at one instant.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    at: Instant,
    /// utime + stime in clock ticks.
    ticks: u64,
    pub rss_kb: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
        let utime: u64 = fields.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
        let stime: u64 = fields.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Ok(ProcSample {
            at: Instant::now(),
            ticks: utime + stime,
            rss_kb,
        })
    }

    /// Percent of one core used between `self` and the later `end`.
    pub fn cpu_percent(&self, end: &ProcSample) -> f64 {
        let secs = end.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let ticks = end.ticks.saturating_sub(self.ticks) as f64;
        100.0 * ticks / clock_ticks() / secs
    }
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux the project runs on; getconf confirms it where present.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The release binary next to this one's target directory, or `RTCAM_BIN`.
pub fn default_binary() -> PathBuf {
    if let Ok(p) = std::env::var("RTCAM_BIN") {
        return PathBuf::from(p);
    }
    let here = std::env::current_exe().unwrap_or_default();
    here.parent()
        .map(|d| d.join("rtcam"))
        .filter(|p| Path::new(p).exists())
        .unwrap_or_else(|| PathBuf::from("target/release/rtcam"))
}
