//! MQTT 3.1.1 and 5 packets as the gate sees them, read and written with rumqttc's codec
//! (`mqttbytes`): what a client's packet asks for, and the few packets the gate answers
//! itself (refusals). Pure: bytes in, bytes out.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

/// The protocol a connection speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    #[error("MQTT protocol level {0} is not served (3.1.1 and 5 are)")]
    Level(u8),
    #[error("malformed MQTT 3.1.1 packet: {0}")]
    V311(#[source] rumqttc::mqttbytes::Error),
    #[error("malformed MQTT 5 packet: {0}")]
    V5(#[source] rumqttc::v5::mqttbytes::Error),
}

/// A client's CONNECT.
#[derive(Debug, Clone)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub login: Option<(String, String)>,
    /// The last will's topic and retain flag: a will is a publish like any other.
    pub will: Option<(String, bool)>,
    packet: ConnectPacket,
}

#[derive(Debug, Clone)]
enum ConnectPacket {
    V311(v4::Connect),
    V5(Box<(v5::Connect, Option<v5::LastWill>, Option<v5::Login>)>),
}

/// What the gate checks of a packet from a client.
#[derive(Debug, Clone)]
pub enum Request {
    // Boxed: a CONNECT comes once per connection, every other packet is far smaller.
    Connect(Box<Connect>),
    Publish {
        /// Empty for an MQTT 5 publish that names its topic by alias only.
        topic: String,
        alias: Option<u16>,
        retain: bool,
        qos: u8,
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    Unsubscribe {
        filters: Vec<String>,
    },
    /// Acknowledgements, pings, disconnects: nothing to check.
    Other,
}

/// Reads one whole packet from the front of `buf`: `None` until it has arrived. Returns the
/// packet's bytes as they came (forwarded unchanged when allowed) and what it asks for.
/// `version` is `None` before the CONNECT, which must come first.
pub fn read(
    buf: &mut BytesMut,
    version: Option<Version>,
    max_size: usize,
) -> Result<Option<(Bytes, Request)>, CodecError> {
    let frame_len = match rumqttc::mqttbytes::check(buf.iter(), max_size) {
        Ok(header) => header.frame_length(),
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(CodecError::V311(e)),
    };
    let raw = Bytes::copy_from_slice(&buf[..frame_len]);
    let version = match version {
        Some(v) => v,
        None => connect_version(&raw)?,
    };
    let request = match version {
        Version::V311 => from_v4(v4::read(buf, max_size).map_err(CodecError::V311)?),
        Version::V5 => from_v5(v5::Packet::read(buf, Some(max_size)).map_err(CodecError::V5)?),
    };
    Ok(Some((raw, request)))
}

/// The protocol level of a CONNECT frame: after the fixed header, the protocol name (a
/// length-prefixed string) and one byte of level.
fn connect_version(frame: &[u8]) -> Result<Version, CodecError> {
    if frame.first().map(|b| b >> 4) != Some(1) {
        return Err(CodecError::NotConnect);
    }
    // The remaining length is 1 to 4 bytes, each but the last with its top bit set.
    let header_len = 1 + frame[1..]
        .iter()
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(4, |i| i + 1);
    let name_len = frame
        .get(header_len..header_len + 2)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    match frame.get(header_len + 2 + name_len).copied() {
        Some(4) => Ok(Version::V311),
        Some(5) => Ok(Version::V5),
        Some(level) => Err(CodecError::Level(level)),
        None => Err(CodecError::Level(0)),
    }
}

fn from_v4(packet: v4::Packet) -> Request {
    match packet {
        v4::Packet::Connect(c) => Request::Connect(Box::new(Connect {
            version: Version::V311,
            client_id: c.client_id.clone(),
            login: c
                .login
                .as_ref()
                .map(|l| (l.username.clone(), l.password.clone())),
            will: c.last_will.as_ref().map(|w| (w.topic.clone(), w.retain)),
            packet: ConnectPacket::V311(c),
        })),
        v4::Packet::Publish(p) => Request::Publish {
            topic: p.topic,
            alias: None,
            retain: p.retain,
            qos: p.qos as u8,
            pkid: p.pkid,
        },
        v4::Packet::Subscribe(s) => Request::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| f.path).collect(),
        },
        v4::Packet::Unsubscribe(u) => Request::Unsubscribe { filters: u.topics },
        _ => Request::Other,
    }
}

fn from_v5(packet: v5::Packet) -> Request {
    match packet {
        v5::Packet::Connect(c, will, login) => Request::Connect(Box::new(Connect {
            version: Version::V5,
            client_id: c.client_id.clone(),
            login: login
                .as_ref()
                .map(|l| (l.username.clone(), l.password.clone())),
            will: will
                .as_ref()
                .map(|w| (String::from_utf8_lossy(&w.topic).into_owned(), w.retain)),
            packet: ConnectPacket::V5(Box::new((c, will, login))),
        })),
        v5::Packet::Publish(p) => Request::Publish {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            alias: p.properties.as_ref().and_then(|p| p.topic_alias),
            retain: p.retain,
            qos: p.qos as u8,
            pkid: p.pkid,
        },
        v5::Packet::Subscribe(s) => Request::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| f.path).collect(),
        },
        v5::Packet::Unsubscribe(u) => Request::Unsubscribe { filters: u.filters },
        _ => Request::Other,
    }
}

