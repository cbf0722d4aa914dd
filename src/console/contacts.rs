//! Contact import in two steps: upload a CSV (kept in PostgreSQL, so any API process serves the
//! next step), then map its columns with a preview of the first rows; the import itself is the
//! API's (`contacts::Importer` with the options the API builds from the same field names), and
//! its report lists every bad row with its number and reason.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use uuid::Uuid;

use super::i18n::{self, Locale, Text};
use super::page::{self, Shown, csrf};
use super::session::{Posted, Signed, Uploaded};
use crate::api::ApiState;
use crate::api::auth::Permission;
use crate::api::campaigns::{ImportQuery, import_errors_report};
use crate::api::error::ApiError;
use crate::contacts::{CONSENT_SOURCES, ImportReport, Importer};
use crate::domain::csv::RecordReader;
use crate::store::users;

/// The largest CSV the console keeps between its two steps; bigger files go through the API's
/// streaming import (`pregon contacts import`).
pub const UPLOAD_LIMIT: usize = 100 * 1024 * 1024;

/// Rows shown under the mapping.
const PREVIEW_ROWS: usize = 5;

pub async fn upload_page(signed: Signed) -> Response {
    if let Err(refused) = signed.require(Permission::Contacts) {
        return refused.into_response();
    }
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let body = html! {
        main id="main" {
            h1 { (t(Text::ImportContacts)) }
            section {
                form method="post" action="/console/contacts/import" enctype="multipart/form-data" {
                    (csrf(&signed))
                    label for="file" { (t(Text::CsvFile)) }
                    input id="file" name="file" type="file" accept=".csv,text/csv" required;
                    p { button type="submit" { (t(Text::Upload)) } }
                }
            }
        }
    };
    page::document(l, t(Text::ImportContacts), Some(&signed), body).into_response()
}

pub async fn upload(State(state): State<ApiState>, uploaded: Uploaded) -> Response {
    let Uploaded {
        signed,
        file_name,
        body,
    } = uploaded;
    if let Err(refused) = signed.require(Permission::Contacts) {
        return refused.into_response();
    }
    match users::insert_upload(&state.services.pool, signed.caller.id(), &file_name, &body).await {
        Ok(id) => Redirect::to(&format!("/console/contacts/import/{id}")).into_response(),
        Err(e) => Shown::internal(signed.locale, e).into_response(),
    }
}

/// The header and the first rows of a CSV.
fn head_of(body: &[u8]) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let mut reader = RecordReader::default();
    let mut records = Vec::new();
    let start = &body[..body.len().min(256 * 1024)];
    reader
        .feed(start, &mut records)
        .map_err(|e| e.to_string())?;
    if records.len() <= PREVIEW_ROWS {
        // A short file: read to its end so its last line counts.
        reader.feed(&[], &mut records).map_err(|e| e.to_string())?;
    }
    let mut records = records.into_iter();
    let header = records.next().ok_or("the file is empty")?;
    Ok((header, records.take(PREVIEW_ROWS).collect()))
}

/// The column a header most likely holds, by common names in the three languages.
fn guess(header: &[String], words: &[&str]) -> Option<String> {
    header
        .iter()
        .find(|h| {
            let h = h.to_lowercase();
            words.iter().any(|w| h.contains(w))
        })
        .cloned()
}

async fn load_upload(
    state: &ApiState,
    signed: &Signed,
    raw: &str,
) -> Result<(Uuid, String, Vec<u8>), Response> {
    let l = signed.locale;
    let not_found = || Shown::text(l, StatusCode::NOT_FOUND, Text::NotFound).into_response();
    let id: Uuid = raw.parse().map_err(|_| not_found())?;
    match users::upload(&state.services.pool, id, signed.caller.id()).await {
        Ok(Some((name, body))) => Ok((id, name, body)),
        Ok(None) => Err(not_found()),
        Err(e) => Err(Shown::internal(l, e).into_response()),
    }
}

pub async fn mapping_page(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    if let Err(refused) = signed.require(Permission::Contacts) {
        return refused.into_response();
    }
    let (id, file_name, body) = match load_upload(&state, &signed, &id).await {
        Ok(upload) => upload,
        Err(refused) => return refused,
    };
    let l = signed.locale;
    let (header, rows) = match head_of(&body) {
        Ok(head) => head,
        Err(problem) => {
            return Shown::status(
                l,
                StatusCode::BAD_REQUEST,
                &format!("{file_name}: {problem}"),
            )
            .into_response();
        }
    };
    let body = mapping_form(&signed, id, &file_name, &header, &rows);
    page::document(l, Text::MapColumns.get(l), Some(&signed), body).into_response()
}

