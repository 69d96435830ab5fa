//! Connections in all and per client address, for every door strangers can reach (HTTP and
//! HTTPS in `http/serve.rs`, MQTT in `gate/`): who may open one more, and which refusals are
//! worth a log line. Pure: the caller passes the time and does the logging; a [`Slot`] gives
//! its place back when dropped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often at most one address's refusals are logged; the lines in between are counted.
const NOTICE_INTERVAL: Duration = Duration::from_secs(60);

/// Addresses whose last notice is remembered at most; bounds the table a flood from many
/// addresses could grow.
const MAX_NOTICES: usize = 1024;

/// Connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections open at once.
    pub total: usize,
    /// Connections open at once from one client address (one IPv6 /64).
    pub per_address: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerAddress,
}

/// Open connections, in all and per address, and the refusals not yet logged. Pure: the
/// caller passes the time and does the logging.
#[derive(Debug)]
pub struct Counts {
    caps: Caps,
    total: usize,
    /// Open connections per [`address_key`]; an address leaves the map with its last one.
    open: HashMap<IpAddr, usize>,
    /// Refusals per address since its last log line, and when that line was; pruned of
    /// entries older than [`NOTICE_INTERVAL`] when it reaches [`MAX_NOTICES`].
    notices: HashMap<IpAddr, Notice>,
    /// Every refusal since start.
    refused: u64,
}

#[derive(Debug, Clone, Copy)]
struct Notice {
    logged_at: Instant,
    unlogged: u64,
}

/// A refusal worth a log line now, with how many refusals of that address went unlogged
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub address: IpAddr,
    pub why: Refusal,
    pub since_last: u64,
}

/// The address a per-address cap counts under: IPv4 (also when mapped into IPv6) as it is, an
/// IPv6 address by its /64, since one host commonly holds a whole /64 to pick addresses from.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

impl Counts {
    pub fn new(caps: Caps) -> Counts {
        Counts {
            caps,
            total: 0,
            open: HashMap::new(),
            notices: HashMap::new(),
            refused: 0,
        }
    }