impl Connect {
    /// The CONNECT to send the broker: the client's, under `client_id`, with the gate's own
    /// login in place of the client's (which has been checked and must not travel further).
    pub fn rewritten(&self, client_id: &str, login: (&str, &str)) -> Result<Bytes, CodecError> {
        let mut out = BytesMut::new();
        match &self.packet {
            ConnectPacket::V311(c) => {
                let mut c = c.clone();
                c.client_id = client_id.to_string();
                c.login = Some(v4::Login::new(login.0, login.1));
                c.write(&mut out).map_err(CodecError::V311)?;
            }
            ConnectPacket::V5(b) => {
                let (c, will, _) = b.as_ref();
                let mut c = c.clone();
                c.client_id = client_id.to_string();
                let login = Some(v5::Login::new(login.0, login.1));
                c.write(will, &login, &mut out).map_err(CodecError::V5)?;
            }
        }
        Ok(out.freeze())
    }
}

/// Why the gate refuses a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    BadCredentials,
    NotAuthorized,
    BadClientId,
    ServerBusy,
}

/// A CONNACK refusing the connection.
pub fn connack_refused(version: Version, why: ConnectRefusal) -> Bytes {
    let mut out = BytesMut::new();
    // Writing these fixed, small packets into a growable buffer cannot fail.
    match version {
        Version::V311 => {
            use v4::ConnectReturnCode as C;
            let code = match why {
                ConnectRefusal::BadCredentials => C::BadUserNamePassword,
                ConnectRefusal::NotAuthorized => C::NotAuthorized,
                ConnectRefusal::BadClientId => C::BadClientId,
                ConnectRefusal::ServerBusy => C::ServiceUnavailable,
            };
            v4::ConnAck::new(code, false)
                .write(&mut out)
                .expect("a CONNACK always encodes");
        }
        Version::V5 => {
            use v5::ConnectReturnCode as C;
            let code = match why {
                ConnectRefusal::BadCredentials => C::BadUserNamePassword,
                ConnectRefusal::NotAuthorized => C::NotAuthorized,
                ConnectRefusal::BadClientId => C::ClientIdentifierNotValid,
                ConnectRefusal::ServerBusy => C::ServerBusy,
            };
            v5::ConnAck {
                session_present: false,
                code,
                properties: None,
            }
            .write(&mut out)
            .expect("a CONNACK always encodes");
        }
    }
    out.freeze()
}

/// A SUBACK refusing every filter of a SUBSCRIBE.
pub fn suback_refused(version: Version, pkid: u16, filters: usize) -> Bytes {
    let mut out = BytesMut::new();
    match version {
        Version::V311 => v4::SubAck::new(pkid, vec![v4::SubscribeReasonCode::Failure; filters])
            .write(&mut out)
            .expect("a SUBACK always encodes"),
        Version::V5 => v5::SubAck {
            pkid,
            return_codes: vec![v5::SubscribeReasonCode::NotAuthorized; filters],
            properties: None,
        }
        .write(&mut out)
        .expect("a SUBACK always encodes"),
    };
    out.freeze()
}

/// The PUBACK for a refused QoS 1 publish: MQTT 5 says why; MQTT 3.1.1 has no way to, and a
/// client that got no PUBACK would resend the message forever.
pub fn puback_refused(version: Version, pkid: u16) -> Bytes {
    let mut out = BytesMut::new();
    match version {
        Version::V311 => v4::PubAck::new(pkid)
            .write(&mut out)
            .expect("a PUBACK always encodes"),
        Version::V5 => {
            let mut ack = v5::PubAck::new(pkid, None);
            ack.reason = v5::PubAckReason::NotAuthorized;
            ack.write(&mut out).expect("a PUBACK always encodes")
        }
    };
    out.freeze()
}

/// Why the gate ends a connection (MQTT 5 tells the client; 3.1.1 just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    NotAuthorized,
    TokenExpired,
    TooLarge,
    Malformed,
}

