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

/// The send times of one sender under its messages-per-second cap: a GCRA (the same shape of
/// bucket `for_hard_cap` sizes, `burst` cells refilled one per `interval`) that hands out *slots*
/// rather than answering "now or not". A dispatch loop may reserve the next few slots at once,
/// decide on those jobs together (one Redis round trip for all of them) and send each at its own
/// slot, so a paced lane batches as well as one at full speed.
///
/// Reserved slots are never handed out twice and follow the bucket exactly: whatever the pattern
/// of reservations, no one-second window holds more than `BucketSize::max_per_second` of them.
/// Time is passed in, so the rule is pure and tested as a table.
#[derive(Debug, Clone)]
pub struct SlotSchedule {
    size: BucketSize,
    /// The theoretical arrival time: when the bucket is full again. `None` until the first slot.
    tat: Option<Instant>,
}

impl SlotSchedule {
    pub fn new(size: BucketSize) -> SlotSchedule {
        SlotSchedule { size, tat: None }
    }

    /// A new size (the cap changed). The slots already handed out stay where they are: the next
    /// one follows the last of them at the new spacing.
    pub fn resize(&mut self, size: BucketSize) {
        self.size = size;
    }

    pub fn size(&self) -> BucketSize {
        self.size
    }

    /// How far before the theoretical arrival time a cell may go: the burst less the cell itself.
    fn tolerance(&self) -> std::time::Duration {
        self.size.interval * self.size.burst.saturating_sub(1)
    }

    /// The earliest time the next slot can be, seen at `now`.
    pub fn next_slot(&self, now: Instant) -> Instant {
        match self.tat {
            None => now,
            Some(tat) => tat
                .checked_sub(self.tolerance())
                .map_or(now, |earliest| earliest.max(now)),
        }
    }

    /// Takes the next slot if it comes no later than `horizon`, and says when it is.
    pub fn reserve(&mut self, now: Instant, horizon: Instant) -> Option<Instant> {
        let slot = self.next_slot(now);
        if slot > horizon {
            return None;
        }
        let from = self.tat.map_or(slot, |tat| tat.max(slot));
        self.tat = Some(from + self.size.interval);
        Some(slot)
    }
}

/// Send slots a lane's batch holds for marketing sends whose time has not come. A transactional
/// job whose own slot comes later trades it for the earliest of them: the set of send times stays
/// the same, so the cap holds exactly as the schedule handed the slots out, and an OTP does not
/// wait behind the slots a marketing batch reserved ahead.
#[derive(Debug, Default)]
pub struct HeldSlots {
    next_id: u64,
    held: Vec<(u64, Instant)>,
}

impl HeldSlots {
    /// Holds `at` for a send; the id asks for it later. Slots already due are forgotten: their
    /// sends are going.
    pub fn hold(&mut self, at: Instant, now: Instant) -> u64 {
        self.held.retain(|(_, t)| *t > now);
        self.next_id += 1;
        self.held.push((self.next_id, at));
        self.next_id
    }

    /// Whether the send holding `id` may go at `now` (then its slot is released), or else when
    /// to ask again: its slot may have been traded for a later one.
    pub fn take_if_due(&mut self, id: u64, now: Instant) -> Result<(), Instant> {
        match self.held.iter().position(|(i, _)| *i == id) {
            Some(at) if self.held[at].1 > now => Err(self.held[at].1),
            Some(at) => {
                self.held.swap_remove(at);
                Ok(())
            }
            // Forgotten because it was due.
            None => Ok(()),
        }
    }

