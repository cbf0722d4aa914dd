//! Redis is a copy, PostgreSQL the truth. Redis here keeps nothing on disk, so after a restart it
//! is empty: every consent, window, suppression, tier count and mirror the send decision reads
//! would read as "none", and messages would be refused, skipped or failed for good, or sent to
//! people who opted out and over the messaging limit.
//!
//! So a complete copy carries a marker (`State::finish_rebuild` writes it last). Every reader that
//! decides on the copy reads the marker with it and holds while it is missing: the send snapshot,
//! the tier reservation script, the enqueue-time check and campaign planning. Every process keeps
//! watch ([`keep`]); the first to see the marker gone claims the rebuild and rewrites the copy
//! from PostgreSQL, in batches, then writes the marker. A Redis that restarts again during a
//! rebuild loses the claim with it, and that rebuild is not declared complete.
//!
//! What is rebuilt: consent (latest event per recipient and purpose, then the events written while
//! the rebuild ran), suppressions, open service windows (from the customers' messages), the tier
//! counters (recipients templates reached in the moving 24 h, and unknown outcomes), senders,
//! templates and campaign states. Send claims and "sent" markers are not: a job queued before the
//! rebuild that finds no marker asks its row instead (`worker::sender`).

use std::collections::HashMap;
use std::pin::{Pin, pin};
use std::time::{Duration, Instant};

use futures_util::{Stream, TryStreamExt};
use serde::Serialize;

use crate::app::{AppError, Services, Shutdown};
use crate::domain::decision::ConsentAction;
use crate::domain::tier::TIER_WINDOW;
use crate::domain::webhook::{REFERRAL_WINDOW, SERVICE_WINDOW};
use crate::state::now_ms;
use crate::store::{self, StoreError, copy};

/// Rows written to Redis per pipeline.
const BATCH: usize = 5_000;
/// How long a rebuild claim lasts without renewal (renewed after every batch).
const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How often each process checks that the copy is whole.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How far back sent messages are read to count the tier again (messages created earlier and
/// sent within the last 24 h are not seen; a week covers any deferral pregon makes).
const TIER_LOOKBACK: Duration = Duration::from_secs(7 * 86_400);

#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildReport {
    pub consent: u64,
    pub suppressions: u64,
    pub windows: u64,
    pub tier_entries: u64,
    pub senders: u64,
    pub templates: u64,
    pub campaigns: u64,
    pub took_ms: u64,
}

