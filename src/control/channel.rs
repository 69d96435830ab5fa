//! A viewer's `control` data channel: the same commands and replies as `R/command`, plus
//! status and telemetry pushed as they change, so the page can show them without MQTT.
//!
//! Session lists on the channel (telemetry's `sessions`, the `sessions` command's reply) mark
//! the channel's own session with `"you": true`, so the page finds its figures without knowing
//! any label in advance.

use super::exec::{Controller, Requester};
use super::Command;
use crate::session::peer::{ChannelEvent, ControlChannel};
use crate::session::table::Label;
use serde_json::Value;

/// Serves one control channel until it closes or the session ends (the caller aborts it).
pub async fn serve(
    channel: ControlChannel,
    controller: Controller,
    requester: Requester,
    label: Label,
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
                        Ok(Command::Sessions) => controller
                            .execute(Command::Sessions, requester)
                            .await
                            .map(|mut list| {
                                mark_own(&mut list, label);
                                list
                            }),
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
                let mut value = serde_json::to_value(&*telemetry.borrow_and_update()).ok();
                if let Some(Value::Object(fields)) = &mut value {
                    if let Some(list) = fields.get_mut("sessions") {
                        mark_own(list, label);
                    }
                }
                push(&channel, "telemetry", value).await;
            }
        }
    }
    tracing::debug!(session = %label, "control channel closed");
}

/// Adds `"you": true` to the entry of `list` (a JSON array of sessions) labelled `own`.
fn mark_own(list: &mut Value, own: Label) {
    let own = own.to_string();
    let Some(entries) = list.as_array_mut() else {
        return;
    };
    for entry in entries {
        if let Some(fields) = entry.as_object_mut() {
            if fields.get("label").and_then(Value::as_str) == Some(own.as_str()) {
                fields.insert("you".into(), Value::Bool(true));
            }
        }
    }
}

/// Sends `{"type": kind, ...fields}`; replies carry no `type`, so the page tells them apart.
async fn push(channel: &ControlChannel, kind: &str, value: Option<Value>) {
    let Some(Value::Object(mut fields)) = value else {
        return;
    };
    fields.insert("type".into(), Value::String(kind.into()));
    let _ = channel.send(&Value::Object(fields).to_string()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn own_session_is_marked_and_no_other() {
        let mut list = json!([{"label": "v1"}, {"label": "v12"}, {"label": "v2"}, 3]);
        mark_own(&mut list, Label::of(1));
        assert_eq!(
            list,
            json!([{"label": "v1", "you": true}, {"label": "v12"}, {"label": "v2"}, 3])
        );
        let mut not_a_list = json!({"label": "v1"});
        mark_own(&mut not_a_list, Label::of(1));
        assert_eq!(not_a_list, json!({"label": "v1"}));
    }
}