fn column_select(
    id: &str,
    header: &[String],
    chosen: Option<&str>,
    required: bool,
    l: Locale,
) -> Markup {
    html! {
        select id=(id) name=(id) required[required] {
            @if !required { option value="" { (Text::NoColumn.get(l)) } }
            @for h in header {
                option value=(h) selected[Some(h.as_str()) == chosen] { (h) }
            }
        }
    }
}

fn mapping_form(
    signed: &Signed,
    id: Uuid,
    file_name: &str,
    header: &[String],
    rows: &[Vec<String>],
) -> Markup {
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let phone = guess(
        header,
        &[
            "phone", "tel", "celular", "whatsapp", "móvil", "movil", "número", "numero",
        ],
    );
    let name = guess(header, &["name", "nombre", "nome"]);
    let language = guess(header, &["language", "idioma", "lang"]);
    let consent = guess(header, &["consent", "acepta", "opt", "aceita", "permiso"]);
    let evidence = guess(header, &["evidence", "evidencia", "prueba", "prova"]);
    let mapped: Vec<&Option<String>> = vec![&phone, &name, &language, &consent, &evidence];
    let is_mapped = |h: &String| mapped.iter().any(|m| m.as_deref() == Some(h.as_str()));
    html! {
        main id="main" {
            h1 { (t(Text::MapColumns)) }
            p { code { (file_name) } }
            section aria-labelledby="preview-title" {
                h2 id="preview-title" { (t(Text::FirstRows)) }
                div class="table" { table {
                    thead { tr { @for h in header { th scope="col" { (h) } } } }
                    tbody { @for row in rows { tr { @for cell in row { td { (cell) } } } } }
                } }
            }
            section {
                form method="post" action={"/console/contacts/import/" (id)} {
                    (csrf(signed))
                    label for="phone" { (t(Text::PhoneColumn)) }
                    (column_select("phone", header, phone.as_deref(), true, l))
                    label for="name" { (t(Text::NameColumn)) }
                    (column_select("name", header, name.as_deref(), false, l))
                    label for="language" { (t(Text::LanguageColumn)) }
                    (column_select("language", header, language.as_deref(), false, l))
                    fieldset {
                        legend { (t(Text::AttributeColumns)) }
                        @for (i, h) in header.iter().enumerate() {
                            div {
                                input type="checkbox" id={"attribute-" (i)} name="attribute" value=(h) checked[!is_mapped(h)];
                                label for={"attribute-" (i)} class="inline" { (h) }
                            }
                        }
                    }
                    label for="tags" { (t(Text::TagsForAll)) }
                    input id="tags" name="tags" type="text";
                    @if signed.caller.sender_scope().is_none() {
                        label for="consent_column" { (t(Text::ConsentColumn)) }
                        (column_select("consent_column", header, consent.as_deref(), false, l))
                        label for="evidence_column" { (t(Text::EvidenceColumn)) }
                        (column_select("evidence_column", header, evidence.as_deref(), false, l))
                        label for="consent_source" { (t(Text::ConsentSource)) }
                        select id="consent_source" name="consent_source" {
                            @for source in CONSENT_SOURCES {
                                option value=(source) selected[*source == "web_form"] { (source) }
                            }
                        }
                    }
                    label for="list" { (t(Text::ListName)) }
                    input id="list" name="list" type="text" value=(file_name.trim_end_matches(".csv"));
                    p { button type="submit" { (t(Text::Import)) } }
                }
            }
        }
    }
}

/// The mapping form: the API's import query names, with attribute columns as repeated boxes.
struct MappingForm(Vec<(String, String)>);

impl MappingForm {
    fn query(self) -> ImportQuery {
        let mut attributes = Vec::new();
        let mut q = ImportQuery::default();
        for (key, value) in self.0 {
            let value = Some(value).filter(|v| !v.trim().is_empty());
            match key.as_str() {
                "phone" => q.phone = value.unwrap_or_default(),
                "name" => q.name = value,
                "language" => q.language = value,
                "tags" => q.tags = value,
                "consent_column" => q.consent_column = value,
                "evidence_column" => q.evidence_column = value,
                "consent_source" => q.consent_source = value,
                "list" => q.list = value,
                "attribute" => attributes.extend(value),
                _ => {}
            }
        }
        // A column mapped to a field is not an attribute as well.
        attributes.retain(|a| {
            ![&q.name, &q.language, &q.consent_column, &q.evidence_column]
                .iter()
                .any(|c| c.as_deref() == Some(a.as_str()))
                && *a != q.phone
        });
        if q.consent_column.is_none() {
            q.consent_source = None;
            q.evidence_column = None;
        }
        q.attributes = (!attributes.is_empty()).then(|| attributes.join(","));
        q
    }
}

