//! Answering one viewer's offer: the peer connection's settings, rtcam's tracks, the answer.

use super::codecs::{media_engine, opus_codec, video_track_codec};
use super::events::Handler;
use super::feedback::{with_taps, FeedbackLog};
use super::mux::{Mux, Ports};
use super::playout::with_playout_delay;
use super::{AudioOptions, Peer, PeerError, PeerEvent, SendTrack};
use crate::codec::VideoCodec;
use crate::config::WebrtcConfig;
use crate::signalling::sdp::{
    first_mid, udp_host_candidates, without_mdns_candidates, OfferSummary,
};
use rtc::crypto::SignatureScheme;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{
    register_default_interceptors, PeerConnection, PeerConnectionBuilder, RTCConfiguration,
    RTCConfigurationBuilder, RTCIceServer, RTCSessionDescription, SettingEngine,
    SettingEngineBuilder,
};

/// How often ICE checks a candidate pair while connecting, and how many checks a pair gets
/// (together 1.4 s, the crate's default budget, at a tenth of its 200 ms pacing).
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(20);
const ICE_MAX_BINDING_REQUESTS: u16 = 70;
/// The longest rtcam holds its answer back for its host candidates (they take a few ms).
const HOST_GATHER_WAIT: Duration = Duration::from_millis(50);

/// Builds peer connections with what every viewer shares: ICE servers, addresses, certificate.
pub struct PeerFactory {
    /// Derived TURN credentials are made per peer, so a long-running rtcam never allocates
    /// with expired ones.
    ice_servers: Arc<crate::turn::IceServers>,
    configured_addrs: Vec<IpAddr>,
    /// The shared ports, unless both `udp_port` and `tcp_port` are 0.
    mux: Option<Arc<Mux>>,
    /// Generated once: an ECDSA key per viewer would add tens of milliseconds to every join.
    certificate: RTCCertificate,
}

/// One viewer's offer as the factory needs it: its text and what was read from it once.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    pub sdp: &'a str,
    pub summary: &'a OfferSummary,
}

impl PeerFactory {
    pub fn new(
        cfg: &WebrtcConfig,
        ice_servers: Arc<crate::turn::IceServers>,
    ) -> Result<Self, PeerError> {
        let provider =
            rtc::crypto::default_provider().map_err(|e| PeerError::Certificate(Box::new(e)))?;
        let params = CertificateParams::new(vec!["rtcam".to_owned()])
            .map_err(|e| PeerError::Certificate(Box::new(e)))?;
        let certificate =
            RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
                .map_err(PeerError::Setup)?;
        let mut factory = Self {
            ice_servers,
            configured_addrs: cfg.udp_addrs.clone(),
            mux: None,
            certificate,
        };
        let ports = Ports {
            udp: cfg.udp_port,
            tcp: cfg.tcp_port,
        };
        if ports.udp != 0 || ports.tcp != 0 {
            let mux =
                Mux::bind(ports, &factory.udp_ips(), cfg.public_ips.clone()).map_err(|e| {
                    PeerError::Port {
                        key: e.key,
                        addr: e.addr,
                        source: e.source,
                    }
                })?;
            factory.mux = Some(mux);
        }
        Ok(factory)
    }

    /// Local addresses to gather candidates on. The crate skips loopback when bound to the
    /// wildcard address, and a viewer on the board itself (or a test) needs loopback, so rtcam
    /// binds each interface address on its own. Looked up per session: DHCP and Wi-Fi change them.
    fn udp_ips(&self) -> Vec<IpAddr> {
        if self.configured_addrs.is_empty() {
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
        }
    }

