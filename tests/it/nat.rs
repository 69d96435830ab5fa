//! NAT traversal between network namespaces: rtcam behind one NAT, a viewer behind another,
//! coturn as STUN and TURN server on a "public" network between them.
//!
//! ```text
//!  nat-X-cam 10.1.0.2 ── nat-X-camr (masquerade; TCP 1883, 8080 forwarded) 198.51.100.2 ─┐
//!                        (test 4: UDP 8555 too; 5: TCP 8555)                 nat-X-pub 198.51.100.1 (coturn)
//!  nat-X-view 10.2.0.2 ── nat-X-viewr (masquerade) 203.0.113.2 ──────────── 203.0.113.1 ─┘
//!                        (test 5: drops all UDP)
//! ```
//!
//! The public network has no route to either private one, so host candidates cannot connect:
//! a viewer gets through with server-reflexive candidates (STUN) or a relay (TURN), or, where
//! the camera's router forwards rtcam's shared UDP port (or, for a viewer whose network lets
//! only TCP out, its shared ICE-TCP port), to the host candidate rtcam announces on the
//! router's outside address (`public_ips`), with no server at all. rtcam is
//! the real binary in its namespace, with its embedded broker; the viewer's signalling reaches
//! it through the forwarded TCP port, as through a home router. Viewers are this test binary
//! re-run as a child in the viewer's namespace (`nat_viewer_process`), or headless Chromium on
//! rtcam's page.
//!
//! Fixed ports are used inside the namespaces: each topology has a port space of its own.

use crate::common;

use common::coturn::{Coturn, TurnAuth};
use common::netns::{self, Netns};
use common::viewer::{candidate_type, Viewer, ViewerOptions};
use common::Probe;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TURN_IP: &str = "198.51.100.1";
const CAM_WAN: &str = "198.51.100.2";
const CAM_LAN: &str = "10.1.0.2";
const VIEW_LAN: &str = "10.2.0.2";
const TURN_PORT: u16 = 3478;
const MQTT_PORT: u16 = 1883;
const HTTP_PORT: u16 = 8080;
/// rtcam's shared WebRTC port (`[webrtc] udp_port`), the one a port forward names.
const WEBRTC_PORT: u16 = 8555;
const TURN_SECRET: &str = "nat-turn-secret-4417";
/// The public network's default route: a link to a namespace that drops what it gets.
const INTERNET_IF: &str = "internet";
const VOID_IP: &str = "192.0.2.2";

/// One topology at a time: each runs an encoder, decoders and coturn, and two at once on a
/// 2-core machine would starve each other into timeouts that say nothing about NAT.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The six namespaces. Dropping them removes every link and rule; the processes inside are
/// guards declared after this, so they are ended first.
struct Nets {
    public: Netns,
    cam_router: Netns,
    cam: Netns,
    view_router: Netns,
    view: Netns,
    /// Beyond the public network's default route; it forwards nothing.
    void: Netns,
}

impl Nets {
    fn new(tag: &str) -> Nets {
        let ns = |role: &str| Netns::new(&format!("nat-{tag}-{role}"));
        let nets = Nets {
            public: ns("pub"),
            cam_router: ns("camr"),
            cam: ns("cam"),
            view_router: ns("viewr"),
            view: ns("view"),
            void: ns("void"),
        };
        netns::link(
            &nets.public,
            "pub-cam",
            "198.51.100.1/24",
            &nets.cam_router,
            "wan",
            "198.51.100.2/24",
        );
        netns::link(
            &nets.public,
            "pub-view",
            "203.0.113.1/24",
            &nets.view_router,
            "wan",
            "203.0.113.2/24",
        );
        netns::link(
            &nets.public,
            INTERNET_IF,
            "192.0.2.1/24",
            &nets.void,
            "wan",
            &format!("{VOID_IP}/24"),
        );
        netns::link(
            &nets.cam_router,
            "lan",
            "10.1.0.1/24",
            &nets.cam,
            "eth0",
            "10.1.0.2/24",
        );
        netns::link(
            &nets.view_router,
            "lan",
            "10.2.0.1/24",
            &nets.view,
            "eth0",
            "10.2.0.2/24",
        );
        // The public network routes between the two NATs' outsides; everything else goes to
        // "the Internet": a namespace that does not forward, where packets vanish. A real TURN server has such a
        // default route, and it matters: a viewer's relay sends its checks to rtcam's private
        // host address too, and with no route at all coturn's send fails (ENETUNREACH) and it
        // closes the viewer's allocation at once.
        nets.public.forward();
        nets.public.route_default(VOID_IP);
        nets.cam_router.route_default("198.51.100.1");
        nets.view_router.route_default("203.0.113.1");
        nets.cam.route_default("10.1.0.1");
        nets.view.route_default("10.2.0.1");
        netns::masquerade(&nets.cam_router, "wan");
        netns::masquerade(&nets.view_router, "wan");
        netns::drop_unsolicited(&nets.cam_router, "wan");
        netns::drop_unsolicited(&nets.view_router, "wan");
        // Signalling and the page: TCP only. No UDP is forwarded, so media needs ICE.
        netns::forward_tcp(&nets.cam_router, "wan", &[MQTT_PORT, HTTP_PORT], CAM_LAN);
        nets
    }

