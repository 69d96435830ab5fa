//! One viewer's session: answer its offer, trade candidates, then send it the shared video
//! until it leaves, fails or is told to end.
//!
//! A session owns its peer connection and nothing shared: what bitrate adaptation needs it
//! sends the manager ([`ViewerNote`]), and the pace the manager decides for it comes back as
//! [`SessionInput::Pace`]. The viewer's control data channel is handed on as it opens
//! ([`OpenedChannel`]), for the application to serve.

use super::adapt::{ByteBudget, Report};
use super::peer::{
    AudioOptions, ControlChannel, Microphone, Offer, Peer, PeerError, PeerEvent, PeerFactory,
    PeerState,
};
use super::table::{Generation, Label};
use super::OpenedChannel;
use crate::codec::VideoCodec;
use crate::logging::error_text;
use crate::media::audio::AudioPacket;
use crate::media::latency::Stage;
use crate::media::{EncodedFrame, Media};
use crate::signalling::protocol::{Candidate, ErrorCode, Outbound, ProtocolError};
use crate::signalling::sdp::OfferSummary;
use crate::signalling::Outgoing;
use crate::util::sleep_until;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

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
    End {
        reason: String,
        tell_viewer: bool,
    },
    /// Bitrate adaptation's decision for this viewer: paced at this many kbit/s (skipping to
    /// keyframes) because it cannot take the encoder's rate, or `None` for every frame.
    Pace(Option<u32>),
    /// The viewer's offer with new ICE credentials: restart ICE, answer with rtcam's new ones.
    Restart(String),
}

/// What a session tells the manager about itself. One queue carries a session's notes, so they
/// arrive in the order it sent them (its `Ended` after its `Connected`).
#[derive(Debug)]
pub struct FromViewer {
    pub sid: String,
    pub generation: Generation,
    pub note: ViewerNote,
}

#[derive(Debug)]
pub enum ViewerNote {
    /// The connection is up (DTLS done): bitrate adaptation counts this viewer from now on.
    Connected,
    /// The viewer's reception feedback over the last stats interval.
    Feedback(Report),
    /// The session is over; its slot is free.
    Ended,
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
    /// What the offer contains, read once when the table checked it.
    pub offer: OfferSummary,
    /// What the viewer receives, decided from its offer: frames and keyframe requests go to
    /// that codec's encoder.
    pub codec: VideoCodec,
    pub factory: Arc<PeerFactory>,
    pub media: Media,
    pub outgoing: mpsc::Sender<Outgoing>,
    pub input: mpsc::UnboundedReceiver<SessionInput>,
    /// The manager's queue for this session's notes.
    pub notes: mpsc::UnboundedSender<FromViewer>,
    pub disconnect_timeout: Duration,
    pub stats: Arc<super::SessionStats>,
    /// Where the viewer's control data channel goes when it opens.
    pub channels: mpsc::UnboundedSender<OpenedChannel>,
    /// Whether the viewer may be heard on the board (its token grants `talk`, or the camera
    /// is open). Without it, its audio is answered as on a camera without talkback.
    pub may_talk: bool,
    /// Whether the viewer's token grants `control` (goes with its data channel).
    pub may_control: bool,
}

/// How often a session measures its round-trip time and send rate, and hands the viewer's
/// RTCP feedback to bitrate adaptation (which updates an estimate at most once a second).
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Frames held between ICE connected and DTLS done: two seconds at 30 fps.
const HELD_FRAMES_MAX: usize = 60;

/// Whether `drive` goes on, or ends for a reason (and whether to tell the viewer).
type Flow = ControlFlow<(String, bool)>;

