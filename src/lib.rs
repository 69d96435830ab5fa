//! rtcam: a live WebRTC camera for Raspberry Pi-class boards, signalled and controlled over MQTT.
//!
//! See ARCHITECTURE.md for the map of this crate and the rules it keeps.

pub mod admission;
pub mod app;
pub mod auth;
pub mod board;
pub mod broker;
pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod credentials;
// Only in builds that fuzz or replay the fuzz seeds (the `fuzzing` feature, which fuzz/ and
// rtcam's own tests turn on): the daemon, release builds and the .deb carry none of it.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gate;
pub mod health;
pub mod http;
pub mod logging;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod rtsp;
pub mod service;
pub mod session;
pub mod signalling;
pub mod sockets;
pub mod turn;
pub mod util;
