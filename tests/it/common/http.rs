//! A plain HTTP/1.1 client for the tests: one request on its own connection (`Connection:
//! close`), read to its end. Enough for rtcam's page, `/metrics`, `/snapshot.jpg` and the WHEP
//! door, whose answers carry a length, and it shows the bytes exactly as they went over the wire.
//! The client is the WHEP player's (`rtcam_viewer::whep`), so there is one.

use std::net::SocketAddr;

/// Any request with a body, for doors that take more than `GET` (WHEP's `POST`, `PATCH`,
/// `DELETE`, `OPTIONS`). Headers a response repeats (`Link`) are all in [`Reply::head`].
pub use rtcam_viewer::whep::{request, Reply};

/// `GET path` with these extra request headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
    request(addr, "GET", path, headers, b"").await
}
