//! The worker against the simulator: every invariant is checked on the receiving side.

use std::collections::HashSet;
use std::time::Duration;

use pregon::simulator::SimConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Env, Options, recipients, template_body, text_body};

async fn enqueue(env: &Env, sender: &str, body: Value) -> String {
    let (status, answer) = env.post(&format!("/v1/{sender}/messages"), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    answer["messages"][0]["id"].as_str().unwrap().to_string()
}

async fn enqueue_all(env: &Env, sender: &str, bodies: Vec<Value>) {
    for chunk in bodies.chunks(1000) {
        let (status, answer) = env
            .post(
                &format!("/v1/{sender}/messages/batch"),
                json!({"messages": chunk}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["refused"], 0, "{answer}");
    }
}

#[tokio::test]
async fn every_message_type_is_sent() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550200";
    env.sender(sender, json!("TIER_1K"), 80).await;
    env.template("order_update", "utility").await;
    let to = recipients(1, 10)[0].clone();
    // An inbound message opened the window; free-form messages may go.
    env.services
        .state
        .open_service_window(
            sender,
            &to,
            pregon::state::now_ms(),
            Duration::from_secs(86_400),
        )
        .await
        .unwrap();
    env.sim(
        "/_sim/windows",
        json!({"phone_number_id": sender, "recipient": to}),
    )
    .await;
    let bodies = vec![
        template_body(&to, "order_update"),
        text_body(&to),
        json!({"messaging_product":"whatsapp","to":to,"type":"interactive","interactive":{"type":"button",
            "body":{"text":"¿Confirmas tu pedido?"},"action":{"buttons":[
              {"type":"reply","reply":{"id":"yes","title":"Sí"}},{"type":"reply","reply":{"id":"no","title":"No"}}]}}}),
        json!({"messaging_product":"whatsapp","to":to,"type":"interactive","interactive":{"type":"list",
            "body":{"text":"Elige"},"action":{"button":"Ver","sections":[{"title":"Tallas","rows":[
              {"id":"s","title":"Chica"},{"id":"m","title":"Mediana","description":"La más vendida"}]}]}}}),
        json!({"messaging_product":"whatsapp","to":to,"type":"image","image":{"link":"https://example.com/p.png","caption":"Tu pedido"}}),
        json!({"messaging_product":"whatsapp","to":to,"type":"document","document":{"link":"https://example.com/f.pdf","filename":"factura.pdf"}}),
    ];
    let mut ids = Vec::new();
    for body in bodies {
        ids.push(enqueue(&env, sender, body).await);
    }
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(30), |c| {
        c.get("sent") == Some(&6)
    })
    .await;
    let kinds: HashSet<String> = env
        .received(sender)
        .await
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        kinds,
        ["template", "text", "interactive", "image", "document"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let (_, message) = env.get(&format!("/v1/messages/{}", ids[0])).await;
    assert_eq!(message["status"], "sent");
    assert!(message["wamid"].as_str().unwrap().starts_with("wamid."));
    assert_eq!(message["attempts"], 1);
    env.cleanup().await;
}

#[tokio::test]
async fn opted_out_after_enqueue_is_never_sent() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550201";
    env.sender(sender, json!(1000), 80).await;
    env.template("promo", "marketing").await;
    let rs = recipients(20, 11);
    env.opt_in(&rs).await;
    enqueue_all(
        &env,
        sender,
        rs.iter().map(|r| template_body(r, "promo")).collect(),
    )
    .await;
    // Half of them say STOP before the worker gets to their messages.
    let out: Vec<_> = rs[..10]
        .iter()
        .map(|r| pregon::store::ConsentEvent {
            recipient: r.clone(),
            purpose: "marketing".into(),
            action: "opt_out".into(),
            source: "keyword".into(),
            evidence: Some("STOP".into()),
            actor: None,
        })
        .collect();
    env.services.record_consent(&out).await.unwrap();
    env.start_worker();
    let counts = env
        .wait_counts(sender, Duration::from_secs(30), |c| {
            c.get("sent") == Some(&10) && c.get("skipped") == Some(&10)
        })
        .await;
    assert_eq!(counts.get("queued"), None);
    let got: HashSet<String> = env
        .received(sender)
        .await
        .into_iter()
        .map(|r| r.to)
        .collect();
    for r in &rs[..10] {
        assert!(!got.contains(r), "{r} opted out but was sent to");
    }
    assert_eq!(got.len(), 10);
    env.cleanup().await;
}

