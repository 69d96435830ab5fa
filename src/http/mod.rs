//! The HTTP server: the viewer page (embedded in the binary), its `/config.json`, and `/mqtt`,
//! a WebSocket that carries the page's MQTT connection to the broker, so a person needs this
//! one URL and nothing else. Served over plain HTTP and, with its own certificate, HTTPS
//! (which browsers require before they lend a page the microphone for Talk). The only
//! `axum` user; the accept loop and its bounds are in `serve`, the `Host`/`Origin` checks in
//! `guard`, the certificate in `tls`.

pub mod guard;
pub mod serve;
pub mod tls;
pub mod whep;

use crate::auth::Right;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures::{SinkExt, StreamExt};
use serve::{Scheme, SlotHandle};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The largest WebSocket message (and frame) `/mqtt` takes: the largest MQTT packet rtcam's
/// broker and client accept, with room for the packet's header. A bigger one closes that
/// connection before it is buffered whole.
pub const MAX_WS_MESSAGE: usize = crate::gate::MAX_INBOUND;

/// The page's Content-Security-Policy: everything from the camera itself. `connect-src`
/// allows any WebSocket because `[http] viewer_broker_url` may name another host;
/// `worker-src blob:` because the bundled mqtt.js keeps its keep-alive timers in a worker it
/// makes from a blob (browsers throttle timers in background tabs, not in workers);
/// `img-src data: blob:` for snapshots.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
    img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; script-src 'self'; \
    worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

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
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen {
        /// The door, by its setting: "HTTP (http.listen)" or "HTTPS (http.https_listen)".
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTPS: {0}")]
    Tls(#[from] tls::TlsError),
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
    /// What `/metrics` reads at each scrape.
    pub metrics: crate::metrics::Metrics,
    pub device_id: String,
    /// Checks tokens when `[auth] secret` is set.
    pub authority: Option<crate::auth::Authority>,
    /// The names requests may carry in `Host`.
    pub hosts: guard::HostPolicy,
    /// `/whep`: WHEP viewers' signalling, carried to the session manager.
    pub whep: Option<whep::WhepDoor>,
}

/// The listening sockets to serve.
pub struct Doors {
    pub http: tokio::net::TcpListener,
    /// The HTTPS socket and its TLS acceptor, unless `[http] https_listen` is off.
    pub https: Option<(tokio::net::TcpListener, tls::Acceptor)>,
    /// `[http] redirect_http`: plain-HTTP requests but `/mqtt` are sent to HTTPS.
    pub redirect_http: bool,
}

/// The token of a request: `?token=` (what a link carries) or `Authorization: Bearer`.
fn token_of<'a>(query: &'a HashMap<String, String>, headers: &'a HeaderMap) -> Option<&'a str> {
    query
        .get("token")
        .map(String::as_str)
        .or_else(|| bearer(headers))
}

/// The token of `Authorization: Bearer <token>`, as sent.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
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

/// A listening socket for a door; `what` names the door and its setting in the error.
pub async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<tokio::net::TcpListener, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Listen { what, addr, source })?;
    // Accepted connections inherit it: the `/mqtt` WebSocket carries signalling, where a
    // Nagle delay would hold an answer back (sockets.rs).
    crate::sockets::nodelay_on(&listener);
    Ok(listener)
}

/// Serves the doors until `shutdown`.
pub async fn serve(doors: Doors, state: HttpState, shutdown: CancellationToken) {
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
    let routes = Router::new()
        .merge(viewing)
        .merge(metering)
        .merge(whep::routes())
        .route("/*path", get(asset))
        .with_state(state.clone());
    // Layers wrap what was built before them: the last added runs first. Every response,
    // refusals included, carries the security headers; every request, to any path, must
    // name this camera in `Host` before anything else looks at it.
    let outer = |router: Router| {
        router
            .layer(middleware::from_fn_with_state(state.clone(), check_host))
            .layer(middleware::map_response(security_headers))
            .layer(Extension(shutdown.clone()))
    };
    let https_port = match &doors.https {
        Some((listener, _)) => listener.local_addr().ok().map(|a| a.port()),
        None => None,
    };
    let plain = match https_port {
        Some(port) if doors.redirect_http => {
            routes
                .clone()
                .layer(middleware::from_fn(move |request: Request, next: Next| {
                    redirect_to_https(port, request, next)
                }))
        }
        _ => routes.clone(),
    };
    let mut list = vec![serve::Door {
        listener: doors.http,
        tls: None,
        router: outer(plain),
    }];
    if let Some((listener, acceptor)) = doors.https {
        list.push(serve::Door {
            listener,
            tls: Some(acceptor),
            router: outer(routes),
        });
    }
    serve::run(list, serve::CAPS, shutdown).await;
}

