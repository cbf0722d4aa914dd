//! Backoff arithmetic for retries and deferrals.
//!
//! RabbitMQ 3.10 has no delayed-message plugin, so delays are served by a fixed set of TTL
//! queues ("steps"); a message that must wait longer than the largest step goes round it again
//! and carries its own `not_before` so it is never sent early.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl BackoffPolicy {
    /// Exponential backoff with "equal jitter": half the delay is fixed, half random, so retries
    /// of many messages spread out without ever collapsing to zero. `unit` is a random number in
    /// `[0, 1)`, passed in so the rule stays pure.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let full = exp.min(self.cap);
        let half = full / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Delay before attempt `attempt` (1 = the first retry) of work that must succeed in the end and
/// may wait (HTTP callbacks, stored webhook events): `base` doubling to an hour, ±20 % jitter so a
/// receiver or service coming back is not hit by everything at once. With a 5 s base, a day holds
/// about 30 attempts.
pub fn patient_delay(base: Duration, attempt: u32, unit: f64) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
        .min(Duration::from_secs(3600))
        .mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0))
}

/// Meta's advice for the pair rate: retry that recipient after 4^n seconds.
pub fn pair_rate_backoff(throttles: u32) -> Duration {
    Duration::from_secs(4u64.saturating_pow(throttles.clamp(1, 6)))
}

/// The delay queue to use for a wait: the largest step not longer than the wait (so a message is
/// never released early by more than the rounding of the smallest step), or the smallest step.
pub fn delay_step(steps: &[Duration], wait: Duration) -> Duration {
    steps
        .iter()
        .copied()
        .filter(|s| *s <= wait)
        .max()
        .or_else(|| steps.iter().copied().min())
        .unwrap_or(wait)
}

pub fn parse_steps(raw: &str) -> Result<Vec<Duration>, String> {
    let mut steps = raw
        .split(',')
        .map(|s| super::duration::parse_duration(s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    steps.sort();
    steps.dedup();
    if steps.is_empty() || steps[0].is_zero() {
        return Err("delay steps must be positive durations".into());
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = BackoffPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        };
        assert_eq!(p.delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(p.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(p.delay(4, 1.0), Duration::from_secs(8));
        assert_eq!(p.delay(30, 1.0), Duration::from_secs(300));
        assert!(
            p.delay(3, 0.5) >= Duration::from_secs(2) && p.delay(3, 0.5) <= Duration::from_secs(4)
        );
    }

    #[test]
    fn pair_backoff_follows_powers_of_four() {
        assert_eq!(pair_rate_backoff(1), Duration::from_secs(4));
        assert_eq!(pair_rate_backoff(2), Duration::from_secs(16));
        assert_eq!(pair_rate_backoff(99), Duration::from_secs(4096));
    }

    #[test]
    fn steps_round_down_and_floor_at_smallest() {
        let steps = parse_steps("1s,5s,30s,5m,1h").unwrap();
        assert_eq!(
            delay_step(&steps, Duration::from_millis(200)),
            Duration::from_secs(1)
        );
        assert_eq!(
            delay_step(&steps, Duration::from_secs(7)),
            Duration::from_secs(5)
        );
        assert_eq!(
            delay_step(&steps, Duration::from_secs(86_400)),
            Duration::from_secs(3600)
        );
        assert!(parse_steps("0s").is_err());
    }
}
