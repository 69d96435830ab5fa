//! Wiring: starts every part in order, and stops them in the reverse order.
//!
//! Start: broker (if embedded) → HTTP listener → media → session manager → MQTT client.
//! Stop: sessions say bye and close → media pipeline to NULL → retained offline status and MQTT
//! disconnect → HTTP server.

use crate::auth::Authority;
use crate::config::{Config, ConfigError, Origin, ViewerCommands};
use crate::control::exec::{Controller, Requester};
use crate::control::{ha, telemetry};
use crate::gate::policy::Policy;
use crate::gate::users::Users;
use crate::gate::{Gate, GateConfig};
use crate::health::Heartbeat;
use crate::media::{self, Media};
use crate::session::adapt::{Adaptation, Limits as AdaptLimits};
use crate::session::peer::PeerFactory;
use crate::session::table::{Limits, SessionTable};
use crate::session::{SessionManager, Sessions};
use crate::signalling::mqtt::{self, BrokerUrl, MqttLink};
use crate::signalling::protocol::{self, Status, Topics};
use crate::{broker, http};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A running rtcam.
pub struct App {
    device_id: String,
    topics: Topics,
    http_addr: SocketAddr,
    /// The HTTPS door, if `[http] https_listen` is on.
    https: Option<Https>,
    media: Media,
    mqtt_connected: watch::Receiver<bool>,
    viewers: watch::Receiver<usize>,
    /// What rtcam publishes as its status (source, encoder, viewers), for systemd's STATUS=.
    status: watch::Receiver<Status>,
    /// The liveness of the loops the systemd watchdog vouches for.
    heartbeats: Vec<Heartbeat>,
    controller: Controller,
    /// Each part has its own token so shutdown can stop them in order.
    sessions_stop: CancellationToken,
    control_stop: CancellationToken,
    media_stop: CancellationToken,
    mqtt_stop: CancellationToken,
    http_stop: CancellationToken,
    sessions_task: JoinHandle<()>,
    media_task: JoinHandle<()>,
    mqtt_task: JoinHandle<()>,
    http_task: JoinHandle<()>,
    status_task: JoinHandle<()>,
    control_tasks: Vec<JoinHandle<()>>,
    /// The RTSP door, with `[rtsp] enabled`.
    rtsp: Option<crate::rtsp::RtspDoor>,
}

/// What each part of rtcam makes of its settings, checked before anything starts: the
/// configuration has checked its own shapes when it was read; these are the values only the
/// part using them can judge. `rtcam config check`, every command that reads the
/// configuration, [`App::start`] and `reload` run them.
pub fn check_config(config: &Config, origin: &Origin) -> Result<(), ConfigError> {
    protocol::check_config(config)
        .and_then(|()| BrokerUrl::check_config(&config.mqtt))
        .and_then(|()| media::encoder::check_config(&config.encoder))
        .map_err(|refusal| ConfigError::Refused {
            origin: origin.clone(),
            refusal,
        })
}

