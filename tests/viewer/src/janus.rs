//! A viewer of a Janus streaming mountpoint through Janus's HTTP API, for the benchmark's
//! comparison: create a session, attach the streaming plugin, `watch` (Janus offers), answer,
//! `start`, trickle candidates; a task long-polls the session's events, which also keeps it
//! alive. The same peer connection and RTP counters as [`crate::Viewer`]'s, without decoding.

use crate::seen::{Decoded, Shared};
use crate::{peer, tracks, ViewerError, ViewerOptions};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc::peer_connection::{PeerConnection, RTCSessionDescription};

pub struct JanusViewer {
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    handle_url: String,
}

impl JanusViewer {
    /// Watches `mountpoint` of the Janus whose HTTP API is at `base`. `ice_check_interval` as
    /// in [`ViewerOptions`].
    pub async fn connect(
        base: &str,
        mountpoint: u64,
        ice_check_interval: Option<Duration>,
    ) -> Result<JanusViewer, ViewerError> {
        let shared = Arc::new(Shared::default());
        shared.start_clock();
        let handle_url = attach(base).await?;
        let session_url = handle_url.rsplit_once('/').map_or(base, |(s, _)| s);
        let (events, mut tasks) = poll_events(format!("{session_url}?maxev=10"));
        let offer = watch(&handle_url, mountpoint, events).await?;
        // Janus offers only the host's own address (libnice leaves loopback out); bind there,
        // which is still local traffic through the kernel like rtcam's viewers on 127.0.0.1.
        let udp_addr = offer
            .lines()
            .find_map(|l| l.strip_prefix("c=IN IP4 "))
            .map(|ip| format!("{}:0", ip.trim()))
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let opts = ViewerOptions {
            udp_addrs: vec![udp_addr],
            ice_check_interval,
            no_decode: true,
            ..ViewerOptions::default()
        };
        let peer = peer::build(&opts, Vec::new(), &shared).await?;
        let sinks = tracks::Sinks {
            shared: shared.clone(),
            video: None,
            audio: None,
            decoding: false,
            video_track: Default::default(),
        };
        tasks.push(tracks::spawn(peer.tracks, sinks, false));
        let pc = peer.pc;
        pc.set_remote_description(RTCSessionDescription::offer(offer)?)
            .await?;
        let answer = pc.create_answer(None).await?;
        pc.set_local_description(answer).await?;
        let sdp = pc
            .local_description()
            .await
            .ok_or(ViewerError::NoCandidates)?
            .sdp;
        let start = json!({"janus":"message","body":{"request":"start"},"jsep":{"type":"answer","sdp":sdp}});
        post(&handle_url, start).await?;
        tasks.push(trickle(handle_url.clone(), peer.candidates));
        Ok(JanusViewer {
            pc,
            shared,
            tasks,
            handle_url,
        })
    }

    pub fn decoded(&self) -> Decoded {
        self.shared.seen().clone()
    }

    pub async fn wait_first_frame(&self, timeout: Duration) -> bool {
        let (_, arrived) = self.shared.wait(timeout, |d| d.rtp_frames > 0).await;
        arrived
    }

    pub async fn close(self) {
        let _ = post(&self.handle_url, json!({"janus":"detach"})).await;
        let _ = self.pc.close().await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A Janus session with the streaming plugin attached; returns the handle's URL.
async fn attach(base: &str) -> Result<String, ViewerError> {
    let created = post(base, json!({"janus":"create"})).await?;
    let session = created["data"]["id"]
        .as_u64()
        .ok_or_else(|| ViewerError::Janus(format!("create: {created}")))?;
    let session_url = format!("{base}/{session}");
    let attached = post(
        &session_url,
        json!({"janus":"attach","plugin":"janus.plugin.streaming"}),
    )
    .await?;
    let handle = attached["data"]["id"]
        .as_u64()
        .ok_or_else(|| ViewerError::Janus(format!("attach: {attached}")))?;
    Ok(format!("{session_url}/{handle}"))
}

/// Long-polls the session's events into a channel.
fn poll_events(url: String) -> (mpsc::UnboundedReceiver<Value>, Vec<JoinHandle<()>>) {
    let (events_tx, events) = mpsc::unbounded_channel::<Value>();
    let task = tokio::spawn(async move {
        loop {
            match http("GET", &url, None).await {
                Ok(Value::Array(list)) => list.into_iter().for_each(|e| {
                    let _ = events_tx.send(e);
                }),
                Ok(e) => {
                    let _ = events_tx.send(e);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (events, vec![task])
}

/// Asks to watch `mountpoint`; returns Janus's offer.
async fn watch(
    handle_url: &str,
    mountpoint: u64,
    mut events: mpsc::UnboundedReceiver<Value>,
) -> Result<String, ViewerError> {
    let body = json!({"janus":"message","body":{"request":"watch","id":mountpoint}});
    post(handle_url, body).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| ViewerError::Timeout("offer from Janus", Duration::from_secs(10)))?
            .ok_or_else(|| ViewerError::Janus("event poll ended".into()))?;
        if let Some(sdp) = e["jsep"]["sdp"].as_str() {
            return Ok(sdp.to_string());
        }
    }
}

/// Sends the viewer's candidates to Janus as they are gathered.
fn trickle(url: String, mut candidates: peer::Candidates) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(c) = candidates.recv().await {
            let candidate = json!({"candidate":c.candidate,"sdpMid":c.sdp_mid,"sdpMLineIndex":c.sdp_mline_index});
            let _ = post(&url, json!({"janus":"trickle","candidate":candidate})).await;
        }
    })
}

/// One request with a transaction id added; the harness needs no HTTP client crate for it.
async fn post(url: &str, mut body: Value) -> Result<Value, ViewerError> {
    body["transaction"] = json!(format!("{:x}", rand::random::<u64>()));
    http("POST", url, Some(body.to_string())).await
}

/// Plain HTTP/1.0 to Janus on loopback, one connection per request: 1.0 so the reply is never
/// chunked and ends when the connection does.
async fn http(method: &str, url: &str, body: Option<String>) -> Result<Value, ViewerError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ViewerError::Janus(format!("not an http:// URL: {url}")))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let body = body.unwrap_or_default();
    let request = format!(
        "{method} /{path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ViewerError::Janus("bad HTTP response".into()))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let status = head.lines().next().unwrap_or("").to_string();
        return Err(ViewerError::Janus(status));
    }
    let v: Value = serde_json::from_str(payload.trim())?;
    if v["janus"] == "error" {
        return Err(ViewerError::Janus(format!("error: {v}")));
    }
    Ok(v)
}
