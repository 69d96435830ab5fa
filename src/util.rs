//! Small helpers shared by the async loops.

use std::time::{Duration, Instant};

/// Sleeps until `deadline`, or forever when there is none; for `select!` branches guarded by a
/// deadline that comes and goes.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// A token bucket: `burst` requests at once, then `per_second` on average. Pure; the caller
/// passes the time.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Lets an event that strangers can repeat at will be logged once per `every`, counting the
/// repeats in between, so a flood cannot fill the journal. Pure; the caller passes the time.
#[derive(Debug, Clone)]
pub struct LogWindow {
    every: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl LogWindow {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            unlogged: 0,
        }
    }

    /// The event happened at `now`: `Some(n)` when it is to be logged, `n` being how many
    /// times it happened unlogged since the last time; `None` when it is not.
    pub fn happened(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_window_logs_once_per_window_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut w = LogWindow::new(Duration::from_secs(60));
        assert_eq!(w.happened(t0), Some(0));
        assert_eq!(w.happened(t0 + Duration::from_secs(1)), None);
        assert_eq!(w.happened(t0 + Duration::from_secs(59)), None);
        assert_eq!(w.happened(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(w.happened(t0 + Duration::from_secs(61)), None);
        assert_eq!(w.happened(t0 + Duration::from_secs(200)), Some(1));
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(2, 4);
        assert!((0..4).all(|_| r.try_take(t0)));
        assert!(!r.try_take(t0));
        assert!(!r.try_take(t0 + Duration::from_millis(400)));
        assert!(
            r.try_take(t0 + Duration::from_millis(600)),
            "half a second buys one token"
        );
        assert!(!r.try_take(t0 + Duration::from_millis(600)));
        assert!(
            (0..4).all(|_| r.try_take(t0 + Duration::from_secs(60))),
            "refills to the burst, no more"
        );
        assert!(!r.try_take(t0 + Duration::from_secs(60)));
    }
}
