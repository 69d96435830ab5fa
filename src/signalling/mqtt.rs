//! The MQTT adapter: the only file that uses `rumqttc`.
//!
//! It keeps one client connection to the broker (embedded or external), subscribes to the
//! session topics, turns every publish into a [`SignalEvent`] for the session manager, publishes
//! what the manager sends back, and keeps `R/status` current (retained, with a last will that
//! says offline). After every reconnect it subscribes and publishes status again, because a
//! clean session forgets both.

use super::message::{ControlRequest, Publication};
use super::protocol::{self, Outbound, Status, TopicTarget, Topics};
use super::{Outgoing, SignalEvent};
use crate::config::MqttConfig;
use crate::health::Heartbeat;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ClientError, ConnectionError, Event, EventLoop};
use rumqttc::{TlsConfiguration, Transport};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The client's options as [`options`] builds them; the app hands them back through [`MqttLink`]
/// without reading them.
pub use rumqttc::v5::MqttOptions;

/// Largest MQTT packet rtcam reads or writes. Above [`protocol::MAX_PAYLOAD`] so that an
/// oversized signalling message is answered with `payload_too_large` instead of making the
/// client drop its connection (which is what rumqttc does with a packet over its limit).
pub const MAX_PACKET: usize = 1024 * 1024;
/// Publishes rtcam keeps in flight (unacknowledged, QoS 1) before waiting for acknowledgements.
const MAX_INFLIGHT: u16 = 256;

/// Reconnect delays grow from the first to the last; capped low because a LAN broker that comes
/// back should see rtcam again within a second.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("{0:?} is not a broker URL: use embedded, mqtt://host:port or mqtts://host:port")]
    BadUrl(String),
    #[error("cannot read {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, MqttError> {
        let bad = || MqttError::BadUrl(url.to_string());
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("tcp://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal without a port, e.g. `[::1]`, has colons but ends with `]`.
            Some((h, p)) if !p.ends_with(']') => (h, p.parse::<u16>().map_err(|_| bad())?),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }

    /// `[mqtt] url` checked before anything starts: `embedded`, or a URL [`BrokerUrl::parse`]
    /// takes.
    pub fn check_config(mqtt: &MqttConfig) -> Result<(), crate::config::Refusal> {
        if mqtt.url == "embedded" {
            return Ok(());
        }
        BrokerUrl::parse(&mqtt.url)
            .map(drop)
            .map_err(|e| crate::config::Refusal::new("mqtt.url", e))
    }
}

/// Everything the MQTT loop needs, handed over by the app.
pub struct MqttLink {
    pub options: MqttOptions,
    pub topics: Topics,
    /// Status to keep published; the loop republishes whenever it changes and after reconnects.
    pub status: watch::Receiver<Status>,
    /// Where incoming signalling goes.
    pub events: mpsc::Sender<SignalEvent>,
    /// What the session manager wants sent.
    pub outgoing: mpsc::Receiver<Outgoing>,
    /// Where commands on `R/command` go.
    pub commands: mpsc::Sender<ControlRequest>,
    /// Anything else to publish: command replies, telemetry, snapshots, discovery.
    pub publications: mpsc::Receiver<Publication>,
    /// Retained messages to publish after every (re)connect, in order (e.g. discovery).
    pub on_connect: watch::Receiver<Vec<Publication>>,
    /// Set true while connected to the broker; readiness and health checks watch it.
    pub connected: watch::Sender<bool>,
    /// Beats on every turn of the loop, so the systemd watchdog sees a hung loop.
    pub heartbeat: Heartbeat,
}

