//! The HTTP API (axum): Cloud-API-shaped enqueue for other systems, message lookup, and the
//! registration of senders, templates, consent and API keys; plus /metrics and health checks.

pub mod auth;
pub mod campaigns;
pub mod contract;
pub mod dead;
pub mod error;
pub mod limits;
pub mod subscriptions;
pub mod webhooks;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::app::Services;
use crate::domain::MessageStatus;
use crate::domain::decision::{Quality, SenderStatus, TemplateStatus};
use crate::domain::phone;
use crate::domain::tier::Tier;
use crate::domain::{Category, DeliveryMode};
use crate::enqueue::{self, Accepted, Request};
use crate::store::{self, ConsentEvent, Sender, Template};

use auth::{
    AnyKey, Authorized, Caller, KeyCache, ManageKeys, Operate, ReadConsent, Role, SendMessages,
    WriteConsent,
};
use contract::{Content, Endpoint, List};
use error::{ApiError, ErrorDetail, parse_json, parse_message_json};

#[derive(Clone)]
pub struct ApiState {
    pub services: Services,
    pub keys: KeyCache,
    /// Recent campaign completion rates, fed by progress reads.
    pub rates: crate::campaigns::RateTracker,
    /// Requests per second per API key.
    pub key_rate: limits::KeyRate,
}

pub fn router(services: Services) -> Router {
    let limit = services.config.max_body_bytes;
    let config = services.config.clone();
    let refused = services.metrics.api_refused.clone();
    let budget = limits::RequestBudget::new(&services.config, refused.clone());
    let state = ApiState {
        key_rate: limits::KeyRate::from_config(&services.config, refused),
        services,
        keys: KeyCache::default(),
        rates: campaigns::rate_tracker(),
    };
    state.key_rate.forget_idle_keys();
    let api = api_endpoints();
    let uploads = campaigns::upload_endpoints();
    let document = Bytes::from(openapi(&config).to_string());
    let ops = ops_endpoints(&config, Some(document));
    Router::new()
        .merge(contract::mount(&api))
        .layer(axum::middleware::from_fn_with_state(
            budget.clone(),
            limits::within_budget,
        ))
        // Uploads take as long as the client's line does: they share the in-flight places but
        // have no timeout.
        .merge(
            contract::mount(&uploads).layer(axum::middleware::from_fn_with_state(
                budget.for_uploads(),
                limits::within_budget,
            )),
        )
        .layer(DefaultBodyLimit::max(limit))
        // Health checks, metrics and the contract answer even when the API is saturated.
        .merge(contract::mount(&ops))
        // The console's pages: for people, outside the API's contract.
        .merge(crate::console::router())
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn(error::storable_url))
        .layer(axum::middleware::from_fn(error::json_refusals))
        .with_state(state)
}

