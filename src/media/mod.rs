//! The media pipeline: camera or test pattern → H.264 encoder → encoded frames for every viewer.
//! Viewers whose browser has no H.264 get VP8 from a second branch ([`vp8`]) that runs only
//! while one of them watches.
//!
//! One pipeline serves all viewers: it publishes [`EncodedFrame`]s on a broadcast channel and
//! each session packetizes them for its own peer. The pipeline is rebuilt after an error (run /
//! run_once with backoff) while the channel lives on, so viewers keep their track and simply see
//! frames again once a new pipeline runs.
//!
//! With `[audio]` the same pipeline also encodes the microphone to Opus, published on a second
//! broadcast channel (see [`audio`], which also explains how the two stay in sync).
//!
//! Where things are: `describe` says what pipeline to build (pure), `capture` opens the
//! source and builds it, `runner` runs pipelines one after another and serves the running
//! one, `appsink` hands every sink's buffers to its channel, `live` changes a running
//! pipeline. This file holds the [`Media`] handle the rest of rtcam uses, and [`start`].
//!
//! This module and its children are the only users of GStreamer and v4l.

mod appsink;
pub mod audio;
pub mod camera;
mod capture;
pub mod check;
mod describe;
pub mod encoder;
mod error;
pub mod histograms;
pub mod keyframe;
pub mod latency;
mod live;
pub mod orientation;
mod runner;
pub mod stamp;
pub mod v4l2;
pub mod vp8;

pub use crate::codec::VideoCodec;
use crate::config::{AudioConfig, EncoderConfig, SourceConfig, SourceKind};
use crate::health::Heartbeat;
use bytes::Bytes;
pub use capture::libcamera_camera;
use encoder::{EncoderChoice, EncoderSettings};
pub use error::{AudioError, BuildError, MediaError, SnapshotError};
use gstreamer as gst;
use runner::{Asked, MediaCommand, Mic, Runner, Shared};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Frames buffered per viewer before a slow one starts skipping to the next keyframe. About two
/// seconds at 30 fps: enough to ride out a hiccup, small enough to bound memory.
const FRAME_BUFFER: usize = 64;

/// One encoded access unit (all NAL units of one frame, Annex B byte-stream).
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// Shared, not copied, by every viewer.
    pub data: Bytes,
    /// An IDR frame with SPS/PPS in front: a viewer can start decoding here.
    pub keyframe: bool,
    /// How long the frame is shown; drives the RTP timestamp step.
    pub duration: Duration,
    /// When the pipeline handed the frame over.
    pub produced: Instant,
    /// When its picture was captured (the buffer's timestamp on the pipeline clock), for the
    /// per-stage latency in telemetry; `produced` when the buffer had none.
    pub captured: Instant,
}

/// Whether the camera is delivering, for `R/status` and `rtcam check`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CameraState {
    /// No camera in use (the test pattern).
    #[default]
    None,
    /// Open and streaming.
    Ok,
    /// Gone or failing (unplugged, ENODEV, busy, cannot do the configured format); retried with
    /// backoff while viewers stay connected.
    Lost,
}

impl CameraState {
    /// The word used in status messages; `None` for no camera.
    pub fn as_status(self) -> Option<&'static str> {
        match self {
            CameraState::None => None,
            CameraState::Ok => Some("ok"),
            CameraState::Lost => Some("lost"),
        }
    }
}

/// What the pipeline is running, for status and logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaInfo {
    pub source: String,
    pub encoder: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub bitrate_kbps: u32,
    pub running: bool,
    /// Pixel format the source delivers (`YUYV`, `MJPG`, …; `I420` for the test pattern).
    pub format: String,
    /// The frame rate the config asked for; `fps` is what the source granted.
    pub asked_fps: u32,
    pub camera: CameraState,
    /// The V4L2 node in use, for reading and setting its controls.
    pub device: Option<PathBuf>,
    /// False while the privacy switch is off.
    pub streaming: bool,
    /// The VP8 fallback encoder runs (for viewers without H.264) beside `encoder`.
    pub vp8_running: bool,
    /// Pipeline rebuilds after errors since rtcam started (not the ones asked for by commands).
    pub restarts: u64,
    /// Why the pipeline last failed, for `R/status`; kept after it recovers so an operator
    /// can see what happened, replaced by the next failure.
    pub last_error: Option<String>,
}

