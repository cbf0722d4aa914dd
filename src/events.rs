//! Lifecycle events out. Every state change writes its event into the PostgreSQL outbox in the
//! same statement as the change; the relay here publishes them to the `{ns}.events` topic exchange
//! and fans them out to HTTP callback subscriptions, which the deliverer posts, signed, with
//! retries for up to `callback_max_age`.
//!
//! Delivery is at least once: a consumer deduplicates by the event's `id`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::app::{Services, Shutdown};
use crate::domain::callback::{CallbackPolicy, check_url, is_public};
use crate::domain::retry::patient_delay;
use crate::store::StoreError;
use crate::store::events::{self as stored, DeliveryResult, DueDelivery};

/// Events one relay pass publishes at most.
const RELAY_BATCH: i64 = 500;

/// `v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`: the `X-Pregon-Signature` of a callback.
/// Signing the timestamp with the body lets a receiver refuse replays of old deliveries.
pub fn callback_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Publishes outbox events until shutdown.
pub async fn run_relay(services: Services, mut stop: Shutdown) {
    let poll = services.config.background_poll.0;
    loop {
        if stop.is_triggered() {
            break;
        }
        let published = match relay_once(&services).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "event relay pass failed; trying again");
                0
            }
        };
        if published == 0 {
            if let Ok(depth) = stored::outbox_depth(&services.pool).await {
                services.metrics.event_outbox_depth.set(depth);
            }
            tokio::select! {
                _ = stop.wait() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publishing events failed: {0}")]
    Publish(String),
}

impl From<sqlx::Error> for RelayError {
    fn from(e: sqlx::Error) -> Self {
        RelayError::Store(StoreError::Db(e))
    }
}

/// One pass: lock a batch, publish it with confirms, then fan out and delete it in the same
/// transaction. If anything fails the transaction rolls back and the batch is published again.
pub async fn relay_once(services: &Services) -> Result<usize, RelayError> {
    let mut tx = services.pool.begin().await?;
    let events = stored::lock_outbox(&mut tx, RELAY_BATCH).await?;
    if events.is_empty() {
        return Ok(0);
    }
    let exchange = services.names.events();
    let items: Vec<(String, String, Vec<u8>)> = events
        .iter()
        .map(|e| {
            (
                exchange.clone(),
                e.routing_key.clone(),
                serde_json::to_vec(&e.payload).unwrap_or_default(),
            )
        })
        .collect();
    // An event no subscriber is bound for yet is not an error.
    let results = services
        .publisher
        .publish_many_with(&items, crate::queue::Routing::Optional)
        .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(RelayError::Publish(e.to_string()));
    }
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    stored::settle_outbox(&mut tx, &ids).await?;
    tx.commit().await?;
    for e in &events {
        services
            .metrics
            .events_published
            .with_label_values(&[&e.event_type])
            .inc();
    }
    Ok(events.len())
}

/// Posts due callback deliveries until shutdown.
pub async fn run_callbacks(services: Services, mut stop: Shutdown) {
    let config = services.config.clone();
    let policy = config.callback_policy();
    let http = match reqwest::Client::builder()
        .timeout(config.callback_timeout.0)
        .connect_timeout(config.http_connect_timeout.0)
        // A redirect could lead inside; the answer is recorded as it is instead.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(PublicOnly { policy })
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the callback HTTP client");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(config.callback_concurrency));
    let lease = (config.callback_timeout.0 * 3).as_secs_f64().max(30.0);
    loop {
        if stop.is_triggered() {
            break;
        }
        let free = i64::try_from(slots.available_permits()).unwrap_or(0);
        let due = if free == 0 {
            Vec::new()
        } else {
            stored::claim_deliveries(&services.pool, &services.derived.keyring, free, lease)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "could not claim callback deliveries");
                    Vec::new()
                })
        };
        let claimed = due.len();
        for delivery in due {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let services = services.clone();
            let http = http.clone();
            tokio::spawn(async move {
                deliver(&services, &http, delivery).await;
                drop(permit);
            });
        }
        if claimed == 0 {
            tokio::select! {
                _ = stop.wait() => break,
                _ = tokio::time::sleep(config.background_poll.0) => {}
            }
        }
    }
    // Let deliveries in flight record their outcome.
    let all = u32::try_from(config.callback_concurrency).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(config.callback_timeout.0, slots.acquire_many(all)).await;
}

/// Resolves a callback's host and keeps only the addresses callbacks may reach, at the moment the
/// delivery connects: a name that resolved to a public address when it was subscribed and now
/// resolves inside (DNS rebinding) is refused here.
struct PublicOnly {
    policy: CallbackPolicy,
}

