//! Viewer sessions: the manager that routes signalling to them, enforces limits and ends them.
//!
//! [`table`] decides (pure); [`viewer`] runs one session; [`peer`] wraps the WebRTC crate;
//! [`adapt`] decides the encoder's bitrate from the viewers' feedback (pure).
//! The manager is the glue: one task, so session bookkeeping needs no locks. It alone owns
//! bitrate adaptation: sessions send it their viewers' feedback and it sends each its pace.
//! A viewer's control data channel leaves this layer as an [`OpenedChannel`]; what commands
//! it carries is the control plane's business.

pub mod adapt;
pub mod peer;
pub mod table;
pub mod viewer;

use crate::auth::{Authority, Right, TokenError};
use crate::media::Media;
use crate::signalling::protocol::{ErrorCode, IceServer, Inbound, Outbound, ProtocolError};
use crate::signalling::sdp::OfferSummary;
use crate::signalling::{Outgoing, SignalEvent};
use peer::PeerFactory;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use table::{Action, Generation, Label, SessionTable};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use viewer::{FromViewer, SessionInput, Viewer, ViewerNote};

/// How long shutdown waits for sessions to say bye and close their peers.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// What a viewer may do beyond watching, decided once from the token of its offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grants {
    /// Change the camera over its data channel, whatever `[control]` allows every viewer.
    pub control: bool,
    /// Be heard: its microphone is played on the board when `[audio] talkback` is on.
    pub talk: bool,
}

impl Grants {
    /// Nothing beyond watching.
    pub const NONE: Grants = Grants {
        control: false,
        talk: false,
    };
}

/// What a viewer presenting `token` may do (pure, clock passed in). Without an authority (no
/// `[auth] secret`) the camera is open to whoever reaches it: every viewer may talk, and
/// changes follow `[control]` alone. With one, the token must grant `view`, and `talk` and
/// `control` each need their own right.
pub fn admit(
    authority: Option<&Authority>,
    token: Option<&str>,
    now: SystemTime,
) -> Result<Grants, TokenError> {
    let Some(authority) = authority else {
        return Ok(Grants {
            control: false,
            talk: true,
        });
    };
    let claims = authority.verify(token, Right::View, now)?;
    tracing::debug!(
        holder = claims.sub().unwrap_or("unnamed"),
        scope = %claims.scope,
        "viewer token accepted"
    );
    Ok(Grants {
        control: claims.grants(Right::Control),
        talk: claims.grants(Right::Talk),
    })
}

/// Sessions one address may hold: half the slots, so others can still get in.
pub fn per_address_cap(max_sessions: usize) -> usize {
    (max_sessions / 2).max(1)
}

/// Live figures of one session, written by its task and read by `sessions` and telemetry.
#[derive(Debug)]
pub struct SessionStats {
    pub started: Instant,
    pub connected: AtomicBool,
    pub frames_sent: AtomicU64,
    /// Frames not sent: waiting for a keyframe, or skipped after falling behind.
    pub frames_skipped: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Offer to first frame sent, in ms; 0 until then.
    pub first_frame_ms: AtomicU64,
    /// PLI/FIR received from the viewer.
    pub keyframe_requests: AtomicU64,
    /// Latest ICE round-trip time in µs; 0 until measured.
    pub rtt_us: AtomicU64,
    /// Send rate over the last few seconds.
    pub bitrate_kbps: AtomicU64,
    /// What the viewer receives, decided from its offer.
    pub codec: crate::codec::VideoCodec,
    /// Bitrate adaptation's estimate of what this viewer can take; 0 until it has one.
    pub estimate_kbps: AtomicU64,
    /// Loss in the viewer's receiver reports over the last stats interval (packets lost for good
    /// ÷ packets expected), in hundredths of a percent; `u64::MAX` until reports spanned a packet.
    pub loss_centipercent: AtomicU64,
    /// Packets the viewer asked to be resent (NACK).
    pub nacked_packets: AtomicU64,
    /// Packets resent for those NACKs.
    pub retransmitted_packets: AtomicU64,
    /// True while this viewer is paced below the encoder's rate (keyframe-skipping).
    pub paced: AtomicBool,
}

