//! Bitrate adaptation: one encoder serves every viewer, so its bitrate follows what the viewers
//! report they receive.
//!
//! Each viewer's capacity is estimated from its RTCP feedback with the loss-based half of
//! Google Congestion Control: more than 10 % of packets lost → decrease by half the loss,
//! under 2 % → increase by 8 % a second, in between → hold; a REMB from the viewer caps the
//! estimate. Loss is counted in packets, from the difference between receiver reports'
//! cumulative counters ([`LossCounter`]), as libwebrtc's sender counts it: the "fraction lost"
//! of each report is biased upwards when reports come often. The encoder then follows the
//! weakest viewer, within `[encoder] min_bitrate_kbps` and `max_bitrate_kbps`, but never below
//! `follow_ratio` × the strongest viewer's estimate: a viewer far below the others does not
//! drag everyone down. Such a viewer (any whose estimate is below the encoder's rate) is paced
//! by a [`ByteBudget`] at its own estimate instead: frames that do not fit are skipped up to
//! the next keyframe.
//!
//! Pure: reports and the clock come in, decisions go out. The session manager owns the one
//! `Adaptation`: it feeds it the reports its sessions send, sets the encoder's bitrate and
//! tells each session its pace (`session/mod.rs`); this module never touches the encoder or a
//! socket itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// An estimate is updated only from at least this many packets (libwebrtc's sender: 20), so a
/// second with a handful of packets does not decide alone.
const MIN_PACKETS: u64 = 20;
/// Loss above which an estimate falls (GCC: 10 %).
const LOSS_HIGH: f64 = 0.10;
/// Loss below which an estimate grows (GCC: 2 %).
const LOSS_LOW: f64 = 0.02;
/// Growth per second of low loss (GCC: 8 %).
const GROWTH_PER_SEC: f64 = 1.08;
/// An estimate is updated at most this often: browsers send a receiver report with every
/// compound RTCP packet (each NACK, each PLI), so a lossy viewer reports many times a second,
/// and each report must not count as another second of evidence.
const UPDATE_EVERY: Duration = Duration::from_secs(1);
/// The encoder is told a new bitrate at most this often, and only for a change of at least
/// [`MIN_CHANGE`]: each change costs the encoder a rate-control reset.
const ENCODER_EVERY: Duration = Duration::from_secs(1);
const MIN_CHANGE: f64 = 0.05;
/// No estimate goes below this: under it a viewer gets keyframes only, and the estimate must
/// stay able to grow back at 8 % a second.
const FLOOR_KBPS: f64 = 30.0;

/// The bounds the configuration sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub min_kbps: u32,
    pub max_kbps: u32,
    /// The encoder never goes below this fraction of the strongest viewer's estimate.
    pub follow_ratio: f64,
}

/// What one viewer's RTCP said since its last report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Report {
    /// Packets lost out of those expected, over the receiver reports received.
    pub losses: Losses,
    /// The viewer's REMB, if it sends them.
    pub remb_kbps: Option<u32>,
}

/// Packets a viewer lost out of those it expected, over a span of its receiver reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses {
    /// Negative when retransmissions or late packets arrived for losses counted earlier.
    pub lost: i64,
    pub expected: u64,
}

impl Losses {
    /// The fraction lost (0–1), if any packet was expected.
    pub fn fraction(&self) -> Option<f64> {
        (self.expected > 0).then(|| (self.lost.max(0) as f64 / self.expected as f64).min(1.0))
    }
}

impl std::ops::AddAssign for Losses {
    fn add_assign(&mut self, other: Self) {
        self.lost += other.lost;
        self.expected += other.expected;
    }
}

