//! `reload`: what a re-read configuration file changes, and how each change takes effect.
//!
//! Two things are kept apart here. The *settings* are what the user asked for: a [`Config`],
//! the file's values as of the last start or reload, with `set` and live reloads applied. The
//! *state* is what runs: the pipeline's bitrate and picture, the secret tokens are checked
//! with. One table, [`KEYS`], says for every key of the configuration whether a changed value
//! is applied while rtcam runs (and by which [`Action`] on the running parts) or waits for the
//! next start. [`plan`] reads it to build both the reply (keys applied, keys needing a restart)
//! and the settings that take effect: the file's values for the keys applied, the values in
//! force for the others, so the next reload names them again. Pure; `exec` carries the actions
//! out.

use crate::config::Config;

/// How a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// While rtcam runs, by this action on the running parts.
    Live(Action),
    /// At the next start of rtcam: the part reads it only when it starts.
    Restart,
}

/// What the running parts do to follow a key applied live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The encoder takes the new bitrate (live where the encoder allows it).
    Bitrate,
    /// The pipeline is rebuilt at the new size and rate; viewers keep their tracks.
    Picture,
    /// The camera's flips or `videoflip` follow the new rotation and mirrors.
    Orientation,
    /// Tokens are verified with the new secret: the gate, the HTTP doors and the sessions read
    /// it at each check, so tokens signed with the old one are refused from then on.
    TokenSecret,
}

/// One row of the table: a key (or a whole section) and how a change to it takes effect.
pub struct Key {
    /// As the file names it: `section.key`, or `section` when any change in it waits for a
    /// restart.
    pub name: &'static str,
    pub takes: Takes,
    /// Whether the row applies to these two configurations (the key differs, and for
    /// `auth.secret` whether tokens are switched on or off).
    differs: fn(&Config, &Config) -> bool,
    /// Copies the key's value from the file's configuration into the settings in force.
    adopt: fn(&mut Config, &Config),
}

/// A row for `section.key`, compared by value; or for a whole `section`, compared as JSON (the
/// sections that only restart have no `PartialEq`).
macro_rules! key {
    ($section:ident . $key:ident, $takes:expr) => {
        Key {
            name: concat!(stringify!($section), ".", stringify!($key)),
            takes: $takes,
            differs: |a, b| a.$section.$key != b.$section.$key,
            adopt: |to, from| to.$section.$key.clone_from(&from.$section.$key),
        }
    };
    ($section:ident, $takes:expr) => {
        Key {
            name: stringify!($section),
            takes: $takes,
            differs: |a, b| differs_as_json(&a.$section, &b.$section),
            adopt: |to, from| to.$section.clone_from(&from.$section),
        }
    };
}

use Action::{Bitrate, Orientation, Picture, TokenSecret};
use Takes::{Live, Restart};

/// Every key of the configuration and how a change to it takes effect. A test fails when a
/// key of `rtcam.example.toml` (or of the defaults) is missing here. docs/control.md's reload
/// section says the same in prose.
pub static KEYS: &[Key] = &[
    key!(encoder.bitrate_kbps, Live(Bitrate)),
    key!(source.width, Live(Picture)),
    key!(source.height, Live(Picture)),
    key!(source.fps, Live(Picture)),
    key!(source.rotation, Live(Orientation)),
    key!(source.hflip, Live(Orientation)),
    key!(source.vflip, Live(Orientation)),
    Key {
        name: "auth.secret",
        takes: Live(TokenSecret),
        differs: |a, b| tokens_on(a) == tokens_on(b) && a.auth.secret != b.auth.secret,
        adopt: |to, from| to.auth.secret.clone_from(&from.auth.secret),
    },
    key!(source.kind, Restart),
    key!(source.device, Restart),
    key!(source.format, Restart),
    // Set each time the camera opens; a reload does not reopen it.
    key!(source.controls, Restart),
    // The pipeline's idle policy is fixed when media starts.
    key!(source.always_on, Restart),
    key!(source.idle_stop_secs, Restart),
    key!(encoder.element, Restart),
    key!(encoder.keyframe_interval, Restart),
    key!(encoder.keyframe_min_interval_ms, Restart),
    // The session table decides codecs with the value it was started with.
    key!(encoder.vp8_fallback, Restart),
    // The adaptation's bounds are read when the sessions start.
    key!(encoder.min_bitrate_kbps, Restart),
    key!(encoder.max_bitrate_kbps, Restart),
    key!(encoder.follow_ratio, Restart),
    key!(device.id, Restart),
    key!(mqtt, Restart),
    key!(http, Restart),
    key!(webrtc, Restart),
    key!(control, Restart),
    // The page's config and every session's negotiation depend on it.
    key!(audio, Restart),
    // The RTSP server binds and mounts its stream once, at start.
    key!(rtsp, Restart),
    // Whether tokens are asked for at all is decided by the gate, the HTTP doors and the
    // session manager when they start.
    Key {
        name: "auth.secret",
        takes: Restart,
        differs: |a, b| tokens_on(a) != tokens_on(b),
        adopt: |to, from| to.auth.secret.clone_from(&from.auth.secret),
    },
];

fn tokens_on(c: &Config) -> bool {
    !c.auth.secret.is_empty()
}

fn differs_as_json<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
}

/// What a reload does: the reply's two lists, the actions on the running parts, and the
/// settings that take effect.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Changed keys applied while rtcam runs.
    pub applied: Vec<&'static str>,
    /// Changed keys that take effect at the next start.
    pub restart_needed: Vec<&'static str>,
    /// What the running parts must do, each once, in the table's order.
    pub actions: Vec<Action>,
    /// The settings in force after the reload: the file's values for the keys applied, the
    /// values in force before for the keys that wait for a restart.
    pub settings: Config,
}