#[tokio::test]
async fn tier_250_sends_exactly_250_and_defers_the_rest() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550202";
    env.sender(sender, json!(250), 1000).await;
    env.template("promo", "marketing").await;
    let rs = recipients(400, 12);
    env.opt_in(&rs).await;
    enqueue_all(
        &env,
        sender,
        rs.iter().map(|r| template_body(r, "promo")).collect(),
    )
    .await;
    env.start_worker();
    let counts = env
        .wait_counts(sender, Duration::from_secs(60), |c| {
            c.get("sent") == Some(&250) && c.get("deferred") == Some(&150)
        })
        .await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    // Give the worker time to (wrongly) send more; it must not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = env.received(sender).await;
    assert_eq!(received.len(), 250);
    assert_eq!(
        received.iter().map(|r| &r.to).collect::<HashSet<_>>().len(),
        250
    );
    assert!(
        env.attempts(sender).await.iter().all(|a| a.code == 0),
        "the simulator refused a send over the tier"
    );
    assert_eq!(
        env.services
            .state
            .tier_usage(&format!("pn:{sender}"))
            .await
            .unwrap(),
        250
    );
    let (_, id) = (
        0,
        sqlx::query_scalar::<_, String>(
            "SELECT status_reason FROM messages WHERE status = 'deferred' LIMIT 1",
        )
        .fetch_one(&env.services.pool)
        .await
        .unwrap(),
    );
    assert_eq!(id, "messaging_limit_reached");
    env.cleanup().await;
}

#[tokio::test]
async fn twenty_mps_sender_never_exceeds_twenty_in_any_second() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550203";
    env.sender(sender, json!("unlimited"), 20).await;
    env.template("order_update", "utility").await;
    let rs = recipients(120, 13);
    enqueue_all(
        &env,
        sender,
        rs.iter()
            .map(|r| template_body(r, "order_update"))
            .collect(),
    )
    .await;
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(40), |c| {
        c.get("sent") == Some(&120)
    })
    .await;
    let received = env.received(sender).await;
    assert_eq!(received.len(), 120);
    let peak = pregon::simulator::peak_per_second(&received);
    assert!(peak <= 20, "{peak} messages in one second");
    assert!(env.attempts(sender).await.iter().all(|a| a.code != 130429));
    env.cleanup().await;
}

#[tokio::test]
async fn server_errors_are_retried_and_sent_once() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550204";
    env.sender(sender, json!(1000), 80).await;
    env.template("order_update", "utility").await;
    env.sim(
        "/_sim/faults",
        json!({"phone_number_id": sender, "kind": "http_500", "count": 2}),
    )
    .await;
    let to = &recipients(1, 14)[0];
    let id = enqueue(&env, sender, template_body(to, "order_update")).await;
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(30), |c| {
        c.get("sent") == Some(&1)
    })
    .await;
    let attempts = env.attempts(sender).await;
    assert_eq!(
        attempts.iter().map(|a| a.code).collect::<Vec<_>>(),
        vec![500, 500, 0]
    );
    assert_eq!(env.received(sender).await.len(), 1);
    let (_, message) = env.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(message["attempts"], 3);
    assert_eq!(message["last_error_code"], 500);
    let metrics = env.services.metrics.render();
    assert!(
        metrics.contains("pregon_retries_total{code=\"http_500\"} 2"),
        "{metrics}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550205";
    env.sender(sender, json!(1000), 80).await;
    env.template("gone", "utility").await;
    env.sim(
        "/_sim/templates",
        json!({"name": "gone", "language": "es_MX", "status": "DELETED"}),
    )
    .await;
    let to = &recipients(1, 15)[0];
    let id = enqueue(&env, sender, template_body(to, "gone")).await;
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(20), |c| {
        c.get("failed") == Some(&1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = env.attempts(sender).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].code, 132001);
    let (_, message) = env.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(message["status"], "failed");
    assert_eq!(message["last_error_code"], 132001);
    assert_eq!(message["status_reason"], "rejected_by_cloud_api");
    env.cleanup().await;
}

