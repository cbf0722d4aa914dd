//! Webhooks in (signed fixtures shaped like Meta's, and the simulator's own status webhooks) and
//! lifecycle events out (RabbitMQ and HTTP callbacks).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pregon::domain::MessageStatus;
use pregon::simulator::SimConfig;
use pregon::store::{self, MessageUpdate, NewMessage};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{
    APP_SECRET, Env, OLD_APP_SECRET, Options, VERIFY_TOKEN, envelope, inbound, read_events,
    recipients, status, statuses, template_body, text_body,
};

async fn enqueue(env: &Env, sender: &str, body: Value) -> String {
    let (code, answer) = env.post(&format!("/v1/{sender}/messages"), body).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    answer["messages"][0]["id"].as_str().unwrap().to_string()
}

async fn wamid_of(env: &Env, id: &str) -> String {
    env.eventually(
        "the send to be recorded",
        Duration::from_secs(15),
        async || env.message(id).await["wamid"].as_str().map(str::to_string),
    )
    .await
}

async fn event_states(env: &Env) -> std::collections::HashMap<String, i64> {
    store::webhooks::count_events_by_state(&env.services.pool)
        .await
        .unwrap()
}

/// Rows written straight through the store, as if pregon had sent them: for tests about statuses
/// that do not need a real send.
async fn recorded_sends(env: &Env, sender: &str, n: usize, seed: u32) -> Vec<(String, String)> {
    let rows: Vec<NewMessage> = recipients(n, seed)
        .into_iter()
        .map(|to| NewMessage {
            id: uuid::Uuid::now_v7(),
            idempotency_key: None,
            api_key_id: None,
            sender: sender.into(),
            recipient: to,
            category: "utility".into(),
            message_type: "template".into(),
            template_name: Some("order_update".into()),
            template_language: Some("es_MX".into()),
            delivery: "at_most_once".into(),
            body: "{}".into(),
            job: None,
        })
        .collect();
    env.services.writer.insert(rows.clone()).await.unwrap();
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let wamid = format!("wamid.it-{seed}-{i}");
        let mut update = MessageUpdate::new(row.id, MessageStatus::Sent, 1);
        update.wamid = Some(wamid.clone());
        env.services.writer.update(update).await.unwrap();
        out.push((row.id.to_string(), wamid));
    }
    out
}

