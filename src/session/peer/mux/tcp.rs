//! ICE over TCP (RFC 6544, passive) on one shared listener per address: a viewer's connection
//! belongs to the session its first STUN request names, and is handed to that session's
//! stand-in listener with the bytes already read put back in front.

use super::{is_transient, lock, MuxSession, Routes};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::task::AbortOnDropHandle;
use webrtc::runtime::{AsyncTcpListener, AsyncTcpStream};

/// How long a new connection has to send its first STUN message (a browser sends it at once).
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(3);
/// Connections waiting for their first message at once; more are closed at once, so a
/// stranger opening connections and sending nothing holds at most this many descriptors.
const MAX_PENDING: usize = 128;
/// A first message longer than this is not a connectivity check (those are about 100 bytes).
const MAX_FIRST_MESSAGE: usize = 1500;
/// Connections queued for a session's listener.
const BACKLOG: usize = 8;

/// An ICE-TCP connection routed to a session, and the viewer's address.
pub(super) type Accepted = (RoutedStream, SocketAddr);

/// One shared listener, held by the task accepting on it.
#[derive(Debug)]
pub(super) struct Shared {
    _acceptor: AbortOnDropHandle<()>,
}

impl Shared {
    pub(super) fn bind(
        addr: SocketAddr,
        routes: &Arc<Mutex<Routes>>,
    ) -> Result<Arc<Self>, (SocketAddr, io::Error)> {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| (addr, e))?;
        let acceptor = tokio::spawn(accept(listener, addr.ip(), Arc::downgrade(routes)));
        tracing::debug!(%addr, "ICE-TCP port bound");
        Ok(Arc::new(Self {
            _acceptor: AbortOnDropHandle::new(acceptor),
        }))
    }
}

async fn accept(listener: tokio::net::TcpListener, ip: IpAddr, routes: Weak<Mutex<Routes>>) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                // Out of descriptors, typically: wait rather than spin.
                tracing::warn!(%ip, "ICE-TCP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let routed = tokio::time::timeout(FIRST_MESSAGE_WAIT, place(stream, peer, ip, routes));
            if let Ok(Err(e)) = routed.await {
                tracing::debug!(%peer, "ICE-TCP connection closed: {e}");
            }
            drop(permit);
        });
    }
}

/// Reads a connection's first framed message (RFC 4571: a 16-bit length, then the message) and
/// hands the connection to the session it names; otherwise drops it.
async fn place(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ip: IpAddr,
    routes: Weak<Mutex<Routes>>,
) -> io::Result<()> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let n = usize::from(u16::from_be_bytes(len));
    if n > MAX_FIRST_MESSAGE {
        return Err(io::Error::other("first message too long for a STUN check"));
    }
    let mut first = vec![0u8; 2 + n];
    first[..2].copy_from_slice(&len);
    stream.read_exact(&mut first[2..]).await?;
    let Some(routes) = routes.upgrade() else {
        return Ok(());
    };
    let inbox = {
        let routes = lock(&routes);
        routes
            .demux
            .owner_of_request(&first[2..])
            .and_then(|key| routes.tcp.get(&(key, ip)).cloned())
    };
    let Some(inbox) = inbox else {
        return Err(io::Error::other("not a check for a session of this camera"));
    };
    let local_addr = stream.local_addr()?;
    let (read_half, write_half) = stream.into_split();
    let stream = RoutedStream {
        first: Mutex::new(first),
        read_half,
        write_half,
        local_addr,
        peer_addr: peer,
    };
    inbox
        .try_send((stream, peer))
        .map_err(|_| io::Error::other("the session takes no more connections"))
}

/// A session's listener on one local address of the mux.
#[derive(Debug)]
pub(super) struct MuxListener {
    /// The address the crate bound and knows this listener by.
    label: SocketAddr,
    session: Arc<MuxSession>,
    queue: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
}

impl MuxListener {
    pub(super) fn attach(
        label: SocketAddr,
        session: &Arc<MuxSession>,
    ) -> Arc<dyn AsyncTcpListener> {
        let (tx, rx) = mpsc::channel(BACKLOG);
        lock(&session.mux.routes)
            .tcp
            .insert((session.key, label.ip()), tx);
        Arc::new(Self {
            label,
            session: Arc::clone(session),
            queue: tokio::sync::Mutex::new(rx),
        })
    }
}

impl Drop for MuxListener {
    fn drop(&mut self) {
        lock(&self.session.mux.routes)
            .tcp
            .remove(&(self.session.key, self.label.ip()));
    }
}

impl AsyncTcpListener for MuxListener {
    fn accept<'a>(
        &'a self,
    ) -> Pin<Box<dyn Future<Output = io::Result<(Arc<dyn AsyncTcpStream>, SocketAddr)>> + Send + 'a>>
    {
        Box::pin(async move {
            match self.queue.lock().await.recv().await {
                // The crate knows the connection by its listener's address, as its candidate.
                Some((mut stream, peer)) => {
                    stream.local_addr = self.label;
                    Ok((Arc::new(stream) as Arc<dyn AsyncTcpStream>, peer))
                }
                // The mux is gone with its routes: nothing will ever come.
                None => std::future::pending().await,
            }
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.label)
    }
}

/// A viewer's connection, with the first message read back out before the rest.
#[derive(Debug)]
pub(super) struct RoutedStream {
    first: Mutex<Vec<u8>>,
    read_half: tokio::net::tcp::OwnedReadHalf,
    write_half: tokio::net::tcp::OwnedWriteHalf,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
}

impl AsyncTcpStream for RoutedStream {
    fn read<'a, 'b>(
        &'a self,
        buf: &'b mut [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<usize>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            {
                let mut first = lock(&self.first);
                if !first.is_empty() {
                    let n = first.len().min(buf.len());
                    buf[..n].copy_from_slice(&first[..n]);
                    first.drain(..n);
                    return Ok(n);
                }
            }
            loop {
                self.read_half.readable().await?;
                match self.read_half.try_read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        })
    }

    fn write_all<'a, 'b>(
        &'a self,
        buf: &'b [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            let mut rest = buf;
            while !rest.is_empty() {
                self.write_half.writable().await?;
                match self.write_half.try_write(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer_addr)
    }
}
