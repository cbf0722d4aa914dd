//! Processing of stored webhook events: statuses move messages to their final states, inbound
//! messages open service windows and record opt-outs, and health updates change what the worker
//! may send. Runs beside the worker; several processes may run it (events are claimed with a
//! lease), and every step is safe to repeat, so an event processed twice changes nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::app::{AppError, Services, Shutdown};
use crate::domain::MessageStatus;
use crate::domain::job::{SendJob, TemplateRef};
use crate::domain::phone;
use crate::domain::policy::RECIPIENT_MARKETING_CAP_WAIT;
use crate::domain::retry::patient_delay;
use crate::domain::webhook::{
    self, FailedStatus, InboundMessage, StatusUpdate, TemplateChange, TemplateUpdate, Update,
};
use crate::domain::{Category, DeliveryMode};
use crate::enqueue;
use crate::state::now_ms;
use crate::store::webhooks::{self as stored, TemplateField, TemplateUpdated};
use crate::store::{self, ConsentEvent, MessageUpdate, StoreError};

/// Events a processor takes at once.
const CLAIM_BATCH: i64 = 32;
/// How long a claimed event is left alone before another processor may take it.
const CLAIM_LEASE_SECONDS: f64 = 120.0;
/// The first wait before an event that failed is tried again; it doubles up to an hour.
const EVENT_RETRY_BASE: Duration = Duration::from_secs(1);
/// Failures after which an event counts as retrying for the gauge and its alert.
const EVENT_RETRYING_AFTER: i32 = 3;

