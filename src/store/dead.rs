//! Dead-lettered jobs, kept for an operator: listed, read, and sent again.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

/// Where a dead job came from, with the stable code stored in `dead_jobs.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadSource {
    /// A send job from a sender's lane.
    Send,
    /// An enqueue request from the ingest queue.
    Ingest,
}

impl DeadSource {
    pub fn code(self) -> &'static str {
        match self {
            DeadSource::Send => "send",
            DeadSource::Ingest => "ingest",
        }
    }

    pub fn from_code(code: &str) -> Option<DeadSource> {
        [DeadSource::Send, DeadSource::Ingest]
            .into_iter()
            .find(|s| s.code() == code)
    }
}

impl TryFrom<String> for DeadSource {
    type Error = String;
    fn try_from(code: String) -> Result<DeadSource, String> {
        DeadSource::from_code(&code).ok_or_else(|| format!("unknown dead job source {code:?}"))
    }
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct DeadJob {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub source: DeadSource,
    pub message_id: Option<Uuid>,
    pub sender: Option<String>,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub dead_at: DateTime<Utc>,
    pub redriven_at: Option<DateTime<Utc>>,
    pub redriven_by: Option<String>,
}

pub async fn insert_dead_job(
    pool: &PgPool,
    source: DeadSource,
    message_id: Option<Uuid>,
    sender: Option<&str>,
    payload: &[u8],
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO dead_jobs (source, message_id, sender, payload) VALUES ($1, $2, $3, $4)
         RETURNING id",
    )
    .bind(source.code())
    .bind(message_id)
    .bind(sender)
    .bind(payload)
    .fetch_one(pool)
    .await?)
}

/// Dead jobs after `after`, oldest first; only those not sent again unless `all`.
/// A page of dead jobs after `after`; only those of `senders` when given (a job whose sender is
/// unknown is then left out).
pub async fn list_dead_jobs(
    pool: &PgPool,
    after: i64,
    limit: i64,
    all: bool,
    senders: Option<&[String]>,
) -> Result<Vec<DeadJob>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, source, message_id, sender, payload, dead_at, redriven_at, redriven_by FROM dead_jobs
         WHERE id > $1 AND ($3 OR redriven_at IS NULL) AND ($4::text[] IS NULL OR sender = ANY($4))
         ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .bind(all)
    .bind(senders)
    .fetch_all(pool)
    .await?)
}

pub async fn get_dead_job(pool: &PgPool, id: i64) -> Result<Option<DeadJob>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, source, message_id, sender, payload, dead_at, redriven_at, redriven_by
         FROM dead_jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Dead jobs not sent again yet.
pub async fn waiting_dead_jobs(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM dead_jobs WHERE redriven_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// Sends a dead job again, in one transaction: the dead job is marked redriven (once: false when
/// it already was), its message goes back to `queued` with its attempts reset, and the job enters
/// the job outbox, due at once, for the relay to publish.
pub async fn redrive_dead_job(
    pool: &PgPool,
    id: i64,
    by: &str,
    message_id: Uuid,
    routing_key: &str,
    payload: &[u8],
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    if !mark_redriven(&mut *tx, id, by).await? {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE messages SET status = 'queued', status_reason = NULL, attempts = 0,
             not_before = NULL, updated_at = now()
         WHERE id = $1 AND status IN ('failed', 'queued')",
    )
    .bind(message_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO job_outbox (message_id, routing_key, payload, created_at)
         VALUES ($1, $2, $3, '-infinity')
         ON CONFLICT (message_id) DO UPDATE
             SET routing_key = EXCLUDED.routing_key, payload = EXCLUDED.payload,
                 created_at = EXCLUDED.created_at",
    )
    .bind(message_id)
    .bind(routing_key)
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Marks a dead job sent again; false when it already was. On its own for a job that is sent
/// again by publishing it (an ingest request); inside [`redrive_dead_job`]'s transaction otherwise.
pub async fn mark_redriven(
    executor: impl sqlx::PgExecutor<'_>,
    id: i64,
    by: &str,
) -> Result<bool, StoreError> {
    let marked = sqlx::query(
        "UPDATE dead_jobs SET redriven_at = now(), redriven_by = $2
         WHERE id = $1 AND redriven_at IS NULL",
    )
    .bind(id)
    .bind(by)
    .execute(executor)
    .await?;
    Ok(marked.rows_affected() == 1)
}

/// Undoes [`mark_redriven`] when the publish that followed it failed, so it can be tried again.
pub async fn unmark_redriven(pool: &PgPool, id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE dead_jobs SET redriven_at = NULL, redriven_by = NULL WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::DeadSource;

    #[test]
    fn sources_keep_their_stable_codes() {
        for (source, code) in [(DeadSource::Send, "send"), (DeadSource::Ingest, "ingest")] {
            assert_eq!(source.code(), code);
            assert_eq!(DeadSource::from_code(code), Some(source));
            assert_eq!(
                serde_json::to_value(source).unwrap(),
                serde_json::json!(code)
            );
        }
        assert_eq!(DeadSource::from_code("lane"), None);
    }
}
