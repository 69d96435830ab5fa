//! One UDP port for every WebRTC session (`[webrtc] udp_port`): a socket per local address,
//! shared by all viewers, demultiplexed by ICE username ([`demux`]).
//!
//! The `webrtc` crate has no UDP mux of its own: each peer connection binds the addresses it is
//! given. Its seam is the [`Runtime`] a connection is built with, which wraps each socket it
//! binds. A session's [`MuxRuntime`] closes the socket the crate bound (an ephemeral port, so
//! the bind cannot fail) and hands back a [`MuxSocket`], which sends from the shared socket and
//! receives what the demux routes to it. The crate keeps the ephemeral address as the socket's
//! name and in its host candidates; [`crate::signalling::sdp::announce`] puts the shared port
//! (and `public_ips`) in what the viewer is told.
//!
//! TURN is the exception: an allocation belongs to one 5-tuple, so a session's conversation
//! with a TURN server goes over a socket of its own, opened on its first Allocate.

mod demux;

use crate::signalling::sdp::{ice_ufrag, Announce};
use demux::Demux;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta,
    Runtime, TokioRuntime, Transmit,
};

/// Datagrams queued for one session's socket before more are dropped (as a full kernel buffer
/// would): a second of a 4 Mbit/s viewer's feedback and more than its checks ever need.
const INBOX: usize = 256;
/// Larger than any datagram on a 1500-byte path.
const MAX_DATAGRAM: usize = 2048;

/// A datagram routed to one session.
#[derive(Debug)]
struct Datagram {
    from: SocketAddr,
    data: Vec<u8>,
}

/// A session's id on the mux.
type Key = u64;

/// The shared sockets and who is behind them.
#[derive(Debug)]
pub struct UdpMux {
    port: u16,
    /// `[webrtc] public_ips`, announced with the port.
    public_ips: Vec<IpAddr>,
    sockets: Mutex<HashMap<IpAddr, Arc<Shared>>>,
    routes: Arc<Mutex<Routes>>,
    next_key: AtomicU64,
}

#[derive(Debug, Default)]
struct Routes {
    demux: Demux<Key>,
    /// Each session's inbox per local address (a session has a socket on each).
    inboxes: HashMap<(Key, IpAddr), mpsc::Sender<Datagram>>,
}

