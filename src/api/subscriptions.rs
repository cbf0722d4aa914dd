//! HTTP callback subscriptions (per API key) and their delivery log; recipient suppressions.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::ApiState;
use super::auth::{
    AnyKey, Authorized, Caller, ManageSubscriptions, Operate, ReadConsent, generate_secret,
};
use super::error::{ApiError, parse_json};
use crate::domain::callback::{CallbackRefusal, check_url};
use crate::events::EVENT_TYPES;
use crate::store::events as stored;
use crate::store::webhooks::suppression;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/subscriptions", post(create).get(list))
        .route("/v1/subscriptions/{id}", delete(remove).get(show))
        .route("/v1/subscriptions/{id}/deliveries", get(deliveries))
        .route(
            "/v1/suppressions/{recipient}",
            get(get_suppression).delete(lift_suppression),
        )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionBody {
    url: String,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    secret: Option<String>,
}

async fn create(
    State(state): State<ApiState>,
    caller: Authorized<ManageSubscriptions>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: SubscriptionBody = parse_json(&body)?;
    let url = reqwest::Url::parse(&b.url)
        .ok()
        .filter(|u| u.host().is_some())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                Some("url"),
                "url must be an absolute https URL",
            )
        })?;
    if let Err(refusal) = check_url(&url, state.services.config.callback_policy()) {
        let status = match refusal {
            CallbackRefusal::AddressNotAllowed => StatusCode::UNPROCESSABLE_ENTITY,
            CallbackRefusal::NotHttps | CallbackRefusal::Credentials => StatusCode::BAD_REQUEST,
        };
        return Err(ApiError::new(
            status,
            refusal.code(),
            Some("url"),
            refusal.to_string(),
        ));
    }
    let events = b.events.unwrap_or_else(|| vec!["*".into()]);
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("events"),
            "events must name at least one event type, or \"*\"",
        ));
    }
    for (i, e) in events.iter().enumerate() {
        if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_field",
                Some(&format!("events[{i}]")),
                format!(
                    "unknown event type {e:?}; known: * or {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    let secret = match b.secret {
        Some(s) if s.len() < 16 => {
            return Err(ApiError::bad_request(
                "invalid_field",
                Some("secret"),
                "secret must be at least 16 characters (or left out to have one generated)",
            ));
        }
        Some(s) => s,
        None => generate_secret(),
    };
    let saved = stored::insert_subscription(
        &state.services.pool,
        &state.services.derived.keyring,
        caller.key_id,
        url.as_str(),
        &events,
        &secret,
    )
    .await
    .map_err(ApiError::internal)?;
    // The secret is shown once, here, like an API key.
    let mut answer = json!(saved);
    answer["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn list(
    State(state): State<ApiState>,
    caller: Authorized<AnyKey>,
) -> Result<Response, ApiError> {
    let scope = (!caller.is_unscoped_admin()).then_some(caller.key_id);
    let subs =
        stored::list_subscriptions(&state.services.pool, &state.services.derived.keyring, scope)
            .await
            .map_err(ApiError::internal)?;
    Ok(Json(json!({ "subscriptions": subs })).into_response())
}

async fn owned(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<stored::Subscription, ApiError> {
    let id = Uuid::parse_str(id)
        .map_err(|_| ApiError::bad_request("invalid_field", Some("id"), "id must be a UUID"))?;
    match stored::subscription(&state.services.pool, &state.services.derived.keyring, id)
        .await
        .map_err(ApiError::internal)?
    {
        Some(s) if caller.is_unscoped_admin() || s.api_key_id == caller.key_id => Ok(s),
        _ => Err(ApiError::not_found(
            "unknown_subscription",
            format!("no subscription {id}"),
        )),
    }
}

async fn show(
    State(state): State<ApiState>,
    caller: Authorized<AnyKey>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sub = owned(&state, &caller, &id).await?;
    Ok(Json(json!(sub)).into_response())
}

async fn remove(
    State(state): State<ApiState>,
    caller: Authorized<ManageSubscriptions>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sub = owned(&state, &caller, &id).await?;
    stored::delete_subscription(&state.services.pool, sub.id)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    limit: Option<i64>,
}

async fn deliveries(
    State(state): State<ApiState>,
    caller: Authorized<AnyKey>,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Response, ApiError> {
    let sub = owned(&state, &caller, &id).await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_field",
            Some("limit"),
            "limit must be 1 to 1000",
        ));
    }
    let rows = stored::recent_deliveries(&state.services.pool, sub.id, limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "subscription": sub.id, "deliveries": rows })).into_response())
}

async fn get_suppression(
    State(state): State<ApiState>,
    caller: Authorized<ReadConsent>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let recipient = super::phone_field(&raw, "recipient")?;
    caller
        .require_recipient(&state.services.pool, &recipient)
        .await?;
    match suppression(&state.services.pool, &recipient)
        .await
        .map_err(ApiError::internal)?
    {
        Some(s) => Ok(Json(json!(s)).into_response()),
        None => Err(ApiError::not_found(
            "not_suppressed",
            format!("{recipient} is not suppressed"),
        )),
    }
}

async fn lift_suppression(
    State(state): State<ApiState>,
    caller: Authorized<Operate>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let recipient = super::phone_field(&raw, "recipient")?;
    caller
        .require_recipient(&state.services.pool, &recipient)
        .await?;
    let had = state
        .services
        .unsuppress(&recipient)
        .await
        .map_err(ApiError::internal)?;
    if had {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(
            "not_suppressed",
            format!("{recipient} is not suppressed"),
        ))
    }
}
