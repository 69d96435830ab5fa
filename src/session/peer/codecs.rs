//! The codecs rtcam registers with a viewer's media engine, and the RTCP feedback it asks for.

use super::playout::PLAYOUT_DELAY_URI;
use super::PeerError;
use crate::codec::VideoCodec;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use webrtc::peer_connection::MediaEngine;

/// The H.264 rtcam sends: constrained baseline, packetization mode 1 (what every browser
/// decodes). Two profile-level-ids are registered because browsers offer both spellings of
/// baseline; either matches the same stream.
const H264_FMTPS: [(&str, u8); 2] = [
    (
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        102,
    ),
    (
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        127,
    ),
];

/// VP8 for viewers without H.264; the number is the one browsers use, though they may pick
/// their own (see `SendTrack::payload_type`).
const VP8_PAYLOAD_TYPE: u8 = 96;

/// The Opus rtcam registers when it negotiates audio: what browsers offer (RFC 7587 always
/// says two channels; the stream itself is mono), with in-band FEC allowed.
const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";
const OPUS_PT: u8 = 111;

/// The media engine for one viewer. Only the codec this viewer gets is registered: the answer
/// then cannot pick another, and the one track carries exactly what its encoder produces.
/// Opus is registered only for an offer that can take it (`with_audio`): a video-only offer
/// (or any offer to a camera without audio) meets exactly the media engine it always did, and
/// an audio section without Opus is refused in the answer. The playout-delay header extension
/// is registered for video.
pub(super) fn media_engine(codec: VideoCodec, with_audio: bool) -> Result<MediaEngine, PeerError> {
    let mut media = MediaEngine::default();
    let mut register = |rtp_codec, payload_type, kind| {
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec,
                    payload_type,
                },
                kind,
            )
            .map_err(PeerError::Setup)
    };
    if with_audio {
        register(opus_codec(), OPUS_PT, RtpCodecKind::Audio)?;
    }
    match codec {
        VideoCodec::H264 => {
            for (fmtp, payload_type) in H264_FMTPS {
                register(
                    h264_codec(fmtp, feedback()),
                    payload_type,
                    RtpCodecKind::Video,
                )?;
            }
        }
        VideoCodec::Vp8 => register(vp8_codec(feedback()), VP8_PAYLOAD_TYPE, RtpCodecKind::Video)?,
    }
    // Answered only when the viewer offers it; `playout.rs` stamps it and says why.
    media
        .register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: PLAYOUT_DELAY_URI.to_owned(),
            },
            RtpCodecKind::Video,
            None,
        )
        .map_err(PeerError::Setup)?;
    Ok(media)
}

/// The codec of rtcam's video track for `codec` (feedback is the media engine's business).
pub(super) fn video_track_codec(codec: VideoCodec) -> RTCRtpCodec {
    match codec {
        VideoCodec::H264 => h264_codec(H264_FMTPS[0].0, vec![]),
        VideoCodec::Vp8 => vp8_codec(vec![]),
    }
}

/// The RTCP feedback rtcam asks viewers for on video: REMB (a cap on adaptation's estimate),
/// FIR and PLI (keyframes), NACK (resends).
fn feedback() -> Vec<RTCPFeedback> {
    [
        ("goog-remb", ""),
        ("ccm", "fir"),
        ("nack", ""),
        ("nack", "pli"),
    ]
    .into_iter()
    .map(|(typ, parameter)| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    })
    .collect()
}

pub(super) fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: crate::media::audio::OPUS_RATE,
        channels: 2,
        sdp_fmtp_line: OPUS_FMTP.to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8_codec(rtcp_feedback: Vec<RTCPFeedback>) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback,
    }
}

fn h264_codec(fmtp: &str, rtcp_feedback: Vec<RTCPFeedback>) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback,
    }
}
