//! Enqueue: from a Cloud API body to a durable row and a confirmed job in the sender's lane.
//!
//! Shared by the HTTP API and the direct RabbitMQ ingest, so both validate identically.
//! Order: validate → policy (consent, window) → idempotency → row in PostgreSQL → publish with
//! confirm. A publish that fails marks the row failed, so nothing is left half-done.

use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::app::Services;
use crate::domain::MessageStatus;
use crate::domain::decision::{Facts, TemplateStatus, recipient_verdict};
use crate::domain::job::{SendJob, TemplateRef};
use crate::domain::message::{self, MessageKind};
use crate::domain::reason::Reason;
use crate::domain::refusal::{Refusal, RefusalKind};
use crate::domain::{Category, DeliveryMode};
use crate::queue::QueueError;
use crate::state::{StateError, now_ms};
use crate::store::{MessageUpdate, NewMessage, StoreError};

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
    Ok(Prepared {
        row: NewMessage {
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
        },
        job: SendJob::new(
            id,
            sender.phone_number_id.clone(),
            recipient,
            category,
            template,
            body,
            now_ms(),
        )
        .with_delivery(request.delivery),
        input,
        facts,
    })
}

/// Answers a request whose idempotency key was used before with the first request's answer.
async fn replay(
    services: &Services,
    key: &str,
    owner: Uuid,
) -> Result<Option<Accepted>, EnqueueError> {
    let row = match crate::store::get_message(&services.pool, owner).await? {
        Some(row) => Some(row),
        None => crate::store::find_by_idempotency_key(&services.pool, key).await?,
    };
    Ok(row.map(|row| Accepted {
        id: row.id,
        wa_id: row.recipient.clone(),
        input: row.recipient,
        replayed: true,
    }))
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
        if let Some(key) = &prepared.row.idempotency_key {
            match services
                .state
                .claim_idempotency_key(key, prepared.row.id, services.config.idempotency_ttl.0)
                .await
            {
                Err(e) => {
                    results[i] = Some(Err(e.into()));
                    continue;
                }
                Ok(owner) if owner != prepared.row.id => {
                    results[i] = Some(match replay(services, key, owner).await {
                        Ok(Some(a)) => Ok(a),
                        Ok(None) => Err(refused(
                            RefusalKind::Conflict,
                            "idempotency_key_in_use",
                            "Idempotency-Key",
                            "a request with this key is still being processed",
                        )),
                        Err(e) => Err(e),
                    });
                    continue;
                }
                Ok(_) => {}
            }
        }
        ready.push((i, prepared));
    }
    if ready.is_empty() {
        return results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(EnqueueError::Unanswered("no recipient state"))))
            .collect();
    }
    // Record first: a message that exists in a lane always has its row.
    let rows: Vec<NewMessage> = ready.iter().map(|(_, p)| p.row.clone()).collect();
    if let Err(e) = services.writer.insert(rows).await {
        if e.is_unique_violation() && ready.len() == 1 {
            // The idempotency key outlived Redis: answer with the row PostgreSQL kept.
            let (i, p) = &ready[0];
            if let Some(key) = &p.row.idempotency_key
                && let Ok(Some(row)) =
                    crate::store::find_by_idempotency_key(&services.pool, key).await
            {
                results[*i] = Some(Ok(Accepted {
                    id: row.id,
                    wa_id: row.recipient.clone(),
                    input: row.recipient,
                    replayed: true,
                }));
                return finish(results);
            }
        }
        let message = e.to_string();
        for (i, p) in &ready {
            if let Some(key) = &p.row.idempotency_key {
                let _ = services.state.forget_idempotency_key(key).await;
            }
            results[*i] = Some(Err(EnqueueError::Store(crate::store::StoreError::Batch(
                message.clone(),
            ))));
        }
        return finish(results);
    }
    let exchange = services.names.send_exchange();
    let items: Vec<(String, String, Vec<u8>)> = ready
        .iter()
        .map(|(_, p)| {
            (
                exchange.clone(),
                services.names.lane_key(&p.job.sender, p.job.lane()),
                p.job.encode(),
            )
        })
        .collect();
    let published = services.publisher.publish_many(&items).await;
    for ((i, p), outcome) in ready.into_iter().zip(published) {
        match outcome {
            Ok(()) => {
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
            Err(e) => {
                tracing::error!(id = %p.row.id, error = %e, "publish failed; marking the message failed");
                let mut update = MessageUpdate::new(p.row.id, MessageStatus::Failed, 0)
                    .because(Reason::EnqueuePublishFailed);
                update.error = Some(e.to_string());
                let _ = services.writer.update(update).await;
                if let Some(key) = &p.row.idempotency_key {
                    let _ = services.state.forget_idempotency_key(key).await;
                }
                results[i] = Some(Err(e.into()));
            }
        }
    }
    finish(results)
}

fn finish(
    results: Vec<Option<Result<Accepted, EnqueueError>>>,
) -> Vec<Result<Accepted, EnqueueError>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(EnqueueError::Unanswered("no outcome"))))
        .collect()
}
