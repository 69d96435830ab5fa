//! What pipeline to build: the launch description and the [`MediaInfo`] it runs with, from the
//! config and what was found (the source that opened, the elements GStreamer has). Pure, so
//! every shape is tested here without GStreamer; [`super::capture`] builds what it describes.
//!
//! The shape, left to right: the source head (test pattern, libcamera, or the camera's frames
//! through `appsrc`), decode (MJPEG), the turn (`videoflip`), conversion into the encoder's
//! format, the raw tee (the VP8 branch and snapshots hang off it), the encoder, `h264parse`,
//! the `sink` appsink; then the snapshot branch and the microphone branch. A camera's own
//! H.264 passes through: no decode, turn, tee or encoder.

use super::encoder::{self, EncoderSettings, EncoderSpec, Picture};
use super::orientation::Turn;
use super::v4l2::Negotiated;
use super::{audio, stamp, vp8, CameraState, MediaInfo};
use crate::config::{AudioConfig, PixelFormat, SourceConfig};

/// The source that was opened.
#[derive(Debug, Clone, Copy)]
pub(super) enum Probed<'a> {
    Test,
    Libcamera,
    /// A V4L2 camera, with what its driver granted.
    V4l2(&'a Negotiated),
}

/// What this machine's GStreamer (and environment) has that the description may use.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Present {
    /// `clockoverlay` (gstreamer1.0-x), for the test pattern's clock.
    pub clock_overlay: bool,
    /// `v4l2jpegdec`: the board's JPEG decoder.
    pub hardware_jpeg: bool,
    /// `RTCAM_BENCH_STAMP=1` (see [`stamp`]).
    pub stamp: bool,
}

/// Everything a description is made from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inputs<'a> {
    /// What the user asked for (size and rate; the camera may grant others).
    pub source: &'a SourceConfig,
    pub probed: Probed<'a>,
    pub encoder: &'a EncoderSpec,
    pub settings: EncoderSettings,
    /// What the pipeline must turn (what a camera's own flip controls did not).
    pub turn: Turn,
    /// The microphone branch's config, when the microphone runs in this pipeline.
    pub audio: Option<&'a AudioConfig>,
    pub present: Present,
}

/// A pipeline to build.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Description {
    /// For `gst::parse::launch`.
    pub launch: String,
    /// What it runs, once it runs (`running` and `streaming` are set).
    pub info: MediaInfo,
    /// The picture the encoders are asked for: what the source granted, turned.
    pub picture: Picture,
    /// The camera's H.264 goes out as it came: no encoder, no raw frames.
    pub passthrough: bool,
    /// What the log should say about choices the description made.
    pub notes: Vec<Note>,
}

/// A choice worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Note {
    /// The test pattern has no clock: `clockoverlay` is missing.
    NoClockOverlay,
    /// The camera's H.264 passes through unturned although a turn was asked for.
    PassthroughNotTurned,
    /// `videoflip` turns the picture.
    Turned(Turn),
}

impl Note {
    pub fn log(self) {
        match self {
            Note::NoClockOverlay => tracing::warn!(
                "clockoverlay missing (install gstreamer1.0-x); test pattern has no clock"
            ),
            Note::PassthroughNotTurned => tracing::warn!(
                "[source] rotation/hflip/vflip: the camera sends H.264, which rtcam passes \
                 through without decoding; set format = \"yuyv\" or \"mjpeg\" to turn it"
            ),
            Note::Turned(turn) => {
                tracing::info!("the pipeline turns the picture: videoflip {turn:?}");
            }
        }
    }
}

