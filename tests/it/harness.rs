//! Test environment: real PostgreSQL, Redis and RabbitMQ on localhost, isolated per test (own
//! database, Redis prefix and AMQP namespace), with the simulator and the API served over HTTP.

use std::time::Duration;

use pregon::app::{Services, ShutdownTrigger, shutdown_channel};
use pregon::config::{Config, HumanDuration};
use pregon::simulator::{Attempt, Received, SimConfig};
use pregon::store;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub const ADMIN: &str = "admin";

pub struct Options {
    pub sim: SimConfig,
    pub tweak: fn(&mut Config),
    /// Point the simulator's status webhooks at pregon's receiver.
    pub sim_webhooks: bool,
    /// A RabbitMQ of the test's own (one it stops and starts), instead of the machine's.
    pub amqp_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sim: SimConfig::default(),
            tweak: |_| {},
            sim_webhooks: false,
            amqp_url: None,
        }
    }
}

/// The app secret the simulator and the webhook fixtures sign with; a second one is configured
/// too, as during a rotation.
pub const APP_SECRET: &str = "pregon-simulator-secret";
pub const OLD_APP_SECRET: &str = "it-previous-secret";
pub const VERIFY_TOKEN: &str = "it-verify-token";

pub struct Env {
    pub config: Config,
    pub services: Services,
    pub sim_url: String,
    pub api_url: String,
    pub admin_key: String,
    pub http: reqwest::Client,
    db_name: String,
    senders: Vec<String>,
    worker: Option<(ShutdownTrigger, JoinHandle<()>)>,
    api: (ShutdownTrigger, JoinHandle<()>),
    sim: (ShutdownTrigger, JoinHandle<()>),
}

pub fn base_url(db: &str) -> String {
    let root = std::env::var("PREGON_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    format!("{}/{db}", root.trim_end_matches('/'))
}

fn ms(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_millis(n))
}

impl Env {
    pub async fn start(options: Options) -> Env {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", listener.local_addr().unwrap());
        let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_url = format!("http://{}", sim_listener.local_addr().unwrap());
        let (sim_stop, mut sim_signal) = shutdown_channel();
        let mut sim_config = options.sim.clone();
        if options.sim_webhooks {
            sim_config.webhook_url = Some(format!("{api_url}/webhooks/whatsapp"));
            sim_config.app_secret = APP_SECRET.into();
        }
        let sim =
            tokio::spawn(async move {
                pregon::simulator::serve(sim_listener, sim_config, async move {
                    sim_signal.wait().await
                })
                .await
                .unwrap();
            });
        let db_name = format!("pregon_it_{id}");
        let mut config = Config {
            database_url: base_url(&db_name),
            database_max_connections: 8,
            redis_prefix: format!("it-{id}"),
            amqp_namespace: format!("it-{id}"),
            whatsapp_base_url: sim_url.clone(),
            http_timeout: ms(3000),
            lease_ttl: ms(3000),
            sender_refresh: ms(300),
            hold_recheck: ms(300),
            throttle_cooldown: ms(2000),
            shutdown_grace: ms(5000),
            webhook_app_secrets: format!("{APP_SECRET},{OLD_APP_SECRET}"),
            webhook_verify_token: VERIFY_TOKEN.into(),
            background_poll: ms(50),
            // Tests receive callbacks on this machine over plain http; the test of the
            // production defaults turns these off again.
            callback_allow_http: true,
            callback_allow_private: true,
            // Secrets at rest are sealed, as in production.
            secret_key: pregon::sealing::generate_key().unwrap(),
            ..Config::default()
        };
        if let Ok(url) = std::env::var("PREGON_REDIS_URL") {
            config.redis_url = url;
        }
        if let Ok(url) = std::env::var("PREGON_AMQP_URL") {
            config.amqp_url = url;
        }
        if let Some(url) = &options.amqp_url {
            config.amqp_url = url.clone();
        }
        (options.tweak)(&mut config);
        let (services, _background) = Services::connect(config.clone(), &format!("it-{id}"))
            .await
            .unwrap();
        let (_, admin_key) = pregon::api::auth::create_key(
            &services.pool,
            ADMIN,
            pregon::api::auth::Role::Admin,
            None,
        )
        .await
        .unwrap();
        let (api_stop, api_signal) = shutdown_channel();
        let api = tokio::spawn(pregon::process::serve_api(
            services.clone(),
            listener,
            api_signal,
        ));
        Env {
            config,
            services,
            sim_url,
            api_url,
            admin_key,
            http: reqwest::Client::new(),
            db_name,
            senders: Vec::new(),
            worker: None,
            api: (api_stop, api),
            sim: (sim_stop, sim),
        }
    }

