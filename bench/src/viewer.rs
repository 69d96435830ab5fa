//! One benchmark viewer: the protocol-v1 MQTT viewer of `tests/common/viewer.rs`, instrumented.
//! It records when each stage of session setup happened (answer, ICE connected, DTLS done,
//! first RTP packet, first decoded frame), counts RTP packets, frames and sequence gaps, and,
//! when decoding, reads the capture-time barcode (`rtcam::media::stamp`) from every picture.

use anyhow::{anyhow, bail, Context, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::shared::marshal::Marshal;
use rtcam::media::stamp;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCIceConnectionState, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder,
};

/// When each stage of setup was reached, counted from the moment the offer was published.
#[derive(Debug, Default, Clone)]
pub struct Stages {
    pub answer: Option<Duration>,
    pub ice_connected: Option<Duration>,
    pub dtls_connected: Option<Duration>,
    pub first_rtp: Option<Duration>,
    pub first_frame: Option<Duration>,
}

/// Running counters; copied out at the start and end of a measuring window.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub rtp_packets: u64,
    /// Frames as RTP sees them (packets with the marker bit): what a non-decoding viewer counts.
    pub rtp_frames: u64,
    pub decoded_frames: u64,
    /// Highest extended sequence number minus the first, plus one: packets that should have come.
    pub expected: u64,
    /// Capture-to-decoded ages in ms, one per picture whose barcode read back.
    pub latencies_ms: Vec<i64>,
    /// Pictures with no readable barcode (should stay 0 with the stamp on).
    pub unreadable: u64,
}

struct Shared {
    start: Mutex<Option<Instant>>,
    stages: Mutex<Stages>,
    counters: Mutex<Counters>,
}

impl Shared {
    fn mark(&self, pick: impl FnOnce(&mut Stages) -> &mut Option<Duration>) {
        let Some(start) = *self.start.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        let slot = pick(&mut stages);
        if slot.is_none() {
            *slot = Some(start.elapsed());
        }
    }
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        // A poisoned lock only means a callback panicked mid-update; the counts are still usable.
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Handler {
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send(init);
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
        // The peer connection is `connected` once ICE is and the DTLS handshake is done.
        if state == RTCPeerConnectionState::Connected {
            self.shared.mark(|s| &mut s.dtls_connected);
        }
    }
}

