//! A stranger on the camera's network. The real binary runs in a network namespace of its own
//! with the defaults a user gets (embedded broker, no `[auth]`) and its broker listener facing
//! the network; a legitimate viewer and an operator sit on one link, a stranger on another.
//! The stranger tries what docs/security.md says it cannot do, over the broker listener and
//! over the page's `/mqtt`, and floods both doors; every attempt must be refused or bounded
//! while the viewer keeps decoding, the operator keeps commanding, and rtcam's memory and file
//! descriptors stay bounded. A second test does the same for token holders on a camera with
//! `[auth] secret`.

use crate::common;

use common::commander::{Commander, Protocol};
use common::netns::{self, Netns};
use common::raw_mqtt::{Connack, RawMqtt};
use common::viewer::{Viewer, ViewerOptions};
use rumqttc::mqttbytes::v4::ConnectReturnCode;
use serde_json::json;
use std::time::Duration;

const CAM_LEGIT: &str = "10.77.1.1";
const LEGIT: &str = "10.77.1.2";
const CAM_STRANGER: &str = "10.77.2.1";
const STRANGER: &str = "10.77.2.2";
const ROOT: &str = "rtcam/hostile";

/// rtcam's resident memory (kB) and open descriptors, from /proc.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

struct Camera {
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Camera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release of the real binary inside `ns`, its broker listening on every address there.
fn start_camera(ns: &Netns, auth_secret: Option<&str>) -> Camera {
    let dir = tempfile::tempdir().unwrap();
    let mut c = common::test_config("hostile");
    c.http.listen = "0.0.0.0:8080".parse().unwrap();
    c.mqtt.embedded_listen = "0.0.0.0:1883".parse().unwrap();
    c.mqtt.embedded_listen_v5 = "127.0.0.1:1884".parse().unwrap();
    c.webrtc.udp_addrs = vec![CAM_LEGIT.parse().unwrap()];
    c.webrtc.max_sessions = 4;
    if let Some(secret) = auth_secret {
        c.auth.secret = secret.into();
    }
    let path = dir.path().join("rtcam.toml");
    std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
    let log = dir.path().join("rtcam.log");
    let child = ns
        .command(env!("CARGO_BIN_EXE_rtcam"))
        .args(["--config", path.to_str().unwrap()])
        .env(
            "RTCAM_LOG",
            "info,rumqttd=off,webrtc=warn,rtc=warn,rtcam=info",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Camera {
        child,
        log,
        _dir: dir,
    }
}

/// Three namespaces: the camera, with one link to the legitimate side and one to the stranger.
fn network(prefix: &str) -> Option<(Netns, Netns, Netns)> {
    if !netns::available() {
        eprintln!("skipped: network namespaces need root and iproute2");
        return None;
    }
    let cam = Netns::new(&format!("{prefix}-cam"));
    let legit = Netns::new(&format!("{prefix}-ok"));
    let stranger = Netns::new(&format!("{prefix}-x"));
    netns::link(
        &cam,
        &format!("{prefix}c1"),
        &format!("{CAM_LEGIT}/24"),
        &legit,
        &format!("{prefix}l"),
        &format!("{LEGIT}/24"),
    );
    netns::link(
        &cam,
        &format!("{prefix}c2"),
        &format!("{CAM_STRANGER}/24"),
        &stranger,
        &format!("{prefix}s"),
        &format!("{STRANGER}/24"),
    );
    // A default route each, as any LAN host has; without one, joining the mDNS multicast group
    // (which the WebRTC crate does) fails with "No such device".
    legit.ip(&["route", "add", "default", "via", CAM_LEGIT]);
    stranger.ip(&["route", "add", "default", "via", CAM_STRANGER]);
    Some((cam, legit, stranger))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn wait_listening(addr: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} never accepted a connection");
}

/// Both parts in one test, one after the other, in the same namespaces: the WebRTC crate keeps
/// threads that outlive a viewer, bound to the namespace they started in.
#[test]
fn strangers_and_token_holders_get_what_the_table_says() {
    let Some((cam, legit, stranger)) = network("hst") else {
        return;
    };
    a_stranger_can_neither_read_viewers_nor_command_the_camera(&cam, &legit, &stranger);
    token_holders_get_what_their_token_grants_and_no_more(&cam, &legit);
}

fn a_stranger_can_neither_read_viewers_nor_command_the_camera(
    cam: &Netns,
    legit: &Netns,
    stranger: &Netns,
) {
    let camera = start_camera(cam, None);
    let pid = camera.child.id();
    // The legitimate side: a viewer decoding throughout (a process of its own in the legit
    // namespace), an operator commanding after.
    let mut viewer = ViewerProcess::spawn(legit, None);
    let sid = viewer.wait(|_, frames| frames >= 10).0;
    assert!(!sid.is_empty(), "the viewer decoded");
    let (rss_before, fds_before) = footprint(pid);
    // A real offer's text, made here: replayed offers are part of the attack.
    let offer = runtime().block_on(common::real_offer_sdp());
    let report = netns::enter_named(&stranger.name, move || {
        runtime().block_on(attack(sid, offer, pid))
    });
    let (rss_during, fds_during) = footprint(pid);
    let before = viewer.frames();
    let after = viewer.wait(|_, frames| frames >= before + 30).1;
    assert!(
        after >= before + 30,
        "the viewer kept decoding ({before} → {after})"
    );
    viewer.stop();
    netns::enter_named(&legit.name, || {
        runtime().block_on(async {
            // The stranger's command and forged status changed nothing; the operator's work.
            let op = Commander::connect(Protocol::V311, (CAM_LEGIT, 1883), ROOT).await;
            let status = op.request("status", json!({})).await;
            assert_eq!(
                status.body["result"]["streaming"], true,
                "{:?}",
                status.body
            );
            let probe =
                common::Probe::connect((CAM_LEGIT, 1883), &[format!("{ROOT}/status")]).await;
            let retained = probe
                .wait_json(&format!("{ROOT}/status"), Duration::from_secs(5), |_| true)
                .await
                .expect("retained status");
            assert_eq!(
                retained["state"], "online",
                "the retained status is rtcam's: {retained}"
            );
            let on = op.request("stream", json!({"on": true})).await;
            assert!(
                on.body["error"].is_null(),
                "operators still command: {:?}",
                on.body
            );
        })
    });
    let (rss_after, fds_after) = footprint(pid);
    eprintln!(
        "{report}\nrtcam: RSS {rss_before} kB before, {rss_during} kB during, {rss_after} kB after; \
         fds {fds_before} → {fds_during} → {fds_after}"
    );
    assert!(
        rss_during < 300 * 1024,
        "RSS stayed under the unit's MemoryMax ({rss_during} kB)"
    );
    assert!(
        fds_after <= fds_before + 16,
        "descriptors came back ({fds_before} → {fds_after})"
    );
    let log = std::fs::read_to_string(&camera.log).unwrap();
    assert!(
        log.contains("MQTT gate refused a client"),
        "refusals are logged:\n{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("MQTT gate refused"))
            .count()
            < 60,
        "refusal logging is rate-limited"
    );
    drop(camera);
}

/// What the stranger saw, a line per step with the time since the attack began.
struct Notes {
    started: std::time::Instant,
    lines: Vec<String>,
}

impl Notes {
    fn note(&mut self, s: &str) {
        let line = format!("{:5.1} s  {s}", self.started.elapsed().as_secs_f64());
        eprintln!("{line}");
        self.lines.push(line);
    }
}

/// Everything the stranger tries; each step asserts its refusal. Returns a line per step.
async fn attack(sid: String, offer: String, pid: u32) -> String {
    let broker = format!("{CAM_STRANGER}:1883");
    let ws = format!("ws://{CAM_STRANGER}:8080/mqtt");
    wait_listening(&broker).await;
    let mut notes = Notes {
        started: std::time::Instant::now(),
        lines: Vec::new(),
    };
    for url in [None, Some(ws.as_str())] {
        read_and_write(&broker, url, &sid, &mut notes).await;
    }
    identities(&broker, &sid, &mut notes).await;
    oversized(&broker, &ws, &mut notes).await;
    replayed_offers(&broker, &offer, &mut notes).await;
    floods(&broker, pid, &mut notes).await;
    half_sent_http(&mut notes).await;
    notes.lines.join("\n")
}

/// Reading other viewers' signalling, commands, telemetry; writing where it may not; trying
/// again and again: over the broker listener (`url` none) or `/mqtt`.
#[expect(
    clippy::too_many_lines,
    reason = "the refusals on one connection, in order: the last step counts the refusals before it"
)]
async fn read_and_write(broker: &str, url: Option<&str>, sid: &str, notes: &mut Notes) {
    let mut c = match url {
        None => RawMqtt::tcp(broker).await,
        Some(u) => RawMqtt::ws(u).await,
    };
    assert_eq!(c.connect("stranger1", None).await, Connack::Accepted);
    for filter in [
        "#".to_string(),
        "rtcam/#".into(),
        format!("{ROOT}/#"),
        format!("{ROOT}/session/+/out"),
        format!("{ROOT}/session/+/in"),
        format!("{ROOT}/session/{sid}/out"),
        format!("{ROOT}/command/reply"),
        format!("{ROOT}/telemetry"),
        "homeassistant/#".into(),
        "$SYS/#".into(),
    ] {
        assert_eq!(
            c.subscribe(&filter).await,
            Some(false),
            "subscribe {filter} refused"
        );
    }
    assert_eq!(
        c.subscribe(&format!("{ROOT}/status")).await,
        Some(true),
        "status is public"
    );
    assert_eq!(
        c.subscribe(&format!("{ROOT}/session/stranger1/out")).await,
        Some(true)
    );
    notes.note(&format!(
        "{}: 10 subscriptions refused, status and its own session granted",
        if url.is_some() { "/mqtt" } else { "broker" }
    ));

    // Writing where it may not: commands, another viewer's session, rtcam's own topics.
    for (topic, payload, retain) in [
        (
            format!("{ROOT}/command"),
            r#"{"id":"x","command":"stream","args":{"on":false}}"#,
            false,
        ),
        (
            format!("{ROOT}/session/{sid}/in"),
            r#"{"type":"bye"}"#,
            false,
        ),
        (
            format!("{ROOT}/session/{sid}/out"),
            r#"{"type":"bye","reason":"forged"}"#,
            false,
        ),
        (format!("{ROOT}/status"), r#"{"state":"offline"}"#, true),
        ("homeassistant/camera/x/config".into(), "{}", true),
        (
            format!("{ROOT}/session/stranger1/in"),
            r#"{"type":"bye"}"#,
            true,
        ),
    ] {
        assert!(
            c.publish(&topic, payload.as_bytes(), retain).await,
            "{topic}: acknowledged, dropped"
        );
    }
    // Nothing forged reached anyone: its own out topic got nothing either.
    assert!(
        c.recv(Duration::from_millis(500)).await.is_none(),
        "nothing delivered"
    );
    notes.note(
        "commands, another viewer's bye, forged answer, forged retained status, discovery: dropped",
    );

    // A client that keeps trying is shown the door.
    let mut ended = false;
    for _ in 0..30 {
        if c.subscribe("#").await.is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "a client refused 20 times is disconnected");
    notes.note("a client refused 20 times is disconnected");
}

/// Identities it may not take: rtcam's, the viewer's, a bad one, a wrong password, a will.
async fn identities(broker: &str, sid: &str, notes: &mut Notes) {
    // Identities it may not take. rtcam's own id is `rtcam-hostile-` and 8 random characters,
    // which a stranger cannot know; the gate refuses its `rtcam-hostile` stem as well.
    for (id, login, want) in [
        ("rtcam-hostile", None, ConnectReturnCode::BadClientId),
        (sid, None, ConnectReturnCode::BadClientId),
        ("not a sid/#", None, ConnectReturnCode::BadClientId),
        (
            "guess",
            Some(("operator", "wrong")),
            ConnectReturnCode::BadUserNamePassword,
        ),
    ] {
        let mut c = RawMqtt::tcp(broker).await;
        assert_eq!(
            c.connect(id, login).await,
            Connack::Refused(want),
            "client id {id:?}"
        );
    }
    // A last will is a publish like any other: a forged offline status is refused at CONNECT.
    let mut c = RawMqtt::tcp(broker).await;
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("willful");
    connect.last_will = Some(rumqttc::mqttbytes::v4::LastWill::new(
        format!("{ROOT}/status"),
        r#"{"state":"offline"}"#,
        rumqttc::mqttbytes::QoS::AtLeastOnce,
        true,
    ));
    c.send(rumqttc::mqttbytes::v4::Packet::Connect(connect))
        .await;
    assert_eq!(
        c.connack().await,
        Connack::Refused(ConnectReturnCode::NotAuthorized)
    );
    notes.note(
        "rtcam's client id, the viewer's sid, a bad id, a bad password, a forged will: refused",
    );
}

/// Garbage and oversized packets end only their own connection.
async fn oversized(broker: &str, ws: &str, notes: &mut Notes) {
    // Garbage and oversized packets end only their own connection.
    let mut c = RawMqtt::tcp(broker).await;
    c.send_bytes(&[0xde; 512]).await;
    assert!(
        c.closed_within(Duration::from_secs(3)).await,
        "garbage closes the connection"
    );
    let mut c = RawMqtt::tcp(broker).await;
    assert_eq!(c.connect("bigsender", None).await, Connack::Accepted);
    let huge = vec![b'x'; 512 * 1024];
    c.publish("rtcam/hostile/session/bigsender/in", &huge, false)
        .await;
    assert!(
        c.closed_within(Duration::from_secs(3)).await,
        "an oversized packet closes it"
    );
    let mut c = RawMqtt::ws(ws).await;
    assert_eq!(c.connect("bigws", None).await, Connack::Accepted);
    c.send_bytes(&vec![0u8; 4 << 20]).await;
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "a 4 MiB WebSocket message closes it"
    );
    notes.note("garbage, a 512 KiB packet, a 4 MiB WebSocket message: their connection closed");
}