/// Turns one stream's receiver reports into packet counts: the difference between a report's
/// cumulative lost and extended highest sequence number and the previous report's (RFC 3550
/// A.3). Why not each report's "fraction lost": a receiver that sends a report with every NACK
/// reports right after each gap, before the retransmission or the late, reordered packet
/// arrives, and a fraction cannot go below zero to give it back, so the mean of those fractions
/// overstates loss (tests/lossy.rs: 14–16 % from Chromium, whose cumulative count said no
/// packet was lost for good).
#[derive(Debug, Default)]
pub struct LossCounter {
    /// The previous report's cumulative lost (24 bits, as sent) and highest sequence number.
    last: Option<(u32, u32)>,
}

/// More packets than this between two reports means the receiver started over (a new
/// sequence or a restarted counter), not a real span: at rtcam's rates it is minutes of video.
const MAX_SPAN: i64 = 1 << 16;
/// A report at most this many packets behind the previous one is an RTCP packet overtaken by
/// a later one; further behind, the receiver started over.
const MAX_BEHIND: i64 = 1 << 10;

impl LossCounter {
    /// The packets one report adds. The first report only sets the baseline; a report older
    /// than the previous one (reordered RTCP) adds nothing.
    pub fn report(&mut self, cumulative_lost: u32, highest_seq: u32) -> Losses {
        let now = (cumulative_lost & 0xFF_FFFF, highest_seq);
        let Some((last_lost, last_seq)) = self.last else {
            self.last = Some(now);
            return Losses::default();
        };
        let span = i64::from(highest_seq.wrapping_sub(last_seq) as i32);
        if !(-MAX_BEHIND..=MAX_SPAN).contains(&span) {
            // The receiver started over: count from this report on.
            self.last = Some(now);
            return Losses::default();
        }
        if span <= 0 {
            // Nothing new, or an RTCP packet overtaken by a later one: keep the later baseline.
            return Losses::default();
        }
        self.last = Some(now);
        // The cumulative count is a signed 24-bit number; so is the difference.
        let diff = now.0.wrapping_sub(last_lost) & 0xFF_FFFF;
        let lost = i64::from(((diff << 8) as i32) >> 8).min(span);
        Losses {
            lost,
            expected: span as u64,
        }
    }
}

#[derive(Debug, Clone)]
struct Viewer {
    estimate_kbps: f64,
    /// Packets counted since the last update.
    losses: Losses,
    last_update: Instant,
}

/// The adaptation state of every connected viewer and the encoder's target.
#[derive(Debug)]
pub struct Adaptation {
    limits: Limits,
    viewers: HashMap<String, Viewer>,
    /// What the encoder was last told (or started with).
    applied_kbps: u32,
    applied_at: Option<Instant>,
}

impl Adaptation {
    /// `start_kbps` is the encoder's configured bitrate, clamped into the limits.
    pub fn new(limits: Limits, start_kbps: u32) -> Self {
        Self {
            limits,
            viewers: HashMap::new(),
            applied_kbps: start_kbps.clamp(limits.min_kbps, limits.max_kbps),
            applied_at: None,
        }
    }

    /// A viewer connected. It starts at the encoder's current rate, so a join changes nothing
    /// until its reports say otherwise.
    pub fn join(&mut self, sid: &str, now: Instant) {
        self.viewers.insert(
            sid.to_string(),
            Viewer {
                estimate_kbps: f64::from(self.applied_kbps),
                losses: Losses::default(),
                last_update: now,
            },
        );
    }

    pub fn leave(&mut self, sid: &str) {
        self.viewers.remove(sid);
    }

