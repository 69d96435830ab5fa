//! The gate: every outside MQTT client of the embedded broker passes through here, from the
//! page's `/mqtt` WebSocket (http.rs hands over its byte stream) or a broker listener
//! (`[mqtt] embedded_listen`). The broker itself listens on loopback only, with a password
//! that only rtcam and the gate know, so nothing reaches it around the gate.
//!
//! Each connection authenticates once, at CONNECT (a broker user from the users file, a token
//! as the password or on the WebSocket's URL, or nothing: a viewer), and every packet that names
//! a topic is checked against [`policy`] before the broker sees it. Refused subscriptions get a
//! failing SUBACK, refused publishes are dropped (with a PUBACK, so the client does not resend
//! them), and a client that keeps trying is disconnected. Connections are capped in total and
//! per address; a token's connection ends when the token expires.

pub mod codec;
pub mod filter;
pub mod policy;
pub mod users;

use crate::admission::{Caps, Counts, Slot};
use crate::auth::{Authority, Right};
use crate::util::RateLimiter;
use bytes::{Bytes, BytesMut};
use codec::{ConnectRefusal, Goodbye, Request, Version};
use filter::{PacketFilter, Step};
use policy::{Identity, Policy, Rights};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use users::Users;

/// The largest packet a client may send: a signalling message (64 KiB at most) with its topic
/// and headers. Larger ones end the connection before they are buffered whole.
pub const MAX_INBOUND: usize = crate::signalling::protocol::MAX_PAYLOAD + 8 * 1024;
/// Time a client has to send its CONNECT after opening the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Outside connections at once, and from one address (loopback is not limited per address:
/// it is the board's own programs, and the page behind a local reverse proxy).
pub const MAX_CONNECTIONS: usize = 256;
pub const MAX_PER_ADDRESS: usize = 16;
const CAPS: Caps = Caps {
    total: MAX_CONNECTIONS,
    per_address: MAX_PER_ADDRESS,
};
/// Subscriptions one connection may hold; a viewer needs two.
pub const MAX_SUBSCRIPTIONS: usize = 32;

/// What the gate needs to decide and to reach the broker.
pub struct GateConfig {
    pub policy: Policy,
    pub users: Users,
    /// Checks tokens given as the MQTT password or on the WebSocket's URL.
    pub authority: Option<Authority>,
    /// The broker's internal listeners, MQTT 3.1.1 and MQTT 5.
    pub upstream_v311: SocketAddr,
    pub upstream_v5: SocketAddr,
    /// The gate's login on those listeners.
    pub login: (String, String),
}

/// What the session manager needs to know of the clients connected through the gate, by
/// client id (= session id for a viewer): the rights a token or broker user gave it (a session
/// opened over the gate needs no token in its offer, so tokens never travel through the
/// broker), and its address (sessions per address are capped).
#[derive(Clone, Default)]
pub struct ClientRights {
    inner: Arc<Mutex<HashMap<String, Grant>>>,
}

#[derive(Debug, Clone)]
struct Grant {
    /// `None` for a client that showed no token or login (a viewer of an open camera).
    rights: Option<Vec<Right>>,
    ip: IpAddr,
    /// Which connection holds the id; a later one with the same id takes it over.
    serial: u64,
}

impl ClientRights {
    /// The rights of the client connected under `client_id`, if it authenticated with a token
    /// or as a broker user.
    pub fn rights_of(&self, client_id: &str) -> Option<Vec<Right>> {
        self.lock().get(client_id).and_then(|g| g.rights.clone())
    }

    /// The address the client connected under `client_id` comes from.
    pub fn address_of(&self, client_id: &str) -> Option<IpAddr> {
        self.lock().get(client_id).map(|g| g.ip)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Grant>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, client_id: &str, rights: Option<Vec<Right>>, ip: IpAddr, serial: u64) {
        self.lock()
            .insert(client_id.to_string(), Grant { rights, ip, serial });
    }

    fn remove(&self, client_id: &str, serial: u64) {
        let mut map = self.lock();
        if map.get(client_id).is_some_and(|g| g.serial == serial) {
            map.remove(client_id);
        }
    }
}