/// The pipeline for `i`.
pub(super) fn describe(i: &Inputs<'_>) -> Description {
    let mut notes = Vec::new();
    let (head, mut info) = match i.probed {
        Probed::Test => test_head(i, &mut notes),
        Probed::Libcamera => libcamera_head(i),
        Probed::V4l2(camera) => camera_head(i, camera),
    };
    let passthrough = matches!(i.probed, Probed::V4l2(c) if c.format == PixelFormat::H264);
    // videoflip turns raw frames: a camera's own H.264 passes through unturned.
    let flip = if i.turn == Turn::Identity {
        String::new()
    } else if passthrough {
        notes.push(Note::PassthroughNotTurned);
        String::new()
    } else {
        if i.turn.swaps_sides() {
            std::mem::swap(&mut info.width, &mut info.height);
        }
        notes.push(Note::Turned(i.turn));
        format!("videoflip video-direction={} ! ", i.turn as u8)
    };
    let picture = Picture {
        width: info.width,
        height: info.height,
        fps: info.fps.round().max(1.0) as u32,
    };
    let encode = if passthrough {
        String::new()
    } else {
        format!(
            "{decode}{flip}videoconvert ! video/x-raw,format={fmt} ! tee name={tee} allow-not-linked=true ! \
             queue max-size-buffers=2 max-size-bytes=0 max-size-time=0 leaky=downstream ! {enc} ! ",
            decode = decode(i),
            fmt = i.encoder.input_format,
            tee = vp8::RAW_TEE,
            enc = encoder::launch_fragment(i.encoder, i.settings, picture)
        )
    };
    // Raw frames also go to `rawsink`, which keeps only the newest one (a reference, not a
    // copy) so a snapshot can be encoded from it on demand without touching the stream.
    let snapshot_branch = if passthrough {
        ""
    } else {
        " raw. ! queue max-size-buffers=1 max-size-bytes=0 max-size-time=0 leaky=downstream ! \
         appsink name=rawsink sync=false max-buffers=1 drop=true async=false"
    };
    // config-interval=-1 puts SPS/PPS in front of every IDR, so any keyframe is a start point.
    // With audio, both sinks release buffers by the pipeline clock so that sound and picture
    // captured together leave together (see `audio`); without, video leaves as soon as it is
    // encoded.
    let (video_sync, audio_branch) = match i.audio {
        Some(cfg) => ("true", audio::branch(cfg)),
        None => ("false", String::new()),
    };
    let launch = format!(
        "{head}{encode}h264parse config-interval=-1 ! \
         video/x-h264,stream-format=byte-stream,alignment=au ! \
         appsink name=sink sync={video_sync} max-buffers=8 drop=true{snapshot_branch}{audio_branch}"
    );
    Description {
        launch,
        info,
        picture,
        passthrough,
        notes,
    }
}

/// What every source's [`MediaInfo`] starts from: the asked size and rate, the encoder.
fn asked_info(i: &Inputs<'_>) -> MediaInfo {
    let s = i.source;
    MediaInfo {
        encoder: i.encoder.element.into(),
        width: s.width,
        height: s.height,
        fps: f64::from(s.fps),
        bitrate_kbps: i.settings.bitrate_kbps,
        running: true,
        streaming: true,
        asked_fps: s.fps,
        ..Default::default()
    }
}

fn test_head(i: &Inputs<'_>, notes: &mut Vec<Note>) -> (String, MediaInfo) {
    let s = i.source;
    let overlay = if i.present.clock_overlay {
        "clockoverlay halignment=right valignment=bottom shaded-background=true font-desc=\"Sans 20\" ! "
    } else {
        notes.push(Note::NoClockOverlay);
        ""
    };
    // Benchmark aid (see `stamp`): I420 so the probe knows where the luma plane is.
    let (format, stamp) = if i.present.stamp && stamp::fits(s.width as usize, s.height as usize) {
        (",format=I420", "identity name=stamp ! ")
    } else {
        ("", "")
    };
    let head = format!(
        "videotestsrc is-live=true pattern=smpte horizontal-speed=2 ! \
         video/x-raw{format},width={w},height={h},framerate={fps}/1 ! {overlay}{stamp}",
        w = s.width,
        h = s.height,
        fps = s.fps
    );
    let info = MediaInfo {
        source: "test pattern".into(),
        format: "I420".into(),
        camera: CameraState::None,
        ..asked_info(i)
    };
    (head, info)
}

