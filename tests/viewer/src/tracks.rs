//! Reads the remote tracks: counts video and audio RTP (frames by marker bit, loss by sequence
//! gaps), notes sender reports and how late each packet is against them, and feeds the
//! decoders.

use crate::seen::Shared;
use gstreamer as gst;
use gstreamer_app as gst_app;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp::extension::playout_delay_extension::PlayoutDelayExtension;
use rtc::rtp::Packet as RtpPacket;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::shared::marshal::{Marshal, Unmarshal};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// Where the tracks' packets go.
#[derive(Clone)]
pub(crate) struct Sinks {
    pub(crate) shared: Arc<Shared>,
    pub(crate) video: Option<gst_app::AppSrc>,
    pub(crate) audio: Option<gst_app::AppSrc>,
    /// Whether a decoder counts the frames; if not, the first whole frame's RTP is the stage.
    pub(crate) decoding: bool,
    /// The video track, for PLIs the viewer sends.
    pub(crate) video_track: Arc<Mutex<Option<Arc<dyn TrackRemote>>>>,
}

/// The latest sender report of each SSRC: its NTP and RTP times.
type Reports = Arc<Mutex<HashMap<u32, (u64, u32)>>>;

/// Reads every track that arrives on `tracks` until the peer connection goes. Audio tracks are
/// read only by a viewer that decodes audio.
pub(crate) fn spawn(
    mut tracks: crate::peer::Tracks,
    sinks: Sinks,
    audio_wanted: bool,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let reports = Reports::default();
        let mut readers = Vec::new();
        while let Some(track) = tracks.recv().await {
            let audio = track.kind().await == RtpCodecKind::Audio;
            if audio && !audio_wanted {
                continue;
            }
            if !audio {
                *sinks.video_track.lock().unwrap() = Some(track.clone());
            }
            let (sinks, reports) = (sinks.clone(), reports.clone());
            readers.push(tokio::spawn(read(track, audio, sinks, reports)));
        }
        for r in readers {
            let _ = r.await;
        }
    })
}

async fn read(track: Arc<dyn TrackRemote>, audio: bool, sinks: Sinks, reports: Reports) {
    let mut sequence = Sequence::default();
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let late = lateness_ms(&packet, audio, &reports);
                if audio {
                    count_audio(&sinks.shared, late);
                } else {
                    count_video(&sinks, &packet, &mut sequence, late);
                }
                let sink = if audio { &sinks.audio } else { &sinks.video };
                if let (Some(sink), Ok(bytes)) = (sink, packet.marshal()) {
                    let _ = sink.push_buffer(gst::Buffer::from_slice(bytes.to_vec()));
                }
            }
            TrackRemoteEvent::OnRtcpPacket(packets) => {
                for p in &packets {
                    if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                        reports
                            .lock()
                            .unwrap()
                            .insert(sr.ssrc, (sr.ntp_time, sr.rtp_time));
                        *sinks
                            .shared
                            .seen()
                            .sender_reports
                            .entry(sr.ssrc)
                            .or_default() += 1;
                    }
                }
            }
            _ => {}
        }
    }
}

/// When the packet arrived minus when its stream's last sender report says it was sent, in
/// ms; none before the stream's first report.
fn lateness_ms(packet: &RtpPacket, audio: bool, reports: &Reports) -> Option<f64> {
    let at = SystemTime::now();
    let (ntp, rtp) = reports.lock().unwrap().get(&packet.header.ssrc).copied()?;
    let rate = if audio { 48_000.0 } else { 90_000.0 };
    let sent_unix = rtc::shared::time::SystemInstant::ntp2unix(ntp).as_secs_f64()
        + f64::from(packet.header.timestamp.wrapping_sub(rtp) as i32) / rate;
    let at_unix = at.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some((at_unix - sent_unix) * 1000.0)
}

fn count_audio(shared: &Shared, late: Option<f64>) {
    let mut d = shared.seen();
    d.audio_packets += 1;
    if let Some(ms) = late {
        d.sync_offsets_ms.push((true, ms));
    }
}

fn count_video(sinks: &Sinks, packet: &RtpPacket, sequence: &mut Sequence, late: Option<f64>) {
    let shared = &sinks.shared;
    shared.mark(|s| &mut s.first_rtp);
    if packet.header.marker && !sinks.decoding {
        shared.mark(|s| &mut s.first_frame);
    }
    let expected = sequence.next(packet.header.sequence_number);
    let mut d = shared.seen();
    d.rtp_packets += 1;
    d.rtp_frames += usize::from(packet.header.marker);
    if let Some(delay) = playout_delay(shared, packet) {
        d.playout_delay = Some(delay);
        d.playout_delay_packets += 1;
    }
    d.expected = expected;
    if let Some(ms) = late {
        d.sync_offsets_ms.push((false, ms));
    }
    drop(d);
    shared.changed();
}

/// The playout delay (minimum, maximum) a video packet carries, under the id rtcam's answer
/// gave the extension.
fn playout_delay(shared: &Shared, packet: &RtpPacket) -> Option<(u16, u16)> {
    let data = packet.header.get_extension(shared.playout_delay_id()?)?;
    let ext = PlayoutDelayExtension::unmarshal(&mut data.as_ref()).ok()?;
    Some((ext.min_delay, ext.max_delay))
}

/// The 16-bit RTP sequence number extended across wraps, to count gaps (loss).
#[derive(Default)]
struct Sequence {
    first: Option<u64>,
    highest: u64,
}

impl Sequence {
    /// Takes the next packet's sequence number; returns how many packets should have come.
    fn next(&mut self, seq: u16) -> usize {
        let seq = u64::from(seq);
        let ext = match self.first {
            None => {
                self.first = Some(seq);
                self.highest = seq;
                seq
            }
            Some(_) => {
                let mut ext = (self.highest & !0xffff) | seq;
                if ext + 0x8000 < self.highest {
                    ext += 0x10000;
                } else if ext > self.highest + 0x8000 && ext >= 0x10000 {
                    ext -= 0x10000;
                }
                ext
            }
        };
        self.highest = self.highest.max(ext);
        (self.highest - self.first.unwrap_or(self.highest) + 1) as usize
    }
}
