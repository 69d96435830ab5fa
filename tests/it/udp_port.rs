//! Every session on one UDP port (`[webrtc] udp_port`): the rtcam binary serves 16 viewers at
//! once through one socket, and `/proc` shows its sockets and descriptors do not grow with them
//! (leaving out TCP: each viewer's signalling is an MQTT connection through the gate).
//! (Through a NAT that forwards only that port: `nat::viewer_outside_reaches_the_forwarded_udp_port_without_stun_or_turn`.)

use crate::common;

use common::commander::{Commander, Protocol};
use common::viewer::{Viewer, ViewerOptions};
use common::{test_config, Probe};
use std::collections::HashSet;
use std::time::Duration;

const VIEWERS: usize = 16;

/// The inodes of this machine's sockets of `proto` ("udp", "tcp"), IPv4 and IPv6.
fn inodes(proto: &str) -> HashSet<u64> {
    [format!("/proc/net/{proto}"), format!("/proc/net/{proto}6")]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9)?.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// A process's open descriptors other than TCP sockets, and how many of them are UDP sockets.
fn descriptors(pid: u32) -> (usize, usize) {
    let (udp, tcp) = (inodes("udp"), inodes("tcp"));
    let mut fds = 0;
    let mut udp_fds = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok());
        if inode.is_some_and(|i| tcp.contains(&i)) {
            continue;
        }
        fds += 1;
        if inode.is_some_and(|i| udp.contains(&i)) {
            udp_fds += 1;
        }
    }
    (fds, udp_fds)
}

