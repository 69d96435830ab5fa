//! One WebRTC peer connection that sends rtcam's video (and, with `[audio]`, its sound, and
//! receives the viewer's for talkback): the only file that uses the `webrtc` and `rtc` crates.
//!
//! It hides the crate's types behind rtcam's own ([`PeerEvent`], [`Candidate`]), and carries
//! the workarounds the crate needs (see the comments at each), so the session logic reads as
//! the protocol does.

use super::adapt::{LossCounter, Losses};
use crate::config::WebrtcConfig;
use crate::media::audio::AudioPacket;
use crate::codec::VideoCodec;
use crate::media::EncodedFrame;
use crate::signalling::protocol::Candidate;
use rtc::crypto::SignatureScheme;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{
    Attribute, Interceptor, Packet as InterceptorPacket, Slot, StreamInfo, TaggedPacket,
};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp::codec::opus::OpusPacket;
use rtc::rtp::packetizer::Depacketizer;
use rtc::rtp_transceiver::rtp_sender::RTCPFeedback;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCIceConnectionState, RTCIceGatheringState, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, RTCStatsReportEntry, Registry,
    SettingEngineBuilder, StatsSelector,
};

/// The H.264 rtcam sends: constrained baseline, packetization mode 1 (what every browser
/// decodes). Two profile-level-ids are registered because browsers offer both spellings of
/// baseline; either matches the same stream.
const H264_FMTPS: [(&str, u8); 2] = [
    (
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        102,
    ),
    (
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        127,
    ),
];

/// How often ICE checks a candidate pair while connecting, and how many checks a pair gets
/// (together 1.4 s, the crate's default budget, at a tenth of its 200 ms pacing).
const ICE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);
const ICE_MAX_BINDING_REQUESTS: u16 = 70;
/// The longest rtcam holds its answer back for its host candidates (they take a few ms).
const HOST_GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// The Opus rtcam registers when it negotiates audio: what browsers offer (RFC 7587 always
/// says two channels; the stream itself is mono), with in-band FEC allowed.
const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";
const OPUS_PT: u8 = 111;

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
    #[error("the offer was refused: {0}")]
    Offer(String),
    #[error("WebRTC setup failed: {0}")]
    Setup(String),
    #[error("no network address to offer ICE candidates on")]
    NoAddress,
}

fn setup(e: impl std::fmt::Display) -> PeerError {
    PeerError::Setup(e.to_string())
}

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

/// The viewer's `control` data channel: text messages both ways.
pub struct ControlChannel {
    dc: Arc<dyn DataChannel>,
}

/// What arrives on a control channel.
pub enum ChannelEvent {
    Message(bytes::Bytes),
    Closed,
}

/// Largest message rtcam reads from a data channel; commands are small.
const MAX_CHANNEL_MESSAGE: usize = 16 * 1024;

