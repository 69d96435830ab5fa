//! The viewer's peer connection: the codecs and interceptors it offers with, where it gathers,
//! and the events it hands on (its candidates, remote tracks, connection stages).

use crate::seen::Shared;
use crate::sender_reports::SenderReportsToApp;
use crate::{ViewerError, ViewerOptions};
use rtc::interceptor::Slot;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCIceConnectionState, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry, SettingEngineBuilder,
};

/// The playout-delay header extension's name in SDP (`ViewerOptions::playout_delay`).
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// The id an `a=extmap` line of `sdp` gives the extension named `uri`.
pub fn extmap_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let (id, rest) = l.strip_prefix("a=extmap:")?.split_once(' ')?;
        let id = id.split('/').next()?;
        (rest.split_whitespace().next()? == uri)
            .then(|| id.parse().ok())
            .flatten()
    })
}

pub(crate) type Candidates = mpsc::UnboundedReceiver<RTCIceCandidateInit>;
pub(crate) type Tracks = mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>;

/// The viewer's own candidates as gathered, by type, and whether gathering finished.
#[derive(Debug, Default, Clone)]
pub struct Gathered {
    pub types: Vec<String>,
    pub complete: bool,
}

/// The `typ` of an ICE candidate line.
pub fn candidate_type(candidate: &str) -> Option<String> {
    let mut words = candidate.split_whitespace();
    words.find(|w| *w == "typ")?;
    words.next().map(str::to_string)
}

struct Handler {
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
    gathered: Arc<Mutex<Gathered>>,
    shared: Arc<Shared>,
    state: tokio::sync::watch::Sender<RTCPeerConnectionState>,
    /// Keep passive TCP candidates to itself (see `ViewerOptions::tcp_only`).
    active_tcp_only: bool,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            if self.active_tcp_only && init.candidate.contains("tcptype passive") {
                return;
            }
            if let Some(typ) = candidate_type(&init.candidate) {
                self.gathered.lock().unwrap().types.push(typ);
            }
            let _ = self.candidates.send(init);
        }
    }
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.lock().unwrap().complete = true;
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tracks.send(track);
    }
    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if state == RTCIceConnectionState::Connected {
            self.shared.mark(|s| &mut s.ice_connected);
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.shared.mark(|s| &mut s.dtls_connected);
        }
        let _ = self.state.send(state);
    }
}

/// A peer connection with the receivers of its events.
pub(crate) struct Peer {
    pub(crate) pc: Arc<dyn PeerConnection>,
    pub(crate) candidates: Candidates,
    pub(crate) tracks: Tracks,
    pub(crate) gathered: Arc<Mutex<Gathered>>,
    pub(crate) state: tokio::sync::watch::Receiver<RTCPeerConnectionState>,
}

/// A receive-only peer connection as `opts` describe it, with `ice_servers` (the options' own
/// and any rtcam handed out), reporting its stages into `shared`.
pub(crate) async fn build(
    opts: &ViewerOptions,
    ice_servers: Vec<RTCIceServer>,
    shared: &Arc<Shared>,
) -> Result<Peer, ViewerError> {
    let mut media = MediaEngine::default();
    if opts.vp8_only {
        register_vp8_only(&mut media)?;
    } else {
        media.register_default_codecs()?;
    }
    if opts.playout_delay {
        media.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: PLAYOUT_DELAY_URI.into(),
            },
            RtpCodecKind::Video,
            None,
        )?;
    }
    let (cand_tx, candidates) = mpsc::unbounded_channel();
    let (track_tx, tracks) = mpsc::unbounded_channel();
    let (state_tx, state) = tokio::sync::watch::channel(RTCPeerConnectionState::New);
    let gathered = Arc::new(Mutex::new(Gathered::default()));
    let udp_addrs = if opts.udp_addrs.is_empty() {
        vec!["127.0.0.1:0".to_string()]
    } else {
        opts.udp_addrs.clone()
    };
    let policy = if opts.relay_only {
        RTCIceTransportPolicy::Relay
    } else {
        RTCIceTransportPolicy::All
    };
    let mut settings = SettingEngineBuilder::new().with_include_loopback_candidate(true);
    if let Some(interval) = opts.ice_check_interval {
        settings = settings.with_ice_connection_attempts(Some(interval), None);
    }
    let builder = PeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(ice_servers)
                .with_ice_transport_policy(policy)
                .build(),
        )
        .with_setting_engine(settings.build())
        .with_handler(Arc::new(Handler {
            candidates: cand_tx,
            tracks: track_tx,
            gathered: gathered.clone(),
            shared: shared.clone(),
            state: state_tx,
            active_tcp_only: opts.tcp_only,
        }));
    let builder = if opts.tcp_only {
        builder.with_tcp_addrs(udp_addrs)
    } else {
        builder.with_udp_addrs(udp_addrs)
    };
    // Without interceptors (`light`) nothing answers NACKs or sends receiver reports: cheap
    // enough for a thousand viewers in a row.
    let pc = if opts.light {
        builder.with_media_engine(media).build().await?
    } else {
        let registry = register_default_interceptors(Registry::new(), &mut media)?
            .with(Slot::from(14_000), SenderReportsToApp::default());
        builder
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build()
            .await?
    };
    Ok(Peer {
        pc: Arc::new(pc),
        candidates,
        tracks,
        gathered,
        state,
    })
}

/// VP8 and nothing else, as Firefox without OpenH264 offers: rtcam's VP8 fallback.
fn register_vp8_only(media: &mut MediaEngine) -> Result<(), ViewerError> {
    let rtcp_feedback = ["nack", "nack pli", "ccm fir"]
        .iter()
        .map(|f| {
            let (typ, parameter) = f.split_once(' ').unwrap_or((f, ""));
            RTCPFeedback {
                typ: typ.into(),
                parameter: parameter.into(),
            }
        })
        .collect();
    let codec = RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: "video/VP8".into(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback,
        },
        payload_type: 96,
    };
    media.register_codec(codec, RtpCodecKind::Video)?;
    Ok(())
}

/// Adds a transceiver of this kind that receives, never sends.
pub async fn add_recvonly(
    pc: &(impl PeerConnection + ?Sized),
    kind: RtpCodecKind,
) -> Result<(), rtc::shared::error::Error> {
    pc.add_transceiver_from_kind(
        kind,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            ..Default::default()
        }),
    )
    .await
    .map(drop)
}
