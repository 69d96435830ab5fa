//! Signalling: how viewers and rtcam exchange SDP and ICE candidates.
//!
//! [`protocol`] is the wire format (pure); [`sdp`] reads an offer's SDP once (pure); [`mqtt`] carries it over an MQTT broker. The session
//! manager only sees [`SignalEvent`]s and sends [`Outgoing`]s, so another transport is one more
//! adapter beside `mqtt`, not a change to sessions: WHEP over HTTP is one ([`whep`] is its
//! protocol, pure; `http::whep` its handlers), and [`route`] hands each reply to the transport
//! its sid belongs to.

pub mod message;
pub mod mqtt;
pub mod protocol;
pub mod sdp;
pub mod whep;

use protocol::{Inbound, Outbound, ProtocolError};
use tokio::sync::mpsc;
use whep::Transport;

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

/// Hands each of the session manager's messages to the transport of its viewer (by its sid,
/// [`Transport::of_sid`]) until the manager is gone. A transport that has stopped loses its
/// messages; the other carries on.
pub async fn route(
    mut from_sessions: mpsc::Receiver<Outgoing>,
    mqtt: mpsc::Sender<Outgoing>,
    whep: mpsc::Sender<Outgoing>,
) {
    while let Some(out) = from_sessions.recv().await {
        let to = match Transport::of_sid(&out.sid) {
            Transport::Mqtt => &mqtt,
            Transport::Whep => &whep,
        };
        let _ = to.send(out).await;
    }
}
