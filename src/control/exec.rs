//! Carrying out commands: the one place that turns a [`Command`] into changes on the media
//! pipeline, the sessions and the configuration. Used by the MQTT command topic and by viewers'
//! data channels alike.

use super::telemetry::Telemetry;
use super::{Command, CommandError, ControlRequest, ErrorCode, Publication, SetArgs};
use crate::config::{Config, ControlSetting, Origin};
use crate::media::v4l2::controls::ControlError;
use crate::media::{Media, MediaError};
use crate::session::Sessions;
use crate::signalling::protocol::{Status, Topics};
use crate::util::{LogWindow, RateLimiter};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often a refused reply topic is logged at most: anyone who may publish commands can
/// repeat it as fast as the broker lets them.
const REFUSED_REPLY_LOG_EVERY: Duration = Duration::from_secs(60);

/// Who sent a command; decides what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// A client of the broker: trusted to change state (brokers are where access is controlled).
    Mqtt,
    /// A viewer's data channel; state changes only when the config allows them.
    Viewer { may_change_state: bool },
}

#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    topics: Topics,
    media: Media,
    sessions: Sessions,
    status: watch::Receiver<Status>,
    telemetry: watch::Receiver<Telemetry>,
    publications: mpsc::Sender<Publication>,
    /// The configuration in force, for `reload` to compare against.
    config: Mutex<Config>,
    origin: Origin,
    /// Shared by every MQTT requester: the broker does not tell rtcam who is who.
    mqtt_rate: Mutex<RateLimiter>,
    commands_per_second: u32,
    /// Limits the log lines about reply topics outside the reply subtree.
    refused_reply_log: Mutex<LogWindow>,
}