/// Replayed offers under many client ids from one address.
async fn replayed_offers(broker: &str, offer: &str, notes: &mut Notes) {
    // Replayed offers under many client ids hold at most half the session slots (2 of 4).
    let mut holders = Vec::new();
    let mut answered = 0;
    for i in 0..3 {
        let id = format!("holder{i}");
        let mut c = RawMqtt::tcp(broker).await;
        assert_eq!(c.connect(&id, None).await, Connack::Accepted);
        assert_eq!(
            c.subscribe(&format!("{ROOT}/session/{id}/out")).await,
            Some(true)
        );
        let body = json!({"type": "offer", "sdp": offer}).to_string();
        c.publish(&format!("{ROOT}/session/{id}/in"), body.as_bytes(), false)
            .await;
        let reply = loop {
            match c.recv(Duration::from_secs(5)).await {
                Some(rumqttc::mqttbytes::v4::Packet::Publish(p)) => {
                    break serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap()
                }
                Some(_) => continue,
                None => panic!("{id}: no reply to its offer"),
            }
        };
        if reply["type"] == "answer" {
            answered += 1;
        } else {
            assert_eq!(reply["code"], "too_many_sessions", "{id}: {reply}");
        }
        holders.push(c);
    }
    assert_eq!(answered, 2, "one address holds at most half the slots");
    drop(holders);
    notes.note("3 replayed offers from one address: 2 answered, the third too_many_sessions");
}

