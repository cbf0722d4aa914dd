//! Direct RabbitMQ ingest: validated like HTTP; refusals recorded, never dropped.

use std::time::Duration;

use reqwest::StatusCode;
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

fn envelope_for(sender: &str, key: &str, to: &str) -> Vec<u8> {
    json!({"schema": "pregon.enqueue.v1", "phone_number_id": sender, "idempotency_key": key,
           "message": template_body(to, "order_update")})
    .to_string()
    .into_bytes()
}

/// A request that keeps killing its consumer is dead-lettered by RabbitMQ past the ingest
/// queue's delivery limit, kept as an `ingest` dead job, and sent once when an operator redrives it.
#[tokio::test]
async fn an_ingest_request_redelivered_past_the_limit_is_dead_lettered_and_can_be_sent_again() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550301";
    env.sender(sender, json!(1000), 80).await;
    env.template("order_update", "utility").await;
    let to = &recipients(1, 31)[0];
    let names = env.services.names.clone();
    env.services
        .publisher
        .publish(
            &names.ingest(),
            "orders",
            &envelope_for(sender, "poison-1", to),
        )
        .await
        .unwrap();
    // Every crash of a consumer returns the delivery to the queue; do it until RabbitMQ stops
    // delivering it.
    let limit = pregon::queue::DELIVERY_LIMIT as u64;
    let deliveries = env
        .crash_consumer_of(&names.ingest_queue(), 2 * limit + 1)
        .await;
    assert!(
        (limit..=2 * limit).contains(&deliveries),
        "dead-lettered after {deliveries} deliveries"
    );
    env.start_worker();
    let listed = env
        .eventually(
            "the dead request listed",
            Duration::from_secs(10),
            async || {
                let (status, page) = env.get("/v1/dead").await;
                assert_eq!(status, StatusCode::OK, "{page}");
                (page["data"].as_array().map(Vec::len) == Some(1)).then_some(page)
            },
        )
        .await;
    let dead = &listed["data"][0];
    assert_eq!(dead["source"], "ingest", "{dead}");
    assert_eq!(dead["job"]["idempotency_key"], "poison-1", "{dead}");
    assert!(dead["message_id"].is_null(), "{dead}");
    assert!(env.received(sender).await.is_empty());
    let depth = pregon::queue::depth(&env.services.amqp.connection(), &names.dead())
        .await
        .unwrap();
    assert_eq!(depth, Some(0), "nothing left unread in ns.dead");

    let id = dead["id"].as_i64().unwrap();
    let (status, body) = env.post(&format!("/v1/dead/{id}/redrive"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["redriven_by"]
            .as_str()
            .map(|b| b.starts_with("api_key:")),
        Some(true)
    );
    env.wait_counts(sender, Duration::from_secs(20), |c| {
        c.get("sent") == Some(&1)
    })
    .await;
    let (status, again) = env.post(&format!("/v1/dead/{id}/redrive"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"]["code"], "already_redriven");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.received(sender).await.len(), 1);
    env.cleanup().await;
}

/// The ingest queue of an earlier version (no dead-letter exchange) is unbound, drained and
/// deleted by the worker; what it held is sent, and new requests reach the new queue.
#[tokio::test]
async fn the_ingest_queue_of_an_earlier_version_is_drained_then_deleted() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550302";
    env.sender(sender, json!(1000), 80).await;
    env.template("order_update", "utility").await;
    let to = recipients(3, 32);
    let names = env.services.names.clone();
    let legacy = names.legacy_ingest_queue();
    let connection = env.services.amqp.connection();
    {
        // As earlier versions declared it: a quorum queue bound to the exchange for everything.
        let channel = connection.create_channel().await.unwrap();
        pregon::queue::declare_plain_quorum(&channel, &legacy)
            .await
            .unwrap();
        channel
            .queue_bind(
                legacy.as_str().into(),
                names.ingest().as_str().into(),
                "#".into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        channel.close(200, "declared".into()).await.unwrap();
    }
    // Two requests wait in the old queue (and, bound to the same exchange, in the new one too:
    // their idempotency keys make the second copy a replay).
    for (i, to) in to[..2].iter().enumerate() {
        env.services
            .publisher
            .publish(
                &names.ingest(),
                "orders",
                &envelope_for(sender, &format!("old-{i}"), to),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        pregon::queue::depth(&connection, &legacy).await.unwrap(),
        Some(2)
    );
    env.start_worker();
    env.eventually(
        "the old queue deleted",
        Duration::from_secs(20),
        async || {
            let depth = pregon::queue::depth(&env.services.amqp.connection(), &legacy)
                .await
                .unwrap();
            depth.is_none().then_some(())
        },
    )
    .await;
    env.services
        .publisher
        .publish(
            &names.ingest(),
            "orders",
            &envelope_for(sender, "new-0", &to[2]),
        )
        .await
        .unwrap();
    env.wait_counts(sender, Duration::from_secs(20), |c| {
        c.get("sent") == Some(&3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = env.received(sender).await;
    assert_eq!(received.len(), 3, "each request sent once");
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_jobs")
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    env.cleanup().await;
}
