//! The webhook receiver: Meta's verification handshake and signed POSTs. A POST is checked and
//! stored, then acknowledged; the processor (`crate::webhooks`) acts on it later, so the answer is
//! fast and nothing is lost while processing is down.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::contract::{Content, Endpoint};
use super::error::ApiError;
use crate::store::webhooks::{self as stored, RawState};
use crate::whatsapp;

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::get("/webhooks/whatsapp", handshake)
            .signed()
            .tag("webhooks")
            .summary("Meta's verification handshake: echoes hub.challenge")
            .query::<Handshake>()
            .answers(200, "hub.challenge, echoed", Content::Text)
            .errors(&[403]),
        Endpoint::post("/webhooks/whatsapp", receive)
            .signed()
            .tag("webhooks")
            .summary("Meta's webhook calls: checked, stored, acknowledged; processed later")
            .header(
                "X-Hub-Signature-256",
                "sha256=<HMAC-SHA256 of the raw body with the app secret>",
            )
            .body(Content::json::<serde_json::Value>())
            .answers(200, "stored", Content::Text)
            .errors(&[400, 401])
            // The receiver applies its own, larger limit while reading the body.
            .map_route(|r| r.layer(DefaultBodyLimit::disable())),
    ]
}

/// The handshake's query, as Meta sends it.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[allow(dead_code)] // Read by name from the query map: a handshake never fails to parse.
struct Handshake {
    /// `subscribe`.
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    /// Must match `webhook_verify_token`.
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

async fn handshake(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let expected = &state.services.config.webhook_verify_token;
    let mode = query.get("hub.mode").map(String::as_str);
    let token = query.get("hub.verify_token").map(String::as_bytes);
    let challenge = query.get("hub.challenge");
    let token_ok =
        !expected.is_empty() && token.is_some_and(|t| constant_time_eq(t, expected.as_bytes()));
    match (mode, challenge) {
        (Some("subscribe"), Some(challenge)) if token_ok => {
            count(&state, "verified");
            (StatusCode::OK, challenge.clone()).into_response()
        }
        _ => {
            count(&state, "verify_refused");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "verification_refused",
                Some("hub.verify_token"),
                "hub.mode must be subscribe and hub.verify_token must match webhook_verify_token",
            )
            .into_response()
        }
    }
}

async fn receive(State(state): State<ApiState>, headers: HeaderMap, body: Body) -> Response {
    let started = std::time::Instant::now();
    let response = match accept(&state, &headers, body).await {
        Ok(()) => {
            count(&state, "accepted");
            (StatusCode::OK, "OK").into_response()
        }
        Err((outcome, error)) => {
            count(&state, outcome);
            error.into_response()
        }
    };
    state
        .services
        .metrics
        .webhook_ack_seconds
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn accept(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), (&'static str, ApiError)> {
    let services = &state.services;
    let limit = services.config.webhook_max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        (
            "too_large",
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                None,
                format!("webhook bodies are limited to {limit} bytes"),
            ),
        )
    })?;
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !whatsapp::verify(&services.derived.app_secrets, &bytes, signature) {
        return Err((
            "bad_signature",
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                Some("X-Hub-Signature-256"),
                "missing or wrong signature: expected sha256=<HMAC-SHA256 of the raw body with the app secret>",
            ),
        ));
    }
    // Checked without building a tree: the processor parses it properly.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
        // Kept for inspection: a signed body is Meta's (or someone holding the secret).
        let stored = stored::insert_raw_event(&services.pool, &bytes, RawState::Malformed).await;
        if let Err(store_error) = stored {
            tracing::warn!(error = %store_error, "could not keep a malformed webhook body");
        }
        return Err((
            "malformed",
            ApiError::bad_request(
                "malformed_json",
                Some("body"),
                format!("body is not JSON: {e}"),
            ),
        ));
    }
    stored::insert_raw_event(&services.pool, &bytes, RawState::Pending)
        .await
        .map_err(|e| ("store_unavailable", ApiError::internal(e)))?;
    Ok(())
}

fn count(state: &ApiState, outcome: &str) {
    state
        .services
        .metrics
        .webhook_requests
        .with_label_values(&[outcome])
        .inc();
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
