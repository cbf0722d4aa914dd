//! RabbitMQ goes away and comes back. The test runs a RabbitMQ node of its own (its own node name,
//! port and data directory), never the machine's, and stops and starts it.

use std::collections::HashMap;
use std::time::Duration;

use pregon::chaos::PrivateBroker;
use pregon::simulator::SimConfig;
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Env, Options, recipients, template_body};

async fn enqueue(env: &Env, sender: &str, to: &str, key: &str) -> reqwest::Response {
    env.http
        .post(format!("{}/v1/{sender}/messages", env.api_url))
        .bearer_auth(&env.admin_key)
        .header("Idempotency-Key", key)
        .json(&template_body(to, "order_update"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_broker_restart_is_survived_without_a_restart_of_pregon() {
    let broker = std::sync::Arc::new(
        tokio::task::spawn_blocking(PrivateBroker::start)
            .await
            .unwrap()
            .expect("a private RabbitMQ node"),
    );
    let sender = "1065550950";
    let mut env = Env::start(Options {
        sim: SimConfig {
            latency: Duration::from_millis(20),
            ..SimConfig::default()
        },
        amqp_url: Some(broker.url()),
        ..Options::default()
    })
    .await;
    env.sender(sender, json!("unlimited"), 40).await;
    env.template("order_update", "utility").await;
    let before = recipients(200, 95);
    for (i, r) in before.iter().enumerate() {
        let answer = enqueue(&env, sender, r, &format!("before-{i}")).await;
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
    }
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(30), |c| {
        c.get("sent").is_some_and(|n| *n >= 40)
    })
    .await;

    // The broker goes away.
    let node = broker.clone();
    let stopped = tokio::task::spawn_blocking(move || node.stop_app())
        .await
        .unwrap();
    assert!(stopped);
    // Enqueues are refused at once, with Retry-After, and nothing is written.
    let refused = env
        .eventually(
            "a 503 while the broker is away",
            Duration::from_secs(10),
            async || {
                let answer = enqueue(&env, sender, &before[0], "during-outage").await;
                (answer.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
            },
        )
        .await;
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
    let (ready, _) = env.get("/readyz").await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        env.counts(sender).await.values().sum::<i64>(),
        200,
        "nothing half-done"
    );

    // It comes back: pregon reconnects by itself; the queued messages go out, new ones are taken.
    let node = broker.clone();
    let started = tokio::task::spawn_blocking(move || node.start_app())
        .await
        .unwrap();
    assert!(started);
    let after = recipients(20, 96);
    let back = tokio::time::Instant::now();
    for (i, r) in after.iter().enumerate() {
        let key = format!("after-{i}");
        env.eventually(
            "enqueue after the restart",
            Duration::from_secs(30),
            async || {
                (enqueue(&env, sender, r, &key).await.status() == StatusCode::ACCEPTED)
                    .then_some(())
            },
        )
        .await;
    }
    env.wait_counts(sender, Duration::from_secs(90), |c| {
        c.get("sent") == Some(&220)
    })
    .await;
    eprintln!("recovered and drained in {:?}", back.elapsed());
    let mut times: HashMap<String, usize> = HashMap::new();
    for m in env.received(sender).await {
        *times.entry(m.to).or_default() += 1;
    }
    assert_eq!(times.len(), 220, "every recipient reached");
    assert!(times.values().all(|n| *n == 1), "nobody reached twice");
    let (ready, _) = env.get("/readyz").await;
    assert_eq!(ready, StatusCode::OK);

    // Flow control: a memory alarm blocks publishers, and enqueue says so at once.
    let node = broker.clone();
    let alarmed = tokio::task::spawn_blocking(move || {
        node.ctl(&["set_vm_memory_high_watermark", "absolute", "1"])
    })
    .await
    .unwrap();
    assert!(alarmed);
    // Until the alarm reaches the publishing connection, an enqueue may still be taken.
    let taken = std::cell::Cell::new(0i64);
    let tries = std::cell::Cell::new(0);
    let blocked = env
        .eventually(
            "a 503 while publishers are blocked",
            Duration::from_secs(20),
            async || {
                tries.set(tries.get() + 1);
                let key = format!("while-blocked-{}", tries.get());
                let answer = enqueue(&env, sender, &before[1], &key).await;
                if answer.status() == StatusCode::ACCEPTED {
                    taken.set(taken.get() + 1);
                }
                (answer.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
            },
        )
        .await;
    let body: serde_json::Value = blocked.json().await.unwrap();
    assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
    let node = broker.clone();
    let cleared =
        tokio::task::spawn_blocking(move || node.ctl(&["set_vm_memory_high_watermark", "0.4"]))
            .await
            .unwrap();
    assert!(cleared);
    env.eventually(
        "enqueue after the alarm",
        Duration::from_secs(30),
        async || {
            (enqueue(&env, sender, &before[1], "after-alarm")
                .await
                .status()
                == StatusCode::ACCEPTED)
                .then_some(())
        },
    )
    .await;
    let expected = 221 + taken.get();
    env.wait_counts(sender, Duration::from_secs(30), |c| {
        c.get("sent") == Some(&expected)
    })
    .await;
    env.cleanup().await;
    drop(broker);
}