/// One shared socket and the task reading it.
#[derive(Debug)]
struct Shared {
    socket: Arc<tokio::net::UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl UdpMux {
    /// Binds `port` on each of `ips`. Any failure is returned: the port is what a user forwards
    /// and opens in a firewall, so a camera that cannot have it must not start on another.
    pub fn bind(
        port: u16,
        ips: &[IpAddr],
        public_ips: Vec<IpAddr>,
    ) -> Result<Arc<Self>, (SocketAddr, io::Error)> {
        let mux = Arc::new(Self {
            port,
            public_ips,
            sockets: Mutex::new(HashMap::new()),
            routes: Arc::new(Mutex::new(Routes::default())),
            next_key: AtomicU64::new(1),
        });
        for &ip in ips {
            mux.shared_for(ip)?;
        }
        Ok(mux)
    }

    /// A candidate of rtcam's as a viewer must see it (see [`Announce`]).
    pub fn announce_candidate(&self, candidate: &str) -> String {
        let shared = self.shared_ips();
        self.announce(&shared).candidate(candidate)
    }

    fn announce<'a>(&'a self, shared_ips: &'a [IpAddr]) -> Announce<'a> {
        Announce {
            port: self.port,
            shared_ips,
            public_ips: &self.public_ips,
        }
    }

    fn shared_ips(&self) -> Vec<IpAddr> {
        lock(&self.sockets).keys().copied().collect()
    }

    /// The shared socket on `ip`, bound now if this address appeared after rtcam started.
    fn shared_for(&self, ip: IpAddr) -> Result<Arc<Shared>, (SocketAddr, io::Error)> {
        let mut sockets = lock(&self.sockets);
        if let Some(s) = sockets.get(&ip) {
            return Ok(Arc::clone(s));
        }
        let addr = SocketAddr::new(ip, self.port);
        let socket = std::net::UdpSocket::bind(addr)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(tokio::net::UdpSocket::from_std)
            .map_err(|e| (addr, e))?;
        let socket = Arc::new(socket);
        let reader = tokio::spawn(read_shared(
            Arc::clone(&socket),
            ip,
            Arc::downgrade(&self.routes),
        ));
        let shared = Arc::new(Shared { socket, reader });
        sockets.insert(ip, Arc::clone(&shared));
        tracing::debug!(%addr, "WebRTC port bound");
        Ok(shared)
    }

    /// A new session's place on the mux: the runtime to build its peer connection with.
    pub fn session(self: &Arc<Self>) -> Arc<MuxSession> {
        Arc::new(MuxSession {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            mux: Arc::clone(self),
        })
    }
}

/// Reads one shared socket for as long as the mux lives, handing each datagram to its session.
async fn read_shared(
    socket: Arc<tokio::net::UdpSocket>,
    ip: IpAddr,
    routes: std::sync::Weak<Mutex<Routes>>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors from one viewer (port unreachable) surface here; the socket is fine.
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                tracing::warn!(%ip, "the shared WebRTC socket failed: {e}");
                return;
            }
        };
        let Some(routes) = routes.upgrade() else {
            return;
        };
        let mut routes = lock(&routes);
        let Some(key) = routes.demux.incoming(&buf[..n], from, Instant::now()) else {
            continue;
        };
        if let Some(inbox) = routes.inboxes.get(&(key, ip)) {
            let _ = inbox.try_send(Datagram {
                from,
                data: buf[..n].to_vec(),
            });
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// One session on the mux. Dropped with its peer connection, it takes its routes with it.
#[derive(Debug)]
pub struct MuxSession {
    key: Key,
    mux: Arc<UdpMux>,
}

impl MuxSession {
    /// An answer to this session as the viewer must see it (see [`Announce`]); checks naming
    /// its ICE ufrag are routed to this session from now on.
    pub fn answer(&self, sdp: &str) -> String {
        if let Some(ufrag) = ice_ufrag(sdp) {
            lock(&self.mux.routes)
                .demux
                .register_ufrag(self.key, ufrag);
        }
        let shared = self.mux.shared_ips();
        self.mux.announce(&shared).answer(sdp)
    }

    /// A candidate of this session's as the viewer must see it.
    pub fn announce_candidate(&self, candidate: &str) -> String {
        self.mux.announce_candidate(candidate)
    }

    /// The runtime a peer connection on the mux is built with.
    pub fn runtime(self: &Arc<Self>) -> Arc<dyn Runtime> {
        Arc::new(MuxRuntime {
            session: Arc::clone(self),
        })
    }
}

impl Drop for MuxSession {
    fn drop(&mut self) {
        lock(&self.mux.routes).demux.remove(self.key);
    }
}

/// Tokio, except for the sockets: see the module documentation.
#[derive(Debug)]
struct MuxRuntime {
    session: Arc<MuxSession>,
}

impl Runtime for MuxRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let label = socket.local_addr()?;
        let mux = &self.session.mux;
        let shared = match mux.shared_for(label.ip()) {
            Ok(shared) => shared,
            Err((addr, e)) => {
                // Only an address that appeared after start can get here (start binds them all):
                // this session then uses the port the crate bound, as with `udp_port = 0`.
                tracing::warn!(%addr, "cannot share the WebRTC port on a new address, using a port of the session's own: {e}");
                return TokioRuntime.wrap_udp_socket(socket);
            }
        };
        // The crate's socket only named an address; the shared one carries the traffic.
        drop(socket);
        let (tx, rx) = mpsc::channel(INBOX);
        lock(&mux.routes)
            .inboxes
            .insert((self.session.key, label.ip()), tx.clone());
        Ok(Arc::new(MuxSocket {
            label,
            shared,
            session: Arc::clone(&self.session),
            inbox: Mutex::new(rx),
            inbox_tx: tx,
            turn: Mutex::new(TurnSocket::default()),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        TokioRuntime.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TokioRuntime.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TokioRuntime.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TokioRuntime.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TokioRuntime.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.yield_now()
    }

    fn name(&self) -> &'static str {
        "rtcam-udp-mux"
    }
}

/// A session's socket on one local address of the mux.
#[derive(Debug)]
struct MuxSocket {
    /// The address the crate bound and knows this socket by.
    label: SocketAddr,
    shared: Arc<Shared>,
    session: Arc<MuxSession>,
    inbox: Mutex<mpsc::Receiver<Datagram>>,
    inbox_tx: mpsc::Sender<Datagram>,
    turn: Mutex<TurnSocket>,
}

/// The session's own socket for TURN servers, and which destinations are TURN servers.
#[derive(Debug, Default)]
struct TurnSocket {
    servers: HashSet<SocketAddr>,
    socket: Option<Arc<tokio::net::UdpSocket>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TurnSocket {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

impl MuxSocket {
    /// The socket to send `packet` to `to` on: the session's own for a TURN server.
    fn turn_socket_for(
        &self,
        packet: &[u8],
        to: SocketAddr,
    ) -> io::Result<Option<Arc<tokio::net::UdpSocket>>> {
        let mut turn = lock(&self.turn);
        if !turn.servers.contains(&to) {
            if !demux::is_turn(packet) {
                return Ok(None);
            }
            turn.servers.insert(to);
        }
        if let Some(s) = &turn.socket {
            return Ok(Some(Arc::clone(s)));
        }
        let std = std::net::UdpSocket::bind(SocketAddr::new(self.label.ip(), 0))?;
        std.set_nonblocking(true)?;
        let socket = Arc::new(tokio::net::UdpSocket::from_std(std)?);
        turn.reader = Some(tokio::spawn(read_turn(
            Arc::clone(&socket),
            self.inbox_tx.clone(),
        )));
        turn.socket = Some(Arc::clone(&socket));
        Ok(Some(socket))
    }
}

/// Everything on a session's TURN socket is the session's.
async fn read_turn(socket: Arc<tokio::net::UdpSocket>, inbox: mpsc::Sender<Datagram>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let datagram = Datagram {
                    from,
                    data: buf[..n].to_vec(),
                };
                if inbox.send(datagram).await.is_err() {
                    return;
                }
            }
            Err(e) if is_transient(&e) => {}
            Err(_) => return,
        }
    }
}

