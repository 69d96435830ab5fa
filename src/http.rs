//! The HTTP server: the viewer page (embedded in the binary), its `/config.json`, and `/mqtt`,
//! a WebSocket that carries the page's MQTT connection to the broker, so a person needs this
//! one URL and nothing else. The only file that uses `axum`.

use crate::auth::Right;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The viewer page. Built files only: `web/vendor/mqtt.min.js` is copied from npm by the build
/// (see the Makefile); node_modules and the page's own tests stay out of the binary.
#[derive(rust_embed::Embed)]
#[folder = "web/"]
#[exclude = "node_modules/*"]
#[exclude = "*.test.mjs"]
#[exclude = "package.json"]
#[exclude = "package-lock.json"]
#[exclude = ".gitignore"]
struct Assets;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the page's `/mqtt` WebSocket is connected to.
pub enum MqttDoor {
    /// The embedded broker, through the gate that checks every client (gate/).
    Gate(crate::gate::Gate),
    /// An external broker's plain-TCP `host:port`; its own ACL decides (docs/security.md).
    Forward(String),
}

pub struct HttpState {
    /// The JSON the page reads to find its device and broker; fixed for the process lifetime
    /// but for `ice_servers`, added per request.
    pub page_config: serde_json::Value,
    /// The page's STUN/TURN servers, with TURN credentials derived afresh for each request.
    pub ice_servers: Arc<crate::turn::IceServers>,
    /// Where `/mqtt` leads, if anywhere.
    pub mqtt_door: Option<MqttDoor>,
    /// For `/snapshot.jpg`.
    pub media: crate::media::Media,
    /// Latest telemetry, for `/metrics`.
    pub telemetry: tokio::sync::watch::Receiver<crate::control::telemetry::Telemetry>,
    pub device_id: String,
    /// Checks tokens when `[auth] secret` is set.
    pub authority: Option<crate::auth::Authority>,
}

/// The token of a request: `?token=` (what a link carries) or `Authorization: Bearer`.
fn token_of<'a>(query: &'a HashMap<String, String>, headers: &'a HeaderMap) -> Option<&'a str> {
    query.get("token").map(String::as_str).or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    })
}

/// Lets the request through when the camera is open or its token grants `right`.
async fn require(state: &HttpState, right: Right, request: Request, next: Next) -> Response {
    if let Some(authority) = &state.authority {
        let query = Query::<HashMap<String, String>>::try_from_uri(request.uri())
            .map(|Query(q)| q)
            .unwrap_or_default();
        let verdict = authority.verify(
            token_of(&query, request.headers()),
            right,
            std::time::SystemTime::now(),
        );
        if let Err(e) = verdict {
            return (StatusCode::UNAUTHORIZED, format!("Not allowed: {e}.\n")).into_response();
        }
    }
    next.run(request).await
}

/// The page, its config, snapshots and `/mqtt` (which carries every session's signalling).
async fn require_view(
    State(state): State<Arc<HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    require(&state, Right::View, request, next).await
}

async fn require_metrics(
    State(state): State<Arc<HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    require(&state, Right::Metrics, request, next).await
}

/// An address to connect to for a listening address: a wildcard bind is reached on loopback.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Listen { addr, source })?;
    // Accepted connections inherit it: the `/mqtt` WebSocket carries signalling, where a
    // Nagle delay would hold an answer back (sockets.rs).
    crate::sockets::nodelay_on(&listener);
    Ok(listener)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) {
    let state = Arc::new(state);
    // Token checks wrap whole routes, so every guarded one is guarded the same way and before
    // its extractors run (a refused `/mqtt` is a 401, not a failed upgrade).
    let viewing = Router::new()
        .route("/", get(index))
        .route("/config.json", get(page_config))
        .route("/mqtt", get(mqtt_ws))
        .route("/snapshot.jpg", get(snapshot))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_view));
    let metering =
        Router::new()
            .route("/metrics", get(metrics))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_metrics,
            ));
    // Static files carry no secrets and stay open, so a page opened with a token can load them.
    let app = Router::new()
        .merge(viewing)
        .merge(metering)
        .route("/*path", get(asset))
        .with_state(state);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!("HTTP server stopped: {e}");
    }
}

async fn index(headers: HeaderMap) -> Response {
    serve_asset("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve_asset(&path, &headers)
}

/// An embedded file, gzip-compressed when the browser takes it (the page is 410 kB, 129 kB
/// compressed, most of it mqtt.js: seconds before the first frame for a phone on a slow mobile
/// link), with an ETag so a browser that has the file gets a 304 and no body.
/// `no-cache` still makes it ask every time: the page changes with the binary.
fn serve_asset(path: &str, request: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return if path == "vendor/mqtt.min.js" {
            (
                StatusCode::NOT_FOUND,
                "mqtt.js was not bundled into this build; build with `make` so web/vendor is filled from npm",
            )
                .into_response()
        } else {
            (StatusCode::NOT_FOUND, "not found").into_response()
        };
    };
    let gzipped = accepts_gzip(request)
        .then(|| gzipped(path, &file.data))
        .flatten();
    // One tag per representation: the compressed body is not the same bytes as the plain one.
    let hash = &file.metadata.sha256_hash()[..8];
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let etag = format!("\"{hex}{}\"", if gzipped.is_some() { "-gz" } else { "" });
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let mut headers = vec![
        (header::CACHE_CONTROL, "no-cache".to_string()),
        (header::ETAG, etag.clone()),
        (header::VARY, "accept-encoding".to_string()),
    ];
    if none_match(request, &etag) {
        return (StatusCode::NOT_MODIFIED, AppendHeaders(headers)).into_response();
    }
    headers.push((header::CONTENT_TYPE, mime.as_ref().to_string()));
    match gzipped {
        Some(body) => {
            headers.push((header::CONTENT_ENCODING, "gzip".to_string()));
            (AppendHeaders(headers), body).into_response()
        }
        None => (AppendHeaders(headers), file.data).into_response(),
    }
}

