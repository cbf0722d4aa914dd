//! Campaign pages: the list, a campaign from estimate and launch to live progress and results,
//! and the actions on it. Every read and action goes through the API's own use cases
//! (`crate::campaigns`) with the signed-in person as the caller.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::i18n::{self, Locale, Text};
use super::page::{self, Shown, csrf, time};
use super::session::{Posted, Signed};
use crate::api::ApiState;
use crate::api::auth::{Permission, Principal};
use crate::api::campaigns::{exclusions_report, failures_report, load};
use crate::api::error::ApiError;
use crate::campaigns::{self, Funnel, Progress};
use crate::domain::campaign::{Action, CampaignState, Exclusion};
use crate::domain::decision::{Quality, TemplateStatus};
use crate::domain::errors::{self, Disposition};
use crate::domain::reason::Reason;
use crate::store::campaigns::{self as cstore, Campaign};

/// At most this many campaigns on the list, newest first.
const LISTED: i64 = 200;

fn shown(locale: Locale) -> impl Fn(ApiError) -> Response {
    move |e| Shown::api(locale, e).into_response()
}

fn may_run_campaigns(signed: &Signed) -> bool {
    signed.caller.role.allows(Permission::Campaigns)
}

fn creator(c: &Campaign) -> String {
    c.created_by
        .clone()
        .or_else(|| c.api_key_id.map(|k| Principal::ApiKey(k).actor()))
        .unwrap_or_default()
}

fn state_badge(state: CampaignState, l: Locale) -> Markup {
    html! { span class={"state " (state.as_str())} data-live="state_text" { (i18n::state(state, l)) } }
}

