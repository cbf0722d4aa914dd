//! Sizing token buckets so that a hard per-second cap holds at the receiving end.
//!
//! A GCRA bucket with burst `b` and emission interval `T` admits `b + floor(1 s / T)` cells in a
//! one-second window, not `1 s / T`. To keep a cap `C` we choose `b + floor(1 s / T) <= C - margin`,
//! where the margin absorbs network jitter between admission and arrival.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSize {
    /// Time between cells once the burst is spent.
    pub interval: Duration,
    pub burst: u32,
}

impl BucketSize {
    /// The most cells the bucket can admit in any one-second window.
    pub fn max_per_second(&self) -> u32 {
        let steady = Duration::from_secs(1).as_nanos() / self.interval.as_nanos().max(1);
        self.burst + u32::try_from(steady).unwrap_or(u32::MAX)
    }
}

pub fn for_hard_cap(cap: u32) -> BucketSize {
    let cap = cap.max(1);
    if cap <= 2 {
        // Too small to spare a margin in cells: space them 10% wider than the cap instead.
        return BucketSize {
            interval: Duration::from_millis(1100) / cap,
            burst: 1,
        };
    }
    // One cell of margin per 20 of cap (at least one) for jitter, and a burst of 1/20 of the cap so
    // sending resumes promptly after an idle moment.
    let margin = (cap / 20).max(1);
    let burst = (cap / 20).max(1);
    BucketSize {
        interval: Duration::from_secs(1) / (cap - margin - burst),
        burst,
    }
}

/// The messages-per-second cap a sender actually runs at after Meta's throughput answers
/// (130429): additive increase, multiplicative decrease.
///
/// - The cap halves at most once per cool-down. Answers to requests already in flight (up to
///   `sender_concurrency` of them) arrive together and carry no news after the first: counting each
///   as a new signal drove a sender from 80 to 1 message per second and kept it there.
/// - Within the cool-down, a throttle answer that still arrives a second or more after the last
///   change means the sender is still a little too fast: the cap steps back by a twentieth and
///   stays under that ceiling until the cool-down ends.
/// - Otherwise the cap grows by one step (a twentieth of the configured cap) per second, back to
///   the configured cap.
///
/// Time is passed in, so the rule is pure and tested by simulation.
/// How far the cap steps back after a throttle answer within the cool-down.
const STEP_BACK: f64 = 0.95;

#[derive(Debug, Clone)]
pub struct AdaptiveCap {
    configured: f64,
    cap: f64,
    ceiling: f64,
    step: f64,
    cooldown: Duration,
    last_cut: Option<Instant>,
    last_change: Option<Instant>,
    updated: Instant,
}

