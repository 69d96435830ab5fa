//! A viewer's `control` data channel: the same commands and replies as `R/command`, plus
//! status and telemetry pushed as they change, so the page can show them without MQTT.

use super::exec::{Controller, Requester};
use crate::session::peer::{ChannelEvent, ControlChannel};
use serde_json::Value;

/// Serves one control channel until it closes or the session ends (the caller aborts it).
pub async fn serve(
    channel: ControlChannel,
    controller: Controller,
    requester: Requester,
    sid: String,
) {
    let mut status = controller.status();
    let mut telemetry = controller.telemetry();
    let mut rate = controller.channel_rate();
    // The page wants the current state at once, not at the next change.
    let first = serde_json::to_value(&*status.borrow_and_update()).ok();
    push(&channel, "status", first).await;
    loop {
        tokio::select! {
            // Cancel-safe: `next` only returns whole messages; a dropped call loses none that
            // the crate has not yet handed over.
            event = channel.next() => match event {
                ChannelEvent::Message(bytes) => {
                    let (env, command) = super::parse_request(&bytes);
                    let result = match command {
                        Ok(_) if !rate.try_take(std::time::Instant::now()) => Err(controller.rate_limited()),
                        Ok(cmd) => controller.execute(cmd, requester).await,
                        Err(e) => Err(e),
                    };
                    let body = super::reply_body(&env.id, &result);
                    if channel.send(&String::from_utf8_lossy(&body)).await.is_err() {
                        break;
                    }
                }
                ChannelEvent::Closed => break,
            },
            // Cancel-safe: watch `changed`.
            Ok(()) = status.changed() => {
                let value = serde_json::to_value(&*status.borrow_and_update()).ok();
                push(&channel, "status", value).await;
            }
            // Cancel-safe: watch `changed`.
            Ok(()) = telemetry.changed() => {
                let value = serde_json::to_value(&*telemetry.borrow_and_update()).ok();
                push(&channel, "telemetry", value).await;
            }
        }
    }
    tracing::debug!(%sid, "control channel closed");
}

/// Sends `{"type": kind, ...fields}`; replies carry no `type`, so the page tells them apart.
async fn push(channel: &ControlChannel, kind: &str, value: Option<Value>) {
    let Some(Value::Object(mut fields)) = value else {
        return;
    };
    fields.insert("type".into(), Value::String(kind.into()));
    let _ = channel.send(&Value::Object(fields).to_string()).await;
}
