//! The VP8 fallback: a second encoder branch for viewers whose browser offers no H.264
//! (Firefox without its OpenH264 plugin).
//!
//! The branch hangs off the raw-frame tee of the running pipeline (after decode and convert),
//! so one camera capture feeds both encoders. It is attached while at least one VP8 viewer
//! holds a receiver of [`Fallback::frames`] and detached when the last one leaves, without
//! stopping the H.264 branch: VP8 costs CPU only while someone needs it. Its frames go out on
//! their own broadcast channel, and its keyframe requests have their own limiter, so a VP8
//! viewer's PLI never forces an H.264 keyframe and the other way round.
//!
//! Owns no pipeline: [`super::runner::Runner`] calls [`Fallback::sync`] when demand may have
//! changed.

use super::encoder::{self, EncoderSettings, Picture};
use super::error::BuildError;
use super::keyframe::{Decision, KeyframeLimiter};
use super::{appsink, live, EncodedFrame, MediaError, MediaStats};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// The element name of the raw tee the branch attaches to (see the pipeline description).
pub(super) const RAW_TEE: &str = "raw";

/// The fallback's state across pipelines: its channel and limiter outlive each pipeline, like
/// the H.264 ones, so VP8 viewers keep their tracks through a rebuild.
pub(super) struct Fallback {
    pub frames: broadcast::Sender<EncodedFrame>,
    pub limiter: KeyframeLimiter,
    /// The branch in the current pipeline, if attached.
    branch: Option<Branch>,
    /// Said once per pipeline: a camera passed through as H.264 has no raw frames to encode.
    warned_no_raw: bool,
    /// The branch failed to start in this pipeline; not retried (and logged) every check.
    failed: bool,
}

impl Fallback {
    pub fn new(frames: broadcast::Sender<EncodedFrame>, limiter: KeyframeLimiter) -> Self {
        Self {
            frames,
            limiter,
            branch: None,
            warned_no_raw: false,
            failed: false,
        }
    }

    /// Whether any VP8 viewer wants frames.
    pub fn wanted(&self) -> bool {
        self.frames.receiver_count() > 0
    }

    pub fn running(&self) -> bool {
        self.branch.is_some()
    }