impl ControlChannel {
    /// The next message, skipping open/buffer events; `Closed` once the channel is gone.
    pub async fn next(&self) -> ChannelEvent {
        loop {
            match self.dc.poll().await {
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

    pub async fn send(&self, text: &str) -> Result<(), PeerError> {
        self.dc.send_text(text).await.map_err(setup)
    }
}

/// Builds peer connections with what every viewer shares: ICE servers, addresses, certificate.
pub struct PeerFactory {
    /// Derived TURN credentials are made per peer, so a long-running rtcam never allocates
    /// with expired ones.
    ice_servers: Arc<crate::turn::IceServers>,
    configured_addrs: Vec<IpAddr>,
    /// Generated once: an ECDSA key per viewer would add tens of milliseconds to every join.
    certificate: RTCCertificate,
}

impl PeerFactory {
    pub fn new(
        cfg: &WebrtcConfig,
        ice_servers: Arc<crate::turn::IceServers>,
    ) -> Result<Self, PeerError> {
        let provider = rtc::crypto::default_provider().map_err(setup)?;
        let certificate = RTCCertificate::generate(
            provider.crypto(),
            SignatureScheme::EcdsaP256Sha256,
            CertificateParams::new(vec!["rtcam".to_owned()]).map_err(setup)?,
        )
        .map_err(setup)?;
        Ok(Self {
            ice_servers,
            configured_addrs: cfg.udp_addrs.clone(),
            certificate,
        })
    }

    /// Local addresses to gather candidates on. The crate skips loopback when bound to the
    /// wildcard address, and a viewer on the board itself (or a test) needs loopback, so rtcam
    /// binds each interface address on its own. Looked up per session: DHCP and Wi-Fi change them.
    fn udp_addrs(&self) -> Vec<String> {
        let ips: Vec<IpAddr> = if self.configured_addrs.is_empty() {
            if_addrs::get_if_addrs()
                .unwrap_or_default()
                .into_iter()
                .map(|i| i.ip())
                // IPv6 link-local addresses need a scope id the candidate cannot carry.
                .filter(|ip| match ip {
                    IpAddr::V4(v4) => !v4.is_link_local(),
                    IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
                })
                .collect()
        } else {
            self.configured_addrs.clone()
        };
        ips.into_iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => format!("{v4}:0"),
                IpAddr::V6(v6) => format!("[{v6}]:0"),
            })
            .collect()
    }

    /// Creates a peer for one viewer's offer and returns it with the answer SDP, sending
    /// `codec` (decided from the offer). Candidates and state changes arrive on `events`.
    pub async fn answer(
        &self,
        offer_sdp: &str,
        codec: VideoCodec,
        events: mpsc::UnboundedSender<PeerEvent>,
        audio: AudioOptions,
    ) -> Result<(Peer, String), PeerError> {
        let mut media = MediaEngine::default();
        // Opus is registered only for an offer that can take it: a video-only offer (or any
        // offer to a camera without audio) meets exactly the media engine it always did, and
        // an audio section without Opus is refused in the answer as before.
        let with_audio = audio.send && offers_opus(offer_sdp);
        if with_audio {
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: opus_codec(),
                        payload_type: OPUS_PT,
                    },
                    RtpCodecKind::Audio,
                )
                .map_err(setup)?;
        }
        let feedback = vec![
            RTCPFeedback {
                typ: "goog-remb".into(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "ccm".into(),
                parameter: "fir".into(),
            },
            RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "nack".into(),
                parameter: "pli".into(),
            },
        ];
        // Only the codec this viewer gets is registered: the answer then cannot pick another,
        // and the one track carries exactly what its encoder produces.
        let codecs: Vec<(RTCRtpCodec, u8)> = match codec {
            VideoCodec::H264 => H264_FMTPS
                .iter()
                .map(|(fmtp, pt)| (h264_codec(fmtp, feedback.clone()), *pt))
                .collect(),
            VideoCodec::Vp8 => vec![(vp8_codec(feedback.clone()), VP8_PAYLOAD_TYPE)],
        };
        for (rtp_codec, payload_type) in codecs {
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec,
                        payload_type,
                    },
                    RtpCodecKind::Video,
                )
                .map_err(setup)?;
        }
        let registry = register_default_interceptors(Registry::new(), &mut media).map_err(setup)?;
        let ssrc = rand::random::<u32>();
        let feedback = Arc::new(Mutex::new(FeedbackLog::default()));
        // Application-most slot: every other interceptor (NACK, reports, congestion feedback)
        // has seen the inbound RTCP before this one hands keyframe requests to rtcam and notes
        // the viewer's reception reports for bitrate adaptation.
        let registry = registry
            .with(
                Slot::from(14_000),
                KeyframeRequests {
                    ssrc,
                    feedback: Arc::clone(&feedback),
                    read: VecDeque::new(),
                    write: VecDeque::new(),
                },
            )
            // Wire-ward of the NACK responder (4_000), which emits its resends from there on
            // the write leg, tagged as retransmissions: here they can be counted.
            .with(
                Slot::from(3_500),
                Retransmissions {
                    feedback: Arc::clone(&feedback),
                    guard: ResendGuard::default(),
                    read: VecDeque::new(),
                    write: VecDeque::new(),
                },
            );
        let settings = SettingEngineBuilder::new()
            .with_include_loopback_candidate(true)
            // The crate's default (query mode) binds UDP 5353 for every viewer, where a board's
            // avahi already listens. rtcam does not need it: see `without_mdns_candidates`.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            // The crate checks a candidate pair every 200 ms, and rtcam, the controlled side,
            // only calls a pair usable after its own check on it succeeds: that tick alone was
            // most of the time to first frame (docs/benchmarks.md). Checking every 20 ms while
            // connecting costs a few STUN packets; the attempt budget keeps the crate's 1.4 s
            // per pair so slow links (TURN, lossy Wi-Fi) are not given up on sooner.
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
            .build();
        let addrs = self.udp_addrs();
        if addrs.is_empty() {
            return Err(PeerError::NoAddress);
        }
        let host_candidates = addrs.len();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(
                        self.ice_servers
                            .for_rtcam(std::time::SystemTime::now())
                            .into_iter()
                            .map(|s| RTCIceServer {
                                urls: s.urls,
                                username: s.username,
                                credential: s.credential,
                            })
                            .collect(),
                    )
                    .with_certificates(vec![self.certificate.clone()])
                    .build(),
            )
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Handler {
                events,
                talkback: with_audio && audio.talkback,
            }))
            .with_udp_addrs(addrs)
            .build()
            .await
            .map_err(setup)?;
        // From here on a failure must close the connection: dropping it unclosed leaves its
        // driver task running, with its socket, for the life of the process.
        match Self::negotiate(&pc, offer_sdp, codec, with_audio, ssrc, host_candidates).await {
            Ok(n) => {
                let mid = first_mid(&n.answer_sdp).unwrap_or_else(|| "0".into());
                let peer = Peer {
                    pc: Box::new(pc),
                    track: n.track,
                    sender: n.sender,
                    ssrc: n.ssrc,
                    payload_type: None,
                    mid,
                    audio: n.audio,
                    feedback,
                };
                Ok((peer, n.answer_sdp))
            }
            Err(e) => {
                if let Err(close) = pc.close().await {
                    tracing::debug!("closing a peer connection that failed to answer: {close}");
                }
                Err(e)
            }
        }
    }

    /// Adds rtcam's tracks, applies the offer and makes the answer.
    async fn negotiate(
        pc: &impl PeerConnection,
        offer_sdp: &str,
        codec: VideoCodec,
        with_audio: bool,
        // The interceptor notes only feedback about this SSRC, so the track must use it.
        ssrc: u32,
        // Host candidates to wait for before answering: one per address rtcam listens on.
        host_candidates: usize,
    ) -> Result<Negotiated, PeerError> {
        let track = Arc::new(
            TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
                    "rtcam".to_owned(),
                    "video".to_owned(),
                    "rtcam video".to_owned(),
                    RtpCodecKind::Video,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        // The crate's default encoding is inactive; an inactive one sends nothing.
                        active: true,
                        codec: match codec {
                            VideoCodec::H264 => h264_codec(H264_FMTPS[0].0, vec![]),
                            VideoCodec::Vp8 => vp8_codec(vec![]),
                        },
                        ..Default::default()
                    }],
                ),
            )
            .map_err(setup)?,
        );
        let sender = pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .map_err(setup)?;

        // Added with both directions: the crate pairs a viewer's sendrecv section (a browser
        // sending its microphone) only with a sendrecv or recvonly transceiver, and a recvonly
        // section with this one too. Without talkback, whatever the viewer sends is dropped.
        let audio_out = if with_audio {
            let ssrc = rand::random::<u32>();
            let track = Arc::new(
                TrackLocalStaticSample::new(
                    Instant::now(),
                    MediaStreamTrack::new(
                        "rtcam".to_owned(),
                        "audio".to_owned(),
                        "rtcam audio".to_owned(),
                        RtpCodecKind::Audio,
                        vec![RTCRtpEncodingParameters {
                            rtp_coding_parameters: RTCRtpCodingParameters {
                                ssrc: Some(ssrc),
                                ..Default::default()
                            },
                            active: true,
                            codec: opus_codec(),
                            ..Default::default()
                        }],
                    ),
                )
                .map_err(setup)?,
            );
            let sender = pc
                .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await
                .map_err(setup)?;
            Some(AudioOut {
                track,
                sender,
                ssrc,
                payload_type: None,
            })
        } else {
            None
        };

        let offer = RTCSessionDescription::offer(without_mdns_candidates(offer_sdp))
            .map_err(|e| PeerError::Offer(e.to_string()))?;
        pc.set_remote_description(offer)
            .await
            .map_err(|e| PeerError::Offer(e.to_string()))?;
        let answer = pc
            .create_answer(None)
            .await
            .map_err(|e| PeerError::Offer(e.to_string()))?;
        pc.set_local_description(answer).await.map_err(setup)?;
        // The answer carries rtcam's host candidates: gathering them takes a few milliseconds,
        // and a viewer that knows them checks them at once. Without them rtcam's first checks
        // (every 20 ms) reach the viewer before its trickled candidates do; the viewer then
        // knows rtcam only as a peer-reflexive address, which webrtc-rs viewers accept only
        // after a second (docs/benchmarks.md). Server-reflexive and relay candidates, which
        // take round trips, still trickle.
        let deadline = Instant::now() + HOST_GATHER_WAIT;
        let local = loop {
            let local = pc
                .local_description()
                .await
                .ok_or_else(|| setup("no local description after setting it"))?;
            if local.sdp.matches("a=candidate:").count() >= host_candidates
                || Instant::now() >= deadline
            {
                break local;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        };
        Ok(Negotiated {
            track,
            sender,
            ssrc,
            audio: audio_out,
            answer_sdp: local.sdp,
        })
    }
}

