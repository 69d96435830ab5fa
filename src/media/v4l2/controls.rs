//! Camera controls (brightness, exposure, white balance, focus …): list, read and set them by
//! name, and apply the `[source.controls]` table when a camera is opened.
//!
//! Names are the driver's labels made script-friendly ("White Balance Temperature, Auto" →
//! `white_balance_temperature_auto`), so a config file does not depend on numeric ids. What a
//! value means for a control ([`resolve`]) is pure and tested without a camera; only [`list`],
//! [`get`] and [`set`] touch the device.

use crate::config::ControlSetting;
use serde::Serialize;
use std::path::{Path, PathBuf};
use v4l::control::{Control, Description, Flags, MenuItem, Type, Value};
use v4l::Device;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: String,
        source: std::io::Error,
    },
    #[error("{path}: no control {name:?}; this camera has: {known}")]
    Unknown {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("{path}: {name}: {message}")]
    BadValue {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("{path}: the driver reported controls rtcam cannot read")]
    DriverQuirk { path: PathBuf },
}

/// What a control is, for `rtcam devices`/`rtcam controls` and scripts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlInfo {
    /// The script-friendly name used by `--set` and `[source.controls]`.
    pub name: String,
    /// The driver's own label.
    pub label: String,
    /// `int`, `int64`, `bool`, `menu`, `intmenu`, `button`, or `other` (not settable by rtcam).
    pub kind: &'static str,
    pub min: i64,
    pub max: i64,
    pub step: u64,
    pub default: i64,
    /// The current value; `None` for buttons and types rtcam does not read.
    pub value: Option<i64>,
    /// Menu entries as (value, name); empty for other kinds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub menu: Vec<(i64, String)>,
    pub read_only: bool,
    /// Inactive now because another control overrides it (manual exposure under auto exposure).
    pub inactive: bool,
    #[serde(skip)]
    id: u32,
}

/// A driver label as a name: lowercase, runs of anything but letters and digits become one `_`.
pub fn normalize(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// Parses a command-line value the way the config file's values are typed: a number, a boolean
/// (`true`/`false`/`on`/`off`), else a menu entry name.
pub fn parse_setting(text: &str) -> ControlSetting {
    if let Ok(v) = text.parse::<i64>() {
        return ControlSetting::Int(v);
    }
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" => ControlSetting::Bool(true),
        "false" | "off" | "no" => ControlSetting::Bool(false),
        _ => ControlSetting::Text(text.to_string()),
    }
}

/// The raw value to write for `setting`, checked against what the control accepts.
pub fn resolve(info: &ControlInfo, setting: &ControlSetting) -> Result<i64, String> {
    if info.read_only {
        return Err("is read-only".into());
    }
    let in_range = |v: i64| {
        if v < info.min || v > info.max {
            Err(format!("{v} is outside {}..{}", info.min, info.max))
        } else {
            Ok(v)
        }
    };
    match (info.kind, setting) {
        ("button", _) => Ok(0),
        ("bool", ControlSetting::Bool(b)) => Ok(i64::from(*b)),
        ("bool", ControlSetting::Int(v)) if *v == 0 || *v == 1 => Ok(*v),
        ("bool", other) => Err(format!("{other} is not true or false")),
        ("menu" | "intmenu", ControlSetting::Int(v)) => {
            if info.menu.iter().any(|(k, _)| k == v) {
                Ok(*v)
            } else {
                Err(format!("{v} is not one of: {}", menu_list(info)))
            }
        }
        ("menu" | "intmenu", ControlSetting::Text(t)) => {
            let wanted = normalize(t);
            info.menu
                .iter()
                .find(|(_, name)| normalize(name) == wanted)
                .map(|(k, _)| *k)
                .ok_or_else(|| format!("{t:?} is not one of: {}", menu_list(info)))
        }
        ("int" | "int64", ControlSetting::Int(v)) => in_range(*v),
        ("int" | "int64", ControlSetting::Bool(b)) => in_range(i64::from(*b)),
        ("other", _) => Err("has a type rtcam cannot set".into()),
        (_, other) => Err(format!("{other} is not a number")),
    }
}

