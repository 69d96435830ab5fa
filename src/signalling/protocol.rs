//! Signalling protocol v1: topic names and the JSON messages on them (docs/signalling.md).
//!
//! Pure data and parsing: no I/O, no MQTT client, no WebRTC. Everything that arrives from the
//! network is turned into a [`Inbound`] or a [`ProtocolError`] here, so the rest of rtcam never
//! sees raw bytes, and this file can be fuzzed and unit-tested on its own.

use super::sdp::{is_mdns_candidate, OfferSummary};
pub use crate::codec::VideoCodec;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest signalling payload rtcam accepts. A browser's offer with all its candidates is a few
/// KiB; anything near this size is a mistake or an attack.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Longest session id, in characters.
pub const MAX_SID_LEN: usize = 64;

/// Error codes sent to viewers in `{"type":"error"}`. Tools match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    BadMessage,
    BadSdp,
    NoVideoCodec,
    TooManySessions,
    UnknownSession,
    PayloadTooLarge,
    /// The camera needs a viewer token and the offer had none, or a bad one.
    Unauthorized,
    /// A limit on how fast or how much one may send (offers per second, candidates per session).
    RateLimited,
    Internal,
}

impl ErrorCode {
    /// Every code, for the tables that must list them all (docs, WHEP's statuses).
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadJson,
        ErrorCode::BadMessage,
        ErrorCode::BadSdp,
        ErrorCode::NoVideoCodec,
        ErrorCode::TooManySessions,
        ErrorCode::UnknownSession,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::BadSdp => "bad_sdp",
            ErrorCode::NoVideoCodec => "no_video_codec",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal to send back to one viewer: a code for programs, a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// One ICE candidate in the browser's `RTCIceCandidateInit` shape. An empty `candidate` means
/// the sender has no more candidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
}

impl Candidate {
    pub fn is_end_of_candidates(&self) -> bool {
        self.candidate.trim().is_empty()
    }

    /// Browsers hide their host addresses behind mDNS names (`<uuid>.local`). rtcam does not
    /// resolve them (that would need UDP 5353 on the board); the browser's connectivity checks
    /// reach rtcam anyway and are learned as peer-reflexive candidates.
    pub fn is_mdns(&self) -> bool {
        is_mdns_candidate(&self.candidate)
    }
}

/// A message from a viewer on `R/session/{sid}/in`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `token` is required when the camera has an `[auth] secret`.
    Offer {
        sdp: String,
        token: Option<String>,
    },
    Candidate(Candidate),
    Bye,
    /// Asks for the ICE servers to use, with fresh TURN credentials, before the offer: a
    /// relay-only viewer gathers its candidates with them. `token` as for an offer.
    IceServers {
        token: Option<String>,
    },
    /// An ICE restart of the running session: the viewer's offer again, with new ICE
    /// credentials (and candidates). Not a message of the MQTT protocol: WHEP's `PATCH` makes it
    /// (`signalling::whep::restart_offer`); the reply is an `answer` with rtcam's new ones.
    Restart {
        sdp: String,
    },
}

/// A message to a viewer on `R/session/{sid}/out`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outbound {
    Answer {
        sdp: String,
    },
    Candidate(Candidate),
    Error {
        code: ErrorCode,
        message: String,
    },
    Bye {
        reason: String,
    },
    /// The reply to `ice_servers`: STUN/TURN servers in the browser's `RTCIceServer` shape;
    /// `expires_at` (Unix seconds) is when derived TURN credentials among them stop working.
    #[serde(rename = "ice_servers")]
    IceServers {
        ice_servers: Vec<IceServer>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
}

/// One STUN or TURN server as a browser's `RTCIceServer` takes it, in an `ice_servers` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

impl Outbound {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail: no maps with non-string keys, no floats.
        serde_json::to_vec(self).expect("outbound messages always serialise")
    }
}

impl From<ProtocolError> for Outbound {
    fn from(e: ProtocolError) -> Self {
        Outbound::Error {
            code: e.code,
            message: e.message,
        }
    }
}

