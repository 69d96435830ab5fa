//! One WebRTC peer connection that sends rtcam's video (and, with `[audio]`, its sound, and
//! receives the viewer's for talkback): the only module that uses the `webrtc` and `rtc` crates.
//!
//! It hides the crate's types behind rtcam's own ([`PeerEvent`], [`Candidate`]), and carries
//! the workarounds the crate needs (see the comments at each), so the session logic reads as
//! the protocol does. [`codecs`] says what is registered, [`negotiation`] answers an offer,
//! [`events`] turns the crate's callbacks into [`PeerEvent`]s, [`feedback`] catches the
//! viewer's RTCP inside the crate's interceptor chain.

mod codecs;
mod events;
mod feedback;
mod mux;
mod negotiation;
mod playout;
mod tap;

pub use events::{ChannelEvent, ControlChannel, Microphone, PeerEvent, PeerState};
pub use feedback::Feedback;
pub use negotiation::{check_config, Offer, PeerFactory};

#[cfg(feature = "fuzzing")]
pub use mux::fuzz_demux;

use super::stats::LinkPath;
use crate::media::audio::AudioPacket;
use crate::media::EncodedFrame;
use crate::signalling::protocol::Candidate;
use feedback::{is_keyframe_request, lock, FeedbackLog};
use rtc::media::Sample;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use webrtc::error::Error as WebrtcError;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    PeerConnection, RTCIceCandidateInit, RTCSessionDescription, RTCStatsReportEntry, StatsSelector,
};
use webrtc::rtp_transceiver::RtpSender;

