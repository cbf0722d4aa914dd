//! Signed status webhooks from the simulator, batched like Meta's (up to 1,000 updates a POST).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::whatsapp::sign;

#[derive(Debug, Clone)]
pub struct StatusEvent {
    pub phone_number_id: String,
    pub wamid: String,
    pub recipient: String,
    pub status: &'static str,
    pub category: &'static str,
    pub error_code: Option<i64>,
    /// The send's `biz_opaque_callback_data`, which Meta echoes in its statuses.
    pub callback_data: Option<String>,
}

/// What the simulator reports to the receiver: message statuses, or any other change (a number's
/// quality, a template's status) as Meta's `field` and `value`.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Status(StatusEvent),
    Change { field: String, value: Value },
}

impl From<StatusEvent> for Outgoing {
    fn from(e: StatusEvent) -> Outgoing {
        Outgoing::Status(e)
    }
}

pub fn spawn(url: String, secret: String) -> mpsc::UnboundedSender<Outgoing> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(url, secret, rx));
    tx
}

async fn run(url: String, secret: String, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "simulator cannot build its webhook client");
            return;
        }
    };
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        while batch.len() < 1000 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        let body = envelope(&batch).to_string();
        batch.clear();
        let signature = sign(secret.as_bytes(), body.as_bytes());
        for attempt in 0..5u32 {
            let result = http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", &signature)
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(r) if r.status().is_success() => break,
                _ => tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await,
            }
        }
    }
}

fn envelope(events: &[Outgoing]) -> Value {
    let mut by_number: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let mut other = Vec::new();
    for e in events {
        let e = match e {
            Outgoing::Status(s) => s,
            Outgoing::Change { field, value } => {
                other.push(json!({"field": field, "value": value}));
                continue;
            }
        };
        let mut status = json!({
            "id": e.wamid,
            "status": e.status,
            "timestamp": timestamp,
            "recipient_id": e.recipient,
        });
        if e.status != "failed" {
            status["pricing"] = json!({"billable": e.category != "service", "pricing_model": "PMP",
                "category": e.category, "type": if e.category == "service" { "free_customer_service" } else { "regular" }});
        }
        if let Some(data) = &e.callback_data {
            status["biz_opaque_callback_data"] = json!(data);
        }
        if let Some(code) = e.error_code {
            status["errors"] = json!([{"code": code, "title": "Message undeliverable",
                "message": "Message undeliverable", "error_data": {"details": "Message Undeliverable."}}]);
        }
        by_number
            .entry(&e.phone_number_id)
            .or_default()
            .push(status);
    }
    let mut changes: Vec<Value> = by_number
        .into_iter()
        .map(|(number, statuses)| {
            json!({"field": "messages", "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": number, "phone_number_id": number},
                "statuses": statuses}})
        })
        .collect();
    changes.extend(other);
    let time = chrono::Utc::now().timestamp();
    json!({"object": "whatsapp_business_account",
           "entry": [{"id": "simulated-waba", "time": time, "changes": changes}]})
}
