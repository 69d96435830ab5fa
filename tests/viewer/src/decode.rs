//! GStreamer's own depayloaders and decoders, as a browser has them, fed the tracks' RTP.

use crate::seen::Shared;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use rtcam::media::stamp;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// What the video decoder is asked to do.
pub(crate) struct VideoSettings {
    pub(crate) vp8: bool,
    /// Recover from loss as a browser does (`ViewerOptions::recover`), sending each keyframe
    /// request of the depayloader here.
    pub(crate) keyframe_requests: Option<mpsc::UnboundedSender<()>>,
    /// Read the capture-time barcode of each picture (`ViewerOptions::stamps`).
    pub(crate) stamps: bool,
}

/// A decoding pipeline; set to NULL when dropped.
pub(crate) struct Decoder {
    pipeline: gst::Pipeline,
    pub(crate) appsrc: gst_app::AppSrc,
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The video decoder: H.264 (or VP8) RTP in, I420 pictures counted into `shared`. `started`
/// is when the offer was made, for `Decoded::first_frame_after`.
pub(crate) fn video(
    shared: Arc<Shared>,
    started: Instant,
    settings: VideoSettings,
) -> Result<Decoder, gst::glib::Error> {
    gst::init()?;
    let (name, depay_element, decode) = if settings.vp8 {
        ("VP8", "rtpvp8depay", "vp8dec")
    } else if settings.stamps {
        // One decoding thread: libav's frame threads would each hold a frame back, latency a
        // browser's decoder does not add.
        (
            "H264",
            "rtph264depay",
            "h264parse ! avdec_h264 max-threads=1",
        )
    } else {
        ("H264", "rtph264depay", "h264parse ! avdec_h264")
    };
    let (jitter, depay) = if settings.keyframe_requests.is_some() {
        // 400 ms: enough for a NACK round trip on a 160 ms path and the resend.
        (
            "rtpjitterbuffer latency=400 do-lost=true ! ",
            format!("{depay_element} request-keyframe=true wait-for-keyframe=true"),
        )
    } else {
        ("", depay_element.to_string())
    };
    let (pipeline, appsrc, sink) = launch(&format!(
        "appsrc name=src is-live=true format=time do-timestamp=true \
         caps=application/x-rtp,media=video,encoding-name={name},clock-rate=90000 ! \
         {jitter}{depay} ! {decode} ! videoconvert ! video/x-raw,format=I420 ! \
         appsink name=sink sync=false"
    ))?;
    let stamps = settings.stamps;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                picture(&shared, started, sample, stamps);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    if let Some(requests) = settings.keyframe_requests {
        forward_keyframe_requests(&appsrc, requests);
    }
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| gst::glib::Error::new(gst::CoreError::StateChange, &e.to_string()))?;
    Ok(Decoder { pipeline, appsrc })
}

/// One decoded picture into the figures.
fn picture(shared: &Shared, started: Instant, sample: gst::Sample, stamps: bool) {
    // Read the clock first: the age is measured at the moment of decoding.
    let now = stamp::now_ms();
    let age = stamps.then(|| read_stamp(&sample).map(|ms| stamp::age_ms(ms, now)));
    shared.mark(|s| &mut s.first_frame);
    let mut d = shared.seen();
    if let Some(st) = sample.caps().and_then(|caps| caps.structure(0)) {
        d.width = st.get::<i32>("width").unwrap_or(0);
        d.height = st.get::<i32>("height").unwrap_or(0);
    }
    d.frames += 1;
    d.last_sample = Some(sample);
    if d.first_frame_after.is_none() {
        d.first_frame_after = Some(started.elapsed());
    }
    match age {
        Some(Some(a)) => d.latencies_ms.push(a),
        Some(None) => d.unreadable += 1,
        None => {}
    }
    drop(d);
    shared.changed();
}

/// The depayloader asks upstream for a keyframe (a force-key-unit event) when the jitter
/// buffer reports a packet lost for good; upstream of appsrc is the network.
fn forward_keyframe_requests(appsrc: &gst_app::AppSrc, requests: mpsc::UnboundedSender<()>) {
    let Some(pad) = appsrc.static_pad("src") else {
        return;
    };
    pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(ev)) = &info.data {
            if gstreamer_video::UpstreamForceKeyUnitEvent::parse(ev).is_ok() {
                let _ = requests.send(());
            }
        }
        gst::PadProbeReturn::Ok
    });
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

/// The audio decoder: Opus RTP in, decoded buffers counted.
pub(crate) fn audio(shared: Arc<Shared>) -> Result<Decoder, gst::glib::Error> {
    gst::init()?;
    let (pipeline, appsrc, sink) = launch(
        "appsrc name=src is-live=true format=time do-timestamp=true \
         caps=application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111 ! \
         rtpopusdepay ! opusdec ! appsink name=sink sync=false",
    )?;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let _ = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                shared.seen().audio_decoded += 1;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| gst::glib::Error::new(gst::CoreError::StateChange, &e.to_string()))?;
    Ok(Decoder { pipeline, appsrc })
}

/// A decoding pipeline fed RTP through its `src` appsrc, with its output at the `sink` appsink.
fn launch(
    description: &str,
) -> Result<(gst::Pipeline, gst_app::AppSrc, gst_app::AppSink), gst::glib::Error> {
    let missing = |what: &str| gst::glib::Error::new(gst::CoreError::Failed, what);
    let pipeline = gst::parse::launch(description)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| missing("not a pipeline"))?;
    let appsrc = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| missing("no appsrc named src"))?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| missing("no appsink named sink"))?;
    Ok((pipeline, appsrc, sink))
}
