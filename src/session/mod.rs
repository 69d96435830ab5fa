//! Viewer sessions: the manager that routes signalling to them, enforces limits and ends them.
//!
//! [`table`] decides (pure); [`viewer`] runs one session; [`peer`] wraps the WebRTC crate;
//! [`adapt`] decides the encoder's bitrate from the viewers' feedback (pure).
//! The manager is the glue: one task, so session bookkeeping needs no locks.

pub mod adapt;
pub mod peer;
pub mod table;
pub mod viewer;

use crate::auth::{Authority, Right, TokenError};
use crate::control::exec::Requester;
use crate::media::Media;
use crate::signalling::protocol::{ErrorCode, Inbound, ProtocolError};
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
use viewer::{SessionInput, Viewer};

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
    /// Serves viewers' control data channels.
    pub controller: crate::control::exec::Controller,
    /// What those channels may do.
    pub viewer_requester: crate::control::exec::Requester,
    /// Checks viewer tokens when `[auth] secret` is set.
    pub authority: Option<crate::auth::Authority>,
    /// The rights the gate proved for clients connected through it (embedded broker): their
    /// offers need no token.
    pub client_rights: Option<crate::gate::ClientRights>,
    /// Bitrate adaptation, shared by the sessions that feed it; `None` when it is off. A lock
    /// rather than messages to this task: each session updates it once a second, briefly.
    pub adaptation: Option<Arc<std::sync::Mutex<adapt::Adaptation>>>,
    /// What an `ice_servers` request is answered with (fresh TURN credentials each time).
    pub ice_servers: Arc<crate::turn::IceServers>,
}

struct Running {
    generation: Generation,
    input: mpsc::UnboundedSender<SessionInput>,
    stats: Arc<SessionStats>,
}

