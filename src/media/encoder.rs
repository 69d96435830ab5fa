//! Which encoder rtcam uses, and how its settings map onto that element.
//!
//! The table is pure data so a unit test checks every mapping without GStreamer; the pipeline
//! builder turns an [`EncoderChoice`] into a launch fragment. Hardware encoders come first:
//! on a small board the encoder decides whether 720p30 costs 5 % or 150 % of a core.
//! [`VP8`] is the second encoder, run only for viewers whose browser offers no H.264.

use crate::config::EncoderConfig;

/// The VP8 encoder (gstreamer1.0-plugins-good), for the fallback branch. Not in [`CATALOGUE`]:
/// `auto` and `element` choose the H.264 encoder only.
pub const VP8: EncoderSpec = EncoderSpec {
    element: "vp8enc",
    hardware: None,
    input_format: "I420",
};

/// One encoder rtcam knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSpec {
    /// The GStreamer element name.
    pub element: &'static str,
    /// Where it is found, for logs and docs.
    pub hardware: Option<&'static str>,
    /// Raw format it takes without a conversion step.
    pub input_format: &'static str,
}

/// Priority order used by `element = "auto"`: first present wins.
pub const CATALOGUE: &[EncoderSpec] = &[
    EncoderSpec {
        element: "v4l2h264enc",
        hardware: Some("Raspberry Pi 4/3/Zero 2 (bcm2835-codec)"),
        input_format: "I420",
    },
    EncoderSpec {
        element: "mpph264enc",
        hardware: Some("Rockchip MPP"),
        input_format: "NV12",
    },
    EncoderSpec {
        element: "nvv4l2h264enc",
        hardware: Some("NVIDIA Jetson"),
        input_format: "NV12",
    },
    EncoderSpec {
        element: "vah264enc",
        hardware: Some("VA-API (Intel/AMD)"),
        input_format: "NV12",
    },
    EncoderSpec {
        element: "vaapih264enc",
        hardware: Some("VA-API, legacy plugin"),
        input_format: "NV12",
    },
    EncoderSpec {
        element: "x264enc",
        hardware: None,
        input_format: "I420",
    },
    EncoderSpec {
        element: "openh264enc",
        hardware: None,
        input_format: "I420",
    },
];

pub fn is_known(element: &str) -> bool {
    CATALOGUE.iter().any(|e| e.element == element)
}

pub fn known_names() -> Vec<&'static str> {
    CATALOGUE.iter().map(|e| e.element).collect()
}

/// `[encoder] element` checked against the catalogue before anything starts: `auto` or an
/// encoder rtcam knows how to drive.
pub fn check_config(encoder: &EncoderConfig) -> Result<(), crate::config::Refusal> {
    if encoder.element == "auto" || is_known(&encoder.element) {
        return Ok(());
    }
    Err(crate::config::Refusal::new(
        "encoder.element",
        format!(
            "{:?} is not an encoder rtcam knows; use \"auto\" or one of: {}",
            encoder.element,
            known_names().join(", ")
        ),
    ))
}

/// The encoder picked at start, and why, so the log can say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderChoice {
    pub spec: EncoderSpec,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("encoder {0:?} was asked for in the config but GStreamer has no such element; install its plugin or use element = \"auto\"")]
    Missing(String),
    #[error("no H.264 encoder found; install gstreamer1.0-plugins-ugly (x264enc) or gstreamer1.0-plugins-bad (openh264enc)")]
    NoneAvailable,
}

/// Picks the encoder: the configured one, or the first of [`CATALOGUE`] that `present` says
/// exists. `present` is a seam so the choice is testable without GStreamer.
pub fn choose(
    cfg: &EncoderConfig,
    present: impl Fn(&str) -> bool,
) -> Result<EncoderChoice, EncoderError> {
    if cfg.element != "auto" {
        let spec = CATALOGUE
            .iter()
            .find(|e| e.element == cfg.element)
            .ok_or_else(|| EncoderError::Missing(cfg.element.clone()))?;
        if !present(spec.element) {
            return Err(EncoderError::Missing(cfg.element.clone()));
        }
        return Ok(EncoderChoice {
            spec: *spec,
            reason: "named in the config".into(),
        });
    }
    let mut skipped = Vec::new();
    for spec in CATALOGUE {
        if present(spec.element) {
            let reason = match (spec.hardware, skipped.is_empty()) {
                (Some(hw), _) => format!("hardware encoder for {hw}"),
                (None, true) => "first software encoder present".into(),
                (None, false) => format!(
                    "no hardware encoder present ({} not found)",
                    skipped.join(", ")
                ),
            };
            return Ok(EncoderChoice {
                spec: *spec,
                reason,
            });
        }
        skipped.push(spec.element);
    }
    Err(EncoderError::NoneAvailable)
}

