//! The MQTT control plane, end to end: commands and replies over MQTT 5 and 3.1.1 against the
//! embedded broker and mosquitto, bad commands, live changes seen by a real viewer, snapshots,
//! telemetry, /metrics, reload, Home Assistant discovery, and the last will after SIGKILL.

use crate::common;

use common::commander::{Commander, Protocol};
use common::viewer::Viewer;
use common::{start, test_config, Mosquitto, Probe};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(10);

async fn status_and_keyframe_both_protocols(rt: &common::Running) {
    for protocol in [Protocol::V5, Protocol::V311] {
        let c = Commander::connect(protocol, rt.broker(), &rt.root()).await;
        let r = c.request("status", json!({})).await;
        assert_eq!(r.body["ok"], true, "{protocol:?}: {}", r.body);
        assert_eq!(r.body["result"]["state"], "online");
        assert_eq!(r.body["result"]["version"], env!("CARGO_PKG_VERSION"));
        let r = c.request_on("keyframe", json!({}), true).await;
        assert_eq!(r.body["ok"], true);
        let r = c.request("sessions", Value::Null).await;
        assert!(r.body["result"].as_array().is_some(), "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_over_mqtt5_and_311_on_both_brokers() {
    // The embedded broker: MQTT 5 on its v5 port, 3.1.1 on its v4 port.
    let config = test_config("ctl-embedded");
    let v5_port = config.mqtt.embedded_listen_v5.port();
    let rt = start(config).await;
    let c5 = Commander::connect(Protocol::V5, ("127.0.0.1", v5_port), &rt.root()).await;
    let r = c5.request("status", json!({})).await;
    assert_eq!(r.body["ok"], true, "{}", r.body);
    status_and_keyframe_both_protocols_v311(&rt).await;
    rt.app.stop().await;

    let mosquitto = Mosquitto::start();
    let mut config = test_config("ctl-mosq");
    config.mqtt.url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let rt = start(config).await;
    status_and_keyframe_both_protocols(&rt).await;
    rt.app.stop().await;
}

async fn status_and_keyframe_both_protocols_v311(rt: &common::Running) {
    let c = Commander::connect(Protocol::V311, rt.broker(), &rt.root()).await;
    let r = c.request("status", json!({})).await;
    assert_eq!(r.body["result"]["state"], "online");
    let r = c.request_on("keyframe", json!({}), true).await;
    assert_eq!(r.body["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_precise_errors_and_change_nothing() {
    let rt = start(test_config("ctl-bad")).await;
    let c = Commander::connect(Protocol::V311, rt.broker(), &rt.root()).await;
    let table: &[(&str, Value, &str)] = &[
        ("fly", json!({}), "unknown_command"),
        ("status", json!({"verbose": true}), "bad_args"),
        ("set", json!({}), "bad_args"),
        ("set", json!({"bitrate_kbps": "lots"}), "bad_args"),
        ("set", json!({"bitrate_kbps": 1}), "out_of_range"),
        (
            "set",
            json!({"bitrate_kbps": 900, "fps": 500}),
            "out_of_range",
        ),
        ("set", json!({"width": 640}), "bad_args"),
        ("set", json!({"width": 641, "height": 480}), "out_of_range"),
        (
            "set",
            json!({"controls": {"brightness": 10}}),
            "unavailable",
        ),
        ("stream", json!({"on": "perhaps"}), "bad_args"),
        ("kick", json!({}), "bad_args"),
        ("kick", json!({"label": "v999"}), "bad_args"),
        // Sessions are kicked by label; a sid is not an argument.
        ("kick", json!({"sid": "nobody"}), "bad_args"),
        ("controls", json!({}), "unavailable"),
        ("reload", json!({}), "unavailable"),
    ];
    for (command, args, code) in table {
        let r = c.request(command, args.clone()).await;
        assert_eq!(r.body["ok"], false, "{command} {args}: {}", r.body);
        assert_eq!(
            r.body["error"]["code"], *code,
            "{command} {args}: {}",
            r.body
        );
        assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
    }
    // Not JSON, and JSON that is not a request: answered on the default reply topic.
    c.send_raw(b"\xff\xfe not json".to_vec(), b"").await;
    assert_eq!(
        c.wait_anonymous_error().await.body["error"]["code"],
        "bad_json"
    );
    c.send_raw(br#"{"args":{}}"#.to_vec(), b"").await;
    assert_eq!(
        c.wait_anonymous_error().await.body["error"]["code"],
        "bad_request"
    );

    // A reply topic outside the reply subtree (another viewer's session, say) is not used:
    // the refusal goes to the default reply topic and the command is not run.
    let victim = format!("{}/session/somebody/out", rt.root());
    let req = json!({"id": "elsewhere", "command": "set", "args": {"bitrate_kbps": 500}, "reply_to": victim});
    c.send_raw(serde_json::to_vec(&req).unwrap(), b"").await;
    let r = c.wait_reply("elsewhere").await;
    assert_eq!(
        r.topic,
        format!("{}/command/reply", rt.root()),
        "{}",
        r.body
    );
    assert_eq!(r.body["error"]["code"], "bad_request", "{}", r.body);

    // Nothing changed: the rejected `set`s left the encoder alone.
    let info = rt.app.media().info().borrow().clone();
    assert_eq!(info.bitrate_kbps, 800);
    assert_eq!((info.width, info.height), (320, 240));
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one viewer watches while each command changes the picture; each step starts from the last one's state"
)]
async fn live_changes_reach_a_connected_viewer() {
    let rt = start(test_config("ctl-live")).await;
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    assert!(viewer.wait_frames(20, WITHIN).await.frames >= 20);
    let c = Commander::connect(Protocol::V311, rt.broker(), &rt.root()).await;

    // Bitrate: applied live on x264; the viewer keeps decoding.
    let r = c.request("set", json!({"bitrate_kbps": 400})).await;
    assert_eq!(r.body["ok"], true, "{}", r.body);
    let before = viewer.decoded().frames;
    assert!(viewer.wait_frames(before + 15, WITHIN).await.frames >= before + 15);

    // Resolution: the pipeline is rebuilt, the same track goes on, the decoder follows.
    let r = c
        .request("set", json!({"width": 160, "height": 120, "fps": 15}))
        .await;
    assert_eq!(r.body["result"]["width"], 160, "{}", r.body);
    let deadline = Instant::now() + WITHIN;
    while viewer.decoded().width != 160 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = viewer.decoded();
    assert_eq!(
        (d.width, d.height),
        (160, 120),
        "viewer decodes the new size without renegotiating"
    );

    // Sessions lists the viewer with its figures.
    let r = c.request("sessions", json!({})).await;
    let list = r.body["result"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{}", r.body);
    let label = list[0]["label"].as_str().expect("a label").to_string();
    assert!(label.starts_with('v'), "{}", r.body);
    assert!(
        !r.body.to_string().contains(viewer.sid.as_str()),
        "the sessions reply never names a sid: {}",
        r.body
    );
    assert_eq!(list[0]["codec"], "H264");
    assert!(list[0]["frames_sent"].as_u64().unwrap() > 20);

    // Snapshot: a JPEG on R/snapshot, retained.
    let snap_topic = format!("{}/snapshot", rt.root());
    let r = c.request("snapshot", json!({})).await;
    assert_eq!(r.body["ok"], true, "{}", r.body);
    assert_eq!(r.body["result"]["topic"], snap_topic.as_str());
    let probe = Probe::connect(rt.broker(), std::slice::from_ref(&snap_topic)).await;
    let deadline = Instant::now() + WITHIN;
    let jpeg = loop {
        if let Some((_, p)) = probe
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|(t, _)| *t == snap_topic)
            .cloned()
        {
            break p;
        }
        assert!(Instant::now() < deadline, "retained snapshot arrives");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(&jpeg[..2], &[0xff, 0xd8], "JPEG start of image");

    // Privacy: off stops the frames and says so in status; on brings them back.
    let r = c.request("stream", json!({"on": false})).await;
    assert_eq!(r.body["result"]["streaming"], false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused_at = viewer.decoded().frames;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        viewer.decoded().frames <= paused_at + 1,
        "no video while streaming is off"
    );
    let r = c.request("status", json!({})).await;
    assert_eq!(r.body["result"]["streaming"], false, "{}", r.body);
    let r = c.request("snapshot", json!({})).await;
    assert_eq!(
        r.body["error"]["code"], "unavailable",
        "no snapshot of a switched-off camera"
    );
    c.request("stream", json!({"on": true})).await;
    assert!(
        viewer.wait_frames(paused_at + 10, WITHIN).await.frames >= paused_at + 10,
        "video back"
    );

    // Kick: the viewer is told why.
    let r = c
        .request("kick", json!({"sid": viewer.sid, "reason": "maintenance"}))
        .await;
    assert_eq!(
        r.body["error"]["code"], "bad_args",
        "kick takes no sid: {}",
        r.body
    );
    let r = c
        .request("kick", json!({"label": label, "reason": "maintenance"}))
        .await;
    assert_eq!(r.body["ok"], true, "{}", r.body);
    assert_eq!(r.body["result"]["label"], label.as_str(), "{}", r.body);
    let deadline = Instant::now() + WITHIN;
    while viewer.has_message("bye").is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        viewer.has_message("bye").expect("bye after kick")["reason"],
        "maintenance"
    );
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_and_metrics() {
    let mut config = test_config("ctl-telemetry");
    config.control.telemetry_interval_secs = 1;
    let rt = start(config).await;
    let topic = format!("{}/telemetry", rt.root());
    let probe = Probe::connect(rt.broker(), std::slice::from_ref(&topic)).await;
    let viewer = Viewer::connect(rt.broker(), &rt.root()).await;
    assert!(viewer.wait_frames(30, WITHIN).await.frames >= 30);
    let t = probe
        .wait_json(&topic, WITHIN, |v| {
            v["viewers"] == 1 && v["fps_out"].as_f64().unwrap_or(0.0) > 5.0
        })
        .await
        .expect("telemetry with a viewer receiving frames");
    assert!(t["fps_in"].as_f64().unwrap() > 5.0, "{t}");
    assert!(t["bitrate_kbps"].as_f64().unwrap() > 0.0, "{t}");
    assert!(t["rss_bytes"].as_u64().unwrap() > 1_000_000, "{t}");
    assert!(t["uptime_secs"].as_u64().is_some());
    assert!(t["sessions"][0]["label"].as_str().is_some(), "{t}");
    assert!(
        !t.to_string().contains(viewer.sid.as_str()),
        "telemetry never names a sid: {t}"
    );
    // Per-stage latency: capture → encoded → sent, each a plausible span of milliseconds and
    // the whole no shorter than its first part.
    let lat = &t["latency"];
    for stage in ["capture_to_encoded", "encoded_to_sent", "capture_to_sent"] {
        let p50 = lat[stage]["p50_ms"].as_f64().unwrap_or(-1.0);
        assert!((0.0..2000.0).contains(&p50), "{stage}: {t}");
        assert!(lat[stage]["samples"].as_u64().unwrap() > 0, "{stage}: {t}");
    }
    assert!(
        lat["capture_to_sent"]["p50_ms"].as_f64() >= lat["capture_to_encoded"]["p50_ms"].as_f64(),
        "{t}"
    );

    // /metrics has its own test (tests/it/metrics.rs); here, that it reads the same pipeline.
    let metrics = http_get(rt.app.http_addr(), "/metrics").await;
    assert!(
        metrics.contains("rtcam_frame_latency_seconds_bucket{stage=\"capture_to_sent\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE rtcam_encoded_bytes_total counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rtcam_viewers{device=\"ctl-telemetry\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains(viewer.sid.as_str()) && !metrics.contains("sid="),
        "/metrics never names a session: {metrics}"
    );
    // Per-session figures are in the sessions command, under labels, without the sid.
    let c = Commander::connect(Protocol::V311, rt.broker(), &rt.root()).await;
    let r = c.request("sessions", json!({})).await;
    assert_eq!(r.body["result"][0]["state"], "connected", "{}", r.body);
    assert!(
        !r.body.to_string().contains(viewer.sid.as_str()),
        "{}",
        r.body
    );
    let jpeg = http_get_bytes(rt.app.http_addr(), "/snapshot.jpg").await;
    assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
    viewer.bye().await;
    rt.app.stop().await;
}

async fn http_get_bytes(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let reply = common::http::get(addr, path, &[]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.header("transfer-encoding"), None, "{}", reply.head);
    reply.body
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    String::from_utf8(http_get_bytes(addr, path).await).unwrap()
}

/// The page's files go gzip-compressed to a browser that takes it, and a browser that already
/// has a file gets a 304 without a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_files_are_compressed_and_revalidated() {
    use common::http::get;
    let rt = start(test_config("ctl-page")).await;
    let addr = rt.app.http_addr();
    let plain = get(addr, "/app.js", &[]).await.unwrap();
    assert_eq!(plain.status, 200, "{}", plain.head);
    assert_eq!(plain.header("content-encoding"), None, "{}", plain.head);
    assert!(plain.text().contains("function"), "the script itself");

    let browser = ("Accept-Encoding", "gzip, deflate, br, zstd");
    let gz = get(addr, "/app.js", &[browser]).await.unwrap();
    assert_eq!(gz.status, 200, "{}", gz.head);
    assert_eq!(gz.header("content-encoding"), Some("gzip"), "{}", gz.head);
    assert_eq!(gz.header("vary"), Some("accept-encoding"), "{}", gz.head);
    assert_eq!(gz.header("content-type"), plain.header("content-type"));
    assert!(
        gz.body.len() * 2 < plain.body.len(),
        "{} bytes compressed, {} plain",
        gz.body.len(),
        plain.body.len()
    );
    let mut unpacked = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&gz.body[..]),
        &mut unpacked,
    )
    .unwrap();
    assert!(unpacked == plain.body, "gzip unpacks to the file");

    // Each representation has its own tag, and a matching one gets a 304 with no body.
    let (tag, gz_tag) = (plain.header("etag").unwrap(), gz.header("etag").unwrap());
    assert_ne!(tag, gz_tag);
    let cached = get(addr, "/app.js", &[browser, ("If-None-Match", gz_tag)])
        .await
        .unwrap();
    assert_eq!(cached.status, 304, "{}", cached.head);
    assert!(cached.body.is_empty());
    assert_eq!(cached.header("etag"), Some(gz_tag));
    let weak = format!("W/{tag}");
    let cached = get(addr, "/app.js", &[("If-None-Match", &weak)])
        .await
        .unwrap();
    assert_eq!(cached.status, 304, "weak comparison: {}", cached.head);
    // A tag from another build, or the other representation's, gets the file.
    for stale in ["\"0123456789abcdef\"", tag] {
        let fresh = get(addr, "/app.js", &[browser, ("If-None-Match", stale)])
            .await
            .unwrap();
        assert_eq!(fresh.status, 200, "{stale}: {}", fresh.head);
        assert!(fresh.body == gz.body);
    }
    // `q=0` refuses gzip; the page itself is served the same way.
    let refused = get(
        addr,
        "/app.js",
        &[("Accept-Encoding", "gzip;q=0, identity")],
    )
    .await
    .unwrap();
    assert_eq!(refused.header("content-encoding"), None, "{}", refused.head);
    let page = get(addr, "/", &[browser]).await.unwrap();
    assert_eq!(
        page.header("content-encoding"),
        Some("gzip"),
        "{}",
        page.head
    );
    assert_eq!(
        get(addr, "/nothing.js", &[browser]).await.unwrap().status,
        404
    );
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_what_it_can_and_names_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    let mut config = test_config("ctl-reload");
    // Tokens on from the start, so that a new secret can apply live below.
    config.auth.secret = "o".repeat(32);
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    common::init_logs();
    let app = rtcam::app::App::start(config.clone(), rtcam::config::Origin::File(path.clone()))
        .await
        .unwrap();
    assert!(app.wait_connected(WITHIN).await);
    let broker = ("127.0.0.1", config.mqtt.embedded_listen.port());
    let c = Commander::connect(Protocol::V311, broker, app.topics().root()).await;

    let mut changed = config.clone();
    changed.encoder.bitrate_kbps = 500;
    changed.webrtc.max_sessions = 3;
    std::fs::write(&path, toml::to_string(&changed).unwrap()).unwrap();
    let r = c.request("reload", json!({})).await;
    assert_eq!(r.body["ok"], true, "{}", r.body);
    assert_eq!(r.body["result"]["applied"], json!(["encoder.bitrate_kbps"]));
    assert_eq!(r.body["result"]["restart_needed"], json!(["webrtc"]));
    let deadline = Instant::now() + WITHIN;
    while app.media().info().borrow().bitrate_kbps != 500 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.media().info().borrow().bitrate_kbps, 500);

    // A broken file is refused with its line, and nothing changes.
    std::fs::write(&path, "[encoder]\nbitrate_kbps = 700\nbogus = 1\n").unwrap();
    let r = c.request("reload", json!({})).await;
    assert_eq!(r.body["error"]["code"], "failed", "{}", r.body);
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains(":3:"),
        "{}",
        r.body
    );
    assert_eq!(app.media().info().borrow().bitrate_kbps, 500);

    // A new token secret: tokens signed with it open the page at once, the old secret's are
    // refused.
    let http = app.http_addr();
    let status = |secret: &str| {
        let a = rtcam::auth::Authority::new(secret, app.device_id());
        let token = a.mint(&a.claims(
            Duration::from_secs(60),
            vec![rtcam::auth::Right::View],
            std::time::SystemTime::now(),
        ));
        async move {
            common::http::get(http, &format!("/config.json?token={token}"), &[])
                .await
                .unwrap()
                .status
        }
    };
    let (old, new) = (config.auth.secret.clone(), "n".repeat(32));
    assert_eq!(status(&old).await, 200);
    let mut secured = changed.clone();
    secured.auth.secret = new.clone();
    std::fs::write(&path, toml::to_string(&secured).unwrap()).unwrap();
    let r = c.request("reload", json!({})).await;
    assert_eq!(r.body["ok"], true, "{}", r.body);
    assert_eq!(
        r.body["result"]["applied"],
        json!(["auth.secret"]),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["result"]["restart_needed"],
        json!(["webrtc"]),
        "{}",
        r.body
    );
    assert_eq!(status(&new).await, 200);
    assert_eq!(status(&old).await, 401);
    app.stop().await;
}

/// Keys Home Assistant documents for every MQTT discovery entity type that rtcam may use.
const HA_COMMON: &[&str] = &[
    "name",
    "unique_id",
    "default_entity_id",
    "device",
    "origin",
    "availability",
    "icon",
];

/// Fields Home Assistant documents for each MQTT discovery entity type: the required ones,
/// and every key rtcam may use besides `HA_COMMON`.
fn ha_schema(component: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match component {
        "camera" => (&["topic"], &["topic", "image_encoding"]),
        "sensor" => (
            &["state_topic"],
            &[
                "state_topic",
                "value_template",
                "unit_of_measurement",
                "device_class",
                "state_class",
            ],
        ),
        "switch" => (
            &["command_topic"],
            &[
                "command_topic",
                "payload_on",
                "payload_off",
                "state_topic",
                "value_template",
                "state_on",
                "state_off",
            ],
        ),
        "button" => (&["command_topic"], &["command_topic", "payload_press"]),
        other => panic!("unexpected component {other}: {HA_COMMON:?}"),
    }
}

/// The discovery configs `probe` saw, parsed. A sensor the board lacks (no thermal zone) gets
/// an empty retained config, not an entity, and is left out.
fn announced_configs(probe: &Probe) -> Vec<(String, Value)> {
    probe
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(t, p)| (t.clone(), serde_json::from_slice(p).unwrap()))
        .collect()
}

