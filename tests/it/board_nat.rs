//! A board behind NAT, end to end: the cross-built arm64 rtcam runs in the emulated board
//! (tests/board/run.sh) behind qemu's user-mode network, which lets it reach out to the host
//! (as 10.0.2.2) but lets nothing in. It connects to a mosquitto broker and a coturn TURN server
//! on the host; a viewer on the host asks for the stream over MQTT and receives it through the
//! TURN relay, the only address of the board it can reach. The TURN secret reaches rtcam as a
//! systemd-style credential, not in its config file.
//!
//! Slow (it cross-builds and boots a board), so `#[ignore]`d: `make test-board-nat` runs it.

use crate::common;

use common::coturn::{Coturn, BOARD_RELAY_PASSWORD};
use common::viewer::Viewer;
use common::{free_port, Mosquitto, Probe};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process group (run.sh and the qemu it starts), ended when dropped.
struct Group(Child);

impl Group {
    fn signal(&self, sig: &str) {
        // The group may be gone already (the board powered off): nothing to report then.
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal("-KILL");
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots an emulated board; run with make test-board-nat"]
async fn board_behind_nat_streams_through_a_turn_relay() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let turn_port = free_port();
    let _turn = Coturn::for_qemu_board(turn_port, dir.path());

    // The board's view of the host is 10.0.2.2; its own address 10.0.2.15 is private.
    let config = dir.path().join("rtcam.toml");
    std::fs::write(
        &config,
        format!(
            "[device]\nid = \"natcam\"\n\
             [mqtt]\nurl = \"mqtt://10.0.2.2:{mqtt}\"\n\
             [source]\nkind = \"v4l2\"\ndevice = \"/dev/video0\"\nformat = \"yuyv\"\n\
             width = 320\nheight = 180\nfps = 15\n\
             [encoder]\nelement = \"x264enc\"\nbitrate_kbps = 300\nkeyframe_interval = 15\n\
             [webrtc]\nudp_addrs = [\"10.0.2.15\"]\n\
             [[webrtc.ice_servers]]\nurls = [\"turn:10.0.2.2:{turn_port}?transport=udp\"]\n\
             username = \"board\"\ncredential = \"\"\n",
            mqtt = broker.port
        ),
    )
    .unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(
        credentials.join("turn_credential"),
        format!("{BOARD_RELAY_PASSWORD}\n"),
    )
    .unwrap();

    let board = Command::new("tests/board/run.sh")
        .arg("aarch64-unknown-linux-gnu")
        .env("BOARD_NET", "1")
        .env("BOARD_CONFIG", &config)
        .env("BOARD_CREDENTIALS", &credentials)
        // rtcam runs until the viewer's session ends, then stops on SIGTERM.
        .env(
            "BOARD_GUEST",
            "--config /etc/rtcam/rtcam.toml|session ended",
        )
        .env("BOARD_CASE_TIMEOUT", "300")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tests/board/run.sh starts");
    let mut board = Group(board);

    // Online on the host's broker: the board reached out through the NAT. (Its camera starts
    // on demand, with the viewer below, so the status names no source yet.)
    let root = "rtcam/natcam";
    let probe = Probe::connect(("127.0.0.1", broker.port), &[format!("{root}/status")]).await;
    let online = probe
        .wait_json(&format!("{root}/status"), Duration::from_secs(300), |v| {
            v["state"] == "online"
        })
        .await;
    assert!(
        online.is_some(),
        "the board never came online on the host's broker"
    );

    let viewer = Viewer::connect(("127.0.0.1", broker.port), root).await;
    let decoded = viewer.wait_frames(15, Duration::from_secs(120)).await;
    assert!(decoded.frames >= 15, "decoded only {decoded:?}");
    assert_eq!((decoded.width, decoded.height), (320, 180), "{decoded:?}");
    // The board's only reachable candidate is the relay: the TURN credential worked.
    let relayed = viewer
        .messages
        .lock()
        .unwrap()
        .iter()
        .any(|m| m.to_string().contains("typ relay"));
    assert!(relayed, "rtcam offered no relay candidate");
    viewer.bye().await;

    // The guest stops rtcam once the session has ended and checks it exits cleanly.
    let out = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        use std::io::Read;
        let _ = board.0.stdout.take().unwrap().read_to_string(&mut text);
        let status = board.0.wait().unwrap();
        (status, text)
    })
    .await
    .unwrap();
    assert!(out.0.success(), "the board run failed:\n{}", out.1);
    assert!(out.1.contains("then a clean stop"), "{}", out.1);
}