impl App {
    pub async fn start(config: Config, origin: Origin) -> anyhow::Result<App> {
        check_config(&config, &origin)?;
        // `/metrics`' uptime counts from here.
        let started = std::time::Instant::now();
        let device_id = config.device_id();
        let topics = Topics::new(&config.mqtt.prefix, &device_id);

        let client_id = if config.mqtt.client_id.is_empty() {
            default_client_id(&device_id)
        } else {
            config.mqtt.client_id.clone()
        };
        // `reload` sends a new secret down this channel; every part holding the authority
        // verifies with it from then on.
        let (token_secret, secret_in_force) = watch::channel(config.auth.secret.clone());
        let authority = (!config.auth.secret.is_empty())
            .then(|| Authority::following(secret_in_force, &device_id));
        let http_stop = CancellationToken::new();

        // The broker rtcam's own client connects to, and what the page's `/mqtt` reaches: the
        // embedded broker through the gate, or an external broker's plain-TCP port as it is
        // (that broker's own ACL decides, docs/security.md).
        let mut own_mqtt = config.mqtt.clone();
        let (broker_url, mqtt_door) = if config.mqtt.url == "embedded" {
            let (url, gate) = start_embedded(
                &config,
                &topics,
                &client_id,
                authority.clone(),
                &mut own_mqtt,
                &http_stop,
            )
            .await?;
            (url, Some(http::MqttDoor::Gate(gate)))
        } else {
            let url = BrokerUrl::parse(&config.mqtt.url)?;
            let tcp =
                (!url.tls).then(|| http::MqttDoor::Forward(format!("{}:{}", url.host, url.port)));
            if url.tls && config.http.viewer_broker_url.is_empty() {
                tracing::warn!(
                    "the viewer page cannot reach an mqtts:// broker through /mqtt; \
                     set http.viewer_broker_url to the broker's wss:// URL"
                );
            }
            (url, tcp)
        };

        let listener = http::bind(config.http.listen, "HTTP (http.listen)").await?;
        let http_addr = listener.local_addr()?;
        let hostname = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let own_names = http::tls::own_names(&hostname);
        let (https_listener, https) = match config.http.https_listen() {
            Some(addr) => {
                let (listener, acceptor, info) = open_https(&config.http, addr, &own_names).await?;
                (Some((listener, acceptor)), Some(info))
            }
            None => (None, None),
        };
        if !config.webrtc.turn_urls.is_empty() && config.webrtc.turn_secret.is_empty() {
            anyhow::bail!(
                "webrtc.turn_urls needs the secret the TURN server shares: set webrtc.turn_secret \
                 or the turn_secret credential"
            );
        }
        let ice_servers = Arc::new(crate::turn::IceServers::new(
            config.webrtc.ice_servers.clone(),
            crate::turn::TurnRest::from_config(&config.webrtc),
            &device_id,
        ));
        // The ICE servers are added per request: derived TURN credentials must be fresh.
        let page_config = serde_json::json!({
            "device_id": device_id,
            "prefix": config.mqtt.prefix,
            "broker_url": (!config.http.viewer_broker_url.is_empty()).then_some(&config.http.viewer_broker_url),
            "version": VERSION,
            "video": { "width": config.source.width, "height": config.source.height, "fps": config.source.fps },
            "viewer_commands": config.control.viewer_commands,
            // The page adds an audio transceiver (and a talk button) only when these say so.
            "audio": { "enabled": config.audio.enabled, "talkback": config.audio.enabled && config.audio.talkback },
            // Whether `/mqtt` leads to the gate, which takes the page's token once at connect
            // (offers then carry none); an external broker behind `/mqtt` needs it in offers.
            "mqtt_gate": config.mqtt.url == "embedded",
            // Where the page sends a viewer on plain HTTP who wants to Talk: browsers give the
            // microphone only to secure pages (null: no HTTPS door).
            "https_port": https.as_ref().map(|h| h.addr.port()),
        });
        let media_stop = CancellationToken::new();
        let (media, media_task) = media::start(
            &config.source,
            &config.encoder,
            &config.audio,
            media_stop.clone(),
        )?;

        let factory = Arc::new(PeerFactory::new(&config.webrtc, ice_servers.clone())?);
        let (requests_tx, requests_rx) = mpsc::channel(16);
        let sessions = Sessions::new(requests_tx);
        let (events_tx, events_rx) = mpsc::channel(256);
        let (outgoing_tx, outgoing_rx) = mpsc::channel(1024);
        let (viewers_tx, viewers_rx) = watch::channel(0usize);
        // Status follows the media pipeline and the viewer count.
        let (status_tx, status_rx) = watch::channel(online_status(&media.info().borrow(), 0));
        let (telemetry_tx, telemetry_rx) = watch::channel(telemetry::Telemetry::default());
        let (publications_tx, publications_rx) = mpsc::channel(1024);
        let controller = Controller::new(
            topics.clone(),
            media.clone(),
            sessions.clone(),
            status_rx.clone(),
            telemetry_rx,
            publications_tx.clone(),
            crate::control::exec::Settings {
                config: config.clone(),
                origin,
                check: check_config,
                token_secret,
            },
        );
        let sessions_stop = CancellationToken::new();
        let manager = SessionManager {
            table: SessionTable::new(Limits {
                max_sessions: config.webrtc.max_sessions,
                offers_per_second: config.webrtc.offers_per_second,
                max_candidates: config.webrtc.max_candidates_per_session,
                vp8_fallback: media.vp8_available(),
            }),
            factory,
            media: media.clone(),
            events: events_rx,
            outgoing: outgoing_tx,
            viewers: viewers_tx,
            disconnect_timeout: config.webrtc.disconnect_timeout(),
            requests: requests_rx,
            channels: serve_control_channels(
                controller.clone(),
                viewers_may_change_state(&config),
            ),
            authority: authority.clone(),
            client_rights: match &mqtt_door {
                Some(http::MqttDoor::Gate(gate)) => Some(gate.client_rights()),
                _ => None,
            },
            adaptation: config.encoder.adaptation().map(|(min_kbps, max_kbps)| {
                Adaptation::new(
                    AdaptLimits {
                        min_kbps,
                        max_kbps,
                        follow_ratio: config.encoder.follow_ratio,
                    },
                    config.encoder.bitrate_kbps,
                )
            }),
            ice_servers: ice_servers.clone(),
        };
        let sessions_task = tokio::spawn(manager.run(sessions_stop.clone()));
        let rtsp = start_rtsp(&config, &media, &sessions, authority.clone())?;

        let status_task = tokio::spawn(track_status(media.info(), viewers_rx.clone(), status_tx));

        let options = mqtt::options(&own_mqtt, &broker_url, &client_id, &topics)?;
        let (connected_tx, connected_rx) = watch::channel(false);
        let mqtt_heartbeat = Heartbeat::new("MQTT loop");
        let heartbeats = vec![media.heartbeat(), mqtt_heartbeat.clone()];
        let status = status_rx.clone();

        // The control plane: commands, telemetry, discovery.
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (_discovery_tx, discovery_rx) = watch::channel(ha::publications(
            &topics,
            &device_id,
            VERSION,
            &config.control.ha_prefix,
            config.control.ha_discovery,
        ));
        let control_stop = CancellationToken::new();
        let control_tasks = vec![
            tokio::spawn(
                controller
                    .clone()
                    .serve_mqtt(commands_rx, control_stop.clone()),
            ),
            tokio::spawn(telemetry::run(
                telemetry::Sampler::new(media.clone(), sessions.clone()),
                Duration::from_secs(config.control.telemetry_interval_secs),
                topics.telemetry(),
                telemetry_tx,
                publications_tx,
                control_stop.clone(),
            )),
        ];

        let http_task = tokio::spawn(http::serve(
            http::Doors {
                http: listener,
                https: https_listener,
                redirect_http: config.http.redirect_http,
            },
            http::HttpState {
                page_config,
                ice_servers,
                mqtt_door,
                media: media.clone(),
                metrics: crate::metrics::Metrics {
                    device_id: device_id.clone(),
                    started,
                    media: media.clone(),
                    sessions: sessions.clone(),
                    viewers: viewers_rx.clone(),
                },
                device_id: device_id.clone(),
                authority,
                hosts: http::guard::HostPolicy::new(&own_names, &config.http.allowed_hosts),
            },
            http_stop.clone(),
        ));
        let mqtt_stop = CancellationToken::new();
        let mqtt_task = tokio::spawn(mqtt::run(
            MqttLink {
                options,
                topics: topics.clone(),
                status: status_rx,
                events: events_tx,
                outgoing: outgoing_rx,
                connected: connected_tx,
                heartbeat: mqtt_heartbeat,
                commands: commands_tx,
                publications: publications_rx,
                on_connect: discovery_rx,
            },
            mqtt_stop.clone(),
        ));

        Ok(App {
            device_id,
            topics,
            http_addr,
            https,
            media,
            mqtt_connected: connected_rx,
            viewers: viewers_rx,
            status,
            heartbeats,
            controller,
            sessions_stop,
            control_stop,
            media_stop,
            mqtt_stop,
            http_stop,
            sessions_task,
            media_task,
            mqtt_task,
            http_task,
            status_task,
            control_tasks,
            rtsp,
        })
    }

