//! What is done to a running pipeline without rebuilding it: a bitrate change, a forced
//! keyframe, a snapshot from the newest raw frame, an injected fault, the benchmark stamp.

use super::error::SnapshotError;
use super::{encoder, stamp, MediaError};
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::oneshot;

/// Where a snapshot's JPEG (or why there is none) goes.
pub(super) type SnapshotReply = oneshot::Sender<Result<Bytes, MediaError>>;

/// Sets the bitrate on the running encoder if it takes changes while playing.
pub(super) fn set_bitrate(
    pipeline: &gst::Pipeline,
    spec: &encoder::EncoderSpec,
    kbps: u32,
) -> bool {
    let (Some((property, scale)), Some(element)) =
        (encoder::live_bitrate(spec), pipeline.by_name("encoder"))
    else {
        return false;
    };
    set_number(&element, property, u64::from(kbps) * u64::from(scale))
}

/// Sets a numeric property in the type the element declares it (encoders differ: uint, int,
/// uint64); false if it has no such numeric property. Setting the wrong type would panic.
pub(super) fn set_number(element: &gst::Element, property: &str, value: u64) -> bool {
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

/// Asks the encoder for an IDR with SPS/PPS, travelling upstream from the sink.
pub(super) fn force_keyframe(sink: &gst_app::AppSink) {
    let event = gstreamer_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    if !sink.send_event(event) {
        tracing::debug!("encoder did not take the keyframe request");
    }
}

/// Answers `reply` from `raw` (the newest raw frame), or with `missing` when the pipeline has
/// no raw frames.
pub(super) fn snapshot(
    raw: Option<&gst_app::AppSink>,
    reply: SnapshotReply,
    missing: SnapshotError,
) {
    match raw {
        Some(raw) => take_snapshot(raw.clone(), reply),
        None => {
            let _ = reply.send(Err(missing.into()));
        }
    }
}

/// Encodes the newest raw frame as JPEG on a blocking thread and answers `reply`.
fn take_snapshot(raw: gst_app::AppSink, reply: SnapshotReply) {
    tokio::task::spawn_blocking(move || {
        let _ = reply.send(jpeg_of_newest(&raw).map_err(MediaError::from));
    });
}

fn jpeg_of_newest(raw: &gst_app::AppSink) -> Result<Bytes, SnapshotError> {
    // The sink holds the newest frame; if it was just taken, the next one is a frame away.
    let sample = raw
        .try_pull_sample(gst::ClockTime::from_mseconds(1000))
        .ok_or(SnapshotError::NoFrame)?;
    // GStreamer picks the JPEG encoder by rank: the board's hardware one where it has one
    // (v4l2jpegenc outranks jpegenc), software jpegenc elsewhere.
    let caps = gst::Caps::builder("image/jpeg").build();
    let jpeg = gstreamer_video::convert_sample(&sample, &caps, gst::ClockTime::from_seconds(3))
        .map_err(SnapshotError::Convert)?;
    let buffer = jpeg.buffer().ok_or(SnapshotError::NoImage)?;
    let map = buffer.map_readable().map_err(SnapshotError::Map)?;
    Ok(Bytes::copy_from_slice(map.as_slice()))
}

/// Posts an ERROR message from the encoder (or, for a camera's own H.264, the output sink) on
/// the bus: what an element does when it fails, so the fault takes the real error path.
pub(super) fn inject_error(pipeline: &gst::Pipeline, message: &str) {
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

/// Writes the capture time into every frame leaving `element` (the `stamp` benchmark aid).
pub(super) fn install_stamp(element: &gst::Element) {
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
