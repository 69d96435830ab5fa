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
//! This module and its children are the only users of GStreamer and v4l.

pub mod audio;
pub mod camera;
pub mod check;
pub mod encoder;
pub mod keyframe;
pub mod latency;
pub mod orientation;
pub mod stamp;
pub mod v4l2;
pub mod vp8;

use crate::config::{AudioConfig, EncoderConfig, PixelFormat, SourceConfig, SourceKind};
use crate::health::Heartbeat;
use crate::util::sleep_until;
use bytes::Bytes;
pub use crate::codec::VideoCodec;
use encoder::{EncoderChoice, EncoderSettings, Picture};
use futures::StreamExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use keyframe::{Decision, KeyframeLimiter};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Frames buffered per viewer before a slow one starts skipping to the next keyframe. About two
/// seconds at 30 fps: enough to ride out a hiccup, small enough to bound memory.
const FRAME_BUFFER: usize = 64;

const RESTART_FIRST: Duration = Duration::from_millis(250);

/// How often a running pipeline checks whether anyone still wants its frames.
const IDLE_CHECK: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(10);

/// How long a new pipeline counts as alive before its first frames: a USB camera can take a
/// few seconds to start streaming, an emulated board longer. After this only frames count.
const STARTUP_GRACE: Duration = Duration::from_secs(20);
/// How often the pipeline loop beats while it waits in a healthy state (starting, backing off).
const BEAT_EVERY: Duration = Duration::from_secs(1);

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

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("GStreamer cannot start: {0}")]
    Init(#[from] gst::glib::Error),
    #[error(transparent)]
    Encoder(#[from] encoder::EncoderError),
    #[error(transparent)]
    Camera(#[from] v4l2::V4l2Error),
    #[error("pipeline {0:?} cannot be built: {1}")]
    Build(String, String),
    #[error("pipeline error from {source_name}: {message}")]
    Runtime {
        source_name: String,
        message: String,
    },
    #[error("the camera stopped: {0}")]
    CaptureEnded(String),
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    #[error("[source] kind = \"libcamera\" needs GStreamer's libcamerasrc element; install the package gstreamer1.0-libcamera")]
    LibcameraMissing,
    #[error("this video source has no camera controls (they are for V4L2 cameras)")]
    NoControls,
    #[error(transparent)]
    Control(#[from] v4l2::controls::ControlError),
    #[error("audio: {0}")]
    Audio(String),
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

/// Requests to the media task.
#[derive(Debug)]
enum MediaCommand {
    /// Someone subscribed to frames: start the pipeline if it is idle.
    Demand,
    Keyframe(VideoCodec),
    SetBitrate(u32),
    Reconfigure {
        width: u32,
        height: u32,
        fps: u32,
    },
    /// New `[source]` rotation/hflip/vflip: the pipeline is rebuilt with them.
    Orient(orientation::Orientation),
    Restart,
    Streaming(bool),
    Snapshot(tokio::sync::oneshot::Sender<Result<Bytes, MediaError>>),
    /// Test seam: the encoder posts a genuine error message on the pipeline's bus.
    InjectError(String),
}

/// How long ago, on the pipeline clock, the sample's picture was captured. The timestamp is
/// read through the sample's segment: encoders shift theirs (x264enc by 1000 hours, to keep
/// decode timestamps positive), and the segment says by how much.
fn capture_age(sink: &gst_app::AppSink, sample: &gst::Sample) -> Option<Duration> {
    let pts = sample.buffer()?.pts()?;
    let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
    let captured = segment.to_running_time(pts)?;
    let now = sink.clock()?.time()?;
    let running = now.checked_sub(sink.base_time()?)?;
    running
        .checked_sub(captured)
        .map(|age| Duration::from_nanos(age.nseconds()))
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
    encoders_running: Arc<std::sync::atomic::AtomicUsize>,
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
            .map_err(|_| MediaError::Snapshot("the media pipeline is not running".into()))?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| MediaError::Snapshot("timed out".into()))?
            .map_err(|_| MediaError::Snapshot("the media pipeline stopped".into()))?
    }

    pub fn stats(&self) -> &MediaStats {
        &self.stats
    }

    pub fn info(&self) -> watch::Receiver<MediaInfo> {
        self.info.clone()
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

/// The resolved source: what `auto` turned into.
#[derive(Debug, Clone)]
enum Source {
    Test,
    V4l2(PathBuf),
    Libcamera,
}

/// The camera libcamera sees, by name, when GStreamer has `libcamerasrc`: its device provider
/// lists the cameras (none on a board without a CSI camera, or with only USB ones).
pub fn libcamera_camera() -> Option<String> {
    gst::init().ok()?;
    gst::ElementFactory::find("libcamerasrc")?;
    let provider = gst::DeviceProviderFactory::find("libcameraprovider")?.get()?;
    let first = provider.devices().into_iter().next()?;
    Some(first.display_name().to_string())
}

/// What to open this time, and for `auto` (or `v4l2` with no device) the lines saying why.
/// `had_camera`: once `auto` has found a camera, a missing one is a lost camera to wait for, not
/// a reason to switch to the test pattern.
fn resolve_source(
    cfg: &SourceConfig,
    had_camera: bool,
) -> Result<(Source, Vec<String>), MediaError> {
    Ok(match cfg.kind {
        SourceKind::Test => (Source::Test, Vec::new()),
        SourceKind::Libcamera => (Source::Libcamera, Vec::new()),
        SourceKind::V4l2 | SourceKind::Auto if !cfg.device.is_empty() => {
            (Source::V4l2(PathBuf::from(&cfg.device)), Vec::new())
        }
        SourceKind::V4l2 => {
            let pick = v4l2::auto_pick();
            let why = pick.explain();
            (
                Source::V4l2(pick.chosen.ok_or(v4l2::V4l2Error::NoDevice)?),
                why,
            )
        }
        SourceKind::Auto => {
            if let Some(name) = libcamera_camera() {
                let why = vec![format!(
                    "libcamera sees camera {name}: streaming from it (kind = \"auto\")"
                )];
                return Ok((Source::Libcamera, why));
            }
            let pick = v4l2::auto_pick();
            let mut why = pick.explain();
            match pick.chosen {
                Some(p) => (Source::V4l2(p), why),
                None if had_camera => return Err(v4l2::V4l2Error::NoDevice.into()),
                None => {
                    why.push("no camera found; streaming the test pattern".into());
                    (Source::Test, why)
                }
            }
        }
    })
}

/// Starts the media pipeline task. Fails only on what retrying cannot fix (no encoder at all,
/// GStreamer missing); a camera that is unplugged or busy is retried in the background.
pub fn start(
    source: &SourceConfig,
    encoder_cfg: &EncoderConfig,
    audio_cfg: &AudioConfig,
    shutdown: CancellationToken,
) -> Result<(Media, tokio::task::JoinHandle<()>), MediaError> {
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
    let (frames, _) = broadcast::channel(FRAME_BUFFER);
    let (vp8_frames, _) = broadcast::channel(FRAME_BUFFER);
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let (info_tx, info_rx) = watch::channel(MediaInfo {
        streaming: true,
        ..Default::default()
    });
    let encoders_running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let heartbeat = Heartbeat::new("media pipeline");
    let stats = Arc::new(MediaStats::default());
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
        .map_err(MediaError::Audio)?;
    let media = Media {
        audio: audio_packets.clone(),
        talkback,
        audio_stats: audio_stats.clone(),
        frames: frames.clone(),
        vp8_frames: vp8_frames.clone(),
        vp8_available,
        commands: commands_tx,
        info: info_rx,
        encoders_running: encoders_running.clone(),
        heartbeat: heartbeat.clone(),
        stats: stats.clone(),
    };
    let runner = Runner {
        source: source.clone(),
        settings: EncoderSettings {
            bitrate_kbps: encoder_cfg.bitrate_kbps,
            keyframe_interval: encoder_cfg.keyframe_interval,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        },
        choice,
        frames,
        commands: commands_rx,
        limiter: KeyframeLimiter::new(Duration::from_millis(encoder_cfg.keyframe_min_interval_ms)),
        vp8: vp8::Fallback::new(
            vp8_frames,
            KeyframeLimiter::new(Duration::from_millis(encoder_cfg.keyframe_min_interval_ms)),
        ),
        info: info_tx,
        encoders_running,
        uses_camera: false,
        heartbeat,
        stats,
        streaming: true,
        always_on: source.always_on,
        idle_stop: Duration::from_secs(source.idle_stop_secs),
        pending_snapshots: Vec::new(),
        mic_failed: false,
        audio_stats: audio_stats.clone(),
        audio: audio_packets.map(|tx| (audio_cfg.clone(), tx, audio_stats)),
        last_error: None,
        auto_why: Vec::new(),
    };
    let task = tokio::spawn(runner.run(shutdown));
    Ok((media, task))
}

struct Runner {
    source: SourceConfig,
    settings: EncoderSettings,
    choice: EncoderChoice,
    frames: broadcast::Sender<EncodedFrame>,
    commands: mpsc::UnboundedReceiver<MediaCommand>,
    limiter: KeyframeLimiter,
    /// The VP8 fallback branch, attached to the running pipeline while VP8 viewers watch.
    vp8: vp8::Fallback,
    info: watch::Sender<MediaInfo>,
    encoders_running: Arc<std::sync::atomic::AtomicUsize>,
    /// The source is a camera (set once resolved): failures then mean "camera lost".
    uses_camera: bool,
    heartbeat: Heartbeat,
    stats: Arc<MediaStats>,
    /// The privacy switch; while off no pipeline runs.
    streaming: bool,
    /// Keep the pipeline running with no viewer; otherwise it stops `idle_stop` after the last
    /// one leaves and starts again with the next.
    always_on: bool,
    idle_stop: Duration,
    /// Snapshots asked for while idle, answered by the pipeline they start.
    pending_snapshots: Vec<tokio::sync::oneshot::Sender<Result<Bytes, MediaError>>>,
    /// The microphone failed: pipelines run without it until the next start from idle.
    mic_failed: bool,
    audio_stats: Arc<audio::AudioStats>,
    /// The microphone branch's settings and where its packets go, with audio enabled.
    audio: Option<(
        AudioConfig,
        broadcast::Sender<audio::AudioPacket>,
        Arc<audio::AudioStats>,
    )>,
    /// The last failure, carried into every new pipeline's `MediaInfo` for status.
    last_error: Option<String>,
    /// Why `auto` took the source it took, as last logged.
    auto_why: Vec<String>,
}

/// Why one pipeline run ended without an error.
enum Exit {
    Shutdown,
    /// Build a new pipeline now, with the current settings.
    Rebuild,
    /// The privacy switch went off; wait for it to come on.
    Paused,
    /// No viewer for `idle_stop`: stop until one comes.
    Idle,
}

impl Runner {
    /// Runs pipelines until shutdown, rebuilding after each failure with a growing delay.
    async fn run(mut self, shutdown: CancellationToken) {
        let mut delay = RESTART_FIRST;
        let mut last_error = String::new();
        while !shutdown.is_cancelled() {
            if !self.streaming {
                self.info.send_modify(|i| {
                    i.running = false;
                    i.streaming = false;
                });
                if !self.wait(&shutdown, None).await {
                    break;
                }
                continue;
            }
            if self.is_idle() {
                self.info.send_modify(|i| i.running = false);
                if !self.wait(&shutdown, None).await {
                    break;
                }
                continue;
            }
            let started = Instant::now();
            let frames_before = self.stats.frames.load(Ordering::Relaxed);
            match self.run_once(&shutdown).await {
                Ok(Exit::Shutdown) => break,
                Ok(exit @ (Exit::Rebuild | Exit::Paused | Exit::Idle)) => {
                    // A pipeline started afresh (after idle or pause) tries the microphone again.
                    if !matches!(exit, Exit::Rebuild) {
                        self.mic_failed = false;
                    }
                    self.info.send_modify(|i| i.running = false);
                    delay = RESTART_FIRST;
                    continue;
                }
                Err(e)
                    if self.audio.is_some()
                        && !self.mic_failed
                        && audio::is_microphone_error(&e) =>
                {
                    // A missing or failing microphone must not cost the picture: the next
                    // pipelines run without sound until the camera next starts from idle.
                    tracing::warn!("microphone failed: {e}; streaming video without sound");
                    self.mic_failed = true;
                    self.audio_stats.mic_failed.store(true, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    let msg = e.to_string();
                    // A pipeline that delivered frames was working: its failure is a new event
                    // and is logged even if an earlier one said the same.
                    if self.stats.frames.load(Ordering::Relaxed) > frames_before {
                        last_error.clear();
                    }
                    if self.uses_camera {
                        // Once per state change: the first failure says why the camera is lost;
                        // retries while it stays lost are debug-level.
                        let before = self.info.borrow().camera;
                        if before == CameraState::Ok {
                            tracing::warn!("camera lost: {msg}; retrying with backoff (viewers stay connected)");
                        } else if before == CameraState::None {
                            tracing::warn!("camera not available: {msg}; retrying with backoff");
                        } else if msg != last_error {
                            tracing::debug!("camera still unavailable: {msg}");
                        }
                        self.info.send_modify(|i| i.camera = CameraState::Lost);
                    } else if msg != last_error {
                        // Log once per distinct failure, not once per retry.
                        tracing::error!("media pipeline failed: {msg}; restarting");
                    }
                    let restarts = self.stats.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                    self.last_error = Some(msg.clone());
                    self.info.send_modify(|i| {
                        i.restarts = restarts;
                        i.last_error = Some(msg.clone());
                    });
                    last_error = msg;
                }
            }
            self.info.send_modify(|i| i.running = false);
            if started.elapsed() > Duration::from_secs(30) {
                delay = RESTART_FIRST;
            }
            if !self.wait(&shutdown, Some(Instant::now() + delay)).await {
                break;
            }
            delay = (delay * 2).min(RESTART_MAX);
        }
        self.info.send_modify(|i| i.running = false);
    }

    /// Between pipelines: serves commands until `until` (or, without it, until streaming is
    /// switched back on or a rebuild is asked for). Returns false on shutdown.
    ///
    /// Waiting is healthy (a camera unplugged or busy, streaming switched off): restarting rtcam
    /// would not change it, so the loop beats for the watchdog while it waits.
    async fn wait(&mut self, shutdown: &CancellationToken, until: Option<Instant>) -> bool {
        let mut beat = tokio::time::interval(BEAT_EVERY);
        loop {
            tokio::select! {
                // Cancel-safe: an interval tick that is dropped is taken on a later turn.
                _ = beat.tick() => self.heartbeat.beat(),
                // Cancel-safe: level-triggered token.
                _ = shutdown.cancelled() => return false,
                // Cancel-safe: a timer; when it fires the wait is over.
                _ = sleep_until(until), if until.is_some() => return true,
                // Cancel-safe: mpsc recv.
                Some(cmd) = self.commands.recv() => {
                    let resume = self.apply_idle(cmd);
                    if resume && (until.is_none() || self.streaming) {
                        return true;
                    }
                }
            }
        }
    }

    fn orient(&mut self, o: orientation::Orientation) {
        self.source.rotation = o.rotation;
        self.source.hflip = o.hflip;
        self.source.vflip = o.vflip;
    }

    /// The picture the encoders are asked for: what the source granted.
    fn picture(&self, info: &MediaInfo) -> Picture {
        Picture {
            width: info.width,
            height: info.height,
            fps: info.fps.round().max(1.0) as u32,
        }
    }

    /// Starts or stops the VP8 branch to match its viewers; a failure to start it is logged
    /// and retried at the next check, the H.264 viewers never notice.
    fn sync_vp8(&mut self, pipeline: &gst::Pipeline, picture: Picture) {
        match self
            .vp8
            .sync(pipeline, self.settings, picture, self.stats.clone())
        {
            Ok(true) => {
                let running = self.vp8.running();
                if running {
                    self.encoders_running.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.encoders_running.fetch_sub(1, Ordering::Relaxed);
                }
                self.info.send_modify(|i| i.vp8_running = running);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("VP8 encoder cannot start: {e}"),
        }
    }

    /// No one wants frames: no viewer, no snapshot waiting, and not always on.
    fn is_idle(&self) -> bool {
        !self.always_on
            && self.frames.receiver_count() == 0
            && !self.vp8.wanted()
            && self.pending_snapshots.is_empty()
    }

    /// A command while no pipeline runs. Returns true when it should start one now.
    fn apply_idle(&mut self, cmd: MediaCommand) -> bool {
        match cmd {
            MediaCommand::Demand => self.streaming,
            MediaCommand::Keyframe(_) | MediaCommand::InjectError(_) => false,
            MediaCommand::SetBitrate(kbps) => {
                self.settings.bitrate_kbps = kbps;
                self.info.send_modify(|i| i.bitrate_kbps = kbps);
                false
            }
            MediaCommand::Reconfigure { width, height, fps } => {
                self.source.width = width;
                self.source.height = height;
                self.source.fps = fps;
                self.streaming && !self.is_idle()
            }
            MediaCommand::Orient(o) => {
                self.orient(o);
                self.streaming && !self.is_idle()
            }
            MediaCommand::Restart => self.streaming && !self.is_idle(),
            MediaCommand::Streaming(on) => {
                self.streaming = on;
                self.info.send_modify(|i| i.streaming = on);
                on
            }
            // An idle camera is started for the picture (and stops again after the grace).
            MediaCommand::Snapshot(reply) if self.streaming && self.is_idle() => {
                self.pending_snapshots.push(reply);
                true
            }
            MediaCommand::Snapshot(reply) => {
                let why = if self.streaming {
                    "the camera is not delivering frames right now"
                } else {
                    "streaming is switched off"
                };
                let _ = reply.send(Err(MediaError::Snapshot(why.into())));
                false
            }
        }
    }

    /// Builds and runs one pipeline until it fails or shutdown.
    async fn run_once(&mut self, shutdown: &CancellationToken) -> Result<Exit, MediaError> {
        let camera_before = self.info.borrow().camera;
        let source = match resolve_source(&self.source, self.uses_camera) {
            Ok((s, why)) => {
                // Said once per change of choice, not at every rebuild.
                if why != self.auto_why {
                    for line in &why {
                        tracing::info!("camera choice: {line}");
                    }
                    self.auto_why = why;
                }
                s
            }
            Err(e) => {
                // Only a camera source fails to resolve (none found): that is a lost camera.
                self.uses_camera = true;
                return Err(e);
            }
        };
        self.uses_camera = !matches!(source, Source::Test);
        // The pipeline turns the picture unless a V4L2 camera's flip controls can (below).
        let orientation = orientation::Orientation::of(&self.source);
        let mut turn = orientation::plan(orientation, false).pipeline;
        let (capture, head, mut info) = match &source {
            Source::Test => {
                let s = &self.source;
                let overlay = if gst::ElementFactory::find("clockoverlay").is_some() {
                    "clockoverlay halignment=right valignment=bottom shaded-background=true font-desc=\"Sans 20\" ! "
                } else {
                    tracing::warn!(
                        "clockoverlay missing (install gstreamer1.0-x); test pattern has no clock"
                    );
                    ""
                };
                // Benchmark aid (see `stamp`): I420 so the probe knows where the luma plane is.
                let (format, stamp) =
                    if stamp::enabled() && stamp::fits(s.width as usize, s.height as usize) {
                        (",format=I420", "identity name=stamp ! ")
                    } else {
                        ("", "")
                    };
                let head = format!(
                    "videotestsrc is-live=true pattern=smpte horizontal-speed=2 ! \
                     video/x-raw{format},width={w},height={h},framerate={fps}/1 ! {overlay}{stamp}",
                    w = s.width,
                    h = s.height,
                    fps = s.fps
                );
                let info = MediaInfo {
                    source: "test pattern".into(),
                    encoder: self.choice.spec.element.into(),
                    width: s.width,
                    height: s.height,
                    fps: f64::from(s.fps),
                    bitrate_kbps: self.settings.bitrate_kbps,
                    running: true,
                    streaming: true,
                    format: "I420".into(),
                    asked_fps: s.fps,
                    camera: CameraState::None,
                    device: None,
                    ..Default::default()
                };
                (None, head, info)
            }
            Source::Libcamera => {
                let s = &self.source;
                // `device` names a libcamera camera id here; empty takes the first camera.
                let name = if s.device.is_empty() {
                    String::new()
                } else {
                    format!("camera-name=\"{}\" ", s.device.replace('"', ""))
                };
                let head = format!(
                    "libcamerasrc {name}! video/x-raw,width={w},height={h},framerate={fps}/1 ! ",
                    w = s.width,
                    h = s.height,
                    fps = s.fps
                );
                let info = MediaInfo {
                    source: if s.device.is_empty() {
                        "libcamera".into()
                    } else {
                        format!("libcamera {}", s.device)
                    },
                    encoder: self.choice.spec.element.into(),
                    width: s.width,
                    height: s.height,
                    fps: f64::from(s.fps),
                    bitrate_kbps: self.settings.bitrate_kbps,
                    running: true,
                    format: "raw (libcamera)".into(),
                    asked_fps: s.fps,
                    camera: CameraState::Ok,
                    device: None,
                    streaming: true,
                    ..Default::default()
                };
                (None, head, info)
            }
            Source::V4l2(path) => {
                let s = &self.source;
                let (dev, neg) = v4l2::open(
                    path,
                    s.format,
                    s.width,
                    s.height,
                    s.fps,
                    self.choice.spec.input_format,
                )?;
                if camera_before == CameraState::Lost {
                    tracing::info!("camera back: {}", neg.path.display());
                }
                tracing::info!(
                    "camera {} ({}): {} {}x{} at {:.1} fps granted ({} asked)",
                    neg.path.display(),
                    neg.card,
                    neg.fourcc,
                    neg.width,
                    neg.height,
                    neg.fps,
                    neg.asked_fps
                );
                if let Some(note) = &neg.note {
                    tracing::warn!("{note}");
                }
                // Applied at every open, so settings survive an unplug; a bad entry is reported
                // when the camera comes (back), not again at a rebuild of a running camera.
                for e in v4l2::controls::apply(&dev, &neg.path, &s.controls) {
                    if camera_before != CameraState::Ok {
                        tracing::warn!("[source.controls]: {e}");
                    }
                }
                let flipped = v4l2::controls::apply_flips(
                    &dev,
                    &neg.path,
                    |has| {
                        let plan = orientation::plan(orientation, has);
                        turn = plan.pipeline;
                        plan.camera_flips
                    },
                    &s.controls,
                );
                if let Err(e) = flipped {
                    tracing::warn!("camera flips: {e}; the pipeline turns the picture instead");
                    turn = orientation::plan(orientation, false).pipeline;
                }
                // A bounded, leaky queue: when the encoder is slower than the camera, old frames
                // are dropped instead of piling up in memory.
                let head = format!(
                    "appsrc name=camsrc is-live=true format=time do-timestamp=true \
                     max-bytes=0 max-buffers=3 leaky-type=downstream caps=\"{}\" ! ",
                    neg.caps()
                );
                let encoder = if neg.format == PixelFormat::H264 {
                    "camera (H.264 passthrough)".to_string()
                } else {
                    self.choice.spec.element.to_string()
                };
                let info = MediaInfo {
                    source: format!("{} ({})", neg.path.display(), neg.card),
                    encoder,
                    width: neg.width,
                    height: neg.height,
                    fps: neg.fps,
                    bitrate_kbps: self.settings.bitrate_kbps,
                    running: true,
                    format: neg.fourcc.clone(),
                    asked_fps: neg.asked_fps,
                    camera: CameraState::Ok,
                    device: Some(neg.path.clone()),
                    streaming: true,
                    ..Default::default()
                };
                (Some((dev, neg)), head, info)
            }
        };
        let passthrough = capture
            .as_ref()
            .is_some_and(|(_, n)| n.format == PixelFormat::H264);
        // videoflip turns raw frames: a camera's own H.264 passes through unturned.
        let flip = if turn == orientation::Turn::Identity {
            String::new()
        } else if passthrough {
            tracing::warn!(
                "[source] rotation/hflip/vflip: the camera sends H.264, which rtcam passes \
                 through without decoding; set format = \"yuyv\" or \"mjpeg\" to turn it"
            );
            String::new()
        } else {
            if turn.swaps_sides() {
                std::mem::swap(&mut info.width, &mut info.height);
            }
            tracing::info!("the pipeline turns the picture: videoflip {turn:?}");
            format!("videoflip video-direction={} ! ", turn as u8)
        };
        let decode = match capture.as_ref().map(|(_, n)| n.format) {
            // The board's JPEG decoder where it has one (v4l2jpegdec), else software.
            Some(PixelFormat::Mjpeg) if gst::ElementFactory::find("v4l2jpegdec").is_some() => {
                "v4l2jpegdec ! "
            }
            Some(PixelFormat::Mjpeg) => "jpegdec ! ",
            _ => "",
        };
        // Raw frames also go to `rawsink`, which keeps only the newest one (a reference, not a
        // copy) so a snapshot can be encoded from it on demand without touching the stream.
        let picture = self.picture(&info);
        let encode = if passthrough {
            String::new()
        } else {
            format!(
                "{decode}{flip}videoconvert ! video/x-raw,format={fmt} ! tee name={tee} allow-not-linked=true ! \
                 queue max-size-buffers=2 max-size-bytes=0 max-size-time=0 leaky=downstream ! {enc} ! ",
                fmt = self.choice.spec.input_format,
                tee = vp8::RAW_TEE,
                enc = encoder::launch_fragment(&self.choice.spec, self.settings, picture)
            )
        };
        let snapshot_branch = if passthrough {
            ""
        } else {
            " raw. ! queue max-size-buffers=1 max-size-bytes=0 max-size-time=0 leaky=downstream ! \
             appsink name=rawsink sync=false max-buffers=1 drop=true async=false"
        };
        // config-interval=-1 puts SPS/PPS in front of every IDR, so any keyframe is a start point.
        // With audio, both sinks release buffers by the pipeline clock so that sound and
        // picture captured together leave together (see `audio`); without, video leaves as
        // soon as it is encoded, as before.
        let with_mic = self.audio.is_some() && !self.mic_failed;
        if with_mic {
            self.audio_stats.mic_failed.store(false, Ordering::Relaxed);
        }
        let (video_sync, audio_branch) = match &self.audio {
            Some((cfg, _, _)) if with_mic => ("true", audio::branch(cfg)),
            _ => ("false", String::new()),
        };
        let desc = format!(
            "{head}{encode}h264parse config-interval=-1 ! \
             video/x-h264,stream-format=byte-stream,alignment=au ! \
             appsink name=sink sync={video_sync} max-buffers=8 drop=true{snapshot_branch}{audio_branch}"
        );
        tracing::debug!("pipeline: {desc}");
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| MediaError::Build(desc.clone(), e.to_string()))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| MediaError::Build(desc.clone(), "not a pipeline".into()))?;
        let guard = PipelineGuard(pipeline.clone());
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| MediaError::Build(desc.clone(), "no appsink".into()))?;
        if let Some((_, packets, stats)) = self.audio.as_ref().filter(|_| with_mic) {
            audio::attach(&pipeline, packets.clone(), stats.clone())?;
        }
        if let Some(identity) = pipeline.by_name("stamp") {
            install_stamp(&identity);
        }
        let rawsink = pipeline
            .by_name("rawsink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok());
        let frames = self.frames.clone();
        let heartbeat = self.heartbeat.clone();
        let first_frame_logged = Arc::new(AtomicBool::new(false));
        let source_name = info.source.clone();
        let stats = self.stats.clone();
        let nominal = Duration::from_secs_f64(1.0 / info.fps.max(1.0));
        let audio_stats = self.audio_stats.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                    let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                    let produced = Instant::now();
                    // The buffer keeps its capture timestamp through the encoder: its age on
                    // the pipeline clock is how long capture → encoded took.
                    let age = capture_age(sink, &sample);
                    if let Some(age) = age {
                        stats.latency.record(latency::Stage::CaptureToEncoded, age);
                        audio::record_delay(&audio_stats.video_delay_us, age);
                    }
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    stats.bytes.fetch_add(map.len() as u64, Ordering::Relaxed);
                    stats
                        .keyframes
                        .fetch_add(u64::from(keyframe), Ordering::Relaxed);
                    let frame = EncodedFrame {
                        data: Bytes::copy_from_slice(map.as_slice()),
                        keyframe,
                        duration: buffer
                            .duration()
                            .map(|d| Duration::from_nanos(d.nseconds()))
                            .filter(|d| !d.is_zero())
                            .unwrap_or(nominal),
                        produced,
                        captured: age
                            .and_then(|a| produced.checked_sub(a))
                            .unwrap_or(produced),
                    };
                    heartbeat.beat();
                    // Once per pipeline, so logs (and the emulated-board test) show frames flow.
                    if !first_frame_logged.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            "first encoded frame from {source_name}: {} bytes, keyframe: {}",
                            frame.data.len(),
                            frame.keyframe
                        );
                    }
                    // No receivers is normal (no viewer yet); nothing to report.
                    let _ = frames.send(frame);
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );

        let bus = pipeline.bus().expect("a pipeline always has a bus");
        let mut messages = bus.stream();
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            // The element that refused (a camera source with no camera, say) posted why on the
            // bus; that says more than "failed to change its state". Bounded: a short look.
            let posted = tokio::time::timeout(Duration::from_millis(200), async {
                while let Some(msg) = messages.next().await {
                    if let gst::MessageView::Error(err) = msg.view() {
                        return Some(MediaError::Runtime {
                            source_name: err
                                .src()
                                .map(|s| s.name().to_string())
                                .unwrap_or_default(),
                            message: err.error().to_string(),
                        });
                    }
                }
                None
            })
            .await;
            return Err(posted
                .ok()
                .flatten()
                .unwrap_or_else(|| MediaError::Build(desc.clone(), e.to_string())));
        }

        // The capture thread feeds appsrc; its end (camera gone, read error) ends this pipeline.
        let stop: v4l2::StopFlag = Arc::new(AtomicBool::new(false));
        let (capture_done_tx, mut capture_done) =
            tokio::sync::oneshot::channel::<Result<(), v4l2::V4l2Error>>();
        let capture_thread = match capture {
            Some((dev, neg)) => {
                let appsrc = pipeline
                    .by_name("camsrc")
                    .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
                    .ok_or_else(|| MediaError::Build(desc.clone(), "no appsrc".into()))?;
                let stop = stop.clone();
                Some(
                    std::thread::Builder::new()
                        .name("rtcam-capture".into())
                        .spawn(move || {
                            let result = v4l2::stream(&dev, &neg.path, &stop, |data| {
                                appsrc
                                    .push_buffer(gst::Buffer::from_slice(data.to_vec()))
                                    .is_ok()
                            });
                            let _ = capture_done_tx.send(result);
                        })
                        .map_err(|e| MediaError::Build(desc.clone(), e.to_string()))?,
                )
            }
            None => {
                drop(capture_done_tx);
                None
            }
        };
        let capture_running = capture_thread.is_some();

        self.encoders_running
            .fetch_add(usize::from(!passthrough), Ordering::Relaxed);
        self.info.send_replace(MediaInfo {
            restarts: self.stats.restarts.load(Ordering::Relaxed),
            last_error: self.last_error.clone(),
            ..info
        });
        // Snapshots that started this pipeline from idle.
        for reply in self.pending_snapshots.drain(..) {
            match &rawsink {
                Some(raw) => take_snapshot(raw.clone(), reply),
                None => {
                    let _ = reply.send(Err(MediaError::Snapshot(
                        "no raw frames to take a snapshot of".into(),
                    )));
                }
            }
        }
        self.sync_vp8(&pipeline, picture);
        let mut demand_check = tokio::time::interval(IDLE_CHECK);
        let mut unwatched_since: Option<Instant> = None;
        // Until STARTUP_GRACE has passed the loop vouches for the pipeline; after that only
        // frames do, so a pipeline that stops producing lets the heartbeat go stale.
        let grace_end = tokio::time::Instant::now() + STARTUP_GRACE;
        let mut grace_tick = tokio::time::interval(BEAT_EVERY);
        let result = loop {
            // The sooner of the two encoders' merged keyframe requests.
            let deadline = match (self.limiter.deadline(), self.vp8.limiter.deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                // Cancel-safe: an interval tick fires again next turn if dropped.
                _ = demand_check.tick() => {
                    // The VP8 viewers' receivers are dropped without a message; this notices.
                    self.sync_vp8(&pipeline, picture);
                    if self.is_idle() {
                        let since = *unwatched_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.idle_stop {
                            tracing::info!("no viewers for {:?}: pipeline stopped, camera closed", self.idle_stop);
                            break Ok(Exit::Idle);
                        }
                    } else {
                        unwatched_since = None;
                    }
                }
                // Cancel-safe: level-triggered token.
                _ = shutdown.cancelled() => break Ok(Exit::Shutdown),
                // Cancel-safe: a bus stream yields whole messages; none is lost when dropped.
                msg = messages.next() => {
                    let Some(msg) = msg else { break Err(MediaError::Runtime { source_name: "bus".into(), message: "bus closed".into() }) };
                    match msg.view() {
                        gst::MessageView::Error(err) => {
                            break Err(MediaError::Runtime {
                                source_name: err.src().map(|s| s.path_string().to_string()).unwrap_or_default(),
                                message: format!("{} ({:?})", err.error(), err.debug()),
                            });
                        }
                        gst::MessageView::Eos(_) => {
                            break Err(MediaError::Runtime { source_name: "pipeline".into(), message: "end of stream".into() });
                        }
                        gst::MessageView::Warning(w) => {
                            tracing::warn!("pipeline warning: {}", w.error());
                        }
                        _ => {}
                    }
                }
                // Cancel-safe: mpsc recv.
                Some(cmd) = self.commands.recv() => match cmd {
                    MediaCommand::Demand => {
                        unwatched_since = None;
                        self.sync_vp8(&pipeline, picture);
                    }
                    MediaCommand::Keyframe(VideoCodec::H264) => {
                        if self.limiter.request(Instant::now()) == Decision::Force {
                            force_keyframe(&sink);
                        }
                    }
                    MediaCommand::Keyframe(VideoCodec::Vp8) => self.vp8.request_keyframe(Instant::now()),
                    MediaCommand::SetBitrate(kbps) => {
                        self.settings.bitrate_kbps = kbps;
                        self.vp8.set_bitrate(kbps);
                        // The H.264 level stays what the pipeline started with, even if the
                        // new bitrate is past its limit: rebuilding for that would interrupt
                        // every viewer at each change (bitrate adaptation makes many), and
                        // browsers do not enforce a level's bitrate limit. The next rebuild
                        // picks the level for the bitrate then.
                        if set_bitrate_live(&pipeline, &self.choice.spec, kbps) {
                            tracing::info!("bitrate now {kbps} kbit/s");
                            self.info.send_modify(|i| i.bitrate_kbps = kbps);
                        } else {
                            tracing::info!("bitrate now {kbps} kbit/s; rebuilding the pipeline to apply it");
                            break Ok(Exit::Rebuild);
                        }
                    }
                    MediaCommand::Reconfigure { width, height, fps } => {
                        self.source.width = width;
                        self.source.height = height;
                        self.source.fps = fps;
                        tracing::info!("video now {width}x{height} at {fps} fps; rebuilding the pipeline");
                        break Ok(Exit::Rebuild);
                    }
                    MediaCommand::Orient(o) => {
                        self.orient(o);
                        tracing::info!("orientation changed; rebuilding the pipeline");
                        break Ok(Exit::Rebuild);
                    }
                    MediaCommand::Restart => {
                        tracing::info!("pipeline restart requested");
                        break Ok(Exit::Rebuild);
                    }
                    MediaCommand::Streaming(on) => {
                        if !on {
                            tracing::info!("streaming switched off; camera released");
                            self.streaming = false;
                            self.info.send_modify(|i| i.streaming = false);
                            break Ok(Exit::Paused);
                        }
                    }
                    MediaCommand::InjectError(message) => inject_error(&pipeline, &message),
                    MediaCommand::Snapshot(reply) => match &rawsink {
                        Some(raw) => take_snapshot(raw.clone(), reply),
                        None => {
                            let _ = reply.send(Err(MediaError::Snapshot(
                                "the camera sends H.264 that rtcam passes through; there is no raw frame to take a snapshot of".into(),
                            )));
                        }
                    },
                },
                // Cancel-safe: a timer; recreated each turn from the limiter's state.
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let now = Instant::now();
                    if self.limiter.poll(now) {
                        force_keyframe(&sink);
                    }
                    self.vp8.poll_keyframe(now);
                }
                // Cancel-safe: an interval tick that is dropped is taken on a later turn.
                _ = grace_tick.tick(), if tokio::time::Instant::now() < grace_end => {
                    self.heartbeat.beat();
                }
                // Cancel-safe: a oneshot keeps its value until read.
                done = &mut capture_done, if capture_running => {
                    break Err(match done {
                        Ok(Err(e)) => MediaError::Camera(e),
                        _ => MediaError::CaptureEnded("capture thread ended".into()),
                    });
                }
            }
        };
        self.encoders_running
            .fetch_sub(usize::from(!passthrough), Ordering::Relaxed);
        if self.vp8.running() {
            self.encoders_running.fetch_sub(1, Ordering::Relaxed);
        }
        self.vp8.pipeline_ended();
        self.info.send_modify(|i| i.vp8_running = false);
        // Commands that arrived too late for this pipeline are served by the next.
        stop.store(true, Ordering::Relaxed);
        drop(guard);
        if let Some(t) = capture_thread {
            // The thread wakes at least every read timeout and sees the stop flag, or its next
            // push fails now that the pipeline is down.
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        result
    }
}

