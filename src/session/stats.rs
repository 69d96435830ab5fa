//! What each session reports about itself: live counters its task writes, and the snapshot the
//! `sessions` command, telemetry and `/metrics` read.

use super::table::Label;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// How a viewer's media flows: the selected ICE candidate pair's transport (`udp`, `tcp`) and
/// candidate types (`host`, `srflx`, `prflx`, `relay`) on rtcam's side and the viewer's.
/// `tcp` means ICE over TCP (`[webrtc] tcp_port`); `relay` on either side, through TURN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkPath {
    pub protocol: String,
    pub local: String,
    pub remote: String,
}

/// Live figures of one session, written by its task and read by `sessions` and telemetry.
#[derive(Debug)]
pub struct SessionStats {
    pub started: Instant,
    pub connected: AtomicBool,
    pub frames_sent: AtomicU64,
    /// Frames not sent: waiting for a keyframe, or skipped after falling behind.
    pub frames_skipped: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Offer to first frame sent, in ms; 0 until then.
    pub first_frame_ms: AtomicU64,
    /// PLI/FIR received from the viewer.
    pub keyframe_requests: AtomicU64,
    /// Latest ICE round-trip time in µs; 0 until measured.
    pub rtt_us: AtomicU64,
    /// Send rate over the last few seconds.
    pub bitrate_kbps: AtomicU64,
    /// What the viewer receives, decided from its offer.
    pub codec: crate::codec::VideoCodec,
    /// The door the viewer came through: MQTT or WHEP signalling, or RTSP for a viewer the
    /// session manager only counts ([`super::Sessions::join`]).
    pub transport: crate::signalling::Transport,
    /// Bitrate adaptation's estimate of what this viewer can take; 0 until it has one.
    pub estimate_kbps: AtomicU64,
    /// Loss in the viewer's receiver reports over the last stats interval (packets lost for good
    /// ÷ packets expected), in hundredths of a percent; `u64::MAX` until reports spanned a packet.
    pub loss_centipercent: AtomicU64,
    /// Packets the viewer asked to be resent (NACK).
    pub nacked_packets: AtomicU64,
    /// Packets resent for those NACKs.
    pub retransmitted_packets: AtomicU64,
    /// True while this viewer is paced below the encoder's rate (keyframe-skipping).
    pub paced: AtomicBool,
    /// The selected candidate pair, once ICE has one.
    pub path: Mutex<Option<LinkPath>>,
}

impl SessionStats {
    /// One frame of `bytes` sent to this viewer, in its totals and in every viewer's
    /// (`totals`); returns how many it had been sent before.
    pub fn count_sent(&self, totals: &crate::media::ViewerTotals, bytes: usize) -> u64 {
        let bytes = bytes as u64;
        let before = self.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        totals.frames_sent.fetch_add(1, Ordering::Relaxed);
        totals.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        before
    }

    pub(super) fn new(
        codec: crate::codec::VideoCodec,
        transport: crate::signalling::Transport,
    ) -> Self {
        Self {
            codec,
            transport,
            started: Instant::now(),
            connected: AtomicBool::new(false),
            frames_sent: AtomicU64::new(0),
            frames_skipped: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            first_frame_ms: AtomicU64::new(0),
            rtt_us: AtomicU64::new(0),
            keyframe_requests: AtomicU64::new(0),
            bitrate_kbps: AtomicU64::new(0),
            estimate_kbps: AtomicU64::new(0),
            loss_centipercent: AtomicU64::new(u64::MAX),
            nacked_packets: AtomicU64::new(0),
            retransmitted_packets: AtomicU64::new(0),
            paced: AtomicBool::new(false),
            path: Mutex::new(None),
        }
    }
}

/// One session as the `sessions` command and telemetry report it. Named by its label, never
/// its sid: every viewer may read this (docs/signalling.md).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionInfo {
    pub label: Label,
    pub state: &'static str,
    pub duration_secs: u64,
    pub codec: &'static str,
    /// The door the viewer came through: `mqtt` (a WebRTC viewer signalling over MQTT: the
    /// page, MQTT clients), `whep`, or `rtsp`.
    pub transport: &'static str,
    pub bitrate_kbps: u64,
    pub frames_sent: u64,
    pub frames_skipped: u64,
    pub keyframe_requests: u64,
    pub rtt_ms: Option<f64>,
    pub time_to_first_frame_ms: Option<u64>,
    /// What bitrate adaptation estimates this viewer can take.
    pub estimate_kbps: Option<u64>,
    /// Packet loss in the viewer's receiver reports over the last second.
    pub loss_percent: Option<f64>,
    /// Packets the viewer asked to be resent (NACK).
    pub nacked_packets: u64,
    /// Packets rtcam resent for them (those still in its 1024-packet send buffer; a packet asked
    /// for again within a round trip of its resend is not sent again).
    pub retransmitted_packets: u64,
    /// Sent below the encoder's rate, skipping to keyframes, because it cannot take more.
    pub paced: bool,
    /// The selected candidate pair (WebRTC viewers, once connected).
    pub path: Option<LinkPath>,
}

pub(super) fn info_of(label: Label, s: &SessionStats) -> SessionInfo {
    let nonzero = |v: u64| (v > 0).then_some(v);
    SessionInfo {
        label,
        state: if s.connected.load(Ordering::Relaxed) {
            "connected"
        } else {
            "connecting"
        },
        duration_secs: s.started.elapsed().as_secs(),
        codec: s.codec.as_str(),
        transport: s.transport.as_str(),
        bitrate_kbps: s.bitrate_kbps.load(Ordering::Relaxed),
        frames_sent: s.frames_sent.load(Ordering::Relaxed),
        frames_skipped: s.frames_skipped.load(Ordering::Relaxed),
        keyframe_requests: s.keyframe_requests.load(Ordering::Relaxed),
        rtt_ms: nonzero(s.rtt_us.load(Ordering::Relaxed)).map(|us| us as f64 / 1000.0),
        time_to_first_frame_ms: nonzero(s.first_frame_ms.load(Ordering::Relaxed)),
        estimate_kbps: nonzero(s.estimate_kbps.load(Ordering::Relaxed)),
        loss_percent: match s.loss_centipercent.load(Ordering::Relaxed) {
            u64::MAX => None,
            c => Some(c as f64 / 100.0),
        },
        nacked_packets: s.nacked_packets.load(Ordering::Relaxed),
        retransmitted_packets: s.retransmitted_packets.load(Ordering::Relaxed),
        paced: s.paced.load(Ordering::Relaxed),
        path: s.path.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    }
}
