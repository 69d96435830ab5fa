//! rtcam: a live WebRTC camera for Raspberry Pi-class boards, signalled and controlled over MQTT.
//!
//! See ARCHITECTURE.md for the map of this crate and the rules it keeps.

pub mod admission;
pub mod app;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod credentials;
pub mod fuzzing;
pub mod gate;
pub mod health;
pub mod http;
pub mod logging;
pub mod media;
pub mod memory;
pub mod rtsp;
pub mod metrics;
pub mod service;
pub mod session;
pub mod signalling;
pub mod sockets;
pub mod turn;
pub mod util;
