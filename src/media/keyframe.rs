//! Merging keyframe requests so that a crowd of joining viewers costs one keyframe, not one each.
//!
//! Pure state with the clock passed in: the media task asks it what to do and when.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct KeyframeLimiter {
    min_interval: Duration,
    last_forced: Option<Instant>,
    /// A request arrived inside the quiet window; one keyframe is owed when it ends.
    pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Force a keyframe now.
    Force,
    /// One is already owed; it will be forced at the given time.
    DeferredUntil(Instant),
}

impl KeyframeLimiter {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_forced: None,
            pending: false,
        }
    }

    pub fn request(&mut self, now: Instant) -> Decision {
        match self.last_forced {
            Some(last) if now.duration_since(last) < self.min_interval => {
                self.pending = true;
                Decision::DeferredUntil(last + self.min_interval)
            }
            _ => {
                self.last_forced = Some(now);
                self.pending = false;
                Decision::Force
            }
        }
    }

    /// When the owed keyframe is due, if one is owed.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.pending, self.last_forced) {
            (true, Some(last)) => Some(last + self.min_interval),
            _ => None,
        }
    }

    /// Call when the deadline passes: true means force one now.
    pub fn poll(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(due) if now >= due => {
                self.pending = false;
                self.last_forced = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crowd_costs_two_keyframes_at_most_per_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut k = KeyframeLimiter::new(ms(500));
        assert_eq!(k.request(t0), Decision::Force);
        for i in 1..50 {
            assert_eq!(k.request(t0 + ms(i)), Decision::DeferredUntil(t0 + ms(500)));
        }
        assert!(!k.poll(t0 + ms(499)));
        assert!(k.poll(t0 + ms(500)));
        assert!(!k.poll(t0 + ms(501)), "owed keyframe is paid once");
        assert_eq!(k.deadline(), None);
        assert_eq!(k.request(t0 + ms(1001)), Decision::Force);
    }
}
