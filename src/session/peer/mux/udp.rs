//! The shared UDP socket on one address, and a session's stand-in socket on it.

use super::{demux, is_transient, lock, Key, MuxSession, Routes};
use std::collections::HashSet;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Transmit};

/// Datagrams queued for one session's socket before more are dropped (as a full kernel buffer
/// would): a second of a 4 Mbit/s viewer's feedback and more than its checks ever need.
const INBOX: usize = 256;
/// Larger than any datagram on a 1500-byte path.
const MAX_DATAGRAM: usize = 2048;

/// A datagram routed to one session.
#[derive(Debug)]
pub(super) struct Datagram {
    from: SocketAddr,
    data: Vec<u8>,
}

/// One shared socket and the task reading it.
#[derive(Debug)]
pub(super) struct Shared {
    socket: Arc<tokio::net::UdpSocket>,
    _reader: AbortOnDropHandle<()>,
}

impl Shared {
    pub(super) fn bind(
        addr: SocketAddr,
        routes: &Arc<Mutex<Routes>>,
    ) -> Result<Arc<Self>, (SocketAddr, io::Error)> {
        let socket = std::net::UdpSocket::bind(addr)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(tokio::net::UdpSocket::from_std)
            .map_err(|e| (addr, e))?;
        let socket = Arc::new(socket);
        let reader = tokio::spawn(read_shared(
            Arc::clone(&socket),
            addr.ip(),
            Arc::downgrade(routes),
        ));
        tracing::debug!(%addr, "WebRTC UDP port bound");
        Ok(Arc::new(Self {
            socket,
            _reader: AbortOnDropHandle::new(reader),
        }))
    }
}

/// Reads one shared socket for as long as the mux lives, handing each datagram to its session.
async fn read_shared(socket: Arc<tokio::net::UdpSocket>, ip: IpAddr, routes: Weak<Mutex<Routes>>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
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
        if let Some(inbox) = routes.udp.get(&(key, ip)) {
            let _ = inbox.try_send(Datagram {
                from,
                data: buf[..n].to_vec(),
            });
        }
    }
}

/// A session's socket on one local address of the mux.
#[derive(Debug)]
pub(super) struct MuxSocket {
    /// The address the crate bound and knows this socket by.
    label: SocketAddr,
    shared: Arc<Shared>,
    session: Arc<MuxSession>,
    inbox: Mutex<mpsc::Receiver<Datagram>>,
    inbox_tx: mpsc::Sender<Datagram>,
    turn: Mutex<TurnSocket>,
}

impl MuxSocket {
    pub(super) fn attach(
        label: SocketAddr,
        shared: Arc<Shared>,
        session: &Arc<MuxSession>,
    ) -> Arc<dyn AsyncUdpSocket> {
        let (tx, rx) = mpsc::channel(INBOX);
        lock(&session.mux.routes)
            .udp
            .insert(route(session, label), tx.clone());
        Arc::new(Self {
            label,
            shared,
            session: Arc::clone(session),
            inbox: Mutex::new(rx),
            inbox_tx: tx,
            turn: Mutex::new(TurnSocket::default()),
        })
    }

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
        turn.reader = Some(AbortOnDropHandle::new(tokio::spawn(read_turn(
            Arc::clone(&socket),
            self.inbox_tx.clone(),
        ))));
        turn.socket = Some(Arc::clone(&socket));
        Ok(Some(socket))
    }
}

fn route(session: &MuxSession, label: SocketAddr) -> (Key, IpAddr) {
    (session.key, label.ip())
}

impl Drop for MuxSocket {
    fn drop(&mut self) {
        lock(&self.session.mux.routes)
            .udp
            .remove(&route(&self.session, self.label));
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
        if let Some(transaction) = demux::request_transaction(contents) {
            lock(&self.session.mux.routes).demux.outgoing(
                self.session.key,
                transaction,
                Instant::now(),
            );
        }
        // Not `poll_send_to`: a tokio socket wakes only the last task that polled it, and every
        // session's driver sends on this one, so a full send buffer would leave the others
        // waiting for a wake-up that never comes. A datagram that finds the buffer full is
        // dropped instead, as a router's full queue would; NACKs and keyframe requests recover
        // media as from any loss.
        match self.shared.socket.try_send_to(contents, to) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tracing::trace!(%to, "shared WebRTC socket full: datagram dropped");
                Poll::Ready(Ok(contents.len()))
            }
            Err(e) => Poll::Ready(Err(e)),
        }
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
            // Cannot happen while this socket holds a sender; kept an error, not a panic.
            Poll::Ready(None) => Poll::Ready(Err(io::Error::other("the WebRTC port closed"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The session's own socket for TURN servers, and which destinations are TURN servers.
#[derive(Debug, Default)]
struct TurnSocket {
    servers: HashSet<SocketAddr>,
    socket: Option<Arc<tokio::net::UdpSocket>>,
    reader: Option<AbortOnDropHandle<()>>,
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