    /// Counts a new connection from `ip`, or says why it may not be opened. Loopback peers (local
    /// tools, a reverse proxy on the board) are exempt from the per-address cap, not the total.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let key = address_key(ip);
        if self.total >= self.caps.total {
            return Err(Refusal::Total);
        }
        let open = self.open.get(&key).copied().unwrap_or(0);
        if !key.is_loopback() && open >= self.caps.per_address {
            return Err(Refusal::PerAddress);
        }
        self.total += 1;
        self.open.insert(key, open + 1);
        Ok(())
    }

    /// Forgets a connection [`admit`](Self::admit) counted.
    pub fn release(&mut self, ip: IpAddr) {
        let key = address_key(ip);
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&key);
            }
        }
    }

    /// Records a refusal; returns a report when this address has not been logged for
    /// [`NOTICE_INTERVAL`], so a flood from one address makes one line a minute.
    pub fn refused(&mut self, ip: IpAddr, why: Refusal, now: Instant) -> Option<Report> {
        let key = address_key(ip);
        self.refused += 1;
        if self.notices.len() >= MAX_NOTICES && !self.notices.contains_key(&key) {
            self.notices
                .retain(|_, n| now.saturating_duration_since(n.logged_at) < NOTICE_INTERVAL);
            if self.notices.len() >= MAX_NOTICES {
                // Refusals from this many addresses at once are counted, and the next line
                // logged says how many there were in all.
                return None;
            }
        }
        match self.notices.get_mut(&key) {
            Some(n) if now.saturating_duration_since(n.logged_at) < NOTICE_INTERVAL => {
                n.unlogged += 1;
                None
            }
            found => {
                let since_last = found.map_or(0, |n| n.unlogged);
                self.notices.insert(
                    key,
                    Notice {
                        logged_at: now,
                        unlogged: 0,
                    },
                );
                Some(Report {
                    address: key,
                    why,
                    since_last,
                })
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total
    }

    /// Connections refused since start.
    pub fn refused_total(&self) -> u64 {
        self.refused
    }
}

/// One admitted connection's place in [`Counts`], given back when the last holder drops it
/// (for HTTP: the connection task, and a WebSocket handler that took the socket over).
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Slot {
    /// Takes a place for a connection from `ip` in `counts`, or says why there is none.
    pub fn take(counts: &Arc<Mutex<Counts>>, ip: IpAddr) -> Result<Slot, Refusal> {
        lock(counts).admit(ip)?;
        Ok(Slot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.counts).release(self.ip);
    }
}

/// A poisoned lock still holds consistent counts: every critical section is a few integer
/// updates that cannot panic halfway.
pub fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP: Caps = Caps {
        total: 512,
        per_address: 32,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_cap_refuses_only_that_address() {
        let mut c = Counts::new(Caps {
            total: 100,
            per_address: 3,
        });
        for _ in 0..3 {
            c.admit(ip("192.0.2.1")).unwrap();
        }
        assert_eq!(c.admit(ip("192.0.2.1")), Err(Refusal::PerAddress));
        c.admit(ip("192.0.2.2")).unwrap();
        c.release(ip("192.0.2.1"));
        c.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(c.open(), 4);
    }

    #[test]
    fn total_cap_counts_every_address_and_loopback_too() {
        let mut c = Counts::new(Caps {
            total: 4,
            per_address: 2,
        });
        // Loopback is exempt from the per-address cap only.
        for _ in 0..3 {
            c.admit(ip("127.0.0.1")).unwrap();
        }
        c.admit(ip("::1")).unwrap();
        assert_eq!(c.admit(ip("192.0.2.1")), Err(Refusal::Total));
        assert_eq!(c.admit(ip("127.0.0.1")), Err(Refusal::Total));
        c.release(ip("127.0.0.1"));
        c.admit(ip("192.0.2.1")).unwrap();
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let mut c = Counts::new(Caps {
            total: 100,
            per_address: 2,
        });
        c.admit(ip("2001:db8:1:2::1")).unwrap();
        c.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(c.admit(ip("2001:db8:1:2::3")), Err(Refusal::PerAddress));
        c.admit(ip("2001:db8:1:3::1")).unwrap();
        c.admit(ip("192.0.2.7")).unwrap();
        c.admit(ip("::ffff:192.0.2.7")).unwrap();
        assert_eq!(c.admit(ip("192.0.2.7")), Err(Refusal::PerAddress));
        // A dual-stack listener sees IPv4 loopback as mapped; it stays exempt.
        for _ in 0..5 {
            c.admit(ip("::ffff:127.0.0.1")).unwrap();
        }
    }

    #[test]
    fn releases_give_every_place_back() {
        let mut c = Counts::new(HTTP);
        let peers = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "127.0.0.1"];
        for p in peers {
            c.admit(ip(p)).unwrap();
        }
        for p in peers {
            c.release(ip(p));
        }
        assert_eq!(c.open(), 0);
        assert!(c.open.is_empty(), "{:?}", c.open);
    }

    #[test]
    fn refusals_are_reported_once_a_minute_per_address_with_the_count_between() {
        let mut c = Counts::new(HTTP);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let first = c.refused(a, Refusal::PerAddress, t0).unwrap();
        assert_eq!(first.since_last, 0);
        for i in 1..=99 {
            assert_eq!(
                c.refused(a, Refusal::PerAddress, t0 + Duration::from_millis(i)),
                None
            );
        }
        // Another address has its own notice.
        assert!(c
            .refused(ip("192.0.2.2"), Refusal::Total, t0 + Duration::from_secs(1))
            .is_some());
        let later = c
            .refused(a, Refusal::PerAddress, t0 + NOTICE_INTERVAL)
            .unwrap();
        assert_eq!(later.since_last, 99);
        assert_eq!(c.refused_total(), 1 + 99 + 1 + 1);
    }

    #[test]
    fn the_notice_table_stays_bounded() {
        let mut c = Counts::new(HTTP);
        let t0 = Instant::now();
        for i in 0..5000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            c.refused(a, Refusal::Total, t0 + Duration::from_secs(u64::from(i)));
        }
        assert!(c.notices.len() <= MAX_NOTICES, "{}", c.notices.len());
        // Many addresses at once: the table is full, refusals are still counted.
        for i in 0..3000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            c.refused(a, Refusal::Total, t0 + Duration::from_secs(6000));
        }
        assert!(c.notices.len() <= MAX_NOTICES, "{}", c.notices.len());
        assert_eq!(c.refused_total(), 8000);
    }
}
