//! What the viewer's RTCP says about rtcam's stream, caught inside the WebRTC crate's
//! interceptor chain: keyframe requests handed to the session, receiver reports, REMB and NACKs
//! noted for bitrate adaptation, and the NACK responder's resends held to once per round trip
//! and counted.
//!
//! Both interceptors are a [`Tap`] (`tap.rs`) with their own [`TapHandler`].

use super::tap::{Tap, TapHandler};
use crate::session::adapt::{LossCounter, Losses};
use rtc::interceptor::{Attribute, Packet as InterceptorPacket, Registry, Slot, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The viewer's reception feedback since the last `Peer::take_feedback`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Feedback {
    /// Packets lost out of those expected, by the receiver reports that came.
    pub losses: Losses,
    /// Interarrival jitter from the latest report, in RTP timestamp units (1/90000 s).
    pub jitter: Option<u32>,
    /// The latest REMB, if the viewer sends them.
    pub remb_kbps: Option<u32>,
    /// Packets the viewer asked to be resent (NACK), since the session began.
    pub nacked_packets: u64,
    /// Packets the crate's NACK responder resent (those it still held, each at most once per
    /// round trip), since the session began.
    pub retransmitted_packets: u64,
}

/// What the interceptors accumulate between two reads. Shared with the crate's side through a
/// lock rather than the track's event queue: that queue routes a compound packet by its first
/// part and drops what it cannot route.
#[derive(Debug, Default)]
pub(super) struct FeedbackLog {
    loss: LossCounter,
    losses: Losses,
    jitter: Option<u32>,
    remb_kbps: Option<u32>,
    nacked_packets: u64,
    retransmitted_packets: u64,
    /// The connection's latest round-trip time, which [`Retransmissions`] holds resends to.
    pub(super) rtt: Option<Duration>,
}

impl FeedbackLog {
    /// The feedback so far; report figures start again from nothing, counters keep counting.
    pub(super) fn take(&mut self) -> Feedback {
        let taken = Feedback {
            losses: self.losses,
            jitter: self.jitter.take(),
            remb_kbps: self.remb_kbps.take(),
            nacked_packets: self.nacked_packets,
            retransmitted_packets: self.retransmitted_packets,
        };
        self.losses = Losses::default();
        taken
    }
}

/// Locks the log; a poisoned lock means an interceptor panicked mid-update, and its numbers
/// are still plain counters, good enough to read and go on with.
pub(super) fn lock(log: &Mutex<FeedbackLog>) -> std::sync::MutexGuard<'_, FeedbackLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds rtcam's two taps to the crate's interceptors, both writing to `log`.
pub(super) fn with_taps(registry: Registry, ssrc: u32, log: &Arc<Mutex<FeedbackLog>>) -> Registry {
    registry
        // Application-most slot: every other interceptor (NACK, reports, congestion feedback)
        // has seen the inbound RTCP before this one hands keyframe requests to rtcam and notes
        // the viewer's reception reports for bitrate adaptation.
        .with(
            Slot::from(14_000),
            Tap::new(KeyframeRequests {
                ssrc,
                log: Arc::clone(log),
            }),
        )
        // Wire-ward of the NACK responder (4_000), which emits its resends from there on the
        // write leg, tagged as retransmissions: here they can be counted.
        .with(
            Slot::from(3_500),
            Tap::new(Retransmissions {
                log: Arc::clone(log),
                guard: ResendGuard::default(),
            }),
        )
}

pub(super) fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// Hands PLI and FIR to the application: the crate's interceptors keep inbound RTCP to
/// themselves unless one marks it. Receiver reports, REMB and NACKs about rtcam's stream are
/// noted in the [`FeedbackLog`]. Everything else stops here, at the end of the chain.
struct KeyframeRequests {
    /// rtcam's video SSRC: reports about other streams are not about rtcam's video.
    ssrc: u32,
    log: Arc<Mutex<FeedbackLog>>,
}

impl KeyframeRequests {
    fn note(&self, packet: &dyn rtc::rtcp::Packet) {
        let any = packet.as_any();
        let mut log = lock(&self.log);
        if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            for block in rr.reports.iter().filter(|b| b.ssrc == self.ssrc) {
                let losses = log
                    .loss
                    .report(block.total_lost, block.last_sequence_number);
                log.losses += losses;
                log.jitter = Some(block.jitter);
            }
        } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
            if remb.ssrcs.contains(&self.ssrc) && remb.bitrate.is_finite() {
                log.remb_kbps = Some((remb.bitrate / 1000.0).clamp(0.0, u32::MAX as f32) as u32);
            }
        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
            if nack.media_ssrc == self.ssrc {
                let packets: u64 = nack
                    .nacks
                    .iter()
                    .map(|p| 1 + u64::from(p.lost_packets.count_ones()))
                    .sum();
                log.nacked_packets += packets;
            }
        }
    }
}

impl TapHandler for KeyframeRequests {
    fn read(&mut self, mut msg: TaggedPacket) -> Option<TaggedPacket> {
        if let InterceptorPacket::Rtcp(packets) = &msg.message.packet {
            for p in packets {
                self.note(p.as_ref());
            }
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return None;
            }
            msg.message.packet = InterceptorPacket::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        Some(msg)
    }
}

/// Holds back the NACK responder's repeated resends and counts the rest on their way to the
/// wire; passes everything else through.
struct Retransmissions {
    log: Arc<Mutex<FeedbackLog>>,
    guard: ResendGuard,
}

