//! Marketing endpoints: contacts (import, export), consent export, template sync, and campaigns
//! (create, estimate, launch, pause, resume, cancel, progress, failures, retry, replies).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::campaigns::{self, CampaignError, Definition, RateTracker};
use crate::contacts::{self, ConsentColumns, ImportFailure, ImportOptions, Importer};
use crate::domain::campaign::Action;
use crate::store::campaigns as cstore;
use crate::store::contacts as contact_store;

use super::ApiState;
use super::auth::{Authorized, Caller, Export, ManageContacts, Read, RunCampaigns, SyncTemplates};
use super::contract::{Content, Endpoint, List, Page};
use super::error::{ApiError, parse_json};

/// Routes whose body is an upload of any length (checked against `import_max_bytes` as it
/// streams in).
pub fn upload_endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::post("/v1/contacts/import", import_contacts)
            .needs::<ManageContacts>()
            .tag("contacts")
            .summary("Import a contact CSV (and consent columns), streamed a chunk at a time")
            .query::<ImportQuery>()
            .body(Content::Csv)
            .returns::<contacts::ImportReport>(200, "counts and the first row errors")
            .map_route(|r| r.layer(DefaultBodyLimit::disable())),
    ]
}

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::get("/v1/contacts/imports/{id}/errors.csv", import_errors)
            .uuid_id()
            .needs::<ManageContacts>()
            .tag("contacts")
            .summary("Every row error of an import")
            .answers(200, "row, reason, field, value", Content::Csv),
        Endpoint::get("/v1/contacts", list_contacts)
            .needs::<ManageContacts>()
            .tag("contacts")
            .summary("A page of contacts, optionally with one tag")
            .query::<ContactsQuery>()
            .returns::<Page<contact_store::ContactRow>>(200, "a page of contacts"),
        Endpoint::get("/v1/contacts/{phone}", get_contact)
            .needs::<ManageContacts>()
            .tag("contacts")
            .summary("A contact with its current consent")
            .returns::<ContactView>(200, "the contact"),
        Endpoint::put("/v1/contacts/{phone}", put_contact)
            .needs::<ManageContacts>()
            .tag("contacts")
            .summary("Create a contact or replace its profile")
            .json_body::<contacts::ContactProfile>()
            .returns::<contact_store::ContactRow>(201, "created")
            .returns::<contact_store::ContactRow>(200, "replaced"),
        Endpoint::delete("/v1/contacts/{phone}", delete_contact)
            .needs::<ManageContacts>()
            .tag("contacts")
            .summary("Remove a contact and its list memberships (the consent log is kept)")
            .answers(204, "removed", Content::Empty),
        Endpoint::get("/v1/contacts.csv", export_contacts)
            .needs::<Export>()
            .tag("contacts")
            .summary("Every contact, as CSV")
            .answers(200, "contacts", Content::Csv),
        Endpoint::get("/v1/consent.csv", export_consent)
            .needs::<Export>()
            .tag("consent")
            .summary("The whole consent log, as CSV")
            .answers(200, "consent events", Content::Csv),
        Endpoint::post("/v1/templates/sync", sync_templates)
            .needs::<SyncTemplates>()
            .tag("templates")
            .summary("Fetch the templates of every business account from Meta")
            .returns::<crate::templates::SyncReport>(200, "what was synced"),
        Endpoint::post("/v1/campaigns", create_campaign)
            .needs::<RunCampaigns>()
            .tag("campaigns")
            .summary("Create a campaign (a draft until launched)")
            .json_body::<Definition>()
            .returns::<cstore::Campaign>(201, "created")
            .errors(&[404, 409, 422]),
        Endpoint::get("/v1/campaigns", list_campaigns)
            .needs::<Read>()
            .tag("campaigns")
            .summary("The latest campaigns this key may see")
            .returns::<List<cstore::Campaign>>(200, "campaigns"),
        Endpoint::get("/v1/campaigns/{id}", get_campaign)
            .uuid_id()
            .needs::<Read>()
            .tag("campaigns")
            .summary("Progress: counts by state and reason, rate and ETA")
            .returns::<campaigns::Progress>(200, "progress"),
        Endpoint::post("/v1/campaigns/{id}/estimate", estimate)
            .uuid_id()
            .needs::<RunCampaigns>()
            .tag("campaigns")
            .summary("Eligible recipients, exclusions by reason, cost and ETA, before sending")
            .returns::<campaigns::Estimate>(200, "the estimate")
            .errors(&[409, 422]),
        campaign_action("/v1/campaigns/{id}/launch", launch, "Launch: plan and send"),
        campaign_action("/v1/campaigns/{id}/pause", pause, "Pause sending"),
        campaign_action(
            "/v1/campaigns/{id}/resume",
            resume,
            "Resume a paused campaign",
        ),
        campaign_action(
            "/v1/campaigns/{id}/cancel",
            cancel,
            "Cancel: nothing more is sent",
        ),
        Endpoint::get("/v1/campaigns/{id}/failures.csv", failures_csv)
            .uuid_id()
            .needs::<Read>()
            .tag("campaigns")
            .summary("Every failed recipient with the error code and reason")
            .answers(200, "failures", Content::Csv),
        Endpoint::get("/v1/campaigns/{id}/exclusions.csv", exclusions_csv)
            .uuid_id()
            .needs::<Read>()
            .tag("campaigns")
            .summary("Who planning left out and why")
            .answers(200, "exclusions", Content::Csv),
        Endpoint::post("/v1/campaigns/{id}/retry-failed", retry_failed)
            .uuid_id()
            .needs::<RunCampaigns>()
            .tag("campaigns")
            .summary("Send again to the failures that can still succeed")
            .returns::<campaigns::RetryOutcome>(
                200,
                "how many were requeued, and why not the others",
            )
            .errors(&[409, 422]),
        Endpoint::get("/v1/campaigns/{id}/replies", replies)
            .uuid_id()
            .needs::<Read>()
            .tag("campaigns")
            .summary("Replies to the campaign's messages")
            .returns::<Replies>(200, "replies"),
    ]
}