#[tokio::test]
async fn throughput_errors_slow_the_sender_and_everything_is_sent() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550206";
    env.sender(sender, json!("unlimited"), 60).await;
    env.template("order_update", "utility").await;
    // Meta allows this number less than pregon was told.
    env.sim(
        "/_sim/numbers",
        json!({"phone_number_id": sender, "mps": 8}),
    )
    .await;
    let rs = recipients(80, 16);
    enqueue_all(
        &env,
        sender,
        rs.iter()
            .map(|r| template_body(r, "order_update"))
            .collect(),
    )
    .await;
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(90), |c| {
        c.get("sent") == Some(&80)
    })
    .await;
    let received = env.received(sender).await;
    assert_eq!(
        received.iter().map(|r| &r.to).collect::<HashSet<_>>().len(),
        80
    );
    assert_eq!(received.len(), 80);
    let throttled = env
        .attempts(sender)
        .await
        .iter()
        .filter(|a| a.code == 130429)
        .count();
    assert!(
        throttled > 0,
        "the simulator never throttled; the test proves nothing"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn free_form_outside_the_window_is_refused_inside_it_is_sent() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550207";
    env.sender(sender, json!(1000), 80).await;
    let to = recipients(1, 17)[0].clone();
    let (status, body) = env
        .post(&format!("/v1/{sender}/messages"), text_body(&to))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "outside_customer_service_window");
    env.services
        .state
        .open_service_window(
            sender,
            &to,
            pregon::state::now_ms(),
            Duration::from_secs(86_400),
        )
        .await
        .unwrap();
    env.sim(
        "/_sim/windows",
        json!({"phone_number_id": sender, "recipient": to}),
    )
    .await;
    enqueue(&env, sender, text_body(&to)).await;
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(20), |c| {
        c.get("sent") == Some(&1)
    })
    .await;
    // A window in the past does not count.
    let other = recipients(1, 18)[0].clone();
    env.services
        .state
        .open_service_window(
            sender,
            &other,
            pregon::state::now_ms() - 90_000_000,
            Duration::from_secs(86_400),
        )
        .await
        .unwrap();
    let (status, _) = env
        .post(&format!("/v1/{sender}/messages"), text_body(&other))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    env.cleanup().await;
}