/// The DISCONNECT an MQTT 5 client gets before the gate closes; `None` for 3.1.1.
pub fn disconnect(version: Version, why: Goodbye) -> Option<Bytes> {
    if version == Version::V311 {
        return None;
    }
    use v5::DisconnectReasonCode as R;
    let reason_code = match why {
        Goodbye::NotAuthorized => R::NotAuthorized,
        Goodbye::TokenExpired => R::MaximumConnectTime,
        Goodbye::TooLarge => R::PacketTooLarge,
        Goodbye::Malformed => R::MalformedPacket,
    };
    let mut out = BytesMut::new();
    v5::Disconnect {
        reason_code,
        properties: None,
    }
    .write(&mut out)
    .expect("a DISCONNECT always encodes");
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_bytes(packet: impl FnOnce(&mut BytesMut)) -> BytesMut {
        let mut b = BytesMut::new();
        packet(&mut b);
        b
    }

    #[test]
    fn reads_a_311_session_in_order_and_waits_for_whole_packets() {
        let mut connect = v4::Connect::new("viewer1");
        connect.set_login("u", "p");
        let mut buf = v4_bytes(|b| {
            connect.write(b).unwrap();
            v4::Subscribe::new("a/b", rumqttc::QoS::AtLeastOnce)
                .write(b)
                .unwrap();
        });
        let mut publish = v4::Publish::new("a/c", rumqttc::QoS::AtLeastOnce, "x");
        publish.pkid = 7;
        publish.retain = true;
        let tail = v4_bytes(|b| {
            publish.write(b).unwrap();
        });
        buf.extend_from_slice(&tail[..tail.len() - 1]);

        let Some((_, Request::Connect(c))) = read(&mut buf, None, 1024).unwrap() else {
            panic!("a connect");
        };
        assert_eq!(c.version, Version::V311);
        assert_eq!(c.client_id, "viewer1");
        assert_eq!(c.login, Some(("u".into(), "p".into())));
        let Some((_, Request::Subscribe { filters, .. })) =
            read(&mut buf, Some(Version::V311), 1024).unwrap()
        else {
            panic!("a subscribe");
        };
        assert_eq!(filters, ["a/b"]);
        assert!(read(&mut buf, Some(Version::V311), 1024).unwrap().is_none());
        buf.extend_from_slice(&tail[tail.len() - 1..]);
        let Some((
            raw,
            Request::Publish {
                topic,
                retain,
                qos,
                pkid,
                ..
            },
        )) = read(&mut buf, Some(Version::V311), 1024).unwrap()
        else {
            panic!("a publish");
        };
        assert_eq!((topic.as_str(), retain, qos, pkid), ("a/c", true, 1, 7));
        assert_eq!(&raw[..], &tail[..], "forwarded bytes are the client's");
        assert!(buf.is_empty());
    }

    #[test]
    fn reads_v5_connects_and_rewrites_their_login() {
        let connect = v5::Connect {
            keep_alive: 10,
            client_id: "".into(),
            clean_start: true,
            properties: None,
        };
        let will = v5::LastWill::new(
            "dev/status",
            "gone",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            None,
        );
        let mut buf = BytesMut::new();
        connect
            .write(&Some(will), &Some(v5::Login::new("x", "token")), &mut buf)
            .unwrap();
        let Some((_, Request::Connect(c))) = read(&mut buf, None, 1024).unwrap() else {
            panic!("a connect");
        };
        assert_eq!(c.version, Version::V5);
        assert_eq!(c.will, Some(("dev/status".into(), true)));
        let mut again = BytesMut::from(&c.rewritten("given", ("gate", "pw")).unwrap()[..]);
        let Some((_, Request::Connect(r))) = read(&mut again, None, 1024).unwrap() else {
            panic!("a connect");
        };
        assert_eq!(r.client_id, "given");
        assert_eq!(r.login, Some(("gate".into(), "pw".into())));
        assert_eq!(r.will, c.will, "the will travels on");
    }

    #[test]
    fn refuses_what_is_not_a_connect_or_too_large() {
        let mut ping = BytesMut::from(&[0xC0u8, 0x00][..]);
        assert!(matches!(
            read(&mut ping, None, 1024),
            Err(CodecError::NotConnect)
        ));
        let mut big = v4_bytes(|b| {
            v4::Publish::new("t", rumqttc::QoS::AtMostOnce, vec![0u8; 2000])
                .write(b)
                .unwrap();
        });
        assert!(read(&mut big, Some(Version::V311), 1024).is_err());
        let mut mqtt31 = BytesMut::from(
            &[
                0x10, 0x0c, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0, 0, 10,
            ][..],
        );
        assert!(matches!(
            read(&mut mqtt31, None, 1024),
            Err(CodecError::Level(3))
        ));
    }

    #[test]
    fn refusals_encode_as_their_protocol_reads_them() {
        let mut b = BytesMut::from(&suback_refused(Version::V311, 9, 2)[..]);
        assert!(matches!(
            v4::read(&mut b, 100).unwrap(),
            v4::Packet::SubAck(s) if s.pkid == 9 && s.return_codes == [v4::SubscribeReasonCode::Failure; 2]
        ));
        let mut b = BytesMut::from(&puback_refused(Version::V5, 3)[..]);
        assert!(matches!(
            v5::Packet::read(&mut b, None).unwrap(),
            v5::Packet::PubAck(a) if a.pkid == 3 && a.reason == v5::PubAckReason::NotAuthorized
        ));
        let mut b =
            BytesMut::from(&connack_refused(Version::V311, ConnectRefusal::BadClientId)[..]);
        assert!(matches!(
            v4::read(&mut b, 100).unwrap(),
            v4::Packet::ConnAck(a) if a.code == v4::ConnectReturnCode::BadClientId
        ));
        assert!(disconnect(Version::V311, Goodbye::TokenExpired).is_none());
        assert!(disconnect(Version::V5, Goodbye::TokenExpired).is_some());
    }
}
