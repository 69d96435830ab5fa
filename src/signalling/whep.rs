//! WHEP (draft-ietf-wish-whep; its ingest twin is RFC 9725) as rtcam speaks it, without I/O:
//! which sids belong to WHEP viewers, the resource ids in their URLs, trickled candidates in an
//! `application/trickle-ice-sdpfrag` body (RFC 8840), the offer and answer of an ICE restart,
//! ICE servers as `Link` headers, the HTTP status of each of the protocol's error codes, and
//! which web pages may use the door (CORS).
//! The HTTP handlers (`http/whep.rs`) do the talking; the session manager sees the same
//! [`Inbound`](super::protocol::Inbound) messages an MQTT viewer sends.

use super::protocol::{Candidate, ErrorCode, IceServer};

/// What a WHEP viewer's sid starts with. A `.` is never part of an MQTT viewer's sid
/// ([`super::protocol::is_valid_sid`]), so no MQTT client can name, replace or end a WHEP
/// session, and replies find their way back by the sid alone.
pub const SID_PREFIX: &str = "whep.";

/// Characters in a resource id: 22 alphanumerics carry about 131 random bits.
pub const RESOURCE_ID_LEN: usize = 22;

/// The media type of a trickle or ICE restart `PATCH` (RFC 8840).
pub const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// The path of the WHEP endpoint; session resources are below it.
pub const ENDPOINT: &str = "/whep";

/// The sid of the session a resource id names.
pub fn sid_of(resource: &str) -> String {
    format!("{SID_PREFIX}{resource}")
}

/// Whether `id` can be a resource id rtcam made (checked before any lookup, so a path of the
/// wrong shape is a 404 without touching the session table).
pub fn is_resource_id(id: &str) -> bool {
    id.len() == RESOURCE_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The `Location` of a session resource.
pub fn location(resource: &str) -> String {
    format!("{ENDPOINT}/{resource}")
}

/// An `ETag` for the ICE session an SDP describes: its (first) `ice-ufrag`, quoted. A restart
/// would change it; trickle does not.
pub fn etag_of(sdp: &str) -> String {
    format!("\"{}\"", ice_ufrag(sdp).unwrap_or("rtcam"))
}

/// The first `a=ice-ufrag:` of an SDP or SDP fragment.
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
}

/// Whether a `PATCH`'s `If-Match` lets it through for the resource tagged `etag`: absent (not
/// every player sends one), `*`, or naming the tag.
pub fn if_match_ok(if_match: Option<&str>, etag: &str) -> bool {
    let Some(value) = if_match else {
        return true;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// A trickle `PATCH` body read (RFC 8840): the ICE credentials it names and its candidates, each
/// with the media section it follows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    pub candidates: Vec<Candidate>,
    /// `a=end-of-candidates` was there: the viewer has gathered everything.
    pub end_of_candidates: bool,
}

/// Why a `PATCH` body is not a fragment rtcam can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("line {0} is not an SDP line (\"x=...\")")]
    NotSdp(usize),
    #[error("the fragment names no ICE candidate, no end of candidates and no ICE credentials")]
    Empty,
}

