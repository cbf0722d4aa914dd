//! What one client can cost the API: requests per second per key, requests in flight, and how
//! long one request may take.
//!
//! The per-key rate is counted in each API process (governor, in memory): behind N processes a
//! key gets up to N times the rate. The limit is there to keep one runaway client from starving
//! the others, not to meter usage.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus::IntCounterVec;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::config::Config;

use super::error::ApiError;

/// Requests per second allowed to each API key, when limited.
#[derive(Clone)]
pub struct KeyRate {
    limiter: Option<Arc<DefaultKeyedRateLimiter<Uuid>>>,
    refused: IntCounterVec,
}

impl KeyRate {
    /// `rate` 0 turns the limit off; the burst is at least the rate.
    pub fn new(rate: u32, burst: u32, refused: IntCounterVec) -> KeyRate {
        let limiter = NonZeroU32::new(rate).map(|rate| {
            let burst = NonZeroU32::new(burst.max(rate.get())).unwrap_or(rate);
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        KeyRate { limiter, refused }
    }

    pub fn from_config(config: &Config, refused: IntCounterVec) -> KeyRate {
        KeyRate::new(config.api_key_rate, config.api_key_burst, refused)
    }

    /// A 429 with the seconds to wait when `key` has used up its rate.
    pub fn check(&self, key: Uuid) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        match limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                self.refused.with_label_values(&["rate_limited"]).inc();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(ApiError::too_many_requests(whole_seconds(wait)))
            }
        }
    }

    /// Once a minute, forgets keys idle long enough to have their whole burst back, so memory
    /// follows the keys in use; stops when the API that made the limiter is gone.
    pub fn forget_idle_keys(&self) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        let limiter = Arc::downgrade(limiter);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            every.tick().await;
            loop {
                every.tick().await;
                let Some(limiter) = limiter.upgrade() else {
                    return;
                };
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
    }
}

/// Retry-After takes whole seconds; a wait under one second is rounded up to one.
fn whole_seconds(wait: Duration) -> u32 {
    u32::try_from(wait.as_millis().div_ceil(1000))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The API's request budget: at most `in_flight` requests at once and `timeout` for each.
#[derive(Clone)]
pub struct RequestBudget {
    in_flight: Arc<Semaphore>,
    /// None for uploads, which take as long as the client's line does.
    timeout: Option<Duration>,
    refused: IntCounterVec,
}

impl RequestBudget {
    /// One budget per API process; `for_uploads` shares its places without the timeout.
    pub fn new(config: &Config, refused: IntCounterVec) -> RequestBudget {
        RequestBudget {
            in_flight: Arc::new(Semaphore::new(config.api_max_in_flight)),
            timeout: Some(config.api_request_timeout.0),
            refused,
        }
    }

    pub fn for_uploads(&self) -> RequestBudget {
        RequestBudget {
            timeout: None,
            ..self.clone()
        }
    }
}

/// Middleware: refuses a request when the API already holds `in_flight` of them (503, try again
/// in a second), and answers 503 `request_timeout` when one takes longer than `timeout`.
///
/// A request that times out is not cut off half-way: it runs on to its end on its own task (and
/// keeps its place in the budget until then), so what it was writing is written whole or not at
/// all. The client that gave up retries with its idempotency key and gets the first answer.
pub async fn within_budget(
    State(budget): State<RequestBudget>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = budget.in_flight.clone().try_acquire_owned() else {
        budget.refused.with_label_values(&["overloaded"]).inc();
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            None,
            "too many requests in flight; try again shortly",
        )
        .into_response();
    };
    let mut handler = tokio::spawn(async move {
        let response = next.run(request).await;
        drop(permit);
        response
    });
    let Some(timeout) = budget.timeout else {
        return finished(handler.await);
    };
    match tokio::time::timeout(timeout, &mut handler).await {
        Ok(done) => finished(done),
        Err(_) => {
            budget.refused.with_label_values(&["request_timeout"]).inc();
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                None,
                format!(
                    "no answer within {} s; the request may still complete: retry with the same idempotency key",
                    timeout.as_secs_f64()
                ),
            )
            .into_response()
        }
    }
}

fn finished(done: Result<Response, tokio::task::JoinError>) -> Response {
    match done {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "request handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                None,
                "the request failed; nothing is known to have been written",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("refused", "test"), &["reason"]).unwrap()
    }

    #[test]
    fn a_key_past_its_burst_is_told_how_long_to_wait() {
        let rate = KeyRate::new(1, 2, counter());
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert!(rate.check(a).is_ok());
        assert!(rate.check(a).is_ok());
        let refused = rate.check(a).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code, "rate_limited");
        assert_eq!(refused.retry_after, Some(1));
        // Another key has its own budget.
        assert!(rate.check(b).is_ok());
        assert_eq!(rate.refused.with_label_values(&["rate_limited"]).get(), 1);
    }

    #[test]
    fn rate_zero_is_no_limit() {
        let rate = KeyRate::new(0, 0, counter());
        for _ in 0..10_000 {
            assert!(rate.check(Uuid::nil()).is_ok());
        }
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        for (wait_ms, seconds) in [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (59_500, 60)] {
            assert_eq!(
                whole_seconds(Duration::from_millis(wait_ms)),
                seconds,
                "{wait_ms}"
            );
        }
    }
}
