//! The media task. [`Runner::run`] runs pipelines until shutdown, rebuilding after a failure
//! with a growing delay, and waits between them (idle, privacy switch off, backing off);
//! [`Runner::run_once`] builds one pipeline (see [`describe`] and [`capture`]) and serves it:
//! starts and stops the VP8 branch with its viewers, merges keyframe requests, applies bitrate
//! changes live where the encoder takes them, rebuilds for new settings, and stops the pipeline
//! when nobody has watched for `idle_stop`.
//!
//! What the user asked for ([`Asked`]) and what runs ([`MediaInfo`], published on a watch
//! channel) are kept apart, each in one place: every pipeline is built from `Asked`, and
//! `MediaInfo` says what the running one does.

mod serve;

use super::capture::{self, Built, Camera, Capture, Publish, Source};
use super::describe::{self, Description, Inputs, Probed};
use super::encoder::{EncoderChoice, EncoderSettings, Picture};
use super::error::SnapshotError;
use super::keyframe::KeyframeLimiter;
use super::orientation::{self, Orientation};
use super::VideoCodec;
use super::{audio, live, vp8, CameraState, EncodedFrame, MediaError, MediaInfo, MediaStats};
use crate::config::{AudioConfig, SourceConfig};
use crate::health::Heartbeat;
use crate::util::sleep_until;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

const RESTART_FIRST: Duration = Duration::from_millis(250);
const RESTART_MAX: Duration = Duration::from_secs(10);

/// How often the pipeline loop beats while it waits in a healthy state (starting, backing off).
const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Requests to the media task.
#[derive(Debug)]
pub(super) enum MediaCommand {
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
    Orient(Orientation),
    Restart,
    Streaming(bool),
    Snapshot(live::SnapshotReply),
    /// Test seam: the encoder posts a genuine error message on the pipeline's bus.
    InjectError(String),
}

/// What the user asked for: `[source]` and `[encoder]` as commands have changed them since
/// start (size, rate, orientation, bitrate), and the privacy switch. The one place these live
/// in media; each pipeline is built from them.
pub(super) struct Asked {
    pub source: SourceConfig,
    pub settings: EncoderSettings,
    /// The privacy switch; while off no pipeline runs.
    pub streaming: bool,
}

/// The microphone branch's settings and where its packets go, with audio enabled.
pub(super) struct Mic {
    pub cfg: AudioConfig,
    pub packets: broadcast::Sender<audio::AudioPacket>,
}

/// What the runner shares with the [`super::Media`] handle.
pub(super) struct Shared {
    pub frames: broadcast::Sender<EncodedFrame>,
    pub commands: mpsc::UnboundedReceiver<MediaCommand>,
    /// What runs, for status and logs.
    pub info: watch::Sender<MediaInfo>,
    pub encoders_running: Arc<AtomicUsize>,
    pub heartbeat: Heartbeat,
    pub stats: Arc<MediaStats>,
    pub audio_stats: Arc<audio::AudioStats>,
}

pub(super) struct Runner {
    asked: Asked,
    choice: EncoderChoice,
    /// The H.264 encoder's merged keyframe requests.
    limiter: KeyframeLimiter,
    /// The VP8 fallback branch, attached to the running pipeline while VP8 viewers watch.
    vp8: vp8::Fallback,
    mic: Option<Mic>,
    shared: Shared,
    /// The source is a camera (set once resolved): failures then mean "camera lost".
    uses_camera: bool,
    /// Snapshots asked for while idle, answered by the pipeline they start.
    pending_snapshots: Vec<live::SnapshotReply>,
    /// The microphone failed: pipelines run without it until the next start from idle.
    mic_failed: bool,
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

/// The pipeline being served.
struct Running {
    built: Built,
    /// What its encoders were asked for.
    picture: Picture,
    /// The camera's H.264 passes through: no encoder of rtcam's runs.
    passthrough: bool,
}

impl Runner {
    pub fn new(
        asked: Asked,
        choice: EncoderChoice,
        keyframe_min_interval: Duration,
        vp8_frames: broadcast::Sender<EncodedFrame>,
        mic: Option<Mic>,
        shared: Shared,
    ) -> Self {
        // Each encoder merges its own viewers' requests.
        let limiter = || KeyframeLimiter::new(keyframe_min_interval);
        Runner {
            asked,
            choice,
            limiter: limiter(),
            vp8: vp8::Fallback::new(vp8_frames, limiter()),
            mic,
            shared,
            uses_camera: false,
            pending_snapshots: Vec::new(),
            mic_failed: false,
            auto_why: Vec::new(),
        }
    }

