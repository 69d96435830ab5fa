//! The HTTP and HTTPS doors played by a stranger, against rtcam started for real: half-sent
//! requests are closed, foreign `Host` and `Origin` are refused, an oversized WebSocket message
//! ends only its own connection, every response carries the security headers, and HTTPS serves
//! the page with a self-signed certificate that stays the same across restarts.
//! (The per-address cap cannot be met from loopback, which is exempt: `http::serve`'s unit
//! tests count it.)

use crate::common;

use common::{start, test_config};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Reads until the peer closes; the time it took, or None if it stayed open past `limit`.
async fn closed_within(s: &mut (impl AsyncRead + Unpin), limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

/// Sends `request` as it is and reads the reply: its head, and its body when it has a
/// `content-length` (a 101 has none, and what follows it is the WebSocket's).
async fn exchange(s: &mut (impl AsyncRead + AsyncWrite + Unpin), request: &str) -> String {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1];
    let complete = |got: &[u8]| {
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        got.len() >= end + 4 + length
    };
    // A byte at a time, so nothing after the reply (WebSocket frames) is taken with it.
    while !complete(&got) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a reply within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before a reply: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn upgrade_request(host: &str, origin: Option<&str>) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n{origin}\r\n"
    )
}

/// A client's binary WebSocket frame header announcing `len` payload bytes (masked, as
/// clients must).
fn frame_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[1, 2, 3, 4]);
    h
}

