//! Which sender of a pool a recipient sticks to, and how long a campaign will take.

use std::time::Duration;

/// The sender a recipient sticks to, among a pool weighted by remaining tier capacity (weighted
/// rendezvous hashing: the same recipient and pool always give the same sender, and removing a
/// sender moves only its own recipients).
pub fn pick_sender<'a>(recipient: &str, pool: &'a [(String, f64)]) -> Option<&'a str> {
    pool.iter()
        .filter(|(_, weight)| *weight > 0.0)
        .map(|(id, weight)| {
            let h = fnv1a(recipient.as_bytes(), id.as_bytes());
            // Uniform in (0, 1): never 0, so the logarithm is finite.
            let u = ((h >> 11) as f64 + 1.0) / ((1u64 << 53) as f64 + 1.0);
            (id.as_str(), -weight / u.ln())
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(id, _)| id)
        .or_else(|| pool.first().map(|(id, _)| id.as_str()))
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.iter().chain([0u8].iter()).chain(b.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche so nearby inputs spread over the whole range.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

/// What a sender can still do for a campaign.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SenderCapacity {
    pub mps: u32,
    /// Unique recipients it may still reach in the moving 24 h (None: unlimited).
    pub remaining: Option<u64>,
    /// Its limit per 24 h (None: unlimited).
    pub daily: Option<u64>,
}

/// The sender's share of recipients in a pool: proportional to what it may still reach today.
pub fn capacity_weight(c: &SenderCapacity) -> f64 {
    match c.remaining {
        None => 1_000_000.0,
        Some(r) => r as f64,
    }
}

/// How long sending `recipients` takes: throughput is the sum of the senders' mps (or the
/// campaign's rate cap, if lower); recipients beyond what the tiers allow today wait for the
/// moving 24 h window to free slots.
pub fn eta(recipients: u64, senders: &[SenderCapacity], rate_cap: Option<u32>) -> Duration {
    if recipients == 0 {
        return Duration::ZERO;
    }
    let mps: u64 = senders.iter().map(|s| u64::from(s.mps)).sum();
    let rate = match rate_cap {
        Some(cap) => mps.min(u64::from(cap)),
        None => mps,
    }
    .max(1);
    let sending = Duration::from_secs_f64(recipients as f64 / rate as f64);
    if senders.iter().any(|s| s.remaining.is_none()) {
        return sending;
    }
    let today: u64 = senders.iter().filter_map(|s| s.remaining).sum();
    if recipients <= today {
        return sending;
    }
    let daily: u64 = senders.iter().filter_map(|s| s.daily).sum::<u64>().max(1);
    let days = (recipients - today).div_ceil(daily);
    sending + Duration::from_secs(days * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn recipients_stick_to_a_sender_and_spread_by_capacity() {
        let pool = vec![("a".to_string(), 1000.0), ("b".to_string(), 3000.0)];
        let mut counts = HashMap::new();
        for i in 0..10_000 {
            let r = format!("5215500{i:06}");
            let first = pick_sender(&r, &pool).unwrap();
            assert_eq!(pick_sender(&r, &pool), Some(first));
            *counts.entry(first).or_insert(0) += 1;
        }
        let b = counts["b"] as f64 / 10_000.0;
        assert!((0.70..0.80).contains(&b), "b got {b}");
        // A sender with nothing left gets nobody.
        let full = vec![("a".to_string(), 0.0), ("b".to_string(), 5.0)];
        assert_eq!(pick_sender("5215512345678", &full), Some("b"));
    }

    #[test]
    fn eta_counts_throughput_rate_cap_and_tier_days() {
        let s = SenderCapacity {
            mps: 80,
            remaining: Some(1000),
            daily: Some(1000),
        };
        assert_eq!(eta(800, &[s], None), Duration::from_secs(10));
        assert_eq!(eta(800, &[s], Some(8)), Duration::from_secs(100));
        // 2,500 recipients on a 1K tier: today's 1,000 then two more days.
        assert_eq!(
            eta(2500, &[s], None),
            Duration::from_secs_f64(2500.0 / 80.0) + Duration::from_secs(2 * 86_400)
        );
        let unlimited = SenderCapacity {
            remaining: None,
            daily: None,
            ..s
        };
        assert_eq!(eta(8000, &[s, unlimited], None), Duration::from_secs(50));
    }
}
