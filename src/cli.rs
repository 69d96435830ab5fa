//! The camera commands of the `rtcam` binary: `devices`, `controls`, `check`. `main.rs` parses
//! arguments and calls these; they print for people (or JSON for scripts) and return errors for
//! `main` to report.

use crate::config::{Config, SourceKind};
use crate::media::check::{self, CheckOptions};
use crate::media::v4l2::{self, controls, probe};
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::time::Duration;

/// `rtcam devices [--json]`.
pub fn devices(json: bool) -> anyhow::Result<()> {
    let list = probe::list(crate::media::libcamera_camera().as_deref());
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", probe::render(&list));
    }
    Ok(())
}

/// The camera `rtcam controls` works on: `--device`, else the configured one, else the first.
fn control_device(explicit: Option<PathBuf>, config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    if config.source.kind == SourceKind::Libcamera {
        bail!("controls work on V4L2 cameras; this config uses libcamera (give --device for a V4L2 node)");
    }
    if !config.source.device.is_empty() {
        return Ok(PathBuf::from(&config.source.device));
    }
    v4l2::first_capture_device().context("no V4L2 capture device found (see `rtcam devices`)")
}

/// `rtcam controls [--device D] [--set name=value]… [--get name]… [--json]`: sets in order, then
/// prints the named controls as `name=value` lines, or every control.
pub fn controls(
    config: &Config,
    device: Option<PathBuf>,
    sets: &[String],
    gets: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let path = control_device(device, config)?;
    let dev = controls::open(&path)?;
    for s in sets {
        let Some((name, value)) = s.split_once('=') else {
            bail!("--set {s:?}: expected name=value, e.g. brightness=140");
        };
        let info = controls::set(
            &dev,
            &path,
            name.trim(),
            &controls::parse_setting(value.trim()),
        )?;
        if gets.is_empty() && !json {
            match info.value {
                Some(v) => println!("{}={v}", info.name),
                None => println!("{} pressed", info.name),
            }
        }
    }
    if !gets.is_empty() {
        for name in gets {
            let info = controls::get(&dev, &path, name)?;
            println!(
                "{}={}",
                info.name,
                info.value.map_or("-".to_string(), |v| v.to_string())
            );
        }
        return Ok(());
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&controls::list(&dev, &path)?)?
        );
    } else if sets.is_empty() {
        println!("{}:", path.display());
        for c in controls::list(&dev, &path)? {
            print!("{}", probe::render_control(&c));
        }
    }
    Ok(())
}

/// `rtcam check [--frames N] [--timeout S] [--progress]`: Ok when N frames came.
pub fn check(
    config: &Config,
    frames: u64,
    timeout: Duration,
    progress: bool,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let opts = CheckOptions {
        frames,
        timeout,
        progress,
    };
    let report = runtime.block_on(check::run(&config.source, &config.encoder, opts, |line| {
        println!("{line}")
    }))?;
    print!("{report}");
    if !report.passed() {
        bail!(
            "only {} of {frames} frames in {} s{}",
            report.frames,
            timeout.as_secs(),
            if report.frames == 0 {
                "; see the log above for why"
            } else {
                ""
            }
        );
    }
    Ok(())
}
