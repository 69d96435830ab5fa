//! The Rust WebRTC viewer of rtcam's integration tests, its soak and its benchmark: speaks
//! signalling protocol v1 over MQTT as the viewer page does, receives rtcam's H.264 (or,
//! offering only VP8, VP8) and Opus over WebRTC, and decodes them with GStreamer.
//!
//! It records what it saw ([`Decoded`]): frames and their size, packets and sequence gaps,
//! sender reports and how late packets are against them, and when each stage of session setup
//! was reached ([`Stages`]). [`ViewerOptions`] picks how it offers (trickle or not, a control
//! data channel, audio, VP8 only, a token, its addresses and ICE servers) and how much it does
//! (decoding, loss recovery as a browser, reading the benchmark's capture-time barcode, or a
//! light viewer that only counts RTP). [`janus::JanusViewer`] watches a Janus streaming
//! mountpoint with the same peer connection and counters, for the benchmark's comparison.
//! [`whep::WhepPlayer`] is a client of rtcam's WHEP door.

mod channel;
mod connect;
mod decode;
pub mod janus;
mod mqtt;
mod peer;
mod pli;
pub mod ports;
mod seen;
mod sender_reports;
mod stats;
mod tracks;
pub mod whep;

pub use mqtt::publish;
pub use peer::{add_recvonly, candidate_type, extmap_id, Gathered, PLAYOUT_DELAY_URI};
pub use seen::{Decoded, Stages};

use rumqttc::AsyncClient;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{PeerConnection, RTCIceServer, RTCPeerConnectionState};

/// How long each step of setup may take (the SUBACK, rtcam's ICE servers, its answer) unless
/// [`ViewerOptions::step_timeout`] says otherwise.
pub const STEP: Duration = Duration::from_secs(10);

