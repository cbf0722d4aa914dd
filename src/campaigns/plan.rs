//! Checking recipients, shared by the estimate and planning: number, duplicates, consent and
//! suppression, the US rule, the variables, and which sender of the pool each recipient sticks to.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::app::Services;
use crate::domain::campaign::{self, ContactView, Exclusion, SenderCapacity, VariableMap};
use crate::domain::decision::Consent;
use crate::domain::{Category, phone};
use crate::state::StateError;
use crate::store::Template;
use crate::store::campaigns::Campaign;

use super::*;

// -- checking recipients (shared by the estimate and planning) ---------------------------------

/// What planning needs to know about a campaign, read once.
pub(crate) struct Plan {
    /// Shared, so the estimate's page reader holds it without copying an explicit list.
    pub(crate) audience: Arc<Audience>,
    pub(crate) category: Category,
    pub(crate) template: Template,
    pub(crate) mapping: VariableMap,
    /// What each sender can still do today, read once.
    pub(crate) capacities: Vec<(String, SenderCapacity)>,
    /// Sender pool with weights (remaining tier capacity).
    pub(crate) pool: Vec<(String, f64)>,
}

/// The verdict on one audience member: eligible, with what the caller asked to build for it
/// (`M`), or why not.
pub(crate) enum Verdict<M> {
    Send {
        seq: i64,
        recipient: String,
        country: &'static str,
        message: M,
    },
    Excluded {
        input: String,
        reason: Exclusion,
    },
}

/// What planning writes for an eligible recipient.
pub(crate) struct Message {
    pub(crate) body: Value,
    /// The sender of the pool the recipient sticks to.
    pub(crate) sender: String,
}