/// Makes sure the copy is whole before a process starts work: rebuilds it if it is missing, or
/// waits (at most `wait`) while another process does. After `wait` the process starts anyway; its
/// readers hold until the copy is back.
pub async fn ensure(services: &Services, wait: Duration) -> Result<(), AppError> {
    let deadline = Instant::now() + wait;
    loop {
        match check(services).await {
            Ok(Check::Whole | Check::Rebuilt) => return Ok(()),
            Ok(Check::ElsewhereOrRetry) => {}
            Err(e) => tracing::warn!(error = %e, "could not check or rebuild Redis's copy"),
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "Redis's copy is still missing; starting anyway, sends hold until it is rebuilt"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Watches the copy for the life of the process and rebuilds it when Redis lost it.
pub async fn keep(services: Services, mut stop: Shutdown) {
    loop {
        if let Err(e) = check(&services).await {
            tracing::warn!(error = %e, "could not check or rebuild Redis's copy");
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// Rebuilds the copy now, whole or not: an operator's repair, and how a rebuild's speed is
/// measured. Waits (at most a minute) for a rebuild another process is running.
pub async fn rebuild_now(services: &Services) -> Result<RebuildReport, AppError> {
    let token = rebuild_token();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !services.state.claim_rebuild(&token, CLAIM_TTL).await? {
        if Instant::now() >= deadline {
            return Err(AppError::Invalid(
                "another process has been rebuilding for a minute; try again later".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match rebuild(services, &token).await {
        Ok(Some(report)) => Ok(report),
        Ok(None) => Err(AppError::Invalid(
            "the rebuild lost its claim (did Redis restart?); try again".into(),
        )),
        Err(e) => {
            let _ = services.state.release_rebuild(&token).await;
            Err(e)
        }
    }
}

fn rebuild_token() -> String {
    format!("{}:{}", crate::instance_id(), uuid::Uuid::new_v4().simple())
}

enum Check {
    Whole,
    Rebuilt,
    /// Another process is rebuilding, or this attempt lost its claim: look again soon.
    ElsewhereOrRetry,
}

async fn check(services: &Services) -> Result<Check, AppError> {
    let whole = services.state.copy_since().await?.is_some();
    services.metrics.state_copy_complete.set(i64::from(whole));
    if whole {
        return Ok(Check::Whole);
    }
    let token = rebuild_token();
    if !services.state.claim_rebuild(&token, CLAIM_TTL).await? {
        return Ok(Check::ElsewhereOrRetry);
    }
    tracing::warn!(
        "Redis lost its copy of PostgreSQL's state; rebuilding it (sends hold meanwhile)"
    );
    match rebuild(services, &token).await {
        Ok(Some(report)) => {
            services.metrics.state_copy_complete.set(1);
            services.metrics.state_rebuilds.inc();
            services
                .metrics
                .state_rebuild_ms
                .set(i64::try_from(report.took_ms).unwrap_or(i64::MAX));
            tracing::info!(?report, "Redis's copy rebuilt; sends resume");
            Ok(Check::Rebuilt)
        }
        Ok(None) => {
            tracing::warn!("the rebuild lost its claim (Redis restarted again?); trying again");
            Ok(Check::ElsewhereOrRetry)
        }
        Err(e) => {
            let _ = services.state.release_rebuild(&token).await;
            Err(e)
        }
    }
}

/// Rewrites the copy from PostgreSQL. `None` when the claim was lost on the way (the copy is then
/// not declared complete).
async fn rebuild(services: &Services, token: &str) -> Result<Option<RebuildReport>, AppError> {
    let started = Instant::now();
    let started_ms = now_ms();
    let pool = &services.pool;
    let state = &services.state;
    let mut report = RebuildReport::default();

    // Consent first: the largest part. Events appended meanwhile are caught up below.
    let mut consent_mark = copy::newest_consent_id(pool).await?;
    let mut rows = pin!(copy::current_consent(pool));
    loop {
        let batch = next_batch(&mut rows).await?;
        if batch.is_empty() {
            break;
        }
        report.consent += batch.len() as u64;
        state.mirror_consent(&consent_actions(batch)).await?;
        if !state.renew_rebuild(token, CLAIM_TTL).await? {
            return Ok(None);
        }
    }

    let mut rows = pin!(copy::suppressed(pool));
    loop {
        let batch = next_batch(&mut rows).await?;
        if batch.is_empty() {
            break;
        }
        report.suppressions += batch.len() as u64;
        state.suppress_many(&batch).await?;
        if !state.renew_rebuild(token, CLAIM_TTL).await? {
            return Ok(None);
        }
    }

    let mut rows = pin!(copy::open_windows(pool, SERVICE_WINDOW, REFERRAL_WINDOW));
    loop {
        let batch = next_batch(&mut rows).await?;
        if batch.is_empty() {
            break;
        }
        report.windows += batch.len() as u64;
        let windows: Vec<(String, String, i64)> = batch
            .into_iter()
            .map(|(s, r, closes)| (s, r, closes.timestamp_millis()))
            .collect();
        state.open_service_windows(&windows).await?;
        if !state.renew_rebuild(token, CLAIM_TTL).await? {
            return Ok(None);
        }
    }

    // Tier counters: the counter of each sender under the configured scope.
    services.catalog.refresh().await?;
    let senders = services.catalog.senders();
    let counters: HashMap<String, String> = senders
        .iter()
        .map(|s| (s.phone_number_id.clone(), services.tier_counter(s).0))
        .collect();
    let mut rows = pin!(copy::recent_template_recipients(
        pool,
        TIER_WINDOW,
        TIER_LOOKBACK
    ));
    loop {
        let batch = next_batch(&mut rows).await?;
        if batch.is_empty() {
            break;
        }
        report.tier_entries += batch.len() as u64;
        let reached: Vec<(String, String, i64)> = batch
            .into_iter()
            .filter_map(|(sender, recipient, at)| {
                counters
                    .get(&sender)
                    .map(|c| (c.clone(), recipient, at.timestamp_millis()))
            })
            .collect();
        state.recount_tier(&reached).await?;
        if !state.renew_rebuild(token, CLAIM_TTL).await? {
            return Ok(None);
        }
    }

    // Consent written while the rebuild ran: until a pass finds nothing newer. A writer mirrors
    // after it commits, so whatever commits after the last pass's read lands after our writes.
    loop {
        let (rows, newest) = copy::consent_changed_since(pool, consent_mark).await?;
        if rows.is_empty() {
            break;
        }
        report.consent += rows.len() as u64;
        state.mirror_consent(&consent_actions(rows)).await?;
        consent_mark = newest;
    }

    // The small mirrors last, closest to the marker.
    for sender in &senders {
        services.mirror_sender(sender).await?;
    }
    report.senders = senders.len() as u64;
    let templates = store::list_templates(pool).await?;
    for t in &templates {
        state
            .mirror_template(&t.name, &t.language, t.status.as_str())
            .await?;
    }
    report.templates = templates.len() as u64;
    let campaigns = copy::campaign_states(pool).await?;
    for (id, campaign_state) in &campaigns {
        state.mirror_campaign(*id, *campaign_state).await?;
    }
    report.campaigns = campaigns.len() as u64;

    report.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if state.finish_rebuild(token, started_ms).await? {
        Ok(Some(report))
    } else {
        Ok(None)
    }
}

/// Consent rows as the mirror takes them (an action PostgreSQL's check would refuse is skipped).
fn consent_actions(rows: Vec<(String, String, String)>) -> Vec<(String, String, ConsentAction)> {
    rows.into_iter()
        .filter_map(|(r, p, a)| ConsentAction::parse(&a).map(|a| (r, p, a)))
        .collect()
}

/// The next rows of a stream, up to a batch (empty at its end).
async fn next_batch<T, S>(rows: &mut Pin<&mut S>) -> Result<Vec<T>, StoreError>
where
    S: Stream<Item = Result<T, StoreError>>,
{
    let mut batch = Vec::with_capacity(BATCH);
    while batch.len() < BATCH {
        match rows.try_next().await? {
            Some(row) => batch.push(row),
            None => break,
        }
    }
    Ok(batch)
}
