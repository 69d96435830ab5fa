//! Starting the source and building the pipeline a [`Description`] describes: which source
//! `auto` takes, opening a V4L2 camera (its controls and flip controls), GStreamer's pipeline
//! and its sinks, the thread that feeds a camera's frames into it, and setting it playing.

use super::describe::{Description, Present};
use super::orientation::{self, Orientation, Turn};
use super::v4l2::{self, Negotiated};
use super::{appsink, audio, latency, live, stamp, CameraState, EncodedFrame, MediaError};
use super::{BuildError, MediaStats};
use crate::config::{SourceConfig, SourceKind};
use crate::health::Heartbeat;
use futures::StreamExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

/// The resolved source: what `auto` turned into.
#[derive(Debug, Clone)]
pub(super) enum Source {
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
pub(super) fn resolve_source(
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

/// An open V4L2 camera and what its driver granted.
pub(super) struct Camera {
    dev: v4l2::Device,
    pub negotiated: Negotiated,
}

/// Opens the camera at `path` as `cfg` asks, applies `[source.controls]`, and lets the
/// camera's flip controls do what they can of `cfg`'s orientation. Returns the camera and the
/// turn the pipeline must still make. `before`: the camera's state until now, so a bad
/// control is reported when the camera comes (back), not at each rebuild of a running one.
pub(super) fn open_camera(
    path: &std::path::Path,
    cfg: &SourceConfig,
    encoder_input: &str,
    before: CameraState,
) -> Result<(Camera, Turn), MediaError> {
    let (dev, neg) = v4l2::open(
        path,
        cfg.format,
        cfg.width,
        cfg.height,
        cfg.fps,
        encoder_input,
    )?;
    if before == CameraState::Lost {
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
    // Applied at every open, so settings survive an unplug.
    for e in v4l2::controls::apply(&dev, &neg.path, &cfg.controls) {
        if before != CameraState::Ok {
            tracing::warn!("[source.controls]: {e}");
        }
    }
    let orientation = Orientation::of(cfg);
    let mut turn = orientation::plan(orientation, false).pipeline;
    let flipped = v4l2::controls::apply_flips(
        &dev,
        &neg.path,
        |has| {
            let plan = orientation::plan(orientation, has);
            turn = plan.pipeline;
            plan.camera_flips
        },
        &cfg.controls,
    );
    if let Err(e) = flipped {
        tracing::warn!("camera flips: {e}; the pipeline turns the picture instead");
        turn = orientation::plan(orientation, false).pipeline;
    }
    let camera = Camera {
        dev,
        negotiated: neg,
    };
    Ok((camera, turn))
}

/// What this machine's GStreamer has that a description may use.
pub(super) fn present() -> Present {
    Present {
        clock_overlay: gst::ElementFactory::find("clockoverlay").is_some(),
        hardware_jpeg: gst::ElementFactory::find("v4l2jpegdec").is_some(),
        stamp: stamp::enabled(),
    }
}

/// A pipeline from a launch description.
pub(super) fn launch(description: &str) -> Result<gst::Pipeline, MediaError> {
    gst::parse::launch(description)
        .map_err(|e| MediaError::build(description, e))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| MediaError::build(description, BuildError::NotAPipeline))
}

/// A built pipeline and the sinks rtcam reads. Set to NULL when dropped, on every exit path,
/// so the camera is released.
pub(super) struct Built {
    pub pipeline: gst::Pipeline,
    /// The encoded video.
    pub sink: gst_app::AppSink,
    /// The newest raw frame, for snapshots; none when the camera's H.264 passes through.
    pub rawsink: Option<gst_app::AppSink>,
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Builds `d`'s pipeline (not yet playing), with the benchmark stamp where it asks for one.
pub(super) fn build(d: &Description) -> Result<Built, MediaError> {
    let pipeline = launch(&d.launch)?;
    // Still NULL: a pipeline dropped here holds nothing.
    let sink = appsink::find(&pipeline, "sink")
        .ok_or_else(|| MediaError::build(&d.launch, BuildError::Missing("appsink")))?;
    let built = Built {
        rawsink: appsink::find(&pipeline, "rawsink"),
        sink,
        pipeline,
    };
    if let Some(identity) = built.pipeline.by_name("stamp") {
        live::install_stamp(&identity);
    }
    Ok(built)
}

/// Where the H.264 sink's frames go, and what counts them.
pub(super) struct Publish {
    pub frames: broadcast::Sender<EncodedFrame>,
    pub stats: Arc<MediaStats>,
    pub audio_stats: Arc<audio::AudioStats>,
    pub heartbeat: Heartbeat,
    /// For the log line of the pipeline's first frame.
    pub source_name: String,
    /// A frame's duration when its buffer has none: one frame at the granted rate.
    pub nominal: Duration,
}

/// Publishes every frame of `sink` as an [`EncodedFrame`], counting it and beating the
/// heartbeat.
pub(super) fn publish(sink: &gst_app::AppSink, p: Publish) {
    let Publish {
        frames,
        stats,
        audio_stats,
        heartbeat,
        source_name,
        nominal,
    } = p;
    let mut first_frame_logged = false;
    appsink::forward(sink, frames, move |pulled| {
        if let Some(age) = pulled.age {
            stats.latency.record(latency::Stage::CaptureToEncoded, age);
            audio::record_delay(&audio_stats.video_delay_us, age);
        }
        stats.frames.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(pulled.data.len() as u64, Ordering::Relaxed);
        stats
            .keyframes
            .fetch_add(u64::from(pulled.keyframe), Ordering::Relaxed);
        let frame = EncodedFrame {
            captured: pulled.captured(),
            duration: pulled.duration.unwrap_or(nominal),
            data: pulled.data,
            keyframe: pulled.keyframe,
            produced: pulled.produced,
        };
        heartbeat.beat();
        // Once per pipeline, so logs (and the emulated-board test) show frames flow.
        if !std::mem::replace(&mut first_frame_logged, true) {
            tracing::info!(
                "first encoded frame from {source_name}: {} bytes, keyframe: {}",
                frame.data.len(),
                frame.keyframe
            );
        }
        frame
    });
}

/// Sets the pipeline playing. When it refuses, the element that refused (a camera source
/// with no camera, say) posted why on the bus, which says more than "failed to change its
/// state": a short, bounded look for it.
pub(super) async fn play(
    built: &Built,
    messages: &mut gst::bus::BusStream,
    description: &str,
) -> Result<(), MediaError> {
    let Err(e) = built.pipeline.set_state(gst::State::Playing) else {
        return Ok(());
    };
    let posted = tokio::time::timeout(Duration::from_millis(200), async {
        while let Some(msg) = messages.next().await {
            if let gst::MessageView::Error(err) = msg.view() {
                return Some(MediaError::Refused {
                    element: err.src().map(|s| s.name().to_string()).unwrap_or_default(),
                    source: err.error(),
                });
            }
        }
        None
    })
    .await;
    Err(posted
        .ok()
        .flatten()
        .unwrap_or_else(|| MediaError::build(description, e)))
}

/// The thread that reads a camera and feeds its frames to the pipeline's `appsrc`. Its end
/// (camera gone, read error) ends the pipeline.
pub(super) struct Capture {
    stop: v4l2::StopFlag,
    thread: std::thread::JoinHandle<()>,
    /// How the thread ended.
    done: oneshot::Receiver<Result<(), v4l2::V4l2Error>>,
}

impl Capture {
    /// Starts streaming `camera` into `built`'s `camsrc`.
    pub fn start(built: &Built, camera: Camera, description: &str) -> Result<Self, MediaError> {
        let appsrc = built
            .pipeline
            .by_name("camsrc")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| MediaError::build(description, BuildError::Missing("appsrc")))?;
        let stop: v4l2::StopFlag = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = oneshot::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rtcam-capture".into())
            .spawn(move || {
                let Camera { dev, negotiated } = camera;
                let result = v4l2::stream(&dev, &negotiated.path, &thread_stop, |data| {
                    appsrc
                        .push_buffer(gst::Buffer::from_slice(data.to_vec()))
                        .is_ok()
                });
                let _ = done_tx.send(result);
            })
            .map_err(|e| MediaError::build(description, e))?;
        Ok(Self { stop, thread, done })
    }

    /// Waits for the thread to end by itself, as a pipeline error. Cancel-safe: a oneshot
    /// keeps its value until read.
    pub async fn ended(capture: &mut Option<Capture>) -> MediaError {
        let Some(c) = capture else {
            return std::future::pending().await;
        };
        match (&mut c.done).await {
            Ok(Err(e)) => MediaError::Camera(e),
            _ => MediaError::CaptureEnded,
        }
    }

    /// Asks the thread to stop; it sees the flag at its next frame or read timeout.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the thread, which wakes at least every read timeout and sees the stop flag,
    /// or fails its next push once the pipeline is down.
    pub async fn join(self) {
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}
