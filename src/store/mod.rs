//! PostgreSQL adapter: the durable record of senders, templates, consent, API keys and every
//! message. Message writes go through [`MessageWriter`], which batches concurrent writes into one
//! statement (group commit) and answers each caller once its row is durable.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub mod campaigns;
pub mod contacts;
pub mod events;
pub mod webhooks;

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
}

impl StoreError {
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Duplicate => true,
            StoreError::Db(sqlx::Error::Database(e)) => e.code().as_deref() == Some("23505"),
            _ => false,
        }
    }

    /// The shareable form sent back to every caller of one batch.
    fn for_callers(&self) -> StoreError {
        if self.is_unique_violation() {
            StoreError::Duplicate
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

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Sender {
    pub phone_number_id: String,
    pub business_portfolio_id: String,
    pub display_phone_number: Option<String>,
    pub tier: i64,
    pub quality: String,
    pub status: String,
    pub paused: bool,
    pub paused_reason: Option<String>,
    pub mps: i32,
    pub tier_spread_seconds: Option<i32>,
    /// The WhatsApp Business Account the number belongs to: account-wide webhooks name it.
    pub waba_id: Option<String>,
    #[serde(skip)]
    pub access_token: String,
}

pub async fn upsert_sender(pool: &PgPool, s: &Sender) -> Result<Sender, StoreError> {
    Ok(sqlx::query_as::<_, Sender>(
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
    .bind(&s.quality)
    .bind(&s.status)
    .bind(s.paused)
    .bind(&s.paused_reason)
    .bind(s.mps)
    .bind(s.tier_spread_seconds)
    .bind(&s.access_token)
    .bind(&s.waba_id)
    .fetch_one(pool)
    .await?)
}

pub async fn list_senders(pool: &PgPool) -> Result<Vec<Sender>, StoreError> {
    Ok(sqlx::query_as::<_, Sender>(
        "SELECT phone_number_id, business_portfolio_id, display_phone_number, tier, quality, status,
                paused, paused_reason, mps, tier_spread_seconds, waba_id, access_token
         FROM senders ORDER BY phone_number_id",
    )
    .fetch_all(pool)
    .await?)
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

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Template {
    pub name: String,
    pub language: String,
    pub category: String,
    pub status: String,
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
    .bind(&t.category)
    .bind(&t.status)
    .bind(&t.parameters)
    .execute(pool)
    .await?;
    Ok(())
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

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub senders: Option<Vec<String>>,
}

pub async fn insert_api_key(pool: &PgPool, key: &ApiKey, hash: &[u8]) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys (id, name, role, senders, key_hash) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(key.id)
    .bind(&key.name)
    .bind(&key.role)
    .bind(&key.senders)
    .bind(hash)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn find_api_key(pool: &PgPool, hash: &[u8]) -> Result<Option<ApiKey>, StoreError> {
    Ok(sqlx::query_as::<_, ApiKey>(
        "SELECT id, name, role, senders FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await?)
}

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
}

/// Message states in the order they may follow one another; a write never moves a message back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A campaign message written at planning, not yet handed to RabbitMQ (or handed back on pause).
    Planned,
    Queued,
    Deferred,
    Sent,
    Failed,
    Skipped,
    /// Its campaign was cancelled or reached its end-by time before it was sent.
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Planned => "planned",
            Status::Queued => "queued",
            Status::Deferred => "deferred",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Sent | Status::Failed | Status::Skipped | Status::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageUpdate {
    pub id: Uuid,
    pub status: Status,
    pub reason: Option<String>,
    pub wamid: Option<String>,
    pub attempts: i32,
    pub error_code: Option<i64>,
    pub error: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
}

impl MessageUpdate {
    pub fn new(id: Uuid, status: Status, attempts: u32) -> MessageUpdate {
        MessageUpdate {
            id,
            status,
            reason: None,
            wamid: None,
            attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
            error_code: None,
            error: None,
            not_before: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct MessageRow {
    pub id: Uuid,
    pub sender: String,
    pub recipient: String,
    pub category: String,
    pub message_type: String,
    pub template_name: Option<String>,
    pub template_language: Option<String>,
    pub status: String,
    pub status_reason: Option<String>,
    pub wamid: Option<String>,
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
         wamid, attempts, last_error_code, last_error, not_before, created_at, updated_at, sent_at,
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

async fn insert_messages(pool: &PgPool, rows: &[NewMessage]) -> Result<(), StoreError> {
    fn col<T: Clone>(rows: &[NewMessage], f: impl Fn(&NewMessage) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    sqlx::query(concat!(
        "WITH c AS (
             INSERT INTO messages AS m (id, idempotency_key, api_key_id, sender, recipient, category, message_type,
                                   template_name, template_language, delivery, body, status)
             SELECT u.*, 'queued' FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                                    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) AS u
             RETURNING ",
        changed_columns!(),
        ")
         INSERT INTO event_outbox (event_type, routing_key, api_key_id, payload)
         SELECT 'message.queued', 'message.queued.' || c.category, c.api_key_id, ",
        message_event_json!("'message.queued'"),
        " FROM c"
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
    .execute(pool)
    .await?;
    Ok(())
}

/// Applies updates in one statement, with a lifecycle event for each row whose state changed. A
/// final state is never replaced by a non-final one, so a late "deferred" can never hide a "sent",
/// and what webhooks reported (delivered, read) is never overwritten by the worker.
async fn update_messages(pool: &PgPool, updates: &[MessageUpdate]) -> Result<(), StoreError> {
    fn col<T: Clone>(rows: &[MessageUpdate], f: impl Fn(&MessageUpdate) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    sqlx::query(concat!(
        "WITH c AS (
         UPDATE messages m SET
             status = u.status,
             status_reason = u.reason,
             wamid = COALESCE(u.wamid, m.wamid),
             attempts = GREATEST(m.attempts, u.attempts),
             last_error_code = COALESCE(u.error_code, m.last_error_code),
             last_error = COALESCE(u.error, m.last_error),
             not_before = u.not_before,
             sent_at = CASE WHEN u.status = 'sent' THEN COALESCE(m.sent_at, now()) ELSE m.sent_at END,
             updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::text[],
                     $8::timestamptz[])
              AS u(id, status, reason, wamid, attempts, error_code, error, not_before)
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

// ---------------------------------------------------------------------------------------------
// Group-commit writer

pub enum Write {
    Insert(Vec<NewMessage>),
    Update(MessageUpdate),
}

struct Pending {
    write: Write,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Batches message writes from many tasks into few statements. `write` returns once the rows are
/// committed, so callers can acknowledge RabbitMQ or answer HTTP knowing the record is durable.
#[derive(Clone)]
pub struct MessageWriter {
    tx: mpsc::Sender<Pending>,
}

#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub batch_size: usize,
    pub linger: Duration,
}

impl MessageWriter {
    /// Starts the writer task. It runs until [`WriterHandle::close`] (or until every
    /// `MessageWriter` clone is dropped), and flushes what it was given before it ends.
    pub fn spawn(pool: PgPool, config: WriterConfig) -> (MessageWriter, WriterHandle) {
        let (tx, rx) = mpsc::channel(config.batch_size * 4);
        let (close, closed) = oneshot::channel();
        let join = tokio::spawn(run_writer(pool, rx, closed, config));
        (MessageWriter { tx }, WriterHandle { close, join })
    }

    pub async fn write(&self, write: Write) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { write, done })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        wait.await.unwrap_or(Err(StoreError::WriterGone))
    }

    pub async fn insert(&self, rows: Vec<NewMessage>) -> Result<(), StoreError> {
        self.write(Write::Insert(rows)).await
    }

    pub async fn update(&self, update: MessageUpdate) -> Result<(), StoreError> {
        self.write(Write::Update(update)).await
    }
}

/// Stops a writer after it has flushed everything already handed to it.
pub struct WriterHandle {
    close: oneshot::Sender<()>,
    join: tokio::task::JoinHandle<()>,
}

impl WriterHandle {
    pub async fn close(self) {
        let _ = self.close.send(());
        let _ = self.join.await;
    }
}

async fn run_writer(
    pool: PgPool,
    mut rx: mpsc::Receiver<Pending>,
    mut closed: oneshot::Receiver<()>,
    config: WriterConfig,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(config.batch_size);
    let mut closing = false;
    loop {
        let first = tokio::select! {
            biased;
            p = rx.recv() => p,
            asked = &mut closed, if !closing => {
                closing = true;
                // Asked to close: take no new writes; those already queued are still flushed.
                // A dropped handle only means nobody will ask: run until the writers are gone.
                if asked.is_ok() {
                    rx.close();
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&pool, &mut batch).await;
    }
}

async fn flush(pool: &PgPool, batch: &mut Vec<Pending>) {
    let mut inserts = Vec::new();
    // Keep only the last update per message: one statement cannot update a row twice.
    let mut updates: Vec<MessageUpdate> = Vec::new();
    let mut position: HashMap<Uuid, usize> = HashMap::new();
    for pending in batch.iter() {
        match &pending.write {
            Write::Insert(rows) => inserts.extend(rows.iter().cloned()),
            Write::Update(u) => match position.get(&u.id) {
                Some(&i) => updates[i] = u.clone(),
                None => {
                    position.insert(u.id, updates.len());
                    updates.push(u.clone());
                }
            },
        }
    }
    let mut result = Ok(());
    if !inserts.is_empty() {
        result = insert_messages(pool, &inserts).await;
        if let Err(e) = &result
            && e.is_unique_violation()
            && batch.len() > 1
        {
            // One caller's duplicate key must not fail its neighbours: write one by one.
            return flush_one_by_one(pool, batch).await;
        }
    }
    if result.is_ok() && !updates.is_empty() {
        result = update_messages(pool, &updates).await;
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, rows = batch.len(), "message batch write failed");
    }
    for pending in batch.drain(..) {
        let _ = pending
            .done
            .send(result.as_ref().map(|_| ()).map_err(StoreError::for_callers));
    }
}

async fn flush_one_by_one(pool: &PgPool, batch: &mut Vec<Pending>) {
    for pending in batch.drain(..) {
        let result = match &pending.write {
            Write::Insert(rows) => insert_messages(pool, rows).await,
            Write::Update(u) => update_messages(pool, std::slice::from_ref(u)).await,
        };
        let _ = pending.done.send(result.map_err(|e| e.for_callers()));
    }
}
