//! Which H.264 encoder rtcam uses, and how its settings map onto that element.
//!
//! The table is pure data so a unit test checks every mapping without GStreamer; the pipeline
//! builder turns an [`EncoderChoice`] into a launch fragment. Hardware encoders come first:
//! on a small board the encoder decides whether 720p30 costs 5 % or 150 % of a core.

use crate::config::EncoderConfig;

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
}

/// A `gst-launch` fragment for the encoder and the caps that pin its output to constrained
/// baseline, the profile every browser decodes.
pub fn launch_fragment(spec: &EncoderSpec, s: EncoderSettings) -> String {
    let kbps = s.bitrate_kbps;
    let bps = u64::from(kbps) * 1000;
    let gop = s.keyframe_interval;
    let element = match spec.element {
        // Low-latency tuning matters more than quality per bit for live viewing: no B-frames,
        // no lookahead, one slice per frame.
        "x264enc" => format!(
            "x264enc name=encoder tune=zerolatency speed-preset=ultrafast bitrate={kbps} \
             key-int-max={gop} byte-stream=true threads=2"
        ),
        "openh264enc" => format!(
            "openh264enc name=encoder bitrate={bps} max-bitrate={max} gop-size={gop} \
             rate-control=bitrate usage-type=camera complexity=low",
            max = bps * 3 / 2
        ),
        // The Pi's stateful V4L2 encoder takes its settings as V4L2 controls; repeating the
        // sequence header puts SPS/PPS before every IDR, so a joining viewer can start there.
        "v4l2h264enc" => format!(
            "v4l2h264enc name=encoder extra-controls=\"controls,video_bitrate={bps},\
             h264_i_frame_period={gop},repeat_sequence_header=1,h264_profile=1\""
        ),
        "mpph264enc" => {
            format!("mpph264enc name=encoder bps={bps} gop={gop} profile=66 rc-mode=cbr")
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
    format!("{element} ! video/x-h264,profile=constrained-baseline")
}

/// The property that changes the bitrate of a running encoder, and its unit in kbit/s, for
/// encoders that accept the change while playing. The others need a pipeline rebuild (the Pi's
/// encoder takes bitrate through `extra-controls`, fixed at start).
pub fn live_bitrate(spec: &EncoderSpec) -> Option<(&'static str, u32)> {
    match spec.element {
        "x264enc" | "vah264enc" | "vaapih264enc" => Some(("bitrate", 1)),
        "openh264enc" | "nvv4l2h264enc" => Some(("bitrate", 1000)),
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
        };
        let get =
            |name: &str| launch_fragment(CATALOGUE.iter().find(|e| e.element == name).unwrap(), s);
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
        for spec in CATALOGUE {
            let f = launch_fragment(spec, s);
            assert!(f.contains("name=encoder"), "{f}");
            assert!(f.ends_with("profile=constrained-baseline"), "{f}");
        }
    }
}