fn menu_list(info: &ControlInfo) -> String {
    info.menu
        .iter()
        .map(|(k, n)| format!("{k} ({})", normalize(n)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn kind_of(t: Type) -> &'static str {
    match t {
        Type::Integer => "int",
        Type::Integer64 => "int64",
        Type::Boolean => "bool",
        Type::Menu => "menu",
        Type::IntegerMenu => "intmenu",
        Type::Button => "button",
        _ => "other",
    }
}

/// Every control of the camera at `path`, with its current value.
pub fn list(dev: &Device, path: &Path) -> Result<Vec<ControlInfo>, ControlError> {
    // The v4l crate unwraps on control types and names it does not expect; an odd driver must
    // not take rtcam down, so such a panic becomes an error.
    let descriptions =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dev.query_controls()))
            .map_err(|_| ControlError::DriverQuirk {
                path: path.to_path_buf(),
            })?
            .map_err(|source| ControlError::Io {
                path: path.to_path_buf(),
                what: "cannot list controls".into(),
                source,
            })?;
    Ok(descriptions
        .into_iter()
        .filter(|d| d.typ != Type::CtrlClass)
        .map(|d| describe(dev, d))
        .collect())
}

fn describe(dev: &Device, d: Description) -> ControlInfo {
    let kind = kind_of(d.typ);
    let value = match kind {
        "button" | "other" => None,
        _ => match dev.control(d.id).map(|c| c.value) {
            Ok(Value::Integer(v)) => Some(v),
            Ok(Value::Boolean(b)) => Some(i64::from(b)),
            _ => None,
        },
    };
    let menu = d
        .items
        .unwrap_or_default()
        .into_iter()
        .map(|(index, item)| {
            let label = match item {
                MenuItem::Name(n) => n,
                MenuItem::Value(v) => v.to_string(),
            };
            (i64::from(index), label)
        })
        .collect();
    ControlInfo {
        name: normalize(&d.name),
        label: d.name,
        kind,
        min: d.minimum,
        max: d.maximum,
        step: d.step,
        default: d.default,
        value,
        menu,
        read_only: d.flags.contains(Flags::READ_ONLY),
        inactive: d.flags.contains(Flags::INACTIVE),
        id: d.id,
    }
}

fn find(controls: Vec<ControlInfo>, path: &Path, name: &str) -> Result<ControlInfo, ControlError> {
    let wanted = normalize(name);
    let known = controls
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    controls
        .into_iter()
        .find(|c| c.name == wanted)
        .ok_or_else(|| ControlError::Unknown {
            path: path.to_path_buf(),
            name: name.to_string(),
            known,
        })
}

/// One control, with its current value.
pub fn get(dev: &Device, path: &Path, name: &str) -> Result<ControlInfo, ControlError> {
    find(list(dev, path)?, path, name)
}

/// Sets one control and returns it as read back from the driver (which may round the value).
pub fn set(
    dev: &Device,
    path: &Path,
    name: &str,
    setting: &ControlSetting,
) -> Result<ControlInfo, ControlError> {
    let info = get(dev, path, name)?;
    let raw = resolve(&info, setting).map_err(|message| ControlError::BadValue {
        path: path.to_path_buf(),
        name: info.name.clone(),
        message,
    })?;
    let value = match info.kind {
        "button" => Value::None,
        "bool" => Value::Boolean(raw != 0),
        _ => Value::Integer(raw),
    };
    dev.set_control(Control { id: info.id, value })
        .map_err(|source| ControlError::Io {
            path: path.to_path_buf(),
            what: format!("cannot set {}", info.name),
            source,
        })?;
    if info.kind == "button" {
        return Ok(info);
    }
    get(dev, path, name)
}

/// Applies a `[source.controls]` table; returns one error per control that could not be set,
/// so one bad entry does not stop the others (or the camera).
pub fn apply(
    dev: &Device,
    path: &Path,
    settings: &std::collections::BTreeMap<String, ControlSetting>,
) -> Vec<ControlError> {
    settings
        .iter()
        .filter_map(|(name, setting)| set(dev, path, name, setting).err())
        .collect()
}

