//! One viewer's session: answer its offer, trade candidates, then send it the shared video
//! until it leaves, fails or is told to end.

use super::adapt::{Adaptation, ByteBudget, Report};
use super::peer::{AudioOptions, Peer, PeerError, PeerEvent, PeerFactory, PeerState};
use super::table::{Generation, Label};
use crate::media::audio::AudioPacket;
use crate::media::latency::Stage;
use crate::codec::VideoCodec;
use crate::media::{EncodedFrame, Media};
use crate::signalling::protocol::{Candidate, ErrorCode, Outbound, ProtocolError};
use crate::signalling::Outgoing;
use crate::util::sleep_until;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// A session that has not connected by then is abandoned (a viewer that sent an offer and
/// vanished, or whose candidates never arrive), and its slot freed. Until then it holds one of
/// `max_sessions`, so replayed offers that never connect would keep real viewers out for this
/// long. Connecting (ICE, through a TURN relay included, and DTLS) takes well under a second on
/// a LAN and a few seconds through a lossy path with retransmissions (tests/dtls_loss.rs), so
/// 10 s leaves room for a slow viewer while an unconnected slot is back within seconds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the manager tells a running session.
#[derive(Debug)]
pub enum SessionInput {
    Candidate(Candidate),
    End { reason: String, tell_viewer: bool },
}

/// A session's logs at info level and above name it by `label`; those at debug level and
/// below may carry `sid` too, to follow one viewer's messages on a board one controls.
pub struct Viewer {
    /// The secret the viewer's topics and MQTT client id are made of: used to address it, shown
    /// to nobody else.
    pub sid: String,
    /// The session's public name (see [`Label`]).
    pub label: Label,
    pub generation: Generation,
    pub offer_sdp: String,
    /// What the viewer receives, decided from its offer: frames and keyframe requests go to
    /// that codec's encoder.
    pub codec: VideoCodec,
    pub factory: Arc<PeerFactory>,
    pub media: Media,
    pub outgoing: mpsc::Sender<Outgoing>,
    pub input: mpsc::UnboundedReceiver<SessionInput>,
    pub ended: mpsc::UnboundedSender<(String, Generation)>,
    pub disconnect_timeout: Duration,
    pub stats: Arc<super::SessionStats>,
    pub controller: crate::control::exec::Controller,
    pub requester: crate::control::exec::Requester,
    /// Bitrate adaptation shared with the other sessions, when it is on.
    pub adaptation: Option<Arc<Mutex<Adaptation>>>,
    /// Whether the viewer may be heard on the board (its token grants `talk`, or the camera
    /// is open). Without it, its audio is answered as on a camera without talkback.
    pub may_talk: bool,
}

/// How often a session measures its round-trip time and send rate, and hands the viewer's
/// RTCP feedback to bitrate adaptation (which updates an estimate at most once a second).
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Frames held between ICE connected and DTLS done: two seconds at 30 fps.
const HELD_FRAMES_MAX: usize = 60;

impl Viewer {
    pub async fn run(mut self) {
        let started = Instant::now();
        let (events_tx, events) = mpsc::unbounded_channel();
        let talkback = self.media.talkback().is_some();
        if talkback && !self.may_talk {
            tracing::debug!(sid = %self.sid, "talkback off for this viewer: its token does not grant talk, so its sound is dropped");
        }
        let audio = AudioOptions {
            send: self.media.has_audio(),
            talkback: talkback && self.may_talk,
        };
        match self
            .factory
            .answer(&self.offer_sdp, self.codec, events_tx, audio)
            .await
        {
            Ok((peer, answer)) => {
                tracing::debug!(sid = %self.sid, "answer ready in {} µs", started.elapsed().as_micros());
                self.send(Outbound::Answer { sdp: answer }).await;
                let (reason, tell_viewer) = self.drive(peer, events, started).await;
                self.with_adaptation(|a| a.leave(&self.label.to_string()));
                tracing::info!(session = %self.label, "session ended: {reason}");
                if tell_viewer {
                    self.send(Outbound::Bye { reason }).await;
                }
            }
            Err(e) => {
                let code = match e {
                    PeerError::Offer(_) => ErrorCode::BadSdp,
                    _ => ErrorCode::Internal,
                };
                tracing::info!(session = %self.label, "cannot answer offer: {e}");
                let msg = match code {
                    ErrorCode::BadSdp => format!("The offer cannot be used: {e}."),
                    _ => format!("The camera could not set up the connection: {e}."),
                };
                self.send(ProtocolError::new(code, msg).into()).await;
            }
        }
        let _ = self.ended.send((self.sid.clone(), self.generation));
    }

