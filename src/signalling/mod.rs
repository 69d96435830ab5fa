//! Signalling: how viewers and rtcam exchange SDP and ICE candidates.
//!
//! [`protocol`] is the wire format (pure); [`sdp`] reads an offer's SDP once (pure); [`mqtt`] carries it over an MQTT broker. The session
//! manager only sees [`SignalEvent`]s and sends [`Outgoing`]s, so another transport (WHEP over
//! HTTP, say) would be one more adapter beside `mqtt`, not a change to sessions.

pub mod message;
pub mod mqtt;
pub mod protocol;
pub mod sdp;

use protocol::{Inbound, Outbound, ProtocolError};

/// One message from one viewer, already parsed (or refused with the reason to send back).
#[derive(Debug)]
pub struct SignalEvent {
    pub sid: String,
    pub message: Result<Inbound, ProtocolError>,
}

/// One message for one viewer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub sid: String,
    pub message: Outbound,
}
