//! One port for every WebRTC session (`[webrtc] udp_port`, and `tcp_port` for ICE over TCP):
//! a socket (and a listener) per local address, shared by all viewers, demultiplexed by ICE
//! username ([`demux`]).
//!
//! The `webrtc` crate has no mux of its own: each peer connection binds the addresses it is
//! given. Its seam is the [`Runtime`] a connection is built with, which wraps each socket and
//! listener it binds. A session's [`MuxRuntime`] closes what the crate bound (on a port the
//! system picks, so the bind cannot fail) and hands back a stand-in: [`udp::MuxSocket`] sends
//! from the shared socket and receives what the demux routes to it; [`tcp::MuxListener`]
//! yields the connections whose first STUN message names the session. The crate keeps the
//! picked address as the socket's name and in its host candidates; [`Announce`] puts the shared
//! ports (and `public_ips`) in what the viewer is told.
//!
//! TURN is the exception: an allocation belongs to one 5-tuple, so a session's conversation
//! with a TURN server goes over a socket of its own, opened on its first Allocate.

mod demux;
mod tcp;
mod udp;

use crate::signalling::sdp::{ice_ufrag, Announce};
use demux::Demux;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// A session's id on the mux.
type Key = u64;

/// The shared ports and who is behind them.
#[derive(Debug)]
pub struct Mux {
    ports: Ports,
    /// `[webrtc] public_ips`, announced with the ports.
    public_ips: Vec<IpAddr>,
    udp: Mutex<HashMap<IpAddr, Arc<udp::Shared>>>,
    tcp: Mutex<HashMap<IpAddr, Arc<tcp::Shared>>>,
    routes: Arc<Mutex<Routes>>,
    next_key: AtomicU64,
}

/// A shared port that cannot be had, and the key that asked for it.
#[derive(Debug)]
pub struct BindError {
    pub key: &'static str,
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// `[webrtc] udp_port` and `tcp_port`; 0 is off.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub udp: u16,
    pub tcp: u16,
}