/// The payload type the viewer chose for a sender's codec, read once the connection is up and
/// then kept in `cached`: browsers pick their own number, and every packet must carry it.
async fn payload_type(
    sender: &Arc<dyn webrtc::rtp_transceiver::RtpSender>,
    cached: &mut Option<u8>,
    kind: &str,
) -> Result<u8, PeerError> {
    if let Some(pt) = *cached {
        return Ok(pt);
    }
    let params = sender.get_parameters().await.map_err(setup)?;
    let pt = params
        .rtp_parameters
        .codecs
        .first()
        .map(|c| c.payload_type)
        .ok_or_else(|| setup(format!("no negotiated {kind} codec")))?;
    *cached = Some(pt);
    Ok(pt)
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS.to_owned(),
        clock_rate: crate::media::audio::OPUS_RATE,
        channels: 2,
        sdp_fmtp_line: OPUS_FMTP.to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Whether the offer has an audio section that lists Opus (`a=rtpmap:N opus/48000/2`).
pub fn offers_opus(sdp: &str) -> bool {
    let mut in_audio = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            // A section with port 0 is rejected or stopped; nothing to answer there.
            in_audio = m.starts_with("audio ") && !m.starts_with("audio 0 ");
        } else if in_audio
            && line.starts_with("a=rtpmap:")
            && line
                .split_whitespace()
                .nth(1)
                .is_some_and(|codec| codec.to_ascii_lowercase().starts_with("opus/48000"))
        {
            return true;
        }
    }
    false
}

