//! Camera handling that needs no camera: a missing camera is reported `lost` in `R/status` while
//! the agent and its sessions keep running; `rtcam check`, `devices`, `controls` and the
//! libcamera source as a user runs them. The real-driver side is tests/it/vivid.rs.

use crate::common;

use common::commander::{Commander, Protocol};
use common::{start, test_config, Probe};
use rtcam::config::SourceKind;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const MISSING: &str = "/dev/video-rtcam-test-missing";

fn rtcam(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .args(args)
        .env("RTCAM_LOG", "warn")
        .output()
        .expect("rtcam runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("rtcam.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_camera_is_reported_lost_and_sessions_still_open() {
    let mut config = test_config("nocam");
    config.source.kind = SourceKind::V4l2;
    config.source.device = MISSING.into();
    let rt = start(config).await;
    let topic = format!("{}/status", rt.root());
    let probe = Probe::connect(rt.broker(), std::slice::from_ref(&topic)).await;
    let status = probe
        .wait_json(&topic, Duration::from_secs(10), |v| {
            v["state"] == "online" && v["camera"] == "lost"
        })
        .await
        .expect("status says the camera is lost");
    assert_eq!(status["viewers"], 0, "{status}");

    // The agent keeps serving: a viewer gets an answer and its session stays up, waiting for
    // video, rather than an error.
    let viewer = common::viewer::Viewer::connect(rt.broker(), &rt.root()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while viewer.has_message("answer").is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        viewer.has_message("answer").is_some(),
        "viewer answered while the camera is lost"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(viewer.has_message("bye").is_none() && viewer.has_message("error").is_none());
    assert_eq!(rt.app.viewers(), 1);
    viewer.bye().await;
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_pattern_status_has_no_camera_field() {
    let rt = start(test_config("nocamfield")).await;
    let topic = format!("{}/status", rt.root());
    let probe = Probe::connect(rt.broker(), std::slice::from_ref(&topic)).await;
    let status = probe
        .wait_json(&topic, Duration::from_secs(10), |v| {
            v["state"] == "online" && v["source"].is_string()
        })
        .await
        .expect("online status with a source");
    assert!(status.get("camera").is_none(), "{status}");
    rt.app.stop().await;
}

#[test]
fn check_runs_the_pipeline_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        &dir,
        "[source]\nkind = \"test\"\nwidth = 320\nheight = 240\nfps = 30\n[encoder]\nbitrate_kbps = 300\n",
    );
    let (ok, out, err) = rtcam(&[
        "--config",
        &cfg,
        "check",
        "--frames",
        "15",
        "--timeout",
        "20",
    ]);
    assert!(ok, "{out}\n{err}");
    for want in [
        "device:       test pattern",
        "format:       I420 320x240",
        "frame rate:   30.0 fps granted (30 asked)",
        "frames:       15 of 15",
        "achieved:",
        "first frame:",
        "camera:       none",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
}

#[test]
fn check_without_its_camera_fails_and_says_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        &dir,
        &format!("[source]\nkind = \"v4l2\"\ndevice = \"{MISSING}\"\n"),
    );
    let (ok, out, err) = rtcam(&[
        "--config",
        &cfg,
        "check",
        "--frames",
        "5",
        "--timeout",
        "2",
        "--progress",
    ]);
    assert!(!ok);
    assert!(
        out.contains("camera=lost") && out.contains("camera:       lost"),
        "{out}"
    );
    assert!(
        out.contains(&format!("device:       {MISSING} (never opened)")),
        "{out}"
    );
    assert!(err.contains("only 0 of 5 frames"), "{err}");
    assert!(err.contains(MISSING), "the log names the device: {err}");
}

#[test]
fn devices_json_is_a_list_and_controls_name_a_missing_device() {
    let (ok, out, err) = rtcam(&["devices", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(v.is_array(), "{out}");
    let (ok, text, _) = rtcam(&["devices"]);
    assert!(ok);
    if v.as_array().unwrap().is_empty() {
        assert!(text.contains("No V4L2 capture devices"), "{text}");
    }

    let (ok, _, err) = rtcam(&["controls", "--device", MISSING, "--get", "brightness"]);
    assert!(!ok);
    assert!(err.contains(MISSING), "{err}");
    let (ok, _, err) = rtcam(&["controls", "--device", MISSING, "--set", "brightness"]);
    assert!(!ok);
    assert!(err.contains(MISSING) || err.contains("name=value"), "{err}");
}

#[test]
fn libcamera_source_needs_libcamerasrc_or_reports_the_camera_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        &dir,
        "[source]\nkind = \"libcamera\"\nwidth = 640\nheight = 480\n",
    );
    let (ok, out, err) = rtcam(&["--config", &cfg, "check", "--frames", "3", "--timeout", "2"]);
    gstreamer::init().unwrap();
    if gstreamer::ElementFactory::find("libcamerasrc").is_none() {
        assert!(!ok);
        assert!(err.contains("gstreamer1.0-libcamera"), "{err}");
    } else if !ok {
        // The element is there but this machine has no camera for it.
        assert!(out.contains("camera:       lost"), "{out}\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_controls_need_a_v4l2_camera() {
    let config = test_config("ctlnocam");
    let v5_port = config.mqtt.embedded_listen_v5.port();
    let rt = start(config).await;
    let c = Commander::connect(Protocol::V5, ("127.0.0.1", v5_port), &rt.root()).await;
    let listed = c.request("controls", json!({})).await;
    let set = c
        .request("set", json!({"controls": {"brightness": 1}}))
        .await;
    for r in [listed, set] {
        let v = &r.body;
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no camera controls"),
            "{v}"
        );
    }
    rt.app.stop().await;
}
