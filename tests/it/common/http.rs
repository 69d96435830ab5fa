//! A plain HTTP/1.1 client for the tests: one request on its own connection (`Connection:
//! close`), read to its end. Enough for rtcam's page, `/metrics` and `/snapshot.jpg`, whose
//! answers carry a length, and it shows the bytes exactly as they went over the wire.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response: status, head and body as received.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The status line and headers, without the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value (names compare without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` with these extra request headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    // Host names the address, as a browser's does: rtcam refuses names it does not know.
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).await?;
    read_reply(s).await
}

/// Any request with a body, for doors that take more than `GET` (WHEP's `POST`, `PATCH`,
/// `DELETE`, `OPTIONS`). Headers a response repeats (`Link`) are all in [`Reply::head`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    read_reply(s).await
}

/// The response on `s`, read to its end (the request asked to close the connection).
async fn read_reply(mut s: tokio::net::TcpStream) -> std::io::Result<Reply> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok(Reply {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    })
}