/// Messages, senders, templates, consent, erasure and keys.
fn endpoints() -> Vec<Endpoint> {
    const IDEMPOTENCY: &str = "Accepted once per key and value: a repeat answers 200 with the \
        first message, whatever its body";
    const DELIVERY: &str = "at-most-once (default) or at-least-once: what a send whose outcome \
        is unknown becomes";
    vec![
        Endpoint::post("/v1/{phone_number_id}/messages", send_message)
            .needs::<SendMessages>()
            .tag("messages")
            .summary("Enqueue one message, shaped like the Cloud API's")
            .header("Idempotency-Key", IDEMPOTENCY)
            .header("X-Pregon-Delivery", DELIVERY)
            .body(Content::json_schema(crate::domain::message::request_schema))
            .returns::<AcceptedMessage>(202, "queued")
            .returns::<AcceptedMessage>(200, "accepted before under this idempotency key")
            .errors(&[409, 422]),
        Endpoint::post("/v1/{phone_number_id}/messages/batch", send_batch)
            .needs::<SendMessages>()
            .tag("messages")
            .summary("Enqueue up to batch_max_items messages; each is accepted or refused")
            .header("X-Pregon-Delivery", DELIVERY)
            .json_body::<Batch>()
            .returns::<BatchAnswer>(200, "what became of each message"),
        Endpoint::get("/v1/messages/{id}", get_message)
            .uuid_id()
            .tag("messages")
            .summary("A message's state, attempts and lifecycle times")
            .returns::<store::MessageRow>(200, "the message"),
        Endpoint::post("/v1/senders", put_sender)
            .needs::<Operate>()
            .tag("senders")
            .summary("Register or update a sender (a WhatsApp number)")
            .json_body::<SenderBody>()
            .returns::<Sender>(201, "registered"),
        Endpoint::get("/v1/senders", list_senders)
            .tag("senders")
            .summary("The senders this key may use")
            .returns::<List<Sender>>(200, "senders"),
        Endpoint::post("/v1/senders/{phone_number_id}/pause", pause_sender)
            .needs::<Operate>()
            .tag("senders")
            .summary("Stop sending from a number until it is resumed")
            .returns::<SenderPaused>(200, "paused"),
        Endpoint::post("/v1/senders/{phone_number_id}/resume", resume_sender)
            .needs::<Operate>()
            .tag("senders")
            .summary("Resume a number paused by an operator")
            .returns::<SenderPaused>(200, "resumed"),
        Endpoint::post("/v1/templates", put_template)
            .needs::<Operate>()
            .tag("templates")
            .summary("Register a template by hand (or sync them from Meta)")
            .json_body::<TemplateBody>()
            .returns::<Template>(201, "registered"),
        Endpoint::get("/v1/templates", list_templates)
            .tag("templates")
            .summary("Every registered template, with its category and status")
            .returns::<List<Template>>(200, "templates"),
        Endpoint::post("/v1/consent", post_consent)
            .needs::<WriteConsent>()
            .tag("consent")
            .summary("Record an opt-in (with evidence) or an opt-out")
            .json_body::<ConsentBody>()
            .returns::<ConsentRecorded>(201, "recorded"),
        Endpoint::get("/v1/consent/{recipient}", get_consent)
            .needs::<ReadConsent>()
            .tag("consent")
            .summary("A person's current consent and its history")
            .returns::<ConsentView>(200, "consent"),
        Endpoint::post("/v1/erasures", post_erasure)
            .needs::<Operate>()
            .tag("consent")
            .summary("Erase a person's data everywhere, keeping a hashed opt-out tombstone")
            .json_body::<ErasureBody>()
            .returns::<ErasureAnswer>(200, "what was erased"),
        Endpoint::post("/v1/apikeys", post_api_key)
            .needs::<ManageKeys>()
            .tag("keys")
            .summary("Create an API key; its secret is shown once")
            .json_body::<ApiKeyBody>()
            .returns::<KeyCreated>(201, "created"),
        Endpoint::get("/v1/apikeys", list_api_keys)
            .needs::<ManageKeys>()
            .tag("keys")
            .summary("Every key within this key's scope (never a secret)")
            .returns::<List<store::ApiKeyInfo>>(200, "keys"),
        Endpoint::delete("/v1/apikeys/{id}", revoke_api_key)
            .uuid_id()
            .needs::<ManageKeys>()
            .tag("keys")
            .summary("Revoke a key: every process refuses it within a second")
            .answers(204, "revoked", Content::Empty)
            .errors(&[409]),
    ]
}

/// The contract of the whole API as `router` serves it with this configuration.
pub fn openapi(config: &crate::config::Config) -> Value {
    let api = api_endpoints();
    let uploads = campaigns::upload_endpoints();
    // The document describes its own route; what that route answers does not change it.
    let ops = ops_endpoints(config, Some(Bytes::new()));
    contract::document(&api.iter().chain(&uploads).chain(&ops).collect::<Vec<_>>())
}

/// Every keyed route but uploads, and the webhook receiver: the routes under the request
/// budget and the body limit.
fn api_endpoints() -> Vec<Endpoint> {
    endpoints()
        .into_iter()
        .chain(webhooks::endpoints())
        .chain(subscriptions::endpoints())
        .chain(campaigns::endpoints())
        .chain(dead::endpoints())
        .collect()
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("unknown_route", "no such route; see /v1/openapi.json")
}

/// The `limit` of a paged list: 100 when absent, 1 to 1000.
pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("limit"),
            "limit is 1 to 1000",
        ));
    }
    Ok(limit)
}

