//! `pregon simulator`: a fake WhatsApp Cloud API with Meta's request and response shapes that
//! enforces Meta's rules — per-number throughput (130429), pair rate (131056), messaging-limit
//! tier, the service window (131047), template status (132001/132015/132016), unreachable
//! recipients (131026 as a failed status) — and can inject latency, 5xx answers and timeouts.
//!
//! It records every accepted message with the instant it was accepted (compactly, `kept`), so
//! tests prove the dispatcher's invariants from the receiving side, and sends signed status
//! webhooks.

mod kept;
mod webhooks;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use kept::{CallbackData, KeptAttempt, KeptMessage, Names, new_wamid, wamid_text};

use crate::domain::tier::TIER_WINDOW;

pub use webhooks::{Outgoing, StatusEvent};

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Throughput of a number the simulator has not been told about.
    pub default_mps: u32,
    /// Messaging limit of a number not configured otherwise (None: unlimited).
    pub default_tier: Option<u32>,
    pub latency: Duration,
    /// Share of requests answered with a random 500, for chaos runs.
    pub error_rate: f64,
    pub pair_interval: Duration,
    pub pair_burst: u32,
    /// Unknown templates are refused with 132001 instead of accepted.
    pub strict_templates: bool,
    pub webhook_url: Option<String>,
    pub app_secret: String,
    pub delivered_after: Duration,
    pub read_ratio: f64,
    /// How long a "timeout" fault holds the request before dropping it, and a "late" one before
    /// answering.
    pub timeout_fault: Duration,
    /// Share of accepted sends answered only after `timeout_fault` (a slow Cloud API), for chaos
    /// runs.
    pub late_rate: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            default_mps: 80,
            default_tier: None,
            latency: Duration::ZERO,
            error_rate: 0.0,
            pair_interval: Duration::from_secs(6),
            pair_burst: 45,
            strict_templates: false,
            webhook_url: None,
            app_secret: "pregon-simulator-secret".into(),
            delivered_after: Duration::from_millis(200),
            read_ratio: 0.5,
            timeout_fault: Duration::from_secs(30),
            late_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Received {
    /// Order of acceptance across all numbers.
    pub seq: u64,
    /// Microseconds since the simulator started, taken when the message was accepted.
    pub at_us: u64,
    pub phone_number_id: String,
    pub to: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub template: Option<String>,
    pub wamid: String,
    /// The pregon message id when the body carried one in `biz_opaque_callback_data`.
    pub callback_data: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub at_us: u64,
    pub phone_number_id: String,
    pub to: String,
    /// 0 when accepted, else the error code answered (HTTP status for injected 5xx).
    pub code: i64,
}

/// The fewest recipients a number's pair-rate table holds before the first sweep.
const PAIR_SWEEP_FLOOR: usize = 4096;

