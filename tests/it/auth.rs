//! Viewer tokens (JWTs): refused without, watched with; HTTP guarded the same way; the `rtcam
//! token` command; a token minted by another JWT implementation; and no secret in logs, status
//! or telemetry.

use crate::common;

use common::viewer::{Viewer, ViewerOptions};
use common::{start, test_config, Probe};
use rtcam::auth::{Authority, Right};
use serde_json::json;
use std::time::{Duration, SystemTime};

const SECRET: &str = "correct-horse-battery-staple-and-more";

/// A secret of the right length that is not the camera's.
const GUESS: &str = "a-guess-at-the-secret-of-32-bytes";

fn token(device: &str, rights: Vec<Right>, ttl: Duration) -> String {
    let a = Authority::new(SECRET, device);
    a.mint(&a.claims(ttl, rights, SystemTime::now()))
}

/// A JWT made by hand, as another tool would: HS256 (ring's HMAC) over base64url of the
/// standard header and `claims`, without rtcam's code or the JWT crate it uses.
fn foreign_token(claims: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let signature = ring::hmac::sign(&key, message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

fn in_secs(secs: u64) -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs
}

async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    common::http::get(addr, path, &[]).await.unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_and_http_need_a_valid_token() {
    let mut config = test_config("authcam");
    config.auth.secret = SECRET.into();
    let rt = start(config).await;
    let root = rt.root();
    let probe = Probe::connect(rt.broker(), &[format!("{root}/session/+/out")]).await;
    offers_need_a_valid_token(&probe, &root).await;
    let (view, foreign) = viewers_watch_with_a_token(rt.broker(), &root).await;
    http_needs_a_token(rt.app.http_addr(), &view, &foreign).await;
    rt.app.stop().await;
}

/// Offers without a token, or with one expired, forged, for another camera or without the view
/// right, are refused with the reason.
async fn offers_need_a_valid_token(probe: &Probe, root: &str) {
    let offer = |token: Option<String>| {
        serde_json::to_vec(&json!({"type":"offer","sdp":"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n","token":token})).unwrap()
    };
    for (sid, t, why) in [
        ("none", None, "no token"),
        (
            "expired",
            Some(token("authcam", vec![Right::View], Duration::from_secs(0))),
            "expired",
        ),
        (
            "forged",
            Some(
                Authority::new(GUESS, "authcam").mint(&Authority::new(GUESS, "authcam").claims(
                    Duration::from_secs(60),
                    vec![Right::View],
                    SystemTime::now(),
                )),
            ),
            "signature",
        ),
        (
            "othercam",
            Some(token(
                "othercam",
                vec![Right::View],
                Duration::from_secs(60),
            )),
            "another camera",
        ),
        (
            "metricsonly",
            Some(token(
                "authcam",
                vec![Right::Metrics],
                Duration::from_secs(60),
            )),
            "does not grant",
        ),
    ] {
        probe
            .send(&format!("{root}/session/{sid}/in"), offer(t))
            .await;
        let e = probe
            .wait_error(&format!("{root}/session/{sid}/out"), "unauthorized")
            .await;
        assert!(e["message"].as_str().unwrap().contains(why), "{sid}: {e}");
    }
}

/// Viewers with a view token, a control token, and a token another JWT implementation minted;
/// returns the view token and the foreign one.
async fn viewers_watch_with_a_token(broker: (&str, u16), root: &str) -> (String, String) {
    // With a token granting view, a real viewer watches; read-only on its data channel.
    let view = token("authcam", vec![Right::View], Duration::from_secs(300));
    let viewer = Viewer::connect_with(
        broker,
        root,
        ViewerOptions {
            token: Some(view.clone()),
            control_channel: true,
            ..Default::default()
        },
    )
    .await;
    assert!(viewer.wait_frames(20, Duration::from_secs(10)).await.frames >= 20);
    let r = viewer
        .channel_request(json!({"id":"1","command":"stream","args":{"on":true}}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    viewer.bye().await;

    // A token with the control right may change the camera from its data channel.
    let control = token(
        "authcam",
        vec![Right::View, Right::Control],
        Duration::from_secs(300),
    );
    let viewer = Viewer::connect_with(
        broker,
        root,
        ViewerOptions {
            token: Some(control),
            control_channel: true,
            ..Default::default()
        },
    )
    .await;
    let r = viewer
        .channel_request(json!({"id":"2","command":"set","args":{"bitrate_kbps":600}}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    viewer.bye().await;

    // A token another JWT implementation minted, for every camera sharing the secret, watches.
    let foreign = foreign_token(json!({
        "aud": "*", "exp": in_secs(300), "scope": "view", "sub": "another tool"
    }));
    let viewer = Viewer::connect_with(
        broker,
        root,
        ViewerOptions {
            token: Some(foreign.clone()),
            ..Default::default()
        },
    )
    .await;
    assert!(viewer.wait_frames(10, Duration::from_secs(10)).await.frames >= 10);
    viewer.bye().await;
    (view, foreign)
}

/// HTTP: which paths need which right, by query or `Authorization` header.
async fn http_needs_a_token(addr: std::net::SocketAddr, view: &str, foreign: &str) {
    // HTTP: the page, its config, snapshots and /mqtt need view; /metrics needs metrics.
    for path in ["/", "/config.json", "/snapshot.jpg", "/metrics", "/mqtt"] {
        assert_eq!(http_status(addr, path).await, 401, "{path} without a token");
    }
    assert_eq!(http_status(addr, &format!("/?token={view}")).await, 200);
    assert_eq!(
        http_status(addr, &format!("/config.json?token={view}")).await,
        200
    );
    assert_eq!(
        http_status(addr, &format!("/metrics?token={view}")).await,
        401,
        "view does not grant metrics"
    );
    let metrics = token("authcam", vec![Right::Metrics], Duration::from_secs(60));
    assert_eq!(
        http_status(addr, &format!("/metrics?token={metrics}")).await,
        200
    );
    assert_eq!(
        http_status(addr, &format!("/config.json?token={foreign}")).await,
        200
    );
    let bearer = format!("Bearer {foreign}");
    let reply = common::http::get(addr, "/snapshot.jpg", &[("Authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "a Bearer token works like ?token=");
    // Static files carry no secrets and load without a token, so a page opened with one works.
    assert_eq!(http_status(addr, "/app.js").await, 200);
}

/// With talkback on and tokens required, the page offers Talk only to a token granting `talk`
/// (a session drops the sound of anyone else: `session::admit`'s tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_offers_talk_only_with_the_talk_right() {
    let mut config = test_config("talkcam");
    config.auth.secret = SECRET.into();
    config.audio.enabled = true;
    config.audio.talkback = true;
    config.audio.sink = "fake".into();
    let rt = start(config).await;
    let addr = rt.app.http_addr();
    let talkback = |token: String| async move {
        let reply = common::http::get(addr, &format!("/config.json?token={token}"), &[])
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        let config: serde_json::Value = serde_json::from_str(&reply.text()).unwrap();
        config["audio"]["talkback"].clone()
    };
    let view = token("talkcam", vec![Right::View], Duration::from_secs(60));
    assert_eq!(talkback(view).await, false);
    let talk = token(
        "talkcam",
        vec![Right::View, Right::Talk],
        Duration::from_secs(60),
    );
    assert_eq!(talkback(talk).await, true);
    let foreign =
        foreign_token(json!({"aud": "talkcam", "exp": in_secs(60), "scope": "talk view"}));
    assert_eq!(talkback(foreign).await, true);
    rt.app.stop().await;
}

#[test]
fn token_command_mints_what_the_camera_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    std::fs::write(
        &path,
        format!("[device]\nid = \"tokcam\"\n[auth]\nsecret = \"{SECRET}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "token",
            "--ttl",
            "2h",
            "--rights",
            "view,control",
            "--sub",
            "ops laptop",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let claims = Authority::new(SECRET, "tokcam")
        .verify(Some(&t), Right::Control, SystemTime::now())
        .unwrap();
    let in_2h = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 7200;
    assert!(claims.exp <= in_2h && claims.exp > in_2h - 60);
    assert_eq!(claims.rights(), vec![Right::View, Right::Control]);
    assert_eq!(claims.sub(), Some("ops laptop"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("?token="));

    // `--scope` takes a JWT-style scope; `talk` is a right like the others.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "token",
            "--scope",
            "view talk",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let claims = Authority::new(SECRET, "tokcam")
        .verify(Some(&t), Right::Talk, SystemTime::now())
        .unwrap();
    assert_eq!(claims.scope, "view talk");
    assert_eq!(claims.sub(), None);

    // An unknown right is refused by name.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "token",
            "--right",
            "admin",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown right \"admin\""));

    // Without a secret there is nothing to sign with: a clear error.
    std::fs::write(&path, "[device]\nid = \"tokcam\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .args(["--config", path.to_str().unwrap(), "token"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[auth] secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_status_or_telemetry() {
    let mosquitto = common::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    let mut config = test_config("leakcam");
    config.mqtt.url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    config.mqtt.username = "cam".into();
    config.mqtt.password = "mqtt-password-7731".into();
    config.auth.secret = "auth-secret-5519-auth-secret-5519".into();
    config.control.telemetry_interval_secs = 1;
    config.webrtc.ice_servers = vec![rtcam::config::IceServer {
        urls: vec!["turn:127.0.0.1:3478".into()],
        username: "turnuser".into(),
        credential: "turn-credential-2287".into(),
    }];
    // A TURN REST secret: only credentials derived from it may leave rtcam.
    config.webrtc.turn_urls = vec!["turn:127.0.0.1:3478?transport=udp".into()];
    config.webrtc.turn_secret = "turn-rest-secret-6043".into();
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let root = "rtcam/leakcam";
    let probe = Probe::connect(("127.0.0.1", mosquitto.port), &[format!("{root}/#")]).await;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .args(["--config", path.to_str().unwrap()])
        .env("RTCAM_LOG", "debug,rumqttd=off,webrtc=info,rtc=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    probe
        .wait_json(
            &format!("{root}/telemetry"),
            Duration::from_secs(10),
            |_| true,
        )
        .await
        .expect("telemetry");
    // Exercise the paths that log: a refused offer and a command.
    probe.send(&format!("{root}/session/x1/in"), br#"{"type":"offer","sdp":"v=0\r\nm=video 9 RTP 1\r\na=rtpmap:1 H264/90000\r\n","token":"bogus"}"#.to_vec()).await;
    probe
        .send(
            &format!("{root}/command"),
            br#"{"id":"1","command":"status"}"#.to_vec(),
        )
        .await;
    // And the paths that hand out TURN credentials (refused here: no token).
    probe
        .send(
            &format!("{root}/session/x2/in"),
            br#"{"type":"ice_servers"}"#.to_vec(),
        )
        .await;
    probe
        .wait_error(&format!("{root}/session/x2/out"), "unauthorized")
        .await;
    probe
        .wait_error(&format!("{root}/session/x1/out"), "unauthorized")
        .await;
    terminate(&child);
    let out = child.wait_with_output().unwrap();
    let mut everything = String::from_utf8_lossy(&out.stderr).to_string();
    everything.push_str(&String::from_utf8_lossy(&out.stdout));
    for (_, payload) in probe.seen.lock().unwrap().iter() {
        everything.push_str(&String::from_utf8_lossy(payload));
    }
    assert!(everything.contains("leakcam"), "captured something");
    for secret in [
        "mqtt-password-7731",
        "auth-secret-5519-auth-secret-5519",
        "turn-credential-2287",
        "turn-rest-secret-6043",
    ] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

/// SIGTERM, for an orderly stop that flushes the logs.
fn terminate(child: &std::process::Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) takes no pointers; the child is ours and not yet waited for, so its pid
    // names no other process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM: {}", std::io::Error::last_os_error());
}
