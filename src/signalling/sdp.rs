//! What rtcam reads in a viewer's SDP text, read once: [`OfferSummary`] holds everything the
//! offer checks (`protocol::check_offer`) and the peer connection (audio, mDNS candidates)
//! need, so no other module scans an offer line by line. Also the few text edits the peer
//! makes to an offer before the WebRTC crate sees it, and to its answer ([`Announce`]) before
//! the viewer does.
//!
//! Pure: text in, values out; fuzzed with the rest of the signalling input.

use std::net::IpAddr;

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

/// Where rtcam is reachable when its sessions share one port (`[webrtc] udp_port`, and
/// `tcp_port` for ICE over TCP): the crate names each session's host candidates by an address
/// of its own, and the viewer is told the shared ports instead, plus `public_ips` (a port
/// forward's or 1:1 NAT's outside address) as host candidates beside the local ones. Beside,
/// not instead: a viewer on the same network reaches the local address without a round trip
/// through the router, which many home routers do not loop back.
#[derive(Debug, Clone, Copy)]
pub struct Announce<'a> {
    /// 0: no shared UDP port.
    pub udp_port: u16,
    /// The local addresses that have a shared UDP socket: only their candidates are rewritten.
    pub udp_ips: &'a [IpAddr],
    /// 0: no shared ICE-TCP port.
    pub tcp_port: u16,
    pub tcp_ips: &'a [IpAddr],
    pub public_ips: &'a [IpAddr],
}

impl Announce<'_> {
    /// One candidate (`candidate:…`, or an SDP line `a=candidate:…`) as the viewer must see it:
    /// a UDP host candidate, or a passive TCP one, on a shared address gets the shared port.
    pub fn candidate(&self, candidate: &str) -> String {
        let fields: Vec<&str> = candidate.split(' ').collect();
        if fields.len() < 8 || fields[6] != "typ" || fields[7] != "host" {
            return candidate.to_owned();
        }
        let Ok(ip) = fields[4].parse::<IpAddr>() else {
            return candidate.to_owned();
        };
        let transport = fields[2].to_ascii_lowercase();
        let port = if transport == "udp" && self.udp_ips.contains(&ip) {
            self.udp_port
        } else if transport == "tcp"
            && fields.get(8..10) == Some(&["tcptype", "passive"])
            && self.tcp_ips.contains(&ip)
        {
            self.tcp_port
        } else {
            return candidate.to_owned();
        };
        let port = port.to_string();
        let mut out = fields;
        out[5] = &port;
        out.join(" ")
    }

    /// The `candidate:` values for `public_ips`, after the local host candidates in priority
    /// (local preference 0 against the crate's 65535), TCP after UDP.
    pub fn public_candidates(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, ip) in self.public_ips.iter().enumerate() {
            if self.udp_port != 0 {
                let priority = (126u32 << 24) | 255;
                out.push(format!(
                    "candidate:rtcampub{i} 1 udp {priority} {ip} {} typ host",
                    self.udp_port
                ));
            }
            if self.tcp_port != 0 {
                let priority = (80u32 << 24) | 255;
                out.push(format!(
                    "candidate:rtcampubtcp{i} 1 tcp {priority} {ip} {} typ host tcptype passive",
                    self.tcp_port
                ));
            }
        }
        out
    }

    /// An answer as the viewer must see it: host candidates on the shared ports, and the
    /// public ones after the last candidate of each section that has some (the first media
    /// section when none has: a viewer learns them there under BUNDLE).
    pub fn answer(&self, sdp: &str) -> String {
        let public: Vec<String> = self
            .public_candidates()
            .into_iter()
            .map(|c| format!("a={c}\r\n"))
            .collect();
        let mut sections: Vec<Vec<String>> = vec![Vec::new()];
        for line in sdp.split_inclusive('\n') {
            if line.starts_with("m=") {
                sections.push(Vec::new());
            }
            let line = match line.strip_prefix("a=") {
                Some(rest) if rest.starts_with("candidate:") => {
                    let (value, end) = split_line_end(rest);
                    format!("a={}{end}", self.candidate(value))
                }
                _ => line.to_owned(),
            };
            if let Some(section) = sections.last_mut() {
                section.push(line);
            }
        }
        let has_candidates = |s: &Vec<String>| s.iter().any(|l| l.starts_with("a=candidate:"));
        let any = sections.iter().any(has_candidates);
        for (n, section) in sections.iter_mut().enumerate() {
            if any && has_candidates(section) {
                let last = section
                    .iter()
                    .rposition(|l| l.starts_with("a=candidate:"))
                    .unwrap_or(0);
                section.splice(last + 1..last + 1, public.iter().cloned());
            } else if !any && n == 1 {
                section.extend(public.iter().cloned());
            }
        }
        sections.concat().concat()
    }
}

