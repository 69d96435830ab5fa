//! `rtcam check`: runs the configured source and encoder headless — the same pipeline and restart
//! loop the agent runs — counts encoded frames, and reports what the camera granted and how fast
//! frames came. The first thing to run on a new board.
//!
//! It uses only the [`Media`](super::Media) handle, like a viewer session does, so what it
//! measures is what viewers get (including across a camera unplug: the frame stream is the one
//! a session's track is fed from).

use super::{CameraState, MediaError, MediaInfo};
use crate::config::{EncoderConfig, SourceConfig};
use std::fmt;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// How often `--progress` prints a line (and at every camera state change).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Stop after this many encoded frames.
    pub frames: u64,
    /// Stop after this long whatever the count.
    pub timeout: Duration,
    /// Print `progress frames=N camera=ok|lost|none` lines while running.
    pub progress: bool,
}

/// What `rtcam check` found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// The pipeline as last seen running (device, format, granted rate, encoder).
    pub info: MediaInfo,
    pub frames: u64,
    pub keyframes: u64,
    /// From start to the first encoded frame.
    pub first_frame: Option<Duration>,
    /// From the first to the last frame counted.
    pub span: Duration,
    pub camera: CameraState,
    pub wanted: u64,
    /// The source as configured, named when it never opened.
    pub configured: String,
}

impl CheckReport {
    /// Frames per second actually delivered, measured between the first and last frame.
    pub fn achieved_fps(&self) -> Option<f64> {
        (self.frames > 1 && !self.span.is_zero())
            .then(|| (self.frames - 1) as f64 / self.span.as_secs_f64())
    }

    pub fn passed(&self) -> bool {
        self.frames >= self.wanted
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.info;
        if i.source.is_empty() {
            writeln!(f, "device:       {} (never opened)", self.configured)?;
        } else {
            writeln!(f, "device:       {}", i.source)?;
            writeln!(f, "format:       {} {}x{}", i.format, i.width, i.height)?;
            writeln!(
                f,
                "frame rate:   {:.1} fps granted ({} asked)",
                i.fps, i.asked_fps
            )?;
            writeln!(f, "encoder:      {}", i.encoder)?;
        }
        writeln!(
            f,
            "frames:       {} of {} ({} keyframes)",
            self.frames, self.wanted, self.keyframes
        )?;
        match self.achieved_fps() {
            Some(fps) => writeln!(
                f,
                "achieved:     {fps:.1} fps over {:.2} s",
                self.span.as_secs_f64()
            )?,
            None => writeln!(f, "achieved:     -")?,
        }
        match self.first_frame {
            Some(d) => writeln!(f, "first frame:  {:.2} s after start", d.as_secs_f64())?,
            None => writeln!(f, "first frame:  none")?,
        }
        writeln!(
            f,
            "camera:       {}",
            self.camera.as_status().unwrap_or("none (test pattern)")
        )
    }
}