    /// Attaches the branch when a VP8 viewer waits and none runs, detaches it when the last
    /// one has left. Returns true when that changed whether it runs.
    pub fn sync(
        &mut self,
        pipeline: &gst::Pipeline,
        settings: EncoderSettings,
        picture: Picture,
        stats: Arc<MediaStats>,
    ) -> Result<bool, MediaError> {
        match (self.wanted(), self.branch.is_some()) {
            (true, false) if self.failed => Ok(false),
            (true, false) => {
                if pipeline.by_name(RAW_TEE).is_none() {
                    if !self.warned_no_raw {
                        self.warned_no_raw = true;
                        tracing::warn!(
                            "a VP8 viewer waits, but the camera's H.264 is passed through without \
                             raw frames to encode VP8 from; set [source] format to a raw format"
                        );
                    }
                    return Ok(false);
                }
                let branch =
                    Branch::attach(pipeline, settings, picture, self.frames.clone(), stats)
                        .inspect_err(|_| self.failed = true)?;
                tracing::info!("VP8 encoder started for a viewer without H.264");
                self.branch = Some(branch);
                Ok(true)
            }
            (false, true) => {
                if let Some(branch) = self.branch.take() {
                    branch.detach();
                }
                tracing::info!("VP8 encoder stopped: no VP8 viewer left");
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The pipeline ended: its branch went with it.
    pub fn pipeline_ended(&mut self) {
        self.branch = None;
        self.warned_no_raw = false;
        self.failed = false;
    }

    /// A VP8 viewer asked for a keyframe (join, PLI/FIR); merged like the H.264 ones.
    pub fn request_keyframe(&mut self, now: Instant) {
        if self.limiter.request(now) == Decision::Force {
            self.force_keyframe();
        }
    }

    /// The limiter's merged request fell due.
    pub fn poll_keyframe(&mut self, now: Instant) {
        if self.limiter.poll(now) {
            self.force_keyframe();
        }
    }

    fn force_keyframe(&self) {
        if let Some(branch) = &self.branch {
            live::force_keyframe(&branch.sink);
        }
    }

    /// Follows a bitrate change on the running VP8 encoder (vp8enc takes it while playing).
    pub fn set_bitrate(&self, kbps: u32) {
        if let Some(branch) = &self.branch {
            if let Some((property, scale)) = encoder::live_bitrate(&encoder::VP8) {
                let value = u64::from(kbps) * u64::from(scale);
                if !live::set_number(&branch.encoder, property, value) {
                    tracing::debug!("vp8enc did not take the bitrate change");
                }
            }
        }
    }
}

/// The elements of one attached branch.
struct Branch {
    bin: gst::Bin,
    tee_pad: gst::Pad,
    sink: gst_app::AppSink,
    encoder: gst::Element,
}

impl Branch {
    fn attach(
        pipeline: &gst::Pipeline,
        settings: EncoderSettings,
        picture: Picture,
        frames: broadcast::Sender<EncodedFrame>,
        stats: Arc<MediaStats>,
    ) -> Result<Self, MediaError> {
        // A leaky queue: a VP8 encoder slower than the camera drops its own frames, never
        // holding up the tee and so the H.264 viewers. videoconvert is a no-op when the raw
        // format already is I420 and converts when a hardware H.264 encoder wants NV12.
        let desc = format!(
            "queue max-size-buffers=2 max-size-bytes=0 max-size-time=0 leaky=downstream ! \
             videoconvert ! video/x-raw,format={fmt} ! {enc} ! video/x-vp8 ! \
             appsink name=vp8sink sync=false max-buffers=8 drop=true",
            fmt = encoder::VP8.input_format,
            enc = encoder::launch_fragment(&encoder::VP8, settings, picture)
        );
        let build = |e: BuildError| MediaError::build(&desc, e);
        let bin = gst::parse::bin_from_description(&desc, true).map_err(|e| build(e.into()))?;
        // No fixed name: a branch being removed may still be in the pipeline when the next is
        // added, and names must be unique there.
        let sink =
            appsink::find(&bin, "vp8sink").ok_or_else(|| build(BuildError::Missing("appsink")))?;
        let encoder = bin
            .by_name("vp8encoder")
            .ok_or_else(|| build(BuildError::Missing("vp8enc")))?;
        let nominal = Duration::from_secs_f64(1.0 / f64::from(picture.fps.max(1)));
        appsink::forward(&sink, frames, move |pulled| {
            stats.vp8_frames.fetch_add(1, Ordering::Relaxed);
            stats
                .vp8_keyframes
                .fetch_add(u64::from(pulled.keyframe), Ordering::Relaxed);
            // Capture time as for H.264 frames, so a VP8 viewer's latency figures mean the
            // same; the capture → encoded window stays H.264's alone.
            EncodedFrame {
                captured: pulled.captured(),
                duration: pulled.duration.unwrap_or(nominal),
                data: pulled.data,
                keyframe: pulled.keyframe,
                produced: pulled.produced,
            }
        });
        let tee_pad = Self::insert(pipeline, &bin).map_err(build)?;
        Ok(Self {
            bin,
            tee_pad,
            sink,
            encoder,
        })
    }

    /// Adds `bin` to `pipeline`, playing, and links it to the raw tee; on failure it leaves
    /// the pipeline as it was.
    fn insert(pipeline: &gst::Pipeline, bin: &gst::Bin) -> Result<gst::Pad, BuildError> {
        let tee = pipeline
            .by_name(RAW_TEE)
            .ok_or(BuildError::Missing("raw tee"))?;
        pipeline.add(bin)?;
        // Playing before linked, so the first buffer the tee pushes finds it ready.
        if let Err(e) = bin.sync_state_with_parent() {
            let _ = pipeline.remove(bin);
            return Err(e.into());
        }
        let linked = (|| {
            let tee_pad = tee
                .request_pad_simple("src_%u")
                .ok_or("the tee gave no pad")?;
            let sink_pad = bin.static_pad("sink").ok_or("the branch has no sink")?;
            if tee_pad.link(&sink_pad).is_err() {
                tee.release_request_pad(&tee_pad);
                return Err("cannot link the tee to the VP8 branch");
            }
            Ok(tee_pad)
        })();
        linked.map_err(|e| {
            let _ = bin.set_state(gst::State::Null);
            let _ = pipeline.remove(bin);
            BuildError::Link(e)
        })
    }

    /// Unlinks the branch once the tee is between buffers, then stops and removes it on a
    /// GStreamer thread: stopping a queue from inside a streaming thread could deadlock.
    fn detach(self) {
        let Branch { bin, tee_pad, .. } = self;
        tee_pad.add_probe(gst::PadProbeType::IDLE, move |pad, _| {
            if let Some(peer) = pad.peer() {
                let _ = pad.unlink(&peer);
            }
            let pad = pad.clone();
            let bin = bin.clone();
            bin.clone().call_async(move |_| {
                if let Some(tee) = pad.parent_element() {
                    tee.release_request_pad(&pad);
                }
                let _ = bin.set_state(gst::State::Null);
                if let Some(parent) = bin.parent().and_downcast::<gst::Bin>() {
                    let _ = parent.remove(&bin);
                }
            });
            gst::PadProbeReturn::Remove
        });
    }
}