/// Settings that vary at run time, in rtcam's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    pub bitrate_kbps: u32,
    pub keyframe_interval: u32,
    /// Encoder threads where the element takes a number (vp8enc); the board's cores.
    pub threads: u32,
}

/// What the encoder is asked to produce: its settings plus the picture, which sets the H.264
/// level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// An H.264 level (ITU-T H.264 table A-1), as `level_idc` (31 for 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct H264Level(pub u8);

impl H264Level {
    /// The caps spelling: `3.1`, `4`.
    pub fn caps(self) -> String {
        if self.0 % 10 == 0 {
            format!("{}", self.0 / 10)
        } else {
            format!("{}.{}", self.0 / 10, self.0 % 10)
        }
    }

    /// V4L2's `V4L2_CID_MPEG_VIDEO_H264_LEVEL` menu index (1B is index 1, so 1.1 is 2).
    fn v4l2_index(self) -> u8 {
        LEVELS
            .iter()
            .position(|l| l.0 == self)
            .map_or(9, |i| i as u8 + u8::from(i > 0))
    }
}

/// Table A-1: level, max macroblocks per second, max frame size in macroblocks, max bitrate
/// for baseline (kbit/s). Level 1b is left out: it is never the smallest level that fits.
const LEVELS: &[(H264Level, u32, u32, u32)] = &[
    (H264Level(10), 1_485, 99, 64),
    (H264Level(11), 3_000, 396, 192),
    (H264Level(12), 6_000, 396, 384),
    (H264Level(13), 11_880, 396, 768),
    (H264Level(20), 11_880, 396, 2_000),
    (H264Level(21), 19_800, 792, 4_000),
    (H264Level(22), 20_250, 1_620, 4_000),
    (H264Level(30), 40_500, 1_620, 10_000),
    (H264Level(31), 108_000, 3_600, 14_000),
    (H264Level(32), 216_000, 5_120, 20_000),
    (H264Level(40), 245_760, 8_192, 20_000),
    (H264Level(41), 245_760, 8_192, 50_000),
    (H264Level(42), 522_240, 8_704, 50_000),
    (H264Level(50), 589_824, 22_080, 135_000),
    (H264Level(51), 983_040, 36_864, 240_000),
    (H264Level(52), 2_073_600, 36_864, 240_000),
];

/// The smallest H.264 level whose limits hold this picture size, rate and bitrate: decoders
/// size their buffers by the level, so one too low can make a browser refuse the stream, and
/// one needlessly high says nothing useful. Beyond the table: the highest level.
pub fn h264_level(p: Picture, bitrate_kbps: u32) -> H264Level {
    let mbs_w = p.width.div_ceil(16);
    let mbs_h = p.height.div_ceil(16);
    let frame = mbs_w * mbs_h;
    let rate = u64::from(frame) * u64::from(p.fps.max(1));
    LEVELS
        .iter()
        .find(|(_, max_rate, max_frame, max_kbps)| {
            // A frame's side may not exceed sqrt(8 × MaxFS) macroblocks either (A.3.1 f/g).
            let side = u64::from(*max_frame) * 8;
            rate <= u64::from(*max_rate)
                && frame <= *max_frame
                && u64::from(mbs_w).pow(2) <= side
                && u64::from(mbs_h).pow(2) <= side
                && bitrate_kbps <= *max_kbps
        })
        .map_or(H264Level(52), |l| l.0)
}

