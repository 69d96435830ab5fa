//! The media boundary's errors. Each keeps its cause (GStreamer's, the camera's, the system's)
//! as its `source()`, and says it in its own message too, so a status line or a log line
//! holds the whole story while a fatal error still prints each cause once.

use super::{encoder, v4l2};
use gstreamer as gst;
use gstreamer::glib;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("GStreamer cannot start: {0}")]
    Init(#[from] glib::Error),
    #[error(transparent)]
    Encoder(#[from] encoder::EncoderError),
    #[error(transparent)]
    Camera(#[from] v4l2::V4l2Error),
    #[error("pipeline {description:?} cannot be built: {source}")]
    Build {
        /// The launch description that failed.
        description: String,
        source: BuildError,
    },
    /// An element posted an error on the bus while the pipeline ran.
    #[error("pipeline error from {element}: {source} ({debug:?})")]
    Element {
        /// The element's path in the pipeline (`/GstPipeline:pipeline0/GstX264Enc:encoder`).
        element: String,
        source: glib::Error,
        /// GStreamer's debug text for the error, when the element gave one.
        debug: Option<String>,
    },
    /// An element refused to start, and posted why.
    #[error("pipeline error from {element}: {source}")]
    Refused {
        element: String,
        source: glib::Error,
    },
    /// The pipeline stopped without an element's error: its bus closed or the stream ended.
    #[error("pipeline error from {what}: {why}")]
    Ended {
        what: &'static str,
        why: &'static str,
    },
    #[error("the camera stopped: capture thread ended")]
    CaptureEnded,
    #[error("snapshot failed: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("[source] kind = \"libcamera\" needs GStreamer's libcamerasrc element; install the package gstreamer1.0-libcamera")]
    LibcameraMissing,
    #[error("this video source has no camera controls (they are for V4L2 cameras)")]
    NoControls,
    #[error(transparent)]
    Control(#[from] v4l2::controls::ControlError),
    #[error("audio: {0}")]
    Audio(#[from] AudioError),
}

impl MediaError {
    /// A pipeline error's element name as GStreamer gave it, if an element failed.
    pub fn element(&self) -> Option<&str> {
        match self {
            MediaError::Element { element, .. } | MediaError::Refused { element, .. } => {
                Some(element)
            }
            _ => None,
        }
    }

    /// A pipeline `description` that could not be built, and why.
    pub(super) fn build(description: &str, source: impl Into<BuildError>) -> Self {
        MediaError::Build {
            description: description.to_string(),
            source: source.into(),
        }
    }
}

/// Why a pipeline (or a branch added to one) could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] glib::Error),
    #[error("not a pipeline")]
    NotAPipeline,
    /// An element the description names is not there (`appsink`, `appsrc`, …).
    #[error("no {0}")]
    Missing(&'static str),
    #[error(transparent)]
    State(#[from] gst::StateChangeError),
    #[error(transparent)]
    Element(#[from] glib::BoolError),
    #[error(transparent)]
    Thread(#[from] std::io::Error),
    /// Linking a branch failed at the named step.
    #[error("{0}")]
    Link(&'static str),
}

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the media pipeline is not running")]
    NotRunning,
    #[error("timed out")]
    TimedOut,
    #[error("the media pipeline stopped")]
    Stopped,
    #[error("the camera is not delivering frames right now")]
    NotDelivering,
    #[error("streaming is switched off")]
    SwitchedOff,
    /// A pipeline started for the snapshot has no raw frames (the camera's H.264 passes through).
    #[error("no raw frames to take a snapshot of")]
    NoRawFrames,
    #[error("the camera sends H.264 that rtcam passes through; there is no raw frame to take a snapshot of")]
    Passthrough,
    #[error("no frame arrived within a second")]
    NoFrame,
    #[error(transparent)]
    Convert(glib::Error),
    #[error("encoder gave no image")]
    NoImage,
    #[error(transparent)]
    Map(glib::BoolError),
}

/// Why the sound could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The config's own sentence about an `[audio]` endpoint (validated at load, so seen only
    /// for a config built in code).
    #[error("{0}")]
    Endpoint(String),
    #[error("[audio] needs GStreamer's {element} element; install the package {package}")]
    Missing {
        element: &'static str,
        package: &'static str,
    },
    #[error("the pipeline has no audio sink")]
    NoSink,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_cause_once() {
        let e = MediaError::build("videotestsrc ! fakesink", BuildError::Missing("appsink"));
        assert_eq!(
            e.to_string(),
            "pipeline \"videotestsrc ! fakesink\" cannot be built: no appsink"
        );
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
        assert_eq!(crate::logging::error_text(&e), e.to_string());
        let e = MediaError::from(SnapshotError::Passthrough);
        assert_eq!(
            e.to_string(),
            "snapshot failed: the camera sends H.264 that rtcam passes through; there is no raw \
             frame to take a snapshot of"
        );
        let e = MediaError::Ended {
            what: "pipeline",
            why: "end of stream",
        };
        assert_eq!(e.to_string(), "pipeline error from pipeline: end of stream");
        assert_eq!(e.element(), None);
        let e = MediaError::from(AudioError::Missing {
            element: "opusenc",
            package: "gstreamer1.0-plugins-base",
        });
        assert_eq!(
            e.to_string(),
            "audio: [audio] needs GStreamer's opusenc element; install the package \
             gstreamer1.0-plugins-base"
        );
    }
}
