//! PostgreSQL adapter: the durable record of senders, templates, consent, API keys and every
//! message. Message writes go through [`MessageWriter`], which batches concurrent writes into one
//! statement (group commit) and answers each caller once its row is durable.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::Category;
use crate::domain::decision::{Quality, SenderStatus, TemplateStatus};
use crate::sealing::Keyring;

pub mod campaigns;
pub mod contacts;
pub mod copy;
pub mod dead;
pub mod events;
mod messages;
pub mod privacy;
pub mod users;
pub mod webhooks;
mod writer;

pub use messages::{
    MessageRow, MessageUpdate, NewMessage, OutboxJob, count_by_status, delete_outbox_jobs,
    find_by_idempotency_key, get_message, insert_refusal, outbox_depth, release_expired_key,
    stale_outbox_jobs,
};
pub(crate) use messages::{changed_columns, message_event_json};
pub use writer::{MessageWriter, Write, WriterConfig, WriterHandle};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the message writer has stopped")]
    WriterGone,
    #[error("a row with the same unique key exists")]
    Duplicate,
    #[error("batched write failed: {0}")]
    Batch(String),
    /// PostgreSQL refused a batched write (a constraint, a bad value): trying again will not help.
    #[error("batched write refused: {0}")]
    Refused(String),
    #[error("a secret at rest: {0}")]
    Sealing(#[from] crate::sealing::SealError),
}

impl StoreError {
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Duplicate => true,
            StoreError::Db(sqlx::Error::Database(e)) => e.code().as_deref() == Some("23505"),
            _ => false,
        }
    }

    /// PostgreSQL answered and refused the write (a constraint, a bad value), as opposed to not
    /// being reachable: trying again will not help, and it says nothing about an outage.
    pub fn is_refusal(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(e)) => {
                // Data exceptions (22), integrity constraints (23), syntax or access rules (42)
                // and raised exceptions (P0) are about the write. Anything else (connections,
                // resources, a database not accepting connections, a shutdown) is about PostgreSQL.
                let code = e.code();
                let class = code.as_deref().map(|c| &c[..c.len().min(2)]);
                matches!(class, Some("22" | "23" | "42" | "P0"))
            }
            StoreError::Duplicate | StoreError::Refused(_) => true,
            _ => false,
        }
    }

    /// The shareable form sent back to every caller of one batch.
    fn for_callers(&self) -> StoreError {
        if self.is_unique_violation() {
            StoreError::Duplicate
        } else if self.is_refusal() {
            StoreError::Refused(self.to_string())
        } else {
            StoreError::Batch(self.to_string())
        }
    }
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

/// Creates the database named in `url` when it does not exist yet (a fresh machine).
pub async fn ensure_database(url: &str) -> Result<(), StoreError> {
    let options: PgConnectOptions = url.parse()?;
    let Some(name) = options.get_database().map(str::to_string) else {
        return Ok(());
    };
    let admin = sqlx::PgPool::connect_with(options.database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\"")))
            .execute(&admin)
            .await
        {
            Ok(_) => {}
            // Another process created it between our check and our create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await;
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Senders and templates

/// `Debug` leaves the access token out: a logged sender never shows it.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct Sender {
    pub phone_number_id: String,
    pub business_portfolio_id: String,
    pub display_phone_number: Option<String>,
    pub tier: i64,
    #[sqlx(try_from = "String")]
    pub quality: Quality,
    #[sqlx(try_from = "String")]
    pub status: SenderStatus,
    pub paused: bool,
    pub paused_reason: Option<String>,
    pub mps: i32,
    pub tier_spread_seconds: Option<i32>,
    /// The WhatsApp Business Account the number belongs to: account-wide webhooks name it.
    pub waba_id: Option<String>,
    #[serde(skip)]
    pub access_token: String,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("phone_number_id", &self.phone_number_id)
            .field("business_portfolio_id", &self.business_portfolio_id)
            .field("display_phone_number", &self.display_phone_number)
            .field("tier", &self.tier)
            .field("quality", &self.quality)
            .field("status", &self.status)
            .field("paused", &self.paused)
            .field("paused_reason", &self.paused_reason)
            .field("mps", &self.mps)
            .field("tier_spread_seconds", &self.tier_spread_seconds)
            .field("waba_id", &self.waba_id)
            .field("access_token", &"***")
            .finish()
    }
}

