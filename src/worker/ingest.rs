//! Direct ingest: other systems may publish enqueue requests to the `ns.ingest` exchange instead
//! of calling HTTP. Each is validated exactly like the HTTP path; an invalid one is recorded in
//! `ingest_refusals` with its reason, never dropped. One that keeps killing its consumer is
//! dead-lettered by RabbitMQ past the queue's delivery limit and kept in `dead_jobs`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::app::{Services, Shutdown};
use crate::domain::DeliveryMode;
use crate::domain::refusal::{Refusal, RefusalKind};
use crate::enqueue::{self, EnqueueError, Request};
use crate::store;

pub const INGEST_SCHEMA: &str = "pregon.enqueue.v1";

/// The versioned envelope documented in the README.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub schema: String,
    pub phone_number_id: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub delivery: Option<String>,
    pub message: Value,
}

pub async fn run(services: Services, stop: Shutdown) {
    let legacy = {
        let services = services.clone();
        let stop = stop.clone();
        tokio::spawn(async move { drain_legacy(&services, stop).await })
    };
    consume_forever(&services, &services.names.ingest_queue(), stop).await;
    let _ = legacy.await;
}

/// Consumes one ingest queue for the life of the process, starting again on a new channel when
/// the broker went away.
async fn consume_forever(services: &Services, queue: &str, mut stop: Shutdown) {
    loop {
        match consume(services, queue, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, queue, "ingest consumer stopped; restarting");
                tokio::select! {
                    _ = stop.wait() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// How many times, 100 ms apart, a worker that stopped reading the old ingest queue looks for its
/// consumer to be gone before it starts over.
const CONSUMER_GONE_CHECKS: usize = 10;

/// Drains the ingest queue of earlier versions (it has no dead-letter exchange and RabbitMQ cannot
/// add one in place): unbound from the exchange so nothing new arrives, consumed until empty, then
/// deleted. Nothing to do once it is gone.
async fn drain_legacy(services: &Services, mut stop: Shutdown) {
    let queue = services.names.legacy_ingest_queue();
    loop {
        match crate::queue::retire_legacy_ingest(&services.amqp.connection(), &services.names).await
        {
            Ok(false) => return,
            Ok(true) => break,
            Err(e) => tracing::warn!(error = %e, "could not unbind the old ingest queue"),
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    tracing::info!(queue, "draining the ingest queue of an earlier version");
    // RabbitMQ cannot delete a quorum queue "only if empty", so a worker deletes it once it is
    // empty, its own consumer has settled everything it held, and no other worker reads it. Two
    // workers that each see the other reading try again after a random wait.
    loop {
        let (stopper, drained) = crate::app::shutdown_channel();
        let consumer = {
            let services = services.clone();
            let queue = queue.clone();
            tokio::spawn(async move { consume_forever(&services, &queue, drained).await })
        };
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = stop.wait() => { stopping = true; break }
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            match crate::queue::depth(&services.amqp.connection(), &queue).await {
                Ok(Some(0)) | Ok(None) => break,
                _ => {}
            }
        }
        stopper.trigger();
        let _ = consumer.await;
        if stopping {
            return;
        }
        let connection = services.amqp.connection();
        // A quorum queue reports its consumer gone a moment after the channel closed: look a few
        // times before starting over, or each round races its own consumer's cancellation.
        for _ in 0..CONSUMER_GONE_CHECKS {
            match crate::queue::stats(&connection, &queue).await {
                Ok(None) => return,
                Ok(Some(stats)) if stats.ready == 0 && stats.consumers == 0 => {
                    match crate::queue::delete_queue(&connection, &queue).await {
                        Ok(()) => {
                            tracing::info!(queue, "old ingest queue drained and deleted");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not delete the old ingest queue");
                            break;
                        }
                    }
                }
                // Something to consume again, or another worker reading it.
                Ok(Some(stats)) if stats.ready > 0 || stats.consumers > 1 => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(0..2000))) => {}
        }
    }
}

async fn consume(
    services: &Services,
    queue: &str,
    stop: &mut Shutdown,
) -> Result<(), crate::queue::QueueError> {
    let prefetch: u16 = 128;
    let (channel, mut consumer) = crate::queue::consume(
        &services.amqp.connection(),
        queue,
        &format!("{}-ingest", super::owner()),
        prefetch,
    )
    .await?;
    let slots = Arc::new(Semaphore::new(usize::from(prefetch)));
    loop {
        let delivery = tokio::select! {
            _ = stop.wait() => break,
            d = consumer.next() => match d {
                Some(d) => d?,
                // The channel or connection closed under it: start again on a new one.
                None => return Err(crate::queue::QueueError::ConsumerEnded),
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let services = services.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            // A request that cannot be settled now (PostgreSQL or Redis away, the same key being
            // enqueued by another delivery) is retried here, with backoff, rather than requeued:
            // every requeue counts towards the delivery limit, and an outage must not send good
            // requests to the dead letters. Only a stopping worker hands it back.
            let mut wait = Duration::from_millis(250);
            let settled = loop {
                if handle(&services, &delivery.data).await {
                    break true;
                }
                tokio::select! {
                    _ = stop.wait() => break false,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            };
            if settled {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            } else {
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
            drop(permit);
        });
    }
    let _ = slots.acquire_many(u32::from(prefetch)).await;
    let _ = channel.close(200, "stopping".into()).await;
    Ok(())
}

/// True when the delivery is settled (queued or recorded as refused); false to retry later.
async fn handle(services: &Services, data: &[u8]) -> bool {
    let payload = String::from_utf8_lossy(data).to_string();
    let refuse = |code: &'static str, field: Option<String>, reason: String| {
        let services = services.clone();
        let payload = payload.clone();
        async move {
            services
                .metrics
                .ingest_refused
                .with_label_values(&[code])
                .inc();
            match store::insert_refusal(&services.pool, code, field.as_deref(), &reason, &payload)
                .await
            {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "could not record an ingest refusal");
                    false
                }
            }
        }
    };
    let envelope: Envelope = match serde_json::from_slice(data) {
        Ok(e) => e,
        Err(e) => return refuse("invalid_envelope", None, e.to_string()).await,
    };
    if envelope.schema != INGEST_SCHEMA {
        return refuse(
            "unsupported_schema",
            Some("schema".into()),
            format!("schema must be {INGEST_SCHEMA}"),
        )
        .await;
    }
    if let Some(key) = &envelope.idempotency_key
        && let Err(e) = crate::domain::message::check_idempotency_key(key, "idempotency_key")
    {
        return refuse(e.code, Some(e.field), e.message).await;
    }
    let delivery = match envelope.delivery.as_deref().map(DeliveryMode::parse) {
        None => DeliveryMode::AtMostOnce,
        Some(Some(d)) => d,
        Some(None) => {
            return refuse(
                "invalid_field",
                Some("delivery".into()),
                "delivery must be at_most_once or at_least_once".into(),
            )
            .await;
        }
    };
    let request = Request {
        sender: envelope.phone_number_id,
        body: envelope.message,
        idempotency_key: envelope.idempotency_key.map(|k| format!("ingest:{k}")),
        api_key_id: None,
        delivery,
    };
    match enqueue::enqueue(services, request).await {
        Ok(_) => true,
        // The same key is being enqueued right now by another delivery: try again shortly, when
        // it will be answered as a replay instead of refused.
        Err(EnqueueError::Refused(r)) if r.kind == RefusalKind::Conflict => false,
        Err(EnqueueError::Refused(Refusal {
            code,
            field,
            message,
            ..
        })) => {
            // Fields of the Cloud API body live under `message` in the envelope.
            let field = field.map(|f| match f.as_str() {
                "phone_number_id" => f,
                _ => format!("message.{f}"),
            });
            refuse(code, field, message).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "ingest could not enqueue; will retry");
            false
        }
    }
}
