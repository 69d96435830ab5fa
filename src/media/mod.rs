//! The media pipeline: camera or test pattern → H.264 encoder → encoded frames for every viewer.
//!
//! One pipeline serves all viewers: it publishes [`EncodedFrame`]s on a broadcast channel and
//! each session packetizes them for its own peer. The pipeline is rebuilt after an error (run /
//! run_once with backoff) while the channel lives on, so viewers keep their track and simply see
//! frames again once a new pipeline runs.
//!
//! This module and its children are the only users of GStreamer and v4l.

pub mod encoder;
pub mod keyframe;
pub mod v4l2;

use crate::config::{EncoderConfig, PixelFormat, SourceConfig, SourceKind};
use crate::health::Heartbeat;
use bytes::Bytes;
use encoder::{EncoderChoice, EncoderSettings};
use futures::StreamExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use keyframe::{Decision, KeyframeLimiter};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use crate::util::sleep_until;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Frames buffered per viewer before a slow one starts skipping to the next keyframe. About two
/// seconds at 30 fps: enough to ride out a hiccup, small enough to bound memory.
const FRAME_BUFFER: usize = 64;

const RESTART_FIRST: Duration = Duration::from_millis(250);
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
    Runtime { source_name: String, message: String },
    #[error("the camera stopped: {0}")]
    CaptureEnded(String),
}

/// What the pipeline is running, for status and logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaInfo {
    pub source: String,
    pub encoder: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub running: bool,
}

/// Handle to the running media pipeline; cheap to clone.
#[derive(Clone)]
pub struct Media {
    frames: broadcast::Sender<EncodedFrame>,
    keyframes: mpsc::UnboundedSender<()>,
    info: watch::Receiver<MediaInfo>,
    encoders_running: Arc<std::sync::atomic::AtomicUsize>,
    /// Beats with every frame, and while the loop waits for a good reason; a stalled pipeline
    /// stops it, which stops the systemd watchdog pings.
    heartbeat: Heartbeat,
}

impl Media {
    /// A receiver of every frame from now on. Start sending at the first keyframe.
    pub fn subscribe(&self) -> broadcast::Receiver<EncodedFrame> {
        self.frames.subscribe()
    }

    /// Asks for a keyframe soon; requests are merged so a crowd costs one.
    pub fn request_keyframe(&self) {
        let _ = self.keyframes.send(());
    }

    pub fn info(&self) -> watch::Receiver<MediaInfo> {
        self.info.clone()
    }

    /// Encoder instances alive now: 1 while a pipeline runs, whatever the number of viewers.
    pub fn encoders_running(&self) -> usize {
        self.encoders_running.load(Ordering::Relaxed)
    }

    /// The pipeline's liveness, for the watchdog.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }
}

/// The resolved source: what `auto` turned into.
#[derive(Debug, Clone)]
enum Source {
    Test,
    V4l2(PathBuf),
}

fn resolve_source(cfg: &SourceConfig) -> Result<Source, MediaError> {
    Ok(match cfg.kind {
        SourceKind::Test => Source::Test,
        SourceKind::V4l2 if !cfg.device.is_empty() => Source::V4l2(PathBuf::from(&cfg.device)),
        SourceKind::V4l2 => Source::V4l2(v4l2::first_capture_device().ok_or(v4l2::V4l2Error::NoDevice)?),
        SourceKind::Auto if !cfg.device.is_empty() => Source::V4l2(PathBuf::from(&cfg.device)),
        SourceKind::Auto => match v4l2::first_capture_device() {
            Some(p) => Source::V4l2(p),
            None => {
                tracing::info!("no camera found; streaming the test pattern");
                Source::Test
            }
        },
    })
}