/// The connected part of a session: its peer and what `drive`'s branches share.
struct Link {
    peer: Peer,
    /// When the offer arrived.
    started: Instant,
    frames: Option<broadcast::Receiver<EncodedFrame>>,
    sound: Option<broadcast::Receiver<AudioPacket>>,
    /// Plays the viewer's microphone (talkback); lives as long as the session, no longer.
    microphone_task: Option<tokio::task::JoinHandle<()>>,
    /// Ends the control channel handed on last, when the viewer opens another.
    channel: Option<CancellationToken>,
    waiting_for_keyframe: bool,
    /// Frames arrive from ICE connected on, but the track can carry them only once DTLS is
    /// done: until then the newest keyframe and what follows it wait in `held`.
    secure: bool,
    held: Vec<EncodedFrame>,
    deadline: Option<Instant>,
    /// The last frame failed to send; the next failure is not logged again.
    write_failed: bool,
    /// Bytes sent at the last stats tick.
    last_bytes: u64,
    /// Set while this viewer cannot take the encoder's rate: its frames are paced to its own
    /// estimate, skipping to keyframes (see `adapt`).
    budget_kbps: Option<u32>,
    budget: ByteBudget,
}

impl Link {
    fn new(peer: Peer, started: Instant) -> Self {
        Self {
            peer,
            started,
            frames: None,
            sound: None,
            microphone_task: None,
            channel: None,
            waiting_for_keyframe: true,
            secure: false,
            held: Vec::new(),
            deadline: Some(Instant::now() + CONNECT_TIMEOUT),
            write_failed: false,
            last_bytes: 0,
            budget_kbps: None,
            budget: ByteBudget::new(Instant::now()),
        }
    }

    /// Why the deadline ended the session. Not `frames`: those start at ICE connected, before
    /// DTLS; a handshake that never finishes is a connection never established.
    fn timed_out(&self) -> (String, bool) {
        if self.secure {
            ("the viewer was disconnected for too long".into(), true)
        } else {
            ("the connection was not established in time".into(), true)
        }
    }

