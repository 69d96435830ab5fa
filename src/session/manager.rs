//! The session manager task: routes signalling to sessions, applies the table's actions,
//! enforces limits, ends sessions, and alone owns bitrate adaptation.

use super::adapt;
use super::peer::{self, PeerFactory};
use super::stats::{info_of, SessionInfo, SessionStats};
use super::table::{Action, Generation, Label, SessionTable};
use super::viewer::{FromViewer, SessionInput, Viewer, ViewerNote};
use super::{admit, per_address_cap, Grants, Joined, ManagerRequest};
use crate::auth::Right;
use crate::media::Media;
use crate::signalling::protocol::{ErrorCode, IceServer, Inbound, Outbound, ProtocolError};
use crate::signalling::sdp::OfferSummary;
use crate::signalling::{Outgoing, SignalEvent, Transport};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for sessions to say bye and close their peers.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// The session manager: one task ([`SessionManager::run`]) owns every session's bookkeeping.
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
    /// ([`ViewerNote`]); `None` when it is off.
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
            ManagerRequest::Join { transport, reply } => {
                let _ = reply.send(self.join(live, transport));
            }
        }
    }

    /// Gives a viewer of another door a slot: in the table (limits), and among the running
    /// sessions with an input queue whose only message is its end.
    fn join(&mut self, live: &mut Live, transport: Transport) -> Result<Joined, ProtocolError> {
        let (key, generation) = self.table.join_outside(transport)?;
        let label = Label::of(generation);
        tracing::info!(session = %label, transport = transport.as_str(), "new session");
        let (input, input_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(SessionStats::new(crate::codec::VideoCodec::H264, transport));
        live.running.insert(
            key.clone(),
            Running {
                generation,
                input,
                stats: stats.clone(),
            },
        );
        Ok(Joined {
            label,
            stats,
            key,
            generation,
            input: input_rx,
            notes: live.notes.clone(),
        })
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
        self.tell_whep_ended(sid);
        if let Some(a) = &mut self.adaptation {
            a.leave(&Label::of(generation).to_string());
        }
    }

    /// A WHEP viewer's resource lives in the HTTP door, which learns of every end this way,
    /// the silent ones included (a peer that closed, a task that failed): its URL then answers
    /// 404. MQTT viewers are told only what the protocol says.
    fn tell_whep_ended(&self, sid: &str) {
        if Transport::of_sid(sid) == Transport::Whep {
            let _ = self.outgoing.try_send(Outgoing {
                sid: sid.to_string(),
                message: Outbound::Bye {
                    reason: "session ended".into(),
                },
            });
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
            r.stats.estimate_kbps.store(u64::from(e), Ordering::Relaxed);
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
            Action::Restart { generation, sdp } => {
                if let Some(r) = live.current(sid, generation) {
                    let _ = r.input.send(SessionInput::Restart(sdp));
                }
            }
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
        let stats = Arc::new(SessionStats::new(codec, Transport::of_sid(sid)));
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
        live.owners
            .insert(handle.id(), (sid.to_string(), generation));
    }
}
