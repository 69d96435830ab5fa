//! Wiring: starts every part in order, and stops them in the reverse order.
//!
//! Start: TURN settings check → broker (if embedded) → HTTP listeners → media → RTSP door (if
//! on) → control plane → session manager → HTTP server → MQTT client. Each step is a function
//! below that takes what the steps before it made, and the stop token of its part; the steps
//! that can fail come before the first task of the long-lived ones.
//! Stop: sessions say bye and close → RTSP door → media pipeline to NULL → retained offline
//! status and MQTT disconnect → HTTP server.

mod doors;
mod embedded;

pub use doors::{page_url, viewer_url, Https};

use crate::auth::Authority;
use crate::config::{Config, ConfigError, EncoderConfig, Origin, ViewerCommands};
use crate::control::exec::{Controller, Requester};
use crate::control::{ha, telemetry};
use crate::gate::users::Users;
use crate::gate::ClientRights;
use crate::health::Heartbeat;
use crate::http;
use crate::media::{self, Media};
use crate::session::adapt::{Adaptation, Limits as AdaptLimits};
use crate::session::peer::PeerFactory;
use crate::session::table::{Limits, SessionTable};
use crate::session::{ManagerRequest, SessionManager, Sessions};
use crate::signalling::message::{ControlRequest, Publication};
use crate::signalling::mqtt::{self, BrokerUrl, MqttLink};
use crate::signalling::protocol::{self, Status, Topics};
use crate::signalling::{Outgoing, SignalEvent};
use crate::turn::IceServers;
use doors::{open_doors, page_config, Listeners};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    stops: Stops,
    sessions_task: JoinHandle<()>,
    media_task: JoinHandle<()>,
    mqtt_task: JoinHandle<()>,
    http_task: JoinHandle<()>,
    status_task: JoinHandle<()>,
    control_tasks: Vec<JoinHandle<()>>,
    /// The RTSP door, with `[rtsp] enabled`.
    rtsp: Option<crate::rtsp::RtspDoor>,
}

/// Each part has its own token so shutdown can stop them in order.
#[derive(Default)]
struct Stops {
    sessions: CancellationToken,
    control: CancellationToken,
    media: CancellationToken,
    mqtt: CancellationToken,
    /// The HTTP server, and the gate's MQTT listeners with it.
    http: CancellationToken,
}