/// What Home Assistant's current discovery schema asks beyond the keys: `default_entity_id`
/// as `<component>.<slug>` (only `[a-z0-9_]` after the domain), an `origin`, and the device's
/// link to the page rtcam serves on its HTTP door.
fn assert_current_schema(topic: &str, cfg: &Value, page_url: &str) {
    let component = topic.split('/').nth(1).unwrap();
    let entity_id = cfg["default_entity_id"].as_str().unwrap();
    let slug = entity_id.strip_prefix(&format!("{component}.")).unwrap();
    assert!(
        slug.starts_with("rtcam_ctl_ha_")
            && slug
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "{topic}: {entity_id}"
    );
    assert_eq!(cfg["origin"]["name"], "rtcam", "{topic}");
    assert_eq!(cfg["device"]["configuration_url"], page_url, "{topic}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_discovery_is_valid_and_removable() {
    let rt = start(test_config("ctl-ha")).await;
    let probe = Probe::connect(rt.broker(), &["homeassistant/#".to_string()]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let configs = announced_configs(&probe);
    let components: Vec<&str> = configs
        .iter()
        .map(|(t, _)| t.split('/').nth(1).unwrap())
        .collect();
    for needed in ["camera", "sensor", "switch", "button"] {
        assert!(
            components.contains(&needed),
            "{needed} announced: {components:?}"
        );
    }
    let mut unique = std::collections::HashSet::new();
    for (topic, cfg) in &configs {
        let component = topic.split('/').nth(1).unwrap();
        let (required, allowed) = ha_schema(component);
        let obj = cfg.as_object().unwrap();
        for key in required {
            assert!(obj.contains_key(*key), "{topic}: missing required {key}");
        }
        for key in obj.keys() {
            assert!(
                allowed.contains(&key.as_str()) || HA_COMMON.contains(&key.as_str()),
                "{topic}: unknown key {key}"
            );
        }
        assert!(
            unique.insert(cfg["unique_id"].as_str().unwrap().to_string()),
            "unique ids"
        );
        assert_eq!(cfg["device"]["identifiers"][0], "rtcam_ctl-ha");
        assert_current_schema(topic, cfg, &rtcam::app::viewer_url(rt.app.http_addr()));
        assert_eq!(
            cfg["availability"][0]["topic"],
            format!("{}/status", rt.root())
        );
        assert_eq!(cfg["availability"][0]["payload_available"], "online");
        // Commands the entities send are commands rtcam accepts.
        for payload in ["payload_on", "payload_off", "payload_press"] {
            if let Some(p) = cfg[payload].as_str() {
                let (_, cmd) = rtcam::control::parse_request(p.as_bytes());
                assert!(cmd.is_ok(), "{topic} {payload}: {p}");
            }
        }
    }
    let topics: Vec<String> = configs.iter().map(|(t, _)| t.clone()).collect();
    rt.app.stop().await;

    // Discovery off: the same topics get empty retained payloads, which remove the entities.
    let mosquitto = Mosquitto::start();
    let mut config = test_config("ctl-ha");
    config.mqtt.url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let rt = start(config.clone()).await;
    rt.app.stop().await;
    config.control.ha_discovery = false;
    let rt = start(config).await;
    let probe = Probe::connect(rt.broker(), &["homeassistant/#".to_string()]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = probe.seen.lock().unwrap().clone();
    // The probe can subscribe before rtcam's removals reach the broker: it then gets the old
    // retained configs first and the empty removals after. What counts is how each topic ends.
    let mut last = std::collections::HashMap::new();
    for (topic, payload) in &seen {
        last.insert(topic.clone(), payload.clone());
    }
    assert!(
        last.values().all(|payload| payload.is_empty()),
        "retained configs removed: {:?}",
        seen.iter().map(|(t, p)| (t, p.len())).collect::<Vec<_>>()
    );
    // Seven entities, the SoC temperature only where the board has a thermal zone.
    let thermal =
        usize::from(std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp").is_ok());
    assert_eq!(topics.len(), 6 + thermal, "{topics:?}");
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_marks_a_killed_rtcam_offline() {
    let mosquitto = Mosquitto::start();
    let mut config = test_config("ctl-will");
    config.mqtt.url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    config.mqtt.keep_alive_secs = 5;
    let mut rtcam = common::spawn_rtcam(&config);
    let topic = "rtcam/ctl-will/status".to_string();
    let probe = Probe::connect(("127.0.0.1", mosquitto.port), std::slice::from_ref(&topic)).await;
    probe
        .wait_json(&topic, WITHIN, |v| v["state"] == "online")
        .await
        .expect("online");
    rtcam.child.kill().unwrap();
    let _ = rtcam.child.wait();
    // The broker publishes the will after 1.5 × keep-alive without a word from rtcam.
    probe
        .wait_json(&topic, Duration::from_secs(15), |v| v["state"] == "offline")
        .await
        .expect("last will published offline");
    // Retained: a newcomer sees offline too.
    let late = Probe::connect(("127.0.0.1", mosquitto.port), std::slice::from_ref(&topic)).await;
    late.wait_json(&topic, WITHIN, |v| v["state"] == "offline")
        .await
        .expect("retained offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_channel_takes_commands_and_pushes_telemetry() {
    let mut config = test_config("ctl-dc");
    config.control.telemetry_interval_secs = 1;
    let rt = start(config).await;
    let viewer = common::viewer::Viewer::connect_with(
        rt.broker(),
        &rt.root(),
        common::viewer::ViewerOptions {
            control_channel: true,
            ..Default::default()
        },
    )
    .await;
    assert!(viewer.wait_frames(10, WITHIN).await.frames >= 10);
    let r = viewer
        .channel_request(json!({"id": "a", "command": "status"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["state"], "online");
    let r = viewer
        .channel_request(json!({"id": "b", "command": "sessions"}))
        .await;
    // Its own session is marked; no sid is shown, its own included.
    assert_eq!(r["result"][0]["you"], true, "{r}");
    assert!(r["result"][0]["label"].as_str().is_some(), "{r}");
    assert!(!r.to_string().contains(viewer.sid.as_str()), "{r}");
    // Read-only by default: a viewer cannot switch the camera off for everyone.
    let r = viewer
        .channel_request(json!({"id": "c", "command": "stream", "args": {"on": false}}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    assert!(rt.app.media().info().borrow().streaming);
    let r = viewer
        .channel_request(json!({"id": "d", "command": "nonsense"}))
        .await;
    assert_eq!(r["error"]["code"], "unknown_command", "{r}");
    // Status on open and telemetry as it is produced.
    viewer
        .channel_push("status", |s| s["state"] == "online")
        .await
        .expect("status pushed");
    let t = viewer
        .channel_push("telemetry", |t| t["viewers"] == 1)
        .await
        .expect("telemetry pushed");
    assert!(
        t["sessions"][0]["rtt_ms"].as_f64().is_some()
            || t["sessions"][0]["frames_sent"].as_u64().unwrap() > 0,
        "{t}"
    );
    assert_eq!(t["sessions"][0]["you"], true, "{t}");
    assert!(!t.to_string().contains(viewer.sid.as_str()), "{t}");
    viewer.bye().await;
    rt.app.stop().await;
}

/// The first command MQTT users type, with mosquitto's own clients against the embedded broker:
/// `mosquitto_sub` sends an empty client id (MQTT lets the broker assign one) and gets the
/// retained status as any anonymous client may; asking for everything is refused in words, and
/// with a broker user's login it sees the camera's topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_with_no_client_id_are_answered() {
    let rt = start(test_config("mosqsub")).await;
    let port = rt.broker().1.to_string();
    let root = rt.root();
    let sub = |args: &[&str]| {
        let mut all = vec!["-h", "127.0.0.1", "-p", port.as_str(), "-W", "5"];
        all.extend_from_slice(args);
        std::process::Command::new("mosquitto_sub")
            .args(&all)
            .output()
            .expect("mosquitto_sub is installed (mosquitto-clients)")
    };
    let status = format!("{root}/status");
    let out = sub(&["-t", &status, "-C", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"state\":\"online\""), "{text} {:?}", out);

    let everything = format!("{root}/#");
    let out = sub(&["-t", &everything, "-C", "1"]);
    let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        said.contains("denied"),
        "an anonymous `#` is refused: {out:?}"
    );

    let (user, password) = common::OPERATOR;
    let out = sub(&[
        "-u",
        user,
        "-P",
        password,
        "-t",
        &everything,
        "-C",
        "1",
        "-v",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&root),
        "a broker user reads the camera's topics: {out:?}"
    );
    rt.app.stop().await;
}
