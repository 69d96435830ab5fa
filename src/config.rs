//! rtcam's configuration: the TOML file a user writes, validated once at load.
//!
//! Every field is documented here and in `rtcam.example.toml`, which `rtcam config example`
//! prints and a test parses. Unknown keys are refused (`deny_unknown_fields`) so a typo is an
//! error naming the file, line and key, never a silently ignored setting.
//!
//! This module owns parsing and the settings' shapes (types, ranges, keys that go together)
//! only; it opens no device and no socket, and it depends on no other part of rtcam. What a
//! value means to the part using it (an encoder's name, a topic level, a broker URL) that part
//! checks, returning a [`Refusal`]; `app::check_config` runs those checks before anything
//! starts.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The documented example configuration, shipped in the binary so `rtcam config example`
/// works on a board with nothing else installed.
pub const EXAMPLE: &str = include_str!("../rtcam.example.toml");

/// The example with every setting commented out, for `/etc/rtcam/rtcam.toml` in the .deb
/// (`packaging/rtcam.toml`, which `tests/cli.rs` keeps equal to this). It shows each key and
/// its default but sets none, so the defaults stay the binary's: an upgrade can change one
/// without dpkg asking about a conffile the user never edited.
pub fn commented_example() -> String {
    let mut out = String::from(
        "# Every setting below is commented out: rtcam uses its built-in defaults, shown here.\n\
         # Uncomment a line (keep its [section]) to change it.\n",
    );
    for line in EXAMPLE.lines() {
        let setting = !(line.is_empty() || line.starts_with('#') || line.starts_with('['));
        if setting {
            out.push_str("# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Longest lifetime of derived TURN credentials: a leaked one must not work for ever.
const MAX_TURN_TTL_SECS: u64 = 30 * 86_400;

/// The shortest token secret rtcam accepts (`[auth] secret`, or the `auth_secret` credential):
/// HS256's key is as strong as its secret, and RFC 7518 (3.2) asks for at least the hash's 256
/// bits.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where rtcam looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/rtcam/rtcam.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A syntax error, an unknown key or a value of the wrong type, located in the file.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value of the right type but outside its shape (a zero frame rate, a lone
    /// `tls_cert`…).
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    /// A value of the right shape that the part of rtcam using it refuses (an encoder rtcam
    /// does not know, a broker URL it cannot parse).
    #[error("{origin}: {refusal}")]
    Refused {
        origin: Origin,
        #[source]
        refusal: Refusal,
    },
}

/// What a part of rtcam says about a setting it checks before anything starts: the key, and
/// why the value cannot work there. `app::check_config` names the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct Refusal {
    pub key: &'static str,
    #[source]
    pub reason: Box<dyn std::error::Error + Send + Sync>,
}

impl Refusal {
    /// `reason` is the part's own error, or a sentence where the part has no error type.
    pub fn new(
        key: &'static str,
        reason: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            key,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub device: DeviceConfig,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub source: SourceConfig,
    pub encoder: EncoderConfig,
    pub webrtc: WebrtcConfig,
    pub control: ControlConfig,
    pub auth: AuthConfig,
    pub audio: AudioConfig,
    pub rtsp: RtspConfig,
}

/// The RTSP door (`rtsp://BOARD:8554/live`) for NVRs, VLC, ffmpeg and media servers: the same
/// encoded H.264 (and Opus) the WebRTC viewers get, never a second encoder. Off unless
/// `enabled`: it opens a port on the network that speaks a protocol without encryption.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtspConfig {
    /// Serve the stream over RTSP.
    pub enabled: bool,
    /// Where the RTSP server listens (TCP; RTP over UDP uses ports the client and server agree
    /// on in SETUP, or the same TCP connection, interleaved).
    pub listen: SocketAddr,
    /// The stream's path: `rtsp://BOARD:PORT/PATH`.
    pub path: String,
}

impl Default for RtspConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 8554)),
            path: "live".into(),
        }
    }
}

impl RtspConfig {
    fn validate(&self) -> Checked {
        let ok = !self.path.is_empty()
            && self
                .path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b))
            && !self.path.starts_with('/')
            && !self.path.ends_with('/')
            && !self.path.contains("//");
        if !ok {
            return Err((
                "rtsp.path",
                format!(
                    "{:?} is not a stream path: use letters, digits and - _ . ~, with / between \
                     parts (as in \"live\" or \"cam/front\")",
                    self.path
                ),
            ));
        }
        Ok(())
    }
}

/// Sound: a microphone sent to every viewer (Opus), and optionally a viewer's microphone
/// played on the board. Off unless `enabled`; a config without `[audio]` streams video only.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// Capture sound and offer it to viewers whose offer has an Opus audio section.
    pub enabled: bool,
    /// `test` (a tone), `alsa:DEVICE` (e.g. `alsa:hw:1,0`), `pulse` or `pulse:DEVICE`.
    pub source: String,
    /// Opus bitrate in kbit/s (6–510).
    pub bitrate_kbps: u32,
    /// Opus in-band forward error correction: costs bitrate, hides single lost packets.
    pub fec: bool,
    /// Play a viewer's microphone on the board (one talking viewer at a time).
    pub talkback: bool,
    /// Where talkback is played: `auto` (autoaudiosink), `alsa:DEVICE`, `pulse`, or `fake`
    /// (played nowhere, only counted: for tests and boards without a speaker).
    pub sink: String,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            source: "test".into(),
            bitrate_kbps: 32,
            fec: false,
            talkback: false,
            sink: "auto".into(),
        }
    }
}