/// Sets the bitrate on the running encoder if it takes changes while playing.
fn set_bitrate_live(pipeline: &gst::Pipeline, spec: &encoder::EncoderSpec, kbps: u32) -> bool {
    let (Some((property, scale)), Some(element)) =
        (encoder::live_bitrate(spec), pipeline.by_name("encoder"))
    else {
        return false;
    };
    set_number(&element, property, u64::from(kbps) * u64::from(scale))
}

/// Sets a numeric property in the type the element declares it (encoders differ: uint, int,
/// uint64); false if it has no such numeric property. Setting the wrong type would panic.
fn set_number(element: &gst::Element, property: &str, value: u64) -> bool {
    match element.find_property(property).map(|p| p.value_type()) {
        Some(t) if t == u32::static_type() => {
            element.set_property(property, value.min(u64::from(u32::MAX)) as u32)
        }
        Some(t) if t == i32::static_type() => {
            element.set_property(property, value.min(i32::MAX as u64) as i32)
        }
        Some(t) if t == u64::static_type() => element.set_property(property, value),
        _ => return false,
    }
    true
}

/// Encodes the newest raw frame as JPEG on a blocking thread and answers `reply`.
fn take_snapshot(
    raw: gst_app::AppSink,
    reply: tokio::sync::oneshot::Sender<Result<Bytes, MediaError>>,
) {
    tokio::task::spawn_blocking(move || {
        let result = (|| {
            // The sink holds the newest frame; if it was just taken, the next one is a frame away.
            let sample = raw
                .try_pull_sample(gst::ClockTime::from_mseconds(1000))
                .ok_or_else(|| MediaError::Snapshot("no frame arrived within a second".into()))?;
            // GStreamer picks the JPEG encoder by rank: the board's hardware one where it has
            // one (v4l2jpegenc outranks jpegenc), software jpegenc elsewhere.
            let caps = gst::Caps::builder("image/jpeg").build();
            let jpeg =
                gstreamer_video::convert_sample(&sample, &caps, gst::ClockTime::from_seconds(3))
                    .map_err(|e| MediaError::Snapshot(e.to_string()))?;
            let buffer = jpeg
                .buffer()
                .ok_or_else(|| MediaError::Snapshot("encoder gave no image".into()))?;
            let map = buffer
                .map_readable()
                .map_err(|e| MediaError::Snapshot(e.to_string()))?;
            Ok(Bytes::copy_from_slice(map.as_slice()))
        })();
        let _ = reply.send(result);
    });
}