pub struct Viewer {
    pc: Arc<dyn PeerConnection>,
    client: AsyncClient,
    in_topic: String,
    shared: Arc<Shared>,
    _decoder: Option<Decoder>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Viewer {
    /// Connects, offers and waits for the answer. `decode` runs GStreamer's H.264 decoder and
    /// reads the barcode; without it only RTP is counted (cheap enough for 32 in one process).
    pub async fn connect(broker: (&str, u16), root: &str, decode: bool) -> Result<Viewer> {
        let sid = format!("b{:016x}", rand::random::<u64>());
        let in_topic = format!("{root}/session/{sid}/in");
        let out_topic = format!("{root}/session/{sid}/out");
        let shared = Arc::new(Shared {
            start: Mutex::new(None),
            stages: Mutex::new(Stages::default()),
            counters: Mutex::new(Counters::default()),
        });

        let mut mqtt_opts = MqttOptions::new(sid.clone(), broker.0, broker.1);
        mqtt_opts.set_max_packet_size(1 << 20, 1 << 20);
        mqtt_opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(mqtt_opts, 64);
        client.subscribe(&out_topic, QoS::AtLeastOnce).await?;
        let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Value>();
        let (subacked_tx, subacked) = tokio::sync::oneshot::channel();
        let mut tasks = vec![tokio::spawn(async move {
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
        })];
        tokio::time::timeout(Duration::from_secs(10), subacked)
            .await
            .context("no SUBACK from the broker in 10 s")??;

        let (pc, mut cand_rx, track_rx) = build_pc(&shared, "127.0.0.1:0").await?;
        pc.add_transceiver_from_kind(
            RtpCodecKind::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )
        .await?;
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        let sdp = pc
            .local_description()
            .await
            .ok_or_else(|| anyhow!("no local description"))?
            .sdp;

        let decoder = if decode {
            Some(Decoder::new(shared.clone())?)
        } else {
            None
        };
        tasks.push(spawn_track_counter(
            track_rx,
            shared.clone(),
            decoder.as_ref().map(|d| d.appsrc.clone()),
        ));

        // The clock starts as the offer goes out: everything after is the camera's doing.
        *shared.start.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        publish(&client, &in_topic, json!({"type":"offer","sdp":sdp})).await?;
        let (c2, t2) = (client.clone(), in_topic.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(c) = cand_rx.recv().await {
                let _ = publish(
                    &c2,
                    &t2,
                    json!({"type":"candidate","candidate":c.candidate,"sdpMid":"0","sdpMLineIndex":0}),
                )
                .await;
            }
        }));

        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let mut pending = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(deadline.into(), inbox.recv())
                .await
                .context("rtcam did not answer within 10 s")?
                .ok_or_else(|| anyhow!("MQTT inbox closed"))?;
            match msg["type"].as_str() {
                Some("answer") => {
                    shared.mark(|s| &mut s.answer);
                    let sdp = msg["sdp"].as_str().unwrap_or_default().to_string();
                    pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
                        .await?;
                    for c in pending.drain(..) {
                        let _ = pc.add_ice_candidate(c).await;
                    }
                    break;
                }
                Some("candidate") => {
                    if !msg["candidate"].as_str().unwrap_or("").is_empty() {
                        pending.push(candidate_init(&msg));
                    }
                }
                _ => bail!("rtcam refused the offer: {msg}"),
            }
        }
        let pc2 = pc.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = inbox.recv().await {
                if msg["type"] == "candidate" && !msg["candidate"].as_str().unwrap_or("").is_empty()
                {
                    let _ = pc2.add_ice_candidate(candidate_init(&msg)).await;
                }
            }
        }));
        Ok(Viewer {
            pc,
            client,
            in_topic,
            shared,
            _decoder: decoder,
            tasks,
        })
    }

    pub fn stages(&self) -> Stages {
        self.shared
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn counters(&self) -> Counters {
        self.shared.counters().clone()
    }

    /// Waits until a frame arrived: decoded if decoding, else a whole frame's RTP.
    pub async fn wait_first_frame(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.counters();
            if c.decoded_frames > 0 || (self._decoder.is_none() && c.rtp_frames > 0) {
                if self._decoder.is_none() {
                    self.shared.mark(|s| &mut s.first_frame);
                }
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub async fn bye(self) {
        let _ = publish(&self.client, &self.in_topic, json!({"type":"bye"})).await;
        let _ = self.pc.close().await;
        // Let the bye leave before the MQTT task goes.
        tokio::time::sleep(Duration::from_millis(50)).await;
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

async fn publish(client: &AsyncClient, topic: &str, body: Value) -> Result<()> {
    client
        .publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(&body)?)
        .await?;
    Ok(())
}

/// Depayloader and decoder, as a browser has them. One decoding thread: libav's frame threads
/// would each hold a frame back, latency a browser's decoder does not add.
struct Decoder {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
}

impl Decoder {
    fn new(shared: Arc<Shared>) -> Result<Decoder> {
        gst::init()?;
        let pipeline = gst::parse::launch(
            "appsrc name=src is-live=true format=time do-timestamp=true \
             caps=application/x-rtp,media=video,encoding-name=H264,clock-rate=90000 ! \
             rtph264depay ! h264parse ! avdec_h264 max-threads=1 ! \
             appsink name=sink sync=false caps=video/x-raw,format=I420",
        )?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
        let appsrc = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| anyhow!("no appsrc"))?;
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| anyhow!("no appsink"))?;
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    // Read the clock first: the age is measured at the moment of decoding.
                    let now = stamp::now_ms();
                    let age = read_stamp(&sample).map(|ms| stamp::age_ms(ms, now));
                    shared.mark(|s| &mut s.first_frame);
                    let mut c = shared.counters();
                    c.decoded_frames += 1;
                    match age {
                        Some(a) => c.latencies_ms.push(a),
                        None => c.unreadable += 1,
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline.set_state(gst::State::Playing)?;
        Ok(Decoder { pipeline, appsrc })
    }
}

fn read_stamp(sample: &gst::Sample) -> Option<u64> {
    use gstreamer_video::VideoFrameExt;
    let info = gstreamer_video::VideoInfo::from_caps(sample.caps()?).ok()?;
    let buffer = sample.buffer()?;
    let frame = gstreamer_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).ok()?;
    let stride = frame.plane_stride()[0] as usize;
    stamp::read(
        frame.plane_data(0).ok()?,
        stride,
        info.width() as usize,
        info.height() as usize,
    )
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The viewers' ICE check interval when set (`--viewer-ice-check-ms`): an experiment to tell
/// which side's 200 ms default paces session setup.
pub static ICE_CHECK_INTERVAL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

type Candidates = mpsc::UnboundedReceiver<RTCIceCandidateInit>;
type Tracks = mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>;

/// A receive-only peer connection bound to `udp_addr`, reporting into `shared`.
async fn build_pc(
    shared: &Arc<Shared>,
    udp_addr: &str,
) -> Result<(impl PeerConnection, Candidates, Tracks)> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let (cand_tx, cand_rx) = mpsc::unbounded_channel();
    let (track_tx, track_rx) = mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_include_loopback_candidate(true)
                .with_ice_connection_attempts(ICE_CHECK_INTERVAL.get().copied(), None)
                .build(),
        )
        .with_handler(Arc::new(Handler {
            candidates: cand_tx,
            tracks: track_tx,
            shared: shared.clone(),
        }))
        .with_udp_addrs(vec![udp_addr.to_string()])
        .build()
        .await?;
    Ok((pc, cand_rx, track_rx))
}