    /// Where the RTSP door listens, with `[rtsp] enabled`.
    pub fn rtsp_addr(&self) -> Option<SocketAddr> {
        self.rtsp.as_ref().map(|r| r.addr)
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The HTTPS door's address and certificate, if HTTPS is on.
    pub fn https(&self) -> Option<&Https> {
        self.https.as_ref()
    }

    pub fn media(&self) -> &Media {
        &self.media
    }

    pub fn viewers(&self) -> usize {
        *self.viewers.borrow()
    }

    /// The status rtcam publishes (online, source, encoder, viewers); changes as they do.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Whether rtcam's MQTT client is connected now; changes as it does.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.mqtt_connected.clone()
    }

    /// The heartbeats of the media pipeline and the MQTT loop, for the systemd watchdog.
    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        self.heartbeats.clone()
    }

    /// Waits until connected to the broker, up to `timeout`. Returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.mqtt_connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The control plane, for library users and tests that run commands directly.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// Stops in order: sessions (each viewer gets a bye), media, MQTT (offline status), HTTP.
    pub async fn stop(self) {
        self.control_stop.cancel();
        for t in self.control_tasks {
            let _ = t.await;
        }
        self.sessions_stop.cancel();
        let _ = self.sessions_task.await;
        if let Some(rtsp) = self.rtsp {
            let _ = tokio::task::spawn_blocking(move || rtsp.stop()).await;
        }
        self.media_stop.cancel();
        let _ = self.media_task.await;
        self.status_task.abort();
        self.mqtt_stop.cancel();
        let _ = self.mqtt_task.await;
        self.http_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.http_task).await;
    }
}

