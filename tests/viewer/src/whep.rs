//! A WHEP player made of the `webrtc` crate's peer connection, for rtcam's WHEP door (`POST
//! /whep`): it offers receive-only video, posts the offer over plain HTTP/1.1 on a TcpStream
//! (no HTTP client crate), and counts the RTP packets and frames (marker bits) that arrive.
//! rtcam's WHEP tests drive its protocol (trickle, ICE restart, refusals) step by step; the
//! benchmark uses it as one more client of the camera.

use crate::{add_recvonly, ViewerError};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit,
    RTCPeerConnectionIceEvent, RTCSessionDescription, Registry, SettingEngineBuilder,
};

/// An HTTP response as the door sent it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The status line and headers, without the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value (names compare without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `POST /whep` with `sdp` as `application/sdp` and these extra headers.
pub async fn post_offer(
    addr: SocketAddr,
    sdp: &str,
    extra: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let mut headers = vec![("Content-Type", "application/sdp")];
    headers.extend_from_slice(extra);
    request(addr, "POST", "/whep", &headers, sdp.as_bytes()).await
}

/// One request over HTTP/1.1 with `Connection: close`, so the reply ends when the connection
/// does (the door sends no chunked replies to it).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    // Host names the address, as a browser's does: rtcam refuses names it does not know.
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok(Reply {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    })
}

struct Handler {
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send(init);
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tracks.send(track);
    }
}

/// What arrived, counted by the track reader.
#[derive(Default)]
struct Counts {
    packets: AtomicUsize,
    /// Packets with the marker bit: the last of a frame.
    frames: AtomicUsize,
}

/// A receive-only video peer on loopback that counts what arrives.
pub struct WhepPlayer {
    /// The peer connection, for a test that drives an ICE restart itself.
    pub pc: Arc<dyn PeerConnection>,
    candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    counts: Arc<Counts>,
    reader: tokio::task::JoinHandle<()>,
}

impl WhepPlayer {
    pub async fn new() -> Result<WhepPlayer, ViewerError> {
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let (cand_tx, candidates) = mpsc::unbounded_channel();
        let (track_tx, mut tracks) = mpsc::unbounded_channel();
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(media)
                .with_interceptor_registry(registry)
                .with_setting_engine(
                    SettingEngineBuilder::new()
                        .with_include_loopback_candidate(true)
                        .build(),
                )
                .with_handler(Arc::new(Handler {
                    candidates: cand_tx,
                    tracks: track_tx,
                }))
                .with_udp_addrs(vec!["127.0.0.1:0"])
                .build()
                .await?,
        );
        add_recvonly(pc.as_ref(), RtpCodecKind::Video).await?;
        let counts = Arc::new(Counts::default());
        let counted = counts.clone();
        let reader = tokio::spawn(async move {
            while let Some(track) = tracks.recv().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    while let Some(event) = track.poll().await {
                        if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                            counted.packets.fetch_add(1, Ordering::Relaxed);
                            if packet.header.marker {
                                counted.frames.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        Ok(WhepPlayer {
            pc,
            candidates,
            counts,
            reader,
        })
    }

    /// The offer, set as the local description; with `gather`, carrying every candidate (no
    /// trickle), else with none yet.
    pub async fn offer(&mut self, gather: bool) -> Result<String, ViewerError> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        let sdp = self
            .pc
            .local_description()
            .await
            .ok_or(ViewerError::NoCandidates)?
            .sdp;
        if !gather {
            // Candidates gathered already may be in the description; a trickling player sends
            // them in its `PATCH` instead.
            return Ok(sdp
                .split_inclusive("\r\n")
                .filter(|l| !l.starts_with("a=candidate:") && !l.starts_with("a=end-of-candidates"))
                .collect());
        }
        let gathered = self.gather().await?;
        let mut out = String::new();
        for line in sdp.split_inclusive("\r\n") {
            out.push_str(line);
            if line.starts_with("a=mid:") {
                for c in &gathered {
                    out.push_str(&format!("a={}\r\n", c.candidate));
                }
            }
        }
        Ok(out)
    }

    /// The candidates gathered so far (loopback gathers within milliseconds).
    pub async fn gather(&mut self) -> Result<Vec<RTCIceCandidateInit>, ViewerError> {
        let mut gathered = Vec::new();
        while let Some(c) = self.next_candidate(Duration::from_millis(500)).await {
            gathered.push(c);
        }
        if gathered.is_empty() {
            return Err(ViewerError::NoCandidates);
        }
        Ok(gathered)
    }

    /// The next candidate gathered, if one comes within `wait`.
    pub async fn next_candidate(&mut self, wait: Duration) -> Option<RTCIceCandidateInit> {
        tokio::time::timeout(wait, self.candidates.recv())
            .await
            .ok()
            .flatten()
    }

    /// Applies the door's answer.
    pub async fn answer(&self, sdp: String) -> Result<(), ViewerError> {
        let answer = RTCSessionDescription::answer(sdp)?;
        self.pc.set_remote_description(answer).await?;
        Ok(())
    }

    /// RTP packets of video received so far.
    pub fn packets(&self) -> usize {
        self.counts.packets.load(Ordering::Relaxed)
    }

    /// Video frames received so far (packets with the marker bit).
    pub fn frames(&self) -> usize {
        self.counts.frames.load(Ordering::Relaxed)
    }

    /// Waits for `n` RTP packets of video, up to `timeout`; returns how many came.
    pub async fn wait_packets(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.packets() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.packets()
    }

    pub async fn close(self) {
        self.reader.abort();
        let _ = self.pc.close().await;
    }
}
