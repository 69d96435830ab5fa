//! `rtcam devices`: every V4L2 capture device with its formats, sizes, rates and controls.
//!
//! Gathering ([`list`]) touches the devices; rendering ([`render`]) is pure text for people, and
//! the same structures serialize to JSON for scripts.

use super::controls::{self, ControlInfo};
use super::formats::{self, FormatInfo};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use v4l::Device;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    pub path: PathBuf,
    pub driver: String,
    pub card: String,
    pub bus: String,
    pub formats: Vec<FormatInfo>,
    pub controls: Vec<ControlInfo>,
    /// What could not be read (a device busy or in a bad state still gets listed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// What `kind = "auto"` does with this node: `chosen`, `usable` (a usable node after the
    /// chosen one, or any usable node when libcamera's camera is taken), or `skipped`.
    pub auto: &'static str,
    /// Why `auto` skips it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_reason: Option<String>,
}

/// Every V4L2 node in index order, each with what `auto` does with it. `libcamera` names the
/// camera libcamera sees, which `auto` takes before any V4L2 node; it is listed first.
pub fn list(libcamera: Option<&str>) -> Vec<DeviceInfo> {
    let pick = super::auto_pick();
    let mut out = Vec::new();
    if let Some(name) = libcamera {
        out.push(DeviceInfo {
            path: format!("libcamera:{name}").into(),
            driver: "libcamera".into(),
            card: name.to_string(),
            bus: String::new(),
            formats: Vec::new(),
            controls: Vec::new(),
            problems: Vec::new(),
            auto: "chosen",
            auto_reason: None,
        });
    }
    for path in super::nodes() {
        let verdict = pick.verdict(&path).cloned();
        let (auto, auto_reason) = match verdict {
            _ if libcamera.is_some() && pick.chosen.as_deref() == Some(&path) => ("usable", None),
            None if pick.chosen.as_deref() == Some(&path) => ("chosen", None),
            Some(Some(skip)) => ("skipped", Some(skip.to_string())),
            _ => ("usable", None),
        };
        let mut info = describe(&path).unwrap_or_else(|| outline(&path));
        info.auto = auto;
        info.auto_reason = auto_reason;
        out.push(info);
    }
    out
}

/// A node that is not a video capture device: its names only.
fn outline(path: &Path) -> DeviceInfo {
    let caps = Device::with_path(path)
        .ok()
        .and_then(|d| super::query_caps(&d).ok());
    DeviceInfo {
        path: path.to_path_buf(),
        driver: caps.as_ref().map_or_else(String::new, |c| c.driver.clone()),
        card: caps.as_ref().map_or_else(String::new, |c| c.card.clone()),
        bus: caps.map_or_else(String::new, |c| c.bus),
        formats: Vec::new(),
        controls: Vec::new(),
        problems: Vec::new(),
        auto: "skipped",
        auto_reason: None,
    }
}

/// One node, or `None` when it is not a capture device (an output, a metadata node…).
pub fn describe(path: &Path) -> Option<DeviceInfo> {
    let dev = Device::with_path(path).ok()?;
    let caps = super::query_caps(&dev).ok()?;
    let node_caps = super::node_caps(&dev).ok()?;
    if node_caps & super::pick::cap::VIDEO_CAPTURE == 0 {
        return None;
    }
    let mut problems = Vec::new();
    let formats = formats::enumerate(&dev).unwrap_or_else(|e| {
        problems.push(format!("cannot list formats: {e}"));
        Vec::new()
    });
    let controls = controls::list(&dev, path).unwrap_or_else(|e| {
        problems.push(e.to_string());
        Vec::new()
    });
    Some(DeviceInfo {
        path: path.to_path_buf(),
        driver: caps.driver,
        card: caps.card,
        bus: caps.bus,
        formats,
        controls,
        problems,
        auto: "usable",
        auto_reason: None,
    })
}

