//! The estimate before anything is sent: eligible recipients, exclusions by reason, cost from the
//! rate card, and an ETA from the senders' pace and remaining tier.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::app::Services;
use crate::domain::campaign::{self, Exclusion, SenderCapacity};
use crate::store::campaigns::Campaign;

use super::*;

// -- estimate ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Estimate {
    pub audience: u64,
    pub eligible: u64,
    pub excluded: BTreeMap<&'static str, u64>,
    pub cost: CostEstimate,
    pub eta_seconds: u64,
    pub senders: Vec<SenderEstimate>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CostEstimate {
    pub currency: String,
    pub rate_card_valid_from: String,
    pub total: f64,
    /// country → (recipients, cost)
    pub by_country: BTreeMap<String, CountryCost>,
    /// Recipients in countries the rate card has no price for.
    pub unpriced: u64,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CountryCost {
    pub recipients: u64,
    pub price: Option<f64>,
    pub cost: f64,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SenderEstimate {
    pub phone_number_id: String,
    pub mps: u32,
    pub remaining_today: Option<u64>,
    pub daily_limit: Option<u64>,
}

/// Walks the whole audience with the same checks planning uses, writing nothing.
pub async fn estimate(services: &Services, c: &Campaign) -> Result<Estimate, CampaignError> {
    let plan = plan_of(services, c).await?;
    let chunk = i64::from(services.config.campaign_chunk);
    let mut seen = HashSet::new();
    let mut excluded: BTreeMap<&'static str, u64> =
        Exclusion::ALL.iter().map(|e| (e.code(), 0)).collect();
    let mut by_country: BTreeMap<String, u64> = BTreeMap::new();
    let (mut total, mut eligible) = (0u64, 0u64);
    // Three stages at once, a page apart: reading pages from PostgreSQL (keyset, so one after
    // another), reading their numbers' consent and suppression from Redis, and checking them
    // here; so PostgreSQL, Redis and both cores work at once instead of in turn.
    let (pages_tx, mut pages) = mpsc::channel(1);
    let reader = {
        let (services, audience) = (services.clone(), plan.audience.clone());
        tokio::spawn(async move {
            let mut cursor = 0;
            loop {
                let page = audience_page(&services, &audience, cursor, chunk).await?;
                let full = page.len() as i64 == chunk;
                let Some(last) = page.last().map(|c| c.seq) else {
                    break;
                };
                if pages_tx.send(page).await.is_err() || !full {
                    break;
                }
                cursor = last;
            }
            Ok::<_, CampaignError>(())
        })
    };
    let (read_tx, mut read) = mpsc::channel(1);
    let states = {
        let services = services.clone();
        tokio::spawn(async move {
            while let Some(page) = pages.recv().await {
                let page = read_page(&services, page).await?;
                if read_tx.send(page).await.is_err() {
                    break;
                }
            }
            Ok::<_, CampaignError>(())
        })
    };
    while let Some(page) = read.recv().await {
        total += page.len() as u64;
        for verdict in check_page(&plan, page, &mut seen, variables_resolve) {
            match verdict {
                Verdict::Send { country, .. } => {
                    eligible += 1;
                    *by_country.entry(country.to_string()).or_default() += 1;
                }
                Verdict::Excluded { reason, .. } => {
                    *excluded.entry(reason.code()).or_default() += 1
                }
            }
        }
    }
    // A stage that failed closed its channel, which ended the ones after it: its error is the
    // answer (the reader's first, as the states stage stops when the reader does).
    for stage in [reader, states] {
        stage
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    }
    let card = &services.derived.rate_card;
    let mut cost = CostEstimate {
        currency: card.currency.clone(),
        rate_card_valid_from: card.valid_from.clone(),
        total: 0.0,
        by_country: BTreeMap::new(),
        unpriced: 0,
    };
    for (country, recipients) in by_country {
        let price = card.price(&country, plan.category);
        let amount = price.map_or(0.0, |p| p * recipients as f64);
        if price.is_none() {
            cost.unpriced += recipients;
        }
        cost.total += amount;
        cost.by_country.insert(
            country,
            CountryCost {
                recipients,
                price,
                cost: campaign::round_money(amount),
            },
        );
    }
    cost.total = campaign::round_money(cost.total);
    let caps: Vec<SenderCapacity> = plan.capacities.iter().map(|(_, c)| *c).collect();
    let eta = campaign::eta(
        eligible,
        &caps,
        c.rate_cap.and_then(|r| u32::try_from(r).ok()),
    );
    Ok(Estimate {
        audience: total,
        eligible,
        excluded,
        cost,
        eta_seconds: eta.as_secs(),
        senders: plan
            .capacities
            .into_iter()
            .map(|(id, c)| SenderEstimate {
                phone_number_id: id,
                mps: c.mps,
                remaining_today: c.remaining,
                daily_limit: c.daily,
            })
            .collect(),
    })
}