/// What a sender's access token is sealed for: its own row.
fn token_context(phone_number_id: &str) -> String {
    format!("sender:{phone_number_id}")
}

/// A sender as read, its access token opened.
fn opened(keys: &Keyring, mut sender: Sender) -> Result<Sender, StoreError> {
    sender.access_token = keys.open(
        &sender.access_token,
        &token_context(&sender.phone_number_id),
    )?;
    Ok(sender)
}

pub async fn upsert_sender(
    pool: &PgPool,
    keys: &Keyring,
    s: &Sender,
) -> Result<Sender, StoreError> {
    let token = keys.seal(&s.access_token, &token_context(&s.phone_number_id))?;
    let saved = sqlx::query_as::<_, Sender>(
        "INSERT INTO senders (phone_number_id, business_portfolio_id, display_phone_number, tier, quality,
                              status, paused, paused_reason, mps, tier_spread_seconds, access_token, waba_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (phone_number_id) DO UPDATE SET
             business_portfolio_id = EXCLUDED.business_portfolio_id,
             display_phone_number = EXCLUDED.display_phone_number,
             tier = EXCLUDED.tier, quality = EXCLUDED.quality, status = EXCLUDED.status,
             paused = EXCLUDED.paused, paused_reason = EXCLUDED.paused_reason, mps = EXCLUDED.mps,
             tier_spread_seconds = EXCLUDED.tier_spread_seconds, access_token = EXCLUDED.access_token,
             waba_id = EXCLUDED.waba_id, updated_at = now()
         RETURNING phone_number_id, business_portfolio_id, display_phone_number, tier, quality, status,
                   paused, paused_reason, mps, tier_spread_seconds, waba_id, access_token",
    )
    .bind(&s.phone_number_id)
    .bind(&s.business_portfolio_id)
    .bind(&s.display_phone_number)
    .bind(s.tier)
    .bind(s.quality.as_str())
    .bind(s.status.as_str())
    .bind(s.paused)
    .bind(&s.paused_reason)
    .bind(s.mps)
    .bind(s.tier_spread_seconds)
    .bind(&token)
    .bind(&s.waba_id)
    .fetch_one(pool)
    .await?;
    opened(keys, saved)
}

pub async fn list_senders(pool: &PgPool, keys: &Keyring) -> Result<Vec<Sender>, StoreError> {
    sqlx::query_as::<_, Sender>(
        "SELECT phone_number_id, business_portfolio_id, display_phone_number, tier, quality, status,
                paused, paused_reason, mps, tier_spread_seconds, waba_id, access_token
         FROM senders ORDER BY phone_number_id",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|s| opened(keys, s))
    .collect()
}

/// Seals every access token and signing secret under the current master key: values in the
/// clear are sealed, values under an older key have their data key re-wrapped. Each row is
/// changed only if it still holds what was read, so a registration racing the rotation wins.
/// Returns how many values were rewritten.
pub async fn rotate_secrets(pool: &PgPool, keys: &Keyring) -> Result<u64, StoreError> {
    let mut rotated = 0;
    let tokens: Vec<(String, String)> =
        sqlx::query_as("SELECT phone_number_id, access_token FROM senders")
            .fetch_all(pool)
            .await?;
    for (id, token) in tokens.iter().filter(|(_, t)| keys.needs_rotation(t)) {
        let resealed = keys.rotate(token, &token_context(id))?;
        rotated += sqlx::query(
            "UPDATE senders SET access_token = $3 WHERE phone_number_id = $1 AND access_token = $2",
        )
        .bind(id)
        .bind(token)
        .bind(resealed)
        .execute(pool)
        .await?
        .rows_affected();
    }
    let secrets: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, secret FROM subscriptions")
        .fetch_all(pool)
        .await?;
    for (id, secret) in secrets.iter().filter(|(_, s)| keys.needs_rotation(s)) {
        let resealed = keys.rotate(secret, &events::secret_context(*id))?;
        rotated +=
            sqlx::query("UPDATE subscriptions SET secret = $3 WHERE id = $1 AND secret = $2")
                .bind(id)
                .bind(secret)
                .bind(resealed)
                .execute(pool)
                .await?
                .rows_affected();
    }
    Ok(rotated)
}

/// Who paused a sender: a webhook reporting the number healthy again lifts pregon's own pauses,
/// never an operator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseSource {
    Operator,
    CloudApi,
}

