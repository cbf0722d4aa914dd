//! Carrying out what was decided about one delivery: recording its outcome and acknowledging
//! it, parking it in a delay queue, dead-lettering it, and acting on the post-send policy's
//! outcome and side effects. Decisions are made in the domain (`decision`, `policy`); nothing here
//! decides what a failure means.

use std::time::Duration;

use crate::domain::MessageStatus;
use crate::domain::decision::{CampaignGate, TemplateStatus};
use crate::domain::errors::SendFailure;
use crate::domain::job::SendJob;
use crate::domain::policy::{self, Effect, Outcome, Spent};
use crate::domain::reason::Reason;
use crate::queue;
use crate::state::now_ms;
use crate::store::webhooks::TemplateField;
use crate::store::{ConsentEvent, MessageUpdate, PauseSource};

use super::sender::Shared;
use super::share::{Share, ack, requeue};

/// A paused campaign's message goes back to it unsent (queued again on resume); a cancelled
/// campaign's message is cancelled.
pub(super) async fn settle_for_campaign(
    shared: &Shared,
    share: Share,
    job: &SendJob,
    gate: CampaignGate,
) {
    let (status, reason, outcome) = match gate {
        CampaignGate::Stopped => (
            MessageStatus::Cancelled,
            Reason::CampaignCancelled,
            "cancelled",
        ),
        _ => (MessageStatus::Planned, Reason::CampaignPaused, "returned"),
    };
    let update = MessageUpdate::new(job.id, status, job.attempt).because(reason);
    finish(shared, share, job, update, outcome).await;
}

/// Carries out what the post-send policy decided about a failed send.
pub(super) async fn on_failure(
    shared: &Shared,
    share: Share,
    mut job: SendJob,
    failure: SendFailure,
) {
    let services = &shared.services;
    let spent = Spent {
        attempts: job.attempt,
        throttles: job.throttles,
    };
    let decided = policy::after_failure(
        &failure,
        spent,
        job.delivery,
        &services.derived.post_send,
        fastrand::f64(),
    );
    tracing::debug!(id = %job.id, %failure, ?decided, "send failed");
    // A known answer that is not a send: a redelivery may try this attempt again. A request that
    // may have reached Meta keeps its claim, so no redelivery of this attempt sends it twice.
    if !decided.may_have_sent
        && let Err(e) = services.state.release_claim(job.id, job.attempt).await
    {
        tracing::warn!(id = %job.id, error = %e, "could not release the send claim");
    }
    if let Some(effect) = &decided.effect {
        carry_out(shared, &job, &failure, effect).await;
    }
    let label = failure.label();
    let recorded = |status, attempts, reason: Option<Reason>| {
        let mut update = MessageUpdate::new(job.id, status, attempts);
        update.reason = reason.map(|r| r.code().to_string());
        update.error_code = Some(failure.code());
        update.error = Some(failure.to_string());
        update
    };
    match decided.outcome {
        Outcome::Retry {
            wait,
            reason,
            attempts,
            throttles,
        } => {
            services.metrics.retries.with_label_values(&[&label]).inc();
            let update = recorded(MessageStatus::Queued, attempts, Some(reason));
            job.attempt = attempts;
            job.throttles = throttles;
            job.not_before_ms = now_ms() + wait.as_millis() as i64;
            park(shared, share, job, wait, Some(update)).await;
        }
        Outcome::Defer {
            wait,
            reason,
            attempts,
        } => {
            job.attempt = attempts;
            defer(shared, share, job, reason, wait, Some(&failure)).await;
        }
        Outcome::PutBack { wait } => {
            // Not the message's fault: no attempt spent, nothing recorded against it.
            let update = MessageUpdate::new(job.id, MessageStatus::Queued, job.attempt);
            park(shared, share, job, wait, Some(update)).await;
        }
        Outcome::Exhaust { reason, attempts } => {
            let update = recorded(MessageStatus::Failed, attempts, Some(reason));
            exhaust(shared, share, &job, update).await;
        }
        Outcome::Fail { reason, attempts } => {
            services.metrics.failures.with_label_values(&[&label]).inc();
            let update = recorded(MessageStatus::Failed, attempts, Some(reason));
            finish(shared, share, &job, update, "failed").await;
        }
    }
}