/// Posts an ERROR message from the encoder (or, for a camera's own H.264, the output sink) on
/// the bus: what an element does when it fails, so the fault takes the real error path.
fn inject_error(pipeline: &gst::Pipeline, message: &str) {
    let Some(element) = pipeline
        .by_name("encoder")
        .or_else(|| pipeline.by_name("sink"))
    else {
        return;
    };
    let error = gst::message::Error::builder(gst::CoreError::Failed, message)
        .src(&element)
        .build();
    if element.post_message(error).is_err() {
        tracing::debug!("injected error not posted: the element has no bus");
    }
}

/// Asks the encoder for an IDR with SPS/PPS, travelling upstream from the sink.
fn force_keyframe(sink: &gst_app::AppSink) {
    let event = gstreamer_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    if !sink.send_event(event) {
        tracing::debug!("encoder did not take the keyframe request");
    }
}

/// Sets the pipeline to NULL when dropped, on every exit path, so the camera is released.
struct PipelineGuard(gst::Pipeline);

impl Drop for PipelineGuard {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// Writes the capture time into every frame leaving `element` (the `stamp` benchmark aid).
fn install_stamp(element: &gst::Element) {
    use gstreamer_video::VideoFrameExt;
    let Some(pad) = element.static_pad("src") else {
        return;
    };
    pad.add_probe(gst::PadProbeType::BUFFER, |pad, info| {
        let Some(caps) = pad.current_caps() else {
            return gst::PadProbeReturn::Ok;
        };
        let Ok(video) = gstreamer_video::VideoInfo::from_caps(&caps) else {
            return gst::PadProbeReturn::Ok;
        };
        if let Some(buffer) = info.buffer_mut() {
            // make_mut copies only if someone else holds the buffer; the test source does not.
            let buffer = buffer.make_mut();
            if let Ok(mut frame) =
                gstreamer_video::VideoFrameRef::from_buffer_ref_writable(buffer, &video)
            {
                let stride = frame.plane_stride()[0] as usize;
                let (w, h) = (video.width() as usize, video.height() as usize);
                if let Ok(plane) = frame.plane_data_mut(0) {
                    stamp::write(plane, stride, w, h, stamp::now_ms());
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}