/// What is built for a recipient who passed consent, suppression and the US rule: an error when
/// a variable has no value. Planning builds the message ([`build_message`]); an estimate only
/// counts ([`variables_resolve`]), and both exclude on the same rule (`resolve_values`).
pub(crate) type Build<M> = fn(&Plan, &phone::PhoneNumber, &ContactView<'_>) -> Result<M, Exclusion>;

/// The recipient's message: its template components rendered, and its sender.
pub(crate) fn build_message(
    plan: &Plan,
    number: &phone::PhoneNumber,
    view: &ContactView<'_>,
) -> Result<Message, Exclusion> {
    let components = campaign::render_components(&plan.template.parameters, &plan.mapping, view)
        .map_err(|_| Exclusion::MissingVariable)?;
    let sender = campaign::pick_sender(number.digits(), &plan.pool)
        .unwrap_or_default()
        .to_string();
    Ok(Message {
        body: campaign::message_body(
            number.digits(),
            &plan.template.name,
            &plan.template.language,
            components,
        ),
        sender,
    })
}

/// Only whether every variable has a value: a million rendered bodies were most of an
/// estimate's time, and it throws them away.
pub(crate) fn variables_resolve(
    plan: &Plan,
    _number: &phone::PhoneNumber,
    view: &ContactView<'_>,
) -> Result<(), Exclusion> {
    campaign::resolve_values(&plan.template.parameters, &plan.mapping, view)
        .map(|_| ())
        .map_err(|_| Exclusion::MissingVariable)
}

/// A page of candidates with what the checks read about them: the number as normalized (none
/// when it is not one) with its consent and suppression from the worker's Redis copy.
pub(crate) struct ReadPage(Vec<(Candidate, Option<Recipient>)>);

/// A candidate's number as normalized, its consent, and whether it is suppressed.
type Recipient = (phone::PhoneNumber, Consent, bool);

impl ReadPage {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Normalizes a page's numbers and reads their consent and suppression: reads only, no verdict,
/// so the estimate does this for the next page while it checks the current one.
pub(crate) async fn read_page(
    services: &Services,
    page: Vec<Candidate>,
) -> Result<ReadPage, StateError> {
    let numbers: Vec<Option<phone::PhoneNumber>> = page
        .iter()
        .map(|c| phone::normalize(&c.input).ok())
        .collect();
    let recipients: Vec<&str> = numbers.iter().flatten().map(|n| n.digits()).collect();
    // One answer per number (`audience_states` checks it); were one missing, the candidate
    // would be excluded rather than sent to.
    let mut states = services
        .state
        .audience_states(&recipients)
        .await?
        .into_iter();
    let read = page
        .into_iter()
        .zip(numbers)
        .map(|(candidate, number)| {
            let entry = number.and_then(|n| states.next().map(|(c, s)| (n, c, s)));
            (candidate, entry)
        })
        .collect();
    Ok(ReadPage(read))
}

/// Checks a page of candidates: number, duplicates (explicit lists), consent and suppression (the
/// worker's own Redis copy, as [`read_page`] read it), the US rule, and the variables; `build`
/// makes what an eligible recipient carries.
pub(crate) fn check_page<M>(
    plan: &Plan,
    page: ReadPage,
    seen: &mut HashSet<String>,
    build: Build<M>,
) -> Vec<Verdict<M>> {
    // In page order, which is audience order: the exclusion report reads like the list.
    let mut verdicts = Vec::with_capacity(page.0.len());
    // Contacts are unique by number (a unique index), so only an explicit list can repeat one;
    // tracking a contact audience would hold every recipient in memory (80 MB a million).
    let explicit = matches!(*plan.audience, Audience::Numbers(_));
    let empty = json!({});
    for (candidate, entry) in page.0 {
        let verdict = match entry {
            None => Verdict::Excluded {
                input: candidate.input,
                reason: Exclusion::InvalidNumber,
            },
            Some((number, _, _)) if explicit && !seen.insert(number.digits().to_string()) => {
                Verdict::Excluded {
                    input: candidate.input,
                    reason: Exclusion::Duplicate,
                }
            }
            Some((number, consent, suppressed)) => check_one(
                plan, &candidate, &number, &consent, suppressed, &empty, build,
            ),
        };
        verdicts.push(verdict);
    }
    verdicts
}

fn check_one<M>(
    plan: &Plan,
    candidate: &Candidate,
    number: &phone::PhoneNumber,
    consent: &Consent,
    suppressed: bool,
    empty: &Value,
    build: Build<M>,
) -> Verdict<M> {
    let excluded = |reason| Verdict::Excluded {
        input: number.digits().to_string(),
        reason,
    };
    if let Some(reason) = campaign::exclusion(plan.category, number.country(), consent, suppressed)
    {
        return excluded(reason);
    }
    let contact = candidate.contact.as_ref();
    let view = ContactView {
        phone: number.digits(),
        name: contact.and_then(|c| c.name.as_deref()),
        language: contact.and_then(|c| c.language.as_deref()),
        country: number.country(),
        attributes: contact.map(|c| &c.attributes.0).unwrap_or(empty),
    };
    match build(plan, number, &view) {
        Ok(message) => Verdict::Send {
            seq: candidate.seq,
            recipient: number.digits().to_string(),
            country: number.country(),
            message,
        },
        Err(reason) => excluded(reason),
    }
}

/// What each sender of a pool can still do today.
pub(crate) async fn capacities(
    services: &Services,
    senders: &[String],
) -> Result<Vec<(String, SenderCapacity)>, CampaignError> {
    let mut out = Vec::with_capacity(senders.len());
    for id in senders {
        let Some(sender) = services.catalog.sender(id).await? else {
            continue;
        };
        let (counter, tier) = services.tier_counter(&sender);
        let limit = u64::try_from(tier.limit()).ok();
        let used = services.state.tier_usage(&counter).await?;
        out.push((
            id.clone(),
            SenderCapacity {
                mps: u32::try_from(sender.mps).unwrap_or(80),
                remaining: limit.map(|l| l.saturating_sub(used)),
                daily: limit,
            },
        ));
    }
    Ok(out)
}

pub(crate) async fn plan_of(services: &Services, c: &Campaign) -> Result<Plan, CampaignError> {
    let template = services
        .catalog
        .template(&c.template_name, &c.template_language)
        .await?
        .ok_or_else(|| {
            invalid(
                RefusalKind::Rejected,
                "unknown_template",
                "template.name",
                format!(
                    "template {} ({}) is not registered",
                    c.template_name, c.template_language
                ),
            )
        })?;
    let audience = Arc::new(Audience::parse(&c.audience.0)?);
    let mapping: VariableMap = serde_json::from_value(c.variables.0.clone()).map_err(|e| {
        invalid(
            RefusalKind::Invalid,
            "invalid_field",
            "variables",
            e.to_string(),
        )
    })?;
    let capacities = capacities(services, &c.senders).await?;
    // Even a full sender keeps a sliver of weight: its recipients wait for its window instead of
    // moving to another number.
    let pool = capacities
        .iter()
        .map(|(id, cap)| (id.clone(), campaign::capacity_weight(cap).max(1.0)))
        .collect();
    Ok(Plan {
        audience,
        category: c.category,
        template,
        mapping,
        capacities,
        pool,
    })
}