/// A failure's effect beyond its message. A failed effect is logged: the message's own outcome
/// is recorded regardless, and the next answer from Meta brings the effect again.
pub(super) async fn carry_out(
    shared: &Shared,
    job: &SendJob,
    failure: &SendFailure,
    effect: &Effect,
) {
    let services = &shared.services;
    let id = &shared.id;
    match effect {
        Effect::SlowDownSender => shared.pacer.slow_down(),
        Effect::PauseSender => {
            tracing::error!(sender = %id, %failure, "account-level error: pausing the sender; its messages stay queued");
            if let Err(e) = services
                .set_sender_paused(id, true, Some(&failure.to_string()), PauseSource::CloudApi)
                .await
            {
                tracing::error!(sender = %id, error = %e, "could not pause the sender");
            }
        }
        Effect::HoldMarketing(hold) => {
            tracing::error!(sender = %id, "spam rate limit (131048): holding marketing");
            let until = now_ms() + hold.as_millis() as i64;
            if let Err(e) = services.state.pause_marketing_until(id, until).await {
                tracing::error!(error = %e, "could not hold marketing");
            }
        }
        Effect::OptOutMarketing => {
            let event = ConsentEvent {
                recipient: job.recipient.clone(),
                purpose: "marketing".into(),
                action: "opt_out".into(),
                source: "whatsapp".into(),
                evidence: Some(format!(
                    "Cloud API error {} on message {}",
                    failure.code(),
                    job.id
                )),
                actor: Some("pregon".into()),
            };
            if let Err(e) = services.record_consent(&[event]).await {
                tracing::error!(error = %e, "could not record the marketing opt-out");
            }
        }
        Effect::SuppressRecipient => {
            let evidence = format!("Cloud API error {} on message {}", failure.code(), job.id);
            if let Err(e) = services.suppress(&job.recipient, &evidence).await {
                tracing::error!(error = %e, "could not suppress the unreachable recipient");
            }
        }
        Effect::MarkTemplate(status) => {
            mark_template(shared, job, status, &failure.to_string()).await;
        }
    }
}

/// Marks the job's template in the registry and Redis, unless this process already knows it so
/// (a burst of answers to the requests in flight would otherwise write it once each).
pub(super) async fn mark_template(
    shared: &Shared,
    job: &SendJob,
    status: &TemplateStatus,
    why: &str,
) {
    let Some(template) = &job.template else {
        return;
    };
    let services = &shared.services;
    let value = status.as_str();
    if let Ok(Some(known)) = services
        .catalog
        .template(&template.name, &template.language)
        .await
        && known.status == *status
    {
        return;
    }
    tracing::warn!(template = %template.name, language = %template.language, status = value, why, "template status from a send's answer");
    match services
        .update_template(
            &template.name,
            &template.language,
            TemplateField::Status,
            value,
            Some(why),
            None,
            None,
        )
        .await
    {
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "could not record the template's status"),
    }
}

/// Records an outcome, then acknowledges; if the record cannot be written the delivery goes back
/// to the queue (the Redis "sent" marker keeps a redelivery from sending twice).
pub(super) async fn finish(
    shared: &Shared,
    share: Share,
    job: &SendJob,
    update: MessageUpdate,
    outcome: &str,
) {
    // Kept in hand while PostgreSQL is away (the lanes hold meanwhile): handed back, it would be
    // redelivered without backoff until it was dead-lettered with its row still queued.
    match shared.services.writer.update_patiently(update).await {
        Ok(()) => {
            shared
                .services
                .metrics
                .outcome(outcome, &shared.id, job.category.as_str());
            ack(share).await;
        }
        Err(e) => {
            tracing::error!(id = %job.id, error = %e, "the outcome was refused; requeueing");
            requeue(share).await;
        }
    }
}

