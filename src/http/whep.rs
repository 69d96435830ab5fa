//! The WHEP door: `POST /whep` with an SDP offer starts a session, `PATCH /whep/{id}` trickles
//! the viewer's candidates (or restarts ICE), `DELETE /whep/{id}` ends it, `OPTIONS` answers CORS preflights and
//! names the ICE servers. A signalling adapter beside MQTT's: each request becomes the
//! [`Inbound`] message an MQTT viewer would send, on a sid of its own
//! ([`whep::sid_of`]), and the session manager's reply comes back through
//! [`crate::signalling::route`] to [`WhepDoor::deliver`]. Sessions, limits, tokens and codecs
//! are the manager's, exactly as for MQTT viewers; what WHEP itself says is in
//! `signalling::whep` (pure).

use super::guard::{self, Authority};
use super::serve::Scheme;
use super::HttpState;
use crate::signalling::protocol::{
    ErrorCode, IceServer, Inbound, Outbound, ProtocolError, MAX_PAYLOAD,
};
use crate::signalling::whep::{self, Cors, Patch};
use crate::signalling::{Outgoing, SignalEvent};
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// How long a request waits for the session manager's reply. An answer takes milliseconds; this
/// bounds a request when rtcam is stopping.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// The WHEP door's state: the manager's inbox, the requests waiting for its reply, and the
/// session resources that exist. Cheap to clone.
#[derive(Clone)]
pub struct WhepDoor {
    inner: Arc<Inner>,
}

struct Inner {
    events: mpsc::Sender<SignalEvent>,
    /// A request waiting for the manager's first reply to its sid.
    waiting: Mutex<HashMap<String, oneshot::Sender<Outbound>>>,
    /// Live session resources by sid; their ids are known only to their own viewers.
    resources: Mutex<HashMap<String, Resource>>,
    ice_servers: Arc<crate::turn::IceServers>,
    /// `[auth] secret` is set: every session needs a `view` token (and other pages may ask).
    tokens_required: bool,
    /// Sessions one client address may hold (loopback excepted), as for clients of the gate.
    per_address: usize,
}

struct Resource {
    peer: IpAddr,
    etag: String,
    /// The offer's ICE username fragment: a `PATCH` naming another one asks for a restart.
    offer_ufrag: Option<String>,
    /// The offer in force, which an ICE restart's offer is made from.
    offer: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned map is still a consistent map: each use is one insert or remove.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WhepDoor {
    /// `events` is the session manager's inbox; `max_sessions` its limit, half of which one
    /// address may hold.
    pub fn new(
        events: mpsc::Sender<SignalEvent>,
        ice_servers: Arc<crate::turn::IceServers>,
        tokens_required: bool,
        max_sessions: usize,
    ) -> Self {
        WhepDoor {
            inner: Arc::new(Inner {
                events,
                waiting: Mutex::default(),
                resources: Mutex::default(),
                ice_servers,
                tokens_required,
                per_address: crate::session::per_address_cap(max_sessions),
            }),
        }
    }

    /// Hands the session manager's messages for WHEP viewers to the requests waiting for them,
    /// until the router is gone. A session's end removes its resource. rtcam's later candidates
    /// have no way to a WHEP viewer (the answer already carries its host candidates).
    pub async fn deliver(self, mut replies: mpsc::Receiver<Outgoing>) {
        while let Some(Outgoing { sid, message }) = replies.recv().await {
            // A request waits for an answer, a refusal or ICE servers: a candidate of rtcam's
            // still on its way from before is not the reply to it.
            let reply = matches!(
                message,
                Outbound::Answer { .. } | Outbound::Error { .. } | Outbound::IceServers { .. }
            );
            let waiter = reply
                .then(|| lock(&self.inner.waiting).remove(&sid))
                .flatten();
            if let Some(waiter) = waiter {
                let _ = waiter.send(message);
                continue;
            }
            match message {
                Outbound::Bye { .. } => {
                    lock(&self.inner.resources).remove(&sid);
                }
                Outbound::Error { code, message } => {
                    tracing::debug!(%sid, "WHEP session refused a message: {code}: {message}");
                }
                _ => {}
            }
        }
    }

    /// Sends `message` as viewer `sid` and waits for the manager's first reply.
    async fn ask(&self, sid: &str, message: Inbound) -> Result<Outbound, ProtocolError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.waiting).insert(sid.to_string(), tx);
        let event = SignalEvent {
            sid: sid.to_string(),
            message: Ok(message),
        };
        let reply = if self.inner.events.send(event).await.is_ok() {
            tokio::time::timeout(REPLY_WAIT, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        lock(&self.inner.waiting).remove(sid);
        reply.ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::Internal,
                "The camera did not answer in time (is it stopping?); try again.",
            )
        })
    }

    /// Sends `message` as viewer `sid`, expecting no reply.
    async fn tell(&self, sid: &str, message: Inbound) {
        let event = SignalEvent {
            sid: sid.to_string(),
            message: Ok(message),
        };
        let _ = self.inner.events.send(event).await;
    }

    /// Holds a place for a new session's resource before its offer goes to the manager, so a
    /// session that ends as soon as it is answered still finds (and removes) it. Refused when
    /// the client's address holds its share of sessions already (loopback excepted).
    fn reserve(&self, sid: &str, resource: Resource) -> Result<(), ProtocolError> {
        let mut resources = lock(&self.inner.resources);
        if !resource.peer.is_loopback() {
            let key = crate::admission::address_key(resource.peer);
            let held = resources
                .values()
                .filter(|r| crate::admission::address_key(r.peer) == key)
                .count();
            if held >= self.inner.per_address {
                return Err(ProtocolError::new(
                    ErrorCode::TooManySessions,
                    format!(
                        "This address already watches in {held} of the camera's sessions, the most one address may hold; end one first."
                    ),
                ));
            }
        }
        resources.insert(sid.to_string(), resource);
        Ok(())
    }
}

