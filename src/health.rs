//! Liveness heartbeats: how a long-running loop proves it is still making progress.
//!
//! The media pipeline beats for every frame it hands over (and while it is legitimately between
//! frames: starting up, or waiting to retry a camera); the MQTT loop beats on every turn. The
//! systemd watchdog (`service.rs`) pings only while every heartbeat is fresh, so a pipeline that
//! stalls or a loop that hangs gets rtcam restarted. A beat is one relaxed atomic store, cheap
//! enough for GStreamer's streaming thread.
//!
//! This module only keeps time; it decides nothing and talks to nobody.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The instant heartbeats count from, so one can live in an `AtomicU64`.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX)
}

/// The last time one part of rtcam showed progress. Clones share the same clock.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// Named in logs and in `systemctl status` when it goes stale.
    name: &'static str,
    /// Milliseconds since [`epoch`] of the latest beat.
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    /// A heartbeat that has just beaten, so a part is not stale before it had a chance to start.
    pub fn new(name: &'static str) -> Heartbeat {
        Heartbeat::new_at(name, Instant::now())
    }

    pub fn new_at(name: &'static str, now: Instant) -> Heartbeat {
        Heartbeat {
            name,
            last: Arc::new(AtomicU64::new(millis_since_epoch(now))),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    pub fn beat_at(&self, now: Instant) {
        // `fetch_max` so a late store from a slower thread never moves the clock backwards.
        self.last
            .fetch_max(millis_since_epoch(now), Ordering::Relaxed);
    }

    /// How long ago the last beat was, as seen at `now`.
    pub fn age_at(&self, now: Instant) -> Duration {
        let last = self.last.load(Ordering::Relaxed);
        Duration::from_millis(millis_since_epoch(now).saturating_sub(last))
    }
}

/// The heartbeats older than `limit` at `now`, with their ages: empty means all is well.
pub fn stale(beats: &[Heartbeat], now: Instant, limit: Duration) -> Vec<(&'static str, Duration)> {
    beats
        .iter()
        .map(|b| (b.name(), b.age_at(now)))
        .filter(|(_, age)| *age > limit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instant after the epoch was fixed, as every real one is.
    fn now() -> Instant {
        epoch();
        Instant::now()
    }

    #[test]
    fn a_beat_resets_the_age() {
        let t0 = now();
        let hb = Heartbeat::new_at("media", t0);
        assert_eq!(
            hb.age_at(t0 + Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        hb.beat_at(t0 + Duration::from_secs(2));
        assert_eq!(
            hb.age_at(t0 + Duration::from_secs(3)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn clones_share_the_clock_and_time_never_goes_back() {
        let t0 = now();
        let hb = Heartbeat::new_at("mqtt", t0);
        let other = hb.clone();
        other.beat_at(t0 + Duration::from_secs(5));
        hb.beat_at(t0 + Duration::from_secs(1));
        assert_eq!(hb.age_at(t0 + Duration::from_secs(5)), Duration::ZERO);
    }

    #[test]
    fn stale_names_only_the_old_ones() {
        let t0 = now();
        let media = Heartbeat::new_at("media pipeline", t0);
        let mqtt = Heartbeat::new_at("MQTT loop", t0);
        mqtt.beat_at(t0 + Duration::from_secs(9));
        let limit = Duration::from_secs(5);
        assert!(stale(
            &[media.clone(), mqtt.clone()],
            t0 + Duration::from_secs(4),
            limit
        )
        .is_empty());
        let late = stale(&[media, mqtt], t0 + Duration::from_secs(10), limit);
        assert_eq!(late, vec![("media pipeline", Duration::from_secs(10))]);
    }
}
