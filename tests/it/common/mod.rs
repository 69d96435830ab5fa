//! Shared helpers for rtcam's integration tests: start rtcam, a mosquitto broker, MQTT probes
//! and WebRTC viewers, all for real on loopback.

#![allow(dead_code)]

pub mod commander;
pub mod coturn;
pub mod http;
pub mod lossy;
pub mod netns;
pub mod raw_mqtt;
/// The Rust WebRTC viewer (tests/viewer/), shared with the soak and the benchmark.
pub use rtcam_viewer as viewer;

use rtcam::app::App;
use rtcam::config::{Config, SourceKind};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// One browser at a time, across the test binary's modules: on a 2-core machine, parallel
/// Chromiums starve each other's decoders and the tests then fail on timeouts that say nothing
/// about the page.
pub static BROWSER: Mutex<()> = Mutex::new(());
use std::time::{Duration, Instant};

pub use rtcam_viewer::ports::free_port;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RTCAM_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(rtcam::logging::DEFAULT_FILTER)
            }),
        )
        .with_test_writer()
        .try_init();
}

/// The broker user the tests' probes and commanders log in as: on the embedded broker only
/// broker users may command and read other clients' topics (docs/security.md); a mosquitto
/// without a password file takes any login.
pub const OPERATOR: (&str, &str) = ("operator", "operator-test-password");

/// A users file with [`OPERATOR`], made once per test process.
pub fn operator_users_file() -> String {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("rtcam-test-users-{}", std::process::id()));
        std::fs::write(
            &path,
            rtcam::gate::users::hash_line(OPERATOR.0, OPERATOR.1) + "\n",
        )
        .unwrap();
        path.display().to_string()
    })
    .clone()
}

/// A test configuration: test pattern at 320x240 (cheap to encode on CI), embedded broker on a
/// free port with the [`OPERATOR`] user, HTTP on a free port.
pub fn test_config(device: &str) -> Config {
    let mut c = Config::default();
    c.device.id = device.into();
    c.mqtt.users_file = operator_users_file();
    c.mqtt.embedded_listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    c.mqtt.embedded_listen_v5 = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    // HTTPS has tests of its own, which give it a port and a state directory.
    c.http.https_listen = String::new();
    c.source.kind = SourceKind::Test;
    c.source.width = 320;
    c.source.height = 240;
    c.source.fps = 30;
    // Most tests look at a running pipeline without a viewer (status, snapshots, commands);
    // the on-demand behaviour has tests of its own.
    c.source.always_on = true;
    c.encoder.bitrate_kbps = 800;
    c.encoder.keyframe_interval = 30;
    c.webrtc.udp_addrs = vec!["127.0.0.1".parse().unwrap()];
    // Every session on one port, as by default; each rtcam of the test process on its own.
    c.webrtc.udp_port = free_port();
    // The same number for ICE-TCP (`free_port` is free for both), as by default.
    c.webrtc.tcp_port = c.webrtc.udp_port;
    c
}

pub struct Running {
    pub app: App,
    pub broker: (String, u16),
}

impl Running {
    pub fn root(&self) -> String {
        self.app.topics().root().to_string()
    }
    pub fn broker(&self) -> (&str, u16) {
        (self.broker.0.as_str(), self.broker.1)
    }
}

/// Starts rtcam in this process and waits until it is connected to its broker.
pub async fn start(config: Config) -> Running {
    init_logs();
    let broker = if config.mqtt.url == "embedded" {
        ("127.0.0.1".to_string(), config.mqtt.embedded_listen.port())
    } else {
        let url = rtcam::signalling::mqtt::BrokerUrl::parse(&config.mqtt.url).unwrap();
        (url.host, url.port)
    };
    let app = App::start(config, rtcam::config::Origin::BuiltIn)
        .await
        .expect("rtcam starts");
    assert!(
        app.wait_connected(Duration::from_secs(10)).await,
        "rtcam connected to its broker"
    );
    Running { app, broker }
}

/// The rtcam binary, as a process of its own, on `config` (in a file in its own directory);
/// its output is dropped. Killed when dropped, so a failing test leaves no rtcam behind.
pub struct RtcamProcess {
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for RtcamProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_rtcam(config: &Config) -> RtcamProcess {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcam.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_rtcam"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the rtcam binary starts");
    RtcamProcess { child, _dir: dir }
}

/// A mosquitto server on a free port, stopped when dropped.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_on(free_port())
    }

    /// On a given port: a broker that comes back where the old one was.
    pub fn start_on(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a [`Probe`] received: topic and payload, in order.
pub type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A plain MQTT client that publishes raw payloads and records what comes back.
pub struct Probe {
    pub client: AsyncClient,
    pub seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    pub async fn connect(broker: (&str, u16), filters: &[String]) -> Probe {
        let mut opts = MqttOptions::new(
            format!("probe-{}", rand::random::<u32>()),
            broker.0,
            broker.1,
        );
        opts.set_credentials(OPERATOR.0, OPERATOR.1);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (subacked_tx, mut subacked) = tokio::sync::mpsc::unbounded_channel();
        for f in filters {
            client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        }
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subacked_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => s2
                        .lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec())),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for _ in filters {
            tokio::time::timeout(Duration::from_secs(10), subacked.recv())
                .await
                .expect("suback");
        }
        Probe { client, seen, task }
    }

    pub async fn send(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Waits for a JSON message on `topic` that `pred` accepts.
    pub async fn wait_json(
        &self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let found = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| t == topic)
                .filter_map(|(_, p)| serde_json::from_slice::<Value>(p).ok())
                .find(|v| pred(v));
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits for `{"type":"error","code":code}` on `topic`.
    pub async fn wait_error(&self, topic: &str, code: &str) -> Value {
        self.wait_json(topic, Duration::from_secs(15), |v| {
            v["type"] == "error" && v["code"] == code
        })
        .await
        .unwrap_or_else(|| {
            let seen: Vec<String> = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .map(|(t, p)| format!("{t}: {}", String::from_utf8_lossy(p)))
                .collect();
            panic!("no {code} error on {topic}; saw {seen:#?}")
        })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The report a `tests/browser/*.mjs` script prints: the last line of its stdout that is JSON
/// (Null when there is none, e.g. the script crashed).
pub fn script_report(stdout: &[u8]) -> serde_json::Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Adds the one video transceiver a viewer has: it receives, never sends.
pub async fn add_recvonly_video(
    pc: &(impl webrtc::peer_connection::PeerConnection + ?Sized),
) -> Result<(), String> {
    rtcam_viewer::add_recvonly(pc, rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video)
        .await
        .map_err(|e| e.to_string())
}

/// A real offer from a real peer (recvonly video), for sessions without a viewer behind them.
pub async fn real_offer_sdp() -> String {
    use webrtc::peer_connection::{
        MediaEngine, PeerConnection, PeerConnectionBuilder, RTCConfigurationBuilder,
    };
    struct NoEvents;
    #[async_trait::async_trait]
    impl webrtc::peer_connection::PeerConnectionEventHandler for NoEvents {}
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_handler(Arc::new(NoEvents))
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .build()
        .await
        .unwrap();
    add_recvonly_video(&pc).await.unwrap();
    let sdp = pc.create_offer(None).await.unwrap().sdp;
    let _ = pc.close().await;
    sdp
}