impl App {
    pub async fn start(config: Config, origin: Origin) -> anyhow::Result<App> {
        check_config(&config, &origin)?;
        check_turn(&config)?;
        // `/metrics`' uptime counts from here.
        let started = Instant::now();
        let (device, token_secret) = Device::new(&config);
        let stops = Stops::default();
        let broker = start_broker(&config, &device, &stops.http).await?;
        let listeners = open_doors(&config.http).await?;
        let ice_servers = ice_servers(&config, &device);
        let (media, media_task) = media::start(
            &config.source,
            &config.encoder,
            &config.audio,
            stops.media.clone(),
        )?;
        let factory = Arc::new(PeerFactory::new(&config.webrtc, ice_servers.clone())?);
        let (shared, ends) = Shared::new(media, ice_servers);
        let rtsp = start_rtsp(&config, &shared, device.authority.clone())?;

        let control = start_control(
            &config,
            (origin, token_secret),
            (&device, listeners.http_addr),
            &shared,
            stops.control.clone(),
        );
        let sessions_task = start_sessions(
            &config,
            &device,
            &shared,
            SessionParts {
                factory,
                client_rights: broker.client_rights(),
                controller: control.controller.clone(),
                ends: ends.sessions,
            },
            stops.sessions.clone(),
        );
        let status_task = start_status(&shared, ends.status);
        let (http_addr, https) = (listeners.http_addr, listeners.https_info.clone());
        let http_task = serve_http(
            &config,
            &device,
            listeners,
            (broker.door, ends.whep),
            &shared,
            started,
            &stops.http,
        );
        let mqtt = start_mqtt(
            &device,
            broker.options,
            &shared,
            ends.mqtt,
            control.mqtt,
            &stops.mqtt,
        );

        Ok(App {
            device_id: device.id,
            topics: device.topics,
            http_addr,
            https,
            heartbeats: vec![shared.media.heartbeat(), mqtt.heartbeat],
            media: shared.media,
            mqtt_connected: mqtt.connected,
            viewers: shared.viewers,
            status: shared.status,
            controller: control.controller,
            stops,
            sessions_task,
            media_task,
            mqtt_task: mqtt.task,
            http_task,
            status_task,
            control_tasks: control.tasks,
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

    /// Stops in order: sessions (each viewer gets a bye), the RTSP door, media, MQTT (offline
    /// status), HTTP.
    pub async fn stop(self) {
        self.stops.control.cancel();
        for t in self.control_tasks {
            let _ = t.await;
        }
        self.stops.sessions.cancel();
        let _ = self.sessions_task.await;
        if let Some(rtsp) = self.rtsp {
            let _ = tokio::task::spawn_blocking(move || rtsp.stop()).await;
        }
        self.stops.media.cancel();
        let _ = self.media_task.await;
        self.status_task.abort();
        self.stops.mqtt.cancel();
        let _ = self.mqtt_task.await;
        self.stops.http.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.http_task).await;
    }
}

/// What each part of rtcam makes of its settings, checked before anything starts: the
/// configuration has checked its own shapes when it was read; these are the values only the
/// part using them can judge. `rtcam config check`, every command that reads the
/// configuration, [`App::start`] and `reload` run them.
pub fn check_config(config: &Config, origin: &Origin) -> Result<(), ConfigError> {
    protocol::check_config(config)
        .and_then(|()| BrokerUrl::check_config(&config.mqtt))
        .and_then(|()| media::encoder::check_config(&config.encoder))
        .and_then(|()| crate::session::peer::check_config(&config.webrtc))
        .map_err(|refusal| ConfigError::Refused {
            origin: origin.clone(),
            refusal,
        })
}

/// TURN URLs need the secret rtcam derives their credentials from; checked before anything
/// starts, after the credentials directory had its chance to fill the secret in.
fn check_turn(config: &Config) -> anyhow::Result<()> {
    if !config.webrtc.turn_urls.is_empty() && config.webrtc.turn_secret.is_empty() {
        anyhow::bail!(
            "webrtc.turn_urls needs the secret the TURN server shares: set webrtc.turn_secret \
             or the turn_secret credential"
        );
    }
    Ok(())
}

/// ICE servers for rtcam's peers and the page, TURN REST credentials derived for this device.
fn ice_servers(config: &Config, device: &Device) -> Arc<IceServers> {
    Arc::new(IceServers::new(
        config.webrtc.ice_servers.clone(),
        crate::turn::TurnRest::from_config(&config.webrtc),
        &device.id,
    ))
}

/// Who this rtcam is for one start.
struct Device {
    id: String,
    topics: Topics,
    /// rtcam's own MQTT client id.
    client_id: String,
    /// Checks viewer tokens when `[auth] secret` is set.
    authority: Option<Authority>,
}

impl Device {
    /// The device, and the sender through which `reload` hands every part holding the
    /// authority a new token secret.
    fn new(config: &Config) -> (Device, watch::Sender<String>) {
        let (token_secret, secret_in_force) = watch::channel(config.auth.secret.clone());
        let id = config.device_id();
        let topics = Topics::new(&config.mqtt.prefix, &id);
        let client_id = if config.mqtt.client_id.is_empty() {
            default_client_id(&id)
        } else {
            config.mqtt.client_id.clone()
        };
        let authority =
            (!config.auth.secret.is_empty()).then(|| Authority::following(secret_in_force, &id));
        let device = Device {
            id,
            topics,
            client_id,
            authority,
        };
        (device, token_secret)
    }
}

/// How rtcam's parts reach the broker.
struct Broker {
    /// rtcam's own client: where it connects, as whom, with which last will.
    options: mqtt::MqttOptions,
    /// What the page's `/mqtt` leads to, if anywhere.
    door: Option<http::MqttDoor>,
}

impl Broker {
    /// What the gate proved of its clients, when the embedded broker is behind one.
    fn client_rights(&self) -> Option<ClientRights> {
        match &self.door {
            Some(http::MqttDoor::Gate(gate)) => Some(gate.client_rights()),
            _ => None,
        }
    }
}

/// Starts the embedded broker behind its gate (whose listeners stop with `stop`) if the config
/// asks for it, and decides what rtcam's own client connects to and what the page's `/mqtt`
/// reaches: the gate, or an external broker's plain-TCP port as it is (that broker's own ACL
/// decides, docs/security.md).
async fn start_broker(
    config: &Config,
    device: &Device,
    stop: &CancellationToken,
) -> anyhow::Result<Broker> {
    let mut own_mqtt = config.mqtt.clone();
    let (url, door) = if config.mqtt.url == "embedded" {
        let embedded = embedded::start(config, device, stop).await?;
        (own_mqtt.username, own_mqtt.password) = embedded.rtcam_login;
        (embedded.url, Some(http::MqttDoor::Gate(embedded.gate)))
    } else {
        let url = BrokerUrl::parse(&config.mqtt.url)?;
        let tcp = (!url.tls).then(|| http::MqttDoor::Forward(format!("{}:{}", url.host, url.port)));
        if url.tls && config.http.viewer_broker_url.is_empty() {
            tracing::warn!(
                "the viewer page cannot reach an mqtts:// broker through /mqtt; \
                 set http.viewer_broker_url to the broker's wss:// URL"
            );
        }
        (url, tcp)
    };
    let options = mqtt::options(&own_mqtt, &url, &device.client_id, &device.topics)?;
    Ok(Broker { options, door })
}

/// What several parts read; each clones what it needs.
struct Shared {
    media: Media,
    /// Asks the session manager for its list, or to end a session.
    sessions: Sessions,
    /// The session manager's viewer count.
    viewers: watch::Receiver<usize>,
    /// The status rtcam publishes, kept current by [`track_status`].
    status: watch::Receiver<Status>,
    /// ICE servers for rtcam's peers and the page; TURN credentials are derived per request.
    ice_servers: Arc<IceServers>,
}

/// The other ends of the channels behind [`Shared`], and of the signalling channels, for the
/// parts that feed or drain them.
struct Ends {
    sessions: SessionEnds,
    mqtt: SignallingEnds,
    whep: SignallingEnds,
    status: watch::Sender<Status>,
}

/// The session manager's ends.
struct SessionEnds {
    requests: mpsc::Receiver<ManagerRequest>,
    viewers: watch::Sender<usize>,
    /// Signalling from viewers, from the MQTT client.
    events: mpsc::Receiver<SignalEvent>,
    /// Signalling to viewers, for the MQTT client.
    outgoing: mpsc::Sender<Outgoing>,
}

/// A signalling transport's ends (the MQTT client's, the WHEP door's): what its viewers send,
/// and the replies routed to it by sid.
struct SignallingEnds {
    events: mpsc::Sender<SignalEvent>,
    outgoing: mpsc::Receiver<Outgoing>,
}

impl Shared {
    fn new(media: Media, ice_servers: Arc<IceServers>) -> (Shared, Ends) {
        let (requests_tx, requests_rx) = mpsc::channel(16);
        let (viewers_tx, viewers_rx) = watch::channel(0usize);
        // Status follows the media pipeline and the viewer count.
        let (status_tx, status_rx) = watch::channel(online_status(&media.info().borrow(), 0));
        let (events_tx, events_rx) = mpsc::channel(256);
        let (outgoing_tx, from_sessions) = mpsc::channel(1024);
        // Replies go to the transport of their viewer: MQTT, or the WHEP door over HTTP.
        let (mqtt_out, outgoing_rx) = mpsc::channel(1024);
        let (whep_out, whep_replies) = mpsc::channel(256);
        tokio::spawn(crate::signalling::route(from_sessions, mqtt_out, whep_out));
        let shared = Shared {
            media,
            sessions: Sessions::new(requests_tx),
            viewers: viewers_rx,
            status: status_rx,
            ice_servers,
        };
        let ends = Ends {
            sessions: SessionEnds {
                requests: requests_rx,
                viewers: viewers_tx,
                events: events_rx,
                outgoing: outgoing_tx,
            },
            whep: SignallingEnds {
                events: events_tx.clone(),
                outgoing: whep_replies,
            },
            mqtt: SignallingEnds {
                events: events_tx,
                outgoing: outgoing_rx,
            },
            status: status_tx,
        };
        (shared, ends)
    }
}

/// The RTSP door, with `[rtsp] enabled`: logins asked for when tokens or broker users are
/// configured (a viewer token, or a users-file user), else open, which it logs. Its clients
/// join the session manager through `shared`'s handle, which queues them until it runs.
fn start_rtsp(
    config: &Config,
    shared: &Shared,
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
        media: shared.media.clone(),
        sessions: shared.sessions.clone(),
        logins,
    };
    Ok(Some(crate::rtsp::start(&config.rtsp, parts)?))
}

/// The running control plane.
struct Control {
    controller: Controller,
    /// What the MQTT client carries for it.
    mqtt: ControlEnds,
    tasks: Vec<JoinHandle<()>>,
}

/// The MQTT client's ends of the control plane's channels.
struct ControlEnds {
    /// Commands on `R/command`, for the controller.
    commands: mpsc::Sender<ControlRequest>,
    /// Command replies, telemetry and snapshots to publish.
    publications: mpsc::Receiver<Publication>,
    /// Retained messages to publish after every (re)connect: Home Assistant discovery.
    discovery: watch::Receiver<Vec<Publication>>,
}

/// Starts the control plane until `stop`: the controller, which carries commands out, serving
/// `R/command`, and telemetry every `[control] telemetry_interval_secs`.
fn start_control(
    config: &Config,
    (origin, token_secret): (Origin, watch::Sender<String>),
    (device, http_addr): (&Device, SocketAddr),
    shared: &Shared,
    stop: CancellationToken,
) -> Control {
    let (telemetry_tx, telemetry_rx) = watch::channel(telemetry::Telemetry::default());
    let (publications_tx, publications_rx) = mpsc::channel(1024);
    let controller = Controller::new(
        device.topics.clone(),
        shared.media.clone(),
        shared.sessions.clone(),
        shared.status.clone(),
        telemetry_rx,
        publications_tx.clone(),
        crate::control::exec::Settings {
            config: config.clone(),
            origin,
            check: check_config,
            token_secret,
        },
    );
    let (commands_tx, commands_rx) = mpsc::channel(64);
    // Discovery is fixed for one start: the MQTT client republishes what the channel holds.
    let (_discovery_tx, discovery_rx) = watch::channel(discovery(config, device, http_addr));
    let tasks = vec![
        tokio::spawn(controller.clone().serve_mqtt(commands_rx, stop.clone())),
        tokio::spawn(telemetry::run(
            telemetry::Sampler::new(shared.media.clone(), shared.sessions.clone()),
            Duration::from_secs(config.control.telemetry_interval_secs),
            device.topics.telemetry(),
            telemetry_tx,
            publications_tx,
            stop,
        )),
    ];
    Control {
        controller,
        mqtt: ControlEnds {
            commands: commands_tx,
            publications: publications_rx,
            discovery: discovery_rx,
        },
        tasks,
    }
}

/// What the session manager gets besides the shared handles.
struct SessionParts {
    factory: Arc<PeerFactory>,
    /// What the gate proved of its clients (embedded broker): their offers need no token.
    client_rights: Option<ClientRights>,
    /// Serves viewers' control data channels.
    controller: Controller,
    ends: SessionEnds,
}

/// Starts the session manager until `stop`: `[webrtc]`'s limits and timeouts, bitrate
/// adaptation if `[encoder]` turns it on.
fn start_sessions(
    config: &Config,
    device: &Device,
    shared: &Shared,
    parts: SessionParts,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let manager = SessionManager {
        table: SessionTable::new(Limits {
            max_sessions: config.webrtc.max_sessions,
            offers_per_second: config.webrtc.offers_per_second,
            max_candidates: config.webrtc.max_candidates_per_session,
            vp8_fallback: shared.media.vp8_available(),
        }),
        factory: parts.factory,
        media: shared.media.clone(),
        events: parts.ends.events,
        outgoing: parts.ends.outgoing,
        viewers: parts.ends.viewers,
        disconnect_timeout: config.webrtc.disconnect_timeout(),
        requests: parts.ends.requests,
        channels: serve_control_channels(parts.controller, viewers_may_change_state(config)),
        authority: device.authority.clone(),
        client_rights: parts.client_rights,
        adaptation: adaptation(&config.encoder),
        ice_servers: shared.ice_servers.clone(),
    };
    tokio::spawn(manager.run(stop))
}

/// Bitrate adaptation, if `[encoder]` turns it on; the session manager alone holds it.
fn adaptation(encoder: &EncoderConfig) -> Option<Adaptation> {
    encoder.adaptation().map(|(min_kbps, max_kbps)| {
        Adaptation::new(
            AdaptLimits {
                min_kbps,
                max_kbps,
                follow_ratio: encoder.follow_ratio,
            },
            encoder.bitrate_kbps,
        )
    })
}

/// Serves the doors until `stop`: the page and `/config.json`, `/mqtt` to `mqtt_door`, `/whep`
/// (its viewers' signalling on `whep`'s ends), `/metrics` (its uptime counted from `started`),
/// `/snapshot.jpg`.
fn serve_http(
    config: &Config,
    device: &Device,
    listeners: Listeners,
    (mqtt_door, whep): (Option<http::MqttDoor>, SignallingEnds),
    shared: &Shared,
    started: Instant,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let https_port = listeners.https_info.as_ref().map(|h| h.addr.port());
    let whep_door = http::whep::WhepDoor::new(
        whep.events,
        shared.ice_servers.clone(),
        device.authority.is_some(),
        config.webrtc.max_sessions,
    );
    tokio::spawn(whep_door.clone().deliver(whep.outgoing));
    tokio::spawn(http::serve(
        http::Doors {
            http: listeners.http,
            https: listeners.https,
            redirect_http: config.http.redirect_http,
        },
        http::HttpState {
            page_config: page_config(config, &device.id, https_port),
            ice_servers: shared.ice_servers.clone(),
            mqtt_door,
            media: shared.media.clone(),
            metrics: crate::metrics::Metrics {
                device_id: device.id.clone(),
                started,
                media: shared.media.clone(),
                sessions: shared.sessions.clone(),
                viewers: shared.viewers.clone(),
            },
            device_id: device.id.clone(),
            authority: device.authority.clone(),
            hosts: http::guard::HostPolicy::new(&listeners.own_names, &config.http.allowed_hosts),
            whep: Some(whep_door),
        },
        stop.clone(),
    ))
}

/// rtcam's MQTT client, running.
struct MqttClient {
    task: JoinHandle<()>,
    /// True while connected, once the broker has acknowledged the subscriptions.
    connected: watch::Receiver<bool>,
    /// Beats on every turn of the client's loop.
    heartbeat: Heartbeat,
}

/// Starts rtcam's MQTT client until `stop`: viewers' signalling to and from the session
/// manager, the control plane's commands and publications, and the status.
fn start_mqtt(
    device: &Device,
    options: mqtt::MqttOptions,
    shared: &Shared,
    signalling: SignallingEnds,
    control: ControlEnds,
    stop: &CancellationToken,
) -> MqttClient {
    let (connected_tx, connected_rx) = watch::channel(false);
    let heartbeat = Heartbeat::new("MQTT loop");
    let task = tokio::spawn(mqtt::run(
        MqttLink {
            options,
            topics: device.topics.clone(),
            status: shared.status.clone(),
            events: signalling.events,
            outgoing: signalling.outgoing,
            connected: connected_tx,
            heartbeat: heartbeat.clone(),
            commands: control.commands,
            publications: control.publications,
            on_connect: control.discovery,
        },
        stop.clone(),
    ));
    MqttClient {
        task,
        connected: connected_rx,
        heartbeat,
    }
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

/// Keeps the status rtcam publishes current with the media pipeline and the viewer count.
fn start_status(shared: &Shared, status: watch::Sender<Status>) -> JoinHandle<()> {
    tokio::spawn(track_status(
        shared.media.info(),
        shared.viewers.clone(),
        status,
    ))
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

/// Home Assistant's discovery messages for this camera: its page at the HTTP door, and a
/// temperature sensor only where the board has a thermal zone.
fn discovery(config: &Config, device: &Device, http_addr: SocketAddr) -> Vec<Publication> {
    let page_url = viewer_url(http_addr);
    let about = ha::Announcement {
        device_id: &device.id,
        version: VERSION,
        page_url: Some(&page_url),
        support_url: ha::package_support_url(),
        board: ha::Board {
            temperature: crate::board::soc_temperature().is_some(),
        },
    };
    ha::publications(
        &device.topics,
        &about,
        &config.control.ha_prefix,
        config.control.ha_discovery,
    )
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
        assert!(
            msg.starts_with("x.toml: mqtt.url: \"http://x\" is not a broker URL"),
            "{msg}"
        );
        let msg = checked("[device]\nid = \"a/b\"\n").unwrap_err();
        assert!(
            msg.starts_with("x.toml: device.id: \"a/b\" cannot be"),
            "{msg}"
        );
        let msg = checked("[mqtt]\nprefix = \"a+\"\n").unwrap_err();
        assert!(msg.starts_with("x.toml: mqtt.prefix:"), "{msg}");
        // Each cause once: the refusal's reason is not repeated after it.
        assert_eq!(msg.matches("cannot be").count(), 1, "{msg}");
    }
}
