//! `pregon chaos`: fault injection, in the style of `pregon bench`. Each scenario runs on services
//! of its own (a Redis on another port, a RabbitMQ node of its own, its own database), with
//! `pregon api`, two `pregon worker` processes and the simulator as separate processes. A load
//! generator sends messages with unique Idempotency-Keys and retries 5xx and connection errors
//! with the same key, as a careful client does; one fault is injected at a third of the load.
//! After draining, pregon's records are compared with what the simulator received.

mod private;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

pub use private::{PrivateBroker, PrivateRedis};

use crate::app::AppError;
use crate::bench::campaign::{APP_SECRET, Child, child_env, free_port, wait_ready};
use crate::config::Config;
use crate::demo::replace_database;
use crate::domain::reason::Reason;
use crate::process::LocalStack;
use crate::simulator::Received;
use crate::store::{self, Sender, StoreError, Template};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// kill -9 of a worker, three times, each restarted two seconds later.
    KillWorker,
    /// kill -9 of the API mid-burst, restarted a second later.
    KillApi,
    /// Redis restarted empty.
    RedisRestart,
    /// The RabbitMQ node's application stopped (every connection closed) for 13 s.
    BrokerRestart,
    /// The database refuses connections (and loses those it had) for --outage seconds.
    PostgresOutage,
    /// The Cloud API answers 5 % of sends after the HTTP timeout (all along).
    SlowCloudApi,
    /// A memory alarm on the RabbitMQ node blocks publishers (flow control) for 15 s.
    FlowControl,
    /// A three-node RabbitMQ cluster (replicated quorum queues, every process given the three
    /// URLs): the node leading the busiest queue is stopped mid-run and stays down.
    ClusterFailover,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Scenarios to run, one after the other (all when absent).
    #[arg(long, value_enum)]
    pub scenario: Vec<Scenario>,
    /// Messages per scenario.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Sender numbers (the first has a 1K tier, so the messaging limit is exercised).
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Messages per second of each sender.
    #[arg(long, default_value_t = 200)]
    pub mps: u32,
    /// Seconds the database stays away in `postgres-outage`.
    #[arg(long, default_value_t = 30)]
    pub outage: u64,
}

const TIER_LIMITED: i64 = 1000;
const CLIENTS: usize = 16;

/// What one scenario measured.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub accepted: usize,
    pub sent: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub over_tier: usize,
    pub over_mps: usize,
    pub to_opted_out: usize,
    /// Recipients who opted out mid-run while their message was queued.
    pub opted_out_watched: usize,
    pub wrongly_final: HashMap<String, usize>,
    pub unknown_outcomes: usize,
    pub unknown_but_received: usize,
    pub deferred_by_tier: usize,
    pub recovery_seconds: Option<f64>,
    pub drained: bool,
}

