//! The control plane: commands with replies (docs/control.md).
//!
//! This file is the wire format, pure: a request's JSON becomes a [`Command`] with validated
//! arguments or a [`CommandError`], and a result becomes the reply body. [`exec`] carries
//! commands out; the same commands arrive over MQTT (`R/command`) and over a viewer's
//! `control` data channel, and are answered in the same shape.

pub mod channel;
pub mod exec;
pub mod ha;
pub mod reload;
pub mod telemetry;

use crate::session::table::Label;
pub use crate::signalling::message::{ControlRequest, Publication};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Largest command payload accepted. Commands are small; anything bigger is a mistake.
pub const MAX_COMMAND: usize = 16 * 1024;

/// Error codes in replies. Tools match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is not JSON.
    BadJson,
    /// JSON, but not a request: not an object, no `command` string, `id` not a string.
    BadRequest,
    UnknownCommand,
    /// Arguments missing, of the wrong type, or unknown.
    BadArgs,
    /// A value outside what the device accepts.
    OutOfRange,
    /// The command exists but cannot be done here (no camera controls on the test pattern…).
    Unavailable,
    /// This requester may not change state (a viewer's data channel by default).
    Forbidden,
    /// The command was valid but carrying it out failed.
    Failed,
    /// More commands per second than `[control] commands_per_second` allows.
    RateLimited,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct CommandError {
    pub code: ErrorCode,
    /// The sentence the requester reads.
    pub message: String,
    /// What failed inside rtcam (a camera control, the reloaded file), kept for whoever logs
    /// the error; the message says it in words.
    #[source]
    pub cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// Replies are equal when they say the same: the cause is not part of the reply.
impl PartialEq for CommandError {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code && self.message == other.message
    }
}

impl Eq for CommandError {}

impl CommandError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            cause: None,
        }
    }

    /// A failure of one of rtcam's parts, told in its own words and kept as the cause.
    pub fn caused_by(
        code: ErrorCode,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            code,
            message: cause.to_string(),
            cause: Some(Arc::new(cause)),
        }
    }
}

fn bad_args(message: impl Into<String>) -> CommandError {
    CommandError::new(ErrorCode::BadArgs, message)
}

/// What `set` may change. Every field optional; at least one present.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetArgs {
    pub bitrate_kbps: Option<u32>,
    pub fps: Option<u32>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Camera controls by name, validated against the device when applied.
    pub controls: Vec<(String, i64)>,
    /// `[source]` orientation: degrees clockwise (0, 90, 180, 270) and mirrors.
    pub rotation: Option<crate::config::Rotation>,
    pub hflip: Option<bool>,
    pub vflip: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Status,
    Snapshot,
    Set(SetArgs),
    Controls,
    Stream {
        on: bool,
    },
    Keyframe,
    Sessions,
    /// Ends a session, named by its label (a sid is never accepted: whoever knows one is that
    /// viewer, and no one else is told it).
    Kick {
        label: Label,
        reason: String,
    },
    Restart,
    Reload,
}

impl Command {
    /// Whether the command changes the device's state; a read-only requester may not send it.
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            Command::Set(_)
                | Command::Stream { .. }
                | Command::Kick { .. }
                | Command::Restart
                | Command::Reload
        )
    }
}

/// The parts of a request every reply needs, even when the rest of it is bad.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: Value,
    pub reply_to: Option<String>,
}

/// Names the commands accept, for error messages.
pub const COMMANDS: &[&str] = &[
    "status", "snapshot", "set", "controls", "stream", "keyframe", "sessions", "kick", "restart",
    "reload",
];

/// Parses a request. The envelope comes back even with an error, so the reply can carry the
/// request's id and go where it asked.
pub fn parse_request(payload: &[u8]) -> (Envelope, Result<Command, CommandError>) {
    let mut env = Envelope {
        id: Value::Null,
        reply_to: None,
    };
    let command = request_object(payload).and_then(|obj| {
        read_envelope(&obj, &mut env)?;
        command_of(&obj)
    });
    (env, command)
}