/// Compares the settings in force with the file's, key by key through [`KEYS`].
pub fn plan(in_force: &Config, from_file: &Config) -> Plan {
    let mut plan = Plan {
        applied: Vec::new(),
        restart_needed: Vec::new(),
        actions: Vec::new(),
        settings: in_force.clone(),
    };
    for key in KEYS.iter().filter(|k| (k.differs)(in_force, from_file)) {
        match key.takes {
            Live(action) => {
                (key.adopt)(&mut plan.settings, from_file);
                plan.applied.push(key.name);
                if !plan.actions.contains(&action) {
                    plan.actions.push(action);
                }
            }
            Restart => plan.restart_needed.push(key.name),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EXAMPLE;

    /// Every key path of a TOML table, down to values and empty tables.
    fn key_paths(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (name, value) in table {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value.as_table() {
                Some(t) if !t.is_empty() => key_paths(&path, t, out),
                _ => out.push(path),
            }
        }
    }

    fn covered(path: &str) -> bool {
        KEYS.iter().any(|k| {
            path == k.name
                || path
                    .strip_prefix(k.name)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }

    fn paths_of(table: &toml::Table) -> Vec<String> {
        let mut paths = Vec::new();
        key_paths("", table, &mut paths);
        paths
    }

    #[test]
    fn every_key_of_the_example_and_the_defaults_is_in_the_table() {
        let example: toml::Table = toml::from_str(EXAMPLE).expect("the example parses");
        let defaults = toml::Table::try_from(Config::default()).expect("the defaults serialise");
        let (example, defaults) = (paths_of(&example), paths_of(&defaults));
        assert!(example.len() > 40, "{example:?}");
        for path in example.iter().chain(&defaults) {
            assert!(
                covered(path),
                "{path} is missing from control::reload::KEYS"
            );
        }
        // And the table names no key the configuration lost.
        for key in KEYS {
            assert!(
                defaults
                    .iter()
                    .any(|p| p == key.name || p.starts_with(&format!("{}.", key.name))),
                "{} is in the table but not in the configuration",
                key.name
            );
        }
    }

    #[test]
    fn live_and_restart_keys_are_split() {
        let old = Config::default();
        let mut new = Config::default();
        let same = plan(&old, &new);
        assert!(same.applied.is_empty() && same.restart_needed.is_empty());
        assert!(same.actions.is_empty());
        new.encoder.bitrate_kbps = 900;
        new.source.width = 640;
        new.mqtt.url = "mqtt://elsewhere:1883".into();
        new.webrtc.max_sessions = 3;
        new.encoder.vp8_fallback = false;
        let p = plan(&old, &new);
        assert_eq!(p.applied, vec!["encoder.bitrate_kbps", "source.width"]);
        assert_eq!(
            p.restart_needed,
            vec!["encoder.vp8_fallback", "mqtt", "webrtc"]
        );
        assert_eq!(p.actions, vec![Bitrate, Picture]);
        let mut new = Config::default();
        new.encoder.follow_ratio = 0.3;
        assert_eq!(
            plan(&old, &new).restart_needed,
            vec!["encoder.follow_ratio"]
        );
    }

    #[test]
    fn keys_that_need_a_restart_keep_their_running_value_and_are_named_again() {
        let old = Config::default();
        let mut new = Config::default();
        new.source.always_on = true;
        new.source.idle_stop_secs = 60;
        new.source
            .controls
            .insert("brightness".into(), crate::config::ControlSetting::Int(140));
        new.audio.enabled = true;
        new.encoder.min_bitrate_kbps = 100;
        new.source.fps = 15;
        let first = plan(&old, &new);
        let restart = vec![
            "source.controls",
            "source.always_on",
            "source.idle_stop_secs",
            "encoder.min_bitrate_kbps",
            "audio",
        ];
        assert_eq!(first.restart_needed, restart);
        assert_eq!(first.applied, vec!["source.fps"]);
        let s = &first.settings;
        assert_eq!(s.source.fps, 15);
        assert!(!s.source.always_on && s.source.controls.is_empty() && !s.audio.enabled);
        assert_eq!(s.encoder.min_bitrate_kbps, old.encoder.min_bitrate_kbps);
        // The same file again: the live key is in force, the others are still waiting.
        let second = plan(&first.settings, &new);
        assert!(second.applied.is_empty());
        assert_eq!(second.restart_needed, restart);
    }

    #[test]
    fn a_new_token_secret_applies_live_but_switching_tokens_on_or_off_needs_a_restart() {
        let with = |secret: &str| {
            let mut c = Config::default();
            c.auth.secret = secret.into();
            c
        };
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        let p = plan(&with(&a), &with(&b));
        assert_eq!(p.applied, vec!["auth.secret"]);
        assert!(p.restart_needed.is_empty());
        assert_eq!(p.actions, vec![TokenSecret]);
        assert_eq!(p.settings.auth.secret, b);
        for (old, new) in [("", a.as_str()), (a.as_str(), "")] {
            let p = plan(&with(old), &with(new));
            assert!(
                p.applied.is_empty() && p.actions.is_empty(),
                "{old:?} → {new:?}"
            );
            assert_eq!(p.restart_needed, vec!["auth.secret"]);
            assert_eq!(p.settings.auth.secret, old);
        }
    }
}
