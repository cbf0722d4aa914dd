//! Progress of a campaign from its counter rows: counts by state and reason, send rate and ETA.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::Services;
use crate::store::campaigns::{self as cstore, Campaign};

use super::*;
use crate::domain::MessageStatus;
use crate::domain::reason::Reason;

/// The pseudo-state the counter rows give to a campaign's exclusions.
const EXCLUDED: &str = "excluded";

/// Messages in a final state, and all messages (not exclusions), from the counts by state.
pub fn done_and_total(totals: &HashMap<String, i64>) -> (i64, i64) {
    let get = |s: &MessageStatus| totals.get(s.as_str()).copied().unwrap_or(0);
    let total: i64 = MessageStatus::ALL.iter().map(get).sum();
    let open: i64 = MessageStatus::ALL
        .iter()
        .filter(|s| !s.is_final())
        .map(get)
        .sum();
    (total - open, total)
}

/// How many messages reached each step: a read message was delivered and sent, so each step
/// counts its own state and every later one (the dashboard's funnel sums the same states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, schemars::JsonSchema)]
pub struct Funnel {
    pub sent: i64,
    pub delivered: i64,
    pub read: i64,
    pub replied: i64,
    pub failed: i64,
}

impl Funnel {
    pub fn from_counts(totals: &HashMap<String, i64>) -> Funnel {
        let get = |s: &str| totals.get(s).copied().unwrap_or(0);
        Funnel {
            sent: get("sent") + get("delivered") + get("read"),
            delivered: get("delivered") + get("read"),
            read: get("read"),
            replied: get("replied"),
            failed: get("failed"),
        }
    }
}

/// About how many failures a retry would queue again, from the failure counts by detail (a
/// Meta code, else a reason). The retry itself judges each message by both, so it may queue a
/// few less.
pub fn retryable(failed_by_detail: &[(String, i64)]) -> i64 {
    failed_by_detail
        .iter()
        .filter(|(detail, _)| match detail.parse::<i64>() {
            Ok(code) => crate::domain::errors::worth_retrying(Some(code), None),
            Err(_) => crate::domain::errors::worth_retrying(None, Reason::parse(detail)),
        })
        .map(|(_, n)| n)
        .sum()
}

pub(crate) fn count_map(rows: &[(String, String, i64)]) -> HashMap<String, i64> {
    let mut map = HashMap::new();
    for (status, _, n) in rows {
        *map.entry(status.clone()).or_default() += n;
    }
    map
}

// -- progress ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Progress {
    pub campaign: Campaign,
    pub counts: BTreeMap<String, Value>,
    pub total: i64,
    pub done: i64,
    pub rate_per_second: Option<f64>,
    pub eta_seconds: Option<u64>,
    /// Messages that reached sent, delivered, read and replied, and those that failed.
    pub funnel: Funnel,
    /// About how many failures a retry would queue again.
    pub retryable: i64,
    /// The estimate for what was planned beside what Meta has billed so far.
    pub cost: crate::domain::campaign::CampaignCost,
    pub events: Vec<cstore::CampaignEvent>,
}