pub async fn run(base: Config, args: ChaosArgs) -> Result<(), AppError> {
    if args.messages < 100 || args.senders == 0 {
        return Err(AppError::Invalid(
            "--messages is at least 100 and --senders at least 1".into(),
        ));
    }
    let scenarios = if args.scenario.is_empty() {
        vec![
            Scenario::KillWorker,
            Scenario::KillApi,
            Scenario::RedisRestart,
            Scenario::BrokerRestart,
            Scenario::PostgresOutage,
            Scenario::SlowCloudApi,
            Scenario::FlowControl,
            Scenario::ClusterFailover,
        ]
    } else {
        args.scenario.clone()
    };
    let mut reports = Vec::new();
    for scenario in scenarios {
        println!("scenario {scenario:?}: starting");
        let report = run_scenario(base.clone(), &args, scenario).await?;
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        reports.push(report);
    }
    println!();
    println!(
        "| scenario | accepted | sent | lost | duplicated | over-tier | over-mps | to opted-out (watched) | wrongly final | unknown (received) | recovery |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        let wrong: usize = r.wrongly_final.values().sum();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} ({}) | {} |",
            r.scenario,
            r.accepted,
            r.sent,
            r.lost,
            r.duplicated,
            r.over_tier,
            r.over_mps,
            r.to_opted_out,
            r.opted_out_watched,
            if wrong == 0 {
                "0".to_string()
            } else {
                format!("{wrong} {:?}", r.wrongly_final)
            },
            r.unknown_outcomes,
            r.unknown_but_received,
            r.recovery_seconds
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(())
}

/// The processes of one scenario.
struct Stack {
    config: Config,
    api_port: u16,
    sim_url: String,
    api: Child,
    workers: Vec<(Child, u16)>,
    _simulator: Child,
}

impl Stack {
    fn spawn_api(config: &Config, port: u16) -> Result<Child, AppError> {
        Child::spawn(
            "api",
            &["api"],
            &with_private(
                config,
                child_env(config, &format!("127.0.0.1:{port}"), true),
            ),
        )
    }

    fn spawn_worker(config: &Config, port: u16) -> Result<Child, AppError> {
        Child::spawn(
            "worker",
            &["worker"],
            &with_private(
                config,
                child_env(config, &format!("127.0.0.1:{port}"), true),
            ),
        )
    }
}

/// The settings `child_env` leaves to the defaults that a chaos run points elsewhere.
fn with_private(config: &Config, mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    env.extend([
        ("PREGON_REDIS_URL".into(), config.redis_url.clone()),
        ("PREGON_AMQP_URL".into(), config.amqp_url.clone()),
        ("PREGON_HTTP_TIMEOUT".into(), "2s".into()),
        ("PREGON_LEASE_TTL".into(), "5s".into()),
        ("PREGON_PUBLISH_TIMEOUT".into(), "3s".into()),
    ]);
    env
}

fn kill9(child: &mut Child) {
    if let Ok(pid) = child.pid().parse::<i32>() {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

async fn run_scenario(
    mut config: Config,
    args: &ChaosArgs,
    scenario: Scenario,
) -> Result<Report, AppError> {
    let redis = Arc::new(std::sync::Mutex::new(
        tokio::task::spawn_blocking(PrivateRedis::start)
            .await
            .map_err(|e| AppError::Invalid(e.to_string()))??,
    ));
    let nodes = if scenario == Scenario::ClusterFailover {
        3
    } else {
        1
    };
    let brokers = Arc::new(
        tokio::task::spawn_blocking(move || PrivateBroker::cluster(nodes))
            .await
            .map_err(|e| AppError::Invalid(e.to_string()))??,
    );
    config.redis_url = redis.lock().unwrap_or_else(|p| p.into_inner()).url();
    config.amqp_url = brokers
        .iter()
        .map(PrivateBroker::url)
        .collect::<Vec<_>>()
        .join(",");
    config.database_url = replace_database(&config.database_url, "pregon_chaos");
    config.redis_prefix = "pregon-chaos".into();
    config.amqp_namespace = "pregon-chaos".into();
    config.webhook_app_secrets = APP_SECRET.into();
    let sim_port = free_port()?;
    let api_port = free_port()?;
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let api_url = format!("http://127.0.0.1:{api_port}");
    config.whatsapp_base_url = sim_url.clone();
    let mut sim_args = vec![
        "simulator".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{sim_port}"),
        "--mps".into(),
        args.mps.to_string(),
        "--webhook-url".into(),
        format!("{api_url}/webhooks/whatsapp"),
        "--app-secret".into(),
        APP_SECRET.into(),
        "--late-ms".into(),
        "3000".into(),
    ];
    if scenario == Scenario::SlowCloudApi {
        sim_args.extend(["--late-rate".into(), "0.05".into()]);
    }
    let sim_args: Vec<&str> = sim_args.iter().map(String::as_str).collect();
    let simulator = Child::spawn("simulator", &sim_args, &[])?;

    // A clean database and namespace, with senders, templates and consent.
    let stack = LocalStack::fresh(config.clone(), "chaos").await?;
    let (_, key) = crate::api::auth::create_key(
        &stack.services.pool,
        "chaos",
        crate::api::auth::Role::Admin,
        None,
    )
    .await?;
    let senders: Vec<String> = (0..args.senders)
        .map(|i| format!("{}", 1_065_559_000 + i))
        .collect();
    let http = reqwest::Client::new();
    for (i, id) in senders.iter().enumerate() {
        let tier = if i == 0 { TIER_LIMITED } else { -1 };
        stack
            .services
            .register_sender(Sender {
                phone_number_id: id.clone(),
                business_portfolio_id: format!("bp-{id}"),
                display_phone_number: None,
                tier,
                quality: crate::domain::decision::Quality::Green,
                status: crate::domain::decision::SenderStatus::Connected,
                paused: false,
                paused_reason: None,
                mps: i32::try_from(args.mps).unwrap_or(80),
                tier_spread_seconds: None,
                waba_id: None,
                access_token: "chaos-token".into(),
            })
            .await?;
        http.post(format!("{sim_url}/_sim/numbers"))
            .json(&json!({"phone_number_id": id, "mps": args.mps,
                          "tier": (tier > 0).then_some(tier)}))
            .send()
            .await
            .map_err(|e| AppError::Invalid(e.to_string()))?;
    }
    for (name, category) in [
        ("order_update", crate::domain::Category::Utility),
        ("promo", crate::domain::Category::Marketing),
    ] {
        stack
            .services
            .register_template(Template {
                parameters: Vec::new(),
                name: name.into(),
                language: "es_MX".into(),
                category,
                status: crate::domain::decision::TemplateStatus::Approved,
            })
            .await?;
    }
    let recipients: Vec<String> = (0..args.messages)
        .map(|i| format!("52155{:08}", 10_000_000 + i))
        .collect();
    let consent: Vec<store::ConsentEvent> = recipients
        .iter()
        .map(|r| store::ConsentEvent {
            recipient: r.clone(),
            purpose: "marketing".into(),
            action: "opt_in".into(),
            source: "chaos".into(),
            evidence: Some("chaos run".into()),
            actor: None,
        })
        .collect();
    for chunk in consent.chunks(5000) {
        stack.services.record_consent(chunk).await?;
    }
    let pool = stack.services.pool.clone();
    let state = stack.services.state.clone();
    stack.stop().await;

    let worker_ports = [free_port()?, free_port()?];
    let mut processes = Stack {
        api: Stack::spawn_api(&config, api_port)?,
        workers: worker_ports
            .iter()
            .map(|p| Stack::spawn_worker(&config, *p).map(|c| (c, *p)))
            .collect::<Result<_, _>>()?,
        config: config.clone(),
        api_port,
        sim_url: sim_url.clone(),
        _simulator: simulator,
    };
    wait_ready(&http, &format!("{api_url}/readyz")).await?;
    for (_, port) in &processes.workers {
        wait_ready(&http, &format!("http://127.0.0.1:{port}/readyz")).await?;
    }

    // The load: each message to its own recipient; every fourth one marketing.
    let plan: Vec<(String, String, Value)> = recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let sender = senders[i % senders.len()].clone();
            let template = if i % 4 == 0 { "promo" } else { "order_update" };
            let body = json!({"messaging_product": "whatsapp", "to": r, "type": "template",
                              "template": {"name": template, "language": {"code": "es_MX"}}});
            (sender, format!("chaos-{i}"), body)
        })
        .collect();
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(std::sync::Mutex::new(HashMap::<String, Uuid>::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (plan, next, accepted, http) =
            (plan.clone(), next.clone(), accepted.clone(), http.clone());
        let (api_url, key) = (api_url.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((sender, idem, body)) = plan.get(i) else {
                    return;
                };
                if let Some(id) =
                    send_until_answered(&http, &api_url, &key, sender, idem, body).await
                {
                    accepted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(plan[i].1.clone(), id);
                }
            }
        }));
    }

    // The fault, at a third of the load.
    while next.load(Ordering::Relaxed) < args.messages / 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Opt-outs (both purposes) for 50 recipients whose messages wait in a backlog: none of them
    // may be reached from here on. So that there is a backlog whatever the machine's speed, the
    // second sender (unlimited tier) is paused by its operator until 50 of its messages wait;
    // the opt-outs go to the newest of them, and the sender is resumed.
    let held = &senders[1];
    pause_or_resume(&http, &api_url, &key, held, "pause").await?;
    let waited_since = Instant::now();
    let candidates: Vec<String> = loop {
        let queued: Vec<String> = sqlx::query_scalar(
            "SELECT recipient FROM messages WHERE status = 'queued' AND sender = $1
             ORDER BY id DESC LIMIT 50",
        )
        .bind(held)
        .fetch_all(&pool)
        .await
        .map_err(StoreError::from)?;
        if queued.len() == 50 || waited_since.elapsed() > Duration::from_secs(30) {
            break queued;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let opt_outs: Vec<store::ConsentEvent> = candidates
        .iter()
        .flat_map(|r| {
            ["marketing", "utility"].map(|purpose| store::ConsentEvent {
                recipient: r.clone(),
                purpose: purpose.into(),
                action: "opt_out".into(),
                source: "chaos".into(),
                evidence: Some("STOP".into()),
                actor: None,
            })
        })
        .collect();
    record_opt_outs(&pool, &state, &opt_outs).await?;
    pause_or_resume(&http, &api_url, &key, held, "resume").await?;
    let reached_before: Vec<String> = sqlx::query_scalar(
        "SELECT recipient FROM messages WHERE recipient = ANY($1)
           AND status IN ('sent', 'delivered', 'read', 'failed')",
    )
    .bind(&candidates)
    .fetch_all(&pool)
    .await
    .map_err(StoreError::from)?;
    // Sends already decided before the opt-out may still land (a late answer keeps its row
    // queued for seconds): those the simulator has by now are left out too.
    let landed: HashSet<String> = received_all(&http, &sim_url, &senders)
        .await?
        .into_iter()
        .map(|m| m.to)
        .collect();
    let opted_out: Vec<String> = candidates
        .into_iter()
        .filter(|r| !reached_before.contains(r) && !landed.contains(r))
        .collect();
    let fault_ended = inject(scenario, args, &mut processes, &redis, &brokers, &pool).await?;
    let recovery = recovery_after(&http, &sim_url, fault_ended).await;

    for c in clients {
        let _ = c.await;
    }
    let drained = drain(&pool).await?;
    let received = received_all(&http, &processes.sim_url, &senders).await?;
    let accepted = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let report = compare(
        scenario, &pool, &accepted, &received, &senders, &opted_out, args.mps,
    )
    .await?;
    for (child, _) in processes.workers.iter_mut() {
        child.terminate();
    }
    processes.api.terminate();
    Ok(Report {
        recovery_seconds: recovery,
        drained,
        ..report
    })
}

/// Posts one message until it is answered 202 or 200 (a retry with the same key), or refused
/// with a 4xx; 429 waits its Retry-After, 5xx and connection errors are retried after a pause,
/// as a careful client does.
async fn send_until_answered(
    http: &reqwest::Client,
    api_url: &str,
    key: &str,
    sender: &str,
    idem: &str,
    body: &Value,
) -> Option<Uuid> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let answer = http
            .post(format!("{api_url}/v1/{sender}/messages"))
            .bearer_auth(key)
            .header("Idempotency-Key", idem)
            .timeout(Duration::from_secs(30))
            .json(body)
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == StatusCode::ACCEPTED || r.status() == StatusCode::OK => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                return v["messages"][0]["id"].as_str().and_then(|s| s.parse().ok());
            }
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                // Over the key's request rate: wait as told, then the same request again.
                let wait = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Ok(r) if r.status().is_client_error() => {
                // Every request is valid: a refusal is worth seeing in the run's output.
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                eprintln!("refused {idem}: {status} {text}");
                return None;
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    None
}

