//! The ICE servers rtcam uses and hands to its viewers, with TURN REST credentials.
//!
//! With `[webrtc] turn_secret` (coturn's `static-auth-secret`, `use-auth-secret`), rtcam never
//! stores a TURN password: it derives a time-limited one whenever it needs one, the scheme of
//! draft-uberti-behave-turn-rest that coturn implements: the username is
//! `<expiry, unix seconds>:<label>` and the credential is
//! `base64(HMAC-SHA1(secret, username))`. The TURN server recomputes the HMAC and refuses a
//! username whose expiry has passed, so a credential a viewer was handed stops working by
//! itself; the secret never leaves the board.
//!
//! Pure apart from the clock, which is passed in; nothing here opens a socket.

use crate::config::{IceServer, WebrtcConfig};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Derives TURN REST credentials from the shared secret.
#[derive(Clone)]
pub struct TurnRest {
    /// HMAC-SHA1 is what the TURN REST scheme (and coturn) defines; it is used as a MAC
    /// here, where SHA-1's collision weakness does not apply.
    key: ring::hmac::Key,
    urls: Vec<String>,
    ttl: Duration,
}

/// Never prints the key: a `{:?}` of the config or the factory must not leak it.
impl std::fmt::Debug for TurnRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRest")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TurnRest {
    pub fn new(secret: &str, urls: Vec<String>, ttl: Duration) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes()),
            urls,
            ttl,
        }
    }

    /// The TURN REST source `[webrtc]` describes: `None` unless `turn_urls` and `turn_secret`
    /// (from the file or its credential) are both set.
    pub fn from_config(webrtc: &WebrtcConfig) -> Option<Self> {
        (!webrtc.turn_urls.is_empty() && !webrtc.turn_secret.is_empty()).then(|| {
            Self::new(
                &webrtc.turn_secret,
                webrtc.turn_urls.clone(),
                Duration::from_secs(webrtc.turn_ttl_secs),
            )
        })
    }

    /// Unix seconds at which credentials derived at `now` expire.
    pub fn expiry(&self, now: SystemTime) -> u64 {
        now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + self.ttl.as_secs()
    }

    /// The TURN server entry with credentials valid from `now` for the configured lifetime.
    /// `label` names who uses them (it shows in the TURN server's log); it must not contain
    /// `:`, which separates the expiry from it.
    pub fn server(&self, label: &str, now: SystemTime) -> IceServer {
        let username = format!("{}:{label}", self.expiry(now));
        let mac = ring::hmac::sign(&self.key, username.as_bytes());
        IceServer {
            urls: self.urls.clone(),
            username,
            credential: STANDARD.encode(mac.as_ref()),
        }
    }
}

/// Every ICE server rtcam knows: the configured ones, plus the TURN REST server if any.
#[derive(Debug, Clone)]
pub struct IceServers {
    fixed: Vec<IceServer>,
    rest: Option<TurnRest>,
    /// Labels in derived usernames: rtcam's own peers, and what viewers are handed.
    own_label: String,
    viewer_label: String,
}

/// What a viewer is handed: the servers, and when derived credentials among them expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerIceServers {
    pub servers: Vec<IceServer>,
    /// Unix seconds; `None` when no credential expires (no `turn_secret`).
    pub expires_at: Option<u64>,
}

impl IceServers {
    /// `device_id` becomes the label of derived usernames (a topic level: it has no `:`).
    pub fn new(fixed: Vec<IceServer>, rest: Option<TurnRest>, device_id: &str) -> Self {
        for s in fixed.iter().filter(|s| !s.credential.is_empty()) {
            tracing::info!(
                urls = ?s.urls,
                "a TURN server with a static credential is used by rtcam only, never handed to \
                 viewers; give viewers TURN with webrtc.turn_urls and turn_secret (TURN REST)"
            );
        }
        Self {
            fixed,
            rest,
            own_label: device_id.to_string(),
            viewer_label: format!("{device_id}-viewer"),
        }
    }

    /// For rtcam's own peer connection, derived at `now`.
    pub fn for_rtcam(&self, now: SystemTime) -> Vec<IceServer> {
        let mut servers = self.fixed.clone();
        servers.extend(self.rest.as_ref().map(|r| r.server(&self.own_label, now)));
        servers
    }

