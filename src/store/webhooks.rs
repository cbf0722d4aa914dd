//! What Meta's webhooks leave in PostgreSQL: the raw events, delivery statuses folded into the
//! message rows, inbound messages, suppressions, and sender and template health.
//!
//! Every write here is safe to repeat: Meta sends duplicates for days, and a processor that dies
//! half-way through an event processes it again from the start.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{StoreError, changed_columns, message_event_json};
use crate::domain::reason::Reason;
use crate::domain::webhook::{InboundMessage, StatusUpdate, failed_status};

// ---------------------------------------------------------------------------------------------
// Raw events

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawState {
    Pending,
    Malformed,
}

/// Stores a webhook body exactly as received, before it is acknowledged.
pub async fn insert_raw_event(
    pool: &PgPool,
    body: &[u8],
    state: RawState,
) -> Result<i64, StoreError> {
    let state = match state {
        RawState::Pending => "pending",
        RawState::Malformed => "malformed",
    };
    Ok(
        sqlx::query_scalar("INSERT INTO webhook_events (body, state) VALUES ($1, $2) RETURNING id")
            .bind(body)
            .bind(state)
            .fetch_one(pool)
            .await?,
    )
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedEvent {
    pub id: i64,
    pub body: Vec<u8>,
    pub attempts: i32,
}

/// Takes pending events no other processor holds, oldest first, for `lease` seconds.
pub async fn claim_events(
    pool: &PgPool,
    limit: i64,
    lease_seconds: f64,
) -> Result<Vec<ClaimedEvent>, StoreError> {
    Ok(sqlx::query_as::<_, ClaimedEvent>(
        "UPDATE webhook_events SET attempts = attempts + 1,
             claimed_until = now() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM webhook_events
                      WHERE state = 'pending' AND (claimed_until IS NULL OR claimed_until < now())
                      ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, body, attempts",
    )
    .bind(limit)
    .bind(lease_seconds)
    .fetch_all(pool)
    .await?)
}

pub async fn finish_event(
    pool: &PgPool,
    id: i64,
    updates: i32,
    unknown: &[(String, Value, String)],
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    if !unknown.is_empty() {
        sqlx::query(
            "INSERT INTO webhook_unknown (event_id, field, value)
             SELECT $1, f, v || jsonb_build_object('_pregon_why', w)
             FROM UNNEST($2::text[], $3::jsonb[], $4::text[]) AS u(f, v, w)",
        )
        .bind(id)
        .bind(unknown.iter().map(|u| u.0.clone()).collect::<Vec<_>>())
        .bind(
            unknown
                .iter()
                .map(|u| match &u.1 {
                    Value::Object(_) => u.1.clone(),
                    other => serde_json::json!({ "value": other }),
                })
                .collect::<Vec<_>>(),
        )
        .bind(unknown.iter().map(|u| u.2.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE webhook_events SET state = 'processed', processed_at = now(), updates = $2,
             unknown = $3, claimed_until = NULL, error = NULL
         WHERE id = $1",
    )
    .bind(id)
    .bind(updates)
    .bind(i32::try_from(unknown.len()).unwrap_or(i32::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Records why processing failed; the event is tried again after `retry_in` (it stays pending:
/// an event is never given up on, since a STOP or a status in it must be applied in the end).
pub async fn fail_event(
    pool: &PgPool,
    id: i64,
    error: &str,
    retry_in: std::time::Duration,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_events SET error = $2,
             claimed_until = now() + make_interval(secs => $3)
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(retry_in.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Pending events that failed at least `attempts` times: what an operator should look at.
pub async fn retrying_events(pool: &PgPool, attempts: i32) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events WHERE state = 'pending' AND attempts >= $1",
    )
    .bind(attempts)
    .fetch_one(pool)
    .await?)
}

/// Events waiting to be processed: the backlog a dashboard watches.
pub async fn pending_events(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE state = 'pending'")
            .fetch_one(pool)
            .await?,
    )
}

pub async fn count_events_by_state(
    pool: &PgPool,
) -> Result<std::collections::HashMap<String, i64>, StoreError> {
    let rows = sqlx::query("SELECT state, count(*) FROM webhook_events GROUP BY state")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Delivery statuses

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_else(Utc::now)
}

/// Stores statuses once per (wamid, status) and returns the ids of those still to be applied or
/// acted on, including ones stored by an earlier, interrupted pass.
pub async fn insert_statuses(
    pool: &PgPool,
    statuses: &[&StatusUpdate],
) -> Result<Vec<i64>, StoreError> {
    if statuses.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: &dyn Fn(&StatusUpdate) -> Option<String>| {
        statuses.iter().map(|s| f(s)).collect::<Vec<_>>()
    };
    let rows = sqlx::query(
        "WITH u AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[],
                                  $6::text[], $7::text[], $8::jsonb[], $9::text[])
                 AS u(wamid, status, occurred_at, recipient, error_code, error_title, failure_reason, pricing,
                      callback_data)
         ), ins AS (
             INSERT INTO message_statuses (wamid, status, occurred_at, recipient, error_code, error_title,
                                           failure_reason, pricing, callback_data)
             SELECT DISTINCT ON (wamid, status) * FROM u
             ON CONFLICT (wamid, status) DO NOTHING
             RETURNING id
         )
         SELECT id FROM ins
         UNION
         SELECT s.id FROM message_statuses s JOIN u ON s.wamid = u.wamid AND s.status = u.status
         WHERE s.applied_at IS NULL OR NOT s.effects_done",
    )
    .bind(col(&|s| Some(s.wamid.clone())))
    .bind(col(&|s| Some(s.status.clone())))
    .bind(statuses.iter().map(|s| at(s.timestamp)).collect::<Vec<_>>())
    .bind(col(&|s| s.recipient.clone()))
    .bind(statuses.iter().map(|s| s.error_code).collect::<Vec<_>>())
    .bind(col(&|s| s.error_title.clone()))
    .bind(col(&|s| {
        (s.status == "failed").then(|| failed_status(s.error_code).reason().code().to_string())
    }))
    .bind(statuses.iter().map(|s| s.pricing.clone()).collect::<Vec<_>>())
    .bind(col(&|s| s.callback_data.clone()))
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|r| r.get::<i64, _>(0)).collect())
}

/// A failed status whose consequences (suppression, opt-out, a later retry) are not yet taken.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailedStatusRow {
    pub id: i64,
    pub wamid: String,
    pub recipient: Option<String>,
    pub error_code: Option<i64>,
    /// The message it is about, once pregon has recorded the send.
    pub message_id: Option<Uuid>,
    pub message_status: Option<String>,
}