/// Refuses, with 403 and a sentence, a request whose `Host` does not name this camera.
async fn check_host(State(state): State<Arc<HttpState>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    match state.hosts.check_host(host) {
        Ok(_) => next.run(request).await,
        Err(why) => (StatusCode::FORBIDDEN, format!("{why}\n")).into_response(),
    }
}

/// What every response carries: the page's CSP, no MIME sniffing, no framing, and no
/// `Referer` (tokens travel in URLs).
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// With `[http] redirect_http`: a plain-HTTP request goes to the same path on HTTPS (308, so
/// the method is kept). `/mqtt` stays: a page someone opened over plain HTTP keeps working.
async fn redirect_to_https(https_port: u16, request: Request, next: Next) -> Response {
    if request.uri().path() == "/mqtt" {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(guard::Authority::parse);
    let Some(host) = host else {
        return next.run(request).await;
    };
    let host = if host.host.contains(':') {
        format!("[{}]", host.host)
    } else {
        host.host
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let location = format!("https://{host}:{https_port}{path}");
    match Uri::try_from(location.as_str()) {
        Ok(_) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        Err(_) => next.run(request).await,
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
    let gate = match &state.mqtt_door {
        Some(MqttDoor::Gate(gate)) => Some(gate.stats()),
        _ => None,
    };
    match state.metrics.render(gate).await {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!("/metrics: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
    }
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

/// What `/mqtt` is handed besides the upgrade: who is asking, with what, from which page.
#[allow(clippy::too_many_arguments)]
async fn mqtt_ws(
    ws: Option<WebSocketUpgrade>,
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(scheme): Extension<Scheme>,
    Extension(slot): Extension<SlotHandle>,
    Extension(stop): Extension<CancellationToken>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(ws) = ws else {
        return (
            StatusCode::BAD_REQUEST,
            "/mqtt is a WebSocket carrying MQTT; open it with a WebSocket client",
        )
            .into_response();
    };
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    // `check_host` let the request in, so the Host parses.
    let Some(host) = text(header::HOST).and_then(guard::Authority::parse) else {
        return (StatusCode::FORBIDDEN, "A Host header is required.\n").into_response();
    };
    if let Err(why) = guard::check_origin(text(header::ORIGIN), &host, scheme) {
        return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
    }
    let door =
        match &state.mqtt_door {
            Some(MqttDoor::Gate(gate)) => Door::Gate(gate.clone()),
            Some(MqttDoor::Forward(target)) => Door::Forward(target.clone()),
            None => return (
                StatusCode::NOT_FOUND,
                "this camera's broker is not reachable through /mqtt; set http.viewer_broker_url",
            )
                .into_response(),
        };
    // `require_view` has checked it already; the gate checks it again (a `/mqtt` opened with
    // one gets its rights) and ends the connection when it expires.
    let token = token_of(&query, &headers).map(str::to_owned);
    ws.protocols(["mqtt"])
        .max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| async move {
            // The connection's place under the caps is kept until the WebSocket closes.
            let _slot = slot;
            tokio::select! {
                // Not cancel-safe: dropping it ends the page's MQTT connection, which is
                // what stopping means.
                _ = carry(socket, door, peer, token, stop.clone()) => {}
                // Cancel-safe: a token.
                _ = stop.cancelled() => {}
            }
        })
}

/// Where one `/mqtt` connection goes (an owned [`MqttDoor`]).
enum Door {
    Gate(crate::gate::Gate),
    Forward(String),
}

/// The page's MQTT from `peer` (with `token`, if the request had one), carried through the
/// gate in this process, or to an external broker's `target` over TCP.
async fn carry(
    socket: WebSocket,
    door: Door,
    peer: SocketAddr,
    token: Option<String>,
    stop: CancellationToken,
) {
    match door {
        Door::Gate(gate) => {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(gate.serve(theirs, peer, token, stop));
            pump(socket, ours).await;
        }
        Door::Forward(target) => {
            let tcp = match tokio::net::TcpStream::connect(&target).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("/mqtt from {peer}: cannot reach broker {target}: {e}");
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            pump(socket, tcp).await;
        }
    }
}

/// Copies MQTT bytes both ways between the page's WebSocket and `stream`. MQTT needs no
/// framing help: WebSocket binary messages carry the same byte stream. A message over
/// [`MAX_WS_MESSAGE`] ends the WebSocket with an error, and with it the pump.
async fn pump(socket: WebSocket, stream: impl AsyncRead + AsyncWrite + Send + Unpin) {
    let (mut stream_rd, mut stream_wr) = tokio::io::split(stream);
    let (mut ws_tx, mut ws_rx) = socket.split();
    let upstream = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(bytes) => {
                    // Not a match guard, as clippy suggests: a guard that writes would hide the
                    // write where a reader looks only for a condition.
                    #[allow(clippy::collapsible_match)]
                    if stream_wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = stream_wr.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream_rd.read(&mut buf).await {
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
    // Either side closing ends the pump; the other half is dropped with it.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}
