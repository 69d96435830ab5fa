//! coturn (Debian's `turnserver`) as the STUN and TURN server of NAT tests: on the host's
//! loopback for the emulated board, or inside a "public" network namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How coturn checks TURN credentials.
pub enum TurnAuth<'a> {
    /// Long-term credentials: one fixed user and password.
    User { name: &'a str, password: &'a str },
    /// TURN REST credentials (`use-auth-secret`): usernames `<expiry>:<label>`, passwords
    /// HMAC'd with this shared secret.
    Secret(&'a str),
}

/// A running turnserver, killed when dropped.
pub struct Coturn {
    child: Child,
    pub log: PathBuf,
}

/// The password of [`Coturn::for_qemu_board`]'s user `board`.
pub const BOARD_RELAY_PASSWORD: &str = "relay-secret";

impl Coturn {
    /// The relay an emulated board behind qemu's user-mode NAT streams through: both ends are
    /// on the host's loopback (the viewer, and the board as qemu presents it), with the user
    /// `board` / [`BOARD_RELAY_PASSWORD`].
    pub fn for_qemu_board(port: u16, dir: &Path) -> Coturn {
        Coturn::start(
            Command::new("turnserver"),
            "127.0.0.1",
            port,
            TurnAuth::User {
                name: "board",
                password: BOARD_RELAY_PASSWORD,
            },
            dir,
            &["--allow-loopback-peers"],
        )
    }

    /// Starts `turnserver` through `command` (a plain `Command::new("turnserver")`, or one
    /// that enters a namespace first), listening and relaying on `ip`, and waits until it
    /// listens (its log says so).
    pub fn start(
        mut command: Command,
        ip: &str,
        port: u16,
        auth: TurnAuth<'_>,
        dir: &Path,
        extra: &[&str],
    ) -> Coturn {
        let log = dir.join(format!("turn-{port}.log"));
        command
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint"])
            // Verbose: the tests read what it did with each request from its log.
            .arg("--verbose")
            .args(["--realm", "rtcam"])
            .args(["--listening-ip", ip, "--relay-ip", ip])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", "49152", "--max-port", "65535"])
            // One file under the given name, not one per process and day.
            .arg("--simple-log")
            .arg("--log-file")
            .arg(&log)
            // Its own pid file and user database: several turnservers may run at once, and
            // the packaged defaults under /var are shared.
            .arg("--pidfile")
            .arg(dir.join(format!("turn-{port}.pid")))
            .arg("--db")
            .arg(dir.join(format!("turndb-{port}")))
            .args(extra);
        match auth {
            TurnAuth::User { name, password } => {
                command
                    .arg("--lt-cred-mech")
                    .args(["--user", &format!("{name}:{password}")]);
            }
            TurnAuth::Secret(secret) => {
                command
                    .arg("--use-auth-secret")
                    .args(["--static-auth-secret", secret]);
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver is installed (apt-get install coturn)");
        let turn = Coturn { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !turn.log_text().contains("Total General servers") {
            assert!(
                Instant::now() < deadline,
                "turnserver did not start:\n{}",
                turn.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        turn
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