    pub fn start_worker(&mut self) {
        let (stop, signal) = shutdown_channel();
        let services = self.services.clone();
        let handle = tokio::spawn(async move {
            pregon::worker::run(services, signal).await.unwrap();
        });
        self.worker = Some((stop, handle));
    }

    /// Only what runs beside the dispatcher (webhook processing, event relay, callbacks), for
    /// tests about webhooks that need no sends.
    pub fn start_background(&mut self) {
        let (stop, signal) = shutdown_channel();
        let tasks = pregon::worker::spawn_event_tasks(&self.services, &signal);
        let handle = tokio::spawn(async move {
            for t in tasks {
                t.await.unwrap();
            }
        });
        self.worker = Some((stop, handle));
    }

    pub async fn stop_worker(&mut self) {
        if let Some((stop, handle)) = self.worker.take() {
            stop.trigger();
            handle.await.unwrap();
        }
    }

    /// Environment variables that make a child `pregon` process use this test's services.
    pub fn child_env(&self) -> Vec<(String, String)> {
        let table = toml::Table::try_from(&self.config).unwrap();
        table
            .into_iter()
            .map(|(k, v)| {
                let value = match v {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                (format!("PREGON_{}", k.to_ascii_uppercase()), value)
            })
            .collect()
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.api_url));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(
            reqwest::Method::POST,
            path,
            Some(&self.admin_key.clone()),
            Some(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(
            reqwest::Method::GET,
            path,
            Some(&self.admin_key.clone()),
            None,
        )
        .await
    }

    /// Registers a sender with pregon and tells the simulator the same limits.
    pub async fn sender(&mut self, id: &str, tier: Value, mps: u32) {
        let (status, body) = self
            .post(
                "/v1/senders",
                json!({"phone_number_id": id, "business_portfolio_id": format!("bp-{id}"), "tier": tier,
                       "mps": mps, "access_token": "test-token"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.senders.push(id.to_string());
        let sim_tier = tier.as_u64();
        self.sim(
            "/_sim/numbers",
            json!({"phone_number_id": id, "mps": mps, "tier": sim_tier}),
        )
        .await;
    }

    pub async fn template(&self, name: &str, category: &str) {
        let (status, body) = self
            .post(
                "/v1/templates",
                json!({"name": name, "language": "es_MX", "category": category}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Uploads a contact CSV with `key`; answers the status and the import report.
    pub async fn import_csv(&self, key: &str, query: &str, csv: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/v1/contacts/import?{query}", self.api_url))
            .bearer_auth(key)
            .body(csv.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Enqueues one `template` message per recipient through the batch endpoint, a full batch
    /// at a time, and expects every batch to be answered.
    pub async fn enqueue_templates(&self, sender: &str, recipients: &[String], template: &str) {
        for chunk in recipients.chunks(1000) {
            let bodies: Vec<Value> = chunk.iter().map(|r| template_body(r, template)).collect();
            let (status, answer) = self
                .post(
                    &format!("/v1/{sender}/messages/batch"),
                    json!({"messages": bodies}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
    }

    pub async fn opt_in(&self, recipients: &[String]) {
        let events: Vec<store::ConsentEvent> = recipients
            .iter()
            .map(|r| store::ConsentEvent {
                recipient: r.clone(),
                purpose: "marketing".into(),
                action: "opt_in".into(),
                source: "web_form".into(),
                evidence: Some("ticked the newsletter box".into()),
                actor: Some("test".into()),
            })
            .collect();
        for chunk in events.chunks(5000) {
            self.services.record_consent(chunk).await.unwrap();
        }
    }

    pub async fn sim(&self, path: &str, body: Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.sim_url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "simulator {path}: {}",
            resp.status()
        );
    }

    pub async fn received(&self, sender: &str) -> Vec<Received> {
        self.sim_list("received", "messages", sender).await
    }

    pub async fn attempts(&self, sender: &str) -> Vec<Attempt> {
        self.sim_list("attempts", "attempts", sender).await
    }

    async fn sim_list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        field: &str,
        sender: &str,
    ) -> Vec<T> {
        let v: Value = self
            .http
            .get(format!(
                "{}/_sim/{path}?phone_number_id={sender}",
                self.sim_url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(v[field].clone()).unwrap()
    }

    pub async fn counts(&self, sender: &str) -> std::collections::HashMap<String, i64> {
        store::count_by_status(&self.services.pool, Some(sender))
            .await
            .unwrap()
    }

    /// Polls until `done` holds for the sender's status counts, or panics after `timeout`.
    pub async fn wait_counts(
        &self,
        sender: &str,
        timeout: Duration,
        done: impl Fn(&std::collections::HashMap<String, i64>) -> bool,
    ) -> std::collections::HashMap<String, i64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let counts = self.counts(sender).await;
            if done(&counts) {
                return counts;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting; counts for {sender}: {counts:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cleanup for a test that registered senders itself instead of through [`Env::sender`].
    pub async fn cleanup_senders(mut self, senders: &[&str]) {
        self.senders.extend(senders.iter().map(|s| s.to_string()));
        self.cleanup().await;
    }

    /// Stops everything this test started and removes its queues, keys and database.
    pub async fn cleanup(mut self) {
        self.stop_worker().await;
        self.api.0.trigger();
        let _ = self.api.1.await;
        self.sim.0.trigger();
        self.sim.1.abort();
        let _ = pregon::queue::delete_namespace(
            &self.services.amqp.connection(),
            &self.services.names,
            &self.senders,
            &self.services.derived.delay_steps,
        )
        .await;
        let _ = self.services.state.delete_all().await;
        self.services.pool.close().await;
        self.services.amqp.close().await;
        self.services.publisher.close().await;
        if let Ok(admin) = sqlx::PgPool::connect(&base_url("postgres")).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db_name
            )))
            .execute(&admin)
            .await;
        }
    }
}

impl Env {
    /// Posts a webhook body signed with `secret` (None: unsigned); answers status and text.
    pub async fn webhook_signed(&self, body: &[u8], secret: Option<&str>) -> (StatusCode, String) {
        let mut req = self
            .http
            .post(format!("{}/webhooks/whatsapp", self.api_url))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(secret) = secret {
            req = req.header(
                "x-hub-signature-256",
                pregon::whatsapp::sign(secret.as_bytes(), body),
            );
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    /// Posts a webhook signed like Meta's and expects it to be accepted.
    pub async fn webhook(&self, body: &Value) {
        let (status, text) = self
            .webhook_signed(body.to_string().as_bytes(), Some(APP_SECRET))
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }

    /// A queue bound to the events exchange with `pattern`, for reading what other systems see.
    pub async fn events_queue(&self, pattern: &str) -> lapin::Consumer {
        use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let channel = self
            .services
            .amqp
            .connection()
            .create_channel()
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().as_str().into(),
                self.services.names.events().as_str().into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .basic_consume(
                queue.name().as_str().into(),
                "it-events".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
    }

    /// Acts as a consumer that dies with every delivery of `queue`: takes each and hands it back,
    /// at most `times` times or until nothing arrives for 2 s. Returns the deliveries seen.
    pub async fn crash_consumer_of(&self, queue: &str, times: u64) -> u64 {
        use futures_util::StreamExt;
        let (channel, mut consumer) =
            pregon::queue::consume(&self.services.amqp.connection(), queue, "crashing", 1)
                .await
                .unwrap();
        let mut deliveries = 0;
        while deliveries < times {
            let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
            else {
                break;
            };
            deliveries += 1;
            delivery
                .unwrap()
                .nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        channel.close(200, "crashed enough".into()).await.unwrap();
        deliveries
    }

    pub async fn message(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/messages/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Every Redis key of this test. SCAN, not KEYS: the machine's Redis may hold millions of
    /// other keys (a benchmark's), and one KEYS over them outlasts the client's timeout.
    pub async fn redis_keys(&self, conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
        let pattern = format!("\\{{{}\\}}:*", self.config.redis_prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .unwrap();
            keys.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys
    }

    /// What a Redis restart without persistence does to this test's keys, in one step (as a
    /// restart does): every key under the prefix is gone. With `hold`, the rebuild claim is taken
    /// in the same transaction under that token, so no process rebuilds until the test lets go.
    pub async fn lose_redis(&self, hold: Option<&str>) {
        let client = redis::Client::open(self.config.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let prefix = format!("{{{}}}", self.config.redis_prefix);
        let keys = self.redis_keys(&mut conn).await;
        assert!(
            keys.contains(&format!("{prefix}:copy")),
            "the copy marker was there"
        );
        let mut tx = redis::pipe();
        tx.atomic();
        for key in &keys {
            tx.del(key).ignore();
        }
        if let Some(token) = hold {
            tx.cmd("SET")
                .arg(format!("{prefix}:copy-rebuild"))
                .arg(token)
                .arg("PX")
                .arg(600_000)
                .ignore();
        }
        let _: () = tx.query_async(&mut conn).await.unwrap();
    }

    /// Polls `check` until it gives a value, or panics after `timeout` with `what`.
    pub async fn eventually<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads events (routing key, JSON) from an events queue until `n` arrived or `timeout` passed.
pub async fn read_events(
    consumer: &mut lapin::Consumer,
    n: usize,
    timeout: Duration,
) -> Vec<(String, Value)> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => out.push((
                d.routing_key.to_string(),
                serde_json::from_slice(&d.data).unwrap(),
            )),
            _ => break,
        }
    }
    out
}

/// Meta's envelope around one change.
pub fn envelope(field: &str, value: Value) -> Value {
    json!({"object": "whatsapp_business_account",
           "entry": [{"id": "it-waba", "changes": [{"field": field, "value": value}]}]})
}

pub fn statuses(phone_number_id: &str, statuses: Vec<Value>) -> Value {
    envelope(
        "messages",
        json!({"messaging_product": "whatsapp",
               "metadata": {"display_phone_number": phone_number_id, "phone_number_id": phone_number_id},
               "statuses": statuses}),
    )
}

pub fn status(wamid: &str, status: &str, recipient: &str) -> Value {
    json!({"id": wamid, "status": status, "timestamp": chrono::Utc::now().timestamp().to_string(),
           "recipient_id": recipient,
           "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"}})
}

pub fn inbound(phone_number_id: &str, from: &str, wamid: &str, message: Value) -> Value {
    let mut m = message;
    m["from"] = json!(from);
    m["id"] = json!(wamid);
    m["timestamp"] = json!(chrono::Utc::now().timestamp().to_string());
    envelope(
        "messages",
        json!({"messaging_product": "whatsapp",
               "metadata": {"display_phone_number": phone_number_id, "phone_number_id": phone_number_id},
               "contacts": [{"profile": {"name": "Ana"}, "wa_id": from}],
               "messages": [m]}),
    )
}

pub fn template_body(to: &str, name: &str) -> Value {
    json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "template",
           "template": {"name": name, "language": {"code": "es_MX"},
             "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]}})
}

pub fn text_body(to: &str) -> Value {
    json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "Hola"}})
}

/// A contact CSV with consent and the usual mistakes: six good rows with an opt-in; then rows 7
/// (an invalid number), 8 (a repeated number) and 9 (a wrong field count) are refused; and one
/// each without an opt-in, opted out, a US number, and a missing coupon.
pub const CONTACTS_WITH_MISTAKES: &str = "Telefono,Nombre,Cupon,Acepta,Prueba\n\
        +52 1 55 1000 0001,Ana,A1,si,formulario web 2026-11-01\n\
        5215510000002,,A2,si,formulario web\n\
        5215510000003,Luis,A3,si,formulario web\n\
        5215510000004,Eva,A4,yes,checkout\n\
        5215510000005,Sol,A5,1,checkout\n\
        5215510000006,Rey,A6,si,checkout\n\
        12,Bad,X,si,x\n\
        5215510000001,Ana otra vez,A9,si,x\n\
        5215510000007,Corto,A7\n\
        5215510000008,Sin,A8,,\n\
        5215510000009,Baja,A9,no,\n\
        12025550123,Gringo,US1,si,web\n\
        5215510000010,SinCupon,,si,web\n";

/// Distinct valid Mexican mobile numbers.
pub fn recipients(n: usize, seed: u32) -> Vec<String> {
    assert!(n <= 10_000_000);
    (0..n)
        .map(|i| format!("521{:03}{:07}", seed % 1000, i))
        .collect()
}