/// An MQTT 3.1.1 CONNECT for `client_id` in one masked binary frame.
fn connect_frame(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    let mask = [9u8, 8, 7, 6];
    let mut frame = vec![0x82, 0x80 | packet.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(packet.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_the_page_still_loads() {
    let rt = start(test_config("doorslow")).await;
    let addr = rt.app.http_addr();
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Some send half a head, some nothing at all.
        if i % 2 == 0 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x").await.unwrap();
        }
        stalled.push(s);
    }
    // The page loads for someone else meanwhile.
    let page = common::http::get(addr, "/", &[]).await.unwrap();
    assert_eq!(page.status, 200);
    let limit = rtcam::http::serve::HEADER_READ_TIMEOUT + Duration::from_secs(5);
    let started = Instant::now();
    for s in &mut stalled {
        let left = limit.saturating_sub(started.elapsed());
        assert!(
            closed_within(s, left).await.is_some(),
            "a half-sent request was still open after {:?}",
            started.elapsed()
        );
    }
    eprintln!(
        "200 stalled connections closed after {:?}",
        started.elapsed()
    );
    // An idle keep-alive connection is held no longer either.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = exchange(
        &mut s,
        &format!("GET /app.js HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        closed_within(&mut s, limit).await.is_some(),
        "idle keep-alive stayed open"
    );
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_host_and_origin_are_refused_and_the_own_page_works() {
    let rt = start(test_config("doorhost")).await;
    let addr = rt.app.http_addr();
    let host = addr.to_string();
    for path in ["/", "/config.json", "/app.js", "/mqtt", "/nothing"] {
        // Raw: `common::http::get` names the address in its Host.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = exchange(
            &mut s,
            &format!("GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 403"), "{path}: {head}");
        assert!(head.contains("allowed_hosts"), "{path}: {head}");
    }
    for origin in ["http://evil.example", "null", "https://127.0.0.1:1"] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = exchange(&mut s, &upgrade_request(&host, Some(origin))).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{origin}: {head}");
        assert!(head.contains("may not open"), "{origin}: {head}");
    }
    // The camera's own page: upgraded, and MQTT flows to the broker and back.
    for origin in [Some(format!("http://{host}")), None] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = exchange(&mut s, &upgrade_request(&host, origin.as_deref())).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{origin:?}: {head}");
        s.write_all(&connect_frame("doorhostclient")).await.unwrap();
        let mut reply = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut reply))
            .await
            .expect("CONNACK within 5 s")
            .unwrap();
        // A binary frame of 4 bytes: CONNACK, accepted.
        assert_eq!(reply, [0x82, 4, 0x20, 2, 0, 0], "{origin:?}");
    }
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_websocket_message_ends_only_its_connection() {
    let rt = start(test_config("doorbig")).await;
    let addr = rt.app.http_addr();
    let host = addr.to_string();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = exchange(
        &mut s,
        &upgrade_request(&host, Some(&format!("http://{host}"))),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Announces 56 MiB and starts sending: closed on the header, nothing buffered.
    s.write_all(&frame_header(56 << 20)).await.unwrap();
    let _ = s.write_all(&vec![0u8; 64 * 1024]).await;
    assert!(
        closed_within(&mut s, Duration::from_secs(5))
            .await
            .is_some(),
        "the oversized message's connection stayed open"
    );
    // Many frames adding up to too much: the message cap holds too.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = exchange(&mut s, &upgrade_request(&host, None)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let chunk = 60_000;
    let mut sent = 0;
    let mut first = true;
    while sent <= rtcam::http::MAX_WS_MESSAGE {
        // Binary first, continuations after, none final.
        let mut h = vec![if first { 0x02 } else { 0x00 }, 0x80 | 126];
        h.extend_from_slice(&(chunk as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        first = false;
        if s.write_all(&h).await.is_err() || s.write_all(&vec![0u8; chunk]).await.is_err() {
            break;
        }
        sent += chunk;
    }
    assert!(
        closed_within(&mut s, Duration::from_secs(5))
            .await
            .is_some(),
        "a message over the cap in small frames stayed open"
    );
    let page = common::http::get(addr, "/", &[]).await.unwrap();
    assert_eq!(page.status, 200);
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_the_security_headers() {
    let rt = start(test_config("doorheaders")).await;
    let addr = rt.app.http_addr();
    for (path, status) in [
        ("/", 200),
        ("/app.js", 200),
        ("/config.json", 200),
        ("/nothing", 404),
        ("/mqtt", 400),
    ] {
        let r = common::http::get(addr, path, &[]).await.unwrap();
        assert_eq!(r.status, status, "{path}");
        assert_eq!(
            r.header("content-security-policy"),
            Some(rtcam::http::CONTENT_SECURITY_POLICY),
            "{path}"
        );
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
    }
    // A refusal too.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = exchange(&mut s, "GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n").await;
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    rt.app.stop().await;
}

/// Trusts exactly one certificate, by its SHA-256: what a person does who compares the
/// fingerprint rtcam printed.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if rtcam::http::tls::fingerprints(end_entity).sha256 == self.sha256 {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS connection to `addr` that trusts only the certificate with this fingerprint.
async fn tls_connect(
    addr: SocketAddr,
    sha256: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            sha256: sha256.into(),
            provider,
        }))
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_page_with_a_certificate_kept_across_restarts() {
    let state = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = test_config("doortls");
        c.http.https_listen = "127.0.0.1:0".into();
        c.http.state_dir = state.path().to_str().unwrap().into();
        c.http.redirect_http = true;
        c
    };
    // systemd's variable would win over the setting; tests run without it.
    assert!(std::env::var_os("STATE_DIRECTORY").is_none());
    let rt = start(config()).await;
    let https = rt.app.https().expect("HTTPS is on").clone();
    assert!(
        matches!(https.source, rtcam::http::tls::CertSource::Made(_)),
        "{https:?}"
    );
    // What rtcam reports is the certificate it saved.
    let pem = std::fs::read(state.path().join("https-cert.pem")).unwrap();
    use rustls_pki_types::pem::PemObject;
    let saved = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(rtcam::http::tls::fingerprints(&saved), https.fingerprints);

    let mut tls = tls_connect(https.addr, &https.fingerprints.sha256)
        .await
        .expect("TLS with the pinned certificate");
    let head = exchange(
        &mut tls,
        &format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            https.addr
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-security-policy"), "{head}");
    // A different pin fails: the client really checks.
    assert!(tls_connect(https.addr, "00:11").await.is_err());

    // Plain HTTP redirects to it, all but /mqtt.
    let plain = rt.app.http_addr();
    let r = common::http::get(plain, "/config.json?x=1", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 308, "{}", r.head);
    assert_eq!(
        r.header("location"),
        Some(format!("https://127.0.0.1:{}/config.json?x=1", https.addr.port()).as_str())
    );
    assert_eq!(
        common::http::get(plain, "/mqtt", &[]).await.unwrap().status,
        400
    );
    rt.app.stop().await;

    // Started again: the same certificate.
    let rt = start(config()).await;
    let again = rt.app.https().unwrap().clone();
    assert!(
        matches!(again.source, rtcam::http::tls::CertSource::Kept(_)),
        "{again:?}"
    );
    assert_eq!(again.fingerprints, https.fingerprints);
    tls_connect(again.addr, &https.fingerprints.sha256)
        .await
        .expect("the kept certificate");
    rt.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_path_is_a_fatal_error_naming_its_key() {
    let mut c = test_config("doorbadcert");
    c.http.https_listen = "127.0.0.1:0".into();
    c.http.tls_cert = "/nonexistent/cert.pem".into();
    c.http.tls_key = "/nonexistent/key.pem".into();
    let err = rtcam::app::App::start(c, rtcam::config::Origin::BuiltIn)
        .await
        .err()
        .expect("rtcam refuses to start")
        .to_string();
    assert!(err.contains("http.tls_cert"), "{err}");
}
