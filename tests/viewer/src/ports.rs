//! Ports for the servers a test or the benchmark starts on a fixed number (brokers, the gate,
//! RTSP, Janus): handed out once per process, below the system's ephemeral range.
//!
//! Why not "bind port 0, read the number, close": the port is then free again, in the very
//! range the system picks from for every other `bind(0)` and outgoing connection. With the
//! integration tests in one process, each rtcam picking its embedded broker's ports that way and
//! two tests at a time, sooner or later another socket takes the number before the server that
//! was meant to have it.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};

/// The ports handed out: 20000..32000, under Linux's default ephemeral range (32768 and up), so
/// no system-picked port ever lands on one.
const FIRST: u16 = 20_000;
const SPAN: u16 = 12_000;

static NEXT: AtomicU16 = AtomicU16::new(0);

/// A port no one on loopback holds for TCP or UDP, and that this process has not handed out
/// before. Each process starts at its own offset (by pid), so a test binary and the servers it
/// starts in children rarely even try the same numbers.
pub fn free_port() -> u16 {
    let start = FIRST + (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = FIRST + (start - FIRST + n) % SPAN;
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..64).map(|_| free_port()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        for p in ports {
            assert!((FIRST..FIRST + SPAN).contains(&p), "{p}");
            TcpListener::bind(("127.0.0.1", p)).expect("the port is bindable");
        }
    }

    #[test]
    fn a_held_port_is_skipped() {
        let next = FIRST + (std::process::id() % u32::from(SPAN)) as u16;
        // Hold the first 200 numbers of this process's run (the other test takes fewer): free_port
        // must step past what is held.
        let held: Vec<TcpListener> = (0..SPAN)
            .map(|i| FIRST + (next - FIRST + i) % SPAN)
            .take(200)
            .filter_map(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        let taken: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let p = free_port();
        assert!(!taken.contains(&p), "{p} is held");
    }
}
