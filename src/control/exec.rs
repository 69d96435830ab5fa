//! Carrying out commands: the one place that turns a [`Command`] into changes on the media
//! pipeline, the sessions and the configuration. Used by the MQTT command topic and by viewers'
//! data channels alike.

use super::reload::{self, Action};
use super::telemetry::Telemetry;
use super::{Command, CommandError, ControlRequest, ErrorCode, Publication, SetArgs};
use crate::config::{Config, ConfigError, ControlSetting, Origin};
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
    /// The settings in force (what the user asked for, not what runs): the configuration
    /// rtcam started with, with `set` and live reloads applied; `reload` compares the file
    /// against it.
    settings: Mutex<Config>,
    origin: Origin,
    /// The app's check of a configuration's values, run again on the reloaded file.
    check: CheckConfig,
    /// The token secret the gate, the HTTP doors and the sessions verify with.
    token_secret: watch::Sender<String>,
    /// Shared by every MQTT requester: the broker does not tell rtcam who is who.
    mqtt_rate: Mutex<RateLimiter>,
    commands_per_second: u32,
    /// Limits the log lines about reply topics outside the reply subtree.
    refused_reply_log: Mutex<LogWindow>,
}

/// The app's check of what each part makes of a configuration (`app::check_config`).
pub type CheckConfig = fn(&Config, &Origin) -> Result<(), ConfigError>;

/// The settings side of the controller: what rtcam was started with and how to re-read it.
pub struct Settings {
    /// The configuration in force at start, secrets from credentials filled in.
    pub config: Config,
    pub origin: Origin,
    pub check: CheckConfig,
    /// Sends a reloaded `[auth] secret` to the authority that verifies tokens
    /// (`Authority::following`); unused while tokens are off.
    pub token_secret: watch::Sender<String>,
}

impl Controller {
    /// Called once, by `App::start`, with each part the commands reach.
    pub fn new(
        topics: Topics,
        media: Media,
        sessions: Sessions,
        status: watch::Receiver<Status>,
        telemetry: watch::Receiver<Telemetry>,
        publications: mpsc::Sender<Publication>,
        settings: Settings,
    ) -> Self {
        let rate = settings.config.control.commands_per_second;
        Self {
            inner: Arc::new(Inner {
                topics,
                media,
                sessions,
                status,
                telemetry,
                publications,
                mqtt_rate: Mutex::new(RateLimiter::new(rate, rate * 2)),
                commands_per_second: rate,
                refused_reply_log: Mutex::new(LogWindow::new(REFUSED_REPLY_LOG_EVERY)),
                settings: Mutex::new(settings.config),
                origin: settings.origin,
                check: settings.check,
                token_secret: settings.token_secret,
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
                    .map_err(|e| CommandError::caused_by(ErrorCode::Unavailable, e))?;
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
        // The settings change first (what the user asked for); the running parts then follow
        // them, as they follow a reload.
        let mut settings = inner
            .settings
            .lock()
            .expect("settings lock is never poisoned: no panics while held");
        let mut applied = serde_json::Map::new();
        if !controls.is_empty() {
            applied.insert("controls".into(), Value::Object(controls));
        }
        if let Some(kbps) = args.bitrate_kbps {
            settings.encoder.bitrate_kbps = kbps;
            self.apply(Action::Bitrate, &settings);
            applied.insert("bitrate_kbps".into(), json!(kbps));
        }
        if args.fps.is_some() || args.width.is_some() {
            let s = &mut settings.source;
            s.fps = args.fps.unwrap_or(s.fps);
            s.width = args.width.unwrap_or(s.width);
            s.height = args.height.unwrap_or(s.height);
            self.apply(Action::Picture, &settings);
            let s = &settings.source;
            applied.insert("width".into(), json!(s.width));
            applied.insert("height".into(), json!(s.height));
            applied.insert("fps".into(), json!(s.fps));
        }
        if args.rotation.is_some() || args.hflip.is_some() || args.vflip.is_some() {
            let s = &mut settings.source;
            s.rotation = args.rotation.unwrap_or(s.rotation);
            s.hflip = args.hflip.unwrap_or(s.hflip);
            s.vflip = args.vflip.unwrap_or(s.vflip);
            self.apply(Action::Orientation, &settings);
            let s = &settings.source;
            applied.insert("rotation".into(), json!(s.rotation.degrees()));
            applied.insert("hflip".into(), json!(s.hflip));
            applied.insert("vflip".into(), json!(s.vflip));
            // The camera's flips are set and videoflip placed when a pipeline is built.
            applied.insert("pipeline_restarted".into(), json!(true));
        }
        Ok(Value::Object(applied))
    }

    /// Re-reads the configuration file, applies what [`reload::KEYS`] says applies live, and
    /// names the keys that wait for a restart.
    fn reload(&self) -> Result<Value, CommandError> {
        let inner = &self.inner;
        let Origin::File(path) = &inner.origin else {
            return Err(CommandError::new(
                ErrorCode::Unavailable,
                "rtcam was started without a configuration file; there is nothing to reload.",
            ));
        };
        let from_file = self.read_settings(path)?;
        let mut settings = inner
            .settings
            .lock()
            .expect("settings lock is never poisoned: no panics while held");
        let plan = reload::plan(&settings, &from_file);
        for action in &plan.actions {
            self.apply(*action, &plan.settings);
        }
        *settings = plan.settings;
        tracing::info!(applied = ?plan.applied, restart_needed = ?plan.restart_needed, "configuration reloaded");
        Ok(json!({"applied": plan.applied, "restart_needed": plan.restart_needed}))
    }

    /// The file's settings as rtcam reads them at start: parsed, the same secrets from
    /// credentials (so a credential is not mistaken for a changed key), checked by each part.
    fn read_settings(&self, path: &std::path::Path) -> Result<Config, CommandError> {
        let failed = |e| CommandError::caused_by(ErrorCode::Failed, e);
        let (mut config, _) = Config::load(Some(path)).map_err(failed)?;
        crate::credentials::apply_from_env(&mut config)
            .map_err(|e| CommandError::caused_by(ErrorCode::Failed, e))?;
        (self.inner.check)(&config, &self.inner.origin).map_err(failed)?;
        Ok(config)
    }

    /// Makes the running parts (the state) follow a key applied live, with the settings that
    /// take effect.
    fn apply(&self, action: Action, settings: &Config) {
        let media = &self.inner.media;
        let source = &settings.source;
        match action {
            Action::Bitrate => media.set_bitrate(settings.encoder.bitrate_kbps),
            Action::Picture => media.reconfigure(source.width, source.height, source.fps),
            Action::Orientation => {
                media.set_orientation(crate::media::orientation::Orientation::of(source));
            }
            Action::TokenSecret => {
                self.inner
                    .token_secret
                    .send_replace(settings.auth.secret.clone());
            }
        }
    }
}

/// A camera-control failure as a reply: what is wrong with the request, or why the camera
/// cannot take it now.
fn control_error(e: MediaError) -> CommandError {
    let code = match &e {
        MediaError::Control(ControlError::Unknown { .. }) => ErrorCode::BadArgs,
        MediaError::Control(ControlError::BadValue { .. }) => ErrorCode::OutOfRange,
        _ => ErrorCode::Unavailable,
    };
    CommandError::caused_by(code, e)
}