impl Controller {
    // Called once, by `App::start`, with each part the commands reach; a struct of them would
    // only rename the same eight things.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        topics: Topics,
        media: Media,
        sessions: Sessions,
        status: watch::Receiver<Status>,
        telemetry: watch::Receiver<Telemetry>,
        publications: mpsc::Sender<Publication>,
        config: Config,
        origin: Origin,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                topics,
                media,
                sessions,
                status,
                telemetry,
                publications,
                mqtt_rate: Mutex::new(RateLimiter::new(
                    config.control.commands_per_second,
                    config.control.commands_per_second * 2,
                )),
                commands_per_second: config.control.commands_per_second,
                refused_reply_log: Mutex::new(LogWindow::new(REFUSED_REPLY_LOG_EVERY)),
                config: Mutex::new(config),
                origin,
            }),
        }
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.inner.status.clone()
    }

    pub fn telemetry(&self) -> watch::Receiver<Telemetry> {
        self.inner.telemetry.clone()
    }

    /// Answers MQTT commands until `shutdown`. Each command runs on its own task, so a slow
    /// snapshot does not hold up a `status`.
    pub async fn serve_mqtt(
        self,
        mut requests: mpsc::Receiver<ControlRequest>,
        shutdown: CancellationToken,
    ) {
        loop {
            let request = tokio::select! {
                // Cancel-safe: level-triggered token.
                _ = shutdown.cancelled() => break,
                // Cancel-safe: mpsc recv.
                r = requests.recv() => match r { Some(r) => r, None => break },
            };
            let this = self.clone();
            tokio::spawn(async move { this.answer_mqtt(request).await });
        }
    }

    async fn answer_mqtt(&self, request: ControlRequest) {
        let (env, command) = super::parse_request(&request.payload);
        let allowed = self
            .inner
            .mqtt_rate
            .lock()
            .expect("rate lock is never poisoned: no panics while held")
            .try_take(Instant::now());
        // MQTT 5 response topic first, then the payload's reply_to, then the default topic;
        // only within the reply subtree.
        let default = self.inner.topics.command_reply();
        let asked = request
            .response_topic
            .as_deref()
            .or(env.reply_to.as_deref());
        let route = super::reply_route(asked, &default).map(str::to_string);
        if route.is_err() {
            let now = Instant::now();
            let log = self
                .inner
                .refused_reply_log
                .lock()
                .expect("log window lock is never poisoned: no panics while held")
                .happened(now);
            if let Some(unlogged) = log {
                tracing::warn!(
                    "refused a command whose reply topic is outside {default} ({unlogged} more refused unlogged since the last warning)"
                );
            }
        }
        let result = match (&route, command) {
            (Err(e), _) => Err(e.clone()),
            (Ok(_), Ok(_)) if !allowed => Err(self.rate_limited()),
            (Ok(_), Ok(cmd)) => self.execute(cmd, Requester::Mqtt).await,
            (Ok(_), Err(e)) => Err(e),
        };
        if let (Ok(_), Err(e)) = (&route, &result) {
            tracing::info!("command refused: {}", e.message);
        }
        let topic = route.unwrap_or(default);
        // Echoed whenever the request had it, so an MQTT 5 requester can match even a refusal
        // that went to the default topic.
        let correlation_data = request.correlation_data;
        tracing::debug!(id = %env.id, %topic, "command reply");
        let publication = Publication {
            topic,
            payload: super::reply_body(&env.id, &result),
            retain: false,
            correlation_data,
        };
        let _ = self.inner.publications.send(publication).await;
    }

    /// The refusal for a requester sending too fast.
    pub fn rate_limited(&self) -> CommandError {
        CommandError::new(
            ErrorCode::RateLimited,
            format!(
                "More than {} commands per second; slow down and try again.",
                self.inner.commands_per_second
            ),
        )
    }

    /// A fresh limiter at the configured command rate, for one data channel.
    pub fn channel_rate(&self) -> RateLimiter {
        RateLimiter::new(
            self.inner.commands_per_second,
            self.inner.commands_per_second * 2,
        )
    }

    /// Runs one command. Validation failures change nothing.
    pub async fn execute(&self, command: Command, from: Requester) -> Result<Value, CommandError> {
        if let Requester::Viewer {
            may_change_state: false,
        } = from
        {
            if command.changes_state() {
                return Err(CommandError::new(
                    ErrorCode::Forbidden,
                    "Viewers may only read from this camera; its owner can allow changes with [control] viewer_commands = \"all\".",
                ));
            }
        }
        let inner = &self.inner;
        match command {
            Command::Status => {
                Ok(serde_json::to_value(&*inner.status.borrow()).unwrap_or(Value::Null))
            }
            Command::Keyframe => {
                // Every encoder running: the VP8 one ignores it when no VP8 viewer watches.
                inner.media.request_keyframe();
                inner
                    .media
                    .request_keyframe_for(crate::codec::VideoCodec::Vp8);
                Ok(json!({"requested": true}))
            }
            Command::Sessions => Ok(json!(inner.sessions.list().await)),
            Command::Kick { label, reason } => {
                if inner.sessions.kick(label, &reason).await {
                    Ok(json!({"label": label, "ended": true}))
                } else {
                    Err(CommandError::new(
                        ErrorCode::BadArgs,
                        format!("There is no session {label}; the sessions command lists them."),
                    ))
                }
            }
            Command::Stream { on } => {
                inner.media.set_streaming(on);
                Ok(json!({"streaming": on}))
            }
            Command::Restart => {
                inner.media.restart();
                Ok(json!({"restarting": true}))
            }
            Command::Snapshot => {
                let jpeg = inner
                    .media
                    .snapshot()
                    .await
                    .map_err(|e| CommandError::new(ErrorCode::Unavailable, e.to_string()))?;
                let topic = inner.topics.snapshot();
                let bytes = jpeg.len();
                // Retained: the latest picture is there for whoever subscribes next (a home
                // automation camera entity, say).
                let _ = inner
                    .publications
                    .send(Publication::new(topic.clone(), jpeg, true))
                    .await;
                Ok(json!({"topic": topic, "bytes": bytes, "content_type": "image/jpeg"}))
            }
            Command::Controls => {
                let controls = inner.media.camera_controls().map_err(control_error)?;
                Ok(json!({ "controls": controls }))
            }
            Command::Set(args) => self.set(args),
            Command::Reload => self.reload(),
        }
    }

    fn set(&self, args: SetArgs) -> Result<Value, CommandError> {
        let inner = &self.inner;
        // Controls first: a name or value the camera refuses fails the command before any other
        // setting changes.
        let mut controls = serde_json::Map::new();
        for (name, value) in &args.controls {
            let c = inner
                .media
                .set_camera_control(name, &ControlSetting::Int(*value))
                .map_err(control_error)?;
            controls.insert(c.name.clone(), json!(c.value));
        }
        let mut config = inner
            .config
            .lock()
            .expect("config lock is never poisoned: no panics while held");
        let mut applied = serde_json::Map::new();
        if !controls.is_empty() {
            applied.insert("controls".into(), Value::Object(controls));
        }
        if let Some(kbps) = args.bitrate_kbps {
            config.encoder.bitrate_kbps = kbps;
            inner.media.set_bitrate(kbps);
            applied.insert("bitrate_kbps".into(), json!(kbps));
        }
        if args.fps.is_some() || args.width.is_some() {
            let s = &mut config.source;
            s.fps = args.fps.unwrap_or(s.fps);
            s.width = args.width.unwrap_or(s.width);
            s.height = args.height.unwrap_or(s.height);
            inner.media.reconfigure(s.width, s.height, s.fps);
            applied.insert("width".into(), json!(s.width));
            applied.insert("height".into(), json!(s.height));
            applied.insert("fps".into(), json!(s.fps));
        }
        if args.rotation.is_some() || args.hflip.is_some() || args.vflip.is_some() {
            let s = &mut config.source;
            s.rotation = args.rotation.unwrap_or(s.rotation);
            s.hflip = args.hflip.unwrap_or(s.hflip);
            s.vflip = args.vflip.unwrap_or(s.vflip);
            inner
                .media
                .set_orientation(crate::media::orientation::Orientation::of(s));
            applied.insert("rotation".into(), json!(s.rotation.degrees()));
            applied.insert("hflip".into(), json!(s.hflip));
            applied.insert("vflip".into(), json!(s.vflip));
            // The camera's flips are set and videoflip placed when a pipeline is built.
            applied.insert("pipeline_restarted".into(), json!(true));
        }
        Ok(Value::Object(applied))
    }

    /// Re-reads the configuration file and applies what can change while running.
    fn reload(&self) -> Result<Value, CommandError> {
        let inner = &self.inner;
        let Origin::File(path) = &inner.origin else {
            return Err(CommandError::new(
                ErrorCode::Unavailable,
                "rtcam was started without a configuration file; there is nothing to reload.",
            ));
        };
        let (mut new, _) = Config::load(Some(path))
            .map_err(|e| CommandError::new(ErrorCode::Failed, e.to_string()))?;
        // The same secrets as at start, so a credential is not mistaken for a changed key.
        crate::credentials::apply_from_env(&mut new)
            .map_err(|e| CommandError::new(ErrorCode::Failed, e.to_string()))?;
        let mut current = inner
            .config
            .lock()
            .expect("config lock is never poisoned: no panics while held");
        let plan = reload_plan(&current, &new);
        if plan
            .applied
            .iter()
            .any(|k| k.starts_with("encoder.bitrate"))
        {
            inner.media.set_bitrate(new.encoder.bitrate_kbps);
        }
        let turned = ["source.rotation", "source.hflip", "source.vflip"];
        if plan.applied.iter().any(|k| turned.contains(k)) {
            inner
                .media
                .set_orientation(crate::media::orientation::Orientation::of(&new.source));
        }
        if plan
            .applied
            .iter()
            .any(|k| k.starts_with("source.") && !turned.contains(k))
        {
            inner
                .media
                .reconfigure(new.source.width, new.source.height, new.source.fps);
        }
        // What could not be applied stays as it runs, so the next reload reports it again.
        let mut kept = new.clone();
        kept.device = current.device.clone();
        kept.mqtt = current.mqtt.clone();
        kept.http = current.http.clone();
        kept.webrtc = current.webrtc.clone();
        kept.control = current.control.clone();
        kept.source.kind = current.source.kind;
        kept.source.device = current.source.device.clone();
        kept.source.format = current.source.format;
        kept.encoder.element = current.encoder.element.clone();
        kept.encoder.keyframe_interval = current.encoder.keyframe_interval;
        kept.encoder.keyframe_min_interval_ms = current.encoder.keyframe_min_interval_ms;
        kept.encoder.vp8_fallback = current.encoder.vp8_fallback;
        *current = kept;
        tracing::info!(applied = ?plan.applied, restart_needed = ?plan.restart_needed, "configuration reloaded");
        Ok(json!({"applied": plan.applied, "restart_needed": plan.restart_needed}))
    }
}