    async fn close(self) {
        if let Some(task) = self.microphone_task {
            task.abort();
        }
        // Closing the peer also ends the control channel it handed on.
        self.peer.close().await;
    }
}

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
        let offer = Offer {
            sdp: &self.offer_sdp,
            summary: &self.offer,
        };
        match self
            .factory
            .answer(offer, self.codec, events_tx, audio)
            .await
        {
            Ok((peer, answer)) => {
                tracing::debug!(sid = %self.sid, "answer ready in {} µs", started.elapsed().as_micros());
                self.send(Outbound::Answer { sdp: answer }).await;
                let (reason, tell_viewer) = self.drive(peer, events, started).await;
                tracing::info!(session = %self.label, "session ended: {reason}");
                if tell_viewer {
                    self.send(Outbound::Bye { reason }).await;
                }
            }
            Err(e) => self.refuse(&e).await,
        }
        self.note(ViewerNote::Ended);
    }

    /// Tells the viewer why its offer could not be answered.
    async fn refuse(&self, e: &PeerError) {
        let cause = error_text(e);
        tracing::info!(session = %self.label, "cannot answer offer: {cause}");
        let refusal = match e {
            PeerError::Offer(_) => ProtocolError::new(
                ErrorCode::BadSdp,
                format!("The offer cannot be used: {cause}."),
            ),
            _ => ProtocolError::new(
                ErrorCode::Internal,
                format!("The camera could not set up the connection: {cause}."),
            ),
        };
        self.send(refusal.into()).await;
    }

    fn note(&self, note: ViewerNote) {
        let _ = self.notes.send(FromViewer {
            sid: self.sid.clone(),
            generation: self.generation,
            note,
        });
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
        peer: Peer,
        mut events: mpsc::UnboundedReceiver<PeerEvent>,
        started: Instant,
    ) -> (String, bool) {
        let mut link = Link::new(peer, started);
        let mut stats_tick = tokio::time::interval(STATS_EVERY);
        let outcome = loop {
            let flow = tokio::select! {
                // Cancel-safe: mpsc recv.
                input = self.input.recv() => self.on_input(&mut link, input).await,
                // Cancel-safe: mpsc recv.
                Some(event) = events.recv() => self.on_peer_event(&mut link, event).await,
                // Cancel-safe: broadcast recv loses nothing when dropped before completing.
                frame = recv_frame(&mut link.frames) => self.on_frame(&mut link, frame).await,
                // Cancel-safe: broadcast recv loses nothing when dropped before completing.
                // Written as it comes, like the video: both leave the pipeline by the same clock
                // (see `media::audio`), so sending at once keeps them in step.
                packet = recv_audio(&mut link.sound) => self.on_audio(&mut link, packet).await,
                // Cancel-safe: see `Peer::keyframe_request`. The media task merges requests
                // from every viewer, so a lossy one cannot flood the encoder with keyframes.
                () = link.peer.keyframe_request() => {
                    tracing::debug!(sid = %self.sid, "viewer asked for a keyframe (PLI/FIR)");
                    self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    self.media.request_keyframe_for(self.codec);
                    Flow::Continue(())
                }
                // Cancel-safe: an interval tick is not lost by being dropped, it fires next turn.
                _ = stats_tick.tick() => {
                    self.on_stats_tick(&mut link).await;
                    Flow::Continue(())
                }
                // Cancel-safe: a timer recreated each turn.
                () = sleep_until(link.deadline), if link.deadline.is_some() => {
                    Flow::Break(link.timed_out())
                }
            };
            if let Flow::Break(outcome) = flow {
                break outcome;
            }
        };
        link.close().await;
        outcome
    }

    async fn on_input(&self, link: &mut Link, input: Option<SessionInput>) -> Flow {
        match input {
            Some(SessionInput::Candidate(c)) => {
                if c.is_end_of_candidates() || c.is_mdns() {
                    return Flow::Continue(());
                }
                // One bad candidate is the viewer's problem, not a reason to end.
                if let Err(e) = link.peer.add_remote_candidate(&c).await {
                    tracing::debug!(sid = %self.sid, "ignored remote candidate: {}", error_text(&e));
                }
            }
            Some(SessionInput::Restart(offer)) => self.restart_ice(link, &offer).await,
            Some(SessionInput::Pace(paced)) => {
                if let (Some(kbps), None) = (paced, link.budget_kbps) {
                    tracing::info!(session = %self.label, "viewer below the encoder's rate: pacing it at {kbps} kbit/s");
                    link.budget = ByteBudget::new(Instant::now());
                }
                link.budget_kbps = paced;
            }
            Some(SessionInput::End {
                reason,
                tell_viewer,
            }) => return Flow::Break((reason, tell_viewer)),
            None => return Flow::Break(("camera shutting down".into(), true)),
        }
        Flow::Continue(())
    }

    async fn on_peer_event(&self, link: &mut Link, event: PeerEvent) -> Flow {
        match event {
            PeerEvent::LocalCandidate(mut c) => {
                if c.sdp_mid.is_none() {
                    c.sdp_mid = Some(link.peer.mid().to_string());
                    c.sdp_mline_index = Some(0);
                }
                self.send(Outbound::Candidate(c)).await;
            }
            PeerEvent::GatheringComplete => {
                self.send(Outbound::Candidate(Candidate {
                    candidate: String::new(),
                    sdp_mid: Some(link.peer.mid().to_string()),
                    sdp_mline_index: Some(0),
                }))
                .await;
            }
            // DTLS still has a round trip or two to go: asking for the keyframe now lets the
            // encoder make it meanwhile (docs/benchmarks.md).
            PeerEvent::IceConnected => self.subscribe(link),
            PeerEvent::State(PeerState::Connected) => self.on_connected(link).await,
            PeerEvent::State(PeerState::Disconnected) => {
                self.stats.connected.store(false, Ordering::Relaxed);
                link.deadline = Some(Instant::now() + self.disconnect_timeout);
            }
            PeerEvent::State(PeerState::Failed) => {
                return Flow::Break(("connection failed (ICE)".into(), true))
            }
            PeerEvent::State(PeerState::Closed) => {
                return Flow::Break(("connection closed".into(), false))
            }
            PeerEvent::State(PeerState::Connecting) => {}
            PeerEvent::Microphone(mic) => self.play_microphone(link, mic),
            PeerEvent::ControlChannel(channel) => self.hand_on(link, channel),
        }
        Flow::Continue(())
    }

    /// Restarts ICE on the viewer's new offer and answers it; a failed restart is the viewer's
    /// refusal, and the session goes on as it was (its disconnect timeout still runs).
    async fn restart_ice(&self, link: &mut Link, offer: &str) {
        match link.peer.restart_ice(offer).await {
            Ok(answer) => {
                tracing::info!(session = %self.label, "ICE restarted at the viewer's request");
                self.send(Outbound::Answer { sdp: answer }).await;
            }
            Err(e) => {
                let cause = error_text(&e);
                tracing::info!(session = %self.label, "cannot restart ICE: {cause}");
                let refusal = ProtocolError::new(
                    ErrorCode::BadSdp,
                    format!("The ICE restart cannot be done: {cause}."),
                );
                self.send(refusal.into()).await;
            }
        }
    }

    /// Starts taking frames (and sound), once, and asks for a keyframe now rather than at the
    /// next scheduled one: the viewer sees nothing until one arrives.
    fn subscribe(&self, link: &mut Link) {
        if link.frames.is_some() {
            return;
        }
        link.frames = Some(self.media.subscribe_codec(self.codec));
        // After the video: subscribing to it is what starts the pipeline that the audio runs in.
        if link.peer.has_audio() {
            link.sound = self.media.subscribe_audio();
        }
        self.media.request_keyframe_for(self.codec);
    }

    /// DTLS is done: the held frames go out, and adaptation counts this viewer.
    async fn on_connected(&self, link: &mut Link) {
        link.deadline = None;
        self.stats.connected.store(true, Ordering::Relaxed);
        if !link.secure {
            tracing::info!(session = %self.label, codec = self.codec.as_str(), "viewer connected after {} ms", link.started.elapsed().as_millis());
            link.secure = true;
            self.note(ViewerNote::Connected);
        }
        self.subscribe(link);
        for frame in std::mem::take(&mut link.held) {
            self.write_frame(link, &frame).await;
        }
    }

    /// Plays the viewer's microphone on the board's speaker (talkback), once per session.
    fn play_microphone(&self, link: &mut Link, mut mic: Microphone) {
        let (Some(talkback), None) = (self.media.talkback().cloned(), &link.microphone_task) else {
            return;
        };
        // The speaker's holder is named by the label: talkback logs it.
        let talker = self.label.to_string();
        link.microphone_task = Some(tokio::spawn(async move {
            // Frees the speaker however the task ends, aborted included.
            let _release = Release(talkback.clone(), talker.clone());
            while let Some(opus) = mic.next().await {
                talkback.play(&talker, opus);
            }
        }));
    }

    /// Hands the viewer's control channel on to be served; a newer one replaces the last.
    fn hand_on(&self, link: &mut Link, channel: ControlChannel) {
        if let Some(old) = link.channel.replace(channel.ender()) {
            old.cancel();
        }
        let _ = self.channels.send(OpenedChannel {
            channel,
            label: self.label,
            may_control: self.may_control,
        });
    }

    async fn on_frame(
        &self,
        link: &mut Link,
        frame: Result<EncodedFrame, broadcast::error::RecvError>,
    ) -> Flow {
        let frame = match frame {
            Ok(frame) => frame,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // This viewer fell behind; skipping to a fresh keyframe is the only way to show
                // a clean picture again.
                tracing::debug!(sid = %self.sid, "viewer lagged {n} frames; waiting for a keyframe");
                link.waiting_for_keyframe = true;
                self.skipped(n);
                self.media.request_keyframe_for(self.codec);
                return Flow::Continue(());
            }
            Err(broadcast::error::RecvError::Closed) => {
                return Flow::Break(("video source ended".into(), true))
            }
        };
        if link.waiting_for_keyframe && !frame.keyframe {
            self.skipped(1);
            return Flow::Continue(());
        }
        link.waiting_for_keyframe = false;
        if !link.secure {
            if frame.keyframe {
                link.held.clear();
            }
            // Bounded: DTLS that takes longer than this has failed anyway.
            if link.held.len() < HELD_FRAMES_MAX {
                link.held.push(frame);
            }
            return Flow::Continue(());
        }
        if let Some(kbps) = link.budget_kbps {
            if !link
                .budget
                .admit(frame.data.len(), frame.keyframe, kbps, Instant::now())
            {
                self.skipped(1);
                return Flow::Continue(());
            }
        }
        self.write_frame(link, &frame).await;
        Flow::Continue(())
    }

    async fn on_audio(
        &self,
        link: &mut Link,
        packet: Result<AudioPacket, broadcast::error::RecvError>,
    ) -> Flow {
        match packet {
            // Sound from before DTLS is done is dropped, not held: unlike video, the next
            // packet needs nothing from this one.
            Ok(_) if !link.secure => {}
            Ok(packet) => {
                if let Err(e) = link.peer.write_audio(&packet).await {
                    tracing::trace!(sid = %self.sid, "cannot send audio: {}", error_text(&e));
                }
            }
            // A lagging viewer just misses some sound; the next packet plays on.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => link.sound = None,
        }
        Flow::Continue(())
    }

    /// Measures the round trip and send rate, and hands the viewer's RTCP feedback on to
    /// bitrate adaptation (the manager's).
    async fn on_stats_tick(&self, link: &mut Link) {
        let (rtt, path) = link.peer.link().await;
        if let Some(rtt) = rtt {
            self.stats
                .rtt_us
                .store(rtt.as_micros() as u64, Ordering::Relaxed);
        }
        if path.is_some() {
            *self.stats.path.lock().unwrap_or_else(|e| e.into_inner()) = path;
        }
        let feedback = link.peer.take_feedback();
        // The peer's figures are this session's running totals; the process-wide counters
        // take what they grew by since the last turn.
        let totals = &self.media.stats().viewers;
        let count = |own: &AtomicU64, total: &AtomicU64, now: u64| {
            let before = own.swap(now, Ordering::Relaxed);
            total.fetch_add(now.saturating_sub(before), Ordering::Relaxed);
        };
        count(
            &self.stats.nacked_packets,
            &totals.nacked_packets,
            feedback.nacked_packets,
        );
        count(
            &self.stats.retransmitted_packets,
            &totals.retransmitted_packets,
            feedback.retransmitted_packets,
        );
        if let Some(loss) = feedback.losses.fraction() {
            self.stats
                .loss_centipercent
                .store((loss * 10_000.0).round() as u64, Ordering::Relaxed);
        }
        self.note(ViewerNote::Feedback(Report {
            losses: feedback.losses,
            remb_kbps: feedback.remb_kbps,
        }));
        let bytes = self.stats.bytes_sent.load(Ordering::Relaxed);
        let kbps = (bytes - link.last_bytes) * 8 / 1000 / STATS_EVERY.as_secs();
        self.stats.bitrate_kbps.store(kbps, Ordering::Relaxed);
        link.last_bytes = bytes;
    }

    /// Sends one frame on the viewer's track, counting it; a failure is logged once per run
    /// of failures (a viewer going away fails every frame until the session ends).
    async fn write_frame(&self, link: &mut Link, frame: &EncodedFrame) {
        match link.peer.write_frame(frame).await {
            Ok(()) => {
                link.write_failed = false;
                let media = self.media.stats();
                let latency = &media.latency;
                latency.record(Stage::EncodedToSent, frame.produced.elapsed());
                latency.record(Stage::CaptureToSent, frame.captured.elapsed());
                let sent = self.stats.count_sent(&media.viewers, frame.data.len());
                if sent == 0 {
                    let ms = link.started.elapsed().as_millis().max(1) as u64;
                    self.stats.first_frame_ms.store(ms, Ordering::Relaxed);
                    tracing::info!(session = %self.label, "first frame sent {ms} ms after the offer");
                }
            }
            Err(e) if !link.write_failed => {
                tracing::debug!(sid = %self.sid, "cannot send frame: {}", error_text(&e));
                link.write_failed = true;
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