pub async fn import(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    posted: Posted<Vec<(String, String)>>,
) -> Response {
    let Posted { signed, form } = posted;
    let form = MappingForm(form);
    if let Err(refused) = signed.require(Permission::Contacts) {
        return refused.into_response();
    }
    let l = signed.locale;
    let (id, _, body) = match load_upload(&state, &signed, &id).await {
        Ok(upload) => upload,
        Err(refused) => return refused,
    };
    let refused = |e: ApiError| Shown::api(l, e).into_response();
    let options = match form.query().options(&signed.caller) {
        Ok(o) => o,
        Err(e) => return refused(e),
    };
    let services = &state.services;
    let report = async {
        let mut importer = Importer::new(options)?;
        for chunk in body.chunks(64 * 1024) {
            importer.feed(services, chunk).await?;
        }
        importer.finish(services, false).await
    };
    let report = match report.await {
        Ok(r) => r,
        Err(e) => return refused(e.into()),
    };
    if let Err(e) = users::delete_upload(&services.pool, id).await {
        tracing::warn!(error = %e, "could not delete an imported upload");
    }
    let body = report_page(&signed, &report);
    page::document(l, Text::ImportReport.get(l), Some(&signed), body).into_response()
}

fn report_page(signed: &Signed, r: &ImportReport) -> Markup {
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    // In the file's order, whatever order the importer found them in.
    let mut errors: Vec<_> = r.errors.iter().collect();
    errors.sort_by_key(|e| e.row);
    html! {
        main id="main" {
            h1 { (t(Text::ImportReport)) }
            section {
                dl class="facts" data-import=(r.import_id) {
                    dt { (t(Text::Rows)) } dd data-total="rows" { (l.number(r.totals.rows as i64)) }
                    dt { (t(Text::Created)) } dd data-total="created" { (l.number(r.totals.created as i64)) }
                    dt { (t(Text::Updated)) } dd data-total="updated" { (l.number(r.totals.updated as i64)) }
                    dt { (t(Text::RowErrors)) } dd data-total="errors" { (l.number(r.totals.errors as i64)) }
                }
                @if let Some(list) = r.list_id {
                    p { a class="button" href={"/console/campaigns/new?list_id=" (list)} { (t(Text::NewCampaignForList)) } }
                }
            }
            @if !r.errors.is_empty() {
                section aria-labelledby="errors-title" {
                    h2 id="errors-title" { (t(Text::RowErrors)) }
                    ul {
                        @for (reason, n) in &r.errors_by_reason {
                            li { (i18n::import_error(reason, l)) ": " (l.number(*n as i64)) }
                        }
                    }
                    div class="table" { table id="row-errors" {
                        thead { tr {
                            th scope="col" { (t(Text::Row)) }
                            th scope="col" { (t(Text::Reason)) }
                            th scope="col" { (t(Text::Field)) }
                            th scope="col" { (t(Text::Value)) }
                        } }
                        tbody { @for e in &errors {
                            tr data-row=(e.row) data-reason=(e.reason) {
                                td { (e.row) }
                                td { (i18n::import_error(&e.reason, l)) }
                                td { (e.field.as_deref().unwrap_or("")) }
                                td { (e.value.as_deref().unwrap_or("")) }
                            }
                        } }
                    } }
                    p { a href={"/console/contacts/imports/" (r.import_id) "/errors.csv"} download { (t(Text::DownloadErrors)) } }
                }
            }
        }
    }
}

pub async fn errors_csv(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    let l = signed.locale;
    if let Err(refused) = signed.require(Permission::Contacts) {
        return refused.into_response();
    }
    let Ok(id) = id.parse::<Uuid>() else {
        return Shown::text(l, StatusCode::NOT_FOUND, Text::NotFound).into_response();
    };
    match import_errors_report(&state, id).await {
        Ok(r) => r,
        Err(e) => Shown::api(l, e).into_response(),
    }
}

// -- contacts and consent ----------------------------------------------------------------------

/// Contacts shown per page of a tag search.
const CONTACTS_SHOWN: i64 = 100;

#[derive(serde::Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

