//! Network namespaces for tests that need more than loopback: NATs, lossy links, a "public"
//! network. Each namespace is a guard that deletes itself (and with it every interface and
//! nftables rule inside) when dropped, so a failing test leaves nothing behind.
//!
//! Names must be unique on the machine: tests of different files run at once, so callers
//! prefix names with their test's name. Linux caps interface names at 15 bytes.

use std::process::{Command, Output, Stdio};

/// Runs a command, panicking with its stderr when it fails: setup steps either work or the
/// test cannot mean anything.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// Whether this machine lets the test create namespaces (root, iproute2 present).
pub fn available() -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        && is_root()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A network namespace with loopback up. Deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        // A namespace left by a killed earlier run would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", name]);
        let ns = Netns { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip …` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Any command inside the namespace, waited for.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command to spawn inside the namespace (a long-running server or viewer).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name.as_str()]).arg(program);
        c
    }

    /// The same for tokio.
    pub fn tokio_command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", self.name.as_str()]).arg(program);
        c
    }

    /// Runs `f` on a new thread inside the namespace and returns its result. Threads it
    /// starts (a tokio runtime's workers, GStreamer's) inherit the namespace, so rtcam can run
    /// in-process behind a test network; the calling thread stays where it was.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        enter_named(&self.name, f)
    }

    /// Loads an nftables ruleset (`nft -f -` syntax) into the namespace.
    pub fn nft(&self, ruleset: &str) {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft is installed (apt-get install nftables)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Lets the namespace route between its interfaces.
    pub fn forward(&self) {
        self.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    }

    /// Default route through `via`.
    pub fn route_default(&self, via: &str) {
        self.ip(&["route", "add", "default", "via", via]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth ends (and their peers) and its rules.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Joins two namespaces with a veth pair: `a_if` (address `a_cidr`, e.g. "10.1.0.1/24") in `a`,
/// `b_if` (`b_cidr`) in `b`, both up.
pub fn link(a: &Netns, a_if: &str, a_cidr: &str, b: &Netns, b_if: &str, b_cidr: &str) {
    run(
        "ip",
        &[
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ],
    );
    a.ip(&["addr", "add", a_cidr, "dev", a_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["addr", "add", b_cidr, "dev", b_if]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A masquerading NAT in `router` for traffic leaving through `out_if` (nftables).
pub fn masquerade(router: &Netns, out_if: &str) {
    router.forward();
    router.nft(&format!(
        "table ip nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat;\n    oifname \"{out_if}\" masquerade\n  }}\n}}\n"
    ));
}

/// [`Netns::enter`] by the namespace's name, for a closure that owns the guard itself.
pub fn enter_named<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns takes no pointers; on a valid namespace fd it changes only this
        // thread's network namespace, a thread made for it that runs `f` alone.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Port forwarding in `router`: TCP to `ports` arriving on `in_if` goes on to `to` (nftables
/// DNAT), as a home router forwards its web port to a camera behind it.
pub fn forward_tcp(router: &Netns, in_if: &str, ports: &[u16], to: &str) {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    router.nft(&format!(
        "table ip portfwd {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n    iifname \"{in_if}\" tcp dport {{ {} }} dnat to {to}\n  }}\n}}\n",
        ports.join(", ")
    ));
}

/// Drops unsolicited packets addressed to `router` itself on `in_if`, as a home router's
/// firewall does. Besides realism this matters for hole punching: a peer's connectivity
/// check that arrives before the inside host has sent anything would otherwise leave a
/// conntrack entry for its address pair, and the host's own packets to that peer would then
/// be masqueraded to a different port than the one STUN reported. Dropped in the input hook,
/// such a packet's conntrack entry is never confirmed, so the mapping stays the same for every
/// destination (endpoint-independent, as RFC 4787 asks of NATs).
pub fn drop_unsolicited(router: &Netns, in_if: &str) {
    router.nft(&format!(
        "table ip firewall {{\n  chain input {{\n    type filter hook input priority filter;\n    iifname \"{in_if}\" ct state new drop\n  }}\n}}\n"
    ));
}

/// Port forwarding of one port in `router`: what arrives on `in_if` for `proto` ("udp" or
/// "tcp") `port` goes on to `to` (nftables DNAT), as a home router forwards a camera's media
/// port to it. Replies go back out through the same conntrack entry, from `port` on the
/// router's outside address. The packets routed to and from `to`'s `port` are counted
/// ([`forward_counts`]). Each protocol's forward has an nftables table of its own (`udpfwd`,
/// `tcpfwd`), so that [`unforward`] takes that forward away and leaves the rest of the router
/// as it was.
pub fn forward_port(router: &Netns, proto: &str, in_if: &str, port: u16, to: &str) {
    router.nft(&format!(
        "table ip {proto}fwd {{\n  counter inward {{ }}\n  counter outward {{ }}\n  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n    iifname \"{in_if}\" {proto} dport {port} dnat to {to}\n  }}\n  chain forward {{\n    type filter hook forward priority filter;\n    ip daddr {to} {proto} dport {port} counter name inward\n    ip saddr {to} {proto} sport {port} counter name outward\n  }}\n}}\n"
    ));
}

/// Packets [`forward_port`]'s router has routed to the forwarded host's `proto` port and from
/// it, so far: proof that a conversation went through the forward.
pub fn forward_counts(router: &Netns, proto: &str) -> (u64, u64) {
    let table = format!("{proto}fwd");
    (
        counted(router, &table, "inward"),
        counted(router, &table, "outward"),
    )
}

/// Takes away the `proto` forward [`forward_port`] made. Flows it already forwarded keep their
/// conntrack entries (until they time out), as on any router; a new flow, from a port the
/// router has not seen, arrives at the router itself.
pub fn unforward(router: &Netns, proto: &str) {
    router.nft(&format!("delete table ip {proto}fwd\n"));
}

/// The nftables table [`block_udp`] keeps its rule in.
const UDP_BLOCK_TABLE: &str = "noudp";

/// Drops every UDP packet `router` would forward from `in_if`, as a network that lets only
/// TCP out (a corporate firewall, some guest networks). The dropped packets are counted
/// ([`udp_blocked`]).
pub fn block_udp(router: &Netns, in_if: &str) {
    router.nft(&format!(
        "table ip {UDP_BLOCK_TABLE} {{\n  counter dropped {{ }}\n  chain forward {{\n    type filter hook forward priority filter;\n    iifname \"{in_if}\" meta l4proto udp counter name dropped drop\n  }}\n}}\n"
    ));
}

/// UDP packets [`block_udp`]'s router has dropped so far: proof that something tried.
pub fn udp_blocked(router: &Netns) -> u64 {
    counted(router, UDP_BLOCK_TABLE, "dropped")
}

/// The packets a named nftables counter in `table` has counted.
fn counted(router: &Netns, table: &str, name: &str) -> u64 {
    let out = router.exec("nft", &["list", "counter", "ip", table, name]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "packets")
        .and_then(|_| words.next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {text}"))
}