/// Counters the pipeline keeps; telemetry turns them into rates.
#[derive(Debug, Default)]
pub struct MediaStats {
    pub frames: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    pub keyframes: std::sync::atomic::AtomicU64,
    pub restarts: std::sync::atomic::AtomicU64,
    /// Frames and keyframes of the VP8 fallback encoder, counted apart from the H.264 ones.
    pub vp8_frames: std::sync::atomic::AtomicU64,
    pub vp8_keyframes: std::sync::atomic::AtomicU64,
    /// Capture → encoded → sent, for telemetry and `/metrics`.
    pub latency: latency::StageLatency,
    /// What viewers were sent and what they skipped, summed over every session since start.
    /// Sessions keep their own figures too, but those go when the viewer leaves; these are
    /// `/metrics`' counters, which must never go down.
    pub viewers: ViewerTotals,
}

/// Process-wide counts of what every viewer session did (see [`MediaStats::viewers`]).
#[derive(Debug, Default)]
pub struct ViewerTotals {
    pub frames_sent: std::sync::atomic::AtomicU64,
    /// Frames not sent: waiting for a keyframe, skipped after falling behind or by pacing.
    pub frames_skipped: std::sync::atomic::AtomicU64,
    pub bytes_sent: std::sync::atomic::AtomicU64,
    /// Packets viewers asked to be resent (NACK), and the packets resent for them.
    pub nacked_packets: std::sync::atomic::AtomicU64,
    pub retransmitted_packets: std::sync::atomic::AtomicU64,
}

/// Handle to the running media pipeline; cheap to clone.
#[derive(Clone)]
pub struct Media {
    frames: broadcast::Sender<EncodedFrame>,
    /// VP8 frames from the fallback encoder, which runs only while this has receivers.
    vp8_frames: broadcast::Sender<EncodedFrame>,
    /// `[encoder] vp8_fallback` is on and GStreamer has `vp8enc`.
    vp8_available: bool,
    commands: mpsc::UnboundedSender<MediaCommand>,
    info: watch::Receiver<MediaInfo>,
    encoders_running: Arc<AtomicUsize>,
    /// Beats with every frame, and while the loop waits for a good reason; a stalled pipeline
    /// stops it, which stops the systemd watchdog pings.
    heartbeat: Heartbeat,
    stats: Arc<MediaStats>,
    /// Opus packets of the microphone branch; `None` without `[audio] enabled`.
    audio: Option<broadcast::Sender<audio::AudioPacket>>,
    /// The board's speaker for viewers' microphones; `None` without `[audio] talkback`.
    talkback: Option<audio::Talkback>,
    audio_stats: Arc<audio::AudioStats>,
}

impl Media {
    /// A receiver of every Opus packet from now on, if the camera has audio. Subscribe to the
    /// video first: that is what starts the pipeline, and the audio runs with it.
    pub fn subscribe_audio(&self) -> Option<broadcast::Receiver<audio::AudioPacket>> {
        self.audio.as_ref().map(|a| a.subscribe())
    }

    /// Whether viewers are offered audio.
    pub fn has_audio(&self) -> bool {
        self.audio.is_some()
    }

    /// The speaker for viewers' microphones, when talkback is enabled.
    pub fn talkback(&self) -> Option<&audio::Talkback> {
        self.talkback.as_ref()
    }

    pub fn audio_stats(&self) -> &audio::AudioStats {
        &self.audio_stats
    }

    /// A receiver of every frame from now on. Start sending at the first keyframe.
    /// On demand: the first receiver starts the pipeline if it is idle.
    pub fn subscribe(&self) -> broadcast::Receiver<EncodedFrame> {
        self.subscribe_codec(VideoCodec::H264)
    }