/// Starts the media pipeline task. Fails only on what retrying cannot fix (no encoder at all,
/// GStreamer missing); a camera that is unplugged or busy is retried in the background.
pub fn start(
    source: &SourceConfig,
    encoder_cfg: &EncoderConfig,
    shutdown: CancellationToken,
) -> Result<(Media, tokio::task::JoinHandle<()>), MediaError> {
    gst::init()?;
    let choice = encoder::choose(encoder_cfg, |name| gst::ElementFactory::find(name).is_some())?;
    tracing::info!(encoder = choice.spec.element, "encoder chosen: {}", choice.reason);
    let (frames, _) = broadcast::channel(FRAME_BUFFER);
    let (keyframes_tx, keyframes_rx) = mpsc::unbounded_channel();
    let (info_tx, info_rx) = watch::channel(MediaInfo::default());
    let encoders_running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let heartbeat = Heartbeat::new("media pipeline");
    let media = Media {
        frames: frames.clone(),
        keyframes: keyframes_tx,
        info: info_rx,
        encoders_running: encoders_running.clone(),
        heartbeat: heartbeat.clone(),
    };
    let runner = Runner {
        source: source.clone(),
        settings: EncoderSettings {
            bitrate_kbps: encoder_cfg.bitrate_kbps,
            keyframe_interval: encoder_cfg.keyframe_interval,
        },
        choice,
        frames,
        keyframes: keyframes_rx,
        limiter: KeyframeLimiter::new(Duration::from_millis(encoder_cfg.keyframe_min_interval_ms)),
        info: info_tx,
        encoders_running,
        heartbeat,
    };
    let task = tokio::spawn(runner.run(shutdown));
    Ok((media, task))
}

struct Runner {
    source: SourceConfig,
    settings: EncoderSettings,
    choice: EncoderChoice,
    frames: broadcast::Sender<EncodedFrame>,
    keyframes: mpsc::UnboundedReceiver<()>,
    limiter: KeyframeLimiter,
    info: watch::Sender<MediaInfo>,
    encoders_running: Arc<std::sync::atomic::AtomicUsize>,
    heartbeat: Heartbeat,
}

