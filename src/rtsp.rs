//! The RTSP door (`[rtsp]`): `rtsp://BOARD:8554/live` for NVRs, VLC, ffmpeg and media servers.
//!
//! GStreamer's RTSP server speaks the protocol (RTP over UDP, or interleaved on the RTSP
//! connection). Its one shared media is `appsrc → h264parse → rtph264pay` (and `appsrc →
//! rtpopuspay` with `[audio]`), fed from the media's frame channels: the very `Bytes` every
//! WebRTC session sends, never decoded nor encoded again. The media exists while a client
//! watches; its receiver of the frame channel is what holds the on-demand pipeline.
//!
//! Each client that asks to PLAY takes a session slot ([`Sessions::join`]): it counts as a
//! viewer in status, `sessions` and `/metrics`, against `max_sessions`, and `kick` or
//! shutdown close it. Its PLAY asks the encoder for a keyframe, so it decodes at once.
//!
//! With `[auth] secret` or `[mqtt] users_file`, every request needs Basic credentials: a
//! viewer token (any user name) or a users-file login ([`Logins`]). Without, the stream is
//! open to whoever reaches the port, and the log says so.
//!
//! This file is the only user of `gstreamer-rtsp-server`. The server runs on a GLib main loop
//! of its own thread; the feeders run on tokio.

use crate::auth::{Authority, Right};
use crate::config::RtspConfig;
use crate::gate::users::Users;
use crate::media::{EncodedFrame, Media};
use crate::session::Sessions;
use crate::signalling::Transport;
use base64::Engine;
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp_server;
use rtsp_server::prelude::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

/// The role the factory grants watching to; every accepted login carries it.
const ROLE: &str = "viewer";