/// The payload as a JSON object, or why it cannot be a request.
fn request_object(payload: &[u8]) -> Result<Map<String, Value>, CommandError> {
    if payload.len() > MAX_COMMAND {
        return Err(CommandError::new(
            ErrorCode::BadRequest,
            format!(
                "The request is {} bytes; at most {MAX_COMMAND} are accepted.",
                payload.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(payload).map_err(|e| CommandError {
        code: ErrorCode::BadJson,
        message: format!("The request is not valid JSON ({e})."),
        cause: Some(Arc::new(e)),
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(CommandError::new(
            ErrorCode::BadRequest,
            "The request must be a JSON object.",
        )),
    }
}

/// Fills `env` with the request's id, then its reply topic, so that a refused reply topic is
/// still answered under the request's id.
fn read_envelope(obj: &Map<String, Value>, env: &mut Envelope) -> Result<(), CommandError> {
    match obj.get("id") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.len() <= 128 => env.id = Value::String(s.clone()),
        Some(_) => {
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                "\"id\" must be a string of at most 128 characters.",
            ));
        }
    }
    if let Some(r) = obj.get("reply_to") {
        match r.as_str() {
            Some(t) if valid_reply_topic(t) => env.reply_to = Some(t.to_string()),
            _ => {
                return Err(CommandError::new(
                    ErrorCode::BadRequest,
                    "\"reply_to\" must be an MQTT topic without wildcards.",
                ))
            }
        }
    }
    Ok(())
}

/// The command the request names, with its arguments checked.
fn command_of(obj: &Map<String, Value>) -> Result<Command, CommandError> {
    let Some(name) = obj.get("command").and_then(Value::as_str) else {
        return Err(CommandError::new(
            ErrorCode::BadRequest,
            format!(
                "The request has no \"command\" string; commands are: {}.",
                COMMANDS.join(", ")
            ),
        ));
    };
    let empty = Map::new();
    let args = match obj.get("args") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad_args("\"args\" must be a JSON object.")),
    };
    parse_command(name, args)
}

/// Where the reply to an MQTT request goes: the MQTT 5 response topic, else the payload's
/// `reply_to`, else `default` (`R/command/reply`). A named topic must be `default` or below
/// it: replies are read by whoever may subscribe there, and a topic anywhere else would let a
/// requester make rtcam publish onto other viewers' sessions or Home Assistant's topics. A
/// topic outside is refused with a `bad_request` the caller sends to `default`, and the
/// command is not run.
pub fn reply_route<'a>(asked: Option<&'a str>, default: &'a str) -> Result<&'a str, CommandError> {
    let Some(topic) = asked else {
        return Ok(default);
    };
    let inside = topic
        .strip_prefix(default)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if inside {
        Ok(topic)
    } else {
        Err(CommandError::new(
            ErrorCode::BadRequest,
            format!(
                "Replies go to {default:?} or a topic below it (\"{default}/<anything>\"), not to {:?}; the command was not run.",
                topic.chars().take(80).collect::<String>()
            ),
        ))
    }
}

fn valid_reply_topic(t: &str) -> bool {
    !t.is_empty() && t.len() <= 256 && !t.contains(['+', '#', '\0'])
}