/// Reads a trickle fragment. Lines rtcam does not use (`a=group`, `a=ice-options`, …) are
/// skipped; `m=` lines count media sections and `a=mid:` names them.
pub fn parse_fragment(body: &str) -> Result<Fragment, FragmentError> {
    let mut fragment = Fragment::default();
    let mut mid: Option<String> = None;
    let mut mline: Option<u16> = None;
    for (i, raw) in body.lines().enumerate() {
        let line = raw.trim_end();
        if line.is_empty() {
            continue;
        }
        if line.len() < 2 || line.as_bytes()[1] != b'=' {
            return Err(FragmentError::NotSdp(i + 1));
        }
        if line.starts_with("m=") {
            mline = Some(mline.map_or(0, |m| m.saturating_add(1)));
            mid = None;
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_string());
        } else if let Some(u) = line.strip_prefix("a=ice-ufrag:") {
            fragment.ice_ufrag.get_or_insert_with(|| u.to_string());
        } else if let Some(p) = line.strip_prefix("a=ice-pwd:") {
            fragment.ice_pwd.get_or_insert_with(|| p.to_string());
        } else if line == "a=end-of-candidates" {
            fragment.end_of_candidates = true;
        } else if let Some(c) = line.strip_prefix("a=") {
            if c.starts_with("candidate:") {
                fragment.candidates.push(Candidate {
                    candidate: c.to_string(),
                    sdp_mid: mid.clone(),
                    sdp_mline_index: mline.or(mid.as_ref().map(|_| 0)),
                });
            }
        }
    }
    if fragment.candidates.is_empty() && !fragment.end_of_candidates && fragment.ice_ufrag.is_none()
    {
        return Err(FragmentError::Empty);
    }
    Ok(fragment)
}

/// What a `PATCH` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patch {
    /// More candidates (or their end) for the ICE session in force.
    Trickle,
    /// New ICE credentials: an ICE restart (RFC 9725 section 4.3.2).
    Restart,
}

/// A fragment whose ICE credentials differ from the offer's asks for a restart; one with the
/// offer's, or none, trickles.
pub fn classify(fragment: &Fragment, offer_ufrag: Option<&str>) -> Patch {
    match (&fragment.ice_ufrag, offer_ufrag) {
        (Some(theirs), Some(ours)) if theirs != ours => Patch::Restart,
        _ => Patch::Trickle,
    }
}

/// The offer for an ICE restart (RFC 9725 section 4.3.2): the session's `offer` with the
/// fragment's ICE credentials in place of its own, its candidates in place of the old ones, and
/// the `o=` line's session version one higher, as a new offer of the same session must have.
pub fn restart_offer(offer: &str, fragment: &Fragment) -> String {
    let mut out = String::new();
    for line in offer.lines().map(str::trim_end) {
        if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        }
        if let (Some(_), Some(u)) = (line.strip_prefix("a=ice-ufrag:"), &fragment.ice_ufrag) {
            out.push_str(&format!("a=ice-ufrag:{u}\r\n"));
            continue;
        }
        if let (Some(_), Some(p)) = (line.strip_prefix("a=ice-pwd:"), &fragment.ice_pwd) {
            out.push_str(&format!("a=ice-pwd:{p}\r\n"));
            continue;
        }
        if line.starts_with("o=") {
            out.push_str(&next_version(line));
            out.push_str("\r\n");
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
        if let Some(mid) = line.strip_prefix("a=mid:") {
            for c in &fragment.candidates {
                if c.sdp_mid.as_deref().map_or(true, |m| m == mid) {
                    out.push_str(&format!("a={}\r\n", c.candidate));
                }
            }
        }
    }
    out
}

/// `o=<user> <id> <version> …` with the version one higher (unchanged if it is no number).
fn next_version(line: &str) -> String {
    let mut fields: Vec<String> = line.split(' ').map(str::to_owned).collect();
    if let Some(v) = fields.get_mut(2) {
        if let Ok(n) = v.parse::<u64>() {
            *v = n.saturating_add(1).to_string();
        }
    }
    fields.join(" ")
}