/// Runs the media pipeline until `opts.frames` frames or `opts.timeout`; `progress` receives
/// the progress lines. Fails only when the pipeline cannot start at all (no encoder…); a camera
/// that is missing shows as zero frames and `camera: lost`.
pub async fn run(
    source: &SourceConfig,
    encoder: &EncoderConfig,
    opts: CheckOptions,
    mut progress: impl FnMut(&str),
) -> Result<CheckReport, MediaError> {
    let stop = CancellationToken::new();
    let mut tally = Tally {
        started: Instant::now(),
        first_at: None,
        report: CheckReport {
            info: MediaInfo::default(),
            frames: 0,
            keyframes: 0,
            first_frame: None,
            span: Duration::ZERO,
            camera: CameraState::None,
            wanted: opts.frames,
            configured: configured(source),
        },
    };
    // `rtcam check` is about the camera: no microphone.
    let (media, task) = super::start(source, encoder, &Default::default(), stop.clone())?;
    let mut frames_rx = media.subscribe();
    let mut info_rx = media.info();
    let deadline = tokio::time::sleep(opts.timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    while tally.report.frames < opts.frames {
        tokio::select! {
            // Cancel-safe: a broadcast receiver keeps its place when `recv` is dropped.
            r = frames_rx.recv() => match r {
                Ok(frame) => tally.frame(frame.keyframe),
                // Frames we were too slow to see were still delivered by the pipeline.
                Err(RecvError::Lagged(n)) => tally.report.frames += n,
                Err(RecvError::Closed) => break,
            },
            // Cancel-safe: watch `changed` only marks what it has seen when it completes.
            r = info_rx.changed() => {
                if r.is_err() {
                    break;
                }
                let info = info_rx.borrow_and_update().clone();
                if tally.info(info) && opts.progress {
                    progress(&tally.line());
                }
            }
            // Cancel-safe: an interval tick is not consumed unless it completes.
            _ = tick.tick(), if opts.progress => progress(&tally.line()),
            // Cancel-safe: the pinned sleep keeps its deadline across turns.
            _ = &mut deadline => break,
        }
    }
    if opts.progress {
        progress(&tally.line());
    }
    stop.cancel();
    let _ = task.await;
    Ok(tally.report)
}

/// The report as it fills, with when the check started and when its first frame came.
struct Tally {
    report: CheckReport,
    started: Instant,
    first_at: Option<Instant>,
}

impl Tally {
    fn frame(&mut self, keyframe: bool) {
        let now = Instant::now();
        let first = *self.first_at.get_or_insert(now);
        let r = &mut self.report;
        r.first_frame.get_or_insert(now - self.started);
        r.span = now - first;
        r.frames += 1;
        r.keyframes += u64::from(keyframe);
    }

    /// New status from the pipeline; true when the camera's state changed.
    fn info(&mut self, info: MediaInfo) -> bool {
        let camera = info.camera;
        if info.running {
            self.report.info = info;
        }
        if camera == self.report.camera {
            return false;
        }
        self.report.camera = camera;
        true
    }

    /// A `--progress` line.
    fn line(&self) -> String {
        format!(
            "progress frames={} camera={} t={:.1}",
            self.report.frames,
            self.report.camera.as_status().unwrap_or("none"),
            self.started.elapsed().as_secs_f64()
        )
    }
}

/// The source as the config names it, for a report on a camera that never opened.
fn configured(source: &SourceConfig) -> String {
    use crate::config::SourceKind;
    match (source.kind, source.device.is_empty()) {
        (SourceKind::Test, _) => "test pattern".into(),
        (SourceKind::Libcamera, true) => "libcamera (first camera)".into(),
        (SourceKind::Libcamera, false) => format!("libcamera {}", source.device),
        (_, true) => "first V4L2 camera".into(),
        (_, false) => source.device.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_states_rate_and_first_frame() {
        let report = CheckReport {
            info: MediaInfo {
                source: "/dev/video0 (vivid)".into(),
                encoder: "x264enc".into(),
                width: 640,
                height: 480,
                fps: 25.0,
                bitrate_kbps: 400,
                running: true,
                streaming: true,
                format: "YUYV".into(),
                asked_fps: 30,
                camera: CameraState::Ok,
                device: Some("/dev/video0".into()),
                ..Default::default()
            },
            frames: 31,
            keyframes: 1,
            first_frame: Some(Duration::from_millis(420)),
            span: Duration::from_secs(1),
            camera: CameraState::Ok,
            wanted: 30,
            configured: "/dev/video0".into(),
        };
        assert_eq!(report.achieved_fps(), Some(30.0));
        assert!(report.passed());
        let text = report.to_string();
        assert!(text.contains("format:       YUYV 640x480"), "{text}");
        assert!(text.contains("25.0 fps granted (30 asked)"), "{text}");
        assert!(text.contains("first frame:  0.42 s"), "{text}");
        assert!(text.contains("camera:       ok"), "{text}");
        let none = CheckReport {
            frames: 0,
            first_frame: None,
            info: MediaInfo::default(),
            ..report
        };
        assert!(!none.passed());
        assert_eq!(none.achieved_fps(), None);
        assert!(none
            .to_string()
            .contains("device:       /dev/video0 (never opened)"));
    }
}