/// /healthz, /readyz, the contract (when its `document` is given) and, unless
/// `metrics_listen` gives metrics a listener of their own, /metrics.
fn ops_endpoints(config: &crate::config::Config, document: Option<Bytes>) -> Vec<Endpoint> {
    let mut ops = vec![
        Endpoint::get("/healthz", || async { "ok" })
            .public()
            .tag("operations")
            .summary("Liveness: the process answers")
            .answers(200, "alive", Content::Text),
        Endpoint::get("/readyz", readyz)
            .public()
            .tag("operations")
            .summary("Readiness: PostgreSQL, Redis and RabbitMQ answer")
            .answers(200, "ready", Content::Text)
            .answers(503, "a backing service is down", Content::Text),
    ];
    if config.metrics_listen.is_empty() {
        ops.push(metrics_endpoint());
    }
    if let Some(document) = document {
        ops.push(
            Endpoint::get("/v1/openapi.json", move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    document,
                )
            })
            .public()
            .tag("operations")
            .summary("This document: the API's contract, OpenAPI 3.1")
            .answers(200, "the OpenAPI document", Content::json::<Value>()),
        );
    }
    ops
}

fn metrics_endpoint() -> Endpoint {
    Endpoint::get("/metrics", metrics)
        .public()
        .tag("operations")
        .summary("Prometheus metrics")
        .answers(200, "metrics in Prometheus' text format", Content::Text)
}

/// /metrics alone, for the `metrics_listen` address.
pub fn metrics_router(services: Services) -> Router {
    contract::mount(&[metrics_endpoint()]).with_state(ops_state(services))
}

/// The health checks (and /metrics, unless it has a listener of its own): what a worker-only
/// process serves on `listen`.
pub fn ops_router(services: Services) -> Router {
    contract::mount(&ops_endpoints(&services.config, None)).with_state(ops_state(services))
}

/// The state of routes that take no API key: no request rate to count.
fn ops_state(services: Services) -> ApiState {
    ApiState {
        key_rate: limits::KeyRate::new(0, 0, services.metrics.api_refused.clone()),
        services,
        keys: KeyCache::default(),
        rates: campaigns::rate_tracker(),
    }
}

/// A recipient given in a body or path, normalised, or a 400 naming the `recipient` field.
/// A phone number from the request as normalised digits, or a 400 naming `field`.
pub(crate) fn phone_field(raw: &str, field: &str) -> Result<String, ApiError> {
    phone::normalize(raw)
        .map(|p| p.digits().to_string())
        .map_err(|e| ApiError::bad_request("invalid_phone_number", Some(field), e.to_string()))
}

fn delivery_mode(headers: &HeaderMap) -> Result<DeliveryMode, ApiError> {
    match headers
        .get("x-pregon-delivery")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None => Ok(DeliveryMode::AtMostOnce),
        Some(raw) => DeliveryMode::parse(raw).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_header",
                Some("X-Pregon-Delivery"),
                "X-Pregon-Delivery must be at-most-once or at-least-once",
            )
        }),
    }
}

fn scoped_key(caller: &Caller, key: &str) -> String {
    format!("{}:{key}", caller.id())
}