#[tokio::test]
async fn transactional_overtakes_a_marketing_backlog() {
    let mut env = Env::start(Options {
        sim: SimConfig {
            default_mps: 1000,
            pair_burst: 1000,
            ..SimConfig::default()
        },
        tweak: |c| c.prefetch = 200,
        sim_webhooks: false,
        amqp_url: None,
    })
    .await;
    let sender = "1065550208";
    env.sender(sender, json!("unlimited"), 1000).await;
    env.template("promo", "marketing").await;
    env.template("otp", "authentication").await;
    let backlog = recipients(50_000, 19);
    env.opt_in(&backlog).await;
    for chunk in backlog.chunks(1000) {
        let requests = chunk
            .iter()
            .map(|r| pregon::enqueue::Request {
                sender: sender.into(),
                body: template_body(r, "promo"),
                idempotency_key: None,
                api_key_id: None,
                delivery: Default::default(),
            })
            .collect();
        for result in pregon::enqueue::enqueue_many(&env.services, requests).await {
            result.unwrap();
        }
    }
    let otp_to = "5215599999999";
    enqueue(&env, sender, template_body(otp_to, "otp")).await;
    env.start_worker();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let position = loop {
        let received = env.received(sender).await;
        if let Some(r) = received.iter().find(|r| r.to == otp_to) {
            break r.seq;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the OTP never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // At most the marketing deliveries already prefetched and in flight can go before it.
    let bound = u64::from(env.config.prefetch) + env.config.sender_concurrency as u64 + 1;
    assert!(
        position <= bound,
        "the OTP arrived as message {position} of 50,001"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn account_errors_pause_the_sender_and_keep_its_messages() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550209";
    env.sender(sender, json!(1000), 80).await;
    env.template("order_update", "utility").await;
    env.sim(
        "/_sim/faults",
        json!({"phone_number_id": sender, "kind": "error", "code": 190}),
    )
    .await;
    let to = &recipients(1, 20)[0];
    let id = enqueue(&env, sender, template_body(to, "order_update")).await;
    env.start_worker();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, senders) = env.get("/v1/senders").await;
        if senders["data"][0]["paused"] == true {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sender was not paused: {senders}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Paused, the message waits: not failed, not sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, message) = env.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(message["status"], "queued", "{message}");
    assert!(env.received(sender).await.is_empty());
    let (status, _) = env
        .post(&format!("/v1/senders/{sender}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    env.wait_counts(sender, Duration::from_secs(20), |c| {
        c.get("sent") == Some(&1)
    })
    .await;
    let codes: Vec<i64> = env.attempts(sender).await.iter().map(|a| a.code).collect();
    assert_eq!(codes, vec![190, 0]);
    env.cleanup().await;
}

#[tokio::test]
async fn a_business_portfolio_shares_one_messaging_limit() {
    let mut env = Env::start(Options {
        sim: SimConfig::default(),
        tweak: |c| c.tier_scope = pregon::domain::tier::TierScope::BusinessPortfolio,
        sim_webhooks: false,
        amqp_url: None,
    })
    .await;
    env.template("promo", "marketing").await;
    let (a, b) = ("1065550210", "1065550211");
    for id in [a, b] {
        let (status, body) = env
            .post(
                "/v1/senders",
                json!({"phone_number_id": id, "business_portfolio_id": "shared-portfolio", "tier": 100,
                       "mps": 500, "access_token": "t"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let rs = recipients(200, 21);
    env.opt_in(&rs).await;
    enqueue_all(
        &env,
        a,
        rs[..120]
            .iter()
            .map(|r| template_body(r, "promo"))
            .collect(),
    )
    .await;
    enqueue_all(
        &env,
        b,
        rs[120..]
            .iter()
            .map(|r| template_body(r, "promo"))
            .collect(),
    )
    .await;
    env.start_worker();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ca, cb) = (env.counts(a).await, env.counts(b).await);
        let get =
            |c: &std::collections::HashMap<String, i64>, k: &str| c.get(k).copied().unwrap_or(0);
        if get(&ca, "queued") + get(&cb, "queued") == 0 {
            assert_eq!(get(&ca, "sent") + get(&cb, "sent"), 100, "{ca:?} {cb:?}");
            assert_eq!(
                get(&ca, "deferred") + get(&cb, "deferred"),
                100,
                "{ca:?} {cb:?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ca:?} {cb:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_sim = env.received(a).await.len() + env.received(b).await.len();
    assert_eq!(at_sim, 100);
    assert_eq!(
        env.services
            .state
            .tier_usage("bp:shared-portfolio")
            .await
            .unwrap(),
        100
    );
    env.cleanup_senders(&[a, b]).await;
}

/// A 132015 answer pauses the template for every message of it at once (registry, Redis, the
/// catalog), records the code on the message, and while it lasts only one message per recheck
/// probes the Cloud API; once Meta accepts the template again, the probe releases them all.
#[tokio::test]
async fn a_paused_template_answer_holds_every_message_of_it() {
    let mut env = Env::start(Options {
        tweak: |c| c.template_pause_recheck = pregon::config::HumanDuration(Duration::from_secs(1)),
        ..Options::default()
    })
    .await;
    let sender = "1065550215";
    env.sender(sender, json!("unlimited"), 80).await;
    env.template("promo_paused", "utility").await;
    // Meta paused the template and pregon has not been told by webhook.
    let paused = json!({"name": "promo_paused", "language": "es_MX", "status": "PAUSED"});
    env.sim("/_sim/templates", paused).await;
    let rs = recipients(30, 215);
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for r in &rs {
            ids.push(enqueue(&env, sender, template_body(r, "promo_paused")).await);
        }
        ids
    };
    env.start_worker();
    env.eventually(
        "every message deferred",
        Duration::from_secs(20),
        async || {
            for id in &ids {
                let m = env.message(id).await;
                if m["status"] != "deferred" || m["status_reason"] != "template_paused" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let registry = env
        .services
        .state
        .template_status("promo_paused", "es_MX")
        .await
        .unwrap();
    assert_eq!(registry.as_deref(), Some("PAUSED"), "Redis mirror");
    let (_, templates) = env.get("/v1/templates").await;
    let listed = templates["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "promo_paused")
        .cloned()
        .unwrap();
    assert_eq!(listed["status"], "PAUSED", "{listed}");
    let mut coded = 0;
    for id in &ids {
        if env.message(id).await["last_error_code"] == 132015 {
            coded += 1;
        }
    }
    assert!(
        coded >= 1,
        "no message recorded the 132015 it was refused with"
    );

    // While paused: one probe per recheck interval, not every message at every recheck.
    let refused = |attempts: &[pregon::simulator::Attempt]| {
        attempts.iter().filter(|a| a.code == 132015).count()
    };
    let before = refused(&env.attempts(sender).await);
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = refused(&env.attempts(sender).await) - before;
    let allowed = started.elapsed().as_secs() as usize + 2;
    assert!(
        during <= allowed,
        "{during} refused sends in {:?} while paused (at most {allowed})",
        started.elapsed()
    );
    assert!(env.received(sender).await.is_empty());

    // Meta lifts the pause (no webhook): the next probe is accepted and releases the rest.
    let approved = json!({"name": "promo_paused", "language": "es_MX", "status": "APPROVED"});
    env.sim("/_sim/templates", approved).await;
    env.wait_counts(sender, Duration::from_secs(60), |c| {
        c.get("sent") == Some(&30)
    })
    .await;
    let received = env.received(sender).await;
    assert_eq!(received.len(), 30);
    assert_eq!(
        received.iter().map(|r| &r.to).collect::<HashSet<_>>().len(),
        30
    );
    env.cleanup().await;
}

/// A slow Cloud API: the send is accepted but answered after pregon's HTTP timeout. At most once
/// (the default) records it `send_outcome_unknown` and never sends it again; at least once, as
/// the caller asked, sends it again.
#[tokio::test]
async fn a_send_answered_after_the_timeout_is_not_sent_again_at_most_once() {
    let mut env = Env::start(Options {
        sim: SimConfig {
            timeout_fault: Duration::from_secs(3),
            ..SimConfig::default()
        },
        tweak: |c| c.http_timeout = pregon::config::HumanDuration(Duration::from_secs(1)),
        ..Options::default()
    })
    .await;
    let sender = "1065550216";
    env.sender(sender, json!("unlimited"), 80).await;
    env.template("order_update", "utility").await;
    let rs = recipients(6, 216);
    for late in &rs[..2] {
        env.sim(
            "/_sim/faults",
            json!({"phone_number_id": sender, "to": late, "kind": "late"}),
        )
        .await;
    }
    let at_most_once = enqueue(&env, sender, template_body(&rs[0], "order_update")).await;
    let answer: Value = env
        .http
        .post(format!("{}/v1/{sender}/messages", env.api_url))
        .bearer_auth(&env.admin_key)
        .header("X-Pregon-Delivery", "at-least-once")
        .json(&template_body(&rs[1], "order_update"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let at_least_once = answer["messages"][0]["id"].as_str().unwrap().to_string();
    for r in &rs[2..] {
        enqueue(&env, sender, template_body(r, "order_update")).await;
    }
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(60), |c| {
        c.get("sent") == Some(&5) && c.get("failed") == Some(&1)
    })
    .await;
    let m = env.message(&at_most_once).await;
    assert_eq!(m["status"], "failed", "{m}");
    assert_eq!(m["status_reason"], "send_outcome_unknown", "{m}");
    assert_eq!(env.message(&at_least_once).await["status"], "sent");
    // Let any send still in the lanes land before counting what the Cloud API received.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let received = env.received(sender).await;
    let times = |to: &String| received.iter().filter(|r| &r.to == to).count();
    assert_eq!(
        times(&rs[0]),
        1,
        "at most once: the late send is never repeated"
    );
    assert_eq!(
        times(&rs[1]),
        2,
        "at least once: sent again after the timeout"
    );
    for r in &rs[2..] {
        assert_eq!(times(r), 1);
    }
    env.cleanup().await;
}

/// The send whose answer never came was made after all: Meta's statuses echo pregon's message id
/// (`biz_opaque_callback_data`), so the message recorded `send_outcome_unknown` takes its wamid
/// and moves on to sent and delivered, and it is still sent only once.
#[tokio::test]
async fn an_unknown_outcome_is_reconciled_from_metas_statuses() {
    let mut env = Env::start(Options {
        sim: SimConfig {
            timeout_fault: Duration::from_secs(3),
            delivered_after: Duration::from_millis(200),
            ..SimConfig::default()
        },
        tweak: |c| c.http_timeout = pregon::config::HumanDuration(Duration::from_secs(1)),
        sim_webhooks: true,
        amqp_url: None,
    })
    .await;
    let sender = "1065550217";
    env.sender(sender, json!("unlimited"), 80).await;
    env.template("order_update", "utility").await;
    let to = recipients(1, 217)[0].clone();
    env.sim(
        "/_sim/faults",
        json!({"phone_number_id": sender, "to": to, "kind": "late"}),
    )
    .await;
    let id = enqueue(&env, sender, template_body(&to, "order_update")).await;
    env.start_worker();
    let m = env
        .eventually(
            "reconciled and delivered",
            Duration::from_secs(30),
            async || {
                let m = env.message(&id).await;
                (m["status"] == "delivered" || m["status"] == "read").then_some(m)
            },
        )
        .await;
    // It got there through the unknown outcome, not through an answer.
    let reconciled = env
        .services
        .metrics
        .webhook_updates
        .with_label_values(&["unknown_outcome_reconciled"])
        .get();
    assert_eq!(reconciled, 1);
    let received = env.received(sender).await;
    assert_eq!(received.len(), 1, "sent once");
    assert_eq!(m["wamid"], received[0].wamid.as_str(), "{m}");
    assert_eq!(received[0].callback_data.as_deref(), Some(id.as_str()));
    assert!(m["status_reason"].is_null(), "{m}");
    env.cleanup().await;
}

/// Jobs reach the worker in chunks (one broker message for many jobs of a lane). A worker that
/// stops with part of a chunk sent hands the rest back to the queue, so nothing is sent twice and
/// nothing is left behind: the next worker sends the rest, each recipient once.
#[tokio::test]
async fn a_chunk_cut_short_by_a_stop_is_handed_back_and_sent_once() {
    let mut env = Env::start(Options::default()).await;
    assert!(env.config.job_chunk > 1, "jobs travel in chunks by default");
    let sender = "1065550299";
    env.sender(sender, json!("unlimited"), 25).await;
    env.template("order_update", "utility").await;
    let to = recipients(300, 97);
    env.enqueue_templates(sender, &to, "order_update").await;
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(30), |c| {
        c.get("sent").copied().unwrap_or(0) >= 30
    })
    .await;
    env.stop_worker().await;
    let stopped = env.counts(sender).await;
    let sent_before = stopped.get("sent").copied().unwrap_or(0);
    assert!(
        sent_before < 300,
        "the stop came before the end: {stopped:?}"
    );
    env.start_worker();
    env.wait_counts(sender, Duration::from_secs(60), |c| {
        c.get("sent") == Some(&300)
    })
    .await;
    // Anything sent twice would reach the simulator after its row was already sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = env.received(sender).await;
    let distinct: HashSet<&str> = received.iter().map(|r| r.to.as_str()).collect();
    assert_eq!(received.len(), 300, "each message sent once");
    assert_eq!(distinct.len(), 300);
    env.cleanup().await;
}