/// Counts for `/metrics` (src/metrics.rs names them) and tests; they only grow.
#[derive(Debug, Default)]
pub struct GateStats {
    pub connections: AtomicU64,
    pub refused_connections: AtomicU64,
    pub refused_packets: AtomicU64,
}

#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    config: GateConfig,
    rights: ClientRights,
    stats: GateStats,
    /// Connections open now, in all and per address.
    connections: Arc<Mutex<Counts>>,
    /// Client ids connected now, with the serial and address of the connection holding each: a
    /// viewer's id is its session, and a connection from elsewhere may not take it over.
    held_ids: Mutex<HashMap<String, (u64, IpAddr)>>,
    /// Refusals are logged once per connection, and no more than a few per second in all.
    log_budget: Mutex<RateLimiter>,
    serial: AtomicU64,
}

impl Gate {
    pub fn new(config: GateConfig) -> Gate {
        Gate {
            inner: Arc::new(Inner {
                config,
                rights: ClientRights::default(),
                held_ids: Mutex::new(HashMap::new()),
                stats: GateStats::default(),
                connections: Arc::new(Mutex::new(Counts::new(CAPS))),
                log_budget: Mutex::new(RateLimiter::new(2, 10)),
                serial: AtomicU64::new(0),
            }),
        }
    }

    pub fn client_rights(&self) -> ClientRights {
        self.inner.rights.clone()
    }

    pub fn stats(&self) -> &GateStats {
        &self.inner.stats
    }