impl AdaptiveCap {
    pub fn new(configured: u32, cooldown: Duration, now: Instant) -> AdaptiveCap {
        let configured = f64::from(configured.max(1));
        AdaptiveCap {
            configured,
            cap: configured,
            ceiling: configured,
            step: (configured / 20.0).max(1.0),
            cooldown,
            last_cut: None,
            last_change: None,
            updated: now,
        }
    }

    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.updated = self.updated.max(now);
        if self
            .last_cut
            .is_some_and(|cut| now.saturating_duration_since(cut) >= self.cooldown)
        {
            self.ceiling = self.configured;
        }
        self.cap = (self.cap + self.step * elapsed.as_secs_f64()).min(self.ceiling);
    }

    /// The whole number of messages per second allowed at `now`.
    pub fn cap(&mut self, now: Instant) -> u32 {
        self.advance(now);
        self.cap.floor().max(1.0) as u32
    }

    /// A throughput answer arrived at `now`; returns whether the cap was halved.
    pub fn on_throttle(&mut self, now: Instant) -> bool {
        self.advance(now);
        let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        if since(self.last_cut).is_none_or(|d| d >= self.cooldown) {
            self.cap = (self.cap / 2.0).max(1.0);
            self.ceiling = self.configured;
            self.last_cut = Some(now);
            self.last_change = Some(now);
            return true;
        }
        if since(self.last_change).is_some_and(|d| d >= Duration::from_secs(1)) {
            self.ceiling = (self.cap * STEP_BACK).max(1.0);
            self.cap = self.ceiling;
            self.last_change = Some(now);
        }
        false
    }

    /// A new configured cap (the sender was updated): start again from it.
    pub fn reconfigure(&mut self, configured: u32, now: Instant) {
        *self = AdaptiveCap::new(configured, self.cooldown, now);
    }

    pub fn configured(&self) -> u32 {
        self.configured as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_admits_more_than_the_cap_in_a_second() {
        for cap in 1..=1000 {
            let b = for_hard_cap(cap);
            assert!(b.max_per_second() <= cap, "cap {cap}: {b:?}");
            assert!(b.burst >= 1);
        }
    }

    #[test]
    fn keeps_most_of_the_cap() {
        assert_eq!(for_hard_cap(20).max_per_second(), 19);
        assert_eq!(for_hard_cap(80).max_per_second(), 76);
        assert_eq!(for_hard_cap(1000).max_per_second(), 950);
    }

    const COOLDOWN: Duration = Duration::from_secs(30);

    /// One burst of answers to the requests in flight halves the cap once.
    #[test]
    fn a_burst_of_throttle_answers_halves_once() {
        let t0 = Instant::now();
        let mut cap = AdaptiveCap::new(80, COOLDOWN, t0);
        let cuts = (0..64)
            .filter(|i| cap.on_throttle(t0 + Duration::from_millis(*i * 3)))
            .count();
        assert_eq!(cuts, 1);
        assert_eq!(cap.cap(t0 + Duration::from_millis(200)), 40);
    }

    /// Without further answers it climbs back steadily to the configured cap.
    #[test]
    fn recovers_additively_when_meta_is_quiet() {
        let t0 = Instant::now();
        let mut cap = AdaptiveCap::new(80, COOLDOWN, t0);
        cap.on_throttle(t0);
        assert_eq!(cap.cap(t0 + Duration::from_secs(5)), 60);
        assert_eq!(cap.cap(t0 + Duration::from_secs(10)), 80);
        assert_eq!(cap.cap(t0 + Duration::from_secs(100)), 80);
        cap.reconfigure(200, t0 + Duration::from_secs(101));
        assert_eq!(cap.cap(t0 + Duration::from_secs(101)), 200);
    }

    /// Against a Cloud API that throttles whatever goes over its real limit, the cap settles near
    /// that limit instead of collapsing: a simulated ten minutes, in 100 ms ticks.
    #[test]
    fn settles_near_the_real_limit() {
        for (configured, limit) in [(80u32, 40.0f64), (80, 60.0), (1000, 250.0), (80, 10.0)] {
            let t0 = Instant::now();
            let mut cap = AdaptiveCap::new(configured, COOLDOWN, t0);
            let (mut accepted, mut throttled, mut lowest) = (0.0, 0.0, f64::MAX);
            for tick in 0..6000u64 {
                let now = t0 + Duration::from_millis(tick * 100);
                let rate = f64::from(cap.cap(now));
                let over = (rate - limit).max(0.0) / 10.0;
                if tick >= 3000 {
                    // The second half: the settled regime.
                    accepted += rate.min(limit) / 10.0;
                    throttled += over;
                    lowest = lowest.min(rate);
                }
                for _ in 0..over.ceil() as u32 {
                    cap.on_throttle(now);
                }
            }
            let settled = accepted / 300.0;
            assert!(
                settled >= 0.8 * limit,
                "cap {configured}, limit {limit}: settled at {settled:.1}/s"
            );
            assert!(
                throttled / (accepted + throttled) <= 0.1,
                "cap {configured}, limit {limit}: {throttled} throttled of {accepted}"
            );
            assert!(lowest >= limit / 2.0 - 1.0, "dropped to {lowest}");
        }
    }
}