/// Parses one inbound payload. Every way it can be wrong maps to the code a viewer can act on.
pub fn parse_inbound(payload: &[u8]) -> Result<Inbound, ProtocolError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(ProtocolError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "The message is {} bytes; rtcam accepts at most {MAX_PAYLOAD} bytes.",
                payload.len()
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        ProtocolError::new(
            ErrorCode::BadJson,
            format!("The message is not valid JSON ({e})."),
        )
    })?;
    let obj = value.as_object().ok_or_else(|| {
        ProtocolError::new(ErrorCode::BadMessage, "The message must be a JSON object.")
    })?;
    let kind = obj.get("type").and_then(|t| t.as_str()).ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::BadMessage,
            "The message has no \"type\" string; expected \"offer\", \"candidate\", \"ice_servers\" or \"bye\".",
        )
    })?;
    let token = || match obj.get("token") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(t)) if t.len() <= 4096 => Ok(Some(t.clone())),
        Some(_) => Err(ProtocolError::new(
            ErrorCode::BadMessage,
            "\"token\" must be a string.",
        )),
    };
    match kind {
        "offer" => {
            let sdp = obj.get("sdp").and_then(|s| s.as_str()).ok_or_else(|| {
                ProtocolError::new(ErrorCode::BadMessage, "An offer needs an \"sdp\" string.")
            })?;
            Ok(Inbound::Offer {
                sdp: sdp.to_string(),
                token: token()?,
            })
        }
        "ice_servers" => Ok(Inbound::IceServers { token: token()? }),
        "candidate" => {
            let candidate: Candidate = serde_json::from_value(value.clone()).map_err(|e| {
                ProtocolError::new(
                    ErrorCode::BadMessage,
                    format!("A candidate needs a \"candidate\" string ({e})."),
                )
            })?;
            let c = candidate.candidate.trim();
            if !c.is_empty() && !c.starts_with("candidate:") {
                return Err(ProtocolError::new(
                    ErrorCode::BadMessage,
                    "A candidate string must start with \"candidate:\" (or be empty for end of candidates).",
                ));
            }
            Ok(Inbound::Candidate(candidate))
        }
        "bye" => Ok(Inbound::Bye),
        other => Err(ProtocolError::new(
            ErrorCode::BadMessage,
            format!(
                "Unknown message type {:?}; expected \"offer\", \"candidate\", \"ice_servers\" or \"bye\".",
                truncate(other, 40)
            ),
        )),
    }
}

/// What an offer asks for, read from its SDP before any WebRTC state is touched, so that an
/// unusable offer gets a precise error instead of a library message. Returns the codec the
/// answer will use: H.264 whenever the offer has it (one encoder for everyone), VP8 only for
/// an offer without H.264 and only when `vp8_fallback` allows the second encoder.
pub fn check_offer_sdp(sdp: &str, vp8_fallback: bool) -> Result<VideoCodec, ProtocolError> {
    check_offer(&OfferSummary::of(sdp), vp8_fallback)
}

/// [`check_offer_sdp`] on an offer already read.
pub fn check_offer(offer: &OfferSummary, vp8_fallback: bool) -> Result<VideoCodec, ProtocolError> {
    check_is_description(offer)?;
    if !offer.has_video {
        return Err(ProtocolError::new(
            ErrorCode::NoVideoCodec,
            "The offer has no video section; add a video transceiver (recvonly) before creating it.",
        ));
    }
    if offer.offers_video("H264") {
        return Ok(VideoCodec::H264);
    }
    if vp8_fallback && offer.offers_video("VP8") {
        return Ok(VideoCodec::Vp8);
    }
    Err(no_video_codec(offer, vp8_fallback))
}

/// Every line of a description is `<type>=<value>`, the type one letter (RFC 8866 §5), and
/// an offer describes its media in `m=` sections. Text that breaks this is no description,
/// whatever it starts with; saying so beats "no video codec", which sends its author
/// looking at the browser's codecs.
fn check_is_description(offer: &OfferSummary) -> Result<(), ProtocolError> {
    if !offer.starts_with_version {
        return Err(ProtocolError::new(
            ErrorCode::BadSdp,
            "The offer is not an SDP session description (it must start with \"v=0\").",
        ));
    }
    if let Some((number, line)) = &offer.malformed_line {
        return Err(ProtocolError::new(
            ErrorCode::BadSdp,
            format!(
                "The offer is not an SDP session description: line {number} ({:?}) is not of the form <letter>=<value>.",
                truncate(line, 40)
            ),
        ));
    }
    if offer.media_sections == 0 {
        return Err(ProtocolError::new(
            ErrorCode::BadSdp,
            "The offer is not an SDP session description a camera can answer: it has no media section (\"m=\" line).",
        ));
    }
    Ok(())
}

