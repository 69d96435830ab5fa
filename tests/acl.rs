//! The mosquitto ACL shipped in packaging/mosquitto/, on a real mosquitto with a password file:
//! a viewer whose client id is its sid watches; another client can read neither that viewer's
//! answers and candidates nor any command reply, cannot end its session, and cannot command
//! the camera; the trusted `operator` can.

mod common;

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
        self.client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
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
