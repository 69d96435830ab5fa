//! DTLS handshakes on a lossy path, driven in memory and deterministically: two rtc-dtls
//! endpoints configured as a WebRTC peer connection configures them (certificates both ways,
//! extended master secret, SRTP profiles), a virtual clock, and a network that drops chosen
//! datagrams. Every single lost datagram and every pair of lost datagrams, one each way, must
//! still end in a completed handshake on both sides.
//!
//! rtc-dtls 0.21.1 disarmed its retransmission timer on any handshake packet, including a
//! repeat of the peer's previous flight or part of its next one, so a handshake that lost
//! the wrong datagram hung on both sides until the viewer gave up. rtcam builds a patched copy
//! (vendor/rtc-dtls, vendor/README.md); this test fails without the patch. The lossy-link
//! test (tests/it/lossy.rs) saw it about once in twenty runs through a netem router at 5 % loss.

use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::crypto_provider::providers::RingProvider;
use rtc_dtls::crypto_provider::RTCCryptoProvider;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_shared::TransportProtocol;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longer than any healthy handshake here: a few retransmissions at the crate's 1 s interval.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// One-way delay of the simulated path.
const DELAY: Duration = Duration::from_millis(40);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    ClientToServer,
    ServerToClient,
}

fn client_addr() -> SocketAddr {
    "10.0.0.1:5000".parse().unwrap()
}

fn server_addr() -> SocketAddr {
    "10.0.0.2:5000".parse().unwrap()
}

fn config(is_client: bool) -> Arc<HandshakeConfig> {
    let provider: Arc<dyn RTCCryptoProvider> = Arc::new(RingProvider::new());
    let certificate =
        Certificate::generate_self_signed(vec!["rtcam".to_owned()], provider.crypto()).unwrap();
    Arc::new(
        ConfigBuilder::default()
            .with_crypto_provider(provider)
            .with_certificates(vec![certificate])
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_insecure_skip_verify(true)
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(is_client, None)
            .unwrap(),
    )
}

/// What one handshake did: whether each side completed, when, and the datagrams each way.
#[derive(Debug)]
struct Outcome {
    client_done: bool,
    server_done: bool,
    took: Duration,
    sent: [usize; 2],
}

/// Runs one handshake; `lose(dir, n)` says whether the n-th datagram (0-based) sent in
/// direction `dir` is lost.
fn handshake(lose: &dyn Fn(Dir, usize) -> bool) -> Outcome {
    let start = Instant::now();
    let mut now = start;
    let mut client = Endpoint::new(client_addr(), TransportProtocol::UDP, None);
    let mut server = Endpoint::new(server_addr(), TransportProtocol::UDP, Some(config(false)));
    client
        .connect(now, server_addr(), config(true), None)
        .unwrap();
    let mut sent = [0usize; 2];
    // Datagrams on the wire: when they arrive, which way, what.
    let mut wire: VecDeque<(Instant, Dir, bytes::BytesMut)> = VecDeque::new();
    let (mut client_done, mut server_done) = (false, false);
    while now - start < GIVE_UP_AFTER && !(client_done && server_done) {
        for (endpoint, dir) in [
            (&mut client, Dir::ClientToServer),
            (&mut server, Dir::ServerToClient),
        ] {
            while let Some(t) = endpoint.poll_transmit() {
                let n = &mut sent[dir as usize];
                if !lose(dir, *n) {
                    wire.push_back((now + DELAY, dir, t.message));
                }
                *n += 1;
            }
        }
        // The next event: a datagram arriving or a retransmission timer firing.
        let timers = [
            client.poll_timeout(&server_addr()),
            server.poll_timeout(&client_addr()),
        ];
        let next = wire
            .iter()
            .map(|(at, _, _)| *at)
            .chain(timers.iter().flatten().copied())
            .min();
        let Some(next) = next else {
            // Nothing in flight and no timer armed: nobody will ever send again.
            break;
        };
        now = now.max(next);
        while wire.front().is_some_and(|(at, _, _)| *at <= now) {
            let (_, dir, data) = wire.pop_front().unwrap();
            let events = match dir {
                Dir::ClientToServer => server.read(now, client_addr(), None, data),
                Dir::ServerToClient => client.read(now, server_addr(), None, data),
            };
            // A datagram the endpoint rejects is dropped, as on a real socket.
            for event in events.unwrap_or_default() {
                if matches!(event, EndpointEvent::HandshakeComplete) {
                    match dir {
                        Dir::ClientToServer => server_done = true,
                        Dir::ServerToClient => client_done = true,
                    }
                }
            }
        }
        if timers[0].is_some_and(|t| t <= now) {
            let _ = client.handle_timeout(server_addr(), now);
        }
        if timers[1].is_some_and(|t| t <= now) {
            let _ = server.handle_timeout(client_addr(), now);
        }
    }
    Outcome {
        client_done,
        server_done,
        took: now - start,
        sent,
    }
}

#[test]
fn handshake_completes_without_loss() {
    let o = handshake(&|_, _| false);
    assert!(o.client_done && o.server_done, "{o:?}");
    // Three round trips (cookie exchange included), no retransmission.
    assert!(o.took < Duration::from_millis(500), "{o:?}");
}

#[test]
fn handshake_survives_any_one_lost_datagram() {
    let clean = handshake(&|_, _| false);
    for dir in [Dir::ClientToServer, Dir::ServerToClient] {
        for n in 0..clean.sent[dir as usize] + 2 {
            let o = handshake(&|d, i| d == dir && i == n);
            assert!(
                o.client_done && o.server_done,
                "losing datagram {n} {dir:?} left the handshake unfinished: {o:?} (clean: {clean:?})"
            );
        }
    }
}

#[test]
fn handshake_survives_one_lost_datagram_each_way() {
    let clean = handshake(&|_, _| false);
    let (c2s, s2c) = (clean.sent[0] + 2, clean.sent[1] + 2);
    let mut failed = Vec::new();
    for a in 0..c2s {
        for b in 0..s2c {
            let o = handshake(&|d, i| match d {
                Dir::ClientToServer => i == a,
                Dir::ServerToClient => i == b,
            });
            if !(o.client_done && o.server_done) {
                failed.push((a, b, o));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} loss patterns left the handshake unfinished (client→server datagram, \
         server→client datagram, outcome): {failed:?}",
        failed.len(),
        c2s * s2c
    );
}
