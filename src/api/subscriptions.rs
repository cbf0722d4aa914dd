//! HTTP callback subscriptions (per API key) and their delivery log; recipient suppressions.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::ApiState;
use super::auth::{
    AnyKey, Authorized, Caller, ManageSubscriptions, Operate, ReadConsent, generate_secret,
};
use super::contract::{Content, Endpoint};
use super::error::{ApiError, parse_json};
use crate::domain::callback::{CallbackRefusal, check_url};
use crate::events::EVENT_TYPES;
use crate::store::events as stored;
use crate::store::webhooks::{Suppression, suppression};

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::post("/v1/subscriptions", create)
            .needs::<ManageSubscriptions>()
            .tag("callbacks")
            .summary("Subscribe an https URL to lifecycle events, signed with a secret")
            .json_body::<SubscriptionBody>()
            .returns::<SubscriptionCreated>(201, "subscribed; the secret is shown once"),
        Endpoint::get("/v1/subscriptions", list)
            .tag("callbacks")
            .summary("This key's subscriptions (every one, for an admin key)")
            .returns::<Subscriptions>(200, "subscriptions"),
        Endpoint::get("/v1/subscriptions/{id}", show)
            .uuid_id()
            .tag("callbacks")
            .summary("A subscription")
            .returns::<stored::Subscription>(200, "the subscription"),
        Endpoint::delete("/v1/subscriptions/{id}", remove)
            .uuid_id()
            .needs::<ManageSubscriptions>()
            .tag("callbacks")
            .summary("Unsubscribe")
            .answers(204, "removed", Content::Empty),
        Endpoint::get("/v1/subscriptions/{id}/deliveries", deliveries)
            .uuid_id()
            .tag("callbacks")
            .summary("A subscription's recent callback deliveries, newest first")
            .query::<DeliveriesQuery>()
            .returns::<Deliveries>(200, "deliveries"),
        Endpoint::get("/v1/suppressions/{recipient}", get_suppression)
            .needs::<ReadConsent>()
            .tag("consent")
            .summary("Whether a recipient is suppressed, and why")
            .returns::<Suppression>(200, "suppressed"),
        Endpoint::delete("/v1/suppressions/{recipient}", lift_suppression)
            .needs::<Operate>()
            .tag("consent")
            .summary("Lift a suppression")
            .answers(204, "lifted", Content::Empty),
    ]
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct SubscriptionCreated {
    #[serde(flatten)]
    subscription: stored::Subscription,
    /// Shown once, here: callbacks are signed with it.
    secret: String,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct Subscriptions {
    subscriptions: Vec<stored::Subscription>,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
struct Deliveries {
    subscription: Uuid,
    deliveries: Vec<stored::DeliveryRow>,
}

#[derive(Deserialize, schemars::JsonSchema)]
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
        caller.key_id(),
        url.as_str(),
        &events,
        &secret,
    )
    .await
    .map_err(ApiError::internal)?;
    // The secret is shown once, here, like an API key.
    let answer = SubscriptionCreated {
        subscription: saved,
        secret,
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn list(
    State(state): State<ApiState>,
    caller: Authorized<AnyKey>,
) -> Result<Response, ApiError> {
    let scope = (!caller.is_unscoped_admin()).then_some(caller.key_id());
    let subs =
        stored::list_subscriptions(&state.services.pool, &state.services.derived.keyring, scope)
            .await
            .map_err(ApiError::internal)?;
    Ok(Json(Subscriptions {
        subscriptions: subs,
    })
    .into_response())
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
        Some(s) if caller.is_unscoped_admin() || Some(s.api_key_id) == caller.api_key_id() => Ok(s),
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
    Ok(Json(sub).into_response())
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

#[derive(Deserialize, schemars::JsonSchema)]
struct DeliveriesQuery {
    /// 1 to 1000; 50 when left out.
    #[serde(default)]
    limit: Option<i64>,
}

async fn deliveries(
    State(state): State<ApiState>,
    caller: Authorized<AnyKey>,
    Path(id): Path<String>,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_query", None, e.body_text()))?;
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
    Ok(Json(Deliveries {
        subscription: sub.id,
        deliveries: rows,
    })
    .into_response())
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
        Some(s) => Ok(Json(s).into_response()),
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