/// The refusal of an offer whose video sections list no codec rtcam sends.
fn no_video_codec(offer: &OfferSummary, vp8_fallback: bool) -> ProtocolError {
    let offered = if offer.video_codecs.is_empty() {
        "none".to_string()
    } else {
        offer.video_codecs.join(", ")
    };
    let (sends, hint) = if vp8_fallback {
        ("H.264 or VP8", "Enable H.264 or VP8 in the browser.")
    } else {
        (
            "H.264 (its VP8 fallback is switched off)",
            "Enable H.264 in the browser (Firefox: the OpenH264 plugin).",
        )
    };
    ProtocolError::new(
        ErrorCode::NoVideoCodec,
        format!(
            "The offer has no video codec this camera sends, which is {sends} (offered: {offered}). {hint}"
        ),
    )
}

/// The topics of one device: `{prefix}/{device_id}/…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    root: String,
}

/// What an incoming topic addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicTarget<'a> {
    /// `R/session/{sid}/in` with a valid sid.
    SessionIn(&'a str),
    /// `R/session/{sid}/in` where sid breaks the rules; the reply can still go to its `/out`.
    BadSession(&'a str),
    /// Anything else under or outside the root: not ours to answer.
    Other,
}

impl Topics {
    pub fn new(prefix: &str, device_id: &str) -> Self {
        Self {
            root: format!("{prefix}/{device_id}"),
        }
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn status(&self) -> String {
        format!("{}/status", self.root)
    }

    /// Commands for the device (docs/control.md).
    pub fn command(&self) -> String {
        format!("{}/command", self.root)
    }

    /// Where command replies go when the request names no other place.
    pub fn command_reply(&self) -> String {
        format!("{}/command/reply", self.root)
    }

    pub fn telemetry(&self) -> String {
        format!("{}/telemetry", self.root)
    }

    pub fn snapshot(&self) -> String {
        format!("{}/snapshot", self.root)
    }

    /// The one subscription rtcam needs for signalling.
    pub fn session_in_filter(&self) -> String {
        format!("{}/session/+/in", self.root)
    }

    pub fn session_out(&self, sid: &str) -> String {
        format!("{}/session/{sid}/out", self.root)
    }

    pub fn session_in(&self, sid: &str) -> String {
        format!("{}/session/{sid}/in", self.root)
    }

    pub fn classify<'a>(&self, topic: &'a str) -> TopicTarget<'a> {
        let Some(rest) = topic
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix("/session/"))
        else {
            return TopicTarget::Other;
        };
        let Some(sid) = rest.strip_suffix("/in") else {
            return TopicTarget::Other;
        };
        if is_valid_sid(sid) {
            TopicTarget::SessionIn(sid)
        } else if sid.contains('/') {
            // `+` in the subscription matches one level only, so a slash here means a topic we
            // did not subscribe to; ignore it rather than reply somewhere unexpected.
            TopicTarget::Other
        } else {
            TopicTarget::BadSession(sid)
        }
    }
}

pub fn is_valid_sid(sid: &str) -> bool {
    (1..=MAX_SID_LEN).contains(&sid.len())
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `s` can be one level of an MQTT topic that rtcam publishes and subscribes to.
pub fn is_valid_topic_level(s: &str) -> bool {
    is_valid_sid(s)
}

/// The configured topic levels (`[device] id`, `[mqtt] prefix`) checked before anything
/// starts: each must be one level of the topics [`Topics`] builds.
pub fn check_config(config: &crate::config::Config) -> Result<(), crate::config::Refusal> {
    use crate::config::Refusal;
    let id = &config.device.id;
    if !id.is_empty() && !is_valid_topic_level(id) {
        return Err(Refusal::new(
            "device.id",
            format!("{id:?} cannot be an MQTT topic level: use letters, digits, '-' and '_'"),
        ));
    }
    let prefix = &config.mqtt.prefix;
    if !is_valid_topic_level(prefix) {
        return Err(Refusal::new(
            "mqtt.prefix",
            format!("{prefix:?} cannot be an MQTT topic level"),
        ));
    }
    Ok(())
}

pub fn bad_sid_error(sid: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::BadMessage,
        format!(
            "Session id {:?} is not valid: use 1 to {MAX_SID_LEN} characters of A-Z, a-z, 0-9, '-' and '_'.",
            truncate(sid, 80)
        ),
    )
}

