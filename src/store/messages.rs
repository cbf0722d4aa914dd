//! Message rows: what was accepted, its state and reason, and the lifecycle event written by the
//! same statement that changes the row.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::StoreError;
use crate::domain::MessageStatus;
use crate::domain::reason::Reason;

// ---------------------------------------------------------------------------------------------
// Messages

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: Uuid,
    pub idempotency_key: Option<String>,
    pub api_key_id: Option<Uuid>,
    pub sender: String,
    pub recipient: String,
    pub category: String,
    pub message_type: String,
    pub template_name: Option<String>,
    pub template_language: Option<String>,
    pub delivery: String,
    /// The Cloud API body as sent, kept so the message can be sent again later.
    pub body: String,
    /// The job to publish, committed with the row into `job_outbox` (none for rows written
    /// without a job, as tests do).
    pub job: Option<OutboxJob>,
}

/// A job as the outbox keeps it until RabbitMQ confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxJob {
    pub routing_key: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageUpdate {
    pub id: Uuid,
    pub status: MessageStatus,
    pub reason: Option<String>,
    pub wamid: Option<String>,
    /// The person's WhatsApp id from a send's answer.
    pub wa_id: Option<String>,
    pub attempts: i32,
    pub error_code: Option<i64>,
    pub error: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    /// When the Cloud API accepted the send: `sent_at` says when that happened, not when the
    /// record was written (a batch can wait behind others). Without it, the write's time.
    pub accepted_at: Option<DateTime<Utc>>,
}

impl MessageUpdate {
    pub fn new(id: Uuid, status: MessageStatus, attempts: u32) -> MessageUpdate {
        MessageUpdate {
            id,
            status,
            reason: None,
            wamid: None,
            wa_id: None,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            error_code: None,
            error: None,
            not_before: None,
            accepted_at: None,
        }
    }

    /// The same update, recorded with a reason.
    pub fn because(mut self, reason: Reason) -> MessageUpdate {
        self.reason = Some(reason.code().to_string());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct MessageRow {
    pub id: Uuid,
    pub sender: String,
    pub recipient: String,
    pub category: String,
    pub message_type: String,
    pub template_name: Option<String>,
    pub template_language: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: MessageStatus,
    pub status_reason: Option<String>,
    pub wamid: Option<String>,
    /// The person's WhatsApp id as Meta answered the send.
    pub wa_id: Option<String>,
    pub attempts: i32,
    pub last_error_code: Option<i64>,
    pub last_error: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub read_at: Option<DateTime<Utc>>,
    pub replied_at: Option<DateTime<Utc>>,
    pub pricing_type: Option<String>,
    pub pricing_category: Option<String>,
}

macro_rules! message_columns {
    () => {
        "id, sender, recipient, category, message_type, template_name, template_language, status, status_reason,
         wamid, wa_id, attempts, last_error_code, last_error, not_before, created_at, updated_at, sent_at,
         delivered_at, read_at, replied_at, pricing_type, pricing_category"
    };
}

/// The lifecycle event of a changed message row `c`, as JSON (schema `pregon.event.v1`).
macro_rules! message_event_json {
    ($type:literal) => {
        concat!(
            "jsonb_build_object('schema', 'pregon.event.v1', 'id', gen_random_uuid(), 'type', ",
            $type,
            ", 'occurred_at', now(), 'message', jsonb_build_object(
                'id', c.id, 'sender', c.sender, 'recipient', c.recipient, 'category', c.category,
                'type', c.message_type, 'template', c.template_name, 'language', c.template_language,
                'status', c.status, 'reason', c.status_reason, 'wamid', c.wamid, 'attempts', c.attempts,
                'error_code', c.last_error_code, 'error', c.last_error, 'not_before', c.not_before,
                'pricing', CASE WHEN c.pricing_type IS NULL THEN NULL ELSE jsonb_build_object(
                    'model', c.pricing_model, 'type', c.pricing_type, 'category', c.pricing_category,
                    'billable', c.billable) END))"
        )
    };
}
pub(crate) use message_event_json;