    /// Runs pipelines until shutdown, rebuilding after each failure with a growing delay.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut delay = RESTART_FIRST;
        let mut last_error = String::new();
        while !shutdown.is_cancelled() {
            if !self.asked.streaming || self.is_idle() {
                let streaming = self.asked.streaming;
                self.shared.info.send_modify(|i| {
                    i.running = false;
                    if !streaming {
                        i.streaming = false;
                    }
                });
                if !self.wait(&shutdown, None).await {
                    break;
                }
                continue;
            }
            let started = Instant::now();
            let frames_before = self.shared.stats.frames.load(Ordering::Relaxed);
            match self.run_once(&shutdown).await {
                Ok(Exit::Shutdown) => break,
                Ok(exit) => {
                    // A pipeline started afresh (after idle or pause) tries the microphone again.
                    if !matches!(exit, Exit::Rebuild) {
                        self.mic_failed = false;
                    }
                    self.shared.info.send_modify(|i| i.running = false);
                    delay = RESTART_FIRST;
                    continue;
                }
                Err(e)
                    if self.mic.is_some() && !self.mic_failed && audio::is_microphone_error(&e) =>
                {
                    // A missing or failing microphone must not cost the picture: the next
                    // pipelines run without sound until the camera next starts from idle.
                    tracing::warn!("microphone failed: {e}; streaming video without sound");
                    self.mic_failed = true;
                    self.shared
                        .audio_stats
                        .mic_failed
                        .store(true, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    let msg = e.to_string();
                    // A pipeline that delivered frames was working: its failure is a new event
                    // and is logged even if an earlier one said the same.
                    if self.shared.stats.frames.load(Ordering::Relaxed) > frames_before {
                        last_error.clear();
                    }
                    self.failed(&msg, &last_error);
                    last_error = msg;
                }
            }
            self.shared.info.send_modify(|i| i.running = false);
            if started.elapsed() > Duration::from_secs(30) {
                delay = RESTART_FIRST;
            }
            if !self.wait(&shutdown, Some(Instant::now() + delay)).await {
                break;
            }
            delay = (delay * 2).min(RESTART_MAX);
        }
        self.shared.info.send_modify(|i| i.running = false);
    }

