//! Dead letters. Jobs that end in `ns.dead` (attempts used up, redelivered too often, undecodable,
//! or dead-lettered by RabbitMQ past its delivery limit) are taken off the queue into PostgreSQL by
//! an intake in every worker, so nothing sits unread in RabbitMQ. An operator lists them, reads
//! one, and sends it again (`pregon dead …`, `/v1/dead`). Enqueue requests from the ingest queue
//! that RabbitMQ dead-lettered past its delivery limit land here too, as `ingest` dead jobs, and
//! are sent again by publishing them to the ingest exchange once more.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use serde_json::Value;
use uuid::Uuid;

use crate::app::{AppError, Services, Shutdown};
use crate::domain::DeliveryMode;
use crate::domain::job::SendJob;
use crate::domain::refusal::Refusal;
use crate::queue::QueueError;
use crate::store::dead::{self as stored, DeadJob, DeadSource};

#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    App(#[from] AppError),
}

impl From<crate::store::StoreError> for DeadError {
    fn from(e: crate::store::StoreError) -> Self {
        DeadError::App(e.into())
    }
}

impl From<crate::state::StateError> for DeadError {
    fn from(e: crate::state::StateError) -> Self {
        DeadError::App(e.into())
    }
}

/// A dead job as the API shows it: its record and the job itself, decoded where it can be.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct DeadJobView {
    pub id: i64,
    pub source: DeadSource,
    pub message_id: Option<Uuid>,
    pub sender: Option<String>,
    pub dead_at: DateTime<Utc>,
    pub redriven_at: Option<DateTime<Utc>>,
    pub redriven_by: Option<String>,
    /// The job as it was queued; null when it is not JSON.
    pub job: Value,
    /// The job's bytes when they are not JSON.
    pub raw: Option<String>,
}

pub fn view(job: &DeadJob) -> DeadJobView {
    let decoded: Value = serde_json::from_slice(&job.payload).unwrap_or(Value::Null);
    DeadJobView {
        id: job.id,
        source: job.source,
        message_id: job.message_id,
        sender: job.sender.clone(),
        dead_at: job.dead_at,
        redriven_at: job.redriven_at,
        redriven_by: job.redriven_by.clone(),
        raw: decoded
            .is_null()
            .then(|| String::from_utf8_lossy(&job.payload).into_owned()),
        job: decoded,
    }
}