fn campaign_action<H, T>(path: &'static str, handler: H, summary: &'static str) -> Endpoint
where
    H: axum::handler::Handler<T, ApiState>,
    T: 'static,
{
    Endpoint::post(path, handler)
        .uuid_id()
        .needs::<RunCampaigns>()
        .tag("campaigns")
        .summary(summary)
        .returns::<cstore::Campaign>(200, "the campaign, in its new state")
        .errors(&[409, 422])
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct ContactView {
    contact: contact_store::ContactRow,
    consent: CurrentConsent,
}

/// The latest consent per purpose: `opt_in`, `opt_out`, or null when nothing was recorded.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct CurrentConsent {
    marketing: Option<&'static str>,
    utility: Option<&'static str>,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct Replies {
    count: usize,
    data: Vec<cstore::Reply>,
}

impl From<CampaignError> for ApiError {
    fn from(e: CampaignError) -> ApiError {
        match e {
            CampaignError::Refused(r) => r.into(),
            other => ApiError::internal(other),
        }
    }
}

fn campaign_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request("invalid_id", Some("id"), "campaign ids are UUIDs"))
}

// -- contacts ------------------------------------------------------------------------------------

/// How a contact CSV's columns are read: the API's import query, and the console's mapping form
/// (the same names).
#[derive(Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportQuery {
    pub(crate) phone: String,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) language: Option<String>,
    /// Comma-separated tags for every row.
    #[serde(default)]
    pub(crate) tags: Option<String>,
    #[serde(default)]
    pub(crate) tags_column: Option<String>,
    /// Comma-separated columns to keep as attributes, or `*` for every other column.
    #[serde(default)]
    pub(crate) attributes: Option<String>,
    #[serde(default)]
    pub(crate) consent_column: Option<String>,
    #[serde(default)]
    pub(crate) consent_purpose: Option<String>,
    #[serde(default)]
    pub(crate) consent_source: Option<String>,
    #[serde(default)]
    pub(crate) evidence_column: Option<String>,
    #[serde(default)]
    pub(crate) evidence: Option<String>,
    #[serde(default)]
    pub(crate) list: Option<String>,
}

