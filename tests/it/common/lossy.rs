//! A lossy link between two network namespaces: a tiny router VM (Debian's kernel, busybox,
//! `tc`) whose two NICs are taps, one in each namespace, and which applies `tc netem` to what
//! it forwards. The host kernel of CI machines may lack sch_netem; the guest's kernel has it.
//!
//! ```text
//!  namespace <prefix>-cam          router VM (qemu, TCG)         namespace <prefix>-view
//!  tap <tap>0 10.77.1.2 ──── eth0 10.77.1.1 │ eth1 10.77.2.1 ──── tap <tap>1 10.77.2.2
//!                                 netem on each egress
//! ```
//!
//! The guest runs each line written to its console and answers `RTCAM-ROUTER: <n> rc=<rc>`
//! (tests/vm/router/init), so `netem()` changes the link while a test runs. Dropping the link
//! kills qemu and deletes both namespaces (with them the taps).

use super::netns::{run, Netns};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// rtcam's side of the link.
pub const CAM_ADDR: &str = "10.77.1.2";
/// The viewer's side.
pub const VIEWER_ADDR: &str = "10.77.2.2";

/// Bounded waits: TCG on a loaded 2-core machine boots the guest in about 10 s.
const BOOT_WITHIN: Duration = Duration::from_secs(90);
const COMMAND_WITHIN: Duration = Duration::from_secs(20);

pub struct LossyLink {
    pub cam: Netns,
    pub viewer: Netns,
    qemu: Child,
    console: ChildStdin,
    lines: mpsc::Receiver<String>,
    sent: u32,
    /// Everything the guest printed, for failure messages.
    log: Vec<String>,
}

/// What a test needs on this machine: root, namespaces, qemu, and the router image's tools.
pub fn available() -> Result<(), String> {
    if !super::netns::available() {
        return Err("needs root and iproute2 (network namespaces)".into());
    }
    for tool in ["qemu-system-x86_64", "busybox", "cpio", "depmod", "tc"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool} || test -x /sbin/{tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("{tool} is missing: run `make test-deps`"));
        }
    }
    Ok(())
}

/// Builds (or reuses) the router image under target/vm/router; returns its directory.
fn prepare() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = format!("{root}/target/vm/router");
    run(&format!("{root}/tests/vm/router/prepare.sh"), &[&out]);
    out
}

