//! Campaigns: checking a definition, estimating it, and running it. A runner (in worker
//! processes, one lease per campaign) plans the audience into `planned` messages, hands them to
//! RabbitMQ in chunks behind a persisted cursor, pauses and resumes on sender or template health,
//! and completes the campaign when nothing is left.
//!
//! No miss, no duplicate: planning writes each chunk and its cursor in one transaction, and one row
//! per recipient (a unique index); handing over marks rows and the `claimed` mark before
//! publishing and moves the cursor after RabbitMQ confirms. After a crash the rows between the
//! cursor and the mark are published again with the same message ids, which the worker's send claim
//! and "sent" marker turn into at most one send.

mod actions;
mod audience;
mod definition;
mod estimate;
mod plan;
mod progress;

pub use actions::{RetryOutcome, act, retry_failed};
pub use audience::{Audience, sample_contact};
pub(crate) use audience::{Candidate, audience_is_empty, audience_page};
pub use definition::{Definition, QuietHoursBody, Schedule, TemplateChoice, create};
pub use estimate::{CostEstimate, CountryCost, Estimate, SenderEstimate, estimate};
pub(crate) use plan::{
    Message, Plan, Verdict, build_message, check_page, plan_of, read_page, variables_resolve,
};
pub(crate) use progress::count_map;
pub use progress::{Funnel, Progress, RateTracker, done_and_total, progress, retryable};

use crate::domain::Category;
use crate::domain::campaign::CampaignState;
use crate::domain::decision::TemplateStatus;
use crate::domain::refusal::{Refusal, RefusalKind};
use crate::queue::QueueError;
use crate::state::StateError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// The caller's to fix: answered with a 4xx naming the field.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

pub(crate) fn invalid(
    kind: RefusalKind,
    code: &'static str,
    field: &str,
    message: impl Into<String>,
) -> CampaignError {
    CampaignError::Refused(Refusal::new(kind, code, field, message))
}