fn split_list(raw: &Option<String>) -> Vec<String> {
    raw.as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl ImportQuery {
    /// The importer's options; recording consent by import needs a caller not limited to some
    /// senders (consent spans every sender).
    pub(crate) fn options(self, caller: &Caller) -> Result<ImportOptions, ApiError> {
        let q = self;
        let consent = match q.consent_column {
            None => None,
            Some(column) => Some(ConsentColumns {
                column,
                purpose: q.consent_purpose.unwrap_or_else(|| "marketing".into()),
                source: q.consent_source.unwrap_or_else(|| "import".into()),
                evidence_column: q.evidence_column,
                evidence: q.evidence,
            }),
        };
        if consent.is_some() {
            caller.require_unscoped("record consent by import")?;
        }
        Ok(ImportOptions {
            phone_column: q.phone,
            name_column: q.name,
            language_column: q.language,
            tags: split_list(&q.tags),
            tags_column: q.tags_column,
            attribute_columns: split_list(&q.attributes),
            consent,
            list: q.list,
            actor: caller.actor(),
        })
    }
}

impl From<ImportFailure> for ApiError {
    fn from(e: ImportFailure) -> ApiError {
        match e {
            ImportFailure::Refused(r) => r.into(),
            ImportFailure::Csv(e) => ApiError::bad_request("invalid_csv", None, e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

/// Streams a CSV into contacts (and consent), a chunk at a time: the answer carries the counts
/// and the first row errors.
async fn import_contacts(
    State(state): State<ApiState>,
    caller: Authorized<ManageContacts>,
    Query(q): Query<ImportQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let options = q.options(&caller)?;
    let services = &state.services;
    let max = services.config.import_max_bytes;
    // A declared length over the limit is refused before anything is written.
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > max
    {
        return Err(import_too_large(max));
    }
    let mut importer = Importer::new(options)?;
    let mut stream = body.into_data_stream();
    let mut interrupted = false;
    let mut received: u64 = 0;
    let mut too_large = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                received += bytes.len() as u64;
                if received > max {
                    // A streamed upload that runs past the limit stops here: the rows before it
                    // stay written (contacts are upserts, so sending a smaller file again is
                    // safe) and the import is recorded as interrupted.
                    too_large = true;
                    interrupted = true;
                    break;
                }
                importer.feed(services, &bytes).await?
            }
            Err(e) => {
                tracing::warn!(error = %e, "contact upload broke off");
                interrupted = true;
                break;
            }
        }
    }
    let report = importer.finish(services, interrupted).await?;
    if too_large {
        let mut refusal = import_too_large(max).body();
        refusal["import"] = json!(report);
        return Ok((StatusCode::PAYLOAD_TOO_LARGE, Json(refusal)).into_response());
    }
    Ok((StatusCode::OK, Json(report)).into_response())
}

fn import_too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "import_too_large",
        Some("body"),
        format!("an import is at most {max} bytes (import_max_bytes); split the file"),
    )
}

async fn import_errors(
    State(state): State<ApiState>,
    _caller: Authorized<ManageContacts>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_id", Some("id"), "import ids are UUIDs"))?;
    import_errors_report(&state, id).await
}

