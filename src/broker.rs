//! The embedded MQTT broker (`[mqtt] url = "embedded"`): the only file that uses `rumqttd`.
//!
//! It lets a board work with nothing else installed. The broker listens on loopback only, on
//! ports the system picks, and takes two logins: rtcam's own client and the gate's (`gate/`),
//! both with passwords made afresh at each start. Every outside client, the viewer page through
//! `/mqtt` and tools on `[mqtt] embedded_listen`, passes through the gate, which decides what it
//! may do; nobody else can log in here, take rtcam's client id or forge its status.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded MQTT broker cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running embedded broker: where it listens and who may log in.
#[derive(Debug, Clone)]
pub struct Internal {
    /// MQTT 3.1.1 (rumqttd serves each protocol version on its own port).
    pub v311: SocketAddr,
    pub v5: SocketAddr,
    /// rtcam's own client.
    pub rtcam_login: (String, String),
    /// The gate's connections.
    pub gate_login: (String, String),
}

/// Starts the broker on its own threads, listening on loopback ports the system picks, and
/// returns once both listeners accept connections.
pub async fn start(max_payload: usize) -> Result<Internal, BrokerError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    // rumqttd reports a bind failure only in its log and takes ports by number: ask the system
    // for two free ones. Another process could take one before rumqttd does; the readiness wait
    // below then reports it.
    let free_port = || {
        std::net::TcpListener::bind(loopback)
            .and_then(|l| l.local_addr())
            .map_err(|source| BrokerError::Listen {
                addr: loopback,
                source,
            })
    };
    let internal = Internal {
        v311: free_port()?,
        v5: free_port()?,
        rtcam_login: ("rtcam".into(), secret()),
        gate_login: ("gate".into(), secret()),
    };
    let config = settings(&internal, max_payload);
    std::thread::Builder::new()
        .name("rtcam-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {e}");
            }
        })
        .map_err(|source| BrokerError::Listen {
            addr: internal.v311,
            source,
        })?;
    wait_accepting(&internal).await?;
    Ok(internal)
}

/// rumqttd's settings: both listeners, the two logins, and limits that fit a small board.
fn settings(internal: &Internal, max_payload: usize) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: max_payload,
        max_inflight_count: 256,
        auth: Some(HashMap::from([
            internal.rtcam_login.clone(),
            internal.gate_login.clone(),
        ])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1024,
            max_outgoing_packet_count: 256,
            // Segments hold recent publishes per topic filter; small ones keep a busy broker
            // within a small board's memory.
            max_segment_size: (4 * max_payload).max(1024 * 1024),
            max_segment_count: 2,
            ..Default::default()
        },
        v4: Some(HashMap::from([(
            "v4".to_string(),
            server("v4", internal.v311),
        )])),
        v5: Some(HashMap::from([(
            "v5".to_string(),
            server("v5", internal.v5),
        )])),
        ..Default::default()
    }
}

/// Waits until both listeners accept, so the client's first connect succeeds instead of
/// logging a retry; two seconds at most.
async fn wait_accepting(internal: &Internal) -> Result<(), BrokerError> {
    let (listen, listen_v5) = (internal.v311, internal.v5);
    for _ in 0..100 {
        let v4 = tokio::net::TcpStream::connect(listen).await.is_ok();
        if v4 && tokio::net::TcpStream::connect(listen_v5).await.is_ok() {
            tracing::debug!(%listen, %listen_v5, "embedded MQTT broker running");
            // Its listeners pass TCP_NODELAY on to every connection they accept.
            crate::sockets::nodelay_on_all_tcp();
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BrokerError::Listen {
        addr: listen,
        source: std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "broker did not start accepting connections",
        ),
    })
}

/// A password for one start of the broker: 128 random bits.
fn secret() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), 22)
}