/// What a reload changes: keys applied live, and keys that take effect only after a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    pub applied: Vec<&'static str>,
    pub restart_needed: Vec<&'static str>,
}

/// Compares two configurations key by key (pure, so it is unit-tested).
pub fn reload_plan(old: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    let mut check = |changed: bool, key: &'static str, live: bool| {
        if changed {
            if live {
                plan.applied.push(key);
            } else {
                plan.restart_needed.push(key);
            }
        }
    };
    check(
        old.encoder.bitrate_kbps != new.encoder.bitrate_kbps,
        "encoder.bitrate_kbps",
        true,
    );
    check(old.source.width != new.source.width, "source.width", true);
    check(
        old.source.height != new.source.height,
        "source.height",
        true,
    );
    check(old.source.fps != new.source.fps, "source.fps", true);
    check(
        old.source.rotation != new.source.rotation,
        "source.rotation",
        true,
    );
    check(old.source.hflip != new.source.hflip, "source.hflip", true);
    check(old.source.vflip != new.source.vflip, "source.vflip", true);
    check(old.source.kind != new.source.kind, "source.kind", false);
    check(
        old.source.device != new.source.device,
        "source.device",
        false,
    );
    check(
        old.source.format != new.source.format,
        "source.format",
        false,
    );
    check(
        old.source.controls != new.source.controls,
        "source.controls",
        false,
    );
    check(
        old.encoder.element != new.encoder.element,
        "encoder.element",
        false,
    );
    check(
        old.encoder.keyframe_interval != new.encoder.keyframe_interval,
        "encoder.keyframe_interval",
        false,
    );
    check(
        old.encoder.keyframe_min_interval_ms != new.encoder.keyframe_min_interval_ms,
        "encoder.keyframe_min_interval_ms",
        false,
    );
    // The session table decides codecs with the value it was started with.
    check(
        old.encoder.vp8_fallback != new.encoder.vp8_fallback,
        "encoder.vp8_fallback",
        false,
    );
    // The adaptation's bounds are read when the sessions start (app.rs), so they need a restart.
    check(
        old.encoder.min_bitrate_kbps != new.encoder.min_bitrate_kbps,
        "encoder.min_bitrate_kbps",
        false,
    );
    check(
        old.encoder.max_bitrate_kbps != new.encoder.max_bitrate_kbps,
        "encoder.max_bitrate_kbps",
        false,
    );
    check(
        old.encoder.follow_ratio != new.encoder.follow_ratio,
        "encoder.follow_ratio",
        false,
    );
    check(old.device.id != new.device.id, "device.id", false);
    check(toml_differs(&old.mqtt, &new.mqtt), "mqtt", false);
    check(toml_differs(&old.http, &new.http), "http", false);
    check(toml_differs(&old.webrtc, &new.webrtc), "webrtc", false);
    check(toml_differs(&old.control, &new.control), "control", false);
    // The page's config and every session's negotiation depend on it: restart to apply.
    check(old.audio != new.audio, "audio", false);
    plan
}