fn parse_command(name: &str, args: &Map<String, Value>) -> Result<Command, CommandError> {
    let no_args = |cmd: Command| {
        if let Some(k) = args.keys().next() {
            Err(bad_args(format!("{name} takes no arguments (got {k:?}).")))
        } else {
            Ok(cmd)
        }
    };
    match name {
        "status" => no_args(Command::Status),
        "snapshot" => no_args(Command::Snapshot),
        "controls" => no_args(Command::Controls),
        "keyframe" => no_args(Command::Keyframe),
        "sessions" => no_args(Command::Sessions),
        "restart" => no_args(Command::Restart),
        "reload" => no_args(Command::Reload),
        "stream" => {
            only_keys(name, args, &["on"])?;
            let on = match args.get("on") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) if s == "on" => true,
                Some(Value::String(s)) if s == "off" => false,
                _ => {
                    return Err(bad_args(
                        "stream needs \"on\": true or false (or \"on\"/\"off\").",
                    ))
                }
            };
            Ok(Command::Stream { on })
        }
        "kick" => {
            only_keys(name, args, &["label", "reason"])?;
            let label = args
                .get("label")
                .and_then(Value::as_str)
                .and_then(Label::parse)
                .ok_or_else(|| {
                    bad_args(
                        "kick needs \"label\": the label of the session to end, such as \"v3\" (see the sessions command).",
                    )
                })?;
            let reason = match args.get("reason") {
                None => "ended by the camera's owner".to_string(),
                Some(Value::String(r)) if r.len() <= 200 => r.clone(),
                Some(_) => {
                    return Err(bad_args(
                        "\"reason\" must be a string of at most 200 characters.",
                    ))
                }
            };
            Ok(Command::Kick { label, reason })
        }
        "set" => parse_set(args).map(Command::Set),
        other => Err(CommandError::new(
            ErrorCode::UnknownCommand,
            format!(
                "Unknown command {:?}; commands are: {}.",
                other.chars().take(40).collect::<String>(),
                COMMANDS.join(", ")
            ),
        )),
    }
}

fn only_keys(name: &str, args: &Map<String, Value>, allowed: &[&str]) -> Result<(), CommandError> {
    match args.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad_args(format!(
            "{name} does not take {k:?}; it takes: {}.",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The keys `set` takes.
const SET_KEYS: &[&str] = &[
    "bitrate_kbps",
    "fps",
    "width",
    "height",
    "controls",
    "rotation",
    "hflip",
    "vflip",
];

fn parse_set(args: &Map<String, Value>) -> Result<SetArgs, CommandError> {
    only_keys("set", args, SET_KEYS)?;
    let num = |key, min, max| set_number(args, key, min, max);
    // Fields are checked in the order written here; controls last, after the picture's size.
    let mut set = SetArgs {
        rotation: set_rotation(args)?,
        bitrate_kbps: num("bitrate_kbps", 50, 50_000)?,
        fps: num("fps", 1, 120)?,
        width: num("width", 16, 7680)?,
        height: num("height", 16, 4320)?,
        hflip: set_flag(args, "hflip")?,
        vflip: set_flag(args, "vflip")?,
        controls: Vec::new(),
    };
    if set.width.is_some() != set.height.is_some() {
        return Err(bad_args("Give \"width\" and \"height\" together."));
    }
    if set.width.is_some_and(|w| w % 2 != 0) || set.height.is_some_and(|h| h % 2 != 0) {
        return Err(CommandError::new(
            ErrorCode::OutOfRange,
            "H.264 needs an even width and height.",
        ));
    }
    set.controls = set_controls(args)?;
    if set == SetArgs::default() {
        return Err(bad_args(
            "set needs at least one of: bitrate_kbps, fps, width and height, controls, \
             rotation, hflip, vflip.",
        ));
    }
    Ok(set)
}

/// `set`'s `key` as a whole number within `min..=max`, if given.
fn set_number(
    args: &Map<String, Value>,
    key: &str,
    min: u32,
    max: u32,
) -> Result<Option<u32>, CommandError> {
    let Some(v) = args.get(key) else {
        return Ok(None);
    };
    let n = v
        .as_u64()
        .ok_or_else(|| bad_args(format!("\"{key}\" must be a whole number.")))?;
    match u32::try_from(n) {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(CommandError::new(
            ErrorCode::OutOfRange,
            format!("\"{key}\" is {n}; it must be between {min} and {max}."),
        )),
    }
}

/// `set`'s `key` as true or false, if given.
fn set_flag(args: &Map<String, Value>, key: &str) -> Result<Option<bool>, CommandError> {
    args.get(key)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| bad_args(format!("\"{key}\" must be true or false.")))
        })
        .transpose()
}

