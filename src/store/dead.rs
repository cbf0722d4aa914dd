//! Dead-lettered jobs, kept for an operator: listed, read, and sent again.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct DeadJob {
    pub id: i64,
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
    message_id: Option<Uuid>,
    sender: Option<&str>,
    payload: &[u8],
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO dead_jobs (message_id, sender, payload) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(message_id)
    .bind(sender)
    .bind(payload)
    .fetch_one(pool)
    .await?)
}

/// Dead jobs after `after`, oldest first; only those not sent again unless `all`.
pub async fn list_dead_jobs(
    pool: &PgPool,
    after: i64,
    limit: i64,
    all: bool,
) -> Result<Vec<DeadJob>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, message_id, sender, payload, dead_at, redriven_at, redriven_by FROM dead_jobs
         WHERE id > $1 AND ($3 OR redriven_at IS NULL) ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .bind(all)
    .fetch_all(pool)
    .await?)
}

pub async fn get_dead_job(pool: &PgPool, id: i64) -> Result<Option<DeadJob>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, message_id, sender, payload, dead_at, redriven_at, redriven_by
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
    let marked = sqlx::query(
        "UPDATE dead_jobs SET redriven_at = now(), redriven_by = $2
         WHERE id = $1 AND redriven_at IS NULL",
    )
    .bind(id)
    .bind(by)
    .execute(&mut *tx)
    .await?;
    if marked.rows_affected() == 0 {
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
