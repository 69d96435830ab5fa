//! What the WebRTC crate reports about a peer connection, turned into rtcam's [`PeerEvent`]s,
//! and the viewer-opened things those events hand over: its microphone and its control channel.

use crate::signalling::protocol::Candidate;
use rtc::rtp::codec::opus::OpusPacket;
use rtc::rtp::packetizer::Depacketizer;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCIceConnectionState, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState,
};

use super::PeerError;

/// Connection states rtcam acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

/// What a peer connection reports to its session.
pub enum PeerEvent {
    LocalCandidate(Candidate),
    GatheringComplete,
    /// ICE found a working pair; DTLS starts now, and media can flow once it is done.
    IceConnected,
    State(PeerState),
    /// The viewer opened a data channel labelled `control`.
    ControlChannel(ControlChannel),
    /// The viewer's microphone arrived (talkback enabled, sendrecv audio section).
    Microphone(Microphone),
}

/// A viewer's microphone: Opus packets out of its RTP.
pub struct Microphone {
    track: Arc<dyn TrackRemote>,
    depacketizer: OpusPacket,
}

impl Microphone {
    /// The next Opus packet; `None` once the track has ended. Cancel-safe: the track's event
    /// queue keeps what was not yet taken, and a packet is depacketized only once taken.
    pub async fn next(&mut self) -> Option<bytes::Bytes> {
        loop {
            match self.track.poll().await? {
                TrackRemoteEvent::OnRtpPacket(packet) => {
                    // A malformed payload is the viewer's loss, not a reason to stop listening.
                    match self.depacketizer.depacketize(&packet.payload) {
                        Ok(opus) if !opus.is_empty() => return Some(opus),
                        _ => {}
                    }
                }
                TrackRemoteEvent::OnEnded => return None,
                _ => {}
            }
        }
    }
}

/// The viewer's `control` data channel: text messages both ways. It closes with its peer
/// connection, so whoever serves it needs no word from the session to stop.
pub struct ControlChannel {
    dc: Arc<dyn DataChannel>,
    /// Cancelled when the peer connection closes (see `Peer::close`), or by the session
    /// through [`ControlChannel::ender`].
    ended: CancellationToken,
}

/// What arrives on a control channel.
pub enum ChannelEvent {
    Message(bytes::Bytes),
    Closed,
}

/// Largest message rtcam reads from a data channel; commands are small.
const MAX_CHANNEL_MESSAGE: usize = 16 * 1024;

impl ControlChannel {
    /// The next message, skipping open/buffer events; `Closed` once the channel or its peer
    /// connection is gone.
    pub async fn next(&self) -> ChannelEvent {
        loop {
            let event = tokio::select! {
                // Cancel-safe: level-triggered token.
                () = self.ended.cancelled() => return ChannelEvent::Closed,
                // Cancel-safe: the channel's event queue keeps what was not yet taken.
                event = self.dc.poll() => event,
            };
            match event {
                Some(DataChannelEvent::OnMessage(msg)) => {
                    if msg.data.len() > MAX_CHANNEL_MESSAGE {
                        continue;
                    }
                    return ChannelEvent::Message(bytes::Bytes::copy_from_slice(&msg.data));
                }
                Some(DataChannelEvent::OnClose) | None => return ChannelEvent::Closed,
                Some(_) => {}
            }
        }
    }

    /// Ends the channel for whoever serves it (a session does when its viewer opens another).
    pub fn ender(&self) -> CancellationToken {
        self.ended.clone()
    }

    pub async fn send(&self, text: &str) -> Result<(), PeerError> {
        self.dc.send_text(text).await.map_err(PeerError::Send)
    }
}

/// Turns the crate's callbacks into [`PeerEvent`]s on the session's queue.
pub(super) struct Handler {
    pub(super) events: mpsc::UnboundedSender<PeerEvent>,
    /// Hand the viewer's audio track to the session (talkback); otherwise it is ignored.
    pub(super) talkback: bool,
    /// Handed to control channels, which end with the connection.
    pub(super) peer_closed: CancellationToken,
    /// On the shared port, candidates are announced with it.
    pub(super) mux: Option<Arc<super::mux::MuxSession>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let candidate = match &self.mux {
                Some(mux) => mux.announce_candidate(&init.candidate),
                None => init.candidate,
            };
            let _ = self.events.send(PeerEvent::LocalCandidate(Candidate {
                candidate,
                sdp_mid: init.sdp_mid.filter(|m| !m.is_empty()),
                sdp_mline_index: init.sdp_mline_index,
            }));
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        // The crate sends no null end-of-candidates event; gathering complete is the signal.
        if state == RTCIceGatheringState::Complete {
            let _ = self.events.send(PeerEvent::GatheringComplete);
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        // Only the control channel is rtcam's; any other is left unanswered.
        if dc.label().await.is_ok_and(|l| l == "control") {
            let _ = self.events.send(PeerEvent::ControlChannel(ControlChannel {
                dc,
                ended: self.peer_closed.child_token(),
            }));
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if state == RTCIceConnectionState::Connected {
            let _ = self.events.send(PeerEvent::IceConnected);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if self.talkback && track.kind().await == RtpCodecKind::Audio {
            let _ = self.events.send(PeerEvent::Microphone(Microphone {
                track,
                depacketizer: OpusPacket,
            }));
        } else {
            // Unwanted media (a viewer sending sound to a camera without talkback) is read and
            // dropped: left unread, the track's queue fills and the crate logs every packet
            // it then has to drop. Ends with the track, when the connection closes.
            tokio::spawn(async move { while track.poll().await.is_some() {} });
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let state = match state {
            RTCPeerConnectionState::Connected => PeerState::Connected,
            RTCPeerConnectionState::Disconnected => PeerState::Disconnected,
            RTCPeerConnectionState::Failed => PeerState::Failed,
            RTCPeerConnectionState::Closed => PeerState::Closed,
            _ => PeerState::Connecting,
        };
        let _ = self.events.send(PeerEvent::State(state));
    }
}