    /// Runs `f` on the shared adaptation state, if adaptation is on. Never held across an
    /// await: the lock is a plain mutex shared by every session.
    fn with_adaptation<T>(&self, f: impl FnOnce(&mut Adaptation) -> T) -> Option<T> {
        self.adaptation
            .as_ref()
            .map(|a| f(&mut a.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// Counts `n` frames this viewer did not get, in its session and process-wide.
    fn skipped(&self, n: u64) {
        self.stats.frames_skipped.fetch_add(n, Ordering::Relaxed);
        self.media
            .stats()
            .viewers
            .frames_skipped
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Hands the viewer's RTCP feedback to adaptation, applies an encoder change it decides,
    /// and returns this viewer's own budget (when it cannot take the encoder's rate).
    fn adapt(&self, peer: &Peer) -> Option<u32> {
        let feedback = peer.take_feedback();
        // The peer's figures are this session's running totals; the process-wide counters
        // take what they grew by since the last turn.
        let totals = &self.media.stats().viewers;
        let before = self
            .stats
            .nacked_packets
            .swap(feedback.nacked_packets, Ordering::Relaxed);
        totals.nacked_packets.fetch_add(
            feedback.nacked_packets.saturating_sub(before),
            Ordering::Relaxed,
        );
        let before = self
            .stats
            .retransmitted_packets
            .swap(feedback.retransmitted_packets, Ordering::Relaxed);
        totals.retransmitted_packets.fetch_add(
            feedback.retransmitted_packets.saturating_sub(before),
            Ordering::Relaxed,
        );
        if let Some(loss) = feedback.losses.fraction() {
            self.stats
                .loss_centipercent
                .store((loss * 10_000.0).round() as u64, Ordering::Relaxed);
        }
        let now = Instant::now();
        let (change, estimate, budget) = self.with_adaptation(|a| {
            let report = Report {
                losses: feedback.losses,
                remb_kbps: feedback.remb_kbps,
            };
            let key = self.label.to_string();
            a.report(&key, report, now);
            (
                a.encoder_change(now),
                a.estimate_kbps(&key),
                a.budget_kbps(&key),
            )
        })?;
        if let Some(kbps) = change {
            tracing::info!(session = %self.label, "bitrate adaptation: encoder to {kbps} kbit/s");
            self.media.set_bitrate(kbps);
        }
        if let Some(e) = estimate {
            self.stats
                .estimate_kbps
                .store(u64::from(e), Ordering::Relaxed);
        }
        self.stats.paced.store(budget.is_some(), Ordering::Relaxed);
        budget
    }

    async fn send(&self, message: Outbound) {
        let _ = self
            .outgoing
            .send(Outgoing {
                sid: self.sid.clone(),
                message,
            })
            .await;
    }

    /// Runs the connected part of the session; returns why it ended and whether to say bye.
    async fn drive(
        &mut self,
        mut peer: Peer,
        mut events: mpsc::UnboundedReceiver<PeerEvent>,
        started: Instant,
    ) -> (String, bool) {
        let mut frames: Option<broadcast::Receiver<EncodedFrame>> = None;
        let mut sound: Option<broadcast::Receiver<AudioPacket>> = None;
        // Plays the viewer's microphone (talkback); lives as long as the session, no longer.
        let mut microphone_task: Option<tokio::task::JoinHandle<()>> = None;
        let mut waiting_for_keyframe = true;
        // Frames arrive from ICE connected on, but the track can carry them only once DTLS is
        // done: until then the newest keyframe and what follows it wait here.
        let mut secure = false;
        let mut held: Vec<EncodedFrame> = Vec::new();
        let mut deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        let mut write_failed = false;
        let mut stats_tick = tokio::time::interval(STATS_EVERY);
        // The control channel's task lives as long as the session, no longer.
        let mut channel_task: Option<tokio::task::JoinHandle<()>> = None;
        let mut last_bytes = 0u64;
        // Set while this viewer cannot take the encoder's rate: its frames are paced to its
        // own estimate, skipping to keyframes (see `adapt`).
        let mut budget_kbps: Option<u32> = None;
        let mut budget = ByteBudget::new(Instant::now());
        let outcome = loop {
            tokio::select! {
                // Cancel-safe: mpsc recv.
                input = self.input.recv() => match input {
                    Some(SessionInput::Candidate(c)) => {
                        if c.is_end_of_candidates() || c.is_mdns() {
                            continue;
                        }
                        // One bad candidate is the viewer's problem, not a reason to end.
                        if let Err(e) = peer.add_remote_candidate(&c).await {
                            tracing::debug!(sid = %self.sid, "ignored remote candidate: {e}");
                        }
                    }
                    Some(SessionInput::End { reason, tell_viewer }) => break (reason, tell_viewer),
                    None => break ("camera shutting down".into(), true),
                },
                // Cancel-safe: mpsc recv.
                Some(event) = events.recv() => match event {
                    PeerEvent::LocalCandidate(mut c) => {
                        if c.sdp_mid.is_none() {
                            c.sdp_mid = Some(peer.mid().to_string());
                            c.sdp_mline_index = Some(0);
                        }
                        self.send(Outbound::Candidate(c)).await;
                    }
                    PeerEvent::GatheringComplete => {
                        self.send(Outbound::Candidate(Candidate {
                            candidate: String::new(),
                            sdp_mid: Some(peer.mid().to_string()),
                            sdp_mline_index: Some(0),
                        }))
                        .await;
                    }
                    PeerEvent::IceConnected => {
                        // DTLS still has a round trip or two to go: asking for the keyframe
                        // now lets the encoder make it meanwhile (docs/benchmarks.md).
                        if frames.is_none() {
                            frames = Some(self.media.subscribe_codec(self.codec));
                            // After the video: subscribing to it is what starts the pipeline
                            // that the audio runs in.
                            if peer.has_audio() {
                                sound = self.media.subscribe_audio();
                            }
                            // Ask now, not at the next scheduled keyframe: the viewer sees
                            // nothing until one arrives.
                            self.media.request_keyframe_for(self.codec);
                        }
                    }
                    PeerEvent::State(PeerState::Connected) => {
                        deadline = None;
                        self.stats.connected.store(true, Ordering::Relaxed);
                        if !secure {
                            tracing::info!(session = %self.label, codec = self.codec.as_str(), "viewer connected after {} ms", started.elapsed().as_millis());
                            secure = true;
                            self.with_adaptation(|a| a.join(&self.label.to_string(), Instant::now()));
                        }
                        if frames.is_none() {
                            frames = Some(self.media.subscribe_codec(self.codec));
                            if peer.has_audio() {
                                sound = self.media.subscribe_audio();
                            }
                            self.media.request_keyframe_for(self.codec);
                        }
                        for frame in std::mem::take(&mut held) {
                            self.write_frame(&mut peer, &frame, started, &mut write_failed).await;
                        }
                    }
                    PeerEvent::State(PeerState::Disconnected) => {
                        self.stats.connected.store(false, Ordering::Relaxed);
                        deadline = Some(Instant::now() + self.disconnect_timeout);
                    }
                    PeerEvent::State(PeerState::Failed) => break ("connection failed (ICE)".into(), true),
                    PeerEvent::State(PeerState::Closed) => break ("connection closed".into(), false),
                    PeerEvent::State(PeerState::Connecting) => {}
                    PeerEvent::Microphone(mut mic) => {
                        if let (Some(talkback), None) = (self.media.talkback().cloned(), &microphone_task) {
                            // The speaker's holder is named by the label: talkback logs it.
                            let talker = self.label.to_string();
                            microphone_task = Some(tokio::spawn(async move {
                                // Frees the speaker however the task ends, aborted included.
                                let _release = Release(talkback.clone(), talker.clone());
                                while let Some(opus) = mic.next().await {
                                    talkback.play(&talker, opus);
                                }
                            }));
                        }
                    }
                    PeerEvent::ControlChannel(channel) => {
                        if let Some(old) = channel_task.take() {
                            old.abort();
                        }
                        channel_task = Some(tokio::spawn(crate::control::channel::serve(
                            channel,
                            self.controller.clone(),
                            self.requester,
                            self.label,
                        )));
                    }
                },
                // Cancel-safe: broadcast recv loses nothing when dropped before completing.
                frame = recv_frame(&mut frames) => match frame {
                    Ok(frame) => {
                        if waiting_for_keyframe && !frame.keyframe {
                            self.skipped(1);
                            continue;
                        }
                        waiting_for_keyframe = false;
                        if !secure {
                            if frame.keyframe {
                                held.clear();
                            }
                            // Bounded: DTLS that takes longer than this has failed anyway.
                            if held.len() < HELD_FRAMES_MAX {
                                held.push(frame);
                            }
                            continue;
                        }
                        if let Some(kbps) = budget_kbps {
                            if !budget.admit(frame.data.len(), frame.keyframe, kbps, Instant::now()) {
                                self.skipped(1);
                                continue;
                            }
                        }
                        self.write_frame(&mut peer, &frame, started, &mut write_failed).await;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // This viewer fell behind; skipping to a fresh keyframe is the only
                        // way to show a clean picture again.
                        tracing::debug!(sid = %self.sid, "viewer lagged {n} frames; waiting for a keyframe");
                        waiting_for_keyframe = true;
                        self.skipped(n);
                        self.media.request_keyframe_for(self.codec);
                    }
                    Err(broadcast::error::RecvError::Closed) => break ("video source ended".into(), true),
                },
                // Cancel-safe: broadcast recv loses nothing when dropped before completing.
                // Written as it comes, like the video: both leave the pipeline by the same clock
                // (see `media::audio`), so sending at once keeps them in step.
                packet = recv_audio(&mut sound) => match packet {
                    // Sound from before DTLS is done is dropped, not held: unlike video, the
                    // next packet needs nothing from this one.
                    Ok(_) if !secure => {}
                    Ok(packet) => {
                        if let Err(e) = peer.write_audio(&packet).await {
                            tracing::trace!(sid = %self.sid, "cannot send audio: {e}");
                        }
                    }
                    // A lagging viewer just misses some sound; the next packet plays on.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => sound = None,
                },
                // Cancel-safe: see `Peer::keyframe_request`. The media task merges requests
                // from every viewer, so a lossy one cannot flood the encoder with keyframes.
                _ = peer.keyframe_request() => {
                    tracing::debug!(sid = %self.sid, "viewer asked for a keyframe (PLI/FIR)");
                    self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    self.media.request_keyframe_for(self.codec);
                }
                // Cancel-safe: an interval tick is not lost by being dropped, it fires next turn.
                _ = stats_tick.tick() => {
                    if let Some(rtt) = peer.rtt().await {
                        self.stats.rtt_us.store(rtt.as_micros() as u64, Ordering::Relaxed);
                    }
                    let paced = self.adapt(&peer);
                    if paced.is_some() && budget_kbps.is_none() {
                        tracing::info!(session = %self.label, "viewer below the encoder's rate: pacing it at {} kbit/s", paced.unwrap_or(0));
                        budget = ByteBudget::new(Instant::now());
                    }
                    budget_kbps = paced;
                    let bytes = self.stats.bytes_sent.load(Ordering::Relaxed);
                    let kbps = (bytes - last_bytes) * 8 / 1000 / STATS_EVERY.as_secs();
                    self.stats.bitrate_kbps.store(kbps, Ordering::Relaxed);
                    last_bytes = bytes;
                }
                // Cancel-safe: a timer recreated each turn.
                _ = sleep_until(deadline), if deadline.is_some() => {
                    // Not `frames`: those start at ICE connected, before DTLS; a handshake
                    // that never finishes is a connection never established.
                    break if !secure {
                        ("the connection was not established in time".into(), true)
                    } else {
                        ("the viewer was disconnected for too long".into(), true)
                    };
                }
            }
        };
        if let Some(task) = channel_task {
            task.abort();
        }
        if let Some(task) = microphone_task {
            task.abort();
        }
        peer.close().await;
        outcome
    }
}

impl Viewer {
    /// Sends one frame on the viewer's track, counting it; a failure is logged once per run
    /// of failures (a viewer going away fails every frame until the session ends).
    async fn write_frame(
        &self,
        peer: &mut Peer,
        frame: &EncodedFrame,
        started: Instant,
        write_failed: &mut bool,
    ) {
        match peer.write_frame(frame).await {
            Ok(()) => {
                *write_failed = false;
                let media = self.media.stats();
                let latency = &media.latency;
                latency.record(Stage::EncodedToSent, frame.produced.elapsed());
                latency.record(Stage::CaptureToSent, frame.captured.elapsed());
                let sent = self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                let bytes = frame.data.len() as u64;
                self.stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                media.viewers.frames_sent.fetch_add(1, Ordering::Relaxed);
                media.viewers.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                if sent == 0 {
                    let ms = started.elapsed().as_millis().max(1) as u64;
                    self.stats.first_frame_ms.store(ms, Ordering::Relaxed);
                    tracing::info!(session = %self.label, "first frame sent {ms} ms after the offer");
                }
            }
            Err(e) if !*write_failed => {
                tracing::debug!(sid = %self.sid, "cannot send frame: {e}");
                *write_failed = true;
            }
            Err(_) => {}
        }
    }
}

/// Frees the board's speaker when a talking viewer's microphone task ends.
struct Release(crate::media::audio::Talkback, String);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.release(&self.1);
    }
}

async fn recv_audio(
    sound: &mut Option<broadcast::Receiver<AudioPacket>>,
) -> Result<AudioPacket, broadcast::error::RecvError> {
    match sound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_frame(
    frames: &mut Option<broadcast::Receiver<EncodedFrame>>,
) -> Result<EncodedFrame, broadcast::error::RecvError> {
    match frames {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