/// Starts the embedded broker and the gate in front of it on `[mqtt] embedded_listen`(`_v5`);
/// returns where rtcam's own client connects (with its login set in `own_mqtt`) and the gate
/// for `/mqtt`. The gate's listeners stop with `stop`.
async fn start_embedded(
    config: &Config,
    topics: &Topics,
    client_id: &str,
    authority: Option<Authority>,
    own_mqtt: &mut crate::config::MqttConfig,
    stop: &CancellationToken,
) -> anyhow::Result<(BrokerUrl, Gate)> {
    let m = &config.mqtt;
    let users = if m.users_file.is_empty() {
        Users::default()
    } else {
        Users::load(std::path::Path::new(&m.users_file))?
    };
    for (key, addr) in [
        ("mqtt.embedded_listen", m.embedded_listen),
        ("mqtt.embedded_listen_v5", m.embedded_listen_v5),
    ] {
        if !addr.ip().is_loopback() && users.is_empty() && !m.embedded_allow_anonymous {
            anyhow::bail!(
                "{key} = \"{addr}\" lets other machines reach the embedded broker, and it has no \
                 users: add some in mqtt.users_file (`rtcam passwd FILE NAME` makes the file), or \
                 set mqtt.embedded_allow_anonymous = true (clients without a login may only watch)"
            );
        }
    }
    let internal = broker::start(mqtt::MAX_PACKET).await?;
    own_mqtt.username = internal.rtcam_login.0.clone();
    own_mqtt.password = internal.rtcam_login.1.clone();
    let gate = Gate::new(GateConfig {
        policy: Policy::new(
            topics.root(),
            &config.control.ha_prefix,
            client_id,
            crate::gate::MAX_SUBSCRIPTIONS,
        ),
        users,
        authority,
        upstream_v311: internal.v311,
        upstream_v5: internal.v5,
        login: internal.gate_login.clone(),
    });
    let defaults = crate::config::MqttConfig::default();
    let mut bound = Vec::new();
    for (key, addr, chosen) in [
        (
            "mqtt.embedded_listen",
            m.embedded_listen,
            m.embedded_listen_chosen.v311 || m.embedded_listen != defaults.embedded_listen,
        ),
        (
            "mqtt.embedded_listen_v5",
            m.embedded_listen_v5,
            m.embedded_listen_chosen.v5 || m.embedded_listen_v5 != defaults.embedded_listen_v5,
        ),
    ] {
        let listener = bind_mqtt(key, addr, chosen).await?;
        bound.push(listener.local_addr()?);
        tokio::spawn(gate.clone().listen(listener, stop.clone()));
    }
    tracing::info!(
        listen = %bound[0],
        listen_v5 = %bound[1],
        users = gate_users(&m.users_file),
        "embedded MQTT broker running"
    );
    let url = BrokerUrl {
        tls: false,
        host: internal.v5.ip().to_string(),
        port: internal.v5.port(),
    };
    Ok((url, gate))
}

/// The RTSP door, with `[rtsp] enabled`: logins asked for when tokens or broker users are
/// configured (a viewer token, or a users-file user), else open, which it logs.
fn start_rtsp(
    config: &Config,
    media: &Media,
    sessions: &Sessions,
    authority: Option<Authority>,
) -> anyhow::Result<Option<crate::rtsp::RtspDoor>> {
    if !config.rtsp.enabled {
        return Ok(None);
    }
    let users = if config.mqtt.users_file.is_empty() {
        Users::default()
    } else {
        Users::load(std::path::Path::new(&config.mqtt.users_file))?
    };
    let logins = (authority.is_some() || !users.is_empty())
        .then_some(crate::rtsp::Logins { authority, users });
    let parts = crate::rtsp::Parts {
        media: media.clone(),
        sessions: sessions.clone(),
        logins,
    };
    Ok(Some(crate::rtsp::start(&config.rtsp, parts)?))
}