    /// For a viewer (the page's `/config.json`, the `ice_servers` message), derived at `now`.
    /// A configured server with a static credential stays rtcam's own: a viewer could keep it
    /// and relay through the camera owner's TURN server forever. Viewers get TURN through
    /// derived, expiring credentials (`turn_secret`) only.
    pub fn for_viewers(&self, now: SystemTime) -> ViewerIceServers {
        let mut servers: Vec<IceServer> = self
            .fixed
            .iter()
            .filter(|s| s.credential.is_empty())
            .cloned()
            .collect();
        servers.extend(
            self.rest
                .as_ref()
                .map(|r| r.server(&self.viewer_label, now)),
        );
        ViewerIceServers {
            servers,
            expires_at: self.rest.as_ref().map(|r| r.expiry(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        // The expected credential is what an independent implementation computes:
        // `printf %s 1433895918:gorst | openssl dgst -sha1 -hmac north -binary | base64`.
        let rest = TurnRest::new(
            "north",
            vec!["turn:turn.lan:3478?transport=udp".into()],
            Duration::from_secs(0),
        );
        let now = UNIX_EPOCH + Duration::from_secs(1433895918);
        let s = rest.server("gorst", now);
        assert_eq!(s.username, "1433895918:gorst");
        assert_eq!(s.credential, "Jkoq/bR7DWfoH9c0tHZx2FEf1SM=");
        assert_eq!(s.urls, vec!["turn:turn.lan:3478?transport=udp".to_string()]);
    }

    #[test]
    fn static_turn_credentials_stay_with_rtcam() {
        let stun = IceServer {
            urls: vec!["stun:t:3478".into()],
            ..IceServer::default()
        };
        let fixed_turn = IceServer {
            urls: vec!["turn:t:3478".into()],
            username: "rtcam".into(),
            credential: "static-secret".into(),
        };
        let all = IceServers::new(vec![stun.clone(), fixed_turn.clone()], None, "cam");
        let now = SystemTime::now();
        assert_eq!(all.for_rtcam(now), vec![stun.clone(), fixed_turn]);
        assert_eq!(all.for_viewers(now).servers, vec![stun]);
    }

    #[test]
    fn expiry_is_now_plus_ttl_and_viewers_get_their_own_label() {
        let rest = TurnRest::new("s", vec!["turn:t:3478".into()], Duration::from_secs(600));
        let stun = IceServer {
            urls: vec!["stun:t:3478".into()],
            ..IceServer::default()
        };
        let ice = IceServers::new(vec![stun.clone()], Some(rest), "cam1");
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let own = ice.for_rtcam(now);
        assert_eq!(own[0], stun);
        assert_eq!(own[1].username, "1600:cam1");
        let viewers = ice.for_viewers(now);
        assert_eq!(viewers.expires_at, Some(1600));
        assert_eq!(viewers.servers[1].username, "1600:cam1-viewer");
        assert_ne!(viewers.servers[1].credential, own[1].credential);

        let plain = IceServers::new(vec![stun.clone()], None, "cam1");
        assert_eq!(plain.for_rtcam(now), vec![stun.clone()]);
        assert_eq!(
            plain.for_viewers(now),
            ViewerIceServers {
                servers: vec![stun],
                expires_at: None
            }
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let rest = TurnRest::new("very-secret", vec![], Duration::from_secs(1));
        assert!(!format!("{rest:?}").contains("very-secret"));
    }

    #[test]
    fn a_rest_source_needs_urls_and_a_secret() {
        let mut webrtc = WebrtcConfig {
            turn_urls: vec!["turn:t.lan:3478?transport=udp".into()],
            turn_ttl_secs: 600,
            ..WebrtcConfig::default()
        };
        // The secret may still come from a credential: no REST source until it does.
        assert!(TurnRest::from_config(&webrtc).is_none());
        webrtc.turn_secret = "s".into();
        let rest = TurnRest::from_config(&webrtc).expect("urls and secret");
        assert_eq!(rest.ttl, Duration::from_secs(600));
    }
}
