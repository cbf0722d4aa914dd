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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{Services, Shutdown};
use crate::domain::campaign::{
    self, ContactView, Exclusion, QuietHours, SenderCapacity, VariableMap,
};
use crate::domain::decision::Consent;
use crate::domain::job::{JOB_VERSION, SendJob, TemplateRef};
use crate::domain::{Category, DeliveryMode, phone};
use crate::queue::QueueError;
use crate::state::{StateError, now_ms};
use crate::store::campaigns::{self as cstore, Campaign, Handoff, PlannedMessage, StateChange};
use crate::store::contacts::{self, ContactRow};
use crate::store::{StoreError, Template};

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// The caller's to fix: answered with a 4xx naming the field.
    #[error("{message}")]
    Invalid {
        status: u16,
        code: &'static str,
        field: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

pub(crate) fn invalid(
    status: u16,
    code: &'static str,
    field: &str,
    message: impl Into<String>,
) -> CampaignError {
    CampaignError::Invalid {
        status,
        code,
        field: field.into(),
        message: message.into(),
    }
}

// -- audiences ---------------------------------------------------------------------------------

/// Who a campaign goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Audience {
    /// Contacts with any (or all) of the tags, matching the attributes, in the list: each part
    /// optional, at least one given.
    Contacts {
        tags: Option<Vec<String>>,
        all_tags: bool,
        attributes: Option<Value>,
        list: Option<Uuid>,
    },
    /// Numbers given explicitly (contacts' attributes are used where they exist).
    Numbers(Vec<String>),
}

impl Audience {
    /// From the `audience` object of a campaign definition.
    pub fn parse(raw: &Value) -> Result<Audience, CampaignError> {
        let object = raw
            .as_object()
            .ok_or_else(|| invalid(400, "invalid_field", "audience", "audience is an object"))?;
        for key in object.keys() {
            if !matches!(
                key.as_str(),
                "tags" | "match" | "attributes" | "list_id" | "numbers"
            ) {
                return Err(invalid(
                    400,
                    "invalid_field",
                    &format!("audience.{key}"),
                    "audience takes tags, match, attributes, list_id or numbers",
                ));
            }
        }
        if let Some(numbers) = object.get("numbers") {
            if object.len() > 1 {
                return Err(invalid(
                    400,
                    "invalid_field",
                    "audience.numbers",
                    "explicit numbers cannot be combined with tags, attributes or a list",
                ));
            }
            let list = numbers
                .as_array()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| {
                    invalid(
                        400,
                        "invalid_field",
                        "audience.numbers",
                        "numbers is a non-empty array of phone numbers",
                    )
                })?;
            let mut out = Vec::with_capacity(list.len());
            for n in list {
                out.push(
                    n.as_str()
                        .ok_or_else(|| {
                            invalid(
                                400,
                                "invalid_field",
                                "audience.numbers",
                                "numbers are strings",
                            )
                        })?
                        .to_string(),
                );
            }
            return Ok(Audience::Numbers(out));
        }
        let tags = match object.get("tags") {
            None => None,
            Some(Value::Array(list)) if !list.is_empty() => Some(
                list.iter()
                    .map(|t| t.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        invalid(400, "invalid_field", "audience.tags", "tags are strings")
                    })?,
            ),
            Some(_) => {
                return Err(invalid(
                    400,
                    "invalid_field",
                    "audience.tags",
                    "tags is a non-empty array of strings",
                ));
            }
        };
        let all_tags = match object.get("match").and_then(Value::as_str) {
            None | Some("any") => false,
            Some("all") => true,
            Some(_) => {
                return Err(invalid(
                    400,
                    "invalid_field",
                    "audience.match",
                    "match is any or all",
                ));
            }
        };
        let attributes = match object.get("attributes") {
            None => None,
            Some(Value::Object(o)) if !o.is_empty() => Some(Value::Object(o.clone())),
            Some(_) => {
                return Err(invalid(
                    400,
                    "invalid_field",
                    "audience.attributes",
                    "attributes is an object of attribute: value to match",
                ));
            }
        };
        let list =
            match object.get("list_id") {
                None => None,
                Some(v) => Some(v.as_str().and_then(|s| s.parse::<Uuid>().ok()).ok_or_else(
                    || {
                        invalid(
                            400,
                            "invalid_field",
                            "audience.list_id",
                            "list_id is the id an import returned",
                        )
                    },
                )?),
            };
        if tags.is_none() && attributes.is_none() && list.is_none() {
            return Err(invalid(
                400,
                "missing_field",
                "audience",
                "the audience needs tags, attributes, a list_id or numbers",
            ));
        }
        Ok(Audience::Contacts {
            tags,
            all_tags,
            attributes,
            list,
        })
    }
}

/// One audience member as read, before it is checked: its position, what was given, and the
/// contact if there is one.
struct Candidate {
    seq: i64,
    input: String,
    contact: Option<ContactRow>,
}