impl Drop for MuxSocket {
    fn drop(&mut self) {
        lock(&self.session.mux.routes)
            .inboxes
            .remove(&(self.session.key, self.label.ip()));
    }
}

impl AsyncUdpSocket for MuxSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.label)
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        let to = transmit.destination;
        let contents = transmit.contents;
        if let Some(turn) = self.turn_socket_for(contents, to)? {
            return turn.poll_send_to(cx, contents, to);
        }
        lock(&self.session.mux.routes)
            .demux
            .outgoing(self.session.key, contents, Instant::now());
        self.shared.socket.poll_send_to(cx, contents, to)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        match lock(&self.inbox).poll_recv(cx) {
            Poll::Ready(Some(d)) => {
                let n = d.data.len().min(buf.len());
                buf[..n].copy_from_slice(&d.data[..n]);
                let mut filled = RecvMeta::default();
                filled.addr = d.from;
                filled.len = n;
                filled.stride = n.max(1);
                filled.dst_ip = Some(self.label.ip());
                *m = filled;
                Poll::Ready(Ok(1))
            }
            // The session's routes are gone: the mux itself was dropped.
            Poll::Ready(None) => Poll::Ready(Err(io::Error::other("the WebRTC port closed"))),
            Poll::Pending => Poll::Pending,
        }
    }
}