/// Opt-outs as the API records them: the log first, then Redis (retried while Redis is away).
async fn record_opt_outs(
    pool: &sqlx::PgPool,
    state: &crate::state::State,
    events: &[store::ConsentEvent],
) -> Result<(), AppError> {
    store::append_consent(pool, events).await?;
    let mirror: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.recipient.clone(),
                e.purpose.clone(),
                crate::domain::decision::ConsentAction::OptOut,
            )
        })
        .collect();
    state.mirror_consent(&mirror).await?;
    Ok(())
}

/// Pauses or resumes a sender through the API, as its operator would (`action`: "pause" or
/// "resume").
async fn pause_or_resume(
    http: &reqwest::Client,
    api_url: &str,
    key: &str,
    sender: &str,
    action: &str,
) -> Result<(), AppError> {
    // The clients keep the key at its rate limit: a 429 (or a 5xx) is tried again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http
            .post(format!("{api_url}/v1/senders/{sender}/{action}"))
            .bearer_auth(key)
            .send()
            .await
            .map_err(|e| AppError::Invalid(format!("could not {action} {sender}: {e}")))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let again = status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        if !again || Instant::now() > deadline {
            return Err(AppError::Invalid(format!(
                "could not {action} {sender}: {status}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Carries out the scenario's fault; returns when the service is back.
async fn inject(
    scenario: Scenario,
    args: &ChaosArgs,
    processes: &mut Stack,
    redis: &Arc<std::sync::Mutex<PrivateRedis>>,
    brokers: &Arc<Vec<PrivateBroker>>,
    _pool: &sqlx::PgPool,
) -> Result<Instant, AppError> {
    match scenario {
        Scenario::KillWorker => {
            for _ in 0..3 {
                let (child, port) = &mut processes.workers[0];
                kill9(child);
                tokio::time::sleep(Duration::from_secs(2)).await;
                *child = Stack::spawn_worker(&processes.config, *port)?;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
        Scenario::KillApi => {
            kill9(&mut processes.api);
            tokio::time::sleep(Duration::from_secs(1)).await;
            processes.api = Stack::spawn_api(&processes.config, processes.api_port)?;
        }
        Scenario::RedisRestart => {
            let redis = redis.clone();
            tokio::task::spawn_blocking(move || {
                redis
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .restart_empty()
            })
            .await
            .map_err(|e| AppError::Invalid(e.to_string()))??;
        }
        Scenario::BrokerRestart => {
            let b = brokers.clone();
            tokio::task::spawn_blocking(move || b[0].stop_app())
                .await
                .map_err(|e| AppError::Invalid(e.to_string()))?;
            tokio::time::sleep(Duration::from_secs(13)).await;
            let b = brokers.clone();
            tokio::task::spawn_blocking(move || b[0].start_app())
                .await
                .map_err(|e| AppError::Invalid(e.to_string()))?;
        }
        Scenario::PostgresOutage => {
            let admin_url = replace_database(&processes.config.database_url, "postgres");
            let admin = sqlx::PgPool::connect(&admin_url)
                .await
                .map_err(StoreError::from)?;
            set_connections(&admin, "pregon_chaos", false).await?;
            tokio::time::sleep(Duration::from_secs(args.outage)).await;
            set_connections(&admin, "pregon_chaos", true).await?;
        }
        Scenario::SlowCloudApi => {}
        Scenario::ClusterFailover => {
            let b = brokers.clone();
            let stopped = tokio::task::spawn_blocking(move || {
                let leader = b[0].busiest_leader();
                let victim = b
                    .iter()
                    .find(|n| Some(n.node()) == leader.as_deref())
                    .unwrap_or(&b[0]);
                victim.stop_app().then(|| victim.node().to_string())
            })
            .await
            .map_err(|e| AppError::Invalid(e.to_string()))?
            .ok_or_else(|| AppError::Invalid("could not stop a cluster node".into()))?;
            println!("scenario ClusterFailover: stopped {stopped}, the busiest queue's leader");
        }
        Scenario::FlowControl => {
            let b = brokers.clone();
            tokio::task::spawn_blocking(move || {
                b[0].ctl(&["set_vm_memory_high_watermark", "absolute", "1"])
            })
            .await
            .map_err(|e| AppError::Invalid(e.to_string()))?;
            tokio::time::sleep(Duration::from_secs(15)).await;
            let b = brokers.clone();
            tokio::task::spawn_blocking(move || b[0].ctl(&["set_vm_memory_high_watermark", "0.4"]))
                .await
                .map_err(|e| AppError::Invalid(e.to_string()))?;
        }
    }
    Ok(Instant::now())
}

async fn set_connections(admin: &sqlx::PgPool, db: &str, allowed: bool) -> Result<(), AppError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"ALTER DATABASE "{db}" ALLOW_CONNECTIONS {allowed}"#
    )))
    .execute(admin)
    .await
    .map_err(StoreError::from)?;
    if !allowed {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(db)
            .execute(admin)
            .await
            .map_err(StoreError::from)?;
    }
    Ok(())
}

/// Seconds from the end of the fault to the next message the simulator accepted.
async fn recovery_after(http: &reqwest::Client, sim_url: &str, since: Instant) -> Option<f64> {
    let count = |v: Value| v["messages"].as_array().map(Vec::len).unwrap_or(0);
    let before = count(sim_get(http, &format!("{sim_url}/_sim/received")).await?);
    while since.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = count(sim_get(http, &format!("{sim_url}/_sim/received")).await?);
        if now > before {
            return Some(since.elapsed().as_secs_f64());
        }
    }
    None
}

async fn sim_get(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// Waits until no message is queued any more (and the outbox is empty), for at most ten minutes.
async fn drain(pool: &sqlx::PgPool) -> Result<bool, AppError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        let waiting: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM messages WHERE status = 'queued'),
                    (SELECT count(*) FROM job_outbox)",
        )
        .fetch_one(pool)
        .await;
        match waiting {
            Ok((0, 0)) => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(5) {
                    return Ok(true);
                }
            }
            _ => quiet_since = None,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(false)
}

