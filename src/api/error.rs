//! The API's error answer: `{"error": {"code", "field", "message"}}` with a 4xx or 5xx status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::refusal::{Refusal, RefusalKind};
use crate::enqueue::EnqueueError;

/// The body of every refusal.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    /// Machine-readable and stable: `invalid_field`, `unknown_campaign`, `rate_limited`, …
    pub code: &'static str,
    /// The field, query parameter or header at fault, when there is one.
    pub field: Option<String>,
    /// For a person.
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub field: Option<String>,
    pub message: String,
    /// Seconds a client should wait before trying again (`Retry-After`), on a 503.
    pub retry_after: Option<u32>,
}

/// How long a client is asked to wait after a 503 before it tries again.
const RETRY_AFTER_SECONDS: u32 = 2;

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> ApiError {
        let retry_after =
            (status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECONDS);
        ApiError {
            status,
            code,
            field: field.map(str::to_string),
            message: message.into(),
            retry_after,
        }
    }

    pub fn bad_request(
        code: &'static str,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, field, message)
    }

    pub fn unauthorized(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", None, message)
    }

    pub fn forbidden(message: String) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", None, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, None, message)
    }

    /// A 429: the caller has used up its request rate and may try again in `seconds`.
    pub fn too_many_requests(seconds: u32) -> ApiError {
        ApiError {
            retry_after: Some(seconds),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                None,
                format!("this API key has used up its request rate; try again in {seconds} s"),
            )
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "request failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            None,
            "a backing service is unavailable; nothing was queued, try again",
        )
    }

    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code,
            field: self.field.clone(),
            message: self.message.clone(),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!(ErrorBody {
            error: self.detail()
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// The one place a refusal's kind becomes an HTTP status.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        let status = match r.kind {
            RefusalKind::Invalid => StatusCode::BAD_REQUEST,
            RefusalKind::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
            RefusalKind::NotFound => StatusCode::NOT_FOUND,
            RefusalKind::Conflict => StatusCode::CONFLICT,
            RefusalKind::Forbidden => StatusCode::FORBIDDEN,
        };
        ApiError {
            status,
            code: r.code,
            field: r.field,
            message: r.message,
            retry_after: None,
        }
    }
}

impl From<EnqueueError> for ApiError {
    fn from(e: EnqueueError) -> ApiError {
        match e {
            EnqueueError::Refused(r) => r.into(),
            EnqueueError::StateRebuilding => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "state_rebuilding",
                None,
                EnqueueError::StateRebuilding.to_string(),
            ),
            EnqueueError::BrokerUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                None,
                EnqueueError::BrokerUnavailable.to_string(),
            ),
            other => ApiError::internal(other),
        }
    }
}

/// Parses a JSON body into `T`, naming what is wrong instead of axum's plain-text rejection.
/// A string holding a NUL character is refused here, for every body, since nothing could store
/// it (`domain::text`).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let parsed = parse_message_json(bytes)?;
    // In JSON a NUL can only be spelled `\u0000`: bodies without that spelling are not read again.
    if bytes.windows(6).any(|w| w == b"\\u0000")
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(field) = crate::domain::text::unstorable_path(&value)
    {
        return Err(ApiError::bad_request(
            crate::domain::text::NUL_CODE,
            Some(&field),
            crate::domain::text::NUL_MESSAGE,
        ));
    }
    Ok(parsed)
}

/// Parses a body of Cloud API messages. A NUL is left to `domain::message::validate`, which
/// refuses it message by message: in a batch, only the message that holds one.
pub fn parse_message_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "invalid_json"
        } else {
            "invalid_body"
        };
        ApiError::bad_request(code, None, e.to_string())
    })
}

/// Refuses a URL whose path or query decodes to a NUL character (`%00`): no handler could store
/// or look up such a value.
pub async fn storable_url(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = request.uri();
    let holds_nul = |part: Option<&str>| part.is_some_and(|p| p.contains("%00"));
    if holds_nul(Some(uri.path())) || holds_nul(uri.query()) {
        return ApiError::bad_request(
            crate::domain::text::NUL_CODE,
            None,
            "the URL may not hold a NUL character (%00)",
        )
        .into_response();
    }
    next.run(request).await
}

/// Gives the refusals axum makes itself (a path parameter of the wrong type, a body over the
/// limit, a method the route does not take) the API's error shape, so every 4xx a client sees
/// parses the same way. Answers that are already JSON, the console's pages, and successes pass
/// untouched.
pub async fn json_refusals(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let shaped = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !status.is_client_error() || shaped {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = match std::str::from_utf8(&text).map(str::trim) {
        Ok(text) if !text.is_empty() => text.to_string(),
        _ => status.canonical_reason().unwrap_or("refused").to_string(),
    };
    let code = match status {
        StatusCode::NOT_FOUND => "unknown_route",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_request",
    };
    let mut refusal = ApiError::new(status, code, None, message).into_response();
    // Keep what axum said beside the body (`Allow` on a 405).
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            refusal.headers_mut().insert(name.clone(), value.clone());
        }
    }
    refusal
}
