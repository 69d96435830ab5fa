//! Sound: the microphone branch of the media pipeline (→ Opus, shared by every viewer like the
//! video) and the talkback player (a viewer's Opus → the board's speaker).
//!
//! How audio stays in sync with the video: the microphone branch is part of the *same*
//! GStreamer pipeline as the camera, so both are timestamped in running time of one pipeline
//! clock (live sources stamp each buffer with the clock's time at capture). With audio on, both
//! appsinks run with `sync=true`: each buffer leaves its sink when the clock reaches its running
//! time plus the pipeline's latency, which GStreamer computes once for all sinks (the largest of
//! the branches). A video frame and the sound captured with it therefore leave the pipeline at
//! the same moment, and each session writes both at once; WebRTC's sender reports map each
//! stream's RTP time to the time it was sent, so the browser lines them up.
//!
//! The talkback player is its own small pipeline, built when a viewer starts talking and torn
//! down when that viewer's microphone track ends (it leaves) or another viewer takes over: no
//! sound device is held before anyone talks.

use super::error::{AudioError, BuildError};
use super::{appsink, capture, MediaError};
use crate::config::{AudioConfig, AudioEndpoint};
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Opus packets buffered per viewer: two seconds of 20 ms packets.
pub const AUDIO_BUFFER: usize = 100;

/// Opus's RTP clock rate, whatever the captured rate (RFC 7587).
pub const OPUS_RATE: u32 = 48_000;

/// A viewer that sent no sound for this long gives up the speaker to the next one.
pub const TALK_IDLE: Duration = Duration::from_secs(1);

/// One Opus packet (20 ms), shared by every viewer.
#[derive(Debug, Clone)]
pub struct AudioPacket {
    pub data: Bytes,
    /// Drives the RTP timestamp step (960 ticks at 48 kHz for 20 ms).
    pub duration: Duration,
}

/// Counters for telemetry and tests.
#[derive(Debug, Default)]
pub struct AudioStats {
    /// Opus packets the microphone branch produced.
    pub packets: AtomicU64,
    /// Samples (at 48 kHz) the talkback sink received.
    pub talkback_samples: AtomicU64,
    /// The microphone failed and the video runs without it for now.
    pub mic_failed: AtomicBool,
    /// How long after its capture the latest video frame and Opus packet left the pipeline,
    /// in µs of the pipeline clock. In sync when the two are equal (see the module doc).
    pub video_delay_us: AtomicU64,
    pub audio_delay_us: AtomicU64,
}

/// Records how long after its capture a buffer left the pipeline (its age: see
/// `appsink::Pulled`).
pub fn record_delay(into: &AtomicU64, age: Duration) {
    into.store(age.as_micros() as u64, Ordering::Relaxed);
}

/// The name of the microphone element in the pipeline, so its errors can be told apart.
const MIC_ELEMENT: &str = "micsrc";

/// Whether a pipeline error came from the microphone (missing device, unplugged, no server).
pub fn is_microphone_error(e: &MediaError) -> bool {
    e.element()
        .is_some_and(|element| element.contains(MIC_ELEMENT))
}

/// Checks at start that the elements the config needs are installed, so a missing plugin is
/// one clear fatal line instead of a pipeline that fails and retries forever.
pub fn check_elements(cfg: &AudioConfig) -> Result<(), MediaError> {
    let source = cfg.source().map_err(AudioError::Endpoint)?;
    let mut needed = vec![("opusenc", "gstreamer1.0-plugins-base")];
    needed.push(match source {
        AudioEndpoint::Alsa(_) => ("alsasrc", "gstreamer1.0-alsa"),
        AudioEndpoint::Pulse(_) => ("pulsesrc", "gstreamer1.0-plugins-good"),
        _ => ("audiotestsrc", "gstreamer1.0-plugins-base"),
    });
    if cfg.talkback {
        needed.push(("opusdec", "gstreamer1.0-plugins-base"));
        needed.push(match cfg.sink().map_err(AudioError::Endpoint)? {
            AudioEndpoint::Alsa(_) => ("alsasink", "gstreamer1.0-alsa"),
            AudioEndpoint::Pulse(_) => ("pulsesink", "gstreamer1.0-plugins-good"),
            AudioEndpoint::Auto => ("autoaudiosink", "gstreamer1.0-plugins-good"),
            AudioEndpoint::Test => ("fakesink", "gstreamer1.0 (core)"),
        });
    }
    for (element, package) in needed {
        if gst::ElementFactory::find(element).is_none() {
            return Err(AudioError::Missing { element, package }.into());
        }
    }
    Ok(())
}

