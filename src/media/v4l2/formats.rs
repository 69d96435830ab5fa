//! What a camera offers (formats, sizes, frame rates) and which of it rtcam asks for.
//!
//! [`enumerate`] reads the offer from the driver; [`choose`] is pure: given the offer and the
//! config it picks a format and size, or explains in one message what the camera can do instead.

use crate::config::PixelFormat;
use serde::Serialize;
use v4l::format::FourCC;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::video::Capture;
use v4l::Device;

/// One pixel format and the sizes the camera offers it in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormatInfo {
    /// Four-character code, e.g. `YUYV`, `MJPG`, `H264`, `NV12`.
    pub fourcc: String,
    /// The driver's description.
    pub description: String,
    /// Discrete sizes, each with its frame rates; empty when the sizes are a range.
    pub sizes: Vec<SizeInfo>,
    /// A continuous or stepped range of sizes, when the driver offers one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<SizeRange>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeInfo {
    pub width: u32,
    pub height: u32,
    /// Frame rates offered at this size (frames per second), fastest first.
    pub fps: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SizeRange {
    pub min_width: u32,
    pub max_width: u32,
    pub step_width: u32,
    pub min_height: u32,
    pub max_height: u32,
    pub step_height: u32,
}

impl SizeRange {
    fn contains(&self, w: u32, h: u32) -> bool {
        let fits = |v: u32, min: u32, max: u32, step: u32| {
            v >= min && v <= max && (v - min) % step.max(1) == 0
        };
        fits(w, self.min_width, self.max_width, self.step_width)
            && fits(h, self.min_height, self.max_height, self.step_height)
    }
}

impl FormatInfo {
    /// The size it offers nearest `width`×`height` by area (what the config asked for is the
    /// best guess at what the user wants); within its range when it lists none; else the
    /// asked size itself.
    fn nearest_size(&self, width: u32, height: u32) -> (u32, u32) {
        let target = i64::from(width) * i64::from(height);
        let nearest = self
            .sizes
            .iter()
            .min_by_key(|s| (i64::from(s.width) * i64::from(s.height) - target).abs())
            .map(|s| (s.width, s.height));
        match (nearest, self.range) {
            (Some(wh), _) => wh,
            (None, Some(r)) => (
                width.clamp(r.min_width, r.max_width),
                height.clamp(r.min_height, r.max_height),
            ),
            (None, None) => (width, height),
        }
    }

    fn offers(&self, w: u32, h: u32) -> bool {
        self.sizes.iter().any(|s| s.width == w && s.height == h)
            || self.range.is_some_and(|r| r.contains(w, h))
    }

    /// The sizes, as people read them: `640x480, 1280x720` or `16x16 to 1920x1080`.
    pub fn sizes_text(&self) -> String {
        let mut parts: Vec<String> = self
            .sizes
            .iter()
            .map(|s| format!("{}x{}", s.width, s.height))
            .collect();
        if let Some(r) = self.range {
            parts.push(format!(
                "{}x{} to {}x{}",
                r.min_width, r.min_height, r.max_width, r.max_height
            ));
        }
        parts.join(", ")
    }
}

pub fn fourcc_of(format: PixelFormat) -> Option<&'static str> {
    match format {
        PixelFormat::H264 => Some("H264"),
        PixelFormat::Mjpeg => Some("MJPG"),
        PixelFormat::Yuyv => Some("YUYV"),
        PixelFormat::Nv12 => Some("NV12"),
        PixelFormat::Auto => None,
    }
}

/// The preference of `format = "auto"`: a camera that encodes H.264 itself saves the board the
/// whole encode; then the raw format the encoder takes without conversion (`encoder_input`, its
/// GStreamer format name: hardware encoders mostly take NV12), then the other raw one; MJPEG
/// needs a decode first, so it comes last.
pub fn auto_order(encoder_input: &str) -> [PixelFormat; 4] {
    if encoder_input == "NV12" {
        [
            PixelFormat::H264,
            PixelFormat::Nv12,
            PixelFormat::Yuyv,
            PixelFormat::Mjpeg,
        ]
    } else {
        [
            PixelFormat::H264,
            PixelFormat::Yuyv,
            PixelFormat::Nv12,
            PixelFormat::Mjpeg,
        ]
    }
}

/// What [`choose`] settled on.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Set when `auto` had to take a size other than the one asked for.
    pub note: Option<String>,
}