/// Connection floods from one address, and connections that never say CONNECT.
async fn floods(broker: &str, pid: u32, notes: &mut Notes) {
    // Floods from one address: connections beyond the per-address cap are closed at once,
    // and connections that never say CONNECT are closed after the connect timeout.
    let mut held = Vec::new();
    let mut accepted = 0;
    for i in 0..60 {
        let mut c = RawMqtt::tcp(broker).await;
        if c.connect(&format!("flood{i}"), None).await == Connack::Accepted {
            accepted += 1;
        }
        held.push(c);
    }
    assert!(accepted <= 16, "{accepted} of 60 admitted from one address");
    let (rss, fds) = footprint(pid);
    notes.note(&format!(
        "60 connections from one address: {accepted} admitted (RSS {rss} kB, {fds} fds)"
    ));
    drop(held);
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::net::TcpStream::connect(broker).await.unwrap());
    }
    let mut quiet = RawMqtt::tcp(broker).await;
    assert!(
        quiet.closed_within(Duration::from_secs(13)).await,
        "a connection that never sends CONNECT is closed"
    );
    drop(silent);
    notes.note("connections that never send CONNECT: closed after 10 s");
}

/// Half-sent HTTP requests.
async fn half_sent_http(notes: &mut Notes) {
    // Half-sent HTTP requests are closed, and do not pile up.
    let mut half = Vec::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(format!("{CAM_STRANGER}:8080"))
            .await
            .unwrap();
        use tokio::io::AsyncWriteExt;
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        half.push(s);
    }
    let mut last = half.pop().unwrap();
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(20), last.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a half-sent request is closed: {closed:?}"
    );
    drop(half);
    notes.note("100 half-sent HTTP requests: closed by the header timeout");
}