/// Whether `Accept-Encoding` takes gzip (`gzip` or `*`, not with `q=0`).
fn accepts_gzip(request: &HeaderMap) -> bool {
    let Some(accept) = request
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

/// Whether `If-None-Match` names this tag (or `*`); weak tags compare too, as RFC 9110 says
/// for this header.
fn none_match(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// The file gzip-compressed, made once on its first request and kept; `None` when compressing
/// does not make it a tenth smaller (pictures, tiny files), so it is sent as it is.
fn gzipped(path: &str, data: &[u8]) -> Option<bytes::Bytes> {
    static CACHE: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Option<bytes::Bytes>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(path.to_string())
        .or_insert_with(|| {
            use std::io::Write;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(data).ok()?;
            let out = encoder.finish().ok()?;
            (out.len() * 10 < data.len() * 9).then(|| out.into())
        })
        .clone()
}

async fn page_config(
    State(state): State<Arc<HttpState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let mut config = state.page_config.clone();
    let now = std::time::SystemTime::now();
    // The page offers Talk only to a viewer that would be heard: with tokens on, one whose
    // token grants `talk` (the session drops anyone else's sound all the same).
    if let Some(authority) = &state.authority {
        let query = Query::<HashMap<String, String>>::try_from_uri(&uri)
            .map(|Query(q)| q)
            .unwrap_or_default();
        if authority
            .verify(token_of(&query, &headers), Right::Talk, now)
            .is_err()
        {
            config["audio"]["talkback"] = false.into();
        }
    }
    let handed = state.ice_servers.for_viewers(now);
    config["ice_servers"] = serde_json::json!(handed.servers);
    if let Some(at) = handed.expires_at {
        config["ice_servers_expire_at"] = at.into();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            // Derived credentials are fresh per request; a cached copy would carry old ones.
            (header::CACHE_CONTROL, "no-store"),
        ],
        config.to_string(),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let text = crate::control::telemetry::prometheus(&state.telemetry.borrow(), &state.device_id);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn snapshot(State(state): State<Arc<HttpState>>) -> Response {
    match state.media.snapshot().await {
        Ok(jpeg) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            jpeg,
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn mqtt_ws(
    ws: Option<WebSocketUpgrade>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    State(state): State<Arc<HttpState>>,
) -> Response {
    let Some(ws) = ws else {
        return (
            StatusCode::BAD_REQUEST,
            "/mqtt is a WebSocket carrying MQTT; open it with a WebSocket client",
        )
            .into_response();
    };
    let stream: Box<dyn FnOnce() -> DoorFuture + Send> =
        match &state.mqtt_door {
            None => return (
                StatusCode::NOT_FOUND,
                "this camera's broker is not reachable through /mqtt; set http.viewer_broker_url",
            )
                .into_response(),
            Some(MqttDoor::Gate(gate)) => {
                // The gate checks the token again (a `/mqtt` opened with one gets its rights) and
                // ends the connection when it expires.
                let token = token_of(&query, &headers).map(String::from);
                let gate = gate.clone();
                Box::new(move || {
                    Box::pin(async move {
                        let (ours, theirs) = tokio::io::duplex(64 * 1024);
                        let shutdown = CancellationToken::new();
                        tokio::spawn(gate.serve(theirs, peer, token, shutdown));
                        Some(Box::new(ours) as Box<dyn Stream>)
                    })
                })
            }
            Some(MqttDoor::Forward(target)) => {
                let target = target.clone();
                Box::new(move || {
                    Box::pin(async move {
                        match tokio::net::TcpStream::connect(&target).await {
                            Ok(tcp) => {
                                let _ = tcp.set_nodelay(true);
                                Some(Box::new(tcp) as Box<dyn Stream>)
                            }
                            Err(e) => {
                                tracing::warn!("/mqtt: cannot reach broker {target}: {e}");
                                None
                            }
                        }
                    })
                })
            }
        };
    ws.protocols(["mqtt"])
        .max_message_size(crate::gate::MAX_INBOUND)
        .max_frame_size(crate::gate::MAX_INBOUND)
        .on_upgrade(move |socket| async move {
            if let Some(stream) = stream().await {
                pump(socket, stream).await;
            }
        })
}

/// A byte stream `/mqtt` carries the page's MQTT to.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}
type DoorFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<Box<dyn Stream>>> + Send>>;

/// Copies MQTT bytes both ways between the page's WebSocket and `stream`. MQTT needs no
/// framing help: WebSocket binary messages carry the same byte stream.
async fn pump(socket: WebSocket, stream: Box<dyn Stream>) {
    let (mut tcp_rd, mut tcp_wr) = tokio::io::split(stream);
    let (mut ws_tx, mut ws_rx) = socket.split();
    let upstream = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(bytes) => {
                    // Not a match guard, as clippy suggests: a guard that writes would hide the
                    // write where a reader looks only for a condition.
                    #[allow(clippy::collapsible_match)]
                    if tcp_wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = tcp_wr.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tcp_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    // Either side closing ends the bridge; the other half is dropped with it.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}