/// Binds one of the embedded broker's addresses. An address left at its default that another
/// program holds (a mosquitto already on 1883, as Home Assistant installs) gives way to a free
/// port on the same interface, so a first start works; an address the user chose stays theirs,
/// and a taken one stops rtcam naming the key.
async fn bind_mqtt(
    key: &str,
    addr: SocketAddr,
    chosen: bool,
) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && !chosen => {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                .await
                .map_err(|e| anyhow::anyhow!("{key}: cannot listen for MQTT: {e}"))?;
            let got = listener.local_addr()?;
            tracing::warn!(
                "{addr} is taken (another MQTT broker?), so the embedded broker listens for MQTT \
                 on {got} instead; to pin an address, set {key} in the config"
            );
            Ok(listener)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(anyhow::anyhow!(
            "{key} = \"{addr}\": another program (another MQTT broker?) already listens \
             there; set {key} to a free address, or point mqtt.url at that broker"
        )),
        Err(e) => Err(anyhow::anyhow!(
            "{key} = \"{addr}\": cannot listen for MQTT there ({e})"
        )),
    }
}

fn gate_users(file: &str) -> &str {
    if file.is_empty() {
        "none"
    } else {
        file
    }
}

/// The HTTPS door as people and tests need it: where it listens and what its certificate's
/// fingerprints are.
#[derive(Debug, Clone)]
pub struct Https {
    pub addr: SocketAddr,
    pub fingerprints: http::tls::Fingerprints,
    pub source: http::tls::CertSource,
}

/// Binds the HTTPS door and loads (or makes) its certificate; logs the URL and fingerprints.
async fn open_https(
    config: &crate::config::HttpConfig,
    addr: SocketAddr,
    own_names: &[String],
) -> Result<(tokio::net::TcpListener, crate::http::tls::Acceptor, Https), http::HttpError> {
    let listener = http::bind(addr, "HTTPS (http.https_listen)").await?;
    let addresses: Vec<std::net::IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .collect();
    let state_dir = http::tls::state_dir(&config.state_dir, |name| std::env::var(name).ok());
    let cert = http::tls::ServerCert::load_or_make(
        &config.tls_cert,
        &config.tls_key,
        state_dir.as_deref(),
        own_names,
        &addresses,
    )?;
    let acceptor = cert.acceptor()?;
    let bound = listener.local_addr().unwrap_or(addr);
    let info = Https {
        addr: bound,
        fingerprints: cert.fingerprints(),
        source: cert.source.clone(),
    };
    let from = match &info.source {
        http::tls::CertSource::Configured => format!("{} (http.tls_cert)", config.tls_cert),
        http::tls::CertSource::Kept(dir) => format!("self-signed, kept in {}", dir.display()),
        http::tls::CertSource::Made(dir) => format!("self-signed, made now in {}", dir.display()),
        http::tls::CertSource::Ephemeral => "self-signed, made for this start only".into(),
    };
    tracing::info!(
        "viewer page over HTTPS: {}; certificate {from}; SHA-256 fingerprint {}; public key \
         SHA-256 (base64) {}",
        page_url("https", bound),
        info.fingerprints.sha256,
        info.fingerprints.spki_sha256
    );
    Ok((listener, acceptor, info))
}

fn online_status(info: &media::MediaInfo, viewers: usize) -> Status {
    Status {
        state: "online".into(),
        version: Some(VERSION.into()),
        source: (!info.source.is_empty()).then(|| info.source.clone()),
        // The VP8 fallback encoder is named beside the H.264 one while it runs.
        encoder: (!info.encoder.is_empty()).then(|| {
            if info.vp8_running {
                format!("{}, {}", info.encoder, media::encoder::VP8.element)
            } else {
                info.encoder.clone()
            }
        }),
        viewers: Some(viewers),
        camera: info.camera.as_status().map(String::from),
        pipeline: Some(if info.running { "running" } else { "idle" }.into()),
        streaming: Some(info.streaming),
        pipeline_restarts: Some(info.restarts),
        last_error: info.last_error.clone(),
    }
}