    /// [`Self::udp_ips`] as the crate binds them. On the shared port the crate's sockets only
    /// name the address (see `mux`), so they too take a port the system picks.
    fn udp_addrs(&self) -> Vec<String> {
        self.udp_ips()
            .into_iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => format!("{v4}:0"),
                IpAddr::V6(v6) => format!("[{v6}]:0"),
            })
            .collect()
    }

    /// The STUN/TURN servers (fresh credentials) and the shared certificate.
    fn configuration(&self) -> RTCConfiguration {
        let ice_servers = self
            .ice_servers
            .for_rtcam(std::time::SystemTime::now())
            .into_iter()
            .map(|s| RTCIceServer {
                urls: s.urls,
                username: s.username,
                credential: s.credential,
            })
            .collect();
        RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .with_certificates(vec![self.certificate.clone()])
            .build()
    }

    /// Creates a peer for one viewer's offer and returns it with the answer SDP, sending
    /// `codec` (decided from the offer). Candidates and state changes arrive on `events`.
    pub async fn answer(
        &self,
        offer: Offer<'_>,
        codec: VideoCodec,
        events: mpsc::UnboundedSender<PeerEvent>,
        audio: AudioOptions,
    ) -> Result<(Peer, String), PeerError> {
        let with_audio = audio.send && offer.summary.opus;
        let mut media = media_engine(codec, with_audio)?;
        let registry =
            register_default_interceptors(Registry::new(), &mut media).map_err(PeerError::Setup)?;
        let ssrc = rand::random::<u32>();
        let feedback = Arc::new(Mutex::new(FeedbackLog::default()));
        let addrs = self.udp_addrs();
        if addrs.is_empty() {
            return Err(PeerError::NoAddress);
        }
        let host_candidates = addrs.len();
        let closed = CancellationToken::new();
        let mux = self.mux.as_ref().map(Mux::session);
        let mut builder = PeerConnectionBuilder::new();
        if let Some(mux) = &mux {
            builder = builder.with_runtime(mux.runtime());
        }
        // ICE over TCP (passive) exists only on its shared port.
        if self.mux.as_ref().is_some_and(|m| m.ports().tcp != 0) {
            builder = builder.with_tcp_addrs(addrs.clone());
        }
        let pc = builder
            .with_configuration(self.configuration())
            .with_media_engine(media)
            .with_interceptor_registry(with_playout_delay(with_taps(registry, ssrc, &feedback)))
            .with_setting_engine(setting_engine())
            .with_handler(Arc::new(Handler {
                events,
                talkback: with_audio && audio.talkback,
                peer_closed: closed.clone(),
                mux: mux.clone(),
            }))
            .with_udp_addrs(addrs)
            .build()
            .await
            .map_err(PeerError::Setup)?;
        // From here on a failure must close the connection: dropping it unclosed leaves its
        // driver task running, with its socket, for the life of the process.
        match negotiate(&pc, offer, codec, with_audio, ssrc, host_candidates).await {
            Ok(n) => {
                let answer_sdp = match &mux {
                    Some(mux) => mux.answer(&n.answer_sdp),
                    None => n.answer_sdp,
                };
                let peer = Peer {
                    pc: Box::new(pc),
                    mid: first_mid(&answer_sdp).unwrap_or_else(|| "0".into()),
                    video: n.video,
                    audio: n.audio,
                    feedback,
                    closed,
                    mux,
                };
                Ok((peer, answer_sdp))
            }
            Err(e) => {
                if let Err(close) = pc.close().await {
                    tracing::debug!("closing a peer connection that failed to answer: {close}");
                }
                Err(e)
            }
        }
    }
}

/// `[webrtc]` keys that only make sense together.
pub fn check_config(cfg: &WebrtcConfig) -> Result<(), crate::config::Refusal> {
    if !cfg.public_ips.is_empty() && cfg.udp_port == 0 && cfg.tcp_port == 0 {
        return Err(crate::config::Refusal::new(
            "webrtc.public_ips",
            "public addresses are announced with the shared ports: set webrtc.udp_port \
             (and forward that UDP port to this device)",
        ));
    }
    Ok(())
}

/// The crate's transport settings for every viewer.
fn setting_engine() -> SettingEngine {
    SettingEngineBuilder::new()
        .with_include_loopback_candidate(true)
        // The crate's default (query mode) binds UDP 5353 for every viewer, where a board's
        // avahi already listens. rtcam does not need it: see `sdp::is_mdns_candidate`.
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        // The crate checks a candidate pair every 200 ms, and rtcam, the controlled side,
        // only calls a pair usable after its own check on it succeeds: that tick alone was
        // most of the time to first frame (docs/benchmarks.md). Checking every 20 ms while
        // connecting costs a few STUN packets; the attempt budget keeps the crate's 1.4 s
        // per pair so slow links (TURN, lossy Wi-Fi) are not given up on sooner.
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
        .build()
}

