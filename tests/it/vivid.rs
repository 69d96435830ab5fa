//! rtcam against a real V4L2 kernel driver: Debian's kernel boots in qemu with the `vivid`
//! test driver, and the rtcam binary built by this test run lists devices, captures and encodes
//! two formats, sets controls, and survives two kinds of hot-unplug inside the guest; then the
//! agent runs there and its `R/status` and control-plane commands are watched over MQTT; then
//! `rotation = 180` is checked on the camera's flip controls, and vivid is reloaded with a
//! metadata and an output node before the camera for `kind = "auto"` (tests/vm/guest.sh). The guest prints one `RTCAM-VM: PASS|FAIL name` line per check; this
//! test decides on those lines.
//!
//! Needs qemu-system-x86, busybox-static, cpio and kmod (`make test-deps`) and apt access for
//! the kernel package, which is cached with the initramfs under target/vm.
//! `RTCAM_SKIP_VM=1` skips it (for a quick `cargo test` on a machine without them).

use std::process::Command;
use std::time::Instant;

/// Every check the guest must report as passed.
const EXPECTED: &[&str] = &[
    "vivid-loaded",
    "devices-json",
    "capture-yuyv-640x480",
    "capture-nv12-640x360",
    "format-not-offered",
    "size-not-offered",
    "control-set-brightness",
    "config-controls-applied",
    "control-unknown-refused",
    "stream-started",
    "unplug-disconnect-control",
    "unplug-unbind",
    "status-camera-ok",
    "status-camera-lost-then-ok",
    "command-set-control",
    "command-controls",
    "rotation-by-camera-flips",
    "auto-devices-marks-choice",
    "auto-streams-from-camera",
];

#[test]
fn vivid_in_a_vm() {
    if std::env::var_os("RTCAM_SKIP_VM").is_some() {
        eprintln!("RTCAM_SKIP_VM set: skipping the vivid VM test");
        return;
    }
    for tool in ["qemu-system-x86_64", "busybox", "cpio", "depmod"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool} || test -x /sbin/{tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: run `make test-deps` (or set RTCAM_SKIP_VM=1)"
        );
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out_dir = format!("{root}/target/vm");
    let started = Instant::now();
    let out = Command::new(format!("{root}/tests/vm/run.sh"))
        .args([&out_dir, env!("CARGO_BIN_EXE_rtcam")])
        .output()
        .expect("tests/vm/run.sh runs");
    let console = String::from_utf8_lossy(&out.stdout);
    let log = format!(
        "--- console ---\n{console}\n--- run.sh stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "vivid VM finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let results: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("RTCAM-VM: "))
        .collect();
    for r in &results {
        eprintln!("guest: {r}");
    }
    let failed: Vec<&&str> = results.iter().filter(|r| r.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "guest checks failed: {failed:?}\n{log}");
    for name in EXPECTED {
        assert!(
            results
                .iter()
                .any(|r| r.starts_with(&format!("PASS {name}"))),
            "guest did not report {name} as passed\n{log}"
        );
    }
    assert!(
        results.contains(&"DONE"),
        "guest script did not finish\n{log}"
    );
}