/// Waits until `pred` holds for rtcam's descriptors, returning the last reading.
async fn settle(pid: u32, pred: impl Fn((usize, usize)) -> bool) -> (usize, usize) {
    let mut last = descriptors(pid);
    for _ in 0..100 {
        if pred(last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = descriptors(pid);
    }
    last
}

/// [`VIEWERS`] viewers at once, each answered with rtcam's candidate on the shared `port`.
async fn connect_viewers(broker: (&str, u16), root: &str, port: u16) -> Vec<Viewer> {
    let viewers = futures::future::join_all((0..VIEWERS).map(|_| {
        Viewer::connect_with(
            broker,
            root,
            ViewerOptions {
                udp_addrs: vec!["127.0.0.1:0".into()],
                ..ViewerOptions::default()
            },
        )
    }))
    .await;
    for (n, v) in viewers.iter().enumerate() {
        let answer = v.answer_sdp();
        assert!(
            answer.contains(&format!("127.0.0.1 {port} typ host")),
            "viewer {n}'s answer does not name the shared port: {answer}"
        );
    }
    viewers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_viewers_share_one_socket_and_leave_nothing_behind() {
    let mut config = test_config("udpport");
    config.webrtc.max_sessions = VIEWERS;
    config.webrtc.offers_per_second = VIEWERS as u32;
    config.encoder.bitrate_kbps = 300;
    let port = config.webrtc.udp_port;
    let rtcam = common::spawn_rtcam(&config);
    let pid = rtcam.child.id();
    let broker = ("127.0.0.1", config.mqtt.embedded_listen.port());
    let root = "rtcam/udpport";
    let status = format!("{root}/status");
    let probe = Probe::connect(broker, std::slice::from_ref(&status)).await;
    probe
        .wait_json(&status, Duration::from_secs(20), |v| v["state"] == "online")
        .await
        .expect("rtcam online");

    // One socket, on the one address configured, bound to the port.
    let (fds_before, udp_before) = descriptors(pid);
    assert_eq!(udp_before, 1, "UDP sockets before any viewer");
    let port_hex = format!(":{port:04X} ");
    let ours = std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .any(|l| l.contains(&format!("0100007F{port_hex}")));
    assert!(ours, "nothing bound to 127.0.0.1:{port}");

    let viewers = connect_viewers(broker, root, port).await;
    let decoded = futures::future::join_all(
        viewers
            .iter()
            .map(|v| v.wait_frames(20, Duration::from_secs(60))),
    )
    .await;
    for (n, d) in decoded.iter().enumerate() {
        assert!(d.frames >= 20, "viewer {n} decoded {} frames", d.frames);
    }
    let (fds_during, udp_during) = descriptors(pid);
    eprintln!(
        "rtcam's descriptors (not TCP): {fds_before} before, {fds_during} with {VIEWERS} viewers; UDP sockets {udp_before}, {udp_during}"
    );
    assert_eq!(udp_during, 1, "UDP sockets with {VIEWERS} viewers");
    assert!(
        fds_during <= fds_before + 2,
        "descriptors grew with the viewers: {fds_before} to {fds_during}"
    );

    futures::future::join_all(viewers.into_iter().map(Viewer::bye)).await;
    let (fds_after, udp_after) = settle(pid, |(f, _)| f <= fds_before).await;
    assert_eq!(udp_after, 1, "UDP sockets after the viewers left");
    assert!(
        fds_after <= fds_before,
        "descriptors left behind: {fds_before} before, {fds_after} after"
    );
    drop(rtcam);
}

/// A viewer with no UDP at all (ICE over TCP, connecting out as a browser does) watches through
/// the shared ICE-TCP port: the passive candidate rtcam announces is on `tcp_port`, where only
/// the shared listener is (the crate's own listener for the session is closed), and a second
/// viewer the same way shows connections are told apart by their first check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_without_udp_watches_over_the_shared_tcp_port() {
    let config = test_config("icetcp");
    let port = config.webrtc.tcp_port;
    let rt = common::start(config).await;
    // A stranger on the port: connections that say nothing, one that is not ICE, one whose
    // check names no session. None of it reaches a session or stops the viewers below.
    let mut strangers = Vec::new();
    for payload in [&b""[..], b"GET / HTTP/1.1\r\n\r\n", &stun_check("nobody:x")] {
        for _ in 0..10 {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut s, payload)
                .await
                .unwrap();
            strangers.push(s);
        }
    }
    let opts = ViewerOptions {
        tcp_only: true,
        ..ViewerOptions::default()
    };
    let first = Viewer::connect_with(rt.broker(), &rt.root(), opts.clone()).await;
    let second = Viewer::connect_with(rt.broker(), &rt.root(), opts).await;
    for (n, v) in [&first, &second].into_iter().enumerate() {
        let answer = v.answer_sdp();
        assert!(
            answer.contains(&format!("127.0.0.1 {port} typ host tcptype passive")),
            "viewer {n}: no passive candidate on the shared port: {answer}"
        );
        let d = v.wait_frames(20, Duration::from_secs(30)).await;
        assert!(
            d.frames >= 20,
            "viewer {n} decoded {} frames over TCP",
            d.frames
        );
        let gathered = v.gathered.lock().unwrap().types.clone();
        assert_eq!(
            gathered,
            ["host"],
            "viewer {n} sent its active TCP candidate alone"
        );
    }
    // `sessions` says how each viewer's media flows: ICE over TCP.
    let paths = sessions_paths(&rt).await;
    assert_eq!(paths, ["tcp", "tcp"], "the selected pairs' transports");
    first.bye().await;
    second.bye().await;
    // The stranger's connections that said something were closed; the silent ones too, once
    // their time to speak ran out.
    for mut s in strangers {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a stranger's connection stayed open: {read:?}"
        );
    }
    rt.app.stop().await;
}

/// The transports of the sessions' selected candidate pairs, once every session has one (the
/// sessions measure them once a second).
async fn sessions_paths(rt: &common::Running) -> Vec<String> {
    let c = Commander::connect(Protocol::V311, rt.broker(), &rt.root()).await;
    let mut paths = Vec::new();
    for _ in 0..50 {
        let r = c.request("sessions", serde_json::json!({})).await;
        let sessions = r.body["result"].as_array().cloned().unwrap_or_default();
        paths = sessions
            .iter()
            .filter_map(|s| s["path"]["protocol"].as_str().map(str::to_owned))
            .collect();
        if !sessions.is_empty() && paths.len() == sessions.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    paths
}

/// A STUN binding request with `username`, framed for TCP (RFC 4571).
fn stun_check(username: &str) -> Vec<u8> {
    let mut attr = vec![0x00, 0x06];
    attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attr.extend_from_slice(username.as_bytes());
    attr.resize(attr.len().next_multiple_of(4), 0);
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    msg.extend_from_slice(&[7; 12]);
    msg.extend_from_slice(&attr);
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&msg);
    framed
}
