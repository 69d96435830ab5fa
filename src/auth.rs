//! Viewer tokens: with `[auth] secret` set, viewers need a token to watch (and one granting
//! `talk` to be heard on the board), and HTTP requests (page, snapshot, metrics, `/mqtt`) need
//! one too.
//!
//! A token is a standard JWT signed with HS256 and the secret, so any JWT library can mint one:
//! `aud` is the device id (`*`: every device sharing the secret), `exp` and `iat` are seconds
//! since the Unix epoch, `scope` lists the rights granted separated by spaces (OAuth style:
//! `"view talk"`), and an optional `sub` names who holds it, for the logs. Only HS256 is
//! accepted. Pure apart from the clock, which is passed in; `rtcam token` mints them.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The audience that names every device sharing the secret.
pub const ANY_DEVICE: &str = "*";

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Watch: offers, the page, snapshots, `/mqtt`.
    View,
    /// Be heard: the viewer's microphone is played on the board (`[audio] talkback`).
    Talk,
    /// Change the camera over the data channel.
    Control,
    /// Read `/metrics`.
    Metrics,
}

impl Right {
    /// Every right, in the order a scope lists them.
    pub const ALL: [Right; 4] = [Right::View, Right::Talk, Right::Control, Right::Metrics];

    /// The right's name in a token's `scope` and on `rtcam token`'s command line.
    pub fn name(self) -> &'static str {
        match self {
            Right::View => "view",
            Right::Talk => "talk",
            Right::Control => "control",
            Right::Metrics => "metrics",
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Right {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Right::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown right {s:?}; use view, talk, control, metrics"))
    }
}

/// A token's claims: the registered JWT ones rtcam uses, and `scope`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Device id the token is for; [`ANY_DEVICE`] for every device sharing the secret.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// When it was minted, seconds since the Unix epoch (informative: rtcam does not check it).
    #[serde(default)]
    pub iat: u64,
    /// The rights granted, separated by spaces; names rtcam does not know are ignored, so a
    /// token minted for several services may carry theirs too.
    #[serde(default)]
    pub scope: String,
    /// Who holds the token, for logs (which never show the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

impl Claims {
    /// Whether the scope lists `right`.
    pub fn grants(&self, right: Right) -> bool {
        self.scope
            .split_ascii_whitespace()
            .any(|r| r == right.name())
    }

    /// The rights rtcam knows that the scope lists, in [`Right::ALL`]'s order.
    pub fn rights(&self) -> Vec<Right> {
        Right::ALL.into_iter().filter(|r| self.grants(*r)).collect()
    }

    /// The moment the token stops being accepted.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.exp)
    }

    /// The holder's label, if the token names one.
    pub fn sub(&self) -> Option<&str> {
        self.sub.as_deref()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token was given; this camera needs one (ask its owner for a viewing link)")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    /// Not signed with HS256 and this camera's secret (another secret, another algorithm).
    #[error("the token's signature does not match this camera's secret")]
    BadSignature,
    #[error("the token expired")]
    Expired,
    #[error("the token is for another camera")]
    WrongDevice,
    #[error("the token does not grant {0}")]
    NotAllowed(Right),
}

/// Verifies and mints tokens with the secret in force. Clones share it: when `reload` sends a
/// new secret down the channel [`Authority::following`] was given, every holder (the gate, the
/// HTTP doors, the session manager) checks with it from its next token on.
#[derive(Clone)]
pub struct Authority {
    secret: watch::Receiver<String>,
    /// HS256 only, signature checked; `exp` and `aud` are checked by [`Authority::verify`]
    /// itself, against the clock it is given and in the order it documents.
    validation: Validation,
    device_id: String,
}

impl Authority {
    /// An authority for `device_id` with a secret that never changes. The secret's length is
    /// checked where it is configured ([`crate::config::MIN_SECRET_BYTES`]), not here.
    pub fn new(secret: &str, device_id: &str) -> Self {
        Self::following(watch::channel(secret.to_string()).1, device_id)
    }