/// Takes jobs off `ns.dead` into `dead_jobs`, for the life of the process; restarts on a new
/// channel when the broker went away.
pub async fn run_intake(services: Services, mut stop: Shutdown) {
    let mut gauge_at = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        let outcome = tokio::select! {
            _ = stop.wait() => return,
            outcome = intake(&services, &mut gauge_at) => outcome,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "dead-letter intake stopped; starting again");
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn intake(
    services: &Services,
    gauge_at: &mut tokio::time::Instant,
) -> Result<(), QueueError> {
    let (_channel, mut consumer) = crate::queue::consume(
        &services.amqp.connection(),
        &services.names.dead(),
        &format!("{}-dead", crate::worker::owner()),
        16,
    )
    .await?;
    loop {
        if gauge_at.elapsed() >= Duration::from_secs(5) {
            *gauge_at = tokio::time::Instant::now();
            if let Ok(n) = stored::waiting_dead_jobs(&services.pool).await {
                services.metrics.dead_jobs.set(n);
            }
        }
        let next = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await;
        let delivery = match next {
            Err(_) => continue,
            Ok(None) => return Err(QueueError::ConsumerEnded),
            Ok(Some(d)) => d?,
        };
        let from_ingest = crate::queue::first_death_queue(&delivery.properties).is_some_and(|q| {
            q == services.names.ingest_queue() || q == services.names.legacy_ingest_queue()
        });
        let (source, jobs) = if from_ingest {
            (DeadSource::Ingest, Vec::new())
        } else {
            (
                DeadSource::Send,
                SendJob::decode_many(&delivery.data).unwrap_or_default(),
            )
        };
        let kept = keep(services, source, &jobs, &delivery.data).await;
        let job = jobs.first();
        match kept {
            Ok(id) => {
                tracing::warn!(dead_job = id, source = source.code(), message = ?job.as_ref().map(|j| j.id), "job dead-lettered; kept for an operator");
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not keep a dead job; leaving it in the queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
        }
    }
}

/// Keeps what was dead-lettered: each job of a chunk as a dead job of its own (so each can be
/// redriven alone), anything else as it came. The id of the first kept.
async fn keep(
    services: &Services,
    source: DeadSource,
    jobs: &[SendJob],
    data: &[u8],
) -> Result<i64, crate::store::StoreError> {
    if jobs.len() <= 1 {
        let job = jobs.first();
        return stored::insert_dead_job(
            &services.pool,
            source,
            job.map(|j| j.id),
            job.map(|j| j.sender.as_str()),
            data,
        )
        .await;
    }
    let mut first = None;
    for job in jobs {
        let id = stored::insert_dead_job(
            &services.pool,
            source,
            Some(job.id),
            Some(job.sender.as_str()),
            &job.encode(),
        )
        .await?;
        first.get_or_insert(id);
    }
    Ok(first.unwrap_or_default())
}

/// Sends a dead job again: a fresh attempt budget, its message back to `queued`, the job into the
/// outbox (the relay publishes it). A message whose send may have reached Meta (a claim without a
/// "sent" marker: a process died in the HTTP call) is sent again only when `force` says so.
pub async fn redrive(
    services: &Services,
    id: i64,
    by: &str,
    force: bool,
) -> Result<DeadJob, DeadError> {
    let dead = stored::get_dead_job(&services.pool, id)
        .await?
        .ok_or_else(|| Refusal::not_found("unknown_dead_job", "id", format!("no dead job {id}")))?;
    if dead.redriven_at.is_some() {
        return Err(already_redriven(id));
    }
    if dead.source == DeadSource::Ingest {
        return redrive_ingest(services, dead, by).await;
    }
    let mut job = SendJob::decode(&dead.payload).map_err(|e| {
        Refusal::rejected(
            "undecodable_job",
            "id",
            format!("dead job {id} cannot be read as a job ({e}); it can only be inspected"),
        )
    })?;
    if !force
        && job.delivery == DeliveryMode::AtMostOnce
        && services
            .state
            .may_have_been_sent(job.id, job.attempt)
            .await?
    {
        return Err(Refusal::conflict(
            "may_send_twice",
            "force",
            "a send of this message may have reached the Cloud API without an answer; sending it again could reach the recipient twice (force=true to send anyway)",
        )
        .into());
    }
    services.state.forget_claims(job.id, job.attempt).await?;
    job.attempt = 0;
    job.throttles = 0;
    job.not_before_ms = 0;
    let routing_key = services.names.lane_key(&job.sender, job.lane());
    if !stored::redrive_dead_job(&services.pool, id, by, job.id, &routing_key, &job.encode())
        .await?
    {
        return Err(already_redriven(id));
    }
    tracing::info!(dead_job = id, message = %job.id, by, "dead job sent again");
    Ok(stored::get_dead_job(&services.pool, id)
        .await?
        .unwrap_or(dead))
}

fn already_redriven(id: i64) -> DeadError {
    Refusal::conflict(
        "already_redriven",
        "id",
        format!("dead job {id} was sent again already"),
    )
    .into()
}

/// Publishes a dead ingest request to the ingest exchange again, where it is validated and
/// enqueued like any other (its idempotency key, if it has one, still holds). Marked first, so two
/// operators cannot both publish it; unmarked again when the publish fails.
async fn redrive_ingest(
    services: &Services,
    dead: DeadJob,
    by: &str,
) -> Result<DeadJob, DeadError> {
    let id = dead.id;
    if !stored::mark_redriven(&services.pool, id, by).await? {
        return Err(already_redriven(id));
    }
    let published = services
        .publisher
        .publish(&services.names.ingest(), "redrive", &dead.payload)
        .await;
    if let Err(e) = published {
        stored::unmark_redriven(&services.pool, id).await?;
        return Err(DeadError::App(e.into()));
    }
    tracing::info!(dead_job = id, by, "dead ingest request published again");
    Ok(stored::get_dead_job(&services.pool, id)
        .await?
        .unwrap_or(dead))
}