/// Columns a changed-row CTE returns so [`message_event_json`] can describe it.
macro_rules! changed_columns {
    () => {
        "m.id, m.sender, m.recipient, m.category, m.message_type, m.template_name, m.template_language,
         m.status, m.status_reason, m.wamid, m.attempts, m.last_error_code, m.last_error, m.not_before,
         m.pricing_model, m.pricing_type, m.pricing_category, m.billable, m.api_key_id"
    };
}
pub(crate) use changed_columns;

pub async fn get_message(pool: &PgPool, id: Uuid) -> Result<Option<MessageRow>, StoreError> {
    Ok(sqlx::query_as::<_, MessageRow>(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

pub async fn find_by_idempotency_key(
    pool: &PgPool,
    key: &str,
) -> Result<Option<MessageRow>, StoreError> {
    Ok(sqlx::query_as::<_, MessageRow>(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE idempotency_key = $1"
    ))
    .bind(key)
    .fetch_optional(pool)
    .await?)
}

/// Counts of messages by status for one sender (or all), for tests, the demo and the bench.
pub async fn count_by_status(
    pool: &PgPool,
    sender: Option<&str>,
) -> Result<HashMap<String, i64>, StoreError> {
    let rows = sqlx::query(
        "SELECT status, count(*) FROM messages WHERE $1::text IS NULL OR sender = $1 GROUP BY status",
    )
    .bind(sender)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect())
}

/// Inserts rows with their jobs and `message.queued` events, in one statement. A row whose
/// idempotency key is already taken is not inserted (nor its job or event); the ids inserted are
/// returned, so each caller can tell its new rows from its replays.
pub(super) async fn insert_messages(
    pool: &PgPool,
    rows: &[NewMessage],
) -> Result<Vec<Uuid>, StoreError> {
    fn col<T: Clone>(rows: &[NewMessage], f: impl Fn(&NewMessage) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    let with_jobs: Vec<&NewMessage> = rows.iter().filter(|r| r.job.is_some()).collect();
    let job_ids: Vec<Uuid> = with_jobs.iter().map(|r| r.id).collect();
    let (routing_keys, payloads): (Vec<String>, Vec<Vec<u8>>) = with_jobs
        .iter()
        .filter_map(|r| r.job.as_ref())
        .map(|j| (j.routing_key.clone(), j.payload.clone()))
        .unzip();
    Ok(sqlx::query_scalar(concat!(
        "WITH c AS (
             INSERT INTO messages AS m (id, idempotency_key, api_key_id, sender, recipient, category, message_type,
                                   template_name, template_language, delivery, body, status)
             SELECT u.*, 'queued' FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                                    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) AS u
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING ",
        changed_columns!(),
        "), j AS (
             INSERT INTO job_outbox (message_id, routing_key, payload)
             SELECT o.id, o.routing_key, o.payload
             FROM UNNEST($12::uuid[], $13::text[], $14::bytea[]) AS o(id, routing_key, payload)
             JOIN c ON c.id = o.id
         ), e AS (
             INSERT INTO event_outbox (event_type, routing_key, api_key_id, payload)
             SELECT 'message.queued', 'message.queued.' || c.category, c.api_key_id, ",
        message_event_json!("'message.queued'"),
        " FROM c
         )
         SELECT id FROM c"
    ))
    .bind(col(rows, |r| r.id))
    .bind(col(rows, |r| r.idempotency_key.clone()))
    .bind(col(rows, |r| r.api_key_id))
    .bind(col(rows, |r| r.sender.clone()))
    .bind(col(rows, |r| r.recipient.clone()))
    .bind(col(rows, |r| r.category.clone()))
    .bind(col(rows, |r| r.message_type.clone()))
    .bind(col(rows, |r| r.template_name.clone()))
    .bind(col(rows, |r| r.template_language.clone()))
    .bind(col(rows, |r| r.delivery.clone()))
    .bind(col(rows, |r| r.body.clone()))
    .bind(job_ids)
    .bind(routing_keys)
    .bind(payloads)
    .fetch_all(pool)
    .await?)
}