    /// Accepts clients on `listener` until `shutdown`.
    pub async fn listen(self, listener: tokio::net::TcpListener, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                // Cancel-safe: level-triggered token.
                _ = shutdown.cancelled() => break,
                // Cancel-safe: accept either returns a connection or nothing happened.
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(self.clone().serve(stream, peer, None, shutdown.clone()));
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(e) => {
                        tracing::debug!("MQTT listener: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    /// Serves one client connection: `stream` carries its MQTT bytes (a TCP connection, or a
    /// WebSocket's payload), `url_token` a token that came with it outside MQTT.
    pub async fn serve<S>(
        self,
        stream: S,
        peer: SocketAddr,
        url_token: Option<String>,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Some(_slot) = self.take_slot(peer) else {
            return;
        };
        self.inner.stats.connections.fetch_add(1, Ordering::Relaxed);
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut buf = BytesMut::with_capacity(4096);
        let Some(connect) = self.read_connect(&mut rd, &mut buf, peer).await else {
            return;
        };
        let serial = self.inner.serial.fetch_add(1, Ordering::Relaxed);
        let Some((session, upstream)) = self
            .open(&connect, peer, url_token.as_deref(), serial, &mut wr)
            .await
        else {
            return;
        };
        self.inner.rights.insert(
            &session.identity.client_id,
            session.grant.clone(),
            peer.ip(),
            serial,
        );
        let client_id = session.identity.client_id.clone();
        let conn = Connection {
            gate: &self,
            peer,
            version: connect.version,
            filter: PacketFilter::new(connect.version, session.identity),
        };
        let expires = session.expires;
        conn.run(rd, buf, wr, upstream, expires, shutdown).await;
        self.release(&client_id, serial);
    }

    /// A place among the connections the caps allow, or `None` (counted and logged).
    fn take_slot(&self, peer: SocketAddr) -> Option<Slot> {
        match Slot::take(&self.inner.connections, peer.ip()) {
            Ok(slot) => Some(slot),
            Err(_) => {
                self.inner
                    .stats
                    .refused_connections
                    .fetch_add(1, Ordering::Relaxed);
                self.log_refusal(
                    peer,
                    "too many MQTT connections (from this address or in all)",
                );
                None
            }
        }
    }

    /// The client's CONNECT, within [`CONNECT_TIMEOUT`]; `None` if it closed, took too long or
    /// sent something else first (logged).
    async fn read_connect<R: AsyncRead + Unpin>(
        &self,
        rd: &mut R,
        buf: &mut BytesMut,
        peer: SocketAddr,
    ) -> Option<codec::Connect> {
        let first = tokio::time::timeout(CONNECT_TIMEOUT, read_request(rd, buf, None));
        match first.await {
            Ok(Ok(Some((_, Request::Connect(c))))) => Some(*c),
            Ok(Err(e)) => {
                self.log_refusal(peer, e);
                None
            }
            _ => None,
        }
    }

    /// Admits the client as connection `serial` and opens its connection to the broker; a
    /// refused client gets its CONNACK here, and `None` is returned.
    async fn open<W: AsyncWrite + Unpin>(
        &self,
        connect: &codec::Connect,
        peer: SocketAddr,
        url_token: Option<&str>,
        serial: u64,
        wr: &mut W,
    ) -> Option<(Admitted, tokio::net::TcpStream)> {
        let session = self
            .admit(connect, peer, url_token)
            .and_then(|s| self.hold_id(s, serial, peer.ip()));
        let session = match session {
            Ok(s) => s,
            Err(why) => {
                self.inner
                    .stats
                    .refused_connections
                    .fetch_add(1, Ordering::Relaxed);
                self.log_refusal(peer, &why);
                let _ = wr
                    .write_all(&codec::connack_refused(connect.version, why.refusal()))
                    .await;
                let _ = wr.shutdown().await;
                return None;
            }
        };
        match self.inner.connect_upstream(connect, &session).await {
            Ok(upstream) => Some((session, upstream)),
            Err(e) => {
                tracing::warn!("MQTT gate: cannot reach the embedded broker: {e}");
                self.release(&session.identity.client_id, serial);
                let _ = wr
                    .write_all(&codec::connack_refused(
                        connect.version,
                        ConnectRefusal::ServerBusy,
                    ))
                    .await;
                None
            }
        }
    }

    /// Forgets what connection `serial` held under `client_id`, unless a later one took it over.
    fn release(&self, client_id: &str, serial: u64) {
        self.inner.rights.remove(client_id, serial);
        let mut held = self
            .inner
            .held_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if held.get(client_id).is_some_and(|(s, _)| *s == serial) {
            held.remove(client_id);
        }
    }

    /// Records the connection's client id as held. A viewer's id held by a connection from
    /// another address is refused, so a stolen or replayed session id cannot push the viewer
    /// off; from the same address it is the viewer reconnecting (a page on a flaky link, whose
    /// old connection is not closed yet) and takes the id over, as MQTT says. Broker users
    /// always may (their tools reconnect under a fixed id).
    fn hold_id(&self, session: Admitted, serial: u64, ip: IpAddr) -> Result<Admitted, Unwelcome> {
        let mut held = self
            .inner
            .held_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let id = &session.identity.client_id;
        let elsewhere = held.get(id).is_some_and(|(_, by)| *by != ip);
        if elsewhere && !session.identity.rights.operator {
            return Err(Unwelcome::IdHeld);
        }
        held.insert(id.clone(), (serial, ip));
        Ok(session)
    }

    /// Decides who a CONNECT is, or why it is refused.
    fn admit(
        &self,
        connect: &codec::Connect,
        peer: SocketAddr,
        url_token: Option<&str>,
    ) -> Result<Admitted, Unwelcome> {
        let config = &self.inner.config;
        let (rights, grant, expires) = self.authenticate(connect, url_token)?;
        // MQTT lets a client leave its id to the broker (mosquitto's clients do): it gets a
        // random one, which also makes it a valid session id.
        let client_id = if connect.client_id.is_empty() {
            format!("auto-{}", random_id())
        } else {
            connect.client_id.clone()
        };
        config
            .policy
            .check_connect(&client_id, &rights)
            .map_err(Unwelcome::ClientId)?;
        let identity = Identity { client_id, rights };
        if let Some((topic, retain)) = &connect.will {
            config
                .policy
                .check_publish(&identity, topic, *retain)
                .map_err(Unwelcome::Will)?;
        }
        tracing::debug!(%peer, client = %identity.client_id, rights = identity.rights.describe(), "MQTT client admitted");
        Ok(Admitted {
            identity,
            grant,
            expires,
        })
    }

    /// The rights a CONNECT's login (or the URL's token) proves, the token's rights to record
    /// for the session manager, and when they end.
    #[allow(clippy::type_complexity)]
    fn authenticate(
        &self,
        connect: &codec::Connect,
        url_token: Option<&str>,
    ) -> Result<(Rights, Option<Vec<Right>>, Option<SystemTime>), Unwelcome> {
        let config = &self.inner.config;
        let token = match &connect.login {
            Some((user, password)) if config.users.verify(user, password) => {
                let all = Right::ALL.to_vec();
                return Ok((Rights::OPERATOR, Some(all), None));
            }
            Some((_, password)) => Some(password.as_str()),
            None => url_token,
        };
        match (&config.authority, token) {
            (Some(authority), Some(token)) => {
                // Any right gets a token in: a `metrics` token reads telemetry without watching.
                let now = SystemTime::now();
                let claims = authority
                    .verify(Some(token), Right::View, now)
                    .or_else(|_| authority.verify(Some(token), Right::Control, now))
                    .or_else(|_| authority.verify(Some(token), Right::Metrics, now))
                    .map_err(Unwelcome::Token)?;
                let rights = Rights {
                    view: claims.grants(Right::View),
                    metrics: claims.grants(Right::Metrics),
                    control: claims.grants(Right::Control),
                    operator: false,
                };
                Ok((rights, Some(claims.rights()), Some(claims.expires_at())))
            }
            (Some(_), None) => Err(Unwelcome::NeedsLogin),
            (None, Some(_)) if connect.login.is_some() => Err(Unwelcome::BadLogin),
            (None, _) => Ok((Rights::VIEWER, None, None)),
        }
    }

    fn log_refusal(&self, peer: SocketAddr, why: impl std::fmt::Display) {
        let logged = self
            .inner
            .log_budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_take(Instant::now());
        if logged {
            tracing::info!(%peer, "MQTT gate refused a client: {why}");
        } else {
            tracing::debug!(%peer, "MQTT gate refused a client: {why}");
        }
    }
}

/// Why the gate refuses a client at its CONNECT: a sentence for the log, and the CONNACK's
/// code ([`Unwelcome::refusal`]).
#[derive(Debug, thiserror::Error)]
enum Unwelcome {
    #[error("{0}")]
    ClientId(#[source] policy::Refusal),
    #[error("last will: {0}")]
    Will(#[source] policy::Refusal),
    #[error("token: {0}")]
    Token(#[source] crate::auth::TokenError),
    #[error("this camera needs a token (as the MQTT password) or a broker user")]
    NeedsLogin,
    #[error("unknown user name or wrong password")]
    BadLogin,
    #[error("that client id is connected already, from another address")]
    IdHeld,
}

impl Unwelcome {
    fn refusal(&self) -> ConnectRefusal {
        match self {
            Unwelcome::ClientId(_) | Unwelcome::IdHeld => ConnectRefusal::BadClientId,
            Unwelcome::Will(_) | Unwelcome::NeedsLogin => ConnectRefusal::NotAuthorized,
            Unwelcome::Token(_) | Unwelcome::BadLogin => ConnectRefusal::BadCredentials,
        }
    }
}

struct Admitted {
    identity: Identity,
    grant: Option<Vec<Right>>,
    expires: Option<SystemTime>,
}

impl Inner {
    async fn connect_upstream(
        &self,
        connect: &codec::Connect,
        session: &Admitted,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let addr = match connect.version {
            Version::V311 => self.config.upstream_v311,
            Version::V5 => self.config.upstream_v5,
        };
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let rewritten = connect
            .rewritten(
                &session.identity.client_id,
                (&self.config.login.0, &self.config.login.1),
            )
            .map_err(std::io::Error::other)?;
        tcp.write_all(&rewritten).await?;
        Ok(tcp)
    }
}

/// One admitted client's traffic.
struct Connection<'a> {
    gate: &'a Gate,
    peer: SocketAddr,
    version: Version,
    /// Decides each packet; this connection applies, counts and logs what it decides.
    filter: PacketFilter,
}

impl Connection<'_> {
    /// Carries the connection both ways until either side ends it, the token expires or
    /// `shutdown`; says why to the client when the gate ends it.
    async fn run<R, W>(
        mut self,
        mut rd: R,
        mut buf: BytesMut,
        wr: W,
        upstream: tokio::net::TcpStream,
        expires: Option<SystemTime>,
        shutdown: CancellationToken,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (up_rd, mut up_wr) = upstream.into_split();
        let (to_client, writer) = client_writer(wr);
        let goodbye = tokio::select! {
            // Each branch owns its half of the connection; whichever ends first ends the
            // others by dropping them, which is all cancelling them needs.
            why = self.upstream(&mut rd, &mut buf, &mut up_wr, &to_client) => why,
            () = downstream(up_rd, to_client.clone()) => None,
            () = expiry(expires) => Some(Goodbye::TokenExpired),
            () = shutdown.cancelled() => None,
        };
        if let Some(bytes) = goodbye.and_then(|why| codec::disconnect(self.version, why)) {
            let _ = to_client.send(bytes).await;
        }
        if goodbye == Some(Goodbye::TokenExpired) {
            tracing::info!(peer = %self.peer, "MQTT connection ended: its token expired");
        }
        drop(to_client);
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    }

    /// The client's packets, checked one by one, to the broker (or answered by the gate);
    /// returns why the gate ends the connection, or `None` when a side closed.
    async fn upstream<R, W>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
        up_wr: &mut W,
        to_client: &mpsc::Sender<Bytes>,
    ) -> Option<Goodbye>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            let request = match read_request(rd, buf, Some(self.version)).await {
                Ok(Some(r)) => r,
                Ok(None) => return None,
                Err(e) => {
                    self.gate.log_refusal(self.peer, e);
                    return Some(Goodbye::Malformed);
                }
            };
            match self.check(request) {
                Step::Forward(bytes) => {
                    if up_wr.write_all(&bytes).await.is_err() {
                        return None;
                    }
                }
                Step::Answer(bytes) => {
                    if to_client.send(bytes).await.is_err() {
                        return None;
                    }
                }
                Step::Drop => {}
                Step::End(why) => return Some(why),
            }
        }
    }

    /// The filter's decision on one packet; a refusal is counted, and logged for the first.
    fn check(&mut self, packet: (Bytes, Request)) -> Step {
        let (step, refusal) = self.filter.check(&self.gate.inner.config.policy, packet);
        if let Some(why) = refusal {
            self.gate
                .inner
                .stats
                .refused_packets
                .fetch_add(1, Ordering::Relaxed);
            if self.filter.refusals() == 1 {
                self.gate.log_refusal(
                    self.peer,
                    format_args!("{why} (later refusals on this connection are not logged)"),
                );
            }
        }
        step
    }
}

/// Reads until one whole packet is in `buf`; `None` when the client closed.
async fn read_request<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    version: Option<Version>,
) -> Result<Option<(Bytes, Request)>, codec::CodecError> {
    loop {
        if let Some(found) = codec::read(buf, version, MAX_INBOUND)? {
            return Ok(Some(found));
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

fn random_id() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), 16)
}

