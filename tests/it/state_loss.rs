//! Redis restarted empty: its copy of PostgreSQL's state is gone. Sends and enqueues hold until
//! it is rebuilt, then go on as if nothing happened: consent, opt-outs, open windows, the tier
//! count and "already sent" all survive, and nothing ends failed or skipped because of the loss.

use std::collections::HashMap;
use std::time::Duration;

use pregon::domain::Category;
use pregon::domain::job::{SendJob, TemplateRef};
use pregon::simulator::SimConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Env, Options, inbound, recipients, template_body, text_body};

async fn let_the_rebuild_go(env: &Env) {
    let client = redis::Client::open(env.config.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{{{}}}:copy-rebuild", env.config.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn enqueue(env: &Env, sender: &str, body: Value) -> String {
    let (status, answer) = env.post(&format!("/v1/{sender}/messages"), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    answer["messages"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn redis_restarted_empty_holds_everything_then_rebuilds_it_from_postgresql() {
    let sender = "1065550900";
    let mut env = Env::start(Options {
        sim: SimConfig {
            latency: Duration::from_millis(5),
            ..SimConfig::default()
        },
        ..Options::default()
    })
    .await;
    // A 250-recipient tier, as a new number has.
    env.sender(sender, json!(250), 80).await;
    env.template("promo", "marketing").await;
    env.template("order_update", "utility").await;
    let opted_in = recipients(350, 91);
    env.opt_in(&opted_in).await;
    let opted_out = recipients(20, 92);
    let writer = recipients(1, 93).remove(0);

    // Before the loss: 150 recipients reached, and a customer who wrote to us.
    env.start_worker();
    for r in &opted_in[..150] {
        enqueue(&env, sender, template_body(r, "promo")).await;
    }
    env.sim(
        "/_sim/windows",
        json!({"phone_number_id": sender, "recipient": writer}),
    )
    .await;
    env.webhook(&inbound(
        sender,
        &writer,
        "wamid.state-loss-inbound",
        json!({"type": "text", "text": {"body": "hola"}}),
    ))
    .await;
    env.wait_counts(sender, Duration::from_secs(30), |c| {
        c.get("sent") == Some(&150)
    })
    .await;
    env.eventually("the service window", Duration::from_secs(10), async || {
        env.services
            .state
            .window_open(sender, &writer)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    env.stop_worker().await;

    // Queued while no worker runs: 200 more marketing messages (only 100 fit the tier), utility
    // messages to people who then opt out, and a reply inside the window.
    let mut later = Vec::new();
    for r in &opted_in[150..] {
        later.push(enqueue(&env, sender, template_body(r, "promo")).await);
    }
    for r in &opted_out {
        later.push(enqueue(&env, sender, template_body(r, "order_update")).await);
    }
    later.push(enqueue(&env, sender, text_body(&writer)).await);
    let opt_outs: Vec<_> = opted_out
        .iter()
        .map(|r| pregon::store::ConsentEvent {
            recipient: r.clone(),
            purpose: "utility".into(),
            action: "opt_out".into(),
            source: "keyword".into(),
            evidence: Some("STOP".into()),
            actor: None,
        })
        .collect();
    env.services.record_consent(&opt_outs).await.unwrap();
    // A copy of a message sent before the loss comes back (a redelivery): its "sent" marker is
    // about to vanish with Redis.
    let first: (uuid::Uuid, String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT id, body, created_at FROM messages WHERE recipient = $1 AND status = 'sent'",
    )
    .bind(&opted_in[0])
    .fetch_one(&env.services.pool)
    .await
    .unwrap();
    let copy = SendJob::new(
        first.0,
        sender.into(),
        opted_in[0].clone(),
        Category::Marketing,
        Some(TemplateRef {
            name: "promo".into(),
            language: "es_MX".into(),
        }),
        serde_json::value::RawValue::from_string(first.1).unwrap(),
        first.2.timestamp_millis(),
    );
    let published = env
        .services
        .publisher
        .publish_many(&[(
            env.services.names.send_exchange(),
            env.services.names.lane_key(sender, copy.lane()),
            copy.encode(),
        )])
        .await;
    assert!(published.into_iter().all(|p| p.is_ok()));

    // Redis restarts empty; the rebuild is held back so the hold can be seen.
    env.lose_redis(Some("test-holds-the-rebuild")).await;
    env.start_worker();
    let (status, answer) = env
        .http
        .post(format!("{}/v1/{sender}/messages", env.api_url))
        .bearer_auth(&env.admin_key)
        .json(&template_body(&opted_in[0], "promo"))
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers().contains_key("retry-after"));
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "state_rebuilding", "{answer}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.received(sender).await.len(),
        150,
        "nothing is sent while the copy is missing"
    );
    let counts = env.counts(sender).await;
    assert_eq!(counts.get("sent"), Some(&150), "{counts:?}");
    assert_eq!(
        counts.get("queued"),
        Some(&221),
        "nothing else moved: {counts:?}"
    );

    // The processes rebuild the copy from PostgreSQL, and sends go on.
    let_the_rebuild_go(&env).await;
    let counts = env
        .wait_counts(sender, Duration::from_secs(30), |c| {
            c.get("sent") == Some(&251)
                && c.get("deferred") == Some(&100)
                && c.get("skipped") == Some(&20)
        })
        .await;
    assert_eq!(counts.get("failed"), None, "{counts:?}");
    let statuses: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT recipient, status, status_reason FROM messages WHERE id = ANY($1::uuid[])",
    )
    .bind(
        later
            .iter()
            .map(|id| id.parse::<uuid::Uuid>().unwrap())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&env.services.pool)
    .await
    .unwrap();
    for (recipient, status, reason) in &statuses {
        match status.as_str() {
            "skipped" => {
                assert!(opted_out.contains(recipient));
                assert_eq!(reason.as_deref(), Some("recipient_opted_out"));
            }
            "deferred" => assert_eq!(reason.as_deref(), Some("messaging_limit_reached")),
            "sent" => assert!(!opted_out.contains(recipient)),
            other => panic!("{recipient} is {other} ({reason:?})"),
        }
    }

    let received = env.received(sender).await;
    let mut times: HashMap<String, usize> = HashMap::new();
    for m in &received {
        *times.entry(m.to.clone()).or_default() += 1;
    }
    assert!(
        times.values().all(|n| *n == 1),
        "someone got a message twice"
    );
    assert!(
        opted_out.iter().all(|r| !times.contains_key(r)),
        "an opted-out recipient was reached"
    );
    assert_eq!(
        times.get(&writer),
        Some(&1),
        "the reply inside the window was sent"
    );
    let reached = opted_in.iter().filter(|r| times.contains_key(*r)).count();
    assert_eq!(reached, 250, "the tier is 250 unique recipients in 24 h");
    let usage = env
        .services
        .state
        .tier_usage(&format!("pn:{sender}"))
        .await
        .unwrap();
    assert!(
        usage >= 250,
        "the tier counter counts what was reached: {usage}"
    );
    assert!(env.services.state.copy_since().await.unwrap().is_some());
    env.cleanup().await;
}
