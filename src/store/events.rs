//! Lifecycle events out: the transactional outbox, HTTP callback subscriptions and their
//! deliveries.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::sealing::Keyring;

use super::StoreError;

/// Adds an event that is not a message row change (an opt-out, say) to the outbox.
pub async fn insert_event(
    pool: &PgPool,
    event_type: &str,
    routing_key: &str,
    api_key_id: Option<Uuid>,
    payload: &Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO event_outbox (event_type, routing_key, api_key_id, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(event_type)
    .bind(routing_key)
    .bind(api_key_id)
    .bind(payload)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxEvent {
    pub id: i64,
    pub event_type: String,
    pub routing_key: String,
    pub payload: Value,
}

/// Locks the oldest unpublished events for one relay pass. The caller publishes them, then calls
/// [`settle_outbox`] on the same transaction; if it fails, dropping the transaction releases them.
pub async fn lock_outbox(
    tx: &mut Transaction<'static, Postgres>,
    limit: i64,
) -> Result<Vec<OutboxEvent>, StoreError> {
    Ok(sqlx::query_as::<_, OutboxEvent>(
        "SELECT id, event_type, routing_key, payload FROM event_outbox
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?)
}

/// Fans published events out to matching callback subscriptions and removes them from the outbox.
/// A subscription sees the events of messages enqueued with its API key; an admin key's sees all.
pub async fn settle_outbox(
    tx: &mut Transaction<'static, Postgres>,
    ids: &[i64],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO callback_deliveries (subscription_id, event_type, payload)
         SELECT s.id, e.event_type, e.payload
         FROM event_outbox e
         JOIN subscriptions s ON s.deleted_at IS NULL
              AND ('*' = ANY(s.events) OR e.event_type = ANY(s.events))
         JOIN api_keys k ON k.id = s.api_key_id AND k.revoked_at IS NULL
              AND (k.role = 'admin' OR k.id = e.api_key_id)
         WHERE e.id = ANY($1)
         ORDER BY e.id",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM event_outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn outbox_depth(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(pool)
        .await?)
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

/// `Debug` leaves the signing secret out.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct Subscription {
    pub id: Uuid,
    pub api_key_id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    #[serde(skip)]
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

/// What a subscription's signing secret is sealed for: its own row.
pub(super) fn secret_context(id: Uuid) -> String {
    format!("subscription:{id}")
}

fn opened(keys: &Keyring, mut s: Subscription) -> Result<Subscription, StoreError> {
    s.secret = keys.open(&s.secret, &secret_context(s.id))?;
    Ok(s)
}

pub async fn insert_subscription(
    pool: &PgPool,
    keys: &Keyring,
    api_key_id: Uuid,
    url: &str,
    events: &[String],
    secret: &str,
) -> Result<Subscription, StoreError> {
    let id = Uuid::now_v7();
    let saved = sqlx::query_as::<_, Subscription>(
        "INSERT INTO subscriptions (id, api_key_id, url, events, secret) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, api_key_id, url, events, secret, created_at",
    )
    .bind(id)
    .bind(api_key_id)
    .bind(url)
    .bind(events)
    .bind(keys.seal(secret, &secret_context(id))?)
    .fetch_one(pool)
    .await?;
    opened(keys, saved)
}

/// Subscriptions of one API key, or all of them for `None` (an admin).
pub async fn list_subscriptions(
    pool: &PgPool,
    keys: &Keyring,
    api_key_id: Option<Uuid>,
) -> Result<Vec<Subscription>, StoreError> {
    sqlx::query_as::<_, Subscription>(
        "SELECT id, api_key_id, url, events, secret, created_at FROM subscriptions
         WHERE deleted_at IS NULL AND ($1::uuid IS NULL OR api_key_id = $1) ORDER BY id",
    )
    .bind(api_key_id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|s| opened(keys, s))
    .collect()
}

pub async fn subscription(
    pool: &PgPool,
    keys: &Keyring,
    id: Uuid,
) -> Result<Option<Subscription>, StoreError> {
    sqlx::query_as::<_, Subscription>(
        "SELECT id, api_key_id, url, events, secret, created_at FROM subscriptions
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .map(|s| opened(keys, s))
    .transpose()
}

/// Ends a subscription; deliveries not yet made are given up.
pub async fn delete_subscription(pool: &PgPool, id: Uuid) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE subscriptions SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE callback_deliveries SET state = 'gave_up', last_error = 'subscription deleted'
         WHERE subscription_id = $1 AND state = 'pending'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Callback deliveries

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("api_key_id", &self.api_key_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"***")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// `Debug` leaves the signing secret out.
#[derive(Clone, sqlx::FromRow)]
pub struct DueDelivery {
    pub id: i64,
    pub event_type: String,
    pub payload: Value,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub subscription_id: Uuid,
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for DueDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueDelivery")
            .field("id", &self.id)
            .field("event_type", &self.event_type)
            .field("attempts", &self.attempts)
            .field("created_at", &self.created_at)
            .field("url", &self.url)
            .field("secret", &"***")
            .finish_non_exhaustive()
    }
}

/// Takes due deliveries for `lease_seconds`: a deliverer that dies leaves them to be taken again.
pub async fn claim_deliveries(
    pool: &PgPool,
    keys: &Keyring,
    limit: i64,
    lease_seconds: f64,
) -> Result<Vec<DueDelivery>, StoreError> {
    let due = sqlx::query_as::<_, DueDelivery>(
        "WITH due AS (
             SELECT id FROM callback_deliveries
             WHERE state = 'pending' AND next_attempt_at <= now()
             ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE callback_deliveries d SET next_attempt_at = now() + make_interval(secs => $2)
             FROM due WHERE d.id = due.id
             RETURNING d.id, d.subscription_id, d.event_type, d.payload, d.attempts, d.created_at
         )
         SELECT c.id, c.event_type, c.payload, c.attempts, c.created_at, c.subscription_id, s.url,
                s.secret
         FROM claimed c JOIN subscriptions s ON s.id = c.subscription_id
         ORDER BY c.id",
    )
    .bind(limit)
    .bind(lease_seconds)
    .fetch_all(pool)
    .await?;
    due.into_iter()
        .map(|mut d| {
            d.secret = keys.open(&d.secret, &secret_context(d.subscription_id))?;
            Ok(d)
        })
        .collect()
}

pub enum DeliveryResult {
    Delivered {
        status: u16,
    },
    Failed {
        status: Option<u16>,
        error: String,
        /// When to try again; None gives up.
        retry_at: Option<DateTime<Utc>>,
    },
}

pub async fn record_delivery(
    pool: &PgPool,
    id: i64,
    result: &DeliveryResult,
) -> Result<(), StoreError> {
    let (state, status, error, next) = match result {
        DeliveryResult::Delivered { status } => ("delivered", Some(*status), None, None),
        DeliveryResult::Failed {
            status,
            error,
            retry_at,
        } => (
            if retry_at.is_some() {
                "pending"
            } else {
                "gave_up"
            },
            *status,
            Some(error.as_str()),
            *retry_at,
        ),
    };
    sqlx::query(
        "UPDATE callback_deliveries SET state = $2, attempts = attempts + 1, last_attempt_at = now(),
             last_status = $3, last_error = $4, next_attempt_at = COALESCE($5, next_attempt_at)
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(status.map(i32::from))
    .bind(error)
    .bind(next)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_type: String,
    pub state: String,
    pub attempts: i32,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub payload: Value,
}

pub async fn recent_deliveries(
    pool: &PgPool,
    subscription_id: Uuid,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    Ok(sqlx::query_as::<_, DeliveryRow>(
        "SELECT id, event_type, state, attempts, last_attempt_at, last_status, last_error,
                CASE WHEN state = 'pending' THEN next_attempt_at END AS next_attempt_at, created_at, payload
         FROM callback_deliveries WHERE subscription_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(subscription_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