/// `set`'s `rotation`: one of the four right angles, if given.
fn set_rotation(
    args: &Map<String, Value>,
) -> Result<Option<crate::config::Rotation>, CommandError> {
    args.get("rotation")
        .map(|v| {
            v.as_u64()
                .and_then(crate::config::Rotation::from_degrees)
                .ok_or_else(|| {
                    CommandError::new(
                        ErrorCode::OutOfRange,
                        "\"rotation\" must be 0, 90, 180 or 270 (degrees clockwise).",
                    )
                })
        })
        .transpose()
}

/// `set`'s `controls`: names with whole numbers (true and false count as 1 and 0).
fn set_controls(args: &Map<String, Value>) -> Result<Vec<(String, i64)>, CommandError> {
    let Some(c) = args.get("controls") else {
        return Ok(Vec::new());
    };
    let map = c
        .as_object()
        .ok_or_else(|| bad_args("\"controls\" must be an object of control name → value."))?;
    map.iter()
        .map(|(name, value)| {
            let v = match value {
                Value::Bool(b) => i64::from(*b),
                Value::Number(n) => n
                    .as_i64()
                    .ok_or_else(|| bad_args(format!("Control {name:?} needs a whole number.")))?,
                _ => {
                    return Err(bad_args(format!(
                        "Control {name:?} needs a number or true/false."
                    )))
                }
            };
            Ok((name.clone(), v))
        })
        .collect()
}

