//! Who may do what on rtcam's MQTT doors (pure: no I/O, no clock).
//!
//! Every outside MQTT client of the embedded broker, through `/mqtt` or a broker listener, is
//! one [`Identity`]; each packet it sends that names a topic is checked here before the broker
//! sees it. The table (docs/security.md says the same for people):
//!
//! | who | subscribe | publish (never retained) |
//! |---|---|---|
//! | viewer (anonymous, or a `view` token) | `R/status`, `R/session/{own id}/out` | `R/session/{own id}/in` |
//! | `metrics` right | + `R/telemetry` | |
//! | `control` right | + `R/telemetry`, `R/snapshot`, `R/command/reply[/…]` | + `R/command` |
//! | broker user (users file) | anything under `R/` and the Home Assistant prefix | + any `R/session/{sid}/in` |
//!
//! rtcam's own client does not pass through here: it reaches the broker on an internal,
//! password-protected listener. Topics it alone publishes (status, answers, telemetry,
//! discovery) can therefore not be forged by anyone outside.

use crate::signalling::protocol::is_valid_sid;

/// The rights one connection holds, decided once when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    /// Open a session on its own client id, read status.
    pub view: bool,
    /// Read telemetry.
    pub metrics: bool,
    /// Send commands and read their replies, telemetry and snapshots.
    pub control: bool,
    /// A configured broker user: reads everything under the device and Home Assistant's
    /// prefix, and may write to any session (operators' tools and tests).
    pub operator: bool,
}

impl Rights {
    pub const VIEWER: Rights = Rights {
        view: true,
        metrics: false,
        control: false,
        operator: false,
    };
    pub const OPERATOR: Rights = Rights {
        view: true,
        metrics: true,
        control: true,
        operator: true,
    };

    /// A short word for logs and refusals.
    pub fn describe(&self) -> &'static str {
        if self.operator {
            "broker user"
        } else if self.control {
            "control token"
        } else if self.metrics {
            "metrics token"
        } else {
            "viewer"
        }
    }
}

/// One connected client: what it may do and under which client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    pub rights: Rights,
}

/// Why a packet was refused; the sentence goes to the log, the kind to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{who} may not subscribe to {filter:?}")]
    Subscribe { who: &'static str, filter: String },
    #[error("{who} may not publish to {topic:?}")]
    Publish { who: &'static str, topic: String },
    #[error("retained messages are rtcam's own; {topic:?} was published retained")]
    Retained { topic: String },
    #[error("client id {0:?} is not a session id (1 to 64 of A-Z a-z 0-9 - _); viewers use their session id as client id")]
    BadClientId(String),
    #[error("client id {0:?} is rtcam's own")]
    OwnClientId(String),
    #[error("more than {0} subscriptions on one connection")]
    TooManySubscriptions(usize),
}

/// The rules for one device: its topic root, Home Assistant's prefix and rtcam's own client id.
#[derive(Debug, Clone)]
pub struct Policy {
    root: String,
    ha_prefix: String,
    own_client_id: String,
    max_subscriptions: usize,
}

impl Policy {
    pub fn new(root: &str, ha_prefix: &str, own_client_id: &str, max_subscriptions: usize) -> Self {
        Self {
            root: root.to_string(),
            ha_prefix: ha_prefix.to_string(),
            own_client_id: own_client_id.to_string(),
            max_subscriptions,
        }
    }

    /// Whether a client may connect under this id with these rights.
    pub fn check_connect(&self, client_id: &str, rights: &Rights) -> Result<(), Refusal> {
        if self.is_own_client_id(client_id) {
            return Err(Refusal::OwnClientId(truncate(client_id)));
        }
        // A viewer's client id is its session id: that is what binds a session to the one
        // connection that opened it. Broker users may name themselves as they like.
        if !rights.operator && !is_valid_sid(client_id) {
            return Err(Refusal::BadClientId(truncate(client_id)));
        }
        Ok(())
    }

    /// Whether `who` may subscribe to `filter`; `held` is how many it holds already.
    pub fn check_subscribe(
        &self,
        who: &Identity,
        filter: &str,
        held: usize,
    ) -> Result<(), Refusal> {
        if held >= self.max_subscriptions {
            return Err(Refusal::TooManySubscriptions(self.max_subscriptions));
        }
        let r = &who.rights;
        let allowed = if r.operator {
            within(filter, &self.root) || within(filter, &self.ha_prefix)
        } else {
            let exact = [
                (r.view || r.metrics || r.control, self.topic("status")),
                (
                    r.view,
                    format!("{}/session/{}/out", self.root, who.client_id),
                ),
                (r.metrics || r.control, self.topic("telemetry")),
                (r.control, self.topic("snapshot")),
                (r.control, self.topic("command/reply")),
            ];
            exact.iter().any(|(ok, t)| *ok && filter == t)
                || (r.control && within(filter, &self.topic("command/reply")))
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Subscribe {
                who: r.describe(),
                filter: truncate(filter),
            })
        }
    }

    /// Whether `who` may publish to `topic` (also checked for a connection's last will).
    pub fn check_publish(&self, who: &Identity, topic: &str, retain: bool) -> Result<(), Refusal> {
        if retain {
            return Err(Refusal::Retained {
                topic: truncate(topic),
            });
        }
        let r = &who.rights;
        let own_in = format!("{}/session/{}/in", self.root, who.client_id);
        let allowed = (r.view && topic == own_in)
            || (r.control && topic == self.topic("command"))
            // Any one level, valid sid or not: rtcam itself answers a bad one with an error,
            // which is what an operator testing a client wants to see.
            || (r.operator
                && self
                    .session_in_of(topic)
                    .is_some_and(|sid| !sid.is_empty() && !sid.contains('/')));
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Publish {
                who: r.describe(),
                topic: truncate(topic),
            })
        }
    }

    /// rtcam's own id, and the shorter ids it extends with `-`: the default id is
    /// `rtcam-{device}-{random}`, and a client calling itself `rtcam-{device}` (rtcam's id
    /// before it had the random part) is posing as rtcam even though it cannot displace it.
    fn is_own_client_id(&self, client_id: &str) -> bool {
        client_id == self.own_client_id
            || (!client_id.is_empty()
                && self
                    .own_client_id
                    .strip_prefix(client_id)
                    .is_some_and(|rest| rest.starts_with('-')))
    }

    fn topic(&self, leaf: &str) -> String {
        format!("{}/{leaf}", self.root)
    }

    /// The sid of `R/session/{sid}/in`.
    fn session_in_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.root.as_str())?
            .strip_prefix("/session/")?
            .strip_suffix("/in")
    }
}

