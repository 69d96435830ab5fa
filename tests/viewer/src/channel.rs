//! The `control` data channel a viewer may open, as the viewer page does: commands and their
//! replies, status and telemetry pushes.

use crate::Viewer;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use webrtc::data_channel::{DataChannel, DataChannelEvent};

/// Records the channel's messages and whether it is open.
pub(crate) fn spawn(
    dc: Arc<dyn DataChannel>,
    messages: Arc<Mutex<Vec<Value>>>,
    open: watch::Sender<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = dc.poll().await {
            match event {
                DataChannelEvent::OnOpen => {
                    let _ = open.send(true);
                }
                DataChannelEvent::OnMessage(m) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(&m.data) {
                        messages.lock().unwrap().push(v);
                    }
                }
                DataChannelEvent::OnClose => break,
                _ => {}
            }
        }
    })
}

impl Viewer {
    /// Sends a command on the control channel (waiting for it to open) and returns the reply.
    pub async fn channel_request(&self, request: Value) -> Value {
        let dc = self
            .control
            .as_ref()
            .expect("viewer opened with a control channel");
        let id = request["id"].clone();
        let mut open = self.channel_open.clone();
        tokio::time::timeout(Duration::from_secs(10), open.wait_for(|o| *o))
            .await
            .expect("control channel opened")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        dc.send_text(&request.to_string()).await.unwrap();
        loop {
            let found = self
                .channel_messages
                .lock()
                .unwrap()
                .iter()
                .find(|m| m.get("type").is_none() && m["id"] == id)
                .cloned();
            if let Some(reply) = found {
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "no reply on the control channel to {request}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a pushed message of `kind` ("status", "telemetry") that `pred` accepts.
    pub async fn channel_push(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let found = self
                .channel_messages
                .lock()
                .unwrap()
                .iter()
                .find(|m| m["type"] == kind && pred(m))
                .cloned();
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}
