//! The enqueue API: Cloud API shapes in, clear 4xx errors, nothing queued on bad input.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Env, Options, recipients, template_body, text_body};

const SENDER: &str = "1065550100";

async fn env() -> Env {
    let mut env = Env::start(Options::default()).await;
    env.sender(SENDER, json!(1000), 80).await;
    env.template("order_update", "utility").await;
    env.template("promo", "marketing").await;
    env
}

fn path() -> String {
    format!("/v1/{SENDER}/messages")
}

#[tokio::test]
async fn bad_input_names_the_field_and_queues_nothing() {
    let env = env().await;
    let to = &recipients(1, 1)[0];
    let mut too_many_buttons = json!({"messaging_product":"whatsapp","to":to,"type":"interactive",
        "interactive":{"type":"button","body":{"text":"Pick"},"action":{"buttons":[]}}});
    too_many_buttons["interactive"]["action"]["buttons"] = json!(
        (0..4)
            .map(|i| json!({"type":"reply","reply":{"id":format!("b{i}"),"title":"Yes"}}))
            .collect::<Vec<_>>()
    );
    let rows: Vec<_> = (0..11)
        .map(|i| json!({"id":format!("r{i}"),"title":"Row"}))
        .collect();
    let long_list = json!({"messaging_product":"whatsapp","to":to,"type":"interactive",
        "interactive":{"type":"list","body":{"text":"Menu"},"action":{"button":"Open","sections":[{"title":"A","rows":rows}]}}});
    let long_text = json!({"messaging_product":"whatsapp","to":to,"type":"text","text":{"body":"x".repeat(4097)}});
    let cases = [
        (
            json!({"messaging_product":"whatsapp","to":"12","type":"text","text":{"body":"x"}}),
            400,
            "invalid_phone_number",
            "to",
        ),
        (
            too_many_buttons,
            400,
            "too_many_buttons",
            "interactive.action.buttons",
        ),
        (
            long_list,
            400,
            "too_many_rows",
            "interactive.action.sections[0].rows",
        ),
        (long_text, 400, "too_long", "text.body"),
        (text_body(to), 422, "outside_customer_service_window", "to"),
        (template_body(to, "promo"), 422, "no_marketing_opt_in", "to"),
        (
            template_body(to, "nonexistent"),
            422,
            "unknown_template",
            "template.name",
        ),
    ];
    for (body, status, code, field) in cases {
        let (got, answer) = env.post(&path(), body).await;
        assert_eq!(got.as_u16(), status, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    // Unparseable JSON.
    let resp = env
        .http
        .post(format!("{}{}", env.api_url, path()))
        .bearer_auth(&env.admin_key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    // Unknown sender.
    let (status, body) = env
        .post("/v1/999/messages", template_body(to, "order_update"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "unknown_sender");
    // Nothing was recorded or queued.
    assert!(env.counts(SENDER).await.is_empty());
    let depth = pregon::queue::depth(
        &env.services.amqp.connection(),
        &env.services
            .names
            .lane_queue(SENDER, pregon::domain::Lane::Transactional),
    )
    .await
    .unwrap();
    assert_eq!(depth, Some(0));
    env.cleanup().await;
}

#[tokio::test]
async fn opted_out_recipients_are_refused() {
    let env = env().await;
    let to = recipients(1, 2)[0].clone();
    env.opt_in(std::slice::from_ref(&to)).await;
    let (status, _) = env.post(&path(), template_body(&to, "promo")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = env
        .post("/v1/consent", json!({"recipient": format!("+{to}"), "purpose": "marketing", "action": "opt_out", "source": "keyword", "evidence": "STOP"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = env.post(&path(), template_body(&to, "promo")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "recipient_opted_out");
    // The log keeps both events; the current state is the latest.
    let (_, consent) = env.get(&format!("/v1/consent/{to}")).await;
    assert_eq!(consent["marketing"], "opt_out");
    assert_eq!(consent["history"].as_array().unwrap().len(), 2);
    // The log cannot be rewritten.
    let rewrite = sqlx::query("UPDATE consent_events SET action = 'opt_in'")
        .execute(&env.services.pool)
        .await;
    assert!(rewrite.is_err());
    env.cleanup().await;
}

#[tokio::test]
async fn api_keys_and_roles() {
    let env = env().await;
    let to = &recipients(1, 3)[0];
    let (status, body) = env
        .request(
            Method::POST,
            &path(),
            None,
            Some(template_body(to, "order_update")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = env
        .request(
            Method::POST,
            &path(),
            Some("pgn_wrong"),
            Some(template_body(to, "order_update")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, viewer) = env
        .post("/v1/apikeys", json!({"name": "dash", "role": "viewer"}))
        .await;
    let viewer = viewer["secret"].as_str().unwrap().to_string();
    let (status, body) = env
        .request(
            Method::POST,
            &path(),
            Some(&viewer),
            Some(template_body(to, "order_update")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, limited) = env
        .post(
            "/v1/apikeys",
            json!({"name": "shop", "role": "service", "senders": ["42"]}),
        )
        .await;
    let limited = limited["secret"].as_str().unwrap().to_string();
    let (status, _) = env
        .request(
            Method::POST,
            &path(),
            Some(&limited),
            Some(template_body(to, "order_update")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = env
        .request(
            Method::POST,
            "/v1/senders",
            Some(&limited),
            Some(
                json!({"phone_number_id": "7", "business_portfolio_id": "b", "access_token": "t"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, service) = env
        .post("/v1/apikeys", json!({"name": "orders", "role": "service"}))
        .await;
    let service = service["secret"].as_str().unwrap().to_string();
    let (status, body) = env
        .request(
            Method::POST,
            &path(),
            Some(&service),
            Some(template_body(to, "order_update")),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["contacts"][0]["wa_id"], to.as_str());
    // Only the Cloud API's own values in `message_status` (SDKs parse it as an enum).
    assert_eq!(body["messages"][0]["message_status"], "accepted", "{body}");
    assert_eq!(body["messages"][0]["pregon_status"], "queued", "{body}");
    let id = body["messages"][0]["id"].as_str().unwrap().to_string();
    let (status, message) = env
        .request(
            Method::GET,
            &format!("/v1/messages/{id}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(message["status"], "queued");
    assert_eq!(message["category"], "utility");
    env.cleanup().await;
}

#[tokio::test]
async fn same_idempotency_key_sends_once() {
    let mut env = env().await;
    let to = &recipients(1, 4)[0];
    let (http, url, admin) = (
        env.http.clone(),
        format!("{}{}", env.api_url, path()),
        env.admin_key.clone(),
    );
    let send = |key: &'static str| {
        http.post(url.clone())
            .bearer_auth(admin.clone())
            .header("Idempotency-Key", key)
            .json(&template_body(to, "order_update"))
            .send()
    };
    let first = send("order-1234").await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: serde_json::Value = first.json().await.unwrap();
    let second = send("order-1234").await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let second: serde_json::Value = second.json().await.unwrap();
    assert_eq!(first["messages"][0]["id"], second["messages"][0]["id"]);
    env.start_worker();
    env.wait_counts(SENDER, Duration::from_secs(20), |c| {
        c.get("sent") == Some(&1)
    })
    .await;
    // A third try after sending still answers the first request and sends nothing.
    let third: serde_json::Value = send("order-1234").await.unwrap().json().await.unwrap();
    assert_eq!(first["messages"][0]["id"], third["messages"][0]["id"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.received(SENDER).await.len(), 1);
    assert_eq!(env.counts(SENDER).await.values().sum::<i64>(), 1);
    env.cleanup().await;
}

/// Ten requests with one key at once, and again after Redis lost everything: one message, and
/// every answer names it. The key is PostgreSQL's, taken by the commit of the row.
#[tokio::test]
async fn one_key_is_one_message_whatever_races_or_restarts() {
    let mut env = env().await;
    let to = &recipients(1, 5)[0];
    let url = format!("{}{}", env.api_url, path());
    let send = || {
        env.http
            .post(url.clone())
            .bearer_auth(env.admin_key.clone())
            .header("Idempotency-Key", "order-race")
            .json(&template_body(to, "order_update"))
            .send()
    };
    let answers = futures_util::future::join_all((0..10).map(|_| send())).await;
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for answer in answers {
        let answer = answer.unwrap();
        match answer.status() {
            StatusCode::ACCEPTED => created += 1,
            StatusCode::OK => {}
            other => panic!("answered {other}"),
        }
        let body: serde_json::Value = answer.json().await.unwrap();
        ids.insert(body["messages"][0]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1, "one request created the message");
    assert_eq!(ids.len(), 1, "every answer names the same message");
    // Redis comes back empty (and is rebuilt): the key still holds.
    env.lose_redis(None).await;
    pregon::state_copy::ensure(&env.services, Duration::from_secs(10))
        .await
        .unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: serde_json::Value = again.json().await.unwrap();
    assert!(ids.contains(again["messages"][0]["id"].as_str().unwrap()));
    env.start_worker();
    env.wait_counts(SENDER, Duration::from_secs(20), |c| {
        c.get("sent") == Some(&1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.received(SENDER).await.len(), 1);
    env.cleanup().await;
}

/// A process that committed a message and died before publishing its job (or whose publish
/// RabbitMQ never confirmed) leaves the job in the outbox: the relay publishes it, once.
#[tokio::test]
async fn a_job_committed_but_never_published_is_relayed_from_the_outbox() {
    let mut env = Env::start(Options {
        tweak: |c| c.publish_timeout = pregon::config::HumanDuration(Duration::from_millis(500)),
        ..Options::default()
    })
    .await;
    env.sender(SENDER, json!(1000), 80).await;
    env.template("order_update", "utility").await;
    let to = recipients(1, 6).remove(0);
    let id = uuid::Uuid::now_v7();
    let body =
        serde_json::value::RawValue::from_string(template_body(&to, "order_update").to_string())
            .unwrap();
    let job = pregon::domain::job::SendJob::new(
        id,
        SENDER.into(),
        to.clone(),
        pregon::domain::Category::Utility,
        Some(pregon::domain::job::TemplateRef {
            name: "order_update".into(),
            language: "es_MX".into(),
        }),
        body.clone(),
        chrono::Utc::now().timestamp_millis(),
    );
    let row = pregon::store::NewMessage {
        id,
        idempotency_key: Some("died-before-publishing".into()),
        api_key_id: None,
        sender: SENDER.into(),
        recipient: to.clone(),
        category: "utility".into(),
        message_type: "template".into(),
        template_name: Some("order_update".into()),
        template_language: Some("es_MX".into()),
        delivery: "at_most_once".into(),
        body: body.get().to_string(),
        job: Some(pregon::store::OutboxJob {
            routing_key: env.services.names.lane_key(SENDER, job.lane()),
            payload: job.encode(),
        }),
    };
    // The commit, and then nothing: no publish.
    assert_eq!(
        env.services.writer.insert(vec![row]).await.unwrap(),
        vec![true]
    );
    assert_eq!(
        pregon::store::outbox_depth(&env.services.pool)
            .await
            .unwrap(),
        1
    );
    env.start_worker();
    env.wait_counts(SENDER, Duration::from_secs(20), |c| {
        c.get("sent") == Some(&1)
    })
    .await;
    assert_eq!(
        pregon::store::outbox_depth(&env.services.pool)
            .await
            .unwrap(),
        0
    );
    assert_eq!(env.services.metrics.jobs_relayed.get(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = env.received(SENDER).await;
    assert_eq!(received.len(), 1, "relayed once, sent once");
    assert_eq!(received[0].to, to);
    env.cleanup().await;
}

#[tokio::test]
async fn batch_answers_per_item() {
    let env = env().await;
    let rs = recipients(3, 5);
    let (status, body) = env
        .post(
            &format!("/v1/{SENDER}/messages/batch"),
            json!({"messages": [template_body(&rs[0], "order_update"), text_body("bad"), template_body(&rs[2], "order_update")]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["refused"], 1);
    assert_eq!(body["results"][0]["status"], "accepted");
    assert_eq!(body["results"][1]["status"], "refused");
    assert_eq!(body["results"][1]["error"]["code"], "invalid_phone_number");
    assert_eq!(body["results"][2]["status"], "accepted");
    assert_eq!(env.counts(SENDER).await.get("queued"), Some(&2));
    let too_big: Vec<_> = (0..1001)
        .map(|_| template_body(&rs[0], "order_update"))
        .collect();
    let (status, body) = env
        .post(
            &format!("/v1/{SENDER}/messages/batch"),
            json!({"messages": too_big}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_batch_size");
    env.cleanup().await;
}

#[tokio::test]
async fn health_metrics_and_readiness() {
    let env = env().await;
    let resp = env
        .http
        .get(format!("{}/readyz", env.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = env
        .http
        .get(format!("{}/healthz", env.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let to = &recipients(1, 6)[0];
    env.post(&path(), template_body(to, "order_update")).await;
    let metrics = env
        .http
        .get(format!("{}/metrics", env.api_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("pregon_messages_total{{category=\"utility\",outcome=\"enqueued\",sender=\"{SENDER}\"}} 1")),
        "{metrics}"
    );
    env.cleanup().await;
}

/// An idempotency key the database could not index (a NUL byte, thousands of bytes) is refused on
/// its own item; the items batched with it are queued.
#[tokio::test]
async fn a_bad_idempotency_key_in_the_body_fails_alone() {
    let env = env().await;
    let rs = recipients(4, 6);
    let keyed = |to: &str, key: serde_json::Value| {
        let mut body = template_body(to, "order_update");
        body["idempotency_key"] = key;
        body
    };
    let (status, body) = env
        .post(
            &format!("/v1/{SENDER}/messages/batch"),
            json!({"messages": [
                keyed(&rs[0], json!("good-1")),
                keyed(&rs[1], json!("nul\u{0}byte")),
                keyed(&rs[2], json!("k".repeat(3000))),
                keyed(&rs[3], json!("good-2")),
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 2, "{body}");
    for i in [1, 2] {
        assert_eq!(body["results"][i]["status"], "refused", "{body}");
        assert_eq!(
            body["results"][i]["error"]["field"], "idempotency_key",
            "{body}"
        );
    }
    let (status, single) = env
        .post(
            &format!("/v1/{SENDER}/messages"),
            keyed(&rs[1], json!("nul\u{0}byte")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{single}");
    assert_eq!(single["error"]["field"], "idempotency_key");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    env.cleanup().await;
}

/// A revoked key is refused within a second, an expired key at once; the list shows when each
/// was last used and who revoked it, never a secret.
#[tokio::test]
async fn api_keys_are_listed_revoked_and_expire() {
    let env = env().await;
    let (status, created) = env
        .post(
            "/v1/apikeys",
            json!({"name": "orders", "role": "viewer", "expires_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    let id = created["key"]["id"].as_str().unwrap().to_string();
    let (status, _) = env
        .request(Method::GET, "/v1/senders", Some(&secret), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let listed = env
        .eventually(
            "the last use recorded",
            Duration::from_secs(5),
            async || {
                let (status, list) = env.get("/v1/apikeys").await;
                assert_eq!(status, StatusCode::OK, "{list}");
                let key = list["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|k| k["id"] == id.as_str())
                    .cloned()
                    .unwrap();
                key["last_used_at"].is_string().then_some((key, list))
            },
        )
        .await;
    let (key, list) = listed;
    assert_eq!(key["expires_at"], "2999-01-01T00:00:00Z", "{key}");
    assert!(key["revoked_at"].is_null());
    assert!(!list.to_string().contains(&secret), "no secret in the list");
    assert!(!list.to_string().contains("key_hash"));

    let revoke = async |id: &str| {
        env.request(
            Method::DELETE,
            &format!("/v1/apikeys/{id}"),
            Some(&env.admin_key.clone()),
            None,
        )
        .await
    };
    let (status, _) = revoke(&id).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    env.eventually(
        "the revoked key refused",
        Duration::from_secs(3),
        async || {
            let (status, _) = env
                .request(Method::GET, "/v1/senders", Some(&secret), None)
                .await;
            (status == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await;
    let (status, again) = revoke(&id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"]["code"], "already_revoked");
    let (_, list) = env.get("/v1/apikeys").await;
    let key = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(key["revoked_at"].is_string(), "{key}");
    assert!(
        key["revoked_by"].as_str().unwrap().starts_with("api_key:"),
        "{key}"
    );

    let (status, past) = env
        .post(
            "/v1/apikeys",
            json!({"name": "old", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{past}");
    assert_eq!(past["error"]["field"], "expires_at");
    let (_, soon) = pregon::api::auth::create_expiring_key(
        &env.services.pool,
        "soon",
        pregon::api::auth::Role::Viewer,
        None,
        Some(chrono::Utc::now() + chrono::Duration::milliseconds(300)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = env
        .request(Method::GET, "/v1/senders", Some(&soon), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, missing) = revoke("00000000-0000-0000-0000-000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    env.cleanup().await;
}

/// A thousand messages naming templates nobody registered cost at most a reload or two of the
/// catalogue, not one each.
#[tokio::test]
async fn unknown_templates_do_not_reload_the_catalogue_each() {
    let env = env().await;
    let to = &recipients(1, 7)[0];
    let before = env.services.catalog.reloads();
    let messages: Vec<serde_json::Value> = (0..1000)
        .map(|i| template_body(to, &format!("missing_{i}")))
        .collect();
    let (status, body) = env
        .post(
            &format!("/v1/{SENDER}/messages/batch"),
            json!({ "messages": messages }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["refused"], 1000, "{body}");
    assert_eq!(
        body["results"][999]["error"]["code"], "unknown_template",
        "{body}"
    );
    let reloads = env.services.catalog.reloads() - before;
    assert!(
        reloads <= 2,
        "{reloads} reloads for 1,000 unknown templates"
    );
    env.cleanup().await;
}

/// A NUL character cannot be stored (PostgreSQL's text and jsonb refuse it): it is refused where
/// it comes in, by name, and the messages written beside it are written.
#[tokio::test]
async fn a_nul_character_is_refused_by_name_and_sinks_nothing_beside_it() {
    let env = env().await;
    let rs = recipients(3, 71);
    // An OTP code with a NUL in it, in a template parameter.
    let mut with_nul = template_body(&rs[1], "order_update");
    with_nul["template"]["components"][0]["parameters"][0]["text"] = json!("code \u{0} 1234");
    let (status, body) = env
        .post(
            &format!("/v1/{SENDER}/messages/batch"),
            json!({"messages": [template_body(&rs[0], "order_update"), with_nul,
                                template_body(&rs[2], "order_update")]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 2, "{body}");
    assert_eq!(body["results"][1]["error"]["code"], "invalid_character");
    assert_eq!(
        body["results"][1]["error"]["field"],
        "template.components[0].parameters[0].text"
    );
    assert_eq!(env.counts(SENDER).await.get("queued"), Some(&2));

    let mut text_with_nul = text_body(&rs[1]);
    text_with_nul["text"]["body"] = json!("\u{0}");
    let (status, body) = env.post(&path(), text_with_nul).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "text.body");

    let (status, body) = env
        .post(
            "/v1/senders",
            json!({"phone_number_id": "1065550199", "business_portfolio_id": "bp",
                   "display_phone_number": "+52\u{0}", "access_token": "t"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_character");
    assert_eq!(body["error"]["field"], "display_phone_number");

    for path in [
        "/v1/contacts?tag=a%00b",
        "/v1/consent/%00",
        "/v1/contacts/52%0055",
    ] {
        let (status, body) = env.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_character", "{path}");
    }

    let csv = "phone,name\n5215512340001,Ana\n5215512340002,B\0b\n5215512340003,Eva\n";
    let (status, report) = env
        .import_csv(&env.admin_key, "phone=phone&name=name", csv)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["created"], 2, "{report}");
    assert_eq!(
        report["errors_by_reason"]["invalid_character"], 1,
        "{report}"
    );
    assert_eq!(report["errors"][0]["field"], "column 2", "{report}");
    env.cleanup().await;
}
