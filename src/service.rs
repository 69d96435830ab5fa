//! Running under systemd: the only user of `sd-notify`.
//!
//! With `Type=notify` systemd waits for `READY=1`, which rtcam sends once it is connected to its
//! broker (the HTTP port is bound by then: `App::start` binds it before returning). With
//! `WatchdogSec=` rtcam sends `WATCHDOG=1` only while the media pipeline and the MQTT loop beat
//! (see `health.rs`), so a stall gets rtcam restarted. `STATUS=` lines say what rtcam is doing
//! in words for `systemctl status`, and `STOPPING=1` starts an orderly stop.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call here does nothing. This module decides what
//! to say and when; it does not start or stop rtcam's parts.

use crate::app::App;
use crate::health::{self, Heartbeat};
use crate::signalling::protocol::Status;
use sd_notify::NotifyState;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Who to tell about rtcam's state, read once from the environment systemd sets.
#[derive(Debug, Clone)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set: systemd (or a test standing in for it) is listening.
    enabled: bool,
    /// `WATCHDOG_USEC` for this process: systemd restarts rtcam if no ping comes in this time.
    watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = watchdog_timeout(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Notifier {
            enabled,
            watchdog: watchdog.filter(|_| enabled),
        }
    }

    /// A notifier that says nothing, for running without systemd and for tests.
    pub fn disabled() -> Notifier {
        Notifier {
            enabled: false,
            watchdog: None,
        }
    }

    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        // A lost notification is not worth stopping a camera for: systemd notices readiness or
        // watchdog silence on its own and acts on it.
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::debug!("cannot notify systemd: {e}");
        }
    }

    pub fn status(&self, text: &str) {
        self.send(&[NotifyState::Status(text)]);
    }

    pub fn ready(&self, text: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(text)]);
    }

    pub fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: saying bye to viewers"),
        ]);
    }

    fn ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// The watchdog timeout systemd asked for, if it applies to this process. Like libsystemd's
/// `sd_watchdog_enabled`, a missing `WATCHDOG_PID` means "this process".
pub fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        None => {}
        Some(Ok(p)) if p == own_pid => {}
        Some(_) => return None,
    }
    Some(Duration::from_micros(usec))
}

/// How often to ping and how old a heartbeat may be, for a watchdog timeout. Pinging at a third
/// of the timeout leaves room for one late tick; a part counts as stalled after half of it, so
/// systemd sees silence soon after the stall. The loops beat at least once a second, so a part
/// is never called stalled before [`MIN_STALL`], however short `WatchdogSec=` is.
pub fn watchdog_timing(timeout: Duration) -> (Duration, Duration) {
    let every = (timeout / 3).max(Duration::from_millis(10));
    (every, (timeout / 2).max(MIN_STALL))
}

/// Twice the slowest heartbeat's period (the loops beat every second when idle).
pub const MIN_STALL: Duration = Duration::from_secs(2);

/// One line for `systemctl status`: what streams, to how many, where to watch.
pub fn status_line(status: &Status, connected: bool, page: &str) -> String {
    if connected && status.streaming != Some(false) && status.pipeline.as_deref() == Some("idle") {
        return format!("waiting for a viewer (camera and encoder start on demand); page {page}");
    }
    let (Some(source), Some(encoder)) = (status.source.as_deref(), status.encoder.as_deref())
    else {
        // The pipeline reports what it runs once it runs; until then say so.
        let broker = if connected {
            ""
        } else {
            "; MQTT broker unreachable, retrying"
        };
        return format!("starting the camera and encoder{broker}; page {page}");
    };
    if status.streaming == Some(false) {
        return format!("streaming switched off by its owner; {source}; page {page}");
    }
    let viewers = match status.viewers.unwrap_or(0) {
        1 => "1 viewer".to_string(),
        n => format!("{n} viewers"),
    };
    if connected {
        format!("streaming {source} with {encoder} to {viewers}; page {page}")
    } else {
        format!("MQTT broker unreachable, retrying; {source} with {encoder}; page {page}")
    }
}

