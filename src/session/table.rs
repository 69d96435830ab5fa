//! Which sessions exist and what each incoming message means for them.
//!
//! Pure state, no I/O: given a viewer's message it returns the [`Action`]s to take, so the
//! rules (limits, replacement, unknown sessions) are unit-tested without any network.

use crate::signalling::protocol::{
    self, Candidate, ErrorCode, Inbound, Outbound, ProtocolError, VideoCodec,
};
use crate::signalling::sdp::OfferSummary;
use crate::signalling::Transport;
use crate::util::RateLimiter;
use std::collections::HashMap;
use std::time::Instant;

/// A session's identity: its sid plus a generation, so an old session ending late cannot
/// remove the one that replaced it under the same sid.
pub type Generation = u64;

/// A session's name wherever more than its own viewer may read it: the `sessions` command,
/// telemetry, logs at info level and above, `kick`. It is `v` and the session's generation
/// (`v1`, `v2`, … in the order sessions start, never reused while rtcam runs). The sid cannot
/// serve there: it is the secret a client presents (as its MQTT client id) to act as that
/// viewer, while a label grants nothing to whoever reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(Generation);

impl Label {
    pub fn of(generation: Generation) -> Self {
        Self(generation)
    }

    pub fn generation(self) -> Generation {
        self.0
    }

    /// `v` and a generation without leading zeros, as [`Display`](std::fmt::Display) writes
    /// it; anything else (a sid included) is not a label.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix('v')?;
        if digits.is_empty()
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        digits.parse().ok().map(Self)
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl serde::Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this to the viewer.
    Reply(Outbound),
    /// End the running session of this generation, for this reason (no message to the viewer
    /// when `tell_viewer` is false: it asked for the end or already started a new one).
    End {
        generation: Generation,
        reason: String,
        tell_viewer: bool,
    },
    /// Start a session for this offer, sending it video in `codec`.
    Start {
        generation: Generation,
        sdp: String,
        /// What the offer contains, read once when it was checked.
        offer: OfferSummary,
        codec: VideoCodec,
    },
    /// Hand a remote candidate to the running session.
    Candidate {
        generation: Generation,
        candidate: Candidate,
    },
    /// Reply with the ICE servers viewers use, with fresh TURN credentials. The table only
    /// decides that the request may be answered; deriving credentials needs the wall clock.
    SendIceServers,
    /// Restart ICE in the running session with this offer (new ICE credentials).
    Restart { generation: Generation, sdp: String },
}

/// The limits that keep one noisy or hostile viewer from starving the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions: usize,
    /// New offers per second for the whole device, with a burst of twice that.
    pub offers_per_second: u32,
    /// Remote candidates one session may send; a browser sends a handful.
    pub max_candidates: usize,
    /// Whether an offer without H.264 is served VP8 by a second encoder (`[encoder]
    /// vp8_fallback`) or refused with `no_video_codec`. Decided here, with the other reasons
    /// to refuse an offer, so the viewer only carries the decision out.
    pub vp8_fallback: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 8,
            offers_per_second: 5,
            max_candidates: 64,
            vp8_fallback: true,
        }
    }
}

#[derive(Debug)]
struct Live {
    generation: Generation,
    candidates: usize,
}

#[derive(Debug)]
pub struct SessionTable {
    limits: Limits,
    offers: RateLimiter,
    /// `ice_servers` requests have a budget of their own, the size of the offers' one, so a
    /// viewer that asks before each offer does not halve the offers it may make.
    ice_requests: RateLimiter,
    live: HashMap<String, Live>,
    next_generation: Generation,
    closing: bool,
}