    /// An authority for `device_id` that signs and verifies with the latest secret `secret`
    /// holds (its sender may be dropped: the last secret stays).
    pub fn following(secret: watch::Receiver<String>, device_id: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // The crate would read the system clock; rtcam passes time in.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        // Presence is the claims' own business: `Claims` needs `aud` and `exp` to parse.
        validation.required_spec_claims = HashSet::new();
        Self {
            secret,
            validation,
            device_id: device_id.to_string(),
        }
    }

    /// The token for `claims`: a JWT signed with HS256.
    pub fn mint(&self, claims: &Claims) -> String {
        // Keys are made per use from the secret in force: an HMAC key is its bytes.
        let key = EncodingKey::from_secret(self.secret.borrow().as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
            .expect("HS256 with a byte secret and serialisable claims cannot fail")
    }

    /// Checks signature (and algorithm), expiry, device and right, in that order, so a forged
    /// token learns nothing about the rest. A token is good until the second `exp` names.
    pub fn verify(
        &self,
        token: Option<&str>,
        right: Right,
        now: SystemTime,
    ) -> Result<Claims, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let key = DecodingKey::from_secret(self.secret.borrow().as_bytes());
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| token_error(e.kind()))?
            .claims;
        if claims.exp <= unix_secs(now) {
            return Err(TokenError::Expired);
        }
        if claims.aud != ANY_DEVICE && claims.aud != self.device_id {
            return Err(TokenError::WrongDevice);
        }
        if !claims.grants(right) {
            return Err(TokenError::NotAllowed(right));
        }
        Ok(claims)
    }

    /// Claims for this device, valid for `ttl` from `now`, granting `rights`, naming no holder.
    pub fn claims(&self, ttl: Duration, rights: Vec<Right>, now: SystemTime) -> Claims {
        Claims {
            aud: self.device_id.clone(),
            exp: unix_secs(now + ttl),
            iat: unix_secs(now),
            scope: scope_of(&rights),
            sub: None,
        }
    }
}

/// The `scope` claim for `rights`: each once, in [`Right::ALL`]'s order.
pub fn scope_of(rights: &[Right]) -> String {
    Right::ALL
        .into_iter()
        .filter(|r| rights.contains(r))
        .map(Right::name)
        .collect::<Vec<_>>()
        .join(" ")
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// What a failure of the JWT crate means to a viewer. Only signature and algorithm failures
/// are about the secret; everything else (bad base64, JSON, a missing claim, an algorithm
/// name the crate does not know, `none` included) is a malformed token.
fn token_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidAudience => TokenError::WrongDevice,
        _ => TokenError::Malformed,
    }
}

/// The longest `rtcam token --ttl`: ten years, far enough for "never" and far from overflow.
const MAX_TTL_SECS: u64 = 10 * 365 * 86400;

