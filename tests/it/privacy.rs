//! Retention and erasure: what is kept past its time is purged, and a person erased on request is
//! found nowhere afterwards but as a hashed tombstone that keeps their opt-out.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Env, Options, inbound, template_body};

const SENDER: &str = "1065550960";

async fn wait_status(env: &Env, id: &str, status: &str) {
    env.eventually(status, Duration::from_secs(15), async || {
        (env.message(id).await["status"] == status).then_some(())
    })
    .await;
}

/// The test database dumped as text, as an operator's backup would hold it.
fn dump(env: &Env) -> String {
    let out = std::process::Command::new("pg_dump")
        .arg("--data-only")
        .arg(&env.config.database_url)
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every Redis key of this test (and every member of its tier counters), as one string.
async fn redis_dump(env: &Env) -> String {
    let client = redis::Client::open(env.config.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = env.redis_keys(&mut conn).await;
    let mut all = keys.join("\n");
    for key in keys.iter().filter(|k| k.contains(":tier:")) {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        all.push_str(&members.join("\n"));
    }
    all
}

#[tokio::test]
async fn an_erased_person_is_nowhere_but_a_tombstone_that_keeps_their_opt_out() {
    let mut env = Env::start(Options {
        sim_webhooks: true,
        ..Options::default()
    })
    .await;
    env.sender(SENDER, json!(1000), 80).await;
    env.template("promo", "marketing").await;
    env.start_worker();
    // Ana (written two ways) and Beto, who stays.
    let (ana, ana_other, beto) = ("+52 55 1234 0960", "525512340960", "5215512340961");
    for who in [ana, beto] {
        let (status, body) = env
            .post(
                "/v1/consent",
                json!({"recipient": who, "purpose": "marketing", "action": "opt_in",
                       "source": "web_form", "evidence": "ticked the box"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = env
        .post(
            "/v1/subscriptions",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["message.sent"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut sent = Vec::new();
    for who in [ana, beto] {
        let (status, body) = env
            .post(
                &format!("/v1/{SENDER}/messages"),
                template_body(who, "promo"),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let id = body["messages"][0]["id"].as_str().unwrap().to_string();
        wait_status(&env, &id, "delivered").await;
        sent.push(id);
    }
    env.webhook(&inbound(
        SENDER,
        ana_other,
        "wamid.in-960",
        json!({"type": "text", "text": {"body": "hola"}}),
    ))
    .await;
    env.webhook(&inbound(
        SENDER,
        ana_other,
        "wamid.in-961",
        json!({"type": "text", "text": {"body": "STOP"}}),
    ))
    .await;
    env.eventually("the opt-out", Duration::from_secs(10), async || {
        let (_, c) = env.get("/v1/consent/5215512340960").await;
        (c["marketing"] == "opt_out").then_some(())
    })
    .await;
    let import = |csv: &'static str| {
        let http = env.http.clone();
        let url = format!(
            "{}/v1/contacts/import?phone=phone&consent_column=ok&evidence=old%20list",
            env.api_url
        );
        let key = env.admin_key.clone();
        async move {
            let resp = http
                .post(url)
                .bearer_auth(key)
                .body(csv)
                .send()
                .await
                .unwrap();
            (
                resp.status(),
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, report) = import("phone,ok\n+52 55 1234 0960,no\n5215512340961,si\n").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(
        dump(&env).contains("5512340960"),
        "the person is there before"
    );

    // Only an admin key not limited to some senders may erase.
    let (status, _) = env
        .request(
            reqwest::Method::POST,
            "/v1/erasures",
            None,
            Some(json!({"recipient": ana})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = env
        .post("/v1/erasures", json!({"recipient": "not a number"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "recipient", "{body}");
    let (status, body) = env
        .post("/v1/erasures", json!({"recipient": "+52 1 55 1234 0960"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let erased = &body["erased"];
    assert_eq!(erased["marketing_opted_out"], true, "{body}");
    assert_eq!(erased["messages_anonymised"], 1, "{body}");
    assert!(erased["consent_events"].as_u64().unwrap() >= 2, "{body}");
    assert_eq!(erased["contacts"], 1, "{body}");
    assert_eq!(erased["inbound_messages"], 2, "{body}");

    // Nowhere in PostgreSQL, in any spelling; nowhere in Redis.
    let after = dump(&env);
    assert!(
        !after.contains("5512340960"),
        "the number is still in the dump"
    );
    assert!(after.contains("5512340961"), "Beto's data is untouched");
    assert!(!redis_dump(&env).await.contains("5512340960"));
    // Her message stays for the business's records, under the tombstone.
    let message = env.message(&sent[0]).await;
    assert!(
        message["recipient"]
            .as_str()
            .unwrap()
            .starts_with("erased:"),
        "{message}"
    );
    // The consent log is still append-only for everyone else.
    let rewrite = sqlx::query("DELETE FROM consent_events WHERE recipient = '5215512340961'")
        .execute(&env.services.pool)
        .await;
    assert!(rewrite.is_err());

    // Her opt-out survives: marketing needs a new opt-in, and an old list cannot give it.
    let (status, body) = env
        .post(
            &format!("/v1/{SENDER}/messages"),
            template_body(ana, "promo"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, report) = import("phone,ok\n+52 1 55 1234 0960,si\n").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["consent_events"], 0, "{report}");
    assert_eq!(
        report["errors_by_reason"]["erased_opted_out"], 1,
        "{report}"
    );
    let (_, consent) = env.get("/v1/consent/5215512340960").await;
    assert_ne!(consent["marketing"], "opt_in", "{consent}");
    // She may opt in again herself, with evidence.
    let (status, body) = env
        .post(
            "/v1/consent",
            json!({"recipient": ana, "purpose": "marketing", "action": "opt_in",
                   "source": "web_form", "evidence": "signed up again on 3 Dec"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    env.cleanup_senders(&[SENDER]).await;
}

#[tokio::test]
async fn what_is_kept_past_its_time_is_purged_in_the_background() {
    let mut env = Env::start(Options {
        tweak: |c| c.purge_interval = pregon::config::HumanDuration(Duration::from_millis(200)),
        ..Options::default()
    })
    .await;
    env.sender(SENDER, json!(1000), 80).await;
    env.template("order_update", "utility").await;
    let pool = env.services.pool.clone();
    // Two of each: one past its time (older than the 30- or 90-day defaults), one recent.
    let mut ids = Vec::new();
    for n in 0..2 {
        let (status, body) = env
            .post(
                &format!("/v1/{SENDER}/messages"),
                template_body(&format!("52155123409{n}0"), "order_update"),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(body["messages"][0]["id"].as_str().unwrap().to_string());
    }
    for (id, age) in ids.iter().zip(["40 days", "1 day"]) {
        sqlx::query(
            "UPDATE messages SET status = 'sent', created_at = now() - $2::interval WHERE id = $1::uuid",
        )
        .bind(id)
        .bind(age)
        .execute(&pool)
        .await
        .unwrap();
    }
    let import_old = uuid::Uuid::new_v4();
    let import_new = uuid::Uuid::new_v4();
    for (age, n) in [("40 days", 0), ("1 day", 1)] {
        let script = format!(
            "INSERT INTO webhook_events (body, state, received_at) VALUES ('{{}}', 'processed', now() - interval '{age}');
             INSERT INTO webhook_events (body, state, received_at, claimed_until)
                 VALUES ('{{}}', 'pending', now() - interval '{age}', now() + interval '1 hour');
             INSERT INTO inbound_messages (wamid, sender, recipient, message_type, occurred_at)
                 VALUES ('wamid.old-{n}', '{SENDER}', '5215512340990', 'text', now() - interval '{age}' - interval '60 days');
             INSERT INTO message_statuses (wamid, status, occurred_at, received_at, applied_at)
                 VALUES ('wamid.s-{n}', 'delivered', now(), now() - interval '{age}', now());
             INSERT INTO ingest_refusals (code, reason, payload, received_at)
                 VALUES ('invalid_json', 'x', '{{}}', now() - interval '{age}');
             INSERT INTO contact_imports (id, created_at) VALUES ('{}', now() - interval '{age}');
             INSERT INTO contact_import_errors (import_id, row_number, reason) VALUES ('{}', 1, 'invalid_phone_number');",
            if n == 0 { import_old } else { import_new },
            if n == 0 { import_old } else { import_new },
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(&pool)
            .await
            .unwrap();
    }
    env.start_background();
    let count = async |sql: &str| -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    env.eventually("the purge", Duration::from_secs(10), async || {
        (count("SELECT count(*) FROM ingest_refusals").await == 1).then_some(())
    })
    .await;
    env.eventually("every kind purged", Duration::from_secs(10), async || {
        (count("SELECT count(*) FROM contact_import_errors").await == 1).then_some(())
    })
    .await;
    // The old body is gone and its row stays; the recent one keeps its body.
    assert_eq!(
        count("SELECT count(*) FROM messages WHERE body IS NULL").await,
        1
    );
    assert_eq!(count("SELECT count(*) FROM messages").await, 2);
    let old_body: Option<String> =
        sqlx::query_scalar("SELECT body FROM messages WHERE id = $1::uuid")
            .bind(&ids[0])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(old_body, None);
    // Processed events past their time go; a pending one is never purged, however old.
    assert_eq!(
        count("SELECT count(*) FROM webhook_events WHERE state = 'processed'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM webhook_events WHERE state = 'pending'").await,
        2
    );
    assert_eq!(count("SELECT count(*) FROM inbound_messages").await, 1);
    assert_eq!(count("SELECT count(*) FROM message_statuses").await, 1);
    let purged = |kind: &str| {
        env.services
            .metrics
            .purged_rows
            .with_label_values(&[kind])
            .get()
    };
    for kind in [
        "message_bodies",
        "webhook_payloads",
        "inbound_messages",
        "delivery_logs",
        "import_errors",
        "refusals",
    ] {
        assert_eq!(purged(kind), 1, "{kind}");
    }
    env.cleanup_senders(&[SENDER]).await;
}
