//! The API's error answer: `{"error": {"code", "field", "message"}}` with a 4xx or 5xx status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::refusal::{Refusal, RefusalKind};
use crate::enqueue::EnqueueError;

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

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "field": self.field, "message": self.message}})
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
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "invalid_json"
        } else {
            "invalid_body"
        };
        ApiError::bad_request(code, None, e.to_string())
    })
}