/// Retained status on `R/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewers: Option<usize>,
    /// `ok` or `lost` (unplugged or failing; viewers stay connected and video resumes when it
    /// returns); absent when no camera is used (test pattern).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// `running` while the camera and encoder run, `idle` while they wait for a viewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// False while the owner has switched streaming off (privacy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    /// Media pipeline rebuilds after errors since rtcam started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_restarts: Option<u64>,
    /// Why the pipeline last failed; stays after it recovers, until the next failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Status {
    pub fn offline() -> Self {
        Status {
            state: "offline".into(),
            version: None,
            source: None,
            encoder: None,
            viewers: None,
            camera: None,
            pipeline: None,
            streaming: None,
            pipeline_restarts: None,
            last_error: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("status always serialises")
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(payload: &[u8]) -> ErrorCode {
        parse_inbound(payload).unwrap_err().code
    }

    #[test]
    fn parses_the_three_inbound_types() {
        assert_eq!(
            parse_inbound(br#"{"type":"offer","sdp":"v=0"}"#).unwrap(),
            Inbound::Offer {
                sdp: "v=0".into(),
                token: None
            }
        );
        let c = parse_inbound(
            br#"{"type":"candidate","candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0}"#,
        )
        .unwrap();
        let Inbound::Candidate(c) = c else { panic!() };
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert!(!c.is_end_of_candidates());
        let Inbound::Candidate(end) =
            parse_inbound(br#"{"type":"candidate","candidate":""}"#).unwrap()
        else {
            panic!()
        };
        assert!(end.is_end_of_candidates());
        assert_eq!(parse_inbound(br#"{"type":"bye"}"#).unwrap(), Inbound::Bye);
        assert_eq!(
            parse_inbound(br#"{"type":"ice_servers","token":"t"}"#).unwrap(),
            Inbound::IceServers {
                token: Some("t".into())
            }
        );
        assert_eq!(
            code(br#"{"type":"ice_servers","token":1}"#),
            ErrorCode::BadMessage
        );
    }

    #[test]
    fn every_malformation_has_its_code() {
        assert_eq!(code(b"\xff\xfe garbage"), ErrorCode::BadJson);
        assert_eq!(code(b"{"), ErrorCode::BadJson);
        assert_eq!(code(b"[1,2]"), ErrorCode::BadMessage);
        assert_eq!(code(br#"{"sdp":"v=0"}"#), ErrorCode::BadMessage);
        assert_eq!(code(br#"{"type":"dance"}"#), ErrorCode::BadMessage);
        assert_eq!(code(br#"{"type":"offer"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(br#"{"type":"candidate","candidate":5}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(
            code(br#"{"type":"candidate","candidate":"hello"}"#),
            ErrorCode::BadMessage
        );
        let big = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "a".repeat(MAX_PAYLOAD));
        assert_eq!(code(big.as_bytes()), ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn offer_sdp_checks() {
        assert_eq!(
            check_offer_sdp("hello", true).unwrap_err().code,
            ErrorCode::BadSdp
        );
        // Text that starts like SDP but is not: a line that is not <letter>=<value>, or no
        // media section at all.
        let not_sdp = check_offer_sdp("v=0\r\nthis is not sdp\r\n", true).unwrap_err();
        assert_eq!(not_sdp.code, ErrorCode::BadSdp);
        assert!(
            not_sdp.message.contains("line 2") && not_sdp.message.contains("this is not sdp"),
            "{}",
            not_sdp.message
        );
        for bad in [
            "v=0\r\n",
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n=oops\r\n",
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n1=one\r\n",
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na\r\n",
        ] {
            assert_eq!(
                check_offer_sdp(bad, true).unwrap_err().code,
                ErrorCode::BadSdp,
                "{bad:?}"
            );
        }
        let no_media = check_offer_sdp("v=0\r\ns=-\r\n", true).unwrap_err();
        assert!(no_media.message.contains("m="), "{}", no_media.message);
        // Blank lines (a trailing newline, LF-only endings) are tolerated.
        assert_eq!(
            check_offer_sdp(
                "v=0\nm=video 9 UDP/TLS/RTP/SAVPF 102\na=rtpmap:102 H264/90000\n\n",
                true
            )
            .unwrap(),
            VideoCodec::H264
        );
        let audio_only = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert_eq!(
            check_offer_sdp(audio_only, true).unwrap_err().code,
            ErrorCode::NoVideoCodec
        );
        let vp8 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        // The fallback takes an offer without H.264; switched off, the offer is refused and
        // the message names what was offered.
        assert_eq!(check_offer_sdp(vp8, true).unwrap(), VideoCodec::Vp8);
        let err = check_offer_sdp(vp8, false).unwrap_err();
        assert_eq!(err.code, ErrorCode::NoVideoCodec);
        assert!(err.message.contains("offered: VP8"), "{}", err.message);
        let vp9 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\na=rtpmap:98 VP9/90000\r\n";
        let err = check_offer_sdp(vp9, true).unwrap_err();
        assert_eq!(err.code, ErrorCode::NoVideoCodec);
        assert!(err.message.contains("H.264 or VP8"), "{}", err.message);
        // Both offered: H.264, so one encoder serves everyone.
        let h264 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 102\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n";
        assert_eq!(check_offer_sdp(h264, true).unwrap(), VideoCodec::H264);
        assert_eq!(check_offer_sdp(h264, false).unwrap(), VideoCodec::H264);
    }

    #[test]
    fn error_codes_are_one_table_with_the_wire_and_the_docs() {
        let docs = include_str!("../../docs/signalling.md");
        for code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire, code.as_str(), "serde and as_str disagree");
            assert!(
                docs.contains(&format!("| `{code}` |")),
                "{code} is not in docs/signalling.md's table"
            );
        }
    }

    #[test]
    fn topics_and_sids() {
        let t = Topics::new("rtcam", "cam1");
        assert_eq!(t.status(), "rtcam/cam1/status");
        assert_eq!(t.session_in_filter(), "rtcam/cam1/session/+/in");
        assert_eq!(
            t.classify("rtcam/cam1/session/abc_1-2/in"),
            TopicTarget::SessionIn("abc_1-2")
        );
        assert_eq!(
            t.classify("rtcam/cam1/session/a.b/in"),
            TopicTarget::BadSession("a.b")
        );
        let long = format!("rtcam/cam1/session/{}/in", "a".repeat(65));
        assert!(matches!(t.classify(&long), TopicTarget::BadSession(_)));
        assert_eq!(t.classify("rtcam/cam1/session/abc/out"), TopicTarget::Other);
        assert_eq!(t.classify("rtcam/cam2/session/abc/in"), TopicTarget::Other);
        assert_eq!(t.classify("rtcam/cam1/status"), TopicTarget::Other);
    }

    #[test]
    fn outbound_wire_shape() {
        let v: serde_json::Value = serde_json::from_slice(
            &Outbound::Error {
                code: ErrorCode::TooManySessions,
                message: "m".into(),
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "too_many_sessions");
        let v: serde_json::Value = serde_json::from_slice(
            &Outbound::Candidate(Candidate {
                candidate: "candidate:1".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            })
            .to_json(),
        )
        .unwrap();
        assert_eq!(v["type"], "candidate");
        assert_eq!(v["sdpMid"], "0");
        assert_eq!(v["sdpMLineIndex"], 0);
        let v: serde_json::Value = serde_json::from_slice(
            &Outbound::IceServers {
                ice_servers: vec![IceServer {
                    urls: vec!["turn:t:3478".into()],
                    username: "1600:cam".into(),
                    credential: "c".into(),
                }],
                expires_at: Some(1600),
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(v["type"], "ice_servers");
        assert_eq!(v["ice_servers"][0]["urls"][0], "turn:t:3478");
        assert_eq!(v["ice_servers"][0]["username"], "1600:cam");
        assert_eq!(v["expires_at"], 1600);
    }

    #[test]
    fn mdns_candidates_are_recognised() {
        let c = Candidate {
            candidate: "candidate:1 1 udp 2122260223 0b6b1a2e-1c1f-4e6a.local 54321 typ host"
                .into(),
            sdp_mid: None,
            sdp_mline_index: None,
        };
        assert!(c.is_mdns());
    }
}
