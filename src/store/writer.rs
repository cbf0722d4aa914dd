//! The group-commit writer: message inserts and updates from many tasks, batched into few
//! statements; each caller waits for its own commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::StoreError;
use super::messages::{MessageUpdate, NewMessage, clear_outbox, insert_messages, update_messages};

// ---------------------------------------------------------------------------------------------
// Group-commit writer

pub enum Write {
    Insert(Vec<NewMessage>),
    Update(MessageUpdate),
    /// Jobs RabbitMQ confirmed: out of the outbox.
    ClearOutbox(Vec<Uuid>),
}

impl Write {
    /// The rows this write adds to a batched statement (a cleared job is a cheap delete).
    fn rows(&self) -> usize {
        match self {
            Write::Insert(rows) => rows.len().max(1),
            Write::Update(_) | Write::ClearOutbox(_) => 1,
        }
    }
}

/// The ids a flush inserted (a row whose idempotency key was taken is not among them).
type Inserted = Arc<HashSet<Uuid>>;

struct Pending {
    write: Write,
    done: oneshot::Sender<Result<Inserted, StoreError>>,
}

/// Batches message writes from many tasks into few statements. `write` returns once the rows are
/// committed, so callers can acknowledge RabbitMQ or answer HTTP knowing the record is durable.
#[derive(Clone)]
pub struct MessageWriter {
    tx: mpsc::Sender<Pending>,
    /// Set when a write failed because PostgreSQL could not be reached, cleared by the next write
    /// or probe that succeeds: while it is set, nothing new should be sent, since its outcome
    /// could not be recorded.
    failing: Arc<AtomicBool>,
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
        let failing = Arc::new(AtomicBool::new(false));
        let join = tokio::spawn(run_writer(pool, rx, closed, config, failing.clone()));
        (MessageWriter { tx, failing }, WriterHandle { close, join })
    }

    /// PostgreSQL could not take the last write (and no probe has reached it since).
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Writes an update, trying again with backoff for as long as PostgreSQL is unreachable: for
    /// an outcome that already happened (a send Meta accepted), which must be recorded before
    /// its delivery is acknowledged, and must not be handed back to RabbitMQ to be retried
    /// without backoff until it is dead-lettered.
    pub async fn update_patiently(&self, update: MessageUpdate) -> Result<(), StoreError> {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.update(update.clone()).await {
                Err(StoreError::Batch(e)) => {
                    tracing::warn!(id = %update.id, error = %e, ?wait, "could not record an outcome; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    async fn submit(&self, write: Write) -> Result<Inserted, StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { write, done })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        wait.await.unwrap_or(Err(StoreError::WriterGone))
    }

    /// Inserts rows (with their jobs); answers, per row, whether it was inserted (false: its
    /// idempotency key belongs to an earlier row).
    pub async fn insert(&self, rows: Vec<NewMessage>) -> Result<Vec<bool>, StoreError> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let inserted = self.submit(Write::Insert(rows)).await?;
        Ok(ids.iter().map(|id| inserted.contains(id)).collect())
    }

    pub async fn update(&self, update: MessageUpdate) -> Result<(), StoreError> {
        self.submit(Write::Update(update)).await.map(|_| ())
    }

    /// Takes confirmed jobs out of the outbox, batched with the other writes. Waits only to hand
    /// them over: a job left behind is at worst published once more by the relay.
    pub async fn clear_outbox(&self, ids: Vec<Uuid>) {
        let (done, _) = oneshot::channel();
        let _ = self
            .tx
            .send(Pending {
                write: Write::ClearOutbox(ids),
                done,
            })
            .await;
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

/// How often a failing writer with nothing to write asks PostgreSQL whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(1);

async fn run_writer(
    pool: PgPool,
    mut rx: mpsc::Receiver<Pending>,
    mut closed: oneshot::Receiver<()>,
    config: WriterConfig,
    failing: Arc<AtomicBool>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(config.batch_size);
    // A write that would have taken a batch past `batch_size` rows opens the next one.
    let mut carried: Option<Pending> = None;
    let mut closing = false;
    loop {
        let probe = failing.load(Ordering::Relaxed);
        let first = if let Some(p) = carried.take() {
            Some(p)
        } else {
            tokio::select! {
                biased;
                p = rx.recv() => p,
                _ = tokio::time::sleep(PROBE_EVERY), if probe => {
                    if sqlx::query("SELECT 1").execute(&pool).await.is_ok() {
                        tracing::info!("PostgreSQL answers again");
                        failing.store(false, Ordering::Relaxed);
                    }
                    continue;
                }
                asked = &mut closed, if !closing => {
                    closing = true;
                    // Asked to close: take no new writes; those already queued are still
                    // flushed. A dropped handle only means nobody will ask: run until the
                    // writers are gone.
                    if asked.is_ok() {
                        rx.close();
                    }
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        let mut rows = first.write.rows();
        batch.push(first);
        let deadline = tokio::time::Instant::now() + config.linger;
        while rows < config.batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) if rows + p.write.rows() > config.batch_size => {
                    carried = Some(p);
                    break;
                }
                Ok(Some(p)) => {
                    rows += p.write.rows();
                    batch.push(p);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let reached = flush(&pool, &mut batch).await;
        let was_failing = failing.swap(!reached, Ordering::Relaxed);
        if was_failing == reached {
            if reached {
                tracing::info!("PostgreSQL takes writes again");
            } else {
                tracing::error!("PostgreSQL cannot take writes; sends hold until it can");
            }
        }
    }
}

/// Writes a batch and answers each caller. False when PostgreSQL could not be reached (as
/// opposed to refusing a write, such as a duplicate key).
async fn flush(pool: &PgPool, batch: &mut Vec<Pending>) -> bool {
    // Rows are moved, not copied, into the statement's columns; `spans` remembers whose they
    // were, for the one-by-one fallback.
    let mut inserts: Vec<NewMessage> = Vec::new();
    let mut spans: Vec<std::ops::Range<usize>> = Vec::with_capacity(batch.len());
    let mut cleared = Vec::new();
    // Keep only the last update per message: one statement cannot update a row twice.
    let mut updates: Vec<MessageUpdate> = Vec::new();
    let mut position: HashMap<Uuid, usize> = HashMap::new();
    for pending in batch.iter_mut() {
        let start = inserts.len();
        match &mut pending.write {
            Write::Insert(rows) => inserts.append(rows),
            Write::Update(u) => match position.get(&u.id) {
                Some(&i) => updates[i] = u.clone(),
                None => {
                    position.insert(u.id, updates.len());
                    updates.push(u.clone());
                }
            },
            Write::ClearOutbox(ids) => cleared.extend(ids.iter().copied()),
        }
        spans.push(start..inserts.len());
    }
    let mut result: Result<Inserted, StoreError> = Ok(Inserted::default());
    if !inserts.is_empty() {
        result = insert_messages(pool, &inserts)
            .await
            .map(|ids| Arc::new(ids.into_iter().collect()));
        if let Err(e) = &result
            && e.is_unique_violation()
            && batch.len() > 1
        {
            // One caller's duplicate key must not fail its neighbours: write one by one.
            flush_one_by_one(pool, batch, &inserts, &spans).await;
            return true;
        }
    }
    if result.is_ok()
        && !updates.is_empty()
        && let Err(e) = update_messages(pool, &updates).await
    {
        result = Err(e);
    }
    let mut reached = true;
    if !cleared.is_empty()
        && let Err(e) = clear_outbox(pool, &cleared).await
    {
        // The relay publishes them once more; the worker's send claim makes that one send.
        tracing::warn!(error = %e, jobs = cleared.len(), "could not clear confirmed jobs from the outbox");
        reached = e.is_refusal();
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, rows = batch.len(), "message batch write failed");
    }
    let reached = reached && result.as_ref().err().is_none_or(StoreError::is_refusal);
    for pending in batch.drain(..) {
        let _ = pending.done.send(match &result {
            Ok(inserted) => Ok(inserted.clone()),
            Err(e) => Err(e.for_callers()),
        });
    }
    reached
}

async fn flush_one_by_one(
    pool: &PgPool,
    batch: &mut Vec<Pending>,
    inserts: &[NewMessage],
    spans: &[std::ops::Range<usize>],
) {
    for (pending, span) in batch.drain(..).zip(spans) {
        let result = match &pending.write {
            Write::Insert(_) => insert_messages(pool, &inserts[span.clone()])
                .await
                .map(|ids| Arc::new(ids.into_iter().collect())),
            Write::Update(u) => update_messages(pool, std::slice::from_ref(u))
                .await
                .map(|_| Inserted::default()),
            Write::ClearOutbox(ids) => clear_outbox(pool, ids).await.map(|_| Inserted::default()),
        };
        let _ = pending.done.send(result.map_err(|e| e.for_callers()));
    }
}
