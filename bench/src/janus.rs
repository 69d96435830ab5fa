//! The reference: Janus (Debian package `janus`) with only its streaming plugin and HTTP
//! transport, one H.264 RTP mountpoint fed by `gst-launch-1.0` running the same test pattern and
//! the same x264enc settings as rtcam (`src/media/encoder.rs`). The feeder is its own process,
//! so Janus's CPU is the fan-out alone; compare per added viewer, where rtcam's encoder cost
//! cancels out too.
//!
//! [`Janus::pulling`] is the scale-out recipe of docs/scale-out.md instead: an `rtsp`
//! mountpoint pulling rtcam's RTSP door, no feeder, so N Janus viewers cost rtcam one client.

use anyhow::{bail, Context, Result};
use rtcam_viewer::ports::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MOUNTPOINT: u64 = 10;

pub struct Janus {
    janus: Child,
    /// The gst-launch feeder of the RTP mountpoint; none when Janus pulls rtcam's RTSP.
    feeder: Option<Child>,
    pub base: String,
    dir: PathBuf,
}

/// Janus's configuration in `dir`: the streaming plugin and HTTP transport only, the HTTP API
/// on `http_port`, the streaming plugin's one `mountpoint` (a jcfg block).
fn write_config(dir: &std::path::Path, lib: &str, http_port: u16, mountpoint: &str) -> Result<()> {
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            r#"general: {{
configs_folder = "{dir}"
plugins_folder = "{lib}/plugins"
transports_folder = "{lib}/transports"
events_folder = "{lib}/events"
loggers_folder = "{lib}/loggers"
debug_level = 2
}}
media: {{ rtp_port_range = "30000-39999" }}
nat: {{ ice_enforce_list = "lo" }}
plugins: {{ disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_videoroom.so,libjanus_voicemail.so" }}
transports: {{ disable = "libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so,libjanus_websockets.so" }}
events: {{ broadcast = false }}
"#,
            dir = dir.display()
        ),
    )?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{ json = \"compact\" base_path = \"/janus\" http = true port = {http_port} ip = \"127.0.0.1\" https = false }}\n\
             admin: {{ admin_http = false admin_https = false }}\n"
        ),
    )?;
    std::fs::write(
        dir.join("janus.plugin.streaming.jcfg"),
        format!("general: {{ }}\n{mountpoint}"),
    )?;
    Ok(())
}

impl Janus {
    pub fn start(width: u32, height: u32, fps: u32, kbps: u32) -> Result<Janus> {
        let rtp_port = free_port();
        let mountpoint = format!(
            r#"bench: {{
type = "rtp"
id = {MOUNTPOINT}
description = "rtcam-bench"
audio = false
video = true
videoport = {rtp_port}
videopt = 96
videocodec = "h264"
videofmtp = "profile-level-id=42e01f;packetization-mode=1"
}}
"#
        );
        let (janus, base, dir) = launch(&mountpoint)?;
        // The same pattern and encoder settings as rtcam's test source with x264enc.
        let feeder = Command::new("gst-launch-1.0")
            .arg("-q")
            .args(
                format!(
                    "videotestsrc is-live=true pattern=smpte horizontal-speed=2 ! \
                     video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 ! \
                     x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} \
                     key-int-max=60 byte-stream=true threads=2 ! \
                     video/x-h264,profile=constrained-baseline ! \
                     rtph264pay pt=96 config-interval=-1 mtu=1200 ! \
                     udpsink host=127.0.0.1 port={rtp_port} sync=false"
                )
                .split_whitespace(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting gst-launch-1.0")?;
        let mut j = Janus {
            janus,
            feeder: Some(feeder),
            base,
            dir,
        };
        j.wait_http()?;
        Ok(j)
    }

    /// Janus with one `rtsp` mountpoint pulling `url` (rtcam's RTSP door), as
    /// docs/scale-out.md configures it.
    pub fn pulling(url: &str) -> Result<Janus> {
        let mountpoint = format!(
            r#"bench: {{
type = "rtsp"
id = {MOUNTPOINT}
description = "rtcam over RTSP"
url = "{url}"
video = true
audio = false
rtsp_reconnect_delay = 5
rtsp_session_timeout = 0
rtsp_timeout = 10
rtsp_conn_timeout = 5
}}
"#
        );
        let (janus, base, dir) = launch(&mountpoint)?;
        let mut j = Janus {
            janus,
            feeder: None,
            base,
            dir,
        };
        j.wait_http()?;
        Ok(j)
    }

    pub fn pid(&self) -> u32 {
        self.janus.id()
    }

    pub fn feeder_pid(&self) -> Option<u32> {
        self.feeder.as_ref().map(Child::id)
    }

    /// Waits until Janus's HTTP API answers (or Janus exits: its log in the error).
    fn wait_http(&mut self) -> Result<()> {
        let port: u16 = self
            .base
            .trim_start_matches("http://127.0.0.1:")
            .trim_end_matches("/janus")
            .parse()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.janus.try_wait() {
                bail!(
                    "janus exited ({status}); see its log:\n{}",
                    std::fs::read_to_string(self.dir.join("janus.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("janus's HTTP API did not come up in 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Writes Janus's configuration with `mountpoint` ([`write_config`], the HTTP transport on a
/// free port) into a directory of its own and starts Janus: the process, its API base, the
/// directory.
fn launch(mountpoint: &str) -> Result<(Child, String, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("rtcam-bench-janus-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let http_port = free_port();
    let lib = "/usr/lib/x86_64-linux-gnu/janus";
    let lib = if std::path::Path::new(lib).exists() {
        lib.to_string()
    } else {
        // Other architectures (a board) keep Janus under their own triplet.
        let triplet = Command::new("gcc").arg("-print-multiarch").output()?.stdout;
        format!("/usr/lib/{}/janus", String::from_utf8(triplet)?.trim())
    };
    write_config(&dir, &lib, http_port, mountpoint)?;
    let janus = Command::new("janus")
        .arg("-C")
        .arg(dir.join("janus.jcfg"))
        .arg("-F")
        .arg(&dir)
        .arg("-L")
        .arg(dir.join("janus.log"))
        .arg("-N")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting janus (apt-get install janus)")?;
    Ok((janus, format!("http://127.0.0.1:{http_port}/janus"), dir))
}

impl Drop for Janus {
    fn drop(&mut self) {
        if let Some(feeder) = &mut self.feeder {
            let _ = feeder.kill();
            let _ = feeder.wait();
        }
        let _ = self.janus.kill();
        let _ = self.janus.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
