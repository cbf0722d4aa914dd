//! A campaign's definition as marketing writes it, checked field by field (every refusal names
//! its field and writes nothing), and its creation.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::Services;
use crate::domain::campaign::{self, QuietHours, VariableMap};
use crate::store::campaigns::{self as cstore, Campaign};
use crate::store::contacts::{self};

use super::*;

// -- creation ------------------------------------------------------------------------------------

/// A campaign definition as the API receives it.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
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
    #[schemars(schema_with = "super::audience::Audience::schema")]
    pub audience: Value,
    #[serde(default)]
    pub variables: Option<Value>,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    #[serde(default)]
    pub rate_cap: Option<i64>,
}

#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateChoice {
    pub name: String,
    pub language: String,
}

#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default)]
    pub start_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub end_by: Option<DateTime<Utc>>,
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursBody>,
}

#[derive(Debug, Clone, serde::Deserialize, Serialize, schemars::JsonSchema)]
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
    created_by: &str,
) -> Result<Campaign, CampaignError> {
    if d.name.trim().is_empty() {
        return Err(invalid(
            RefusalKind::Invalid,
            "missing_field",
            "name",
            "name is required",
        ));
    }
    let template = services
        .catalog
        .template(&d.template.name, &d.template.language)
        .await?
        .ok_or_else(|| {
            invalid(
                RefusalKind::Rejected,
                "unknown_template",
                "template.name",
                format!(
                    "template {} ({}) is not registered; run pregon templates sync",
                    d.template.name, d.template.language
                ),
            )
        })?;
    if template.status != TemplateStatus::Approved {
        return Err(invalid(
            RefusalKind::Rejected,
            "template_not_approved",
            "template.name",
            format!("template {} is {}", template.name, template.status),
        ));
    }
    if let Some(category) = &d.category
        && Category::parse(category) != Some(template.category)
    {
        return Err(invalid(
            RefusalKind::Rejected,
            "category_mismatch",
            "category",
            format!(
                "template {} is {}, not {category}",
                template.name,
                template.category.as_str()
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
                RefusalKind::Invalid,
                "invalid_field",
                "senders",
                "give sender (one phone_number_id) or senders (a non-empty pool)",
            ));
        }
    };
    for id in &senders {
        if services.catalog.sender(id).await?.is_none() {
            return Err(invalid(
                RefusalKind::Rejected,
                "unknown_sender",
                "senders",
                format!("no sender {id}"),
            ));
        }
        if !allowed_sender(id) {
            return Err(invalid(
                RefusalKind::Forbidden,
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
            RefusalKind::Rejected,
            "unknown_list",
            "audience.list_id",
            format!("no list {list}"),
        ));
    }
    let variables = d.variables.clone().unwrap_or_else(|| json!({}));
    let mapping: VariableMap = serde_json::from_value(variables.clone()).map_err(|e| {
        invalid(
            RefusalKind::Invalid,
            "invalid_field",
            "variables",
            e.to_string(),
        )
    })?;
    campaign::validate_mapping(&template.parameters, &mapping).map_err(|e| {
        invalid(
            RefusalKind::Rejected,
            "variables_mismatch",
            "variables",
            e.to_string(),
        )
    })?;
    let schedule = d.schedule.clone().unwrap_or_default();
    let now = Utc::now();
    if let Some(start) = schedule.start_at
        && start < now - chrono::Duration::seconds(60)
    {
        return Err(invalid(
            RefusalKind::Rejected,
            "schedule_in_past",
            "schedule.start_at",
            "start_at is in the past",
        ));
    }
    if let Some(end) = schedule.end_by
        && (end <= now || schedule.start_at.is_some_and(|s| end <= s))
    {
        return Err(invalid(
            RefusalKind::Rejected,
            "schedule_in_past",
            "schedule.end_by",
            "end_by must be in the future and after start_at",
        ));
    }
    if let Some(q) = &schedule.quiet_hours {
        QuietHours::parse(&q.start, &q.end).map_err(|e| {
            invalid(
                RefusalKind::Invalid,
                "invalid_field",
                "schedule.quiet_hours",
                e,
            )
        })?;
    }
    let rate_cap = match d.rate_cap {
        None => None,
        Some(r) if (1..=100_000).contains(&r) => Some(r as i32),
        Some(_) => {
            return Err(invalid(
                RefusalKind::Invalid,
                "invalid_field",
                "rate_cap",
                "rate_cap is messages per second, 1 or more",
            ));
        }
    };
    if audience_is_empty(services, &audience).await? {
        return Err(invalid(
            RefusalKind::Rejected,
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
        category: template.category,
        senders,
        audience: sqlx::types::Json(d.audience),
        variables: sqlx::types::Json(variables),
        start_at: schedule.start_at,
        quiet_hours: schedule
            .quiet_hours
            .map(|q| sqlx::types::Json(json!({"start": q.start, "end": q.end}))),
        end_by: schedule.end_by,
        rate_cap,
        state: CampaignState::Draft,
        paused_by: None,
        pause_causes: Vec::new(),
        planned: false,
        plan_cursor: 0,
        recipients: 0,
        fanout_claimed: 0,
        fanout_cursor: 0,
        api_key_id,
        created_by: Some(created_by.to_string()),
        lease_owner: None,
        created_at: now,
        launched_at: None,
        finished_at: None,
        updated_at: now,
    };
    cstore::insert_campaign(&services.pool, &c).await?;
    Ok(c)
}