/// Runs the systemd side of a started rtcam until `stop` resolves: STATUS lines, `READY=1` once
/// the broker is connected, and watchdog pings while the heartbeats are fresh. Then it sends
/// `STOPPING=1` and returns; the caller stops the app (sessions → media → MQTT → HTTP).
pub async fn supervise(app: &App, notifier: &Notifier, page: &str, stop: impl Future<Output = ()>) {
    let done = CancellationToken::new();
    let watchdog = notifier.watchdog().map(|timeout| {
        tokio::spawn(run_watchdog(
            notifier.clone(),
            app.heartbeats(),
            timeout,
            done.clone(),
        ))
    });
    tokio::pin!(stop);
    notifier.status("connecting to the MQTT broker");
    let mut connected = app.connected();
    let ready = tokio::select! {
        // Cancel-safe: the pinned future is polled again on the next select if this one loses.
        _ = &mut stop => false,
        // Cancel-safe: `wait_for` only observes the watch channel.
        r = connected.wait_for(|c| *c) => r.is_ok(),
    };
    if ready {
        notifier.ready(&status_line(&app.status().borrow(), true, page));
        tracing::debug!("told systemd rtcam is ready");
        let follow = follow_status(notifier, app.status(), app.connected(), page);
        tokio::select! {
            // Cancel-safe: see above.
            _ = &mut stop => {}
            // Runs until the app's channels close, which happens only after `stop`.
            _ = follow => stop.await,
        }
    }
    notifier.stopping();
    done.cancel();
    if let Some(task) = watchdog {
        let _ = task.await;
    }
}

/// Keeps `STATUS=` current as viewers come and go and the broker connection changes.
async fn follow_status(
    notifier: &Notifier,
    mut status: watch::Receiver<Status>,
    mut connected: watch::Receiver<bool>,
    page: &str,
) {
    loop {
        tokio::select! {
            // Cancel-safe: `changed` marks a value seen only when it returns.
            r = status.changed() => if r.is_err() { return },
            // Cancel-safe: as above.
            r = connected.changed() => if r.is_err() { return },
        }
        let line = status_line(
            &status.borrow_and_update(),
            *connected.borrow_and_update(),
            page,
        );
        notifier.status(&line);
    }
}

/// Pings systemd every third of `timeout` while every heartbeat is younger than half of it.
/// When one goes stale the pings stop (systemd then restarts rtcam) and STATUS says which part
/// stalled, so `systemctl status` and the journal explain the restart.
pub async fn run_watchdog(
    notifier: Notifier,
    beats: Vec<Heartbeat>,
    timeout: Duration,
    done: CancellationToken,
) {
    let (every, limit) = watchdog_timing(timeout);
    let mut tick = tokio::time::interval(every);
    let mut was_stale = false;
    loop {
        tokio::select! {
            // Cancel-safe: level-triggered token.
            _ = done.cancelled() => return,
            // Cancel-safe: an interval tick that is dropped is taken on a later turn.
            _ = tick.tick() => {}
        }
        let stale = health::stale(&beats, Instant::now(), limit);
        if stale.is_empty() {
            notifier.ping();
            if was_stale {
                tracing::info!("every part beats again; watchdog pings resumed");
                was_stale = false;
            }
        } else if !was_stale {
            let parts: Vec<String> = stale
                .iter()
                .map(|(name, age)| format!("{name} silent for {:.1} s", age.as_secs_f64()))
                .collect();
            let text = format!(
                "unhealthy: {}; withholding watchdog pings",
                parts.join(", ")
            );
            tracing::error!("{text}");
            notifier.status(&text);
            was_stale = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_applies_to_this_process_only() {
        assert_eq!(
            watchdog_timeout(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_timeout(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_timeout(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_timeout(Some("30000000"), Some("x"), 7), None);
        assert_eq!(watchdog_timeout(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout(Some("soon"), None, 7), None);
        assert_eq!(watchdog_timeout(None, Some("7"), 7), None);
    }

    #[test]
    fn pings_come_well_inside_the_timeout() {
        let (every, limit) = watchdog_timing(Duration::from_secs(30));
        assert_eq!(every, Duration::from_secs(10));
        assert_eq!(limit, Duration::from_secs(15));
        // A stall is noticed at most `limit + every` after it began, before systemd gives up.
        assert!(limit + every < Duration::from_secs(30));
        // Too short a WatchdogSec= must not make a healthy idle loop look stalled.
        assert_eq!(watchdog_timing(Duration::from_secs(1)).1, MIN_STALL);
    }

    #[test]
    fn status_lines_read_as_sentences() {
        let status = Status {
            state: "online".into(),
            version: None,
            source: Some("/dev/video0 (vivid)".into()),
            encoder: Some("x264enc".into()),
            viewers: Some(1),
            streaming: Some(true),
            camera: None,
            pipeline: Some("running".into()),
            pipeline_restarts: Some(0),
            last_error: None,
        };
        assert_eq!(
            status_line(&status, true, "http://10.0.0.5:8080/"),
            "streaming /dev/video0 (vivid) with x264enc to 1 viewer; page http://10.0.0.5:8080/"
        );
        assert!(status_line(&status, false, "p").starts_with("MQTT broker unreachable"));
        let off = Status {
            streaming: Some(false),
            ..status.clone()
        };
        assert!(status_line(&off, true, "p").starts_with("streaming switched off"));
        assert_eq!(
            status_line(&Status::offline(), true, "p"),
            "starting the camera and encoder; page p"
        );
    }
}