/// The WHEP routes, for `http::serve` to merge.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route(whep::ENDPOINT, post(offer).options(endpoint_options))
        .route(
            "/whep/:id",
            axum::routing::patch(patch)
                .delete(delete)
                .options(resource_options),
        )
}

/// What every WHEP handler needs first: the door, and whether the request's page may use it.
/// Extracted before the handler runs; a request that may not go on gets its refusal instead.
struct Checked {
    door: WhepDoor,
    cors: Cors,
    origin: Option<String>,
}

/// The door (404 when rtcam has none) and the CORS verdict on the request's `Origin` (403 for a
/// page that may not use it).
fn admit(state: &HttpState, headers: &HeaderMap, scheme: Scheme) -> Result<Checked, Box<Response>> {
    let Some(door) = state.whep.clone() else {
        return Err(Box::new(
            (StatusCode::NOT_FOUND, "not found").into_response(),
        ));
    };
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let origin = text(header::ORIGIN);
    let same_origin = match text(header::HOST).and_then(Authority::parse) {
        Some(host) => guard::check_origin(origin, &host, scheme).is_ok(),
        None => false,
    };
    let cors = whep::cors(origin, same_origin, door.inner.tokens_required);
    if cors == Cors::Refuse {
        let why = format!(
            "A page from {} may not use this camera's WHEP door: the camera needs no token, so only its own page may (set [auth] secret to let other pages in with a token).\n",
            origin.unwrap_or_default()
        );
        return Err(Box::new((StatusCode::FORBIDDEN, why).into_response()));
    }
    Ok(Checked {
        door,
        cors,
        origin: origin.map(str::to_owned),
    })
}

#[axum::async_trait]
impl FromRequestParts<Arc<HttpState>> for Checked {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<HttpState>,
    ) -> Result<Checked, Response> {
        // `serve` puts the door on every request; plain HTTP is the stricter guess.
        let scheme = parts
            .extensions
            .get::<Scheme>()
            .copied()
            .unwrap_or(Scheme::Http);
        admit(state, &parts.headers, scheme).map_err(|refused| *refused)
    }
}

impl Checked {
    /// `response` with the CORS headers another page needs to read it.
    fn finish(&self, mut response: Response) -> Response {
        if let (Cors::Allow, Some(origin)) = (self.cors, &self.origin) {
            let headers = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(origin) {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            }
            headers.insert(header::VARY, HeaderValue::from_static("origin"));
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("location, etag, link, accept-patch, retry-after"),
            );
        }
        response
    }

    /// A preflight's answer: which methods and headers the page may use.
    fn preflight(&self, methods: &'static str, mut response: Response) -> Response {
        let headers = response.headers_mut();
        headers.insert(header::ALLOW, HeaderValue::from_static(methods));
        if self.cors == Cors::Allow {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(methods),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, if-match"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            // Chromium asks before a public page reaches a private address (Private Network
            // Access); the token the request must carry is what guards the camera.
            headers.insert(
                HeaderName::from_static("access-control-allow-private-network"),
                HeaderValue::from_static("true"),
            );
        }
        self.finish(response)
    }
}