/// The Cloud API's success shape, with pregon's message id where Meta would put its wamid.
/// `message_status` takes only the Cloud API's own values (SDKs parse it as an enum); pregon's
/// state of the message is in `pregon_status`.
fn accepted_body(a: &Accepted) -> AcceptedMessage {
    AcceptedMessage {
        messaging_product: "whatsapp",
        contacts: vec![AcceptedContact {
            input: a.input.clone(),
            wa_id: a.wa_id.clone(),
        }],
        messages: vec![AcceptedId {
            id: a.id,
            message_status: "accepted",
            pregon_status: MessageStatus::Queued,
        }],
    }
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct AcceptedMessage {
    /// Always `whatsapp`.
    messaging_product: &'static str,
    contacts: Vec<AcceptedContact>,
    messages: Vec<AcceptedId>,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct AcceptedContact {
    /// The recipient as given.
    input: String,
    /// The recipient normalised: the person's WhatsApp id.
    wa_id: String,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct AcceptedId {
    /// pregon's message id, where Meta would put its wamid.
    id: Uuid,
    /// Always `accepted`.
    message_status: &'static str,
    pregon_status: MessageStatus,
}

/// What became of each message of a batch, in order.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct BatchAnswer {
    accepted: usize,
    refused: usize,
    results: Vec<BatchItem>,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct BatchItem {
    index: usize,
    /// `accepted` or `refused`.
    status: &'static str,
    /// An accepted message's answer, as for a single message.
    #[serde(flatten)]
    accepted: Option<AcceptedMessage>,
    /// A refused message's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

async fn send_message(
    State(state): State<ApiState>,
    caller: Authorized<SendMessages>,
    Path(phone_number_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require_sender(&phone_number_id)?;
    let body: Value = parse_message_json(&body)?;
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| {
                    crate::domain::message::check_idempotency_key(k, "Idempotency-Key").is_ok()
                })
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        Some("Idempotency-Key"),
                        "Idempotency-Key must be 1 to 255 visible characters",
                    )
                })?
                .to_string(),
        ),
    };
    let body_key = body
        .get("idempotency_key")
        .and_then(Value::as_str)
        .map(str::to_string);
    let request = Request {
        sender: phone_number_id,
        idempotency_key: header_key.or(body_key).map(|k| scoped_key(&caller, &k)),
        body,
        api_key_id: Some(caller.key_id()),
        delivery: delivery_mode(&headers)?,
    };
    let accepted = enqueue::enqueue(&state.services, request).await?;
    let status = if accepted.replayed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(accepted_body(&accepted))).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Batch {
    messages: Vec<Value>,
}

async fn send_batch(
    State(state): State<ApiState>,
    caller: Authorized<SendMessages>,
    Path(phone_number_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require_sender(&phone_number_id)?;
    let batch: Batch = parse_message_json(&body)?;
    let max = state.services.config.batch_max_items;
    if batch.messages.is_empty() || batch.messages.len() > max {
        return Err(ApiError::bad_request(
            "invalid_batch_size",
            Some("messages"),
            format!(
                "a batch holds 1 to {max} messages; got {}",
                batch.messages.len()
            ),
        ));
    }
    let delivery = delivery_mode(&headers)?;
    let requests: Vec<Request> = batch
        .messages
        .into_iter()
        .map(|body| Request {
            sender: phone_number_id.clone(),
            idempotency_key: body
                .get("idempotency_key")
                .and_then(Value::as_str)
                .map(|k| scoped_key(&caller, k)),
            body,
            api_key_id: Some(caller.key_id()),
            delivery,
        })
        .collect();
    let results = enqueue::enqueue_many(&state.services, requests).await;
    let mut accepted = 0;
    let results: Vec<BatchItem> = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| match r {
            Ok(a) => {
                accepted += 1;
                BatchItem {
                    index,
                    status: "accepted",
                    accepted: Some(accepted_body(&a)),
                    error: None,
                }
            }
            Err(e) => BatchItem {
                index,
                status: "refused",
                accepted: None,
                error: Some(ApiError::from(e).detail()),
            },
        })
        .collect();
    let refused = results.len() - accepted;
    Ok((
        StatusCode::OK,
        Json(BatchAnswer {
            accepted,
            refused,
            results,
        }),
    )
        .into_response())
}