pub async fn list(State(state): State<ApiState>, signed: Signed) -> Response {
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let pool = &state.services.pool;
    let listed = match cstore::list_campaigns(pool, signed.caller.sender_scope(), LISTED).await {
        Ok(list) => list,
        Err(e) => return Shown::internal(l, e).into_response(),
    };
    let ids: Vec<Uuid> = listed.iter().map(|c| c.id).collect();
    let mut counts: HashMap<Uuid, HashMap<String, i64>> = HashMap::new();
    match cstore::counts_of(pool, &ids).await {
        Ok(rows) => {
            for (id, status, n) in rows {
                counts.entry(id).or_default().insert(status, n);
            }
        }
        Err(e) => return Shown::internal(l, e).into_response(),
    }
    let empty = HashMap::new();
    let body = html! {
        main id="main" {
            h1 { (t(Text::Campaigns)) }
            @if may_run_campaigns(&signed) {
                p { a class="button" href="/console/campaigns/new" { (t(Text::NewCampaign)) } }
            }
            @if listed.is_empty() {
                p { (t(Text::NoCampaigns)) }
            } @else {
                div class="table" {
                    table {
                        thead { tr {
                            th scope="col" { (t(Text::Name)) }
                            th scope="col" { (t(Text::State)) }
                            th scope="col" { (t(Text::Progress)) }
                            th scope="col" { (t(Text::SenderPool)) }
                            th scope="col" { (t(Text::CreatedBy)) }
                            th scope="col" { (t(Text::Started)) }
                            th scope="col" { (t(Text::Finished)) }
                        } }
                        tbody {
                            @for c in &listed {
                                @let (done, total) = campaigns::done_and_total(counts.get(&c.id).unwrap_or(&empty));
                                tr {
                                    td { a href={"/console/campaigns/" (c.id)} { (c.name) } }
                                    td { span class={"state " (c.state.as_str())} { (i18n::state(c.state, l)) } }
                                    td {
                                        progress max=(total.max(1)) value=(done) aria-label=(t(Text::Progress)) {}
                                        " " (l.number(done)) " / " (l.number(total))
                                    }
                                    td { (c.senders.join(", ")) }
                                    td { (creator(c)) }
                                    td { (time(c.launched_at)) }
                                    td { (time(c.finished_at)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page::document(l, t(Text::Campaigns), Some(&signed), body).into_response()
}

#[derive(Deserialize)]
pub struct ShowQuery {
    requeued: Option<u64>,
}

pub async fn show(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(query): Query<ShowQuery>,
) -> Response {
    let l = signed.locale;
    let c = match load(&state, &signed.caller, &id).await {
        Ok(c) => c,
        Err(e) => return shown(l)(e),
    };
    let estimate = if c.state == CampaignState::Draft {
        match campaigns::estimate(&state.services, &c).await {
            Ok(e) => {
                let warnings = match launch_warnings(&state, &c, &e, l).await {
                    Ok(w) => w,
                    Err(e) => return Shown::internal(l, e).into_response(),
                };
                Some((e, warnings))
            }
            Err(e) => return shown(l)(e.into()),
        }
    } else {
        None
    };
    let progress = match campaigns::progress(&state.services, c, &state.rates).await {
        Ok(p) => p,
        Err(e) => return shown(l)(e.into()),
    };
    let replies = match cstore::replies(&state.services.pool, progress.campaign.id, 100).await {
        Ok(r) => r,
        Err(e) => return Shown::internal(l, e).into_response(),
    };
    let senders = match sender_rows(&state, &progress.campaign).await {
        Ok(rows) => rows,
        Err(e) => return Shown::internal(l, e).into_response(),
    };
    let title = progress.campaign.name.clone();
    let body = campaign_page(
        &signed,
        &progress,
        estimate.as_ref().map(|(e, w)| (e, w.as_slice())),
        &senders,
        &replies,
        query.requeued,
    );
    page::document(l, &title, Some(&signed), body).into_response()
}

/// One sender of a campaign: its share of the audience, its 24 h limit use (None while Redis
/// cannot say) against its limit (negative: unlimited), its quality.
pub struct SenderRow {
    id: String,
    planned: i64,
    used: Option<u64>,
    limit: i64,
    quality: &'static str,
}

async fn sender_rows(
    state: &ApiState,
    c: &Campaign,
) -> Result<Vec<SenderRow>, crate::store::StoreError> {
    let services = &state.services;
    let shares = cstore::sender_shares(&services.pool, c.id).await?;
    let mut rows = Vec::with_capacity(c.senders.len());
    for id in &c.senders {
        let planned = shares.iter().find(|(s, _)| s == id).map_or(0, |(_, n)| *n);
        let Some(sender) = services.catalog.sender(id).await? else {
            continue;
        };
        let (counter, tier) = services.tier_counter(&sender);
        rows.push(SenderRow {
            id: id.clone(),
            planned,
            used: services.state.tier_usage(&counter).await.ok(),
            limit: tier.limit(),
            quality: sender.quality.as_str(),
        });
    }
    Ok(rows)
}

/// Counter details of one state (`failed`, `excluded`), biggest first.
fn by_detail(p: &Progress, status: &str) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = p
        .counts
        .get(status)
        .and_then(|v| v.get("by_reason"))
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows
}

/// What a failure's counter detail (a Meta code, else a reason) means, in the reader's words.
fn failure_text(detail: &str, l: Locale) -> &'static str {
    let reason = match detail.parse::<i64>() {
        Ok(code) => match errors::classify(&errors::SendFailure::Api {
            http_status: 400,
            code,
            message: String::new(),
        }) {
            Disposition::Fail => Reason::RejectedByCloudApi,
            // Temporary answers end a message only when its attempts run out.
            Disposition::Retry
            | Disposition::RetryAfter(_)
            | Disposition::OutcomeUnknown
            | Disposition::ThrottleSender
            | Disposition::ThrottleRecipient
            | Disposition::ThrottleApp => Reason::AttemptsExhausted,
            _ => crate::domain::webhook::failed_status(Some(code)).reason(),
        },
        Err(_) => Reason::parse(detail).unwrap_or(Reason::Undelivered),
    };
    i18n::reason(reason, l)
}

/// A pause cause (`sender_quality_red:1065551101`, `template_paused`) in words, with the sender.
fn cause_text(cause: &str, l: Locale) -> String {
    let (code, sender) = cause.split_once(':').unwrap_or((cause, ""));
    let text = Reason::parse(code).map_or(code, |r| i18n::reason(r, l));
    if sender.is_empty() {
        text.to_string()
    } else {
        format!("{text} ({sender})")
    }
}

fn live_values(p: &Progress, l: Locale) -> LiveValues {
    let funnel = p.funnel;
    LiveValues {
        state: p.campaign.state.as_str(),
        state_text: i18n::state(p.campaign.state, l),
        finished: p.campaign.state.is_final(),
        done: p.done,
        total: p.total,
        progress_text: format!(
            "{} / {} ({})",
            l.number(p.done),
            l.number(p.total),
            l.percent(if p.total > 0 {
                p.done as f64 / p.total as f64
            } else {
                0.0
            })
        ),
        rate_text: p.rate_per_second.map_or("—".into(), |r| {
            format!("{} {}", l.decimal(r, 1), Text::PerSecond.get(l))
        }),
        eta_text: p.eta_seconds.map_or("—".into(), eta_words),
        sent: l.number(funnel.sent),
        delivered: l.number(funnel.delivered),
        read: l.number(funnel.read),
        replied: l.number(funnel.replied),
        failed: l.number(funnel.failed),
        billed: l.money(p.cost.billed.amount, &p.cost.currency),
    }
}

fn eta_words(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) => format!("{m} min {s:02} s"),
        _ => format!("{h} h {m:02} min"),
    }
}

/// What the live page script reads every two seconds: numbers already written in the reader's
/// language, so formatting lives in one place.
#[derive(Serialize)]
pub struct LiveValues {
    state: &'static str,
    state_text: &'static str,
    finished: bool,
    done: i64,
    total: i64,
    progress_text: String,
    rate_text: String,
    eta_text: String,
    sent: String,
    delivered: String,
    read: String,
    replied: String,
    failed: String,
    billed: String,
}

pub async fn live(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    let l = signed.locale;
    let c = match load(&state, &signed.caller, &id).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match campaigns::progress(&state.services, c, &state.rates).await {
        Ok(p) => Json(live_values(&p, l)).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn campaign_page(
    signed: &Signed,
    p: &Progress,
    estimate: Option<(&campaigns::Estimate, &[String])>,
    senders: &[SenderRow],
    replies: &[cstore::Reply],
    requeued: Option<u64>,
) -> Markup {
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let c = &p.campaign;
    let live = live_values(p, l);
    let may_act = may_run_campaigns(signed);
    let failures = by_detail(p, "failed");
    let exclusions = by_detail(p, "excluded");
    let base = format!("/console/campaigns/{}", c.id);
    let funnel_rows: [(Text, &str, i64); 5] = {
        let Funnel {
            sent,
            delivered,
            read,
            replied,
            failed,
        } = p.funnel;
        [
            (Text::Sent, "sent", sent),
            (Text::Delivered, "delivered", delivered),
            (Text::Read, "read", read),
            (Text::Replied, "replied", replied),
            (Text::Failed, "failed", failed),
        ]
    };
    html! {
        main id="main" data-campaign=(c.id) data-state=(c.state.as_str()) {
            h1 { (c.name) " " (state_badge(c.state, l)) }
            dl class="facts" {
                dt { (t(Text::Template)) } dd { (c.template_name) " (" (c.template_language) ")" }
                dt { (t(Text::Category)) } dd { (c.category.as_str()) }
                dt { (t(Text::SenderPool)) } dd { (c.senders.join(", ")) }
                dt { (t(Text::CreatedBy)) } dd { (creator(c)) }
                dt { (t(Text::Started)) } dd { (time(c.launched_at)) }
                dt { (t(Text::Finished)) } dd { (time(c.finished_at)) }
            }
            @if c.state == CampaignState::Paused {
                section class="notice" aria-labelledby="paused-title" {
                    h2 id="paused-title" { (t(Text::PausedBecause)) }
                    ul {
                        @if c.pause_causes.is_empty() {
                            li { (t(Text::PausedByPerson)) @if let Some(by) = &c.paused_by { " (" (by) ")" } }
                        }
                        @for cause in &c.pause_causes { li { (cause_text(cause, l)) } }
                    }
                }
            }
            @if let Some((e, warnings)) = estimate { (estimate_section(signed, c, e, warnings, &base)) }
            @if c.state != CampaignState::Draft {
                section aria-labelledby="progress-title" {
                    h2 id="progress-title" { (t(Text::Progress)) }
                    p {
                        progress id="progress-bar" max=(p.total.max(1)) value=(p.done) aria-label=(t(Text::Progress)) {}
                        " " span data-live="progress_text" { (live.progress_text) }
                    }
                    dl class="facts" {
                        dt { (t(Text::SendRate)) } dd data-live="rate_text" { (live.rate_text) }
                        dt { (t(Text::Eta)) } dd data-live="eta_text" { (live.eta_text) }
                    }
                    h3 { (t(Text::Funnel)) }
                    dl class="funnel" {
                        @for (text, key, n) in funnel_rows {
                            div class={"step " (key)} {
                                dt { (t(text)) }
                                dd data-live=(key) data-value=(n) { (l.number(n)) }
                            }
                        }
                    }
                    figure {
                        svg id="live-chart" class="chart" viewBox="0 0 600 160" preserveAspectRatio="none" role="img" aria-labelledby="chart-caption" {
                            polyline points="" {}
                        }
                        figcaption id="chart-caption" { (t(Text::LiveChart)) ". " (t(Text::UpdatesLive)) }
                    }
                    @if !senders.is_empty() {
                        h3 { (t(Text::SenderShares)) }
                        div class="table" { table id="sender-shares" {
                            thead { tr {
                                th scope="col" { (t(Text::Number)) }
                                th scope="col" { (t(Text::Share)) }
                                th scope="col" { (t(Text::Used24h)) }
                                th scope="col" { (t(Text::Quality)) }
                            } }
                            tbody { @for s in senders {
                                tr data-sender=(s.id) {
                                    th scope="row" { (s.id) }
                                    td { (l.number(s.planned)) }
                                    td {
                                        @match s.used {
                                            Some(n) if s.limit > 0 => { (l.number(n as i64)) " / " (l.number(s.limit)) " (" (l.percent(n as f64 / s.limit as f64)) ")" }
                                            Some(n) => { (l.number(n as i64)) " (" (t(Text::Unlimited)) ")" }
                                            None => { "—" }
                                        }
                                    }
                                    td { (s.quality) }
                                }
                            } }
                        } }
                    }
                    dl class="facts" {
                        dt { (t(Text::EstimatedCost)) }
                        dd { (l.money(p.cost.estimated.amount, &p.cost.currency))
                             @if p.cost.estimated.unpriced > 0 { " (+" (l.number(p.cost.estimated.unpriced as i64)) " " (t(Text::Unpriced)) ")" } }
                        dt { (t(Text::BilledCost)) }
                        dd data-live="billed" { (live.billed) }
                    }
                }
            }
            @if may_act && !c.state.is_final() && c.state != CampaignState::Draft {
                section aria-labelledby="actions-title" {
                    h2 id="actions-title" { (t(Text::Actions)) }
                    div class="actions" {
                        form method="post" action={(base) "/pause"} data-states="running scheduled" hidden[!matches!(c.state, CampaignState::Running | CampaignState::Scheduled)] {
                            (csrf(signed)) button type="submit" { (t(Text::Pause)) }
                        }
                        form method="post" action={(base) "/resume"} data-states="paused" hidden[c.state != CampaignState::Paused] {
                            (csrf(signed)) button type="submit" { (t(Text::Resume)) }
                        }
                        details class="danger" data-states="running scheduled paused" {
                            summary { (t(Text::Cancel)) }
                            p { (t(Text::CancelConfirm)) }
                            form method="post" action={(base) "/cancel"} {
                                (csrf(signed))
                                button type="submit" name="confirm" value="yes" class="danger" { (t(Text::CancelConfirmAgain)) }
                            }
                        }
                    }
                }
            }
            @if c.state != CampaignState::Draft {
                section aria-labelledby="results-title" {
                    h2 id="results-title" { (t(Text::Results)) }
                    @if let Some(n) = requeued {
                        p class="notice" role="status" { (l.number(n as i64)) " " (t(Text::Requeued)) }
                    }
                    h3 { (t(Text::FailuresByReason)) }
                    @if failures.is_empty() {
                        p { (t(Text::NoFailures)) }
                    } @else {
                        div class="table" { table {
                            thead { tr {
                                th scope="col" { (t(Text::Reason)) }
                                th scope="col" { (t(Text::Count)) }
                                th scope="col" { (t(Text::WhatItMeans)) }
                            } }
                            tbody { @for (detail, n) in &failures {
                                tr {
                                    td { code { (detail) } }
                                    td { (l.number(*n)) }
                                    td { (failure_text(detail, l)) }
                                }
                            } }
                        } }
                    }
                    p class="downloads" {
                        a href={(base) "/failures.csv"} download { (t(Text::DownloadFailures)) }
                        " · "
                        a href={(base) "/exclusions.csv"} download { (t(Text::DownloadExclusions)) }
                    }
                    @if may_act && p.retryable > 0 && !matches!(c.state, CampaignState::Cancelled) {
                        form method="post" action={(base) "/retry"} {
                            (csrf(signed))
                            button type="submit" { (t(Text::RetryFailures)) " (" (l.number(p.retryable)) " " (t(Text::Retryable)) ")" }
                        }
                    }
                    @if !exclusions.is_empty() {
                        h3 { (t(Text::Exclusions)) }
                        ul { @for (code, n) in &exclusions {
                            li { (exclusion_text(code, l)) ": " (l.number(*n)) }
                        } }
                    }
                    h3 { (t(Text::Replies)) }
                    @if replies.is_empty() {
                        p { (t(Text::NoReplies)) }
                    } @else {
                        div class="table" { table {
                            thead { tr {
                                th scope="col" { (t(Text::From)) }
                                th scope="col" { (t(Text::Answer)) }
                                th scope="col" { (t(Text::AnsweredMessage)) }
                                th scope="col" { (t(Text::When)) }
                            } }
                            tbody { @for r in replies {
                                tr {
                                    td { (r.recipient) }
                                    td { (r.text.as_deref().or(r.payload.as_deref()).unwrap_or(&r.message_type)) }
                                    td { code { (r.message_id) } }
                                    td { (time(Some(r.occurred_at))) }
                                }
                            } }
                        } }
                    }
                }
            }
            @if !p.events.is_empty() {
                section aria-labelledby="history-title" {
                    h2 id="history-title" { (t(Text::History)) }
                    ol class="history" { @for e in &p.events {
                        li {
                            (time(Some(e.created_at))) " · " (e.event)
                            @if let Some(cause) = &e.cause { " · " (cause_text(cause, l)) }
                            @if let Some(actor) = &e.actor { " · " (actor) }
                        }
                    } }
                }
            }
        }
    }
}

fn exclusion_text(code: &str, l: Locale) -> &str {
    Exclusion::ALL
        .into_iter()
        .find(|e| e.code() == code)
        .map_or(code, |e| i18n::exclusion(e, l))
}

/// What marketing should know before launching: a sender short of its 24 h limit for its share
/// of the audience or at YELLOW/RED quality, a template Meta paused, or one whose category
/// changed since the campaign was created.
async fn launch_warnings(
    state: &ApiState,
    c: &Campaign,
    e: &campaigns::Estimate,
    l: Locale,
) -> Result<Vec<String>, crate::store::StoreError> {
    let mut warnings = Vec::new();
    let share = e.eligible.div_ceil(e.senders.len().max(1) as u64);
    for s in &e.senders {
        if s.remaining_today.is_some_and(|left| left < share) {
            warnings.push(format!(
                "{}: {}",
                s.phone_number_id,
                Text::WarnTierShort.get(l)
            ));
        }
    }
    for id in &c.senders {
        if let Some(sender) = state.services.catalog.sender(id).await?
            && matches!(sender.quality, Quality::Yellow | Quality::Red)
        {
            warnings.push(format!(
                "{id} {} {}",
                Text::WarnQuality.get(l),
                sender.quality.as_str()
            ));
        }
    }
    if let Some(t) = state
        .services
        .catalog
        .template(&c.template_name, &c.template_language)
        .await?
    {
        if t.status == TemplateStatus::Paused {
            warnings.push(Text::WarnTemplatePaused.get(l).to_string());
        }
        if t.category != c.category {
            warnings.push(format!(
                "{} {} → {}",
                Text::WarnCategoryChanged.get(l),
                c.category.as_str(),
                t.category.as_str()
            ));
        }
    }
    Ok(warnings)
}

fn estimate_section(
    signed: &Signed,
    c: &Campaign,
    e: &campaigns::Estimate,
    warnings: &[String],
    base: &str,
) -> Markup {
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let cost = l.money(e.cost.total, &e.cost.currency);
    let excluded: BTreeMap<&str, u64> = e
        .excluded
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (*k, *n))
        .collect();
    html! {
        section aria-labelledby="estimate-title" {
            h2 id="estimate-title" { (t(Text::Estimate)) }
            dl class="facts" {
                dt { (t(Text::Recipients)) } dd { (l.number(e.audience as i64)) }
                dt { (t(Text::Eligible)) } dd data-estimate="eligible" { (l.number(e.eligible as i64)) }
                dt { (t(Text::EstimatedCost)) } dd { (cost)
                    @if e.cost.unpriced > 0 { " (+" (l.number(e.cost.unpriced as i64)) " " (t(Text::Unpriced)) ")" } }
                dt { (t(Text::Eta)) } dd { (eta_words(e.eta_seconds)) }
            }
            @if !warnings.is_empty() {
                div class="notice" role="alert" {
                    h3 { (t(Text::Warnings)) }
                    ul data-estimate="warnings" { @for w in warnings { li { (w) } } }
                }
            }
            h3 { (t(Text::CostByCountry)) }
            div class="table" { table data-estimate="cost" {
                thead { tr {
                    th scope="col" { (t(Text::Country)) }
                    th scope="col" { (t(Text::Recipients)) }
                    th scope="col" { (t(Text::Price)) }
                    th scope="col" { (t(Text::EstimatedCost)) }
                } }
                tbody { @for (country, cc) in &e.cost.by_country {
                    tr {
                        th scope="row" { (country) }
                        td { (l.number(cc.recipients as i64)) }
                        td { @match cc.price { Some(p) => { (l.money(p, &e.cost.currency)) } None => { (t(Text::Unpriced)) } } }
                        td { (l.money(cc.cost, &e.cost.currency)) }
                    }
                } }
            } }
            h3 { (t(Text::Exclusions)) }
            ul data-estimate="exclusions" {
                @for (code, n) in &excluded {
                    li data-reason=(code) { (exclusion_text(code, l)) ": " (l.number(*n as i64)) }
                }
            }
            @if may_run_campaigns(signed) && c.state == CampaignState::Draft {
                form method="post" action={(base) "/launch"} class="launch" {
                    (csrf(signed))
                    p {
                        input type="checkbox" id="confirm-launch" name="confirm" value="yes" required;
                        label for="confirm-launch" {
                            (t(Text::LaunchConfirm)) " " strong { (l.number(e.eligible as i64)) } " "
                            (t(Text::Recipients).to_lowercase()) " " (t(Text::LaunchFor)) " " strong { (cost) }
                        }
                    }
                    button type="submit" { (t(Text::Launch)) }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct ActForm {
    confirm: Option<String>,
}

/// Launch (confirmed), pause, resume, cancel (confirmed) and retry, through the API's use cases.
pub async fn act(
    State(state): State<ApiState>,
    Path((id, action)): Path<(String, String)>,
    posted: Posted<ActForm>,
) -> Response {
    let Posted { signed, form } = posted;
    let l = signed.locale;
    if let Err(e) = signed.caller.require(Permission::Campaigns) {
        return shown(l)(e);
    }
    let c = match load(&state, &signed.caller, &id).await {
        Ok(c) => c,
        Err(e) => return shown(l)(e),
    };
    let back = format!("/console/campaigns/{}", c.id);
    let actor = signed.caller.actor();
    let confirmed = form.confirm.as_deref() == Some("yes");
    let action = match action.as_str() {
        "launch" => Action::Launch,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "cancel" => Action::Cancel,
        "retry" => {
            return match campaigns::retry_failed(&state.services, c.id, &actor).await {
                Ok(outcome) => {
                    Redirect::to(&format!("{back}?requeued={}", outcome.requeued)).into_response()
                }
                Err(e) => shown(l)(e.into()),
            };
        }
        _ => return Shown::text(l, StatusCode::NOT_FOUND, Text::NotFound).into_response(),
    };
    if matches!(action, Action::Launch | Action::Cancel) && !confirmed {
        return Shown::status(
            l,
            StatusCode::BAD_REQUEST,
            "confirm: this action needs the confirmation box",
        )
        .into_response();
    }
    match campaigns::act(&state.services, c.id, action, &actor).await {
        Ok(_) => Redirect::to(&back).into_response(),
        Err(e) => shown(l)(e.into()),
    }
}

pub async fn failures_csv(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    match load(&state, &signed.caller, &id).await {
        Ok(c) => failures_report(&state, &c),
        Err(e) => shown(signed.locale)(e),
    }
}

pub async fn exclusions_csv(
    State(state): State<ApiState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    match load(&state, &signed.caller, &id).await {
        Ok(c) => exclusions_report(&state, &c),
        Err(e) => shown(signed.locale)(e),
    }
}
