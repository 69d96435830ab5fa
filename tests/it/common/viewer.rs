//! A real WebRTC viewer for tests: speaks signalling protocol v1 over MQTT, receives rtcam's
//! H.264 (or, offering only VP8, VP8) over WebRTC and decodes it with GStreamer, counting
//! decoded frames and their size.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use rtc::interceptor::{
    Attribute, Interceptor, Packet as InterceptorPacket, Slot, StreamInfo, TaggedPacket,
};
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::sansio::Protocol;
use rtc::shared::marshal::Marshal;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCSessionDescription,
    RTCStatsReportEntry, Registry, SettingEngineBuilder, StatsSelector,
};

/// What the viewer has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Decoded {
    pub frames: usize,
    pub width: i32,
    pub height: i32,
    pub rtp_packets: usize,
    pub first_frame_after: Option<Duration>,
    /// Audio RTP packets received, and Opus buffers decoded from them (audio viewers).
    pub audio_packets: usize,
    pub audio_decoded: usize,
    /// For each packet that arrived after a sender report of its stream: when it arrived minus
    /// when that report's RTP↔NTP mapping says it was sent, in ms, by kind (`true` = audio).
    /// A receiver lines audio and video up with exactly this mapping.
    pub sync_offsets_ms: Vec<(bool, f64)>,
    /// Sender reports received, per SSRC.
    pub sender_reports: HashMap<u32, usize>,
    /// Picture loss indications sent because the decoder lost packets (`recover`).
    pub plis_sent: usize,
    /// The last decoded picture (a reference to GStreamer's buffer, not a copy), for tests
    /// that look at what the picture shows.
    pub last_sample: Option<gst::Sample>,
}

impl Decoded {
    /// Mean luma (0–255) of the last decoded picture's row at `fraction` of its height.
    pub fn row_luma(&self, fraction: f64) -> Option<f64> {
        let sample = self.last_sample.as_ref()?;
        let info = gstreamer_video::VideoInfo::from_caps(sample.caps()?).ok()?;
        let buffer = sample.buffer()?;
        let frame = gstreamer_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).ok()?;
        let row = ((info.height() as f64 * fraction) as usize).min(info.height() as usize - 1);
        let stride = info.stride()[0] as usize;
        let plane = frame.plane_data(0).ok()?;
        let line = &plane[row * stride..row * stride + info.width() as usize];
        Some(line.iter().map(|&y| f64::from(y)).sum::<f64>() / line.len() as f64)
    }
}

pub struct Viewer {
    pub sid: String,
    pc: Arc<dyn PeerConnection>,
    client: AsyncClient,
    in_topic: String,
    decoded: Arc<Mutex<Decoded>>,
    /// Messages received on the session's `out` topic, for assertions on signalling.
    pub messages: Arc<Mutex<Vec<Value>>>,
    _pipeline: Decoder,
    _audio_pipeline: Option<AudioDecoder>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    control: Option<Arc<dyn DataChannel>>,
    track: Arc<Mutex<Option<Arc<dyn TrackRemote>>>>,
    /// Messages received on the control channel.
    pub channel_messages: Arc<Mutex<Vec<Value>>>,
    channel_open: tokio::sync::watch::Receiver<bool>,
    /// The viewer's own candidates.
    pub gathered: Arc<Mutex<Gathered>>,
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
}

/// The viewer's own candidates as gathered, by type, and whether gathering finished.
#[derive(Debug, Default, Clone)]
pub struct Gathered {
    pub types: Vec<String>,
    pub complete: bool,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
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
}

