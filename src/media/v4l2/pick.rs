//! Which V4L2 node `kind = "auto"` (and `kind = "v4l2"` with no `device`) streams from (pure).
//!
//! A board can have many `/dev/video*` nodes and few of them are cameras rtcam can read: a Pi 5
//! with a CSI camera has the CSI receiver's nodes (raw Bayer and sensor metadata) and the ISP's
//! (memory-to-memory), a USB webcam often a metadata node beside its video node. [`pick`] takes
//! the first node that is a usable capture device and says why each node before it was passed
//! over. Probing the nodes into [`NodeFacts`] is `probe`'s job; this file touches no device.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// V4L2 capability bits (`V4L2_CAP_*`, linux/videodev2.h) that the choice looks at.
pub mod cap {
    pub const VIDEO_CAPTURE: u32 = 0x0000_0001;
    pub const VIDEO_OUTPUT: u32 = 0x0000_0002;
    pub const VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
    pub const VIDEO_OUTPUT_MPLANE: u32 = 0x0000_2000;
    pub const VIDEO_M2M_MPLANE: u32 = 0x0000_4000;
    pub const VIDEO_M2M: u32 = 0x0000_8000;
    pub const META_CAPTURE: u32 = 0x0080_0000;
}

/// What probing found out about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub path: PathBuf,
    /// The node's own capabilities (`device_caps`), not the whole driver's.
    pub caps: u32,
    /// The fourccs it offers for video capture, e.g. `YUYV`, `pRAA`.
    pub fourccs: Vec<String>,
}

/// Why a node is not taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "why")]
pub enum Skip {
    /// Sensor metadata (embedded data, statistics), not pictures.
    Metadata,
    /// A converter, scaler, ISP or codec: it turns frames it is given into others.
    MemoryToMemory,
    /// Not a capture device at all (an output, radio, touch …).
    NotCapture,
    /// Multi-planar capture only; rtcam reads single-planar buffers.
    MultiPlanarOnly,
    /// Raw Bayer straight from a sensor: it needs an ISP (libcamera) to become a picture.
    BayerOnly { formats: Vec<String> },
    /// Offers no format rtcam reads (H.264, MJPEG, YUYV, NV12).
    NoUsableFormat { formats: Vec<String> },
    /// Could not be opened or asked what it is.
    CannotOpen { error: String },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::Metadata => f.write_str("a metadata capture node, not pictures"),
            Skip::MemoryToMemory => {
                f.write_str("a memory-to-memory device (converter, ISP or codec), not a camera")
            }
            Skip::NotCapture => f.write_str("not a video capture device"),
            Skip::MultiPlanarOnly => {
                f.write_str("multi-planar capture only, which rtcam does not read")
            }
            Skip::BayerOnly { formats } => write!(
                f,
                "raw Bayer only ({}): needs an ISP; use libcamera for this camera",
                formats.join(", ")
            ),
            Skip::NoUsableFormat { formats } if formats.is_empty() => {
                f.write_str("offers no formats")
            }
            Skip::CannotOpen { error } => write!(f, "cannot be opened: {error}"),
            Skip::NoUsableFormat { formats } => write!(
                f,
                "offers none of H264, MJPG, YUYV, NV12 (only {})",
                formats.join(", ")
            ),
        }
    }
}

/// The formats rtcam's V4L2 capture reads (see `formats::fourcc_of`).
const READABLE: &[&str] = &["H264", "MJPG", "YUYV", "NV12"];

/// Raw Bayer fourccs: 8-bit, 10/12/14/16-bit unpacked and MIPI-packed, A-law/DPCM compressed,
/// and the Pi 5 PiSP compressed ones.
pub fn is_bayer(fourcc: &str) -> bool {
    const BAYER: &[&str] = &[
        "BA81", "GBRG", "GRBG", "RGGB", // 8-bit
        "BG10", "GB10", "BA10", "RG10", // 10-bit
        "pBAA", "pGAA", "pgAA", "pRAA", // 10-bit MIPI packed
        "BG12", "GB12", "BA12", "RG12", // 12-bit
        "pBCC", "pGCC", "pgCC", "pRCC", // 12-bit MIPI packed
        "BG14", "GB14", "GR14", "RG14", // 14-bit
        "pBEE", "pGEE", "pgEE", "pREE", // 14-bit MIPI packed
        "BYR2", "GB16", "GR16", "RG16", // 16-bit
        "aBA8", "aGA8", "agA8", "aRA8", // A-law
        "bBA8", "bGA8", "bgA8", "bRA8", // DPCM
        "PC1B", "PC1G", "PC1g", "PC1R", // PiSP compressed
    ];
    BAYER.contains(&fourcc)
}

/// Whether `node` is a camera rtcam can stream from, and if not, why.
pub fn judge(node: &NodeFacts) -> Result<(), Skip> {
    let has = |bit: u32| node.caps & bit != 0;
    let capture = has(cap::VIDEO_CAPTURE) || has(cap::VIDEO_CAPTURE_MPLANE);
    let output = has(cap::VIDEO_OUTPUT) || has(cap::VIDEO_OUTPUT_MPLANE);
    if has(cap::VIDEO_M2M) || has(cap::VIDEO_M2M_MPLANE) || (capture && output) {
        return Err(Skip::MemoryToMemory);
    }
    if has(cap::META_CAPTURE) && !capture {
        return Err(Skip::Metadata);
    }
    if !capture {
        return Err(Skip::NotCapture);
    }
    if !has(cap::VIDEO_CAPTURE) {
        return Err(Skip::MultiPlanarOnly);
    }
    if node.fourccs.iter().any(|f| READABLE.contains(&f.as_str())) {
        return Ok(());
    }
    let formats = node.fourccs.clone();
    if !formats.is_empty() && formats.iter().all(|f| is_bayer(f)) {
        Err(Skip::BayerOnly { formats })
    } else {
        Err(Skip::NoUsableFormat { formats })
    }
}