#[derive(Debug, thiserror::Error)]
pub enum RtspError {
    #[error("rtsp.listen = \"{0}\": cannot listen for RTSP there (port taken?)")]
    Bind(SocketAddr),
    #[error("the RTSP server's thread could not start")]
    Thread(#[source] std::io::Error),
}

/// Who may watch over RTSP when logins are asked for: the holder of a viewer token (as the
/// password, with any user name) or a users-file user with its password.
pub struct Logins {
    pub authority: Option<Authority>,
    pub users: Users,
}

impl Logins {
    /// Whether the `Basic` credentials (base64 of `user:password`) let their holder watch.
    pub fn accept(&self, basic: &str, now: SystemTime) -> bool {
        let Some((user, password)) = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
        else {
            return false;
        };
        let token_ok = self
            .authority
            .as_ref()
            .is_some_and(|a| a.verify(Some(&password), Right::View, now).is_ok());
        token_ok || self.users.verify(&user, &password)
    }
}

/// The running RTSP server; [`RtspDoor::stop`] ends its main loop.
pub struct RtspDoor {
    /// Where it listens (the port the system chose, for `listen` with port 0).
    pub addr: SocketAddr,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RtspDoor {
    /// Stops serving: every client's connection ends with the main loop.
    pub fn stop(mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the door needs from the rest of rtcam.
pub struct Parts {
    pub media: Media,
    pub sessions: Sessions,
    /// `None`: the stream is open to anyone who reaches the port.
    pub logins: Option<Logins>,
}

/// Starts the RTSP server on its own thread and waits until it listens (or cannot).
pub fn start(cfg: &RtspConfig, parts: Parts) -> Result<RtspDoor, RtspError> {
    let runtime = tokio::runtime::Handle::current();
    let context = glib::MainContext::new();
    let main_loop = glib::MainLoop::new(Some(&context), false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listen = cfg.listen;
    let path = format!("/{}", cfg.path);
    let open = parts.logins.is_none();
    let thread = {
        let main_loop = main_loop.clone();
        std::thread::Builder::new()
            .name("rtsp".into())
            .spawn(move || {
                let serving = context.with_thread_default(|| {
                    let server = build(listen, &path, parts, &runtime, &context);
                    let source = server.attach(Some(&context)).ok();
                    let port = u16::try_from(server.bound_port()).ok();
                    let _ = ready_tx.send(source.as_ref().and(port));
                    if source.is_some() {
                        main_loop.run();
                    }
                    drop(server);
                });
                if serving.is_err() {
                    let _ = ready_tx.send(None);
                }
            })
            .map_err(RtspError::Thread)?
    };
    let Some(port) = ready_rx.recv().ok().flatten() else {
        let _ = thread.join();
        return Err(RtspError::Bind(listen));
    };
    let addr = SocketAddr::new(listen.ip(), port);
    if open {
        tracing::warn!(
            "RTSP on rtsp://{addr}/{}: open to anyone who reaches the port (no [auth] secret \
             and no mqtt.users_file, so no login is asked)",
            cfg.path
        );
    } else {
        tracing::info!(
            "RTSP on rtsp://{addr}/{}: a viewer token or a users-file login (Basic) is asked",
            cfg.path
        );
    }
    Ok(RtspDoor {
        addr,
        main_loop,
        thread: Some(thread),
    })
}

/// The server, its one shared stream at `path`, and what happens per client.
fn build(
    listen: SocketAddr,
    path: &str,
    parts: Parts,
    runtime: &tokio::runtime::Handle,
    context: &glib::MainContext,
) -> rtsp_server::RTSPServer {
    let server = rtsp_server::RTSPServer::new();
    server.set_address(&listen.ip().to_string());
    server.set_service(&listen.port().to_string());
    let factory = rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(&launch(parts.media.has_audio()));
    // One media for every client: one appsrc, one receiver of the frame channel.
    factory.set_shared(true);
    factory.add_role_from_structure(
        &gst::Structure::builder(ROLE)
            .field(rtsp_server::RTSP_PERM_MEDIA_FACTORY_ACCESS.as_str(), true)
            .field(
                rtsp_server::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT.as_str(),
                true,
            )
            .build(),
    );
    {
        let media = parts.media.clone();
        let runtime = runtime.clone();
        factory.connect_media_configure(move |_, rtsp_media| {
            feed(rtsp_media, &media, &runtime);
        });
    }
    if let Some(logins) = parts.logins {
        let auth = Auth::new(logins);
        auth.set_supported_methods(rtsp_server::gst_rtsp::RTSPAuthMethod::Basic);
        server.set_auth(Some(&auth));
    }
    if let Some(mounts) = server.mount_points() {
        mounts.add_factory(path, factory);
    }
    let clients = Clients {
        media: parts.media,
        sessions: parts.sessions,
        runtime: runtime.clone(),
        context: context.clone(),
        held: Arc::default(),
    };
    server.connect_client_connected(move |_, client| clients.watch(client));
    server
}

/// The shared media's pipeline: the encoded streams in, RTP out (`pay0`, `pay1` as the server
/// expects). `config-interval=-1` puts SPS/PPS before every keyframe, so a client joining
/// later decodes from its first keyframe.
fn launch(audio: bool) -> String {
    let video = "appsrc name=vsrc is-live=true format=time do-timestamp=true \
                 caps=video/x-h264,stream-format=byte-stream,alignment=au \
                 ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1";
    if audio {
        format!(
            "( {video} appsrc name=asrc is-live=true format=time do-timestamp=true \
             caps=audio/x-opus,channel-mapping-family=0,rate=48000,channels=1 \
             ! rtpopuspay name=pay1 pt=97 )"
        )
    } else {
        format!("( {video} )")
    }
}

/// Starts feeding a new shared media from the frame channels until it is unprepared (its last
/// client gone). Subscribing starts the on-demand pipeline.
fn feed(rtsp_media: &rtsp_server::RTSPMedia, media: &Media, runtime: &tokio::runtime::Handle) {
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        rtsp_media.connect_unprepared(move |_| stop.cancel());
    }
    let bin = rtsp_media.element();
    let Some(bin) = bin.downcast_ref::<gst::Bin>() else {
        return;
    };
    let appsrc = |name| {
        bin.by_name(name)
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
    };
    if let Some(src) = appsrc("vsrc") {
        runtime.spawn(feed_video(src, media.clone(), stop.clone()));
    }
    if let (Some(src), Some(packets)) = (appsrc("asrc"), media.subscribe_audio()) {
        runtime.spawn(feed_audio(src, packets, stop));
    }
}

/// Pushes every H.264 frame from the first keyframe on; a feeder that falls behind skips to
/// the next keyframe (and asks for one), as a WebRTC session does.
async fn feed_video(src: gst_app::AppSrc, media: Media, stop: CancellationToken) {
    let mut frames = media.subscribe();
    media.request_keyframe();
    let mut waiting = true;
    loop {
        let frame: EncodedFrame = tokio::select! {
            // Cancel-safe: level-triggered token.
            () = stop.cancelled() => break,
            // Cancel-safe: broadcast `recv`.
            r = frames.recv() => match r {
                Ok(f) => f,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    waiting = true;
                    media.request_keyframe();
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        if waiting && !frame.keyframe {
            continue;
        }
        waiting = false;
        let mut buffer = gst::Buffer::from_slice(frame.data);
        if let Some(b) = buffer.get_mut() {
            b.set_duration(gst::ClockTime::from_nseconds(
                u64::try_from(frame.duration.as_nanos()).unwrap_or(0),
            ));
            if !frame.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        if src.push_buffer(buffer).is_err() {
            break;
        }
    }
}

/// Pushes every Opus packet of the microphone branch.
async fn feed_audio(
    src: gst_app::AppSrc,
    mut packets: broadcast::Receiver<crate::media::audio::AudioPacket>,
    stop: CancellationToken,
) {
    loop {
        let packet = tokio::select! {
            // Cancel-safe: level-triggered token.
            () = stop.cancelled() => break,
            // Cancel-safe: broadcast `recv`.
            r = packets.recv() => match r {
                Ok(p) => p,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        let mut buffer = gst::Buffer::from_slice(packet.data);
        if let Some(b) = buffer.get_mut() {
            b.set_duration(gst::ClockTime::from_nseconds(
                u64::try_from(packet.duration.as_nanos()).unwrap_or(0),
            ));
        }
        if src.push_buffer(buffer).is_err() {
            break;
        }
    }
}

/// The clients that play: each holds a session slot from its first PLAY until it closes.
#[derive(Clone)]
struct Clients {
    media: Media,
    sessions: Sessions,
    runtime: tokio::runtime::Handle,
    context: glib::MainContext,
    /// Per playing client (by address of its object), what tells its slot holder it left.
    held: Arc<Mutex<HashMap<usize, oneshot::Sender<()>>>>,
}

impl Clients {
    fn watch(&self, client: &rtsp_server::RTSPClient) {
        let key = client.as_ptr() as usize;
        let on_play = self.clone();
        client.connect_pre_play_request(move |client, _| on_play.play(key, client));
        let held = self.held.clone();
        client.connect_closed(move |_| {
            // Dropping the sender ends the slot holder, which gives the slot back.
            held.lock().map(|mut h| h.remove(&key)).ok();
        });
    }

    /// A PLAY: the first one takes a slot (or is refused with 503), every one asks for a
    /// keyframe so the client starts decoding at once.
    fn play(
        &self,
        key: usize,
        client: &rtsp_server::RTSPClient,
    ) -> rtsp_server::gst_rtsp::RTSPStatusCode {
        let playing = self
            .held
            .lock()
            .map(|h| h.contains_key(&key))
            .unwrap_or(false);
        if !playing {
            // The GLib thread waits for the manager's answer: one message, answered at once.
            let joined = match futures::executor::block_on(self.sessions.join(Transport::Rtsp)) {
                Ok(j) => j,
                Err(e) => {
                    tracing::info!("RTSP client refused: {}", e.message);
                    return rtsp_server::gst_rtsp::RTSPStatusCode::ServiceUnavailable;
                }
            };
            joined
                .stats
                .connected
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let (left_tx, left) = oneshot::channel();
            if let Ok(mut h) = self.held.lock() {
                h.insert(key, left_tx);
            }
            let client = client.downgrade();
            let context = self.context.clone();
            self.runtime
                .spawn(hold(joined, left, client, context, self.media.clone()));
        }
        self.media.request_keyframe();
        rtsp_server::gst_rtsp::RTSPStatusCode::Ok
    }
}

/// Holds a client's slot until it leaves, or closes it when the manager ends it (from the
/// server's thread; the client's own thread, one of the server's pool, notices the closed
/// connection). Meanwhile counts what the shared media passes on to it, from its first
/// keyframe, for `sessions` and `/metrics`.
async fn hold(
    mut joined: crate::session::Joined,
    mut left: oneshot::Receiver<()>,
    client: glib::WeakRef<rtsp_server::RTSPClient>,
    context: glib::MainContext,
    media: Media,
) {
    let label = joined.label;
    let mut frames = Some(media.subscribe());
    let mut started = false;
    loop {
        tokio::select! {
            // Cancel-safe: a oneshot polled by reference; its sender is dropped when the
            // client closes.
            _ = &mut left => {
                tracing::info!(session = %label, "RTSP client left");
                break;
            }
            // Cancel-safe: `ended` is an mpsc `recv` loop whose other messages mean nothing
            // here.
            reason = joined.ended() => {
                tracing::info!(session = %label, "RTSP client ended: {reason}");
                context.invoke(move || {
                    if let Some(c) = client.upgrade() {
                        c.close();
                    }
                });
                break;
            }
            // Cancel-safe: broadcast `recv`. Closed only when media stops for good.
            r = next(&mut frames), if frames.is_some() => match r {
                Ok(frame) => {
                    started |= frame.keyframe;
                    if started {
                        joined.stats.count_sent(&media.stats().viewers, frame.data.len());
                    }
                }
                // The shared media's own feeder deals with falling behind; this only counts.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => frames = None,
            },
        }
    }
}

/// The next frame, from a receiver that is there (the caller's `select!` guard says so).
async fn next(
    frames: &mut Option<broadcast::Receiver<EncodedFrame>>,
) -> Result<EncodedFrame, broadcast::error::RecvError> {
    match frames {
        Some(f) => f.recv().await,
        None => std::future::pending().await,
    }
}

/// `RTSPAuth` with rtcam's logins: Basic credentials checked by [`Logins`], the factory's
/// role granted to those accepted. A request without acceptable credentials gets 401 with a
/// `WWW-Authenticate: Basic` challenge (the parent class sends it).
mod imp {
    use super::{Logins, ROLE};
    use gstreamer::glib;
    use gstreamer::glib::subclass::prelude::*;
    use gstreamer_rtsp_server::subclass::prelude::*;
    use gstreamer_rtsp_server::{RTSPContext, RTSPToken, RTSP_TOKEN_MEDIA_FACTORY_ROLE};
    use std::sync::OnceLock;

    #[derive(Default)]
    pub struct Auth {
        pub logins: OnceLock<Logins>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for Auth {
        const NAME: &'static str = "RtcamRtspAuth";
        type Type = super::Auth;
        type ParentType = gstreamer_rtsp_server::RTSPAuth;
    }

    impl ObjectImpl for Auth {}

    impl RTSPAuthImpl for Auth {
        fn authenticate(&self, ctx: &RTSPContext) -> bool {
            let (Some(logins), Some(request)) = (self.logins.get(), ctx.request()) else {
                return false;
            };
            let now = std::time::SystemTime::now();
            let accepted = request.parse_auth_credentials().iter().any(|c| {
                c.scheme() == gstreamer_rtsp_server::gst_rtsp::RTSPAuthMethod::Basic
                    && c.authorization().is_some_and(|b| logins.accept(b, now))
            });
            if accepted {
                ctx.set_token(
                    RTSPToken::builder()
                        .field(RTSP_TOKEN_MEDIA_FACTORY_ROLE.as_str(), ROLE)
                        .build(),
                );
            }
            accepted
        }
    }
}

glib::wrapper! {
    /// See [`imp::Auth`].
    pub struct Auth(ObjectSubclass<imp::Auth>) @extends rtsp_server::RTSPAuth;
}

impl Auth {
    fn new(logins: Logins) -> Self {
        use glib::subclass::prelude::ObjectSubclassIsExt;
        let auth: Self = glib::Object::new();
        let _ = auth.imp().logins.set(logins);
        auth
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn basic(user: &str, password: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    }

    #[test]
    fn a_token_or_a_users_file_login_lets_one_watch() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200);
        let authority = Authority::new("0123456789abcdef0123456789abcdef", "cam");
        let view =
            authority.mint(&authority.claims(Duration::from_secs(60), vec![Right::View], now));
        let talk =
            authority.mint(&authority.claims(Duration::from_secs(60), vec![Right::Talk], now));
        let users = Users::parse(&crate::gate::users::hash_line("nvr", "s3cret")).unwrap();
        let logins = Logins {
            authority: Some(authority),
            users,
        };
        assert!(logins.accept(&basic("anyone", &view), now));
        assert!(
            !logins.accept(&basic("anyone", &talk), now),
            "watching needs view"
        );
        assert!(!logins.accept(&basic("anyone", &view), now + Duration::from_secs(61)));
        assert!(logins.accept(&basic("nvr", "s3cret"), now));
        assert!(!logins.accept(&basic("nvr", "wrong"), now));
        assert!(!logins.accept(&basic("other", "s3cret"), now));
        assert!(!logins.accept("not base64!", now));
    }

    #[test]
    fn the_pipeline_pays_the_encoded_streams_as_they_are() {
        let video = launch(false);
        assert!(video.contains("rtph264pay name=pay0") && video.contains("config-interval=-1"));
        assert!(!video.contains("enc") && !video.contains("pay1"));
        assert!(launch(true).contains("rtpopuspay name=pay1"));
    }
}
