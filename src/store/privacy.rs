//! Retention and erasure in PostgreSQL: purging what is kept past its time, in small batches, and
//! removing one person's data everywhere, leaving a hashed tombstone.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;

/// What the retention purge removes, each with a setting for how long it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Bodies of messages in a final state (the row stays, without its body).
    MessageBodies,
    /// Processed webhook events (raw bodies) and the unknown updates read from them.
    WebhookPayloads,
    InboundMessages,
    /// Applied delivery statuses and finished callback deliveries.
    DeliveryLogs,
    ImportErrors,
    /// Refused ingest requests, kept with their payload.
    Refusals,
}

impl Kept {
    pub const ALL: [Kept; 6] = [
        Kept::MessageBodies,
        Kept::WebhookPayloads,
        Kept::InboundMessages,
        Kept::DeliveryLogs,
        Kept::ImportErrors,
        Kept::Refusals,
    ];

    /// The stable name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kept::MessageBodies => "message_bodies",
            Kept::WebhookPayloads => "webhook_payloads",
            Kept::InboundMessages => "inbound_messages",
            Kept::DeliveryLogs => "delivery_logs",
            Kept::ImportErrors => "import_errors",
            Kept::Refusals => "refusals",
        }
    }

    /// The statements that each purge one batch (at most $2 rows older than $1), locking only the
    /// rows they take and skipping rows another purger holds.
    fn statements(self) -> &'static [&'static str] {
        match self {
            Kept::MessageBodies => &["UPDATE messages SET body = NULL
                 WHERE id IN (SELECT id FROM messages
                              WHERE body IS NOT NULL AND created_at < $1
                                AND status IN ('sent', 'delivered', 'read', 'failed', 'skipped', 'cancelled')
                              ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)"],
            Kept::WebhookPayloads => &["WITH doomed AS (
                     SELECT id FROM webhook_events WHERE state <> 'pending' AND received_at < $1
                     ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
                 ), unknown AS (
                     DELETE FROM webhook_unknown WHERE event_id IN (SELECT id FROM doomed)
                 )
                 DELETE FROM webhook_events WHERE id IN (SELECT id FROM doomed)"],
            Kept::InboundMessages => &["DELETE FROM inbound_messages
                 WHERE wamid IN (SELECT wamid FROM inbound_messages WHERE occurred_at < $1
                                 ORDER BY occurred_at LIMIT $2 FOR UPDATE SKIP LOCKED)"],
            Kept::DeliveryLogs => &[
                "DELETE FROM message_statuses
                 WHERE id IN (SELECT id FROM message_statuses
                              WHERE applied_at IS NOT NULL AND received_at < $1
                              ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
                "DELETE FROM callback_deliveries
                 WHERE id IN (SELECT id FROM callback_deliveries
                              WHERE state <> 'pending' AND created_at < $1
                              ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
            ],
            Kept::ImportErrors => &["DELETE FROM contact_import_errors
                 WHERE (import_id, row_number) IN (
                     SELECT e.import_id, e.row_number FROM contact_import_errors e
                     JOIN contact_imports i ON i.id = e.import_id
                     WHERE i.created_at < $1 LIMIT $2 FOR UPDATE OF e SKIP LOCKED)"],
            Kept::Refusals => &["DELETE FROM ingest_refusals
                 WHERE id IN (SELECT id FROM ingest_refusals WHERE received_at < $1
                              ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)"],
        }
    }
}

/// Purges one batch of `kind` older than `before`; returns how many rows it took.
pub async fn purge_batch(
    pool: &PgPool,
    kind: Kept,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<u64, StoreError> {
    let mut purged = 0;
    for sql in kind.statements() {
        purged += sqlx::query(sqlx::AssertSqlSafe(*sql))
            .bind(before)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
    }
    Ok(purged)
}

/// What an erasure removed or anonymised, table by table.
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct Erased {
    pub consent_events: u64,
    pub suppressions: u64,
    pub contacts: u64,
    pub messages_anonymised: u64,
    pub message_statuses: u64,
    pub inbound_messages: u64,
    pub campaign_exclusions: u64,
    pub import_errors: u64,
    pub events: u64,
    pub callback_deliveries: u64,
    pub webhook_events: u64,
    pub refusals: u64,
    pub jobs: u64,
    /// Whether the person had opted out (kept in the tombstone).
    pub marketing_opted_out: bool,
    pub utility_opted_out: bool,
}

/// Removes a person's data everywhere in one transaction: every row naming any of `spellings`
/// is deleted, except their messages, which stay for the business's records with the recipient
/// replaced by `tombstone` and no body. The tombstone row keeps only `hash` and whether they had
/// opted out. Stored events still waiting to be processed are left (other people's updates ride
/// with them); processed ones are deleted.
pub async fn erase_person(
    pool: &PgPool,
    spellings: &[String],
    tombstone: &str,
    hash: &[u8],
    by: &str,
) -> Result<Erased, StoreError> {
    let mut tx = pool.begin().await?;
    let mut erased = Erased::default();
    let (marketing, utility): (Option<bool>, Option<bool>) = sqlx::query_as(
        "WITH latest AS (
             SELECT DISTINCT ON (purpose) purpose, action FROM consent_events
             WHERE recipient = ANY($1) ORDER BY purpose, id DESC
         )
         SELECT bool_or(purpose = 'marketing' AND action = 'opt_out'),
                bool_or(purpose = 'utility' AND action = 'opt_out') FROM latest",
    )
    .bind(spellings)
    .fetch_one(&mut *tx)
    .await?;
    erased.marketing_opted_out = marketing.unwrap_or(false);
    erased.utility_opted_out = utility.unwrap_or(false);
    sqlx::query(
        "INSERT INTO erasures (identity_hash, marketing_opted_out, utility_opted_out, erased_by)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (identity_hash) DO UPDATE SET
             marketing_opted_out = erasures.marketing_opted_out OR EXCLUDED.marketing_opted_out,
             utility_opted_out = erasures.utility_opted_out OR EXCLUDED.utility_opted_out,
             erased_by = EXCLUDED.erased_by, erased_at = now()",
    )
    .bind(hash)
    .bind(erased.marketing_opted_out)
    .bind(erased.utility_opted_out)
    .bind(by)
    .execute(&mut *tx)
    .await?;
    for spelling in spellings {
        // The consent log lets this transaction, and only it, delete this person's rows.
        sqlx::query("SELECT set_config('pregon.erasing', $1, true)")
            .bind(spelling)
            .execute(&mut *tx)
            .await?;
        erased.consent_events += sqlx::query("DELETE FROM consent_events WHERE recipient = $1")
            .bind(spelling)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    sqlx::query("SELECT set_config('pregon.erasing', '', true)")
        .execute(&mut *tx)
        .await?;
    let patterns: Vec<String> = spellings.iter().map(|s| format!("%{s}%")).collect();
    let mut run = async |sql: &'static str| -> Result<u64, StoreError> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(spellings)
            .bind(&patterns)
            .bind(tombstone)
            .execute(&mut *tx)
            .await?
            .rows_affected())
    };
    erased.suppressions = run("DELETE FROM suppressions WHERE recipient = ANY($1)").await?;
    erased.message_statuses = run(
        "DELETE FROM message_statuses WHERE recipient = ANY($1)
            OR wamid IN (SELECT wamid FROM messages WHERE recipient = ANY($1) AND wamid IS NOT NULL)",
    )
    .await?;
    erased.inbound_messages = run("DELETE FROM inbound_messages WHERE recipient = ANY($1)").await?;
    erased.messages_anonymised = run(
        "UPDATE messages SET recipient = $3, body = NULL, wa_id = NULL, idempotency_key = NULL
         WHERE recipient = ANY($1)",
    )
    .await?;
    erased.campaign_exclusions =
        run("UPDATE campaign_exclusions SET recipient = $3 WHERE recipient = ANY($1)").await?;
    run("DELETE FROM contact_list_members
         WHERE contact_id IN (SELECT id FROM contacts WHERE phone = ANY($1))")
    .await?;
    erased.contacts = run("DELETE FROM contacts WHERE phone = ANY($1)").await?;
    erased.import_errors = run("DELETE FROM contact_import_errors
         WHERE regexp_replace(coalesce(value, ''), '[^0-9]', '', 'g') LIKE ANY($2)")
    .await?;
    erased.events = run("DELETE FROM event_outbox WHERE payload::text LIKE ANY($2)").await?;
    erased.callback_deliveries =
        run("DELETE FROM callback_deliveries WHERE payload::text LIKE ANY($2)").await?;
    run("DELETE FROM webhook_unknown WHERE value::text LIKE ANY($2)
            OR event_id IN (SELECT id FROM webhook_events WHERE state <> 'pending'
                            AND EXISTS (SELECT 1 FROM unnest($1::text[]) s
                                        WHERE position(convert_to(s, 'UTF8') IN body) > 0))")
    .await?;
    erased.webhook_events = run("DELETE FROM webhook_events WHERE state <> 'pending'
            AND EXISTS (SELECT 1 FROM unnest($1::text[]) s
                        WHERE position(convert_to(s, 'UTF8') IN body) > 0)")
    .await?;
    erased.refusals = run("DELETE FROM ingest_refusals WHERE payload LIKE ANY($2)").await?;
    erased.jobs = run(
        "DELETE FROM job_outbox WHERE EXISTS (SELECT 1 FROM unnest($1::text[]) s
                                       WHERE position(convert_to(s, 'UTF8') IN payload) > 0)",
    )
    .await?
        + run(
            "DELETE FROM dead_jobs WHERE EXISTS (SELECT 1 FROM unnest($1::text[]) s
                                          WHERE position(convert_to(s, 'UTF8') IN payload) > 0)",
        )
        .await?;
    tx.commit().await?;
    Ok(erased)
}

/// Which of `hashes` belong to people erased after opting out of `purpose`.
pub async fn erased_opted_out(
    pool: &PgPool,
    hashes: &[Vec<u8>],
    purpose: &str,
) -> Result<Vec<Vec<u8>>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT identity_hash FROM erasures WHERE identity_hash = ANY($1)
           AND CASE WHEN $2 = 'marketing' THEN marketing_opted_out ELSE utility_opted_out END",
    )
    .bind(hashes)
    .bind(purpose)
    .fetch_all(pool)
    .await?)
}