/// A refusal as WHEP players get it: the status for its code ([`whep::status_of`]) and the
/// signalling protocol's `{"code", "message"}` as a JSON body.
fn refusal(e: &ProtocolError) -> Response {
    let status =
        StatusCode::from_u16(whep::status_of(e.code)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "code": e.code.as_str(), "message": e.message }).to_string();
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(secs) = whep::retry_after(e.code) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if e.code == ErrorCode::Unauthorized {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn unknown_resource() -> Response {
    refusal(&ProtocolError::new(
        ErrorCode::UnknownSession,
        "There is no such WHEP session (it ended, or never was).",
    ))
}

/// Whether the request's `Content-Type` is `want` (parameters aside).
fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

/// The body, up to the protocol's payload limit.
async fn read_body(body: Body) -> Result<String, ProtocolError> {
    let bytes = axum::body::to_bytes(body, MAX_PAYLOAD).await.map_err(|_| {
        ProtocolError::new(
            ErrorCode::PayloadTooLarge,
            format!("The body is larger than {MAX_PAYLOAD} bytes, the most rtcam accepts."),
        )
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ProtocolError::new(ErrorCode::BadSdp, "The body is not UTF-8 text."))
}

/// `Authorization: Bearer <token>`, without the spaces around the token.
fn bearer(headers: &HeaderMap) -> Option<String> {
    super::bearer(headers).map(|t| t.trim().to_string())
}

fn new_resource_id() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), whep::RESOURCE_ID_LEN)
}

/// The ICE servers a viewer may use, with TURN credentials derived now, as `Link` values.
fn ice_links(servers: Vec<crate::config::IceServer>) -> Vec<String> {
    let servers: Vec<IceServer> = servers
        .into_iter()
        .map(|s| IceServer {
            urls: s.urls,
            username: s.username,
            credential: s.credential,
        })
        .collect();
    whep::ice_server_links(&servers)
}

fn append(response: &mut Response, name: HeaderName, values: &[String]) {
    for v in values {
        if let Ok(v) = HeaderValue::from_str(v) {
            response.headers_mut().append(name.clone(), v);
        }
    }
}

/// `POST /whep`: an SDP offer in, `201 Created` with the answer, its resource's `Location`,
/// `ETag` and the ICE servers out; or the refusal the session manager (or this door) gave.
async fn offer(
    checked: Checked,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = start_session(&checked.door, peer.ip(), &headers, body).await;
    checked.finish(match result {
        Ok(created) => created,
        Err(e) => refusal(&e),
    })
}

