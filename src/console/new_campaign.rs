//! A new campaign, step by step: the audience and the template, then the template's variables
//! with a preview rendered like a WhatsApp bubble for a sample contact, the senders and the
//! schedule. Creating it goes through the API's own use case (`campaigns::create`, the same
//! checks); the draft's page then shows the estimate and the launch.

use std::collections::BTreeMap;

use axum::extract::{Query, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{NaiveDateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::i18n::Text;
use super::page::{self, Shown, csrf};
use super::session::{Posted, Signed};
use crate::api::ApiState;
use crate::api::auth::Permission;
use crate::api::error::ApiError;
use crate::campaigns::{self, Definition};
use crate::domain::campaign::{self as rules, VariableMap, VariableSource};
use crate::domain::decision::TemplateStatus;
use crate::store::{self, contacts::AudienceContact};

/// Contact fields every contact has, offered for a variable before its attributes.
const CONTACT_FIELDS: [&str; 4] = ["name", "phone", "country", "language"];

#[derive(Deserialize)]
pub struct StartQuery {
    list_id: Option<String>,
}

/// Step 1: the name, who receives it, and which template.
pub async fn start(
    State(state): State<ApiState>,
    signed: Signed,
    Query(query): Query<StartQuery>,
) -> Response {
    if let Err(refused) = signed.require(Permission::Campaigns) {
        return refused.into_response();
    }
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let pool = &state.services.pool;
    let (lists, templates) = match (
        store::contacts::lists(pool, 200).await,
        store::list_templates(pool).await,
    ) {
        (Ok(lists), Ok(templates)) => (lists, templates),
        (Err(e), _) | (_, Err(e)) => return Shown::internal(l, e).into_response(),
    };
    let body = html! {
        main id="main" {
            h1 { (t(Text::NewCampaign)) }
            section {
                form method="get" action="/console/campaigns/new/details" {
                    label for="name" { (t(Text::Name)) }
                    input id="name" name="name" type="text" required;
                    fieldset {
                        legend { (t(Text::Audience)) }
                        label for="list_id" { (t(Text::SavedList)) }
                        select id="list_id" name="list_id" {
                            option value="" { (t(Text::NoColumn)) }
                            @for (id, name, members) in &lists {
                                option value=(id) selected[query.list_id.as_deref() == Some(id.to_string().as_str())] {
                                    (name) " (" (l.number(*members)) ")"
                                }
                            }
                        }
                        label for="tags" { (t(Text::OrTags)) }
                        input id="tags" name="tags" type="text";
                    }
                    label for="template" { (t(Text::ChooseTemplate)) }
                    select id="template" name="template" required {
                        @for tpl in templates.iter().filter(|t| t.status == TemplateStatus::Approved) {
                            option value={(tpl.name) "|" (tpl.language)} {
                                (tpl.name) " · " (tpl.language) " · " (tpl.category.as_str())
                            }
                        }
                    }
                    p { button type="submit" { (t(Text::Next)) } }
                }
            }
        }
    };
    page::document(l, t(Text::NewCampaign), Some(&signed), body).into_response()
}

/// Everything the details step carries from one render to the next (the page keeps no state
/// on the server: every field travels in the form).
#[derive(Debug, Default)]
struct Draft {
    name: String,
    list_id: String,
    tags: String,
    template: String,
    /// Per slot: `attr:<field or attribute>` or `value`.
    sources: BTreeMap<String, String>,
    /// Per slot: the fixed value, or the default when the field is missing.
    values: BTreeMap<String, String>,
    senders: Vec<String>,
    start_at: String,
    /// Minutes the browser's clock is behind UTC (JavaScript's `getTimezoneOffset`).
    tz_offset: String,
    quiet_start: String,
    quiet_end: String,
    action: String,
}

impl Draft {
    fn from_pairs(pairs: Vec<(String, String)>) -> Draft {
        let mut d = Draft::default();
        for (key, value) in pairs {
            if let Some(slot) = key.strip_prefix("source.") {
                d.sources.insert(slot.to_string(), value);
                continue;
            }
            if let Some(slot) = key.strip_prefix("value.") {
                d.values.insert(slot.to_string(), value);
                continue;
            }
            match key.as_str() {
                "name" => d.name = value,
                "list_id" => d.list_id = value,
                "tags" => d.tags = value,
                "template" => d.template = value,
                "sender" => d.senders.push(value),
                "start_at" => d.start_at = value,
                "tz_offset" => d.tz_offset = value,
                "quiet_start" => d.quiet_start = value,
                "quiet_end" => d.quiet_end = value,
                "action" => d.action = value,
                _ => {}
            }
        }
        d
    }

    /// Step 1 leads here without a choice of senders: every sender starts checked. A posted
    /// form always names its action, and its checked boxes are the choice.
    fn is_first_view(&self) -> bool {
        self.action.is_empty()
    }

    fn template(&self) -> (&str, &str) {
        self.template
            .split_once('|')
            .unwrap_or((&self.template, ""))
    }

    fn audience(&self) -> Value {
        let tags: Vec<&str> = self
            .tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        let mut audience = json!({});
        if !self.list_id.trim().is_empty() {
            audience["list_id"] = json!(self.list_id.trim());
        }
        if !tags.is_empty() {
            audience["tags"] = json!(tags);
        }
        audience
    }

    /// The variable mapping as the API takes it; a slot the form has not seen yet draws from the
    /// contact's name for the first slot and is left to a fixed value otherwise.
    fn mapping(&self, slots: &[String]) -> VariableMap {
        slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let given = self.values.get(slot).map(|v| v.trim().to_string());
                let given = given.filter(|v| !v.is_empty());
                let default_source = if i == 0 { "attr:name" } else { "value" };
                let source = self
                    .sources
                    .get(slot)
                    .map_or(default_source, String::as_str);
                let chosen = match source.strip_prefix("attr:") {
                    Some(attribute) => VariableSource {
                        attribute: Some(attribute.to_string()),
                        value: None,
                        default: given,
                    },
                    None => VariableSource {
                        attribute: None,
                        value: given,
                        default: None,
                    },
                };
                (slot.clone(), chosen)
            })
            .collect()
    }

    /// The start in UTC, from the browser's local time and offset (UTC without the script).
    fn start_at(&self) -> Option<String> {
        let local = NaiveDateTime::parse_from_str(self.start_at.trim(), "%Y-%m-%dT%H:%M").ok()?;
        let offset: i64 = self.tz_offset.trim().parse().unwrap_or(0);
        let utc = local + chrono::Duration::minutes(offset);
        Some(utc.and_utc().to_rfc3339())
    }

    fn definition(&self, slots: &[String]) -> Value {
        let (name, language) = self.template();
        let mut d = json!({
            "name": self.name,
            "template": {"name": name, "language": language},
            "senders": self.senders,
            "audience": self.audience(),
        });
        if !slots.is_empty() {
            d["variables"] = json!(self.mapping(slots));
        }
        let mut schedule = json!({});
        if let Some(start) = self.start_at() {
            schedule["start_at"] = json!(start);
        }
        if !self.quiet_start.is_empty() || !self.quiet_end.is_empty() {
            schedule["quiet_hours"] = json!({"start": self.quiet_start, "end": self.quiet_end});
        }
        if schedule.as_object().is_some_and(|o| !o.is_empty()) {
            d["schedule"] = schedule;
        }
        d
    }
}