struct NumberState {
    mps: u32,
    tier: Option<u32>,
    accepted_at: VecDeque<Instant>,
    /// Recipients reached outside a window: last contact time (tracked only under a tier).
    unique: HashMap<String, Instant>,
    /// Contacts in time order, to expire `unique` without scanning it on every request.
    contacts: VecDeque<(Instant, String)>,
    /// Pair-rate GCRA: theoretical arrival time per recipient.
    pair_tat: HashMap<String, Instant>,
    /// `pair_tat`'s size at which the entries already past are dropped (an entry in the past
    /// means the same as none), so a million recipients do not stay in it.
    pair_sweep_at: usize,
    /// The one access token this number accepts, when set (any non-empty one otherwise).
    access_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub phone_number_id: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// `http_500`, `timeout` (held, then dropped unprocessed), `late` (accepted and recorded like
    /// any send, but answered only after `timeout_fault`: the caller cannot know it was sent) or
    /// `error` (a Cloud API error with `code`).
    pub kind: String,
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

struct Sim {
    config: SimConfig,
    started: Instant,
    numbers: HashMap<String, NumberState>,
    templates: HashMap<(String, String), String>,
    /// What the template list endpoint answers, in name order.
    listings: std::collections::BTreeMap<(String, String), Value>,
    windows: HashMap<(String, String), Instant>,
    undeliverable: HashSet<String>,
    faults: Vec<Fault>,
    received: Vec<KeptMessage>,
    attempts: Vec<KeptAttempt>,
    /// Numbers, message types and template names of the records above.
    names: Names,
    seq: u64,
}

#[derive(Clone)]
pub struct SimState {
    inner: Arc<Mutex<Sim>>,
    webhooks: Option<mpsc::UnboundedSender<Outgoing>>,
    config: SimConfig,
}

impl SimState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sim> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn router(config: SimConfig) -> Router {
    let webhooks = config
        .webhook_url
        .clone()
        .map(|url| webhooks::spawn(url, config.app_secret.clone()));
    let state = SimState {
        inner: Arc::new(Mutex::new(Sim {
            config: config.clone(),
            started: Instant::now(),
            numbers: HashMap::new(),
            templates: HashMap::new(),
            listings: std::collections::BTreeMap::new(),
            windows: HashMap::new(),
            undeliverable: HashSet::new(),
            faults: Vec::new(),
            received: Vec::new(),
            attempts: Vec::new(),
            names: Names::default(),
            seq: 0,
        })),
        webhooks,
        config,
    };
    Router::new()
        .route("/{version}/{phone_number_id}/messages", post(send))
        .route(
            "/{version}/{waba_id}/message_templates",
            get(list_templates),
        )
        .route("/_sim/received", get(received))
        .route("/_sim/summary", get(summary))
        .route("/_sim/attempts", get(attempts))
        .route("/_sim/numbers", post(configure_number))
        .route("/_sim/templates", post(configure_template))
        .route("/_sim/undeliverable", post(configure_undeliverable))
        .route("/_sim/windows", post(open_window))
        .route("/_sim/faults", post(add_fault))
        .route("/_sim/reset", post(reset))
        .with_state(state)
}

/// Serves the simulator on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SimConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await
}

fn graph_error(status: StatusCode, code: i64, message: &str) -> Response {
    let kind = if code == 190 {
        "OAuthException"
    } else {
        "GraphMethodException"
    };
    (
        status,
        Json(
            json!({"error": {"message": message, "type": kind, "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": format!("sim{}", uuid::Uuid::new_v4().simple())}}),
        ),
    )
        .into_response()
}

enum Verdict {
    Accept {
        wamid: u128,
        to: String,
        undeliverable: bool,
        category: &'static str,
    },
    Refuse(StatusCode, i64, &'static str),
    Timeout,
}

async fn send(
    State(state): State<SimState>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let authorized = token.is_some_and(|token| {
        state
            .lock()
            .numbers
            .get(&phone_number_id)
            .and_then(|n| n.access_token.as_deref())
            .is_none_or(|expected| expected == token)
    });
    if !authorized {
        return graph_error(StatusCode::UNAUTHORIZED, 190, "Invalid OAuth access token.");
    }
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter: body is not JSON",
        );
    };
    if !state.config.latency.is_zero() {
        tokio::time::sleep(state.config.latency).await;
    }
    let (verdict, late) = decide(&state, &phone_number_id, &message);
    let late = late && matches!(verdict, Verdict::Accept { .. });
    let response = match verdict {
        Verdict::Timeout => {
            tokio::time::sleep(state.config.timeout_fault).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Verdict::Refuse(status, code, text) => {
            if status.is_server_error() && code == 0 {
                return (status, "simulated server error").into_response();
            }
            graph_error(status, code, text)
        }
        Verdict::Accept {
            wamid,
            to,
            undeliverable,
            category,
        } => {
            let wamid = wamid_text(wamid);
            if let Some(hooks) = &state.webhooks {
                let event = StatusEvent {
                    phone_number_id: phone_number_id.clone(),
                    wamid: wamid.clone(),
                    recipient: to.clone(),
                    status: "sent",
                    category,
                    error_code: None,
                    callback_data: message
                        .get("biz_opaque_callback_data")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                };
                let _ = hooks.send(event.clone().into());
                let hooks = hooks.clone();
                let after = state.config.delivered_after;
                let read = fastrand::f64() < state.config.read_ratio;
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    if undeliverable {
                        let _ = hooks.send(
                            StatusEvent {
                                status: "failed",
                                error_code: Some(131026),
                                ..event
                            }
                            .into(),
                        );
                    } else {
                        let _ = hooks.send(
                            StatusEvent {
                                status: "delivered",
                                ..event.clone()
                            }
                            .into(),
                        );
                        if read {
                            tokio::time::sleep(after).await;
                            let _ = hooks.send(
                                StatusEvent {
                                    status: "read",
                                    ..event
                                }
                                .into(),
                            );
                        }
                    }
                });
            }
            Json(json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": wamid, "message_status": "accepted"}]
            }))
            .into_response()
        }
    };
    if late {
        // Recorded and reported as sent (the webhooks above are already on their way, as Meta
        // processes a message whatever becomes of its HTTP answer); only the answer is late.
        tokio::time::sleep(state.config.timeout_fault).await;
    }
    response
}

