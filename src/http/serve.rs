//! rtcam's own accept loop for the HTTP and HTTPS doors: what `axum::serve` did, plus the
//! bounds a server on a shared network needs. A connection must finish its request head within
//! [`HEADER_READ_TIMEOUT`] (and its TLS handshake within [`TLS_HANDSHAKE_TIMEOUT`]), and
//! [`CAPS`] bound connections in all and per client address ([`crate::admission`]), so strangers sending half
//! requests cannot take every file descriptor. Handlers see the peer's address as axum's
//! `ConnectInfo<SocketAddr>`, the door as [`Scheme`], and hold the connection's [`Slot`] for as
//! long as they keep its socket (a WebSocket outlives the HTTP exchange that opened it).
//!
//! The bookkeeping is pure (`admission::Counts`); the loop around it does the I/O.

use crate::admission::{lock, Caps, Counts, Refusal, Slot};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a client has to send a whole request head, from the connection's start or the end
/// of its previous response. Browsers send theirs at once; only a stalled or hostile client
/// takes longer, and until then it holds a file descriptor.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TLS handshake may take, for the same reason.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The doors' caps. The total stays well below the service's `LimitNOFILE` (4096), so the
/// broker, camera and viewers keep descriptors whatever the doors hold. A browser opens about
/// six connections for the page and one for `/mqtt`; a household behind one NAT has a few
/// browsers.
pub const CAPS: Caps = Caps {
    total: 512,
    per_address: 32,
};

/// Which door a request came through; an extension on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The connection's slot as a request extension (extensions must be `Clone`).
#[derive(Debug, Clone)]
pub struct SlotHandle(pub Arc<Slot>);

/// A listening door: its socket, its scheme, the TLS acceptor for HTTPS, and the router its
/// requests go to.
pub struct Door {
    pub listener: TcpListener,
    pub tls: Option<super::tls::Acceptor>,
    pub router: Router,
}

impl Door {
    fn scheme(&self) -> Scheme {
        if self.tls.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }
}

/// Serves every door until `shutdown`, then closes idle connections, lets requests in flight
/// finish, and returns when every connection task has ended (the caller bounds that wait).
pub async fn run(doors: Vec<Door>, caps: Caps, shutdown: CancellationToken) {
    let counts = Arc::new(Mutex::new(Counts::new(caps)));
    // Each connection task holds a clone of `done_tx`; `recv` returns None once all are gone.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut accepting = Vec::new();
    for door in doors {
        accepting.push(tokio::spawn(accept_loop(
            door,
            counts.clone(),
            shutdown.clone(),
            done_tx.clone(),
        )));
    }
    drop(done_tx);
    for task in accepting {
        let _ = task.await;
    }
    let _ = done_rx.recv().await;
}

async fn accept_loop(
    door: Door,
    counts: Arc<Mutex<Counts>>,
    shutdown: CancellationToken,
    done: mpsc::Sender<()>,
) {
    let scheme = door.scheme();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    // Accept errors (EMFILE when the process is out of descriptors) repeat as fast as the loop
    // turns; one line per streak, and a pause so the loop does not spin.
    let mut failing = false;
    loop {
        let (stream, peer) = tokio::select! {
            // Cancel-safe: `accept` loses nothing when dropped.
            accepted = door.listener.accept() => match accepted {
                Ok(a) => {
                    failing = false;
                    a
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("{scheme:?} accept failed: {e}; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Cancel-safe: only stops the loop.
            _ = shutdown.cancelled() => break,
        };
        let slot = match Slot::take(&counts, peer.ip()) {
            Ok(slot) => SlotHandle(Arc::new(slot)),
            Err(why) => {
                // Dropping the stream closes it before anything is read.
                drop(stream);
                report_refusal(&counts, peer, why);
                continue;
            }
        };
        let connection = Connection {
            builder: builder.clone(),
            router: door.router.clone(),
            peer,
            scheme,
            slot,
            shutdown: shutdown.clone(),
        };
        tokio::spawn(connection.run(stream, door.tls.clone(), done.clone()));
    }
}

/// Logs a refused connection, as often as [`Counts::refused`] finds it worth a line.
fn report_refusal(counts: &Mutex<Counts>, peer: SocketAddr, why: Refusal) {
    let report = lock(counts).refused(peer.ip(), why, Instant::now());
    if let Some(r) = report {
        tracing::warn!(
            "HTTP: refused a connection from {} ({}; {} more from there since the last notice, \
             {} in all)",
            r.address,
            match r.why {
                Refusal::Total => "the server's connection limit is reached",
                Refusal::PerAddress => "too many connections from that address",
            },
            r.since_last,
            lock(counts).refused_total()
        );
    }
}

/// What one connection's task needs.
struct Connection {
    builder: Arc<hyper::server::conn::http1::Builder>,
    router: Router,
    peer: SocketAddr,
    scheme: Scheme,
    slot: SlotHandle,
    shutdown: CancellationToken,
}

impl Connection {
    /// Serves one accepted connection, after its TLS handshake on the HTTPS door; `done` is
    /// dropped when it ends.
    async fn run(
        self,
        stream: TcpStream,
        tls: Option<super::tls::Acceptor>,
        done: mpsc::Sender<()>,
    ) {
        let peer = self.peer;
        match tls {
            None => self.serve(stream).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(tls)) => self.serve(tls).await,
                    Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                }
            }
        }
        drop(done);
    }

    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Connection {
            builder,
            router,
            peer,
            scheme,
            slot,
            shutdown,
        } = self;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let extensions = request.extensions_mut();
            extensions.insert(ConnectInfo(peer));
            extensions.insert(scheme);
            extensions.insert(slot.clone());
            // Router's `poll_ready` is always ready, so calling it directly is what `oneshot`
            // would do.
            tower_service::Service::call(&mut router.clone(), request)
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(connection);
        tokio::select! {
            // Not cancel-safe, and need not be: the connection is polled to its end below
            // when this branch loses.
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("HTTP connection from {peer}: {e}");
                }
            }
            // Cancel-safe: a token. Graceful: idle connections close, a request in flight
            // gets its response first.
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}