/// What audio rtcam may negotiate with a viewer (from `[audio]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AudioOptions {
    /// The camera has a microphone: answer an offer's Opus audio section with a track.
    pub send: bool,
    /// Play what the viewer sends on that section (talkback).
    pub talkback: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The viewer's offer (or a candidate of it) is unusable: the viewer's mistake.
    #[error("the offer was refused")]
    Offer(#[source] WebrtcError),
    #[error("WebRTC setup failed")]
    Setup(#[source] WebrtcError),
    #[error("cannot make the DTLS certificate")]
    Certificate(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("no local description after setting it")]
    NoLocalDescription,
    #[error("no negotiated {0} codec")]
    NoCodec(&'static str),
    /// Writing media or a data channel message failed: the connection is going away.
    #[error("cannot send")]
    Send(#[source] WebrtcError),
    #[error("no network address to offer ICE candidates on")]
    NoAddress,
    /// A shared port (`[webrtc] udp_port`, `tcp_port`) cannot be had: a fatal error at start.
    #[error("cannot listen for WebRTC on {addr} ({key})")]
    Port {
        key: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A viewer's peer connection and the tracks rtcam writes to.
pub struct Peer {
    pc: Box<dyn PeerConnection>,
    video: SendTrack,
    /// The audio track, when this viewer's offer took audio.
    audio: Option<SendTrack>,
    /// The media id to stamp on outgoing candidates; the crate leaves it empty.
    mid: String,
    /// What the viewer's RTCP said, written by the interceptors on the crate's side.
    feedback: Arc<Mutex<FeedbackLog>>,
    /// Cancelled when the connection closes: ends its control channels.
    closed: CancellationToken,
    /// Its place on the shared UDP port, if rtcam has one.
    mux: Option<Arc<mux::MuxSession>>,
}

/// One track rtcam sends on and what writing to it needs.
struct SendTrack {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    /// The payload type the viewer chose for the codec; every packet must carry it (browsers
    /// pick their own number, not the one rtcam registered). Read once the connection is up.
    payload_type: Option<u8>,
    /// `video` or `audio`, for errors.
    kind: &'static str,
}

impl SendTrack {
    /// The payload type the viewer chose, read once the connection is up and then kept.
    async fn payload_type(&mut self) -> Result<u8, PeerError> {
        if let Some(pt) = self.payload_type {
            return Ok(pt);
        }
        let params = self
            .sender
            .get_parameters()
            .await
            .map_err(PeerError::Setup)?;
        let pt = params
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .ok_or(PeerError::NoCodec(self.kind))?;
        self.payload_type = Some(pt);
        Ok(pt)
    }

    async fn write(&mut self, sample: &Sample) -> Result<(), PeerError> {
        let pt = self.payload_type().await?;
        self.track
            .sample_writer(self.ssrc, pt)
            .write_sample(sample)
            .await
            .map_err(PeerError::Send)
    }
}

impl Peer {
    pub async fn add_remote_candidate(&self, c: &Candidate) -> Result<(), PeerError> {
        let init = RTCIceCandidateInit {
            candidate: c.candidate.clone(),
            sdp_mid: c.sdp_mid.clone(),
            sdp_mline_index: c.sdp_mline_index,
            ..Default::default()
        };
        self.pc
            .add_ice_candidate(init)
            .await
            .map_err(PeerError::Offer)
    }

    /// Renegotiates on the viewer's `offer` with new ICE credentials: the crate restarts ICE
    /// as the answerer, and the answer (returned) carries rtcam's new credentials. Tracks and
    /// their SSRCs stay; only the connectivity checks start over.
    pub async fn restart_ice(&self, offer: &str) -> Result<String, PeerError> {
        let offer = RTCSessionDescription::offer(offer.to_owned()).map_err(PeerError::Offer)?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(PeerError::Offer)?;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(PeerError::Offer)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(PeerError::Setup)?;
        let answer = self
            .pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or(PeerError::NoLocalDescription)?;
        Ok(match &self.mux {
            Some(mux) => mux.answer(&answer),
            None => answer,
        })
    }

    /// Waits for the viewer's next PLI or FIR (its decoder lost the picture); pends forever
    /// once the track is gone. Cancel-safe: the track's event queue keeps undelivered events.
    pub async fn keyframe_request(&self) {
        loop {
            match self.video.track.poll().await {
                Some(TrackLocalEvent::OnRtcpPacket(packets))
                    if packets.iter().any(|p| is_keyframe_request(p.as_ref())) =>
                {
                    return
                }
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// The viewer's feedback since the last call (reports), and counters since the start.
    pub fn take_feedback(&self) -> Feedback {
        lock(&self.feedback).take()
    }

    pub fn mid(&self) -> &str {
        &self.mid
    }

    /// Sends one encoded frame. Errors mean the connection is going away.
    pub async fn write_frame(&mut self, frame: &EncodedFrame) -> Result<(), PeerError> {
        let sample = Sample {
            data: frame.data.clone(),
            duration: frame.duration,
            ..Sample::new(frame.produced)
        };
        self.video.write(&sample).await
    }

    /// Whether this viewer negotiated audio (its offer had an Opus section).
    pub fn has_audio(&self) -> bool {
        self.audio.is_some()
    }

    /// Sends one Opus packet; does nothing for a viewer without audio. Errors mean the
    /// connection is going away.
    pub async fn write_audio(&mut self, packet: &AudioPacket) -> Result<(), PeerError> {
        let Some(out) = self.audio.as_mut() else {
            return Ok(());
        };
        let sample = Sample {
            data: packet.data.clone(),
            duration: packet.duration,
            ..Sample::new(Instant::now())
        };
        out.write(&sample).await
    }

    /// The round-trip time of the nominated candidate pair (ICE's checks measure it) and what
    /// the pair is, once known. The round trip is also handed to the interceptor that resends
    /// a packet at most once per round trip.
    pub async fn link(&self) -> (Option<Duration>, Option<LinkPath>) {
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let Some(pair) = report.iter().find_map(|entry| match entry {
            RTCStatsReportEntry::IceCandidatePair(pair) if pair.nominated => Some(pair),
            _ => None,
        }) else {
            return (None, None);
        };
        let rtt = (pair.current_round_trip_time > 0.0)
            .then(|| Duration::from_secs_f64(pair.current_round_trip_time));
        if rtt.is_some() {
            lock(&self.feedback).rtt = rtt;
        }
        let candidate = |id: &str| {
            report.iter().find_map(|entry| match entry {
                RTCStatsReportEntry::LocalCandidate(c)
                | RTCStatsReportEntry::RemoteCandidate(c)
                    if c.stats.id.ends_with(id) =>
                {
                    Some(c)
                }
                _ => None,
            })
        };
        let local = candidate(&pair.local_candidate_id);
        // The crate keeps no stats for a remote candidate learned from checks: peer-reflexive.
        let remote = candidate(&pair.remote_candidate_id);
        let path = local.map(|l| LinkPath {
            protocol: l.protocol.to_ascii_lowercase(),
            local: l.candidate_type.to_string(),
            remote: remote.map_or_else(|| "prflx".to_owned(), |r| r.candidate_type.to_string()),
        });
        (rtt, path)
    }

    pub async fn close(&self) {
        self.closed.cancel();
        if let Err(e) = self.pc.close().await {
            tracing::debug!("closing peer connection: {e}");
        }
    }
}

impl Drop for Peer {
    /// A session that ends without closing (its task aborted) still ends its control channels.
    fn drop(&mut self) {
        self.closed.cancel();
    }
}
