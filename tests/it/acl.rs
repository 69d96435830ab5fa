//! The mosquitto ACL shipped in packaging/mosquitto/, on a real mosquitto with a password file:
//! a viewer whose client id is its sid watches; another client can read neither that viewer's
//! answers and candidates nor any command reply, cannot end its session, and cannot command
//! the camera; the trusted `operator` can.

use crate::common;

use common::viewer::Viewer;
use common::{free_port, start, test_config};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(15);
const RTCAM_PASSWORD: &str = "camera-password";
const OPERATOR_PASSWORD: &str = "operator-password";

/// mosquitto with the shipped ACL file and a password file for `rtcam` and `operator`.
struct AclMosquitto {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl AclMosquitto {
    fn start() -> AclMosquitto {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        for (i, (user, password)) in [("rtcam", RTCAM_PASSWORD), ("operator", OPERATOR_PASSWORD)]
            .iter()
            .enumerate()
        {
            let mut args = vec!["-b"];
            if i == 0 {
                args.push("-c");
            }
            let path = passwd.to_str().unwrap();
            args.extend([path, user, password]);
            let out = Command::new("mosquitto_passwd")
                .args(&args)
                .output()
                .expect("mosquitto_passwd is installed (package mosquitto)");
            assert!(out.status.success(), "{out:?}");
        }
        let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/mosquitto/rtcam-acl.conf");
        let port = free_port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                // mosquitto started as root drops to its own user, which could not read the
                // password file in this private temporary directory; `user root` keeps it.
                "user root\npersistence false\nlistener {port} 127.0.0.1\n\
                 allow_anonymous true\npassword_file {}\nacl_file {}\n",
                passwd.display(),
                acl.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("mosquitto.log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("mosquitto is installed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        AclMosquitto {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for AclMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MQTT 3.1.1 client that records every message it is delivered, and what the broker
/// granted for each subscription.
struct Client {
    client: AsyncClient,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(
        port: u16,
        id: &str,
        login: Option<(&str, &str)>,
        filters: &[String],
    ) -> (Client, Vec<rumqttc::SubscribeReasonCode>) {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        Client::connect_with(opts, filters).await
    }

    async fn connect_with(
        opts: MqttOptions,
        filters: &[String],
    ) -> (Client, Vec<rumqttc::SubscribeReasonCode>) {
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        for f in filters {
            client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (granted_tx, mut granted) = tokio::sync::mpsc::unbounded_channel();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let _ = granted_tx.send(ack.return_codes);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        s2.lock().unwrap().push((p.topic.clone(), body));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let mut codes = Vec::new();
        for _ in filters {
            codes.extend(
                tokio::time::timeout(Duration::from_secs(5), granted.recv())
                    .await
                    .expect("SUBACK")
                    .unwrap(),
            );
        }
        (Client { client, seen, task }, codes)
    }

    async fn publish(&self, topic: &str, body: Value) {
        self.publish_with(topic, body, false).await;
    }

    async fn publish_with(&self, topic: &str, body: Value, retain: bool) {
        self.client
            .publish(
                topic,
                QoS::AtLeastOnce,
                retain,
                body.to_string().into_bytes(),
            )
            .await
            .unwrap();
    }

    fn seen(&self) -> Vec<(String, Value)> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, pred: impl Fn(&str, &Value) -> bool) -> Option<(String, Value)> {
        let deadline = Instant::now() + WITHIN;
        while Instant::now() < deadline {
            if let Some(found) = self.seen().into_iter().find(|(t, v)| pred(t, v)) {
                return Some(found);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one broker: each client's refusals are checked while the viewer they target keeps watching"
)]
async fn acl_keeps_viewers_to_their_own_session_and_commands_to_trusted_users() {
    let broker = AclMosquitto::start();
    let mut config = test_config("acl");
    config.mqtt.url = format!("mqtt://127.0.0.1:{}", broker.port);
    config.mqtt.username = "rtcam".into();
    config.mqtt.password = RTCAM_PASSWORD.into();
    let rt = start(config).await;
    let root = rt.root();

    // An anonymous viewer whose client id is its sid watches.
    let viewer = Viewer::connect(rt.broker(), &root).await;
    assert!(
        viewer.wait_frames(10, WITHIN).await.frames >= 10,
        "the viewer decodes through the ACL"
    );
    let victim_out = format!("{root}/session/{}/out", viewer.sid);
    let victim_in = format!("{root}/session/{}/in", viewer.sid);

    // An anonymous intruder subscribes to the viewer's session, every session, everything.
    let intruder_filters = vec![
        victim_out.clone(),
        format!("{root}/session/+/out"),
        format!("{root}/command/reply"),
        "rtcam/#".to_string(),
    ];
    let (intruder, granted) = Client::connect(
        broker.port,
        &format!("intruder{}", rand::random::<u32>()),
        None,
        &intruder_filters,
    )
    .await;
    eprintln!("intruder's subscriptions: {granted:?}");
    // Its subscription to everything is live: it reads the retained status, which viewers may.
    intruder
        .wait_for(|t, v| t == format!("{root}/status") && v["state"] == "online")
        .await
        .expect("anonymous clients read status");

    // The operator (trusted) watches command replies.
    let reply_topic = format!("{root}/command/reply");
    let (operator, granted) = Client::connect(
        broker.port,
        &format!("operator{}", rand::random::<u32>()),
        Some(("operator", OPERATOR_PASSWORD)),
        std::slice::from_ref(&reply_topic),
    )
    .await;
    assert_eq!(
        granted,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    // Traffic on the viewer's `out`: its own malformed message gets an error there.
    viewer.send_raw(json!({"type":"candidate"})).await;
    let deadline = Instant::now() + WITHIN;
    while !viewer
        .messages
        .lock()
        .unwrap()
        .iter()
        .any(|m| m["type"] == "error")
    {
        assert!(Instant::now() < deadline, "the viewer got its error reply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The intruder tries to end the viewer's session and to command the camera.
    intruder.publish(&victim_in, json!({"type":"bye"})).await;
    intruder
        .publish(
            &format!("{root}/command"),
            json!({"id":"evil1","command":"stream","args":{"on":false}}),
        )
        .await;
    intruder
        .publish(
            &format!("{root}/command"),
            json!({"id":"evil2","command":"kick","args":{"label":"v1"}}),
        )
        .await;

    // Then the operator asks for status. rtcam takes commands in the order the broker hands
    // them over, so had the intruder's got through, this reply would come after theirs and
    // show streaming off and no viewer.
    operator
        .publish(
            &format!("{root}/command"),
            json!({"id":"op1","command":"status"}),
        )
        .await;
    let (_, reply) = operator
        .wait_for(|_, v| v["id"] == "op1")
        .await
        .expect("the operator's command is answered");
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["streaming"], true, "{reply}");
    assert_eq!(reply["result"]["viewers"], 1, "{reply}");
    let replies = operator.seen();
    assert!(
        replies
            .iter()
            .all(|(_, v)| v["id"] != "evil1" && v["id"] != "evil2"),
        "rtcam never saw the intruder's commands: {replies:?}"
    );

    // The viewer is unaffected: still decoding, no bye.
    let before = viewer.decoded().frames;
    assert!(viewer.wait_frames(before + 20, WITHIN).await.frames >= before + 20);
    assert!(viewer.has_message("bye").is_none());
    assert_eq!(rt.app.viewers(), 1);

    // The intruder read nothing but status: not the viewer's answer, candidates or error,
    // not the command replies.
    let read = intruder.seen();
    assert!(
        read.iter().all(|(t, _)| t == &format!("{root}/status")),
        "the intruder read more than status: {read:?}"
    );

    viewer.bye().await;
    rt.app.stop().await;
}

/// rtcam on the ACL'd mosquitto, with telemetry every second so every topic a stranger might
/// read carries traffic while it listens.
async fn rtcam_on(broker: &AclMosquitto, device: &str) -> common::Running {
    let mut config = test_config(device);
    config.mqtt.url = format!("mqtt://127.0.0.1:{}", broker.port);
    config.mqtt.username = "rtcam".into();
    config.mqtt.password = RTCAM_PASSWORD.into();
    config.control.telemetry_interval_secs = 1;
    start(config).await
}

/// The retained status a newly subscribing client is given.
async fn retained_status(port: u16, root: &str) -> Value {
    let status = format!("{root}/status");
    let (probe, _) = Client::connect(
        port,
        &format!("probe{}", rand::random::<u32>()),
        Some(("operator", OPERATOR_PASSWORD)),
        std::slice::from_ref(&status),
    )
    .await;
    probe
        .wait_for(|t, _| t == status)
        .await
        .expect("a retained status")
        .1
}

/// The same table tests/it/hostile.rs plays against the embedded broker, as far as mosquitto's
/// ACL file can enforce it. mosquitto grants every subscription (its ACL file checks reads when
/// it delivers, not when a client subscribes) and drops refused publishes without a word, so
/// what is checked is what arrives: the stranger reads nothing but status, and an operator
/// watching everything sees nothing forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: the stranger's attempts, then what the operator and the viewer saw of them"
)]
async fn acl_gives_a_stranger_status_and_nothing_else() {
    let broker = AclMosquitto::start();
    let rt = rtcam_on(&broker, "aclstranger").await;
    let root = rt.root();
    let status = format!("{root}/status");

    let viewer = Viewer::connect(rt.broker(), &root).await;
    assert!(viewer.wait_frames(10, WITHIN).await.frames >= 10);
    let sid = viewer.sid.clone();

    // The operator (Home Assistant, say) watches everything of the camera and discovery.
    let (watch, granted) = Client::connect(
        broker.port,
        &format!("watch{}", rand::random::<u32>()),
        Some(("operator", OPERATOR_PASSWORD)),
        &[format!("{root}/#"), "homeassistant/#".to_string()],
    )
    .await;
    assert!(
        granted
            .iter()
            .all(|g| matches!(g, rumqttc::SubscribeReasonCode::Success(_))),
        "{granted:?}"
    );

    let stranger_id = format!("stranger{}", rand::random::<u32>());
    let filters = vec![
        "#".to_string(),
        "rtcam/#".into(),
        format!("{root}/#"),
        format!("{root}/session/+/out"),
        format!("{root}/session/{sid}/out"),
        format!("{root}/command/reply"),
        format!("{root}/telemetry"),
        "homeassistant/#".into(),
    ];
    let (stranger, granted) = Client::connect(broker.port, &stranger_id, None, &filters).await;
    eprintln!("mosquitto's SUBACK to the stranger: {granted:?}");
    assert_eq!(granted.len(), filters.len());

    // Traffic on every topic it asked for: the viewer's own error reply on its `out`, telemetry
    // (every second), a command reply.
    viewer.send_raw(json!({"type":"candidate"})).await;
    let deadline = Instant::now() + WITHIN;
    while viewer.has_message("error").is_none() {
        assert!(Instant::now() < deadline, "the viewer got its error reply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watch
        .wait_for(|t, _| t == format!("{root}/telemetry"))
        .await
        .expect("telemetry flows");

    // Everything it may not write: commands, a bye into the viewer's `in`, a forged answer and
    // bye into its `out`, a forged retained status, a discovery topic.
    let forged = forged_messages(&root, &sid);
    for (topic, body, retain) in &forged {
        stranger.publish_with(topic, body.clone(), *retain).await;
    }

    // A last will is a publish too: one on the status topic, then a connection that just
    // drops, as a crashed client's would.
    forged_will(broker.port, &status).await;

    // The operator's command, after all of that: had the stranger's command got through,
    // rtcam would have handled it first and streaming would be off.
    watch
        .publish(
            &format!("{root}/command"),
            json!({"id":"op1","command":"status"}),
        )
        .await;
    let reply_topic = format!("{root}/command/reply");
    let (_, reply) = watch
        .wait_for(|t, v| t == reply_topic && v["id"] == "op1")
        .await
        .expect("the operator's command is answered");
    assert_eq!(reply["result"]["streaming"], true, "{reply}");
    assert_eq!(reply["result"]["viewers"], 1, "{reply}");

    let seen = watch.seen();
    let leaked: Vec<_> = seen
        .iter()
        .filter(|(_, v)| v["forged"] == true || v["id"] == "evil1")
        .collect();
    assert!(leaked.is_empty(), "forged messages arrived: {leaked:?}");
    assert_eq!(
        retained_status(broker.port, &root).await["state"],
        "online",
        "the retained status is rtcam's"
    );
    let before = viewer.decoded().frames;
    assert!(viewer.wait_frames(before + 20, WITHIN).await.frames >= before + 20);
    assert!(
        viewer.has_message("bye").is_none(),
        "the viewer was not ended"
    );
    assert!(
        viewer
            .messages
            .lock()
            .unwrap()
            .iter()
            .all(|m| m["forged"].is_null()),
        "the viewer got nothing forged"
    );

    let read = stranger.seen();
    assert!(
        read.iter().all(|(t, _)| *t == status),
        "the stranger read more than status: {read:?}"
    );
    assert!(
        read.iter().any(|(t, _)| *t == status),
        "its subscriptions were live (it read the status)"
    );

    viewer.bye().await;
    rt.app.stop().await;
}

/// What a stranger may not write into rtcam's topics, each marked `forged` (or with id
/// `evil1`): the topic, the message and whether it is retained.
fn forged_messages(root: &str, sid: &str) -> Vec<(String, Value, bool)> {
    vec![
        (
            format!("{root}/command"),
            json!({"id":"evil1","command":"stream","args":{"on":false}}),
            false,
        ),
        (
            format!("{root}/session/{sid}/in"),
            json!({"type":"bye"}),
            false,
        ),
        (
            format!("{root}/session/{sid}/out"),
            json!({"type":"answer","sdp":"v=0\r\nforged\r\n","forged":true}),
            false,
        ),
        (
            format!("{root}/session/{sid}/out"),
            json!({"type":"bye","forged":true}),
            false,
        ),
        (
            format!("{root}/status"),
            json!({"state":"offline","forged":true}),
            true,
        ),
        (
            "homeassistant/camera/rtcam_aclstranger/config".to_string(),
            json!({"forged":true}),
            true,
        ),
    ]
}

/// A client whose last will is an offline status connects, then drops as a crashed one does.
async fn forged_will(port: u16, status: &str) {
    let mut opts = MqttOptions::new(
        format!("willful{}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    opts.set_last_will(rumqttc::LastWill::new(
        status,
        json!({"state":"offline","forged":true}).to_string(),
        QoS::AtLeastOnce,
        true,
    ));
    let (willful, _) = Client::connect_with(opts, &[status.to_string()]).await;
    willful
        .wait_for(|t, _| t == status)
        .await
        .expect("the willful client is connected");
    drop(willful);
}

/// rtcam's client id is `rtcam-{device}` plus a random suffix: a client connecting as
/// `rtcam-{device}` (an id mosquitto, like any broker, would give to the newcomer, pushing off
/// the one holding it) leaves rtcam connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_named_like_rtcam_does_not_knock_it_off() {
    let broker = AclMosquitto::start();
    let device = "aclimpostor";
    let rt = rtcam_on(&broker, device).await;
    let root = rt.root();
    let status = format!("{root}/status");
    let (watch, _) = Client::connect(
        broker.port,
        &format!("watch{}", rand::random::<u32>()),
        Some(("operator", OPERATOR_PASSWORD)),
        std::slice::from_ref(&status),
    )
    .await;
    watch
        .wait_for(|t, v| t == status && v["state"] == "online")
        .await
        .expect("rtcam is online");

    // Anonymous, and with rtcam's login: the password file does not bind client ids either.
    let (impostor, _) = Client::connect(
        broker.port,
        &format!("rtcam-{device}"),
        None,
        std::slice::from_ref(&status),
    )
    .await;
    impostor
        .wait_for(|t, _| t == status)
        .await
        .expect("the impostor is connected");
    let (impostor2, _) = Client::connect(
        broker.port,
        &format!("rtcam-{device}"),
        Some(("rtcam", RTCAM_PASSWORD)),
        std::slice::from_ref(&status),
    )
    .await;
    impostor2
        .wait_for(|t, _| t == status)
        .await
        .expect("the second impostor is connected");

    // A new viewer gets its answer and decodes; rtcam never went offline.
    let viewer = Viewer::connect(rt.broker(), &root).await;
    assert!(
        viewer.wait_frames(10, WITHIN).await.frames >= 10,
        "a viewer is answered while the impostors are connected"
    );
    let offline: Vec<_> = watch
        .seen()
        .into_iter()
        .filter(|(_, v)| v["state"] != "online")
        .collect();
    assert!(offline.is_empty(), "rtcam stayed online: {offline:?}");
    assert_eq!(retained_status(broker.port, &root).await["state"], "online");

    drop((impostor, impostor2));
    viewer.bye().await;
    rt.app.stop().await;
}

/// mosquitto's ACL file cannot forbid retained publishes, so a viewer may leave a retained
/// message on its own `…/in`; rtcam ignores retained deliveries (they predate its
/// subscription), so such a message is not replayed into a session at every reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_left_on_session_topics_are_not_replayed() {
    let broker = AclMosquitto::start();
    let device = "aclretained";
    let root = format!("rtcam/{device}");
    let (stale, _) = Client::connect(broker.port, "stale1", None, &[]).await;
    stale
        .publish_with(
            &format!("{root}/session/stale1/in"),
            json!({"type":"offer","sdp":"v=0\r\nstale\r\n"}),
            true,
        )
        .await;
    let (op, _) = Client::connect(
        broker.port,
        &format!("op{}", rand::random::<u32>()),
        Some(("operator", OPERATOR_PASSWORD)),
        &[format!("{root}/#")],
    )
    .await;
    op.wait_for(|t, _| t.ends_with("/stale1/in"))
        .await
        .expect("mosquitto keeps a viewer's retained message");

    // rtcam subscribes after it was left; an offer it handled would get an answer or error.
    let rt = rtcam_on(&broker, device).await;
    assert_eq!(rt.root(), root);
    let reply_topic = format!("{root}/command/reply");
    op.publish(
        &format!("{root}/command"),
        json!({"id":"op1","command":"status"}),
    )
    .await;
    op.wait_for(|t, v| t == reply_topic && v["id"] == "op1")
        .await
        .expect("rtcam answers commands");
    let replayed: Vec<_> = op
        .seen()
        .into_iter()
        .filter(|(t, _)| t.ends_with("/stale1/out"))
        .collect();
    assert!(
        replayed.is_empty(),
        "rtcam handled a retained offer: {replayed:?}"
    );
    assert_eq!(rt.app.viewers(), 0);
    rt.app.stop().await;
}