impl SessionStats {
    fn new(codec: crate::codec::VideoCodec) -> Self {
        Self {
            codec,
            started: Instant::now(),
            connected: AtomicBool::new(false),
            frames_sent: AtomicU64::new(0),
            frames_skipped: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            first_frame_ms: AtomicU64::new(0),
            rtt_us: AtomicU64::new(0),
            keyframe_requests: AtomicU64::new(0),
            bitrate_kbps: AtomicU64::new(0),
            estimate_kbps: AtomicU64::new(0),
            loss_centipercent: AtomicU64::new(u64::MAX),
            nacked_packets: AtomicU64::new(0),
            retransmitted_packets: AtomicU64::new(0),
            paced: AtomicBool::new(false),
        }
    }
}

/// One session as the `sessions` command and telemetry report it. Named by its label, never
/// its sid: every viewer may read this (docs/signalling.md).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionInfo {
    pub label: Label,
    pub state: &'static str,
    pub duration_secs: u64,
    pub codec: &'static str,
    pub bitrate_kbps: u64,
    pub frames_sent: u64,
    pub frames_skipped: u64,
    pub keyframe_requests: u64,
    pub rtt_ms: Option<f64>,
    pub time_to_first_frame_ms: Option<u64>,
    /// What bitrate adaptation estimates this viewer can take.
    pub estimate_kbps: Option<u64>,
    /// Packet loss in the viewer's receiver reports over the last second.
    pub loss_percent: Option<f64>,
    /// Packets the viewer asked to be resent (NACK).
    pub nacked_packets: u64,
    /// Packets rtcam resent for them (those still in its 1024-packet send buffer; a packet asked
    /// for again within a round trip of its resend is not sent again).
    pub retransmitted_packets: u64,
    /// Sent below the encoder's rate, skipping to keyframes, because it cannot take more.
    pub paced: bool,
}

fn info_of(label: Label, s: &SessionStats) -> SessionInfo {
    let nonzero = |v: u64| (v > 0).then_some(v);
    SessionInfo {
        label,
        state: if s.connected.load(Ordering::Relaxed) {
            "connected"
        } else {
            "connecting"
        },
        duration_secs: s.started.elapsed().as_secs(),
        codec: s.codec.as_str(),
        bitrate_kbps: s.bitrate_kbps.load(Ordering::Relaxed),
        frames_sent: s.frames_sent.load(Ordering::Relaxed),
        frames_skipped: s.frames_skipped.load(Ordering::Relaxed),
        keyframe_requests: s.keyframe_requests.load(Ordering::Relaxed),
        rtt_ms: nonzero(s.rtt_us.load(Ordering::Relaxed)).map(|us| us as f64 / 1000.0),
        time_to_first_frame_ms: nonzero(s.first_frame_ms.load(Ordering::Relaxed)),
        estimate_kbps: nonzero(s.estimate_kbps.load(Ordering::Relaxed)),
        loss_percent: match s.loss_centipercent.load(Ordering::Relaxed) {
            u64::MAX => None,
            c => Some(c as f64 / 100.0),
        },
        nacked_packets: s.nacked_packets.load(Ordering::Relaxed),
        retransmitted_packets: s.retransmitted_packets.load(Ordering::Relaxed),
        paced: s.paced.load(Ordering::Relaxed),
    }
}

/// Questions and orders for the manager from the control plane.
#[derive(Debug)]
pub enum ManagerRequest {
    List(oneshot::Sender<Vec<SessionInfo>>),
    Kick {
        label: Label,
        reason: String,
        reply: oneshot::Sender<bool>,
    },
}

/// The control plane's handle on the sessions.
#[derive(Clone)]
pub struct Sessions {
    requests: mpsc::Sender<ManagerRequest>,
}