/// Why a viewer could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error("MQTT: {0}")]
    Mqtt(#[from] rumqttc::ClientError),
    #[error("WebRTC: {0}")]
    WebRtc(#[from] rtc::shared::error::Error),
    #[error("GStreamer: {0}")]
    Gstreamer(#[from] gstreamer::glib::Error),
    #[error("no {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("rtcam refused: {0}")]
    Refused(Value),
    #[error("the MQTT connection ended")]
    Disconnected,
    #[error("the viewer gathered no candidates")]
    NoCandidates,
    #[error("Janus: {0}")]
    Janus(String),
    #[error("Janus HTTP: {0}")]
    Http(#[from] std::io::Error),
    #[error("Janus JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// How the viewer offers, and how much it does with what arrives.
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
    /// ICE over TCP alone, as on a network that blocks UDP: TCP candidates on `udp_addrs`'
    /// addresses, and of those only the active one is sent, as a browser does (it connects out
    /// to rtcam's passive candidate, never the other way).
    pub tcp_only: bool,
    /// STUN/TURN servers for the viewer's own gathering.
    pub ice_servers: Vec<RTCIceServer>,
    /// Ask rtcam for its ICE servers (`ice_servers` message) before offering, and use them too.
    pub ask_ice_servers: bool,
    /// `iceTransportPolicy: "relay"`: gather relay candidates only.
    pub relay_only: bool,
    /// Count RTP only, decode nothing: cheap enough for dozens of viewers in one process.
    pub no_decode: bool,
    /// No interceptors either (no NACKs, receiver reports or sender reports to the app): the
    /// soak's thousand viewers.
    pub light: bool,
    /// Read the capture-time barcode rtcam writes with `RTCAM_BENCH_STAMP=1` from every
    /// picture into `Decoded::latencies_ms`, decoding H.264 on one thread as a browser does.
    pub stamps: bool,
    /// The ICE connectivity check interval (the crate's default when none): the benchmark's
    /// experiment on which side paces session setup.
    pub ice_check_interval: Option<Duration>,
    /// The start of the session id and MQTT client id (`t` when none), telling apart in a
    /// broker's log who connected.
    pub sid_prefix: Option<&'static str>,
    /// How long each step of setup may take ([`STEP`] when none).
    pub step_timeout: Option<Duration>,
    /// Offer the playout-delay header extension for video, as Chromium does, and read it from
    /// every video packet into `Decoded::playout_delay`.
    pub playout_delay: bool,
}

/// A connected viewer: its offer answered, its tasks feeding [`Decoded`].
pub struct Viewer {
    pub sid: String,
    pc: Arc<dyn PeerConnection>,
    client: AsyncClient,
    in_topic: String,
    shared: Arc<seen::Shared>,
    /// Messages received on the session's `out` topic, for assertions on signalling.
    pub messages: Arc<Mutex<Vec<Value>>>,
    _decoders: Vec<decode::Decoder>,
    /// The MQTT connection's task first, then the rest.
    tasks: Vec<JoinHandle<()>>,
    control: Option<Arc<dyn DataChannel>>,
    video_track: pli::VideoTrack,
    /// Messages received on the control channel.
    pub channel_messages: Arc<Mutex<Vec<Value>>>,
    channel_open: watch::Receiver<bool>,
    /// The viewer's own candidates.
    pub gathered: Arc<Mutex<Gathered>>,
    state: watch::Receiver<RTCPeerConnectionState>,
}

impl Viewer {
    /// A default viewer (H.264, trickle, decoding); panics if it cannot connect.
    pub async fn connect(broker: (&str, u16), root: &str) -> Viewer {
        Self::connect_with(broker, root, ViewerOptions::default()).await
    }

    /// A viewer as `opts` describe; panics if it cannot connect (what a test wants).
    pub async fn connect_with(broker: (&str, u16), root: &str, opts: ViewerOptions) -> Viewer {
        Self::try_connect(broker, root, opts)
            .await
            .unwrap_or_else(|e| panic!("viewer of {root} on {}:{}: {e}", broker.0, broker.1))
    }

    /// Connects to the broker, offers, and applies rtcam's answer before returning, so callers
    /// can rely on negotiation being done; ICE and DTLS go on (see [`Viewer::wait_stage`]).
    pub async fn try_connect(
        broker: (&str, u16),
        root: &str,
        opts: ViewerOptions,
    ) -> Result<Viewer, ViewerError> {
        connect::run(broker, root, opts).await
    }

    /// What the viewer has seen so far.
    pub fn decoded(&self) -> Decoded {
        self.shared.seen().clone()
    }

    /// When each stage of setup was reached.
    pub fn stages(&self) -> Stages {
        self.shared.seen().stages.clone()
    }

    /// The peer connection's state now.
    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// Waits until `frames` frames are decoded or `timeout` passes; returns what was decoded.
    pub async fn wait_frames(&self, frames: usize, timeout: Duration) -> Decoded {
        self.shared.wait(timeout, |d| d.frames >= frames).await.0
    }

    /// Waits until the stage `pick` names is reached, within `timeout`; returns when it was.
    pub async fn wait_stage(
        &self,
        pick: fn(&Stages) -> Option<Duration>,
        timeout: Duration,
    ) -> Option<Duration> {
        let (seen, _) = self
            .shared
            .wait(timeout, |d| pick(&d.stages).is_some())
            .await;
        pick(&seen.stages)
    }

    /// Waits until a frame arrived: decoded if decoding, else a whole frame's RTP.
    pub async fn wait_first_frame(&self, timeout: Duration) -> bool {
        self.wait_stage(|s| s.first_frame, timeout).await.is_some()
    }

    pub fn has_message(&self, kind: &str) -> Option<Value> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .find(|m| m["type"] == kind)
            .cloned()
    }

    /// The SDP of rtcam's answer; empty before it came.
    pub fn answer_sdp(&self) -> String {
        self.has_message("answer")
            .and_then(|m| m["sdp"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Publishes any message on this session's `in` topic, as this viewer.
    pub async fn send_raw(&self, body: Value) {
        publish(&self.client, &self.in_topic, body).await.unwrap();
    }

    /// Sends a picture loss indication, as a browser does when its decoder loses the picture.
    pub async fn send_pli(&self) {
        let track = self
            .video_track
            .lock()
            .unwrap()
            .clone()
            .expect("track received");
        assert!(pli::send(&*track).await, "PLI sent");
    }

    /// Leaves as the page does: `bye`, then the peer connection closes.
    pub async fn bye(self) {
        let _ = publish(&self.client, &self.in_topic, json!({"type":"bye"})).await;
        self.leave().await;
    }

    /// Leaves without a word on MQTT: the peer connection closes (DTLS close_notify).
    pub async fn close(self) {
        self.leave().await;
    }

    /// Ends the MQTT connection once what was published has gone out (bounded), then closes
    /// the peer connection.
    async fn leave(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.tasks[0]).await;
        let _ = self.pc.close().await;
        for t in &self.tasks {
            t.abort();
        }
    }
}