/// Every row error of an import (row, reason, field, value) as a streamed CSV (the console's
/// download is this one).
pub(crate) async fn import_errors_report(state: &ApiState, id: Uuid) -> Result<Response, ApiError> {
    let pool = state.services.pool.clone();
    if !contact_store::import_exists(&pool, id)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::not_found(
            "unknown_import",
            format!("no import {id}"),
        ));
    }
    let header_line = crate::domain::csv::line(["row", "reason", "field", "value"]);
    Ok(csv_stream(
        "import-errors.csv",
        header_line,
        0i64,
        move |after| {
            let pool = pool.clone();
            async move {
                let page = contact_store::import_errors(&pool, id, after, 5000).await?;
                let next = page.last().map(|e| e.row as i64);
                let text: String = page
                    .iter()
                    .map(|e| {
                        let row = e.row.to_string();
                        crate::domain::csv::line([
                            row.as_str(),
                            e.reason.as_str(),
                            e.field.as_deref().unwrap_or(""),
                            e.value.as_deref().unwrap_or(""),
                        ])
                    })
                    .collect();
                Ok(next.map(|n| (text, n)))
            }
        },
    ))
}

/// A CSV answer streamed page by page: `page(cursor)` gives the next text and cursor, or None
/// at the end. An error mid-stream cuts the body short (the client sees a broken download).
fn csv_stream<C, F, Fut>(filename: &str, header_line: String, start: C, page: F) -> Response
where
    C: Send + 'static,
    F: Fn(C) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Option<(String, C)>, crate::store::StoreError>>
        + Send
        + 'static,
{
    let head = futures_util::stream::once(async move { Ok::<_, std::io::Error>(header_line) });
    let rest = futures_util::stream::unfold(Some(start), move |cursor| {
        let next = cursor.map(&page);
        async move {
            match next?.await {
                Ok(Some((text, cursor))) => Some((Ok(text), Some(cursor))),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(head.chain(rest)),
    )
        .into_response()
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ContactsQuery {
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

/// A page of contacts (optionally with one tag); `next_after` continues it.
async fn list_contacts(
    State(state): State<ApiState>,
    _caller: Authorized<ManageContacts>,
    query: Result<Query<ContactsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_query", None, e.body_text()))?;
    let limit = super::page_limit(q.limit)?;
    let page = contact_store::contacts_with_tag(
        &state.services.pool,
        q.after.unwrap_or(0),
        q.tag.as_deref(),
        limit,
    )
    .await
    .map_err(ApiError::internal)?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|c| c.id))
        .flatten();
    Ok(Json(Page {
        data: page,
        next_after: next,
    })
    .into_response())
}

/// One contact with its current consent (the full history is at /v1/consent/{recipient}).
async fn get_contact(
    State(state): State<ApiState>,
    _caller: Authorized<ManageContacts>,
    Path(phone): Path<String>,
) -> Result<Response, ApiError> {
    let phone = super::phone_field(&phone, "phone")?;
    let contact = contact_store::contact(&state.services.pool, &phone)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("unknown_contact", format!("no contact {phone}")))?;
    let consent = state
        .services
        .state
        .consent(&phone)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(ContactView {
        contact,
        consent: CurrentConsent {
            marketing: consent.marketing.map(|a| a.as_str()),
            utility: consent.utility.map(|a| a.as_str()),
        },
    })
    .into_response())
}

/// Creates a contact or replaces its profile (201 or 200). Consent is recorded separately,
/// through /v1/consent, because it needs a source and evidence.
async fn put_contact(
    State(state): State<ApiState>,
    _caller: Authorized<ManageContacts>,
    Path(phone): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let profile: contacts::ContactProfile = parse_json(&body)?;
    let input = contacts::contact_input(&phone, profile).map_err(ApiError::from)?;
    let (contact, created) = contact_store::put_contact(&state.services.pool, &input)
        .await
        .map_err(ApiError::internal)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(contact)).into_response())
}

/// Removes a contact and its list memberships. The consent log is kept: it is the record of
/// what the person agreed to and when.
async fn delete_contact(
    State(state): State<ApiState>,
    _caller: Authorized<ManageContacts>,
    Path(phone): Path<String>,
) -> Result<Response, ApiError> {
    let phone = super::phone_field(&phone, "phone")?;
    if contact_store::delete_contact(&state.services.pool, &phone)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(
            "unknown_contact",
            format!("no contact {phone}"),
        ))
    }
}