fn libcamera_head(i: &Inputs<'_>) -> (String, MediaInfo) {
    let s = i.source;
    // `device` names a libcamera camera id here; empty takes the first camera.
    let name = if s.device.is_empty() {
        String::new()
    } else {
        format!("camera-name=\"{}\" ", s.device.replace('"', ""))
    };
    let head = format!(
        "libcamerasrc {name}! video/x-raw,width={w},height={h},framerate={fps}/1 ! ",
        w = s.width,
        h = s.height,
        fps = s.fps
    );
    let info = MediaInfo {
        source: if s.device.is_empty() {
            "libcamera".into()
        } else {
            format!("libcamera {}", s.device)
        },
        format: "raw (libcamera)".into(),
        camera: CameraState::Ok,
        ..asked_info(i)
    };
    (head, info)
}

fn camera_head(i: &Inputs<'_>, camera: &Negotiated) -> (String, MediaInfo) {
    // A bounded, leaky queue: when the encoder is slower than the camera, old frames are
    // dropped instead of piling up in memory.
    let head = format!(
        "appsrc name=camsrc is-live=true format=time do-timestamp=true \
         max-bytes=0 max-buffers=3 leaky-type=downstream caps=\"{}\" ! ",
        camera.caps()
    );
    let encoder = if camera.format == PixelFormat::H264 {
        "camera (H.264 passthrough)".to_string()
    } else {
        i.encoder.element.to_string()
    };
    let info = MediaInfo {
        source: format!("{} ({})", camera.path.display(), camera.card),
        encoder,
        width: camera.width,
        height: camera.height,
        fps: camera.fps,
        format: camera.fourcc.clone(),
        asked_fps: camera.asked_fps,
        camera: CameraState::Ok,
        device: Some(camera.path.clone()),
        ..asked_info(i)
    };
    (head, info)
}

