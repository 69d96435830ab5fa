//! What rtcam reads in a viewer's SDP text, read once: [`OfferSummary`] holds everything the
//! offer checks (`protocol::check_offer`) and the peer connection (audio, mDNS candidates)
//! need, so no other module scans an offer line by line. Also the few text edits the peer
//! makes to an offer before the WebRTC crate sees it.
//!
//! Pure: text in, values out; fuzzed with the rest of the signalling input.

/// What one offer contains, from a single pass over its lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferSummary {
    /// The text starts (after leading whitespace) with `v=0`, as every description does.
    pub starts_with_version: bool,
    /// The first non-blank line that is not `<letter>=<value>` (RFC 8866 §5): its 1-based
    /// number and its text (end trimmed).
    pub malformed_line: Option<(usize, String)>,
    /// `m=` sections, of any kind.
    pub media_sections: usize,
    /// At least one `m=video` section.
    pub has_video: bool,
    /// The codec names (`a=rtpmap`) of the video sections, upper-case, each once, in order.
    pub video_codecs: Vec<String>,
    /// A live audio section (port not 0) lists Opus (`a=rtpmap:N opus/48000/2`).
    pub opus: bool,
    /// `a=candidate` lines whose address is an mDNS name (see [`is_mdns_candidate`]).
    pub mdns_candidates: usize,
}

/// The kind of `m=` section a line belongs to, as far as the summary cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Session,
    Video,
    /// Audio with a port other than 0; a section with port 0 is rejected or stopped.
    LiveAudio,
    Other,
}

impl OfferSummary {
    /// Reads `sdp` once.
    pub fn of(sdp: &str) -> Self {
        let mut summary = OfferSummary {
            starts_with_version: sdp.trim_start().starts_with("v=0"),
            ..OfferSummary::default()
        };
        let mut section = Section::Session;
        for (number, line) in sdp.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let bytes = line.as_bytes();
            if !(bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'=') {
                summary
                    .malformed_line
                    .get_or_insert_with(|| (number + 1, line.to_owned()));
                continue;
            }
            if let Some(m) = line.strip_prefix("m=") {
                summary.media_sections += 1;
                section = if m.starts_with("video ") {
                    Section::Video
                } else if m.starts_with("audio ") && !m.starts_with("audio 0 ") {
                    Section::LiveAudio
                } else {
                    Section::Other
                };
                summary.has_video |= section == Section::Video;
            } else if let Some(rtpmap) = line.strip_prefix("a=rtpmap:") {
                summary.note_codec(section, rtpmap);
            } else if line.starts_with("a=candidate:") && is_mdns_candidate(line) {
                summary.mdns_candidates += 1;
            }
        }
        summary
    }

    /// Notes one `a=rtpmap:` value (`<pt> <name>/<rate>[/<channels>]`) of `section`.
    fn note_codec(&mut self, section: Section, rtpmap: &str) {
        let Some(codec) = rtpmap.split_whitespace().nth(1) else {
            return;
        };
        match section {
            Section::Video => {
                let name = codec
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                if !self.video_codecs.contains(&name) {
                    self.video_codecs.push(name);
                }
            }
            Section::LiveAudio => {
                self.opus |= codec.to_ascii_lowercase().starts_with("opus/48000");
            }
            Section::Session | Section::Other => {}
        }
    }

    /// Whether the video sections list `name` (upper-case, as in `video_codecs`).
    pub fn offers_video(&self, name: &str) -> bool {
        self.video_codecs.iter().any(|c| c == name)
    }
}

/// Whether a candidate (`candidate:…`, or an SDP line `a=candidate:…`) names its host by an
/// mDNS name (`<uuid>.local`), as browsers do to hide their addresses. rtcam does not resolve
/// them (that would need UDP 5353 on the board); the browser's connectivity checks reach rtcam
/// anyway and are learned as peer-reflexive candidates.
pub fn is_mdns_candidate(candidate: &str) -> bool {
    candidate
        .split_whitespace()
        .nth(4)
        .is_some_and(|addr| addr.ends_with(".local"))
}

/// Drops `a=candidate` lines with mDNS host names (see [`is_mdns_candidate`]).
pub fn without_mdns_candidates(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        if !(line.starts_with("a=candidate:") && is_mdns_candidate(line)) {
            out.push_str(line);
        }
    }
    out
}

/// The media id of a description's first section (`a=mid:`), if it has one.
pub fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:").map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdns_lines_are_dropped_and_others_kept() {
        let sdp = "v=0\r\na=candidate:1 1 udp 1 abc.local 5000 typ host\r\na=candidate:2 1 udp 1 10.0.0.2 5000 typ host\r\na=mid:0\r\n";
        assert_eq!(OfferSummary::of(sdp).mdns_candidates, 1);
        let out = without_mdns_candidates(sdp);
        assert!(!out.contains(".local"));
        assert!(out.contains("10.0.0.2"));
        assert_eq!(first_mid(&out).as_deref(), Some("0"));
        assert!(is_mdns_candidate(
            "candidate:1 1 udp 2122260223 0b6b1a2e-1c1f-4e6a.local 54321 typ host"
        ));
    }

    #[test]
    fn opus_is_found_only_in_a_live_audio_section() {
        let opus = |sdp: &str| OfferSummary::of(sdp).opus;
        let video = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n";
        assert!(!opus(video));
        let audio = format!("{video}m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:111 opus/48000/2\r\n");
        assert!(opus(&audio));
        assert!(!opus(&audio.replace("m=audio 9", "m=audio 0")));
        let pcmu_only = format!("{video}m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n");
        assert!(!opus(&pcmu_only));
        // Opus listed under video is not audio.
        assert!(!opus(
            "m=video 9 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"
        ));
    }

    #[test]
    fn one_pass_reads_sections_codecs_and_the_first_bad_line() {
        let s = OfferSummary::of(
            "v=0\nm=video 9 X 96 102\na=rtpmap:96 VP8/90000\na=rtpmap:102 h264/90000\na=rtpmap:103 H264/90000\n\nbad\nalso bad\nm=application 9 X\n",
        );
        assert!(s.starts_with_version && s.has_video);
        assert_eq!(s.media_sections, 2);
        assert_eq!(s.video_codecs, ["VP8", "H264"]);
        assert!(s.offers_video("H264"));
        assert_eq!(s.malformed_line, Some((7, "bad".to_owned())));
        assert!(OfferSummary::of("  \nv=0\n").starts_with_version);
    }
}