impl SessionManager {
    /// Routes signalling until `shutdown`, then ends every session (each says bye) and waits
    /// for them, bounded by [`CLOSE_GRACE`].
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut running: HashMap<String, Running> = HashMap::new();
        let mut tasks = JoinSet::new();
        // Which session each task runs, so a session whose task panics is still removed.
        let mut owners: HashMap<tokio::task::Id, (String, Generation)> = HashMap::new();
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(String, Generation)>();
        loop {
            tokio::select! {
                // Cancel-safe: level-triggered token.
                _ = shutdown.cancelled() => break,
                // Cancel-safe: mpsc recv.
                Some(event) = self.events.recv() => {
                    let (message, grants) = self.authorize(&event.sid, event.message);
                    let message = self.cap_per_address(&event.sid, message, &running);
                    let actions = self.table.on_message(&event.sid, message, Instant::now());
                    for action in actions {
                        self.apply(&event.sid, action, grants, &mut running, &mut tasks, &mut owners, &ended_tx).await;
                    }
                }
                // Cancel-safe: mpsc recv.
                Some(request) = self.requests.recv() => match request {
                    ManagerRequest::List(reply) => {
                        let mut list: Vec<SessionInfo> = running.values().map(|r| info_of(Label::of(r.generation), &r.stats)).collect();
                        list.sort_by_key(|s| s.label);
                        let _ = reply.send(list);
                    }
                    ManagerRequest::Kick { label, reason, reply } => {
                        let sid = running
                            .iter()
                            .find(|(_, r)| r.generation == label.generation())
                            .map(|(sid, _)| sid.clone());
                        let found = match sid.and_then(|sid| running.remove_entry(&sid)) {
                            Some((sid, r)) => {
                                self.table.on_ended(&sid, r.generation);
                                let _ = r.input.send(SessionInput::End { reason, tell_viewer: true });
                                true
                            }
                            None => false,
                        };
                        let _ = reply.send(found);
                    }
                },
                // Cancel-safe: mpsc recv.
                Some((sid, generation)) = ended_rx.recv() => {
                    self.table.on_ended(&sid, generation);
                    if running.get(&sid).is_some_and(|r| r.generation == generation) {
                        running.remove(&sid);
                    }
                }
                // Cancel-safe: reaping finished tasks; a panic in one session is logged here
                // and touches nobody else.
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    match done {
                        Ok((id, ())) => {
                            owners.remove(&id);
                            // The last session is gone with its peer connection: hand the heap
                            // it used back to the kernel (see `memory`).
                            if tasks.is_empty() {
                                crate::memory::release_free_heap();
                            }
                        }
                        Err(e) => {
                            tracing::error!("a session task failed: {e}");
                            if let Some((sid, generation)) = owners.remove(&e.id()) {
                                // A panicked session never said it left; its estimate must not
                                // hold the encoder down.
                                if let Some(a) = &self.adaptation {
                                    a.lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .leave(&Label::of(generation).to_string());
                                }
                                self.table.on_ended(&sid, generation);
                                running.remove(&sid);
                            }
                        }
                    }
                }
            }
            let _ = self.viewers.send(self.table.len());
        }
        for (sid, action) in self.table.close_all("camera shutting down") {
            self.apply(
                &sid,
                action,
                Grants::NONE,
                &mut running,
                &mut tasks,
                &mut owners,
                &ended_tx,
            )
            .await;
        }
        let _ = self.viewers.send(0);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(CLOSE_GRACE, drain).await.is_err() {
            tracing::warn!("some sessions did not close in time");
            tasks.abort_all();
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

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        sid: &str,
        action: Action,
        grants: Grants,
        running: &mut HashMap<String, Running>,
        tasks: &mut JoinSet<()>,
        owners: &mut HashMap<tokio::task::Id, (String, Generation)>,
        ended_tx: &mpsc::UnboundedSender<(String, Generation)>,
    ) {
        match action {
            Action::Reply(message) => {
                let _ = self
                    .outgoing
                    .send(Outgoing {
                        sid: sid.to_string(),
                        message,
                    })
                    .await;
            }
            Action::End {
                generation,
                reason,
                tell_viewer,
            } => {
                if let Some(r) = running.get(sid).filter(|r| r.generation == generation) {
                    let _ = r.input.send(SessionInput::End {
                        reason,
                        tell_viewer,
                    });
                    running.remove(sid);
                }
            }
            Action::Candidate {
                generation,
                candidate,
            } => {
                if let Some(r) = running.get(sid).filter(|r| r.generation == generation) {
                    let _ = r.input.send(SessionInput::Candidate(candidate));
                }
            }
            Action::SendIceServers => {
                let handed = self.ice_servers.for_viewers(SystemTime::now());
                let message = crate::signalling::protocol::Outbound::IceServers {
                    ice_servers: handed.servers,
                    expires_at: handed.expires_at,
                };
                let _ = self
                    .outgoing
                    .send(Outgoing {
                        sid: sid.to_string(),
                        message,
                    })
                    .await;
            }
            Action::Start {
                generation,
                sdp,
                codec,
            } => {
                let label = Label::of(generation);
                // Info level and above name a session by its label only; the sid, which lets
                // a client act as this viewer, appears at debug level, for tracing one
                // viewer's messages on a board one controls.
                tracing::info!(session = %label, codec = codec.as_str(), "new session");
                tracing::debug!(session = %label, %sid, "session id");
                let (input_tx, input_rx) = mpsc::unbounded_channel();
                let stats = Arc::new(SessionStats::new(codec));
                running.insert(
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
                    codec,
                    factory: self.factory.clone(),
                    media: self.media.clone(),
                    outgoing: self.outgoing.clone(),
                    input: input_rx,
                    ended: ended_tx.clone(),
                    disconnect_timeout: self.disconnect_timeout,
                    stats,
                    controller: self.controller.clone(),
                    adaptation: self.adaptation.clone(),
                    may_talk: grants.talk,
                    requester: match self.viewer_requester {
                        Requester::Viewer { may_change_state } => Requester::Viewer {
                            may_change_state: may_change_state || grants.control,
                        },
                        other => other,
                    },
                };
                let handle = tasks.spawn(viewer.run());
                owners.insert(handle.id(), (sid.to_string(), generation));
            }
        }
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
