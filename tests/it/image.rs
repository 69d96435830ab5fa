//! The flashable image, booted for real: the Raspberry Pi image `make image` builds (Debian's
//! arm64 kernel and initramfs, systemd, rtcam's .deb), prepared by tests/image/prepare.sh with
//! the vivid camera, boots in `qemu-system-aarch64 -M virt` (TCG) from its own disk. What the
//! user would put on the boot partition is put there: a `rtcam.toml` and a `rtcam-setup.txt`
//! with a hostname, a time zone and this test's SSH key, through which the test looks inside.
//!
//! First boot: the first-boot unit applies the files and grows the root to the "card"; the real
//! systemd starts the shipped unit; READY and watchdog pings show in `systemctl show rtcam`; no
//! sandbox denial in the journal; a viewer on the host decodes video (signalling over a broker
//! on the host, media through a TURN relay on the host: qemu's user network lets nothing in but
//! its port forwards, which carry SSH and the page here). Then rtcam hangs (SIGSTOP): the
//! pings stop and systemd restarts it on its watchdog; `systemctl stop` ends the new one cleanly
//! (the viewer told `bye`, the offline status published).
//! Second boot, with a broken `rtcam.toml` on the boot partition: nothing of the first boot runs
//! again, and rtcam stays stopped with exit status 78 and the error in the journal.
//!
//! Slow (it boots a whole Debian twice under emulation), so `#[ignore]`d: `make test-image`
//! prepares the image and runs it.

use crate::common;