async fn get_message(
    State(state): State<ApiState>,
    caller: Authorized<AnyKey>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_id", Some("id"), "message ids are UUIDs"))?;
    let row = store::get_message(&state.services.pool, id)
        .await
        .map_err(ApiError::internal)?
        .filter(|row| caller.may_use_sender(&row.sender))
        .ok_or_else(|| ApiError::not_found("unknown_message", format!("no message {id}")))?;
    Ok(Json(row).into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct SenderBody {
    phone_number_id: String,
    business_portfolio_id: String,
    #[serde(default)]
    display_phone_number: Option<String>,
    #[serde(default)]
    tier: Option<Value>,
    #[serde(default)]
    quality: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    mps: Option<i32>,
    #[serde(default)]
    tier_spread_seconds: Option<i32>,
    #[serde(default)]
    waba_id: Option<String>,
    access_token: String,
}

async fn put_sender(
    State(state): State<ApiState>,
    caller: Authorized<Operate>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: SenderBody = parse_json(&body)?;
    caller.require_sender(&b.phone_number_id)?;
    if b.phone_number_id.is_empty() || !b.phone_number_id.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("phone_number_id"),
            "phone_number_id is Meta's numeric id of the number",
        ));
    }
    if b.access_token.is_empty() {
        return Err(ApiError::bad_request(
            "missing_field",
            Some("access_token"),
            "access_token is required",
        ));
    }
    let tier = match &b.tier {
        None => Tier::Limited(250),
        Some(Value::Number(n)) => Tier::from_limit(n.as_i64().unwrap_or(250)),
        Some(Value::String(s)) => Tier::parse(s)
            .map_err(|e| ApiError::bad_request("invalid_field", Some("tier"), e.to_string()))?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                Some("tier"),
                "tier is a TIER_* string or a number",
            ));
        }
    };
    let mps = b.mps.unwrap_or(state.services.config.default_mps as i32);
    if !(1..=1000).contains(&mps) {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("mps"),
            "mps must be 1 to 1000",
        ));
    }
    if let Some(s) = b.tier_spread_seconds
        && s <= 0
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("tier_spread_seconds"),
            "must be positive",
        ));
    }
    let quality = b
        .quality
        .unwrap_or_else(|| "GREEN".into())
        .to_ascii_uppercase();
    if !matches!(
        quality.as_str(),
        "GREEN" | "YELLOW" | "RED" | "NA" | "UNKNOWN"
    ) {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("quality"),
            "quality is GREEN, YELLOW, RED or NA",
        ));
    }
    let sender = Sender {
        phone_number_id: b.phone_number_id,
        business_portfolio_id: b.business_portfolio_id,
        display_phone_number: b.display_phone_number,
        tier: tier.limit(),
        quality: Quality::parse(&quality),
        status: b
            .status
            .as_deref()
            .map_or(SenderStatus::Connected, SenderStatus::parse),
        paused: false,
        paused_reason: None,
        mps,
        tier_spread_seconds: b.tier_spread_seconds,
        waba_id: b.waba_id,
        access_token: b.access_token,
    };
    let saved = state
        .services
        .register_sender(sender)
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(saved)).into_response())
}

async fn list_senders(
    State(state): State<ApiState>,
    caller: Authorized<AnyKey>,
) -> Result<Response, ApiError> {
    let senders: Vec<Sender> =
        store::list_senders(&state.services.pool, &state.services.derived.keyring)
            .await
            .map_err(ApiError::internal)?
            .into_iter()
            .filter(|s| caller.may_use_sender(&s.phone_number_id))
            .collect();
    Ok(Json(List { data: senders }).into_response())
}

async fn pause_sender(
    State(state): State<ApiState>,
    caller: Authorized<Operate>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_sender(&id)?;
    set_paused(state, id, true).await
}

async fn resume_sender(
    State(state): State<ApiState>,
    caller: Authorized<Operate>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_sender(&id)?;
    set_paused(state, id, false).await
}

