//! Keeping personal data only as long as it should be: the retention purge the worker runs, and
//! the erasure of one person on request (`pregon erase`, `POST /v1/erasures`).

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::app::{AppError, Services, Shutdown};
use crate::domain::phone;
use crate::store::privacy::{self, Erased, Kept};

/// Rows purged per statement: small enough that no lock is held for long.
const PURGE_BATCH: i64 = 1000;

/// How long each kind of data is kept (None: for ever), from the settings.
pub fn retention(config: &crate::config::Config, kind: Kept) -> Option<Duration> {
    let kept = match kind {
        Kept::MessageBodies => config.retain_message_bodies.0,
        Kept::WebhookPayloads => config.retain_webhook_payloads.0,
        Kept::InboundMessages => config.retain_inbound_messages.0,
        Kept::DeliveryLogs => config.retain_delivery_logs.0,
        Kept::ImportErrors => config.retain_import_errors.0,
        Kept::Refusals => config.retain_refusals.0,
    };
    (!kept.is_zero()).then_some(kept)
}

/// Purges everything kept past its time, a batch at a time, until none is left; returns the rows
/// purged per kind.
pub async fn purge_once(services: &Services) -> Result<Vec<(Kept, u64)>, AppError> {
    let mut report = Vec::new();
    for kind in Kept::ALL {
        let Some(kept) = retention(&services.config, kind) else {
            continue;
        };
        let before =
            chrono::Utc::now() - chrono::Duration::from_std(kept).unwrap_or(chrono::Duration::MAX);
        let mut total = 0;
        loop {
            let purged = privacy::purge_batch(&services.pool, kind, before, PURGE_BATCH).await?;
            total += purged;
            services
                .metrics
                .purged_rows
                .with_label_values(&[kind.as_str()])
                .inc_by(purged);
            if purged < PURGE_BATCH as u64 {
                break;
            }
            // Room for the traffic between batches.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report.push((kind, total));
    }
    Ok(report)
}

/// The worker's purge: every `purge_interval` until shutdown. A failed round (PostgreSQL away)
/// is logged and tried again next time.
pub async fn run_purge(services: Services, mut shutdown: Shutdown) {
    let every = services.config.purge_interval.0;
    loop {
        match purge_once(&services).await {
            Ok(report) => {
                let purged: u64 = report.iter().map(|(_, n)| n).sum();
                if purged > 0 {
                    tracing::info!(purged, ?report, "retention purge");
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention purge failed; trying again later"),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The hash a person's tombstone keeps: of the canonical number, so every spelling finds it.
pub fn identity_hash(canonical: &str) -> Vec<u8> {
    Sha256::digest(format!("pregon-erasure-v1:{canonical}").as_bytes()).to_vec()
}

/// What an erased person's messages name instead of their number.
fn tombstone(hash: &[u8]) -> String {
    format!("erased:{}", hex::encode(&hash[..16]))
}

/// Removes a person's data everywhere (PostgreSQL and Redis), keeping a hashed tombstone with
/// whether they had opted out.
pub async fn erase(services: &Services, raw_phone: &str, by: &str) -> Result<Erased, AppError> {
    let number =
        phone::normalize(raw_phone).map_err(|e| AppError::Invalid(format!("recipient: {e}")))?;
    let spellings = phone::spellings(number.digits());
    let hash = identity_hash(number.digits());
    let tombstone = tombstone(&hash);
    let erased = privacy::erase_person(&services.pool, &spellings, &tombstone, &hash, by).await?;
    let senders: Vec<_> = services.catalog.senders();
    let ids: Vec<String> = senders.iter().map(|s| s.phone_number_id.clone()).collect();
    let mut counters: Vec<String> = senders.iter().map(|s| services.tier_counter(s).0).collect();
    counters.sort();
    counters.dedup();
    services
        .state
        .forget_person(&spellings, &ids, &counters, &tombstone)
        .await?;
    services.metrics.erasures.inc();
    tracing::info!(by, "a person's data was erased");
    Ok(erased)
}

/// Of `canonicals`, those erased after opting out of `purpose`: an opt-in for them must come
/// from the person again, never from a list imported again.
pub async fn erased_opted_out(
    services: &Services,
    canonicals: &[&str],
    purpose: &str,
) -> Result<std::collections::HashSet<String>, AppError> {
    if canonicals.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let hashes: Vec<Vec<u8>> = canonicals.iter().map(|c| identity_hash(c)).collect();
    let found = privacy::erased_opted_out(&services.pool, &hashes, purpose).await?;
    Ok(canonicals
        .iter()
        .zip(&hashes)
        .filter(|(_, h)| found.contains(h))
        .map(|(c, _)| c.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tombstone_hash_is_the_same_for_every_spelling_and_shows_no_digits() {
        let a = phone::normalize("+52 55 1234 5678").unwrap();
        let b = phone::normalize("+52 1 55 1234 5678").unwrap();
        assert_eq!(identity_hash(a.digits()), identity_hash(b.digits()));
        let t = tombstone(&identity_hash(a.digits()));
        assert!(t.starts_with("erased:") && !t.contains("5512345678"), "{t}");
        assert_ne!(
            identity_hash("5215512345678"),
            identity_hash("5215512345679")
        );
    }

    #[test]
    fn zero_keeps_for_ever() {
        let mut config = crate::config::Config::default();
        config.retain_inbound_messages = crate::config::HumanDuration(Duration::ZERO);
        assert_eq!(retention(&config, Kept::InboundMessages), None);
        assert!(retention(&config, Kept::MessageBodies).is_some());
    }
}