/// Step 2, first shown: the variables with a first guess, every sender the person may use.
pub async fn details(
    State(state): State<ApiState>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(refused) = signed.require(Permission::Campaigns) {
        return refused.into_response();
    }
    let pairs = serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    render(&state, &signed, &Draft::from_pairs(pairs), None).await
}

/// Step 2, posted: the preview again, or the draft created.
pub async fn submit(
    State(state): State<ApiState>,
    posted: Posted<Vec<(String, String)>>,
) -> Response {
    let Posted { signed, form } = posted;
    if let Err(refused) = signed.require(Permission::Campaigns) {
        return refused.into_response();
    }
    let draft = Draft::from_pairs(form);
    if draft.action != "create" {
        return render(&state, &signed, &draft, None).await;
    }
    let slots = match template_of(&state, &draft).await {
        Ok((slots, _, _)) => slots,
        Err(e) => return render(&state, &signed, &draft, Some(e)).await,
    };
    let created = match serde_json::from_value::<Definition>(draft.definition(&slots)) {
        Ok(definition) => campaigns::create(
            &state.services,
            definition,
            |s| signed.caller.may_use_sender(s),
            None,
            &signed.caller.actor(),
        )
        .await
        .map_err(ApiError::from),
        Err(e) => Err(ApiError::bad_request("invalid_field", None, e.to_string())),
    };
    match created {
        Ok(c) => Redirect::to(&format!("/console/campaigns/{}", c.id)).into_response(),
        Err(e) => render(&state, &signed, &draft, Some(e)).await,
    }
}