/// Counts the first track's packets, frames and sequence gaps; feeds the decoder if any.
fn spawn_track_counter(
    mut track_rx: Tracks,
    counted: Arc<Shared>,
    appsrc: Option<gst_app::AppSrc>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(track) = track_rx.recv().await else {
            return;
        };
        let mut first_seq: Option<u64> = None;
        let mut highest: u64 = 0;
        while let Some(event) = track.poll().await {
            let TrackRemoteEvent::OnRtpPacket(packet) = event else {
                continue;
            };
            counted.mark(|s| &mut s.first_rtp);
            {
                // Extend the 16-bit sequence number across wraps to count gaps (loss).
                let seq = u64::from(packet.header.sequence_number);
                let ext = match first_seq {
                    None => {
                        first_seq = Some(seq);
                        highest = seq;
                        seq
                    }
                    Some(_) => {
                        let base = highest & !0xffff;
                        let mut cand = base | seq;
                        if cand + 0x8000 < highest {
                            cand += 0x10000;
                        } else if cand > highest + 0x8000 && cand >= 0x10000 {
                            cand -= 0x10000;
                        }
                        cand
                    }
                };
                highest = highest.max(ext);
                let mut c = counted.counters();
                c.rtp_packets += 1;
                c.rtp_frames += u64::from(packet.header.marker);
                c.expected = highest - first_seq.unwrap_or(highest) + 1;
            }
            if let Some(appsrc) = &appsrc {
                if let Ok(bytes) = packet.marshal() {
                    let _ = appsrc.push_buffer(gst::Buffer::from_slice(bytes.to_vec()));
                }
            }
        }
    })
}

/// A viewer of a Janus streaming mountpoint through Janus's HTTP API: create a session, attach
/// the streaming plugin, `watch` (Janus offers), answer, `start`, trickle candidates; a task
/// long-polls the session's events, which also keeps it alive.
pub struct JanusViewer {
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    handle_url: String,
}