/// Builds client options: identity, limits, last will and transport from config.
pub fn options(
    cfg: &MqttConfig,
    broker: &BrokerUrl,
    client_id: &str,
    topics: &Topics,
) -> Result<MqttOptions, MqttError> {
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(5)));
    opts.set_clean_start(true);
    opts.set_max_packet_size(Some(MAX_PACKET as u32));
    // rumqttc preallocates one slot per possible in-flight publish: its default, 65535 slots,
    // is 14 MB resident before the first message (docs/benchmarks.md). rtcam publishes a few
    // messages per session (an answer, a few candidates), so 256 in flight covers dozens of
    // viewers arriving together; beyond it rumqttc waits for acknowledgements, it drops nothing.
    opts.set_outgoing_inflight_upper_limit(MAX_INFLIGHT);
    opts.set_last_will(LastWill::new(
        topics.status(),
        Status::offline().to_json(),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    if !cfg.username.is_empty() {
        opts.set_credentials(cfg.username.clone(), cfg.password.clone());
    }
    if broker.tls {
        let read = |path: &str| {
            std::fs::read(path).map_err(|source| MqttError::CaFile {
                path: path.to_string(),
                source,
            })
        };
        // A client certificate logs rtcam in without a password (brokers can map its name to
        // the username); it needs the CA file that verifies the broker too.
        let client_auth = if cfg.client_cert_file.is_empty() {
            None
        } else {
            Some((read(&cfg.client_cert_file)?, read(&cfg.client_key_file)?))
        };
        let tls = if cfg.ca_file.is_empty() {
            TlsConfiguration::default()
        } else {
            TlsConfiguration::Simple {
                ca: read(&cfg.ca_file)?,
                alpn: None,
                client_auth,
            }
        };
        opts.set_transport(Transport::tls_with_config(tls));
    }
    Ok(opts)
}

/// Runs the MQTT connection until `shutdown`, then publishes the offline status and disconnects.
pub async fn run(mut link: MqttLink, shutdown: CancellationToken) {
    let (client, mut eventloop) = AsyncClient::new(link.options.clone(), 1024);
    let mut connection = Connection::new(&link.options);
    // A turn at least every second even when the broker is quiet, so the heartbeat measures
    // whether this loop still runs rather than whether anyone is talking.
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    loop {
        link.heartbeat.beat();
        tokio::select! {
            // Cancel-safe: the shutdown token is level-triggered.
            _ = shutdown.cancelled() => break,
            // Cancel-safe: rumqttc documents `poll` as cancel-safe; a dropped poll loses no
            // state, the next call picks up where it left off.
            event = eventloop.poll() => {
                if let Some(backoff) = connection.on_event(&client, &link, event).await {
                    // The wait before the next attempt; shutdown does not wait for it.
                    tokio::select! {
                        // Cancel-safe: level-triggered token.
                        _ = shutdown.cancelled() => break,
                        // Cancel-safe: a dropped sleep holds nothing.
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
            // Cancel-safe: `recv` on an mpsc loses nothing when dropped before completing.
            Some(out) = link.outgoing.recv() => {
                if let Err(e) = publish_signalling(&client, &link.topics, &out) {
                    // No sid at warn level: it is the viewer's secret (see `session::viewer`).
                    tracing::warn!("dropping a signalling message, MQTT queue full: {e}");
                }
            }
            // Cancel-safe: an interval tick that is dropped is taken on a later turn.
            _ = beat.tick() => {}
            // Cancel-safe: mpsc recv.
            Some(p) = link.publications.recv() => publish(&client, &p),
            // Cancel-safe: `changed` only marks the value seen once it returns.
            Ok(()) = link.on_connect.changed() => {
                let list = link.on_connect.borrow_and_update().clone();
                if connection.connected {
                    for p in &list {
                        publish(&client, p);
                    }
                }
            }
            // Cancel-safe: `changed` only marks the value seen once it returns.
            Ok(()) = link.status.changed() => {
                let status = link.status.borrow_and_update().clone();
                if connection.connected {
                    publish_status(&client, &link.topics, &status);
                }
            }
        }
    }
    if connection.connected {
        goodbye(&client, &mut eventloop, &mut link).await;
    }
    let _ = link.connected.send(false);
}

/// What the loop knows of its connection between events.
struct Connection {
    /// `host:port`, for the log.
    broker: String,
    /// The wait before the next attempt after a failure.
    backoff: Duration,
    /// Connected now (the broker acknowledged the CONNECT).
    connected: bool,
    /// Whether the failure to reach the broker was logged, so a broker that stays away costs
    /// one line, not one per attempt.
    logged_failure: bool,
    /// Subscriptions the broker has not acknowledged yet; rtcam is ready at none.
    pending_subacks: u32,
}

impl Connection {
    fn new(options: &MqttOptions) -> Connection {
        let (host, port) = options.broker_address();
        Connection {
            broker: format!("{host}:{port}"),
            backoff: BACKOFF_FIRST,
            connected: false,
            logged_failure: false,
            pending_subacks: 0,
        }
    }

    /// Handles one event of the client's event loop; after a failure, returns how long to
    /// wait before the next attempt.
    async fn on_event(
        &mut self,
        client: &AsyncClient,
        link: &MqttLink,
        event: Result<Event, ConnectionError>,
    ) -> Option<Duration> {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => self.on_connack(client, link),
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                self.pending_subacks = self.pending_subacks.saturating_sub(1);
                if self.pending_subacks == 0 {
                    let _ = link.connected.send(true);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => on_publish(client, link, p).await,
            Ok(_) => {}
            Err(e) => return Some(self.on_error(link, &e)),
        }
        None
    }

    fn on_connack(&mut self, client: &AsyncClient, link: &MqttLink) {
        // The new connection's socket: no Nagle delay on signalling (sockets.rs).
        crate::sockets::nodelay_on_all_tcp();
        self.backoff = BACKOFF_FIRST;
        self.logged_failure = false;
        tracing::info!(broker = %self.broker, "connected to MQTT broker");
        self.connected = true;
        // A clean session forgets subscriptions: renew them on every connect. Ready only once
        // the broker has acknowledged them; before that, a command or offer sent by someone who
        // saw rtcam "connected" would be lost.
        self.pending_subacks = 0;
        for filter in [link.topics.session_in_filter(), link.topics.command()] {
            match client.try_subscribe(filter, QoS::AtLeastOnce) {
                Ok(()) => self.pending_subacks += 1,
                Err(e) => tracing::warn!("cannot queue subscribe: {e}"),
            }
        }
        publish_status(client, &link.topics, &link.status.borrow());
        for p in link.on_connect.borrow().iter() {
            publish(client, p);
        }
    }

    /// Logs a lost or refused connection once per change; returns the wait before the next
    /// attempt, and doubles the one after it (up to [`BACKOFF_MAX`]).
    fn on_error(&mut self, link: &MqttLink, e: &ConnectionError) -> Duration {
        let _ = link.connected.send(false);
        let broker = &self.broker;
        if self.connected {
            tracing::warn!(%broker, "lost MQTT broker: {e}; reconnecting");
            self.connected = false;
        } else if !self.logged_failure {
            tracing::warn!(%broker, "cannot reach MQTT broker: {e}; retrying");
            self.logged_failure = true;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }
}

/// Routes one incoming publish: a command to the controller, signalling to the session manager.
async fn on_publish(client: &AsyncClient, link: &MqttLink, p: Publish) {
    // A retained message was kept from before rtcam subscribed: a stale offer or command at
    // best, at worst one a client left to be replayed at every reconnect (mosquitto's ACL
    // cannot stop a viewer retaining on its own `in`). Live messages come without the flag:
    // rtcam does not ask for retain-as-published.
    if p.retain {
        tracing::debug!(topic = %String::from_utf8_lossy(&p.topic), "ignored a retained message");
        return;
    }
    let topic = String::from_utf8_lossy(&p.topic);
    if topic == link.topics.command() {
        let props = p.properties.unwrap_or_default();
        let request = ControlRequest {
            payload: p.payload,
            response_topic: props.response_topic,
            correlation_data: props.correlation_data,
        };
        // Full queue: the controller is busy; a dropped command gets no reply, which the
        // requester sees as a timeout, rather than stalling signalling.
        if link.commands.try_send(request).is_err() {
            tracing::warn!("command queue full; dropped a command");
        }
    } else {
        handle_publish(client, &link.topics, &link.events, &topic, &p.payload).await;
    }
}

/// Orderly goodbye: the retained offline status first (a last will is only for crashes), then
/// a clean disconnect. Bounded, so a dead broker cannot hold up shutdown.
async fn goodbye(client: &AsyncClient, eventloop: &mut EventLoop, link: &mut MqttLink) {
    // Sessions said bye just before this loop was stopped; those messages go out first.
    while let Ok(out) = link.outgoing.try_recv() {
        let _ = publish_signalling(client, &link.topics, &out);
    }
    publish_status(client, &link.topics, &Status::offline());
    let _ = client.try_disconnect();
    let drain = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// Queues one signalling message for its viewer. The error (the client's queue is full) holds
/// the whole message, so it comes boxed.
fn publish_signalling(
    client: &AsyncClient,
    topics: &Topics,
    out: &Outgoing,
) -> Result<(), Box<ClientError>> {
    let topic = topics.session_out(&out.sid);
    client
        .try_publish(topic, QoS::AtLeastOnce, false, out.message.to_json())
        .map_err(Box::new)
}

fn publish(client: &AsyncClient, p: &Publication) {
    let result = match &p.correlation_data {
        Some(data) => {
            let props = PublishProperties {
                correlation_data: Some(data.clone()),
                ..Default::default()
            };
            client.try_publish_with_properties(
                p.topic.clone(),
                QoS::AtLeastOnce,
                p.retain,
                p.payload.clone(),
                props,
            )
        }
        None => client.try_publish(
            p.topic.clone(),
            QoS::AtLeastOnce,
            p.retain,
            p.payload.clone(),
        ),
    };
    if let Err(e) = result {
        tracing::warn!(topic = %p.topic, "dropping a publish, MQTT queue full: {e}");
    }
}

fn publish_status(client: &AsyncClient, topics: &Topics, status: &Status) {
    if let Err(e) = client.try_publish(topics.status(), QoS::AtLeastOnce, true, status.to_json()) {
        tracing::warn!("cannot queue status publish: {e}");
    }
}

async fn handle_publish(
    client: &AsyncClient,
    topics: &Topics,
    events: &mpsc::Sender<SignalEvent>,
    topic: &str,
    payload: &[u8],
) {
    match topics.classify(topic) {
        TopicTarget::SessionIn(sid) => {
            let message = protocol::parse_inbound(payload);
            if let Err(e) = &message {
                // The sid only at debug level: logs at info and above never carry one.
                tracing::info!("refused signalling message: {e}");
                tracing::debug!(%sid, "refused signalling message on this session");
            }
            // Awaiting here applies back-pressure to the broker connection when the manager is
            // busy, instead of dropping a viewer's offer.
            let _ = events
                .send(SignalEvent {
                    sid: sid.to_string(),
                    message,
                })
                .await;
        }
        TopicTarget::BadSession(sid) => {
            let err = protocol::bad_sid_error(sid);
            tracing::info!("refused signalling message on {topic:?}: {err}");
            let out: Outbound = err.into();
            let _ = client.try_publish(
                topics.session_out(sid),
                QoS::AtLeastOnce,
                false,
                out.to_json(),
            );
        }
        TopicTarget::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerUrl::parse("mqtt://10.0.0.2:1884").unwrap(),
            BrokerUrl {
                tls: false,
                host: "10.0.0.2".into(),
                port: 1884
            }
        );
        assert_eq!(BrokerUrl::parse("mqtts://broker.lan").unwrap().port, 8883);
        assert_eq!(BrokerUrl::parse("mqtt://[::1]:1883").unwrap().host, "::1");
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://").is_err());
        assert!(BrokerUrl::parse("mqtt://h:notaport").is_err());
    }
}