/// Where sound comes from or goes to, parsed from `[audio] source` / `sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioEndpoint {
    /// The test tone (`source`) or the counting sink (`sink`).
    Test,
    /// GStreamer's automatic choice (`sink = "auto"` only).
    Auto,
    /// An ALSA device such as `hw:1,0`.
    Alsa(String),
    /// PulseAudio (or PipeWire's Pulse server); `None` is the default device.
    Pulse(Option<String>),
}

impl AudioEndpoint {
    /// Parses `test`/`fake`, `auto`, `alsa:DEVICE`, `pulse`, `pulse:DEVICE`. `test_word` is the
    /// word for the test endpoint (`test` for sources, `fake` for sinks).
    pub fn parse(text: &str, test_word: &str, auto_allowed: bool) -> Result<Self, String> {
        let device_ok = |d: &str| {
            !d.is_empty()
                && d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":,._-=".contains(c))
        };
        match text {
            t if t == test_word => Ok(Self::Test),
            "auto" if auto_allowed => Ok(Self::Auto),
            "pulse" => Ok(Self::Pulse(None)),
            t => match t.split_once(':') {
                Some(("alsa", dev)) if device_ok(dev) => Ok(Self::Alsa(dev.into())),
                Some(("pulse", dev)) if device_ok(dev) => Ok(Self::Pulse(Some(dev.into()))),
                _ => Err(format!(
                    "{t:?} is not {test_word:?}{}, \"alsa:DEVICE\" (e.g. alsa:hw:1,0), \"pulse\" or \"pulse:DEVICE\"",
                    if auto_allowed { ", \"auto\"" } else { "" }
                )),
            },
        }
    }
}

impl AudioConfig {
    /// The validated source; `validate` has checked it parses.
    pub fn source(&self) -> Result<AudioEndpoint, String> {
        AudioEndpoint::parse(&self.source, "test", false)
    }

    /// The validated talkback sink.
    pub fn sink(&self) -> Result<AudioEndpoint, String> {
        AudioEndpoint::parse(&self.sink, "fake", true)
    }