    /// A pipeline failed with `msg` (`last`: the previous failure's, or empty): logged once per
    /// distinct failure, not once per retry, and counted and kept for status.
    fn failed(&mut self, msg: &str, last: &str) {
        if self.uses_camera {
            // Once per state change: the first failure says why the camera is lost; retries
            // while it stays lost are debug-level.
            let before = self.shared.info.borrow().camera;
            if before == CameraState::Ok {
                tracing::warn!(
                    "camera lost: {msg}; retrying with backoff (viewers stay connected)"
                );
            } else if before == CameraState::None {
                tracing::warn!("camera not available: {msg}; retrying with backoff");
            } else if msg != last {
                tracing::debug!("camera still unavailable: {msg}");
            }
            self.shared
                .info
                .send_modify(|i| i.camera = CameraState::Lost);
        } else if msg != last {
            tracing::error!("media pipeline failed: {msg}; restarting");
        }
        let restarts = self.shared.stats.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.info.send_modify(|i| {
            i.restarts = restarts;
            i.last_error = Some(msg.to_string());
        });
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
                _ = beat.tick() => self.shared.heartbeat.beat(),
                // Cancel-safe: level-triggered token.
                _ = shutdown.cancelled() => return false,
                // Cancel-safe: a timer; when it fires the wait is over.
                _ = sleep_until(until), if until.is_some() => return true,
                // Cancel-safe: mpsc recv.
                Some(cmd) = self.shared.commands.recv() => {
                    let resume = self.apply_idle(cmd);
                    if resume && (until.is_none() || self.asked.streaming) {
                        return true;
                    }
                }
            }
        }
    }

    fn orient(&mut self, o: Orientation) {
        let s = &mut self.asked.source;
        (s.rotation, s.hflip, s.vflip) = (o.rotation, o.hflip, o.vflip);
    }

    fn resize(&mut self, width: u32, height: u32, fps: u32) {
        let s = &mut self.asked.source;
        (s.width, s.height, s.fps) = (width, height, fps);
    }

    /// Starts or stops the VP8 branch to match its viewers; a failure to start it is logged
    /// and retried at the next check, the H.264 viewers never notice.
    fn sync_vp8(&mut self, pipeline: &gst::Pipeline, picture: Picture) {
        let stats = self.shared.stats.clone();
        match self.vp8.sync(pipeline, self.asked.settings, picture, stats) {
            Ok(true) => {
                let running = self.vp8.running();
                if running {
                    self.shared.encoders_running.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.shared.encoders_running.fetch_sub(1, Ordering::Relaxed);
                }
                self.shared.info.send_modify(|i| i.vp8_running = running);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("VP8 encoder cannot start: {e}"),
        }
    }

    /// No one wants frames: no viewer, no snapshot waiting, and not always on.
    fn is_idle(&self) -> bool {
        !self.asked.source.always_on
            && self.shared.frames.receiver_count() == 0
            && !self.vp8.wanted()
            && self.pending_snapshots.is_empty()
    }

    /// A command while no pipeline runs. Returns true when it should start one now.
    fn apply_idle(&mut self, cmd: MediaCommand) -> bool {
        let streaming = self.asked.streaming;
        match cmd {
            MediaCommand::Demand => streaming,
            MediaCommand::Keyframe(_) | MediaCommand::InjectError(_) => false,
            MediaCommand::SetBitrate(kbps) => {
                // Nothing runs: what the next pipeline will run is what status shows.
                self.asked.settings.bitrate_kbps = kbps;
                self.shared.info.send_modify(|i| i.bitrate_kbps = kbps);
                false
            }
            MediaCommand::Reconfigure { width, height, fps } => {
                self.resize(width, height, fps);
                streaming && !self.is_idle()
            }
            MediaCommand::Orient(o) => {
                self.orient(o);
                streaming && !self.is_idle()
            }
            MediaCommand::Restart => streaming && !self.is_idle(),
            MediaCommand::Streaming(on) => {
                self.asked.streaming = on;
                self.shared.info.send_modify(|i| i.streaming = on);
                on
            }
            // An idle camera is started for the picture (and stops again after the grace).
            MediaCommand::Snapshot(reply) if streaming && self.is_idle() => {
                self.pending_snapshots.push(reply);
                true
            }
            MediaCommand::Snapshot(reply) => {
                let why = if streaming {
                    SnapshotError::NotDelivering
                } else {
                    SnapshotError::SwitchedOff
                };
                let _ = reply.send(Err(why.into()));
                false
            }
        }
    }

    /// Builds and runs one pipeline until it fails or shutdown.
    async fn run_once(&mut self, shutdown: &CancellationToken) -> Result<Exit, MediaError> {
        let (description, camera) = self.describe()?;
        let (built, mut messages, mut capture) = self.start(&description, camera).await?;
        let Description {
            info,
            picture,
            passthrough,
            ..
        } = description;
        let run = Running {
            built,
            picture,
            passthrough,
        };
        self.went_live(&run, info);
        let result = self
            .serve(&run, &mut messages, &mut capture, shutdown)
            .await;
        self.pipeline_ended(&run);
        // Commands that arrived too late for this pipeline are served by the next.
        if let Some(c) = &capture {
            c.stop();
        }
        drop(run);
        if let Some(c) = capture {
            c.join().await;
        }
        result
    }

    /// Resolves and opens the source, and describes the pipeline for it.
    fn describe(&mut self) -> Result<(Description, Option<Camera>), MediaError> {
        let before = self.shared.info.borrow().camera;
        let source = self.resolve()?;
        let (camera, turn) = match &source {
            Source::V4l2(path) => {
                let input = self.choice.spec.input_format;
                let (camera, turn) = capture::open_camera(path, &self.asked.source, input, before)?;
                (Some(camera), turn)
            }
            // The pipeline turns the picture: only a V4L2 camera's flip controls can instead.
            _ => {
                let o = Orientation::of(&self.asked.source);
                (None, orientation::plan(o, false).pipeline)
            }
        };
        let probed = match (&camera, &source) {
            (Some(c), _) => Probed::V4l2(&c.negotiated),
            (None, Source::Libcamera) => Probed::Libcamera,
            (None, _) => Probed::Test,
        };
        let mic = self.mic.as_ref().filter(|_| !self.mic_failed);
        if mic.is_some() {
            self.shared
                .audio_stats
                .mic_failed
                .store(false, Ordering::Relaxed);
        }
        let description = describe::describe(&Inputs {
            source: &self.asked.source,
            probed,
            encoder: &self.choice.spec,
            settings: self.asked.settings,
            turn,
            audio: mic.map(|m| &m.cfg),
            present: capture::present(),
        });
        for note in &description.notes {
            note.log();
        }
        Ok((description, camera))
    }

    /// What to open this time; `auto`'s reasons said once per change of choice, not at every
    /// rebuild.
    fn resolve(&mut self) -> Result<Source, MediaError> {
        match capture::resolve_source(&self.asked.source, self.uses_camera) {
            Ok((source, why)) => {
                if why != self.auto_why {
                    for line in &why {
                        tracing::info!("camera choice: {line}");
                    }
                    self.auto_why = why;
                }
                self.uses_camera = !matches!(source, Source::Test);
                Ok(source)
            }
            Err(e) => {
                // Only a camera source fails to resolve (none found): that is a lost camera.
                self.uses_camera = true;
                Err(e)
            }
        }
    }

    /// Builds the pipeline, connects its sinks to the channels, sets it playing and starts
    /// feeding it the camera's frames.
    async fn start(
        &mut self,
        d: &Description,
        camera: Option<Camera>,
    ) -> Result<(Built, gst::bus::BusStream, Option<Capture>), MediaError> {
        tracing::debug!("pipeline: {}", d.launch);
        let built = capture::build(d)?;
        if let Some(mic) = self.mic.as_ref().filter(|_| !self.mic_failed) {
            let stats = self.shared.audio_stats.clone();
            audio::attach(&built.pipeline, mic.packets.clone(), stats)?;
        }
        let publish = Publish {
            frames: self.shared.frames.clone(),
            stats: self.shared.stats.clone(),
            audio_stats: self.shared.audio_stats.clone(),
            heartbeat: self.shared.heartbeat.clone(),
            source_name: d.info.source.clone(),
            nominal: Duration::from_secs_f64(1.0 / d.info.fps.max(1.0)),
        };
        capture::publish(&built.sink, publish);
        let bus = built.pipeline.bus().expect("a pipeline always has a bus");
        let mut messages = bus.stream();
        capture::play(&built, &mut messages, &d.launch).await?;
        let capture = camera
            .map(|c| Capture::start(&built, c, &d.launch))
            .transpose()?;
        Ok((built, messages, capture))
    }

    /// The pipeline plays: status says what it runs, snapshots that started it are taken,
    /// the VP8 branch starts if a VP8 viewer waits.
    fn went_live(&mut self, run: &Running, info: MediaInfo) {
        self.shared
            .encoders_running
            .fetch_add(usize::from(!run.passthrough), Ordering::Relaxed);
        // Restarts and the last failure stay in status across pipelines.
        self.shared.info.send_modify(|i| {
            *i = MediaInfo {
                restarts: i.restarts,
                last_error: i.last_error.take(),
                ..info
            };
        });
        for reply in self.pending_snapshots.drain(..) {
            live::snapshot(
                run.built.rawsink.as_ref(),
                reply,
                SnapshotError::NoRawFrames,
            );
        }
        self.sync_vp8(&run.built.pipeline, run.picture);
    }

    fn pipeline_ended(&mut self, run: &Running) {
        self.shared
            .encoders_running
            .fetch_sub(usize::from(!run.passthrough), Ordering::Relaxed);
        if self.vp8.running() {
            self.shared.encoders_running.fetch_sub(1, Ordering::Relaxed);
        }
        self.vp8.pipeline_ended();
        self.shared.info.send_modify(|i| i.vp8_running = false);
    }
}