    /// A receiver of every frame in `codec` from now on. The first VP8 receiver starts the
    /// VP8 encoder; it stops once the last one is dropped.
    pub fn subscribe_codec(&self, codec: VideoCodec) -> broadcast::Receiver<EncodedFrame> {
        let rx = match codec {
            VideoCodec::H264 => self.frames.subscribe(),
            VideoCodec::Vp8 => self.vp8_frames.subscribe(),
        };
        let _ = self.commands.send(MediaCommand::Demand);
        rx
    }

    /// Asks for a keyframe soon; requests are merged so a crowd costs one.
    pub fn request_keyframe(&self) {
        self.request_keyframe_for(VideoCodec::H264);
    }

    /// Asks the encoder of `codec` for a keyframe soon, merged per encoder.
    pub fn request_keyframe_for(&self, codec: VideoCodec) {
        let _ = self.commands.send(MediaCommand::Keyframe(codec));
    }

    /// Changes the encoder bitrate; applied live where the encoder allows it, else by rebuilding
    /// the pipeline (viewers keep their tracks either way).
    pub fn set_bitrate(&self, kbps: u32) {
        let _ = self.commands.send(MediaCommand::SetBitrate(kbps));
    }

    /// Changes size and rate: the pipeline is rebuilt, viewers stay connected and the
    /// browser's decoder follows the new SPS.
    pub fn reconfigure(&self, width: u32, height: u32, fps: u32) {
        let _ = self
            .commands
            .send(MediaCommand::Reconfigure { width, height, fps });
    }

    /// Turns the picture: the pipeline is rebuilt (viewers see a keyframe with the new
    /// orientation, and the camera's flip controls are set again).
    pub fn set_orientation(&self, o: orientation::Orientation) {
        let _ = self.commands.send(MediaCommand::Orient(o));
    }

    /// Rebuilds the pipeline from scratch (camera reopened, encoder recreated).
    pub fn restart(&self) {
        let _ = self.commands.send(MediaCommand::Restart);
    }

    /// Privacy switch: off stops the pipeline and closes the camera until switched on again.
    pub fn set_streaming(&self, on: bool) {
        let _ = self.commands.send(MediaCommand::Streaming(on));
    }

    /// A JPEG of the current frame, taken without disturbing the stream.
    pub async fn snapshot(&self) -> Result<Bytes, MediaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(MediaCommand::Snapshot(tx))
            .map_err(|_| SnapshotError::NotRunning)?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| SnapshotError::TimedOut)?
            .map_err(|_| SnapshotError::Stopped)?
    }

    pub fn stats(&self) -> &MediaStats {
        &self.stats
    }

    pub fn info(&self) -> watch::Receiver<MediaInfo> {
        self.info.clone()
    }

    /// The H.264 encoder's bitrate now (what the next pipeline starts with while none runs).
    /// Set through [`Media::set_bitrate`]; the media task keeps it, in [`MediaInfo`].
    pub fn bitrate_kbps(&self) -> u32 {
        self.info.borrow().bitrate_kbps
    }

    /// Encoder instances alive now: 1 while a pipeline runs, whatever the number of viewers,
    /// plus 1 while the VP8 fallback runs.
    pub fn encoders_running(&self) -> usize {
        self.encoders_running.load(Ordering::Relaxed)
    }

    /// Whether viewers without H.264 can be served VP8: asked for by the config and the
    /// encoder present.
    pub fn vp8_available(&self) -> bool {
        self.vp8_available
    }

    /// The pipeline's liveness, for the watchdog.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Fault injection for tests: makes the running pipeline's encoder post an ERROR message on
    /// the bus, as an encoder does when it fails (GStreamer's `GST_ELEMENT_ERROR`). From there
    /// it takes the same path as a real failure: the pipeline is torn down and rebuilt, the
    /// restart is counted, logged and reported in status. Ignored while no pipeline runs.
    #[doc(hidden)]
    pub fn inject_encoder_error(&self, message: &str) {
        let _ = self
            .commands
            .send(MediaCommand::InjectError(message.to_string()));
    }
}