async fn set_paused(state: ApiState, id: String, paused: bool) -> Result<Response, ApiError> {
    if state
        .services
        .catalog
        .sender(&id)
        .await
        .map_err(ApiError::internal)?
        .is_none()
    {
        return Err(ApiError::not_found(
            "unknown_sender",
            format!("no sender {id}"),
        ));
    }
    let reason = paused.then_some("paused by an operator");
    state
        .services
        .set_sender_paused(&id, paused, reason, store::PauseSource::Operator)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(SenderPaused {
        phone_number_id: id,
        paused,
    })
    .into_response())
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct SenderPaused {
    phone_number_id: String,
    paused: bool,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct TemplateBody {
    name: String,
    language: String,
    category: String,
    #[serde(default)]
    status: Option<String>,
    /// The template's components as Meta lists them: its parameter slots are derived from them.
    #[serde(default)]
    components: Option<Value>,
    /// Or the parameter slots themselves (`body.1`, `header.1`, `button.0.1`).
    #[serde(default)]
    parameters: Option<Vec<String>>,
}

async fn put_template(
    State(state): State<ApiState>,
    _caller: Authorized<Operate>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: TemplateBody = parse_json(&body)?;
    if b.name.is_empty()
        || !b
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("name"),
            "template names use a-z, 0-9 and _",
        ));
    }
    if b.language.len() < 2 {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("language"),
            "language is a code like es_MX",
        ));
    }
    let Some(category) = Category::of_template(&b.category) else {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("category"),
            "category is marketing, utility or authentication",
        ));
    };
    let parameters = match (&b.components, b.parameters) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                Some("parameters"),
                "give components or parameters, not both",
            ));
        }
        (Some(components), None) => {
            if !components.is_array() {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    Some("components"),
                    "components is the array the Cloud API lists",
                ));
            }
            crate::domain::campaign::parameter_slots(components)
        }
        (None, Some(slots)) => {
            for slot in &slots {
                let mut parts = slot.split('.');
                let ok = matches!(parts.next(), Some("header" | "body" | "button"))
                    && parts.next().is_some_and(|p| !p.is_empty());
                if !ok {
                    return Err(ApiError::bad_request(
                        "invalid_field",
                        Some("parameters"),
                        format!(
                            "{slot:?} is not a parameter slot like body.1, header.1 or button.0.1"
                        ),
                    ));
                }
            }
            slots
        }
        (None, None) => Vec::new(),
    };
    let template = Template {
        name: b.name,
        language: b.language,
        category,
        parameters,
        status: b
            .status
            .as_deref()
            .map_or(TemplateStatus::Approved, TemplateStatus::parse),
    };
    state
        .services
        .register_template(template.clone())
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(template)).into_response())
}

async fn list_templates(
    State(state): State<ApiState>,
    _caller: Authorized<AnyKey>,
) -> Result<Response, ApiError> {
    let templates = store::list_templates(&state.services.pool)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(List { data: templates }).into_response())
}

/// One consent change for one person, as the API and the console take it.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsentBody {
    pub(crate) recipient: String,
    pub(crate) purpose: String,
    pub(crate) action: String,
    pub(crate) source: String,
    #[serde(default)]
    pub(crate) evidence: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ErasureBody {
    recipient: String,
}

/// Erases a person's data everywhere, keeping a hashed tombstone so an opt-out survives (admin).
async fn post_erasure(
    State(state): State<ApiState>,
    caller: Authorized<Operate>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: ErasureBody = parse_json(&body)?;
    phone_field(&b.recipient, "recipient")?;
    caller.require_unscoped("erase a person: their data spans every sender")?;
    let erased = crate::privacy::erase(&state.services, &b.recipient, &caller.actor())
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::OK, Json(ErasureAnswer { erased })).into_response())
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct ErasureAnswer {
    /// Rows erased or anonymised, by kind.
    erased: crate::store::privacy::Erased,
}

async fn post_consent(
    State(state): State<ApiState>,
    caller: Authorized<WriteConsent>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: ConsentBody = parse_json(&body)?;
    let (ids, event) = record_consent(&state, &caller, b).await?;
    Ok((
        StatusCode::CREATED,
        Json(ConsentRecorded {
            id: ids.first().copied(),
            event,
        }),
    )
        .into_response())
}