impl Sessions {
    pub fn new(requests: mpsc::Sender<ManagerRequest>) -> Self {
        Self { requests }
    }

    pub async fn list(&self) -> Vec<SessionInfo> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(ManagerRequest::List(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Ends the session labelled `label`, telling its viewer `reason`. False if there is no
    /// such session.
    pub async fn kick(&self, label: Label, reason: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        let req = ManagerRequest::Kick {
            label,
            reason: reason.to_string(),
            reply,
        };
        if self.requests.send(req).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

pub struct SessionManager {
    pub table: SessionTable,
    pub factory: Arc<PeerFactory>,
    pub media: Media,
    pub events: mpsc::Receiver<SignalEvent>,
    pub outgoing: mpsc::Sender<Outgoing>,
    /// Number of live sessions, for status.
    pub viewers: watch::Sender<usize>,
    pub disconnect_timeout: Duration,
    pub requests: mpsc::Receiver<ManagerRequest>,
    /// Where viewers' control data channels go as they open; the application serves them.
    pub channels: mpsc::UnboundedSender<OpenedChannel>,
    /// Checks viewer tokens when `[auth] secret` is set.
    pub authority: Option<crate::auth::Authority>,
    /// The rights the gate proved for clients connected through it (embedded broker): their
    /// offers need no token.
    pub client_rights: Option<crate::gate::ClientRights>,
    /// Bitrate adaptation, decided here alone from the feedback sessions send in
    /// ([`viewer::ViewerNote`]); `None` when it is off.
    pub adaptation: Option<adapt::Adaptation>,
    /// What an `ice_servers` request is answered with (fresh TURN credentials each time).
    pub ice_servers: Arc<crate::turn::IceServers>,
}

/// A viewer's `control` data channel as it opens, for the application to serve (the session
/// layer knows nothing of commands). It ends when its session does.
pub struct OpenedChannel {
    pub channel: peer::ControlChannel,
    /// The session's public name.
    pub label: Label,
    /// The viewer's token grants `control`: it may change the camera whatever `[control]`
    /// allows every viewer.
    pub may_control: bool,
}

struct Running {
    generation: Generation,
    input: mpsc::UnboundedSender<SessionInput>,
    stats: Arc<SessionStats>,
}

/// The running sessions and their tasks, the manager task's own.
struct Live {
    running: HashMap<String, Running>,
    tasks: JoinSet<()>,
    /// Which session each task runs, so a session whose task panics is still removed.
    owners: HashMap<tokio::task::Id, (String, Generation)>,
    /// Given to each session for its notes to the manager.
    notes: mpsc::UnboundedSender<FromViewer>,
}

impl Live {
    /// The running session `sid`, if it is still this generation's.
    fn current(&self, sid: &str, generation: Generation) -> Option<&Running> {
        self.running.get(sid).filter(|r| r.generation == generation)
    }

    fn remove(&mut self, sid: &str, generation: Generation) -> Option<Running> {
        self.current(sid, generation)?;
        self.running.remove(sid)
    }
}

/// A session to start, from [`Action::Start`].
struct NewSession {
    generation: Generation,
    sdp: String,
    offer: OfferSummary,
    codec: crate::codec::VideoCodec,
}

impl SessionManager {
    /// Routes signalling until `shutdown`, then ends every session (each says bye) and waits
    /// for them, bounded by [`CLOSE_GRACE`].
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (notes_tx, mut notes) = mpsc::unbounded_channel();
        let mut live = Live {
            running: HashMap::new(),
            tasks: JoinSet::new(),
            owners: HashMap::new(),
            notes: notes_tx,
        };
        loop {
            tokio::select! {
                // Cancel-safe: level-triggered token.
                _ = shutdown.cancelled() => break,
                // Cancel-safe: mpsc recv.
                Some(event) = self.events.recv() => self.on_signal(&mut live, event).await,
                // Cancel-safe: mpsc recv.
                Some(request) = self.requests.recv() => self.on_request(&mut live, request),
                // Cancel-safe: mpsc recv.
                Some(from) = notes.recv() => self.on_note(&mut live, from),
                // Cancel-safe: reaping finished tasks; a panic in one session is logged here
                // and touches nobody else.
                Some(done) = live.tasks.join_next_with_id(), if !live.tasks.is_empty() => {
                    self.on_task_done(&mut live, done);
                }
            }
            let _ = self.viewers.send(self.table.len());
        }
        for (sid, action) in self.table.close_all("camera shutting down") {
            self.apply(&mut live, &sid, action, Grants::NONE).await;
        }
        let _ = self.viewers.send(0);
        let drain = async { while live.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(CLOSE_GRACE, drain).await.is_err() {
            tracing::warn!("some sessions did not close in time");
            live.tasks.abort_all();
        }
    }

    async fn on_signal(&mut self, live: &mut Live, event: SignalEvent) {
        let (message, grants) = self.authorize(&event.sid, event.message);
        let message = self.cap_per_address(&event.sid, message, &live.running);
        let actions = self.table.on_message(&event.sid, message, Instant::now());
        for action in actions {
            self.apply(live, &event.sid, action, grants).await;
        }
    }

    fn on_request(&mut self, live: &mut Live, request: ManagerRequest) {
        match request {
            ManagerRequest::List(reply) => {
                let mut list: Vec<SessionInfo> = live
                    .running
                    .values()
                    .map(|r| info_of(Label::of(r.generation), &r.stats))
                    .collect();
                list.sort_by_key(|s| s.label);
                let _ = reply.send(list);
            }
            ManagerRequest::Kick {
                label,
                reason,
                reply,
            } => {
                let sid = live
                    .running
                    .iter()
                    .find(|(_, r)| r.generation == label.generation())
                    .map(|(sid, _)| sid.clone());
                let found = match sid.and_then(|sid| live.running.remove_entry(&sid)) {
                    Some((sid, r)) => {
                        self.table.on_ended(&sid, r.generation);
                        let _ = r.input.send(SessionInput::End {
                            reason,
                            tell_viewer: true,
                        });
                        true
                    }
                    None => false,
                };
                let _ = reply.send(found);
            }
        }
    }

    fn on_note(&mut self, live: &mut Live, from: FromViewer) {
        let FromViewer {
            sid,
            generation,
            note,
        } = from;
        match note {
            ViewerNote::Connected => {
                if let (Some(a), Some(_)) = (&mut self.adaptation, live.current(&sid, generation)) {
                    a.join(&Label::of(generation).to_string(), Instant::now());
                }
            }
            ViewerNote::Feedback(report) => self.adapt(live, &sid, generation, report),
            ViewerNote::Ended => self.ended(live, &sid, generation),
        }
    }

    /// A session is over (or its task failed): its slot is free, and its estimate must not
    /// hold the encoder down.
    fn ended(&mut self, live: &mut Live, sid: &str, generation: Generation) {
        self.table.on_ended(sid, generation);
        live.remove(sid, generation);
        if let Some(a) = &mut self.adaptation {
            a.leave(&Label::of(generation).to_string());
        }
    }

    /// Feeds one viewer's feedback to adaptation, applies an encoder change it decides, and
    /// tells the viewer its own pace (when it cannot take the encoder's rate).
    fn adapt(&mut self, live: &Live, sid: &str, generation: Generation, report: adapt::Report) {
        let (Some(a), Some(r)) = (&mut self.adaptation, live.current(sid, generation)) else {
            return;
        };
        let label = Label::of(generation);
        let key = label.to_string();
        let now = Instant::now();
        a.report(&key, report, now);
        if let Some(kbps) = a.encoder_change(now) {
            tracing::info!(session = %label, "bitrate adaptation: encoder to {kbps} kbit/s");
            self.media.set_bitrate(kbps);
        }
        if let Some(e) = a.estimate_kbps(&key) {
            r.stats
                .estimate_kbps
                .store(u64::from(e), Ordering::Relaxed);
        }
        let budget = a.budget_kbps(&key);
        r.stats.paced.store(budget.is_some(), Ordering::Relaxed);
        let _ = r.input.send(SessionInput::Pace(budget));
    }

    fn on_task_done(
        &mut self,
        live: &mut Live,
        done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) {
        match done {
            Ok((id, ())) => {
                live.owners.remove(&id);
                // The last session is gone with its peer connection: hand the heap it used
                // back to the kernel (see `memory`).
                if live.tasks.is_empty() {
                    crate::memory::release_free_heap();
                }
            }
            Err(e) => {
                tracing::error!("a session task failed: {e}");
                // A panicked session never said it left.
                if let Some((sid, generation)) = live.owners.remove(&e.id()) {
                    self.ended(live, &sid, generation);
                }
            }
        }
    }

    /// With `[auth] secret` set, an offer needs a token granting `view`; what else its token
    /// grants (`talk`, `control`) goes with the session ([`admit`]). Asking for ICE servers
    /// needs `view` too: their TURN credentials are worth guarding.
    fn authorize(
        &self,
        sid: &str,
        message: Result<Inbound, ProtocolError>,
    ) -> (Result<Inbound, ProtocolError>, Grants) {
        let Ok(Inbound::Offer { token, .. } | Inbound::IceServers { token }) = &message else {
            return (message, Grants::NONE);
        };
        // A client the gate let in with a token or as a broker user has shown its rights once,
        // at connect; it sends no token along (tokens never travel through the broker).
        if token.is_none() {
            if let Some(rights) = self.client_rights.as_ref().and_then(|g| g.rights_of(sid)) {
                let grants = Grants {
                    control: rights.contains(&Right::Control),
                    talk: rights.contains(&Right::Talk),
                };
                return (message, grants);
            }
        }
        match admit(self.authority.as_ref(), token.as_deref(), SystemTime::now()) {
            Ok(grants) => (message, grants),
            Err(e) => (
                Err(ProtocolError::new(
                    ErrorCode::Unauthorized,
                    format!("Not allowed to watch: {e}."),
                )),
                Grants::NONE,
            ),
        }
    }

    /// A new session from an address that already holds half the slots is refused, so one
    /// sender (replaying offers under many client ids) cannot hold them all. Only clients of the
    /// gate have a known address; loopback (the board's own programs) is not capped.
    fn cap_per_address(
        &self,
        sid: &str,
        message: Result<Inbound, ProtocolError>,
        running: &HashMap<String, Running>,
    ) -> Result<Inbound, ProtocolError> {
        let (Ok(Inbound::Offer { .. }), Some(rights)) = (&message, &self.client_rights) else {
            return message;
        };
        let Some(ip) = rights.address_of(sid).filter(|ip| !ip.is_loopback()) else {
            return message;
        };
        let held = running
            .keys()
            .filter(|other| other.as_str() != sid && rights.address_of(other) == Some(ip))
            .count();
        let cap = per_address_cap(self.table.max_sessions());
        if held >= cap {
            return Err(ProtocolError::new(
                ErrorCode::TooManySessions,
                format!(
                    "This address already watches in {held} of the camera's sessions, the most one address may hold; end one first."
                ),
            ));
        }
        message
    }

    async fn apply(&self, live: &mut Live, sid: &str, action: Action, grants: Grants) {
        match action {
            Action::Reply(message) => self.reply(sid, message).await,
            Action::End {
                generation,
                reason,
                tell_viewer,
            } => {
                if let Some(r) = live.remove(sid, generation) {
                    let _ = r.input.send(SessionInput::End {
                        reason,
                        tell_viewer,
                    });
                }
            }
            Action::Candidate {
                generation,
                candidate,
            } => {
                if let Some(r) = live.current(sid, generation) {
                    let _ = r.input.send(SessionInput::Candidate(candidate));
                }
            }
            Action::SendIceServers => self.reply(sid, self.ice_servers_reply()).await,
            Action::Start {
                generation,
                sdp,
                offer,
                codec,
            } => {
                let new = NewSession {
                    generation,
                    sdp,
                    offer,
                    codec,
                };
                self.start(live, sid, grants, new);
            }
        }
    }

    async fn reply(&self, sid: &str, message: Outbound) {
        let _ = self
            .outgoing
            .send(Outgoing {
                sid: sid.to_string(),
                message,
            })
            .await;
    }

    /// The ICE servers viewers use, with TURN credentials derived now, as the protocol's
    /// `ice_servers` reply.
    fn ice_servers_reply(&self) -> Outbound {
        let handed = self.ice_servers.for_viewers(SystemTime::now());
        Outbound::IceServers {
            ice_servers: handed
                .servers
                .into_iter()
                .map(|s| IceServer {
                    urls: s.urls,
                    username: s.username,
                    credential: s.credential,
                })
                .collect(),
            expires_at: handed.expires_at,
        }
    }

    fn start(&self, live: &mut Live, sid: &str, grants: Grants, new: NewSession) {
        let NewSession {
            generation,
            sdp,
            offer,
            codec,
        } = new;
        let label = Label::of(generation);
        // Info level and above name a session by its label only; the sid, which lets a client
        // act as this viewer, appears at debug level, for tracing one viewer's messages on a
        // board one controls.
        tracing::info!(session = %label, codec = codec.as_str(), "new session");
        tracing::debug!(session = %label, %sid, "session id");
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(SessionStats::new(codec));
        live.running.insert(
            sid.to_string(),
            Running {
                generation,
                input: input_tx,
                stats: stats.clone(),
            },
        );
        let viewer = Viewer {
            sid: sid.to_string(),
            label,
            generation,
            offer_sdp: sdp,
            offer,
            codec,
            factory: self.factory.clone(),
            media: self.media.clone(),
            outgoing: self.outgoing.clone(),
            input: input_rx,
            notes: live.notes.clone(),
            disconnect_timeout: self.disconnect_timeout,
            stats,
            channels: self.channels.clone(),
            may_talk: grants.talk,
            may_control: grants.control,
        };
        let handle = live.tasks.spawn(viewer.run());
        live.owners.insert(handle.id(), (sid.to_string(), generation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn token(authority: &Authority, rights: Vec<Right>, now: SystemTime) -> String {
        authority.mint(&authority.claims(Duration::from_secs(60), rights, now))
    }

    #[test]
    fn talking_needs_the_talk_right_when_tokens_are_on() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200);
        let a = Authority::new(SECRET, "cam");
        let view = token(&a, vec![Right::View], now);
        assert_eq!(admit(Some(&a), Some(&view), now), Ok(Grants::NONE));
        let talk = token(&a, vec![Right::View, Right::Talk], now);
        assert_eq!(
            admit(Some(&a), Some(&talk), now),
            Ok(Grants {
                control: false,
                talk: true
            })
        );
        let control = token(&a, vec![Right::View, Right::Control], now);
        assert_eq!(
            admit(Some(&a), Some(&control), now),
            Ok(Grants {
                control: true,
                talk: false
            })
        );
        // Talking alone is not watching.
        let talk_only = token(&a, vec![Right::Talk], now);
        assert_eq!(
            admit(Some(&a), Some(&talk_only), now),
            Err(TokenError::NotAllowed(Right::View))
        );
        assert_eq!(admit(Some(&a), None, now), Err(TokenError::Missing));
    }

    #[test]
    fn an_open_camera_lets_every_viewer_talk() {
        let now = SystemTime::UNIX_EPOCH;
        let open = Grants {
            control: false,
            talk: true,
        };
        assert_eq!(admit(None, None, now), Ok(open));
        assert_eq!(admit(None, Some("anything"), now), Ok(open));
    }
}