/// What negotiating a viewer's offer produced, before it becomes a [`Peer`].
struct Negotiated {
    video: SendTrack,
    audio: Option<SendTrack>,
    answer_sdp: String,
}

/// Adds rtcam's tracks, applies the offer and makes the answer.
async fn negotiate(
    pc: &impl PeerConnection,
    offer: Offer<'_>,
    codec: VideoCodec,
    with_audio: bool,
    // The interceptor notes only feedback about this SSRC, so the video track must use it.
    ssrc: u32,
    // Host candidates to wait for before answering: one per address rtcam listens on.
    host_candidates: usize,
) -> Result<Negotiated, PeerError> {
    let video = add_track(pc, RtpCodecKind::Video, video_track_codec(codec), ssrc).await?;
    // Added with both directions: the crate pairs a viewer's sendrecv section (a browser
    // sending its microphone) only with a sendrecv or recvonly transceiver, and a recvonly
    // section with this one too. Without talkback, whatever the viewer sends is dropped.
    let audio = if with_audio {
        Some(add_track(pc, RtpCodecKind::Audio, opus_codec(), rand::random()).await?)
    } else {
        None
    };
    // mDNS candidates are dropped before the crate sees them: rtcam resolves no `.local`
    // names (see `sdp::is_mdns_candidate`). An offer without any goes as it came.
    let offer_sdp = if offer.summary.mdns_candidates > 0 {
        without_mdns_candidates(offer.sdp)
    } else {
        offer.sdp.to_owned()
    };
    let offer = RTCSessionDescription::offer(offer_sdp).map_err(PeerError::Offer)?;
    pc.set_remote_description(offer)
        .await
        .map_err(PeerError::Offer)?;
    let answer = pc.create_answer(None).await.map_err(PeerError::Offer)?;
    pc.set_local_description(answer)
        .await
        .map_err(PeerError::Setup)?;
    Ok(Negotiated {
        video,
        audio,
        answer_sdp: with_host_candidates(pc, host_candidates).await?,
    })
}

/// Adds one track rtcam sends on, of `kind` in `codec`, with its own `ssrc`.
async fn add_track(
    pc: &impl PeerConnection,
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    ssrc: u32,
) -> Result<SendTrack, PeerError> {
    let name = match kind {
        RtpCodecKind::Audio => "audio",
        _ => "video",
    };
    let encoding = RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(ssrc),
            ..Default::default()
        },
        // The crate's default encoding is inactive; an inactive one sends nothing.
        active: true,
        codec,
        ..Default::default()
    };
    let track = MediaStreamTrack::new(
        "rtcam".to_owned(),
        name.to_owned(),
        format!("rtcam {name}"),
        kind,
        vec![encoding],
    );
    let track =
        Arc::new(TrackLocalStaticSample::new(Instant::now(), track).map_err(PeerError::Setup)?);
    let sender = pc
        .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
        .await
        .map_err(PeerError::Setup)?;
    Ok(SendTrack {
        track,
        sender,
        ssrc,
        payload_type: None,
        kind: name,
    })
}

/// The answer, once it carries rtcam's host candidates: gathering them takes a few
/// milliseconds, and a viewer that knows them checks them at once. Without them rtcam's first
/// checks (every 20 ms) reach the viewer before its trickled candidates do; the viewer then
/// knows rtcam only as a peer-reflexive address, which webrtc-rs viewers accept only after a
/// second (docs/benchmarks.md). Server-reflexive and relay candidates, which take round trips,
/// still trickle.
async fn with_host_candidates(
    pc: &impl PeerConnection,
    host_candidates: usize,
) -> Result<String, PeerError> {
    let deadline = Instant::now() + HOST_GATHER_WAIT;
    loop {
        let local = pc
            .local_description()
            .await
            .ok_or(PeerError::NoLocalDescription)?;
        if udp_host_candidates(&local.sdp) >= host_candidates || Instant::now() >= deadline {
            return Ok(local.sdp);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
