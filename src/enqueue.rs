//! Enqueue: from a Cloud API body to a durable row and a confirmed job in the sender's lane.
//!
//! Shared by the HTTP API and the direct RabbitMQ ingest, so both validate identically.
//! Order: validate → policy (consent, window) → the row and its job in one PostgreSQL commit (the
//! job outbox; the idempotency key is taken by that commit) → publish with confirm from a task of
//! its own → the confirmed job leaves the outbox. What the publish did not confirm, or a process
//! that died before it, the outbox relay publishes: an accepted message always reaches its lane.

use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use uuid::Uuid;

use crate::app::{Services, Shutdown};
use crate::domain::decision::{Facts, TemplateStatus, recipient_verdict};
use crate::domain::job::{SendJob, TemplateRef};
use crate::domain::message::{self, MessageKind};
use crate::domain::refusal::{Refusal, RefusalKind};
use crate::domain::{Category, DeliveryMode};
use crate::queue::{Publisher, QueueError};
use crate::state::{StateError, now_ms};
use crate::store::MessageWriter;
use crate::store::{NewMessage, OutboxJob, StoreError};

/// Why a request was not queued. `Refused` is the caller's to fix; the others are ours.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A request of a batch was not answered: a bug, never the caller's fault.
    #[error("the request was not processed ({0})")]
    Unanswered(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    /// RabbitMQ is unreachable or blocks publishers: nothing was queued.
    #[error("RabbitMQ is unreachable or blocks publishers; nothing was queued, try again shortly")]
    BrokerUnavailable,
    /// Redis lost its data and is being rebuilt from PostgreSQL: nothing was queued.
    #[error("pregon's Redis copy is being rebuilt; nothing was queued, try again shortly")]
    StateRebuilding,
    #[error(transparent)]
    Queue(#[from] QueueError),
}

fn refused(
    kind: RefusalKind,
    code: &'static str,
    field: &str,
    message: impl Into<String>,
) -> EnqueueError {
    EnqueueError::Refused(Refusal::new(kind, code, field, message))
}

#[derive(Debug, Clone)]
pub struct Request {
    pub sender: String,
    pub body: Value,
    /// Already scoped by the caller (API key id or ingest), unique per message.
    pub idempotency_key: Option<String>,
    pub api_key_id: Option<Uuid>,
    pub delivery: DeliveryMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: Uuid,
    pub wa_id: String,
    pub input: String,
    /// True when an earlier request with the same idempotency key is being answered again.
    pub replayed: bool,
}

/// A validated request ready to be recorded and published.
struct Prepared {
    row: NewMessage,
    job: SendJob,
    input: String,
    facts: Facts,
}

/// Validation and registry checks: everything but the recipient's consent and window.
async fn prepare(services: &Services, request: &Request) -> Result<Prepared, EnqueueError> {
    let validated = message::validate(&request.body)
        .map_err(|e| refused(RefusalKind::Invalid, e.code, &e.field, e.message))?;
    let Some(sender) = services.catalog.sender(&request.sender).await? else {
        return Err(refused(
            RefusalKind::NotFound,
            "unknown_sender",
            "phone_number_id",
            format!(
                "no sender is registered with phone_number_id {}",
                request.sender
            ),
        ));
    };
    let (category, template) = match &validated.kind {
        MessageKind::Template { name, language } => {
            let Some(t) = services.catalog.template(name, language).await? else {
                return Err(refused(
                    RefusalKind::Rejected,
                    "unknown_template",
                    "template.name",
                    format!("template {name} ({language}) is not registered"),
                ));
            };
            if !matches!(t.status, TemplateStatus::Approved | TemplateStatus::Paused) {
                return Err(refused(
                    RefusalKind::Rejected,
                    "template_not_approved",
                    "template.name",
                    format!("template {name} ({language}) is {}", t.status),
                ));
            }
            let category = t.category;
            (
                category,
                Some(TemplateRef {
                    name: name.clone(),
                    language: language.clone(),
                }),
            )
        }
        _ => (Category::Service, None),
    };
    let recipient = validated.to.digits().to_string();
    let facts = Facts {
        category,
        free_form: validated.kind.is_free_form(),
        delivery: request.delivery,
    };
    let id = Uuid::now_v7();
    let mut body = validated.body;
    message::tag_with_id(&mut body, &id.to_string());
    let body = RawValue::from_string(body.to_string()).map_err(|e| {
        refused(
            RefusalKind::Invalid,
            "invalid_body",
            "",
            format!("body cannot be re-encoded: {e}"),
        )
    })?;
    let input = request
        .body
        .get("to")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let row = NewMessage {
        id,
        idempotency_key: request.idempotency_key.clone(),
        api_key_id: request.api_key_id,
        sender: sender.phone_number_id.clone(),
        recipient: recipient.clone(),
        category: category.as_str().into(),
        message_type: validated.kind.type_name().into(),
        template_name: template.as_ref().map(|t| t.name.clone()),
        template_language: template.as_ref().map(|t| t.language.clone()),
        delivery: match request.delivery {
            DeliveryMode::AtMostOnce => "at_most_once".into(),
            DeliveryMode::AtLeastOnce => "at_least_once".into(),
        },
        body: body.get().to_string(),
        job: None,
    };
    let job = SendJob::new(
        id,
        sender.phone_number_id.clone(),
        recipient,
        category,
        template,
        body,
        now_ms(),
    )
    .with_delivery(request.delivery);
    Ok(Prepared {
        row: NewMessage {
            job: Some(OutboxJob {
                routing_key: services.names.lane_key(&job.sender, job.lane()),
                payload: job.encode(),
            }),
            ..row
        },
        job,
        input,
        facts,
    })
}

pub async fn enqueue(services: &Services, request: Request) -> Result<Accepted, EnqueueError> {
    let mut results = enqueue_many(services, vec![request]).await;
    results.pop().unwrap_or_else(|| {
        Err(refused(
            RefusalKind::Invalid,
            "invalid_body",
            "",
            "empty request",
        ))
    })
}

/// Enqueues many requests with one batched insert and one confirm window; each answers alone.
pub async fn enqueue_many(
    services: &Services,
    requests: Vec<Request>,
) -> Vec<Result<Accepted, EnqueueError>> {
    let mut results: Vec<Option<Result<Accepted, EnqueueError>>> =
        Vec::with_capacity(requests.len());
    let mut valid: Vec<(usize, Prepared)> = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        match prepare(services, request).await {
            Err(e) => results.push(Some(Err(e))),
            Ok(prepared) => {
                results.push(None);
                valid.push((i, prepared));
            }
        }
    }
    // Consent and windows of the whole batch in one round trip.
    let pairs: Vec<(&str, &str)> = valid
        .iter()
        .map(|(_, p)| (p.job.sender.as_str(), p.job.recipient.as_str()))
        .collect();
    let states = match services.state.recipient_states(&pairs).await {
        Ok(states) => states,
        Err(e) => {
            // Never refuse on a copy that may be incomplete: the caller retries once it is whole.
            let message = e.to_string();
            for (i, _) in &valid {
                results[*i] = Some(Err(match e {
                    StateError::CopyMissing => EnqueueError::StateRebuilding,
                    _ => EnqueueError::Store(StoreError::Batch(message.clone())),
                }));
            }
            return finish(results);
        }
    };
    let mut ready: Vec<(usize, Prepared)> = Vec::new();
    for ((i, prepared), state) in valid.into_iter().zip(states) {
        if let Some(reason) = recipient_verdict(
            &prepared.facts,
            &state.consent,
            state.window_open,
            state.suppressed,
        ) {
            results[i] = Some(Err(refused(
                RefusalKind::Rejected,
                reason.code(),
                "to",
                reason.message(),
            )));
            continue;
        }
        ready.push((i, prepared));
    }
    if ready.is_empty() {
        return finish(results);
    }
    if !services.publisher.is_ready() {
        // Said at once, before anything is written: the caller retries with the same key.
        for (i, _) in &ready {
            results[*i] = Some(Err(EnqueueError::BrokerUnavailable));
        }
        return finish(results);
    }
    // Row and job in one commit: from here on the message is durably queued, whatever becomes of
    // this request. An idempotency key is taken by that commit, never before it.
    let rows: Vec<NewMessage> = ready.iter().map(|(_, p)| p.row.clone()).collect();
    let inserted = match services.writer.insert(rows).await {
        Ok(inserted) => inserted,
        Err(e) => {
            let message = e.to_string();
            for (i, _) in &ready {
                results[*i] = Some(Err(EnqueueError::Store(StoreError::Batch(message.clone()))));
            }
            return finish(results);
        }
    };
    let mut fresh: Vec<(usize, Prepared)> = Vec::with_capacity(ready.len());
    for ((i, prepared), new) in ready.into_iter().zip(inserted) {
        if new {
            fresh.push((i, prepared));
            continue;
        }
        match replay_or_reuse_key(services, &prepared).await {
            Ok(Some(answer)) => results[i] = Some(Ok(answer)),
            Ok(None) => fresh.push((i, prepared)),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    if fresh.is_empty() {
        return finish(results);
    }
    // Durable from the commit on: the jobs are handed to the publishing task, which batches them
    // with other requests' (a client that hangs up cannot stop it); what it cannot publish, the
    // outbox relay does.
    let jobs: Vec<(Uuid, OutboxJob)> = fresh
        .iter()
        .filter_map(|(_, p)| p.row.job.clone().map(|j| (p.row.id, j)))
        .collect();
    services.jobs.hand_over(jobs).await;
    for (i, p) in fresh {
        services
            .metrics
            .outcome("enqueued", &p.job.sender, p.job.category.as_str());
        results[i] = Some(Ok(Accepted {
            id: p.row.id,
            wa_id: p.job.recipient.clone(),
            input: p.input,
            replayed: false,
        }));
    }
    finish(results)
}

/// A request whose idempotency key an earlier row holds: the earlier request's answer, or `None`
/// when the key had expired (`idempotency_ttl`) and this request's row now holds it.
async fn replay_or_reuse_key(
    services: &Services,
    prepared: &Prepared,
) -> Result<Option<Accepted>, EnqueueError> {
    let Some(key) = &prepared.row.idempotency_key else {
        return Err(EnqueueError::Unanswered(
            "a row without a key was not inserted",
        ));
    };
    let ttl = services.config.idempotency_ttl.0;
    if crate::store::release_expired_key(&services.pool, key, ttl).await? {
        let inserted = services.writer.insert(vec![prepared.row.clone()]).await?;
        if inserted.first() == Some(&true) {
            return Ok(None);
        }
    }
    let row = crate::store::find_by_idempotency_key(&services.pool, key)
        .await?
        .ok_or(EnqueueError::Unanswered("the row holding the key vanished"))?;
    Ok(Some(Accepted {
        id: row.id,
        wa_id: row.recipient.clone(),
        input: row.recipient,
        replayed: true,
    }))
}

/// Committed jobs on their way to RabbitMQ. Requests hand theirs over and answer, since their
/// commit made them durable; one task publishes whatever has gathered meanwhile, in chunks per
/// lane under one confirm window, and clears the confirmed jobs from the outbox in one write. So
/// concurrent single-message requests share broker messages and confirms instead of each waiting
/// for its own. What the task cannot publish stays in the outbox, for the relay.
#[derive(Clone)]
pub struct JobHandoff {
    tx: mpsc::UnboundedSender<Handed>,
    /// One permit per job handed over and not yet published: while RabbitMQ is slow to confirm,
    /// requests wait for room here rather than pile jobs up in memory.
    room: Arc<Semaphore>,
}

struct Handed {
    jobs: Vec<(Uuid, OutboxJob)>,
    room: OwnedSemaphorePermit,
}

/// Jobs one publishing round takes at most.
const HANDOFF_ROUND: usize = 4096;
/// Jobs handed over and not yet published, at most.
const HANDOFF_ROOM: usize = 4 * HANDOFF_ROUND;

impl JobHandoff {
    /// Starts the publishing task; it ends once every handle is dropped and what it was given is
    /// published.
    pub fn spawn(
        publisher: Publisher,
        writer: MessageWriter,
        exchange: String,
        job_chunk: usize,
    ) -> JobHandoff {
        let (tx, mut rx) = mpsc::unbounded_channel::<Handed>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = first.jobs;
                let mut rooms = vec![first.room];
                while jobs.len() < HANDOFF_ROUND {
                    match rx.try_recv() {
                        Ok(more) => {
                            jobs.extend(more.jobs);
                            rooms.push(more.room);
                        }
                        Err(_) => break,
                    }
                }
                let confirmed = publish_jobs(&publisher, &exchange, job_chunk, &jobs).await;
                drop(rooms);
                if !confirmed.is_empty() {
                    writer.clear_outbox(confirmed).await;
                }
            }
        });
        JobHandoff {
            tx,
            room: Arc::new(Semaphore::new(HANDOFF_ROOM)),
        }
    }

    /// Hands committed jobs over for publishing (waiting only while the task is behind).
    pub async fn hand_over(&self, jobs: Vec<(Uuid, OutboxJob)>) {
        if jobs.is_empty() {
            return;
        }
        let wanted = u32::try_from(jobs.len().min(HANDOFF_ROOM)).unwrap_or(u32::MAX);
        let Ok(room) = self.room.clone().acquire_many_owned(wanted).await else {
            return;
        };
        if self.tx.send(Handed { jobs, room }).is_err() {
            tracing::warn!("the job publisher has stopped; the outbox relay will publish");
        }
    }
}