async fn received_all(
    http: &reqwest::Client,
    sim_url: &str,
    senders: &[String],
) -> Result<Vec<Received>, AppError> {
    let mut all = Vec::new();
    for s in senders {
        let v = sim_get(
            http,
            &format!("{sim_url}/_sim/received?phone_number_id={s}"),
        )
        .await
        .ok_or_else(|| AppError::Invalid("the simulator did not answer".into()))?;
        let list: Vec<Received> = serde_json::from_value(v["messages"].clone())
            .map_err(|e| AppError::Invalid(e.to_string()))?;
        all.extend(list);
    }
    Ok(all)
}

async fn compare(
    scenario: Scenario,
    pool: &sqlx::PgPool,
    accepted: &HashMap<String, Uuid>,
    received: &[Received],
    senders: &[String],
    opted_out: &[String],
    mps: u32,
) -> Result<Report, AppError> {
    let rows: Vec<(Uuid, String, String, String, Option<String>)> =
        sqlx::query_as("SELECT id, sender, recipient, status, status_reason FROM messages")
            .fetch_all(pool)
            .await
            .map_err(StoreError::from)?;
    let by_id: HashMap<Uuid, (String, String, String, Option<String>)> = rows
        .into_iter()
        .map(|(id, s, r, st, why)| (id, (s, r, st, why)))
        .collect();
    let mut times: HashMap<Uuid, usize> = HashMap::new();
    for m in received {
        if let Some(id) = m.callback_data.as_deref().and_then(|c| c.parse().ok()) {
            *times.entry(id).or_default() += 1;
        }
    }
    let opted: HashSet<&str> = opted_out.iter().map(String::as_str).collect();
    let mut report = Report {
        scenario: format!("{scenario:?}"),
        accepted: accepted.len(),
        opted_out_watched: opted_out.len(),
        ..Report::default()
    };
    for id in accepted.values() {
        let got = times.get(id).copied().unwrap_or(0);
        if got > 1 {
            report.duplicated += 1;
        }
        let Some((_, recipient, status, why)) = by_id.get(id) else {
            report.lost += usize::from(got == 0);
            continue;
        };
        if got > 0 && opted.contains(recipient.as_str()) {
            report.to_opted_out += 1;
        }
        let reason = why.as_deref().and_then(Reason::parse);
        match status.as_str() {
            "sent" | "delivered" | "read" => report.sent += 1,
            "deferred" if reason == Some(Reason::MessagingLimitReached) => {
                report.deferred_by_tier += 1
            }
            "failed" if reason == Some(Reason::SendOutcomeUnknown) => {
                report.unknown_outcomes += 1;
                report.unknown_but_received += usize::from(got > 0);
            }
            "skipped"
                if reason == Some(Reason::RecipientOptedOut)
                    && opted.contains(recipient.as_str()) => {}
            "failed" | "skipped" => {
                *report
                    .wrongly_final
                    .entry(why.clone().unwrap_or_default())
                    .or_default() += 1;
            }
            _ => {
                if got == 0 {
                    report.lost += 1;
                }
            }
        }
    }
    // The messaging limit of the first sender, and every sender's cap in any one second.
    let limited: HashSet<&str> = received
        .iter()
        .filter(|m| m.phone_number_id == senders[0])
        .map(|m| m.to.as_str())
        .collect();
    report.over_tier = limited.len().saturating_sub(TIER_LIMITED as usize);
    for s in senders {
        let mut at: Vec<u64> = received
            .iter()
            .filter(|m| &m.phone_number_id == s)
            .map(|m| m.at_us)
            .collect();
        at.sort_unstable();
        let mut start = 0;
        let mut worst = 0;
        for end in 0..at.len() {
            while at[end] - at[start] >= 1_000_000 {
                start += 1;
            }
            worst = worst.max(end - start + 1);
        }
        report.over_mps += worst.saturating_sub(mps as usize);
    }
    Ok(report)
}