impl Runner {
    /// Runs pipelines until shutdown, rebuilding after each failure with a growing delay.
    async fn run(mut self, shutdown: CancellationToken) {
        let mut delay = RESTART_FIRST;
        let mut last_error = String::new();
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            match self.run_once(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    let msg = e.to_string();
                    // Log once per distinct failure, not once per retry.
                    if msg != last_error {
                        tracing::error!("media pipeline failed: {msg}; restarting");
                        last_error = msg;
                    }
                }
            }
            self.info.send_modify(|i| i.running = false);
            if started.elapsed() > Duration::from_secs(30) {
                delay = RESTART_FIRST;
            }
            // Waiting to retry (a camera unplugged, a device busy) is healthy: restarting rtcam
            // would not bring the camera back, so the loop keeps beating while it waits.
            let wait = async {
                tokio::select! {
                    _ = shutdown.cancelled() => true,
                    _ = tokio::time::sleep(delay) => false,
                }
            };
            if self.heartbeat.beating(BEAT_EVERY, wait).await {
                break;
            }
            delay = (delay * 2).min(RESTART_MAX);
        }
    }

    /// Builds and runs one pipeline until it fails or shutdown.
    async fn run_once(&mut self, shutdown: &CancellationToken) -> Result<(), MediaError> {
        let source = resolve_source(&self.source)?;
        let (capture, head, info) = match &source {
            Source::Test => {
                let s = &self.source;
                let overlay = if gst::ElementFactory::find("clockoverlay").is_some() {
                    "clockoverlay halignment=right valignment=bottom shaded-background=true font-desc=\"Sans 20\" ! "
                } else {
                    tracing::warn!("clockoverlay missing (install gstreamer1.0-x); test pattern has no clock");
                    ""
                };
                let head = format!(
                    "videotestsrc is-live=true pattern=smpte horizontal-speed=2 ! \
                     video/x-raw,width={w},height={h},framerate={fps}/1 ! {overlay}",
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
                    running: true,
                };
                (None, head, info)
            }
            Source::V4l2(path) => {
                let s = &self.source;
                let (dev, neg) = v4l2::open(path, s.format, s.width, s.height, s.fps)?;
                tracing::info!(
                    "camera {} ({}): {:?} {}x{} at {:.1} fps granted",
                    neg.path.display(),
                    neg.card,
                    neg.format,
                    neg.width,
                    neg.height,
                    neg.fps
                );
                let head = format!(
                    "appsrc name=camsrc is-live=true format=time do-timestamp=true caps=\"{}\" ! ",
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
                    running: true,
                };
                (Some((dev, neg)), head, info)
            }
        };
        let passthrough = capture.as_ref().is_some_and(|(_, n)| n.format == PixelFormat::H264);
        let decode = match capture.as_ref().map(|(_, n)| n.format) {
            Some(PixelFormat::Mjpeg) => "jpegdec ! ",
            _ => "",
        };
        let encode = if passthrough {
            String::new()
        } else {
            format!(
                "{decode}videoconvert ! video/x-raw,format={fmt} ! \
                 queue max-size-buffers=2 max-size-bytes=0 max-size-time=0 leaky=downstream ! {enc} ! ",
                fmt = self.choice.spec.input_format,
                enc = encoder::launch_fragment(&self.choice.spec, self.settings)
            )
        };
        // config-interval=-1 puts SPS/PPS in front of every IDR, so any keyframe is a start point.
        let desc = format!(
            "{head}{encode}h264parse config-interval=-1 ! \
             video/x-h264,stream-format=byte-stream,alignment=au ! \
             appsink name=sink sync=false max-buffers=8 drop=true"
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
        let frames = self.frames.clone();
        let heartbeat = self.heartbeat.clone();
        let first_frame_logged = Arc::new(AtomicBool::new(false));
        let source_name = info.source.clone();
        let nominal = Duration::from_secs_f64(1.0 / info.fps.max(1.0));
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                    let frame = EncodedFrame {
                        data: Bytes::copy_from_slice(map.as_slice()),
                        keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
                        duration: buffer
                            .duration()
                            .map(|d| Duration::from_nanos(d.nseconds()))
                            .filter(|d| !d.is_zero())
                            .unwrap_or(nominal),
                        produced: Instant::now(),
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
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| MediaError::Build(desc.clone(), e.to_string()))?;

        // The capture thread feeds appsrc; its end (camera gone, read error) ends this pipeline.
        let stop: v4l2::StopFlag = Arc::new(AtomicBool::new(false));
        let (capture_done_tx, mut capture_done) = tokio::sync::oneshot::channel::<Result<(), v4l2::V4l2Error>>();
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
                                appsrc.push_buffer(gst::Buffer::from_slice(data.to_vec())).is_ok()
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

        self.encoders_running.fetch_add(usize::from(!passthrough), Ordering::Relaxed);
        self.info.send_replace(info);
        // Until STARTUP_GRACE has passed the loop vouches for the pipeline; after that only
        // frames do, so a pipeline that stops producing lets the heartbeat go stale.
        let grace_end = tokio::time::Instant::now() + STARTUP_GRACE;
        let mut grace_tick = tokio::time::interval(BEAT_EVERY);
        let result = loop {
            let deadline = self.limiter.deadline();
            tokio::select! {
                // Cancel-safe: level-triggered token.
                _ = shutdown.cancelled() => break Ok(()),
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
                Some(()) = self.keyframes.recv() => {
                    if self.limiter.request(Instant::now()) == Decision::Force {
                        force_keyframe(&sink);
                    }
                }
                // Cancel-safe: a timer; recreated each turn from the limiter's state.
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if self.limiter.poll(Instant::now()) {
                        force_keyframe(&sink);
                    }
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
        self.encoders_running.fetch_sub(usize::from(!passthrough), Ordering::Relaxed);
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