/// Why the camera cannot do what the config asks; the message names what it can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    #[error("the camera offers none of the formats rtcam can use ({offered}); rtcam takes H264, MJPG, YUYV or NV12")]
    NoUsableFormat { offered: String },
    #[error("the camera does not offer {asked}; it offers {offered}")]
    FormatNotOffered { asked: String, offered: String },
    #[error("the camera does not offer {fourcc} at {width}x{height}; {fourcc} sizes: {sizes}")]
    SizeNotOffered {
        fourcc: String,
        width: u32,
        height: u32,
        sizes: String,
    },
}

/// Picks format and size. A named format must be offered at the asked size. `auto` takes the
/// first format in [`auto_order`] offered at the asked size, else the first usable format at its
/// nearest size (so a plugged-in camera streams even when the default size does not fit it).
pub fn choose(
    offered: &[FormatInfo],
    asked: PixelFormat,
    width: u32,
    height: u32,
    encoder_input: &str,
) -> Result<Choice, ChoiceError> {
    let find = |f: PixelFormat| fourcc_of(f).and_then(|cc| offered.iter().find(|o| o.fourcc == cc));
    let offered_names = || {
        offered
            .iter()
            .map(|o| o.fourcc.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let exact = |format: PixelFormat| Choice {
        format,
        width,
        height,
        note: None,
    };
    if asked != PixelFormat::Auto {
        let cc = fourcc_of(asked).unwrap_or_default();
        let Some(info) = find(asked) else {
            return Err(ChoiceError::FormatNotOffered {
                asked: cc.into(),
                offered: offered_names(),
            });
        };
        // A driver that lists no sizes at all is asked anyway; S_FMT says what it grants.
        if info.offers(width, height) || (info.sizes.is_empty() && info.range.is_none()) {
            return Ok(exact(asked));
        }
        return Err(ChoiceError::SizeNotOffered {
            fourcc: cc.into(),
            width,
            height,
            sizes: info.sizes_text(),
        });
    }
    let usable: Vec<(PixelFormat, &FormatInfo)> = auto_order(encoder_input)
        .iter()
        .filter_map(|f| find(*f).map(|i| (*f, i)))
        .collect();
    if let Some((f, _)) = usable.iter().find(|(_, i)| i.offers(width, height)) {
        return Ok(exact(*f));
    }
    let Some((format, info)) = usable.first() else {
        return Err(ChoiceError::NoUsableFormat {
            offered: offered_names(),
        });
    };
    let (w, h) = info.nearest_size(width, height);
    Ok(Choice {
        format: *format,
        width: w,
        height: h,
        note: Some(format!(
            "the camera offers no {width}x{height}; using {} {w}x{h} (it offers {})",
            info.fourcc,
            info.sizes_text()
        )),
    })
}

/// Reads every format the camera offers with its sizes and frame rates.
pub fn enumerate(dev: &Device) -> std::io::Result<Vec<FormatInfo>> {
    let mut formats = Vec::new();
    for f in dev.enum_formats()? {
        let fourcc = f.fourcc.to_string();
        let mut sizes = Vec::new();
        let mut range = None;
        // Some drivers answer size queries with an error for compressed formats; an empty list
        // is then the honest answer.
        for size in dev.enum_framesizes(f.fourcc).unwrap_or_default() {
            match size.size {
                FrameSizeEnum::Discrete(d) => sizes.push(SizeInfo {
                    width: d.width,
                    height: d.height,
                    fps: rates(dev, f.fourcc, d.width, d.height),
                }),
                FrameSizeEnum::Stepwise(s) => {
                    range = Some(SizeRange {
                        min_width: s.min_width,
                        max_width: s.max_width,
                        step_width: s.step_width,
                        min_height: s.min_height,
                        max_height: s.max_height,
                        step_height: s.step_height,
                    })
                }
            }
        }
        formats.push(FormatInfo {
            fourcc,
            description: f.description,
            sizes,
            range,
        });
    }
    Ok(formats)
}

fn rates(dev: &Device, fourcc: FourCC, width: u32, height: u32) -> Vec<f64> {
    let fps = |num: u32, den: u32| {
        if num == 0 {
            0.0
        } else {
            f64::from(den) / f64::from(num)
        }
    };
    let mut out: Vec<f64> = Vec::new();
    for i in dev
        .enum_frameintervals(fourcc, width, height)
        .unwrap_or_default()
    {
        match i.interval {
            FrameIntervalEnum::Discrete(f) => out.push(fps(f.numerator, f.denominator)),
            // A range: its fastest and slowest ends.
            FrameIntervalEnum::Stepwise(s) => {
                out.push(fps(s.min.numerator, s.min.denominator));
                out.push(fps(s.max.numerator, s.max.denominator));
            }
        }
    }
    out.sort_by(|a, b| b.total_cmp(a));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(cc: &str, sizes: &[(u32, u32)]) -> FormatInfo {
        FormatInfo {
            fourcc: cc.into(),
            description: String::new(),
            sizes: sizes
                .iter()
                .map(|&(width, height)| SizeInfo {
                    width,
                    height,
                    fps: vec![30.0],
                })
                .collect(),
            range: None,
        }
    }

    #[test]
    fn auto_prefers_h264_then_raw_then_mjpeg_at_the_asked_size() {
        let cam = [
            fmt("MJPG", &[(1280, 720)]),
            fmt("YUYV", &[(640, 480), (1280, 720)]),
        ];
        assert_eq!(
            choose(&cam, PixelFormat::Auto, 1280, 720, "I420")
                .unwrap()
                .format,
            PixelFormat::Yuyv
        );
        let cam = [fmt("MJPG", &[(1280, 720)]), fmt("YUYV", &[(640, 480)])];
        // YUYV has no 1280x720 but MJPEG does: the asked size wins over the cheaper format.
        assert_eq!(
            choose(&cam, PixelFormat::Auto, 1280, 720, "I420")
                .unwrap()
                .format,
            PixelFormat::Mjpeg
        );
        let cam = [fmt("H264", &[(1280, 720)]), fmt("YUYV", &[(1280, 720)])];
        assert_eq!(
            choose(&cam, PixelFormat::Auto, 1280, 720, "I420")
                .unwrap()
                .format,
            PixelFormat::H264
        );
    }

    #[test]
    fn auto_takes_the_raw_format_the_encoder_takes() {
        let cam = [fmt("YUYV", &[(640, 480)]), fmt("NV12", &[(640, 480)])];
        assert_eq!(
            choose(&cam, PixelFormat::Auto, 640, 480, "I420")
                .unwrap()
                .format,
            PixelFormat::Yuyv
        );
        assert_eq!(
            choose(&cam, PixelFormat::Auto, 640, 480, "NV12")
                .unwrap()
                .format,
            PixelFormat::Nv12
        );
    }

    #[test]
    fn auto_falls_back_to_the_nearest_size_and_says_so() {
        let cam = [fmt("YUYV", &[(320, 240), (640, 480)])];
        let c = choose(&cam, PixelFormat::Auto, 1280, 720, "I420").unwrap();
        assert_eq!((c.width, c.height), (640, 480));
        assert!(c.note.unwrap().contains("320x240, 640x480"));
    }

    #[test]
    fn a_named_format_must_be_offered_at_the_asked_size() {
        let cam = [fmt("YUYV", &[(640, 480)]), fmt("MJPG", &[(1920, 1080)])];
        let e = choose(&cam, PixelFormat::Nv12, 640, 480, "I420")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "the camera does not offer NV12; it offers YUYV, MJPG");
        let e = choose(&cam, PixelFormat::Yuyv, 1280, 720, "I420")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the camera does not offer YUYV at 1280x720; YUYV sizes: 640x480"
        );
        assert!(choose(&cam, PixelFormat::Yuyv, 640, 480, "I420").is_ok());
    }

    #[test]
    fn ranges_accept_sizes_on_their_steps() {
        let mut f = fmt("NV12", &[]);
        f.range = Some(SizeRange {
            min_width: 16,
            max_width: 1920,
            step_width: 16,
            min_height: 16,
            max_height: 1080,
            step_height: 2,
        });
        assert!(choose(&[f.clone()], PixelFormat::Nv12, 1280, 720, "I420").is_ok());
        assert!(choose(&[f], PixelFormat::Nv12, 1282, 720, "I420").is_err());
        assert!(matches!(
            choose(
                &[fmt("GREY", &[(640, 480)])],
                PixelFormat::Auto,
                640,
                480,
                "I420"
            ),
            Err(ChoiceError::NoUsableFormat { .. })
        ));
    }
}
