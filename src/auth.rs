//! Signed viewer tokens: with `[auth] secret` set, viewers need a token to watch, and HTTP
//! requests (page, snapshot, metrics, `/mqtt`) need one too.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(secret, first part))`; the
//! claims name the device, an expiry and the rights granted. Pure apart from the clock, which
//! is passed in; `rtcam token` mints them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Watch: offers, the page, snapshots, `/mqtt`.
    View,
    /// Change the camera over the data channel.
    Control,
    /// Read `/metrics`.
    Metrics,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Device id the token is for; `*` for every device sharing the secret.
    pub dev: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    pub rights: Vec<Right>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token was given; this camera needs one (ask its owner for a viewing link)")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not match this camera's secret")]
    BadSignature,
    #[error("the token expired")]
    Expired,
    #[error("the token is for another camera")]
    WrongDevice,
    #[error("the token does not grant {0:?}")]
    NotAllowed(Right),
}

/// Verifies and mints tokens with one secret.
#[derive(Clone)]
pub struct Authority {
    key: ring::hmac::Key,
    device_id: String,
}

impl Authority {
    pub fn new(secret: &str, device_id: &str) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
            device_id: device_id.to_string(),
        }
    }

    pub fn mint(&self, claims: &Claims) -> String {
        let body =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims always serialise"));
        let sig = ring::hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// Checks signature, expiry, device and right, in that order (so a forged token learns
    /// nothing about the rest).
    pub fn verify(
        &self,
        token: Option<&str>,
        right: Right,
        now: SystemTime,
    ) -> Result<Claims, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        ring::hmac::verify(&self.key, body.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)?;
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if claims.exp <= now_secs {
            return Err(TokenError::Expired);
        }
        if claims.dev != "*" && claims.dev != self.device_id {
            return Err(TokenError::WrongDevice);
        }
        if !claims.rights.contains(&right) {
            return Err(TokenError::NotAllowed(right));
        }
        Ok(claims)
    }

    /// Claims for a token valid for `ttl` from `now`.
    pub fn claims(&self, ttl: Duration, rights: Vec<Right>, now: SystemTime) -> Claims {
        Claims {
            dev: self.device_id.clone(),
            exp: (now + ttl)
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            rights,
        }
    }
}

/// Parses a duration like `90s`, `15m`, `1h`, `7d` (for `rtcam token --ttl`).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("a token must live at least a second".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let a = Authority::new("s3cret", "cam1");
        let now = SystemTime::now();
        let t = a.mint(&a.claims(Duration::from_secs(60), vec![Right::View], now));
        assert!(a.verify(Some(&t), Right::View, now).is_ok());
        assert_eq!(
            a.verify(Some(&t), Right::Metrics, now),
            Err(TokenError::NotAllowed(Right::Metrics))
        );
        assert_eq!(
            a.verify(Some(&t), Right::View, now + Duration::from_secs(61)),
            Err(TokenError::Expired)
        );
        assert_eq!(a.verify(None, Right::View, now), Err(TokenError::Missing));
        assert_eq!(
            a.verify(Some("junk"), Right::View, now),
            Err(TokenError::Malformed)
        );
        let other = Authority::new("other", "cam1");
        assert_eq!(
            other.verify(Some(&t), Right::View, now),
            Err(TokenError::BadSignature)
        );
        let cam2 = Authority::new("s3cret", "cam2");
        assert_eq!(
            cam2.verify(Some(&t), Right::View, now),
            Err(TokenError::WrongDevice)
        );
        // Tampering with the claims breaks the signature.
        let (body, sig) = t.split_once('.').unwrap();
        let mut claims: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        claims.rights.push(Right::Metrics);
        let forged = format!(
            "{}.{sig}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        assert_eq!(
            a.verify(Some(&forged), Right::Metrics, now),
            Err(TokenError::BadSignature)
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
    }
}