pub async fn failed_needing_effects(
    pool: &PgPool,
    ids: &[i64],
) -> Result<Vec<FailedStatusRow>, StoreError> {
    Ok(sqlx::query_as::<_, FailedStatusRow>(
        "SELECT s.id, s.wamid, s.recipient, s.error_code, m.id AS message_id, m.status AS message_status
         FROM message_statuses s LEFT JOIN messages m ON m.wamid = s.wamid
         WHERE s.id = ANY($1) AND s.status = 'failed' AND NOT s.effects_done
         ORDER BY s.id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Marks the consequences of statuses as taken. Statuses other than `failed` have none.
///
/// Several processes settle overlapping statuses (each one's events, and the sweep of those that
/// waited), so both statements that change these rows lock them in id order first: updated in
/// whatever order each plan met them, two such statements deadlocked.
pub async fn mark_effects_done(pool: &PgPool, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE message_statuses SET effects_done = TRUE
         WHERE id IN (SELECT id FROM message_statuses WHERE id = ANY($1) AND NOT effects_done
                      ORDER BY id FOR UPDATE)",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// Folds statuses into their message rows: the state only moves forward (sent → delivered →
/// read, whatever order they came in), each first delivered / read / failed becomes an event, and
/// statuses whose message pregon has not recorded yet stay for [`unapplied_with_message`].
/// A 131049 failure is not folded: the message is sent again later instead. A campaign message
/// that becomes billable and delivered is added to its campaign's bill (`campaign_costs`).
pub async fn apply_statuses(pool: &PgPool, ids: &[i64]) -> Result<u64, StoreError> {
    let row = sqlx::query(concat!(
        "WITH s AS (
             -- Locked in id order, as `mark_effects_done` does, before anything is changed.
             SELECT * FROM message_statuses WHERE id = ANY($1) AND applied_at IS NULL
             ORDER BY id FOR UPDATE
         ), a AS (
             SELECT wamid,
                 bool_or(status = 'read') AS is_read,
                 bool_or(status = 'delivered') AS is_delivered,
                 bool_or(status = 'failed' AND error_code IS DISTINCT FROM 131049) AS is_failed,
                 min(occurred_at) FILTER (WHERE status = 'delivered') AS delivered_at,
                 min(occurred_at) FILTER (WHERE status = 'read') AS read_at,
                 min(occurred_at) FILTER (WHERE status = 'failed' AND error_code IS DISTINCT FROM 131049) AS failed_at,
                 (array_agg(error_code ORDER BY id) FILTER (WHERE status = 'failed'))[1] AS error_code,
                 (array_agg(error_title ORDER BY id) FILTER (WHERE status = 'failed'))[1] AS error_title,
                 (array_agg(failure_reason ORDER BY id) FILTER (WHERE status = 'failed'))[1] AS failure_reason,
                 (array_agg(pricing ORDER BY id DESC) FILTER (WHERE pricing IS NOT NULL))[1] AS pricing
             FROM s GROUP BY wamid
         ), c AS (
             UPDATE messages m SET
                 status = CASE
                     WHEN old.status IN ('skipped', 'cancelled') THEN old.status
                     WHEN a.is_read OR old.status = 'read' THEN 'read'
                     WHEN a.is_delivered OR old.status = 'delivered' THEN 'delivered'
                     WHEN a.is_failed THEN 'failed'
                     ELSE old.status END,
                 status_reason = CASE
                     WHEN a.is_failed AND NOT (a.is_read OR a.is_delivered)
                          AND old.status NOT IN ('read', 'delivered', 'skipped', 'cancelled')
                     THEN a.failure_reason
                     ELSE old.status_reason END,
                 last_error_code = CASE WHEN a.is_failed THEN a.error_code ELSE old.last_error_code END,
                 last_error = CASE WHEN a.is_failed THEN a.error_title ELSE old.last_error END,
                 delivered_at = COALESCE(old.delivered_at, a.delivered_at),
                 read_at = COALESCE(old.read_at, a.read_at),
                 failed_at = COALESCE(old.failed_at, a.failed_at),
                 pricing_model = COALESCE(a.pricing->>'pricing_model', old.pricing_model),
                 pricing_type = COALESCE(a.pricing->>'type', old.pricing_type),
                 pricing_category = COALESCE(a.pricing->>'category', old.pricing_category),
                 billable = COALESCE(CASE WHEN jsonb_typeof(a.pricing->'billable') = 'boolean'
                                          THEN (a.pricing->>'billable')::boolean END, old.billable),
                 updated_at = now()
             FROM a JOIN messages old ON old.wamid = a.wamid
             WHERE m.id = old.id
             RETURNING ",
        changed_columns!(),
        ", old.status AS old_status, old.delivered_at AS old_delivered_at, old.read_at AS old_read_at,
           old.failed_at AS old_failed_at, m.campaign_id AS cost_campaign, m.country AS cost_country,
           COALESCE(m.pricing_category, m.category) AS cost_category,
           m.billable IS TRUE AND (m.delivered_at IS NOT NULL OR m.read_at IS NOT NULL) AS now_billed,
           old.billable IS TRUE AND (old.delivered_at IS NOT NULL OR old.read_at IS NOT NULL) AS was_billed
         ), billed AS (
             -- A campaign's bill: billable templates Meta reported delivered (or read), counted
             -- once each, here where statuses are folded rather than on every message update.
             INSERT INTO campaign_costs AS k (campaign_id, kind, country, category, n)
             SELECT cost_campaign, 'billed', cost_country, cost_category, count(*) FROM c
             WHERE cost_campaign IS NOT NULL AND cost_country IS NOT NULL AND now_billed AND NOT was_billed
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
             ON CONFLICT (campaign_id, kind, country, category) DO UPDATE SET n = k.n + excluded.n
         ), events AS (
             INSERT INTO event_outbox (event_type, routing_key, api_key_id, payload)
             SELECT 'message.' || s.status, 'message.' || s.status || '.' || c.category, c.api_key_id, ",
        message_event_json!("'message.' || s.status"),
        " || jsonb_build_object('status_at', s.occurred_at)
             FROM s JOIN c ON c.wamid = s.wamid
             WHERE (s.status = 'delivered' AND c.old_delivered_at IS NULL)
                OR (s.status = 'read' AND c.old_read_at IS NULL)
                OR (s.status = 'failed' AND c.status = 'failed' AND c.old_status <> 'failed')
         ), applied AS (
             UPDATE message_statuses ms SET applied_at = now()
             FROM s WHERE ms.id = s.id AND EXISTS (SELECT 1 FROM messages m WHERE m.wamid = s.wamid)
             RETURNING ms.id
         )
         SELECT (SELECT count(*) FROM applied)"
    ))
    .bind(ids)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(row.get::<i64, _>(0)).unwrap_or(0))
}

/// Sends whose outcome was unknown (no answer, recorded `send_outcome_unknown`) that Meta reports
/// by status after all: the status echoes pregon's message id in `biz_opaque_callback_data`. Each
/// such message takes the status's wamid and becomes `sent`, with its event; its statuses are
/// then folded like any other. Returns how many were reconciled.
pub async fn reconcile_unknown_outcomes(pool: &PgPool) -> Result<u64, StoreError> {
    let row = sqlx::query(concat!(
        "WITH s AS (
             SELECT DISTINCT ON (ms.callback_data) ms.wamid, ms.callback_data, ms.occurred_at
             FROM message_statuses ms
             WHERE ms.applied_at IS NULL AND ms.callback_data IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM messages x WHERE x.wamid = ms.wamid)
             ORDER BY ms.callback_data, ms.id
         ), c AS (
             UPDATE messages m SET wamid = s.wamid, status = 'sent', status_reason = NULL,
                 last_error_code = NULL, last_error = NULL,
                 sent_at = COALESCE(m.sent_at, s.occurred_at), updated_at = now()
             FROM s
             WHERE m.id::text = s.callback_data AND m.wamid IS NULL
               AND m.status = 'failed' AND m.status_reason = $1
             RETURNING ",
        changed_columns!(),
        "), events AS (
             INSERT INTO event_outbox (event_type, routing_key, api_key_id, payload)
             SELECT 'message.sent', 'message.sent.' || c.category, c.api_key_id, ",
        message_event_json!("'message.sent'"),
        " FROM c
         )
         SELECT count(*) FROM c"
    ))
    .bind(Reason::SendOutcomeUnknown.code())
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(row.get::<i64, _>(0)).unwrap_or(0))
}

