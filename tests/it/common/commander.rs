//! An MQTT client that sends rtcam commands and waits for replies, over MQTT 5 (response topic
//! and correlation data) or MQTT 3.1.1 (`reply_to` in the payload, or the default reply topic).

use bytes::Bytes;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    V5,
    V311,
}

/// One received reply: its topic, body and MQTT 5 correlation data.
#[derive(Debug, Clone)]
pub struct Reply {
    pub topic: String,
    pub body: Value,
    pub correlation: Option<Bytes>,
}

pub struct Commander {
    protocol: Protocol,
    root: String,
    v5: Option<rumqttc::v5::AsyncClient>,
    v4: Option<rumqttc::AsyncClient>,
    inbox: Arc<Mutex<Vec<Reply>>>,
    my_topic: String,
    task: tokio::task::JoinHandle<()>,
}

impl Commander {
    #[expect(
        clippy::too_many_lines,
        reason = "the same connect, subscribe and reply routing written once for MQTT 3.1.1 and once for MQTT 5"
    )]
    pub async fn connect(protocol: Protocol, broker: (&str, u16), root: &str) -> Commander {
        let id = format!("cmd{}", rand::random::<u32>());
        // Under the reply subtree: rtcam sends replies nowhere else.
        let my_topic = format!("{root}/command/reply/{id}");
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let filters = [my_topic.clone(), format!("{root}/command/reply")];
        let (subacked_tx, mut subacked) = tokio::sync::mpsc::unbounded_channel();
        let (v5, v4, task) = match protocol {
            Protocol::V5 => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                use rumqttc::v5::mqttbytes::QoS;
                let mut opts = rumqttc::v5::MqttOptions::new(id, broker.0, broker.1);
                opts.set_credentials(super::OPERATOR.0, super::OPERATOR.1);
                let (client, mut ev) = rumqttc::v5::AsyncClient::new(opts, 64);
                for f in &filters {
                    client.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
                }
                let inbox2 = inbox.clone();
                let task = tokio::spawn(async move {
                    loop {
                        match ev.poll().await {
                            Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(_))) => {
                                let _ = subacked_tx.send(());
                            }
                            Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                                let body =
                                    serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                                inbox2.lock().unwrap().push(Reply {
                                    topic: String::from_utf8_lossy(&p.topic).to_string(),
                                    body,
                                    correlation: p.properties.and_then(|pr| pr.correlation_data),
                                });
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                });
                (Some(client), None, task)
            }
            Protocol::V311 => {
                use rumqttc::{Event, Packet, QoS};
                let mut opts = rumqttc::MqttOptions::new(id, broker.0, broker.1);
                opts.set_credentials(super::OPERATOR.0, super::OPERATOR.1);
                let (client, mut ev) = rumqttc::AsyncClient::new(opts, 64);
                for f in &filters {
                    client.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
                }
                let inbox2 = inbox.clone();
                let task = tokio::spawn(async move {
                    loop {
                        match ev.poll().await {
                            Ok(Event::Incoming(Packet::SubAck(_))) => {
                                let _ = subacked_tx.send(());
                            }
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                let body =
                                    serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                                inbox2.lock().unwrap().push(Reply {
                                    topic: p.topic.clone(),
                                    body,
                                    correlation: None,
                                });
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                });
                (None, Some(client), task)
            }
        };
        for _ in &filters {
            tokio::time::timeout(Duration::from_secs(5), subacked.recv())
                .await
                .expect("suback");
        }
        Commander {
            protocol,
            root: root.to_string(),
            v5,
            v4,
            inbox,
            my_topic,
            task,
        }
    }

    /// Publishes raw bytes on `R/command` (with MQTT 5 reply routing when on MQTT 5).
    pub async fn send_raw(&self, payload: Vec<u8>, correlation: &[u8]) {
        let topic = format!("{}/command", self.root);
        match self.protocol {
            Protocol::V5 => {
                use rumqttc::v5::mqttbytes::v5::PublishProperties;
                let props = PublishProperties {
                    response_topic: Some(self.my_topic.clone()),
                    correlation_data: Some(Bytes::copy_from_slice(correlation)),
                    ..Default::default()
                };
                self.v5
                    .as_ref()
                    .unwrap()
                    .publish_with_properties(
                        topic,
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        payload,
                        props,
                    )
                    .await
                    .unwrap();
            }
            Protocol::V311 => {
                self.v4
                    .as_ref()
                    .unwrap()
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
        }
    }

    /// Sends a command and returns the reply with the same id. On MQTT 3.1.1 the request
    /// carries `reply_to` unless `default_topic` asks for the device's default reply topic.
    pub async fn request_on(&self, command: &str, args: Value, default_topic: bool) -> Reply {
        let id = format!("r{}", rand::random::<u32>());
        let mut req = serde_json::json!({"id": id, "command": command, "args": args});
        if self.protocol == Protocol::V311 && !default_topic {
            req["reply_to"] = Value::String(self.my_topic.clone());
        }
        let correlation = id.as_bytes().to_vec();
        self.send_raw(serde_json::to_vec(&req).unwrap(), &correlation)
            .await;
        let reply = self.wait_reply(&id).await;
        if self.protocol == Protocol::V5 {
            assert_eq!(
                reply.topic, self.my_topic,
                "MQTT 5 reply goes to the response topic"
            );
            assert_eq!(
                reply.correlation.as_deref(),
                Some(correlation.as_slice()),
                "correlation data echoed"
            );
        } else if default_topic {
            assert_eq!(reply.topic, format!("{}/command/reply", self.root));
        } else {
            assert_eq!(reply.topic, self.my_topic, "reply_to is honoured");
        }
        reply
    }

    pub async fn request(&self, command: &str, args: Value) -> Reply {
        self.request_on(command, args, false).await
    }

    pub async fn wait_reply(&self, id: &str) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self
                .inbox
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.body["id"] == id)
                .cloned()
            {
                return r;
            }
            assert!(Instant::now() < deadline, "no reply to {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The most recent reply with no usable id (to a request too broken to carry one).
    pub async fn wait_anonymous_error(&self) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .inbox
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|r| r.body["id"].is_null())
                .cloned();
            if let Some(r) = found {
                self.inbox.lock().unwrap().clear();
                return r;
            }
            assert!(Instant::now() < deadline, "no reply to a broken request");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Commander {
    fn drop(&mut self) {
        self.task.abort();
    }
}