    /// Feeds one viewer's feedback. Unknown viewers are ignored.
    pub fn report(&mut self, sid: &str, report: Report, now: Instant) {
        let max = f64::from(self.limits.max_kbps);
        let Some(v) = self.viewers.get_mut(sid) else {
            return;
        };
        v.losses += report.losses;
        let elapsed = now.saturating_duration_since(v.last_update);
        if elapsed >= UPDATE_EVERY && v.losses.expected >= MIN_PACKETS {
            let loss = v.losses.fraction().unwrap_or(0.0);
            v.losses = Losses::default();
            if loss > LOSS_HIGH {
                v.estimate_kbps *= 1.0 - 0.5 * loss;
            } else if loss < LOSS_LOW {
                // Per second of evidence, but never more than two seconds' worth at once: a
                // viewer whose reports stalled has not proven anything meanwhile.
                let secs = elapsed.as_secs_f64().min(2.0);
                v.estimate_kbps *= GROWTH_PER_SEC.powf(secs);
            }
            v.last_update = now;
        }
        if let Some(remb) = report.remb_kbps {
            v.estimate_kbps = v.estimate_kbps.min(f64::from(remb));
        }
        v.estimate_kbps = v.estimate_kbps.clamp(FLOOR_KBPS, max);
    }

    /// One viewer's estimate, in kbit/s.
    pub fn estimate_kbps(&self, sid: &str) -> Option<u32> {
        self.viewers
            .get(sid)
            .map(|v| v.estimate_kbps.round() as u32)
    }

    /// The bitrate the encoder should run at: the weakest viewer's estimate, but not below
    /// `follow_ratio` of the strongest one's, within the limits. With no viewer, what it runs at.
    pub fn target_kbps(&self) -> u32 {
        let estimates = self.viewers.values().map(|v| v.estimate_kbps);
        let (Some(weakest), Some(strongest)) = (
            estimates.clone().reduce(f64::min),
            estimates.reduce(f64::max),
        ) else {
            return self.applied_kbps;
        };
        let target = weakest.max(self.limits.follow_ratio * strongest);
        (target.round() as u32).clamp(self.limits.min_kbps, self.limits.max_kbps)
    }

    /// A viewer that cannot take the encoder's rate gets its own budget (its estimate); others
    /// take every frame. Ten percent of slack, so estimate noise around the target does not
    /// switch pacing on and off.
    pub fn budget_kbps(&self, sid: &str) -> Option<u32> {
        let v = self.viewers.get(sid)?;
        (v.estimate_kbps < 0.9 * f64::from(self.applied_kbps))
            .then(|| v.estimate_kbps.round() as u32)
    }

    /// The bitrate to give the encoder now, if it should change: a change of at least 5 % (or
    /// reaching a limit), at most once a second.
    pub fn encoder_change(&mut self, now: Instant) -> Option<u32> {
        let target = self.target_kbps();
        if target == self.applied_kbps {
            return None;
        }
        if self
            .applied_at
            .is_some_and(|at| now.saturating_duration_since(at) < ENCODER_EVERY)
        {
            return None;
        }
        let change =
            (f64::from(target) - f64::from(self.applied_kbps)).abs() / f64::from(self.applied_kbps);
        let at_limit = target == self.limits.min_kbps || target == self.limits.max_kbps;
        if change < MIN_CHANGE && !at_limit {
            return None;
        }
        self.applied_kbps = target;
        self.applied_at = Some(now);
        Some(target)
    }

    /// What the encoder was last told.
    pub fn applied_kbps(&self) -> u32 {
        self.applied_kbps
    }
}

/// Paces one viewer at its own estimate: a token bucket of bytes. Keyframes are always sent
/// (a viewer without one sees nothing), and may overdraw the bucket; a delta frame that does
/// not fit is skipped, and with it every frame up to the next keyframe, since H.264 deltas
/// build on the frames before them.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    tokens: f64,
    last: Instant,
    skipping: bool,
}