/// The body of a restart's `200 OK`: rtcam's new ICE credentials and candidates from its
/// answer, as a trickle fragment (its media sections by `m=` and `a=mid`).
pub fn answer_fragment(answer: &str) -> String {
    let mut out = String::new();
    for key in ["a=ice-ufrag:", "a=ice-pwd:"] {
        if let Some(line) = answer
            .lines()
            .map(str::trim_end)
            .find(|l| l.starts_with(key))
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    for line in answer.lines().map(str::trim_end) {
        if line.starts_with("m=")
            || line.starts_with("a=mid:")
            || line.starts_with("a=candidate:")
            || line == "a=end-of-candidates"
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out
}

/// The `Link` header values announcing ICE servers (`rel="ice-server"`, as WHIP and WHEP
/// describe): one per URL, with `username`, `credential` and `credential-type` where a server
/// has credentials.
pub fn ice_server_links(servers: &[IceServer]) -> Vec<String> {
    let mut links = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if !server.username.is_empty() || !server.credential.is_empty() {
                link.push_str(&format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    quoted(&server.username),
                    quoted(&server.credential)
                ));
            }
            links.push(link);
        }
    }
    links
}

/// A quoted-string's content (RFC 9110): `\` and `"` escaped. Derived credentials are base64
/// and numbers, so this is a guard, not a habit.
fn quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The HTTP status that carries each of the protocol's error codes.
pub fn status_of(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::BadJson | ErrorCode::BadMessage | ErrorCode::BadSdp => 400,
        ErrorCode::Unauthorized => 401,
        ErrorCode::UnknownSession => 404,
        ErrorCode::PayloadTooLarge => 413,
        // Well-formed SDP rtcam cannot serve: no H.264, no VP8 it may fall back to.
        ErrorCode::NoVideoCodec => 422,
        ErrorCode::RateLimited => 429,
        ErrorCode::Internal => 500,
        ErrorCode::TooManySessions => 503,
    }
}

/// Seconds a refused client should wait (`Retry-After`), for the codes where waiting helps.
pub fn retry_after(code: ErrorCode) -> Option<u32> {
    match code {
        // Offers per second refill within a second.
        ErrorCode::RateLimited => Some(1),
        // A slot frees when a viewer leaves; an offer that never connects frees its own within
        // 10 s (session/viewer.rs, CONNECT_TIMEOUT).
        ErrorCode::TooManySessions => Some(10),
        _ => None,
    }
}

/// Whether a request from a web page of `origin` may use the WHEP door, as CORS tells the
/// browser. `same_origin` is the HTTP guard's same-origin verdict for it (the policy
/// `/mqtt` has); `tokens_required` whether the camera has `[auth] secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cors {
    /// No `Origin` (players that are not browsers) or the camera's own page: no CORS needed.
    NotNeeded,
    /// Another page, on a camera that needs a token for every session: allowed, because the
    /// request must still carry a `view` token that page was given.
    Allow,
    /// Another page, on an open camera: refused. A stranger's web site could otherwise use a
    /// visitor's browser, inside the visitor's network, to watch a camera the site cannot reach.
    Refuse,
}