/// A `gst-launch` fragment for the encoder and the caps that pin its output to constrained
/// baseline, the profile every browser decodes, at the level that fits `picture`. For
/// [`VP8`], the VP8 encoder tuned for live viewing.
pub fn launch_fragment(spec: &EncoderSpec, s: EncoderSettings, picture: Picture) -> String {
    let kbps = s.bitrate_kbps;
    let bps = u64::from(kbps) * 1000;
    let gop = s.keyframe_interval;
    let level = h264_level(picture, kbps);
    let caps_level = format!(",level=(string){}", level.caps());
    // The level is asked for in the caps after the encoder only where the element is known to
    // encode at the level those caps name (x264enc, and v4l2h264enc, which also gets it as a
    // control). An element that left the level out of its own output caps would fail to
    // negotiate against them; the VA-API and Jetson encoders, which rtcam cannot test here,
    // pick the level for the size and rate themselves.
    let level_in_caps = matches!(spec.element, "x264enc" | "v4l2h264enc");
    let element = match spec.element {
        // Realtime deadline and cpu-used trade quality for a frame in time on a small board;
        // error-resilient lets a decoder recover from a lost packet without a keyframe; no
        // lag, so each frame leaves as soon as it is encoded.
        "vp8enc" => {
            return format!(
                "vp8enc name=vp8encoder deadline=1 cpu-used=8 error-resilient=default \
                 keyframe-max-dist={gop} target-bitrate={bps} end-usage=cbr lag-in-frames=0 \
                 threads={threads}",
                threads = s.threads.max(1)
            )
        }
        // Low-latency tuning matters more than quality per bit for live viewing: no B-frames,
        // no lookahead, one slice per frame.
        "x264enc" => format!(
            "x264enc name=encoder tune=zerolatency speed-preset=ultrafast bitrate={kbps} \
             key-int-max={gop} byte-stream=true threads=2"
        ),
        // openh264 derives the level from the size and rate itself and does not read it from
        // the caps; asking there would only make the caps say something the stream does not.
        "openh264enc" => {
            format!(
                "openh264enc name=encoder bitrate={bps} max-bitrate={max} gop-size={gop} \
                 rate-control=bitrate usage-type=camera complexity=low",
                max = bps * 3 / 2
            )
        }
        // The Pi's stateful V4L2 encoder takes its settings as V4L2 controls; repeating the
        // sequence header puts SPS/PPS before every IDR, so a joining viewer can start there.
        "v4l2h264enc" => format!(
            "v4l2h264enc name=encoder extra-controls=\"controls,video_bitrate={bps},\
             h264_i_frame_period={gop},repeat_sequence_header=1,h264_profile=1,\
             h264_level={lvl}\"",
            lvl = level.v4l2_index()
        ),
        "mpph264enc" => {
            format!(
                "mpph264enc name=encoder bps={bps} gop={gop} profile=66 level={idc} rc-mode=cbr",
                idc = level.0
            )
        }
        "nvv4l2h264enc" => format!(
            "nvv4l2h264enc name=encoder bitrate={bps} iframeinterval={gop} insert-sps-pps=true \
             profile=0 maxperf-enable=true"
        ),
        "vah264enc" => {
            format!("vah264enc name=encoder bitrate={kbps} key-int-max={gop} rate-control=cbr")
        }
        "vaapih264enc" => format!(
            "vaapih264enc name=encoder bitrate={kbps} keyframe-period={gop} rate-control=cbr"
        ),
        other => format!("{other} name=encoder"),
    };
    let caps_level = if level_in_caps {
        caps_level.as_str()
    } else {
        ""
    };
    format!("{element} ! video/x-h264,profile=constrained-baseline{caps_level}")
}