fn token_holders_get_what_their_token_grants_and_no_more(cam: &Netns, legit: &Netns) {
    const SECRET: &str = "hostile-test-secret-of-forty-bytes-long";
    let camera = start_camera(cam, Some(SECRET));
    let authority = rtcam::auth::Authority::new(SECRET, "hostile");
    let mint = |rights: Vec<rtcam::auth::Right>, ttl: u64| {
        authority.mint(&authority.claims(
            Duration::from_secs(ttl),
            rights,
            std::time::SystemTime::now(),
        ))
    };
    use rtcam::auth::Right;
    let view = mint(vec![Right::View], 600);
    let short = mint(vec![Right::View], 3);
    let control = mint(vec![Right::View, Right::Control], 600);
    let secrets = [SECRET.to_string(), view.clone(), control.clone()];
    let view_for_viewer = view.clone();
    netns::enter_named(&legit.name, move || {
        runtime().block_on(async move {
            let broker = format!("{CAM_LEGIT}:1883");
            wait_listening(&broker).await;
            // No token, no entry: the camera is not open.
            let mut c = RawMqtt::tcp(&broker).await;
            assert_eq!(c.connect("anon1", None).await, Connack::Refused(ConnectReturnCode::NotAuthorized));
            let mut c = RawMqtt::ws(&format!("ws://{CAM_LEGIT}:8080/mqtt?token={view}")).await;
            assert_eq!(c.connect("wsview1", None).await, Connack::Accepted, "/mqtt with a view token");

            // A view token watches its own session and nothing else; its commands go nowhere.
            let mut c = RawMqtt::tcp(&broker).await;
            assert_eq!(c.connect("viewer1", Some(("token", &view))).await, Connack::Accepted);
            assert_eq!(c.subscribe(&format!("{ROOT}/session/viewer1/out")).await, Some(true));
            assert_eq!(c.subscribe(&format!("{ROOT}/command/reply")).await, Some(false));
            assert!(c.publish(&format!("{ROOT}/command"), br#"{"id":"v","command":"stream","args":{"on":false}}"#, false).await);

            // A control token commands; the view token's command above changed nothing.
            let mut op = RawMqtt::tcp(&broker).await;
            assert_eq!(op.connect("ctl1", Some(("token", &control))).await, Connack::Accepted);
            assert_eq!(op.subscribe(&format!("{ROOT}/command/reply/ctl1")).await, Some(true));
            op.publish(
                &format!("{ROOT}/command"),
                json!({"id":"c1","command":"status","reply_to":format!("{ROOT}/command/reply/ctl1")}).to_string().as_bytes(),
                false,
            )
            .await;
            let reply = loop {
                match op.recv(Duration::from_secs(5)).await {
                    Some(rumqttc::mqttbytes::v4::Packet::Publish(p)) => break p,
                    Some(_) => continue,
                    None => panic!("no reply to a control token's command"),
                }
            };
            let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            assert_eq!(body["result"]["streaming"], true, "{body}");

            // A token's connection ends when the token expires.
            let mut c = RawMqtt::tcp(&broker).await;
            assert_eq!(c.connect("short1", Some(("token", &short))).await, Connack::Accepted);
            assert!(c.closed_within(Duration::from_secs(8)).await, "expired token's connection ended");
            })
    });
    // A viewer with a view token decodes without sending the token in its offer: the gate
    // proved it at connect.
    let mut viewer = ViewerProcess::spawn(legit, Some(&view_for_viewer));
    assert!(viewer.wait(|_, frames| frames >= 10).1 >= 10);
    viewer.stop();
    let log = std::fs::read_to_string(&camera.log).unwrap();
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "no secret or token in the log"
        );
    }
}

