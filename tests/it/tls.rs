//! MQTT over TLS against mosquitto: the broker's certificate is verified against a CA file, and
//! rtcam logs in with a client certificate where the broker requires one.

use crate::common;

use common::{free_port, test_config, Probe};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=rtcam test CA",
        ],
    );
    for (name, cn, ext) in [
        (
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "rtcam-tls", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

struct TlsMosquitto {
    child: Child,
    plain: u16,
    tls: u16,
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mosquitto with a plain listener (for the test's own probe) and a TLS listener that requires
/// a client certificate signed by the CA.
fn start_mosquitto(dir: &Path) -> TlsMosquitto {
    let (plain, tls) = (free_port(), free_port());
    let d = dir.display();
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!(
            // mosquitto started as root drops to its own user, which could not read the keys
            // in this private temporary directory; `user root` keeps it (no effect otherwise).
            "user root\nper_listener_settings true\npersistence false\n\
             listener {plain} 127.0.0.1\nallow_anonymous true\n\
             listener {tls} 127.0.0.1\nallow_anonymous false\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nuse_identity_as_username true\n"
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto is installed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", tls)).is_err() {
        if Instant::now() > deadline {
            let mut child = child;
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mosquitto did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    TlsMosquitto { child, plain, tls }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_verified_broker_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let broker = start_mosquitto(dir.path());
    let d = dir.path().display();
    let status_topic = "rtcam/tls-ok/status".to_string();
    let probe = Probe::connect(
        ("127.0.0.1", broker.plain),
        std::slice::from_ref(&status_topic),
    )
    .await;

    let mut config = test_config("tls-ok");
    config.mqtt.url = format!("mqtts://127.0.0.1:{}", broker.tls);
    config.mqtt.ca_file = format!("{d}/ca.pem");
    config.mqtt.client_cert_file = format!("{d}/client.pem");
    config.mqtt.client_key_file = format!("{d}/client.key");
    common::init_logs();
    let app = rtcam::app::App::start(config, rtcam::config::Origin::BuiltIn)
        .await
        .unwrap();
    assert!(
        app.wait_connected(Duration::from_secs(10)).await,
        "connected over TLS with a client certificate"
    );
    probe
        .wait_json(&status_topic, Duration::from_secs(5), |v| {
            v["state"] == "online"
        })
        .await
        .expect("status published through the TLS connection");
    app.stop().await;

    // Without the client certificate the broker refuses rtcam; rtcam keeps trying and says so.
    let mut config = test_config("tls-nocert");
    config.mqtt.url = format!("mqtts://127.0.0.1:{}", broker.tls);
    config.mqtt.ca_file = format!("{d}/ca.pem");
    let app = rtcam::app::App::start(config, rtcam::config::Origin::BuiltIn)
        .await
        .unwrap();
    assert!(
        !app.wait_connected(Duration::from_secs(2)).await,
        "refused without a client certificate"
    );
    app.stop().await;

    // A CA that did not sign the broker's certificate: the broker is not trusted.
    let other = tempfile::tempdir().unwrap();
    make_pki(other.path());
    let mut config = test_config("tls-wrongca");
    config.mqtt.url = format!("mqtts://127.0.0.1:{}", broker.tls);
    config.mqtt.ca_file = format!("{}/ca.pem", other.path().display());
    config.mqtt.client_cert_file = format!("{d}/client.pem");
    config.mqtt.client_key_file = format!("{d}/client.key");
    let app = rtcam::app::App::start(config, rtcam::config::Origin::BuiltIn)
        .await
        .unwrap();
    assert!(
        !app.wait_connected(Duration::from_secs(2)).await,
        "a broker with an unknown CA is refused"
    );
    app.stop().await;
}
