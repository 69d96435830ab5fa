//! Which session a datagram on the shared UDP port belongs to: pure, no sockets, time passed in.
//!
//! Every WebRTC flow starts with ICE: before a viewer sends DTLS or media from an address, it
//! sends a STUN binding request from there whose USERNAME is `<rtcam's ufrag>:<its ufrag>`
//! (RFC 8445 7.2.2). rtcam's ufrag is in each answer, so a request names its session, and its
//! source address is remembered for everything that follows from there. Responses to what a
//! session sent itself (its own checks, a STUN server's reflexive address) carry no USERNAME;
//! they are matched by the transaction id of the request.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a request's transaction id is kept for its response. STUN gives up on a
/// transaction after 39.5 s (RFC 5389 7.2.1); ICE checks after a few seconds.
const TRANSACTION_TTL: Duration = Duration::from_secs(40);
/// At most this many open transactions; the oldest go first beyond it (a flood of checks from a
/// session, or a STUN server that never answers, cannot grow the table without bound).
const MAX_TRANSACTIONS: usize = 4096;

/// STUN's magic cookie (RFC 5389 6), in every message rtcam or a browser sends.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;

/// The sessions on one shared port, keyed by `K` (the mux's session id).
#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_remote: HashMap<SocketAddr, K>,
    by_transaction: HashMap<[u8; 12], (K, Instant)>,
}

impl<K> Default for Demux<K> {
    fn default() -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_remote: HashMap::new(),
            by_transaction: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    /// `ufrag` is rtcam's ICE username fragment in `key`'s answer (a restart adds another).
    pub fn register_ufrag(&mut self, key: K, ufrag: &str) {
        self.by_ufrag.insert(ufrag.to_owned(), key);
    }

    /// Forgets everything that leads to `key`: its session ended.
    pub fn remove(&mut self, key: K) {
        self.by_ufrag.retain(|_, k| *k != key);
        self.by_remote.retain(|_, k| *k != key);
        self.by_transaction.retain(|_, (k, _)| *k != key);
    }

    /// `key` sent a STUN request with `transaction` ([`request_transaction`]): its response is
    /// routed back to `key`.
    pub fn outgoing(&mut self, key: K, transaction: [u8; 12], now: Instant) {
        if self.by_transaction.len() >= MAX_TRANSACTIONS {
            self.by_transaction
                .retain(|_, (_, at)| now.duration_since(*at) < TRANSACTION_TTL);
            if self.by_transaction.len() >= MAX_TRANSACTIONS {
                if let Some(oldest) = self
                    .by_transaction
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(id, _)| *id)
                {
                    self.by_transaction.remove(&oldest);
                }
            }
        }
        self.by_transaction.insert(transaction, (key, now));
    }

    /// The session `packet` from `from` is for, if any. A STUN request naming a session's ufrag
    /// (or a response to one of its requests) also ties `from` to that session.
    pub fn incoming(&mut self, packet: &[u8], from: SocketAddr, now: Instant) -> Option<K> {
        if let Some(stun) = Stun::parse(packet) {
            let key = match stun.class() {
                Class::Request => stun
                    .local_ufrag()
                    .and_then(|ufrag| self.by_ufrag.get(ufrag).copied()),
                Class::Success | Class::Error => self
                    .by_transaction
                    .remove(&stun.transaction)
                    .filter(|(_, at)| now.duration_since(*at) < TRANSACTION_TTL)
                    .map(|(k, _)| k),
                Class::Indication => None,
            };
            if let Some(key) = key {
                self.by_remote.insert(from, key);
                return Some(key);
            }
        }
        self.by_remote.get(&from).copied()
    }

    /// The session a STUN request names by its ufrag, learning nothing: an ICE-TCP connection's
    /// first message picks its session, and the connection carries the rest.
    pub fn owner_of_request(&self, packet: &[u8]) -> Option<K> {
        let stun = Stun::parse(packet)?;
        if stun.class() != Class::Request {
            return None;
        }
        self.by_ufrag.get(stun.local_ufrag()?).copied()
    }

    /// How many remote addresses, ufrags and open transactions are held.
    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.by_remote.len(),
            self.by_ufrag.len(),
            self.by_transaction.len(),
        )
    }
}

/// The transaction id of a STUN request, the one kind of packet a session sends whose answer
/// must find its way back to it. Read without the demux's lock: every packet a session sends
/// is asked, and nearly all are media.
pub fn request_transaction(packet: &[u8]) -> Option<[u8; 12]> {
    Stun::parse(packet)
        .filter(|s| s.class() == Class::Request)
        .map(|s| s.transaction)
}

/// A packet of a TURN client's conversation with its server: a STUN message of a TURN method
/// (Allocate, Refresh, Send, Data, CreatePermission, ChannelBind: RFC 8656 17) or ChannelData
/// (first byte 64–79, RFC 7983). A TURN allocation belongs to one 5-tuple, so these cannot share
/// a socket between sessions.
pub fn is_turn(packet: &[u8]) -> bool {
    if let Some(first) = packet.first() {
        if (0x40..0x50).contains(first) {
            return true;
        }
    }
    Stun::parse(packet).is_some_and(|s| s.method() >= 0x003)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// The parts of a STUN message the demux reads.
struct Stun<'a> {
    message_type: u16,
    transaction: [u8; 12],
    attributes: &'a [u8],
}

