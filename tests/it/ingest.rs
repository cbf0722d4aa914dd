//! Direct RabbitMQ ingest: validated like HTTP; refusals recorded, never dropped.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Env, Options, recipients, template_body};

#[tokio::test]
async fn ingest_queues_valid_requests_and_records_refusals() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550300";
    env.sender(sender, json!(1000), 80).await;
    env.template("order_update", "utility").await;
    env.start_worker();
    let to = &recipients(1, 30)[0];
    let exchange = env.services.names.ingest();
    let publish = |payload: String| {
        let publisher = env.services.publisher.clone();
        let exchange = exchange.clone();
        async move {
            publisher
                .publish(&exchange, sender, payload.as_bytes())
                .await
                .unwrap()
        }
    };
    publish(json!({"schema": "pregon.enqueue.v1", "phone_number_id": sender, "idempotency_key": "ord-1",
                   "message": template_body(to, "order_update")}).to_string()).await;
    publish(json!({"schema": "pregon.enqueue.v1", "phone_number_id": sender, "idempotency_key": "ord-1",
                   "message": template_body(to, "order_update")}).to_string()).await;
    publish(
        json!({"schema": "pregon.enqueue.v1", "phone_number_id": sender,
                   "message": template_body("12", "order_update")})
        .to_string(),
    )
    .await;
    publish(
        json!({"schema": "pregon.enqueue.v1", "phone_number_id": "404",
                   "message": template_body(to, "order_update")})
        .to_string(),
    )
    .await;
    publish("definitely not json".into()).await;
    publish(
        json!({"schema": "pregon.enqueue.v9", "phone_number_id": sender, "message": {}})
            .to_string(),
    )
    .await;
    env.wait_counts(sender, Duration::from_secs(20), |c| {
        c.get("sent") == Some(&1)
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refusals = loop {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT code, field FROM ingest_refusals ORDER BY id")
                .fetch_all(&env.services.pool)
                .await
                .unwrap();
        if rows.len() >= 4 || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut codes: Vec<(String, Option<String>)> = refusals;
    codes.sort();
    assert_eq!(
        codes,
        vec![
            ("invalid_envelope".into(), None),
            ("invalid_phone_number".into(), Some("message.to".into())),
            ("unknown_sender".into(), Some("phone_number_id".into())),
            ("unsupported_schema".into(), Some("schema".into())),
        ]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.received(sender).await.len(),
        1,
        "the same idempotency key was sent twice"
    );
    env.cleanup().await;
}