async fn export_contacts(
    State(state): State<ApiState>,
    caller: Authorized<Export>,
) -> Result<Response, ApiError> {
    caller.require_unscoped("export every contact")?;
    let pool = state.services.pool.clone();
    Ok(csv_stream(
        "contacts.csv",
        contacts::contact_csv_header(),
        0i64,
        move |after| {
            let pool = pool.clone();
            async move {
                let page = contact_store::contacts_with_tag(&pool, after, None, 5000).await?;
                let next = page.last().map(|c| c.id);
                let text: String = page.iter().map(contacts::contact_csv_line).collect();
                Ok(next.map(|n| (text, n)))
            }
        },
    ))
}

async fn export_consent(
    State(state): State<ApiState>,
    caller: Authorized<Export>,
) -> Result<Response, ApiError> {
    caller.require_unscoped("export the consent log")?;
    let pool = state.services.pool.clone();
    Ok(csv_stream(
        "consent.csv",
        contacts::consent_csv_header(),
        0i64,
        move |after| {
            let pool = pool.clone();
            async move {
                let page = contact_store::consent_page(&pool, after, 5000).await?;
                let next = page.last().map(|e| e.id);
                let text: String = page.iter().map(contacts::consent_csv_line).collect();
                Ok(next.map(|n| (text, n)))
            }
        },
    ))
}

async fn sync_templates(
    State(state): State<ApiState>,
    caller: Authorized<SyncTemplates>,
) -> Result<Response, ApiError> {
    // A key limited to some senders syncs only their business accounts.
    let report = crate::templates::sync(&state.services, |s| caller.may_use_sender(s))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(report).into_response())
}

// -- campaigns -----------------------------------------------------------------------------------