/// VP8 for viewers without H.264; the number is the one browsers use, though they may pick
/// their own (see `Peer::payload_type`).
const VP8_PAYLOAD_TYPE: u8 = 96;

fn vp8_codec(rtcp_feedback: Vec<RTCPFeedback>) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback,
    }
}

/// What negotiating a viewer's offer produced, before it becomes a [`Peer`].
struct Negotiated {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn webrtc::rtp_transceiver::RtpSender>,
    ssrc: u32,
    audio: Option<AudioOut>,
    answer_sdp: String,
}

fn h264_codec(fmtp: &str, rtcp_feedback: Vec<RTCPFeedback>) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback,
    }
}

/// A viewer's peer connection and the track rtcam writes to.
pub struct Peer {
    pc: Box<dyn PeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn webrtc::rtp_transceiver::RtpSender>,
    ssrc: u32,
    /// The payload type the viewer chose for the codec; every packet must carry it (browsers pick
    /// their own number, not the one rtcam registered). Read once the connection is up.
    payload_type: Option<u8>,
    /// The media id to stamp on outgoing candidates; the crate leaves it empty.
    mid: String,
    /// The audio track, when this viewer's offer took audio.
    audio: Option<AudioOut>,
    /// What the viewer's RTCP said, written by the interceptor on the crate's side.
    feedback: Arc<Mutex<FeedbackLog>>,
}

/// The viewer's reception feedback since the last [`Peer::take_feedback`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Feedback {
    /// Packets lost out of those expected, by the receiver reports that came.
    pub losses: Losses,
    /// Interarrival jitter from the latest report, in RTP timestamp units (1/90000 s).
    pub jitter: Option<u32>,
    /// The latest REMB, if the viewer sends them.
    pub remb_kbps: Option<u32>,
    /// Packets the viewer asked to be resent (NACK), since the session began.
    pub nacked_packets: u64,
    /// Packets the crate's NACK responder resent (those it still held, each at most once per
    /// round trip), since the session began.
    pub retransmitted_packets: u64,
}