async fn usable_senders(state: &ApiState, signed: &Signed) -> Result<Vec<String>, Response> {
    let services = &state.services;
    match store::list_senders(&services.pool, &services.derived.keyring).await {
        Ok(all) => Ok(all
            .into_iter()
            .map(|s| s.phone_number_id)
            .filter(|id| signed.caller.may_use_sender(id))
            .collect()),
        Err(e) => Err(Shown::internal(signed.locale, e).into_response()),
    }
}

/// The chosen template's slots, category and components (None when never synced).
async fn template_of(
    state: &ApiState,
    draft: &Draft,
) -> Result<(Vec<String>, String, Option<Value>), ApiError> {
    let (name, language) = draft.template();
    let pool = &state.services.pool;
    let template = state
        .services
        .catalog
        .template(name, language)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::bad_request(
                "unknown_template",
                Some("template"),
                format!("no template {name} ({language}) in the registry"),
            )
        })?;
    let components = store::template_components(pool, name, language)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        template.parameters,
        template.category.as_str().to_string(),
        components,
    ))
}

async fn render(
    state: &ApiState,
    signed: &Signed,
    draft: &Draft,
    problem: Option<ApiError>,
) -> Response {
    let l = signed.locale;
    let (slots, category, components) = match template_of(state, draft).await {
        Ok(found) => found,
        Err(e) => return Shown::api(l, e).into_response(),
    };
    // An audience the use case refuses is shown with the form (creating it names the fault).
    let sample = campaigns::sample_contact(&state.services, &draft.audience())
        .await
        .unwrap_or_default();
    let senders = match usable_senders(state, signed).await {
        Ok(senders) => senders,
        Err(refused) => return refused,
    };
    let body = details_page(
        signed,
        draft,
        &slots,
        &category,
        components.as_ref(),
        sample.as_ref(),
        &senders,
        problem.as_ref(),
    );
    page::document(l, Text::NewCampaign.get(l), Some(signed), body).into_response()
}

