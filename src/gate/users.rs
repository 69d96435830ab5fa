//! Broker users of the embedded broker: a password file in mosquitto's format, so the same
//! file (and `mosquitto_passwd` to make it) works for rtcam and for a mosquitto server.
//!
//! A line is `name:$7$<iterations>$<salt base64>$<hash base64>` (PBKDF2-HMAC-SHA512, what
//! `mosquitto_passwd` writes since mosquitto 2.0) or `name:$6$<salt>$<hash>` (salted SHA-512,
//! mosquitto 1.x). Plain-text passwords are refused: the file is a secret's hash, never the
//! secret. Pure apart from reading and writing the file.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

/// Iterations for hashes rtcam writes: about 10 ms on a Raspberry Pi 3, paid once per connect.
const ITERATIONS: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read the MQTT users file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem}")]
    Line {
        path: String,
        line: usize,
        problem: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// The broker users, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    users: HashMap<String, Hash>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, problem)| UsersError::Line {
            path: path.display().to_string(),
            line,
            problem,
        })
    }

    /// Parses a file's text; an error is the 1-based line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line.split_once(':').ok_or((
                i + 1,
                "expected name:hash (make the file with `rtcam passwd` or mosquitto_passwd)"
                    .to_string(),
            ))?;
            if name.is_empty() {
                return Err((i + 1, "the user name is empty".into()));
            }
            let hash = parse_hash(hash).map_err(|p| (i + 1, format!("user {name:?}: {p}")))?;
            users.insert(name.to_string(), hash);
        }
        Ok(Users { users })
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether `password` is `name`'s. Comparisons take the same time whatever matches.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        match self.users.get(name) {
            Some(Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            }) => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password.as_bytes(),
                hash,
            )
            .is_ok(),
            Some(Hash::Sha512 { salt, hash }) => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
                ctx.update(password.as_bytes());
                ctx.update(salt);
                let digest = ctx.finish();
                digest.as_ref().len() == hash.len()
                    && digest
                        .as_ref()
                        .iter()
                        .zip(hash)
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            }
            None => false,
        }
    }
}

fn parse_hash(s: &str) -> Result<Hash, String> {
    let b64 = |part: &str, what: &str| {
        STANDARD
            .decode(part)
            .map_err(|_| format!("its {what} is not base64"))
    };
    let parts: Vec<&str> = s.split('$').collect();
    match parts.as_slice() {
        ["", "7", iterations, salt, hash] => Ok(Hash::Pbkdf2 {
            iterations: iterations
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or("its iteration count is not a positive number")?,
            salt: b64(salt, "salt")?,
            hash: b64(hash, "hash")?,
        }),
        ["", "6", salt, hash] => Ok(Hash::Sha512 {
            salt: b64(salt, "salt")?,
            hash: b64(hash, "hash")?,
        }),
        _ => Err("the password is not hashed ($7$ or $6$); hash it with `rtcam passwd` or mosquitto_passwd".into()),
    }
}

/// Adds `name` to the users file at `path` (made if missing, readable by its owner and group
/// only), or replaces its password; other lines stay as they are.
pub fn set_user(path: &Path, name: &str, password: &str) -> Result<(), UsersError> {
    let io = |source| UsersError::Read {
        path: path.display().to_string(),
        source,
    };
    if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
        return Err(UsersError::Line {
            path: path.display().to_string(),
            line: 0,
            problem: format!("{name:?} cannot be a user name (no ':' or spaces)"),
        });
    }
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| l.split_once(':').map(|(n, _)| n) != Some(name))
        .map(String::from)
        .collect();
    lines.push(hash_line(name, password));
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(path)
        .map_err(io)?;
    file.write_all((lines.join("\n") + "\n").as_bytes())
        .map_err(io)?;
    // Made by root for the service: its group is rtcam's, so the service (user rtcam) can read
    // it and nobody else can.
    if let Some(gid) = group_id("rtcam") {
        let _ = std::os::unix::fs::chown(path, None, Some(gid));
    }
    Ok(())
}

/// The id of a group in /etc/group.
fn group_id(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then(|| f.nth(1)?.parse().ok())?
        })
}

/// One line of a users file for `name` with `password`, PBKDF2-SHA512 with a random salt.
pub fn hash_line(name: &str, password: &str) -> String {
    let salt: [u8; 12] = rand::random();
    let mut hash = [0u8; 64];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        NonZeroU32::new(ITERATIONS).expect("the iteration constant is not zero"),
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    format!(
        "{name}:$7${ITERATIONS}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(hash)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_lines_verify() {
        let users = Users::parse(&format!(
            "# operators\n{}\n\n{}\n",
            hash_line("ha", "correct horse"),
            hash_line("op", "battery staple")
        ))
        .unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("ha", "correct horse"));
        assert!(!users.verify("ha", "battery staple"));
        assert!(users.verify("op", "battery staple"));
        assert!(!users.verify("nobody", "correct horse"));
    }

    #[test]
    fn mosquitto_sha512_lines_verify() {
        // `$6$`: base64(salt), base64(SHA-512(password ‖ salt)), as mosquitto 1.x wrote them.
        let salt = b"0123456789ab";
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
        ctx.update(b"pw");
        ctx.update(salt);
        let line = format!(
            "old:$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(ctx.finish())
        );
        let users = Users::parse(&line).unwrap();
        assert!(users.verify("old", "pw"));
        assert!(!users.verify("old", "pW"));
    }

    #[test]
    fn set_user_adds_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        set_user(&path, "ha", "one").unwrap();
        set_user(&path, "op", "two").unwrap();
        set_user(&path, "ha", "three").unwrap();
        let users = Users::load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("ha", "three") && !users.verify("ha", "one"));
        assert!(users.verify("op", "two"));
        assert!(set_user(&path, "a:b", "x").is_err());
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert_eq!(
            Users::parse("ok:$7$1$AA==$AA==\nplain:secret")
                .unwrap_err()
                .0,
            2
        );
        assert_eq!(Users::parse("no colon").unwrap_err().0, 1);
        assert_eq!(Users::parse(":$7$1$AA==$AA==").unwrap_err().0, 1);
        assert!(Users::parse("a:$7$0$AA==$AA==").is_err());
        assert!(Users::parse("a:$7$10$not base64!$AA==").is_err());
    }
}
