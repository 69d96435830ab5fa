//! What a viewer has seen: frames, packets, sender reports, and when each stage of session
//! setup was reached. Written by the viewer's tasks and GStreamer's threads, read by tests and
//! the benchmark.

use gstreamer as gst;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// When each stage of setup was reached, counted from the moment the offer was published.
#[derive(Debug, Default, Clone)]
pub struct Stages {
    pub answer: Option<Duration>,
    pub ice_connected: Option<Duration>,
    /// The peer connection is `connected`: ICE is, and the DTLS handshake is done.
    pub dtls_connected: Option<Duration>,
    pub first_rtp: Option<Duration>,
    /// The first decoded picture; for a viewer that does not decode, the first whole frame's
    /// RTP (its marker bit).
    pub first_frame: Option<Duration>,
}

/// What the viewer has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Decoded {
    pub frames: usize,
    pub width: i32,
    pub height: i32,
    pub rtp_packets: usize,
    /// Video frames as RTP sees them (packets with the marker bit): what a viewer that does
    /// not decode counts.
    pub rtp_frames: usize,
    /// Highest extended sequence number of the video minus the first, plus one: the packets
    /// that should have come.
    pub expected: usize,
    /// From the offer's creation to the first decoded picture.
    pub first_frame_after: Option<Duration>,
    /// Audio RTP packets received, and Opus buffers decoded from them (audio viewers).
    pub audio_packets: usize,
    pub audio_decoded: usize,
    /// For each packet that arrived after a sender report of its stream: when it arrived minus
    /// when that report's RTP↔NTP mapping says it was sent, in ms, by kind (`true` = audio).
    /// A receiver lines audio and video up with exactly this mapping.
    pub sync_offsets_ms: Vec<(bool, f64)>,
    /// Sender reports received, per SSRC.
    pub sender_reports: HashMap<u32, usize>,
    /// Picture loss indications sent because the decoder lost packets (`recover`).
    pub plis_sent: usize,
    /// Capture-to-decoded ages in ms, one per picture whose barcode read back (`stamps`).
    pub latencies_ms: Vec<i64>,
    /// Pictures with no readable barcode (`stamps`; stays 0 with rtcam's stamp on).
    pub unreadable: u64,
    /// The playout delay (minimum, maximum, in 10 ms units) on the last video packet that
    /// carried the extension, and how many video packets carried it (`playout_delay`).
    pub playout_delay: Option<(u16, u16)>,
    pub playout_delay_packets: usize,
    /// The last decoded picture (a reference to GStreamer's buffer, not a copy), for tests
    /// that look at what the picture shows.
    pub last_sample: Option<gst::Sample>,
    pub stages: Stages,
}

impl Decoded {
    /// Mean luma (0–255) of the last decoded picture's row at `fraction` of its height.
    pub fn row_luma(&self, fraction: f64) -> Option<f64> {
        let sample = self.last_sample.as_ref()?;
        let info = gstreamer_video::VideoInfo::from_caps(sample.caps()?).ok()?;
        let buffer = sample.buffer()?;
        let frame = gstreamer_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).ok()?;
        let row = ((info.height() as f64 * fraction) as usize).min(info.height() as usize - 1);
        let stride = info.stride()[0] as usize;
        let plane = frame.plane_data(0).ok()?;
        let line = &plane[row * stride..row * stride + info.width() as usize];
        Some(line.iter().map(|&y| f64::from(y)).sum::<f64>() / line.len() as f64)
    }
}

/// [`Decoded`] behind a lock, the clock of [`Stages`], and a wake-up for whoever waits on
/// either.
#[derive(Default)]
pub(crate) struct Shared {
    start: Mutex<Option<Instant>>,
    /// The playout-delay extension's id in rtcam's answer, once it came with one.
    playout_delay_id: Mutex<Option<u8>>,
    seen: Mutex<Decoded>,
    changed: Notify,
}

impl Shared {
    /// Starts the stages' clock (the offer goes out).
    pub(crate) fn start_clock(&self) {
        *self.start.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Notes the playout-delay extension's id from rtcam's answer.
    pub(crate) fn set_playout_delay_id(&self, id: Option<u8>) {
        *self
            .playout_delay_id
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = id;
    }

    pub(crate) fn playout_delay_id(&self) -> Option<u8> {
        *self
            .playout_delay_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Records a stage the first time it is reached (once the clock runs).
    pub(crate) fn mark(&self, pick: impl FnOnce(&mut Stages) -> &mut Option<Duration>) {
        let Some(start) = *self.start.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let mut seen = self.seen();
        let slot = pick(&mut seen.stages);
        if slot.is_none() {
            *slot = Some(start.elapsed());
            drop(seen);
            self.changed.notify_waiters();
        }
    }

    /// The figures, to update; [`Shared::changed`] after an update waiters care about.
    pub(crate) fn seen(&self) -> MutexGuard<'_, Decoded> {
        // A poisoned lock only means a callback panicked mid-update; the counts still serve.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// Waits until `done` holds for what was seen, or `timeout` passes; returns what was seen
    /// last, and whether `done` held.
    pub(crate) async fn wait(
        &self,
        timeout: Duration,
        done: impl Fn(&Decoded) -> bool,
    ) -> (Decoded, bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a change between the two is not missed.
            let changed = self.changed.notified();
            // Checked under the lock, cloned only at the end: waiters wake at every packet.
            if done(&self.seen()) {
                return (self.seen().clone(), true);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let seen = self.seen().clone();
                let held = done(&seen);
                return (seen, held);
            }
        }
    }
}
