//! Viewer sessions: the manager that routes signalling to them, enforces limits and ends them.
//!
//! [`table`] decides (pure); [`viewer`] runs one session; [`peer`] wraps the WebRTC crate.
//! The manager is the glue: one task, so session bookkeeping needs no locks.

pub mod peer;
pub mod table;
pub mod viewer;

use crate::media::Media;
use crate::signalling::{Outgoing, SignalEvent};
use peer::PeerFactory;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use table::{Action, Generation, SessionTable};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use viewer::{SessionInput, Viewer};

/// How long shutdown waits for sessions to say bye and close their peers.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

pub struct SessionManager {
    pub table: SessionTable,
    pub factory: Arc<PeerFactory>,
    pub media: Media,
    pub events: mpsc::Receiver<SignalEvent>,
    pub outgoing: mpsc::Sender<Outgoing>,
    /// Number of live sessions, for status.
    pub viewers: watch::Sender<usize>,
    pub disconnect_timeout: Duration,
}

struct Running {
    generation: Generation,
    input: mpsc::UnboundedSender<SessionInput>,
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
                    let actions = self.table.on_message(&event.sid, event.message);
                    for action in actions {
                        self.apply(&event.sid, action, &mut running, &mut tasks, &mut owners, &ended_tx).await;
                    }
                }
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
                        Ok((id, ())) => { owners.remove(&id); }
                        Err(e) => {
                            tracing::error!("a session task failed: {e}");
                            if let Some((sid, generation)) = owners.remove(&e.id()) {
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
            self.apply(&sid, action, &mut running, &mut tasks, &mut owners, &ended_tx).await;
        }
        let _ = self.viewers.send(0);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(CLOSE_GRACE, drain).await.is_err() {
            tracing::warn!("some sessions did not close in time");
            tasks.abort_all();
        }
    }

    async fn apply(
        &self,
        sid: &str,
        action: Action,
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
                    let _ = r.input.send(SessionInput::End { reason, tell_viewer });
                    running.remove(sid);
                }
            }
            Action::Candidate { generation, candidate } => {
                if let Some(r) = running.get(sid).filter(|r| r.generation == generation) {
                    let _ = r.input.send(SessionInput::Candidate(candidate));
                }
            }
            Action::Start { generation, sdp } => {
                tracing::info!(%sid, "new session");
                let (input_tx, input_rx) = mpsc::unbounded_channel();
                running.insert(
                    sid.to_string(),
                    Running {
                        generation,
                        input: input_tx,
                    },
                );
                let viewer = Viewer {
                    sid: sid.to_string(),
                    generation,
                    offer_sdp: sdp,
                    factory: self.factory.clone(),
                    media: self.media.clone(),
                    outgoing: self.outgoing.clone(),
                    input: input_rx,
                    ended: ended_tx.clone(),
                    disconnect_timeout: self.disconnect_timeout,
                };
                let handle = tasks.spawn(viewer.run());
                owners.insert(handle.id(), (sid.to_string(), generation));
            }
        }
    }
}