/// The task that writes to the client, and its queue. One task writes, so the broker's packets
/// and the gate's own answers (refusals) interleave whole, never mid-packet.
fn client_writer<W>(wr: W) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>)
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (to_client, mut from_gate) = mpsc::channel::<Bytes>(64);
    let writer = tokio::spawn(async move {
        let mut wr = wr;
        while let Some(bytes) = from_gate.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    (to_client, writer)
}

/// The broker's bytes to the client, as they come, until either side closes.
async fn downstream(mut up_rd: tokio::net::tcp::OwnedReadHalf, to_client: mpsc::Sender<Bytes>) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match up_rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to_client
                    .send(Bytes::copy_from_slice(&chunk[..n]))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}

/// Returns when a token's connection must end; never for a connection without one.
async fn expiry(expires: Option<SystemTime>) {
    let remaining = expires.map(|at| {
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    });
    match remaining {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Refusal;

    #[test]
    fn connections_are_capped_per_address_and_in_all_but_not_loopback_alone() {
        let mut c = Counts::new(CAPS);
        let lan: IpAddr = "192.0.2.7".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..MAX_PER_ADDRESS {
            c.admit(lan).unwrap();
        }
        assert_eq!(
            c.admit(lan),
            Err(Refusal::PerAddress),
            "one more from one address"
        );
        for _ in MAX_PER_ADDRESS..MAX_CONNECTIONS {
            c.admit(local).unwrap();
        }
        assert_eq!(
            c.admit(local),
            Err(Refusal::Total),
            "the total holds for loopback too"
        );
        c.release(lan);
        assert_eq!(c.admit(lan), Ok(()), "a place given back is free again");
    }
}
