//! Secrets from systemd credentials instead of the config file.
//!
//! Four secrets can come this way: the MQTT password, the TURN credential, the TURN REST secret
//! and the secret that signs viewer tokens. With `LoadCredential=mqtt_password:/etc/rtcam/credentials/mqtt_password`
//! in the unit, systemd
//! hands rtcam the file in `$CREDENTIALS_DIRECTORY`, readable by rtcam alone and never on a
//! path the config (or a backup of /etc/rtcam) shows. A secret the config file sets wins; a
//! credential fills only what the config leaves empty. An empty credential file counts as none,
//! which is what the unit's `SetCredential=` default gives when no file was put in place.
//!
//! This module reads files only; it opens no socket and changes nothing but the config.

use crate::config::Config;
use std::path::{Path, PathBuf};

/// Credential with the password for `mqtt.username` on an external broker.
pub const MQTT_PASSWORD: &str = "mqtt_password";
/// Credential for every `turn:`/`turns:` ICE server whose `credential` is empty.
pub const TURN_CREDENTIAL: &str = "turn_credential";
/// Credential with the secret shared with a TURN server for REST credentials
/// (`webrtc.turn_secret`, coturn's `static-auth-secret`).
pub const TURN_SECRET: &str = "turn_secret";
/// Credential with the secret that signs viewer tokens (`auth.secret`).
pub const AUTH_SECRET: &str = "auth_secret";
/// The embedded broker's users file (`[mqtt] users_file`), used where it lies.
pub const MQTT_USERS: &str = "mqtt_users";

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read credential {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "credential {path} holds {len} bytes, too short to sign tokens with; use at least {min} \
         (e.g. `openssl rand -base64 32`)"
    )]
    ShortSecret {
        path: PathBuf,
        len: usize,
        min: usize,
    },
}

/// Reads one credential: `None` when the file is absent or empty. A trailing newline (what an
/// editor or `echo` leaves) is not part of the secret.
fn read(dir: &Path, name: &str) -> Result<Option<String>, CredentialError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.strip_suffix('\n').unwrap_or(&text);
            let secret = secret.strip_suffix('\r').unwrap_or(secret);
            Ok((!secret.is_empty()).then(|| secret.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CredentialError::Read { path, source }),
    }
}

/// [`apply`] with the directory systemd names in `$CREDENTIALS_DIRECTORY`, if any: what rtcam
/// does at start and on a configuration reload.
pub fn apply_from_env(config: &mut Config) -> Result<Vec<&'static str>, CredentialError> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    apply(config, dir.as_deref())
}

