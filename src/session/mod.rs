//! Viewer sessions: the manager that routes signalling to them, enforces limits and ends them.
//!
//! [`table`] decides (pure); [`viewer`] runs one session; [`peer`] wraps the WebRTC crate;
//! [`adapt`] decides the encoder's bitrate from the viewers' feedback (pure); `stats` holds
//! what each session reports about itself. The manager ([`SessionManager`]) is the glue: one task, so session bookkeeping needs no locks. It alone owns
//! bitrate adaptation: sessions send it their viewers' feedback and it sends each its pace.
//! A viewer's control data channel leaves this layer as an [`OpenedChannel`]; what commands
//! it carries is the control plane's business.

pub mod adapt;
mod manager;
pub mod peer;
mod stats;
pub mod table;
pub mod viewer;

pub use manager::{OpenedChannel, SessionManager};
pub use stats::{SessionInfo, SessionStats};

use crate::auth::{Authority, Right, TokenError};
use crate::signalling::protocol::{ErrorCode, ProtocolError};
use crate::signalling::Transport;
use std::sync::Arc;
use std::time::SystemTime;
use table::{Generation, Label};
use tokio::sync::{mpsc, oneshot};
use viewer::{FromViewer, SessionInput, ViewerNote};

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
/// Questions and orders for the manager from the control plane.
#[derive(Debug)]
pub enum ManagerRequest {
    List(oneshot::Sender<Vec<SessionInfo>>),
    Kick {
        label: Label,
        reason: String,
        reply: oneshot::Sender<bool>,
    },
    /// A viewer of another door (RTSP) asks for a slot.
    Join {
        transport: Transport,
        reply: oneshot::Sender<Result<Joined, ProtocolError>>,
    },
}

/// A viewer of another door (RTSP) holding its slot in the session table: counted in status
/// and `/metrics`, listed by `sessions` (with its transport), against `max_sessions`. Its door
/// serves it; the manager only counts it, and may end it (`kick`, shutdown): [`Joined::ended`].
/// Dropping it gives the slot back.
#[derive(Debug)]
pub struct Joined {
    pub label: Label,
    /// What `sessions` shows for it; its door writes the figures it knows.
    pub stats: Arc<SessionStats>,
    key: String,
    generation: Generation,
    input: mpsc::UnboundedReceiver<SessionInput>,
    notes: mpsc::UnboundedSender<FromViewer>,
}

impl Joined {
    /// Waits until the manager ends this viewer; the reason. Cancel-safe (mpsc `recv`).
    pub async fn ended(&mut self) -> String {
        loop {
            match self.input.recv().await {
                Some(SessionInput::End { reason, .. }) => return reason,
                Some(_) => continue,
                None => return "camera shutting down".into(),
            }
        }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        let _ = self.notes.send(FromViewer {
            sid: std::mem::take(&mut self.key),
            generation: self.generation,
            note: ViewerNote::Ended,
        });
    }
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

    /// A slot for a viewer of another door ([`Transport::Rtsp`]), or why there is none
    /// (`too_many_sessions`, or the camera shutting down).
    pub async fn join(&self, transport: Transport) -> Result<Joined, ProtocolError> {
        let (reply, rx) = oneshot::channel();
        let gone = || ProtocolError::new(ErrorCode::Internal, "The camera is shutting down.");
        if self
            .requests
            .send(ManagerRequest::Join { transport, reply })
            .await
            .is_err()
        {
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
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
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