#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to addresses callbacks may not reach")]
struct NotPublic(String);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.policy.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(Box::new(NotPublic(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What a subscriber is told about a failed request: what kind of failure, never the internal
/// detail (resolver messages, addresses, TLS internals), which goes to the log instead.
fn public_error(e: &reqwest::Error) -> &'static str {
    let refused_address =
        std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .any(|cause| cause.is::<NotPublic>());
    if refused_address {
        "address not allowed: the host resolves to a loopback, private, link-local or metadata address"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    }
}

async fn deliver(services: &Services, http: &reqwest::Client, d: DueDelivery) {
    let body = serde_json::to_vec(&d.payload).unwrap_or_default();
    let timestamp = chrono::Utc::now().timestamp();
    let signature = callback_signature(d.secret.as_bytes(), timestamp, &body);
    // A literal address in the URL is never resolved, so it is judged here.
    let allowed = url::Url::parse(&d.url)
        .ok()
        .is_some_and(|u| check_url(&u, services.config.callback_policy()).is_ok());
    if !allowed {
        let result = DeliveryResult::Failed {
            status: None,
            error: "address not allowed: the url is not an https URL of a public host".into(),
            retry_at: None,
        };
        return record(services, d.id, &result).await;
    }
    let answer = http
        .post(&d.url)
        .header("content-type", "application/json")
        .header("user-agent", "pregon-callbacks/1")
        .header("x-pregon-event", &d.event_type)
        .header("x-pregon-delivery", d.id.to_string())
        .header("x-pregon-timestamp", timestamp.to_string())
        .header("x-pregon-signature", signature)
        .body(body)
        .send()
        .await;
    let attempt = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
    let max_age = chrono::Duration::from_std(services.config.callback_max_age.0)
        .unwrap_or(chrono::Duration::days(1));
    let retry_at = || {
        let next = chrono::Utc::now()
            + chrono::Duration::from_std(patient_delay(
                services.config.callback_retry_base.0,
                attempt,
                fastrand::f64(),
            ))
            .unwrap_or(chrono::Duration::hours(1));
        (next < d.created_at + max_age).then_some(next)
    };
    let result = match answer {
        Ok(r) if r.status().is_success() => DeliveryResult::Delivered {
            status: r.status().as_u16(),
        },
        // 410 Gone: the receiver says this endpoint is no more; stop trying.
        Ok(r) if r.status() == reqwest::StatusCode::GONE => DeliveryResult::Failed {
            status: Some(410),
            error: "receiver answered 410 Gone".into(),
            retry_at: None,
        },
        Ok(r) => DeliveryResult::Failed {
            status: Some(r.status().as_u16()),
            error: format!("receiver answered HTTP {}", r.status().as_u16()),
            retry_at: retry_at(),
        },
        Err(e) => {
            tracing::info!(delivery = d.id, error = %e, "callback delivery failed");
            DeliveryResult::Failed {
                status: None,
                error: public_error(&e).into(),
                retry_at: retry_at(),
            }
        }
    };
    record(services, d.id, &result).await;
}

async fn record(services: &Services, id: i64, result: &DeliveryResult) {
    let outcome = match result {
        DeliveryResult::Delivered { .. } => "delivered",
        DeliveryResult::Failed { retry_at: None, .. } => "gave_up",
        DeliveryResult::Failed { .. } => "failed",
    };
    services
        .metrics
        .callback_deliveries
        .with_label_values(&[outcome])
        .inc();
    if let Err(e) = stored::record_delivery(&services.pool, id, result).await {
        // The lease runs out and the delivery is made again: at least once.
        tracing::warn!(delivery = id, error = %e, "could not record a callback delivery");
    }
}

/// The event types a subscription may ask for.
pub const EVENT_TYPES: &[&str] = &[
    "message.queued",
    "message.sent",
    "message.delivered",
    "message.read",
    "message.failed",
    "message.skipped",
    "message.deferred",
    "message.replied",
    "recipient.opted_out",
];

/// Background tasks that run beside the dispatcher: webhook processing, the event relay and
/// the callback deliverer.
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn callback_signatures_cover_timestamp_and_body() {
        let a = callback_signature(b"s", 1700000000, b"{}");
        assert!(a.starts_with("v1="));
        assert_eq!(a.len(), 3 + 64);
        assert_ne!(a, callback_signature(b"s", 1700000001, b"{}"));
        assert_ne!(a, callback_signature(b"s", 1700000000, b"{ }"));
        assert_ne!(a, callback_signature(b"t", 1700000000, b"{}"));
    }

    #[test]
    fn callback_retry_delays_grow_to_an_hour() {
        let base = Duration::from_secs(5);
        assert!(patient_delay(base, 1, 0.5) >= Duration::from_secs(4));
        assert!(patient_delay(base, 2, 0.5) >= Duration::from_secs(9));
        assert!(patient_delay(base, 30, 1.0) <= Duration::from_secs(3600 * 12 / 10));
        assert!(patient_delay(base, 30, 0.0) >= Duration::from_secs(2880));
    }
}