impl LossyLink {
    /// Boots the router between two new namespaces `<prefix>-cam` and `<prefix>-view`. `tap`
    /// names the taps (`<tap>0`, `<tap>1`; at most 14 bytes). Blocks until the link forwards.
    #[expect(
        clippy::too_many_lines,
        reason = "the router VM's qemu command line and the namespaces' wiring read best as one sequence"
    )]
    pub fn start(prefix: &str, tap: &str) -> LossyLink {
        let image = prepare();
        let cam = Netns::new(&format!("{prefix}-cam"));
        let viewer = Netns::new(&format!("{prefix}-view"));
        let (tap0, tap1) = (format!("{tap}0"), format!("{tap}1"));
        // qemu runs in the camera's namespace and creates both taps there; the viewer's tap
        // is then moved into the viewer's namespace (the open fd keeps working).
        let mut command = cam.command("qemu-system-x86_64");
        // SAFETY: prctl is async-signal-safe and takes no pointers, as code between fork and
        // exec must. A test killed outright (a CI timeout) takes its qemu with it: `ip netns
        // exec` execs qemu, which keeps this parent-death signal.
        #[allow(unsafe_code)]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut qemu = command
            .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256"])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-monitor",
                "none",
            ])
            .args(["-serial", "stdio"])
            .args(["-kernel", &format!("{image}/vmlinuz")])
            .args(["-initrd", &format!("{image}/initramfs.cpio.gz")])
            .args([
                "-append",
                "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init",
            ])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap0},script=no,downscript=no"),
            ])
            // No option ROM: the guest boots from -kernel, and iPXE's probe costs seconds.
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            .args([
                "-netdev",
                &format!("tap,id=n1,ifname={tap1},script=no,downscript=no"),
            ])
            .args(["-device", "virtio-net-pci,netdev=n1,romfile="])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 runs (make test-deps)");
        let console = qemu.stdin.take().unwrap();
        let stdout = qemu.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut link = LossyLink {
            cam,
            viewer,
            qemu,
            console,
            lines,
            sent: 0,
            log: Vec::new(),
        };
        let started = Instant::now();
        link.wait_line(BOOT_WITHIN, |l| l.contains("RTCAM-ROUTER: ready"))
            .unwrap_or_else(|| panic!("the router VM did not boot:\n{}", link.log.join("\n")));
        eprintln!("router VM up after {:?}", started.elapsed());

        // The taps exist once qemu is running, which the guest's console proves.
        link.cam
            .ip(&["link", "set", &tap1, "netns", &link.viewer.name]);
        for (ns, tap, addr, gw) in [
            (&link.cam, &tap0, CAM_ADDR, "10.77.1.1"),
            (&link.viewer, &tap1, VIEWER_ADDR, "10.77.2.1"),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", tap]);
            ns.ip(&["link", "set", tap, "up"]);
            ns.route_default(gw);
        }
        link.guest("ip addr add 10.77.1.1/24 dev eth0 && ip link set eth0 up");
        link.guest("ip addr add 10.77.2.1/24 dev eth1 && ip link set eth1 up");
        // Forwarding works once both sides answer; ARP and link-up take a moment.
        let deadline = Instant::now() + COMMAND_WITHIN;
        loop {
            let ok = link
                .cam
                // busybox's ping: busybox-static is a test dependency already, iputils is not.
                .command("busybox")
                .args(["ping", "-c", "1", "-W", "1", VIEWER_ADDR])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            assert!(
                Instant::now() < deadline,
                "no route through the router VM:\n{}",
                link.log.join("\n")
            );
        }
        link
    }

    /// Sets netem on both directions: `spec` as tc takes it ("loss 5% delay 80ms 20ms"), or
    /// "" for a clean link.
    pub fn netem(&mut self, spec: &str) {
        for dev in ["eth0", "eth1"] {
            self.netem_on(dev, spec);
        }
    }

    /// Sets netem on what flows towards the viewer only ("eth1") or towards rtcam ("eth0").
    pub fn netem_on(&mut self, dev: &str, spec: &str) {
        if spec.is_empty() {
            self.guest(&format!("tc qdisc del dev {dev} root 2>/dev/null; true"));
        } else {
            self.guest(&format!("tc qdisc replace dev {dev} root netem {spec}"));
        }
    }

    /// Runs a shell line in the guest; panics unless it succeeds.
    pub fn guest(&mut self, line: &str) {
        self.sent += 1;
        let n = self.sent;
        writeln!(self.console, "{line}").expect("router console open");
        self.console.flush().unwrap();
        let answer = format!("RTCAM-ROUTER: {n} rc=");
        let reply = self
            .wait_line(COMMAND_WITHIN, |l| l.contains(&answer))
            .unwrap_or_else(|| panic!("router did not answer {line:?}:\n{}", self.log.join("\n")));
        assert!(
            reply.ends_with("rc=0"),
            "router: {line:?} failed:\n{}",
            self.log.join("\n")
        );
    }

    /// A blocking call from async code: `block_in_place` keeps the runtime's other tasks going.
    pub fn netem_async(&mut self, spec: &str) {
        tokio::task::block_in_place(|| self.netem(spec));
    }

    pub fn netem_on_async(&mut self, dev: &str, spec: &str) {
        tokio::task::block_in_place(|| self.netem_on(dev, spec));
    }

    fn wait_line(&mut self, within: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.log.push(line.clone());
            if want(&line) {
                return Some(line);
            }
        }
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        // qemu first: its taps go with it; the namespaces are deleted by their own guards.
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}
