//! V4L2 capture: the only file that uses the `v4l` crate.
//!
//! A camera is opened, a format negotiated, and frames streamed with mmap buffers on a thread of
//! its own (V4L2 reads block), each pushed into the pipeline's `appsrc`. The thread ends when
//! asked to, or when the camera fails; the pipeline's run loop decides what happens next.

use crate::config::PixelFormat;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use v4l::buffer::Type;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

/// A blocking read gives up after this, so a camera that stops delivering is noticed and the
/// stop flag is checked (the v4l crate would otherwise wait forever).
const READ_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum V4l2Error {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: the camera offers none of the formats rtcam can use ({offered}); rtcam takes H264, MJPG, YUYV or NV12")]
    NoUsableFormat { path: PathBuf, offered: String },
    #[error("{path}: the camera does not offer {asked}; it offers {offered}")]
    FormatNotOffered {
        path: PathBuf,
        asked: String,
        offered: String,
    },
    #[error("no V4L2 capture device found")]
    NoDevice,
}

/// What the camera was set to, as the driver granted it.
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    pub path: PathBuf,
    pub card: String,
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Frames per second the driver granted (it may differ from what was asked).
    pub fps: f64,
}

impl Negotiated {
    /// GStreamer caps for the frames this camera delivers.
    pub fn caps(&self) -> String {
        let (w, h) = (self.width, self.height);
        match self.format {
            PixelFormat::H264 => {
                format!("video/x-h264,stream-format=byte-stream,width={w},height={h}")
            }
            PixelFormat::Mjpeg => format!("image/jpeg,width={w},height={h}"),
            PixelFormat::Yuyv => format!("video/x-raw,format=YUY2,width={w},height={h}"),
            PixelFormat::Nv12 | PixelFormat::Auto => {
                format!("video/x-raw,format=NV12,width={w},height={h}")
            }
        }
    }
}

fn fourcc_of(format: PixelFormat) -> Option<FourCC> {
    match format {
        PixelFormat::H264 => Some(FourCC::new(b"H264")),
        PixelFormat::Mjpeg => Some(FourCC::new(b"MJPG")),
        PixelFormat::Yuyv => Some(FourCC::new(b"YUYV")),
        PixelFormat::Nv12 => Some(FourCC::new(b"NV12")),
        PixelFormat::Auto => None,
    }
}

/// The preference of `format = "auto"`: a camera that encodes H.264 itself saves the board the
/// whole encode; raw formats feed the encoder directly; MJPEG needs a decode first.
const AUTO_ORDER: [PixelFormat; 4] = [
    PixelFormat::H264,
    PixelFormat::Yuyv,
    PixelFormat::Nv12,
    PixelFormat::Mjpeg,
];

/// The first V4L2 node that can capture video, if any.
pub fn first_capture_device() -> Option<PathBuf> {
    let mut nodes = v4l::context::enum_devices();
    nodes.sort_by_key(|n| n.index());
    nodes
        .into_iter()
        .map(|n| n.path().to_path_buf())
        .find(|p| is_capture_device(p))
}

fn is_capture_device(path: &Path) -> bool {
    Device::with_path(path)
        .and_then(|d| d.query_caps())
        .map(|caps| {
            caps.capabilities
                .contains(v4l::capability::Flags::VIDEO_CAPTURE)
        })
        .unwrap_or(false)
}

/// Opens `path` and sets the format, size and rate, reporting what the driver granted.
pub fn open(
    path: &Path,
    format: PixelFormat,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<(Device, Negotiated), V4l2Error> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| V4l2Error::Io { path, what, source }
    };
    let dev = Device::with_path(path).map_err(io("cannot open"))?;
    let caps = dev.query_caps().map_err(io("cannot query capabilities"))?;
    let offered: Vec<FourCC> = dev
        .enum_formats()
        .map_err(io("cannot list formats"))?
        .into_iter()
        .map(|f| f.fourcc)
        .collect();
    let offered_names = offered
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let chosen = match format {
        PixelFormat::Auto => AUTO_ORDER
            .into_iter()
            .find(|f| fourcc_of(*f).is_some_and(|cc| offered.contains(&cc)))
            .ok_or_else(|| V4l2Error::NoUsableFormat {
                path: path.to_path_buf(),
                offered: offered_names.clone(),
            })?,
        f => {
            let cc = fourcc_of(f).expect("a named format has a fourcc");
            if !offered.contains(&cc) {
                return Err(V4l2Error::FormatNotOffered {
                    path: path.to_path_buf(),
                    asked: cc.to_string(),
                    offered: offered_names,
                });
            }
            f
        }
    };
    let mut fmt = dev.format().map_err(io("cannot read format"))?;
    fmt.width = width;
    fmt.height = height;
    fmt.fourcc = fourcc_of(chosen).expect("chosen format has a fourcc");
    let granted = dev.set_format(&fmt).map_err(io("cannot set format"))?;
    // VIDIOC_S_PARM: drivers round the rate to what they can do, so read back what they gave.
    let params = dev
        .set_params(&v4l::video::capture::Parameters::with_fps(fps))
        .map_err(io("cannot set frame rate"))?;
    let granted_fps = if params.interval.numerator == 0 {
        f64::from(fps)
    } else {
        f64::from(params.interval.denominator) / f64::from(params.interval.numerator)
    };
    let negotiated = Negotiated {
        path: path.to_path_buf(),
        card: caps.card,
        format: chosen,
        width: granted.width,
        height: granted.height,
        fps: granted_fps,
    };
    Ok((dev, negotiated))
}

/// Streams frames from `dev` into `push` until `stop` is set or the camera fails.
/// `push` returns false when the pipeline no longer wants frames.
pub fn stream(
    dev: &Device,
    path: &Path,
    stop: &AtomicBool,
    mut push: impl FnMut(&[u8]) -> bool,
) -> Result<(), V4l2Error> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| V4l2Error::Io { path, what, source }
    };
    let mut stream = v4l::io::mmap::Stream::with_buffers(dev, Type::VideoCapture, 4)
        .map_err(io("cannot map buffers"))?;
    stream.set_timeout(READ_TIMEOUT);
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        match stream.next() {
            Ok((buf, meta)) => {
                let used = (meta.bytesused as usize).min(buf.len());
                if used > 0 && !push(&buf[..used]) {
                    break Ok(());
                }
            }
            Err(e) => break Err(io("capture failed")(e)),
        }
    };
    // The v4l crate's Drop panics if VIDIOC_STREAMOFF fails for any reason but ENODEV; a camera
    // in a bad state must not take the process with it.
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(stream)));
    if dropped.is_err() {
        tracing::warn!(path = %path.display(), "camera refused to stop streaming cleanly");
    }
    result
}

/// Shared flag to end a capture thread.
pub type StopFlag = Arc<AtomicBool>;