/// The audience members after position `cursor`, at most `limit`, in position order.
async fn audience_page(
    services: &Services,
    audience: &Audience,
    cursor: i64,
    limit: i64,
) -> Result<Vec<Candidate>, StoreError> {
    match audience {
        Audience::Contacts {
            tags,
            all_tags,
            attributes,
            list,
        } => {
            let rows = contacts::audience_page(
                &services.pool,
                &contacts::AudienceFilter {
                    tags: tags.as_deref(),
                    all_tags: *all_tags,
                    attributes: attributes.as_ref(),
                    list: *list,
                },
                cursor,
                limit,
            )
            .await?;
            Ok(rows
                .into_iter()
                .map(|c| Candidate {
                    seq: c.id,
                    input: c.phone.clone(),
                    contact: Some(c),
                })
                .collect())
        }
        Audience::Numbers(numbers) => {
            let start = usize::try_from(cursor).unwrap_or(0).min(numbers.len());
            let end = (start + usize::try_from(limit).unwrap_or(0)).min(numbers.len());
            let slice = &numbers[start..end];
            let normalized: Vec<String> = slice
                .iter()
                .filter_map(|n| phone::normalize(n).ok())
                .map(|p| p.digits().to_string())
                .collect();
            let mut known: HashMap<String, ContactRow> =
                contacts::contacts_by_phone(&services.pool, &normalized)
                    .await?
                    .into_iter()
                    .map(|c| (c.phone.clone(), c))
                    .collect();
            Ok(slice
                .iter()
                .enumerate()
                .map(|(i, input)| Candidate {
                    seq: (start + i + 1) as i64,
                    input: input.clone(),
                    contact: phone::normalize(input)
                        .ok()
                        .and_then(|p| known.remove(p.digits())),
                })
                .collect())
        }
    }
}

/// Whether anyone at all is in the audience (a campaign to nobody is refused at creation).
async fn audience_is_empty(services: &Services, audience: &Audience) -> Result<bool, StoreError> {
    Ok(match audience {
        Audience::Numbers(numbers) => !numbers.iter().any(|n| phone::normalize(n).is_ok()),
        Audience::Contacts { .. } => audience_page(services, audience, 0, 1).await?.is_empty(),
    })
}

// -- checking recipients (shared by the estimate and planning) ---------------------------------

/// What planning needs to know about a campaign, read once.
struct Plan {
    audience: Audience,
    category: Category,
    template: Template,
    mapping: VariableMap,
    /// What each sender can still do today, read once.
    capacities: Vec<(String, SenderCapacity)>,
    /// Sender pool with weights (remaining tier capacity).
    pool: Vec<(String, f64)>,
}

/// The verdict on one audience member: a message to write, or why not.
enum Verdict {
    Send {
        seq: i64,
        recipient: String,
        country: &'static str,
        body: Value,
        sender: String,
    },
    Excluded {
        seq: i64,
        input: String,
        reason: Exclusion,
    },
}

impl Verdict {
    fn seq(&self) -> i64 {
        match self {
            Verdict::Send { seq, .. } | Verdict::Excluded { seq, .. } => *seq,
        }
    }
}

/// Checks a page of candidates: number, duplicates (explicit lists), consent and suppression (the
/// worker's own Redis copy), the US rule, and the variables.
async fn check_page(
    services: &Services,
    plan: &Plan,
    page: Vec<Candidate>,
    seen: &mut HashSet<String>,
) -> Result<Vec<Verdict>, StateError> {
    let mut verdicts = Vec::with_capacity(page.len());
    let mut valid: Vec<(Candidate, phone::PhoneNumber)> = Vec::with_capacity(page.len());
    // Contacts are unique by number (a unique index), so only an explicit list can repeat one;
    // tracking a contact audience would hold every recipient in memory (80 MB a million).
    let explicit = matches!(plan.audience, Audience::Numbers(_));
    for candidate in page {
        match phone::normalize(&candidate.input) {
            Err(_) => verdicts.push(Verdict::Excluded {
                seq: candidate.seq,
                input: candidate.input,
                reason: Exclusion::InvalidNumber,
            }),
            Ok(number) => {
                if explicit && !seen.insert(number.digits().to_string()) {
                    verdicts.push(Verdict::Excluded {
                        seq: candidate.seq,
                        input: candidate.input,
                        reason: Exclusion::Duplicate,
                    });
                } else {
                    valid.push((candidate, number));
                }
            }
        }
    }
    let recipients: Vec<&str> = valid.iter().map(|(_, n)| n.digits()).collect();
    let states = services.state.audience_states(&recipients).await?;
    let empty = json!({});
    for ((candidate, number), (consent, suppressed)) in valid.into_iter().zip(states) {
        let verdict = check_one(plan, &candidate, &number, &consent, suppressed, &empty);
        verdicts.push(verdict);
    }
    // In audience order, so the exclusion report reads like the list it came from.
    verdicts.sort_by_key(Verdict::seq);
    Ok(verdicts)
}