/// The decoder a camera's frames need before conversion: the board's JPEG decoder where it
/// has one (v4l2jpegdec), else software; raw formats need none.
fn decode(i: &Inputs<'_>) -> &'static str {
    match i.probed {
        Probed::V4l2(c) if c.format == PixelFormat::Mjpeg && i.present.hardware_jpeg => {
            "v4l2jpegdec ! "
        }
        Probed::V4l2(c) if c.format == PixelFormat::Mjpeg => "jpegdec ! ",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Rotation, SourceKind};
    use std::path::PathBuf;

    const X264: EncoderSpec = EncoderSpec {
        element: "x264enc",
        hardware: None,
        input_format: "I420",
    };
    const SETTINGS: EncoderSettings = EncoderSettings {
        bitrate_kbps: 1200,
        keyframe_interval: 60,
        threads: 4,
    };

    fn source() -> SourceConfig {
        SourceConfig {
            kind: SourceKind::Test,
            width: 640,
            height: 480,
            fps: 30,
            ..Default::default()
        }
    }

    fn camera(format: PixelFormat, fourcc: &str) -> Negotiated {
        Negotiated {
            path: PathBuf::from("/dev/video0"),
            card: "vivid".into(),
            format,
            width: 1280,
            height: 720,
            fps: 25.0,
            asked_fps: 30,
            fourcc: fourcc.into(),
            note: None,
        }
    }

    fn inputs<'a>(source: &'a SourceConfig, probed: Probed<'a>) -> Inputs<'a> {
        Inputs {
            source,
            probed,
            encoder: &X264,
            settings: SETTINGS,
            turn: Turn::Identity,
            audio: None,
            present: Present {
                clock_overlay: true,
                ..Default::default()
            },
        }
    }

    #[test]
    fn test_pattern_with_its_clock_into_the_encoder() {
        let s = source();
        let d = describe(&inputs(&s, Probed::Test));
        assert!(
            d.launch.starts_with(
                "videotestsrc is-live=true pattern=smpte horizontal-speed=2 ! \
                 video/x-raw,width=640,height=480,framerate=30/1 ! clockoverlay "
            ),
            "{}",
            d.launch
        );
        assert!(d
            .launch
            .contains("videoconvert ! video/x-raw,format=I420 ! tee name=raw "));
        assert!(d.launch.contains("x264enc name=encoder"), "{}", d.launch);
        assert!(d.launch.contains(
            "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! \
             appsink name=sink sync=false max-buffers=8 drop=true raw. ! "
        ));
        assert!(d
            .launch
            .ends_with("appsink name=rawsink sync=false max-buffers=1 drop=true async=false"));
        assert!(!d.passthrough && d.notes.is_empty());
        assert_eq!(
            d.info,
            MediaInfo {
                source: "test pattern".into(),
                encoder: "x264enc".into(),
                width: 640,
                height: 480,
                fps: 30.0,
                bitrate_kbps: 1200,
                running: true,
                streaming: true,
                format: "I420".into(),
                asked_fps: 30,
                ..Default::default()
            }
        );
        assert_eq!(
            d.picture,
            Picture {
                width: 640,
                height: 480,
                fps: 30
            }
        );
    }

    #[test]
    fn test_pattern_without_clockoverlay_says_so() {
        let s = source();
        let mut i = inputs(&s, Probed::Test);
        i.present.clock_overlay = false;
        let d = describe(&i);
        assert!(!d.launch.contains("clockoverlay"), "{}", d.launch);
        assert_eq!(d.notes, vec![Note::NoClockOverlay]);
    }

    #[test]
    fn benchmark_stamp_asks_for_i420() {
        let small = source();
        let mut i = inputs(&small, Probed::Test);
        i.present.stamp = true;
        let d = describe(&i);
        assert!(
            !d.launch.contains("stamp"),
            "too small for the stamp: {}",
            d.launch
        );
        let s = SourceConfig {
            width: 1280,
            height: 720,
            ..source()
        };
        i.source = &s;
        let d = describe(&i);
        assert!(
            d.launch.contains("video/x-raw,format=I420,width=1280"),
            "{}",
            d.launch
        );
        assert!(d.launch.contains("identity name=stamp ! "), "{}", d.launch);
    }

    #[test]
    fn raw_camera_through_appsrc_with_what_it_granted() {
        let s = source();
        let cam = camera(PixelFormat::Yuyv, "YUYV");
        let d = describe(&inputs(&s, Probed::V4l2(&cam)));
        assert!(
            d.launch.starts_with(
                "appsrc name=camsrc is-live=true format=time do-timestamp=true max-bytes=0 \
                 max-buffers=3 leaky-type=downstream \
                 caps=\"video/x-raw,format=YUY2,width=1280,height=720\" ! videoconvert ! "
            ),
            "{}",
            d.launch
        );
        assert_eq!(d.info.source, "/dev/video0 (vivid)");
        assert_eq!(d.info.encoder, "x264enc");
        assert_eq!((d.info.width, d.info.height), (1280, 720));
        assert_eq!((d.info.fps, d.info.asked_fps), (25.0, 30));
        assert_eq!(d.info.format, "YUYV");
        assert_eq!(d.info.camera, CameraState::Ok);
        assert_eq!(d.info.device, Some(PathBuf::from("/dev/video0")));
        assert_eq!(d.picture.fps, 25);
    }

    #[test]
    fn mjpeg_camera_is_decoded_by_the_board_where_it_can() {
        let s = source();
        let cam = camera(PixelFormat::Mjpeg, "MJPG");
        let mut i = inputs(&s, Probed::V4l2(&cam));
        let d = describe(&i);
        assert!(
            d.launch
                .contains("caps=\"image/jpeg,width=1280,height=720\" ! jpegdec ! videoconvert"),
            "{}",
            d.launch
        );
        i.present.hardware_jpeg = true;
        let d = describe(&i);
        assert!(
            d.launch.contains("! v4l2jpegdec ! videoconvert"),
            "{}",
            d.launch
        );
    }

    #[test]
    fn nv12_camera_needs_no_decoder() {
        let s = source();
        let cam = camera(PixelFormat::Nv12, "NV12");
        let d = describe(&inputs(&s, Probed::V4l2(&cam)));
        assert!(d
            .launch
            .contains("format=NV12,width=1280,height=720\" ! videoconvert"));
        assert!(!d.launch.contains("jpegdec"));
    }

    #[test]
    fn camera_h264_passes_through_without_encoder_tee_or_snapshots() {
        let s = source();
        let cam = camera(PixelFormat::H264, "H264");
        let mut i = inputs(&s, Probed::V4l2(&cam));
        i.turn = Turn::Half;
        let d = describe(&i);
        assert!(d.passthrough);
        assert_eq!(d.info.encoder, "camera (H.264 passthrough)");
        assert_eq!(
            d.launch,
            "appsrc name=camsrc is-live=true format=time do-timestamp=true max-bytes=0 \
             max-buffers=3 leaky-type=downstream \
             caps=\"video/x-h264,stream-format=byte-stream,width=1280,height=720\" ! \
             h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! \
             appsink name=sink sync=false max-buffers=8 drop=true"
        );
        assert_eq!(d.notes, vec![Note::PassthroughNotTurned]);
    }

    #[test]
    fn hardware_encoder_gets_its_own_input_format() {
        let s = source();
        let mpp = encoder::CATALOGUE
            .iter()
            .find(|e| e.element == "mpph264enc")
            .unwrap();
        let mut i = inputs(&s, Probed::Test);
        i.encoder = mpp;
        let d = describe(&i);
        assert!(
            d.launch.contains("video/x-raw,format=NV12 ! tee name=raw"),
            "{}",
            d.launch
        );
        assert!(d.launch.contains("mpph264enc"), "{}", d.launch);
        assert_eq!(d.info.encoder, "mpph264enc");
    }

    #[test]
    fn the_raw_tee_is_where_the_vp8_branch_attaches() {
        let s = source();
        let d = describe(&inputs(&s, Probed::Test));
        assert!(d
            .launch
            .contains(&format!("tee name={} allow-not-linked=true", vp8::RAW_TEE)));
        assert!(d.launch.contains(" raw. ! queue"), "{}", d.launch);
    }

    #[test]
    fn a_quarter_turn_swaps_the_sides_the_encoder_sees() {
        let mut s = source();
        s.rotation = Rotation::R90;
        let mut i = inputs(&s, Probed::Test);
        i.turn = Turn::Clockwise;
        let d = describe(&i);
        assert!(
            d.launch
                .contains("videoflip video-direction=1 ! videoconvert"),
            "{}",
            d.launch
        );
        assert_eq!((d.info.width, d.info.height), (480, 640));
        assert_eq!((d.picture.width, d.picture.height), (480, 640));
        assert_eq!(d.notes, vec![Note::Turned(Turn::Clockwise)]);
    }

    #[test]
    fn audio_makes_both_sinks_keep_the_clock() {
        let s = source();
        let audio = AudioConfig {
            enabled: true,
            ..Default::default()
        };
        let mut i = inputs(&s, Probed::Test);
        i.audio = Some(&audio);
        let d = describe(&i);
        assert!(
            d.launch.contains("appsink name=sink sync=true"),
            "{}",
            d.launch
        );
        assert!(d.launch.ends_with(&audio::branch(&audio)), "{}", d.launch);
        assert!(d.launch.contains("appsink name=audiosink sync=true"));
    }

    #[test]
    fn libcamera_names_its_camera() {
        let mut s = source();
        s.kind = SourceKind::Libcamera;
        let d = describe(&inputs(&s, Probed::Libcamera));
        assert!(d
            .launch
            .starts_with("libcamerasrc ! video/x-raw,width=640,height=480,framerate=30/1 ! "));
        assert_eq!(d.info.source, "libcamera");
        s.device = "/base/soc/i2c0mux/i2c@1/imx219@10".into();
        let d = describe(&inputs(&s, Probed::Libcamera));
        assert!(d
            .launch
            .starts_with("libcamerasrc camera-name=\"/base/soc/i2c0mux/i2c@1/imx219@10\" ! "));
        assert_eq!(d.info.source, "libcamera /base/soc/i2c0mux/i2c@1/imx219@10");
        assert_eq!(d.info.format, "raw (libcamera)");
        assert_eq!(d.info.camera, CameraState::Ok);
    }
}
