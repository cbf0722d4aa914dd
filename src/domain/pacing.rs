//! Sizing token buckets so that a hard per-second cap holds at the receiving end.
//!
//! A GCRA bucket with burst `b` and emission interval `T` admits `b + floor(1 s / T)` cells in a
//! one-second window, not `1 s / T`. To keep a cap `C` we choose `b + floor(1 s / T) <= C - margin`,
//! where the margin absorbs network jitter between admission and arrival.

use std::time::Duration;

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
}
