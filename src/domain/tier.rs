//! Messaging-limit tiers: how many unique recipients a number (or a whole business portfolio) may
//! reach outside a customer-service window in any moving 24 hours.

use std::fmt;
use std::time::Duration;

/// The moving window Meta counts unique recipients over.
pub const TIER_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Limited(u32),
    Unlimited,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a messaging-limit tier (use TIER_250, TIER_2K, 1000, unlimited, -1, …)")]
pub struct BadTier(pub String);

impl Tier {
    /// Parses every spelling Meta uses: `TIER_250`, `TIER_1K`, `TIER_UNLIMITED`, a plain integer
    /// (as in `business_capability_update`, where -1 means unlimited), and `unlimited`.
    pub fn parse(raw: &str) -> Result<Tier, BadTier> {
        let s = raw.trim().to_ascii_uppercase();
        let s = s.strip_prefix("TIER_").unwrap_or(&s);
        if s == "UNLIMITED" || s == "-1" {
            return Ok(Tier::Unlimited);
        }
        let (digits, multiplier) = match s.strip_suffix('K') {
            Some(d) => (d, 1_000),
            None => match s.strip_suffix('M') {
                Some(d) => (d, 1_000_000),
                None => (s, 1),
            },
        };
        digits
            .parse::<u32>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .map(Tier::Limited)
            .ok_or_else(|| BadTier(raw.to_string()))
    }

    pub fn from_limit(limit: i64) -> Tier {
        if limit < 0 {
            Tier::Unlimited
        } else {
            Tier::Limited(u32::try_from(limit).unwrap_or(u32::MAX))
        }
    }

    /// The limit as stored in Redis and PostgreSQL: -1 for unlimited.
    pub fn limit(self) -> i64 {
        match self {
            Tier::Limited(n) => i64::from(n),
            Tier::Unlimited => -1,
        }
    }

    /// The next rung of a ladder, for upgrades.
    pub fn next_on(self, ladder: &[Tier]) -> Tier {
        ladder.iter().copied().find(|t| *t > self).unwrap_or(self)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tier::Unlimited => f.write_str("TIER_UNLIMITED"),
            Tier::Limited(n) if n % 1_000 == 0 => write!(f, "TIER_{}K", n / 1_000),
            Tier::Limited(n) => write!(f, "TIER_{n}"),
        }
    }
}

/// Meta's ladder as our users asked for it, and the current one (since 2025-10) with a 2K step.
pub const CLASSIC_LADDER: &str = "250,1K,10K,100K,unlimited";
pub const CURRENT_LADDER: &str = "250,2K,10K,100K,unlimited";

pub fn parse_ladder(raw: &str) -> Result<Vec<Tier>, BadTier> {
    let mut ladder = raw
        .split(',')
        .map(Tier::parse)
        .collect::<Result<Vec<_>, _>>()?;
    ladder.sort();
    ladder.dedup();
    Ok(ladder)
}

/// Whose recipients share one count.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TierScope {
    PhoneNumber,
    BusinessPortfolio,
}

impl TierScope {
    /// The identity of the shared counter for a sender.
    pub fn counter_id(self, phone_number_id: &str, business_portfolio_id: &str) -> String {
        match self {
            TierScope::PhoneNumber => format!("pn:{phone_number_id}"),
            TierScope::BusinessPortfolio => format!("bp:{business_portfolio_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_meta_uses() {
        assert_eq!(Tier::parse("TIER_250"), Ok(Tier::Limited(250)));
        assert_eq!(Tier::parse("TIER_1K"), Ok(Tier::Limited(1_000)));
        assert_eq!(Tier::parse("TIER_2K"), Ok(Tier::Limited(2_000)));
        assert_eq!(Tier::parse("tier_100k"), Ok(Tier::Limited(100_000)));
        assert_eq!(Tier::parse("TIER_UNLIMITED"), Ok(Tier::Unlimited));
        assert_eq!(Tier::parse("2000"), Ok(Tier::Limited(2_000)));
        assert_eq!(Tier::parse("-1"), Ok(Tier::Unlimited));
        assert!(Tier::parse("TIER_LOTS").is_err());
        assert_eq!(Tier::from_limit(-1), Tier::Unlimited);
        assert_eq!(Tier::from_limit(10_000), Tier::Limited(10_000));
    }

    #[test]
    fn ladders_and_display() {
        let classic = parse_ladder(CLASSIC_LADDER).unwrap();
        assert_eq!(Tier::Limited(250).next_on(&classic), Tier::Limited(1_000));
        let current = parse_ladder(CURRENT_LADDER).unwrap();
        assert_eq!(Tier::Limited(250).next_on(&current), Tier::Limited(2_000));
        assert_eq!(Tier::Unlimited.next_on(&current), Tier::Unlimited);
        assert_eq!(Tier::Limited(2_000).to_string(), "TIER_2K");
        assert_eq!(Tier::Limited(250).to_string(), "TIER_250");
        assert_eq!(Tier::Unlimited.limit(), -1);
    }

    #[test]
    fn scope_decides_the_shared_counter() {
        assert_eq!(TierScope::PhoneNumber.counter_id("111", "bp9"), "pn:111");
        assert_eq!(
            TierScope::BusinessPortfolio.counter_id("111", "bp9"),
            "bp:bp9"
        );
    }
}