/// Opens `path` for control access only (no streaming, so it works while rtcam streams).
pub fn open(path: &Path) -> Result<Device, ControlError> {
    Device::with_path(path).map_err(|source| ControlError::Io {
        path: path.to_path_buf(),
        what: "cannot open".into(),
        source,
    })
}

/// The V4L2 flip controls, by the names `list` gives them.
pub const FLIPS: (&str, &str) = ("horizontal_flip", "vertical_flip");

/// Sets the camera's flips for `[source] hflip`/`vflip`/`rotation` when it has both flip
/// controls (returns false when it has not, so the pipeline turns the picture instead). A flip
/// that `[source.controls]` names is left as the user set it there.
pub fn apply_flips(
    dev: &Device,
    path: &Path,
    flips: impl FnOnce(bool) -> Option<(bool, bool)>,
    configured: &std::collections::BTreeMap<String, ControlSetting>,
) -> Result<bool, ControlError> {
    let names = list(dev, path)?;
    let has = |n: &str| names.iter().any(|c| c.name == n && !c.read_only);
    let Some((h, v)) = flips(has(FLIPS.0) && has(FLIPS.1)) else {
        return Ok(false);
    };
    for (name, on) in [(FLIPS.0, h), (FLIPS.1, v)] {
        if !configured.contains_key(name) {
            set(dev, path, name, &ControlSetting::Bool(on))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(kind: &'static str) -> ControlInfo {
        ControlInfo {
            name: "x".into(),
            label: "X".into(),
            kind,
            min: 0,
            max: 255,
            step: 1,
            default: 128,
            value: Some(128),
            menu: vec![
                (1, "Manual Mode".into()),
                (3, "Aperture Priority Mode".into()),
            ],
            read_only: false,
            inactive: false,
            id: 1,
        }
    }

    #[test]
    fn labels_become_names() {
        assert_eq!(normalize("Brightness"), "brightness");
        assert_eq!(
            normalize("White Balance Temperature, Auto"),
            "white_balance_temperature_auto"
        );
        assert_eq!(normalize("  Focus (absolute) "), "focus_absolute");
    }

    #[test]
    fn command_line_values_are_typed_like_config_values() {
        assert_eq!(parse_setting("200"), ControlSetting::Int(200));
        assert_eq!(parse_setting("-3"), ControlSetting::Int(-3));
        assert_eq!(parse_setting("off"), ControlSetting::Bool(false));
        assert_eq!(
            parse_setting("manual_mode"),
            ControlSetting::Text("manual_mode".into())
        );
    }

    #[test]
    fn values_are_checked_against_the_control() {
        let int = control("int");
        assert_eq!(resolve(&int, &ControlSetting::Int(200)), Ok(200));
        assert!(resolve(&int, &ControlSetting::Int(300))
            .unwrap_err()
            .contains("0..255"));
        assert!(resolve(&int, &ControlSetting::Text("bright".into())).is_err());
        let b = control("bool");
        assert_eq!(resolve(&b, &ControlSetting::Bool(true)), Ok(1));
        assert_eq!(resolve(&b, &ControlSetting::Int(0)), Ok(0));
        assert!(resolve(&b, &ControlSetting::Int(7)).is_err());
        let menu = control("menu");
        assert_eq!(
            resolve(
                &menu,
                &ControlSetting::Text("aperture_priority_mode".into())
            ),
            Ok(3)
        );
        assert_eq!(resolve(&menu, &ControlSetting::Int(1)), Ok(1));
        let err = resolve(&menu, &ControlSetting::Int(2)).unwrap_err();
        assert!(
            err.contains("1 (manual_mode)") && err.contains("3 (aperture_priority_mode)"),
            "{err}"
        );
        assert_eq!(resolve(&control("button"), &ControlSetting::Int(1)), Ok(0));
        let mut ro = control("int");
        ro.read_only = true;
        assert!(resolve(&ro, &ControlSetting::Int(1)).is_err());
    }
}