/// Options for how the viewer offers.
#[derive(Clone, Default)]
pub struct ViewerOptions {
    /// A viewer token for cameras with `[auth] secret`.
    pub token: Option<String>,
    /// Present the token only as the MQTT password, as the page does on the camera's own
    /// broker: its offers carry none.
    pub token_at_connect_only: bool,
    /// Wait for gathering to finish and send one offer with every candidate in it (no trickle).
    pub no_trickle: bool,
    /// Open a `control` data channel, as the viewer page does.
    pub control_channel: bool,
    /// Offer a receive-only Opus audio section too, decode what arrives, and record sender
    /// reports.
    pub audio: bool,
    /// Offer VP8 and nothing else, as Firefox without OpenH264 does: rtcam's VP8 fallback.
    pub vp8_only: bool,
    /// Behave as a browser does on a lossy path: a jitter buffer puts reordered and resent
    /// packets back in order, and a packet that never arrives makes the decoder ask for a
    /// keyframe (PLI). The crate's interceptors send the NACKs either way.
    pub recover: bool,
    /// Local addresses to gather on (`"10.2.0.2:0"`); empty: loopback only. A viewer in a
    /// network namespace names its own.
    pub udp_addrs: Vec<String>,
    /// STUN/TURN servers for the viewer's own gathering.
    pub ice_servers: Vec<RTCIceServer>,
    /// Ask rtcam for its ICE servers (`ice_servers` message) before offering, and use them too.
    pub ask_ice_servers: bool,
    /// `iceTransportPolicy: "relay"`: gather relay candidates only.
    pub relay_only: bool,
}

impl Viewer {
    pub async fn connect(broker: (&str, u16), root: &str) -> Viewer {
        Self::connect_with(broker, root, ViewerOptions::default()).await
    }