/// The listing as people read it.
pub fn render(devices: &[DeviceInfo]) -> String {
    let mut out = String::new();
    if devices.is_empty() {
        out.push_str("No V4L2 capture devices found. (A Pi CSI camera on libcamera is used with [source] kind = \"libcamera\".)\n");
    }
    if !devices.iter().any(|d| d.auto == "chosen") {
        out.push_str("kind = \"auto\" finds no usable camera here and streams the test pattern.\n");
    }
    for d in devices {
        let _ = writeln!(
            out,
            "{}: {} (driver {}, bus {})",
            d.path.display(),
            d.card,
            d.driver,
            d.bus
        );
        match (d.auto, &d.auto_reason) {
            ("chosen", _) => out.push_str("  auto: chosen (kind = \"auto\" streams from this)\n"),
            ("skipped", Some(why)) => {
                let _ = writeln!(out, "  auto: skipped, {why}");
            }
            ("skipped", None) => out.push_str("  auto: skipped\n"),
            _ => {}
        }
        if d.driver == "libcamera" {
            continue;
        }
        if d.auto == "skipped" && d.formats.is_empty() && d.controls.is_empty() {
            continue;
        }
        for p in &d.problems {
            let _ = writeln!(out, "  problem: {p}");
        }
        out.push_str("  formats:\n");
        for f in &d.formats {
            render_format(&mut out, f);
        }
        out.push_str("  controls:\n");
        for c in &d.controls {
            out.push_str(&render_control(c));
        }
    }
    out
}

/// One format with its sizes and rates (or its size range), under a device.
fn render_format(out: &mut String, f: &FormatInfo) {
    let _ = writeln!(out, "    {} ({})", f.fourcc, f.description);
    for s in &f.sizes {
        let rates = s
            .fps
            .iter()
            .map(|r| {
                format!("{r:.4}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string()
            })
            .collect::<Vec<_>>();
        let _ = writeln!(
            out,
            "      {}x{} @ {} fps",
            s.width,
            s.height,
            if rates.is_empty() {
                "?".into()
            } else {
                rates.join(", ")
            }
        );
    }
    if let Some(r) = f.range {
        let _ = writeln!(
            out,
            "      {}x{} to {}x{} (steps of {}x{})",
            r.min_width, r.min_height, r.max_width, r.max_height, r.step_width, r.step_height
        );
    }
}

/// One control on one line: name, kind, range, default, current value, flags; menus listed.
pub fn render_control(c: &ControlInfo) -> String {
    let value = c.value.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut line = match c.kind {
        "button" => format!("    {:<32} button", c.name),
        "bool" => format!("    {:<32} bool    default {} = {value}", c.name, c.default),
        _ => format!(
            "    {:<32} {:<7} {}..{} step {} default {} = {value}",
            c.name, c.kind, c.min, c.max, c.step, c.default
        ),
    };
    if c.read_only {
        line.push_str(" (read-only)");
    }
    if c.inactive {
        line.push_str(" (inactive)");
    }
    line.push('\n');
    for (k, name) in &c.menu {
        let _ = writeln!(line, "        {k}: {name}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::v4l2::formats::SizeInfo;

    #[test]
    fn text_listing_names_formats_sizes_and_rates() {
        let d = DeviceInfo {
            path: "/dev/video0".into(),
            driver: "uvcvideo".into(),
            card: "USB Camera".into(),
            bus: "usb-0000:01:00.0-1".into(),
            formats: vec![FormatInfo {
                fourcc: "YUYV".into(),
                description: "YUYV 4:2:2".into(),
                sizes: vec![SizeInfo {
                    width: 640,
                    height: 480,
                    fps: vec![30.0, 7.5],
                }],
                range: None,
            }],
            controls: vec![],
            problems: vec![],
            auto: "chosen",
            auto_reason: None,
        };
        let text = render(std::slice::from_ref(&d));
        assert!(
            text.contains("/dev/video0: USB Camera (driver uvcvideo"),
            "{text}"
        );
        assert!(text.contains("640x480 @ 30, 7.5 fps"), "{text}");
        assert!(text.contains("auto: chosen"), "{text}");
        let skipped = DeviceInfo {
            path: "/dev/video1".into(),
            auto: "skipped",
            auto_reason: Some("a metadata capture node, not pictures".into()),
            formats: vec![],
            ..d.clone()
        };
        let text = render(&[skipped.clone(), d.clone()]);
        assert!(
            text.contains("/dev/video1: USB Camera (driver uvcvideo, bus usb-0000:01:00.0-1)\n  auto: skipped, a metadata capture node, not pictures\n"),
            "{text}"
        );
        let json = serde_json::to_value([&skipped]).unwrap();
        assert_eq!(json[0]["auto"], "skipped");
        assert_eq!(
            json[0]["auto_reason"],
            "a metadata capture node, not pictures"
        );
        let json = serde_json::to_value([&d]).unwrap();
        assert_eq!(json[0]["formats"][0]["sizes"][0]["width"], 640);
        assert!(render(&[]).contains("No V4L2 capture devices"));
    }
}
