//! The simulator's signed status webhooks, as a receiver will see them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use pregon::simulator::SimConfig;
use serde_json::{Value, json};

use crate::harness::{Env, Options, recipients, template_body};

type Inbox = Arc<Mutex<Vec<(String, Bytes)>>>;

async fn receiver() -> (String, Inbox) {
    let inbox: Inbox = Arc::default();
    let store = inbox.clone();
    let app = axum::Router::new().route(
        "/webhooks",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let signature = headers
                    .get("x-hub-signature-256")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                store.lock().unwrap().push((signature, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, inbox)
}

#[tokio::test]
async fn status_webhooks_are_signed_and_shaped_like_metas() {
    let (url, inbox) = receiver().await;
    let mut env = Env::start(Options {
        sim: SimConfig {
            webhook_url: Some(url),
            app_secret: "app-secret".into(),
            delivered_after: Duration::from_millis(50),
            read_ratio: 1.0,
            ..SimConfig::default()
        },
        tweak: |_| {},
        sim_webhooks: false,
        amqp_url: None,
    })
    .await;
    let sender = "1065550500";
    env.sender(sender, json!(1000), 80).await;
    env.template("order_update", "utility").await;
    let rs = recipients(2, 50);
    env.sim("/_sim/undeliverable", json!({"numbers": [rs[1]]}))
        .await;
    for r in &rs {
        let (status, body) = env
            .post(
                &format!("/v1/{sender}/messages"),
                template_body(r, "order_update"),
            )
            .await;
        assert_eq!(status.as_u16(), 202, "{body}");
    }
    env.start_worker();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let statuses: Vec<Value> = loop {
        let got: Vec<Value> = inbox
            .lock()
            .unwrap()
            .iter()
            .map(|(signature, body)| {
                assert!(
                    pregon::whatsapp::verify(&[b"app-secret".to_vec()], body, signature),
                    "bad signature"
                );
                serde_json::from_slice::<Value>(body).unwrap()
            })
            .flat_map(|envelope| {
                assert_eq!(envelope["object"], "whatsapp_business_account");
                envelope["entry"][0]["changes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|c| {
                        assert_eq!(c["field"], "messages");
                        c["value"]["statuses"].as_array().unwrap().clone()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        if got.len() >= 5 || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let of = |recipient: &str| -> Vec<String> {
        statuses
            .iter()
            .filter(|s| s["recipient_id"] == recipient)
            .map(|s| s["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(of(&rs[0]), ["sent", "delivered", "read"]);
    assert_eq!(of(&rs[1]), ["sent", "failed"]);
    let failed = statuses.iter().find(|s| s["status"] == "failed").unwrap();
    assert_eq!(failed["errors"][0]["code"], 131026);
    let delivered = statuses
        .iter()
        .find(|s| s["status"] == "delivered")
        .unwrap();
    assert_eq!(delivered["pricing"]["pricing_model"], "PMP");
    assert!(delivered["id"].as_str().unwrap().starts_with("wamid."));
    env.cleanup().await;
}

/// A `late` fault: the message is accepted and recorded like any send, but the answer comes only
/// after the caller's timeout, so the caller cannot tell it was sent (a slow Cloud API).
#[tokio::test]
async fn a_late_answer_is_a_send_the_caller_never_hears_of() {
    let env = Env::start(Options {
        sim: SimConfig {
            timeout_fault: Duration::from_secs(3),
            ..SimConfig::default()
        },
        ..Options::default()
    })
    .await;
    let sender = "1065550501";
    let to = recipients(1, 51)[0].clone();
    env.sim(
        "/_sim/faults",
        json!({"phone_number_id": sender, "to": to, "kind": "late"}),
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let url = format!("{}/v26.0/{sender}/messages", env.sim_url);
    let answer = http
        .post(&url)
        .bearer_auth("token")
        .json(&template_body(&to, "order_update"))
        .send()
        .await;
    assert!(answer.as_ref().is_err_and(|e| e.is_timeout()), "{answer:?}");
    let received = env.received(sender).await;
    assert_eq!(received.len(), 1, "the late send was still made");
    assert_eq!(received[0].to, to);
    // The fault was used once: the next send is answered at once.
    let answer = http
        .post(&url)
        .bearer_auth("token")
        .json(&template_body(&to, "order_update"))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    assert_eq!(env.received(sender).await.len(), 2);
    env.cleanup().await;
}