#[allow(clippy::too_many_arguments)]
fn details_page(
    signed: &Signed,
    draft: &Draft,
    slots: &[String],
    category: &str,
    components: Option<&Value>,
    sample: Option<&AudienceContact>,
    senders: &[String],
    problem: Option<&ApiError>,
) -> Markup {
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let mapping = draft.mapping(slots);
    let mut fields: Vec<String> = CONTACT_FIELDS.iter().map(|f| f.to_string()).collect();
    if let Some(attributes) = sample.and_then(|c| c.attributes.0.as_object()) {
        fields.extend(attributes.keys().cloned());
    }
    let (template_name, language) = draft.template();
    html! {
        main id="main" {
            h1 { (t(Text::NewCampaign)) ": " (draft.name) }
            @if let Some(p) = problem {
                p class="problem" role="alert" {
                    (p.message) @if let Some(field) = &p.field { " (" code { (field) } ")" }
                }
            }
            form method="post" action="/console/campaigns/new" class="builder" {
                (csrf(signed))
                input type="hidden" name="name" value=(draft.name);
                input type="hidden" name="list_id" value=(draft.list_id);
                input type="hidden" name="tags" value=(draft.tags);
                input type="hidden" name="template" value=(draft.template);
                input type="hidden" name="tz_offset" value=(draft.tz_offset) data-tz-offset;
                div class="columns" {
                    section aria-labelledby="variables-title" {
                        h2 id="variables-title" { (t(Text::Variables)) }
                        p { (t(Text::Template)) ": " strong { (template_name) } " · " (language) " · " (category) }
                        @if slots.is_empty() { p { (t(Text::NoVariables)) } }
                        @for slot in slots {
                            @let chosen = mapping.get(slot);
                            @let source = chosen.and_then(|c| c.attribute.clone()).map(|a| format!("attr:{a}")).unwrap_or_else(|| "value".into());
                            @let value = chosen.and_then(|c| c.value.clone().or(c.default.clone())).unwrap_or_default();
                            fieldset {
                                legend { code { "{{" (slot) "}}" } }
                                label for={"source-" (slot)} { (t(Text::FromContact)) }
                                select id={"source-" (slot)} name={"source." (slot)} {
                                    @for f in &fields {
                                        @let v = format!("attr:{f}");
                                        option value=(v) selected[v == source] { (f) }
                                    }
                                    option value="value" selected[source == "value"] { (t(Text::FixedValue)) }
                                }
                                label for={"value-" (slot)} { (t(Text::ValueOrDefault)) }
                                input id={"value-" (slot)} name={"value." (slot)} type="text" value=(value);
                            }
                        }
                        fieldset {
                            legend { (t(Text::SenderPool)) }
                            @for (i, s) in senders.iter().enumerate() {
                                div {
                                    input type="checkbox" id={"sender-" (i)} name="sender" value=(s)
                                        checked[draft.is_first_view() || draft.senders.contains(s)];
                                    label class="inline" for={"sender-" (i)} { (s) }
                                }
                            }
                        }
                        fieldset {
                            legend { (t(Text::Schedule)) }
                            label for="start_at" { (t(Text::StartAt)) }
                            input id="start_at" name="start_at" type="datetime-local" value=(draft.start_at);
                            label for="quiet_start" { (t(Text::QuietFrom)) }
                            input id="quiet_start" name="quiet_start" type="time" value=(draft.quiet_start);
                            label for="quiet_end" { (t(Text::QuietUntil)) }
                            input id="quiet_end" name="quiet_end" type="time" value=(draft.quiet_end);
                        }
                    }
                    section aria-labelledby="preview-title" {
                        h2 id="preview-title" { (t(Text::PreviewFor)) " " (sample.map_or("—", |c| c.phone.as_str())) }
                        (preview(components, slots, &mapping, sample, l))
                        button type="submit" name="action" value="preview" class="secondary" { (t(Text::UpdatePreview)) }
                    }
                }
                p { button type="submit" name="action" value="create" { (t(Text::CreateDraft)) } }
            }
        }
    }
}

fn preview(
    components: Option<&Value>,
    slots: &[String],
    mapping: &VariableMap,
    sample: Option<&AudienceContact>,
    l: super::i18n::Locale,
) -> Markup {
    let Some(contact) = sample else {
        return html! { p { (Text::NoSample.get(l)) } };
    };
    let Some(components) = components else {
        return html! { p { (Text::NoComponents.get(l)) } };
    };
    let view = rules::ContactView {
        phone: &contact.phone,
        name: contact.name.as_deref(),
        language: contact.language.as_deref(),
        country: &contact.country,
        attributes: &contact.attributes.0,
    };
    // A slot without a value shows as the placeholder it is: the estimate counts such contacts
    // as excluded (missing_variable).
    let values: Vec<(String, String)> = slots
        .iter()
        .filter_map(|slot| {
            rules::resolve_values(std::slice::from_ref(slot), mapping, &view)
                .ok()
                .and_then(|v| v.into_iter().next())
        })
        .collect();
    let b = rules::bubble(components, &values);
    html! {
        div class="phone" {
            div class="bubble" id="bubble" {
                @if let Some(h) = &b.header { p class="bubble-header" { (h) } }
                p class="bubble-body" { (b.body) }
                @if let Some(f) = &b.footer { p class="bubble-footer" { (f) } }
                span class="bubble-time" { (Utc::now().format("%H:%M")) }
            }
            @for label in &b.buttons { div class="bubble-button" { (label) } }
        }
    }
}
