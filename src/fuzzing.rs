//! Entry points for everything that parses network input, shared by the cargo-fuzz targets
//! (`fuzz/`) and the test that replays their corpus (`tests/fuzz_corpus.rs`), so the fuzzers
//! and `make test` exercise exactly the same code. Each must return normally for any input.

use crate::auth::{Authority, Right};
use crate::session::table::{Limits, SessionTable};
use crate::signalling::protocol::{self, Topics};
use std::time::{Duration, Instant, SystemTime};

/// A signalling message on a session topic, through parsing and the session table.
pub fn signalling(data: &[u8]) {
    let message = protocol::parse_inbound(data);
    if let Ok(protocol::Inbound::Offer { sdp, .. }) = &message {
        let _ = protocol::check_offer_sdp(sdp, true);
        let _ = crate::session::peer::without_mdns_candidates(sdp);
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

/// An SDP offer on its own.
pub fn sdp(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = protocol::check_offer_sdp(&text, true);
    let _ = crate::session::peer::without_mdns_candidates(&text);
}