/// Whether a filter or topic lies under `root`: `root` itself or `root/…`, with `root`'s own
/// levels literal (a wildcard there would reach other devices or everything).
fn within(filter: &str, root: &str) -> bool {
    !root.is_empty()
        && (filter == root
            || filter
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// Long names from the network are cut before they reach a log line.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new("rtcam/cam1", "homeassistant", "rtcam-cam1-Ab3dE6gH", 4)
    }

    fn who(id: &str, rights: Rights) -> Identity {
        Identity {
            client_id: id.into(),
            rights,
        }
    }

    #[test]
    fn a_viewer_reaches_its_own_session_and_status_only() {
        let p = policy();
        let v = who("abc123", Rights::VIEWER);
        for ok in ["rtcam/cam1/status", "rtcam/cam1/session/abc123/out"] {
            assert_eq!(p.check_subscribe(&v, ok, 0), Ok(()), "{ok}");
        }
        for refused in [
            "#",
            "rtcam/#",
            "rtcam/cam1/#",
            "rtcam/+/status",
            "rtcam/cam1/session/+/out",
            "rtcam/cam1/session/other/out",
            "rtcam/cam1/session/abc123/in",
            "rtcam/cam1/command/reply",
            "rtcam/cam1/telemetry",
            "homeassistant/#",
            "$SYS/#",
        ] {
            assert!(p.check_subscribe(&v, refused, 0).is_err(), "{refused}");
        }
        assert_eq!(
            p.check_publish(&v, "rtcam/cam1/session/abc123/in", false),
            Ok(())
        );
        for refused in [
            "rtcam/cam1/session/other/in",
            "rtcam/cam1/session/abc123/out",
            "rtcam/cam1/command",
            "rtcam/cam1/status",
            "homeassistant/camera/x/config",
        ] {
            assert!(p.check_publish(&v, refused, false).is_err(), "{refused}");
        }
        assert!(matches!(
            p.check_publish(&v, "rtcam/cam1/session/abc123/in", true),
            Err(Refusal::Retained { .. })
        ));
    }

    #[test]
    fn client_ids_bind_viewers_and_protect_rtcams_own() {
        let p = policy();
        assert_eq!(p.check_connect("abc-123_X", &Rights::VIEWER), Ok(()));
        assert!(matches!(
            p.check_connect("has space", &Rights::VIEWER),
            Err(Refusal::BadClientId(_))
        ));
        assert!(p.check_connect("", &Rights::VIEWER).is_err());
        assert!(p.check_connect(&"x".repeat(65), &Rights::VIEWER).is_err());
        assert_eq!(p.check_connect("my tool/1", &Rights::OPERATOR), Ok(()));
        for rights in [Rights::VIEWER, Rights::OPERATOR] {
            for own in ["rtcam-cam1-Ab3dE6gH", "rtcam-cam1", "rtcam"] {
                assert_eq!(
                    p.check_connect(own, &rights),
                    Err(Refusal::OwnClientId(own.into())),
                    "{own}"
                );
            }
        }
        // Other ids that merely look alike are viewers like any other.
        for other in ["rtcam-cam1-Ab3", "rtcam-cam12", "rtcam-cam1-Ab3dE6gHx"] {
            assert_eq!(p.check_connect(other, &Rights::VIEWER), Ok(()), "{other}");
        }
    }

    #[test]
    fn control_and_metrics_rights_add_their_topics() {
        let p = policy();
        let metrics = who(
            "m1",
            Rights {
                view: true,
                metrics: true,
                ..Rights::default()
            },
        );
        assert_eq!(
            p.check_subscribe(&metrics, "rtcam/cam1/telemetry", 0),
            Ok(())
        );
        assert!(p
            .check_subscribe(&metrics, "rtcam/cam1/snapshot", 0)
            .is_err());
        assert!(p
            .check_publish(&metrics, "rtcam/cam1/command", false)
            .is_err());

        let control = who(
            "c1",
            Rights {
                view: true,
                control: true,
                ..Rights::default()
            },
        );
        for ok in [
            "rtcam/cam1/command/reply",
            "rtcam/cam1/command/reply/c1",
            "rtcam/cam1/command/reply/#",
            "rtcam/cam1/telemetry",
            "rtcam/cam1/snapshot",
        ] {
            assert_eq!(p.check_subscribe(&control, ok, 0), Ok(()), "{ok}");
        }
        assert!(p
            .check_subscribe(&control, "rtcam/cam1/command/replyx", 0)
            .is_err());
        assert!(p
            .check_subscribe(&control, "rtcam/cam1/session/+/out", 0)
            .is_err());
        assert_eq!(
            p.check_publish(&control, "rtcam/cam1/command", false),
            Ok(())
        );
        assert!(p
            .check_publish(&control, "rtcam/cam1/command", true)
            .is_err());
        assert!(p
            .check_publish(&control, "rtcam/cam1/session/other/in", false)
            .is_err());
    }

    #[test]
    fn operators_read_everything_of_the_device_and_write_no_status() {
        let p = policy();
        let op = who("ha", Rights::OPERATOR);
        for ok in [
            "rtcam/cam1/#",
            "rtcam/cam1/session/+/out",
            "rtcam/cam1",
            "homeassistant/#",
        ] {
            assert_eq!(p.check_subscribe(&op, ok, 0), Ok(()), "{ok}");
        }
        for refused in [
            "#",
            "rtcam/#",
            "+/cam1/#",
            "rtcam/cam2/status",
            "rtcam/cam1x/#",
        ] {
            assert!(p.check_subscribe(&op, refused, 0).is_err(), "{refused}");
        }
        for ok in [
            "rtcam/cam1/session/anyone/in",
            "rtcam/cam1/session/bad.sid!/in",
        ] {
            assert_eq!(p.check_publish(&op, ok, false), Ok(()), "{ok}");
        }
        for refused in [
            "rtcam/cam1/status",
            "rtcam/cam1/session/anyone/out",
            "rtcam/cam1/session/a/b/in",
            "rtcam/cam1/session//in",
            "rtcam/cam1/telemetry",
            "homeassistant/camera/x/config",
        ] {
            assert!(p.check_publish(&op, refused, false).is_err(), "{refused}");
        }
    }

    #[test]
    fn subscriptions_per_connection_are_capped() {
        let p = policy();
        let op = who("ha", Rights::OPERATOR);
        assert_eq!(p.check_subscribe(&op, "rtcam/cam1/#", 3), Ok(()));
        assert_eq!(
            p.check_subscribe(&op, "rtcam/cam1/#", 4),
            Err(Refusal::TooManySubscriptions(4))
        );
    }
}