    fn validate(&self) -> Checked {
        self.source().map_err(|m| ("audio.source", m))?;
        self.sink().map_err(|m| ("audio.sink", m))?;
        if !(6..=510).contains(&self.bitrate_kbps) {
            return Err((
                "audio.bitrate_kbps",
                format!("{} is not between 6 and 510", self.bitrate_kbps),
            ));
        }
        if self.talkback && !self.enabled {
            return Err((
                "audio.talkback",
                "needs enabled = true: talkback rides on the audio section rtcam negotiates".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// When set, viewers need a token signed with this secret (a JWT, HS256: `rtcam token`
    /// or any JWT library), and HTTP requests for the page, snapshots, metrics and `/mqtt`
    /// need one too; talkback needs the `talk` right. At least 32 bytes. Empty: the camera
    /// is open to whoever reaches it (or the `auth_secret` systemd credential sets it).
    pub secret: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// The device id in MQTT topics (`{prefix}/{id}/…`). Empty means the hostname.
    pub id: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `embedded` runs a broker inside rtcam; otherwise `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// First topic level of every topic rtcam uses.
    pub prefix: String,
    /// Username for an external broker (empty: none).
    pub username: String,
    /// Password for an external broker (empty: none).
    pub password: String,
    /// PEM file with the CA that signs an `mqtts://` broker's certificate. Empty: the system roots.
    pub ca_file: String,
    /// For `mqtts://`: PEM client certificate and its key, to log in with a certificate. Needs
    /// `ca_file`.
    pub client_cert_file: String,
    pub client_key_file: String,
    /// MQTT client id. Empty: `rtcam-{device id}-` and 8 random alphanumerics, new at every
    /// start, so no other client can guess it and take rtcam's connection over (a broker hands
    /// a client id to whoever connects with it last). A fixed id set here can be taken over by
    /// anyone the broker lets connect.
    pub client_id: String,
    /// Keep-alive interval in seconds; the broker declares rtcam offline after 1.5 × this.
    pub keep_alive_secs: u64,
    /// With `url = "embedded"`: where the embedded broker accepts MQTT (3.1.1 and 5) from other
    /// programs (Home Assistant, scripts), through the same gate as the page's `/mqtt`.
    pub embedded_listen: SocketAddr,
    /// With `url = "embedded"`: a second address for the same, for tools set up for MQTT 5's
    /// customary second port.
    pub embedded_listen_v5: SocketAddr,
    /// With `url = "embedded"`: broker users, a password file in mosquitto's format (`rtcam
    /// passwd FILE USER` or `mosquitto_passwd` make it; hashed, never plain text). They may
    /// send commands and read everything of this camera. Empty: the systemd credential
    /// `mqtt_users`, if any, else none (clients without a login may only watch).
    pub users_file: String,
    /// With `url = "embedded"`: allow `embedded_listen` on an address other machines reach
    /// while there are no broker users (those clients may only watch, as on `/mqtt`).
    pub embedded_allow_anonymous: bool,
    /// Whether the configuration file sets `embedded_listen` and `embedded_listen_v5`. Not a
    /// key: [`Config::parse`] fills it in. A default address another program holds (a
    /// mosquitto already on 1883) gives way to a free port; an address the user chose does not.
    #[serde(skip)]
    pub embedded_listen_chosen: ListenChosen,
}

/// Which embedded broker addresses came from the configuration file rather than the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenChosen {
    pub v311: bool,
    pub v5: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "embedded".into(),
            prefix: "rtcam".into(),
            username: String::new(),
            password: String::new(),
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            client_id: String::new(),
            keep_alive_secs: 10,
            embedded_listen: "127.0.0.1:1883".parse().expect("literal address"),
            embedded_listen_v5: "127.0.0.1:1884".parse().expect("literal address"),
            users_file: String::new(),
            embedded_allow_anonymous: false,
            embedded_listen_chosen: ListenChosen::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP server that serves the viewer page (and `/mqtt` for browsers).
    pub listen: SocketAddr,
    /// The broker URL the viewer page connects to. Empty: the `/mqtt` WebSocket of this server,
    /// which forwards to the configured broker, so a viewer needs this one port and nothing else.
    pub viewer_broker_url: String,
    /// Address of the HTTPS server: the same page and routes over TLS, which browsers need
    /// before they let a page on another machine use the microphone (Talk). Empty: no HTTPS.
    pub https_listen: String,
    /// PEM file with the HTTPS certificate (and its chain). Empty: a self-signed certificate
    /// rtcam makes on its first start and keeps in its state directory.
    pub tls_cert: String,
    /// PEM file with the private key of `tls_cert`.
    pub tls_key: String,
    /// Where rtcam keeps its self-signed certificate when systemd gives it no
    /// `$STATE_DIRECTORY`. Empty: `$XDG_STATE_HOME/rtcam`, else `~/.local/state/rtcam`.
    pub state_dir: String,
    /// Send plain-HTTP requests (but `/mqtt`) to HTTPS with a redirect (308).
    pub redirect_http: bool,
    /// Names the server answers to in `Host` besides IP addresses, `localhost` and this
    /// machine's hostname (also `<hostname>.local`): e.g. a DNS name pointing at the camera.
    /// Other names are refused, so a web page cannot reach the camera by DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("literal address"),
            viewer_broker_url: String::new(),
            https_listen: "0.0.0.0:8443".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            state_dir: String::new(),
            redirect_http: false,
            allowed_hosts: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// The HTTPS address, if HTTPS is on (validated at load).
    pub fn https_listen(&self) -> Option<SocketAddr> {
        self.https_listen.parse().ok()
    }

    fn validate(&self) -> Checked {
        if !self.https_listen.is_empty() && self.https_listen.parse::<SocketAddr>().is_err() {
            return Err((
                "http.https_listen",
                format!(
                    "{:?} is not an address and port (e.g. \"0.0.0.0:8443\"); \"\" turns HTTPS off",
                    self.https_listen
                ),
            ));
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return Err((
                "http.tls_cert",
                "give tls_cert and tls_key together (both empty: a self-signed certificate)".into(),
            ));
        }
        if self.redirect_http && self.https_listen.is_empty() {
            return Err((
                "http.redirect_http",
                "redirecting to HTTPS needs https_listen".into(),
            ));
        }
        for name in &self.allowed_hosts {
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !plain {
                return Err((
                    "http.allowed_hosts",
                    format!("{name:?} is not a host name (no scheme, port or path)"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// libcamera's camera if it sees one, else the first usable V4L2 capture device (metadata,
    /// memory-to-memory and raw-Bayer-only nodes skipped), else the test pattern.
    Auto,
    /// A moving test pattern with a clock overlay.
    Test,
    /// A V4L2 capture device (USB webcam, Pi camera through the V4L2 compatibility layer).
    V4l2,
    /// A camera driven by libcamera (Raspberry Pi CSI camera modules), through GStreamer's
    /// `libcamerasrc` element (Debian package `gstreamer1.0-libcamera`).
    Libcamera,
}

/// A value for one camera control in `[source.controls]`: a number, `true`/`false`, or the name
/// of a menu entry (e.g. `"aperture_priority_mode"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ControlSetting {
    Int(i64),
    Bool(bool),
    Text(String),
}

impl fmt::Display for ControlSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlSetting::Int(v) => write!(f, "{v}"),
            ControlSetting::Bool(v) => write!(f, "{v}"),
            ControlSetting::Text(v) => f.write_str(v),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Whatever costs the board least: H.264 passthrough, then raw, then MJPEG.
    Auto,
    H264,
    Mjpeg,
    Yuyv,
    Nv12,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// V4L2 device node; empty means the first capture device.
    pub device: String,
    /// Pixel format asked of the camera.
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Keep the camera and encoder running with no viewer (for snapshots at any moment, or
    /// recording). Off: the pipeline starts with the first viewer and stops `idle_stop_secs`
    /// after the last one leaves, so an unwatched board uses no CPU for video.
    pub always_on: bool,
    pub idle_stop_secs: u64,
    /// Camera controls set every time the camera is opened, by the names `rtcam controls`
    /// shows (`brightness = 140`, `focus_automatic_continuous = false`).
    pub controls: std::collections::BTreeMap<String, ControlSetting>,
    /// Turns the picture clockwise by 0, 90, 180 or 270 degrees, after the flips below.
    pub rotation: Rotation,
    /// Mirrors the picture left to right (a camera seen in a mirror, or mounted behind glass).
    pub hflip: bool,
    /// Mirrors the picture top to bottom.
    pub vflip: bool,
}

/// `[source] rotation`: degrees clockwise. Anything but the four right angles is refused where
/// the file says it, so the error carries its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(into = "u16")]
pub enum Rotation {
    #[default]
    R0,
    R90,
    R180,
    R270,
}

impl Rotation {
    pub fn degrees(self) -> u16 {
        match self {
            Rotation::R0 => 0,
            Rotation::R90 => 90,
            Rotation::R180 => 180,
            Rotation::R270 => 270,
        }
    }

    pub fn from_degrees(degrees: u64) -> Option<Rotation> {
        Some(match degrees {
            0 => Rotation::R0,
            90 => Rotation::R90,
            180 => Rotation::R180,
            270 => Rotation::R270,
            _ => return None,
        })
    }
}

impl From<Rotation> for u16 {
    fn from(r: Rotation) -> u16 {
        r.degrees()
    }
}

impl<'de> Deserialize<'de> for Rotation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let degrees = i64::deserialize(d)?;
        u64::try_from(degrees)
            .ok()
            .and_then(Rotation::from_degrees)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "rotation {degrees} is not one of 0, 90, 180, 270 (degrees clockwise)"
                ))
            })
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kind: SourceKind::Auto,
            device: String::new(),
            format: PixelFormat::Auto,
            width: 1280,
            height: 720,
            fps: 30,
            always_on: false,
            idle_stop_secs: 10,
            controls: Default::default(),
            rotation: Rotation::R0,
            hflip: false,
            vflip: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// `auto` picks the best H.264 encoder present; or name a GStreamer element.
    pub element: String,
    pub bitrate_kbps: u32,
    /// Frames between keyframes. Viewers that join mid-stream get a forced keyframe anyway.
    pub keyframe_interval: u32,
    /// Shortest time between two keyframes forced for joining viewers, so a crowd joining at
    /// once costs one keyframe, not one each.
    pub keyframe_min_interval_ms: u64,
    /// Viewers whose browser offers no H.264 (Firefox without its OpenH264 plugin) get VP8 from
    /// a second encoder (`vp8enc`, same bitrate and keyframe interval) that runs only while such
    /// a viewer watches. `false`: such offers are refused with `no_video_codec`.
    pub vp8_fallback: bool,
    /// Bitrate adaptation: the encoder follows what viewers receive, between these bounds
    /// (see docs/reliability.md). The encoder starts at `bitrate_kbps`. A minimum at or above
    /// the maximum turns adaptation off.
    pub min_bitrate_kbps: u32,
    /// Upper bound; 0 means `bitrate_kbps`.
    pub max_bitrate_kbps: u32,
    /// A viewer far below the others does not drag the encoder below this fraction of the
    /// strongest viewer's estimate; it gets keyframe-skipping at its own rate instead.
    pub follow_ratio: f64,
}

impl EncoderConfig {
    /// The adaptation bounds, or `None` when adaptation is off (equal bounds).
    pub fn adaptation(&self) -> Option<(u32, u32)> {
        let max = if self.max_bitrate_kbps == 0 {
            self.bitrate_kbps
        } else {
            self.max_bitrate_kbps
        };
        (self.min_bitrate_kbps < max).then_some((self.min_bitrate_kbps, max))
        // A minimum at or above the maximum (say bitrate_kbps = 200 with the default minimum)
        // means a fixed bitrate: there is no room to adapt in.
    }
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            element: "auto".into(),
            bitrate_kbps: 2000,
            keyframe_interval: 60,
            keyframe_min_interval_ms: 500,
            vp8_fallback: true,
            min_bitrate_kbps: 300,
            max_bitrate_kbps: 0,
            follow_ratio: 0.5,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, `turns:…`.
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebrtcConfig {
    /// STUN and TURN servers, given to rtcam's peer connections and to the viewer page.
    pub ice_servers: Vec<IceServer>,
    /// Viewers served at once; the next one is told `too_many_sessions`.
    pub max_sessions: usize,
    /// How long a session may stay disconnected (ICE) before rtcam ends it.
    pub disconnect_timeout_secs: u64,
    /// Local addresses to gather ICE candidates on. Empty: every up interface, loopback included.
    #[serde(deserialize_with = "udp_addrs")]
    pub udp_addrs: Vec<std::net::IpAddr>,
    /// The one UDP port every session shares, on each of those addresses: the port to forward
    /// and open. 0: a port of its own for each session, picked by the system.
    pub udp_port: u16,
    /// The port for ICE over TCP (passive), shared by every session in the same way, for
    /// networks that block UDP. 0: no ICE-TCP.
    pub tcp_port: u16,
    /// Addresses viewers outside reach rtcam at (a port forward's or 1:1 NAT's outside
    /// address), announced beside the local ones. Needs `udp_port`.
    #[serde(deserialize_with = "public_ips")]
    pub public_ips: Vec<std::net::IpAddr>,
    /// New sessions per second the device accepts (twice as many in a burst).
    pub offers_per_second: u32,
    /// Remote ICE candidates one session may send.
    pub max_candidates_per_session: usize,
    /// TURN servers (`turn:host:port?transport=udp`) that take TURN REST credentials derived
    /// from `turn_secret` (coturn: `use-auth-secret`). rtcam derives fresh ones for its own
    /// peers and for each viewer that asks (`/config.json`, the `ice_servers` message).
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`). Never sent to
    /// viewers: they get credentials derived from it. Empty: from the `turn_secret` systemd
    /// credential, if any.
    pub turn_secret: String,
    /// How long derived TURN credentials stay valid. A relayed session needs them for its
    /// allocation refreshes, so this bounds how long one relayed session can last.
    pub turn_ttl_secs: u64,
}

/// A list of IP addresses under `key`: an entry that is not one (a host name, a typo) is an
/// error naming the key and the entry, where serde's own would say only "invalid IP address".
fn ip_list<'de, D: serde::Deserializer<'de>>(
    key: &str,
    d: D,
) -> Result<Vec<std::net::IpAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "webrtc.{key}: {s:?} is not an IP address (host names cannot be used here)"
                ))
            })
        })
        .collect()
}

fn udp_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<std::net::IpAddr>, D::Error> {
    ip_list("udp_addrs", d)
}

fn public_ips<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<std::net::IpAddr>, D::Error> {
    ip_list("public_ips", d)
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            max_sessions: 8,
            disconnect_timeout_secs: 15,
            udp_addrs: Vec::new(),
            udp_port: 8555,
            tcp_port: 8555,
            public_ips: Vec::new(),
            offers_per_second: 5,
            max_candidates_per_session: 64,
            turn_urls: Vec::new(),
            turn_secret: String::new(),
            turn_ttl_secs: 86_400,
        }
    }
}

/// Who may change the camera's state over a viewer's data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViewerCommands {
    /// Read-only commands only (status, sessions, controls, snapshot).
    ReadOnly,
    /// Every command, as over MQTT.
    All,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Seconds between telemetry messages on `R/telemetry`.
    pub telemetry_interval_secs: u64,
    /// What viewers may do over their `control` data channel.
    pub viewer_commands: ViewerCommands,
    /// Announce the camera to Home Assistant (MQTT discovery). `false` removes an earlier
    /// announcement.
    pub ha_discovery: bool,
    /// Home Assistant's discovery prefix.
    pub ha_prefix: String,
    /// Commands per second accepted over MQTT (all requesters together) and per data channel,
    /// with bursts of twice that.
    pub commands_per_second: u32,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            telemetry_interval_secs: 10,
            viewer_commands: ViewerCommands::ReadOnly,
            ha_discovery: true,
            ha_prefix: "homeassistant".into(),
            commands_per_second: 20,
        }
    }
}

impl WebrtcConfig {
    pub fn disconnect_timeout(&self) -> Duration {
        Duration::from_secs(self.disconnect_timeout_secs)
    }
}

/// A section's shape check: the key at fault and what is wrong with its value.
type Checked = Result<(), (&'static str, String)>;

/// A value outside `range`, said the same way for every numeric key.
fn within<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Checked {
    if range.contains(&value) {
        return Ok(());
    }
    Err((
        key,
        format!(
            "{value} is not between {} and {}",
            range.start(),
            range.end()
        ),
    ))
}

/// A count that must be at least one.
fn at_least_one(key: &'static str, value: u64) -> Checked {
    if value == 0 {
        return Err((key, "must be at least 1".into()));
    }
    Ok(())
}

impl MqttConfig {
    fn validate(&self) -> Checked {
        if self.client_cert_file.is_empty() != self.client_key_file.is_empty() {
            return Err((
                "mqtt.client_cert_file",
                "give client_cert_file and client_key_file together".into(),
            ));
        }
        if !self.client_cert_file.is_empty() && self.ca_file.is_empty() {
            return Err((
                "mqtt.client_cert_file",
                "a client certificate needs ca_file, the CA that signed the broker's certificate"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl AuthConfig {
    fn validate(&self) -> Checked {
        if !self.secret.is_empty() && self.secret.len() < MIN_SECRET_BYTES {
            return Err((
                "auth.secret",
                format!(
                    "{} bytes is too short to sign tokens with; use at least {MIN_SECRET_BYTES} \
                     (e.g. `openssl rand -base64 32`)",
                    self.secret.len(),
                ),
            ));
        }
        Ok(())
    }
}

impl SourceConfig {
    fn validate(&self) -> Checked {
        if !(16..=7680).contains(&self.width) || !(16..=4320).contains(&self.height) {
            return Err((
                "source.width",
                format!(
                    "{}x{} is not a video size rtcam can stream",
                    self.width, self.height
                ),
            ));
        }
        if self.width % 2 != 0 || self.height % 2 != 0 {
            return Err((
                "source.width",
                format!(
                    "{}x{}: H.264 needs an even width and height",
                    self.width, self.height
                ),
            ));
        }
        within("source.fps", self.fps, 1..=120)?;
        let control_name = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if let Some(name) = self.controls.keys().find(|n| !control_name(n)) {
            return Err((
                "source.controls",
                format!("{name:?} is not a control name: use the names `rtcam controls` prints (lowercase, '_')"),
            ));
        }
        Ok(())
    }
}

impl EncoderConfig {
    fn validate(&self) -> Checked {
        within("encoder.bitrate_kbps", self.bitrate_kbps, 50..=50_000)?;
        let max = if self.max_bitrate_kbps == 0 {
            self.bitrate_kbps
        } else {
            self.max_bitrate_kbps
        };
        within("encoder.max_bitrate_kbps", max, 50..=50_000)?;
        within(
            "encoder.min_bitrate_kbps",
            self.min_bitrate_kbps,
            50..=50_000,
        )?;
        if !(self.follow_ratio > 0.0 && self.follow_ratio <= 1.0) {
            return Err((
                "encoder.follow_ratio",
                format!("{} is not above 0 and at most 1", self.follow_ratio),
            ));
        }
        at_least_one("encoder.keyframe_interval", self.keyframe_interval.into())
    }
}

impl ControlConfig {
    fn validate(&self) -> Checked {
        within(
            "control.telemetry_interval_secs",
            self.telemetry_interval_secs,
            1..=3600,
        )?;
        if self.ha_prefix.is_empty() || self.ha_prefix.contains(['+', '#']) {
            return Err((
                "control.ha_prefix",
                "must be a topic prefix without wildcards".into(),
            ));
        }
        at_least_one(
            "control.commands_per_second",
            self.commands_per_second.into(),
        )
    }
}

impl WebrtcConfig {
    fn validate_limits(&self) -> Checked {
        at_least_one("webrtc.offers_per_second", self.offers_per_second.into())?;
        at_least_one("webrtc.max_sessions", self.max_sessions as u64)?;
        let ice_url = |url: &&String| {
            let scheme = url.split(':').next().unwrap_or_default();
            matches!(scheme, "stun" | "stuns" | "turn" | "turns")
        };
        let mut urls = self.ice_servers.iter().flat_map(|s| &s.urls);
        if let Some(url) = urls.find(|u| !ice_url(u)) {
            return Err((
                "webrtc.ice_servers",
                format!("{url:?} is not a stun:, stuns:, turn: or turns: URL"),
            ));
        }
        Ok(())
    }

    fn validate_turn(&self) -> Checked {
        let turn_url = |url: &&String| url.starts_with("turn:") || url.starts_with("turns:");
        if let Some(url) = self.turn_urls.iter().find(|u| !turn_url(u)) {
            return Err((
                "webrtc.turn_urls",
                format!("{url:?} is not a turn: or turns: URL"),
            ));
        }
        if !self.turn_secret.is_empty() && self.turn_urls.is_empty() {
            return Err((
                "webrtc.turn_secret",
                "a TURN secret needs turn_urls, the TURN servers that share it".into(),
            ));
        }
        if !(1..=MAX_TURN_TTL_SECS).contains(&self.turn_ttl_secs) {
            return Err((
                "webrtc.turn_ttl_secs",
                format!(
                    "{} is not between 1 and {MAX_TURN_TTL_SECS} (30 days)",
                    self.turn_ttl_secs
                ),
            ));
        }
        Ok(())
    }
}

/// Which of `[mqtt] embedded_listen` and `embedded_listen_v5` TOML text that already parsed as a
/// [`Config`] sets.
fn listen_chosen(text: &str) -> ListenChosen {
    let mqtt = toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("mqtt").and_then(|m| m.as_table()).cloned())
        .unwrap_or_default();
    ListenChosen {
        v311: mqtt.contains_key("embedded_listen"),
        v5: mqtt.contains_key("embedded_listen_v5"),
    }
}

/// Where a configuration came from, for messages and `reload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    BuiltIn,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::BuiltIn => f.write_str("built-in defaults"),
        }
    }
}

impl Config {
    /// Loads the configuration rtcam runs with: `explicit` if given, else [`DEFAULT_PATH`] if it
    /// exists, else the built-in demo defaults.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, Origin), ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Ok((Config::default(), Origin::BuiltIn)),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = Config::parse(&text, &path)?;
        Ok((config, Origin::File(path)))
    }

    /// Parses TOML text and checks its shapes; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        config.mqtt.embedded_listen_chosen = listen_chosen(text);
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the shapes of every section: ranges, keys that go together, the syntax of names
    /// and URLs. What a value means to the part that uses it (an encoder rtcam knows, a topic
    /// level, a broker URL) that part checks before anything starts (`app::check_config`).
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check_sections()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            })
    }

    /// The sections' checks in the file's order, so the first problem reported is the first
    /// a reader meets.
    fn check_sections(&self) -> Checked {
        self.mqtt.validate()?;
        self.auth.validate()?;
        self.source.validate()?;
        self.encoder.validate()?;
        self.control.validate()?;
        self.webrtc.validate_limits()?;
        self.audio.validate()?;
        self.http.validate()?;
        self.rtsp.validate()?;
        self.webrtc.validate_turn()
    }

    /// The device id used in topics: the configured one, else the hostname made topic-safe.
    pub fn device_id(&self) -> String {
        if !self.device.id.is_empty() {
            return self.device.id.clone();
        }
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let safe: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        if safe.is_empty() {
            "rtcam".into()
        } else {
            safe
        }
    }
}