/// Starts the media pipeline task. Fails only on what retrying cannot fix (no encoder at all,
/// GStreamer missing); a camera that is unplugged or busy is retried in the background.
pub fn start(
    source: &SourceConfig,
    encoder_cfg: &EncoderConfig,
    audio_cfg: &AudioConfig,
    shutdown: CancellationToken,
) -> Result<(Media, tokio::task::JoinHandle<()>), MediaError> {
    let (choice, vp8_available) = check_elements(source, encoder_cfg, audio_cfg)?;
    let (frames, _) = broadcast::channel(FRAME_BUFFER);
    let (vp8_frames, _) = broadcast::channel(FRAME_BUFFER);
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (info_tx, info_rx) = watch::channel(MediaInfo {
        streaming: true,
        ..Default::default()
    });
    let audio_stats = Arc::new(audio::AudioStats::default());
    let audio_packets = audio_cfg
        .enabled
        .then(|| broadcast::channel(audio::AUDIO_BUFFER).0);
    let talkback = (audio_cfg.enabled && audio_cfg.talkback)
        .then(|| {
            audio_cfg
                .sink()
                .map(|s| audio::Talkback::new(s, audio_stats.clone()))
        })
        .transpose()
        .map_err(AudioError::Endpoint)?;
    let shared = Shared {
        frames: frames.clone(),
        commands,
        info: info_tx,
        encoders_running: Arc::default(),
        heartbeat: Heartbeat::new("media pipeline"),
        stats: Arc::default(),
        audio_stats,
    };
    let media = Media {
        audio: audio_packets.clone(),
        talkback,
        audio_stats: shared.audio_stats.clone(),
        frames,
        vp8_frames: vp8_frames.clone(),
        vp8_available,
        commands: commands_tx,
        info: info_rx,
        encoders_running: shared.encoders_running.clone(),
        heartbeat: shared.heartbeat.clone(),
        stats: shared.stats.clone(),
    };
    let asked = Asked {
        source: source.clone(),
        settings: EncoderSettings {
            bitrate_kbps: encoder_cfg.bitrate_kbps,
            keyframe_interval: encoder_cfg.keyframe_interval,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        },
        streaming: true,
    };
    let mic = audio_packets.map(|packets| Mic {
        cfg: audio_cfg.clone(),
        packets,
    });
    let runner = Runner::new(
        asked,
        choice,
        Duration::from_millis(encoder_cfg.keyframe_min_interval_ms),
        vp8_frames,
        mic,
        shared,
    );
    let task = tokio::spawn(runner.run(shutdown));
    Ok((media, task))
}

/// What must be installed for this config: GStreamer itself, the audio elements, libcamera's
/// source, an H.264 encoder (the one chosen, logged). Also whether VP8 can be served.
fn check_elements(
    source: &SourceConfig,
    encoder_cfg: &EncoderConfig,
    audio_cfg: &AudioConfig,
) -> Result<(EncoderChoice, bool), MediaError> {
    gst::init()?;
    if audio_cfg.enabled {
        audio::check_elements(audio_cfg)?;
    }
    if source.kind == SourceKind::Libcamera && gst::ElementFactory::find("libcamerasrc").is_none() {
        return Err(MediaError::LibcameraMissing);
    }
    let choice = encoder::choose(encoder_cfg, |name| {
        gst::ElementFactory::find(name).is_some()
    })?;
    tracing::info!(
        encoder = choice.spec.element,
        "encoder chosen: {}",
        choice.reason
    );
    let vp8_available =
        encoder_cfg.vp8_fallback && gst::ElementFactory::find(encoder::VP8.element).is_some();
    if encoder_cfg.vp8_fallback && !vp8_available {
        tracing::warn!(
            "[encoder] vp8_fallback: GStreamer has no vp8enc (install gstreamer1.0-plugins-good); \
             browsers without H.264 get no_video_codec"
        );
    }
    Ok((choice, vp8_available))
}