/// Counts by state (deferred, failed, skipped, cancelled and excluded broken down by reason or
/// code), the recent rate and what remains, for a campaign the caller has loaded (and checked the
/// caller may see).
pub async fn progress(
    services: &Services,
    c: cstore::Campaign,
    rates: &RateTracker,
) -> Result<Progress, CampaignError> {
    let id = c.id;
    let rows = cstore::counts(&services.pool, id).await?;
    let totals = count_map(&rows);
    let mut counts: BTreeMap<String, Value> = BTreeMap::new();
    for (status, detail, n) in &rows {
        // Open and final states that carry a reason, and the campaign's exclusions.
        let with_reasons = match MessageStatus::parse(status) {
            Some(s) => matches!(
                s,
                MessageStatus::Deferred
                    | MessageStatus::Failed
                    | MessageStatus::Skipped
                    | MessageStatus::Cancelled
            ),
            None => status == EXCLUDED,
        };
        if with_reasons {
            let entry = counts
                .entry(status.clone())
                .or_insert_with(|| json!({"total": 0, "by_reason": {}}));
            entry["by_reason"][if detail.is_empty() {
                "unknown"
            } else {
                detail.as_str()
            }] = json!(n);
        }
    }
    for (status, n) in &totals {
        match counts.get_mut(status) {
            Some(entry) => entry["total"] = json!(n),
            None => {
                counts.insert(status.clone(), json!(n));
            }
        }
    }
    let (done, total) = done_and_total(&totals);
    let rate = rates.observe(id, done);
    let remaining = total - done;
    // While the audience is still being planned the total is what is planned so far: no ETA.
    let eta = match rate {
        _ if !c.planned && c.state == CampaignState::Running => None,
        Some(r) if r > 0.0 => Some((remaining as f64 / r).ceil() as u64),
        _ if remaining == 0 => Some(0),
        _ => None,
    };
    let events = cstore::campaign_events(&services.pool, id).await?;
    let cost = services
        .derived
        .rate_card
        .campaign_cost(&cstore::costs(&services.pool, id).await?);
    Ok(Progress {
        campaign: c,
        counts,
        total,
        done,
        rate_per_second: rate,
        eta_seconds: eta,
        funnel: Funnel::from_counts(&totals),
        retryable: retryable(
            &rows
                .iter()
                .filter(|(status, _, _)| status == "failed")
                .map(|(_, detail, n)| (detail.clone(), *n))
                .collect::<Vec<_>>(),
        ),
        cost,
        events,
    })
}

/// Recent completion rate per campaign, from the progress reads themselves (each API process keeps
/// its own samples: a read costs no extra query).
/// Progress samples per campaign: when, and how many were done.
type Samples = HashMap<Uuid, std::collections::VecDeque<(std::time::Instant, i64)>>;

#[derive(Clone, Default)]
pub struct RateTracker {
    samples: Arc<std::sync::Mutex<Samples>>,
}

impl RateTracker {
    const WINDOW: Duration = Duration::from_secs(10);

    fn observe(&self, id: Uuid, done: i64) -> Option<f64> {
        let now = std::time::Instant::now();
        let mut all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let samples = all.entry(id).or_default();
        samples.push_back((now, done));
        while samples.len() > 2
            && samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > Self::WINDOW)
        {
            samples.pop_front();
        }
        let (t0, d0) = *samples.front()?;
        let elapsed = now.duration_since(t0).as_secs_f64();
        (elapsed >= 0.5).then(|| ((done - d0).max(0) as f64 / elapsed * 10.0).round() / 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
        pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    }

    #[test]
    fn the_funnel_counts_what_reached_each_step() {
        let cases: &[(&[(&str, i64)], Funnel)] = &[
            (&[], Funnel::default()),
            (
                &[
                    ("sent", 5),
                    ("delivered", 3),
                    ("read", 2),
                    ("replied", 1),
                    ("failed", 4),
                    ("queued", 9),
                ],
                Funnel {
                    sent: 10,
                    delivered: 5,
                    read: 2,
                    replied: 1,
                    failed: 4,
                },
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(Funnel::from_counts(&counts(pairs)), *want, "{pairs:?}");
        }
        // Exclusions and replies are not messages of their own.
        let (done, total) = done_and_total(&counts(&[
            ("read", 2),
            ("queued", 3),
            ("excluded", 7),
            ("replied", 1),
        ]));
        assert_eq!((done, total), (2, 5));
    }

    #[test]
    fn retryable_failures_follow_the_retry_rules() {
        let by_detail = |pairs: &[(&str, i64)]| {
            pairs
                .iter()
                .map(|(d, n)| (d.to_string(), *n))
                .collect::<Vec<_>>()
        };
        for (pairs, want) in [
            (vec![], 0),
            (vec![("131026", 3)], 0),
            (vec![("131026", 3), ("attempts_exhausted", 2)], 2),
            (
                vec![("recipient_opted_out", 1), ("131000", 4), ("131050", 1)],
                4,
            ),
        ] {
            assert_eq!(retryable(&by_detail(&pairs)), want, "{pairs:?}");
        }
    }
}