/// The reply body: `{"id":…,"ok":true,"result":…}` or `{"id":…,"ok":false,"error":{…}}`.
pub fn reply_body(id: &Value, result: &Result<Value, CommandError>) -> Bytes {
    let body = match result {
        Ok(r) => json!({"id": id, "ok": true, "result": r}),
        Err(e) => json!({"id": id, "ok": false, "error": {"code": e.code, "message": e.message}}),
    };
    Bytes::from(serde_json::to_vec(&body).expect("reply JSON always serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Result<Command, CommandError> {
        parse_request(s.as_bytes()).1
    }

    fn code(s: &str) -> ErrorCode {
        cmd(s).unwrap_err().code
    }

    #[test]
    fn plain_commands() {
        assert_eq!(
            cmd(r#"{"id":"1","command":"status"}"#).unwrap(),
            Command::Status
        );
        assert_eq!(
            cmd(r#"{"command":"keyframe","args":{}}"#).unwrap(),
            Command::Keyframe
        );
        assert_eq!(
            cmd(r#"{"command":"stream","args":{"on":"off"}}"#).unwrap(),
            Command::Stream { on: false }
        );
        assert_eq!(
            cmd(r#"{"command":"kick","args":{"label":"v3"}}"#).unwrap(),
            Command::Kick {
                label: Label::of(3),
                reason: "ended by the camera's owner".into()
            }
        );
    }

    #[test]
    fn envelope_survives_errors() {
        let (env, r) = parse_request(br#"{"id":"x7","command":"fly","reply_to":"me/replies"}"#);
        assert_eq!(env.id, Value::String("x7".into()));
        assert_eq!(env.reply_to.as_deref(), Some("me/replies"));
        assert_eq!(r.unwrap_err().code, ErrorCode::UnknownCommand);
    }

    #[test]
    fn replies_stay_in_the_reply_subtree() {
        let default = "rtcam/cam1/command/reply";
        assert_eq!(reply_route(None, default), Ok(default));
        for inside in [
            "rtcam/cam1/command/reply",
            "rtcam/cam1/command/reply/me",
            "rtcam/cam1/command/reply/tool/42",
        ] {
            assert_eq!(reply_route(Some(inside), default), Ok(inside));
        }
        for outside in [
            "me/replies",
            "rtcam/cam1/command/replyx",
            "rtcam/cam1/command/repl",
            "rtcam/cam1/session/abc/out",
            "homeassistant/switch/rtcam_cam1/config",
            "rtcam/cam2/command/reply/me",
            "",
        ] {
            let e = reply_route(Some(outside), default).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{outside}");
            assert!(e.message.contains(default), "{}", e.message);
        }
    }

    #[test]
    fn bad_requests_have_codes() {
        assert_eq!(code("nope"), ErrorCode::BadJson);
        assert_eq!(code("[]"), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"id":5,"command":"status"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"command":"status","reply_to":"a/#"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"id":"1"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"command":"status","args":{"x":1}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"command":"status","args":[1]}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"command":"stream","args":{"on":"maybe"}}"#),
            ErrorCode::BadArgs
        );
        // Sessions are kicked by label only: a sid is neither a label nor an argument.
        for args in [
            r#"{"sid":"ab12cd34ef56gh78"}"#,
            r#"{"label":"ab12cd34ef56gh78"}"#,
            r#"{"label":"v0"}"#,
            r#"{"label":3}"#,
            r#"{}"#,
        ] {
            assert_eq!(
                code(&format!(r#"{{"command":"kick","args":{args}}}"#)),
                ErrorCode::BadArgs,
                "{args}"
            );
        }
    }

    #[test]
    fn set_is_validated() {
        assert_eq!(
            cmd(r#"{"command":"set","args":{"bitrate_kbps":900}}"#).unwrap(),
            Command::Set(SetArgs {
                bitrate_kbps: Some(900),
                ..Default::default()
            })
        );
        assert_eq!(
            code(r#"{"command":"set","args":{"bitrate_kbps":5}}"#),
            ErrorCode::OutOfRange
        );
        assert_eq!(
            code(r#"{"command":"set","args":{"fps":"fast"}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"command":"set","args":{"width":640}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"command":"set","args":{"width":641,"height":480}}"#),
            ErrorCode::OutOfRange
        );
        assert_eq!(code(r#"{"command":"set","args":{}}"#), ErrorCode::BadArgs);
        assert_eq!(
            cmd(r#"{"command":"set","args":{"rotation":180,"hflip":true}}"#).unwrap(),
            Command::Set(SetArgs {
                rotation: Some(crate::config::Rotation::R180),
                hflip: Some(true),
                ..Default::default()
            })
        );
        assert_eq!(
            code(r#"{"command":"set","args":{"rotation":45}}"#),
            ErrorCode::OutOfRange
        );
        assert_eq!(
            code(r#"{"command":"set","args":{"vflip":1}}"#),
            ErrorCode::BadArgs
        );
        assert_eq!(
            code(r#"{"command":"set","args":{"zoom":2}}"#),
            ErrorCode::BadArgs
        );
        let Command::Set(s) =
            cmd(r#"{"command":"set","args":{"controls":{"brightness":10,"auto":true}}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.controls.len(), 2);
    }

    #[test]
    fn reply_shape() {
        let ok: Value =
            serde_json::from_slice(&reply_body(&json!("1"), &Ok(json!({"a":1})))).unwrap();
        assert_eq!(ok, json!({"id":"1","ok":true,"result":{"a":1}}));
        let err: Value = serde_json::from_slice(&reply_body(
            &Value::Null,
            &Err(CommandError::new(ErrorCode::OutOfRange, "m")),
        ))
        .unwrap();
        assert_eq!(
            err,
            json!({"id":null,"ok":false,"error":{"code":"out_of_range","message":"m"}})
        );
    }

    #[test]
    fn state_changing_commands() {
        assert!(Command::Restart.changes_state());
        assert!(!Command::Status.changes_state());
        assert!(!Command::Snapshot.changes_state());
    }
}