/// Applies Meta's rules in order, atomically per request, and records the outcome; also says
/// whether the answer is to be late (a `late` fault or `late_rate`).
fn decide(state: &SimState, phone_number_id: &str, message: &Value) -> (Verdict, bool) {
    let mut sim = state.lock();
    let now = Instant::now();
    let at_us = now.duration_since(sim.started).as_micros() as u64;
    let to = message
        .get("to")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = message
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let late = take_fault(&mut sim, phone_number_id, &to, |f| f.kind == "late").is_some()
        || (sim.config.late_rate > 0.0 && fastrand::f64() < sim.config.late_rate);
    let verdict = evaluate(&mut sim, phone_number_id, &to, &kind, message, now);
    let code = match &verdict {
        Verdict::Accept { .. } => 0,
        Verdict::Refuse(status, code, _) => {
            if *code == 0 {
                i64::from(status.as_u16())
            } else {
                *code
            }
        }
        Verdict::Timeout => 504,
    };
    let number = sim.names.intern(phone_number_id);
    sim.attempts.push(KeptAttempt {
        at_us,
        number,
        to: to.as_str().into(),
        code,
    });
    if let Verdict::Accept { wamid, .. } = &verdict {
        sim.seq += 1;
        let seq = sim.seq;
        let template = message
            .pointer("/template/name")
            .and_then(Value::as_str)
            .map(|name| sim.names.intern(name));
        let callback_data = message
            .get("biz_opaque_callback_data")
            .and_then(Value::as_str)
            .map(CallbackData::read);
        let kind = sim.names.intern(&kind);
        sim.received.push(KeptMessage {
            seq,
            at_us,
            number,
            kind,
            template,
            to: to.into_boxed_str(),
            wamid: *wamid,
            callback_data,
        });
    }
    (verdict, late)
}

/// Takes one use of the first fault for this number and recipient that `wanted` accepts.
fn take_fault(
    sim: &mut Sim,
    phone_number_id: &str,
    to: &str,
    wanted: impl Fn(&Fault) -> bool,
) -> Option<Fault> {
    let i = sim.faults.iter().position(|f| {
        f.phone_number_id
            .as_deref()
            .is_none_or(|p| p == phone_number_id)
            && f.to.as_deref().is_none_or(|t| t == to)
            && wanted(f)
    })?;
    let fault = sim.faults[i].clone();
    if fault.count <= 1 {
        sim.faults.remove(i);
    } else {
        sim.faults[i].count -= 1;
    }
    Some(fault)
}

