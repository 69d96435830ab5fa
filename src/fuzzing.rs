//! Entry points for everything that parses network input, shared by the cargo-fuzz targets
//! (`fuzz/`) and the test that replays their seeds (`tests/it/fuzz_corpus.rs`), so the fuzzers
//! and `make test` exercise exactly the same code. Each must return normally for any input.
//! Built only with the `fuzzing` feature (src/lib.rs).

use crate::auth::{Authority, Right};
use crate::session::table::{Limits, SessionTable};
use crate::signalling::protocol::{self, Topics};
use std::time::{Duration, Instant, SystemTime};

/// A signalling message on a session topic, through parsing and the session table.
pub fn signalling(data: &[u8]) {
    let message = protocol::parse_inbound(data);
    if let Ok(protocol::Inbound::Offer { sdp, .. }) = &message {
        let _ = protocol::check_offer_sdp(sdp, true);
        let _ = crate::signalling::sdp::without_mdns_candidates(sdp);
    }
    let mut table = SessionTable::new(Limits::default());
    let now = Instant::now();
    let _ = table.on_message("fuzz", message.clone(), now);
    let _ = table.on_message("fuzz", message, now + Duration::from_millis(1));
}

/// A command on `R/command` or a data channel.
pub fn command(data: &[u8]) {
    let (_env, command) = crate::control::parse_request(data);
    if let Ok(cmd) = command {
        let _ = cmd.changes_state();
    }
}

/// Any topic a broker delivers, and the first line of the payload as a viewer token.
pub fn topic_and_token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (topic, token) = text.split_once('\n').unwrap_or((&text, ""));
    let _ = Topics::new("rtcam", "cam").classify(topic);
    let _ = protocol::is_valid_sid(topic);
    let _ = Authority::new("fuzz", "cam").verify(Some(token), Right::View, SystemTime::now());
}

/// An SDP offer on its own; and the same text as an answer or a candidate of rtcam's, as the
/// shared ports announce them.
pub fn sdp(data: &[u8]) {
    use crate::signalling::sdp::Announce;
    let text = String::from_utf8_lossy(data);
    let _ = protocol::check_offer_sdp(&text, true);
    let _ = crate::signalling::sdp::without_mdns_candidates(&text);
    let local = [std::net::IpAddr::from([10, 0, 0, 2])];
    let announce = Announce {
        udp_port: 8555,
        udp_ips: &local,
        tcp_port: 8556,
        tcp_ips: &local,
        public_ips: &[std::net::IpAddr::from([203, 0, 113, 9])],
    };
    let _ = announce.answer(&text);
    let _ = announce.candidate(&text);
    let _ = crate::signalling::sdp::ice_ufrag(&text);
}

/// A datagram on the shared WebRTC port (or an ICE-TCP connection's first message), from anyone.
pub fn shared_port(data: &[u8]) {
    crate::session::peer::fuzz_demux(data);
}

/// Bytes from an MQTT client at the gate: read as a connection's first packets (a CONNECT,
/// then whatever follows in the protocol it chose), and again as the packets after the
/// CONNECT of an MQTT 3.1.1 and of an MQTT 5 connection, each packet decided by the gate's
/// filter for a viewer, a control-token holder and a broker user.
pub fn gate_packets(data: &[u8]) {
    use crate::gate::codec::{self, Request, Version};
    use crate::gate::filter::PacketFilter;
    use crate::gate::policy::{Identity, Policy, Rights};
    use crate::gate::{MAX_INBOUND, MAX_SUBSCRIPTIONS};

    let policy = Policy::new(
        "rtcam/cam",
        "homeassistant",
        "rtcam-cam-fuzz0000",
        MAX_SUBSCRIPTIONS,
    );
    let control = Rights {
        view: true,
        control: true,
        ..Rights::default()
    };
    let identities = [Rights::VIEWER, control, Rights::OPERATOR].map(|rights| Identity {
        client_id: "fuzz1".to_string(),
        rights,
    });

    // Each packet through every identity's filter; a filter that ended its connection sees no
    // more. Returns the version of the CONNECT found on the way.
    let run = |version: Option<Version>| -> Option<Version> {
        let mut buf = bytes::BytesMut::from(data);
        let mut version = version;
        let mut filters: Vec<Option<PacketFilter>> = Vec::new();
        if let Some(v) = version {
            filters = identities
                .iter()
                .map(|id| Some(PacketFilter::new(v, id.clone())))
                .collect();
        }
        loop {
            let before = buf.len();
            let Ok(Some((raw, request))) = codec::read(&mut buf, version, MAX_INBOUND) else {
                return version;
            };
            assert!(buf.len() < before, "a packet read is taken from the buffer");
            if version.is_none() {
                // The first packet: only a CONNECT gets this far.
                let Request::Connect(connect) = &request else {
                    panic!("codec::read gave a first packet that is not a CONNECT");
                };
                version = Some(connect.version);
                for id in &identities {
                    let _ = policy.check_connect(&connect.client_id, &id.rights);
                    if let Some((topic, retain)) = &connect.will {
                        let _ = policy.check_publish(id, topic, *retain);
                    }
                }
                let _ = connect.rewritten("fuzz1", ("gate", "password"));
                filters = identities
                    .iter()
                    .map(|id| Some(PacketFilter::new(connect.version, id.clone())))
                    .collect();
                continue;
            }
            for slot in filters.iter_mut() {
                if let Some(filter) = slot {
                    let (step, _) = filter.check(&policy, (raw.clone(), request.clone()));
                    if matches!(step, crate::gate::filter::Step::End(_)) {
                        *slot = None;
                    }
                }
            }
        }
    };
    if let Some(v) = run(None) {
        let _ = codec::disconnect(v, codec::Goodbye::Malformed);
    }
    run(Some(Version::V311));
    run(Some(Version::V5));
}