async fn start_session(
    door: &WhepDoor,
    peer: IpAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ProtocolError> {
    if !content_type_is(headers, "application/sdp") {
        return Err(ProtocolError::new(
            ErrorCode::BadSdp,
            "A WHEP offer is sent as Content-Type: application/sdp.",
        ));
    }
    let sdp = read_body(body).await?;
    let resource = new_resource_id();
    let sid = whep::sid_of(&resource);
    let offer_ufrag = whep::ice_ufrag(&sdp).map(str::to_owned);
    let place = Resource {
        peer,
        etag: String::new(),
        offer_ufrag,
        offer: sdp.clone(),
    };
    door.reserve(&sid, place)?;
    let token = bearer(headers);
    let refused = |e: ProtocolError| {
        lock(&door.inner.resources).remove(&sid);
        e
    };
    let answer = match door.ask(&sid, Inbound::Offer { sdp, token }).await {
        Ok(Outbound::Answer { sdp }) => sdp,
        Ok(Outbound::Error { code, message }) => {
            return Err(refused(ProtocolError::new(code, message)))
        }
        Ok(other) => {
            tracing::warn!("WHEP offer got an unexpected first reply: {other:?}");
            return Err(refused(ProtocolError::new(
                ErrorCode::Internal,
                "The camera could not set up the session.",
            )));
        }
        Err(e) => return Err(refused(e)),
    };
    let etag = whep::etag_of(&answer);
    if let Some(r) = lock(&door.inner.resources).get_mut(&sid) {
        r.etag.clone_from(&etag);
    }
    let mut response = (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_string()),
            (header::LOCATION, whep::location(&resource)),
            (header::ETAG, etag),
            (
                HeaderName::from_static("accept-patch"),
                whep::SDPFRAG.to_string(),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        answer,
    )
        .into_response();
    let handed = door.inner.ice_servers.for_viewers(SystemTime::now());
    append(&mut response, header::LINK, &ice_links(handed.servers));
    Ok(response)
}

/// `PATCH /whep/{id}`: the viewer's trickled candidates (RFC 8840), or an ICE restart (new
/// ICE credentials in the fragment).
async fn patch(
    checked: Checked,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = trickle(&checked.door, &id, &headers, body).await;
    checked.finish(response.unwrap_or_else(|e| e))
}

async fn trickle(
    door: &WhepDoor,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let sid = whep::sid_of(id);
    let (etag, offer_ufrag, offer) = {
        let resources = lock(&door.inner.resources);
        match resources.get(&sid).filter(|_| whep::is_resource_id(id)) {
            Some(r) => (r.etag.clone(), r.offer_ufrag.clone(), r.offer.clone()),
            None => return Err(unknown_resource()),
        }
    };
    if !content_type_is(headers, whep::SDPFRAG) {
        return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response());
    }
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    if !whep::if_match_ok(if_match, &etag) {
        return Err(StatusCode::PRECONDITION_FAILED.into_response());
    }
    let text = read_body(body).await.map_err(|e| refusal(&e))?;
    let fragment = whep::parse_fragment(&text).map_err(|e| {
        refusal(&ProtocolError::new(
            ErrorCode::BadSdp,
            format!("The body is not a trickle fragment: {e}."),
        ))
    })?;
    if whep::classify(&fragment, offer_ufrag.as_deref()) == Patch::Restart {
        return restart(door, &sid, &offer, &fragment)
            .await
            .map_err(|e| refusal(&e));
    }
    for candidate in fragment.candidates {
        door.tell(&sid, Inbound::Candidate(candidate)).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An ICE restart (RFC 9725 section 4.3.2): the session's offer with the fragment's new ICE
/// credentials goes to the session, which restarts ICE as the answerer; `200 OK` carries
/// rtcam's new credentials and candidates as a fragment, and the new `ETag`.
async fn restart(
    door: &WhepDoor,
    sid: &str,
    offer: &str,
    fragment: &whep::Fragment,
) -> Result<Response, ProtocolError> {
    let sdp = whep::restart_offer(offer, fragment);
    let answer = match door.ask(sid, Inbound::Restart { sdp: sdp.clone() }).await? {
        Outbound::Answer { sdp } => sdp,
        Outbound::Error { code, message } => return Err(ProtocolError::new(code, message)),
        _ => {
            return Err(ProtocolError::new(
                ErrorCode::Internal,
                "The camera could not restart ICE.",
            ))
        }
    };
    let etag = whep::etag_of(&answer);
    if let Some(r) = lock(&door.inner.resources).get_mut(sid) {
        r.etag.clone_from(&etag);
        r.offer_ufrag = fragment.ice_ufrag.clone();
        r.offer = sdp;
    }
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, whep::SDPFRAG.to_string()),
            (header::ETAG, etag),
        ],
        whep::answer_fragment(&answer),
    )
        .into_response())
}

/// `DELETE /whep/{id}`: ends the session, as an MQTT viewer's `bye` does.
async fn delete(checked: Checked, Path(id): Path<String>) -> Response {
    let sid = whep::sid_of(&id);
    let known =
        whep::is_resource_id(&id) && lock(&checked.door.inner.resources).remove(&sid).is_some();
    let response = if known {
        checked.door.tell(&sid, Inbound::Bye).await;
        StatusCode::OK.into_response()
    } else {
        unknown_resource()
    };
    checked.finish(response)
}

/// `OPTIONS /whep`: a CORS preflight's answer, and the ICE servers as `Link` headers for a
/// request the camera would let view (with `[auth] secret`, one carrying a `view` token; a
/// browser's preflight carries none, so it gets none). Asked of the session manager as an MQTT
/// viewer's `ice_servers` is: the same token check and rate limit.
async fn endpoint_options(checked: Checked, headers: HeaderMap) -> Response {
    let sid = whep::sid_of(&new_resource_id());
    let token = bearer(&headers);
    let links = match checked.door.ask(&sid, Inbound::IceServers { token }).await {
        Ok(Outbound::IceServers { ice_servers, .. }) => whep::ice_server_links(&ice_servers),
        _ => Vec::new(),
    };
    let mut response = (
        StatusCode::NO_CONTENT,
        [(HeaderName::from_static("accept-post"), "application/sdp")],
    )
        .into_response();
    append(&mut response, header::LINK, &links);
    checked.preflight("POST, OPTIONS", response)
}

/// `OPTIONS /whep/{id}`: a CORS preflight for `PATCH` and `DELETE`.
async fn resource_options(checked: Checked) -> Response {
    let response = (
        StatusCode::NO_CONTENT,
        [(HeaderName::from_static("accept-patch"), whep::SDPFRAG)],
    )
        .into_response();
    checked.preflight("PATCH, DELETE, OPTIONS", response)
}
