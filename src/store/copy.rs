//! What Redis's copy of the send decision's state is rebuilt from, read as streams so a million
//! contacts never sit in memory at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{Stream, TryStreamExt};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::campaign::CampaignState;
use crate::domain::reason::Reason;

use super::StoreError;

/// The latest consent per recipient and purpose: (recipient, purpose, action), by recipient.
pub fn current_consent(
    pool: &PgPool,
) -> impl Stream<Item = Result<(String, String, String), StoreError>> + '_ {
    sqlx::query_as(
        "SELECT DISTINCT ON (recipient, purpose) recipient, purpose, action
         FROM consent_events ORDER BY recipient, purpose, id DESC",
    )
    .fetch(pool)
    .map_err(StoreError::from)
}

/// The latest consent of the recipients with an event after `after_id`, and the newest id.
pub async fn consent_changed_since(
    pool: &PgPool,
    after_id: i64,
) -> Result<(Vec<(String, String, String)>, i64), StoreError> {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT DISTINCT ON (e.recipient, e.purpose) e.recipient, e.purpose, e.action, e.id
         FROM consent_events e
         WHERE e.recipient IN (SELECT recipient FROM consent_events WHERE id > $1)
         ORDER BY e.recipient, e.purpose, e.id DESC",
    )
    .bind(after_id)
    .fetch_all(pool)
    .await?;
    let newest = rows
        .iter()
        .map(|r| r.3)
        .max()
        .unwrap_or(after_id)
        .max(after_id);
    Ok((
        rows.into_iter().map(|(r, p, a, _)| (r, p, a)).collect(),
        newest,
    ))
}

/// The newest consent event id (0 when there is none).
pub async fn newest_consent_id(pool: &PgPool) -> Result<i64, StoreError> {
    let (id,): (Option<i64>,) = sqlx::query_as("SELECT max(id) FROM consent_events")
        .fetch_one(pool)
        .await?;
    Ok(id.unwrap_or(0))
}

/// Every suppressed recipient.
pub fn suppressed(pool: &PgPool) -> impl Stream<Item = Result<String, StoreError>> + '_ {
    sqlx::query_scalar("SELECT recipient FROM suppressions")
        .fetch(pool)
        .map_err(StoreError::from)
}

/// Service windows still open: (sender, recipient, closes at), from the customers' messages.
/// `window` and `from_ad` are the lengths a plain message and an ad's referral open.
pub fn open_windows(
    pool: &PgPool,
    window: Duration,
    from_ad: Duration,
) -> impl Stream<Item = Result<(String, String, DateTime<Utc>), StoreError>> + '_ {
    sqlx::query_as(
        "SELECT sender, recipient, closes FROM (
             SELECT sender, recipient,
                    max(occurred_at + make_interval(secs => CASE WHEN referral IS NULL
                        THEN $1 ELSE $2 END)) AS closes
             FROM inbound_messages
             WHERE occurred_at > now() - make_interval(secs => greatest($1, $2))
             GROUP BY sender, recipient
         ) w WHERE closes > now()",
    )
    .bind(window.as_secs_f64())
    .bind(from_ad.as_secs_f64())
    .fetch(pool)
    .map_err(StoreError::from)
}

/// The oldest message id of messages created at or after `at` (ids are UUIDv7, time-ordered),
/// so a scan of recent messages walks the primary key instead of the whole table.
fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// Recipients a template may have reached in the last `window`, per sender, with the last
/// instant: (sender, recipient, at). Sent messages count at their send; a `send_outcome_unknown`
/// counts too (it may have been sent). Messages created more than `lookback` ago are not read.
/// Templates sent inside a service window did not count against the tier; they are counted
/// anyway, which can only hold a sender back, never let it over its limit.
pub fn recent_template_recipients(
    pool: &PgPool,
    window: Duration,
    lookback: Duration,
) -> impl Stream<Item = Result<(String, String, DateTime<Utc>), StoreError>> + '_ {
    let lookback = chrono::Duration::from_std(lookback).unwrap_or(chrono::Duration::days(7));
    sqlx::query_as(
        "SELECT sender, recipient, max(COALESCE(sent_at, updated_at))
         FROM messages
         WHERE id >= $1 AND message_type = 'template'
           AND COALESCE(sent_at, updated_at) > now() - make_interval(secs => $2)
           AND (sent_at IS NOT NULL OR status_reason = $3)
         GROUP BY sender, recipient",
    )
    .bind(first_id_at(Utc::now() - lookback))
    .bind(window.as_secs_f64())
    .bind(Reason::SendOutcomeUnknown.code())
    .fetch(pool)
    .map_err(StoreError::from)
}

/// Every campaign's state.
pub async fn campaign_states(pool: &PgPool) -> Result<Vec<(Uuid, CampaignState)>, StoreError> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, state FROM campaigns")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, state)| CampaignState::parse(&state).map(|s| (id, s)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_an_instant_sorts_before_every_id_made_then_or_later() {
        let at = Utc::now();
        let floor = first_id_at(at);
        let made = Uuid::now_v7();
        assert!(floor <= made);
        assert!(first_id_at(at + chrono::Duration::seconds(1)) > made);
        assert_eq!(floor.get_version_num(), 7);
    }
}
