//! Campaigns end to end: CSV import with consent, template sync from the simulator, estimate,
//! launch, progress, failures and retry, replies, pause / resume / cancel, automatic pause on a
//! quality drop, restarts without a miss or a duplicate, bad input, roles, exports and the consent
//! cache rebuild.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use pregon::api::auth::{Role, create_key};
use pregon::domain::campaign::round_money;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{CONTACTS_WITH_MISTAKES, Env, Options, inbound, recipients};

/// A sender the simulator and pregon both know, in business account `waba-it`, whose display
/// number is its id (so the simulator's quality webhooks find it).
async fn sender(env: &mut Env, id: &str, mps: u32) {
    env.sender(id, json!(100_000), mps).await;
    let (status, body) = env
        .post(
            "/v1/senders",
            json!({"phone_number_id": id, "business_portfolio_id": format!("bp-{id}"), "tier": 100_000,
                   "mps": mps, "access_token": "test-token", "display_phone_number": id,
                   "waba_id": "waba-it"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A marketing template with two body parameters, approved in the simulator, synced into pregon.
async fn promo_template(env: &Env) {
    env.sim(
        "/_sim/templates",
        json!({"name": "promo", "language": "es_MX", "status": "APPROVED", "category": "MARKETING",
               "components": [{"type": "BODY", "text": "Hola {{1}}, tu cupón es {{2}}"},
                              {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Parar"}]}]}),
    )
    .await;
    let (status, report) = env.post("/v1/templates/sync", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["templates"], 1, "{report}");
}

fn mapping() -> Value {
    json!({"body.1": {"attribute": "name", "default": "cliente"},
           "body.2": {"attribute": "coupon"}})
}

async fn get_text(env: &Env, path: &str) -> (StatusCode, String) {
    let resp = env
        .http
        .get(format!("{}{path}", env.api_url))
        .bearer_auth(&env.admin_key)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn create(env: &Env, definition: Value) -> String {
    let (status, body) = env.post("/v1/campaigns", definition).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn progress(env: &Env, id: &str) -> Value {
    let (status, body) = env.get(&format!("/v1/campaigns/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn count(p: &Value, status: &str) -> i64 {
    match &p["counts"][status] {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::Object(o) => o["total"].as_i64().unwrap(),
        _ => 0,
    }
}

async fn wait_state(env: &Env, id: &str, state: &str, timeout: Duration) -> Value {
    env.eventually(
        &format!("campaign {id} to be {state}"),
        timeout,
        async || {
            let p = progress(env, id).await;
            (p["campaign"]["state"] == state).then_some(p)
        },
    )
    .await
}

async fn received_by(env: &Env, senders: &[&str]) -> Vec<String> {
    let mut all = Vec::new();
    for s in senders {
        all.extend(env.received(s).await.into_iter().map(|r| r.to));
    }
    all
}

fn assert_unique(list: &[String]) -> HashSet<String> {
    let set: HashSet<String> = list.iter().cloned().collect();
    assert_eq!(set.len(), list.len(), "a recipient got two messages");
    set
}

#[tokio::test]
async fn a_campaign_from_csv_to_failure_report() {
    let mut env = Env::start(Options {
        sim_webhooks: true,
        ..Options::default()
    })
    .await;
    env.start_worker();
    sender(&mut env, "1065551101", 200).await;
    sender(&mut env, "1065551102", 200).await;
    promo_template(&env).await;
    let (_, marketing) = create_key(&env.services.pool, "mk", Role::Marketing, None)
        .await
        .unwrap();
    // 6 eligible; one each: invalid number, repeated row, wrong field count, no opt-in, opted
    // out, US number, missing coupon.
    let csv = CONTACTS_WITH_MISTAKES;
    let (status, report) = env.import_csv(
        &marketing,
        "phone=Telefono&name=Nombre&attributes=Cupon&tags=nov&consent_column=Acepta&evidence_column=Prueba&consent_source=web_form&list=noviembre",
        csv,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["rows"], 13, "{report}");
    assert_eq!(report["created"], 10, "{report}");
    assert_eq!(report["errors"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(report["errors_by_reason"]["invalid_phone_number"], 1);
    assert_eq!(report["errors_by_reason"]["duplicate"], 1);
    assert_eq!(report["errors_by_reason"]["bad_column"], 1);
    let rows: Vec<u64> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["row"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, vec![7, 8, 9], "{report}");
    // Attribute names from the header; coupon mapped as "Cupon".
    let definition = json!({
        "name": "Buen Fin", "template": {"name": "promo", "language": "es_MX"},
        "category": "marketing", "senders": ["1065551101", "1065551102"],
        "audience": {"list_id": report["list_id"]},
        "variables": {"body.1": {"attribute": "name", "default": "cliente"},
                      "body.2": {"attribute": "Cupon"}},
    });
    let (status, created) = env
        .request(
            reqwest::Method::POST,
            "/v1/campaigns",
            Some(&marketing),
            Some(definition),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (status, estimate) = env
        .request(
            reqwest::Method::POST,
            &format!("/v1/campaigns/{id}/estimate"),
            Some(&marketing),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{estimate}");
    assert_eq!(estimate["audience"], 10, "{estimate}");
    assert_eq!(estimate["eligible"], 6, "{estimate}");
    assert_eq!(estimate["excluded"]["no_opt_in"], 1);
    assert_eq!(estimate["excluded"]["opted_out"], 1);
    assert_eq!(estimate["excluded"]["us_number_marketing"], 1);
    assert_eq!(estimate["excluded"]["missing_variable"], 1);
    assert_eq!(estimate["cost"]["by_country"]["MX"]["recipients"], 6);
    assert_eq!(estimate["cost"]["currency"], "USD");
    assert!(estimate["cost"]["total"].as_f64().unwrap() > 0.0);
    // One recipient is not on WhatsApp: Meta reports it failed with 131026.
    env.sim("/_sim/undeliverable", json!({"numbers": ["5215510000006"]}))
        .await;
    let (status, launched) = env
        .request(
            reqwest::Method::POST,
            &format!("/v1/campaigns/{id}/launch"),
            Some(&marketing),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{launched}");
    let (status, again) = env
        .post(&format!("/v1/campaigns/{id}/launch"), json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a campaign is launched once: {again}"
    );
    let done = wait_state(&env, &id, "completed", Duration::from_secs(30)).await;
    let got = received_by(&env, &["1065551101", "1065551102"]).await;
    let got = assert_unique(&got);
    let expected: HashSet<String> = (1..=6).map(|i| format!("521551000000{i}")).collect();
    assert_eq!(got, expected, "exactly the estimate's eligible recipients");
    assert_eq!(done["total"], 6);
    assert_eq!(count(&done, "excluded"), 4);
    // The sends carry each contact's variables (Ana's name, the default for the nameless one).
    let sim: Value = env
        .http
        .get(format!("{}/_sim/received", env.sim_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sim["count"], 6);
    // The failure arrives by webhook; it shows in the report and is not retried.
    let failed = env
        .eventually("the 131026 failure", Duration::from_secs(15), async || {
            let p = progress(&env, &id).await;
            (count(&p, "failed") == 1).then_some(p)
        })
        .await;
    // The estimate priced what was planned; the bill grows as Meta reports billable templates
    // delivered: the five that arrived, not the one that failed.
    assert_eq!(
        failed["cost"]["estimated"]["amount"],
        estimate["cost"]["total"]
    );
    assert_eq!(failed["cost"]["estimated"]["unpriced"], 0);
    let mx_marketing = estimate["cost"]["by_country"]["MX"]["price"]
        .as_f64()
        .unwrap();
    let billed = env
        .eventually(
            "five delivered templates billed",
            Duration::from_secs(15),
            async || {
                let p = progress(&env, &id).await;
                (p["cost"]["billed"]["amount"].as_f64() == Some(round_money(5.0 * mx_marketing)))
                    .then_some(p)
            },
        )
        .await;
    assert_eq!(billed["cost"]["currency"], "USD");
    assert_eq!(billed["cost"]["billed"]["unpriced"], 0);
    assert_eq!(failed["counts"]["failed"]["by_reason"]["131026"], 1);
    let (status, report) = get_text(&env, &format!("/v1/campaigns/{id}/failures.csv")).await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(
        lines[0],
        "recipient,error_code,reason,error,attempts,last_attempt"
    );
    assert_eq!(lines.len(), 2, "{report}");
    assert!(lines[1].starts_with("5215510000006,131026,"), "{report}");
    let (status, retry) = env
        .post(&format!("/v1/campaigns/{id}/retry-failed"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    assert_eq!(retry["requeued"], 0, "{retry}");
    assert_eq!(retry["not_retried"]["131026"], 1, "{retry}");
    // A quick-reply press in context of a campaign message is attributed to the campaign.
    let wamid: String = sqlx::query_scalar(
        "SELECT wamid FROM messages WHERE campaign_id = $1::uuid AND recipient = '5215510000002'",
    )
    .bind(&id)
    .fetch_one(&env.services.pool)
    .await
    .unwrap();
    env.webhook(&inbound(
        "1065551101",
        "5215510000002",
        "wamid.reply-1",
        json!({"type": "button", "button": {"payload": "Me interesa", "text": "Me interesa"},
               "context": {"from": "1065551101", "id": wamid}}),
    ))
    .await;
    let replies = env
        .eventually(
            "the reply to be attributed",
            Duration::from_secs(10),
            async || {
                let (_, r) = env.get(&format!("/v1/campaigns/{id}/replies")).await;
                (r["count"] == 1).then_some(r)
            },
        )
        .await;
    assert_eq!(replies["data"][0]["recipient"], "5215510000002");
    let p = progress(&env, &id).await;
    assert_eq!(count(&p, "replied"), 1);
    env.cleanup().await;
}

/// A file of several batches is written while the next batch is read: a number repeated in a
/// later batch is still a duplicate (the first row wins), every row is accounted for, and the
/// report lists the errors in row order whichever step found them.
#[tokio::test]
async fn an_import_of_several_batches_finds_repeats_across_them() {
    let env = Env::start(Options::default()).await;
    let numbers = recipients(4_500, 93);
    let mut lines: Vec<String> = numbers.iter().map(|n| format!("{n},first")).collect();
    // Row r is lines[r - 1]; batches are rows 1-2000, 2001-4000 and 4001-4500.
    lines[49] = "5215550000001,too,many".into();
    lines[2_099] = format!("{},again", numbers[9]);
    lines[2_999] = "not-a-number,x".into();
    lines[4_099] = format!("{},again", numbers[2_200]);
    lines[4_199] = format!("{},again", numbers[4_149]);
    // Two batches are written at once: the first is written before the third starts, so this
    // repeat is found in PostgreSQL, the others in memory or there depending on timing.
    lines[4_299] = format!("{},again", numbers[19]);
    let csv = format!("phone,code\n{}\n", lines.join("\n"));
    let (status, report) = env
        .import_csv(&env.admin_key, "phone=phone&attributes=code", &csv)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["rows"], 4_500, "{report}");
    assert_eq!(report["created"], 4_494, "{report}");
    assert_eq!(report["errors_by_reason"]["duplicate"], 4, "{report}");
    assert_eq!(report["errors_by_reason"]["bad_column"], 1, "{report}");
    assert_eq!(
        report["errors_by_reason"]["invalid_phone_number"], 1,
        "{report}"
    );
    let rows: Vec<u64> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["row"].as_u64().unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![50, 2_100, 3_000, 4_100, 4_200, 4_300],
        "{report}"
    );
    let contacts: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts")
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    assert_eq!(contacts, 4_494);
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT attributes->>'code' FROM contacts WHERE phone = ANY($1) ORDER BY phone",
    )
    .bind(vec![
        numbers[9].clone(),
        numbers[19].clone(),
        numbers[2_200].clone(),
        numbers[4_149].clone(),
    ])
    .fetch_all(&env.services.pool)
    .await
    .unwrap();
    assert_eq!(kept, vec!["first"; 4]);
    // Every error is kept, not only those in the answer.
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM contact_import_errors WHERE import_id = $1::uuid")
            .bind(report["import_id"].as_str().unwrap())
            .fetch_one(&env.services.pool)
            .await
            .unwrap();
    assert_eq!(stored, 6);
    env.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_roles_hold() {
    let mut env = Env::start(Options::default()).await;
    sender(&mut env, "1065551201", 80).await;
    promo_template(&env).await;
    env.sim(
        "/_sim/templates",
        json!({"name": "pending_one", "language": "es_MX", "status": "PENDING", "category": "MARKETING"}),
    )
    .await;
    env.post("/v1/templates/sync", json!({})).await;
    let (_, marketing) = create_key(&env.services.pool, "mk", Role::Marketing, None)
        .await
        .unwrap();
    // A broken header writes nothing.
    for (query, csv, field) in [
        ("phone=Telefono", "Nombre,Otro\nAna,x\n", "phone"),
        ("phone=Telefono", "Telefono,Telefono\n1,2\n", "header"),
        (
            "phone=Telefono&name=Nombre",
            "Telefono\n5215510000001\n",
            "name",
        ),
        ("phone=Telefono", "", ""),
    ] {
        let (status, body) = env.import_csv(&marketing, query, csv).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_csv", "{body}");
        if !field.is_empty() {
            assert_eq!(body["error"]["field"], field, "{body}");
        }
    }
    let contacts: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts")
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    assert_eq!(contacts, 0);
    let imports: i64 = sqlx::query_scalar("SELECT count(*) FROM contact_imports")
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    assert_eq!(imports, 0, "a refused file leaves no import behind");
    let good = json!({"name": "x", "template": {"name": "promo", "language": "es_MX"},
        "sender": "1065551201", "audience": {"numbers": ["5215510000001"]}, "variables": mapping()});
    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (
            json!({"template": {"name": "nope", "language": "es_MX"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_template",
            "template.name",
        ),
        (
            json!({"template": {"name": "pending_one", "language": "es_MX"}, "variables": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "template_not_approved",
            "template.name",
        ),
        (
            json!({"variables": {"body.1": {"attribute": "name"}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "variables_mismatch",
            "variables",
        ),
        (
            json!({"audience": {"tags": ["nobody-has-this"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_audience",
            "audience",
        ),
        (
            json!({"audience": {"numbers": ["12"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_audience",
            "audience",
        ),
        (
            json!({"schedule": {"start_at": "2020-01-01T00:00:00Z"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "schedule_in_past",
            "schedule.start_at",
        ),
        (
            json!({"schedule": {"quiet_hours": {"start": "25:00", "end": "08:00"}}}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "schedule.quiet_hours",
        ),
        (
            json!({"sender": "999"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_sender",
            "senders",
        ),
        (
            json!({"category": "utility"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "category_mismatch",
            "category",
        ),
    ];
    for (patch, status, code, field) in cases {
        let mut body = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (got, answer) = env.post("/v1/campaigns", body).await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    let campaigns: i64 = sqlx::query_scalar("SELECT count(*) FROM campaigns")
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    assert_eq!(campaigns, 0, "nothing half-made");
    // Marketing manages campaigns, not senders or keys.
    let (status, _) = env
        .request(
            reqwest::Method::POST,
            "/v1/campaigns",
            Some(&marketing),
            Some(good.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for (path, body) in [
        (
            "/v1/senders",
            json!({"phone_number_id": "1", "business_portfolio_id": "b", "access_token": "t"}),
        ),
        ("/v1/apikeys", json!({"name": "x", "role": "admin"})),
    ] {
        let (status, answer) = env
            .request(reqwest::Method::POST, path, Some(&marketing), Some(body))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
    }
    // A service key (other systems) may not run campaigns.
    let (_, service) = create_key(&env.services.pool, "svc", Role::Service, None)
        .await
        .unwrap();
    let (status, _) = env
        .request(
            reqwest::Method::POST,
            "/v1/campaigns",
            Some(&service),
            Some(good),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    env.cleanup().await;
}

#[tokio::test]
async fn pause_stops_sends_within_a_second_resume_continues_and_cancel_ends_it() {
    let mut env = Env::start(Options::default()).await;
    env.start_worker();
    sender(&mut env, "1065551301", 20).await;
    promo_template(&env).await;
    let audience = recipients(400, 301);
    env.opt_in(&audience).await;
    let id = create(
        &env,
        json!({"name": "slow", "template": {"name": "promo", "language": "es_MX"},
               "sender": "1065551301", "audience": {"numbers": audience},
               "variables": {"body.1": {"value": "amiga"}, "body.2": {"value": "NOV"}}}),
    )
    .await;
    env.post(&format!("/v1/campaigns/{id}/launch"), json!({}))
        .await;
    env.eventually("some sends", Duration::from_secs(20), async || {
        (env.received("1065551301").await.len() >= 20).then_some(())
    })
    .await;
    let (status, paused) = env
        .post(&format!("/v1/campaigns/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_pause = env.received("1065551301").await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.received("1065551301").await.len(),
        at_pause,
        "nothing is sent a second after a pause"
    );
    // What was waiting in RabbitMQ went back to the campaign.
    let p = env
        .eventually(
            "queued messages handed back",
            Duration::from_secs(10),
            async || {
                let p = progress(&env, &id).await;
                (count(&p, "queued") == 0).then_some(p)
            },
        )
        .await;
    assert!(count(&p, "planned") > 0, "{p}");
    env.post(&format!("/v1/campaigns/{id}/resume"), json!({}))
        .await;
    env.eventually("sending again", Duration::from_secs(20), async || {
        (env.received("1065551301").await.len() >= at_pause + 20).then_some(())
    })
    .await;
    let (status, _) = env
        .post(&format!("/v1/campaigns/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, again) = env
        .post(&format!("/v1/campaigns/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let settled = env
        .eventually(
            "every message settled",
            Duration::from_secs(20),
            async || {
                let p = progress(&env, &id).await;
                (count(&p, "queued") + count(&p, "planned") + count(&p, "deferred") == 0)
                    .then_some(p)
            },
        )
        .await;
    let got = env.received("1065551301").await;
    let got: Vec<String> = got.into_iter().map(|r| r.to).collect();
    assert_unique(&got);
    assert!(got.len() < 400, "cancel stopped the campaign");
    assert_eq!(
        count(&settled, "sent") + count(&settled, "delivered") + count(&settled, "read"),
        got.len() as i64
    );
    assert_eq!(
        count(&settled, "cancelled") + got.len() as i64,
        400,
        "{settled}"
    );
    let events: Vec<String> = settled["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, vec!["launched", "paused", "resumed", "cancelled"]);
    env.cleanup().await;
}

#[tokio::test]
async fn a_red_quality_rating_pauses_the_campaign_and_green_resumes_it() {
    let mut env = Env::start(Options {
        sim_webhooks: true,
        ..Options::default()
    })
    .await;
    env.start_worker();
    sender(&mut env, "1065551401", 25).await;
    promo_template(&env).await;
    let audience = recipients(300, 401);
    env.opt_in(&audience).await;
    let id = create(
        &env,
        json!({"name": "quality", "template": {"name": "promo", "language": "es_MX"},
               "sender": "1065551401", "audience": {"numbers": audience},
               "variables": {"body.1": {"value": "a"}, "body.2": {"value": "b"}}}),
    )
    .await;
    env.post(&format!("/v1/campaigns/{id}/launch"), json!({}))
        .await;
    env.eventually("some sends", Duration::from_secs(20), async || {
        (env.received("1065551401").await.len() >= 10).then_some(())
    })
    .await;
    env.sim(
        "/_sim/numbers",
        json!({"phone_number_id": "1065551401", "mps": 25, "quality": "RED"}),
    )
    .await;
    let paused = wait_state(&env, &id, "paused", Duration::from_secs(15)).await;
    assert_eq!(paused["campaign"]["paused_by"], "auto");
    assert_eq!(
        paused["campaign"]["pause_causes"],
        json!(["sender_quality_red:1065551401"])
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = env.received("1065551401").await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.received("1065551401").await.len(), held);
    env.sim(
        "/_sim/numbers",
        json!({"phone_number_id": "1065551401", "mps": 25, "quality": "GREEN"}),
    )
    .await;
    let done = wait_state(&env, &id, "completed", Duration::from_secs(60)).await;
    let got: Vec<String> = env
        .received("1065551401")
        .await
        .into_iter()
        .map(|r| r.to)
        .collect();
    assert_eq!(assert_unique(&got).len(), 300);
    let events: Vec<(String, Value)> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap().to_string(), e["cause"].clone()))
        .collect();
    assert!(events.contains(&("auto_paused".into(), json!("sender_quality_red:1065551401"))));
    assert!(events.iter().any(|(e, _)| e == "auto_resumed"));
    let metrics = env.services.metrics.render();
    assert!(metrics.contains("pregon_campaign_transitions_total{cause=\"sender_quality_red\",event=\"auto_paused\"} 1"), "{metrics}");
    env.cleanup().await;
}

#[tokio::test]
async fn restarts_mid_fan_out_and_mid_send_miss_no_one_and_send_no_one_twice() {
    let mut env = Env::start(Options {
        sim: pregon::simulator::SimConfig {
            latency: Duration::from_millis(30),
            ..Default::default()
        },
        tweak: |c| {
            c.campaign_window = 40;
            c.campaign_chunk = 25;
        },
        ..Options::default()
    })
    .await;
    sender(&mut env, "1065551501", 100).await;
    sender(&mut env, "1065551502", 100).await;
    promo_template(&env).await;
    let audience = recipients(600, 501);
    env.opt_in(&audience).await;
    let id = create(
        &env,
        json!({"name": "restarts", "template": {"name": "promo", "language": "es_MX"},
               "senders": ["1065551501", "1065551502"], "audience": {"numbers": audience},
               "variables": {"body.1": {"value": "a"}, "body.2": {"value": "b"}}}),
    )
    .await;
    env.post(&format!("/v1/campaigns/{id}/launch"), json!({}))
        .await;
    env.start_worker();
    for threshold in [100, 250] {
        env.eventually("sends under way", Duration::from_secs(30), async || {
            (received_by(&env, &["1065551501", "1065551502"]).await.len() >= threshold)
                .then_some(())
        })
        .await;
        // Stop in the middle of fan-out and of sends in flight...
        env.stop_worker().await;
        // ...as if the process had died after marking a stretch handed over but before
        // RabbitMQ confirmed it: the stretch is published again with the same message ids.
        sqlx::query(
            "UPDATE campaigns SET fanout_cursor = GREATEST(fanout_cursor - 30, 0) WHERE id = $1::uuid",
        )
        .bind(&id)
        .execute(&env.services.pool)
        .await
        .unwrap();
        env.start_worker();
    }
    wait_state(&env, &id, "completed", Duration::from_secs(60)).await;
    let got = received_by(&env, &["1065551501", "1065551502"]).await;
    let got = assert_unique(&got);
    let expected: HashSet<String> = audience.into_iter().collect();
    assert_eq!(got, expected, "every recipient exactly once");
    // Each recipient stuck to one sender; both senders were used.
    let mut per_sender: HashMap<&str, usize> = HashMap::new();
    for s in ["1065551501", "1065551502"] {
        per_sender.insert(s, env.received(s).await.len());
    }
    assert!(per_sender.values().all(|n| *n > 100), "{per_sender:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn exports_and_the_consent_cache_rebuild() {
    let mut env = Env::start(Options::default()).await;
    sender(&mut env, "1065551601", 80).await;
    let csv = "phone,name,city,optin\n5215520000001,Ana,CDMX,si\n5215520000002,Beto,GDL,no\n";
    let (status, report) = env.import_csv(
        &env.admin_key.clone(),
        "phone=phone&name=name&attributes=*&consent_column=optin&evidence=signed%20form&tags=vip",
        csv,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["consent_events"], 2, "{report}");
    // The same file again changes nothing in the log.
    let (_, again) = env.import_csv(
        &env.admin_key.clone(),
        "phone=phone&name=name&attributes=*&consent_column=optin&evidence=signed%20form&tags=vip",
        csv,
    )
    .await;
    assert_eq!(again["consent_events"], 0, "{again}");
    assert_eq!(again["updated"], 2, "{again}");
    let (status, contacts) = get_text(&env, "/v1/contacts.csv").await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = contacts.lines().collect();
    assert_eq!(lines.len(), 3, "{contacts}");
    assert!(
        lines[1].starts_with("5215520000001,Ana,,MX,vip,"),
        "{contacts}"
    );
    assert!(lines[1].contains("CDMX"), "{contacts}");
    let (_, consent) = get_text(&env, "/v1/consent.csv").await;
    let lines: Vec<&str> = consent.lines().collect();
    assert_eq!(lines.len(), 3, "{consent}");
    assert!(
        lines[1].contains(",5215520000001,marketing,opt_in,import,signed form,"),
        "{consent}"
    );
    // Redis drifts from the log: one copy lost, one invented.
    let state = &env.services.state;
    state
        .replace_consent(&[
            ("5215520000001".into(), None, None),
            ("5215599999999".into(), Some("opt_in".into()), None),
        ])
        .await
        .unwrap();
    let report = pregon::contacts::rebuild_consent_cache(&env.services)
        .await
        .unwrap();
    assert_eq!(report.recipients, 2);
    assert_eq!(report.differences, 1);
    assert_eq!(report.extra_in_redis, 1);
    let restored = state.consent("5215520000001").await.unwrap();
    assert_eq!(restored.marketing.map(|a| a.as_str()), Some("opt_in"));
    let gone = state.consent("5215599999999").await.unwrap();
    assert_eq!(gone.marketing, None);
    let again = pregon::contacts::rebuild_consent_cache(&env.services)
        .await
        .unwrap();
    assert_eq!((again.differences, again.extra_in_redis), (0, 0));
    env.cleanup().await;
}

#[tokio::test]
async fn contacts_by_json_and_the_exclusion_report() {
    let mut env = Env::start(Options::default()).await;
    env.start_worker();
    sender(&mut env, "1065551701", 200).await;
    promo_template(&env).await;
    let (_, marketing) = create_key(&env.services.pool, "mk", Role::Marketing, None)
        .await
        .unwrap();
    let (_, service) = create_key(&env.services.pool, "svc", Role::Service, None)
        .await
        .unwrap();
    let put = |key: &str, phone: &str, body: Value| {
        let key = key.to_string();
        let path = format!("/v1/contacts/{phone}");
        let env = &env;
        async move {
            env.request(reqwest::Method::PUT, &path, Some(&key), Some(body))
                .await
        }
    };
    // Created, then its whole profile replaced (tags too), the number normalised.
    let (status, created) = put(
        &marketing,
        "+52%201%2055%203000%200001",
        json!({"name": "Ana", "tags": ["vip", "nov"], "attributes": {"coupon": "A1"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["phone"], "5215530000001");
    assert_eq!(created["country"], "MX");
    assert_eq!(created["tags"], json!(["nov", "vip"]));
    let (status, replaced) = put(
        &marketing,
        "5215530000001",
        json!({"name": "Ana María", "language": "es_MX", "tags": ["vip"], "attributes": {"coupon": "A2", "points": 7}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["tags"], json!(["vip"]));
    assert_eq!(replaced["attributes"]["coupon"], "A2");
    assert_eq!(
        replaced["id"], created["id"],
        "the same person is one contact"
    );
    let (status, _) = put(&marketing, "5215530000002", json!({"tags": ["vip"]})).await;
    assert_eq!(status, StatusCode::CREATED);
    // Bad input names the field and writes nothing.
    for (phone, body, code, field) in [
        ("12", json!({}), "invalid_phone_number", "phone"),
        (
            "5215530000003",
            json!({"attributes": {"address": {"city": "CDMX"}}}),
            "invalid_field",
            "attributes.address",
        ),
        (
            "5215530000003",
            json!({"language": "Spanish"}),
            "invalid_field",
            "language",
        ),
        (
            "5215530000003",
            json!({"tags": ["ok", " "]}),
            "invalid_field",
            "tags[1]",
        ),
    ] {
        let (status, body) = put(&marketing, phone, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let (status, body) = put(&marketing, "5215530000003", json!({"nmae": "typo"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, missing) = env.get("/v1/contacts/5215530000003").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    assert_eq!(missing["error"]["code"], "unknown_contact");
    // A service key sends messages; it does not manage contacts.
    let (status, _) = put(&service, "5215530000004", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Listing by tag, paged.
    let (status, page) = env.get("/v1/contacts?tag=vip&limit=1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let after = page["next_after"].as_i64().unwrap();
    let (_, rest) = env
        .get(&format!("/v1/contacts?tag=vip&limit=1&after={after}"))
        .await;
    assert_eq!(rest["data"][0]["phone"], "5215530000002", "{rest}");
    let (status, body) = env.get("/v1/contacts?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "limit");
    // Consent is its own log; the contact shows the current state.
    let (status, body) = env
        .post(
            "/v1/consent",
            json!({"recipient": "5215530000001", "purpose": "marketing", "action": "opt_in",
                   "source": "web_form", "evidence": "newsletter form"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, shown) = env.get("/v1/contacts/5215530000001").await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["contact"]["name"], "Ana María");
    assert_eq!(shown["consent"]["marketing"], "opt_in");

    // Who a campaign left out, and why, as CSV.
    let id = create(
        &env,
        json!({"name": "vip", "template": {"name": "promo", "language": "es_MX"},
               "category": "marketing", "senders": ["1065551701"],
               "audience": {"numbers": ["5215530000001", "5215530000002", "12", "+52 1 55 3000 0001"]},
               "variables": {"body.1": {"attribute": "name", "default": "cliente"},
                             "body.2": {"attribute": "coupon", "default": "BF"}}}),
    )
    .await;
    let (status, launched) = env
        .post(&format!("/v1/campaigns/{id}/launch"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{launched}");
    wait_state(&env, &id, "completed", Duration::from_secs(30)).await;
    assert_eq!(
        received_by(&env, &["1065551701"]).await,
        vec!["5215530000001"]
    );
    let (status, csv) = get_text(&env, &format!("/v1/campaigns/{id}/exclusions.csv")).await;
    assert_eq!(status, StatusCode::OK);
    // The duplicate is listed as it was given; its leading `+` would make a spreadsheet read
    // it as a formula, so the cell carries a leading `'`.
    assert_eq!(
        csv,
        "recipient,reason\n5215530000002,no_opt_in\n12,invalid_number\n'+52 1 55 3000 0001,duplicate\n"
    );

    // Deleting a contact keeps its consent log, the record of what was agreed; it leaves its lists.
    let (status, report) = env
        .import_csv(&marketing, "phone=phone&list=vip", "phone\n5215530000001\n")
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let (status, _) = env
        .request(
            reqwest::Method::DELETE,
            "/v1/contacts/5215530000001",
            Some(&marketing),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = env.get("/v1/contacts/5215530000001").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, again) = env
        .request(
            reqwest::Method::DELETE,
            "/v1/contacts/5215530000001",
            Some(&marketing),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{again}");
    let (_, consent) = env.get("/v1/consent/5215530000001").await;
    assert_eq!(consent["history"].as_array().unwrap().len(), 1, "{consent}");
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM contact_list_members WHERE list_id = $1::uuid")
            .bind(report["list_id"].as_str().unwrap())
            .fetch_one(&env.services.pool)
            .await
            .unwrap();
    assert_eq!(members, 0);
    env.cleanup().await;
}