impl PauseSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseSource::Operator => "operator",
            PauseSource::CloudApi => "cloud_api",
        }
    }
}

pub async fn set_sender_paused(
    pool: &PgPool,
    phone_number_id: &str,
    paused: bool,
    reason: Option<&str>,
    source: PauseSource,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE senders SET paused = $2, paused_reason = $3,
             pause_source = CASE WHEN $2 THEN $4 ELSE NULL END, updated_at = now()
         WHERE phone_number_id = $1",
    )
    .bind(phone_number_id)
    .bind(paused)
    .bind(reason)
    .bind(source.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct Template {
    pub name: String,
    pub language: String,
    #[sqlx(try_from = "String")]
    pub category: Category,
    #[sqlx(try_from = "String")]
    pub status: TemplateStatus,
    /// Parameter slots the template needs (`body.1`, `header.1`, `button.0.1`, ...).
    #[serde(default)]
    pub parameters: Vec<String>,
}

pub async fn upsert_template(pool: &PgPool, t: &Template) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO templates (name, language, category, status, parameters) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name, language) DO UPDATE SET category = EXCLUDED.category,
             status = EXCLUDED.status, parameters = EXCLUDED.parameters, updated_at = now()",
    )
    .bind(&t.name)
    .bind(&t.language)
    .bind(t.category.as_str())
    .bind(t.status.as_str())
    .bind(&t.parameters)
    .execute(pool)
    .await?;
    Ok(())
}

/// Keeps a template's components as Meta lists them (texts, buttons), for previews.
pub async fn set_template_components(
    pool: &PgPool,
    name: &str,
    language: &str,
    components: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE templates SET components = $3 WHERE name = $1 AND language = $2")
        .bind(name)
        .bind(language)
        .bind(components)
        .execute(pool)
        .await?;
    Ok(())
}

/// A template's components as Meta listed them at the last sync; None for a template registered
/// by hand (or unknown).
pub async fn template_components(
    pool: &PgPool,
    name: &str,
    language: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT components FROM templates WHERE name = $1 AND language = $2")
            .bind(name)
            .bind(language)
            .fetch_optional(pool)
            .await?
            .flatten(),
    )
}

pub async fn list_templates(pool: &PgPool) -> Result<Vec<Template>, StoreError> {
    Ok(sqlx::query_as::<_, Template>(
        "SELECT name, language, category, status, parameters FROM templates ORDER BY name, language",
    )
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// Consent

#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct ConsentEvent {
    pub recipient: String,
    pub purpose: String,
    pub action: String,
    pub source: String,
    pub evidence: Option<String>,
    pub actor: Option<String>,
}

/// Appends consent events in one statement and returns their ids.
pub async fn append_consent(
    pool: &PgPool,
    events: &[ConsentEvent],
) -> Result<Vec<i64>, StoreError> {
    let col = |f: fn(&ConsentEvent) -> Option<String>| events.iter().map(f).collect::<Vec<_>>();
    let rows = sqlx::query(
        "INSERT INTO consent_events (recipient, purpose, action, source, evidence, actor)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
         RETURNING id",
    )
    .bind(col(|e| Some(e.recipient.clone())))
    .bind(col(|e| Some(e.purpose.clone())))
    .bind(col(|e| Some(e.action.clone())))
    .bind(col(|e| Some(e.source.clone())))
    .bind(col(|e| e.evidence.clone()))
    .bind(col(|e| e.actor.clone()))
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|r| r.get::<i64, _>(0)).collect())
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct ConsentRecord {
    pub id: i64,
    pub recipient: String,
    pub purpose: String,
    pub action: String,
    pub source: String,
    pub evidence: Option<String>,
    pub actor: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Whether one of `senders` has messaged `recipient` or heard from them: the people whose consent
/// a key limited to those senders may read and record.
pub async fn recipient_known_to(
    pool: &PgPool,
    recipient: &str,
    senders: &[String],
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE recipient = $1 AND sender = ANY($2))
             OR EXISTS (SELECT 1 FROM inbound_messages WHERE recipient = $1 AND sender = ANY($2))",
    )
    .bind(recipient)
    .bind(senders)
    .fetch_one(pool)
    .await?)
}

