//! The viewer's side of signalling protocol v1 over MQTT: its own connection (client id = sid,
//! as on the viewer page, so a broker with rtcam's ACL lets it use that session only), the
//! session's `out` topic as an inbox, and messages to the `in` topic.

use crate::ViewerError;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc::peer_connection::RTCIceCandidateInit;

pub(crate) type Inbox = mpsc::UnboundedReceiver<Value>;

/// A connected session client: subscribed to `out` (the SUBACK came back).
pub(crate) struct Session {
    pub(crate) client: AsyncClient,
    pub(crate) inbox: Inbox,
    /// Polls the connection, reconnecting after errors (a broker restart), until the client
    /// disconnects.
    pub(crate) task: JoinHandle<()>,
}

/// Connects as `sid` and subscribes to `out_topic`, within `timeout`. A camera with
/// `[auth] secret` lets a client onto its embedded broker with a token as the password (any
/// user name).
pub(crate) async fn connect(
    broker: (&str, u16),
    sid: &str,
    out_topic: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Session, ViewerError> {
    let mut opts = MqttOptions::new(sid, broker.0, broker.1);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_keep_alive(Duration::from_secs(5));
    if let Some(token) = token {
        opts.set_credentials("token", token);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    client.subscribe(out_topic, QoS::AtLeastOnce).await?;
    let (inbox_tx, inbox) = mpsc::unbounded_channel::<Value>();
    let (subacked_tx, subacked) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut subacked_tx = Some(subacked_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subacked_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                        let _ = inbox_tx.send(v);
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let session = Session {
        client,
        inbox,
        task,
    };
    match tokio::time::timeout(timeout, subacked).await {
        Ok(Ok(())) => Ok(session),
        _ => {
            session.task.abort();
            Err(ViewerError::Timeout("the broker's SUBACK", timeout))
        }
    }
}

pub async fn publish(client: &AsyncClient, topic: &str, body: Value) -> Result<(), ViewerError> {
    client
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            body.to_string().into_bytes(),
        )
        .await?;
    Ok(())
}

/// A `candidate` message's candidate.
pub(crate) fn candidate_init(msg: &Value) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: msg["candidate"].as_str().unwrap_or_default().to_string(),
        sdp_mid: msg["sdpMid"].as_str().map(str::to_string),
        sdp_mline_index: msg["sdpMLineIndex"].as_u64().map(|v| v as u16),
        ..Default::default()
    }
}

/// Whether a message from rtcam is a candidate to add (the empty one ends its gathering).
pub(crate) fn is_candidate(msg: &Value) -> bool {
    msg["type"] == "candidate" && !msg["candidate"].as_str().unwrap_or("").is_empty()
}

/// The offer with every gathered candidate in it, for a viewer that does not trickle.
pub(crate) fn add_candidates(sdp: &str, candidates: &[RTCIceCandidateInit]) -> String {
    let mut out = String::new();
    for line in sdp.split_inclusive("\r\n") {
        out.push_str(line);
        if line.starts_with("a=mid:") {
            for c in candidates {
                out.push_str(&format!("a={}\r\n", c.candidate));
            }
        }
    }
    out
}