pub async fn run(services: Services, mut stop: Shutdown) {
    let poll = services.config.background_poll.0;
    let mut last_sweep = tokio::time::Instant::now();
    let mut last_cleanup = tokio::time::Instant::now();
    loop {
        if stop.is_triggered() {
            break;
        }
        let worked = match process_batch(&services).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "webhook processing failed; trying again");
                0
            }
        };
        if last_sweep.elapsed() >= poll * 5 {
            last_sweep = tokio::time::Instant::now();
            if let Err(e) = apply_waiting_statuses(&services).await {
                tracing::warn!(error = %e, "could not apply waiting statuses");
            }
            if let Ok(n) = stored::pending_events(&services.pool).await {
                services.metrics.webhook_backlog.set(n);
            }
            if let Ok(n) = stored::retrying_events(&services.pool, EVENT_RETRYING_AFTER).await {
                services.metrics.webhook_events_retrying.set(n);
            }
        }
        if last_cleanup.elapsed() >= Duration::from_secs(3600) {
            last_cleanup = tokio::time::Instant::now();
            let _ = stored::forget_stale_statuses(&services.pool).await;
        }
        if worked == 0 {
            tokio::select! {
                _ = stop.wait() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// Claims and processes one batch of stored events; returns how many it processed.
pub async fn process_batch(services: &Services) -> Result<usize, StoreError> {
    let mut events = stored::claim_events(&services.pool, CLAIM_BATCH, CLAIM_LEASE_SECONDS).await?;
    // In the order Meta sent them: a later update about the same thing must win.
    events.sort_by_key(|e| e.id);
    let n = events.len();
    for event in events {
        match process_event(services, &event.body).await {
            Ok(outcome) => {
                stored::finish_event(&services.pool, event.id, outcome.updates, &outcome.unknown)
                    .await?;
            }
            Err(e) => {
                let attempts = u32::try_from(event.attempts).unwrap_or(0);
                let retry_in = patient_delay(EVENT_RETRY_BASE, attempts, fastrand::f64());
                tracing::warn!(event = event.id, error = %e, attempts, ?retry_in, "webhook event not processed; trying again later");
                stored::fail_event(&services.pool, event.id, &e.to_string(), retry_in).await?;
            }
        }
    }
    Ok(n)
}

struct Outcome {
    updates: i32,
    unknown: Vec<(String, Value, String)>,
}

async fn process_event(services: &Services, body: &[u8]) -> Result<Outcome, AppError> {
    let updates = match webhook::parse(body) {
        Ok(u) => u,
        Err(e) => {
            count(services, "unknown");
            return Ok(Outcome {
                updates: 0,
                unknown: vec![("envelope".into(), Value::Null, e.to_string())],
            });
        }
    };
    let mut statuses = Vec::new();
    let mut inbound = Vec::new();
    let mut unknown = Vec::new();
    let mut rest = Vec::new();
    for update in &updates {
        match update {
            Update::Status(s) => statuses.push(s),
            Update::Inbound(m) => inbound.push(m),
            Update::Unknown { field, value, why } => {
                count(services, "unknown");
                unknown.push((field.clone(), value.clone(), why.clone()));
            }
            other => rest.push(other),
        }
    }
    apply_statuses(services, &statuses).await?;
    handle_inbound(services, &inbound).await?;
    for update in rest {
        match update {
            Update::NumberQuality(u) => {
                count(services, "phone_number_quality_update");
                let senders =
                    stored::senders_by_display_number(&services.pool, &u.display_phone_number)
                        .await?;
                let change = webhook::number_quality_change(u);
                apply_health(services, senders, &change).await?;
            }
            Update::Capability(u) => {
                count(services, "business_capability_update");
                if let Some(limit) = u.limit {
                    let change = webhook::SenderChange {
                        tier: Some(limit),
                        at: u.at,
                        ..Default::default()
                    };
                    let senders = stored::senders_of_account(&services.pool, &u.waba_id).await?;
                    apply_health(services, senders, &change).await?;
                }
            }
            Update::Account(u) => {
                count(services, "account_update");
                if let Some(status) = webhook::account_status(u) {
                    let change = webhook::SenderChange {
                        status: Some(status.to_string()),
                        at: u.at,
                        ..Default::default()
                    };
                    let senders = match &u.phone_number {
                        Some(number) => {
                            stored::senders_by_display_number(&services.pool, number).await?
                        }
                        None => stored::senders_of_account(&services.pool, &u.waba_id).await?,
                    };
                    apply_health(services, senders, &change).await?;
                }
            }
            Update::Template(u) => {
                if let Some(why) = apply_template(services, u).await? {
                    unknown.push(("template".into(), template_json(u), why));
                }
            }
            Update::Status(_) | Update::Inbound(_) | Update::Unknown { .. } => {}
        }
    }
    Ok(Outcome {
        updates: i32::try_from(updates.len()).unwrap_or(i32::MAX),
        unknown,
    })
}

/// The count of updates left out because the state they would change is newer.
const STALE: &str = "stale";

/// Applies what Meta reported about a number to each of `senders`, counting the fields left out
/// as older than what they hold.
async fn apply_health(
    services: &Services,
    senders: Vec<String>,
    change: &webhook::SenderChange,
) -> Result<(), AppError> {
    for id in senders {
        let stale = services.apply_sender_health(&id, change).await?;
        if stale > 0 {
            services
                .metrics
                .webhook_updates
                .with_label_values(&[STALE])
                .inc_by(u64::from(stale));
            tracing::info!(
                sender = %id,
                fields = stale,
                "a number health update older than the state it would change was left out"
            );
        }
    }
    Ok(())
}

fn count(services: &Services, kind: &str) {
    services
        .metrics
        .webhook_updates
        .with_label_values(&[kind])
        .inc();
}

// ---------------------------------------------------------------------------------------------
// Statuses

async fn apply_statuses(services: &Services, statuses: &[&StatusUpdate]) -> Result<(), AppError> {
    if statuses.is_empty() {
        return Ok(());
    }
    for s in statuses {
        count(services, &format!("status_{}", metric_status(&s.status)));
    }
    let ids = stored::insert_statuses(&services.pool, statuses).await?;
    reconcile(services).await?;
    settle_statuses(services, &ids).await
}

fn metric_status(status: &str) -> &str {
    match status {
        "sent" | "delivered" | "read" | "failed" | "played" => status,
        _ => "other",
    }
}

/// Statuses that came before their message's send was recorded, now that it is.
async fn apply_waiting_statuses(services: &Services) -> Result<(), AppError> {
    reconcile(services).await?;
    let ids = stored::unapplied_with_message(&services.pool, 1000).await?;
    settle_statuses(services, &ids).await
}

/// Sends recorded `send_outcome_unknown` that Meta's statuses show were made: they become sent.
async fn reconcile(services: &Services) -> Result<(), AppError> {
    let reconciled = stored::reconcile_unknown_outcomes(&services.pool).await?;
    if reconciled > 0 {
        tracing::info!(
            reconciled,
            "unknown send outcomes confirmed by Meta's statuses"
        );
        services
            .metrics
            .webhook_updates
            .with_label_values(&["unknown_outcome_reconciled"])
            .inc_by(reconciled);
    }
    Ok(())
}

/// Takes the consequences of failed statuses, folds all of them into their messages, and marks
/// them done; a 131049 whose message is not known yet waits for the next pass.
async fn settle_statuses(services: &Services, ids: &[i64]) -> Result<(), AppError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut waiting = Vec::new();
    for row in stored::failed_needing_effects(&services.pool, ids).await? {
        let meaning = webhook::failed_status(row.error_code);
        if matches!(meaning, FailedStatus::RetryAfterCap)
            && (row.message_id.is_none() || row.message_status.is_none())
        {
            // Its message is not recorded yet: the next pass takes its effects.
            waiting.push(row.id);
            continue;
        }
        // A send Meta accepted and then reported failed (131026, 131049, …) is a failure by code
        // like one refused at once.
        let code = row
            .error_code
            .map_or("unknown".to_string(), |c| c.to_string());
        services.metrics.failures.with_label_values(&[&code]).inc();
        match meaning {
            FailedStatus::Unreachable if services.config.suppress_unreachable => {
                if let Some(recipient) = &row.recipient {
                    services
                        .suppress(
                            recipient,
                            &format!("failed status 131026 for {}", row.wamid),
                        )
                        .await?;
                }
            }
            FailedStatus::StoppedMarketing => {
                if let Some(recipient) = &row.recipient {
                    let evidence = format!("failed status 131050 for {}", row.wamid);
                    record_opt_out(services, recipient, "whatsapp", &evidence, None).await?;
                }
            }
            FailedStatus::RetryAfterCap => {
                if let (Some(id), Some(Some(MessageStatus::Sent))) = (
                    row.message_id,
                    row.message_status.as_deref().map(MessageStatus::parse),
                ) {
                    resend_after_cap(services, id).await?
                }
            }
            FailedStatus::Unreachable | FailedStatus::Fail(_) => {}
        }
    }
    stored::apply_statuses(&services.pool, ids).await?;
    let done: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !waiting.contains(id))
        .collect();
    stored::mark_effects_done(&services.pool, &done).await?;
    Ok(())
}