async fn create_campaign(
    State(state): State<ApiState>,
    caller: Authorized<RunCampaigns>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let definition: Definition = parse_json(&body)?;
    let c = campaigns::create(
        &state.services,
        definition,
        |s| caller.may_use_sender(s),
        caller.api_key_id(),
        &caller.actor(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

async fn list_campaigns(
    State(state): State<ApiState>,
    caller: Authorized<Read>,
) -> Result<Response, ApiError> {
    let list = cstore::list_campaigns(&state.services.pool, caller.sender_scope(), 200)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(List { data: list }).into_response())
}

/// The campaign a caller names, if it may see it: a key limited to some senders sees only the
/// campaigns whose whole pool it may use, and is told of no other (404, as if it did not exist).
pub(crate) async fn load(
    state: &ApiState,
    caller: &Caller,
    raw: &str,
) -> Result<cstore::Campaign, ApiError> {
    let id = campaign_id(raw)?;
    cstore::get_campaign(&state.services.pool, id)
        .await
        .map_err(ApiError::internal)?
        .filter(|c| caller.may_use_all(&c.senders))
        .ok_or_else(|| ApiError::not_found("unknown_campaign", format!("no campaign {id}")))
}

/// Progress: counts by state and reason, rate and ETA. Reads a handful of counter rows, so it is
/// cheap to poll every second whatever the campaign's size.
async fn get_campaign(
    State(state): State<ApiState>,
    caller: Authorized<Read>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = load(&state, &caller, &id).await?;
    let progress = campaigns::progress(&state.services, c, &state.rates).await?;
    Ok(Json(progress).into_response())
}

async fn estimate(
    State(state): State<ApiState>,
    caller: Authorized<RunCampaigns>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = load(&state, &caller, &id).await?;
    let estimate = campaigns::estimate(&state.services, &c).await?;
    Ok(Json(estimate).into_response())
}

async fn act(
    state: ApiState,
    caller: &Caller,
    id: String,
    action: Action,
) -> Result<Response, ApiError> {
    let id = load(&state, caller, &id).await?.id;
    let c = campaigns::act(&state.services, id, action, &caller.actor()).await?;
    Ok(Json(c).into_response())
}

async fn launch(
    State(state): State<ApiState>,
    caller: Authorized<RunCampaigns>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(state, &caller, id, Action::Launch).await
}

async fn pause(
    State(state): State<ApiState>,
    caller: Authorized<RunCampaigns>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(state, &caller, id, Action::Pause).await
}

async fn resume(
    State(state): State<ApiState>,
    caller: Authorized<RunCampaigns>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(state, &caller, id, Action::Resume).await
}

async fn cancel(
    State(state): State<ApiState>,
    caller: Authorized<RunCampaigns>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(state, &caller, id, Action::Cancel).await
}

async fn failures_csv(
    State(state): State<ApiState>,
    caller: Authorized<Read>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = load(&state, &caller, &id).await?;
    Ok(failures_report(&state, &c))
}

/// Every failure of a campaign with its code, reason, error, attempts and last attempt, as a
/// streamed CSV (the console's download is this one).
pub(crate) fn failures_report(state: &ApiState, c: &cstore::Campaign) -> Response {
    let c = c.clone();
    let pool = state.services.pool.clone();
    let header_line = crate::domain::csv::line([
        "recipient",
        "error_code",
        "reason",
        "error",
        "attempts",
        "last_attempt",
    ]);
    csv_stream("failures.csv", header_line, 0i64, move |after| {
        let pool = pool.clone();
        async move {
            let page = cstore::failures_after(&pool, c.id, after, 5000).await?;
            let next = page.last().map(|f| f.campaign_seq);
            let text: String = page
                .iter()
                .map(|f| {
                    let code = f.last_error_code.map(|c| c.to_string()).unwrap_or_default();
                    let attempts = f.attempts.to_string();
                    let at = f.updated_at.to_rfc3339();
                    crate::domain::csv::line([
                        f.recipient.as_str(),
                        code.as_str(),
                        f.status_reason.as_deref().unwrap_or(""),
                        f.last_error.as_deref().unwrap_or(""),
                        attempts.as_str(),
                        at.as_str(),
                    ])
                })
                .collect();
            Ok(next.map(|n| (text, n)))
        }
    })
}

/// Who planning left out and why (no opt-in, opted out, invalid, duplicate, missing variable,
/// US number for marketing, suppressed), in planning order.
async fn exclusions_csv(
    State(state): State<ApiState>,
    caller: Authorized<Read>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = load(&state, &caller, &id).await?;
    Ok(exclusions_report(&state, &c))
}

/// Who planning left out and why, as a streamed CSV (the console's download is this one).
pub(crate) fn exclusions_report(state: &ApiState, c: &cstore::Campaign) -> Response {
    let id = c.id;
    let pool = state.services.pool.clone();
    csv_stream(
        "exclusions.csv",
        crate::domain::csv::line(["recipient", "reason"]),
        0i64,
        move |after| {
            let pool = pool.clone();
            async move {
                let page = cstore::exclusions_after(&pool, id, after, 5000).await?;
                let next = page.last().map(|(seq, _, _)| *seq);
                let text: String = page
                    .iter()
                    .map(|(_, recipient, reason)| {
                        crate::domain::csv::line([recipient.as_str(), reason.as_str()])
                    })
                    .collect();
                Ok(next.map(|n| (text, n)))
            }
        },
    )
}

async fn retry_failed(
    State(state): State<ApiState>,
    caller: Authorized<RunCampaigns>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = load(&state, &caller, &id).await?.id;
    let outcome = campaigns::retry_failed(&state.services, id, &caller.actor()).await?;
    Ok(Json(outcome).into_response())
}

async fn replies(
    State(state): State<ApiState>,
    caller: Authorized<Read>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = load(&state, &caller, &id).await?;
    let list = cstore::replies(&state.services.pool, c.id, 1000)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(Replies {
        count: list.len(),
        data: list,
    })
    .into_response())
}

/// The rate tracker lives in the API state so every progress read feeds it.
pub fn rate_tracker() -> RateTracker {
    RateTracker::default()
}