/// Publishes jobs of the outbox to `ns.send`, in chunks per lane; the ids RabbitMQ confirmed.
async fn publish_jobs(
    publisher: &Publisher,
    exchange: &str,
    job_chunk: usize,
    jobs: &[(Uuid, OutboxJob)],
) -> Vec<Uuid> {
    let items: Vec<(&str, &str, &[u8])> = jobs
        .iter()
        .map(|(_, j)| (exchange, j.routing_key.as_str(), j.payload.as_slice()))
        .collect();
    let published = publisher.publish_jobs(&items, job_chunk).await;
    let mut confirmed = Vec::with_capacity(jobs.len());
    for ((id, _), outcome) in jobs.iter().zip(published) {
        match outcome {
            Ok(()) => confirmed.push(*id),
            Err(e) => {
                tracing::warn!(%id, error = %e, "publish not confirmed; the outbox relay will publish it")
            }
        }
    }
    confirmed
}

/// How long a job may sit in the outbox before the relay publishes it: longer than the publish
/// that committed it may take, so the relay does not race a publish still waiting for its confirm.
fn outbox_grace(services: &Services) -> std::time::Duration {
    services.config.publish_timeout.0 * 2 + std::time::Duration::from_secs(1)
}

/// Publishes the jobs the outbox kept: publishes that failed, and those of a process that died
/// between its commit and its publish. Runs in every worker; `SKIP LOCKED` shares the work.
pub async fn run_outbox_relay(services: Services, mut stop: Shutdown) {
    let poll = services
        .config
        .background_poll
        .0
        .max(std::time::Duration::from_millis(50));
    let mut depth_at = tokio::time::Instant::now();
    loop {
        let relayed = match relay_once(&services).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay failed; trying again");
                0
            }
        };
        if depth_at.elapsed() >= std::time::Duration::from_secs(5) {
            depth_at = tokio::time::Instant::now();
            if let Ok(depth) = crate::store::outbox_depth(&services.pool).await {
                services.metrics.job_outbox_depth.set(depth);
            }
        }
        if relayed > 0 {
            continue;
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

async fn relay_once(services: &Services) -> Result<usize, EnqueueError> {
    let mut tx = services.pool.begin().await.map_err(StoreError::from)?;
    let jobs = crate::store::stale_outbox_jobs(&mut tx, outbox_grace(services), 500).await?;
    if jobs.is_empty() {
        return Ok(0);
    }
    let confirmed = publish_jobs(
        &services.publisher,
        &services.names.send_exchange(),
        services.config.job_chunk,
        &jobs,
    )
    .await;
    crate::store::delete_outbox_jobs(&mut tx, &confirmed).await?;
    tx.commit().await.map_err(StoreError::from)?;
    services.metrics.jobs_relayed.inc_by(confirmed.len() as u64);
    if confirmed.len() < jobs.len() {
        return Err(EnqueueError::Unanswered(
            "RabbitMQ did not confirm every relayed job",
        ));
    }
    Ok(confirmed.len())
}

fn finish(
    results: Vec<Option<Result<Accepted, EnqueueError>>>,
) -> Vec<Result<Accepted, EnqueueError>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(EnqueueError::Unanswered("no outcome"))))
        .collect()
}