    pub async fn connect_with(broker: (&str, u16), root: &str, opts: ViewerOptions) -> Viewer {
        let sid = format!("t{}", rand::random::<u64>());
        let in_topic = format!("{root}/session/{sid}/in");
        let out_topic = format!("{root}/session/{sid}/out");

        // The sid is the client id, as on the viewer page: a broker with rtcam's ACL lets a
        // client use only the session its client id names.
        let mut mqtt_opts = MqttOptions::new(sid.clone(), broker.0, broker.1);
        mqtt_opts.set_max_packet_size(1 << 20, 1 << 20);
        mqtt_opts.set_keep_alive(Duration::from_secs(5));
        // A camera with `[auth] secret` lets a client onto its embedded broker with a token as
        // the password (any user name); it also travels in the offer, as another broker needs.
        if let Some(token) = &opts.token {
            mqtt_opts.set_credentials("token", token.clone());
        }
        let offered_token = opts.token.clone().filter(|_| !opts.token_at_connect_only);
        let (client, mut eventloop) = AsyncClient::new(mqtt_opts, 64);
        client
            .subscribe(&out_topic, QoS::AtLeastOnce)
            .await
            .unwrap();
        let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Value>();
        let (subacked_tx, subacked) = tokio::sync::oneshot::channel();
        let mqtt_task = tokio::spawn(async move {
            let mut subacked_tx = Some(subacked_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subacked_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                            let _ = inbox_tx.send(v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), subacked)
            .await
            .expect("viewer subscribed")
            .unwrap();

        let messages = Arc::new(Mutex::new(Vec::new()));
        let mut ice_servers = opts.ice_servers.clone();
        if opts.ask_ice_servers {
            publish(
                &client,
                &in_topic,
                json!({"type":"ice_servers","token":offered_token}),
            )
            .await;
            let reply = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
                .await
                .expect("rtcam sent its ICE servers within 10 s")
                .expect("inbox open");
            messages.lock().unwrap().push(reply.clone());
            assert_eq!(reply["type"], "ice_servers", "{reply}");
            for s in reply["ice_servers"].as_array().unwrap() {
                ice_servers.push(RTCIceServer {
                    urls: serde_json::from_value(s["urls"].clone()).unwrap(),
                    username: s["username"].as_str().unwrap_or_default().into(),
                    credential: s["credential"].as_str().unwrap_or_default().into(),
                });
            }
        }
        let mut media = MediaEngine::default();
        if opts.vp8_only {
            use rtc::rtp_transceiver::rtp_sender::{
                RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters,
            };
            let feedback = ["nack", "nack pli", "ccm fir"]
                .iter()
                .map(|f| {
                    let (typ, parameter) = f.split_once(' ').unwrap_or((f, ""));
                    RTCPFeedback {
                        typ: typ.into(),
                        parameter: parameter.into(),
                    }
                })
                .collect();
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: RTCRtpCodec {
                            mime_type: "video/VP8".into(),
                            clock_rate: 90000,
                            channels: 0,
                            sdp_fmtp_line: String::new(),
                            rtcp_feedback: feedback,
                        },
                        payload_type: 96,
                    },
                    RtpCodecKind::Video,
                )
                .unwrap();
        } else {
            media.register_default_codecs().unwrap();
        }
        let registry = register_default_interceptors(Registry::new(), &mut media)
            .unwrap()
            .with(Slot::from(14_000), SenderReportsToApp::default());
        let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
        let (track_tx, mut track_rx) = mpsc::unbounded_channel();
        let gathered = Arc::new(Mutex::new(Gathered::default()));
        let udp_addrs = if opts.udp_addrs.is_empty() {
            vec!["127.0.0.1:0".to_string()]
        } else {
            opts.udp_addrs.clone()
        };
        let pc = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(ice_servers)
                    .with_ice_transport_policy(if opts.relay_only {
                        RTCIceTransportPolicy::Relay
                    } else {
                        RTCIceTransportPolicy::All
                    })
                    .build(),
            )
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_include_loopback_candidate(true)
                    .build(),
            )
            .with_handler(Arc::new(Handler {
                candidates: cand_tx,
                tracks: track_tx,
                gathered: gathered.clone(),
            }))
            .with_udp_addrs(udp_addrs)
            .build()
            .await
            .unwrap();
        super::add_recvonly_video(&pc).await.unwrap();
        if opts.audio {
            super::add_recvonly(&pc, RtpCodecKind::Audio).await.unwrap();
        }
        let control = if opts.control_channel {
            Some(pc.create_data_channel("control", None).await.unwrap())
        } else {
            None
        };
        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer).await.unwrap();

        let started = Instant::now();
        let decoded = Arc::new(Mutex::new(Decoded::default()));
        let track_slot: Arc<Mutex<Option<Arc<dyn TrackRemote>>>> = Arc::new(Mutex::new(None));
        let track_slot_for_pli = track_slot.clone();
        let (pli_tx, mut pli_rx) = mpsc::unbounded_channel::<()>();
        let decoder = Decoder::new(
            decoded.clone(),
            started,
            opts.vp8_only,
            opts.recover.then_some(pli_tx),
        );
        let mut tasks = vec![mqtt_task];

        if opts.no_trickle {
            // Gathering on loopback is quick; wait for it so the offer carries every candidate.
            let mut gathered = Vec::new();
            while let Ok(Some(c)) =
                tokio::time::timeout(Duration::from_millis(500), cand_rx.recv()).await
            {
                gathered.push(c);
            }
            assert!(!gathered.is_empty(), "viewer gathered no candidates");
            let sdp = pc.local_description().await.unwrap().sdp;
            let sdp = add_candidates(&sdp, &gathered);
            publish(
                &client,
                &in_topic,
                json!({"type":"offer","sdp":sdp,"token":offered_token}),
            )
            .await;
        } else {
            let sdp = pc.local_description().await.unwrap().sdp;
            publish(
                &client,
                &in_topic,
                json!({"type":"offer","sdp":sdp,"token":offered_token}),
            )
            .await;
            let (c2, t2) = (client.clone(), in_topic.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(c) = cand_rx.recv().await {
                    publish(
                        &c2,
                        &t2,
                        json!({"type":"candidate","candidate":c.candidate,"sdpMid":"0","sdpMLineIndex":0}),
                    )
                    .await;
                }
            }));
        }

        // Decoder lost packets → PLI, at most one per 300 ms, as browsers pace theirs; and, as
        // browsers do, again every 500 ms while no frame decodes, since a PLI can be lost too.
        {
            let slot = track_slot_for_pli.clone();
            let counted = decoded.clone();
            tasks.push(tokio::spawn(async move {
                let mut last: Option<Instant> = None;
                // Frames decoded when the picture broke, while it stays broken.
                let mut broken_at: Option<usize> = None;
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    // Cancel-safe: mpsc recv and an interval tick.
                    let requested = tokio::select! {
                        r = pli_rx.recv() => match r {
                            Some(()) => true,
                            None => break,
                        },
                        _ = tick.tick() => false,
                    };
                    let frames = counted.lock().unwrap().frames;
                    if broken_at.is_some_and(|at| frames > at) {
                        broken_at = None;
                    }
                    if requested {
                        broken_at.get_or_insert(frames);
                    }
                    let due = if requested {
                        Duration::from_millis(300)
                    } else if broken_at.is_some() {
                        Duration::from_millis(500)
                    } else {
                        continue;
                    };
                    if last.is_some_and(|t| t.elapsed() < due) {
                        continue;
                    }
                    let Some(track) = slot.lock().unwrap().clone() else {
                        continue;
                    };
                    let Some(media_ssrc) = track.ssrcs().await.first().copied() else {
                        continue;
                    };
                    let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc,
                    };
                    if track.write_rtcp(vec![Box::new(pli)]).await.is_ok() {
                        counted.lock().unwrap().plis_sent += 1;
                        last = Some(Instant::now());
                    }
                }
            }));
        }

        // Tracks → decoders: video to the H.264 decoder, audio to the Opus one.
        let appsrc = decoder.appsrc.clone();
        let audio_decoder = opts.audio.then(|| AudioDecoder::new(decoded.clone()));
        let audio_appsrc = audio_decoder.as_ref().map(|d| d.appsrc.clone());
        let counted = decoded.clone();
        let slot = track_slot.clone();
        let reports: Arc<Mutex<HashMap<u32, (u64, u32)>>> = Arc::default();
        tasks.push(tokio::spawn(async move {
            let mut readers = Vec::new();
            while let Some(track) = track_rx.recv().await {
                let audio = track.kind().await == RtpCodecKind::Audio;
                let sink = if audio {
                    match audio_appsrc.clone() {
                        Some(a) => a,
                        None => continue,
                    }
                } else {
                    *slot.lock().unwrap() = Some(track.clone());
                    appsrc.clone()
                };
                let (counted, reports) = (counted.clone(), reports.clone());
                readers.push(tokio::spawn(async move {
                    let rate = if audio { 48_000.0 } else { 90_000.0 };
                    while let Some(event) = track.poll().await {
                        match event {
                            TrackRemoteEvent::OnRtpPacket(packet) => {
                                let at = std::time::SystemTime::now();
                                let mut d = counted.lock().unwrap();
                                if audio {
                                    d.audio_packets += 1;
                                } else {
                                    d.rtp_packets += 1;
                                }
                                let sr = reports.lock().unwrap().get(&packet.header.ssrc).copied();
                                if let Some((ntp, rtp)) = sr {
                                    let sent_unix = rtc::shared::time::SystemInstant::ntp2unix(ntp)
                                        .as_secs_f64()
                                        + f64::from(
                                            packet.header.timestamp.wrapping_sub(rtp) as i32
                                        ) / rate;
                                    let at_unix = at
                                        .duration_since(std::time::UNIX_EPOCH)
                                        .unwrap()
                                        .as_secs_f64();
                                    d.sync_offsets_ms
                                        .push((audio, (at_unix - sent_unix) * 1000.0));
                                }
                                drop(d);
                                if let Ok(bytes) = packet.marshal() {
                                    let _ =
                                        sink.push_buffer(gst::Buffer::from_slice(bytes.to_vec()));
                                }
                            }
                            TrackRemoteEvent::OnRtcpPacket(packets) => {
                                for p in &packets {
                                    if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                                        reports
                                            .lock()
                                            .unwrap()
                                            .insert(sr.ssrc, (sr.ntp_time, sr.rtp_time));
                                        *counted
                                            .lock()
                                            .unwrap()
                                            .sender_reports
                                            .entry(sr.ssrc)
                                            .or_default() += 1;
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }));
            }
            for r in readers {
                let _ = r.await;
            }
        }));

        // Signalling from rtcam: the answer is applied before returning, so callers can rely
        // on negotiation being done; candidates before it are held, later ones applied as they come.
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let mut pending_candidates = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(deadline.into(), inbox.recv())
                .await
                .expect("rtcam answered within 10 s")
                .expect("inbox open");
            messages.lock().unwrap().push(msg.clone());
            match msg["type"].as_str() {
                Some("answer") => {
                    let answer =
                        RTCSessionDescription::answer(msg["sdp"].as_str().unwrap().to_string())
                            .unwrap();
                    pc.set_remote_description(answer).await.unwrap();
                    for c in pending_candidates.drain(..) {
                        let _ = pc.add_ice_candidate(c).await;
                    }
                    break;
                }
                Some("candidate") => {
                    if !msg["candidate"].as_str().unwrap_or("").is_empty() {
                        pending_candidates.push(candidate_init(&msg));
                    }
                }
                other => panic!("unexpected reply before answer: {other:?} {msg}"),
            }
        }
        let channel_messages = Arc::new(Mutex::new(Vec::new()));
        let (open, channel_open) = tokio::sync::watch::channel(false);
        if let Some(dc) = control.clone() {
            let msgs = channel_messages.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(event) = dc.poll().await {
                    match event {
                        DataChannelEvent::OnOpen => {
                            let _ = open.send(true);
                        }
                        DataChannelEvent::OnMessage(m) => {
                            if let Ok(v) = serde_json::from_slice::<Value>(&m.data) {
                                msgs.lock().unwrap().push(v);
                            }
                        }
                        DataChannelEvent::OnClose => break,
                        _ => {}
                    }
                }
            }));
        }
        let (pc2, messages2) = (pc.clone(), messages.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = inbox.recv().await {
                messages2.lock().unwrap().push(msg.clone());
                if msg["type"] == "candidate" && !msg["candidate"].as_str().unwrap_or("").is_empty()
                {
                    let _ = pc2.add_ice_candidate(candidate_init(&msg)).await;
                }
            }
        }));
        Viewer {
            sid,
            pc,
            client,
            in_topic,
            decoded,
            messages,
            _pipeline: decoder,
            _audio_pipeline: audio_decoder,
            tasks,
            control,
            track: track_slot,
            channel_messages,
            channel_open,
            gathered,
        }
    }

    /// The ICE part of the stats report, for failure messages.
    pub async fn ice_stats(&self) -> String {
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let mut out = String::new();
        for entry in report.iter() {
            match entry {
                RTCStatsReportEntry::LocalCandidate(_)
                | RTCStatsReportEntry::RemoteCandidate(_)
                | RTCStatsReportEntry::IceCandidatePair(_)
                | RTCStatsReportEntry::Transport(_) => out.push_str(&format!("{entry:?}\n")),
                _ => {}
            }
        }
        out
    }

    /// The pair ICE selected (the transport's selected pair, or else the nominated one): its
    /// local candidate's type, and its remote candidate's type and address. For a reflexive
    /// local candidate ICE pairs its base, so the local type shows as `host` then.
    pub async fn selected_pair(&self) -> Option<(String, String, String)> {
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let mut local = std::collections::HashMap::new();
        let mut remote = std::collections::HashMap::new();
        let mut pairs = std::collections::HashMap::new();
        let mut selected = None;
        let mut nominated = None;
        for entry in report.iter() {
            match entry {
                // The crate prefixes candidate stats ids but not the ids pairs refer to them by.
                RTCStatsReportEntry::LocalCandidate(c) => {
                    let id = c.stats.id.trim_start_matches("RTCLocalIceCandidate_");
                    local.insert(id.to_string(), c.candidate_type.to_string());
                }
                RTCStatsReportEntry::RemoteCandidate(c) => {
                    let id = c.stats.id.trim_start_matches("RTCRemoteIceCandidate_");
                    let address = c.address.clone().unwrap_or_default();
                    remote.insert(id.to_string(), (c.candidate_type.to_string(), address));
                }
                RTCStatsReportEntry::IceCandidatePair(p) => {
                    let ids = (p.local_candidate_id.clone(), p.remote_candidate_id.clone());
                    if p.nominated {
                        nominated = Some(ids.clone());
                    }
                    pairs.insert(p.stats.id.clone(), ids);
                }
                RTCStatsReportEntry::Transport(t) if !t.selected_candidate_pair_id.is_empty() => {
                    selected = Some(t.selected_candidate_pair_id.clone());
                }
                _ => {}
            }
        }
        let (l, r) = selected
            .and_then(|id| pairs.get(&id).cloned())
            .or(nominated)?;
        // A remote candidate learned from the peer's checks (peer-reflexive) is left out of
        // the crate's stats: its type is all that is known.
        let (remote_type, remote_address) = remote
            .get(&r)
            .cloned()
            .unwrap_or_else(|| ("prflx".to_string(), String::new()));
        Some((local.get(&l)?.clone(), remote_type, remote_address))
    }

    /// Sends a command on the control channel (waiting for it to open) and returns the reply.
    pub async fn channel_request(&self, request: Value) -> Value {
        let dc = self
            .control
            .as_ref()
            .expect("viewer opened with a control channel");
        let id = request["id"].clone();
        let mut open = self.channel_open.clone();
        tokio::time::timeout(Duration::from_secs(10), open.wait_for(|o| *o))
            .await
            .expect("control channel opened")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        dc.send_text(&request.to_string()).await.unwrap();
        loop {
            let found = self
                .channel_messages
                .lock()
                .unwrap()
                .iter()
                .find(|m| m.get("type").is_none() && m["id"] == id)
                .cloned();
            if let Some(reply) = found {
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "no reply on the control channel to {request}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a pushed message of `kind` ("status", "telemetry") that `pred` accepts.
    pub async fn channel_push(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let found = self
                .channel_messages
                .lock()
                .unwrap()
                .iter()
                .find(|m| m["type"] == kind && pred(m))
                .cloned();
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Sends a picture loss indication, as a browser does when its decoder loses the picture.
    pub async fn send_pli(&self) {
        let track = self.track.lock().unwrap().clone().expect("track received");
        let media_ssrc = *track.ssrcs().await.first().unwrap();
        track
            .write_rtcp(vec![Box::new(
                rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                },
            )])
            .await
            .unwrap();
    }

    pub fn decoded(&self) -> Decoded {
        self.decoded.lock().unwrap().clone()
    }

    /// Waits until `frames` frames are decoded or `timeout` passes; returns what was decoded.
    pub async fn wait_frames(&self, frames: usize, timeout: Duration) -> Decoded {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.decoded();
            if d.frames >= frames || Instant::now() > deadline {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn has_message(&self, kind: &str) -> Option<Value> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .find(|m| m["type"] == kind)
            .cloned()
    }

    /// Publishes any message on this session's `in` topic, as this viewer.
    pub async fn send_raw(&self, body: Value) {
        publish(&self.client, &self.in_topic, body).await;
    }

    pub async fn bye(self) {
        publish(&self.client, &self.in_topic, json!({"type":"bye"})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = self.pc.close().await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn candidate_init(msg: &Value) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: msg["candidate"].as_str().unwrap_or_default().to_string(),
        sdp_mid: msg["sdpMid"].as_str().map(str::to_string),
        sdp_mline_index: msg["sdpMLineIndex"].as_u64().map(|v| v as u16),
        ..Default::default()
    }
}

fn add_candidates(sdp: &str, candidates: &[RTCIceCandidateInit]) -> String {
    let mut out = String::new();
    for line in sdp.split_inclusive("\r\n") {
        out.push_str(line);
        if line.starts_with("a=mid:") {
            for c in candidates {
                out.push_str(&format!("a={}\r\n", c.candidate));
            }
        }
    }
    out
}

pub async fn publish(client: &AsyncClient, topic: &str, body: Value) {
    client
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&body).unwrap(),
        )
        .await
        .unwrap();
}

/// GStreamer's own depayloader and decoder: what a browser does, in a pipeline.
struct Decoder {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
}

impl Decoder {
    /// With `keyframe_requests`, the pipeline recovers from loss as a browser's does (see
    /// `ViewerOptions::recover`) and each keyframe request of the depayloader is sent there.
    fn new(
        decoded: Arc<Mutex<Decoded>>,
        started: Instant,
        vp8: bool,
        keyframe_requests: Option<mpsc::UnboundedSender<()>>,
    ) -> Decoder {
        gst::init().unwrap();
        let (name, depay_element, decode) = if vp8 {
            ("VP8", "rtpvp8depay", "vp8dec")
        } else {
            ("H264", "rtph264depay", "h264parse ! avdec_h264")
        };
        let (jitter, depay) = if keyframe_requests.is_some() {
            // 400 ms: enough for a NACK round trip on a 160 ms path and the resend.
            (
                "rtpjitterbuffer latency=400 do-lost=true ! ",
                format!("{depay_element} request-keyframe=true wait-for-keyframe=true"),
            )
        } else {
            ("", depay_element.to_string())
        };
        let (pipeline, appsrc, sink) = launch_decoder(&format!(
            "appsrc name=src is-live=true format=time do-timestamp=true \
             caps=application/x-rtp,media=video,encoding-name={name},clock-rate=90000 ! \
             {jitter}{depay} ! {decode} ! videoconvert ! video/x-raw,format=I420 ! \
             appsink name=sink sync=false"
        ));
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let mut d = decoded.lock().unwrap();
                    if let Some(caps) = sample.caps() {
                        if let Some(st) = caps.structure(0) {
                            d.width = st.get::<i32>("width").unwrap_or(0);
                            d.height = st.get::<i32>("height").unwrap_or(0);
                        }
                    }
                    d.frames += 1;
                    d.last_sample = Some(sample.clone());
                    if d.first_frame_after.is_none() {
                        d.first_frame_after = Some(started.elapsed());
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        if let Some(requests) = keyframe_requests {
            // The depayloader asks upstream for a keyframe (a force-key-unit event) when the
            // jitter buffer reports a packet lost for good; upstream of appsrc is the network.
            let pad = appsrc.static_pad("src").unwrap();
            pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
                if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                    if gstreamer_video::UpstreamForceKeyUnitEvent::parse(ev).is_ok() {
                        let _ = requests.send(());
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        pipeline.set_state(gst::State::Playing).unwrap();
        Decoder { pipeline, appsrc }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Decodes the audio track's Opus, counting decoded buffers.
struct AudioDecoder {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
}

/// A decoding pipeline fed RTP through its `src` appsrc, with its output at the `sink` appsink.
fn launch_decoder(description: &str) -> (gst::Pipeline, gst_app::AppSrc, gst_app::AppSink) {
    let pipeline = gst::parse::launch(description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let appsrc = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    (pipeline, appsrc, sink)
}

impl AudioDecoder {
    fn new(decoded: Arc<Mutex<Decoded>>) -> AudioDecoder {
        gst::init().unwrap();
        let (pipeline, appsrc, sink) = launch_decoder(
            "appsrc name=src is-live=true format=time do-timestamp=true \
             caps=application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111 ! \
             rtpopusdepay ! opusdec ! appsink name=sink sync=false",
        );
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let _ = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    decoded.lock().unwrap().audio_decoded += 1;
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline.set_state(gst::State::Playing).unwrap();
        AudioDecoder { pipeline, appsrc }
    }
}

impl Drop for AudioDecoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Hands sender reports to the application (the tracks' `OnRtcpPacket`), as rtcam's own
/// keyframe-request interceptor does for PLI: the crate keeps inbound RTCP to its interceptors
/// otherwise. Everything else stops here, at the end of the chain.
#[derive(Default)]
struct SenderReportsToApp {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for SenderReportsToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &msg.message.packet {
            let reports: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| p.as_any().is::<SenderReport>())
                .cloned()
                .collect();
            if reports.is_empty() {
                return Ok(());
            }
            msg.message.packet = InterceptorPacket::Rtcp(reports);
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

impl Interceptor for SenderReportsToApp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