/// Checks one consent change (a purpose and an action we know, where it was given, evidence for
/// an opt-in, a person the caller may reach) and records it in the log and Redis.
pub(crate) async fn record_consent(
    state: &ApiState,
    caller: &auth::Caller,
    b: ConsentBody,
) -> Result<(Vec<i64>, ConsentEvent), ApiError> {
    let recipient = phone_field(&b.recipient, "recipient")?;
    if !matches!(b.purpose.as_str(), "marketing" | "utility") {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("purpose"),
            "purpose is marketing or utility",
        ));
    }
    if !matches!(b.action.as_str(), "opt_in" | "opt_out") {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("action"),
            "action is opt_in or opt_out",
        ));
    }
    if b.source.trim().is_empty() {
        return Err(ApiError::bad_request(
            "missing_field",
            Some("source"),
            "source says where consent was given",
        ));
    }
    if b.action == "opt_in" && b.evidence.as_deref().is_none_or(|e| e.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "missing_field",
            Some("evidence"),
            "an opt-in needs evidence (what the person agreed to, and how)",
        ));
    }
    caller
        .require_recipient(&state.services.pool, &recipient)
        .await?;
    let event = ConsentEvent {
        recipient,
        purpose: b.purpose,
        action: b.action,
        source: b.source,
        evidence: b.evidence,
        actor: Some(caller.actor()),
    };
    let ids = state
        .services
        .record_consent(std::slice::from_ref(&event))
        .await
        .map_err(ApiError::internal)?;
    Ok((ids, event))
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct ConsentRecorded {
    /// The event's id in the consent log.
    id: Option<i64>,
    event: ConsentEvent,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct ConsentView {
    recipient: String,
    /// `opt_in`, `opt_out`, or null when nothing was recorded.
    marketing: Option<&'static str>,
    utility: Option<&'static str>,
    history: Vec<store::ConsentRecord>,
}

async fn get_consent(
    State(state): State<ApiState>,
    caller: Authorized<ReadConsent>,
    Path(recipient): Path<String>,
) -> Result<Response, ApiError> {
    let recipient = phone_field(&recipient, "recipient")?;
    caller
        .require_recipient(&state.services.pool, &recipient)
        .await?;
    let history = store::consent_history(&state.services.pool, &recipient)
        .await
        .map_err(ApiError::internal)?;
    let current = state
        .services
        .state
        .consent(&recipient)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(ConsentView {
        recipient,
        marketing: current.marketing.map(|a| a.as_str()),
        utility: current.utility.map(|a| a.as_str()),
        history,
    })
    .into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ApiKeyBody {
    name: String,
    role: String,
    #[serde(default)]
    senders: Option<Vec<String>>,
    /// RFC 3339; the key stops working then.
    #[serde(default)]
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn post_api_key(
    State(state): State<ApiState>,
    caller: Authorized<ManageKeys>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: ApiKeyBody = parse_json(&body)?;
    caller.require_within_scope(b.senders.as_deref())?;
    let role = Role::parse(&b.role).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_field",
            Some("role"),
            format!("role is {}", Role::NAMES),
        )
    })?;
    if b.name.trim().is_empty() {
        return Err(ApiError::bad_request(
            "missing_field",
            Some("name"),
            "name is required",
        ));
    }
    if b.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("expires_at"),
            "expires_at must be in the future",
        ));
    }
    let (key, secret) =
        auth::create_expiring_key(&state.services.pool, &b.name, role, b.senders, b.expires_at)
            .await
            .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(KeyCreated { key, secret })).into_response())
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct KeyCreated {
    key: store::ApiKey,
    /// Shown once, here: only its hash is stored.
    secret: String,
}

/// Every key (never a secret): role, senders, created, expires, last used, revoked. A key
/// limited to some senders sees only the keys within its own scope.
async fn list_api_keys(
    State(state): State<ApiState>,
    caller: Authorized<ManageKeys>,
) -> Result<Response, ApiError> {
    let keys: Vec<store::ApiKeyInfo> = store::list_api_keys(&state.services.pool)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|k| caller.require_within_scope(k.senders.as_deref()).is_ok())
        .collect();
    Ok(Json(List { data: keys }).into_response())
}

/// Revokes a key: every process refuses it within a second.
async fn revoke_api_key(
    State(state): State<ApiState>,
    caller: Authorized<ManageKeys>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_id", Some("id"), "key ids are UUIDs"))?;
    let pool = &state.services.pool;
    let key = store::api_key(pool, id)
        .await
        .map_err(ApiError::internal)?
        .filter(|k| caller.require_within_scope(k.senders.as_deref()).is_ok())
        .ok_or_else(|| ApiError::not_found("unknown_api_key", format!("no API key {id}")))?;
    if key.revoked_at.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_revoked",
            Some("id"),
            format!("API key {id} was revoked already"),
        ));
    }
    store::revoke_api_key(pool, id, &caller.actor())
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let services = &state.services;
    for (service, answer) in services.dependencies().await {
        services
            .metrics
            .dependency_up
            .with_label_values(&[service])
            .set(i64::from(answer.is_ok()));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.services.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    match state.services.ready().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}