pub fn cors(origin: Option<&str>, same_origin: bool, tokens_required: bool) -> Cors {
    match origin {
        None => Cors::NotNeeded,
        Some(_) if same_origin => Cors::NotNeeded,
        Some(_) if tokens_required => Cors::Allow,
        Some(_) => Cors::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signalling::Transport;

    #[test]
    fn whep_sids_are_apart_from_every_mqtt_sid() {
        let sid = sid_of("AbCdEfGhIjKlMnOpQrStUv");
        assert_eq!(Transport::of_sid(&sid), Transport::Whep);
        assert!(!crate::signalling::protocol::is_valid_sid(&sid));
        assert_eq!(Transport::of_sid("whep-AbCd"), Transport::Mqtt);
        assert_eq!(Transport::of_sid("t123"), Transport::Mqtt);
        assert!(is_resource_id("AbCdEfGhIjKlMnOpQrStUv"));
        for bad in [
            "",
            "short",
            "AbCdEfGhIjKlMnOpQrStU.",
            "AbCdEfGhIjKlMnOpQrStUvW",
        ] {
            assert!(!is_resource_id(bad), "{bad}");
        }
        assert_eq!(location("x"), "/whep/x");
    }

    #[test]
    fn a_trickle_fragment_gives_candidates_with_their_media_section() {
        let body = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
                    m=audio 9 RTP/AVP 0\r\na=mid:0\r\n\
                    a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n\
                    a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw network-id 2\r\n\
                    m=video 9 RTP/AVP 96\r\na=mid:1\r\na=candidate:1 1 udp 1 192.0.2.1 5000 typ host\r\n\
                    a=end-of-candidates\r\n";
        let f = parse_fragment(body).unwrap();
        assert_eq!(f.ice_ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.ice_pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(f.candidates.len(), 3);
        assert!(f.candidates[0]
            .candidate
            .starts_with("candidate:1387637174 1 udp"));
        assert_eq!(f.candidates[0].sdp_mid.as_deref(), Some("0"));
        assert_eq!(f.candidates[0].sdp_mline_index, Some(0));
        assert_eq!(f.candidates[2].sdp_mid.as_deref(), Some("1"));
        assert_eq!(f.candidates[2].sdp_mline_index, Some(1));
        assert!(f.end_of_candidates);
        // Without m= lines (what some players send), a mid alone names the section.
        let f = parse_fragment("a=mid:0\na=candidate:1 1 udp 1 192.0.2.1 5000 typ host\n").unwrap();
        assert_eq!(f.candidates[0].sdp_mline_index, Some(0));
        assert!(
            parse_fragment("a=end-of-candidates")
                .unwrap()
                .end_of_candidates
        );
    }

    #[test]
    fn a_body_that_is_no_fragment_is_refused_with_the_line() {
        assert_eq!(
            parse_fragment("a=mid:0\nnonsense\n"),
            Err(FragmentError::NotSdp(2))
        );
        assert_eq!(parse_fragment(""), Err(FragmentError::Empty));
        assert_eq!(parse_fragment("a=mid:0\r\n"), Err(FragmentError::Empty));
    }

    #[test]
    fn new_ice_credentials_ask_for_a_restart() {
        let same = parse_fragment("a=ice-ufrag:abcd\na=ice-pwd:x\na=end-of-candidates").unwrap();
        assert_eq!(classify(&same, Some("abcd")), Patch::Trickle);
        let new = parse_fragment("a=ice-ufrag:efgh\na=ice-pwd:y\n").unwrap();
        assert_eq!(classify(&new, Some("abcd")), Patch::Restart);
        let bare = parse_fragment("a=candidate:1 1 udp 1 192.0.2.1 5000 typ host").unwrap();
        assert_eq!(classify(&bare, Some("abcd")), Patch::Trickle);
    }

    #[test]
    fn a_restart_offer_is_the_old_one_with_new_credentials_and_candidates() {
        let offer =
            "v=0\r\no=- 4611 2 IN IP4 127.0.0.1\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                     a=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\na=mid:0\r\n\
                     a=candidate:1 1 udp 1 192.0.2.1 5000 typ host\r\na=end-of-candidates\r\n\
                     a=recvonly\r\n";
        let frag = parse_fragment(
            "a=ice-ufrag:new\r\na=ice-pwd:newpwd\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
             a=candidate:2 1 udp 1 192.0.2.9 6000 typ host\r\n",
        )
        .unwrap();
        assert_eq!(classify(&frag, ice_ufrag(offer)), Patch::Restart);
        let restarted = restart_offer(offer, &frag);
        assert_eq!(
            restarted,
            "v=0\r\no=- 4611 3 IN IP4 127.0.0.1\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
             a=ice-ufrag:new\r\na=ice-pwd:newpwd\r\na=mid:0\r\n\
             a=candidate:2 1 udp 1 192.0.2.9 6000 typ host\r\na=recvonly\r\n"
        );
        let answer = "v=0\r\na=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:ours\r\n\
                      a=ice-pwd:ourpwd\r\na=mid:0\r\na=candidate:3 1 udp 1 127.0.0.1 7000 typ host\r\na=sendonly\r\n";
        assert_eq!(
            answer_fragment(answer),
            "a=ice-ufrag:ours\r\na=ice-pwd:ourpwd\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n\
             a=candidate:3 1 udp 1 127.0.0.1 7000 typ host\r\n"
        );
    }

    #[test]
    fn etags_follow_the_ice_session_and_if_match_checks_them() {
        let sdp = "v=0\r\na=ice-ufrag:Ab12\r\na=ice-pwd:x\r\n";
        assert_eq!(etag_of(sdp), "\"Ab12\"");
        assert!(if_match_ok(None, "\"Ab12\""));
        assert!(if_match_ok(Some("*"), "\"Ab12\""));
        assert!(if_match_ok(Some("\"Ab12\""), "\"Ab12\""));
        assert!(if_match_ok(Some("\"x\", W/\"Ab12\""), "\"Ab12\""));
        assert!(!if_match_ok(Some("\"other\""), "\"Ab12\""));
    }

    #[test]
    fn ice_servers_become_link_headers_with_their_credentials() {
        let servers = vec![
            IceServer {
                urls: vec!["stun:stun.example.net:3478".into()],
                ..IceServer::default()
            },
            IceServer {
                urls: vec![
                    "turn:turn.example.net:3478?transport=udp".into(),
                    "turn:turn.example.net:3478?transport=tcp".into(),
                ],
                username: "1795682765:cam-viewer".into(),
                credential: "a\"b".into(),
            },
        ];
        assert_eq!(
            ice_server_links(&servers),
            vec![
                "<stun:stun.example.net:3478>; rel=\"ice-server\"".to_string(),
                "<turn:turn.example.net:3478?transport=udp>; rel=\"ice-server\"; username=\"1795682765:cam-viewer\"; credential=\"a\\\"b\"; credential-type=\"password\"".to_string(),
                "<turn:turn.example.net:3478?transport=tcp>; rel=\"ice-server\"; username=\"1795682765:cam-viewer\"; credential=\"a\\\"b\"; credential-type=\"password\"".to_string(),
            ]
        );
    }

    #[test]
    fn each_error_code_has_its_status() {
        assert_eq!(status_of(ErrorCode::BadSdp), 400);
        assert_eq!(status_of(ErrorCode::Unauthorized), 401);
        assert_eq!(status_of(ErrorCode::RateLimited), 429);
        assert_eq!(status_of(ErrorCode::TooManySessions), 503);
        assert_eq!(status_of(ErrorCode::UnknownSession), 404);
        assert_eq!(status_of(ErrorCode::PayloadTooLarge), 413);
        assert_eq!(status_of(ErrorCode::NoVideoCodec), 422);
        assert_eq!(retry_after(ErrorCode::TooManySessions), Some(10));
        assert_eq!(retry_after(ErrorCode::RateLimited), Some(1));
        assert_eq!(retry_after(ErrorCode::BadSdp), None);
    }

    #[test]
    fn the_status_table_in_the_docs_is_this_one() {
        let docs = include_str!("../../docs/signalling.md");
        for code in ErrorCode::ALL {
            let mut row = format!("| `{code}` | {}", status_of(code));
            if let Some(secs) = retry_after(code) {
                row.push_str(&format!(", with `Retry-After: {secs}`"));
            }
            assert!(docs.contains(&row), "docs/signalling.md lacks {row:?}");
        }
    }

    #[test]
    fn other_pages_may_use_the_door_only_with_tokens_on() {
        assert_eq!(cors(None, false, false), Cors::NotNeeded);
        assert_eq!(cors(Some("http://cam:8080"), true, false), Cors::NotNeeded);
        assert_eq!(cors(Some("https://ha.example"), false, true), Cors::Allow);
        assert_eq!(
            cors(Some("https://evil.example"), false, false),
            Cors::Refuse
        );
        assert_eq!(cors(Some("null"), false, false), Cors::Refuse);
    }
}