fn evaluate(
    sim: &mut Sim,
    phone_number_id: &str,
    to: &str,
    kind: &str,
    message: &Value,
    now: Instant,
) -> Verdict {
    if let Some(fault) = take_fault(sim, phone_number_id, to, |f| f.kind != "late") {
        return match fault.kind.as_str() {
            "timeout" => Verdict::Timeout,
            "http_500" => Verdict::Refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                0,
                "simulated server error",
            ),
            _ => {
                let code = fault.code.unwrap_or(131000);
                let status = if code == 190 {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::BAD_REQUEST
                };
                Verdict::Refuse(status, code, "Simulated error")
            }
        };
    }
    if sim.config.error_rate > 0.0 && fastrand::f64() < sim.config.error_rate {
        return Verdict::Refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            0,
            "simulated server error",
        );
    }
    if message.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") || to.is_empty()
    {
        return Verdict::Refuse(StatusCode::BAD_REQUEST, 100, "Invalid parameter");
    }
    let (default_mps, default_tier) = (sim.config.default_mps, sim.config.default_tier);
    let window_open = sim
        .windows
        .get(&(phone_number_id.to_string(), to.to_string()))
        .is_some_and(|until| *until > now);
    let template = (kind == "template").then(|| {
        (
            message
                .pointer("/template/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            message
                .pointer("/template/language/code")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        )
    });
    let template_status = template.as_ref().map(|t| sim.templates.get(t).cloned());
    let strict = sim.config.strict_templates;
    let (pair_interval, pair_burst) = (sim.config.pair_interval, sim.config.pair_burst);
    let number = sim
        .numbers
        .entry(phone_number_id.to_string())
        .or_insert_with(|| NumberState {
            mps: default_mps,
            tier: default_tier,
            accepted_at: VecDeque::new(),
            unique: HashMap::new(),
            contacts: VecDeque::new(),
            pair_tat: HashMap::new(),
            pair_sweep_at: PAIR_SWEEP_FLOOR,
            access_token: None,
        });
    // Throughput: accepted messages in the last second, exactly.
    while number
        .accepted_at
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        number.accepted_at.pop_front();
    }
    if number.accepted_at.len() >= number.mps as usize {
        return Verdict::Refuse(StatusCode::BAD_REQUEST, 130429, "Rate limit hit");
    }
    if template.is_none() && !window_open {
        return Verdict::Refuse(
            StatusCode::BAD_REQUEST,
            131047,
            "Re-engagement message: more than 24 hours have passed since the recipient last replied",
        );
    }
    match template_status {
        Some(Some(status)) => match status.as_str() {
            "PAUSED" => {
                return Verdict::Refuse(StatusCode::BAD_REQUEST, 132015, "Template is paused");
            }
            "DISABLED" => {
                return Verdict::Refuse(StatusCode::BAD_REQUEST, 132016, "Template is disabled");
            }
            "APPROVED" => {}
            _ => {
                return Verdict::Refuse(
                    StatusCode::BAD_REQUEST,
                    132001,
                    "Template name does not exist in the translation",
                );
            }
        },
        Some(None) if strict => {
            return Verdict::Refuse(
                StatusCode::BAD_REQUEST,
                132001,
                "Template name does not exist in the translation",
            );
        }
        _ => {}
    }
    // Pair rate: GCRA with Meta's spacing and burst.
    let tat = number.pair_tat.get(to).copied().unwrap_or(now).max(now);
    let burst_allowance = pair_interval * pair_burst.saturating_sub(1);
    if tat.duration_since(now) > burst_allowance {
        return Verdict::Refuse(
            StatusCode::BAD_REQUEST,
            131056,
            "(Business Account, Consumer Account) pair rate limit hit",
        );
    }
    // Messaging limit: unique recipients outside a window in the moving 24 h.
    if template.is_some()
        && !window_open
        && let Some(tier) = number.tier
    {
        while let Some((at, recipient)) = number.contacts.front() {
            if now.duration_since(*at) < TIER_WINDOW {
                break;
            }
            // Forget the recipient only if this was their latest contact.
            if number.unique.get(recipient) == Some(at) {
                number.unique.remove(recipient);
            }
            number.contacts.pop_front();
        }
        if !number.unique.contains_key(to) && number.unique.len() >= tier as usize {
            return Verdict::Refuse(
                StatusCode::BAD_REQUEST,
                131048,
                "Spam rate limit hit: messaging limit reached",
            );
        }
        number.unique.insert(to.to_string(), now);
        number.contacts.push_back((now, to.to_string()));
    }
    number.pair_tat.insert(to.to_string(), tat + pair_interval);
    if number.pair_tat.len() >= number.pair_sweep_at {
        number.pair_tat.retain(|_, tat| *tat > now);
        number.pair_sweep_at = (number.pair_tat.len() * 2).max(PAIR_SWEEP_FLOOR);
    }
    number.accepted_at.push_back(now);
    let undeliverable = sim.undeliverable.contains(to);
    Verdict::Accept {
        wamid: new_wamid(),
        to: to.to_string(),
        undeliverable,
        category: if template.is_some() {
            "marketing"
        } else {
            "service"
        },
    }
}