fn check_one(
    plan: &Plan,
    candidate: &Candidate,
    number: &phone::PhoneNumber,
    consent: &Consent,
    suppressed: bool,
    empty: &Value,
) -> Verdict {
    let excluded = |reason| Verdict::Excluded {
        seq: candidate.seq,
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
    let components =
        match campaign::render_components(&plan.template.parameters, &plan.mapping, &view) {
            Ok(c) => c,
            Err(_) => return excluded(Exclusion::MissingVariable),
        };
    let sender = campaign::pick_sender(number.digits(), &plan.pool)
        .unwrap_or_default()
        .to_string();
    Verdict::Send {
        seq: candidate.seq,
        recipient: number.digits().to_string(),
        country: number.country(),
        body: campaign::message_body(
            number.digits(),
            &plan.template.name,
            &plan.template.language,
            components,
        ),
        sender,
    }
}

/// What each sender of a pool can still do today.
async fn capacities(
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

async fn plan_of(services: &Services, c: &Campaign) -> Result<Plan, CampaignError> {
    let template = services
        .catalog
        .template(&c.template_name, &c.template_language)
        .await?
        .ok_or_else(|| {
            invalid(
                422,
                "unknown_template",
                "template.name",
                format!(
                    "template {} ({}) is not registered",
                    c.template_name, c.template_language
                ),
            )
        })?;
    let audience = Audience::parse(&c.audience.0)?;
    let mapping: VariableMap = serde_json::from_value(c.variables.0.clone())
        .map_err(|e| invalid(400, "invalid_field", "variables", e.to_string()))?;
    let capacities = capacities(services, &c.senders).await?;
    // Even a full sender keeps a sliver of weight: its recipients wait for its window instead of
    // moving to another number.
    let pool = capacities
        .iter()
        .map(|(id, cap)| (id.clone(), campaign::capacity_weight(cap).max(1.0)))
        .collect();
    Ok(Plan {
        audience,
        category: Category::parse(&c.category).unwrap_or(Category::Marketing),
        template,
        mapping,
        capacities,
        pool,
    })
}

// -- estimate ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub audience: u64,
    pub eligible: u64,
    pub excluded: BTreeMap<&'static str, u64>,
    pub cost: CostEstimate,
    pub eta_seconds: u64,
    pub senders: Vec<SenderEstimate>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostEstimate {
    pub currency: String,
    pub rate_card_valid_from: String,
    pub total: f64,
    /// country → (recipients, cost)
    pub by_country: BTreeMap<String, CountryCost>,
    /// Recipients in countries the rate card has no price for.
    pub unpriced: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CountryCost {
    pub recipients: u64,
    pub price: Option<f64>,
    pub cost: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SenderEstimate {
    pub phone_number_id: String,
    pub mps: u32,
    pub remaining_today: Option<u64>,
    pub daily_limit: Option<u64>,
}

/// Walks the whole audience with the same checks planning uses, writing nothing.
pub async fn estimate(services: &Services, c: &Campaign) -> Result<Estimate, CampaignError> {
    let plan = plan_of(services, c).await?;
    let chunk = i64::from(services.config.campaign_chunk);
    let mut cursor = 0;
    let mut seen = HashSet::new();
    let mut excluded: BTreeMap<&'static str, u64> =
        Exclusion::ALL.iter().map(|e| (e.code(), 0)).collect();
    let mut by_country: BTreeMap<String, u64> = BTreeMap::new();
    let (mut total, mut eligible) = (0u64, 0u64);
    loop {
        let page = audience_page(services, &plan.audience, cursor, chunk).await?;
        let Some(last) = page.last().map(|c| c.seq) else {
            break;
        };
        let full = page.len() as i64 == chunk;
        total += page.len() as u64;
        for verdict in check_page(services, &plan, page, &mut seen).await? {
            match verdict {
                Verdict::Send { country, .. } => {
                    eligible += 1;
                    *by_country.entry(country.to_string()).or_default() += 1;
                }
                Verdict::Excluded { reason, .. } => {
                    *excluded.entry(reason.code()).or_default() += 1
                }
            }
        }
        cursor = last;
        if !full {
            break;
        }
    }
    let card = &services.derived.rate_card;
    let mut cost = CostEstimate {
        currency: card.currency.clone(),
        rate_card_valid_from: card.valid_from.clone(),
        total: 0.0,
        by_country: BTreeMap::new(),
        unpriced: 0,
    };
    for (country, recipients) in by_country {
        let price = card.price(&country, plan.category);
        let amount = price.map_or(0.0, |p| p * recipients as f64);
        if price.is_none() {
            cost.unpriced += recipients;
        }
        cost.total += amount;
        cost.by_country.insert(
            country,
            CountryCost {
                recipients,
                price,
                cost: (amount * 10_000.0).round() / 10_000.0,
            },
        );
    }
    cost.total = (cost.total * 10_000.0).round() / 10_000.0;
    let caps: Vec<SenderCapacity> = plan.capacities.iter().map(|(_, c)| *c).collect();
    let eta = campaign::eta(
        eligible,
        &caps,
        c.rate_cap.and_then(|r| u32::try_from(r).ok()),
    );
    Ok(Estimate {
        audience: total,
        eligible,
        excluded,
        cost,
        eta_seconds: eta.as_secs(),
        senders: plan
            .capacities
            .into_iter()
            .map(|(id, c)| SenderEstimate {
                phone_number_id: id,
                mps: c.mps,
                remaining_today: c.remaining,
                daily_limit: c.daily,
            })
            .collect(),
    })
}

// -- creation ------------------------------------------------------------------------------------

/// A campaign definition as the API receives it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    pub template: TemplateChoice,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub sender: Option<String>,
    #[serde(default)]
    pub senders: Option<Vec<String>>,
    pub audience: Value,
    #[serde(default)]
    pub variables: Option<Value>,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    #[serde(default)]
    pub rate_cap: Option<i64>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateChoice {
    pub name: String,
    pub language: String,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default)]
    pub start_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub end_by: Option<DateTime<Utc>>,
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursBody>,
}

#[derive(Debug, Clone, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursBody {
    pub start: String,
    pub end: String,
}

/// Checks a definition against the registry and stores it as a draft.
pub async fn create(
    services: &Services,
    d: Definition,
    allowed_sender: impl Fn(&str) -> bool,
    api_key_id: Option<Uuid>,
) -> Result<Campaign, CampaignError> {
    if d.name.trim().is_empty() {
        return Err(invalid(400, "missing_field", "name", "name is required"));
    }
    let template = services
        .catalog
        .template(&d.template.name, &d.template.language)
        .await?
        .ok_or_else(|| {
            invalid(
                422,
                "unknown_template",
                "template.name",
                format!(
                    "template {} ({}) is not registered; run pregon templates sync",
                    d.template.name, d.template.language
                ),
            )
        })?;
    if template.status != "APPROVED" {
        return Err(invalid(
            422,
            "template_not_approved",
            "template.name",
            format!("template {} is {}", template.name, template.status),
        ));
    }
    if let Some(category) = &d.category
        && !category.eq_ignore_ascii_case(&template.category)
    {
        return Err(invalid(
            422,
            "category_mismatch",
            "category",
            format!(
                "template {} is {}, not {category}",
                template.name, template.category
            ),
        ));
    }
    let senders: Vec<String> = match (&d.sender, &d.senders) {
        (Some(one), None) => vec![one.clone()],
        (None, Some(pool)) if !pool.is_empty() => {
            let mut unique = pool.clone();
            unique.sort();
            unique.dedup();
            unique
        }
        _ => {
            return Err(invalid(
                400,
                "invalid_field",
                "senders",
                "give sender (one phone_number_id) or senders (a non-empty pool)",
            ));
        }
    };
    for id in &senders {
        if services.catalog.sender(id).await?.is_none() {
            return Err(invalid(
                422,
                "unknown_sender",
                "senders",
                format!("no sender {id}"),
            ));
        }
        if !allowed_sender(id) {
            return Err(invalid(
                403,
                "forbidden",
                "senders",
                format!("this key may not use sender {id}"),
            ));
        }
    }
    let audience = Audience::parse(&d.audience)?;
    if let Audience::Contacts {
        list: Some(list), ..
    } = &audience
        && !contacts::list_exists(&services.pool, *list).await?
    {
        return Err(invalid(
            422,
            "unknown_list",
            "audience.list_id",
            format!("no list {list}"),
        ));
    }
    let variables = d.variables.clone().unwrap_or_else(|| json!({}));
    let mapping: VariableMap = serde_json::from_value(variables.clone())
        .map_err(|e| invalid(400, "invalid_field", "variables", e.to_string()))?;
    campaign::validate_mapping(&template.parameters, &mapping)
        .map_err(|e| invalid(422, "variables_mismatch", "variables", e.to_string()))?;
    let schedule = d.schedule.clone().unwrap_or_default();
    let now = Utc::now();
    if let Some(start) = schedule.start_at
        && start < now - chrono::Duration::seconds(60)
    {
        return Err(invalid(
            422,
            "schedule_in_past",
            "schedule.start_at",
            "start_at is in the past",
        ));
    }
    if let Some(end) = schedule.end_by
        && (end <= now || schedule.start_at.is_some_and(|s| end <= s))
    {
        return Err(invalid(
            422,
            "schedule_in_past",
            "schedule.end_by",
            "end_by must be in the future and after start_at",
        ));
    }
    if let Some(q) = &schedule.quiet_hours {
        QuietHours::parse(&q.start, &q.end)
            .map_err(|e| invalid(400, "invalid_field", "schedule.quiet_hours", e))?;
    }
    let rate_cap = match d.rate_cap {
        None => None,
        Some(r) if (1..=100_000).contains(&r) => Some(r as i32),
        Some(_) => {
            return Err(invalid(
                400,
                "invalid_field",
                "rate_cap",
                "rate_cap is messages per second, 1 or more",
            ));
        }
    };
    if audience_is_empty(services, &audience).await? {
        return Err(invalid(
            422,
            "empty_audience",
            "audience",
            "the audience resolves to nobody",
        ));
    }
    let c = Campaign {
        id: Uuid::now_v7(),
        name: d.name.trim().to_string(),
        template_name: template.name.clone(),
        template_language: template.language.clone(),
        category: template.category.clone(),
        senders,
        audience: sqlx::types::Json(d.audience),
        variables: sqlx::types::Json(variables),
        start_at: schedule.start_at,
        quiet_hours: schedule
            .quiet_hours
            .map(|q| sqlx::types::Json(json!({"start": q.start, "end": q.end}))),
        end_by: schedule.end_by,
        rate_cap,
        state: "draft".into(),
        paused_by: None,
        pause_causes: Vec::new(),
        planned: false,
        plan_cursor: 0,
        recipients: 0,
        fanout_claimed: 0,
        fanout_cursor: 0,
        api_key_id,
        lease_owner: None,
        created_at: now,
        launched_at: None,
        finished_at: None,
        updated_at: now,
    };
    cstore::insert_campaign(&services.pool, &c).await?;
    Ok(c)
}

// -- operator actions ----------------------------------------------------------------------------

/// Launch, pause, resume or cancel, recorded with the actor; the worker sees the new state in
/// Redis before this returns.
pub async fn act(
    services: &Services,
    id: Uuid,
    action: campaign::Action,
    actor: &str,
) -> Result<Campaign, CampaignError> {
    let current = cstore::get_campaign(&services.pool, id)
        .await?
        .ok_or_else(|| invalid(404, "unknown_campaign", "id", format!("no campaign {id}")))?;
    let to = campaign::transition(&current.state, action)
        .map_err(|e| invalid(409, "invalid_state", "state", e))?;
    let (to, event) = match action {
        campaign::Action::Launch => {
            if current.start_at.is_some_and(|s| s > Utc::now()) {
                ("scheduled", "launched")
            } else {
                (to, "launched")
            }
        }
        campaign::Action::Pause => (to, "paused"),
        campaign::Action::Resume => (to, "resumed"),
        campaign::Action::Cancel => (to, "cancelled"),
    };
    let from: &[&str] = &[current.state.as_str()];
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
            409,
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
        cstore::cancel_planned(&services.pool, id, "campaign_cancelled").await?;
    }
    Ok(changed)
}