    /// The slot a transactional send is to use instead of `slot`: the earliest held one still to
    /// come, if it is earlier (that send gets `slot` in its place), else `slot` itself.
    pub fn trade(&mut self, slot: Instant, now: Instant) -> Instant {
        self.held.retain(|(_, t)| *t > now);
        let earliest = self
            .held
            .iter_mut()
            .filter(|(_, t)| *t < slot)
            .min_by_key(|(_, t)| *t);
        match earliest {
            Some((_, t)) => std::mem::replace(t, slot),
            None => slot,
        }
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

    /// Slots taken greedily by a lane that reserves up to `ahead` past each look, looking every
    /// `every`: never more in any one-second window than the bucket admits, and the cap kept.
    #[test]
    fn reserved_slots_keep_the_cap_in_every_second() {
        for (cap, ahead_ms, every_ms) in [
            (20u32, 0u64, 1u64),
            (20, 200, 7),
            (80, 0, 1),
            (80, 50, 3),
            (80, 50, 50),
            (80, 1000, 13),
            (1000, 0, 1),
            (1000, 50, 2),
            (1000, 50, 40),
        ] {
            let size = for_hard_cap(cap);
            let mut schedule = SlotSchedule::new(size);
            let t0 = Instant::now();
            let mut slots = Vec::new();
            for look in 0..(5_000 / every_ms) {
                let now = t0 + Duration::from_millis(look * every_ms);
                let horizon = now + Duration::from_millis(ahead_ms);
                while let Some(slot) = schedule.reserve(now, horizon) {
                    assert!(slot >= now, "cap {cap}: a slot in the past");
                    slots.push(slot);
                }
            }
            assert!(
                slots.windows(2).all(|w| w[0] <= w[1]),
                "cap {cap}: out of order"
            );
            let most = slots
                .iter()
                .enumerate()
                .map(|(i, start)| {
                    slots[i..]
                        .iter()
                        .take_while(|s| s.duration_since(*start) < Duration::from_secs(1))
                        .count()
                })
                .max()
                .unwrap_or(0);
            assert!(
                most <= size.max_per_second() as usize,
                "cap {cap}, ahead {ahead_ms} ms, every {every_ms} ms: {most} in one second"
            );
            // A lane that always has work keeps its pace: about four seconds' worth after the
            // first burst, whatever its lookahead.
            let sent = slots
                .iter()
                .filter(|s| s.duration_since(t0) < Duration::from_secs(4))
                .count();
            let steady = (4.0 / size.interval.as_secs_f64()) as usize;
            assert!(
                sent + 2 >= steady,
                "cap {cap}, ahead {ahead_ms} ms: {sent} of {steady}"
            );
        }
    }

    /// After an idle moment a burst goes at once; then one slot per interval, reserved ahead as
    /// far as the horizon and no further.
    #[test]
    fn a_burst_then_spaced_slots_up_to_the_horizon() {
        let size = BucketSize {
            interval: Duration::from_millis(10),
            burst: 3,
        };
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut s = SlotSchedule::new(size);
        let taken: Vec<Option<Instant>> = (0..6).map(|_| s.reserve(t0, ms(25))).collect();
        assert_eq!(
            taken,
            vec![
                Some(t0),
                Some(t0),
                Some(t0),
                Some(ms(10)),
                Some(ms(20)),
                None
            ]
        );
        assert_eq!(s.next_slot(t0), ms(30));
        // A later look starts from what is already handed out, never before now.
        assert_eq!(s.reserve(ms(28), ms(28)), None);
        assert_eq!(s.reserve(ms(31), ms(31)), Some(ms(31)));
        // Idle long enough, the bucket is full again.
        let later = ms(1_000);
        assert_eq!((0..4).filter_map(|_| s.reserve(later, later)).count(), 3);
    }

    /// A smaller cap spaces the slots after those already handed out, never among them.
    #[test]
    fn resizing_keeps_the_slots_handed_out() {
        let t0 = Instant::now();
        let mut s = SlotSchedule::new(for_hard_cap(1000));
        let far = t0 + Duration::from_secs(10);
        let last = (0..200)
            .filter_map(|_| s.reserve(t0, far))
            .last()
            .expect("slots");
        s.resize(for_hard_cap(40));
        let next = s.reserve(t0, far).expect("a slot");
        assert!(next > last, "{next:?} is not after {last:?}");
        assert_eq!(s.size(), for_hard_cap(40));
    }

    /// An OTP's later slot is traded for the earliest marketing slot still to come; the
    /// marketing send then goes at the OTP's slot, so the send times stay the same.
    #[test]
    fn a_transactional_send_trades_for_the_earliest_held_slot() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut held = HeldSlots::default();
        let a = held.hold(ms(10), t0);
        let b = held.hold(ms(20), t0);
        let c = held.hold(ms(30), t0);
        // (slot asked for, now) → slot to use
        let trades = [
            ((ms(40), ms(5)), ms(10)),
            ((ms(50), ms(5)), ms(20)),
            // Nothing held earlier than this one.
            ((ms(25), ms(5)), ms(25)),
            // c's slot (30) is due by now, so it is going and cannot be traded; a's (40 since
            // the first trade) is the earliest still to come.
            ((ms(60), ms(35)), ms(40)),
        ];
        let mut used = Vec::new();
        for ((slot, now), expected) in trades {
            let got = held.trade(slot, now);
            assert_eq!(got, expected, "trading {slot:?} at {now:?}");
            used.push(got);
        }
        assert_eq!(held.take_if_due(a, ms(12)), Err(ms(60)));
        assert_eq!(held.take_if_due(b, ms(12)), Err(ms(50)));
        assert_eq!(held.take_if_due(c, ms(30)), Ok(()));
        assert_eq!(held.take_if_due(b, ms(50)), Ok(()));
        assert_eq!(held.take_if_due(a, ms(59)), Err(ms(60)));
        assert_eq!(held.take_if_due(a, ms(60)), Ok(()));
        // The OTPs went at 10, 20, 25 and 40, the marketing sends at 30, 50 and 60: the same
        // seven times the schedule handed out (10, 20 and 30 held, then 40, 50, 25 and 60).
        used.extend([ms(30), ms(50), ms(60)]);
        used.sort();
        assert_eq!(
            used,
            vec![ms(10), ms(20), ms(25), ms(30), ms(40), ms(50), ms(60)]
        );
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
