//! Operator actions (launch, pause, resume, cancel) through the state machine, mirrored to Redis
//! before the answer, and the retry of failures that can still succeed.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;

use crate::app::Services;
use crate::domain::campaign::{self};
use crate::domain::reason::Reason;
use crate::store::campaigns::{self as cstore, Campaign, StateChange};

use super::*;

// -- operator actions ----------------------------------------------------------------------------

/// Launch, pause, resume or cancel, recorded with the actor; the worker sees the new state in
/// Redis before this returns.
pub async fn act(
    services: &Services,
    id: Uuid,
    action: campaign::Action,
    actor: &str,
) -> Result<Campaign, CampaignError> {
    let current = existing(services, id).await?;
    let to = campaign::transition(current.state, action)
        .map_err(|e| invalid(RefusalKind::Conflict, "invalid_state", "state", e))?;
    let (to, event) = match action {
        campaign::Action::Launch => {
            if current.start_at.is_some_and(|s| s > Utc::now()) {
                (CampaignState::Scheduled, "launched")
            } else {
                (to, "launched")
            }
        }
        campaign::Action::Pause => (to, "paused"),
        campaign::Action::Resume => (to, "resumed"),
        campaign::Action::Cancel => (to, "cancelled"),
    };
    let from = &[current.state];
    let changed = cstore::change_state(
        &services.pool,
        id,
        &StateChange {
            from,
            to,
            paused_by: (action == campaign::Action::Pause).then_some("operator"),
            causes: &[],
            event,
            actor,
        },
    )
    .await?
    .ok_or_else(|| {
        invalid(
            RefusalKind::Conflict,
            "invalid_state",
            "state",
            "the campaign changed state meanwhile; read it and try again",
        )
    })?;
    services.state.mirror_campaign(id, to).await?;
    services
        .metrics
        .campaign_transitions
        .with_label_values(&[event, "operator"])
        .inc();
    if action == campaign::Action::Cancel {
        cstore::cancel_planned(&services.pool, id, Reason::CampaignCancelled).await?;
    }
    Ok(changed)
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RetryOutcome {
    pub requeued: u64,
    pub not_retried: BTreeMap<String, u64>,
}

/// Queues again the failures that can succeed (never unreachable recipients, opt-outs or sends
/// whose outcome is unknown) and sets the campaign running if it had completed.
pub async fn retry_failed(
    services: &Services,
    id: Uuid,
    actor: &str,
) -> Result<RetryOutcome, CampaignError> {
    let c = existing(services, id).await?;
    if !matches!(
        c.state,
        CampaignState::Running | CampaignState::Paused | CampaignState::Completed
    ) {
        return Err(invalid(
            RefusalKind::Conflict,
            "invalid_state",
            "state",
            format!("a {} campaign has no failures to retry", c.state),
        ));
    }
    let mut outcome = RetryOutcome {
        requeued: 0,
        not_retried: BTreeMap::new(),
    };
    let mut after = 0;
    loop {
        let page = cstore::failures_after(&services.pool, id, after, 5000).await?;
        let Some(last) = page.last().map(|f| f.campaign_seq) else {
            break;
        };
        let mut ids = Vec::new();
        for f in &page {
            let reason = f.status_reason.as_deref().and_then(Reason::parse);
            if crate::domain::errors::worth_retrying(f.last_error_code, reason) {
                ids.push(f.id);
            } else {
                let key = f
                    .last_error_code
                    .map(|c| c.to_string())
                    .or_else(|| f.status_reason.clone())
                    .unwrap_or_default();
                *outcome.not_retried.entry(key).or_default() += 1;
            }
        }
        outcome.requeued += cstore::requeue_failed(&services.pool, id, &ids).await?;
        after = last;
    }
    if outcome.requeued > 0 && c.state == CampaignState::Completed {
        cstore::change_state(
            &services.pool,
            id,
            &StateChange {
                from: &[CampaignState::Completed],
                to: CampaignState::Running,
                paused_by: None,
                causes: &[],
                event: "retry_failed",
                actor,
            },
        )
        .await?;
        services
            .state
            .mirror_campaign(id, CampaignState::Running)
            .await?;
    }
    Ok(outcome)
}

/// The campaign, or a refusal naming the id.
async fn existing(services: &Services, id: Uuid) -> Result<Campaign, CampaignError> {
    cstore::get_campaign(&services.pool, id)
        .await?
        .ok_or_else(|| {
            invalid(
                RefusalKind::NotFound,
                "unknown_campaign",
                "id",
                format!("no campaign {id}"),
            )
        })
}