/// Parses a duration like `90s`, `15m`, `1h`, `7d` (for `rtcam token --ttl`).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 1h or 7d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    match n.checked_mul(unit_secs) {
        Some(0) => Err("a token must live at least a second".into()),
        Some(secs) if secs <= MAX_TTL_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "{s:?} is longer than rtcam mints tokens for (10 years)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// 2026-12-01T00:00:00Z: tests never read the system clock.
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_796_083_200)
    }

    /// A JWT built by hand (ring's HMAC over base64url header.payload), not by rtcam or the
    /// crate it uses: what another tool would send.
    fn hand_made(header: serde_json::Value, claims: serde_json::Value, secret: &str) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let algorithm = match header["alg"].as_str() {
            Some("HS512") => ring::hmac::HMAC_SHA512,
            _ => ring::hmac::HMAC_SHA256,
        };
        let key = ring::hmac::Key::new(algorithm, secret.as_bytes());
        let sig = ring::hmac::sign(&key, message.as_bytes());
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn secs(t: SystemTime) -> u64 {
        unix_secs(t)
    }

    #[test]
    fn minted_tokens_round_trip_with_their_claims() {
        let a = Authority::new(SECRET, "cam1");
        let mut claims = a.claims(
            Duration::from_secs(60),
            vec![Right::Talk, Right::View],
            t0(),
        );
        claims.sub = Some("kitchen tablet".into());
        let t = a.mint(&claims);
        assert_eq!(t.split('.').count(), 3, "header.payload.signature");
        let got = a.verify(Some(&t), Right::View, t0()).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.scope, "view talk");
        assert_eq!(got.rights(), vec![Right::View, Right::Talk]);
        assert!(got.grants(Right::Talk) && !got.grants(Right::Control));
        assert_eq!(got.sub(), Some("kitchen tablet"));
        assert_eq!(got.iat, secs(t0()));
        assert_eq!(got.expires_at(), t0() + Duration::from_secs(60));
        // The header says what any JWT library expects.
        let header = URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header, json!({"typ": "JWT", "alg": "HS256"}));
    }

    #[test]
    fn clones_follow_a_new_secret_and_refuse_the_old_one() {
        let other = "another secret, also thirty-two bytes long";
        let (secret, follows) = watch::channel(SECRET.to_string());
        let held = Authority::following(follows, "cam1");
        // Another part's copy, made before the change.
        let gate = held.clone();
        let old = held.mint(&held.claims(Duration::from_secs(60), vec![Right::View], t0()));
        assert!(gate.verify(Some(&old), Right::View, t0()).is_ok());
        secret.send_replace(other.into());
        assert_eq!(
            gate.verify(Some(&old), Right::View, t0()),
            Err(TokenError::BadSignature)
        );
        let fresh = Authority::new(other, "cam1");
        let new = fresh.mint(&fresh.claims(Duration::from_secs(60), vec![Right::View], t0()));
        assert!(gate.verify(Some(&new), Right::View, t0()).is_ok());
        assert_eq!(
            held.mint(&fresh.claims(Duration::from_secs(60), vec![Right::View], t0())),
            new
        );
        // Without its sender the last secret stays in force.
        drop(secret);
        assert!(held.verify(Some(&new), Right::View, t0()).is_ok());
    }

    #[test]
    fn every_failure_has_its_own_error() {
        let a = Authority::new(SECRET, "cam1");
        let t = a.mint(&a.claims(Duration::from_secs(60), vec![Right::View], t0()));
        assert_eq!(a.verify(None, Right::View, t0()), Err(TokenError::Missing));
        assert_eq!(
            a.verify(Some(""), Right::View, t0()),
            Err(TokenError::Missing)
        );
        for junk in [
            "junk",
            "a.b",
            "a.b.c",
            "..",
            "e30.e30.",
            "\u{0}.\u{1}.\u{2}",
        ] {
            assert_eq!(
                a.verify(Some(junk), Right::View, t0()),
                Err(TokenError::Malformed),
                "{junk:?}"
            );
        }
        assert_eq!(
            a.verify(Some(&t), Right::Metrics, t0()),
            Err(TokenError::NotAllowed(Right::Metrics))
        );
        assert_eq!(
            a.verify(Some(&t), Right::Talk, t0()),
            Err(TokenError::NotAllowed(Right::Talk))
        );
        let other = Authority::new("another secret, just as long as ours", "cam1");
        assert_eq!(
            other.verify(Some(&t), Right::View, t0()),
            Err(TokenError::BadSignature)
        );
        let cam2 = Authority::new(SECRET, "cam2");
        assert_eq!(
            cam2.verify(Some(&t), Right::View, t0()),
            Err(TokenError::WrongDevice)
        );
        // Claims changed after signing break the signature.
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["scope"] = json!("view control metrics");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            a.verify(Some(&forged), Right::Metrics, t0()),
            Err(TokenError::BadSignature)
        );
        // Signed, but without the claims rtcam needs.
        let no_aud = hand_made(
            json!({"alg": "HS256", "typ": "JWT"}),
            json!({"exp": secs(t0()) + 60, "scope": "view"}),
            SECRET,
        );
        assert_eq!(
            a.verify(Some(&no_aud), Right::View, t0()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn expiry_follows_the_clock_it_is_given() {
        let a = Authority::new(SECRET, "cam1");
        let t = a.mint(&a.claims(Duration::from_secs(60), vec![Right::View], t0()));
        assert!(a.verify(Some(&t), Right::View, t0()).is_ok());
        assert!(a
            .verify(Some(&t), Right::View, t0() + Duration::from_secs(59))
            .is_ok());
        assert_eq!(
            a.verify(Some(&t), Right::View, t0() + Duration::from_secs(60)),
            Err(TokenError::Expired)
        );
        // Far in the past or the future of the real clock makes no difference.
        let then = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let old = a.mint(&a.claims(Duration::from_secs(60), vec![Right::View], then));
        assert!(a.verify(Some(&old), Right::View, then).is_ok());
        assert_eq!(
            a.verify(Some(&old), Right::View, t0()),
            Err(TokenError::Expired)
        );
        // Expiry is checked before the device and the right: a stale token learns no more.
        assert_eq!(
            Authority::new(SECRET, "cam2").verify(Some(&old), Right::Metrics, t0()),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        let a = Authority::new(SECRET, "cam1");
        let claims = json!({"aud": "cam1", "exp": secs(t0()) + 60, "scope": "view"});
        let hs512 = hand_made(
            json!({"alg": "HS512", "typ": "JWT"}),
            claims.clone(),
            SECRET,
        );
        assert_eq!(
            a.verify(Some(&hs512), Right::View, t0()),
            Err(TokenError::BadSignature)
        );
        // `alg: none` with an empty signature: the classic forgery.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(
            a.verify(Some(&none), Right::View, t0()),
            Err(TokenError::Malformed)
        );
        // An RS256 header over an HS256 signature (key confusion) is refused too.
        let rs256 = hand_made(json!({"alg": "RS256", "typ": "JWT"}), claims, SECRET);
        assert_eq!(
            a.verify(Some(&rs256), Right::View, t0()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tokens_from_other_tools_are_accepted() {
        let a = Authority::new(SECRET, "cam1");
        // What PyJWT's `jwt.encode({...}, secret, algorithm="HS256")` makes: no `typ` needed,
        // no `iat`, a scope with a right of some other service.
        let t = hand_made(
            json!({"alg": "HS256"}),
            json!({"aud": "cam1", "exp": secs(t0()) + 600, "scope": "view talk door:open",
                   "sub": "front door panel"}),
            SECRET,
        );
        let claims = a.verify(Some(&t), Right::Talk, t0()).unwrap();
        assert_eq!(claims.rights(), vec![Right::View, Right::Talk]);
        assert_eq!(claims.sub(), Some("front door panel"));
        assert_eq!(claims.iat, 0);
    }

    #[test]
    fn a_star_audience_fits_every_device_sharing_the_secret() {
        let t = hand_made(
            json!({"alg": "HS256", "typ": "JWT"}),
            json!({"aud": "*", "exp": secs(t0()) + 60, "scope": "view"}),
            SECRET,
        );
        for device in ["cam1", "cam2"] {
            assert!(Authority::new(SECRET, device)
                .verify(Some(&t), Right::View, t0())
                .is_ok());
        }
        assert_eq!(
            Authority::new("a different secret of 32+ bytes!!", "cam1").verify(
                Some(&t),
                Right::View,
                t0()
            ),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn rights_parse_and_print_by_name() {
        for r in Right::ALL {
            assert_eq!(r.to_string().parse::<Right>(), Ok(r));
        }
        assert!("admin".parse::<Right>().is_err());
        assert_eq!(
            scope_of(&[Right::Metrics, Right::View, Right::View]),
            "view metrics"
        );
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("99999999999999999d").is_err());
    }
}
