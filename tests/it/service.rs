//! rtcam under systemd: the unit file as systemd reads it, and the notify/watchdog protocol
//! spoken by the real `rtcam` binary to a socket this test listens on, as systemd would.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// The unit with its ExecStart pointed at the binary cargo built, since `verify` checks that
/// the command exists.
fn unit_for_test(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string("systemd/rtcam.service").unwrap();
    let unit = unit.replace(
        "ExecStart=/usr/bin/rtcam",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_rtcam")),
    );
    let path = dir.join("rtcam.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    // verify opens every man: page in Documentation=, rtcam(1) among them: the page `rtcam man`
    // prints, which the .deb installs, is put where man looks for it.
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    let page = Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .arg("man")
        .output()
        .unwrap();
    assert!(page.status.success());
    std::fs::write(man1.join("rtcam.1"), page.stdout).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze is installed (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // verify succeeds with warnings too; a line about our unit is a mistake in it.
    assert!(!stderr.contains("rtcam.service"), "{stderr}");
}

#[test]
fn unit_exposure_is_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("rtcam.service:"),
        "unit has lines systemd ignores: {stderr}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in: {stdout}{stderr}"));
    let exposure: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line:?}"));
    assert!(exposure <= 2.0, "{line}");
}

/// Kills the child if the test fails half-way.
struct Rtcam(Child);

impl Drop for Rtcam {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn recv(socket: &UnixDatagram, until: Instant) -> Option<String> {
    let left = until.checked_duration_since(Instant::now())?;
    socket
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = [0u8; 4096];
    // One notification per datagram; sd-notify ends each line with a newline.
    socket
        .recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
}

/// Reads notifications until one satisfies `pred`, returning everything read.
fn wait_for(socket: &UnixDatagram, timeout: Duration, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let until = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(msg) = recv(socket, until) {
        let done = pred(&msg);
        seen.push(msg);
        if done {
            return seen;
        }
    }
    panic!("no matching notification within {timeout:?}; got {seen:#?}");
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "the notify protocol's life, in order, on one socket: READY, STATUS, pings, STOPPING"
)]
fn ready_after_broker_and_http_then_watchdog_pings_then_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let (mqtt_port, http_port, v5_port) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let config = dir.path().join("rtcam.toml");
    std::fs::write(
        &config,
        format!(
            "[device]\nid = \"svc\"\n[mqtt]\nembedded_listen = \"127.0.0.1:{mqtt_port}\"\nembedded_listen_v5 = \"127.0.0.1:{v5_port}\"\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\nhttps_listen = \"\"\n\
             [source]\nkind = \"test\"\nwidth = 320\nheight = 240\nfps = 15\nalways_on = true\n\
             [webrtc]\nudp_addrs = [\"127.0.0.1\"]\nudp_port = {udp_port}\ntcp_port = {udp_port}\n",
            udp_port = common::free_port(),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        // 1.5 s: a ping every 500 ms.
        .env("WATCHDOG_USEC", "1500000")
        .env_remove("WATCHDOG_PID")
        .env("RTCAM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rtcam starts");
    let mut rtcam = Rtcam(child);

    let before_ready = wait_for(&socket, Duration::from_secs(20), |m| {
        m.lines().any(|l| l == "READY=1")
    });
    assert_eq!(
        before_ready.first().map(String::as_str),
        Some("STATUS=starting"),
        "{before_ready:#?}"
    );
    assert!(
        before_ready
            .iter()
            .any(|m| m == "STATUS=connecting to the MQTT broker"),
        "{before_ready:#?}"
    );
    // READY means the viewer page's port listens and the broker took rtcam's connection.
    assert!(
        TcpStream::connect(("127.0.0.1", http_port)).is_ok(),
        "HTTP listens at READY"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", mqtt_port)).is_ok(),
        "broker listens at READY"
    );
    // STATUS follows what the pipeline runs, in words.
    let after_ready = wait_for(&socket, Duration::from_secs(10), |m| {
        m.starts_with("STATUS=streaming")
    });
    let streaming = after_ready.last().unwrap();
    assert!(
        streaming.starts_with("STATUS=streaming test pattern with ")
            && streaming.contains("to 0 viewers"),
        "{streaming}"
    );

    // Pings keep coming while the pipeline and the MQTT loop beat.
    let until = Instant::now() + Duration::from_millis(2600);
    let mut pings = 0;
    while let Some(msg) = recv(&socket, until) {
        assert!(!msg.contains("unhealthy"), "{msg}");
        pings += usize::from(msg == "WATCHDOG=1");
    }
    assert!(pings >= 4, "only {pings} watchdog pings in 2.6 s");

    // SIGTERM: STOPPING=1 first, then a clean exit within the stop budget.
    let pid = rtcam.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    wait_for(&socket, Duration::from_secs(5), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = rtcam.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "rtcam did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    let _ = rtcam.0.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(status.success(), "exit {status}: {stderr}");
}