fn toml_differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
}

/// A camera-control failure as a reply: what is wrong with the request, or why the camera
/// cannot take it now.
fn control_error(e: MediaError) -> CommandError {
    let code = match &e {
        MediaError::Control(ControlError::Unknown { .. }) => ErrorCode::BadArgs,
        MediaError::Control(ControlError::BadValue { .. }) => ErrorCode::OutOfRange,
        _ => ErrorCode::Unavailable,
    };
    CommandError::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_plan_splits_live_and_restart_keys() {
        let old = Config::default();
        let mut new = Config::default();
        assert_eq!(reload_plan(&old, &new), ReloadPlan::default());
        new.encoder.bitrate_kbps = 900;
        new.source.width = 640;
        new.mqtt.url = "mqtt://elsewhere:1883".into();
        new.webrtc.max_sessions = 3;
        new.encoder.vp8_fallback = false;
        let plan = reload_plan(&old, &new);
        assert_eq!(plan.applied, vec!["encoder.bitrate_kbps", "source.width"]);
        assert_eq!(
            plan.restart_needed,
            vec!["encoder.vp8_fallback", "mqtt", "webrtc"]
        );
        let mut new = Config::default();
        new.encoder.follow_ratio = 0.3;
        assert_eq!(
            reload_plan(&old, &new).restart_needed,
            vec!["encoder.follow_ratio"]
        );
    }
}