/// Statuses that arrived before their message's send was recorded and can be applied now.
pub async fn unapplied_with_message(pool: &PgPool, limit: i64) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT s.id FROM message_statuses s
         WHERE s.applied_at IS NULL AND s.received_at > now() - interval '7 days'
           AND EXISTS (SELECT 1 FROM messages m WHERE m.wamid = s.wamid)
         ORDER BY s.id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Statuses about messages pregon never sent (another tool on the same number) are dropped after
/// a week instead of being looked at forever.
pub async fn forget_stale_statuses(pool: &PgPool) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM message_statuses WHERE applied_at IS NULL AND received_at < now() - interval '7 days'",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Moves a sent message back to `deferred` after a 131049 failure status, with its event; the
/// writer's forward-only rule would refuse this one legitimate step back.
pub async fn defer_after_cap(
    pool: &PgPool,
    update: &super::MessageUpdate,
) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "WITH c AS (
             UPDATE messages m SET status = 'deferred', status_reason = $2, not_before = $3,
                 last_error_code = $4, updated_at = now()
             WHERE m.id = $1 AND m.status = 'sent'
             RETURNING ",
        changed_columns!(),
        ")
         INSERT INTO event_outbox (event_type, routing_key, api_key_id, payload)
         SELECT 'message.deferred', 'message.deferred.' || c.category, c.api_key_id, ",
        message_event_json!("'message.deferred'"),
        " FROM c"
    ))
    .bind(update.id)
    .bind(&update.reason)
    .bind(update.not_before)
    .bind(update.error_code)
    .execute(pool)
    .await?;
    Ok(())
}

