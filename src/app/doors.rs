//! The doors as the app opens them: the HTTP and HTTPS listeners (bound before media starts,
//! so a taken port stops rtcam at once), the HTTPS certificate, what `/config.json` says, and
//! the URLs printed for people.

use super::VERSION;
use crate::config::{Config, HttpConfig};
use crate::http;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The HTTP and HTTPS listeners, bound before media starts so that a taken port stops rtcam
/// at once.
pub(super) struct Listeners {
    pub http: TcpListener,
    pub http_addr: SocketAddr,
    /// The HTTPS socket and its TLS acceptor, unless `[http] https_listen` is off.
    pub https: Option<(TcpListener, http::tls::Acceptor)>,
    pub https_info: Option<Https>,
    /// This machine's names: in the self-signed certificate, and allowed in requests' `Host`.
    pub own_names: Vec<String>,
}

pub(super) async fn open_doors(config: &HttpConfig) -> anyhow::Result<Listeners> {
    let http = http::bind(config.listen, "HTTP (http.listen)").await?;
    let http_addr = http.local_addr()?;
    let hostname = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let own_names = http::tls::own_names(&hostname);
    let (https, https_info) = match config.https_listen() {
        Some(addr) => {
            let (listener, acceptor, info) = open_https(config, addr, &own_names).await?;
            (Some((listener, acceptor)), Some(info))
        }
        None => (None, None),
    };
    Ok(Listeners {
        http,
        http_addr,
        https,
        https_info,
        own_names,
    })
}

/// The JSON the page reads at `/config.json`, but for the ICE servers, which the server adds
/// per request (derived TURN credentials must be fresh). `https_port` is the HTTPS door's.
pub(super) fn page_config(
    config: &Config,
    device_id: &str,
    https_port: Option<u16>,
) -> serde_json::Value {
    serde_json::json!({
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
        "https_port": https_port,
    })
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
    config: &HttpConfig,
    addr: SocketAddr,
    own_names: &[String],
) -> Result<(TcpListener, http::tls::Acceptor, Https), http::HttpError> {
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