/// The microphone branch, appended to the video pipeline's description. Device names were
/// checked by the config (letters, digits and `:,._-=` only), so they cannot break the syntax.
pub fn branch(cfg: &AudioConfig) -> String {
    let source = match cfg.source() {
        Ok(AudioEndpoint::Alsa(dev)) => format!("alsasrc name={MIC_ELEMENT} device={dev}"),
        Ok(AudioEndpoint::Pulse(Some(dev))) => format!("pulsesrc name={MIC_ELEMENT} device={dev}"),
        Ok(AudioEndpoint::Pulse(None)) => format!("pulsesrc name={MIC_ELEMENT}"),
        // A quiet tone: a test that hears it knows the whole path works.
        _ => format!(
            "audiotestsrc name={MIC_ELEMENT} is-live=true wave=sine freq=440 volume=0.2 samplesperbuffer=960"
        ),
    };
    // Inband FEC is a feature of Opus's SILK (speech) layer, which restricted-lowdelay turns
    // off; with FEC asked for, the voice application keeps SILK, at a few ms more delay.
    let (application, fec) = if cfg.fec {
        ("voice", " inband-fec=true packet-loss-percentage=10")
    } else {
        ("restricted-lowdelay", "")
    };
    format!(
        " {source} ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=200000000 leaky=downstream ! \
         audioconvert ! audioresample ! audio/x-raw,rate={OPUS_RATE},channels=1 ! \
         opusenc name=opusenc bitrate={bps} frame-size=20 audio-type={application}{fec} ! \
         appsink name=audiosink sync=true max-buffers=50 drop=true",
        bps = cfg.bitrate_kbps * 1000,
    )
}

/// Publishes every Opus packet of `pipeline`'s microphone branch on `packets`.
pub fn attach(
    pipeline: &gst::Pipeline,
    packets: broadcast::Sender<AudioPacket>,
    stats: Arc<AudioStats>,
) -> Result<(), MediaError> {
    let sink = appsink::find(pipeline, "audiosink").ok_or(AudioError::NoSink)?;
    appsink::forward(&sink, packets, move |pulled| {
        if let Some(age) = pulled.age {
            record_delay(&stats.audio_delay_us, age);
        }
        stats.packets.fetch_add(1, Ordering::Relaxed);
        AudioPacket {
            data: pulled.data,
            duration: pulled.duration.unwrap_or(Duration::from_millis(20)),
        }
    });
    Ok(())
}

/// Who holds the board's speaker: one talking viewer at a time. Pure; time is passed in.
///
/// The first viewer whose sound arrives takes the speaker and keeps it while it keeps sending;
/// after [`TALK_IDLE`] without a packet (its talk button released, or it left) the next viewer
/// that sends takes over. Sound from the others is dropped meanwhile, not mixed: a doorbell
/// speaker with two voices at once helps nobody.
#[derive(Debug, Default)]
pub struct TalkFloor {
    holder: Option<(String, Instant)>,
}

impl TalkFloor {
    /// Whether `session`'s packet arriving `now` may be played.
    pub fn may_talk(&mut self, session: &str, now: Instant) -> bool {
        match &self.holder {
            Some((who, last)) if who != session && now.duration_since(*last) < TALK_IDLE => false,
            _ => {
                self.holder = Some((session.to_string(), now));
                true
            }
        }
    }

    /// `session` stopped sending (its track or session ended): the speaker is free at once.
    pub fn release(&mut self, session: &str) -> bool {
        if self.holder.as_ref().is_some_and(|(who, _)| who == session) {
            self.holder = None;
            return true;
        }
        false
    }
}

/// The board's speaker for viewers' microphones; cheap to clone.
#[derive(Clone)]
pub struct Talkback {
    sink: AudioEndpoint,
    stats: Arc<AudioStats>,
    inner: Arc<Mutex<TalkState>>,
}

#[derive(Default)]
struct TalkState {
    floor: TalkFloor,
    player: Option<Player>,
}

impl Talkback {
    pub fn new(sink: AudioEndpoint, stats: Arc<AudioStats>) -> Self {
        Self {
            sink,
            stats,
            inner: Arc::default(),
        }
    }

    /// Plays one Opus packet from `session` (its label, not its sid: this logs it) if it holds
    /// (or may take) the speaker. The player is built on the first packet; a failure to build
    /// it is logged once per talker and the sound dropped (the viewer's video is not affected).
    pub fn play(&self, session: &str, opus: Bytes) {
        // The lock is held only to hand a buffer to appsrc, which queues it: no waiting inside.
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !state.floor.may_talk(session, Instant::now()) {
            return;
        }
        if state.player.as_ref().is_some_and(|p| p.talker != session) {
            // The speaker changed hands: a fresh decoder, not one primed with another voice.
            state.player = None;
        }
        if state.player.is_none() {
            match Player::start(&self.sink, session, self.stats.clone()) {
                Ok(p) => {
                    tracing::info!(session, "talkback: playing this viewer's microphone");
                    state.player = Some(p);
                }
                Err(e) => {
                    tracing::warn!(session, "talkback cannot play: {e}");
                    // Keep the floor so the error is not repeated for every packet.
                    return;
                }
            }
        }
        if let Some(player) = &state.player {
            player.push(opus);
        }
    }

