//! rtcam's integration tests, one module per area, linked into one test binary: each binary
//! links webrtc and GStreamer, so one of them instead of two dozen saves most of `make test`'s
//! link time and disk. Tests of different modules run in parallel in this one process, so a
//! test holds no process-wide state: ports come from `common::free_port` (only `cli` takes a
//! fixed one, 1883, to play a broker already there), network namespaces carry their module's
//! prefix, and browsers run one at a time (`common::BROWSER`). `make test` runs the modules
//! that measure under load or hold the machine's namespaces for minutes (its `SOLO_TESTS`)
//! after the others, one at a time.
//!
//! Two tests keep binaries of their own, since they change the whole process: `faults`
//! (installs the process's log subscriber to count rtcam's log lines) and `watchdog` (sets
//! `NOTIFY_SOCKET`, which every rtcam started in the process would then notify).
//!
//! A module's tests: `cargo test --test it -- stream::`; the slow, `#[ignore]`d ones, e.g.
//! `cargo test --test it -- --ignored board_nat::`.

mod common;

mod acl;
mod audio;
mod auth;
mod bad_input;
mod board_nat;
mod browser;
mod camera;
mod cli;
mod control;
mod dtls_loss;
mod fuzz_corpus;
mod hostile;
mod http_door;
mod image;
mod layers;
mod limits;
mod lossy;
mod metrics;
mod nat;
mod rtsp;
mod service;
mod soak;
mod stream;
mod tls;
mod udp_port;
mod vivid;
mod vp8;
mod whep;