/// Fills the secrets the config leaves empty from the credentials in `dir` (systemd's
/// `$CREDENTIALS_DIRECTORY`; `None` outside systemd). Returns the credentials used, for the log.
pub fn apply(
    config: &mut Config,
    dir: Option<&Path>,
) -> Result<Vec<&'static str>, CredentialError> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let mut used = Vec::new();
    if config.mqtt.password.is_empty() {
        if let Some(password) = read(dir, MQTT_PASSWORD)? {
            config.mqtt.password = password;
            used.push(MQTT_PASSWORD);
        }
    }
    // The unit's default for an absent users file is an empty line: not a file of no users.
    if config.mqtt.users_file.is_empty()
        && read(dir, MQTT_USERS)?.is_some_and(|users| !users.trim().is_empty())
    {
        config.mqtt.users_file = dir.join(MQTT_USERS).display().to_string();
        used.push(MQTT_USERS);
    }
    if config.auth.secret.is_empty() {
        if let Some(secret) = read(dir, AUTH_SECRET)? {
            // The config file's secret is checked when it is parsed; this one only here.
            if secret.len() < crate::config::MIN_SECRET_BYTES {
                return Err(CredentialError::ShortSecret {
                    path: dir.join(AUTH_SECRET),
                    len: secret.len(),
                    min: crate::config::MIN_SECRET_BYTES,
                });
            }
            config.auth.secret = secret;
            used.push(AUTH_SECRET);
        }
    }
    if config.webrtc.turn_secret.is_empty() && !config.webrtc.turn_urls.is_empty() {
        if let Some(secret) = read(dir, TURN_SECRET)? {
            config.webrtc.turn_secret = secret;
            used.push(TURN_SECRET);
        }
    }
    let wants_turn = |s: &crate::config::IceServer| {
        s.credential.is_empty()
            && s.urls
                .iter()
                .any(|u| u.starts_with("turn:") || u.starts_with("turns:"))
    };
    if config.webrtc.ice_servers.iter().any(wants_turn) {
        if let Some(secret) = read(dir, TURN_CREDENTIAL)? {
            for server in config
                .webrtc
                .ice_servers
                .iter_mut()
                .filter(|s| wants_turn(s))
            {
                server.credential = secret.clone();
            }
            used.push(TURN_CREDENTIAL);
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IceServer;

    fn turn(credential: &str) -> IceServer {
        IceServer {
            urls: vec!["turn:turn.lan:3478?transport=udp".into()],
            username: "rtcam".into(),
            credential: credential.into(),
        }
    }

    #[test]
    fn credentials_fill_only_empty_secrets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MQTT_PASSWORD), "s3cret\n").unwrap();
        std::fs::write(dir.path().join(TURN_CREDENTIAL), "relay-pass").unwrap();
        std::fs::write(
            dir.path().join(AUTH_SECRET),
            "token-key-of-thirty-two-bytes-at-least\r\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(TURN_SECRET), "rest-secret\n").unwrap();
        let mut config = Config::default();
        config.webrtc.turn_urls = vec!["turn:turn.lan:3478".into()];
        config.webrtc.ice_servers = vec![
            turn(""),
            turn("from-config"),
            IceServer {
                urls: vec!["stun:stun.lan:3478".into()],
                ..IceServer::default()
            },
        ];
        let used = apply(&mut config, Some(dir.path())).unwrap();
        assert_eq!(
            used,
            vec![MQTT_PASSWORD, AUTH_SECRET, TURN_SECRET, TURN_CREDENTIAL]
        );
        assert_eq!(config.webrtc.turn_secret, "rest-secret");
        assert_eq!(config.mqtt.password, "s3cret");
        assert_eq!(config.auth.secret, "token-key-of-thirty-two-bytes-at-least");
        assert_eq!(config.webrtc.ice_servers[0].credential, "relay-pass");
        assert_eq!(config.webrtc.ice_servers[1].credential, "from-config");
        assert_eq!(config.webrtc.ice_servers[2].credential, "");

        let mut config = Config::default();
        config.mqtt.password = "in-file".into();
        config.auth.secret = "in-file".into();
        assert!(apply(&mut config, Some(dir.path())).unwrap().is_empty());
        assert_eq!(config.mqtt.password, "in-file");
        assert_eq!(config.auth.secret, "in-file");
    }

    #[test]
    fn a_short_token_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(AUTH_SECRET), "token-key\n").unwrap();
        let mut config = Config::default();
        let e = apply(&mut config, Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth_secret holds 9 bytes, too short"), "{e}");
        assert_eq!(config.auth.secret, "", "nothing half-applied");
    }

    #[test]
    fn absent_or_empty_credentials_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MQTT_PASSWORD), "").unwrap();
        // What rtcam.service's SetCredential= leaves when /etc/rtcam/credentials has no file.
        std::fs::write(dir.path().join(MQTT_USERS), "\n").unwrap();
        let mut config = Config::default();
        assert!(apply(&mut config, Some(dir.path())).unwrap().is_empty());
        assert!(apply(&mut config, None).unwrap().is_empty());
        assert_eq!(config.mqtt.password, "");
        assert_eq!(config.mqtt.users_file, "");
    }
}