impl TapHandler for Retransmissions {
    fn write(&mut self, msg: TaggedPacket) -> Option<TaggedPacket> {
        if msg.message.has(&Attribute::Retransmission) {
            if let InterceptorPacket::Rtp(packet) = &msg.message.packet {
                let mut log = lock(&self.log);
                let (ssrc, seq) = (packet.header.ssrc, packet.header.sequence_number);
                if !self.guard.admit(ssrc, seq, msg.now, log.rtt) {
                    return None;
                }
                log.retransmitted_packets += 1;
            }
        }
        Some(msg)
    }
}

/// Lets a packet be resent at most once per round trip, as libwebrtc's sender does. A receiver
/// asks again for a packet still missing (the `webrtc` crate's generator every 100 ms,
/// Chromium on its own schedule), and the crate's responder resends whatever it is asked for:
/// on a path whose round trip is longer than the receiver waits, every loss went out two or
/// more times, and the repeats, arriving after the first, repair nothing. Within a round trip
/// of a resend, the first cannot have arrived and been missed yet. rtcam registers no RTX, so
/// a resend carries its original SSRC and sequence number, the key here. Pure: time comes with
/// the packets.
#[derive(Debug, Default)]
struct ResendGuard {
    /// Resends within the last round trip, oldest first.
    recent: VecDeque<(u32, u16, Instant)>,
}

/// Bounds the guard's memory whatever the round trip: the crate's send buffer holds 1024
/// packets per stream.
const RESEND_GUARD_MAX: usize = 4096;

impl ResendGuard {
    /// Whether to send this resend now. With no round trip known yet every resend goes.
    fn admit(&mut self, ssrc: u32, seq: u16, now: Instant, rtt: Option<Duration>) -> bool {
        let hold = rtt.unwrap_or_default();
        while let Some(&(_, _, at)) = self.recent.front() {
            if now.saturating_duration_since(at) < hold && self.recent.len() < RESEND_GUARD_MAX {
                break;
            }
            self.recent.pop_front();
        }
        if self.recent.iter().any(|&(s, q, _)| s == ssrc && q == seq) {
            return false;
        }
        if !hold.is_zero() {
            self.recent.push_back((ssrc, seq, now));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    #[test]
    fn feedback_about_rtcams_stream_is_noted_and_the_rest_ignored() {
        let feedback = Arc::new(Mutex::new(FeedbackLog::default()));
        let i = KeyframeRequests {
            ssrc: 42,
            log: Arc::clone(&feedback),
        };
        // What a receiver reports: its cumulative lost and highest sequence number so far
        // (and a fraction lost, which rtcam does not use).
        let rr = |ssrc, total_lost, last_sequence_number| ReceiverReport {
            ssrc: 1,
            reports: vec![ReceptionReport {
                ssrc,
                fraction_lost: 255,
                total_lost,
                last_sequence_number,
                jitter: 900,
                ..Default::default()
            }],
            ..Default::default()
        };
        i.note(&rr(42, 10, 1000));
        i.note(&rr(42, 15, 1040));
        i.note(&rr(7, 500, 1100));
        i.note(&ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 1,
            bitrate: 1_500_000.0,
            ssrcs: vec![42],
        });
        i.note(&TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 42,
            // Packet 10, and 11 and 13 from the bitmap.
            nacks: vec![NackPair {
                packet_id: 10,
                lost_packets: 0b101,
            }],
        });
        i.note(&TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 7,
            nacks: vec![NackPair {
                packet_id: 1,
                lost_packets: 0,
            }],
        });
        let taken = feedback.lock().unwrap().take();
        assert_eq!(
            taken,
            Feedback {
                losses: Losses {
                    lost: 5,
                    expected: 40
                },
                jitter: Some(900),
                remb_kbps: Some(1500),
                nacked_packets: 3,
                retransmitted_packets: 0,
            }
        );
        // Reports start again; counters go on.
        let again = feedback.lock().unwrap().take();
        assert_eq!(again.losses, Losses::default());
        i.note(&rr(42, 15, 1080));
        let later = feedback.lock().unwrap().take();
        assert_eq!(
            later.losses.fraction(),
            Some(0.0),
            "counted from the last report"
        );
        assert_eq!(again.remb_kbps, None);
        assert_eq!(again.nacked_packets, 3);
    }

    #[test]
    fn a_packet_is_resent_at_most_once_per_round_trip() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let rtt = Some(Duration::from_millis(160));
        let mut g = ResendGuard::default();
        assert!(g.admit(42, 7, at(0), rtt));
        // Asked again 100 ms later: the first resend cannot have arrived yet.
        assert!(!g.admit(42, 7, at(100), rtt));
        // Other packets, and the same number on another stream, are not held.
        assert!(g.admit(42, 8, at(100), rtt));
        assert!(g.admit(43, 7, at(100), rtt));
        // A round trip on, the resend was lost too: again.
        assert!(g.admit(42, 7, at(160), rtt));
        assert!(!g.admit(42, 7, at(300), rtt));
        // The sequence number wraps round to 7 again much later: a new packet, not held.
        assert!(g.admit(42, 7, at(60_000), rtt));
        // Before a round trip is measured, nothing is held and nothing kept.
        let mut g = ResendGuard::default();
        assert!(g.admit(42, 7, at(0), None));
        assert!(g.admit(42, 7, at(1), None));
        assert!(g.recent.is_empty());
        // Memory stays bounded however long the round trip.
        let mut g = ResendGuard::default();
        let long = Some(Duration::from_secs(3600));
        for seq in 0..=u16::MAX {
            g.admit(1, seq, at(0), long);
        }
        assert!(g.recent.len() <= RESEND_GUARD_MAX);
    }
}