/// What is needed to send a message again: its row and the body it was sent with.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Resendable {
    pub id: Uuid,
    pub sender: String,
    pub recipient: String,
    pub category: String,
    pub message_type: String,
    pub template_name: Option<String>,
    pub template_language: Option<String>,
    pub delivery: String,
    pub body: Option<String>,
    pub attempts: i32,
    pub campaign_id: Option<Uuid>,
}

pub async fn resendable(pool: &PgPool, id: Uuid) -> Result<Option<Resendable>, StoreError> {
    Ok(sqlx::query_as::<_, Resendable>(
        "SELECT id, sender, recipient, category, message_type, template_name, template_language,
                delivery, body, attempts, campaign_id
         FROM messages WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Suppressions

pub async fn suppress(
    pool: &PgPool,
    recipient: &str,
    reason: &str,
    evidence: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO suppressions (recipient, reason, evidence) VALUES ($1, $2, $3)
         ON CONFLICT (recipient) DO NOTHING",
    )
    .bind(recipient)
    .bind(reason)
    .bind(evidence)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn unsuppress(pool: &PgPool, recipient: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("DELETE FROM suppressions WHERE recipient = $1")
        .bind(recipient)
        .execute(pool)
        .await?
        .rows_affected()
        > 0)
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct Suppression {
    pub recipient: String,
    pub reason: String,
    pub evidence: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub async fn suppression(
    pool: &PgPool,
    recipient: &str,
) -> Result<Option<Suppression>, StoreError> {
    Ok(sqlx::query_as::<_, Suppression>(
        "SELECT recipient, reason, evidence, created_at FROM suppressions WHERE recipient = $1",
    )
    .bind(recipient)
    .fetch_optional(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Inbound messages

/// Stores inbound messages once per wamid and returns the wamids whose consequences (window,
/// opt-out, reply link, events) are still to be taken.
pub async fn insert_inbound(
    pool: &PgPool,
    messages: &[&InboundMessage],
    opted_out: &[bool],
) -> Result<Vec<String>, StoreError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: &dyn Fn(&InboundMessage) -> Option<String>| {
        messages.iter().map(|m| f(m)).collect::<Vec<_>>()
    };
    Ok(sqlx::query_scalar(
        "WITH u AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::text[], $8::jsonb[], $9::bool[], $10::timestamptz[])
                 AS u(wamid, sender, recipient, message_type, text, payload, context_wamid, referral,
                      opted_out, occurred_at)
         ), ins AS (
             INSERT INTO inbound_messages (wamid, sender, recipient, message_type, text, payload,
                                           context_wamid, referral, opted_out, occurred_at)
             SELECT DISTINCT ON (wamid) * FROM u
             ON CONFLICT (wamid) DO NOTHING
             RETURNING wamid
         )
         SELECT wamid FROM ins
         UNION
         SELECT i.wamid FROM inbound_messages i JOIN u ON i.wamid = u.wamid WHERE NOT i.handled",
    )
    .bind(col(&|m| Some(m.wamid.clone())))
    .bind(col(&|m| Some(m.phone_number_id.clone())))
    .bind(col(&|m| Some(m.from.clone())))
    .bind(col(&|m| Some(m.kind.clone())))
    .bind(col(&|m| m.text.clone()))
    .bind(col(&|m| m.payload.clone().or_else(|| m.reply_title.clone())))
    .bind(col(&|m| m.context_wamid.clone()))
    .bind(messages.iter().map(|m| m.referral.clone()).collect::<Vec<_>>())
    .bind(opted_out)
    .bind(messages.iter().map(|m| at(m.timestamp)).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?)
}

pub async fn mark_inbound_handled(pool: &PgPool, wamid: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE inbound_messages SET handled = TRUE WHERE wamid = $1")
        .bind(wamid)
        .execute(pool)
        .await?;
    Ok(())
}

/// Links a reply to the message it answers and records a `message.replied` event, once.
/// Returns the id of the message replied to, when pregon sent it.
pub async fn link_reply(
    pool: &PgPool,
    inbound: &InboundMessage,
) -> Result<Option<Uuid>, StoreError> {
    let Some(context) = &inbound.context_wamid else {
        return Ok(None);
    };
    let row = sqlx::query(concat!(
        "WITH c AS (
             UPDATE messages m SET replied_at = COALESCE(m.replied_at, $2), updated_at = now()
             WHERE m.wamid = $1
             RETURNING ",
        changed_columns!(),
        "), linked AS (
             UPDATE inbound_messages SET reply_to = (SELECT id FROM c) WHERE wamid = $3
         ), events AS (
             INSERT INTO event_outbox (event_type, routing_key, api_key_id, payload)
             SELECT 'message.replied', 'message.replied.' || c.category, c.api_key_id, ",
        message_event_json!("'message.replied'"),
        " || jsonb_build_object('reply', jsonb_build_object('wamid', $3::text, 'type', $4::text,
                 'text', $5::text, 'payload', $6::text, 'title', $7::text, 'replied_at', $2::timestamptz))
             FROM c
         )
         SELECT id FROM c"
    ))
    .bind(context)
    .bind(at(inbound.timestamp))
    .bind(&inbound.wamid)
    .bind(&inbound.kind)
    .bind(&inbound.text)
    .bind(&inbound.payload)
    .bind(&inbound.reply_title)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| r.get::<Uuid, _>(0)))
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct InboundRow {
    pub wamid: String,
    pub sender: String,
    pub recipient: String,
    pub message_type: String,
    pub text: Option<String>,
    pub payload: Option<String>,
    pub context_wamid: Option<String>,
    pub reply_to: Option<Uuid>,
    pub opted_out: bool,
    pub occurred_at: DateTime<Utc>,
}

pub async fn inbound(pool: &PgPool, wamid: &str) -> Result<Option<InboundRow>, StoreError> {
    Ok(sqlx::query_as::<_, InboundRow>(
        "SELECT wamid, sender, recipient, message_type, text, payload, context_wamid, reply_to,
                opted_out, occurred_at
         FROM inbound_messages WHERE wamid = $1",
    )
    .bind(wamid)
    .fetch_optional(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Sender and template health

/// Senders a number-level update names by display number (compared digit by digit, so
/// "+1 555-000-0908" and "15550000908" are the same number).
pub async fn senders_by_display_number(
    pool: &PgPool,
    display_number: &str,
) -> Result<Vec<String>, StoreError> {
    let digits: String = display_number
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    Ok(sqlx::query_scalar(
        "SELECT phone_number_id FROM senders
         WHERE regexp_replace(coalesce(display_phone_number, ''), '[^0-9]', '', 'g') = $1",
    )
    .bind(digits)
    .fetch_all(pool)
    .await?)
}

/// Senders of a WhatsApp Business Account (or of a business portfolio with that id).
pub async fn senders_of_account(pool: &PgPool, waba_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT phone_number_id FROM senders WHERE waba_id = $1 OR business_portfolio_id = $1",
    )
    .bind(waba_id)
    .fetch_all(pool)
    .await?)
}

/// Applies what Meta reported about a number. A number reported CONNECTED again also leaves a
/// pause pregon itself put on after an account-level error; an operator's pause stays.
///
/// Each field moves only forward in Meta's time: a value reported `at` a moment older than the
/// one the field holds is a replay or came late, and is left out. Returns how many reported
/// fields were left out so.
pub async fn update_sender_health(
    pool: &PgPool,
    phone_number_id: &str,
    quality: Option<&str>,
    status: Option<&str>,
    tier: Option<i64>,
    mps: Option<i32>,
    at: DateTime<Utc>,
) -> Result<u32, StoreError> {
    let stale: Option<i32> = sqlx::query_scalar(
        "WITH f AS (
             SELECT phone_number_id,
                 $2::text IS NOT NULL AND (quality_at IS NULL OR quality_at <= $6) AS q,
                 $3::text IS NOT NULL AND (status_at IS NULL OR status_at <= $6) AS st,
                 $4::bigint IS NOT NULL AND (tier_at IS NULL OR tier_at <= $6) AS t
             FROM senders WHERE phone_number_id = $1
         )
         UPDATE senders s SET
             quality = CASE WHEN f.q THEN $2 ELSE quality END,
             quality_at = CASE WHEN f.q THEN $6 ELSE quality_at END,
             status = CASE WHEN f.st THEN $3 ELSE status END,
             status_at = CASE WHEN f.st THEN $6 ELSE status_at END,
             tier = CASE WHEN f.t THEN $4 ELSE tier END,
             tier_at = CASE WHEN f.t THEN $6 ELSE tier_at END,
             mps = COALESCE($5, mps),
             paused = CASE WHEN f.st AND $3 = 'CONNECTED' AND pause_source = 'cloud_api' THEN FALSE ELSE paused END,
             paused_reason = CASE WHEN f.st AND $3 = 'CONNECTED' AND pause_source = 'cloud_api' THEN NULL ELSE paused_reason END,
             pause_source = CASE WHEN f.st AND $3 = 'CONNECTED' AND pause_source = 'cloud_api' THEN NULL ELSE pause_source END,
             updated_at = now()
         FROM f WHERE s.phone_number_id = f.phone_number_id
         RETURNING (($2::text IS NOT NULL AND NOT f.q)::int + ($3::text IS NOT NULL AND NOT f.st)::int
                    + ($4::bigint IS NOT NULL AND NOT f.t)::int)",
    )
    .bind(phone_number_id)
    .bind(quality)
    .bind(status)
    .bind(tier)
    .bind(mps)
    .bind(at)
    .fetch_optional(pool)
    .await?;
    Ok(u32::try_from(stale.unwrap_or(0)).unwrap_or(0))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateField {
    Status,
    Quality,
    Category,
}

impl TemplateField {
    fn column(self) -> &'static str {
        match self {
            TemplateField::Status => "status",
            TemplateField::Quality => "quality",
            TemplateField::Category => "category",
        }
    }
}

/// What became of a template change.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateUpdated {
    /// Applied (or already so): the template as it is now.
    Applied(super::Template),
    /// The field holds a change Meta made later: this one is a replay or came late.
    Stale,
    NotRegistered,
}

/// Sets one field of a registered template and keeps the change in `template_changes` (only when
/// the value really changed, so a duplicate webhook leaves no trace). A change made `at` a moment
/// older than the one the field holds is not applied (see [`update_sender_health`]).
#[allow(clippy::too_many_arguments)]
pub async fn update_template_field(
    pool: &PgPool,
    name: &str,
    language: &str,
    field: TemplateField,
    value: &str,
    reason: Option<&str>,
    template_id: Option<&str>,
    at: DateTime<Utc>,
) -> Result<TemplateUpdated, StoreError> {
    let column = field.column();
    let sql = format!(
        "WITH old AS (
             SELECT {column} AS v, ({column}_at IS NULL OR {column}_at <= $7) AS fresh
             FROM templates WHERE name = $1 AND language = $2
         ), upd AS (
             UPDATE templates SET {column} = $3, {column}_at = $7,
                 status_reason = CASE WHEN $6 = 'status' THEN $4 ELSE status_reason END,
                 template_id = COALESCE($5, template_id), updated_at = now()
             WHERE name = $1 AND language = $2 AND (SELECT fresh FROM old)
             RETURNING name, language, category, status, parameters
         ), hist AS (
             INSERT INTO template_changes (name, language, change, old_value, new_value, reason)
             SELECT $1, $2, $6, old.v, $3, $4 FROM old WHERE old.fresh AND old.v IS DISTINCT FROM $3
         )
         SELECT name, language, category, status, parameters FROM upd"
    );
    let updated = sqlx::query_as::<_, super::Template>(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .bind(language)
        .bind(value)
        .bind(reason)
        .bind(template_id)
        .bind(column)
        .bind(at)
        .fetch_optional(pool)
        .await?;
    if let Some(template) = updated {
        return Ok(TemplateUpdated::Applied(template));
    }
    let registered: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM templates WHERE name = $1 AND language = $2)",
    )
    .bind(name)
    .bind(language)
    .fetch_one(pool)
    .await?;
    Ok(if registered {
        TemplateUpdated::Stale
    } else {
        TemplateUpdated::NotRegistered
    })
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct TemplateChangeRow {
    pub change: String,
    pub old_value: Option<String>,
    pub new_value: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The latest changes of every template, newest first: (name, language, change).
pub async fn recent_template_changes(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<(String, String, TemplateChangeRow)>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, language, change, old_value, new_value, reason, created_at
         FROM template_changes ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                TemplateChangeRow {
                    change: r.get(2),
                    old_value: r.get(3),
                    new_value: r.get(4),
                    reason: r.get(5),
                    created_at: r.get(6),
                },
            )
        })
        .collect())
}

pub async fn template_changes(
    pool: &PgPool,
    name: &str,
    language: &str,
) -> Result<Vec<TemplateChangeRow>, StoreError> {
    Ok(sqlx::query_as::<_, TemplateChangeRow>(
        "SELECT change, old_value, new_value, reason, created_at FROM template_changes
         WHERE name = $1 AND language = $2 ORDER BY id",
    )
    .bind(name)
    .bind(language)
    .fetch_all(pool)
    .await?)
}