pub async fn consent_history(
    pool: &PgPool,
    recipient: &str,
) -> Result<Vec<ConsentRecord>, StoreError> {
    Ok(sqlx::query_as::<_, ConsentRecord>(
        "SELECT id, recipient, purpose, action, source, evidence, actor, created_at
         FROM consent_events WHERE recipient = $1 ORDER BY id",
    )
    .bind(recipient)
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------------------------------------
// API keys

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub senders: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key as an operator lists it (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub senders: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

pub async fn insert_api_key(pool: &PgPool, key: &ApiKey, hash: &[u8]) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys (id, name, role, senders, key_hash, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(key.id)
    .bind(&key.name)
    .bind(&key.role)
    .bind(&key.senders)
    .bind(hash)
    .bind(key.expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// The key with this hash, if it is neither revoked nor expired.
pub async fn find_api_key(pool: &PgPool, hash: &[u8]) -> Result<Option<ApiKey>, StoreError> {
    Ok(sqlx::query_as::<_, ApiKey>(
        "SELECT id, name, role, senders, expires_at FROM api_keys
         WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await?)
}

/// Records that a key was used; written at most once a minute per key.
pub async fn touch_api_key(pool: &PgPool, id: Uuid) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn list_api_keys(pool: &PgPool) -> Result<Vec<ApiKeyInfo>, StoreError> {
    Ok(sqlx::query_as::<_, ApiKeyInfo>(
        "SELECT id, name, role, senders, created_at, expires_at, last_used_at, revoked_at, revoked_by
         FROM api_keys ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?)
}

pub async fn api_key(pool: &PgPool, id: Uuid) -> Result<Option<ApiKeyInfo>, StoreError> {
    Ok(sqlx::query_as::<_, ApiKeyInfo>(
        "SELECT id, name, role, senders, created_at, expires_at, last_used_at, revoked_at, revoked_by
         FROM api_keys WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Revokes a key; false when it was revoked already (or does not exist).
pub async fn revoke_api_key(pool: &PgPool, id: Uuid, by: &str) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = now(), revoked_by = $2 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(by)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod debug_tests {
    #[test]
    fn secrets_stay_out_of_debug_output() {
        let sender = super::Sender {
            phone_number_id: "1".into(),
            business_portfolio_id: "bp".into(),
            display_phone_number: None,
            tier: 1000,
            quality: crate::domain::decision::Quality::Green,
            status: crate::domain::decision::SenderStatus::Connected,
            paused: false,
            paused_reason: None,
            mps: 80,
            tier_spread_seconds: None,
            waba_id: None,
            access_token: "EAAG-token-secret".into(),
        };
        let subscription = super::events::Subscription {
            id: uuid::Uuid::nil(),
            api_key_id: uuid::Uuid::nil(),
            url: "https://hooks.example.com".into(),
            events: vec!["*".into()],
            secret: "signing-secret".into(),
            created_at: chrono::Utc::now(),
        };
        let shown = format!("{sender:?} {subscription:?}");
        assert!(!shown.contains("token-secret"), "{shown}");
        assert!(!shown.contains("signing-secret"), "{shown}");
        assert!(shown.contains("phone_number_id: \"1\""), "{shown}");
    }
}