async fn track_status(
    mut info: watch::Receiver<media::MediaInfo>,
    mut viewers: watch::Receiver<usize>,
    status: watch::Sender<Status>,
) {
    loop {
        let next = online_status(&info.borrow_and_update(), *viewers.borrow_and_update());
        status.send_if_modified(|s| {
            let changed = *s != next;
            *s = next;
            changed
        });
        tokio::select! {
            // Cancel-safe: watch `changed`.
            r = info.changed() => if r.is_err() { break },
            // Cancel-safe: watch `changed`.
            r = viewers.changed() => if r.is_err() { break },
        }
    }
}

/// The URL to print for people: the HTTP address, with a wildcard bind replaced by this
/// machine's first LAN address so it can be opened from another device.
pub fn viewer_url(http_addr: SocketAddr) -> String {
    page_url("http", http_addr)
}

/// The same for either scheme.
pub fn page_url(scheme: &str, addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        if_addrs::get_if_addrs()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| !i.is_loopback() && i.ip().is_ipv4())
            .map(|i| i.ip())
            .next()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    } else {
        addr.ip()
    };
    match ip {
        std::net::IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{}/", addr.port()),
        v4 => format!("{scheme}://{v4}:{}/", addr.port()),
    }
}

/// Re-exported for tests and tools that speak the protocol.
pub use protocol::MAX_PAYLOAD;

/// What viewers' data channels may do, from config.
pub fn viewers_may_change_state(c: &Config) -> bool {
    c.control.viewer_commands == ViewerCommands::All
}

/// rtcam's MQTT client id when `[mqtt] client_id` is empty: `rtcam-{device}-` and 8 random
/// alphanumerics, new at every start. Any client that connects under rtcam's id takes its
/// connection over (MQTT says so, and a broker ACL cannot forbid one id), so the id must not be
/// guessable; rtcam uses clean sessions, so a new id per start loses nothing.
fn default_client_id(device_id: &str) -> String {
    use rand::distributions::{Alphanumeric, DistString};
    let suffix = Alphanumeric.sample_string(&mut rand::thread_rng(), 8);
    format!("rtcam-{device_id}-{suffix}")
}

/// Serves each viewer's control data channel as its session hands it on: the same commands as
/// `R/command`, with what a viewer may change (`[control]`, or its token's `control` right).
/// Each channel's task ends when the channel or its session does; this one when the session
/// manager is gone.
fn serve_control_channels(
    controller: Controller,
    viewers_may_change_state: bool,
) -> mpsc::UnboundedSender<crate::session::OpenedChannel> {
    let (channels, mut opened) = mpsc::unbounded_channel::<crate::session::OpenedChannel>();
    tokio::spawn(async move {
        while let Some(open) = opened.recv().await {
            let requester = Requester::Viewer {
                may_change_state: viewers_may_change_state || open.may_control,
            };
            tokio::spawn(crate::control::channel::serve(
                open.channel,
                controller.clone(),
                requester,
                open.label,
            ));
        }
    });
    channels
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn checked(text: &str) -> Result<(), String> {
        let config = Config::parse(text, Path::new("x.toml")).expect("the shape is right");
        check_config(&config, &Origin::File(PathBuf::from("x.toml")))
            .map_err(|e| crate::logging::error_text(&e))
    }

    #[test]
    fn each_part_refuses_what_it_cannot_use_naming_file_and_key() {
        assert_eq!(checked(""), Ok(()));
        let msg = checked("[encoder]\nelement = \"nope\"\n").unwrap_err();
        assert!(
            msg.starts_with("x.toml: encoder.element: \"nope\" is not an encoder")
                && msg.contains("x264enc"),
            "{msg}"
        );
        let msg = checked("[mqtt]\nurl = \"http://x\"\n").unwrap_err();
        assert!(msg.starts_with("x.toml: mqtt.url: \"http://x\" is not a broker URL"), "{msg}");
        let msg = checked("[device]\nid = \"a/b\"\n").unwrap_err();
        assert!(msg.starts_with("x.toml: device.id: \"a/b\" cannot be"), "{msg}");
        let msg = checked("[mqtt]\nprefix = \"a+\"\n").unwrap_err();
        assert!(msg.starts_with("x.toml: mqtt.prefix:"), "{msg}");
        // Each cause once: the refusal's reason is not repeated after it.
        assert_eq!(msg.matches("cannot be").count(), 1, "{msg}");
    }
}
