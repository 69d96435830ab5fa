//! The `rtcam` binary's configuration commands, run as a user runs them.

use crate::common;
use std::process::Command;

fn rtcam(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .args(args)
        .output()
        .expect("rtcam runs")
}

#[test]
fn example_config_is_printed_and_passes_check() {
    let out = rtcam(&["config", "example"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, std::fs::read_to_string("rtcam.example.toml").unwrap());
    let config = rtcam::config::Config::parse(&text, "example".as_ref()).expect("example parses");
    assert_eq!(config.mqtt.url, "embedded");

    let out = rtcam(&["config", "check", "rtcam.example.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn unknown_key_fails_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    std::fs::write(
        &path,
        "[device]\nid = \"cam\"\n\n[encoder]\nbitrate_kbps = 1000\nbitrat = 5\n",
    )
    .unwrap();
    let out = rtcam(&["config", "check", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:6:", path.display())), "{err}");
    assert!(err.contains("bitrat"), "{err}");

    // Running with it refuses to start, with the same message.
    let out = rtcam(&["--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(":6:"));
}

/// `[webrtc] public_ips` entries are IP addresses (a config error with file, line and key
/// otherwise), and need the shared port they are announced with.
#[test]
fn public_ips_are_addresses_and_need_the_shared_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    std::fs::write(
        &path,
        "[device]\nid = \"cam\"\n\n[webrtc]\nudp_port = 8555\npublic_ips = [\"203.0.113.7\", \"camera.example.org\"]\n",
    )
    .unwrap();
    let out = rtcam(&["config", "check", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:6:", path.display())), "{err}");
    assert!(err.contains("public_ips"), "{err}");

    std::fs::write(
        &path,
        "[device]\nid = \"cam\"\n\n[webrtc]\nudp_port = 0\ntcp_port = 0\npublic_ips = [\"203.0.113.7\"]\n",
    )
    .unwrap();
    let out = rtcam(&["config", "check", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("webrtc.public_ips"), "{err}");
    assert!(err.contains("webrtc.udp_port"), "{err}");
}

/// A WebRTC port another program holds stops rtcam at start, naming the address and the key:
/// it is the port a router forwards, so rtcam does not quietly take another.
#[test]
fn a_webrtc_port_in_use_is_named() {
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    std::fs::write(
        &path,
        format!(
            "[mqtt]\nembedded_listen = \"127.0.0.1:{}\"\nembedded_listen_v5 = \"127.0.0.1:{}\"\n\n\
             [http]\nlisten = \"127.0.0.1:0\"\nhttps_listen = \"\"\n\n[source]\nkind = \"test\"\n\n\
             [webrtc]\nudp_addrs = [\"127.0.0.1\"]\nudp_port = {port}\ntcp_port = 0\n",
            common::free_port(),
            common::free_port(),
        ),
    )
    .unwrap();
    let out = rtcam(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("webrtc.udp_port"), "{err}");
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn missing_config_file_is_named() {
    let out = rtcam(&["config", "check", "/nonexistent/rtcam.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/rtcam.toml"));
}

#[test]
fn a_short_token_secret_is_refused_from_the_file_or_a_credential() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    std::fs::write(
        &path,
        "[device]\nid = \"cam\"\n\n[auth]\nsecret = \"hunter2\"\n",
    )
    .unwrap();
    let out = rtcam(&["config", "check", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: auth.secret: 7 bytes is too short",
            path.display()
        )),
        "{err}"
    );

    // The same secret as a systemd credential stops rtcam (here `rtcam token`, which reads
    // credentials as the service does) before anything starts.
    std::fs::write(&path, "[device]\nid = \"cam\"\n").unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("auth_secret"), "hunter2\n").unwrap();
    for args in [
        vec!["--config", path.to_str().unwrap(), "token"],
        vec!["--config", path.to_str().unwrap()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_rtcam"))
            .args(&args)
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .output()
            .expect("rtcam runs");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("auth_secret holds 7 bytes, too short to sign tokens with"),
            "{args:?}: {err}"
        );
    }
}

/// The embedded broker facing the network with nobody to let in but anonymous viewers is
/// refused at start, naming the key and the way out; `rtcam passwd` makes the users file that
/// lets it start.
#[test]
fn a_broker_listening_beyond_this_machine_needs_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    let config = |users: &str| {
        format!(
            "[mqtt]\nembedded_listen = \"0.0.0.0:0\"\nembedded_listen_v5 = \"127.0.0.1:0\"\n{users}\n\
             [http]\nlisten = \"127.0.0.1:0\"\nhttps_listen = \"\"\n\n[source]\nkind = \"test\"\n"
        )
    };
    std::fs::write(&path, config("")).unwrap();
    let out = rtcam(&["--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "mqtt.embedded_listen = \"0.0.0.0:0\" lets other machines reach the embedded broker"
        ) && err.contains("mqtt.users_file")
            && err.contains("rtcam passwd"),
        "{err}"
    );

    let users = dir.path().join("users");
    let mut passwd = Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .args(["passwd", users.to_str().unwrap(), "homeassistant"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    passwd
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long password\n")
        .unwrap();
    assert!(passwd.wait().unwrap().success());
    let hashed = std::fs::read_to_string(&users).unwrap();
    assert!(hashed.starts_with("homeassistant:$7$") && !hashed.contains("a long password"));
    let loaded = rtcam::gate::users::Users::load(&users).unwrap();
    assert!(loaded.verify("homeassistant", "a long password"));
}

/// A first start on a machine that already runs a broker on 1883 (Home Assistant's mosquitto):
/// with the defaults, rtcam's embedded broker takes a free port and says which, and how to pin
/// one; the same address written in the config is the user's choice, and a taken one stops
/// rtcam naming the key.
/// The config sections of [`a_broker_already_on_1883_moves_the_default_but_not_a_chosen_address`]
/// other than `[mqtt]`: HTTP and WebRTC on ports no other test takes.
fn not_mqtt_on_free_ports() -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nhttps_listen = \"\"\n\n[source]\nkind = \"test\"\n\n\
         [webrtc]\nudp_port = {port}\ntcp_port = {port}\n",
        port = common::free_port()
    )
}

#[test]
fn a_broker_already_on_1883_moves_the_default_but_not_a_chosen_address() {
    // Hold 1883 ourselves if it is free; if another program holds it, it is taken all the same.
    let _held = match std::net::TcpListener::bind("127.0.0.1:1883") {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!("127.0.0.1:1883 is already held by another program; testing against it");
            None
        }
        Err(e) => {
            eprintln!("skipped: cannot bind 127.0.0.1:1883 to occupy it: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    // The [mqtt] defaults; only HTTP and WebRTC move off their fixed ports so parallel tests
    // do not collide.
    let rest = not_mqtt_on_free_ports();
    std::fs::write(&path, &rest).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .args(["--config", path.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = String::new();
    let moved = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("127.0.0.1:1883 is taken") {
                    break line;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no word about the taken port within 30 s:\n{seen}");
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        moved.contains("set mqtt.embedded_listen in the config"),
        "{moved}"
    );
    let port: u16 = moved
        .split("on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in: {moved}"));
    assert_ne!(port, 1883);

    // The same address, written in the config, stops rtcam with the key to change.
    std::fs::write(
        &path,
        format!("[mqtt]\nembedded_listen = \"127.0.0.1:1883\"\n\n{rest}"),
    )
    .unwrap();
    let out = rtcam(&["--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mqtt.embedded_listen = \"127.0.0.1:1883\": another program")
            && err.contains("set mqtt.embedded_listen to a free address"),
        "{err}"
    );
}

/// A configuration rtcam cannot use exits with 78 (EX_CONFIG), which the unit's
/// `RestartPreventExitStatus=` names so systemd does not restart it into the same error.
#[test]
fn a_config_error_exits_with_ex_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    std::fs::write(&path, "[encoder]\nbitrat = 5\n").unwrap();
    let path = path.to_str().unwrap();
    for args in [
        vec!["config", "check", path],
        vec!["--config", path],
        vec!["--config", "/nonexistent/rtcam.toml"],
    ] {
        let out = rtcam(&args);
        assert_eq!(out.status.code(), Some(78), "{args:?}");
    }
    let unit = std::fs::read_to_string("systemd/rtcam.service").unwrap();
    assert!(unit.lines().any(|l| l == "RestartPreventExitStatus=78"));
}

/// rtcam started with its HTTP port taken: it logs its first line, then stops with an error
/// that is not a configuration error. Returns its exit status and stderr.
fn run_with_a_busy_port(setup: impl FnOnce(&mut Command)) -> (Option<i32>, String) {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    std::fs::write(
        &path,
        format!(
            "[mqtt]\nembedded_listen = \"127.0.0.1:0\"\nembedded_listen_v5 = \"127.0.0.1:0\"\n\n\
             [http]\nlisten = \"{}\"\nhttps_listen = \"\"\n\n[source]\nkind = \"test\"\n",
            busy.local_addr().unwrap()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtcam"));
    cmd.args(["--config", path.to_str().unwrap()])
        .env_remove("RTCAM_LOG")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    setup(&mut cmd);
    let out = cmd.output().expect("rtcam runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether `line` starts with an RFC 3339 timestamp, as the text log's lines do.
fn timestamped(line: &str) -> bool {
    line.len() > 20 && line.as_bytes()[..4].iter().all(u8::is_ascii_digit) && &line[4..5] == "-"
}

#[test]
fn an_error_names_each_cause_once() {
    let (code, err) = run_with_a_busy_port(|_| {});
    assert_eq!(code, Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("rtcam: cannot listen for HTTP (http.listen) on "),
        "{err}"
    );
    assert_eq!(last.matches("(os error 98)").count(), 1, "{err}");
}

#[test]
fn log_to_a_pipe_is_plain_text_with_timestamps() {
    // A JOURNAL_STREAM that names another file (inherited from a service, say) is ignored.
    for journal_stream in [None, Some("1:2")] {
        let (_, err) = run_with_a_busy_port(|cmd| {
            cmd.env("TERM", "xterm-256color");
            if let Some(v) = journal_stream {
                cmd.env("JOURNAL_STREAM", v);
            }
        });
        assert!(!err.contains('\x1b'), "ANSI escapes in: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            timestamped(first) && first.contains(" INFO rtcam: rtcam "),
            "{journal_stream:?}: {err}"
        );
    }
}

/// stderr that is the file JOURNAL_STREAM names, as systemd sets it up: rtcam logs to the
/// journal's socket, or, where there is none (as in a container), plain text without colour
/// or a timestamp of its own, since the journal stamps each line.
#[test]
fn log_under_systemd_has_no_colour_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let (code, _) = run_with_a_busy_port(|cmd| {
        cmd.env("JOURNAL_STREAM", &stream)
            .env("TERM", "xterm-256color")
            .stderr(file);
    });
    assert_eq!(code, Some(1));
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!err.contains('\x1b'), "ANSI escapes in: {err}");
    let journal_socket = std::path::Path::new("/run/systemd/journal/socket").exists();
    let logged = err.lines().find(|l| l.contains("rtcam: rtcam "));
    if journal_socket {
        // The log, the final error too, went to the journal.
        assert!(logged.is_none(), "{err}");
    } else {
        let line = logged.unwrap_or_else(|| panic!("no log line in: {err}"));
        assert!(!timestamped(line), "{err}");
        assert!(line.trim_start().starts_with("INFO rtcam: rtcam "), "{err}");
    }
    // The error that stopped rtcam, at error priority (`<3>`) where journald reads stderr.
    let last = err.lines().last().unwrap_or_default();
    if journal_socket {
        assert!(!last.contains("os error 98"), "{err}");
    } else {
        assert!(
            last.starts_with("<3>rtcam: cannot listen for HTTP (http.listen) on "),
            "{err}"
        );
    }
}

/// The files the .deb ships that rtcam generates: the conffile (every key commented out),
/// the manual pages and the shell completions. They are kept in the tree so cross builds can
/// package them without running the board's binary; this fails when the CLI or the example
/// has changed without them (`make packaging-files` writes them again).
#[test]
fn packaged_files_match_what_rtcam_generates() {
    let stale = "out of date: run `make packaging-files`";
    let out = rtcam(&["config", "example", "--commented"]);
    assert!(out.status.success());
    let shipped = std::fs::read_to_string("packaging/rtcam.toml").unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        shipped,
        "packaging/rtcam.toml {stale}"
    );
    // It sets nothing: checked, it gives the defaults.
    let out = rtcam(&["config", "check", "packaging/rtcam.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shipped
        .lines()
        .all(|l| l.is_empty() || l.starts_with(['#', '['])));

    for (shell, file) in [
        ("bash", "rtcam.bash"),
        ("zsh", "_rtcam"),
        ("fish", "rtcam.fish"),
    ] {
        let out = rtcam(&["completions", shell]);
        assert!(out.status.success());
        let shipped = std::fs::read(format!("packaging/completions/{file}")).unwrap();
        assert!(
            out.stdout == shipped,
            "packaging/completions/{file} {stale}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let out = rtcam(&["man", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages = |d: &std::path::Path| {
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let made = pages(dir.path());
    assert!(made.contains(&"rtcam.1".to_string()), "{made:?}");
    assert_eq!(
        made,
        pages("packaging/man".as_ref()),
        "packaging/man {stale}"
    );
    for page in made {
        let made = std::fs::read(dir.path().join(&page)).unwrap();
        let shipped = std::fs::read(format!("packaging/man/{page}")).unwrap();
        assert!(made == shipped, "packaging/man/{page} {stale}");
    }
}

/// The journal itself: in a mount namespace of its own, rtcam finds a socket this test listens
/// on at /run/systemd/journal/socket and sends it native entries, INFO as "informational" (6)
/// and the error that stops it as "err" (3), with nothing on stderr. Needs root (unshare -m);
/// elsewhere it says so and passes.
#[test]
fn log_to_the_journal_socket_with_priorities() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal).unwrap();
    let socket = std::os::unix::net::UnixDatagram::bind(journal.join("socket")).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let log = dir.path().join("stderr");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let rtcam = env!("CARGO_BIN_EXE_rtcam");
    let (code, _) = run_with_a_busy_port(|cmd| {
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        // A fresh /run in the namespace, with the test's directory as /run/systemd/journal.
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
             mount --bind {} /run/systemd/journal && exec \"$0\" \"$@\"",
            journal.display()
        );
        *cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, rtcam])
            .args(args)
            .env_remove("RTCAM_LOG")
            .env_remove("RUST_LOG")
            .env("JOURNAL_STREAM", &stream)
            .stdout(std::process::Stdio::null())
            .stderr(file);
    });
    let err = std::fs::read_to_string(&log).unwrap();
    if err.starts_with("unshare:") || err.starts_with("mount:") {
        eprintln!("skipped: no mount namespace here ({err})");
        return;
    }
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err, "", "stderr is for the journal's stream only");
    let mut entries = Vec::new();
    let mut buf = vec![0; 65536];
    while let Ok(n) = socket.recv(&mut buf) {
        // An empty datagram is the crate's check that the socket is there.
        if n > 0 {
            entries.push(journal_fields(&buf[..n]));
        }
        if entries.iter().any(|e| e["MESSAGE"].contains("os error 98")) {
            break;
        }
    }
    let started = entries
        .iter()
        .find(|e| e["MESSAGE"].contains("rtcam 0.1.0 starting with"))
        .unwrap_or_else(|| panic!("no start entry in {entries:?}"));
    assert_eq!(started["PRIORITY"], "6", "{started:?}");
    assert_eq!(started["SYSLOG_IDENTIFIER"], "rtcam", "{started:?}");
    let failed = entries
        .iter()
        .find(|e| e["MESSAGE"].contains("os error 98"))
        .unwrap_or_else(|| panic!("no error entry in {entries:?}"));
    assert_eq!(failed["PRIORITY"], "3", "{failed:?}");
    assert!(
        failed["MESSAGE"].starts_with("cannot listen for HTTP (http.listen) on "),
        "{failed:?}"
    );
}

/// The fields of a native journal entry: `NAME=value\n`, or `NAME\n`, the value's length
/// (64 bits, little-endian), the value and `\n` (systemd's journal native protocol).
fn journal_fields(mut data: &[u8]) -> std::collections::HashMap<String, String> {
    let mut fields = std::collections::HashMap::new();
    while let Some(eol) = data.iter().position(|&b| b == b'\n') {
        let line = &data[..eol];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let name = String::from_utf8_lossy(&line[..eq]).into_owned();
            fields.insert(name, String::from_utf8_lossy(&line[eq + 1..]).into_owned());
            data = &data[eol + 1..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let rest = &data[eol + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8_lossy(&rest[8..8 + len])
                .trim_end()
                .to_owned();
            fields.insert(name, value);
            data = &rest[8 + len + 1..];
        }
    }
    fields
}