/// What the interceptor accumulates between two reads.
#[derive(Debug, Default)]
struct FeedbackLog {
    loss: LossCounter,
    losses: Losses,
    jitter: Option<u32>,
    remb_kbps: Option<u32>,
    nacked_packets: u64,
    retransmitted_packets: u64,
    /// The connection's latest round-trip time, which [`Retransmissions`] holds resends to.
    rtt: Option<std::time::Duration>,
}

impl FeedbackLog {
    /// The feedback so far; report figures start again from nothing, counters keep counting.
    fn take(&mut self) -> Feedback {
        let taken = Feedback {
            losses: self.losses,
            jitter: self.jitter.take(),
            remb_kbps: self.remb_kbps.take(),
            nacked_packets: self.nacked_packets,
            retransmitted_packets: self.retransmitted_packets,
        };
        self.losses = Losses::default();
        taken
    }
}

/// The viewer's audio track and what writing to it needs (as for video).
struct AudioOut {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn webrtc::rtp_transceiver::RtpSender>,
    ssrc: u32,
    payload_type: Option<u8>,
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
            .map_err(|e| PeerError::Offer(e.to_string()))
    }

    /// Waits for the viewer's next PLI or FIR (its decoder lost the picture); pends forever
    /// once the track is gone. Cancel-safe: the track's event queue keeps undelivered events.
    pub async fn keyframe_request(&self) {
        loop {
            match self.track.poll().await {
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
        // A poisoned lock means the interceptor panicked mid-update; its numbers are still
        // plain counters, good enough to read.
        self.feedback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub fn mid(&self) -> &str {
        &self.mid
    }

    /// Sends one encoded frame. Errors mean the connection is going away.
    pub async fn write_frame(&mut self, frame: &EncodedFrame) -> Result<(), PeerError> {
        let pt = payload_type(&self.sender, &mut self.payload_type, "video").await?;
        let sample = Sample {
            data: frame.data.clone(),
            duration: frame.duration,
            ..Sample::new(frame.produced)
        };
        self.track
            .sample_writer(self.ssrc, pt)
            .write_sample(&sample)
            .await
            .map_err(setup)
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
        let pt = payload_type(&out.sender, &mut out.payload_type, "audio").await?;
        let sample = Sample {
            data: packet.data.clone(),
            duration: packet.duration,
            ..Sample::new(Instant::now())
        };
        out.track
            .sample_writer(out.ssrc, pt)
            .write_sample(&sample)
            .await
            .map_err(setup)
    }

    /// Round-trip time to the viewer from the nominated ICE pair's latest check, if measured.
    /// The round-trip time of the nominated candidate pair (ICE's checks measure it), if known.
    /// It is also handed to the interceptor that resends a packet at most once per round trip.
    pub async fn rtt(&self) -> Option<std::time::Duration> {
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let rtt = report
            .iter()
            .filter_map(|entry| match entry {
                RTCStatsReportEntry::IceCandidatePair(pair) if pair.nominated => {
                    Some(pair.current_round_trip_time)
                }
                _ => None,
            })
            .find(|rtt| *rtt > 0.0)
            .map(std::time::Duration::from_secs_f64);
        if rtt.is_some() {
            self.feedback.lock().unwrap_or_else(|e| e.into_inner()).rtt = rtt;
        }
        rtt
    }

    pub async fn close(&self) {
        if let Err(e) = self.pc.close().await {
            tracing::debug!("closing peer connection: {e}");
        }
    }
}

struct Handler {
    events: mpsc::UnboundedSender<PeerEvent>,
    /// Hand the viewer's audio track to the session (talkback); otherwise it is ignored.
    talkback: bool,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.events.send(PeerEvent::LocalCandidate(Candidate {
                candidate: init.candidate,
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
            let _ = self
                .events
                .send(PeerEvent::ControlChannel(ControlChannel { dc }));
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

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// Hands PLI and FIR to the application: the crate's interceptors keep inbound RTCP to
/// themselves unless one marks it. Receiver reports, REMB and NACKs about rtcam's stream are
/// noted in the shared [`FeedbackLog`] (a lock rather than the track's event queue: that queue
/// routes a compound packet by its first part and drops what it cannot route). Everything else
/// stops here, at the end of the chain.
struct KeyframeRequests {
    /// rtcam's video SSRC: reports about other streams are not about rtcam's video.
    ssrc: u32,
    feedback: Arc<Mutex<FeedbackLog>>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl KeyframeRequests {
    fn note(&self, packet: &dyn rtc::rtcp::Packet) {
        let any = packet.as_any();
        let mut log = self.feedback.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            for block in rr.reports.iter().filter(|b| b.ssrc == self.ssrc) {
                let losses = log
                    .loss
                    .report(block.total_lost, block.last_sequence_number);
                log.losses += losses;
                log.jitter = Some(block.jitter);
            }
        } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
            if remb.ssrcs.contains(&self.ssrc) && remb.bitrate.is_finite() {
                log.remb_kbps = Some((remb.bitrate / 1000.0).clamp(0.0, u32::MAX as f32) as u32);
            }
        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
            if nack.media_ssrc == self.ssrc {
                let packets: u64 = nack
                    .nacks
                    .iter()
                    .map(|p| 1 + u64::from(p.lost_packets.count_ones()))
                    .sum();
                log.nacked_packets += packets;
            }
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &msg.message.packet {
            for p in packets {
                self.note(p.as_ref());
            }
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = InterceptorPacket::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Holds back the NACK responder's repeated resends and counts the rest on their way to the
/// wire; passes everything else through.
struct Retransmissions {
    feedback: Arc<Mutex<FeedbackLog>>,
    guard: ResendGuard,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

/// Lets a packet be resent at most once per round trip, as libwebrtc's sender does. A receiver
/// asks again for a packet still missing (the `webrtc` crate's generator every 100 ms,
/// Chromium on its own schedule), and the crate's responder resends whatever it is asked for:
/// on a path whose round trip is longer than the receiver waits, every loss went out two or
/// more times, and the repeats, arriving after the first, repair nothing. Within a round trip
/// of a resend, the first cannot have arrived and been missed yet. rtcam registers no RTX, so
/// a resend carries its original SSRC and sequence number, the key here. Pure: time comes with
/// the packets.
#[derive(Debug, Default)]
struct ResendGuard {
    /// Resends within the last round trip, oldest first.
    recent: VecDeque<(u32, u16, Instant)>,
}

/// Bounds the guard's memory whatever the round trip: the crate's send buffer holds 1024
/// packets per stream.
const RESEND_GUARD_MAX: usize = 4096;

impl ResendGuard {
    /// Whether to send this resend now. With no round trip known yet every resend goes.
    fn admit(
        &mut self,
        ssrc: u32,
        seq: u16,
        now: Instant,
        rtt: Option<std::time::Duration>,
    ) -> bool {
        let hold = rtt.unwrap_or_default();
        while let Some(&(_, _, at)) = self.recent.front() {
            if now.saturating_duration_since(at) < hold && self.recent.len() < RESEND_GUARD_MAX {
                break;
            }
            self.recent.pop_front();
        }
        if self.recent.iter().any(|&(s, q, _)| s == ssrc && q == seq) {
            return false;
        }
        if !hold.is_zero() {
            self.recent.push_back((ssrc, seq, now));
        }
        true
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Retransmissions {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if msg.message.has(&Attribute::Retransmission) {
            if let InterceptorPacket::Rtp(packet) = &msg.message.packet {
                let mut log = self.feedback.lock().unwrap_or_else(|e| e.into_inner());
                let (ssrc, seq) = (packet.header.ssrc, packet.header.sequence_number);
                if !self.guard.admit(ssrc, seq, msg.now, log.rtt) {
                    return Ok(());
                }
                log.retransmitted_packets += 1;
            }
        }
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for Retransmissions {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Drops `a=candidate` lines with mDNS host names: rtcam does not resolve `.local` names, and
/// the browser's checks from those hosts arrive anyway as peer-reflexive candidates.
pub fn without_mdns_candidates(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let is_mdns = line.starts_with("a=candidate:")
            && line
                .split_whitespace()
                .nth(4)
                .is_some_and(|a| a.ends_with(".local"));
        if !is_mdns {
            out.push_str(line);
        }
    }
    out
}

fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:").map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    #[test]
    fn feedback_about_rtcams_stream_is_noted_and_the_rest_ignored() {
        let feedback = Arc::new(Mutex::new(FeedbackLog::default()));
        let i = KeyframeRequests {
            ssrc: 42,
            feedback: Arc::clone(&feedback),
            read: VecDeque::new(),
            write: VecDeque::new(),
        };
        // What a receiver reports: its cumulative lost and highest sequence number so far
        // (and a fraction lost, which rtcam does not use).
        let rr = |ssrc, total_lost, last_sequence_number| ReceiverReport {
            ssrc: 1,
            reports: vec![ReceptionReport {
                ssrc,
                fraction_lost: 255,
                total_lost,
                last_sequence_number,
                jitter: 900,
                ..Default::default()
            }],
            ..Default::default()
        };
        i.note(&rr(42, 10, 1000));
        i.note(&rr(42, 15, 1040));
        i.note(&rr(7, 500, 1100));
        i.note(&ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 1,
            bitrate: 1_500_000.0,
            ssrcs: vec![42],
        });
        i.note(&TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 42,
            // Packet 10, and 11 and 13 from the bitmap.
            nacks: vec![NackPair {
                packet_id: 10,
                lost_packets: 0b101,
            }],
        });
        i.note(&TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 7,
            nacks: vec![NackPair {
                packet_id: 1,
                lost_packets: 0,
            }],
        });
        let taken = feedback.lock().unwrap().take();
        assert_eq!(
            taken,
            Feedback {
                losses: Losses {
                    lost: 5,
                    expected: 40
                },
                jitter: Some(900),
                remb_kbps: Some(1500),
                nacked_packets: 3,
                retransmitted_packets: 0,
            }
        );
        // Reports start again; counters go on.
        let again = feedback.lock().unwrap().take();
        assert_eq!(again.losses, Losses::default());
        i.note(&rr(42, 15, 1080));
        let later = feedback.lock().unwrap().take();
        assert_eq!(
            later.losses.fraction(),
            Some(0.0),
            "counted from the last report"
        );
        assert_eq!(again.remb_kbps, None);
        assert_eq!(again.nacked_packets, 3);
    }

    #[test]
    fn a_packet_is_resent_at_most_once_per_round_trip() {
        let t0 = Instant::now();
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        let rtt = Some(std::time::Duration::from_millis(160));
        let mut g = ResendGuard::default();
        assert!(g.admit(42, 7, at(0), rtt));
        // Asked again 100 ms later: the first resend cannot have arrived yet.
        assert!(!g.admit(42, 7, at(100), rtt));
        // Other packets, and the same number on another stream, are not held.
        assert!(g.admit(42, 8, at(100), rtt));
        assert!(g.admit(43, 7, at(100), rtt));
        // A round trip on, the resend was lost too: again.
        assert!(g.admit(42, 7, at(160), rtt));
        assert!(!g.admit(42, 7, at(300), rtt));
        // The sequence number wraps round to 7 again much later: a new packet, not held.
        assert!(g.admit(42, 7, at(60_000), rtt));
        // Before a round trip is measured, nothing is held and nothing kept.
        let mut g = ResendGuard::default();
        assert!(g.admit(42, 7, at(0), None));
        assert!(g.admit(42, 7, at(1), None));
        assert!(g.recent.is_empty());
        // Memory stays bounded however long the round trip.
        let mut g = ResendGuard::default();
        let long = Some(std::time::Duration::from_secs(3600));
        for seq in 0..=u16::MAX {
            g.admit(1, seq, at(0), long);
        }
        assert!(g.recent.len() <= RESEND_GUARD_MAX);
    }

    #[test]
    fn mdns_lines_are_dropped_and_others_kept() {
        let sdp = "v=0\r\na=candidate:1 1 udp 1 abc.local 5000 typ host\r\na=candidate:2 1 udp 1 10.0.0.2 5000 typ host\r\na=mid:0\r\n";
        let out = without_mdns_candidates(sdp);
        assert!(!out.contains(".local"));
        assert!(out.contains("10.0.0.2"));
        assert_eq!(first_mid(&out).as_deref(), Some("0"));
    }

    #[test]
    fn opus_is_found_only_in_a_live_audio_section() {
        let video = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n";
        assert!(!offers_opus(video));
        let audio = format!("{video}m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:111 opus/48000/2\r\n");
        assert!(offers_opus(&audio));
        assert!(!offers_opus(&audio.replace("m=audio 9", "m=audio 0")));
        let pcmu_only = format!("{video}m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n");
        assert!(!offers_opus(&pcmu_only));
        // Opus listed under video is not audio.
        assert!(!offers_opus(
            "m=video 9 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"
        ));
    }
}