#[tokio::test]
async fn handshake_signatures_size_and_malformed_bodies() {
    let env = Env::start(Options {
        tweak: |c| c.webhook_max_body_bytes = 10_000,
        ..Options::default()
    })
    .await;
    let url = format!("{}/webhooks/whatsapp", env.api_url);
    let ok = env
        .http
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    let wrong = env
        .http
        .get(format!(
            "{url}?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);

    let body = statuses(
        "1065550900",
        vec![status("wamid.x", "delivered", "5215500000000")],
    )
    .to_string();
    let (code, text) = env.webhook_signed(body.as_bytes(), None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(text.contains("bad_signature"), "{text}");
    let (code, _) = env
        .webhook_signed(body.as_bytes(), Some("not-the-secret"))
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let metrics = env.services.metrics.render();
    assert!(
        metrics.contains("pregon_webhook_requests_total{outcome=\"bad_signature\"} 2"),
        "{metrics}"
    );
    assert!(
        event_states(&env).await.is_empty(),
        "a bad signature must store nothing"
    );

    // Either secret of a rotation is accepted.
    let (code, _) = env
        .webhook_signed(body.as_bytes(), Some(OLD_APP_SECRET))
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = env.webhook_signed(body.as_bytes(), Some(APP_SECRET)).await;
    assert_eq!(code, StatusCode::OK);

    let huge = vec![b' '; 20_000];
    let (code, text) = env.webhook_signed(&huge, Some(APP_SECRET)).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{text}");

    let (code, text) = env.webhook_signed(b"{\"entry\": [", Some(APP_SECRET)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(text.contains("malformed_json"), "{text}");
    let states = event_states(&env).await;
    assert_eq!(states.get("malformed"), Some(&1), "{states:?}");
    assert_eq!(states.values().sum::<i64>(), 3, "{states:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn simulator_statuses_drive_messages_to_their_final_states() {
    let mut env = Env::start(Options {
        sim: SimConfig {
            read_ratio: 1.0,
            delivered_after: Duration::from_millis(100),
            ..SimConfig::default()
        },
        sim_webhooks: true,
        ..Options::default()
    })
    .await;
    let sender = "1065550901";
    env.sender(sender, json!("TIER_1K"), 80).await;
    env.template("order_update", "utility").await;
    let mut events = env.events_queue("message.#").await;
    let to = recipients(11, 901);
    let unreachable = to[10].clone();
    env.sim("/_sim/undeliverable", json!({"numbers": [unreachable]}))
        .await;
    let mut ids = Vec::new();
    for r in &to {
        ids.push(enqueue(&env, sender, template_body(r, "order_update")).await);
    }
    env.start_worker();
    let counts = env
        .wait_counts(sender, Duration::from_secs(30), |c| {
            c.get("read") == Some(&10) && c.get("failed") == Some(&1)
        })
        .await;
    assert_eq!(counts.values().sum::<i64>(), 11, "{counts:?}");
    let read = env.message(&ids[0]).await;
    assert!(
        read["delivered_at"].is_string() && read["read_at"].is_string(),
        "{read}"
    );
    assert_eq!(read["pricing_type"], "regular");
    // The simulator prices every template as it sees fit; what matters is that it is kept.
    assert!(read["pricing_category"].is_string(), "{read}");
    let failed = env.message(&ids[10]).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["status_reason"], "recipient_unreachable");
    assert_eq!(failed["last_error_code"], 131026);

    // 131026 suppressed the number: the next message to it is refused at the door.
    let (code, answer) = env
        .post(
            &format!("/v1/{sender}/messages"),
            template_body(&unreachable, "order_update"),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "recipient_suppressed");

    // Other systems saw every step of the first message, with routing keys they can bind to.
    let seen = read_events(&mut events, 11 * 3 + 10 * 2 + 1, Duration::from_secs(10)).await;
    let of_first: Vec<&str> = seen
        .iter()
        .filter(|(_, e)| e["message"]["id"] == ids[0].as_str())
        .map(|(key, _)| key.as_str())
        .collect();
    for key in [
        "message.queued.utility",
        "message.sent.utility",
        "message.delivered.utility",
        "message.read.utility",
    ] {
        assert!(of_first.contains(&key), "{key} missing from {of_first:?}");
    }
    let (_, sample) = seen
        .iter()
        .find(|(k, _)| k == "message.failed.utility")
        .unwrap();
    assert_eq!(sample["schema"], "pregon.event.v1");
    assert_eq!(sample["type"], "message.failed");
    assert_eq!(sample["message"]["error_code"], 131026);
    assert!(sample["id"].is_string());
    env.cleanup().await;
}

#[tokio::test]
async fn statuses_out_of_order_duplicated_or_early_end_in_the_right_state() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550902";
    env.start_background();
    let mut events = env.events_queue("message.*.utility").await;
    let sends = recorded_sends(&env, sender, 2, 902).await;
    let (id, wamid) = &sends[0];
    let to = env.message(id).await["recipient"]
        .as_str()
        .unwrap()
        .to_string();
    // read before delivered, then delivered, then both again: read, once each.
    for s in ["read", "delivered", "read", "sent", "delivered"] {
        env.webhook(&statuses(sender, vec![status(wamid, s, &to)]))
            .await;
    }
    let m = env
        .eventually("read", Duration::from_secs(10), async || {
            let m = env.message(id).await;
            (m["status"] == "read" && m["delivered_at"].is_string()).then_some(m)
        })
        .await;
    assert!(m["read_at"].is_string());
    // A late "failed" cannot undo a delivery.
    env.webhook(&statuses(
        sender,
        vec![
            json!({"id": wamid, "status": "failed", "timestamp": "1700000000",
        "errors": [{"code": 131000, "title": "Something went wrong"}]}),
        ],
    ))
    .await;
    // A status that comes before pregon recorded the send waits for it.
    let early = "wamid.it-early";
    env.webhook(&statuses(sender, vec![status(early, "delivered", &to)]))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (other_id, _) = &sends[1];
    let mut update = MessageUpdate::new(other_id.parse().unwrap(), MessageStatus::Sent, 2);
    update.wamid = Some(early.into());
    env.services.writer.update(update).await.unwrap();
    env.eventually(
        "the early status applied",
        Duration::from_secs(10),
        async || (env.message(other_id).await["status"] == "delivered").then_some(()),
    )
    .await;
    assert_eq!(env.message(id).await["status"], "read");
    let seen = read_events(&mut events, 100, Duration::from_secs(3)).await;
    let keys = |id: &str| -> Vec<String> {
        seen.iter()
            .filter(|(_, e)| e["message"]["id"] == id)
            .map(|(k, _)| k.clone())
            .collect()
    };
    let first = keys(id);
    assert_eq!(
        first
            .iter()
            .filter(|k| *k == "message.read.utility")
            .count(),
        1,
        "{first:?}"
    );
    assert_eq!(
        first
            .iter()
            .filter(|k| *k == "message.delivered.utility")
            .count(),
        1,
        "{first:?}"
    );
    assert!(
        !first.iter().any(|k| k == "message.failed.utility"),
        "{first:?}"
    );
    assert!(keys(other_id).contains(&"message.delivered.utility".to_string()));
    let states = event_states(&env).await;
    assert_eq!(states.get("processed"), Some(&7), "{states:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_thousand_updates_in_one_post_replayed_change_nothing_the_second_time() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550903";
    env.start_background();
    let mut events = env.events_queue("message.delivered.*").await;
    let sends = recorded_sends(&env, sender, 1000, 903).await;
    let batch: Vec<Value> = sends
        .iter()
        .map(|(_, wamid)| status(wamid, "delivered", "5215512345678"))
        .collect();
    let body = statuses(sender, batch);
    env.webhook(&body).await;
    env.wait_counts(sender, Duration::from_secs(30), |c| {
        c.get("delivered") == Some(&1000)
    })
    .await;
    let first = read_events(&mut events, 1000, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1000);
    // Meta retries the same POST: accepted again, changes nothing, publishes nothing.
    env.webhook(&body).await;
    env.eventually(
        "the replay processed",
        Duration::from_secs(10),
        async || (event_states(&env).await.get("processed") == Some(&2)).then_some(()),
    )
    .await;
    let again = read_events(&mut events, 1, Duration::from_secs(2)).await;
    assert!(again.is_empty(), "a replay published {again:?}");
    assert_eq!(env.counts(sender).await.get("delivered"), Some(&1000));
    env.cleanup().await;
}

#[tokio::test]
async fn unknown_fields_and_kinds_are_stored_and_counted_not_fatal() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550904";
    env.start_background();
    let sends = recorded_sends(&env, sender, 1, 904).await;
    let mut known = status(&sends[0].1, "delivered", "5215512345678");
    known["brand_new_field"] = json!({"nested": [1, 2]});
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "it-waba", "changes": [
        {"field": "security", "value": {"event": "PIN_CHANGED"}},
        {"field": "messages", "value": {"metadata": {"phone_number_id": sender},
            "statuses": [known, {"status": "delivered"}]}},
        {"field": "messages", "value": {"metadata": {"phone_number_id": sender}, "reactions": []}}
    ]}]});
    env.webhook(&body).await;
    env.wait_counts(sender, Duration::from_secs(10), |c| {
        c.get("delivered") == Some(&1)
    })
    .await;
    let unknown: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_unknown")
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    assert_eq!(unknown, 3);
    assert!(
        env.services
            .metrics
            .render()
            .contains("pregon_webhook_updates_total{kind=\"unknown\"} 3")
    );
    // A signed body that is JSON but not an envelope is kept too, not retried forever.
    env.webhook(&json!({"hello": "world"})).await;
    env.eventually("both processed", Duration::from_secs(10), async || {
        (event_states(&env).await.get("processed") == Some(&2)).then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_inbound_message_opens_the_window_for_free_form_replies() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550905";
    env.sender(sender, json!("TIER_1K"), 80).await;
    env.start_worker();
    let to = recipients(2, 905);
    let (code, answer) = env
        .post(&format!("/v1/{sender}/messages"), text_body(&to[0]))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "outside_customer_service_window");

    env.webhook(&inbound(
        sender,
        &to[0],
        "wamid.in-905",
        json!({"type": "text", "text": {"body": "Hola, ¿tienen talla M?"}}),
    ))
    .await;
    env.sim(
        "/_sim/windows",
        json!({"phone_number_id": sender, "recipient": to[0]}),
    )
    .await;
    env.eventually("the window to open", Duration::from_secs(10), async || {
        env.services
            .state
            .window_open(sender, &to[0])
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    let id = enqueue(&env, sender, text_body(&to[0])).await;
    env.eventually("the reply sent", Duration::from_secs(15), async || {
        (env.message(&id).await["status"] == "sent").then_some(())
    })
    .await;
    assert_eq!(env.received(sender).await.len(), 1);

    // A conversation from a click-to-WhatsApp ad gets Meta's 72 h free entry point.
    env.webhook(&inbound(
        sender,
        &to[1],
        "wamid.in-905b",
        json!({"type": "text", "text": {"body": "Info"},
        "referral": {"source_type": "ad", "source_id": "123", "ctwa_clid": "clid"}}),
    ))
    .await;
    env.eventually("the ad window", Duration::from_secs(10), async || {
        env.services
            .state
            .window_open(sender, &to[1])
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    let mut conn = redis::Client::open(env.config.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!(
            "{{{}}}:win:{sender}:{}",
            env.config.redis_prefix, to[1]
        ))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 48 * 3600 * 1000, "ttl {ttl}");
    env.cleanup().await;
}

#[tokio::test]
async fn stop_records_an_opt_out_confirms_it_and_blocks_marketing() {
    let mut env = Env::start(Options {
        tweak: |c| c.opt_out_confirmation = "Listo: no recibirás más promociones.".into(),
        ..Options::default()
    })
    .await;
    let sender = "1065550906";
    env.sender(sender, json!("TIER_1K"), 80).await;
    env.template("promo", "marketing").await;
    let to = recipients(1, 906)[0].clone();
    env.opt_in(std::slice::from_ref(&to)).await;
    env.start_worker();
    let mut opt_outs = env.events_queue("recipient.opted_out.*").await;
    env.sim(
        "/_sim/windows",
        json!({"phone_number_id": sender, "recipient": to}),
    )
    .await;
    env.webhook(&inbound(
        sender,
        &to,
        "wamid.in-906",
        json!({"type": "text", "text": {"body": "  Bája! "}}),
    ))
    .await;
    let consent = env
        .eventually("the opt-out", Duration::from_secs(10), async || {
            let (_, c) = env.get(&format!("/v1/consent/{to}")).await;
            (c["marketing"] == "opt_out").then_some(c)
        })
        .await;
    let last = consent["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["source"], "keyword");
    assert!(
        last["evidence"].as_str().unwrap().contains("wamid.in-906"),
        "{last}"
    );
    let (code, answer) = env
        .post(
            &format!("/v1/{sender}/messages"),
            template_body(&to, "promo"),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "recipient_opted_out");
    // The confirmation went out inside the window the STOP opened.
    let confirmation = env
        .eventually("the confirmation", Duration::from_secs(15), async || {
            env.received(sender).await.into_iter().next()
        })
        .await;
    assert_eq!(confirmation.to, to);
    let seen = read_events(&mut opt_outs, 1, Duration::from_secs(5)).await;
    assert_eq!(seen[0].0, "recipient.opted_out.marketing");
    assert_eq!(seen[0].1["recipient"], to.as_str());
    // The same STOP again (Meta retries) records nothing more.
    env.webhook(&inbound(
        sender,
        &to,
        "wamid.in-906",
        json!({"type": "text", "text": {"body": "  Bája! "}}),
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, c) = env.get(&format!("/v1/consent/{to}")).await;
    assert_eq!(c["history"].as_array().unwrap().len(), 2, "{c}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_quick_reply_is_linked_to_the_message_it_answers() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550907";
    env.sender(sender, json!("TIER_1K"), 80).await;
    env.template("order_update", "utility").await;
    env.start_worker();
    let mut replies = env.events_queue("message.replied.*").await;
    let to = recipients(1, 907)[0].clone();
    let id = enqueue(&env, sender, template_body(&to, "order_update")).await;
    let wamid = wamid_of(&env, &id).await;
    env.webhook(&inbound(sender, &to, "wamid.in-907", json!({"type": "button",
        "button": {"payload": "CONFIRM", "text": "Confirmar"}, "context": {"from": sender, "id": wamid}})))
        .await;
    let seen = read_events(&mut replies, 1, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "message.replied.utility");
    assert_eq!(seen[0].1["message"]["id"], id.as_str());
    assert_eq!(seen[0].1["reply"]["payload"], "CONFIRM");
    assert!(env.message(&id).await["replied_at"].is_string());
    let row = store::webhooks::inbound(&env.services.pool, "wamid.in-907")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.reply_to.map(|u| u.to_string()), Some(id));
    env.cleanup().await;
}

#[tokio::test]
async fn sender_health_webhooks_hold_and_release_the_sender() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550908";
    let (code, body) = env
        .post(
            "/v1/senders",
            json!({"phone_number_id": sender, "business_portfolio_id": "bp-908",
            "waba_id": "waba-908", "display_phone_number": "+1 555-000-0908", "tier": "TIER_250",
            "access_token": "t"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    env.sim(
        "/_sim/numbers",
        json!({"phone_number_id": sender, "mps": 80}),
    )
    .await;
    env.template("promo", "marketing").await;
    env.template("order_update", "utility").await;
    let to = recipients(3, 908);
    env.opt_in(&to).await;
    env.start_worker();
    let sender_row = async || {
        let (_, list) = env.get("/v1/senders").await;
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["phone_number_id"] == sender)
            .cloned()
            .unwrap()
    };

    // FLAGGED: quality RED holds marketing, utility still goes.
    env.webhook(&envelope(
        "phone_number_quality_update",
        json!({"display_phone_number": "15550000908",
        "event": "FLAGGED", "current_limit": "TIER_1K"}),
    ))
    .await;
    env.eventually("RED", Duration::from_secs(10), async || {
        (sender_row().await["quality"] == "RED").then_some(())
    })
    .await;
    assert_eq!(sender_row().await["tier"], 1000);
    let promo = enqueue(&env, sender, template_body(&to[0], "promo")).await;
    let utility = enqueue(&env, sender, template_body(&to[1], "order_update")).await;
    env.eventually("utility sent", Duration::from_secs(10), async || {
        (env.message(&utility).await["status"] == "sent").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(env.message(&promo).await["status"], "queued");
    env.webhook(&envelope(
        "phone_number_quality_update",
        json!({"display_phone_number": "15550000908",
        "event": "UNFLAGGED"}),
    ))
    .await;
    env.eventually("marketing released", Duration::from_secs(10), async || {
        (env.message(&promo).await["status"] == "sent").then_some(())
    })
    .await;

    // The business limit, as an integer and as -1.
    for (limit, want) in [(json!(2000), 2000), (json!(-1), -1)] {
        env.webhook(&envelope(
            "business_capability_update",
            json!({
            "max_daily_conversations_per_business": limit, "max_phone_numbers_per_business": 2}),
        ))
        .await;
        // The envelope names the account "it-waba"; this sender is in "waba-908".
        let mut body = envelope(
            "business_capability_update",
            json!({"max_daily_conversations_per_business": limit}),
        );
        body["entry"][0]["id"] = json!("waba-908");
        env.webhook(&body).await;
        env.eventually("tier", Duration::from_secs(10), async || {
            (sender_row().await["tier"] == want).then_some(())
        })
        .await;
    }

    // A ban stops everything; reinstatement also lifts the pause pregon put on after error 368.
    env.services
        .set_sender_paused(
            sender,
            true,
            Some("Cloud API error 368"),
            store::PauseSource::CloudApi,
        )
        .await
        .unwrap();
    let mut ban = envelope(
        "account_update",
        json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "DISABLE"}}),
    );
    ban["entry"][0]["id"] = json!("waba-908");
    env.webhook(&ban).await;
    env.eventually("banned", Duration::from_secs(10), async || {
        (sender_row().await["status"] == "BANNED").then_some(())
    })
    .await;
    let held = enqueue(&env, sender, template_body(&to[2], "order_update")).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(env.message(&held).await["status"], "queued");
    let mut back = envelope(
        "account_update",
        json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "REINSTATE"}}),
    );
    back["entry"][0]["id"] = json!("waba-908");
    env.webhook(&back).await;
    env.eventually("resumed and sent", Duration::from_secs(15), async || {
        (env.message(&held).await["status"] == "sent").then_some(())
    })
    .await;
    let row = sender_row().await;
    assert_eq!(row["status"], "CONNECTED");
    assert_eq!(row["paused"], false);
    env.cleanup().await;
}

#[tokio::test]
async fn template_webhooks_pause_release_disable_and_recategorise() {
    let mut env = Env::start(Options {
        tweak: |c| c.template_pause_recheck = pregon::config::HumanDuration(Duration::from_secs(1)),
        ..Options::default()
    })
    .await;
    let sender = "1065550909";
    env.sender(sender, json!("TIER_1K"), 80).await;
    env.template("promo", "utility").await;
    env.start_worker();
    let to = recipients(3, 909);
    let tpl = |event: &str, title: Option<&str>| {
        let mut v = json!({"event": event, "message_template_id": 555, "message_template_name": "promo",
            "message_template_language": "es_MX", "reason": "NONE"});
        if let Some(t) = title {
            v["other_info"] = json!({"title": t, "description": "quality"});
        }
        envelope("message_template_status_update", v)
    };
    env.webhook(&tpl("PAUSED", Some("FIRST_PAUSE"))).await;
    env.eventually("paused in Redis", Duration::from_secs(10), async || {
        let s = env
            .services
            .catalog
            .template("promo", "es_MX")
            .await
            .unwrap();
        s.filter(|t| t.status.as_str() == "PAUSED").map(|_| ())
    })
    .await;
    let held = enqueue(&env, sender, template_body(&to[0], "promo")).await;
    env.eventually("deferred", Duration::from_secs(10), async || {
        let m = env.message(&held).await;
        (m["status"] == "deferred" && m["status_reason"] == "template_paused").then_some(())
    })
    .await;
    env.webhook(&tpl("APPROVED", Some("UNPAUSE"))).await;
    env.eventually("sent after unpause", Duration::from_secs(15), async || {
        (env.message(&held).await["status"] == "sent").then_some(())
    })
    .await;

    env.webhook(&envelope(
        "message_template_quality_update",
        json!({"previous_quality_score": "GREEN",
        "new_quality_score": "YELLOW", "message_template_id": 555, "message_template_name": "promo",
        "message_template_language": "es_MX"}),
    ))
    .await;
    env.webhook(&envelope(
        "template_category_update",
        json!({"message_template_id": 555,
        "message_template_name": "promo", "message_template_language": "es_MX",
        "previous_category": "UTILITY", "new_category": "MARKETING"}),
    ))
    .await;
    let changes = env
        .eventually("history", Duration::from_secs(10), async || {
            let c = store::webhooks::template_changes(&env.services.pool, "promo", "es_MX")
                .await
                .unwrap();
            (c.len() == 4).then_some(c)
        })
        .await;
    let kinds: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c.change.as_str(), c.new_value.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("status", "PAUSED"),
            ("status", "APPROVED"),
            ("quality", "YELLOW"),
            ("category", "marketing")
        ]
    );

    env.webhook(&tpl("DISABLED", Some("DISABLED"))).await;
    env.eventually("disabled", Duration::from_secs(10), async || {
        let s = env
            .services
            .catalog
            .template("promo", "es_MX")
            .await
            .unwrap();
        s.filter(|t| t.status.as_str() == "DISABLED").map(|_| ())
    })
    .await;
    let (code, answer) = env
        .post(
            &format!("/v1/{sender}/messages"),
            template_body(&to[1], "promo"),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    env.cleanup().await;
}

/// One callback as the receiver saw it: headers and raw body.
type Seen = (axum::http::HeaderMap, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn callback_receiver(fail_first: usize) -> (String, Receiver) {
    use axum::routing::post;
    let receiver = Receiver::default();
    let r = receiver.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let r = r.clone();
                async move {
                    let mut seen = r.seen.lock().unwrap();
                    seen.push((headers, body.to_vec()));
                    if seen.len() <= fail_first {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, receiver)
}

#[tokio::test]
async fn callbacks_are_signed_retried_and_visible() {
    let mut env = Env::start(Options {
        tweak: |c| {
            c.callback_retry_base = pregon::config::HumanDuration(Duration::from_millis(200))
        },
        ..Options::default()
    })
    .await;
    let sender = "1065550910";
    env.sender(sender, json!("TIER_1K"), 80).await;
    env.template("order_update", "utility").await;
    let (url, receiver) = callback_receiver(2).await;
    let (code, bad) = env
        .post(
            "/v1/subscriptions",
            json!({"url": url, "events": ["message.sent", "message.bogus"]}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(bad["error"]["field"], "events[1]");
    let (code, bad) = env
        .post("/v1/subscriptions", json!({"url": "ftp://x"}))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(bad["error"]["field"], "url");
    let secret = "a-callback-secret-of-some-length";
    let (code, sub) = env
        .post(
            "/v1/subscriptions",
            json!({"url": url, "events": ["message.sent"], "secret": secret}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{sub}");
    let sub_id = sub["id"].as_str().unwrap().to_string();
    env.start_worker();
    let id = enqueue(
        &env,
        sender,
        template_body(&recipients(1, 910)[0], "order_update"),
    )
    .await;

    let deliveries = env
        .eventually(
            "a delivered callback",
            Duration::from_secs(20),
            async || {
                let (_, d) = env
                    .get(&format!("/v1/subscriptions/{sub_id}/deliveries"))
                    .await;
                let first = d["deliveries"][0].clone();
                (first["state"] == "delivered").then_some(first)
            },
        )
        .await;
    assert_eq!(deliveries["attempts"], 3, "{deliveries}");
    assert_eq!(deliveries["last_status"], 204);
    assert_eq!(deliveries["event_type"], "message.sent");
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        3,
        "only message.sent was asked for, once, tried three times"
    );
    for (headers, body) in &seen {
        let ts: i64 = headers["x-pregon-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
        assert_eq!(
            headers["x-pregon-signature"].to_str().unwrap(),
            pregon::events::callback_signature(secret.as_bytes(), ts, body)
        );
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["type"], "message.sent");
        assert_eq!(event["message"]["id"], id.as_str());
    }
    env.cleanup().await;
}

#[tokio::test]
async fn failed_statuses_suppress_opt_out_or_retry_a_day_later() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550911";
    env.start_background();
    let sends = recorded_sends(&env, sender, 3, 911).await;
    let failed = |wamid: &str, code: i64, to: &str| {
        json!({"id": wamid, "status": "failed", "timestamp": chrono::Utc::now().timestamp(),
               "recipient_id": to, "errors": [{"code": code, "title": "failed"}]})
    };
    let to: Vec<String> = {
        let mut v = Vec::new();
        for (id, _) in &sends {
            v.push(
                env.message(id).await["recipient"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        v
    };
    env.webhook(&statuses(
        sender,
        vec![
            failed(&sends[0].1, 131026, &to[0]),
            failed(&sends[1].1, 131050, &to[1]),
            failed(&sends[2].1, 131049, &to[2]),
        ],
    ))
    .await;
    let capped = env
        .eventually("the 131049 deferral", Duration::from_secs(10), async || {
            let m = env.message(&sends[2].0).await;
            (m["status"] == "deferred").then_some(m)
        })
        .await;
    assert_eq!(capped["status_reason"], "recipient_marketing_cap");
    let not_before: chrono::DateTime<chrono::Utc> =
        capped["not_before"].as_str().unwrap().parse().unwrap();
    assert!(not_before > chrono::Utc::now() + chrono::Duration::hours(23));
    // The three statuses are folded independently: wait for each rather than for one.
    let unreachable = env
        .eventually("the 131026 failure", Duration::from_secs(10), async || {
            let m = env.message(&sends[0].0).await;
            (m["status"] == "failed").then_some(m)
        })
        .await;
    assert_eq!(unreachable["status_reason"], "recipient_unreachable");
    let (code, s) = env.get(&format!("/v1/suppressions/{}", to[0])).await;
    assert_eq!(code, StatusCode::OK, "{s}");
    let stopped = env
        .eventually("the 131050 failure", Duration::from_secs(10), async || {
            let m = env.message(&sends[1].0).await;
            (m["status"] == "failed").then_some(m)
        })
        .await;
    assert_eq!(stopped["status_reason"], "recipient_stopped_marketing");
    let (_, consent) = env.get(&format!("/v1/consent/{}", to[1])).await;
    assert_eq!(consent["marketing"], "opt_out", "{consent}");
    // An operator lifts the suppression.
    let (code, _) = env
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/suppressions/{}", to[0]),
            Some(&env.admin_key.clone()),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(
        !env.services
            .state
            .recipient_states(&[(sender, to[0].as_str())])
            .await
            .unwrap()[0]
            .suppressed
    );
    env.cleanup().await;
}

/// Accepts connections on this machine and counts them: what a callback must never reach.
async fn inside_listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    (port, accepted)
}

async fn last_delivery(env: &Env, subscription: &str) -> Value {
    env.eventually(
        "a recorded callback attempt",
        Duration::from_secs(20),
        async || {
            let (_, d) = env
                .get(&format!("/v1/subscriptions/{subscription}/deliveries"))
                .await;
            let first = d["deliveries"][0].clone();
            (first["attempts"].as_i64().unwrap_or(0) >= 1).then_some(first)
        },
    )
    .await
}

/// With the production defaults (https only, public addresses only), inside addresses are refused
/// when a subscription is made, and a name that resolves inside by the time a delivery connects
/// (DNS rebinding) is refused then: nothing ever connects, and the subscriber is told why without
/// internal detail.
#[tokio::test]
async fn callbacks_cannot_reach_inside_the_network() {
    let mut env = Env::start(Options {
        tweak: |c| {
            c.callback_allow_http = false;
            c.callback_allow_private = false;
        },
        ..Options::default()
    })
    .await;
    let sender = "1065550920";
    env.sender(sender, json!("TIER_1K"), 80).await;
    env.template("order_update", "utility").await;
    let refused = [
        ("http://hooks.example.com/x", 400, "invalid_field"),
        ("https://user:pw@hooks.example.com/x", 400, "invalid_field"),
        ("https://127.0.0.1/x", 422, "callback_address_not_allowed"),
        ("https://localhost:9/x", 422, "callback_address_not_allowed"),
        ("https://10.0.0.1/x", 422, "callback_address_not_allowed"),
        (
            "https://192.168.0.10/x",
            422,
            "callback_address_not_allowed",
        ),
        (
            "https://169.254.169.254/latest/meta-data/",
            422,
            "callback_address_not_allowed",
        ),
        ("https://[::1]/x", 422, "callback_address_not_allowed"),
        (
            "https://[::ffff:7f00:1]/x",
            422,
            "callback_address_not_allowed",
        ),
        (
            "https://[fd00:ec2::254]/x",
            422,
            "callback_address_not_allowed",
        ),
        ("https://2130706433/x", 422, "callback_address_not_allowed"),
    ];
    for (url, status, code) in refused {
        let (got, body) = env.post("/v1/subscriptions", json!({"url": url})).await;
        assert_eq!(got.as_u16(), status, "{url}: {body}");
        assert_eq!(body["error"]["code"], code, "{url}: {body}");
        assert_eq!(body["error"]["field"], "url", "{url}: {body}");
    }
    let (got, body) = env
        .post(
            "/v1/subscriptions",
            json!({"url": "https://hooks.example.com/x"}),
        )
        .await;
    assert_eq!(got, StatusCode::CREATED, "{body}");
    let subscriptions: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions")
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    assert_eq!(subscriptions, 1, "nothing refused was kept");

    // As if these were accepted while their names resolved outside: a name that now resolves to
    // loopback, and a literal inside address.
    let (port, accepted) = inside_listener().await;
    let (owner, _) = pregon::api::auth::create_key(
        &env.services.pool,
        "rebinder",
        pregon::api::auth::Role::Admin,
        None,
    )
    .await
    .unwrap();
    let mut subscriptions = Vec::new();
    for url in [
        format!("https://localhost:{port}/hook"),
        format!("https://127.0.0.1:{port}/hook"),
    ] {
        let sub = store::events::insert_subscription(
            &env.services.pool,
            &env.services.derived.keyring,
            owner.id,
            &url,
            &["message.queued".into()],
            "0123456789abcdef",
        )
        .await
        .unwrap();
        subscriptions.push(sub.id.to_string());
    }
    env.start_worker();
    enqueue(
        &env,
        sender,
        template_body(&recipients(1, 920)[0], "order_update"),
    )
    .await;
    for sub in &subscriptions {
        let delivery = last_delivery(&env, sub).await;
        let error = delivery["last_error"].as_str().unwrap_or_default();
        assert!(error.starts_with("address not allowed"), "{delivery}");
        assert!(
            !error.contains("127.0.0.1"),
            "no internal detail: {delivery}"
        );
        assert!(delivery["last_status"].is_null(), "{delivery}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a callback connected inside"
    );
    env.cleanup().await;
}

/// A redirect is not followed (it could lead inside): the 3xx is recorded as the answer.
#[tokio::test]
async fn callbacks_do_not_follow_redirects() {
    use axum::routing::post;
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550921";
    env.sender(sender, json!("TIER_1K"), 80).await;
    env.template("order_update", "utility").await;
    let (port, accepted) = inside_listener().await;
    let target = format!("http://127.0.0.1:{port}/internal");
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            let target = target.clone();
            async move { axum::response::Redirect::temporary(&target) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (code, sub) = env
        .post(
            "/v1/subscriptions",
            json!({"url": url, "events": ["message.queued"]}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{sub}");
    env.start_worker();
    enqueue(
        &env,
        sender,
        template_body(&recipients(1, 921)[0], "order_update"),
    )
    .await;
    let delivery = last_delivery(&env, sub["id"].as_str().unwrap()).await;
    assert_eq!(delivery["last_status"], 307, "{delivery}");
    assert_ne!(delivery["state"], "delivered", "{delivery}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    env.cleanup().await;
}

/// Meta's envelope around one change made at `time` (seconds since the epoch).
fn envelope_at(field: &str, value: Value, time: i64) -> Value {
    let mut body = envelope(field, value);
    body["entry"][0]["time"] = json!(time);
    body
}

/// Waits until every stored webhook event has been processed.
async fn processed(env: &Env) {
    env.eventually("webhooks processed", Duration::from_secs(10), async || {
        let pending = store::webhooks::pending_events(&env.services.pool)
            .await
            .unwrap();
        (pending == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_replayed_or_late_update_never_undoes_a_newer_one() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550931";
    let (code, body) = env
        .post(
            "/v1/senders",
            json!({"phone_number_id": sender, "business_portfolio_id": "bp", "tier": 1000,
                   "display_phone_number": "15550931", "waba_id": "it-waba", "access_token": "t"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    env.template("promo", "utility").await;
    env.start_background();
    let t = 1_800_000_000;
    let tpl = |event: &str, time: i64| {
        envelope_at(
            "message_template_status_update",
            json!({"event": event, "message_template_id": 77, "message_template_name": "promo",
                   "message_template_language": "es_MX", "reason": "NONE"}),
            time,
        )
    };
    let status_of_template = async || {
        store::list_templates(&env.services.pool)
            .await
            .unwrap()
            .into_iter()
            .find(|x| x.name == "promo")
            .unwrap()
            .status
            .as_str()
            .to_string()
    };
    let paused = tpl("PAUSED", t);
    env.webhook(&paused).await;
    processed(&env).await;
    assert_eq!(status_of_template().await, "PAUSED");
    // A signed APPROVED from an hour before, sent again: the pause stands.
    env.webhook(&tpl("APPROVED", t - 3600)).await;
    // The pause itself, delivered twice more: nothing changes, nothing is recorded again.
    env.webhook(&paused).await;
    env.webhook(&paused).await;
    processed(&env).await;
    assert_eq!(status_of_template().await, "PAUSED");
    assert_eq!(
        env.services
            .catalog
            .template("promo", "es_MX")
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "PAUSED"
    );
    // A later APPROVED is applied.
    env.webhook(&tpl("APPROVED", t + 60)).await;
    processed(&env).await;
    assert_eq!(status_of_template().await, "APPROVED");
    let changes = store::webhooks::template_changes(&env.services.pool, "promo", "es_MX")
        .await
        .unwrap();
    let values: Vec<&str> = changes.iter().map(|c| c.new_value.as_str()).collect();
    assert_eq!(values, ["PAUSED", "APPROVED"]);

    // The number: flagged at t; an older "unflagged" and an older reinstatement come late.
    let quality = |event: &str, time: i64| {
        envelope_at(
            "phone_number_quality_update",
            json!({"display_phone_number": "15550931", "event": event}),
            time,
        )
    };
    let account = |ban: &str, time: i64| {
        envelope_at(
            "account_update",
            json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": ban}}),
            time,
        )
    };
    env.webhook(&quality("FLAGGED", t)).await;
    env.webhook(&account("DISABLE", t)).await;
    processed(&env).await;
    env.webhook(&quality("UNFLAGGED", t - 10)).await;
    env.webhook(&account("REINSTATE", t - 10)).await;
    processed(&env).await;
    let health = async || {
        let s = store::list_senders(&env.services.pool, &env.services.derived.keyring)
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.phone_number_id == sender)
            .unwrap();
        (s.quality.to_string(), s.status.to_string())
    };
    assert_eq!(health().await, ("RED".to_string(), "BANNED".to_string()));
    env.webhook(&quality("UNFLAGGED", t + 10)).await;
    env.webhook(&account("REINSTATE", t + 10)).await;
    processed(&env).await;
    assert_eq!(
        health().await,
        ("GREEN".to_string(), "CONNECTED".to_string())
    );
    let stale = env
        .services
        .metrics
        .webhook_updates
        .with_label_values(&["stale"])
        .get();
    assert_eq!(
        stale, 3,
        "one template update and two number fields left out"
    );
    env.cleanup_senders(&[sender]).await;
}

#[tokio::test]
async fn one_person_is_one_number_whatever_the_spelling() {
    let mut env = Env::start(Options::default()).await;
    let sender = "1065550932";
    env.sender(sender, json!("TIER_1K"), 80).await;
    env.template("promo", "marketing").await;
    env.start_worker();
    // Opted in as +52 55…, sent to as +52 1 55…: the same person.
    let (code, body) = env
        .post(
            "/v1/consent",
            json!({"recipient": "+52 55 1234 0932", "purpose": "marketing", "action": "opt_in",
                   "source": "web_form", "evidence": "ticked the box"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let id = enqueue(&env, sender, template_body("+52 1 55 1234 0932", "promo")).await;
    env.eventually("the send", Duration::from_secs(15), async || {
        (env.message(&id).await["status"] == "sent").then_some(())
    })
    .await;
    let message = env.message(&id).await;
    assert_eq!(message["recipient"], "5215512340932");
    assert_eq!(
        message["wa_id"], "5215512340932",
        "the id Meta answered with is kept"
    );
    // A STOP written from the other spelling stops marketing to both.
    env.webhook(&inbound(
        sender,
        "525512340932",
        "wamid.in-932",
        json!({"type": "text", "text": {"body": "STOP"}}),
    ))
    .await;
    env.eventually("the opt-out", Duration::from_secs(10), async || {
        let (_, c) = env.get("/v1/consent/525512340932").await;
        (c["marketing"] == "opt_out").then_some(())
    })
    .await;
    for spelling in ["+52 1 55 1234 0932", "525512340932", "5215512340932"] {
        let (code, answer) = env
            .post(
                &format!("/v1/{sender}/messages"),
                template_body(spelling, "promo"),
            )
            .await;
        assert_eq!(
            code,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{spelling}: {answer}"
        );
        assert_eq!(answer["error"]["code"], "recipient_opted_out", "{spelling}");
    }
    // Argentina's 9 and Brazil's ninth digit likewise.
    for (given, other) in [
        ("+54 11 2345 0932", "5491123450932"),
        ("+55 21 8765 0932", "5521987650932"),
    ] {
        let (code, body) = env
            .post(
                "/v1/consent",
                json!({"recipient": given, "purpose": "marketing", "action": "opt_out",
                       "source": "call_center"}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        let (_, c) = env.get(&format!("/v1/consent/{other}")).await;
        assert_eq!(c["marketing"], "opt_out", "{given}: {c}");
    }
    env.cleanup().await;
}
