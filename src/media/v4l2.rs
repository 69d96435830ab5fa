//! V4L2 capture: the only file that uses the `v4l` crate.
//!
//! A camera is opened, a format negotiated, and frames streamed with mmap buffers on a thread of
//! its own (V4L2 reads block), each pushed into the pipeline's `appsrc`. The thread ends when
//! asked to, or when the camera fails; the pipeline's run loop decides what happens next.
//!
//! Children: `formats` (what a camera offers, which of it to ask for), `controls` (brightness,
//! exposure … by name), `probe` (`rtcam devices`), `pick`
//! (which node `auto` takes). The `v4l` crate is used nowhere else.

pub mod controls;
pub mod formats;
pub mod pick;
pub mod probe;

use crate::config::PixelFormat;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use v4l::buffer::Type;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
/// An open camera: the handle `open` returns, for its controls and for `stream`.
pub use v4l::Device;
use v4l::FourCC;

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
    /// The camera cannot do what the config asks; the message names what it can.
    #[error("{path}: {source}")]
    Unsupported {
        path: PathBuf,
        source: formats::ChoiceError,
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
    /// What the config asked for, to report next to what was granted.
    pub asked_fps: u32,
    /// The four-character code the driver granted, e.g. `YUYV`.
    pub fourcc: String,
    /// Set when `format = "auto"` had to take another size than asked.
    pub note: Option<String>,
}

/// The fourcc bytes of a format `formats::choose` returned (never `Auto`, which has none).
fn fourcc_bytes(format: PixelFormat) -> [u8; 4] {
    let cc = formats::fourcc_of(format).unwrap_or("YUYV").as_bytes();
    [cc[0], cc[1], cc[2], cc[3]]
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

/// VIDIOC_QUERYCAP. The v4l crate panics on a card or driver name that is not UTF-8; a camera
/// with an odd name must be an error, not the end of the media task.
pub fn query_caps(dev: &Device) -> std::io::Result<v4l::capability::Capabilities> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dev.query_caps())).unwrap_or_else(
        |_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the driver reported a name that is not UTF-8",
            ))
        },
    )
}

/// The node's own capabilities (`device_caps`): `query_caps` reports the whole driver's, and a
/// driver with a video node and a metadata node reports both capture kinds on each.
pub fn node_caps(dev: &Device) -> std::io::Result<u32> {
    // SAFETY: VIDIOC_QUERYCAP fills a zeroed v4l2_capability (plain integers and byte arrays)
    // that lives across the call; the fd is the open device's.
    #[allow(unsafe_code)]
    let caps = unsafe {
        let mut caps: v4l::v4l_sys::v4l2_capability = std::mem::zeroed();
        v4l::v4l2::ioctl(
            dev.handle().fd(),
            v4l::v4l2::vidioc::VIDIOC_QUERYCAP,
            &mut caps as *mut _ as *mut std::os::raw::c_void,
        )?;
        caps
    };
    const DEVICE_CAPS: u32 = 0x8000_0000;
    Ok(if caps.capabilities & DEVICE_CAPS != 0 {
        caps.device_caps
    } else {
        caps.capabilities
    })
}

/// Every `/dev/video*` node, in index order.
pub fn nodes() -> Vec<PathBuf> {
    let mut nodes = v4l::context::enum_devices();
    nodes.sort_by_key(|n| n.index());
    nodes.into_iter().map(|n| n.path().to_path_buf()).collect()
}

/// What `pick` needs to know about a node; a node that cannot be opened is reported as such.
pub fn facts(path: &Path) -> Result<pick::NodeFacts, pick::Skip> {
    let cannot = |e: std::io::Error| pick::Skip::CannotOpen {
        error: e.to_string(),
    };
    let dev = Device::with_path(path).map_err(cannot)?;
    let caps = node_caps(&dev).map_err(cannot)?;
    let fourccs = if caps & pick::cap::VIDEO_CAPTURE != 0 {
        dev.enum_formats()
            .map(|f| f.into_iter().map(|f| f.fourcc.to_string()).collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(pick::NodeFacts {
        path: path.to_path_buf(),
        caps,
        fourccs,
    })
}

/// `auto`'s choice among the V4L2 nodes present now (see `pick`).
pub fn auto_pick() -> pick::Pick {
    let mut unopened = Vec::new();
    let mut known = Vec::new();
    for path in nodes() {
        match facts(&path) {
            Ok(f) => known.push(f),
            Err(skip) => unopened.push((path, Some(skip))),
        }
    }
    let mut p = pick::pick(&known);
    p.passed_over.extend(unopened);
    p
}

/// The first V4L2 node that is a usable capture device (see `pick`), if any.
pub fn first_capture_device() -> Option<PathBuf> {
    auto_pick().chosen
}

/// Opens `path` and sets the format, size and rate, reporting what the driver granted.
pub fn open(
    path: &Path,
    format: PixelFormat,
    width: u32,
    height: u32,
    fps: u32,
    encoder_input: &str,
) -> Result<(Device, Negotiated), V4l2Error> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| V4l2Error::Io { path, what, source }
    };
    let dev = Device::with_path(path).map_err(io("cannot open"))?;
    let caps = query_caps(&dev).map_err(io("cannot query capabilities"))?;
    let offered = formats::enumerate(&dev).map_err(io("cannot list formats"))?;
    let choice =
        formats::choose(&offered, format, width, height, encoder_input).map_err(|source| {
            V4l2Error::Unsupported {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let chosen = choice.format;
    let mut fmt = dev.format().map_err(io("cannot read format"))?;
    fmt.width = choice.width;
    fmt.height = choice.height;
    fmt.fourcc = FourCC::new(&fourcc_bytes(chosen));
    let granted = dev.set_format(&fmt).map_err(io("cannot set format"))?;
    // A driver that lists a format but hands out another would feed the pipeline frames it
    // misreads; refuse rather than stream garbage.
    if granted.fourcc != fmt.fourcc {
        return Err(V4l2Error::Unsupported {
            path: path.to_path_buf(),
            source: formats::ChoiceError::FormatNotOffered {
                asked: fmt.fourcc.to_string(),
                offered: format!("{} (what the driver set instead)", granted.fourcc),
            },
        });
    }
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
        asked_fps: fps,
        fourcc: granted.fourcc.to_string(),
        note: choice.note,
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