#[derive(Debug, Default)]
struct Routes {
    demux: Demux<Key>,
    /// Each session's UDP inbox per local address (a session has a socket on each).
    udp: HashMap<(Key, IpAddr), tokio::sync::mpsc::Sender<udp::Datagram>>,
    /// Each session's queue of accepted ICE-TCP connections per local address.
    tcp: HashMap<(Key, IpAddr), tokio::sync::mpsc::Sender<tcp::Accepted>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mux {
    /// Binds the ports on each of `ips`. Any failure is returned: a port is what a user
    /// forwards and opens in a firewall, so a camera that cannot have it must not start on
    /// another.
    pub fn bind(
        ports: Ports,
        ips: &[IpAddr],
        public_ips: Vec<IpAddr>,
    ) -> Result<Arc<Self>, BindError> {
        let mux = Arc::new(Self {
            ports,
            public_ips,
            udp: Mutex::new(HashMap::new()),
            tcp: Mutex::new(HashMap::new()),
            routes: Arc::new(Mutex::new(Routes::default())),
            next_key: AtomicU64::new(1),
        });
        let error = |key| move |(addr, source)| BindError { key, addr, source };
        for &ip in ips {
            if ports.udp != 0 {
                mux.udp_for(ip).map_err(error("webrtc.udp_port"))?;
            }
            if ports.tcp != 0 {
                mux.tcp_for(ip).map_err(error("webrtc.tcp_port"))?;
            }
        }
        Ok(mux)
    }

    /// The shared UDP socket on `ip`, bound now if this address appeared after rtcam started.
    fn udp_for(&self, ip: IpAddr) -> Result<Arc<udp::Shared>, (SocketAddr, io::Error)> {
        let addr = SocketAddr::new(ip, self.ports.udp);
        bound_or_bind(&self.udp, addr, |a| udp::Shared::bind(a, &self.routes))
    }

    /// The shared ICE-TCP listener on `ip`, bound now if the address is new.
    fn tcp_for(&self, ip: IpAddr) -> Result<Arc<tcp::Shared>, (SocketAddr, io::Error)> {
        let addr = SocketAddr::new(ip, self.ports.tcp);
        bound_or_bind(&self.tcp, addr, |a| tcp::Shared::bind(a, &self.routes))
    }

    /// The ports it shares.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// A new session's place on the mux.
    pub fn session(self: &Arc<Self>) -> Arc<MuxSession> {
        Arc::new(MuxSession {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            mux: Arc::clone(self),
        })
    }

    /// What rtcam's candidates must say; see [`Announce`].
    fn announce<R>(&self, f: impl FnOnce(&Announce<'_>) -> R) -> R {
        let udp_ips: Vec<IpAddr> = lock(&self.udp).keys().copied().collect();
        let tcp_ips: Vec<IpAddr> = lock(&self.tcp).keys().copied().collect();
        f(&Announce {
            udp_port: self.ports.udp,
            udp_ips: &udp_ips,
            tcp_port: self.ports.tcp,
            tcp_ips: &tcp_ips,
            public_ips: &self.public_ips,
        })
    }
}

/// What `bound` holds for `addr`'s address, or what `bind` makes of it, then held.
fn bound_or_bind<T>(
    bound: &Mutex<HashMap<IpAddr, Arc<T>>>,
    addr: SocketAddr,
    bind: impl FnOnce(SocketAddr) -> Result<Arc<T>, (SocketAddr, io::Error)>,
) -> Result<Arc<T>, (SocketAddr, io::Error)> {
    let mut bound = lock(bound);
    if let Some(s) = bound.get(&addr.ip()) {
        return Ok(Arc::clone(s));
    }
    let shared = bind(addr)?;
    bound.insert(addr.ip(), Arc::clone(&shared));
    Ok(shared)
}

/// One session on the mux. Dropped with its peer connection, it takes its routes with it.
#[derive(Debug)]
pub struct MuxSession {
    key: Key,
    mux: Arc<Mux>,
}

impl MuxSession {
    /// An answer to this session as the viewer must see it (see [`Announce`]); checks naming
    /// its ICE ufrag are routed to this session from now on.
    pub fn answer(&self, sdp: &str) -> String {
        if let Some(ufrag) = ice_ufrag(sdp) {
            lock(&self.mux.routes).demux.register_ufrag(self.key, ufrag);
        }
        self.mux.announce(|a| a.answer(sdp))
    }

    /// A candidate of this session's as the viewer must see it.
    pub fn announce_candidate(&self, candidate: &str) -> String {
        self.mux.announce(|a| a.candidate(candidate))
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

/// Tokio, except for the sockets and listeners: see the module documentation.
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
        if self.session.mux.ports.udp == 0 {
            return TokioRuntime.wrap_udp_socket(socket);
        }
        match self.session.mux.udp_for(label.ip()) {
            // The crate's socket only named an address; the shared one carries the traffic.
            Ok(shared) => Ok(udp::MuxSocket::attach(label, shared, &self.session)),
            Err((addr, e)) => {
                // Only an address that appeared after start can get here (start binds them all):
                // this session then uses the port the crate bound, as with `udp_port = 0`.
                tracing::warn!(%addr, "cannot share the WebRTC port on a new address, using a port of the session's own: {e}");
                TokioRuntime.wrap_udp_socket(socket)
            }
        }
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        let label = listener.local_addr()?;
        if self.session.mux.ports.tcp == 0 {
            return TokioRuntime.wrap_tcp_listener(listener);
        }
        match self.session.mux.tcp_for(label.ip()) {
            Ok(_) => Ok(tcp::MuxListener::attach(label, &self.session)),
            Err((addr, e)) => {
                tracing::warn!(%addr, "cannot share the ICE-TCP port on a new address, using a port of the session's own: {e}");
                TokioRuntime.wrap_tcp_listener(listener)
            }
        }
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
        "rtcam-mux"
    }
}

/// A datagram or a TCP connection's first message from anyone on the shared port, through the
/// demux as the readers use it (the fuzz target `shared_port`).
#[cfg(feature = "fuzzing")]
pub fn fuzz_demux(data: &[u8]) {
    let now = std::time::Instant::now();
    let mut demux = Demux::default();
    demux.register_ufrag(1u64, "camA");
    demux.register_ufrag(2, "camB");
    let from = SocketAddr::from(([192, 0, 2, 1], 5000));
    if let Some(transaction) = demux::request_transaction(data) {
        demux.outgoing(1, transaction, now);
    }
    let _ = demux.incoming(data, from, now);
    let _ = demux.incoming(data, from, now + Duration::from_secs(60));
    let _ = demux.owner_of_request(data);
    let _ = demux::is_turn(data);
    demux.remove(1);
}

/// Errors a shared socket or listener shrugs off: an ICMP error from one viewer (port
/// unreachable) or a connection reset surfaces on the shared socket, which is still fine.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