impl SessionTable {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            offers: RateLimiter::new(limits.offers_per_second, limits.offers_per_second * 2),
            ice_requests: RateLimiter::new(limits.offers_per_second, limits.offers_per_second * 2),
            live: HashMap::new(),
            next_generation: 1,
            closing: false,
        }
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// `[webrtc] max_sessions`.
    pub fn max_sessions(&self) -> usize {
        self.limits.max_sessions
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn on_message(
        &mut self,
        sid: &str,
        message: Result<Inbound, ProtocolError>,
        now: Instant,
    ) -> Vec<Action> {
        let message = match message {
            Ok(m) => m,
            Err(e) => return vec![Action::Reply(e.into())],
        };
        match message {
            Inbound::Offer { sdp, .. } => self.on_offer(sid, sdp, now),
            Inbound::Candidate(candidate) => match self.live.get_mut(sid) {
                Some(live) if live.candidates >= self.limits.max_candidates => vec![Action::Reply(
                    ProtocolError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "This session has sent {} candidates, the most rtcam accepts; further ones are ignored.",
                            self.limits.max_candidates
                        ),
                    )
                    .into(),
                )],
                Some(live) => {
                    live.candidates += 1;
                    vec![Action::Candidate {
                        generation: live.generation,
                        candidate,
                    }]
                }
                None => vec![Action::Reply(
                    ProtocolError::new(
                        ErrorCode::UnknownSession,
                        format!("There is no session {sid:?}: send an offer first, or start over if the camera restarted."),
                    )
                    .into(),
                )],
            },
            Inbound::IceServers { .. } => self.on_ice_servers(now),
            Inbound::Restart { sdp } => match self.live.get(sid) {
                Some(live) => vec![Action::Restart {
                    generation: live.generation,
                    sdp,
                }],
                None => vec![Action::Reply(
                    ProtocolError::new(
                        ErrorCode::UnknownSession,
                        format!("There is no session {sid:?} to restart."),
                    )
                    .into(),
                )],
            },
            Inbound::Bye => match self.live.remove(sid) {
                Some(Live { generation, .. }) => vec![Action::End {
                    generation,
                    reason: "viewer said bye".into(),
                    tell_viewer: false,
                }],
                // A bye for nothing is already satisfied.
                None => vec![],
            },
        }
    }

    fn on_offer(&mut self, sid: &str, sdp: String, now: Instant) -> Vec<Action> {
        if self.closing {
            return vec![Action::Reply(
                ProtocolError::new(
                    ErrorCode::Internal,
                    "The camera is shutting down; try again in a moment.",
                )
                .into(),
            )];
        }
        let offer = OfferSummary::of(&sdp);
        let codec = match protocol::check_offer(&offer, self.limits.vp8_fallback) {
            Ok(codec) => codec,
            Err(e) => return vec![Action::Reply(e.into())],
        };
        // Checked after validation so garbage does not use up the budget of real viewers.
        if !self.offers.try_take(now) {
            return vec![Action::Reply(
                ProtocolError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "The camera is receiving more than {} new sessions per second; try again in a moment.",
                        self.limits.offers_per_second
                    ),
                )
                .into(),
            )];
        }
        let mut actions = Vec::new();
        // A new offer on a live sid replaces that session (a viewer restarting its peer).
        if let Some(Live {
            generation: old, ..
        }) = self.live.remove(sid)
        {
            actions.push(Action::End {
                generation: old,
                reason: "replaced by a new offer".into(),
                tell_viewer: false,
            });
        } else if self.live.len() >= self.limits.max_sessions {
            return vec![Action::Reply(
                ProtocolError::new(
                    ErrorCode::TooManySessions,
                    format!(
                        "The camera is already serving its maximum of {} viewers; try again later.",
                        self.limits.max_sessions
                    ),
                )
                .into(),
            )];
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.live.insert(
            sid.to_string(),
            Live {
                generation,
                candidates: 0,
            },
        );
        actions.push(Action::Start {
            generation,
            sdp,
            offer,
            codec,
        });
        actions
    }

    fn on_ice_servers(&mut self, now: Instant) -> Vec<Action> {
        if self.closing {
            return vec![Action::Reply(
                ProtocolError::new(
                    ErrorCode::Internal,
                    "The camera is shutting down; try again in a moment.",
                )
                .into(),
            )];
        }
        // Each answer costs an HMAC and a publish, and hands out a credential for the TURN
        // server: a flood is refused like a flood of offers.
        if !self.ice_requests.try_take(now) {
            return vec![Action::Reply(
                ProtocolError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "The camera is receiving more than {} ICE server requests per second; try again in a moment.",
                        self.limits.offers_per_second
                    ),
                )
                .into(),
            )];
        }
        vec![Action::SendIceServers]
    }

    /// A viewer of another door (`transport`: RTSP) takes a slot: it counts against
    /// `max_sessions` like a WebRTC session, and leaves through [`SessionTable::on_ended`] with
    /// the key returned ([`Transport::key`]). The key holds a `/`, which no MQTT sid (a topic
    /// level) nor WHEP sid can, so it never meets a WebRTC viewer's session.
    pub fn join_outside(
        &mut self,
        transport: Transport,
    ) -> Result<(String, Generation), ProtocolError> {
        if self.closing {
            return Err(ProtocolError::new(
                ErrorCode::Internal,
                "The camera is shutting down; try again in a moment.",
            ));
        }
        if self.live.len() >= self.limits.max_sessions {
            return Err(ProtocolError::new(
                ErrorCode::TooManySessions,
                format!(
                    "The camera is already serving its maximum of {} viewers; try again later.",
                    self.limits.max_sessions
                ),
            ));
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let key = transport.key(generation);
        self.live.insert(
            key.clone(),
            Live {
                generation,
                candidates: 0,
            },
        );
        Ok((key, generation))
    }

    /// A session ended on its own (ICE failure, timeout). Returns whether it was still current.
    pub fn on_ended(&mut self, sid: &str, generation: Generation) -> bool {
        if self
            .live
            .get(sid)
            .is_some_and(|l| l.generation == generation)
        {
            self.live.remove(sid);
            true
        } else {
            false
        }
    }

    /// Refuses new offers from now on and ends every session.
    pub fn close_all(&mut self, reason: &str) -> Vec<(String, Action)> {
        self.closing = true;
        self.live
            .drain()
            .map(|(sid, Live { generation, .. })| {
                (
                    sid,
                    Action::End {
                        generation,
                        reason: reason.to_string(),
                        tell_viewer: true,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_of_other_doors_share_the_slots() {
        let mut t = table(2);
        let (key, generation) = t.join_outside(Transport::Rtsp).unwrap();
        assert!(key.starts_with("rtsp/") && t.len() == 1);
        assert_eq!(Transport::of_sid(&key), Transport::Rtsp);
        let (other, _) = t.join_outside(Transport::Rtsp).unwrap();
        let refused = t.join_outside(Transport::Rtsp).unwrap_err();
        assert_eq!(refused.code, ErrorCode::TooManySessions);
        assert!(t.on_ended(&key, generation));
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.close_all("bye").len(),
            1,
            "{other} is ended with the rest"
        );
        assert_eq!(
            t.join_outside(Transport::Rtsp).unwrap_err().code,
            ErrorCode::Internal
        );
    }

    fn table(max_sessions: usize) -> SessionTable {
        SessionTable::new(Limits {
            max_sessions,
            offers_per_second: 1000,
            max_candidates: 3,
            vp8_fallback: true,
        })
    }

    #[test]
    fn offers_are_rate_limited_and_candidates_capped() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(Limits {
            max_sessions: 100,
            offers_per_second: 2,
            max_candidates: 2,
            vp8_fallback: true,
        });
        for i in 0..4 {
            assert!(matches!(
                t.on_message(&format!("s{i}"), offer(), t0)[..],
                [Action::Start { .. }]
            ));
        }
        assert_eq!(
            code(&t.on_message("s9", offer(), t0)),
            Some(ErrorCode::RateLimited)
        );
        assert!(matches!(
            t.on_message("s9", offer(), t0 + std::time::Duration::from_secs(1))[..],
            [Action::Start { .. }]
        ));
        let cand = || {
            Ok(Inbound::Candidate(Candidate {
                candidate: "candidate:1 1 udp 1 1.2.3.4 5 typ host".into(),
                sdp_mid: None,
                sdp_mline_index: None,
            }))
        };
        assert!(matches!(
            t.on_message("s0", cand(), t0)[..],
            [Action::Candidate { .. }]
        ));
        assert!(matches!(
            t.on_message("s0", cand(), t0)[..],
            [Action::Candidate { .. }]
        ));
        assert_eq!(
            code(&t.on_message("s0", cand(), t0)),
            Some(ErrorCode::RateLimited)
        );
        assert!(
            matches!(
                t.on_message("s1", cand(), t0)[..],
                [Action::Candidate { .. }]
            ),
            "per session"
        );
    }

    const SDP: &str = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";

    fn offer() -> Result<Inbound, ProtocolError> {
        Ok(Inbound::Offer {
            sdp: SDP.into(),
            token: None,
        })
    }

    fn code(actions: &[Action]) -> Option<ErrorCode> {
        match actions {
            [Action::Reply(Outbound::Error { code, .. })] => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn limits_sessions_and_frees_slots() {
        let mut t = table(2);
        assert!(matches!(
            t.on_message("a", offer(), Instant::now())[..],
            [Action::Start { generation: 1, .. }]
        ));
        assert!(matches!(
            t.on_message("b", offer(), Instant::now())[..],
            [Action::Start { generation: 2, .. }]
        ));
        assert_eq!(
            code(&t.on_message("c", offer(), Instant::now())),
            Some(ErrorCode::TooManySessions)
        );
        assert!(t.on_ended("a", 1));
        assert!(matches!(
            t.on_message("c", offer(), Instant::now())[..],
            [Action::Start { generation: 3, .. }]
        ));
    }

    #[test]
    fn offers_without_h264_get_vp8_unless_switched_off() {
        let vp8 = || {
            Ok(Inbound::Offer {
                sdp: "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n".into(),
                token: None,
            })
        };
        let now = Instant::now();
        let mut t = table(4);
        assert!(matches!(
            t.on_message("h", offer(), now)[..],
            [Action::Start {
                codec: VideoCodec::H264,
                ..
            }]
        ));
        assert!(matches!(
            t.on_message("v", vp8(), now)[..],
            [Action::Start {
                codec: VideoCodec::Vp8,
                ..
            }]
        ));
        let mut off = SessionTable::new(Limits {
            vp8_fallback: false,
            ..Limits::default()
        });
        assert_eq!(
            code(&off.on_message("v", vp8(), now)),
            Some(ErrorCode::NoVideoCodec)
        );
        assert_eq!(off.len(), 0, "a refused offer starts nothing");
    }

    #[test]
    fn new_offer_replaces_even_at_the_limit() {
        let mut t = table(1);
        t.on_message("a", offer(), Instant::now());
        let actions = t.on_message("a", offer(), Instant::now());
        assert!(matches!(
            actions[..],
            [
                Action::End {
                    generation: 1,
                    tell_viewer: false,
                    ..
                },
                Action::Start { generation: 2, .. }
            ]
        ));
        assert!(
            !t.on_ended("a", 1),
            "the replaced session ending late must not remove its successor"
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn candidates_and_byes() {
        let mut t = table(4);
        let cand = Inbound::Candidate(Candidate {
            candidate: "candidate:1 1 udp 1 1.2.3.4 5 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        });
        assert_eq!(
            code(&t.on_message("x", Ok(cand.clone()), Instant::now())),
            Some(ErrorCode::UnknownSession)
        );
        t.on_message("x", offer(), Instant::now());
        assert!(matches!(
            t.on_message("x", Ok(cand), Instant::now())[..],
            [Action::Candidate { generation: 1, .. }]
        ));
        assert!(matches!(
            t.on_message("x", Ok(Inbound::Bye), Instant::now())[..],
            [Action::End {
                tell_viewer: false,
                ..
            }]
        ));
        assert!(t
            .on_message("x", Ok(Inbound::Bye), Instant::now())
            .is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn a_restart_reaches_the_running_session_only() {
        let mut t = table(4);
        let restart = || Ok(Inbound::Restart { sdp: "v=0".into() });
        assert_eq!(
            code(&t.on_message("x", restart(), Instant::now())),
            Some(ErrorCode::UnknownSession)
        );
        t.on_message("x", offer(), Instant::now());
        assert!(matches!(
            t.on_message("x", restart(), Instant::now())[..],
            [Action::Restart { generation: 1, .. }]
        ));
        // A restart is no new session: the slot count stays.
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn bad_offers_and_parse_errors_are_replied() {
        let mut t = table(4);
        let bad = t.on_message(
            "x",
            Ok(Inbound::Offer {
                sdp: "nonsense".into(),
                token: None,
            }),
            Instant::now(),
        );
        assert_eq!(code(&bad), Some(ErrorCode::BadSdp));
        let err = ProtocolError::new(ErrorCode::BadJson, "m");
        assert_eq!(
            code(&t.on_message("x", Err(err), Instant::now())),
            Some(ErrorCode::BadJson)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn ice_server_requests_need_no_session_and_have_their_own_budget() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(Limits {
            max_sessions: 10,
            offers_per_second: 1,
            max_candidates: 2,
            vp8_fallback: true,
        });
        let ask = || Ok(Inbound::IceServers { token: None });
        assert_eq!(t.on_message("a", ask(), t0), vec![Action::SendIceServers]);
        assert_eq!(t.on_message("b", ask(), t0), vec![Action::SendIceServers]);
        assert_eq!(
            code(&t.on_message("c", ask(), t0)),
            Some(ErrorCode::RateLimited)
        );
        // Offers still have their whole burst, and asking created no session.
        assert!(t.is_empty());
        assert!(matches!(
            t.on_message("a", offer(), t0)[..],
            [Action::Start { .. }]
        ));
        assert!(matches!(
            t.on_message("b", offer(), t0)[..],
            [Action::Start { .. }]
        ));
        assert_eq!(
            t.on_message("c", ask(), t0 + std::time::Duration::from_secs(1)),
            vec![Action::SendIceServers]
        );
        t.close_all("stop");
        assert_eq!(
            code(&t.on_message("d", ask(), t0 + std::time::Duration::from_secs(9))),
            Some(ErrorCode::Internal)
        );
    }

    #[test]
    fn labels_are_the_generation_and_nothing_else_parses() {
        assert_eq!(Label::of(7).to_string(), "v7");
        assert_eq!(Label::parse("v7"), Some(Label::of(7)));
        assert_eq!(
            Label::parse("v18446744073709551615"),
            Some(Label::of(u64::MAX))
        );
        for not_a_label in [
            "",
            "v",
            "v0",
            "v07",
            "7",
            "V7",
            "v7 ",
            "v-1",
            "v1a",
            "ab12cd34ef56gh78",
            "v18446744073709551616",
        ] {
            assert_eq!(Label::parse(not_a_label), None, "{not_a_label:?}");
        }
        assert_eq!(
            serde_json::to_value(Label::of(3)).unwrap(),
            serde_json::json!("v3")
        );
    }

    #[test]
    fn closing_ends_everyone_and_refuses_newcomers() {
        let mut t = table(4);
        t.on_message("a", offer(), Instant::now());
        t.on_message("b", offer(), Instant::now());
        let ended = t.close_all("camera shutting down");
        assert_eq!(ended.len(), 2);
        assert!(ended.iter().all(|(_, a)| matches!(
            a,
            Action::End {
                tell_viewer: true,
                ..
            }
        )));
        assert_eq!(
            code(&t.on_message("c", offer(), Instant::now())),
            Some(ErrorCode::Internal)
        );
    }
}
