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
