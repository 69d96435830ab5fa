//! The embedded broker as the app starts it: the broker itself (`crate::broker`) on loopback,
//! and the gate in front of it on `[mqtt] embedded_listen` and `embedded_listen_v5`.

use super::Device;
use crate::config::{Config, MqttConfig};
use crate::gate::policy::Policy;
use crate::gate::users::Users;
use crate::gate::{Gate, GateConfig};
use crate::signalling::mqtt::{self, BrokerUrl};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running embedded broker, as rtcam's own client and `/mqtt` reach it.
pub(super) struct Embedded {
    /// Where rtcam's own client connects: the broker's loopback MQTT 5 listener.
    pub url: BrokerUrl,
    /// rtcam's login there, made for this start.
    pub rtcam_login: (String, String),
    /// The door for every other client, `/mqtt` included.
    pub gate: Gate,
}

/// A gate listener that cannot be opened.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(
        "{key} = \"{addr}\": another program (another MQTT broker?) already listens \
         there; set {key} to a free address, or point mqtt.url at that broker"
    )]
    Taken { key: &'static str, addr: SocketAddr },
    #[error("{key} = \"{addr}\": cannot listen for MQTT there ({source})")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: cannot listen for MQTT: {source}")]
    Fallback {
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Starts the embedded broker and the gate in front of it; the gate's listeners stop with
/// `stop`.
pub(super) async fn start(
    config: &Config,
    device: &Device,
    stop: &CancellationToken,
) -> anyhow::Result<Embedded> {
    let m = &config.mqtt;
    let users = load_users(m)?;
    let internal = crate::broker::start(mqtt::MAX_PACKET).await?;
    let gate = Gate::new(GateConfig {
        policy: Policy::new(
            device.topics.root(),
            &config.control.ha_prefix,
            &device.client_id,
            crate::gate::MAX_SUBSCRIPTIONS,
        ),
        users,
        authority: device.authority.clone(),
        upstream_v311: internal.v311,
        upstream_v5: internal.v5,
        login: internal.gate_login.clone(),
    });
    let listeners = bind_listeners(m).await?;
    let bound = [listeners[0].local_addr()?, listeners[1].local_addr()?];
    for listener in listeners {
        tokio::spawn(gate.clone().listen(listener, stop.clone()));
    }
    tracing::info!(
        listen = %bound[0],
        listen_v5 = %bound[1],
        users = gate_users(&m.users_file),
        "embedded MQTT broker running"
    );
    Ok(Embedded {
        url: BrokerUrl {
            tls: false,
            host: internal.v5.ip().to_string(),
            port: internal.v5.port(),
        },
        rtcam_login: internal.rtcam_login,
        gate,
    })
}

/// The broker users from `[mqtt] users_file`. A listener that other machines can reach needs
/// some, unless the config lets clients without a login in to watch.
fn load_users(m: &MqttConfig) -> anyhow::Result<Users> {
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
    Ok(users)
}

/// Binds the gate's MQTT 3.1.1 and MQTT 5 listeners, in that order.
async fn bind_listeners(m: &MqttConfig) -> Result<[TcpListener; 2], ListenError> {
    let defaults = MqttConfig::default();
    let v311 = bind_mqtt(
        "mqtt.embedded_listen",
        m.embedded_listen,
        m.embedded_listen_chosen.v311 || m.embedded_listen != defaults.embedded_listen,
    )
    .await?;
    let v5 = bind_mqtt(
        "mqtt.embedded_listen_v5",
        m.embedded_listen_v5,
        m.embedded_listen_chosen.v5 || m.embedded_listen_v5 != defaults.embedded_listen_v5,
    )
    .await?;
    Ok([v311, v5])
}

/// Binds one of the embedded broker's addresses. An address left at its default that another
/// program holds (a mosquitto already on 1883, as Home Assistant installs) gives way to a free
/// port on the same interface, so a first start works; an address the user chose stays theirs,
/// and a taken one stops rtcam naming the key.
async fn bind_mqtt(
    key: &'static str,
    addr: SocketAddr,
    chosen: bool,
) -> Result<TcpListener, ListenError> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && !chosen => {
            let listener = TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                .await
                .map_err(|source| ListenError::Fallback { key, source })?;
            let got = listener
                .local_addr()
                .map_err(|source| ListenError::Fallback { key, source })?;
            tracing::warn!(
                "{addr} is taken (another MQTT broker?), so the embedded broker listens for MQTT \
                 on {got} instead; to pin an address, set {key} in the config"
            );
            Ok(listener)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(ListenError::Taken { key, addr })
        }
        Err(source) => Err(ListenError::Bind { key, addr, source }),
    }
}

fn gate_users(file: &str) -> &str {
    if file.is_empty() {
        "none"
    } else {
        file
    }
}
