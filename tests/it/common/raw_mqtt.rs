//! A bare MQTT 3.1.1 client for tests that play a hostile or broken one: it sends exactly the
//! packets a test writes (rumqttc's codec encodes them) and reports exactly what comes back,
//! with none of a real client's retries or politeness. Over TCP or over a `/mqtt` WebSocket.

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{self, Packet};
use rumqttc::mqttbytes::QoS;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

enum Wire {
    Tcp(tokio::net::TcpStream),
    Ws(
        Box<
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        >,
    ),
}

pub struct RawMqtt {
    wire: Wire,
    buf: BytesMut,
}

/// What a connection attempt got.
#[derive(Debug, PartialEq, Eq)]
pub enum Connack {
    Accepted,
    Refused(v4::ConnectReturnCode),
    /// Closed, or nothing within the timeout.
    Nothing,
}

impl RawMqtt {
    pub async fn tcp(addr: &str) -> RawMqtt {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        RawMqtt {
            wire: Wire::Tcp(tcp),
            buf: BytesMut::new(),
        }
    }

    /// The page's way in: a WebSocket to `url` (`ws://host:port/mqtt…`) carrying MQTT.
    pub async fn ws(url: &str) -> RawMqtt {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .unwrap_or_else(|e| panic!("WebSocket {url}: {e}"));
        RawMqtt {
            wire: Wire::Ws(Box::new(ws)),
            buf: BytesMut::new(),
        }
    }

    /// Sends CONNECT and waits for the CONNACK.
    pub async fn connect(&mut self, id: &str, login: Option<(&str, &str)>) -> Connack {
        let mut c = v4::Connect::new(id);
        c.keep_alive = 30;
        if let Some((u, p)) = login {
            c.set_login(u, p);
        }
        self.send(Packet::Connect(c)).await;
        self.connack().await
    }

    pub async fn connack(&mut self) -> Connack {
        match self.recv(Duration::from_secs(5)).await {
            Some(Packet::ConnAck(a)) if a.code == v4::ConnectReturnCode::Success => {
                Connack::Accepted
            }
            Some(Packet::ConnAck(a)) => Connack::Refused(a.code),
            _ => Connack::Nothing,
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        match packet {
            Packet::Connect(c) => c.write(&mut out),
            Packet::Publish(p) => p.write(&mut out),
            Packet::Subscribe(s) => s.write(&mut out),
            Packet::PingReq => v4::PingReq.write(&mut out),
            other => panic!("the raw client does not send {other:?}"),
        }
        .unwrap();
        self.send_bytes(&out).await;
    }

    /// Writes bytes as they are; false when the connection is gone.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> bool {
        match &mut self.wire {
            Wire::Tcp(t) => t.write_all(bytes).await.is_ok(),
            Wire::Ws(w) => w
                .send(tokio_tungstenite::tungstenite::Message::Binary(
                    bytes.to_vec(),
                ))
                .await
                .is_ok(),
        }
    }

    /// Subscribes to one filter; `Some(true)` when granted, `Some(false)` when refused, `None`
    /// when no SUBACK came (the connection ended).
    pub async fn subscribe(&mut self, filter: &str) -> Option<bool> {
        self.send(Packet::Subscribe(v4::Subscribe::new(
            filter,
            QoS::AtLeastOnce,
        )))
        .await;
        loop {
            match self.recv(Duration::from_secs(5)).await? {
                Packet::SubAck(s) => {
                    return Some(
                        s.return_codes
                            .iter()
                            .all(|c| *c != v4::SubscribeReasonCode::Failure),
                    )
                }
                _ => continue,
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK (the gate acknowledges what it drops, so a
    /// PUBACK says nothing about delivery); false when the connection ended instead.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], retain: bool) -> bool {
        let mut p = v4::Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        p.pkid = 1;
        p.retain = retain;
        self.send(Packet::Publish(p)).await;
        loop {
            match self.recv(Duration::from_secs(5)).await {
                Some(Packet::PubAck(_)) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    }

    /// The next packet within `timeout`; `None` when the connection closed or nothing came.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(p) = v4::read(&mut self.buf, 1 << 20) {
                return Some(p);
            }
            let more = tokio::time::timeout_at(deadline, self.fill()).await.ok()?;
            if !more {
                return None;
            }
        }
    }

    /// Whether the server closed the connection within `timeout` (anything it sends before
    /// closing is read and dropped).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return false,
                Ok(false) => return true,
                Ok(true) => self.buf.clear(),
            }
        }
    }

    async fn fill(&mut self) -> bool {
        match &mut self.wire {
            Wire::Tcp(t) => {
                let mut chunk = [0u8; 4096];
                match t.read(&mut chunk).await {
                    Ok(0) | Err(_) => false,
                    Ok(n) => {
                        self.buf.extend_from_slice(&chunk[..n]);
                        true
                    }
                }
            }
            Wire::Ws(w) => loop {
                match w.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => {
                        self.buf.extend_from_slice(&b);
                        return true;
                    }
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
                    | None
                    | Some(Err(_)) => return false,
                    Some(Ok(_)) => continue,
                }
            },
        }
    }
}