impl JanusViewer {
    pub async fn connect(base: &str, mountpoint: u64) -> Result<JanusViewer> {
        let shared = Arc::new(Shared {
            start: Mutex::new(Some(Instant::now())),
            stages: Mutex::new(Stages::default()),
            counters: Mutex::new(Counters::default()),
        });
        let created = janus_post(base, json!({"janus":"create"})).await?;
        let session = created["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("janus create: {created}"))?;
        let session_url = format!("{base}/{session}");
        let attached = janus_post(
            &session_url,
            json!({"janus":"attach","plugin":"janus.plugin.streaming"}),
        )
        .await?;
        let handle = attached["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("janus attach: {attached}"))?;
        let handle_url = format!("{session_url}/{handle}");

        let (events_tx, mut events) = mpsc::unbounded_channel::<Value>();
        let poll_url = format!("{session_url}?maxev=10");
        let mut tasks = vec![tokio::spawn(async move {
            loop {
                match janus_get(&poll_url).await {
                    Ok(Value::Array(list)) => list.into_iter().for_each(|e| {
                        let _ = events_tx.send(e);
                    }),
                    Ok(e) => {
                        let _ = events_tx.send(e);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })];

        janus_post(
            &handle_url,
            json!({"janus":"message","body":{"request":"watch","id":mountpoint}}),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let offer = loop {
            let e = tokio::time::timeout_at(deadline.into(), events.recv())
                .await
                .context("no offer from Janus in 10 s")?
                .ok_or_else(|| anyhow!("janus event poll ended"))?;
            if let Some(sdp) = e["jsep"]["sdp"].as_str() {
                break sdp.to_string();
            }
        };
        // Janus offers only the host's own address (libnice leaves loopback out); bind there,
        // which is still local traffic through the kernel like rtcam's viewers on 127.0.0.1.
        let udp_addr = offer
            .lines()
            .find_map(|l| l.strip_prefix("c=IN IP4 "))
            .map(|ip| format!("{}:0", ip.trim()))
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let (pc, mut cand_rx, track_rx) = build_pc(&shared, &udp_addr).await?;
        tasks.push(spawn_track_counter(track_rx, shared.clone(), None));
        pc.set_remote_description(RTCSessionDescription::offer(offer)?)
            .await?;
        let answer = pc.create_answer(None).await?;
        pc.set_local_description(answer).await?;
        let sdp = pc
            .local_description()
            .await
            .ok_or_else(|| anyhow!("no local description"))?
            .sdp;
        janus_post(
            &handle_url,
            json!({"janus":"message","body":{"request":"start"},"jsep":{"type":"answer","sdp":sdp}}),
        )
        .await?;
        let url = handle_url.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(c) = cand_rx.recv().await {
                let _ = janus_post(
                    &url,
                    json!({"janus":"trickle","candidate":{"candidate":c.candidate,"sdpMid":c.sdp_mid,"sdpMLineIndex":c.sdp_mline_index}}),
                )
                .await;
            }
        }));
        Ok(JanusViewer {
            pc: Arc::new(pc),
            shared,
            tasks,
            handle_url,
        })
    }

    pub fn counters(&self) -> Counters {
        self.shared.counters().clone()
    }

    pub async fn wait_first_frame(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.counters().rtp_frames > 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    pub async fn close(self) {
        let _ = janus_post(&self.handle_url, json!({"janus":"detach"})).await;
        let _ = self.pc.close().await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One request with a transaction id added; the harness needs no HTTP client crate for it.
async fn janus_post(url: &str, mut body: Value) -> Result<Value> {
    body["transaction"] = json!(format!("{:x}", rand::random::<u64>()));
    http("POST", url, Some(body.to_string())).await
}

async fn janus_get(url: &str) -> Result<Value> {
    http("GET", url, None).await
}

/// Plain HTTP/1.0 to Janus on loopback, one connection per request: 1.0 so the reply is never
/// chunked and ends when the connection does.
async fn http(method: &str, url: &str, body: Option<String>) -> Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let body = body.unwrap_or_default();
    let request = format!(
        "{method} /{path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("bad HTTP response from Janus"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("Janus: {}", head.lines().next().unwrap_or(""));
    }
    let v: Value =
        serde_json::from_str(payload.trim()).with_context(|| format!("Janus body: {payload}"))?;
    if v["janus"] == "error" {
        bail!("Janus error: {v}");
    }
    Ok(v)
}
