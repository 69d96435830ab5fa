//! Serving one running pipeline: the loop that runs while it plays. It watches the bus, the
//! capture thread and who still watches, merges keyframe requests, and applies commands
//! (bitrate live where the encoder takes it; anything else that changes the pipeline ends it
//! with [`Exit::Rebuild`]).

use super::{Exit, MediaCommand, Runner, Running, BEAT_EVERY};
use crate::media::capture::Capture;
use crate::media::error::SnapshotError;
use crate::media::keyframe::Decision;
use crate::media::{live, MediaError, VideoCodec};
use crate::util::sleep_until;
use futures::StreamExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a running pipeline checks whether anyone still wants its frames.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// How long a new pipeline counts as alive before its first frames: a USB camera can take a
/// few seconds to start streaming, an emulated board longer. After this only frames count.
const STARTUP_GRACE: Duration = Duration::from_secs(20);

impl Runner {
    /// Serves the running pipeline until it fails, a command ends it, or shutdown.
    pub(super) async fn serve(
        &mut self,
        run: &Running,
        messages: &mut gst::bus::BusStream,
        capture: &mut Option<Capture>,
        shutdown: &CancellationToken,
    ) -> Result<Exit, MediaError> {
        let mut demand_check = tokio::time::interval(IDLE_CHECK);
        let mut unwatched_since: Option<Instant> = None;
        // Until STARTUP_GRACE has passed the loop vouches for the pipeline; after that only
        // frames do, so a pipeline that stops producing lets the heartbeat go stale.
        let grace_end = tokio::time::Instant::now() + STARTUP_GRACE;
        let mut grace_tick = tokio::time::interval(BEAT_EVERY);
        loop {
            // The sooner of the two encoders' merged keyframe requests.
            let deadline = match (self.limiter.deadline(), self.vp8.limiter.deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                // Cancel-safe: an interval tick fires again next turn if dropped.
                _ = demand_check.tick() => {
                    if let Some(exit) = self.check_demand(run, &mut unwatched_since) {
                        return Ok(exit);
                    }
                }
                // Cancel-safe: level-triggered token.
                _ = shutdown.cancelled() => return Ok(Exit::Shutdown),
                // Cancel-safe: a bus stream yields whole messages; none is lost when dropped.
                msg = messages.next() => {
                    if let Some(e) = bus_message(msg) {
                        return Err(e);
                    }
                }
                // Cancel-safe: mpsc recv.
                Some(cmd) = self.shared.commands.recv() => {
                    if let Some(exit) = self.apply(cmd, run, &mut unwatched_since) {
                        return Ok(exit);
                    }
                }
                // Cancel-safe: a timer; recreated each turn from the limiters' state.
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let now = Instant::now();
                    if self.limiter.poll(now) {
                        live::force_keyframe(&run.built.sink);
                    }
                    self.vp8.poll_keyframe(now);
                }
                // Cancel-safe: an interval tick that is dropped is taken on a later turn.
                _ = grace_tick.tick(), if tokio::time::Instant::now() < grace_end => {
                    self.shared.heartbeat.beat();
                }
                // Cancel-safe: a oneshot keeps its value until read (see `Capture::ended`).
                e = Capture::ended(capture) => return Err(e),
            }
        }
    }

    /// The periodic look at who watches: the VP8 viewers' receivers are dropped without a
    /// message, and an unwatched pipeline stops after `idle_stop`.
    fn check_demand(
        &mut self,
        run: &Running,
        unwatched_since: &mut Option<Instant>,
    ) -> Option<Exit> {
        self.sync_vp8(&run.built.pipeline, run.picture);
        if !self.is_idle() {
            *unwatched_since = None;
            return None;
        }
        let since = *unwatched_since.get_or_insert_with(Instant::now);
        let idle_stop = Duration::from_secs(self.asked.source.idle_stop_secs);
        if since.elapsed() < idle_stop {
            return None;
        }
        tracing::info!("no viewers for {idle_stop:?}: pipeline stopped, camera closed");
        Some(Exit::Idle)
    }

    /// A command while `run` plays; returns how the pipeline ends when the command ends it.
    fn apply(
        &mut self,
        cmd: MediaCommand,
        run: &Running,
        unwatched_since: &mut Option<Instant>,
    ) -> Option<Exit> {
        match cmd {
            MediaCommand::Demand => {
                *unwatched_since = None;
                self.sync_vp8(&run.built.pipeline, run.picture);
            }
            MediaCommand::Keyframe(VideoCodec::H264) => {
                if self.limiter.request(Instant::now()) == Decision::Force {
                    live::force_keyframe(&run.built.sink);
                }
            }
            MediaCommand::Keyframe(VideoCodec::Vp8) => self.vp8.request_keyframe(Instant::now()),
            MediaCommand::SetBitrate(kbps) => return self.set_bitrate(run, kbps),
            MediaCommand::Reconfigure { width, height, fps } => {
                self.resize(width, height, fps);
                tracing::info!("video now {width}x{height} at {fps} fps; rebuilding the pipeline");
                return Some(Exit::Rebuild);
            }
            MediaCommand::Orient(o) => {
                self.orient(o);
                tracing::info!("orientation changed; rebuilding the pipeline");
                return Some(Exit::Rebuild);
            }
            MediaCommand::Restart => {
                tracing::info!("pipeline restart requested");
                return Some(Exit::Rebuild);
            }
            MediaCommand::Streaming(false) => {
                tracing::info!("streaming switched off; camera released");
                self.asked.streaming = false;
                self.shared.info.send_modify(|i| i.streaming = false);
                return Some(Exit::Paused);
            }
            MediaCommand::Streaming(true) => {}
            MediaCommand::InjectError(message) => live::inject_error(&run.built.pipeline, &message),
            MediaCommand::Snapshot(reply) => {
                live::snapshot(
                    run.built.rawsink.as_ref(),
                    reply,
                    SnapshotError::Passthrough,
                );
            }
        }
        None
    }

    /// A new bitrate for the running encoders: live where the encoder takes it, else by a
    /// rebuild.
    fn set_bitrate(&mut self, run: &Running, kbps: u32) -> Option<Exit> {
        self.asked.settings.bitrate_kbps = kbps;
        self.vp8.set_bitrate(kbps);
        // The H.264 level stays what the pipeline started with, even if the new bitrate is
        // past its limit: rebuilding for that would interrupt every viewer at each change
        // (bitrate adaptation makes many), and browsers do not enforce a level's bitrate
        // limit. The next rebuild picks the level for the bitrate then.
        if live::set_bitrate(&run.built.pipeline, &self.choice.spec, kbps) {
            tracing::info!("bitrate now {kbps} kbit/s");
            self.shared.info.send_modify(|i| i.bitrate_kbps = kbps);
            None
        } else {
            tracing::info!("bitrate now {kbps} kbit/s; rebuilding the pipeline to apply it");
            Some(Exit::Rebuild)
        }
    }
}

/// What a bus message means for the pipeline: the error that ends it, if it is one.
fn bus_message(msg: Option<gst::Message>) -> Option<MediaError> {
    let Some(msg) = msg else {
        return Some(MediaError::Ended {
            what: "bus",
            why: "bus closed",
        });
    };
    match msg.view() {
        gst::MessageView::Error(err) => Some(MediaError::Element {
            element: err
                .src()
                .map(|s| s.path_string().to_string())
                .unwrap_or_default(),
            source: err.error(),
            debug: err.debug().map(|d| d.to_string()),
        }),
        gst::MessageView::Eos(_) => Some(MediaError::Ended {
            what: "pipeline",
            why: "end of stream",
        }),
        gst::MessageView::Warning(w) => {
            tracing::warn!("pipeline warning: {}", w.error());
            None
        }
        _ => None,
    }
}