/// A Rust viewer in its own process in `ns` (the WebRTC crate's threads stay in the namespace
/// they start in, so a viewer does not share the test's process); it prints its sid and then
/// its decoded frame count every 200 ms.
struct ViewerProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<(String, usize)>,
    last: (String, usize),
}

impl ViewerProcess {
    fn spawn(ns: &Netns, token: Option<&str>) -> ViewerProcess {
        let mut child = ns
            .command(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hostile::viewer_process",
                "--ignored",
                "--nocapture",
            ])
            .env("RTCAM_HOSTILE_VIEWER", token.unwrap_or("-"))
            .env("RTCAM_LOG", "warn,webrtc=error,rtc=error")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let seen = line.strip_prefix("SEEN ").and_then(|l| l.split_once(' '));
                if let Some((sid, frames)) = seen {
                    let _ = tx.send((sid.to_string(), frames.parse().unwrap_or(0)));
                }
            }
        });
        ViewerProcess {
            child,
            lines,
            last: (String::new(), 0),
        }
    }

    /// The latest (sid, frames) once `pred` holds for it, or after 20 s.
    fn wait(&mut self, pred: impl Fn(&str, usize) -> bool) -> (String, usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !pred(&self.last.0, self.last.1) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(seen) => self.last = seen,
                Err(_) => break,
            }
        }
        self.last.clone()
    }

    fn frames(&mut self) -> usize {
        while let Ok(seen) = self.lines.try_recv() {
            self.last = seen;
        }
        self.last.1
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test on its own: the viewer process [`ViewerProcess`] starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the hostile-network test as a child process in a network namespace"]
async fn viewer_process() {
    let Ok(token) = std::env::var("RTCAM_HOSTILE_VIEWER") else {
        return;
    };
    let token = (token != "-").then_some(token);
    wait_listening(&format!("{CAM_LEGIT}:1883")).await;
    let viewer = Viewer::connect_with(
        (CAM_LEGIT, 1883),
        ROOT,
        ViewerOptions {
            udp_addrs: vec![format!("{LEGIT}:0")],
            token_at_connect_only: token.is_some(),
            token,
            ..Default::default()
        },
    )
    .await;
    loop {
        println!("SEEN {} {}", viewer.sid, viewer.decoded().frames);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