/// Search by number (straight to the contact) or by tag.
pub async fn search(
    State(state): State<ApiState>,
    signed: Signed,
    axum::extract::Query(query): axum::extract::Query<SearchQuery>,
) -> Response {
    if let Err(refused) = signed.require(Permission::Contacts) {
        return refused.into_response();
    }
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let q = query.q.unwrap_or_default().trim().to_string();
    if let Ok(number) = crate::domain::phone::normalize(&q) {
        return Redirect::to(&format!("/console/contacts/{}", number.digits())).into_response();
    }
    let tag = (!q.is_empty()).then_some(q.as_str());
    let found = match crate::store::contacts::contacts_with_tag(
        &state.services.pool,
        0,
        tag,
        CONTACTS_SHOWN,
    )
    .await
    {
        Ok(found) => found,
        Err(e) => return Shown::internal(l, e).into_response(),
    };
    let body = html! {
        main id="main" {
            h1 { (t(Text::Contacts)) }
            form method="get" action="/console/contacts" role="search" {
                label for="q" { (t(Text::SearchHint)) }
                input id="q" name="q" type="search" value=(q);
                button type="submit" { (t(Text::Search)) }
            }
            p { a href="/console/contacts/import" { (t(Text::ImportContacts)) } }
            @if found.is_empty() {
                p { (t(Text::NoContacts)) }
            } @else {
                div class="table" { table id="contacts" {
                    thead { tr {
                        th scope="col" { (t(Text::Number)) }
                        th scope="col" { (t(Text::Name)) }
                        th scope="col" { (t(Text::Country)) }
                        th scope="col" { (t(Text::Tags)) }
                    } }
                    tbody { @for c in &found {
                        tr {
                            td { a href={"/console/contacts/" (c.phone)} { (c.phone) } }
                            td { (c.name.as_deref().unwrap_or("")) }
                            td { (c.country) }
                            td { (c.tags.join(", ")) }
                        }
                    } }
                } }
            }
        }
    };
    page::document(l, t(Text::Contacts), Some(&signed), body).into_response()
}

/// The person a path names, as digits, if the signed-in person may reach them (one limited to
/// some senders only those their senders have talked to).
async fn reachable(state: &ApiState, signed: &Signed, raw: &str) -> Result<String, ApiError> {
    let phone = crate::api::phone_field(raw, "phone")?;
    signed
        .caller
        .require_recipient(&state.services.pool, &phone)
        .await?;
    Ok(phone)
}

#[derive(serde::Deserialize)]
pub struct ContactQuery {
    recorded: Option<String>,
}