impl<'a> Stun<'a> {
    /// A STUN message (RFC 5389 6): a first byte of 0–3 (DTLS has 20–63, TURN channel data
    /// 64–79, RTP and RTCP 128–191: RFC 7983), a length that fits, the magic cookie.
    fn parse(packet: &'a [u8]) -> Option<Self> {
        if packet.len() < HEADER_LEN || packet[0] > 3 || packet[4..8] != MAGIC_COOKIE {
            return None;
        }
        let length = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let attributes = packet.get(HEADER_LEN..HEADER_LEN + length)?;
        Some(Self {
            message_type: u16::from_be_bytes([packet[0], packet[1]]),
            transaction: packet[8..20].try_into().ok()?,
            attributes,
        })
    }

    fn class(&self) -> Class {
        match ((self.message_type >> 7) & 0b10) | ((self.message_type >> 4) & 0b01) {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }

    /// The 12-bit method, with the class bits taken out (RFC 5389 6).
    fn method(&self) -> u16 {
        let t = self.message_type;
        (t & 0x000f) | ((t & 0x00e0) >> 1) | ((t & 0x3e00) >> 2)
    }

    /// The part of USERNAME before the colon: the receiver's ufrag, which is rtcam's.
    fn local_ufrag(&self) -> Option<&'a str> {
        let mut rest = self.attributes;
        while rest.len() >= 4 {
            let kind = u16::from_be_bytes([rest[0], rest[1]]);
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let value = rest.get(4..4 + len)?;
            if kind == ATTR_USERNAME {
                let username = std::str::from_utf8(value).ok()?;
                return username.split(':').next();
            }
            // Attributes are padded to four bytes.
            rest = rest.get(4 + len.div_ceil(4) * 4..).unwrap_or_default();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINDING_REQUEST: u16 = 0x0001;
    const BINDING_SUCCESS: u16 = 0x0101;
    const BINDING_ERROR: u16 = 0x0111;
    const BINDING_INDICATION: u16 = 0x0011;

    fn stun(message_type: u16, transaction: u8, username: Option<&str>) -> Vec<u8> {
        let mut attrs = Vec::new();
        // An attribute before USERNAME, with padding, as browsers send PRIORITY and the like.
        attrs.extend_from_slice(&[0x80, 0x2a, 0x00, 0x03, 1, 2, 3, 0]);
        if let Some(u) = username {
            attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
            attrs.extend_from_slice(&(u.len() as u16).to_be_bytes());
            attrs.extend_from_slice(u.as_bytes());
            attrs.resize(attrs.len().next_multiple_of(4), 0);
        }
        let mut p = Vec::new();
        p.extend_from_slice(&message_type.to_be_bytes());
        p.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[transaction; 12]);
        p.extend_from_slice(&attrs);
        p
    }

    /// `key` sends `packet`, as `MuxSocket::poll_send` hands it to the demux.
    fn send(d: &mut Demux<u64>, key: u64, packet: &[u8], now: Instant) {
        if let Some(transaction) = request_transaction(packet) {
            d.outgoing(key, transaction, now);
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn a_check_names_its_session_and_its_address_follows() {
        let now = Instant::now();
        let mut d = Demux::default();
        d.register_ufrag(1, "camA");
        d.register_ufrag(2, "camB");
        let check = stun(BINDING_REQUEST, 9, Some("camB:view"));
        assert_eq!(d.incoming(&check, addr(5000), now), Some(2));
        // DTLS and SRTP from that address go to the same session.
        assert_eq!(d.incoming(&[22, 254, 253, 0, 0], addr(5000), now), Some(2));
        assert_eq!(d.incoming(&[0x80, 96, 0, 1], addr(5000), now), Some(2));
        // Another address that never checked goes nowhere.
        assert_eq!(d.incoming(&[0x80, 96, 0, 1], addr(5001), now), None);
    }

    #[test]
    fn a_tcp_connection_is_placed_by_its_first_request_alone() {
        let mut d = Demux::default();
        d.register_ufrag(3, "camC");
        assert_eq!(
            d.owner_of_request(&stun(BINDING_REQUEST, 1, Some("camC:v"))),
            Some(3)
        );
        assert_eq!(
            d.owner_of_request(&stun(BINDING_SUCCESS, 1, Some("camC:v"))),
            None
        );
        assert_eq!(
            d.owner_of_request(&stun(BINDING_REQUEST, 1, Some("camX:v"))),
            None
        );
        assert_eq!(d.owner_of_request(&[22, 254, 253, 0]), None);
        assert_eq!(d.sizes(), (0, 1, 0), "nothing learned");
    }

    #[test]
    fn an_unknown_ufrag_or_no_username_is_dropped() {
        let now = Instant::now();
        let mut d = Demux::default();
        d.register_ufrag(1, "camA");
        assert_eq!(
            d.incoming(&stun(BINDING_REQUEST, 1, Some("other:view")), addr(1), now),
            None
        );
        assert_eq!(
            d.incoming(&stun(BINDING_REQUEST, 1, None), addr(1), now),
            None
        );
        assert_eq!(
            d.incoming(&stun(BINDING_INDICATION, 1, None), addr(1), now),
            None
        );
        assert_eq!(d.sizes().0, 0, "no address learned");
    }

    #[test]
    fn a_response_goes_to_the_session_that_asked_once() {
        let now = Instant::now();
        let mut d = Demux::default();
        send(
            &mut d,
            7,
            &stun(BINDING_REQUEST, 42, Some("view:camA")),
            now,
        );
        // Responses and indications rtcam sends open no transaction.
        send(&mut d, 7, &stun(BINDING_SUCCESS, 43, None), now);
        send(&mut d, 7, &[0x80, 96, 0, 1], now);
        assert_eq!(d.sizes().2, 1);
        let stun_server = SocketAddr::from(([198, 51, 100, 1], 3478));
        assert_eq!(
            d.incoming(&stun(BINDING_SUCCESS, 42, None), stun_server, now),
            Some(7)
        );
        // The transaction is closed: a replayed response is not routed by it again, only by
        // the address it taught.
        assert_eq!(d.sizes().2, 0);
        assert_eq!(
            d.incoming(&stun(BINDING_ERROR, 43, None), addr(9), now),
            None
        );
    }

    #[test]
    fn an_old_transaction_is_not_answered() {
        let now = Instant::now();
        let mut d = Demux::default();
        send(&mut d, 7, &stun(BINDING_REQUEST, 42, None), now);
        let late = now + TRANSACTION_TTL + Duration::from_secs(1);
        assert_eq!(
            d.incoming(&stun(BINDING_SUCCESS, 42, None), addr(1), late),
            None
        );
    }

    #[test]
    fn open_transactions_are_bounded() {
        let now = Instant::now();
        let mut d = Demux::default();
        for i in 0..(MAX_TRANSACTIONS + 100) as u32 {
            let mut req = stun(BINDING_REQUEST, 0, None);
            req[8..12].copy_from_slice(&i.to_be_bytes());
            send(&mut d, 1, &req, now + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(d.sizes().2, MAX_TRANSACTIONS);
    }

    #[test]
    fn a_session_leaving_takes_its_entries() {
        let now = Instant::now();
        let mut d = Demux::default();
        d.register_ufrag(1, "camA");
        d.register_ufrag(2, "camB");
        d.incoming(&stun(BINDING_REQUEST, 1, Some("camA:v")), addr(1), now);
        d.incoming(&stun(BINDING_REQUEST, 2, Some("camB:v")), addr(2), now);
        send(&mut d, 1, &stun(BINDING_REQUEST, 3, None), now);
        d.remove(1);
        assert_eq!(d.sizes(), (1, 1, 0));
        assert_eq!(d.incoming(&[0x80, 0, 0, 0], addr(1), now), None);
        assert_eq!(d.incoming(&[0x80, 0, 0, 0], addr(2), now), Some(2));
    }

    #[test]
    fn turn_messages_are_told_from_ice() {
        const ALLOCATE_REQUEST: u16 = 0x0003;
        const REFRESH_SUCCESS: u16 = 0x0104;
        const SEND_INDICATION: u16 = 0x0016;
        const CHANNEL_BIND_REQUEST: u16 = 0x0009;
        for t in [
            ALLOCATE_REQUEST,
            REFRESH_SUCCESS,
            SEND_INDICATION,
            CHANNEL_BIND_REQUEST,
        ] {
            assert!(is_turn(&stun(t, 1, None)), "{t:#06x}");
        }
        for t in [BINDING_REQUEST, BINDING_SUCCESS, BINDING_INDICATION] {
            assert!(!is_turn(&stun(t, 1, None)), "{t:#06x}");
        }
        assert!(
            is_turn(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]),
            "channel data"
        );
        assert!(!is_turn(&[0x80, 96, 0, 1]), "RTP");
        assert!(!is_turn(&[22, 254, 253]), "DTLS");
        assert!(!is_turn(&[]));
    }

    #[test]
    fn truncated_and_foreign_packets_are_not_stun() {
        let check = stun(BINDING_REQUEST, 1, Some("camA:v"));
        for cut in 0..check.len() {
            // A cut message either parses within its stated length or not at all; never panics.
            let _ = Stun::parse(&check[..cut]).map(|s| s.local_ufrag());
        }
        assert!(Stun::parse(&check[..19]).is_none());
        let mut dtls = check.clone();
        dtls[0] = 22;
        assert!(Stun::parse(&dtls).is_none());
        let mut no_cookie = check.clone();
        no_cookie[4] = 0;
        assert!(Stun::parse(&no_cookie).is_none());
        // An attribute claiming more than is there.
        let mut long_attr = check;
        long_attr[HEADER_LEN + 2] = 0xff;
        assert!(Stun::parse(&long_attr).unwrap().local_ufrag().is_none());
    }
}
