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

/// Which door a session came through; shown in `sessions` and telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A WebRTC viewer signalling over MQTT (the page, MQTT clients).
    Mqtt,
    /// A WebRTC viewer signalling over WHEP (HTTP).
    Whep,
    /// A client of the RTSP door, which the session manager only counts.
    Rtsp,
}

impl Transport {
    /// The transport of the session keyed `sid`. A WHEP viewer's sid starts with
    /// [`whep::SID_PREFIX`], an RTSP client's key with `rtsp/` ([`Transport::key`]); an MQTT
    /// viewer's sid holds neither a `.` nor a `/` ([`protocol::is_valid_sid`]).
    pub fn of_sid(sid: &str) -> Transport {
        if sid.starts_with(whep::SID_PREFIX) {
            Transport::Whep
        } else if sid.starts_with("rtsp/") {
            Transport::Rtsp
        } else {
            Transport::Mqtt
        }
    }

    /// The session table's key for the viewer of a door without signalling (RTSP) that holds
    /// session `generation`.
    pub fn key(self, generation: u64) -> String {
        format!("{}/{generation}", self.as_str())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Whep => "whep",
            Transport::Rtsp => "rtsp",
        }
    }
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
            // The RTSP door has no signalling: the manager ends its clients through their
            // own queue (`session::Joined`).
            Transport::Rtsp => continue,
        };
        let _ = to.send(out).await;
    }
}
