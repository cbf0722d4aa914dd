//! The API's abuse limits: requests per key, requests in flight, request timeouts and import size.

use std::time::Duration;

use pregon::api::auth::{Role, create_key};
use pregon::domain::Category;
use pregon::domain::decision::{Quality, SenderStatus, TemplateStatus};
use pregon::store::{Sender, Template};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Env, Options, recipients, template_body};

const SENDER: &str = "1065550900";

#[tokio::test]
async fn a_key_past_its_rate_is_told_to_wait_and_other_keys_are_not() {
    let env = Env::start(Options {
        tweak: |c| {
            c.api_key_rate = 1;
            c.api_key_burst = 3;
        },
        ..Options::default()
    })
    .await;
    let (_, busy) = create_key(&env.services.pool, "busy", Role::Viewer, None)
        .await
        .unwrap();
    for _ in 0..3 {
        let (status, body) = env
            .request(Method::GET, "/v1/senders", Some(&busy), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let resp = env
        .http
        .get(format!("{}/v1/senders", env.api_url))
        .bearer_auth(&busy)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // The key's budget is its own: the admin key is not held up, and a made-up key is still
    // told it is unknown rather than limited.
    let (status, _) = env.get("/v1/senders").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = env
        .request(Method::GET, "/v1/senders", Some("pgn_made_up"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // After the wait it is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, body) = env
        .request(Method::GET, "/v1/senders", Some(&busy), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let metrics = env
        .services
        .metrics
        .api_refused
        .with_label_values(&["rate_limited"]);
    assert_eq!(metrics.get(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_request_past_the_timeout_is_answered_and_still_completes_whole() {
    let env = Env::start(Options {
        tweak: |c| c.api_request_timeout = pregon::config::HumanDuration(Duration::from_millis(1)),
        ..Options::default()
    })
    .await;
    // Set up behind the API's back: through it, everything would time out.
    env.services
        .register_sender(Sender {
            phone_number_id: SENDER.into(),
            business_portfolio_id: "bp".into(),
            display_phone_number: None,
            tier: 1000,
            quality: Quality::Green,
            status: SenderStatus::Connected,
            paused: false,
            paused_reason: None,
            mps: 80,
            tier_spread_seconds: None,
            waba_id: None,
            access_token: "test-token".into(),
        })
        .await
        .unwrap();
    env.services
        .register_template(Template {
            name: "order_update".into(),
            language: "es_MX".into(),
            category: Category::Utility,
            status: TemplateStatus::Approved,
            parameters: vec![],
        })
        .await
        .unwrap();
    let to = &recipients(1, 90)[0];
    let resp = env
        .http
        .post(format!("{}/v1/{SENDER}/messages", env.api_url))
        .bearer_auth(&env.admin_key)
        .header("Idempotency-Key", "order-1")
        .json(&template_body(to, "order_update"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    // The request ran on to its end: the message was queued once.
    let queued = env
        .eventually(
            "the timed-out request to finish",
            Duration::from_secs(10),
            async || {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
                    .fetch_one(&env.services.pool)
                    .await
                    .unwrap();
                (n > 0).then_some(n)
            },
        )
        .await;
    assert_eq!(queued, 1);
    env.cleanup().await;
}

/// Opens a request whose body never finishes arriving, holding one of the API's places.
async fn hold_an_upload(env: &Env) -> tokio::net::TcpStream {
    let address = env.api_url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/contacts/import?phone=phone HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\nphone\n",
        env.admin_key
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
}

#[tokio::test]
async fn past_its_in_flight_limit_the_api_refuses_and_health_still_answers() {
    let env = Env::start(Options {
        tweak: |c| c.api_max_in_flight = 1,
        ..Options::default()
    })
    .await;
    let upload = hold_an_upload(&env).await;
    let refused = env
        .eventually(
            "the held upload to fill the API",
            Duration::from_secs(10),
            async || {
                let (status, body) = env.get("/v1/senders").await;
                (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
            },
        )
        .await;
    assert_eq!(refused["error"]["code"], "overloaded", "{refused}");
    let health = env
        .http
        .get(format!("{}/healthz", env.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    drop(upload);
    env.eventually(
        "the place to be given back",
        Duration::from_secs(10),
        async || {
            let (status, _) = env.get("/v1/senders").await;
            (status == StatusCode::OK).then_some(())
        },
    )
    .await;
    env.cleanup().await;
}

/// Sends `rows` as a chunked upload (no declared length) and reads the answer.
async fn chunked_import(env: &Env, rows: &[String]) -> (u16, Value) {
    let address = env.api_url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request = format!(
        "POST /v1/contacts/import?phone=phone HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        env.admin_key
    );
    for row in std::iter::once(&"phone".to_string()).chain(rows) {
        let line = format!("{row}\n");
        request.push_str(&format!("{:x}\r\n{line}\r\n", line.len()));
    }
    request.push_str("0\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    // The answer may itself be chunked: the JSON is the part between the braces.
    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_import_over_the_size_limit_is_refused_clearly() {
    let env = Env::start(Options {
        tweak: |c| c.import_max_bytes = 200,
        ..Options::default()
    })
    .await;
    let numbers = recipients(30, 91);
    let csv = format!("phone\n{}\n", numbers.join("\n"));
    assert!(csv.len() > 200);
    // A declared length over the limit: refused before a row is written.
    let resp = env
        .http
        .post(format!("{}/v1/contacts/import?phone=phone", env.api_url))
        .bearer_auth(&env.admin_key)
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "import_too_large", "{body}");
    assert_eq!(body["error"]["field"], "body", "{body}");
    let contacts: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts")
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    assert_eq!(contacts, 0);
    // A streamed upload that runs past it: stopped there, recorded as interrupted, and the
    // answer says what was written.
    let (status, body) = chunked_import(&env, &numbers).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "import_too_large", "{body}");
    assert_eq!(body["import"]["interrupted"], true, "{body}");
    let written = body["import"]["created"].as_i64().unwrap();
    assert!(written > 0 && written < 30, "{body}");
    let contacts: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts")
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    assert_eq!(contacts, written);
    // A file within the limit is imported whole.
    let (status, body) = chunked_import(&env, &numbers[..5]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["interrupted"], false, "{body}");
    env.cleanup().await;
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own_away_from_the_api() {
    let env = Env::start(Options {
        tweak: |c| c.metrics_listen = "127.0.0.1:0".into(),
        ..Options::default()
    })
    .await;
    let get = |url: String| {
        let http = env.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    // The API's listener no longer answers /metrics; health checks stay.
    assert_eq!(
        get(format!("{}/metrics", env.api_url)).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(format!("{}/healthz", env.api_url)).await.status(),
        StatusCode::OK
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let router = pregon::api::metrics_router(env.services.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let answer = get(metrics_url).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(answer.text().await.unwrap().contains("pregon_"));
    env.cleanup().await;
}