/// The choice over every node, in the order given (index order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pick {
    pub chosen: Option<PathBuf>,
    /// Every node not taken and why, including usable ones after the chosen node (`None`).
    pub passed_over: Vec<(PathBuf, Option<Skip>)>,
}

impl Pick {
    /// Why `path` was not taken: `Some(None)` for a usable node after the chosen one.
    pub fn verdict(&self, path: &std::path::Path) -> Option<&Option<Skip>> {
        self.passed_over
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, s)| s)
    }

    /// One line per node skipped before the choice, then the choice: what the log says.
    pub fn explain(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .passed_over
            .iter()
            .filter_map(|(p, s)| Some(format!("{}: skipped, {}", p.display(), s.as_ref()?)))
            .collect();
        lines.push(match &self.chosen {
            Some(p) => format!("{}: chosen, the first usable capture device", p.display()),
            None => "no usable V4L2 capture device".to_string(),
        });
        lines
    }
}

/// The first usable node; every other node with the reason it was passed over.
pub fn pick(nodes: &[NodeFacts]) -> Pick {
    let mut out = Pick::default();
    for node in nodes {
        match judge(node) {
            Ok(()) if out.chosen.is_none() => out.chosen = Some(node.path.clone()),
            Ok(()) => out.passed_over.push((node.path.clone(), None)),
            Err(skip) => out.passed_over.push((node.path.clone(), Some(skip))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u32, caps: u32, fourccs: &[&str]) -> NodeFacts {
        NodeFacts {
            path: format!("/dev/video{n}").into(),
            caps,
            fourccs: fourccs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_pi5_with_a_csi_camera_has_no_node_plain_v4l2_can_use() {
        // rp1-cfe: raw Bayer and embedded-data nodes; pispbe: the ISP's M2M-style nodes.
        let nodes = [
            node(0, cap::VIDEO_CAPTURE, &["pRAA", "RG10", "PC1R"]),
            node(1, cap::META_CAPTURE, &[]),
            node(4, cap::VIDEO_OUTPUT, &["YUYV"]),
            node(20, cap::VIDEO_M2M_MPLANE, &["YUYV", "NV12"]),
        ];
        let p = pick(&nodes);
        assert_eq!(p.chosen, None);
        assert!(matches!(p.passed_over[0].1, Some(Skip::BayerOnly { .. })));
        assert_eq!(p.passed_over[1].1, Some(Skip::Metadata));
        assert_eq!(p.passed_over[2].1, Some(Skip::NotCapture));
        assert_eq!(p.passed_over[3].1, Some(Skip::MemoryToMemory));
        let log = p.explain();
        assert_eq!(log.len(), 5, "{log:?}");
        assert!(
            log[0].contains("raw Bayer only (pRAA, RG10, PC1R)"),
            "{log:?}"
        );
        assert_eq!(log[4], "no usable V4L2 capture device");
    }

    #[test]
    fn the_webcam_after_metadata_and_converter_nodes_is_taken() {
        let nodes = [
            node(0, cap::META_CAPTURE, &[]),
            node(1, cap::VIDEO_CAPTURE | cap::VIDEO_OUTPUT, &["YUYV"]),
            node(2, cap::VIDEO_M2M, &["YUYV"]),
            node(3, cap::VIDEO_CAPTURE, &["MJPG", "YUYV"]),
            node(4, cap::VIDEO_CAPTURE, &["YUYV"]),
        ];
        let p = pick(&nodes);
        assert_eq!(p.chosen, Some("/dev/video3".into()));
        assert_eq!(p.verdict("/dev/video4".as_ref()), Some(&None));
        assert_eq!(
            p.verdict("/dev/video1".as_ref()),
            Some(&Some(Skip::MemoryToMemory))
        );
        let log = p.explain();
        assert_eq!(log.len(), 4, "{log:?}");
        assert_eq!(
            log[3],
            "/dev/video3: chosen, the first usable capture device"
        );
    }

    #[test]
    fn formats_decide_between_bayer_unusable_and_fine() {
        assert!(matches!(
            judge(&node(0, cap::VIDEO_CAPTURE, &["BA81", "GRBG"])),
            Err(Skip::BayerOnly { .. })
        ));
        // A Bayer node that also offers YUYV is usable.
        assert_eq!(
            judge(&node(0, cap::VIDEO_CAPTURE, &["BA81", "YUYV"])),
            Ok(())
        );
        let e = judge(&node(0, cap::VIDEO_CAPTURE, &["RGB3"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "offers none of H264, MJPG, YUYV, NV12 (only RGB3)"
        );
        assert_eq!(
            judge(&node(0, cap::VIDEO_CAPTURE, &[]))
                .unwrap_err()
                .to_string(),
            "offers no formats"
        );
        assert_eq!(
            judge(&node(0, cap::VIDEO_CAPTURE_MPLANE, &["NV12"])),
            Err(Skip::MultiPlanarOnly)
        );
    }
}