#[derive(Debug, Clone, Serialize)]
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
    let c = cstore::get_campaign(&services.pool, id)
        .await?
        .ok_or_else(|| invalid(404, "unknown_campaign", "id", format!("no campaign {id}")))?;
    if !matches!(c.state.as_str(), "running" | "paused" | "completed") {
        return Err(invalid(
            409,
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
            if crate::domain::errors::worth_retrying(f.last_error_code, f.status_reason.as_deref())
            {
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
    if outcome.requeued > 0 && c.state == "completed" {
        cstore::change_state(
            &services.pool,
            id,
            &StateChange {
                from: &["completed"],
                to: "running",
                paused_by: None,
                causes: &[],
                event: "retry_failed",
                actor,
            },
        )
        .await?;
        services.state.mirror_campaign(id, "running").await?;
    }
    Ok(outcome)
}

// -- the runner ------------------------------------------------------------------------------

/// How often a runner refreshes the longest-pause gauge (the "paused too long" alert reads it).
const PAUSE_GAUGE_EVERY: Duration = Duration::from_secs(10);

/// Runs campaigns in a worker process until shutdown.
pub fn spawn_runner(services: &Services, stop: &Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(services.clone(), stop.clone()))
}

async fn run(services: Services, mut stop: Shutdown) {
    let owner = crate::worker::worker_id();
    let mut tasks: HashMap<Uuid, tokio::task::JoinHandle<()>> = HashMap::new();
    let poll = services.config.campaign_poll.0;
    let ttl = services.config.lease_ttl.0;
    let mut pause_checked: Option<std::time::Instant> = None;
    loop {
        if pause_checked.is_none_or(|t| t.elapsed() >= PAUSE_GAUGE_EVERY) {
            pause_checked = Some(std::time::Instant::now());
            match cstore::longest_pause_seconds(&services.pool).await {
                Ok(s) => services.metrics.campaign_longest_pause_seconds.set(s),
                Err(e) => tracing::warn!(error = %e, "could not read campaign pauses"),
            }
        }
        match cstore::claim_runnable(&services.pool, &owner, ttl).await {
            Ok(ids) => {
                tasks.retain(|_, t| !t.is_finished());
                for id in ids {
                    tasks.entry(id).or_insert_with(|| {
                        tokio::spawn(run_campaign(
                            services.clone(),
                            id,
                            owner.clone(),
                            stop.clone(),
                        ))
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not claim campaigns"),
        }
        tokio::select! {
            _ = stop.wait() => break,
            _ = tokio::time::sleep(poll) => {}
        }
    }
    for (_, task) in tasks {
        let _ = task.await;
    }
}

/// What a runner step asks for next.
enum Next {
    /// More to do now.
    Continue,
    /// Nothing to do until the next poll.
    Wait,
    /// The campaign no longer needs this runner.
    Done,
}

struct Runner {
    services: Services,
    plan: Option<Plan>,
    seen: HashSet<String>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

async fn run_campaign(services: Services, id: Uuid, owner: String, stop: Shutdown) {
    let poll = services.config.campaign_poll.0;
    let mut runner = Runner {
        services: services.clone(),
        plan: None,
        seen: HashSet::new(),
        limiter: None,
    };
    tracing::info!(campaign = %id, "running campaign");
    while !stop.is_triggered() {
        let c = match cstore::get_campaign(&services.pool, id).await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(campaign = %id, error = %e, "could not read the campaign");
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        if c.lease_owner.as_deref() != Some(owner.as_str()) {
            // Our lease lapsed and another process took the campaign over.
            break;
        }
        match runner.step(&c).await {
            Ok(Next::Continue) => tokio::task::yield_now().await,
            Ok(Next::Wait) => tokio::time::sleep(poll).await,
            Ok(Next::Done) => break,
            Err(e) => {
                tracing::warn!(campaign = %id, error = %e, "campaign step failed; trying again");
                tokio::time::sleep(poll).await;
            }
        }
    }
    let _ = cstore::release_lease(&services.pool, id, &owner).await;
}

impl Runner {
    async fn step(&mut self, c: &Campaign) -> Result<Next, CampaignError> {
        let services = &self.services;
        services.state.mirror_campaign(c.id, &c.state).await?;
        match c.state.as_str() {
            "scheduled" => {
                if c.start_at.is_some_and(|s| s > Utc::now()) {
                    return Ok(Next::Wait);
                }
                self.change(c, "scheduled", "running", None, &[], "started")
                    .await?;
                Ok(Next::Continue)
            }
            "paused" if c.paused_by.as_deref() == Some("auto") => {
                let causes = health_causes(services, c).await?;
                if causes.is_empty() {
                    self.change(c, "paused", "running", None, &[], "auto_resumed")
                        .await?;
                    return Ok(Next::Continue);
                }
                Ok(Next::Wait)
            }
            "running" => {
                if c.end_by.is_some_and(|e| e <= Utc::now()) {
                    cstore::cancel_planned(&services.pool, c.id, "campaign_end_by").await?;
                    self.change(c, "running", "completed", None, &[], "ended_by_deadline")
                        .await?;
                    return Ok(Next::Done);
                }
                let causes = health_causes(services, c).await?;
                if !causes.is_empty() {
                    tracing::warn!(campaign = %c.id, ?causes, "pausing the campaign");
                    self.change(c, "running", "paused", Some("auto"), &causes, "auto_paused")
                        .await?;
                    return Ok(Next::Wait);
                }
                if !c.planned {
                    // Sending starts with the first planned chunk rather than after the whole
                    // audience: each planning step also hands over what is ready.
                    let planning = self.plan_step(c).await?;
                    self.hand_over(c).await?;
                    return Ok(planning);
                }
                self.hand_over(c).await
            }
            _ => Ok(Next::Done),
        }
    }

    async fn change(
        &self,
        c: &Campaign,
        from: &str,
        to: &str,
        paused_by: Option<&str>,
        causes: &[String],
        event: &str,
    ) -> Result<(), CampaignError> {
        let services = &self.services;
        let changed = cstore::change_state(
            &services.pool,
            c.id,
            &StateChange {
                from: &[from],
                to,
                paused_by,
                causes,
                event,
                actor: "pregon",
            },
        )
        .await?;
        if changed.is_some() {
            services.state.mirror_campaign(c.id, to).await?;
            let cause = causes
                .first()
                .map(|c| c.split(':').next().unwrap_or(c))
                .unwrap_or("");
            services
                .metrics
                .campaign_transitions
                .with_label_values(&[event, if cause.is_empty() { "pregon" } else { cause }])
                .inc();
        }
        Ok(())
    }

    /// Plans one chunk of the audience.
    async fn plan_step(&mut self, c: &Campaign) -> Result<Next, CampaignError> {
        let services = &self.services;
        if self.plan.is_none() {
            let plan = plan_of(services, c).await?;
            if let Audience::Numbers(numbers) = &plan.audience {
                // Duplicates of an explicit list are found against everything planned before a
                // restart, too.
                let through = usize::try_from(c.plan_cursor)
                    .unwrap_or(0)
                    .min(numbers.len());
                self.seen = numbers[..through]
                    .iter()
                    .filter_map(|n| phone::normalize(n).ok())
                    .map(|p| p.digits().to_string())
                    .collect();
            }
            self.plan = Some(plan);
        }
        let Some(plan) = &self.plan else {
            return Ok(Next::Wait);
        };
        let chunk = i64::from(services.config.campaign_chunk);
        let page = audience_page(services, &plan.audience, c.plan_cursor, chunk).await?;
        let done = (page.len() as i64) < chunk;
        let cursor = page.last().map_or(c.plan_cursor, |p| p.seq);
        let verdicts = check_page(services, plan, page, &mut self.seen).await?;
        let mut messages = Vec::with_capacity(verdicts.len());
        let mut exclusions = Vec::new();
        for v in verdicts {
            match v {
                Verdict::Send {
                    seq,
                    recipient,
                    body,
                    sender,
                    ..
                } => messages.push(PlannedMessage {
                    id: Uuid::now_v7(),
                    seq,
                    sender,
                    recipient,
                    body: body.to_string(),
                }),
                Verdict::Excluded { input, reason, .. } => exclusions.push((input, reason.code())),
            }
        }
        let written =
            cstore::plan_chunk(&services.pool, c, &messages, &exclusions, cursor, done).await?;
        services.metrics.campaign_planned.inc_by(written);
        if done {
            tracing::info!(campaign = %c.id, recipients = c.recipients + written as i64, "campaign planned");
        }
        Ok(Next::Continue)
    }

    /// Hands the next planned messages to RabbitMQ, keeping at most `campaign_window` queued.
    async fn hand_over(&mut self, c: &Campaign) -> Result<Next, CampaignError> {
        let services = self.services.clone();
        let services = &services;
        if c.fanout_claimed > c.fanout_cursor {
            // A crash between marking and confirming: publish that stretch again (same ids).
            let rows =
                cstore::handed_between(&services.pool, c.id, c.fanout_cursor, c.fanout_claimed)
                    .await?;
            tracing::info!(campaign = %c.id, rows = rows.len(), "republishing after an interrupted hand-over");
            self.publish(c, &rows).await?;
            cstore::set_fanout_cursor(&services.pool, c.id, c.fanout_claimed).await?;
            return Ok(Next::Continue);
        }
        let counts = count_map(&cstore::counts(&services.pool, c.id).await?);
        let queued = counts.get("queued").copied().unwrap_or(0);
        let room = i64::from(services.config.campaign_window) - queued;
        if room <= 0 {
            return Ok(Next::Wait);
        }
        let mut wanted = room.min(i64::from(services.config.campaign_chunk));
        if let Some(cap) = c.rate_cap {
            wanted = wanted.min(self.rate_allowance(cap, wanted as u32) as i64);
            if wanted == 0 {
                return Ok(Next::Wait);
            }
        }
        let rows = cstore::planned_after(&services.pool, c.id, c.fanout_cursor, wanted).await?;
        let Some(last) = rows.last().map(|r| r.campaign_seq) else {
            if cstore::rewind(&services.pool, c.id).await?.is_some() {
                return Ok(Next::Continue);
            }
            let open = ["planned", "queued", "deferred"]
                .iter()
                .map(|s| counts.get(*s).copied().unwrap_or(0))
                .sum::<i64>();
            if open == 0 && c.planned {
                self.change(c, "running", "completed", None, &[], "completed")
                    .await?;
                tracing::info!(campaign = %c.id, "campaign completed");
                return Ok(Next::Done);
            }
            return Ok(Next::Wait);
        };
        let quiet = c
            .quiet_hours
            .as_ref()
            .and_then(|q| {
                Some((
                    q.0.get("start")?.as_str()?.to_string(),
                    q.0.get("end")?.as_str()?.to_string(),
                ))
            })
            .and_then(|(s, e)| QuietHours::parse(&s, &e).ok());
        let now = Utc::now();
        // The same `now` for every row: recipients with one UTC offset share one `not_before`.
        let rows: Vec<Handoff> = rows
            .into_iter()
            .map(|mut r| {
                r.not_before = quiet.and_then(|q| {
                    let country = phone::normalize(&r.recipient)
                        .map(|p| p.country())
                        .unwrap_or("");
                    let wait = q.wait(now, campaign::utc_offset_minutes(country));
                    (!wait.is_zero())
                        .then(|| now + chrono::Duration::from_std(wait).unwrap_or_default())
                });
                r
            })
            .collect();
        let mut groups: BTreeMap<Option<DateTime<Utc>>, Vec<Uuid>> = BTreeMap::new();
        for r in &rows {
            groups.entry(r.not_before).or_default().push(r.id);
        }
        let groups: Vec<(Option<DateTime<Utc>>, Vec<Uuid>)> = groups.into_iter().collect();
        cstore::mark_handed(&services.pool, c.id, &groups, c.fanout_cursor, last).await?;
        self.publish(c, &rows).await?;
        cstore::set_fanout_cursor(&services.pool, c.id, last).await?;
        Ok(Next::Continue)
    }

    /// How many of `wanted` the campaign's rate cap allows now.
    fn rate_allowance(&mut self, cap: i32, wanted: u32) -> u32 {
        let cap = NonZeroU32::new(u32::try_from(cap).unwrap_or(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = self
            .limiter
            .get_or_insert_with(|| Arc::new(RateLimiter::direct(Quota::per_second(cap))));
        let mut n = wanted.min(cap.get());
        while n > 0 {
            match NonZeroU32::new(n).map(|n| limiter.check_n(n)) {
                Some(Ok(Ok(()))) => return n,
                _ => n /= 2,
            }
        }
        0
    }

    async fn publish(&self, c: &Campaign, rows: &[Handoff]) -> Result<(), CampaignError> {
        let services = &self.services;
        let category = Category::parse(&c.category).unwrap_or(Category::Marketing);
        let exchange = services.names.send_exchange();
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let Ok(body) = RawValue::from_string(r.body.clone()) else {
                tracing::error!(id = %r.id, "stored body is not JSON; skipping");
                continue;
            };
            let job = SendJob {
                v: JOB_VERSION,
                id: r.id,
                sender: r.sender.clone(),
                recipient: r.recipient.clone(),
                category,
                template: Some(TemplateRef {
                    name: c.template_name.clone(),
                    language: c.template_language.clone(),
                }),
                free_form: false,
                delivery: DeliveryMode::AtMostOnce,
                attempt: u32::try_from(r.attempts).unwrap_or(0),
                throttles: 0,
                deferrals: 0,
                enqueued_at_ms: now_ms(),
                not_before_ms: r.not_before.map_or(0, |t| t.timestamp_millis()),
                campaign: Some(c.id),
                body,
            };
            let key = services.names.lane_key(&job.sender, job.lane());
            let wait = job.not_before_ms - now_ms();
            let exchange = if wait > 500 {
                // Quiet hours: park it in the delay queue closest to the wait.
                let step = crate::domain::retry::delay_step(
                    &services.derived.delay_steps,
                    Duration::from_millis(u64::try_from(wait).unwrap_or(0)),
                );
                services.names.delay(step)
            } else {
                exchange.clone()
            };
            items.push((exchange, key, job.encode()));
        }
        let results = services.publisher.publish_many(&items).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        services
            .metrics
            .campaign_handed
            .inc_by((results.len() - failed) as u64);
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            return Err(e.into());
        }
        Ok(())
    }
}

/// Why a running campaign must stop now: its senders' or template's health, as the worker sees it.
async fn health_causes(services: &Services, c: &Campaign) -> Result<Vec<String>, CampaignError> {
    let marketing = c.category == "marketing";
    let mut causes = Vec::new();
    let healths = services.state.sender_health(&c.senders).await?;
    for (id, h) in c.senders.iter().zip(healths) {
        if !h.status.is_empty() && h.status != "CONNECTED" {
            causes.push(format!("sender_not_connected:{id}"));
        }
        if h.paused {
            causes.push(format!("sender_paused:{id}"));
        }
        if marketing && h.quality == "RED" {
            causes.push(format!("sender_quality_red:{id}"));
        }
        if marketing && h.marketing_held {
            causes.push(format!("spam_rate_limit:{id}"));
        }
    }
    if services
        .state
        .template_status(&c.template_name, &c.template_language)
        .await?
        .as_deref()
        == Some("PAUSED")
    {
        causes.push("template_paused".into());
    }
    Ok(causes)
}

fn count_map(rows: &[(String, String, i64)]) -> HashMap<String, i64> {
    let mut map = HashMap::new();
    for (status, _, n) in rows {
        *map.entry(status.clone()).or_default() += n;
    }
    map
}

// -- progress ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub campaign: Campaign,
    pub counts: BTreeMap<String, Value>,
    pub total: i64,
    pub done: i64,
    pub rate_per_second: Option<f64>,
    pub eta_seconds: Option<u64>,
    pub events: Vec<cstore::CampaignEvent>,
}

/// Counts by state (deferred, failed, skipped, cancelled and excluded broken down by reason or
/// code), the recent rate and what remains.
pub async fn progress(
    services: &Services,
    id: Uuid,
    rates: &RateTracker,
) -> Result<Option<Progress>, CampaignError> {
    let Some(c) = cstore::get_campaign(&services.pool, id).await? else {
        return Ok(None);
    };
    let rows = cstore::counts(&services.pool, id).await?;
    let totals = count_map(&rows);
    let mut counts: BTreeMap<String, Value> = BTreeMap::new();
    for (status, detail, n) in &rows {
        if matches!(
            status.as_str(),
            "deferred" | "failed" | "skipped" | "cancelled" | "excluded"
        ) {
            let entry = counts
                .entry(status.clone())
                .or_insert_with(|| json!({"total": 0, "by_reason": {}}));
            entry["by_reason"][if detail.is_empty() {
                "unknown"
            } else {
                detail.as_str()
            }] = json!(n);
        }
    }
    for (status, n) in &totals {
        match counts.get_mut(status) {
            Some(entry) => entry["total"] = json!(n),
            None => {
                counts.insert(status.clone(), json!(n));
            }
        }
    }
    let get = |s: &str| totals.get(s).copied().unwrap_or(0);
    // Messages (not exclusions); delivered and read have been sent.
    let total = [
        "planned",
        "queued",
        "deferred",
        "sent",
        "delivered",
        "read",
        "failed",
        "skipped",
        "cancelled",
    ]
    .iter()
    .map(|s| get(s))
    .sum::<i64>();
    let done = total - get("planned") - get("queued") - get("deferred");
    let rate = rates.observe(id, done);
    let remaining = total - done;
    // While the audience is still being planned the total is what is planned so far: no ETA.
    let eta = match rate {
        _ if !c.planned && c.state == "running" => None,
        Some(r) if r > 0.0 => Some((remaining as f64 / r).ceil() as u64),
        _ if remaining == 0 => Some(0),
        _ => None,
    };
    let events = cstore::campaign_events(&services.pool, id).await?;
    Ok(Some(Progress {
        campaign: c,
        counts,
        total,
        done,
        rate_per_second: rate,
        eta_seconds: eta,
        events,
    }))
}

/// Recent completion rate per campaign, from the progress reads themselves (each API process keeps
/// its own samples: a read costs no extra query).
/// Progress samples per campaign: when, and how many were done.
type Samples = HashMap<Uuid, std::collections::VecDeque<(std::time::Instant, i64)>>;

#[derive(Clone, Default)]
pub struct RateTracker {
    samples: Arc<std::sync::Mutex<Samples>>,
}

impl RateTracker {
    const WINDOW: Duration = Duration::from_secs(10);

    fn observe(&self, id: Uuid, done: i64) -> Option<f64> {
        let now = std::time::Instant::now();
        let mut all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let samples = all.entry(id).or_default();
        samples.push_back((now, done));
        while samples.len() > 2
            && samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > Self::WINDOW)
        {
            samples.pop_front();
        }
        let (t0, d0) = *samples.front()?;
        let elapsed = now.duration_since(t0).as_secs_f64();
        (elapsed >= 0.5).then(|| ((done - d0).max(0) as f64 / elapsed * 10.0).round() / 10.0)
    }
}