/// 1-based line and column of a byte offset, for error messages people can jump to.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_knows_which_broker_addresses_the_file_sets() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        assert_eq!(c.mqtt.embedded_listen_chosen, ListenChosen::default());
        // Even the default value, written out, is the user's choice.
        let c = Config::parse(
            "[mqtt]\nembedded_listen = \"127.0.0.1:1883\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(
            c.mqtt.embedded_listen_chosen,
            ListenChosen {
                v311: true,
                v5: false
            }
        );
    }

    #[test]
    fn example_parses_and_matches_defaults_where_documented() {
        let c = Config::parse(EXAMPLE, Path::new("rtcam.example.toml")).unwrap();
        assert_eq!(c.mqtt.url, "embedded");
        assert_eq!(c.http.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.webrtc.max_sessions, 8);
        let d = HttpConfig::default();
        assert_eq!(c.http.https_listen, d.https_listen);
        assert_eq!(c.http.redirect_http, d.redirect_http);
        assert_eq!(c.http.allowed_hosts, d.allowed_hosts);
        assert_eq!(
            (c.http.tls_cert.as_str(), c.http.tls_key.as_str()),
            ("", "")
        );
    }

    #[test]
    fn http_keys_are_checked() {
        let c = Config::parse("[http]\nhttps_listen = \"\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.http.https_listen(), None);
        let c = Config::parse(
            "[http]\nallowed_hosts = [\"cam.example.org\"]\nredirect_http = true\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.http.https_listen(), Some("0.0.0.0:8443".parse().unwrap()));
        for (text, key) in [
            ("https_listen = \"8443\"", "http.https_listen"),
            ("tls_cert = \"/etc/c.pem\"", "http.tls_cert"),
            (
                "https_listen = \"\"\nredirect_http = true",
                "http.redirect_http",
            ),
            ("allowed_hosts = [\"http://cam\"]", "http.allowed_hosts"),
            ("allowed_hosts = [\"cam:8080\"]", "http.allowed_hosts"),
        ] {
            let msg = Config::parse(&format!("[http]\n{text}\n"), Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[source]\nkind = \"test\"\nwidht = 640\n";
        let err = Config::parse(text, Path::new("/etc/rtcam/rtcam.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/rtcam/rtcam.toml:3:"), "{msg}");
        assert!(msg.contains("widht"), "{msg}");
    }

    #[test]
    fn wrong_type_is_located() {
        let text = "[encoder]\n\nbitrate_kbps = \"fast\"\n";
        let msg = Config::parse(text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("x.toml:3:"), "{msg}");
    }

    #[test]
    fn rotation_takes_right_angles_and_points_at_a_bad_one() {
        let c = Config::parse(
            "[source]\nrotation = 270\nhflip = true\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.source.rotation, Rotation::R270);
        assert!(c.source.hflip && !c.source.vflip);
        let msg = Config::parse(
            "[source]\nkind = \"test\"\nrotation = 45\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.starts_with("x.toml:3:"), "{msg}");
        assert!(msg.contains("0, 90, 180, 270"), "{msg}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let msg = Config::parse("[source]\nfps = 0\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("source.fps"), "{msg}");
        // What the encoder and the MQTT client make of their values is theirs to check
        // (`app::check_config`); their shapes pass here.
        assert!(Config::parse("[encoder]\nelement = \"nope\"\n", Path::new("x.toml")).is_ok());
        assert!(Config::parse("[mqtt]\nurl = \"http://x\"\n", Path::new("x.toml")).is_ok());
    }

    #[test]
    fn adaptation_bounds_are_checked_and_default_to_the_bitrate() {
        let c = Config::parse("[encoder]\nbitrate_kbps = 1500\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.encoder.adaptation(), Some((300, 1500)));
        let c = Config::parse("[encoder]\nbitrate_kbps = 200\n", Path::new("x.toml")).unwrap();
        assert_eq!(
            c.encoder.adaptation(),
            None,
            "no room below 200 for a 300 minimum"
        );
        let c = Config::parse(
            "[encoder]\nmin_bitrate_kbps = 100\nmax_bitrate_kbps = 4000\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.encoder.adaptation(), Some((100, 4000)));
        for (text, key) in [
            ("min_bitrate_kbps = 10", "encoder.min_bitrate_kbps"),
            ("max_bitrate_kbps = 90000", "encoder.max_bitrate_kbps"),
            ("follow_ratio = 0.0", "encoder.follow_ratio"),
            ("follow_ratio = 1.5", "encoder.follow_ratio"),
            ("follow_ratio = nan", "encoder.follow_ratio"),
        ] {
            let msg = Config::parse(&format!("[encoder]\n{text}\n"), Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }

    #[test]
    fn controls_table_takes_numbers_booleans_and_menu_names() {
        let text = "[source]\nkind = \"libcamera\"\n[source.controls]\nbrightness = 140\n\
                    focus_automatic_continuous = false\nauto_exposure = \"manual_mode\"\n";
        let c = Config::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(c.source.kind, SourceKind::Libcamera);
        assert_eq!(c.source.controls["brightness"], ControlSetting::Int(140));
        assert_eq!(
            c.source.controls["focus_automatic_continuous"],
            ControlSetting::Bool(false)
        );
        assert_eq!(
            c.source.controls["auto_exposure"],
            ControlSetting::Text("manual_mode".into())
        );
        let msg = Config::parse(
            "[source.controls]\n\"White Balance\" = 1\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("source.controls"), "{msg}");
        // The commented examples in the example file are valid as written.
        let uncommented = EXAMPLE
            .replace("# brightness", "brightness")
            .replace("# focus_automatic", "focus_automatic")
            .replace("# auto_exposure", "auto_exposure");
        let c = Config::parse(&uncommented, Path::new("example")).unwrap();
        assert_eq!(c.source.controls.len(), 3);
    }

    #[test]
    fn the_commented_example_sets_nothing() {
        let text = commented_example();
        let json = |t: &str| {
            serde_json::to_value(Config::parse(t, Path::new("rtcam.toml")).unwrap()).unwrap()
        };
        assert_eq!(json(&text), json(""));
        assert_eq!(json(&text), json(EXAMPLE));
        // Every key of the example is still there to uncomment.
        let keys = |t: &str| t.lines().filter(|l| l.contains(" = ")).count();
        assert_eq!(keys(&text), keys(EXAMPLE));
    }

    #[test]
    fn rtsp_is_off_by_default_and_its_path_checked() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert!(!c.rtsp.enabled);
        assert_eq!(c.rtsp.listen, SocketAddr::from(([0, 0, 0, 0], 8554)));
        assert_eq!(c.rtsp.path, "live");
        let c = Config::parse(
            "[rtsp]\nenabled = true\npath = \"cam/front\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(c.rtsp.enabled && c.rtsp.path == "cam/front");
        for path in ["", "/live", "live/", "a//b", "li ve", "live?x=1"] {
            let text = format!("[rtsp]\npath = {path:?}\n");
            let err = Config::parse(&text, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("x.toml: rtsp.path:"), "{err}");
        }
    }

    #[test]
    fn audio_section_is_off_by_default_and_checked() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert!(!c.audio.enabled && !c.audio.talkback);
        let c = Config::parse(
            "[audio]\nenabled = true\nsource = \"alsa:hw:1,0\"\ntalkback = true\nsink = \"pulse\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.audio.source(), Ok(AudioEndpoint::Alsa("hw:1,0".into())));
        assert_eq!(c.audio.sink(), Ok(AudioEndpoint::Pulse(None)));
        for (text, key) in [
            ("[audio]\nsource = \"mic\"\n", "audio.source"),
            ("[audio]\nsource = \"alsa:\"\n", "audio.source"),
            (
                "[audio]\nsource = \"alsa:hw:1 ! filesink\"\n",
                "audio.source",
            ),
            ("[audio]\nsink = \"speaker\"\n", "audio.sink"),
            ("[audio]\nbitrate_kbps = 1000\n", "audio.bitrate_kbps"),
            ("[audio]\ntalkback = true\n", "audio.talkback"),
        ] {
            let msg = Config::parse(text, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }

    #[test]
    fn turn_rest_settings_are_checked() {
        let ok = "[webrtc]\nturn_urls = [\"turn:t.lan:3478?transport=udp\"]\nturn_secret = \"s\"\nturn_ttl_secs = 600\n";
        assert!(Config::parse(ok, Path::new("x.toml")).is_ok());
        // The secret may still come from a credential: no error yet.
        assert!(Config::parse(
            "[webrtc]\nturn_urls = [\"turn:t.lan:3478\"]\n",
            Path::new("x.toml"),
        )
        .is_ok());
        for (text, key) in [
            (
                "[webrtc]\nturn_urls = [\"stun:t.lan\"]\n",
                "webrtc.turn_urls",
            ),
            ("[webrtc]\nturn_secret = \"s\"\n", "webrtc.turn_secret"),
            ("[webrtc]\nturn_ttl_secs = 0\n", "webrtc.turn_ttl_secs"),
        ] {
            let msg = Config::parse(text, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{text}: {msg}");
        }
    }

    #[test]
    fn a_token_secret_needs_32_bytes() {
        let msg = Config::parse("[auth]\nsecret = \"hunter2\"\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("x.toml: auth.secret: 7 bytes is too short"),
            "{msg}"
        );
        let ok = format!("[auth]\nsecret = \"{}\"\n", "k".repeat(32));
        assert_eq!(
            Config::parse(&ok, Path::new("x.toml"))
                .unwrap()
                .auth
                .secret
                .len(),
            32
        );
        // Empty: no tokens (or the secret comes from a credential, checked there).
        assert!(Config::parse("[auth]\nsecret = \"\"\n", Path::new("x.toml")).is_ok());
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