/// The property that changes the bitrate of a running encoder, and its unit in kbit/s, for
/// encoders that accept the change while playing. The others need a pipeline rebuild (the Pi's
/// encoder takes bitrate through `extra-controls`, fixed at start).
pub fn live_bitrate(spec: &EncoderSpec) -> Option<(&'static str, u32)> {
    match spec.element {
        "x264enc" | "vah264enc" | "vaapih264enc" => Some(("bitrate", 1)),
        "openh264enc" | "nvv4l2h264enc" => Some(("bitrate", 1000)),
        "vp8enc" => Some(("target-bitrate", 1000)),
        "mpph264enc" => Some(("bps", 1000)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(element: &str) -> EncoderConfig {
        EncoderConfig {
            element: element.into(),
            ..Default::default()
        }
    }

    #[test]
    fn auto_prefers_hardware_then_x264() {
        let c = choose(&cfg("auto"), |e| e == "x264enc" || e == "v4l2h264enc").unwrap();
        assert_eq!(c.spec.element, "v4l2h264enc");
        let c = choose(&cfg("auto"), |e| e == "x264enc" || e == "openh264enc").unwrap();
        assert_eq!(c.spec.element, "x264enc");
        assert!(c.reason.contains("no hardware encoder"), "{}", c.reason);
        assert!(matches!(
            choose(&cfg("auto"), |_| false),
            Err(EncoderError::NoneAvailable)
        ));
    }

    #[test]
    fn forced_encoder_must_exist() {
        assert_eq!(
            choose(&cfg("openh264enc"), |_| true).unwrap().spec.element,
            "openh264enc"
        );
        assert!(matches!(
            choose(&cfg("openh264enc"), |_| false),
            Err(EncoderError::Missing(_))
        ));
    }

    #[test]
    fn units_follow_each_element() {
        let s = EncoderSettings {
            bitrate_kbps: 1500,
            keyframe_interval: 45,
            threads: 2,
        };
        let p = Picture {
            width: 1280,
            height: 720,
            fps: 30,
        };
        let get = |name: &str| {
            launch_fragment(CATALOGUE.iter().find(|e| e.element == name).unwrap(), s, p)
        };
        assert!(get("x264enc").contains("bitrate=1500 "));
        assert!(get("x264enc").contains("key-int-max=45"));
        assert!(get("openh264enc").contains("bitrate=1500000 "));
        assert!(get("openh264enc").contains("gop-size=45"));
        assert!(get("v4l2h264enc").contains("video_bitrate=1500000,"));
        assert!(get("v4l2h264enc").contains("h264_i_frame_period=45"));
        assert!(get("mpph264enc").contains("bps=1500000 "));
        assert!(get("nvv4l2h264enc").contains("bitrate=1500000 "));
        assert!(get("vah264enc").contains("bitrate=1500 "));
        assert!(get("vaapih264enc").contains("keyframe-period=45"));
        assert_eq!(
            live_bitrate(&CATALOGUE[5]),
            Some(("bitrate", 1)),
            "x264enc takes kbit/s"
        );
        assert_eq!(
            live_bitrate(&CATALOGUE[6]),
            Some(("bitrate", 1000)),
            "openh264enc takes bit/s"
        );
        assert_eq!(
            live_bitrate(&CATALOGUE[0]),
            None,
            "v4l2h264enc needs a rebuild"
        );
        // The level that fits 720p30 reaches the encoder, by caps or by its own setting.
        assert!(get("x264enc").ends_with("profile=constrained-baseline,level=(string)3.1"));
        assert!(
            get("v4l2h264enc").contains("h264_level=9\""),
            "{}",
            get("v4l2h264enc")
        );
        assert!(get("mpph264enc").contains("level=31 "));
        assert!(
            !get("openh264enc").contains("level="),
            "openh264 sets its own"
        );
        assert!(
            !get("vah264enc").contains("level="),
            "untested hardware encoders choose their own"
        );
        for spec in CATALOGUE {
            let f = launch_fragment(spec, s, p);
            assert!(f.contains("name=encoder"), "{f}");
            assert!(f.contains("profile=constrained-baseline"), "{f}");
        }
    }

    #[test]
    fn vp8_is_tuned_for_live_viewing() {
        let s = EncoderSettings {
            bitrate_kbps: 800,
            keyframe_interval: 30,
            threads: 4,
        };
        let p = Picture {
            width: 640,
            height: 480,
            fps: 30,
        };
        let f = launch_fragment(&VP8, s, p);
        for want in [
            "vp8enc name=vp8encoder ",
            "deadline=1 ",
            "cpu-used=",
            "error-resilient=default ",
            "keyframe-max-dist=30 ",
            "target-bitrate=800000 ",
            "lag-in-frames=0 ",
            "threads=4",
        ] {
            assert!(f.contains(want), "{want:?} missing from {f}");
        }
        assert_eq!(live_bitrate(&VP8), Some(("target-bitrate", 1000)), "bit/s");
        assert_eq!(VP8.input_format, "I420");
    }

    #[test]
    fn level_fits_size_rate_and_bitrate() {
        let at = |width, height, fps, kbps| h264_level(Picture { width, height, fps }, kbps).caps();
        // 300 macroblocks × 30 = 9000 MB/s: level 1.3, or 2 once the bitrate passes 768 kbit/s.
        assert_eq!(at(320, 240, 30, 500), "1.3");
        assert_eq!(at(320, 240, 30, 2000), "2");
        assert_eq!(at(160, 120, 15, 64), "1");
        assert_eq!(at(640, 480, 30, 2000), "3");
        assert_eq!(at(1280, 720, 30, 2000), "3.1");
        assert_eq!(at(1280, 720, 60, 4000), "3.2");
        // 8160 macroblocks per frame is past 3.2's 5120.
        assert_eq!(at(1920, 1080, 30, 4000), "4");
        assert_eq!(at(1920, 1080, 60, 8000), "4.2");
        assert_eq!(at(3840, 2160, 30, 20000), "5.1");
        assert_eq!(
            at(16000, 16000, 120, 1),
            "5.2",
            "past the table: the highest"
        );
        // A very wide picture breaks the side limit of a level its area would fit.
        // 80×2 macroblocks fit 1.1's frame size, but a side of 80 needs MaxFS ≥ 800 (2.2).
        assert_eq!(at(1280, 32, 1, 100), "2.2");
        assert_eq!(H264Level(31).v4l2_index(), 9);
        assert_eq!(H264Level(10).v4l2_index(), 0);
        assert_eq!(H264Level(11).v4l2_index(), 2);
        assert_eq!(H264Level(40).v4l2_index(), 11);
    }
}
