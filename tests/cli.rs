//! The `rtcam` binary's configuration commands, run as a user runs them.

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
    // The [mqtt] defaults; only HTTP moves off its fixed ports so parallel tests do not collide.
    let rest =
        "[http]\nlisten = \"127.0.0.1:0\"\nhttps_listen = \"\"\n\n[source]\nkind = \"test\"\n";
    std::fs::write(&path, rest).unwrap();
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
