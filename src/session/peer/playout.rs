//! The playout delay rtcam asks of its viewers: the playout-delay RTP header extension
//! (`http://www.webrtc.org/experiments/rtp-hdrext/playout-delay`), stamped on every video
//! packet of a session whose answer negotiated it.
//!
//! Why: a browser's video receiver (libwebrtc's) otherwise holds each frame for a target
//! delay it estimates from the stream's jitter, and schedules it for a render time. A live
//! camera gains nothing from that wait on a quiet path, and on a lossy one the frame is held
//! for its missing packets anyway (a frame is not decoded before it is whole). With a minimum
//! and a maximum of 0 the receiver takes its low-latency path: each frame is decoded and shown
//! as soon as it is complete. In headless Chromium on rtcam's page that took glass to glass
//! from p50 24–43 ms to 7–20 ms, p99 41–59 to 16–24 ms, and the lossy-link test still decodes
//! near the source rate (docs/benchmarks.md, "Playout delay"), so it is not a setting. A
//! viewer that does not offer the extension is answered without it and never sees it.

use super::tap::{Tap, TapHandler};
use bytes::{Bytes, BytesMut};
use rtc::interceptor::{Packet as InterceptorPacket, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::rtp::extension::playout_delay_extension::PlayoutDelayExtension;
use rtc::shared::marshal::Marshal;
use std::collections::HashMap;

/// The extension's name in SDP (`a=extmap`), as Chromium offers it for video.
pub(super) const PLAYOUT_DELAY_URI: &str =
    "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// What rtcam asks for, in the extension's 10 ms units: no minimum and no room to buffer, so
/// the receiver renders each frame once it is whole (see the module doc).
pub(super) const PLAYOUT_DELAY: PlayoutDelayExtension = PlayoutDelayExtension {
    min_delay: 0,
    max_delay: 0,
};

/// Adds the stamp to the crate's interceptors.
pub(super) fn with_playout_delay(registry: Registry) -> Registry {
    // Application-most on the write leg (the write walk goes from high slots to low): the NACK
    // responder (4_000) keeps each packet as stamped here, so a resend carries the extension
    // too, and the TWCC stamp (2_000), if ever registered, adds to the same header.
    registry.with(Slot::from(14_500), Tap::new(PlayoutDelay::default()))
}

/// Stamps the extension on the RTP of each bound video stream that negotiated it, with that
/// stream's id; everything else passes untouched.
#[derive(Debug)]
struct PlayoutDelay {
    /// SSRC → the negotiated extension id (one-byte form).
    streams: HashMap<u32, u8>,
    /// [`PLAYOUT_DELAY`] on the wire, made once: every packet carries the same three bytes.
    payload: Bytes,
}

impl Default for PlayoutDelay {
    fn default() -> Self {
        // Cannot fail: both values are within 12 bits, in a 3-byte buffer of its own.
        let payload = PLAYOUT_DELAY
            .marshal()
            .map(BytesMut::freeze)
            .unwrap_or_default();
        Self {
            streams: HashMap::new(),
            payload,
        }
    }
}

/// The id `info`'s answer gave the extension, if it is a video stream that has it. Only the
/// one-byte form (ids 1 to 14, RFC 8285) is used: the crate starts a packet's extension block
/// in that form for a 3-byte element whatever the id, so a larger id would make a malformed
/// header. Chromium offers the extension with a one-byte id.
fn extension_id(info: &StreamInfo) -> Option<u8> {
    if !info.mime_type.to_ascii_lowercase().starts_with("video/") {
        return None;
    }
    let ext = info
        .rtp_header_extensions
        .iter()
        .find(|e| e.uri == PLAYOUT_DELAY_URI)?;
    u8::try_from(ext.id).ok().filter(|id| (1..=14).contains(id))
}

impl TapHandler for PlayoutDelay {
    fn write(&mut self, mut msg: TaggedPacket) -> Option<TaggedPacket> {
        if let InterceptorPacket::Rtp(packet) = &mut msg.message.packet {
            if let Some(&id) = self.streams.get(&packet.header.ssrc) {
                // Fails only for an id outside the header's form, which `extension_id` rules
                // out; the packet then goes unstamped, as to a browser without it.
                let _ = packet.header.set_extension(id, self.payload.clone());
            }
        }
        Some(msg)
    }

    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if let Some(id) = extension_id(info) {
            self.streams.insert(info.ssrc, id);
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.streams.remove(&info.ssrc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::{AttributedPacket, RTPHeaderExtension};
    use rtc::shared::marshal::Unmarshal;
    use rtc::shared::TransportContext;
    use std::time::Instant;

    fn info(ssrc: u32, mime_type: &str, ext_id: u16) -> StreamInfo {
        StreamInfo {
            ssrc,
            mime_type: mime_type.to_owned(),
            rtp_header_extensions: vec![
                RTPHeaderExtension {
                    uri: "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned(),
                    id: 4,
                },
                RTPHeaderExtension {
                    uri: PLAYOUT_DELAY_URI.to_owned(),
                    id: ext_id,
                },
            ],
            ..Default::default()
        }
    }

    fn rtp(ssrc: u32) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(InterceptorPacket::Rtp(rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    ssrc,
                    ..Default::default()
                },
                payload: vec![0u8; 4].into(),
            })),
        }
    }

    /// The extension on a packet after it passed `tap`, read back from the marshalled packet
    /// as a receiver would.
    fn stamped(tap: &mut PlayoutDelay, ssrc: u32, id: u8) -> Option<PlayoutDelayExtension> {
        let out = tap.write(rtp(ssrc)).expect("every packet passes");
        let InterceptorPacket::Rtp(packet) = out.message.packet else {
            panic!("an RTP packet stays one");
        };
        let wire = packet.marshal().expect("a stamped packet marshals");
        let back = rtc::rtp::Packet::unmarshal(&mut wire.as_ref()).expect("and parses");
        let data = back.header.get_extension(id)?;
        Some(PlayoutDelayExtension::unmarshal(&mut data.as_ref()).expect("3 bytes"))
    }

    #[test]
    fn the_video_stream_that_negotiated_it_is_stamped_with_no_delay() {
        let mut tap = PlayoutDelay::default();
        tap.bind_local_stream(&info(42, "video/H264", 12));
        let ext = stamped(&mut tap, 42, 12).expect("stamped with the negotiated id");
        assert_eq!((ext.min_delay, ext.max_delay), (0, 0));
        // The three bytes on the wire: 12-bit minimum, 12-bit maximum.
        assert_eq!(&PLAYOUT_DELAY.marshal().unwrap()[..], &[0, 0, 0]);
    }

    #[test]
    fn other_streams_are_left_alone() {
        let mut tap = PlayoutDelay::default();
        tap.bind_local_stream(&info(42, "video/VP8", 12));
        // Audio, an unbound SSRC, a two-byte id: no stamp.
        tap.bind_local_stream(&info(7, "audio/opus", 12));
        assert_eq!(stamped(&mut tap, 7, 12), None);
        assert_eq!(stamped(&mut tap, 99, 12), None);
        tap.bind_local_stream(&info(8, "video/H264", 20));
        assert_eq!(stamped(&mut tap, 8, 20), None);
        // A stream without the extension in its answer.
        let mut plain = info(9, "video/H264", 12);
        plain.rtp_header_extensions.pop();
        tap.bind_local_stream(&plain);
        assert_eq!(stamped(&mut tap, 9, 12), None);
        // Unbound: no longer stamped.
        assert!(stamped(&mut tap, 42, 12).is_some());
        tap.unbind_local_stream(&info(42, "video/VP8", 12));
        assert_eq!(stamped(&mut tap, 42, 12), None);
    }
}