use common::coturn::{Coturn, BOARD_RELAY_PASSWORD};
use common::viewer::Viewer;
use common::{free_port, Mosquitto, Probe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DIR: &str = "target/image/test";
const DEVICE: &str = "imagecam";
const HOSTNAME: &str = "rtcam-image-test";
const TIMEZONE: &str = "Europe/Paris";

/// qemu running the image, killed when dropped.
struct Qemu {
    child: Child,
    started: Instant,
    console: PathBuf,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The booted guest, reached over SSH through qemu's port forward.
struct Guest {
    qemu: Qemu,
    ssh_port: u16,
    http_port: u16,
    key: PathBuf,
}

/// The one file in DIR whose name starts with `prefix` (the kernel and initramfs carry the
/// kernel's version).
fn prepared(prefix: &str) -> PathBuf {
    std::fs::read_dir(DIR)
        .unwrap_or_else(|e| panic!("{DIR}: {e}; run tests/image/prepare.sh (make test-image)"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}* in {DIR}; run tests/image/prepare.sh"))
}

/// The byte offset of the image's boot (FAT) partition, for mtools.
fn boot_offset(image: &Path) -> u64 {
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(image)
        .output()
        .unwrap();
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let boot = &table["partitiontable"]["partitions"][0];
    assert_eq!(boot["type"], "c", "the first partition is not FAT: {table}");
    boot["start"].as_u64().unwrap() * 512
}

/// Writes `name` (in a folder if it has one) on the image's boot partition, as a user's
/// computer would.
fn put_on_boot_partition(image: &Path, name: &str, text: &str, dir: &Path) {
    let local = dir.join(name.replace('/', "-"));
    std::fs::write(&local, text).unwrap();
    let partition = format!("{}@@{}", image.display(), boot_offset(image));
    if let Some((folder, _)) = name.rsplit_once('/') {
        // mmd fails on a folder that is there already, which is fine.
        let _ = Command::new("mmd")
            .args(["-i", &partition, &format!("::{folder}")])
            .stderr(Stdio::null())
            .status();
    }
    let status = Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(&partition)
        .arg(&local)
        .arg(format!("::{name}"))
        .status()
        .unwrap();
    assert!(status.success(), "mcopy {name} onto the boot partition");
}

fn boot(image: &Path, dir: &Path, key: &Path, boot_no: u32) -> Guest {
    let (ssh_port, http_port) = (free_port(), free_port());
    // The kernel command line of the Pi (cmdline.txt names the root by label), on qemu's
    // console instead of the Pi's serial port.
    let cmdline = std::fs::read_to_string(prepared("cmdline.txt")).unwrap();
    let root = cmdline
        .split_whitespace()
        .find(|w| w.starts_with("root="))
        .expect("cmdline.txt names the root");
    let console = dir.join(format!("console-{boot_no}.log"));
    let child = Command::new("qemu-system-aarch64")
        .args(["-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(prepared("vmlinuz-"))
        .arg("-initrd")
        .arg(prepared("initrd.img-"))
        .arg("-append")
        .arg(format!("{root} rw console=ttyAMA0 fsck.repair=yes rootwait"))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", image.display()))
        .args(["-device", "virtio-rng-pci"])
        .args(["-netdev"])
        .arg(format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,hostfwd=tcp:127.0.0.1:{http_port}-:8080"
        ))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-aarch64 is installed (apt-get install qemu-system-arm)");
    let qemu = Qemu {
        child,
        started: Instant::now(),
        console,
    };
    Guest {
        qemu,
        ssh_port,
        http_port,
        key: key.to_path_buf(),
    }
}

impl Guest {
    /// Runs a shell command in the guest as root; its stdout, or Err with what went wrong.
    async fn try_ssh(&self, cmd: &str) -> Result<String, String> {
        let out = tokio::process::Command::new("ssh")
            .args([
                "-q",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
            ])
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.ssh_port.to_string(), "root@127.0.0.1", cmd])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    async fn ssh(&self, cmd: &str) -> String {
        self.try_ssh(cmd).await.unwrap_or_else(|e| {
            panic!("in the guest, `{cmd}` failed: {e}\n{}", self.console_tail())
        })
    }

    fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.qemu.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Waits until SSH answers (the first-boot unit made the host keys and installed our key).
    async fn wait_ssh(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_ssh("true").await {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "no SSH into the guest: {e}\nconsole:\n{}",
                        self.console_tail()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }

    /// `systemctl show rtcam` as a map of the properties asked for.
    async fn show(&self, unit: &str, props: &str) -> std::collections::HashMap<String, String> {
        self.ssh(&format!("systemctl show {unit} -p {props}"))
            .await
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Waits until `pred` holds for rtcam's properties; returns them.
    async fn wait_show(
        &self,
        props: &str,
        timeout: Duration,
        pred: impl Fn(&std::collections::HashMap<String, String>) -> bool,
    ) -> std::collections::HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.show("rtcam", props).await;
            if pred(&now) {
                return now;
            }
            if Instant::now() > deadline {
                let journal = self
                    .ssh("journalctl -b -u rtcam --no-pager | tail -40")
                    .await;
                panic!("rtcam never reached the state looked for; last {now:?}\n{journal}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn poweroff(mut self) {
        let _ = self.try_ssh("systemctl poweroff").await;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.qemu.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the guest did not power off");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn config(mqtt_port: u16, turn_port: u16) -> String {
    format!(
        "# rtcam.toml from the boot partition (tests/it/image.rs)\n\
         [device]\nid = \"{DEVICE}\"\n\
         [mqtt]\nurl = \"mqtt://10.0.2.2:{mqtt_port}\"\n\
         [source]\nkind = \"v4l2\"\ndevice = \"/dev/video0\"\nformat = \"yuyv\"\n\
         width = 320\nheight = 180\nfps = 15\nalways_on = true\n\
         [encoder]\nelement = \"x264enc\"\nbitrate_kbps = 300\nkeyframe_interval = 15\n\
         [webrtc]\nudp_addrs = [\"10.0.2.15\"]\n\
         [[webrtc.ice_servers]]\nurls = [\"turn:10.0.2.2:{turn_port}?transport=udp\"]\n\
         username = \"board\"\n\
         # empty: the turn_credential credential, from the boot partition's rtcam-credentials/\n\
         credential = \"\"\n"
    )
}

fn keypair(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "rtcam-image-test",
            "-f",
        ])
        .arg(&key)
        .status()
        .expect("ssh-keygen is installed (openssh-client)");
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots the image in qemu twice; run with make test-image"]
async fn image_boots_applies_the_boot_partition_and_runs_rtcam_under_systemd() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("card.img");
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .arg(Path::new(DIR).join("rtcam.img"))
        .arg(&image)
        .status()
        .unwrap();
    assert!(
        copied.success(),
        "no {DIR}/rtcam.img: run tests/image/prepare.sh"
    );
    let broker = Mosquitto::start();
    let turn_port = free_port();
    let _turn = Coturn::for_qemu_board(turn_port, dir.path());
    let (key, public) = keypair(dir.path());
    put_on_boot_partition(
        &image,
        "rtcam.toml",
        &config(broker.port, turn_port),
        dir.path(),
    );
    put_on_boot_partition(
        &image,
        "rtcam-credentials/turn_credential.txt",
        &format!("{BOARD_RELAY_PASSWORD}\r\n"),
        dir.path(),
    );
    put_on_boot_partition(
        &image,
        "rtcam-setup.txt",
        &format!(
            "# written by tests/image.rs\r\nhostname={HOSTNAME}\r\ntimezone={TIMEZONE}\r\nssh_key={public}\r\n"
        ),
        dir.path(),
    );

    let root = format!("rtcam/{DEVICE}");
    let probe = Probe::connect(("127.0.0.1", broker.port), &[format!("{root}/status")]).await;
    let guest = boot(&image, dir.path(), &key, 1);
    let host_key = first_boot(&guest, &probe, broker.port, &root).await;
    guest.poweroff().await;

    // Second boot: a broken rtcam.toml on the boot partition.
    put_on_boot_partition(
        &image,
        "rtcam.toml",
        "[device]\nid = \"imagecam\"\n[source]\nno_such_key = 1\n",
        dir.path(),
    );
    let guest = boot(&image, dir.path(), &key, 2);
    second_boot(&guest, &host_key).await;
    guest.poweroff().await;
}

/// The first boot's checks; returns the guest's SSH host key, which must not change.
async fn first_boot(guest: &Guest, probe: &Probe, mqtt_port: u16, root: &str) -> String {
    guest.wait_ssh(Duration::from_secs(600)).await;
    let ssh_at = guest.qemu.started.elapsed();
    let active = guest
        .wait_show(
            "ActiveState,SubState,NRestarts,ActiveEnterTimestampMonotonic,WatchdogTimestampMonotonic,StatusText",
            Duration::from_secs(300),
            |p| p["ActiveState"] == "active",
        )
        .await;
    let ready_at = guest.qemu.started.elapsed();
    let since_kernel = active["ActiveEnterTimestampMonotonic"]
        .parse::<u64>()
        .unwrap_or(0) as f64
        / 1e6;
    println!(
        "image: SSH after {:.0} s, rtcam ready (READY=1) {since_kernel:.1} s after the kernel started, \
         seen {:.0} s after qemu started",
        ssh_at.as_secs_f64(),
        ready_at.as_secs_f64()
    );
    assert_eq!(active["NRestarts"], "0", "{active:?}");

    boot_partition_applied(guest).await;
    let chain = guest
        .ssh("systemd-analyze critical-chain rtcam.service --no-pager")
        .await;
    println!("image: what rtcam waited for at boot:\n{chain}");

    // rtcam with that configuration: its URL in the log, its device id on the broker.
    let log = guest.ssh("journalctl -b -u rtcam --no-pager -o cat").await;
    assert!(log.contains("http://"), "rtcam logged no URL:\n{log}");
    assert!(
        log.contains("using systemd credentials: turn_credential"),
        "rtcam did not read the TURN credential from the card:\n{log}"
    );
    let online = probe
        .wait_json(&format!("{root}/status"), Duration::from_secs(60), |v| {
            v["state"] == "online"
        })
        .await;
    assert!(online.is_some(), "no online status on {root}/status");
    http_page(guest.http_port).await;

    // Watchdog pings: WatchdogTimestamp moves on (rtcam pings every 10 s of WatchdogSec=30s).
    let first = active["WatchdogTimestampMonotonic"].clone();
    let pinged = guest
        .wait_show("WatchdogTimestampMonotonic", Duration::from_secs(40), |p| {
            p["WatchdogTimestampMonotonic"] != first && p["WatchdogTimestampMonotonic"] != "0"
        })
        .await;
    println!(
        "image: watchdog pinged at {} µs (then {first})",
        pinged["WatchdogTimestampMonotonic"]
    );

    // A viewer on the host decodes the camera through the relay.
    let viewer = Viewer::connect(("127.0.0.1", mqtt_port), root).await;
    let decoded = viewer.wait_frames(15, Duration::from_secs(120)).await;
    assert!(decoded.frames >= 15, "decoded only {decoded:?}");
    assert_eq!((decoded.width, decoded.height), (320, 180), "{decoded:?}");
    viewer.bye().await;

    no_sandbox_denials(guest).await;
    watchdog_restart(guest).await;
    clean_stop(guest, probe, mqtt_port, root).await;
    guest.ssh("cat /etc/ssh/ssh_host_ed25519_key.pub").await
}

/// The boot partition's files, applied once and gone from the partition; the root grown.
async fn boot_partition_applied(guest: &Guest) {
    let firstboot = guest
        .ssh("journalctl -b -u rtcam-firstboot --no-pager -o cat")
        .await;
    for expected in [
        "first boot",
        "root file system grown",
        "SSH host keys made",
        HOSTNAME,
        TIMEZONE,
        "credential turn_credential installed",
    ] {
        assert!(
            firstboot.contains(expected),
            "no \"{expected}\" in:\n{firstboot}"
        );
    }
    assert_eq!(guest.ssh("hostname").await.trim(), HOSTNAME);
    assert_eq!(guest.ssh("cat /etc/timezone").await.trim(), TIMEZONE);
    let boot_files = guest.ssh("ls /boot/firmware").await;
    assert!(!boot_files.contains("rtcam-setup.txt\n"), "{boot_files}");
    assert!(boot_files.contains("rtcam.toml.applied"), "{boot_files}");
    assert!(!boot_files.contains("rtcam-credentials"), "{boot_files}");
    let credential = guest
        .ssh("stat -c '%a %U' /etc/rtcam/credentials/turn_credential")
        .await;
    assert_eq!(credential.trim(), "600 root");
    // The root grew into the 512 MB the prepared image left free after its partitions.
    let sizes = guest.ssh("lsblk -bdno SIZE /dev/vda /dev/vda2").await;
    let sizes: Vec<u64> = sizes
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(
        sizes[0] - sizes[1] < 600 << 20,
        "the root partition did not grow: {sizes:?}"
    );
}

async fn http_page(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /config.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    // The page's own settings (the board-test build reads the page's files from the source
    // tree, as debug builds do, so `/` itself is a release build's).
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(DEVICE),
        "/config.json through the port forward: {answer:.400}"
    );
}

/// No seccomp, device or file-system denial for rtcam in this boot's journal.
async fn no_sandbox_denials(guest: &Guest) {
    let kernel = guest
        .ssh("journalctl -b -k --no-pager -o cat | grep -E 'type=1326|audit.*comm=\"rtcam\"|apparmor=\"DENIED\"' || true")
        .await;
    assert!(
        kernel.trim().is_empty(),
        "kernel reports denials:\n{kernel}"
    );
    let denials = guest
        .ssh("journalctl -b -u rtcam --no-pager -o cat | grep -Ei 'permission denied|operation not permitted|read-only file system|EPERM|EACCES' || true")
        .await;
    assert!(
        denials.trim().is_empty(),
        "rtcam met its sandbox:\n{denials}"
    ); // Its cache directory holds GStreamer's registry (no plugin scan at the next start) and
       // fontconfig's cache (fontconfig says "No writable cache directories" otherwise).
    let fonts = guest
        .ssh("journalctl -b -u rtcam --no-pager -o cat | grep -i 'no writable cache' || true")
        .await;
    assert!(fonts.trim().is_empty(), "fontconfig has no cache:\n{fonts}");
    let cache = guest.ssh("ls -R /var/cache/rtcam").await;
    assert!(
        cache.contains("registry."),
        "no GStreamer registry in:\n{cache}"
    );
}

/// rtcam hangs (stopped with SIGSTOP, as a deadlock would leave it): its watchdog pings stop
/// and systemd restarts it. (A camera that stops delivering is not a hang to rtcam: vivid
/// dropping every buffer fails VIDIOC_DQBUF, and rtcam retries it as a lost camera, beating.)
async fn watchdog_restart(guest: &Guest) {
    guest
        .ssh("kill -STOP $(systemctl show -p MainPID --value rtcam)")
        .await;
    let stalled_at = Instant::now();
    let restarted = guest
        .wait_show("NRestarts,ActiveState", Duration::from_secs(180), |p| {
            p["NRestarts"] != "0" && p["ActiveState"] == "active"
        })
        .await;
    println!(
        "image: restarted by the watchdog and ready again {:.0} s after the hang ({restarted:?})",
        stalled_at.elapsed().as_secs_f64()
    );
    let journal = guest.ssh("journalctl -b -u rtcam --no-pager -o cat").await;
    assert!(
        journal.contains("Watchdog timeout"),
        "no watchdog timeout:\n{journal}"
    );
}

/// `systemctl stop` with a viewer watching: bye, offline status, a clean exit.
async fn clean_stop(guest: &Guest, probe: &Probe, mqtt_port: u16, root: &str) {
    let viewer = Viewer::connect(("127.0.0.1", mqtt_port), root).await;
    let decoded = viewer.wait_frames(5, Duration::from_secs(120)).await;
    assert!(
        decoded.frames >= 5,
        "after the restart, decoded only {decoded:?}"
    );
    probe.seen.lock().unwrap().clear();
    guest.ssh("systemctl stop rtcam").await;
    let stopped = guest
        .show("rtcam", "ActiveState,Result,ExecMainStatus")
        .await;
    assert_eq!(stopped["ActiveState"], "inactive", "{stopped:?}");
    assert_eq!(stopped["Result"], "success", "{stopped:?}");
    let offline = probe
        .wait_json(&format!("{root}/status"), Duration::from_secs(10), |v| {
            v["state"] == "offline"
        })
        .await;
    assert!(offline.is_some(), "no offline status after systemctl stop");
    let deadline = Instant::now() + Duration::from_secs(10);
    while viewer.has_message("bye").is_none() {
        assert!(
            Instant::now() < deadline,
            "the viewer was not told bye: {:?}",
            viewer.messages
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The second boot: no first-boot steps again, the broken config keeps rtcam stopped.
async fn second_boot(guest: &Guest, host_key: &str) {
    guest.wait_ssh(Duration::from_secs(600)).await;
    assert_eq!(
        guest.ssh("cat /etc/ssh/ssh_host_ed25519_key.pub").await,
        host_key
    );
    let firstboot = guest
        .ssh("journalctl -b -u rtcam-firstboot --no-pager -o cat")
        .await;
    assert!(!firstboot.contains("first boot"), "{firstboot}");
    assert!(!firstboot.contains("grown"), "{firstboot}");
    assert!(firstboot.contains("rtcam.toml installed"), "{firstboot}");
    assert_eq!(guest.ssh("hostname").await.trim(), HOSTNAME);
    let failed = guest
        .wait_show(
            "ActiveState,Result,ExecMainStatus,NRestarts",
            Duration::from_secs(300),
            |p| p["ActiveState"] == "failed",
        )
        .await;
    assert_eq!(failed["ExecMainStatus"], "78", "{failed:?}");
    // Not a restart loop: still failed, never restarted, some seconds later.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later = guest.show("rtcam", "ActiveState,NRestarts").await;
    assert_eq!(
        (later["ActiveState"].as_str(), later["NRestarts"].as_str()),
        ("failed", "0")
    );
    let log = guest.ssh("journalctl -b -u rtcam --no-pager -o cat").await;
    assert!(
        log.contains("no_such_key"),
        "the config error is not in the journal:\n{log}"
    );
}