/// A person: their profile, consent now and its history with evidence, their suppression, and
/// the forms to record consent and lift a suppression.
pub async fn contact(
    State(state): State<ApiState>,
    signed: Signed,
    Path(raw): Path<String>,
    axum::extract::Query(query): axum::extract::Query<ContactQuery>,
) -> Response {
    if let Err(refused) = signed.require(Permission::ReadConsent) {
        return refused.into_response();
    }
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let refused = |e: ApiError| Shown::api(l, e).into_response();
    let phone = match reachable(&state, &signed, &raw).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let services = &state.services;
    let profile = crate::store::contacts::contact(&services.pool, &phone).await;
    let history = crate::store::consent_history(&services.pool, &phone).await;
    let suppression = crate::store::webhooks::suppression(&services.pool, &phone).await;
    let (profile, history, suppression) = match (profile, history, suppression) {
        (Ok(p), Ok(h), Ok(s)) => (p, h, s),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return Shown::internal(l, e).into_response();
        }
    };
    // Redis holds the current consent; when it cannot be read the history still shows.
    let current = services.state.consent(&phone).await.ok();
    let consent_word = |action: Option<&str>| match action {
        Some("opt_in") => t(Text::OptIn),
        Some("opt_out") => t(Text::OptOut),
        _ => t(Text::NotRecorded),
    };
    let may_record = signed.caller.role.allows(Permission::Consent);
    let may_lift = signed.caller.role.allows(Permission::Operate);
    let body = html! {
        main id="main" data-contact=(phone) {
            h1 { (phone) }
            @if query.recorded.is_some() { p class="notice" role="status" { (t(Text::Recorded)) } }
            @if let Some(c) = &profile {
                dl class="facts" {
                    dt { (t(Text::Name)) } dd { (c.name.as_deref().unwrap_or("—")) }
                    dt { (t(Text::Language)) } dd { (c.language.as_deref().unwrap_or("—")) }
                    dt { (t(Text::Country)) } dd { (c.country) }
                    dt { (t(Text::Tags)) } dd { (c.tags.join(", ")) }
                    dt { (t(Text::Attributes)) } dd { code { (c.attributes.0.to_string()) } }
                }
            }
            section aria-labelledby="consent-title" {
                h2 id="consent-title" { (t(Text::ConsentNow)) }
                dl class="facts" {
                    dt { "marketing" } dd data-consent="marketing" { (consent_word(current.as_ref().and_then(|c| c.marketing.map(|a| a.as_str())))) }
                    dt { "utility" } dd data-consent="utility" { (consent_word(current.as_ref().and_then(|c| c.utility.map(|a| a.as_str())))) }
                }
                h3 { (t(Text::ConsentHistory)) }
                div class="table" { table id="consent-history" {
                    thead { tr {
                        th scope="col" { (t(Text::When)) }
                        th scope="col" { (t(Text::Purpose)) }
                        th scope="col" { (t(Text::Action)) }
                        th scope="col" { (t(Text::Source)) }
                        th scope="col" { (t(Text::Evidence)) }
                        th scope="col" { (t(Text::Actor)) }
                    } }
                    tbody { @for e in &history {
                        tr {
                            td { (page::time(Some(e.created_at))) }
                            td { (e.purpose) }
                            td { (consent_word(Some(&e.action))) }
                            td { (e.source) }
                            td { (e.evidence.as_deref().unwrap_or("")) }
                            td { (e.actor.as_deref().unwrap_or("")) }
                        }
                    } }
                } }
                @if may_record {
                    form method="post" action={"/console/contacts/" (phone) "/consent"} class="consent" {
                        (csrf(&signed))
                        h3 { (t(Text::RecordConsent)) }
                        label for="purpose" { (t(Text::Purpose)) }
                        select id="purpose" name="purpose" {
                            option value="marketing" { "marketing" }
                            option value="utility" { "utility" }
                        }
                        label for="action" { (t(Text::Action)) }
                        select id="action" name="action" {
                            option value="opt_in" { (t(Text::OptIn)) }
                            option value="opt_out" { (t(Text::OptOut)) }
                        }
                        label for="source" { (t(Text::Source)) }
                        select id="source" name="source" {
                            @for source in CONSENT_SOURCES { option value=(source) { (source) } }
                        }
                        label for="evidence" { (t(Text::EvidenceHint)) }
                        input id="evidence" name="evidence" type="text";
                        p { button type="submit" { (t(Text::RecordConsent)) } }
                    }
                }
            }
            section aria-labelledby="suppression-title" {
                h2 id="suppression-title" { (t(Text::Suppression)) }
                @match &suppression {
                    None => { p { (t(Text::NotSuppressed)) } }
                    Some(s) => {
                        p data-suppressed=(s.reason) {
                            (s.reason) @if let Some(e) = &s.evidence { " · " (e) } " · " (page::time(Some(s.created_at)))
                        }
                        @if may_lift {
                            form method="post" action={"/console/contacts/" (phone) "/lift-suppression"} {
                                (csrf(&signed))
                                button type="submit" { (t(Text::LiftSuppression)) }
                            }
                        }
                    }
                }
            }
        }
    };
    page::document(l, &phone, Some(&signed), body).into_response()
}

#[derive(serde::Deserialize)]
pub struct ConsentForm {
    purpose: String,
    action: String,
    source: String,
    evidence: Option<String>,
}

/// Records consent through the API's own rule (`api::record_consent`).
pub async fn record_consent(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
    posted: Posted<ConsentForm>,
) -> Response {
    let Posted { signed, form } = posted;
    if let Err(refused) = signed.require(Permission::Consent) {
        return refused.into_response();
    }
    let body = crate::api::ConsentBody {
        recipient: raw,
        purpose: form.purpose,
        action: form.action,
        source: form.source,
        evidence: form.evidence.filter(|e| !e.trim().is_empty()),
    };
    match crate::api::record_consent(&state, &signed.caller, body).await {
        Ok((_, event)) => {
            Redirect::to(&format!("/console/contacts/{}?recorded=1", event.recipient))
                .into_response()
        }
        Err(e) => Shown::api(signed.locale, e).into_response(),
    }
}

pub async fn lift_suppression(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
    posted: Posted<super::session::Empty>,
) -> Response {
    let signed = posted.signed;
    let l = signed.locale;
    if let Err(refused) = signed.require(Permission::Operate) {
        return refused.into_response();
    }
    let phone = match reachable(&state, &signed, &raw).await {
        Ok(p) => p,
        Err(e) => return Shown::api(l, e).into_response(),
    };
    match state.services.unsuppress(&phone).await {
        Ok(_) => Redirect::to(&format!("/console/contacts/{phone}")).into_response(),
        Err(e) => Shown::internal(l, e).into_response(),
    }
}