/// The most messages accepted in any one-second window: what a per-second cap is judged by.
pub fn peak_per_second(received: &[Received]) -> usize {
    let mut times: Vec<u64> = received.iter().map(|r| r.at_us).collect();
    times.sort_unstable();
    let (mut best, mut start) = (0, 0);
    for end in 0..times.len() {
        while times[end] - times[start] >= 1_000_000 {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[derive(Deserialize)]
struct NumberFilter {
    phone_number_id: Option<String>,
}

async fn received(
    State(state): State<SimState>,
    Query(filter): Query<NumberFilter>,
) -> Json<Value> {
    let sim = state.lock();
    let number = filter.phone_number_id.as_deref().map(|p| sim.names.find(p));
    let list: Vec<Received> = sim
        .received
        .iter()
        .filter(|r| number.is_none_or(|n| n == Some(r.number)))
        .map(|r| r.received(&sim.names))
        .collect();
    Json(json!({"count": list.len(), "messages": list}))
}

/// What a large run received, without listing it: messages accepted, distinct pregon message ids
/// among them (equal when none came twice), and the span between the first and the last.
async fn summary(State(state): State<SimState>) -> Json<Value> {
    let sim = state.lock();
    let mut ids = std::collections::HashSet::with_capacity(sim.received.len());
    for r in &sim.received {
        if let Some(id) = &r.callback_data {
            ids.insert(id);
        }
    }
    let first = sim.received.iter().map(|r| r.at_us).min();
    let last = sim.received.iter().map(|r| r.at_us).max();
    Json(json!({
        "count": sim.received.len(),
        "distinct_ids": ids.len(),
        "first_at_us": first,
        "last_at_us": last,
    }))
}

async fn attempts(
    State(state): State<SimState>,
    Query(filter): Query<NumberFilter>,
) -> Json<Value> {
    let sim = state.lock();
    let number = filter.phone_number_id.as_deref().map(|p| sim.names.find(p));
    let list: Vec<Attempt> = sim
        .attempts
        .iter()
        .filter(|a| number.is_none_or(|n| n == Some(a.number)))
        .map(|a| a.attempt(&sim.names))
        .collect();
    Json(json!({"count": list.len(), "attempts": list}))
}

#[derive(Deserialize)]
struct NumberConfig {
    phone_number_id: String,
    #[serde(default)]
    mps: Option<u32>,
    /// A limit of unique recipients per 24 h; null or absent for unlimited.
    #[serde(default)]
    tier: Option<u32>,
    /// A new quality rating (GREEN, YELLOW, RED): reported to the webhook receiver as Meta does.
    #[serde(default)]
    quality: Option<String>,
    /// The only access token sends through this number may carry (Meta's 190 for another).
    #[serde(default)]
    access_token: Option<String>,
}

async fn configure_number(State(state): State<SimState>, body: Bytes) -> Response {
    let Ok(c) = serde_json::from_slice::<NumberConfig>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {phone_number_id, mps?, tier?, quality?}",
        )
            .into_response();
    };
    let mut sim = state.lock();
    let default_mps = sim.config.default_mps;
    let number = sim
        .numbers
        .entry(c.phone_number_id.clone())
        .or_insert_with(|| NumberState {
            mps: default_mps,
            tier: None,
            accepted_at: VecDeque::new(),
            unique: HashMap::new(),
            contacts: VecDeque::new(),
            pair_tat: HashMap::new(),
            pair_sweep_at: PAIR_SWEEP_FLOOR,
            access_token: None,
        });
    if let Some(mps) = c.mps {
        number.mps = mps.max(1);
    }
    number.tier = c.tier;
    if c.access_token.is_some() {
        number.access_token = c.access_token;
    }
    drop(sim);
    if let (Some(quality), Some(hooks)) = (&c.quality, &state.webhooks) {
        let event = match quality.to_ascii_uppercase().as_str() {
            "RED" => "FLAGGED",
            "GREEN" => "UNFLAGGED",
            _ => "DOWNGRADE",
        };
        let _ = hooks.send(Outgoing::Change {
            field: "phone_number_quality_update".into(),
            value: json!({"display_phone_number": c.phone_number_id, "event": event}),
        });
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct TemplateConfig {
    name: String,
    language: String,
    status: String,
    /// MARKETING, UTILITY or AUTHENTICATION, for the list endpoint.
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    components: Option<Value>,
}

/// Sets a template's status (and listing); a change of status is reported to the webhook
/// receiver as a `message_template_status_update`.
async fn configure_template(State(state): State<SimState>, body: Bytes) -> Response {
    let Ok(t) = serde_json::from_slice::<TemplateConfig>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {name, language, status, category?, components?}",
        )
            .into_response();
    };
    let status = t.status.to_ascii_uppercase();
    let key = (t.name.clone(), t.language.clone());
    let previous = {
        let mut sim = state.lock();
        let id = sim.listings.len() + 1000;
        let listing = sim.listings.entry(key.clone()).or_insert_with(|| {
            json!({"name": t.name, "language": t.language, "id": id.to_string(),
                "category": "MARKETING", "components": []})
        });
        listing["status"] = json!(status);
        if let Some(category) = &t.category {
            listing["category"] = json!(category.to_ascii_uppercase());
        }
        if let Some(components) = &t.components {
            listing["components"] = components.clone();
        }
        sim.templates.insert(key, status.clone())
    };
    if let (Some(previous), Some(hooks)) = (previous, &state.webhooks)
        && previous != status
    {
        let (event, title) = match status.as_str() {
            "PAUSED" => ("PAUSED", Some("FIRST_PAUSE")),
            "APPROVED" if previous == "PAUSED" => ("APPROVED", Some("UNPAUSE")),
            other => (other, None),
        };
        let mut value = json!({"event": event, "message_template_name": t.name,
            "message_template_language": t.language, "reason": null});
        if let Some(title) = title {
            value["other_info"] = json!({"title": title});
        }
        let _ = hooks.send(Outgoing::Change {
            field: "message_template_status_update".into(),
            value,
        });
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

/// The Cloud API's template list: `{data, paging: {cursors: {before, after}, next}}`, paged.
async fn list_templates(
    State(state): State<SimState>,
    Path((_version, _waba)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(25).clamp(1, 1000);
    let start: usize = q
        .after
        .as_deref()
        .and_then(|a| a.strip_prefix("idx"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let sim = state.lock();
    let all: Vec<&Value> = sim.listings.values().collect();
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|v| (*v).clone())
        .collect();
    let end = start + page.len();
    let mut paging =
        json!({"cursors": {"before": format!("idx{start}"), "after": format!("idx{end}")}});
    if end < all.len() {
        paging["next"] = json!(format!(
            "https://graph.facebook.com/message_templates?after=idx{end}"
        ));
    }
    Json(json!({"data": page, "paging": paging})).into_response()
}

#[derive(Deserialize)]
struct Undeliverable {
    numbers: Vec<String>,
}

async fn configure_undeliverable(State(state): State<SimState>, body: Bytes) -> Response {
    let Ok(u) = serde_json::from_slice::<Undeliverable>(&body) else {
        return (StatusCode::BAD_REQUEST, "expected {numbers: [...]}").into_response();
    };
    state.lock().undeliverable.extend(u.numbers);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct Window {
    phone_number_id: String,
    recipient: String,
}

/// Simulates an inbound message from `recipient`, which opens a 24 h service window.
async fn open_window(State(state): State<SimState>, body: Bytes) -> Response {
    let Ok(w) = serde_json::from_slice::<Window>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {phone_number_id, recipient}",
        )
            .into_response();
    };
    state.lock().windows.insert(
        (w.phone_number_id, w.recipient),
        Instant::now() + Duration::from_secs(24 * 3600),
    );
    StatusCode::NO_CONTENT.into_response()
}

async fn add_fault(State(state): State<SimState>, body: Bytes) -> Response {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(f) if matches!(f.kind.as_str(), "timeout" | "late" | "http_500" | "error") => {
            state.lock().faults.push(f);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "expected {kind: timeout|late|http_500|error, code?, count?, phone_number_id?, to?}",
        )
            .into_response(),
    }
}

async fn reset(State(state): State<SimState>) -> Response {
    let mut sim = state.lock();
    sim.numbers.clear();
    sim.templates.clear();
    sim.listings.clear();
    sim.windows.clear();
    sim.undeliverable.clear();
    sim.faults.clear();
    sim.received.clear();
    sim.attempts.clear();
    sim.names.clear();
    StatusCode::NO_CONTENT.into_response()
}