/// 131049: Meta refused to deliver more marketing to this user today. The message is parked and
/// sent again no earlier than 24 h later, with its original body.
async fn resend_after_cap(services: &Services, id: uuid::Uuid) -> Result<(), AppError> {
    let Some(row) = stored::resendable(&services.pool, id).await? else {
        return Ok(());
    };
    let Some(body) = row
        .body
        .as_deref()
        .and_then(|b| serde_json::value::RawValue::from_string(b.to_string()).ok())
    else {
        tracing::warn!(%id, "131049 on a message without a stored body; it stays failed");
        return Ok(());
    };
    let category = Category::parse(&row.category).unwrap_or(Category::Marketing);
    let not_before_ms = now_ms() + RECIPIENT_MARKETING_CAP_WAIT.as_millis() as i64;
    let attempts = u32::try_from(row.attempts).unwrap_or(0);
    let template = row
        .template_name
        .clone()
        .zip(row.template_language.clone())
        .map(|(name, language)| TemplateRef { name, language });
    let mut job = SendJob::new(
        id,
        row.sender.clone(),
        row.recipient.clone(),
        category,
        template,
        body,
        now_ms(),
    )
    .with_delivery(DeliveryMode::parse(&row.delivery).unwrap_or_default())
    .with_attempts(attempts)
    .not_before(not_before_ms);
    job.deferrals = 1;
    if let Some(campaign) = row.campaign_id {
        job = job.in_campaign(campaign);
    }
    // The "sent" marker would make the worker take the resend for a redelivery.
    services.state.forget_sent(id).await?;
    crate::queue::park(
        &services.publisher,
        &services.names,
        &services.derived.delay_steps,
        &job,
        RECIPIENT_MARKETING_CAP_WAIT,
    )
    .await?;
    let mut update = MessageUpdate::new(id, MessageStatus::Deferred, attempts);
    update.reason = Some(FailedStatus::RetryAfterCap.reason().code().into());
    update.error_code = Some(131049);
    update.not_before = chrono::DateTime::from_timestamp_millis(not_before_ms);
    stored::defer_after_cap(&services.pool, &update).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inbound messages

async fn handle_inbound(services: &Services, messages: &[&InboundMessage]) -> Result<(), AppError> {
    if messages.is_empty() {
        return Ok(());
    }
    let keywords = &services.derived.opt_out_keywords;
    let opted_out: Vec<bool> = messages
        .iter()
        .map(|m| webhook::is_opt_out(m, keywords))
        .collect();
    let todo = stored::insert_inbound(&services.pool, messages, &opted_out).await?;
    for (message, opt_out) in messages.iter().zip(&opted_out) {
        count(services, "inbound");
        if !todo.contains(&message.wamid) {
            continue; // a duplicate of one already handled
        }
        let recipient = phone::normalize(&message.from)
            .map(|p| p.digits().to_string())
            .unwrap_or_else(|_| message.from.clone());
        let window = crate::domain::webhook::window_after_inbound(message.referral.is_some());
        services
            .state
            .open_service_window(
                &message.phone_number_id,
                &recipient,
                message.timestamp.saturating_mul(1000),
                window,
            )
            .await?;
        // Someone who writes to us is evidently on WhatsApp.
        if stored::unsuppress(&services.pool, &recipient).await? {
            services.state.set_suppressed(&recipient, false).await?;
        }
        if *opt_out {
            let said = message
                .text
                .as_deref()
                .or(message.reply_title.as_deref())
                .or(message.payload.as_deref())
                .unwrap_or_default();
            let evidence = format!("\"{said}\" (inbound message {})", message.wamid);
            record_opt_out(services, &recipient, "keyword", &evidence, Some(message)).await?;
            confirm_opt_out(services, message, &recipient).await;
        }
        stored::link_reply(&services.pool, message).await?;
        stored::mark_inbound_handled(&services.pool, &message.wamid).await?;
    }
    Ok(())
}

/// Records a marketing opt-out (PostgreSQL and Redis before it returns) and its event.
async fn record_opt_out(
    services: &Services,
    recipient: &str,
    source: &str,
    evidence: &str,
    message: Option<&InboundMessage>,
) -> Result<(), AppError> {
    services
        .record_consent(&[ConsentEvent {
            recipient: recipient.to_string(),
            purpose: "marketing".into(),
            action: "opt_out".into(),
            source: source.into(),
            evidence: Some(evidence.to_string()),
            actor: Some("recipient".into()),
        }])
        .await?;
    let payload = json!({
        "schema": "pregon.event.v1",
        "id": uuid::Uuid::new_v4(),
        "type": "recipient.opted_out",
        "occurred_at": chrono::Utc::now(),
        "recipient": recipient,
        "purpose": "marketing",
        "source": source,
        "evidence": evidence,
        "sender": message.map(|m| m.phone_number_id.as_str()),
        "inbound_wamid": message.map(|m| m.wamid.as_str()),
    });
    store::events::insert_event(
        &services.pool,
        "recipient.opted_out",
        "recipient.opted_out.marketing",
        None,
        &payload,
    )
    .await?;
    Ok(())
}

/// Sends the configured confirmation, inside the window the opt-out message just opened. A
/// failure to queue it is logged, not retried: the opt-out itself is what matters.
async fn confirm_opt_out(services: &Services, message: &InboundMessage, recipient: &str) {
    let text = services.config.opt_out_confirmation.trim();
    if text.is_empty() {
        return;
    }
    let request = enqueue::Request {
        sender: message.phone_number_id.clone(),
        body: json!({"messaging_product": "whatsapp", "to": recipient, "type": "text",
                     "text": {"body": text}}),
        idempotency_key: Some(format!("opt-out-confirmation:{}", message.wamid)),
        api_key_id: None,
        delivery: DeliveryMode::AtMostOnce,
    };
    if let Err(e) = enqueue::enqueue(services, request).await {
        tracing::warn!(error = %e, wamid = %message.wamid, "could not queue the opt-out confirmation");
    }
}

// ---------------------------------------------------------------------------------------------
// Templates

/// Applies a template update; returns why it could not be applied, if it could not.
async fn apply_template(
    services: &Services,
    u: &TemplateUpdate,
) -> Result<Option<String>, AppError> {
    let (field, value, reason) = match &u.kind {
        TemplateChange::Status {
            event,
            reason,
            title,
        } => {
            count(services, "message_template_status_update");
            let status = webhook::template_status(event, title.as_deref());
            let why = [reason.clone(), title.clone()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            (
                TemplateField::Status,
                status,
                Some(why).filter(|w| !w.is_empty()),
            )
        }
        TemplateChange::Quality { new, .. } => {
            count(services, "message_template_quality_update");
            (TemplateField::Quality, new.to_ascii_uppercase(), None)
        }
        TemplateChange::Category { new, .. } => {
            count(services, "template_category_update");
            let Some(category) = Category::of_template(new) else {
                return Ok(Some(format!("unknown template category {new}")));
            };
            (
                TemplateField::Category,
                category.as_str().to_string(),
                Some("category changed by Meta".into()),
            )
        }
    };
    let updated = services
        .update_template(
            &u.name,
            &u.language,
            field,
            &value,
            reason.as_deref(),
            u.template_id.as_deref(),
            u.at,
        )
        .await?;
    Ok(match updated {
        TemplateUpdated::Applied(_) => None,
        TemplateUpdated::Stale => {
            count(services, STALE);
            tracing::info!(template = %u.name, language = %u.language, at = ?u.at,
                "a template update older than the template's state was left out");
            None
        }
        TemplateUpdated::NotRegistered => Some(format!(
            "template {} ({}) is not in the registry",
            u.name, u.language
        )),
    })
}

fn template_json(u: &TemplateUpdate) -> Value {
    json!({"name": u.name, "language": u.language, "template_id": u.template_id,
           "change": format!("{:?}", u.kind)})
}