impl ByteBudget {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: 0.0,
            last: now,
            skipping: false,
        }
    }

    /// Whether to send a frame of `len` bytes at `kbps`. Call for every frame, in order.
    pub fn admit(&mut self, len: usize, keyframe: bool, kbps: u32, now: Instant) -> bool {
        let rate = f64::from(kbps) * 1000.0 / 8.0;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        // At most one second of credit: a viewer idle for a while must not burst.
        self.tokens = (self.tokens + rate * elapsed).min(rate);
        if keyframe {
            if self.tokens < 0.0 {
                // Still paying for the previous keyframe: wait for the next one.
                self.skipping = true;
                return false;
            }
            self.skipping = false;
        } else if self.skipping || self.tokens < len as f64 {
            self.skipping = true;
            return false;
        }
        self.tokens -= len as f64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        min_kbps: 200,
        max_kbps: 2000,
        follow_ratio: 0.25,
    };

    /// A report of 1000 packets, `loss` of them lost.
    fn lossy(loss: f64) -> Report {
        Report {
            losses: Losses {
                lost: (loss * 1000.0).round() as i64,
                expected: 1000,
            },
            remb_kbps: None,
        }
    }

    /// Feeds `secs` one-second reports of `loss` to `sid`; returns the time after.
    fn feed(a: &mut Adaptation, sid: &str, loss: f64, from: Instant, secs: u64) -> Instant {
        let mut now = from;
        for _ in 0..secs {
            now += Duration::from_secs(1);
            a.report(sid, lossy(loss), now);
        }
        now
    }

    #[test]
    fn heavy_loss_lowers_and_clean_reports_raise_slowly() {
        let t0 = Instant::now();
        let mut a = Adaptation::new(LIMITS, 1000);
        a.join("v", t0);
        let t = feed(&mut a, "v", 0.3, t0, 3);
        // 1000 × 0.85³ ≈ 614.
        assert_eq!(a.estimate_kbps("v"), Some(614));
        let t = feed(&mut a, "v", 0.05, t, 5);
        assert_eq!(a.estimate_kbps("v"), Some(614), "moderate loss holds");
        feed(&mut a, "v", 0.0, t, 10);
        // 614 × 1.08¹⁰ ≈ 1326.
        assert_eq!(a.estimate_kbps("v"), Some(1326));
    }

    #[test]
    fn many_reports_in_a_second_count_once() {
        let t0 = Instant::now();
        let mut a = Adaptation::new(LIMITS, 1000);
        a.join("v", t0);
        for i in 1..=20 {
            a.report("v", lossy(0.3), t0 + Duration::from_millis(50 * i));
        }
        // One update at t0 + 1 s, from the reports so far.
        assert_eq!(a.estimate_kbps("v"), Some(850));
    }

    #[test]
    fn loss_is_counted_in_packets_and_needs_enough_of_them() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut a = Adaptation::new(LIMITS, 1000);
        a.join("v", t0);
        let report = |lost, expected| Report {
            losses: Losses { lost, expected },
            remb_kbps: None,
        };
        // A report right after a gap (1 of 1 lost) and one over the rest of the second (0 of
        // 99): 1 % loss, so the estimate grows. The mean of the two fractions would be 50 %.
        a.report("v", report(1, 1), at(500));
        a.report("v", report(0, 99), at(1000));
        assert_eq!(a.estimate_kbps("v"), Some(1080));
        // A recovered packet counts against the loss before it, within the span.
        a.report("v", report(3, 10), at(1500));
        a.report("v", report(-2, 90), at(2000));
        assert_eq!(a.estimate_kbps("v"), Some(1166));
        // Ten packets are not enough to decide on, however long they took…
        a.report("v", report(5, 10), at(5000));
        assert_eq!(a.estimate_kbps("v"), Some(1166));
        // …and they count with the next ones: 15 of 30 lost.
        a.report("v", report(10, 20), at(5100));
        assert_eq!(a.estimate_kbps("v"), Some(875));
    }

    #[test]
    fn loss_counter_takes_differences_of_cumulative_counters() {
        let mut c = LossCounter::default();
        assert_eq!(
            c.report(7, 1000),
            Losses::default(),
            "the first is the baseline"
        );
        assert_eq!(
            c.report(12, 1100),
            Losses {
                lost: 5,
                expected: 100
            }
        );
        // Retransmissions arrived: the cumulative count went down.
        assert_eq!(
            c.report(10, 1150),
            Losses {
                lost: -2,
                expected: 50
            }
        );
        // An older report overtaken by that one adds nothing and moves no baseline.
        assert_eq!(c.report(11, 1120), Losses::default());
        assert_eq!(c.report(10, 1150), Losses::default(), "nothing new");
        assert_eq!(
            c.report(11, 1160),
            Losses {
                lost: 1,
                expected: 10
            }
        );
        // A receiver that starts over is a new baseline, not a span of a million packets…
        assert_eq!(c.report(0, 1_000_000), Losses::default());
        assert_eq!(
            c.report(1, 1_000_020),
            Losses {
                lost: 1,
                expected: 20
            }
        );
        // …nor a stream that stays behind the old baseline for good.
        assert_eq!(c.report(0, 5), Losses::default());
        assert_eq!(
            c.report(1, 25),
            Losses {
                lost: 1,
                expected: 20
            }
        );
    }

    #[test]
    fn loss_counter_handles_wrapping_and_negative_cumulative_counts() {
        let mut c = LossCounter::default();
        // The sequence number wraps into a new cycle (extended: 0x1_0005).
        c.report(0, 0xFFF0);
        assert_eq!(
            c.report(3, 0x1_0005),
            Losses {
                lost: 3,
                expected: 21
            }
        );
        // The cumulative count goes below zero (duplicates), 24-bit two's complement.
        assert_eq!(
            c.report(0xFF_FFFE, 0x1_0010),
            Losses {
                lost: -5,
                expected: 11
            }
        );
        // And back above it; the fraction is never negative nor above one.
        let back = c.report(4, 0x1_0014);
        assert_eq!(
            back,
            Losses {
                lost: 4,
                expected: 4
            },
            "lost is capped at the span"
        );
        assert_eq!(back.fraction(), Some(1.0));
        assert_eq!(
            Losses {
                lost: -3,
                expected: 10
            }
            .fraction(),
            Some(0.0)
        );
        assert_eq!(Losses::default().fraction(), None);
    }

    #[test]
    fn remb_caps_and_estimates_stay_within_floor_and_max() {
        let t0 = Instant::now();
        let mut a = Adaptation::new(LIMITS, 1000);
        a.join("v", t0);
        a.report(
            "v",
            Report {
                losses: Losses::default(),
                remb_kbps: Some(300),
            },
            t0,
        );
        assert_eq!(a.estimate_kbps("v"), Some(300));
        feed(&mut a, "v", 0.0, t0, 60);
        assert_eq!(a.estimate_kbps("v"), Some(2000));
        feed(&mut a, "v", 1.0, t0 + Duration::from_secs(60), 60);
        assert_eq!(a.estimate_kbps("v"), Some(30));
    }

    #[test]
    fn encoder_follows_the_weakest_but_not_below_the_ratio() {
        let t0 = Instant::now();
        let mut a = Adaptation::new(LIMITS, 2000);
        a.join("good", t0);
        a.join("weak", t0);
        let mut now = t0;
        let mut targets = Vec::new();
        for _ in 0..30 {
            now += Duration::from_secs(1);
            a.report("good", lossy(0.0), now);
            a.report("weak", lossy(0.4), now);
            if let Some(kbps) = a.encoder_change(now) {
                targets.push(kbps);
            }
        }
        // Falls with the weak viewer, then stops at a quarter of the good one's 2000.
        assert!(targets.windows(2).all(|w| w[1] < w[0]), "{targets:?}");
        assert_eq!(a.target_kbps(), 500);
        // Within the 5 % that is not worth an encoder change.
        assert!(
            (500..525).contains(&a.applied_kbps()),
            "{}",
            a.applied_kbps()
        );
        // The weak viewer is paced at its own estimate, the good one is not.
        assert!(a.budget_kbps("weak").unwrap() < 500);
        assert_eq!(a.budget_kbps("good"), None);

        // Loss gone: the weak viewer's estimate grows back and the encoder with it.
        for _ in 0..60 {
            now += Duration::from_secs(1);
            a.report("good", lossy(0.0), now);
            a.report("weak", lossy(0.0), now);
            a.encoder_change(now);
        }
        assert_eq!(a.applied_kbps(), 2000);
        assert_eq!(a.budget_kbps("weak"), None);

        // The weak viewer leaves: nothing holds the encoder down.
        a.leave("weak");
        assert_eq!(a.target_kbps(), 2000);
    }

    #[test]
    fn a_lone_viewer_is_followed_down_to_the_minimum() {
        let t0 = Instant::now();
        let mut a = Adaptation::new(LIMITS, 1000);
        a.join("v", t0);
        let mut now = t0;
        for _ in 0..40 {
            now += Duration::from_secs(1);
            a.report("v", lossy(0.5), now);
            a.encoder_change(now);
        }
        assert_eq!(a.applied_kbps(), 200);
    }

    #[test]
    fn encoder_changes_are_rate_limited_and_small_ones_skipped() {
        let t0 = Instant::now();
        let mut a = Adaptation::new(LIMITS, 1000);
        a.join("v", t0);
        a.report("v", lossy(0.3), t0 + Duration::from_secs(1));
        assert_eq!(a.encoder_change(t0 + Duration::from_secs(1)), Some(850));
        a.report("v", lossy(0.3), t0 + Duration::from_millis(2000));
        assert_eq!(a.encoder_change(t0 + Duration::from_millis(1500)), None);
        assert_eq!(
            a.encoder_change(t0 + Duration::from_millis(2000)),
            Some(723)
        );
        // +2 %: not worth a change.
        a.report("v", lossy(0.0), t0 + Duration::from_millis(2250));
        a.report("v", lossy(0.011), t0 + Duration::from_millis(3000));
        assert!(a.estimate_kbps("v").unwrap() > 723);
        let est = a.estimate_kbps("v").unwrap();
        assert!(f64::from(est) / 723.0 < 1.05 + 0.04, "{est}");
    }

    #[test]
    fn no_viewers_keeps_the_rate_and_the_start_is_clamped() {
        let a = Adaptation::new(LIMITS, 5000);
        assert_eq!(a.target_kbps(), 2000);
        assert_eq!(a.applied_kbps(), 2000);
        let mut a = Adaptation::new(LIMITS, 100);
        assert_eq!(a.encoder_change(Instant::now()), None);
        assert_eq!(a.applied_kbps(), 200);
        a.report("nobody", lossy(1.0), Instant::now());
        assert_eq!(a.estimate_kbps("nobody"), None);
    }

    #[test]
    fn budget_skips_to_the_next_keyframe() {
        let t0 = Instant::now();
        let mut b = ByteBudget::new(t0);
        // 80 kbit/s = 10 000 bytes a second; 30 fps.
        let frame = |i: u32| t0 + Duration::from_millis(33 * u64::from(i));
        assert!(b.admit(20_000, true, 80, frame(1)), "keyframes always go");
        // The keyframe overdrew the bucket: the deltas after it are skipped…
        assert!(!b.admit(300, false, 80, frame(2)));
        // A keyframe while still in debt waits for the next one.
        assert!(!b.admit(20_000, true, 80, frame(31)));
        // …and deltas stay skipped even once credit returns, until the next keyframe.
        assert!(!b.admit(300, false, 80, frame(80)));
        assert!(b.admit(20_000, true, 80, frame(91)));
        assert!(!b.admit(300, false, 80, frame(92)));
        // Enough credit: deltas flow again after a keyframe.
        assert!(b.admit(2_000, true, 80, frame(200)));
        assert!(b.admit(300, false, 80, frame(201)));
        assert!(b.admit(300, false, 80, frame(202)));
    }
}
