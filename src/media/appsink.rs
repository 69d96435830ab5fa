//! From an appsink to a broadcast channel: the one way the H.264 sink, the VP8 branch's sink
//! and the microphone's sink hand their buffers to the sessions. Each buffer's bytes are copied
//! once into shared [`Bytes`]; what each branch makes of them (a frame, a packet, its counters)
//! is the caller's closure.

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// One buffer as it left its sink.
pub(super) struct Pulled {
    pub data: Bytes,
    /// Not a delta unit: a decoder can start here.
    pub keyframe: bool,
    /// How long the buffer lasts, when it says (and not zero).
    pub duration: Option<Duration>,
    /// How long ago, on the pipeline clock, its content was captured.
    pub age: Option<Duration>,
    /// When the sink handed it over.
    pub produced: Instant,
}

impl Pulled {
    /// When its content was captured, on the `Instant` clock; `produced` without a timestamp.
    pub fn captured(&self) -> Instant {
        self.age
            .and_then(|a| self.produced.checked_sub(a))
            .unwrap_or(self.produced)
    }
}

/// Sends `make`'s value for every buffer `sink` receives on `to`, from the sink's streaming
/// thread. No receiver is normal (no viewer yet, or the last one just left): nothing to report.
pub(super) fn forward<T: Send + 'static>(
    sink: &gst_app::AppSink,
    to: broadcast::Sender<T>,
    mut make: impl FnMut(Pulled) -> T + Send + 'static,
) {
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let produced = Instant::now();
                let pulled = Pulled {
                    data: Bytes::copy_from_slice(map.as_slice()),
                    keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
                    duration: buffer
                        .duration()
                        .map(|d| Duration::from_nanos(d.nseconds()))
                        .filter(|d| !d.is_zero()),
                    // The buffer keeps its capture timestamp through the encoder: its age on
                    // the pipeline clock is how long capture → here took.
                    age: capture_age(sink, &sample),
                    produced,
                };
                let _ = to.send(make(pulled));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
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

/// The appsink named `name` in `bin`, if there is one.
pub(super) fn find(bin: &impl IsA<gst::Bin>, name: &str) -> Option<gst_app::AppSink> {
    bin.as_ref()
        .by_name(name)
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
}