    /// The premise of every test: neither private network is reachable from outside; what
    /// the public network sends there goes into the void.
    fn assert_private_nets_unroutable(&self) {
        for to in [VIEW_LAN, CAM_LAN] {
            let out = Command::new("ip")
                .args(["-n", &self.public.name, "route", "get", to])
                .output()
                .unwrap();
            let route = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && route.contains(&format!("dev {INTERNET_IF} ")),
                "{to} is not routed into the void from the public network: {route}"
            );
        }
    }

    fn coturn(&self, dir: &Path) -> Coturn {
        Coturn::start(
            self.public.command("turnserver"),
            TURN_IP,
            TURN_PORT,
            TurnAuth::Secret(TURN_SECRET),
            dir,
            &[],
        )
    }
}

/// A child process (rtcam, a viewer) killed when dropped, with its log file for failures.
struct Proc {
    child: Child,
    log: std::path::PathBuf,
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
}

/// Lines of a child's stdout, read on a thread so waits can have deadlines; each is also
/// appended to `log` (rtcam logs to stdout), for failure messages.
fn stdout_lines(child: &mut Child, log: &Path) -> std::sync::mpsc::Receiver<String> {
    use std::io::Write;
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().expect("stdout piped");
    let mut log = append(log);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            // The receiver may be gone (the wait is over); the log still wants the rest.
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits for a line `pred` accepts, until `deadline`.
fn wait_line(
    lines: &std::sync::mpsc::Receiver<String>,
    deadline: Instant,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match lines.recv_timeout(left) {
            Ok(line) if pred(&line) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Starts the rtcam binary in the camera's namespace with `webrtc` as its `[webrtc]` table
/// body, and waits until it serves (its broker and HTTP listening).
fn start_rtcam(scene: &Scene, device: &str, webrtc: &str) -> Proc {
    let (nets, dir) = (&scene.nets, scene.dir.path());
    let config = dir.join(format!("{device}.toml"));
    std::fs::write(
        &config,
        format!(
            "[device]\nid = \"{device}\"\n\
             [mqtt]\nembedded_listen = \"0.0.0.0:{MQTT_PORT}\"\nembedded_listen_v5 = \"127.0.0.1:1884\"\n\
             users_file = \"{users}\"\n\
             [http]\nlisten = \"0.0.0.0:{HTTP_PORT}\"\nhttps_listen = \"\"\n\
             [source]\nkind = \"test\"\nwidth = 320\nheight = 240\nfps = 15\n\
             [encoder]\nbitrate_kbps = 300\nkeyframe_interval = 15\n\
             [webrtc]\nudp_addrs = [\"{CAM_LAN}\"]\n{webrtc}\n",
            users = common::operator_users_file(),
        ),
    )
    .unwrap();
    let log = dir.join(format!("{device}.log"));
    let mut child = nets
        .cam
        .command(env!("CARGO_BIN_EXE_rtcam"))
        .arg("--config")
        .arg(&config)
        .env(
            "RTCAM_LOG",
            std::env::var("RTCAM_NAT_LOG").unwrap_or("info,webrtc=warn,rtc=warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(append(&log))
        .spawn()
        .expect("rtcam starts");
    let lines = stdout_lines(&mut child, &log);
    let proc = Proc { child, log };
    let up = wait_line(&lines, Instant::now() + Duration::from_secs(60), |l| {
        l.contains("rtcam is running")
    });
    assert!(up.is_some(), "rtcam did not start:\n{}", proc.log_text());
    proc
}

/// Runs one viewer process in the viewer's namespace and returns its report and its log.
fn run_viewer(scene: &Scene, spec: Value, what: &str) -> (Value, String) {
    let (nets, dir) = (&scene.nets, scene.dir.path());
    let log = dir.join(format!("viewer-{}.log", rand::random::<u32>()));
    let mut child = nets
        .view
        .command(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "nat::nat_viewer_process",
            "--ignored",
            "--nocapture",
        ])
        .env("RTCAM_NAT_VIEWER", spec.to_string())
        .env(
            "RTCAM_LOG",
            std::env::var("RTCAM_NAT_LOG").unwrap_or("info,webrtc=warn,rtc=warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(append(&log))
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut child, &log);
    let proc = Proc { child, log };
    let report = wait_line(&lines, Instant::now() + Duration::from_secs(150), |l| {
        l.starts_with("NATREPORT ")
    });
    let Some(report) = report else {
        panic!("the {what} viewer reported nothing:\n{}", proc.log_text());
    };
    let report = serde_json::from_str(report.trim_start_matches("NATREPORT ")).unwrap();
    (report, proc.log_text())
}

/// Headless Chromium in the viewer's namespace on the page rtcam serves through the forwarded
/// HTTP port (`query` after its `/`), decoding 30 frames at 320×240: its output and report.
fn chromium(scene: &Scene, query: &str) -> (std::process::Output, Value) {
    chromium_within(scene, query, Duration::from_secs(60))
}

/// [`chromium`], giving up after `timeout`: a run meant to fail waits less.
fn chromium_within(scene: &Scene, query: &str, timeout: Duration) -> (std::process::Output, Value) {
    let script = format!("{}/tests/browser/view.mjs", env!("CARGO_MANIFEST_DIR"));
    let one_browser = common::BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let out = scene
        .nets
        .view
        .command("node")
        .arg(script)
        .args(["--url", &format!("http://{CAM_WAN}:{HTTP_PORT}/{query}")])
        .args(["--width", "320", "--height", "240", "--frames", "30"])
        .args(["--timeout", &timeout.as_millis().to_string()])
        .output()
        .expect("node runs (make test-deps installs the browser test's packages)");
    drop(one_browser);
    let page = common::script_report(&out.stdout);
    eprintln!("chromium: {page}");
    (out, page)
}

fn viewer_spec(device: &str, mode: &str) -> Value {
    json!({
        "host": CAM_WAN,
        "port": MQTT_PORT,
        "root": format!("rtcam/{device}"),
        "mode": mode,
        "servers": [],
        "ask": false,
        "relay": false,
    })
}

/// What every NAT test starts from: the topology to itself (one test at a time), the namespaces (checked: neither
/// private network is reachable from outside), coturn on the public one, and a directory for
/// configurations and logs. None, after saying why, where namespaces are not available.
///
/// Fields drop in declaration order: coturn, the namespaces, the directory, then the lock.
struct Scene {
    turn: Coturn,
    nets: Nets,
    dir: tempfile::TempDir,
    started: Instant,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Scene {
    fn new(tag: &str) -> Option<Scene> {
        if !netns::available() {
            eprintln!("skipped: network namespaces need root and iproute2");
            return None;
        }
        let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let nets = Nets::new(tag);
        nets.assert_private_nets_unroutable();
        let turn = nets.coturn(dir.path());
        Some(Scene {
            turn,
            nets,
            dir,
            started,
            _one: one,
        })
    }
}

/// (1) Server-reflexive: both sides know only the STUN server; the NATs let the srflx
/// candidates through each other once both sides have sent (hole punching).
#[test]
fn viewer_and_camera_behind_nats_connect_through_stun() {
    let Some(scene) = Scene::new("s") else {
        return;
    };
    let stun = format!("stun:{TURN_IP}:{TURN_PORT}");
    let rtcam = start_rtcam(
        &scene,
        "stuncam",
        &format!("[[webrtc.ice_servers]]\nurls = [\"{stun}\"]\n"),
    );
    let mut spec = viewer_spec("stuncam", "watch");
    spec["servers"] = json!([{ "urls": [stun] }]);
    let (report, viewer_log) = run_viewer(&scene, spec, "STUN");
    eprintln!("STUN viewer: {report}");
    assert!(
        report["frames"].as_u64().unwrap_or(0) >= 15,
        "{report}\nviewer log:\n{viewer_log}\nrtcam log:\n{}",
        rtcam.log_text()
    );
    assert_eq!(report["width"], 320, "{report}");
    // rtcam learned its public address from STUN and offered it.
    assert!(
        report["rtcam_candidates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().contains(&format!("{CAM_WAN} "))
                && c.as_str().unwrap().contains("typ srflx")),
        "rtcam offered no srflx candidate on {CAM_WAN}: {report}"
    );
    // The chosen path leads to rtcam's public side: its server-reflexive address, or the
    // same address learned from rtcam's checks when they beat the trickled candidate
    // (peer-reflexive; the crate's stats leave such a candidate's address out, but the only
    // way from the viewer's NAT to rtcam is its public address, the private networks being
    // unroutable, as checked above). The viewer's end is its host candidate, the base ICE
    // sends its own reflexive candidate's packets from.
    let pair = &report["pair"];
    assert!(
        (pair[1] == "srflx" && pair[2] == CAM_WAN) || pair[1] == "prflx",
        "selected pair does not lead to rtcam's reflexive address: {report}\nviewer log:\n{viewer_log}"
    );
    assert_ne!(pair[0], "relay", "{report}");
    eprintln!("srflx test took {:?}", scene.started.elapsed());
}

/// The `[webrtc]` lines that make rtcam derive TURN REST credentials from the secret it
/// shares with coturn, valid for `ttl_secs`.
fn turn_rest(ttl_secs: u64) -> String {
    format!(
        "turn_urls = [\"turn:{TURN_IP}:{TURN_PORT}?transport=udp\"]\n\
         turn_secret = \"{TURN_SECRET}\"\nturn_ttl_secs = {ttl_secs}\n"
    )
}

/// (2): relay-only viewers with TURN REST credentials that rtcam derived from the secret it
/// shares with coturn: Chromium on the page (`iceTransportPolicy: "relay"`), which gets them
/// from `/config.json`, and a Rust viewer that asks over MQTT. Neither has any other server.
#[test]
fn relay_only_viewers_connect_with_derived_turn_credentials() {
    let Some(scene) = Scene::new("r") else {
        return;
    };
    let rtcam = start_rtcam(
        &scene,
        "turncam",
        &format!(
            "{}[[webrtc.ice_servers]]\nurls = [\"stun:{TURN_IP}:{TURN_PORT}\"]\n",
            turn_rest(600)
        ),
    );

    // Chromium on the page, relay-only; the TURN credentials come from `/config.json`.
    let (out, page) = chromium(&scene, "?relay=1");
    assert!(
        out.status.success(),
        "Chromium did not decode through the relay: {page}\nstderr:\n{}\nrtcam log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        rtcam.log_text()
    );
    assert_eq!(page["localCandidateType"], "relay", "{page}");
    assert_eq!(page["iceTransportPolicy"], "relay", "{page}");
    // The Rust viewer knows no server of its own: everything comes from rtcam's reply.
    let mut spec = viewer_spec("turncam", "watch");
    spec["ask"] = json!(true);
    spec["relay"] = json!(true);
    let (report, viewer_log) = run_viewer(&scene, spec, "relay-only");
    eprintln!("relay-only viewer: {report}");
    assert!(
        report["frames"].as_u64().unwrap_or(0) >= 15,
        "{report}\nviewer log:\n{viewer_log}\nrtcam log:\n{}\nturn log:\n{}",
        rtcam.log_text(),
        scene.turn.log_text()
    );
    assert_eq!(report["pair"][0], "relay", "{report}");
    let gathered = report["gathered"].as_array().unwrap();
    assert!(
        !gathered.is_empty() && gathered.iter().all(|t| t == "relay"),
        "a relay-only viewer gathered {gathered:?}"
    );
    let handed = &report["ice_servers"];
    let user = handed["ice_servers"][1]["username"].as_str().unwrap();
    let (expiry, label) = user.split_once(':').unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > now && expiry <= now + 600, "{handed}");
    assert_eq!(handed["expires_at"], expiry, "{handed}");
    assert_eq!(label, "turncam-viewer");
    // coturn accepted the viewer's derived username (its allocation succeeded).
    assert!(
        scene
            .turn
            .log_text()
            .lines()
            .any(|l| l.contains(user) && l.contains("ALLOCATE processed, success")),
        "coturn logged no allocation for {user}:\n{}",
        scene.turn.log_text()
    );

    eprintln!("relay test took {:?}", scene.started.elapsed());
}

/// (3) TURN REST credentials: rtcam hands derived credentials to viewers (in `/config.json`
/// and in reply to the `ice_servers` message); a relay-only viewer in the other NAT allocates
/// a relay with fresh ones, and coturn refuses the same kind once their expiry has passed.
#[test]
fn derived_turn_credentials_allocate_until_they_expire() {
    let Some(scene) = Scene::new("e") else {
        return;
    };
    // Short-lived credentials (long enough for the fresh allocation on a loaded machine); the
    // camera's pipeline never starts (no offer is made).
    let _rtcam = start_rtcam(&scene, "shortcam", &turn_rest(8));
    // The page's view: derived credentials, through the forwarded HTTP port; never the secret.
    let page = scene.nets.view.exec(
        "curl",
        &["-sf", &format!("http://{CAM_WAN}:{HTTP_PORT}/config.json")],
    );
    let page_text = String::from_utf8_lossy(&page.stdout).to_string();
    assert!(!page_text.contains(TURN_SECRET), "{page_text}");
    let page: Value = serde_json::from_str(&page_text).unwrap();
    let user = page["ice_servers"][0]["username"]
        .as_str()
        .unwrap_or_default();
    assert!(user.ends_with(":shortcam-viewer"), "{page}");
    assert_eq!(
        page["ice_servers_expire_at"].as_u64(),
        user.split(':').next().unwrap().parse::<u64>().ok(),
        "{page}"
    );

    let (report, _) = run_viewer(&scene, viewer_spec("shortcam", "expiry"), "expiry");
    eprintln!("expiry viewer: {report}");
    let fresh_user = report["fresh_user"].as_str().unwrap();
    assert!(
        scene
            .turn
            .log_text()
            .lines()
            .any(|l| l.contains(fresh_user) && l.contains("ALLOCATE processed, success")),
        "coturn logged no allocation for {fresh_user}:\n{}",
        scene.turn.log_text()
    );
    assert_eq!(report["fresh"]["types"], json!(["relay"]), "{report}");
    assert_eq!(report["stale"]["complete"], true, "{report}");
    assert_eq!(report["stale"]["types"], json!([]), "{report}");
    let stale_user = report["stale_user"].as_str().unwrap();
    let log = scene.turn.log_text();
    let about_stale: Vec<&str> = log.lines().filter(|l| l.contains(stale_user)).collect();
    assert!(
        about_stale.iter().any(|l| l.contains("error 401")),
        "coturn did not refuse {stale_user}:\n{log}"
    );
    assert!(
        !about_stale.iter().any(|l| l.contains("success")),
        "coturn accepted the expired {stale_user}:\n{log}"
    );
    eprintln!("expiry test took {:?}", scene.started.elapsed());
}

/// Chromium on the page, with no ICE server, decodes rtcam on a direct path: rtcam's host
/// candidate (the announced one), not a relay; `how` says which path for the failure message.
fn chromium_decodes_direct(scene: &Scene, rtcam: &Proc, how: &str) {
    let (out, page) = chromium(scene, "");
    assert!(
        out.status.success(),
        "Chromium did not decode {how}: {page}\nstderr:\n{}\nrtcam log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        rtcam.log_text()
    );
    assert_eq!(page["remoteCandidateType"], "host", "{page}");
    assert_ne!(page["localCandidateType"], "relay", "{page}");
}

/// Whether a viewer's report lists a candidate of rtcam's (answer or trickled) that `pred`
/// accepts.
fn announced_by_rtcam(report: &Value, pred: impl Fn(&str) -> bool) -> bool {
    report["rtcam_candidates"]
        .as_array()
        .is_some_and(|cs| cs.iter().filter_map(Value::as_str).any(pred))
}

/// (4) A port forward instead of ICE servers: rtcam's NAT forwards the shared WebRTC port
/// (`udp_port`) and no other UDP, and rtcam announces the NAT's outside address with that port
/// (`public_ips`). Viewers outside with no STUN or TURN server, the Rust viewer and Chromium on
/// the page, connect to that candidate; with the forward taken away, the same viewer gets no
/// picture.
#[test]
fn viewer_outside_reaches_the_forwarded_udp_port_without_stun_or_turn() {
    let Some(scene) = Scene::new("f") else {
        return;
    };
    let rtcam = start_rtcam(
        &scene,
        "fwdcam",
        &format!("udp_port = {WEBRTC_PORT}\npublic_ips = [\"{CAM_WAN}\"]\n"),
    );
    let router = &scene.nets.cam_router;
    netns::forward_port(router, "udp", "wan", WEBRTC_PORT, CAM_LAN);
    // The UDP host candidate on the router's outside address, with the shared port.
    let announced = format!("{CAM_WAN} {WEBRTC_PORT} typ host");
    let announces = |report: &Value| {
        announced_by_rtcam(report, |c| {
            c.split(' ').nth(2) == Some("udp") && c.contains(&announced)
        })
    };

    // The Rust viewer, with no server of its own and none from rtcam.
    let (report, viewer_log) = run_viewer(&scene, viewer_spec("fwdcam", "watch"), "forwarded");
    eprintln!("forwarded-port viewer: {report}");
    assert!(
        report["frames"].as_u64().unwrap_or(0) >= 15,
        "{report}\nviewer log:\n{viewer_log}\nrtcam log:\n{}",
        rtcam.log_text()
    );
    assert_eq!(report["width"], 320, "{report}");
    assert!(
        announces(&report),
        "rtcam did not announce {announced}: {report}"
    );
    let gathered = report["gathered"].as_array().unwrap();
    assert!(
        !gathered.is_empty() && gathered.iter().all(|t| t == "host"),
        "a viewer with no server gathered {gathered:?}"
    );
    // The viewer's end is its host candidate. Its stats know only trickled remote candidates,
    // so the answer's, the announced one among them, shows as peer-reflexive with no address;
    // the only way to rtcam is the forward, the private networks being unroutable.
    let pair = &report["pair"];
    assert_eq!(pair[0], "host", "{report}");
    assert!(
        (pair[1] == "host" && pair[2] == CAM_WAN) || pair[1] == "prflx",
        "selected pair does not lead to rtcam's announced address: {report}"
    );
    // And it went through the forward, both ways, on the shared port: at least a packet per
    // frame from rtcam's, the viewer's checks and feedback to it.
    let (inward, outward) = netns::forward_counts(router, "udp");
    assert!(
        inward > 0 && outward >= 15,
        "the forward of UDP {WEBRTC_PORT} carried {inward} packets in, {outward} out"
    );

    // Chromium on the page, with no ICE server either.
    chromium_decodes_direct(&scene, &rtcam, "through the forwarded port");

    // Without the forward, the announced candidate leads to the router's own firewall.
    netns::unforward(router, "udp");
    let mut spec = viewer_spec("fwdcam", "watch");
    spec["wait_secs"] = json!(15);
    let (report, viewer_log) = run_viewer(&scene, spec, "unforwarded");
    eprintln!("unforwarded viewer: {report}");
    assert!(
        announces(&report),
        "rtcam did not announce {announced}: {report}"
    );
    assert_eq!(
        report["frames"], 0,
        "a viewer decoded with no forward: {report}\nviewer log:\n{viewer_log}"
    );
    assert!(report["pair"].is_null(), "{report}");
    eprintln!("port forward test took {:?}", scene.started.elapsed());
}

/// (5) A viewer's network that lets only TCP out: rtcam's NAT forwards the shared ICE-TCP port
/// (`tcp_port`) and no UDP, rtcam announces the NAT's outside address with it (`public_ips`),
/// and the viewer's router drops every UDP packet from its network. Chromium on the page, with
/// no ICE server, tries UDP (dropped), then connects out to rtcam's passive TCP candidate and
/// decodes; with the forward taken away, it gets no picture.
#[test]
fn a_viewer_whose_network_blocks_udp_connects_over_ice_tcp() {
    let Some(scene) = Scene::new("t") else {
        return;
    };
    let rtcam = start_rtcam(
        &scene,
        "tcpcam",
        &format!("tcp_port = {WEBRTC_PORT}\npublic_ips = [\"{CAM_WAN}\"]\n"),
    );
    let router = &scene.nets.cam_router;
    netns::forward_port(router, "tcp", "wan", WEBRTC_PORT, CAM_LAN);
    netns::block_udp(&scene.nets.view_router, "lan");

    // Chromium on the page: what it sent over UDP went nowhere, the video came over TCP
    // through the forward (a packet per frame at least, out of rtcam's port).
    chromium_decodes_direct(&scene, &rtcam, "over ICE-TCP");
    let blocked = netns::udp_blocked(&scene.nets.view_router);
    let (inward, outward) = netns::forward_counts(router, "tcp");
    eprintln!("UDP dropped: {blocked}; TCP {WEBRTC_PORT} forwarded: {inward} in, {outward} out");
    assert!(
        blocked > 0,
        "Chromium sent no UDP: the block proves nothing"
    );
    assert!(
        inward > 0 && outward >= 30,
        "the forward of TCP {WEBRTC_PORT} carried {inward} packets in, {outward} out"
    );

    // A viewer that has only UDP gets nothing through this network, but it hears rtcam's
    // answer: the passive candidate Chromium reached, on the router's outside address. (The
    // Rust viewer cannot take that path itself: its crate dials only trickled passive
    // candidates, and rtcam puts `public_ips` in the answer alone.)
    let mut spec = viewer_spec("tcpcam", "watch");
    spec["wait_secs"] = json!(3);
    let (report, viewer_log) = run_viewer(&scene, spec, "UDP-only");
    eprintln!("UDP-only viewer: {report}");
    assert_eq!(
        report["frames"], 0,
        "a viewer decoded over blocked UDP: {report}\nviewer log:\n{viewer_log}"
    );
    let announced = format!("tcp 1342177535 {CAM_WAN} {WEBRTC_PORT} typ host tcptype passive");
    assert!(
        announced_by_rtcam(&report, |c| c.ends_with(&announced)),
        "rtcam did not announce {announced}: {report}"
    );

    // Without the forward, the announced candidate leads to the router's own firewall.
    netns::unforward(router, "tcp");
    let (out, page) = chromium_within(&scene, "", Duration::from_secs(15));
    assert!(
        !out.status.success(),
        "Chromium decoded with no forward: {page}"
    );
    assert_eq!(page["framesDecoded"], 0, "{page}");
    // Signalling still worked: what failed was the path to the candidate.
    assert!(
        page["console"].as_array().is_some_and(|lines| lines
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("answer applied")))),
        "Chromium never got as far as rtcam's answer: {page}"
    );
    eprintln!("ICE-TCP test took {:?}", scene.started.elapsed());
}

/// Not a test on its own: the viewer process the tests above run in the viewer's namespace.
/// Reads its task from `RTCAM_NAT_VIEWER` and prints one `NATREPORT {json}` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the NAT tests as a child process in a network namespace"]
async fn nat_viewer_process() {
    let Ok(spec) = std::env::var("RTCAM_NAT_VIEWER") else {
        return;
    };
    common::init_logs();
    let spec: Value = serde_json::from_str(&spec).unwrap();
    let host = spec["host"].as_str().unwrap().to_string();
    let port = spec["port"].as_u64().unwrap() as u16;
    let root = spec["root"].as_str().unwrap().to_string();
    let broker = (host.as_str(), port);

    // rtcam is ready once its retained status says online.
    let probe = Probe::connect(broker, &[format!("{root}/status")]).await;
    probe
        .wait_json(&format!("{root}/status"), Duration::from_secs(60), |v| {
            v["state"] == "online"
        })
        .await
        .expect("rtcam online");

    let report = match spec["mode"].as_str().unwrap() {
        "watch" => {
            let opts = ViewerOptions {
                udp_addrs: vec![format!("{VIEW_LAN}:0")],
                ice_servers: spec["servers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| webrtc::peer_connection::RTCIceServer {
                        urls: serde_json::from_value(s["urls"].clone()).unwrap(),
                        username: s["username"].as_str().unwrap_or_default().into(),
                        credential: s["credential"].as_str().unwrap_or_default().into(),
                    })
                    .collect(),
                ask_ice_servers: spec["ask"] == true,
                relay_only: spec["relay"] == true,
                ..ViewerOptions::default()
            };
            let viewer = Viewer::connect_with(broker, &root, opts).await;
            // A run meant to fail waits less than one meant to pass.
            let wait = Duration::from_secs(spec["wait_secs"].as_u64().unwrap_or(90));
            let decoded = viewer.wait_frames(15, wait).await;
            // The stats may trail the first frames; without any frame, one look is enough.
            let settle = if decoded.frames > 0 { 10 } else { 0 };
            let deadline = Instant::now() + Duration::from_secs(settle);
            let pair = loop {
                let pair = viewer.selected_pair().await;
                if pair.is_some() || Instant::now() >= deadline {
                    break pair;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            if pair.is_none() {
                eprintln!("no selected pair; ICE stats:\n{}", viewer.ice_stats().await);
            }
            let messages = viewer.messages.lock().unwrap().clone();
            let rtcam_candidates = rtcam_candidates(&messages);
            let ice_servers = messages
                .iter()
                .find(|m| m["type"] == "ice_servers")
                .cloned()
                .unwrap_or(Value::Null);
            let gathered = viewer.gathered.lock().unwrap().types.clone();
            let report = json!({
                "frames": decoded.frames,
                "width": decoded.width,
                "height": decoded.height,
                "pair": pair.map(|(l, r, address)| vec![l, r, address]),
                "rtcam_candidates": rtcam_candidates,
                "gathered": gathered,
                "ice_servers": ice_servers,
            });
            viewer.bye().await;
            report
        }
        "expiry" => expiry_check(broker, &root).await,
        other => panic!("unknown mode {other}"),
    };
    println!("NATREPORT {report}");
}

/// rtcam's candidates among the messages a viewer got: those in its answer, then those it
/// trickled.
fn rtcam_candidates(messages: &[Value]) -> Vec<String> {
    let in_answer = messages
        .iter()
        .filter(|m| m["type"] == "answer")
        .filter_map(|m| m["sdp"].as_str())
        .flat_map(str::lines)
        .filter_map(|l| l.trim_end().strip_prefix("a="))
        .filter(|c| c.starts_with("candidate:"))
        .map(str::to_string);
    let trickled = messages
        .iter()
        .filter(|m| m["type"] == "candidate")
        .filter_map(|m| m["candidate"].as_str().map(str::to_string))
        .filter(|c| !c.is_empty());
    in_answer.chain(trickled).collect()
}

/// Asks rtcam for ICE servers twice: gathers relay-only with the first reply at once, and
/// with the second after its `expires_at` has passed.
async fn expiry_check(broker: (&str, u16), root: &str) -> Value {
    let sid = format!("x{}", rand::random::<u32>());
    let out = format!("{root}/session/{sid}/out");
    let probe = Probe::connect(broker, std::slice::from_ref(&out)).await;
    let ask = || async {
        let before = probe.seen.lock().unwrap().len();
        probe
            .send(
                &format!("{root}/session/{sid}/in"),
                br#"{"type":"ice_servers"}"#.to_vec(),
            )
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = probe.seen.lock().unwrap()[before..]
                .iter()
                .find(|(t, _)| *t == out)
                .map(|(_, p)| serde_json::from_slice::<Value>(p).unwrap());
            if let Some(reply) = reply {
                assert_eq!(reply["type"], "ice_servers", "{reply}");
                return reply;
            }
            assert!(Instant::now() < deadline, "no ice_servers reply");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let now_secs = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let fresh = ask().await;
    let asked_at = now_secs();
    let fresh_gathered = gather_relay(&fresh["ice_servers"]).await;
    // The second credential must differ from the first (expiry in whole seconds), so coturn's
    // log lines about it are its own.
    while now_secs() <= asked_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stale = ask().await;
    let expires_at = stale["expires_at"].as_u64().unwrap();
    // Past the expiry by more than a second: coturn compares whole seconds.
    while SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        < expires_at + 2
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stale_gathered = gather_relay(&stale["ice_servers"]).await;
    json!({
        "fresh": fresh_gathered,
        "stale": stale_gathered,
        "fresh_user": fresh["ice_servers"][0]["username"],
        "stale_user": stale["ice_servers"][0]["username"],
    })
}

/// Gathers candidates relay-only with `servers` (the `ice_servers` reply's list) until
/// gathering completes; returns the candidate types and whether it completed.
async fn gather_relay(servers: &Value) -> Value {
    use webrtc::peer_connection::{
        MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
        RTCConfigurationBuilder, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
        RTCPeerConnectionIceEvent,
    };
    #[derive(Default)]
    struct Seen {
        types: Vec<String>,
        complete: bool,
    }
    struct Handler(Arc<Mutex<Seen>>);
    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Handler {
        async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
            if let Ok(init) = event.candidate.to_json() {
                if let Some(t) = candidate_type(&init.candidate) {
                    self.0.lock().unwrap().types.push(t);
                }
            }
        }
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            if state == RTCIceGatheringState::Complete {
                self.0.lock().unwrap().complete = true;
            }
        }
    }
    let ice_servers: Vec<RTCIceServer> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| RTCIceServer {
            urls: serde_json::from_value(s["urls"].clone()).unwrap(),
            username: s["username"].as_str().unwrap_or_default().into(),
            credential: s["credential"].as_str().unwrap_or_default().into(),
        })
        .collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(ice_servers)
                .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
                .build(),
        )
        .with_media_engine(media)
        .with_handler(Arc::new(Handler(seen.clone())))
        .with_udp_addrs(vec![format!("{VIEW_LAN}:0")])
        .build()
        .await
        .unwrap();
    common::add_recvonly_video(&pc).await.unwrap();
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.lock().unwrap().complete && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = pc.close().await;
    let seen = seen.lock().unwrap();
    json!({"types": seen.types, "complete": seen.complete})
}
