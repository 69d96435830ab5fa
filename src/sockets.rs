//! `TCP_NODELAY` on the TCP sockets the MQTT crates open inside rtcam.
//!
//! Signalling is small messages in quick succession: rtcam acknowledges an offer, then
//! publishes its answer a few milliseconds later. With Nagle's algorithm on, that second write
//! waits for the first one's ACK, which the other side delays by up to 40 ms, once on rtcam's
//! client socket and once on the embedded broker's: 36 of the 44 ms between an offer and its
//! answer on loopback (docs/benchmarks.md). Neither rumqttc 0.24 nor rumqttd 0.19 lets a caller
//! set the option, so rtcam sets it on its own process's sockets after they exist: on the
//! broker's listeners, whose accepted connections inherit it (Linux copies it to them), and on
//! the client's socket after every (re)connect.

use socket2::SockRef;
use std::os::fd::BorrowedFd;

/// Sets `TCP_NODELAY` on a listener rtcam owns; the connections it accepts inherit it.
pub fn nodelay_on(listener: &impl std::os::fd::AsFd) {
    let _ = SockRef::from(listener).set_nodelay(true);
}

/// Sets `TCP_NODELAY` on every TCP socket this process has open; returns how many took it.
/// Other descriptors (files, UDP and Unix sockets) are left as they are.
pub fn nodelay_on_all_tcp() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut set = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only borrowed for two system calls. Should another thread
        // close it (and the number be reused) in between, they act on whatever holds the
        // number now: getsockopt/setsockopt either fail or set the option on another of this
        // process's TCP sockets, which is what this function does anyway.
        #[allow(unsafe_code)]
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&fd);
        let tcp = socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
            && socket
                .local_addr()
                .is_ok_and(|a| a.is_ipv4() || a.is_ipv6());
        if tcp && socket.set_nodelay(true).is_ok() {
            set += 1;
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_get_it_and_pass_it_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(nodelay_on_all_tcp() >= 1);
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "accepted sockets inherit it");
        assert!(
            !client.nodelay().unwrap(),
            "sockets opened later are left alone"
        );
        drop(udp);
    }
}