/// Parks a job until `wait` has passed and records it deferred, with the Cloud API's answer
/// when a send's failure caused it.
pub(super) async fn defer(
    shared: &Shared,
    share: Share,
    mut job: SendJob,
    reason: Reason,
    wait: Duration,
    failure: Option<&SendFailure>,
) {
    shared
        .services
        .metrics
        .deferrals
        .with_label_values(&[reason.code()])
        .inc();
    job.deferrals += 1;
    job.not_before_ms = now_ms() + wait.as_millis() as i64;
    let mut update = deferred(&job, reason);
    if let Some(failure) = failure {
        update.error_code = Some(failure.code());
        update.error = Some(failure.to_string());
    }
    count_deferred(shared, &job);
    park(shared, share, job, wait, Some(update)).await;
}

pub(super) fn deferred(job: &SendJob, reason: Reason) -> MessageUpdate {
    let mut update =
        MessageUpdate::new(job.id, MessageStatus::Deferred, job.attempt).because(reason);
    update.not_before = chrono::DateTime::from_timestamp_millis(job.not_before_ms);
    update
}

pub(super) fn count_deferred(shared: &Shared, job: &SendJob) {
    shared
        .services
        .metrics
        .outcome("deferred", &shared.id, job.category.as_str());
}

/// Parks a job in the delay queue closest to `wait` (recorded as deferred when a reason is
/// given), then acknowledges the original delivery.
pub(super) async fn redelay(
    shared: &Shared,
    share: Share,
    job: SendJob,
    wait: Duration,
    reason: Option<Reason>,
) {
    let update = reason.map(|r| deferred(&job, r));
    if reason.is_some() {
        count_deferred(shared, &job);
    }
    park(shared, share, job, wait, update).await;
}

/// Puts the job in the delay queue closest to `wait`, records the update, then acknowledges.
pub(super) async fn park(
    shared: &Shared,
    share: Share,
    job: SendJob,
    wait: Duration,
    update: Option<MessageUpdate>,
) {
    let services = &shared.services;
    if let Err(e) = queue::park(
        &services.publisher,
        &services.names,
        &services.derived.delay_steps,
        &job,
        wait,
    )
    .await
    {
        tracing::error!(id = %job.id, error = %e, "could not park the message; requeueing");
        requeue(share).await;
        return;
    }
    // Recorded before the ack, waiting out a PostgreSQL outage: a deferral of a day (a full
    // tier) would otherwise leave the row `queued` all that time.
    if let Some(update) = update
        && let Err(e) = services.writer.update_patiently(update).await
    {
        // Refused (not an outage): the parked copy is authoritative; the row catches up on its
        // next outcome.
        tracing::warn!(id = %job.id, error = %e, "could not record the deferral");
    }
    ack(share).await;
}

/// Attempts are used up: keep the job in the dead-letter queue and record the failure.
pub(super) async fn exhaust(shared: &Shared, share: Share, job: &SendJob, update: MessageUpdate) {
    let services = &shared.services;
    if let Some(code) = update.error_code {
        services
            .metrics
            .failures
            .with_label_values(&[&code.to_string()])
            .inc();
    }
    if let Err(e) = services
        .publisher
        .publish(&services.names.dead(), "", &job.encode())
        .await
    {
        tracing::error!(id = %job.id, error = %e, "could not dead-letter; requeueing");
        requeue(share).await;
        return;
    }
    finish(shared, share, job, update, "failed").await;
}

pub(super) async fn dead_letter_undecodable(shared: &Shared, share: Share, error: &str) {
    tracing::error!(error, "undecodable job; moving it to the dead-letter queue");
    let services = &shared.services;
    services
        .metrics
        .failures
        .with_label_values(&["undecodable_job"])
        .inc();
    match services
        .publisher
        .publish(&services.names.dead(), "", share.data())
        .await
    {
        Ok(()) => ack(share).await,
        Err(_) => requeue(share).await,
    }
}