/// Forgets the jobs RabbitMQ confirmed.
pub(super) async fn clear_outbox(pool: &PgPool, ids: &[Uuid]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM job_outbox WHERE message_id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// Jobs left in the outbox for longer than `grace` (their publish failed, or the process that
/// committed them died first), oldest first, locked for this relay until `tx` ends.
pub async fn stale_outbox_jobs(
    tx: &mut sqlx::PgConnection,
    grace: std::time::Duration,
    limit: i64,
) -> Result<Vec<(Uuid, OutboxJob)>, StoreError> {
    let rows: Vec<(Uuid, String, Vec<u8>)> = sqlx::query_as(
        "SELECT message_id, routing_key, payload FROM job_outbox
         WHERE created_at < now() - make_interval(secs => $1)
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, routing_key, payload)| {
            (
                id,
                OutboxJob {
                    routing_key,
                    payload,
                },
            )
        })
        .collect())
}

/// Deletes relayed jobs inside the relay's transaction.
pub async fn delete_outbox_jobs(
    tx: &mut sqlx::PgConnection,
    ids: &[Uuid],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM job_outbox WHERE message_id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// How many jobs wait in the outbox.
pub async fn outbox_depth(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM job_outbox")
        .fetch_one(pool)
        .await?)
}

/// Lets an idempotency key older than `ttl` be used again: the row keeps its record, not its key.
pub async fn release_expired_key(
    pool: &PgPool,
    key: &str,
    ttl: std::time::Duration,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE messages SET idempotency_key = NULL
         WHERE idempotency_key = $1 AND created_at < now() - make_interval(secs => $2)",
    )
    .bind(key)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Applies updates in one statement, with a lifecycle event for each row whose state changed. A
/// final state is never replaced by a non-final one, so a late "deferred" can never hide a "sent",
/// and what webhooks reported (delivered, read) is never overwritten by the worker.
pub(super) async fn update_messages(
    pool: &PgPool,
    updates: &[MessageUpdate],
) -> Result<(), StoreError> {
    fn col<T: Clone>(rows: &[MessageUpdate], f: impl Fn(&MessageUpdate) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    sqlx::query(concat!(
        "WITH c AS (
         UPDATE messages m SET
             status = u.status,
             status_reason = u.reason,
             wamid = COALESCE(u.wamid, m.wamid),
             wa_id = COALESCE(u.wa_id, m.wa_id),
             attempts = GREATEST(m.attempts, u.attempts),
             last_error_code = COALESCE(u.error_code, m.last_error_code),
             last_error = COALESCE(u.error, m.last_error),
             not_before = u.not_before,
             sent_at = CASE WHEN u.status = 'sent' THEN COALESCE(m.sent_at, u.accepted_at, now()) ELSE m.sent_at END,
             updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::text[],
                     $8::timestamptz[], $9::text[], $10::timestamptz[])
              AS u(id, status, reason, wamid, attempts, error_code, error, not_before, wa_id, accepted_at)
              JOIN messages old ON old.id = u.id
         WHERE m.id = u.id
           AND m.status NOT IN ('delivered', 'read', 'cancelled')
           AND (m.status NOT IN ('sent', 'failed', 'skipped') OR u.status IN ('sent', 'failed', 'skipped'))
         RETURNING ",
        changed_columns!(),
        ", old.status AS old_status)
         INSERT INTO event_outbox (event_type, routing_key, api_key_id, payload)
         SELECT 'message.' || c.status, 'message.' || c.status || '.' || c.category, c.api_key_id, ",
        message_event_json!("'message.' || c.status"),
        " FROM c WHERE c.status IS DISTINCT FROM c.old_status AND c.status <> 'planned'"
    ))
    .bind(col(updates, |u| u.id))
    .bind(col(updates, |u| u.status.as_str().to_string()))
    .bind(col(updates, |u| u.reason.clone()))
    .bind(col(updates, |u| u.wamid.clone()))
    .bind(col(updates, |u| u.attempts))
    .bind(col(updates, |u| u.error_code))
    .bind(col(updates, |u| u.error.clone()))
    .bind(col(updates, |u| u.not_before))
    .bind(col(updates, |u| u.wa_id.clone()))
    .bind(col(updates, |u| u.accepted_at))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn insert_refusal(
    pool: &PgPool,
    code: &str,
    field: Option<&str>,
    reason: &str,
    payload: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ingest_refusals (code, field, reason, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(code)
    .bind(field)
    .bind(reason)
    .bind(payload)
    .execute(pool)
    .await?;
    Ok(())
}
