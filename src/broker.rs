//! The embedded MQTT broker (`[mqtt] url = "embedded"`): the only file that uses `rumqttd`.
//!
//! It lets a board work with nothing else installed: rtcam's own client, the viewer page (through
//! the `/mqtt` WebSocket bridge in `http.rs`) and any local tool connect to it.

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

/// Starts the broker on its own threads, with an MQTT 3.1.1 listener on `listen` and an MQTT 5
/// one on `listen_v5` (rumqttd serves each protocol version on its own port), and returns once
/// both accept connections.
pub async fn start(
    listen: SocketAddr,
    listen_v5: SocketAddr,
    max_payload: usize,
) -> Result<(), BrokerError> {
    // rumqttd reports a bind failure only in its log, so probe the ports first for a clear error.
    for addr in [listen, listen_v5] {
        drop(
            std::net::TcpListener::bind(addr)
                .map_err(|source| BrokerError::Listen { addr, source })?,
        );
    }

    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: max_payload,
        max_inflight_count: 256,
        auth: None,
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
    let config = rumqttd::Config {
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
        v4: Some(HashMap::from([("v4".to_string(), server("v4", listen))])),
        v5: Some(HashMap::from([("v5".to_string(), server("v5", listen_v5))])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("rtcam-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {e}");
            }
        })
        .map_err(|source| BrokerError::Listen {
            addr: listen,
            source,
        })?;

    // Wait until it accepts, so the client's first connect succeeds instead of logging a retry.
    for _ in 0..100 {
        let v4 = tokio::net::TcpStream::connect(crate::http::connectable(listen))
            .await
            .is_ok();
        if v4
            && tokio::net::TcpStream::connect(crate::http::connectable(listen_v5))
                .await
                .is_ok()
        {
            tracing::info!(%listen, %listen_v5, "embedded MQTT broker running");
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