/// A line without its line ending, and the ending.
fn split_line_end(line: &str) -> (&str, &str) {
    let body = line.trim_end_matches(['\r', '\n']);
    (body, &line[body.len()..])
}

/// rtcam's UDP host candidates in its own description, one per address (the crate lists each
/// twice, for components 1 and 2; ICE-TCP candidates, gathered first, do not count).
pub fn udp_host_candidates(sdp: &str) -> usize {
    sdp.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            l.starts_with("a=candidate:")
                && f.len() >= 8
                && f[1] == "1"
                && f[2].eq_ignore_ascii_case("udp")
                && f[7] == "host"
        })
        .count()
}

/// rtcam's ICE username fragment in its own description (`a=ice-ufrag:`).
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_port_and_public_addresses_are_announced() {
        let local: IpAddr = "10.0.0.2".parse().unwrap();
        let public: IpAddr = "203.0.113.9".parse().unwrap();
        let a = Announce {
            udp_port: 8555,
            udp_ips: &[local],
            tcp_port: 0,
            tcp_ips: &[],
            public_ips: &[public],
        };
        let answer = "v=0\r\na=ice-ufrag:abcd\r\nm=video 9 X 96\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 10.0.0.2 40001 typ host\r\na=candidate:2 1 udp 2130706431 10.9.9.9 40002 typ host\r\na=candidate:3 1 udp 1694498815 198.51.100.4 5000 typ srflx raddr 10.0.0.2 rport 40001\r\na=end-of-candidates\r\nm=audio 9 X 111\r\na=mid:1\r\n";
        let out = a.answer(answer);
        assert!(out.contains("10.0.0.2 8555 typ host\r\n"), "{out}");
        assert!(
            out.contains("10.9.9.9 40002 typ host"),
            "not a shared address: kept"
        );
        assert!(
            out.contains("198.51.100.4 5000 typ srflx"),
            "reflexive: kept"
        );
        let public_line = "a=candidate:rtcampub0 1 udp 2113929471 203.0.113.9 8555 typ host\r\n";
        assert_eq!(out.matches(public_line).count(), 1, "{out}");
        assert!(
            out.find(public_line) < out.find("a=end-of-candidates"),
            "after the last candidate, before the end: {out}"
        );
        assert_eq!(ice_ufrag(&out), Some("abcd"));
        assert_eq!(
            udp_host_candidates(answer),
            2,
            "host lines of component 1 over UDP"
        );
        // An answer without candidates gets the public ones in its first media section.
        let bare = "v=0\r\nm=video 9 X 96\r\na=mid:0\r\nm=audio 9 X 111\r\na=mid:1\r\n";
        let out = a.answer(bare);
        assert!(out.find(public_line) < out.find("m=audio"), "{out}");
        // Nothing to announce: the answer is unchanged.
        let none = Announce {
            udp_port: 8555,
            udp_ips: &[],
            tcp_port: 8555,
            tcp_ips: &[],
            public_ips: &[],
        };
        assert_eq!(none.answer(answer), answer);
        assert_eq!(
            a.candidate("candidate:1 1 udp 2130706431 10.0.0.2 40001 typ host generation 0"),
            "candidate:1 1 udp 2130706431 10.0.0.2 8555 typ host generation 0"
        );
        assert_eq!(a.candidate("garbage"), "garbage");
    }

    #[test]
    fn passive_tcp_candidates_get_the_shared_tcp_port() {
        let local: IpAddr = "10.0.0.2".parse().unwrap();
        let public: IpAddr = "203.0.113.9".parse().unwrap();
        let a = Announce {
            udp_port: 8555,
            udp_ips: &[local],
            tcp_port: 8556,
            tcp_ips: &[local],
            public_ips: &[public],
        };
        assert_eq!(
            a.candidate("candidate:5 1 tcp 1671430143 10.0.0.2 41234 typ host tcptype passive"),
            "candidate:5 1 tcp 1671430143 10.0.0.2 8556 typ host tcptype passive"
        );
        // An active candidate's port is the discard placeholder; it connects out.
        let active = "candidate:6 1 tcp 1671430143 10.0.0.2 9 typ host tcptype active";
        assert_eq!(a.candidate(active), active);
        assert_eq!(
            a.public_candidates(),
            [
                "candidate:rtcampub0 1 udp 2113929471 203.0.113.9 8555 typ host",
                "candidate:rtcampubtcp0 1 tcp 1342177535 203.0.113.9 8556 typ host tcptype passive",
            ]
        );
    }

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
