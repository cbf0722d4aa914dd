//! Per-sender pacing: the messages-per-second cap as a schedule of send slots
//! (`domain::pacing::SlotSchedule`, sized by `for_hard_cap` and adapted to Meta's throughput
//! answers by `AdaptiveCap`), and governor token buckets for the per-recipient pair rate and the
//! optional spread of a tier's daily budget over a period.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::domain::pacing::{AdaptiveCap, SlotSchedule, for_hard_cap};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

struct MpsState {
    schedule: SlotSchedule,
    /// The cap the schedule is sized for.
    cap: u32,
    adaptive: AdaptiveCap,
}

impl MpsState {
    /// The schedule, resized first if the adaptive cap moved.
    fn schedule(&mut self, now: Instant) -> &mut SlotSchedule {
        let cap = self.adaptive.cap(now);
        if cap != self.cap {
            self.cap = cap;
            self.schedule.resize(for_hard_cap(cap));
        }
        &mut self.schedule
    }
}

pub struct Pacer {
    mps: Mutex<MpsState>,
    pair: DefaultKeyedRateLimiter<String>,
    spread: Mutex<Option<(u64, Arc<DefaultDirectRateLimiter>)>>,
    clock: DefaultClock,
}

impl Pacer {
    pub fn new(mps: u32, pair_interval: Duration, pair_burst: u32, cooldown: Duration) -> Pacer {
        let pair_quota = Quota::with_period(pair_interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(nz(pair_burst));
        Pacer {
            mps: Mutex::new(MpsState {
                schedule: SlotSchedule::new(for_hard_cap(mps)),
                cap: mps,
                adaptive: AdaptiveCap::new(mps, cooldown, Instant::now()),
            }),
            pair: RateLimiter::keyed(pair_quota),
            spread: Mutex::new(None),
            clock: DefaultClock::default(),
        }
    }

    fn mps(&self) -> std::sync::MutexGuard<'_, MpsState> {
        self.mps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the next send slot under the current cap is, seen now.
    pub fn next_slot(&self, now: Instant) -> Instant {
        self.mps().schedule(now).next_slot(now)
    }

    /// Takes the next send slot under the current cap if it comes no later than `horizon`.
    pub fn reserve(&self, now: Instant, horizon: Instant) -> Option<Instant> {
        self.mps().schedule(now).reserve(now, horizon)
    }

    /// A throughput answer (130429): the adaptive cap decides whether to slow down.
    pub fn slow_down(&self) {
        let mut state = self.mps();
        if state.adaptive.on_throttle(Instant::now()) {
            tracing::info!(
                cap = state.adaptive.cap(Instant::now()),
                "throughput answer: slowing down"
            );
        }
    }

    /// Applies a new configured cap (the sender was updated).
    pub fn reconfigure(&self, mps: u32) {
        let mut state = self.mps();
        if state.adaptive.configured() != mps.max(1) {
            state.adaptive.reconfigure(mps, Instant::now());
        }
    }

    pub fn current_cap(&self) -> u32 {
        self.mps().adaptive.cap(Instant::now())
    }

    /// None when the recipient may receive now, else how long to wait.
    pub fn pair_wait(&self, recipient: &str) -> Option<Duration> {
        self.pair
            .check_key(&recipient.to_string())
            .err()
            .map(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// None when a tier-consuming send may go now under the spread, else how long to wait.
    /// `budget` recipients are spread evenly over `period`.
    pub fn spread_wait(&self, budget: u64, period: Duration) -> Option<Duration> {
        let limiter = {
            let mut spread = self.spread.lock().unwrap_or_else(|p| p.into_inner());
            match &*spread {
                Some((b, l)) if *b == budget => l.clone(),
                _ => {
                    let interval = period / u32::try_from(budget.max(1)).unwrap_or(u32::MAX);
                    let quota = Quota::with_period(interval.max(Duration::from_millis(1)))
                        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
                    let l = Arc::new(RateLimiter::direct(quota));
                    *spread = Some((budget, l.clone()));
                    l
                }
            }
        };
        limiter
            .check()
            .err()
            .map(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets recipients whose pair bucket is full again, so memory does not grow forever.
    pub fn forget_idle_recipients(&self) {
        self.pair.retain_recent();
        self.pair.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_down_halves_once_per_cooldown_and_reconfigure_resets() {
        let p = Pacer::new(80, Duration::from_secs(6), 2, Duration::from_secs(30));
        p.slow_down();
        assert_eq!(p.current_cap(), 40);
        // The rest of the burst (answers to requests already in flight) changes nothing.
        p.slow_down();
        assert_eq!(p.current_cap(), 40);
        p.reconfigure(100);
        assert_eq!(p.current_cap(), 100);
    }

    /// A throughput answer slows the slots handed out next, not those already handed out.
    #[test]
    fn slow_down_spaces_the_next_slots_wider() {
        let p = Pacer::new(80, Duration::from_secs(6), 2, Duration::from_secs(30));
        let now = Instant::now();
        let burst: Vec<Instant> = std::iter::from_fn(|| p.reserve(now, now)).collect();
        assert_eq!(burst.len(), 4, "80 mps: a burst of 4");
        let at_80 = p.next_slot(now);
        assert_eq!(at_80, now + Duration::from_secs(1) / 72);
        p.slow_down();
        let at_40 = p.next_slot(now);
        assert!(at_40 > at_80, "{at_40:?} is not after {at_80:?}");
        let a = p.reserve(now, at_40).expect("the next slot");
        let b = p.next_slot(now);
        assert_eq!(
            b - a,
            Duration::from_secs(1) / 36,
            "40 mps: one every 1/36 s"
        );
    }

    #[test]
    fn pair_rate_allows_the_burst_then_spaces() {
        let p = Pacer::new(80, Duration::from_secs(6), 2, Duration::from_secs(30));
        assert_eq!(p.pair_wait("a"), None);
        assert_eq!(p.pair_wait("a"), None);
        let wait = p.pair_wait("a").expect("third message must wait");
        assert!(
            wait > Duration::from_secs(4) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
        assert_eq!(p.pair_wait("b"), None);
    }
}
