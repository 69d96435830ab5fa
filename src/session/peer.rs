//! One WebRTC peer connection that sends rtcam's video: the only file that uses the `webrtc` and
//! `rtc` crates.
//!
//! It hides the crate's types behind rtcam's own ([`PeerEvent`], [`Candidate`]), and carries
//! the workarounds the crate needs (see the comments at each), so the session logic reads as
//! the protocol does.

use crate::config::WebrtcConfig;
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
use rtc::rtp_transceiver::rtp_sender::RTCPFeedback;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    RTCStatsReportEntry, Registry, SettingEngineBuilder, StatsSelector,
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
    State(PeerState),
    /// The viewer opened a data channel labelled `control`.
    ControlChannel(ControlChannel),
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

    /// Creates a peer for one viewer's offer and returns it with the answer SDP. Candidates and
    /// state changes arrive on `events`.
    pub async fn answer(
        &self,
        offer_sdp: &str,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<(Peer, String), PeerError> {
        let mut media = MediaEngine::default();
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
        for (fmtp, pt) in H264_FMTPS {
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: h264_codec(fmtp, feedback.clone()),
                        payload_type: pt,
                        ..Default::default()
                    },
                    RtpCodecKind::Video,
                )
                .map_err(setup)?;
        }
        let registry = register_default_interceptors(Registry::new(), &mut media).map_err(setup)?;
        // Application-most slot: every other interceptor (NACK, reports, congestion feedback)
        // has seen the inbound RTCP before this one hands keyframe requests to rtcam.
        let registry = registry.with(Slot::from(14_000), KeyframeRequests::default());
        let settings = SettingEngineBuilder::new()
            .with_include_loopback_candidate(true)
            // The crate's default (query mode) binds UDP 5353 for every viewer, where a board's
            // avahi already listens. rtcam does not need it: see `without_mdns_candidates`.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .build();
        let addrs = self.udp_addrs();
        if addrs.is_empty() {
            return Err(PeerError::NoAddress);
        }
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
            .with_handler(Arc::new(Handler { events }))
            .with_udp_addrs(addrs)
            .build()
            .await
            .map_err(setup)?;

        let ssrc = rand::random::<u32>();
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
                        codec: h264_codec(H264_FMTPS[0].0, vec![]),
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
        let local = pc
            .local_description()
            .await
            .ok_or_else(|| setup("no local description after setting it"))?;
        let mid = first_mid(&local.sdp).unwrap_or_else(|| "0".into());
        let peer = Peer {
            pc: Box::new(pc),
            track,
            sender,
            ssrc,
            payload_type: None,
            mid,
        };
        Ok((peer, local.sdp))
    }
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
    /// The payload type the viewer chose for H.264; every packet must carry it (browsers pick
    /// their own number, not the one rtcam registered). Read once the connection is up.
    payload_type: Option<u8>,
    /// The media id to stamp on outgoing candidates; the crate leaves it empty.
    mid: String,
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
                    if packets.iter().any(is_keyframe_request) =>
                {
                    return
                }
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    pub fn mid(&self) -> &str {
        &self.mid
    }

    /// Sends one encoded frame. Errors mean the connection is going away.
    pub async fn write_frame(&mut self, frame: &EncodedFrame) -> Result<(), PeerError> {
        let pt = match self.payload_type {
            Some(pt) => pt,
            None => {
                let params = self.sender.get_parameters().await.map_err(setup)?;
                let pt = params
                    .rtp_parameters
                    .codecs
                    .first()
                    .map(|c| c.payload_type)
                    .ok_or_else(|| setup("no negotiated video codec"))?;
                self.payload_type = Some(pt);
                pt
            }
        };
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

    /// Round-trip time to the viewer from the nominated ICE pair's latest check, if measured.
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

fn is_keyframe_request(packet: &Box<dyn rtc::rtcp::Packet>) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// Hands PLI and FIR to the application: the crate's interceptors keep inbound RTCP to
/// themselves unless one marks it. Everything else stops here, at the end of the chain.
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p))
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

    #[test]
    fn mdns_lines_are_dropped_and_others_kept() {
        let sdp = "v=0\r\na=candidate:1 1 udp 1 abc.local 5000 typ host\r\na=candidate:2 1 udp 1 10.0.0.2 5000 typ host\r\na=mid:0\r\n";
        let out = without_mdns_candidates(sdp);
        assert!(!out.contains(".local"));
        assert!(out.contains("10.0.0.2"));
        assert_eq!(first_mid(&out).as_deref(), Some("0"));
    }
}