    /// `session`'s microphone track ended: frees the speaker and stops playing if it was talking.
    pub fn release(&self, session: &str) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if state.floor.release(session) && state.player.take().is_some() {
            tracing::info!(session, "talkback: viewer stopped talking");
        }
    }
}

/// appsrc → opusdec → audioconvert → audioresample → the configured sink.
struct Player {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    talker: String,
}

impl Player {
    fn start(
        sink: &AudioEndpoint,
        talker: &str,
        stats: Arc<AudioStats>,
    ) -> Result<Self, MediaError> {
        let sink_desc = match sink {
            AudioEndpoint::Alsa(dev) => format!("alsasink device={dev}"),
            AudioEndpoint::Pulse(Some(dev)) => format!("pulsesink device={dev}"),
            AudioEndpoint::Pulse(None) => "pulsesink".into(),
            AudioEndpoint::Auto => "autoaudiosink".into(),
            // Counted, not played: for tests and boards without a speaker.
            AudioEndpoint::Test => "fakesink sync=false".into(),
        };
        // Live and time-stamped on arrival: the viewer's packets come paced by the network, and
        // a short leaky queue keeps a burst after a stall from building up delay.
        let desc = format!(
            "appsrc name=talksrc is-live=true format=time do-timestamp=true \
             caps=\"audio/x-opus,channel-mapping-family=0,rate={OPUS_RATE},channels=2\" ! \
             queue max-size-buffers=0 max-size-bytes=0 max-size-time=200000000 leaky=downstream ! \
             opusdec plc=true ! audioconvert ! audioresample ! {sink_desc} name=talksink"
        );
        let pipeline = capture::launch(&desc)?;
        let appsrc = pipeline
            .by_name("talksrc")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| MediaError::build(&desc, BuildError::Missing("appsrc")))?;
        // Counts what reaches the sink, in 48 kHz samples from each buffer's duration, so the
        // count means the same whatever format the sink negotiated.
        if let Some(pad) = pipeline
            .by_name("talksink")
            .and_then(|s| s.static_pad("sink"))
        {
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(d) = info.buffer().and_then(|b| b.duration()) {
                    let samples = d.nseconds() * u64::from(OPUS_RATE) / 1_000_000_000;
                    stats.talkback_samples.fetch_add(samples, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            });
        }
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| MediaError::build(&desc, e))?;
        Ok(Self {
            pipeline,
            appsrc,
            talker: talker.to_string(),
        })
    }

    fn push(&self, opus: Bytes) {
        // Fails only once the pipeline is shutting down; the packet is then moot.
        let _ = self.appsrc.push_buffer(gst::Buffer::from_slice(opus));
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        // Releases the sound device now, not when the last reference goes.
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_viewer_talks_at_a_time() {
        let t0 = Instant::now();
        let mut floor = TalkFloor::default();
        assert!(floor.may_talk("a", t0));
        assert!(!floor.may_talk("b", t0 + Duration::from_millis(500)));
        assert!(floor.may_talk("a", t0 + Duration::from_millis(900)));
        // a keeps the floor while it sends; b gets it once a has been quiet for TALK_IDLE.
        assert!(!floor.may_talk("b", t0 + Duration::from_millis(1800)));
        assert!(floor.may_talk("b", t0 + Duration::from_millis(900) + TALK_IDLE));
        assert!(!floor.release("a"));
        assert!(floor.release("b"));
        assert!(floor.may_talk("a", t0 + Duration::from_secs(3)));
    }

    #[test]
    fn branch_follows_the_config() {
        let mut cfg = AudioConfig {
            enabled: true,
            ..Default::default()
        };
        let d = branch(&cfg);
        assert!(
            d.contains("audiotestsrc") && d.contains("restricted-lowdelay"),
            "{d}"
        );
        assert!(
            d.contains("bitrate=32000") && d.contains("frame-size=20"),
            "{d}"
        );
        cfg.source = "alsa:hw:1,0".into();
        cfg.fec = true;
        let d = branch(&cfg);
        assert!(d.contains("alsasrc name=micsrc device=hw:1,0"), "{d}");
        assert!(
            d.contains("audio-type=voice") && d.contains("inband-fec=true"),
            "{d}"
        );
    }
}
