//! `pregon bench campaign`: a marketing campaign at full size, the way it runs in production: the
//! API, the worker(s) and the simulator are separate processes on this machine, driven only
//! through the HTTP API. It imports a contact CSV with consent, syncs the template, estimates,
//! launches over a pool of senders and polls progress every second until the campaign completes,
//! then checks the simulator received every recipient exactly once. It reports the import time,
//! the planning (fan-out) rate, the send rate, the progress-poll latency, and the peak RSS and CPU
//! of each process, plus the CPU the shared services (PostgreSQL, RabbitMQ, Redis) spent.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::process_peak_rss_mib;
use crate::api::auth::{Role, create_key};
use crate::app::AppError;
use crate::config::Config;
use crate::demo::replace_database;
use crate::process::{LocalStack, local_sender_id};

#[derive(clap::Args, Debug, Clone)]
pub struct CampaignBenchArgs {
    /// Contacts imported and messaged.
    #[arg(long, default_value_t = 1_000_000)]
    pub recipients: usize,
    /// Senders in the campaign's pool.
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Messages-per-second cap of each sender (and of the simulated numbers).
    #[arg(long, default_value_t = 1000)]
    pub mps: u32,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Seconds between progress polls.
    #[arg(long, default_value_t = 1.0)]
    pub poll_interval: f64,
    /// Have the simulator send delivered/read webhooks back to the API, as Meta does.
    #[arg(long)]
    pub webhooks: bool,
    /// One-time passwords (authentication templates) enqueued per second on the campaign's
    /// senders while it sends, whose enqueue → accepted latency is reported (0: none).
    #[arg(long, default_value_t = 20.0)]
    pub otp_rate: f64,
    /// Keep the run's database, Redis keys and queues for inspection (the next run wipes them);
    /// by default they are removed at the end of a run that succeeded.
    #[arg(long)]
    pub keep: bool,
}

pub(crate) const APP_SECRET: &str = "pregon-bench-secret";

/// A child process that is killed if the bench stops early, and asked to drain otherwise.
pub(crate) struct Child {
    pub(crate) name: String,
    process: std::process::Child,
}

impl Child {
    pub(crate) fn spawn(
        name: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<Child, AppError> {
        let process = std::process::Command::new(std::env::current_exe()?)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // Slow-statement notices would bury the figures; real warnings still show.
            .env("RUST_LOG", "warn,sqlx::query=error")
            .stdout(std::process::Stdio::null())
            .spawn()?;
        Ok(Child {
            name: name.to_string(),
            process,
        })
    }

    pub(crate) fn pid(&self) -> String {
        self.process.id().to_string()
    }

    /// SIGTERM, then up to 30 s for a clean drain.
    pub(crate) fn terminate(&mut self) {
        if let Ok(pid) = i32::try_from(self.process.id()) {
            // SAFETY: sending a signal to our own child has no memory effects.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User + system CPU seconds of a process, and its command name, from /proc.
fn process_cpu(pid: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / clock_ticks()))
}

/// CPU seconds so far of the shared services on this machine, by name.
fn services_cpu() -> [(&'static str, f64); 3] {
    let mut out = [("PostgreSQL", 0.0), ("RabbitMQ", 0.0), ("Redis", 0.0)];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Some((comm, cpu)) = process_cpu(pid) else {
            continue;
        };
        let slot = match comm.as_str() {
            c if c.starts_with("postgres") => 0,
            "beam.smp" | "erl_child_setup" => 1,
            c if c.starts_with("redis-server") => 2,
            _ => continue,
        };
        out[slot].1 += cpu;
    }
    out
}

/// CPU of each child and of the services at one moment.
pub(crate) struct CpuSnapshot {
    pub(crate) children: Vec<f64>,
    pub(crate) services: [(&'static str, f64); 3],
}

pub(crate) fn snapshot(children: &[Child]) -> CpuSnapshot {
    CpuSnapshot {
        children: children
            .iter()
            .map(|c| process_cpu(&c.pid()).map(|(_, s)| s).unwrap_or(0.0))
            .collect(),
        services: services_cpu(),
    }
}

pub(crate) fn free_port() -> Result<u16, AppError> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.port())
}

/// The settings a child process needs to join this bench's namespace, as `PREGON_*` variables
/// (which override any file or inherited environment).
pub(crate) fn child_env(config: &Config, listen: &str, webhooks: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("PREGON_DATABASE_URL".into(), config.database_url.clone()),
        ("PREGON_REDIS_PREFIX".into(), config.redis_prefix.clone()),
        (
            "PREGON_AMQP_NAMESPACE".into(),
            config.amqp_namespace.clone(),
        ),
        (
            "PREGON_WHATSAPP_BASE_URL".into(),
            config.whatsapp_base_url.clone(),
        ),
        ("PREGON_LISTEN".into(), listen.to_string()),
        ("PREGON_LOG_FORMAT".into(), "text".into()),
    ];
    if webhooks {
        env.push(("PREGON_WEBHOOK_APP_SECRETS".into(), APP_SECRET.into()));
    }
    env
}

#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) key: String,
}

impl Api {
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), AppError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| AppError::Invalid(format!("{path}: {e}")))?;
        let status = response.status();
        let value = response.json().await.unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// A call that must succeed with `expected`.
    pub(crate) async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> Result<Value, AppError> {
        let (status, value) = self.call(method, path, body).await?;
        if status != expected {
            return Err(AppError::Invalid(format!(
                "{path} answered {status}: {value}"
            )));
        }
        Ok(value)
    }
}

/// Registers the senders through the API: unlimited tier, each in a business portfolio of its own.
pub(crate) async fn register_senders(
    api: &Api,
    senders: &[String],
    mps: u32,
) -> Result<(), AppError> {
    for id in senders {
        api.expect(
            Method::POST,
            "/v1/senders",
            Some(
                json!({"phone_number_id": id, "business_portfolio_id": format!("bench-{id}"),
                "tier": "TIER_UNLIMITED", "mps": mps, "access_token": "bench-token",
                "display_phone_number": id, "waba_id": "waba-bench"}),
            ),
            StatusCode::CREATED,
        )
        .await?;
    }
    Ok(())
}

/// Approved templates (name, category, body text, in es_MX) added to the simulator, then synced
/// into pregon's registry as an operator would.
pub(crate) async fn add_templates(
    api: &Api,
    sim: &str,
    templates: &[(&str, &str, &str)],
) -> Result<(), AppError> {
    for (name, category, text) in templates {
        let response = api
            .http
            .post(format!("{sim}/_sim/templates"))
            .json(
                &json!({"name": name, "language": "es_MX", "status": "APPROVED",
                "category": category, "components": [{"type": "BODY", "text": text}]}),
            )
            .send()
            .await
            .map_err(|e| AppError::Invalid(format!("simulator: {e}")))?;
        if !response.status().is_success() {
            return Err(AppError::Invalid(format!(
                "simulator refused the template {name}: {}",
                response.status()
            )));
        }
    }
    api.expect(
        Method::POST,
        "/v1/templates/sync",
        Some(json!({})),
        StatusCode::OK,
    )
    .await?;
    Ok(())
}

pub(crate) async fn wait_ready(http: &reqwest::Client, url: &str) -> Result<(), AppError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(AppError::Invalid(format!("{url} never became ready")))
}

/// The contact CSV: unique Mexican mobile numbers, a name and a coupon each, all opted in with
/// evidence.
fn contact_csv(n: usize) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(n * 64 + 64);
    out.extend_from_slice(b"telefono,nombre,cupon,acepta,prueba\n");
    for i in 0..n {
        let _ = writeln!(
            out,
            "52155{:08},Cliente {i},C{i:07},si,formulario web 2026-11",
            10_000_000 + i
        );
    }
    out
}

const CONSOLE_USER: &str = "bench@console.pregon";
const CONSOLE_PASSWORD: &str = "bench-console-password";

/// A signed-in console session, reading pages as a browser would (HTML, the session cookie).
struct ConsoleReader {
    http: reqwest::Client,
    api_url: String,
    cookie: String,
}

impl ConsoleReader {
    async fn sign_in(api_url: &str) -> Result<ConsoleReader, AppError> {
        let fail = |e: String| AppError::Invalid(format!("console sign-in: {e}"));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let cookie_of = |r: &reqwest::Response, name: &str| {
            r.headers()
                .get_all(reqwest::header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| v.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.split(';').next())
                .map(str::to_string)
        };
        let form = http
            .get(format!("{api_url}/console/login"))
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let csrf = cookie_of(&form, "pregon_login_csrf").ok_or_else(|| fail("no token".into()))?;
        let body = serde_urlencoded::to_string([
            ("_csrf", csrf.as_str()),
            ("email", CONSOLE_USER),
            ("password", CONSOLE_PASSWORD),
        ])
        .map_err(|e| fail(e.to_string()))?;
        let signed = http
            .post(format!("{api_url}/console/login"))
            .header("cookie", format!("pregon_login_csrf={csrf}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let session = cookie_of(&signed, "pregon_session")
            .ok_or_else(|| fail(format!("answered {}", signed.status())))?;
        Ok(ConsoleReader {
            http,
            api_url: api_url.to_string(),
            cookie: format!("pregon_session={session}"),
        })
    }

    /// Reads a page whole; answers how long it took, in milliseconds.
    async fn read(&self, path: &str) -> Result<f64, AppError> {
        let asked = Instant::now();
        let response = self
            .http
            .get(format!("{}{path}", self.api_url))
            .header("cookie", &self.cookie)
            .send()
            .await
            .map_err(|e| AppError::Invalid(format!("console {path}: {e}")))?;
        let status = response.status();
        let _ = response.bytes().await;
        if status != StatusCode::OK {
            return Err(AppError::Invalid(format!(
                "console {path} answered {status}"
            )));
        }
        Ok(asked.elapsed().as_secs_f64() * 1000.0)
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// One-time passwords sent at a steady rate on the campaign's senders while it runs, each on a
/// task of its own so a slow answer does not delay the next.
struct Otps {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: tokio::task::JoinHandle<Result<Vec<OtpRequest>, AppError>>,
}

/// One OTP as the caller saw it.
struct OtpRequest {
    id: String,
    requested_at: DateTime<Utc>,
    /// How long the API took to answer 202 (the message durable and queued).
    answered_in_ms: f64,
}

/// What the OTPs measured, each list in milliseconds and sorted.
struct OtpLatencies {
    sent: usize,
    /// Request made → Cloud API accepted the send.
    accepted: Vec<f64>,
    /// Request made → the API answered.
    answered: Vec<f64>,
}

impl Otps {
    fn start(api: &Api, senders: &[String], rate: f64) -> Otps {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let api = std::sync::Arc::new(api.clone());
        let senders = senders.to_vec();
        let stopped = stop.clone();
        let sender = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut requests = Vec::new();
            let mut n = 0usize;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                every.tick().await;
                let api = api.clone();
                let sender = senders[n % senders.len()].clone();
                let body = json!({"messaging_product": "whatsapp", "to": format!("5219{:09}", n),
                    "type": "template", "template": {"name": "otp", "language": {"code": "es_MX"},
                    "components": [{"type": "body", "parameters": [{"type": "text", "text": format!("{:06}", n % 1_000_000)}]}]}});
                n += 1;
                requests.push(tokio::spawn(async move {
                    let requested_at = Utc::now();
                    let started = Instant::now();
                    let answer = api
                        .expect(
                            Method::POST,
                            &format!("/v1/{sender}/messages"),
                            Some(body),
                            StatusCode::ACCEPTED,
                        )
                        .await?;
                    answer["messages"][0]["id"]
                        .as_str()
                        .map(|id| OtpRequest {
                            id: id.to_string(),
                            requested_at,
                            answered_in_ms: started.elapsed().as_secs_f64() * 1000.0,
                        })
                        .ok_or_else(|| AppError::Invalid(format!("no message id in {answer}")))
                }));
            }
            let mut ids = Vec::with_capacity(requests.len());
            for request in requests {
                ids.push(
                    request
                        .await
                        .map_err(|e| AppError::Invalid(e.to_string()))??,
                );
            }
            Ok(ids)
        });
        Otps { stop, sender }
    }

    /// Stops sending, waits until every OTP was sent, and answers their latencies: enqueue →
    /// accepted runs from the moment the request was made to the moment the Cloud API accepted
    /// the send, as the worker recorded it (`sent_at`).
    async fn finish(self, config: &Config) -> Result<OtpLatencies, AppError> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let requests = self
            .sender
            .await
            .map_err(|e| AppError::Invalid(e.to_string()))??;
        let requested: HashMap<uuid::Uuid, DateTime<Utc>> = requests
            .iter()
            .filter_map(|r| Some((r.id.parse().ok()?, r.requested_at)))
            .collect();
        let mut answered: Vec<f64> = requests.iter().map(|r| r.answered_in_ms).collect();
        answered.sort_by(f64::total_cmp);
        let ids: Vec<uuid::Uuid> = requested.keys().copied().collect();
        let pool = crate::store::connect(&config.database_url, 1).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let latencies = loop {
            let sent: Vec<(uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(
                "SELECT id, sent_at FROM messages WHERE id = ANY($1) AND sent_at IS NOT NULL",
            )
            .bind(&ids)
            .fetch_all(&pool)
            .await
            .map_err(crate::store::StoreError::from)?;
            if sent.len() == ids.len() {
                break sent
                    .iter()
                    .filter_map(|(id, at)| {
                        Some((*at - *requested.get(id)?).as_seconds_f64() * 1000.0)
                    })
                    .collect::<Vec<f64>>();
            }
            if Instant::now() > deadline {
                return Err(AppError::Invalid(format!(
                    "{} of {} OTPs were sent",
                    sent.len(),
                    ids.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        pool.close().await;
        let mut accepted = latencies;
        accepted.sort_by(f64::total_cmp);
        Ok(OtpLatencies {
            sent: ids.len(),
            accepted,
            answered,
        })
    }
}

/// One progress read: when (since launch), how long it took, and what it said.
struct Sample {
    at: f64,
    done: i64,
}

pub async fn run(mut config: Config, args: CampaignBenchArgs) -> Result<(), AppError> {
    if args.recipients == 0 || args.senders == 0 || args.workers == 0 {
        return Err(AppError::Invalid(
            "--recipients, --senders and --workers must be positive".into(),
        ));
    }
    if args.recipients > 80_000_000 {
        return Err(AppError::Invalid(
            "--recipients is at most 80,000,000".into(),
        ));
    }
    config.database_url = replace_database(&config.database_url, "pregon_bench_campaign");
    config.redis_prefix = "pregon-bench-campaign".into();
    config.amqp_namespace = "pregon-bench-campaign".into();
    let http = reqwest::Client::new();
    let api_port = free_port()?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    let sim_port = free_port()?;
    config.whatsapp_base_url = format!("http://127.0.0.1:{sim_port}");

    let mut children = Vec::new();
    let mut sim_args = vec![
        "simulator".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{sim_port}"),
        "--mps".into(),
        args.mps.to_string(),
    ];
    if args.webhooks {
        sim_args.extend([
            "--webhook-url".into(),
            format!("{api_url}/webhooks/whatsapp"),
            "--app-secret".into(),
            APP_SECRET.into(),
        ]);
    }
    let sim_args: Vec<&str> = sim_args.iter().map(String::as_str).collect();
    children.push(Child::spawn("simulator", &sim_args, &[])?);

    // A clean namespace, migrated, with an admin key; then this process lets go of it.
    let stack = LocalStack::fresh(config.clone(), "bench").await?;
    let (_, key) = create_key(&stack.services.pool, "bench", Role::Admin, None).await?;
    crate::console::create_user(
        &stack.services.pool,
        CONSOLE_USER,
        CONSOLE_PASSWORD,
        "marketing",
        None,
    )
    .await
    .map_err(|e| AppError::Invalid(e.to_string()))?;
    stack.stop().await;

    children.push(Child::spawn(
        "api",
        &["api"],
        &child_env(&config, &format!("127.0.0.1:{api_port}"), args.webhooks),
    )?);
    let mut worker_urls = Vec::new();
    for i in 0..args.workers {
        let port = free_port()?;
        worker_urls.push(format!("http://127.0.0.1:{port}/readyz"));
        children.push(Child::spawn(
            &format!("worker {}", i + 1),
            &["worker"],
            &child_env(&config, &format!("127.0.0.1:{port}"), args.webhooks),
        )?);
    }
    wait_ready(&http, &format!("{api_url}/readyz")).await?;
    for url in &worker_urls {
        wait_ready(&http, url).await?;
    }
    let result = drive(&http, &config, &api_url, key, &args, &mut children).await;
    for child in children.iter_mut() {
        child.terminate();
    }
    if result.is_ok() && !args.keep {
        super::remove_namespace(config).await?;
    }
    result
}

async fn drive(
    http: &reqwest::Client,
    config: &Config,
    api_url: &str,
    key: String,
    args: &CampaignBenchArgs,
    children: &mut [Child],
) -> Result<(), AppError> {
    let api = Api {
        http: http.clone(),
        url: api_url.to_string(),
        key,
    };
    let sim = config.whatsapp_base_url.clone();
    let n = args.recipients;
    println!(
        "pregon bench campaign: {n} recipients over {} senders ({} mps each), {} worker process(es), webhooks {}, {} cores",
        args.senders,
        args.mps,
        args.workers,
        if args.webhooks { "on" } else { "off" },
        super::cores()
    );

    // Senders (unlimited tier, one business account) and the template, synced from the simulator.
    let senders: Vec<String> = (0..args.senders)
        .map(|i| local_sender_id(100 + i))
        .collect();
    register_senders(&api, &senders, args.mps).await?;
    add_templates(
        &api,
        &sim,
        &[
            ("promo", "MARKETING", "Hola {{1}}, tu cupón es {{2}}"),
            (
                "otp",
                "AUTHENTICATION",
                "{{1}} es tu código de verificación",
            ),
        ],
    )
    .await?;

    // Import.
    let csv = contact_csv(n);
    let csv_mib = csv.len() as f64 / (1024.0 * 1024.0);
    let before_import = snapshot(children);
    let started = Instant::now();
    let response = http
        .post(format!(
            "{api_url}/v1/contacts/import?phone=telefono&name=nombre&attributes=cupon&tags=bench&consent_column=acepta&evidence_column=prueba&consent_source=web_form"
        ))
        .bearer_auth(&api.key)
        .body(csv)
        .send()
        .await
        .map_err(|e| AppError::Invalid(format!("import: {e}")))?;
    let status = response.status();
    let report: Value = response.json().await.unwrap_or(Value::Null);
    let import_seconds = started.elapsed().as_secs_f64();
    if status != StatusCode::OK || report["created"].as_u64() != Some(n as u64) {
        return Err(AppError::Invalid(format!(
            "import answered {status}: {report}"
        )));
    }
    let after_import = snapshot(children);

    // Create, estimate, launch.
    let created = api
        .expect(
            Method::POST,
            "/v1/campaigns",
            Some(
                json!({"name": "bench", "template": {"name": "promo", "language": "es_MX"},
                "category": "marketing", "senders": senders, "audience": {"tags": ["bench"]},
                "variables": {"body.1": {"attribute": "name"}, "body.2": {"attribute": "cupon"}}}),
            ),
            StatusCode::CREATED,
        )
        .await?;
    let id = created["id"]
        .as_str()
        .ok_or_else(|| AppError::Invalid(format!("no campaign id in {created}")))?
        .to_string();
    let started = Instant::now();
    let estimate = api
        .expect(
            Method::POST,
            &format!("/v1/campaigns/{id}/estimate"),
            None,
            StatusCode::OK,
        )
        .await?;
    let estimate_seconds = started.elapsed().as_secs_f64();
    if estimate["eligible"].as_u64() != Some(n as u64) {
        return Err(AppError::Invalid(format!(
            "the estimate found {} eligible of {n}: {estimate}",
            estimate["eligible"]
        )));
    }
    let before_launch = snapshot(children);
    let launched = Instant::now();
    api.expect(
        Method::POST,
        &format!("/v1/campaigns/{id}/launch"),
        None,
        StatusCode::OK,
    )
    .await?;

    let otps = (args.otp_rate > 0.0).then(|| Otps::start(&api, &senders, args.otp_rate));

    // Poll as a marketing screen would, until completion: the API's progress, and the console's
    // running-campaign page and campaign list as a signed-in person sees them.
    let console = ConsoleReader::sign_in(api_url).await?;
    let mut page_latencies = Vec::new();
    let mut list_latencies = Vec::new();
    let every = Duration::from_secs_f64(args.poll_interval.max(0.1));
    let limit =
        Duration::from_secs(600 + (10 * n / (args.senders * args.mps as usize).max(1)) as u64);
    let mut latencies = Vec::new();
    let mut samples = Vec::new();
    let mut planned_at = None;
    let mut first_done_at = None;
    let mut last_print = Instant::now();
    let progress = loop {
        let asked = Instant::now();
        let p = api
            .expect(
                Method::GET,
                &format!("/v1/campaigns/{id}"),
                None,
                StatusCode::OK,
            )
            .await?;
        latencies.push(asked.elapsed().as_secs_f64() * 1000.0);
        page_latencies.push(console.read(&format!("/console/campaigns/{id}")).await?);
        list_latencies.push(console.read("/console/campaigns").await?);
        let at = launched.elapsed().as_secs_f64();
        let done = p["done"].as_i64().unwrap_or(0);
        samples.push(Sample { at, done });
        if planned_at.is_none() && p["campaign"]["planned"] == true {
            planned_at = Some(at);
        }
        if first_done_at.is_none() && done > 0 {
            first_done_at = Some(at);
        }
        match p["campaign"]["state"].as_str() {
            Some("completed") => break p,
            Some("running") => {}
            other => {
                return Err(AppError::Invalid(format!("the campaign is {other:?}: {p}")));
            }
        }
        if last_print.elapsed() >= Duration::from_secs(30) {
            last_print = Instant::now();
            eprintln!("  {at:>6.0}s  {done} of {n} done");
        }
        if launched.elapsed() > limit {
            return Err(AppError::Invalid(format!(
                "timed out after {:.0}s with {done} of {n} done",
                limit.as_secs_f64()
            )));
        }
        tokio::time::sleep(every.saturating_sub(asked.elapsed())).await;
    };
    let campaign_seconds = launched.elapsed().as_secs_f64();
    let otp_latencies = match otps {
        Some(otps) => Some(otps.finish(config).await?),
        None => None,
    };
    let after_run = snapshot(children);
    let peaks: Vec<f64> = children
        .iter()
        .map(|c| process_peak_rss_mib(&c.pid()))
        .collect();

    // The simulator's view: every recipient exactly once.
    let mut seen = HashSet::with_capacity(n);
    let mut received = 0usize;
    for s in &senders {
        let list: Value = http
            .get(format!("{sim}/_sim/received?phone_number_id={s}"))
            .send()
            .await
            .map_err(|e| AppError::Invalid(format!("simulator: {e}")))?
            .json()
            .await
            .map_err(|e| AppError::Invalid(format!("simulator: {e}")))?;
        for m in list["messages"].as_array().into_iter().flatten() {
            if m["template"] != "promo" {
                continue;
            }
            received += 1;
            if let Some(to) = m["to"].as_str() {
                seen.insert(to.to_string());
            }
        }
    }
    let sent = progress["counts"]["sent"].as_i64().unwrap_or(0)
        + progress["counts"]["delivered"].as_i64().unwrap_or(0)
        + progress["counts"]["read"].as_i64().unwrap_or(0);
    if received != n || seen.len() != n || sent != n as i64 {
        return Err(AppError::Invalid(format!(
            "expected {n} recipients once each: the simulator received {received} messages for {} numbers, pregon counts {sent} sent; {}",
            seen.len(),
            progress["counts"]
        )));
    }

    // Steady state: between 10% and 90% done.
    let reached = |fraction: f64| {
        samples
            .iter()
            .find(|s| s.done as f64 >= fraction * n as f64)
            .map(|s| s.at)
    };
    let steady = match (reached(0.1), reached(0.9)) {
        (Some(a), Some(b)) if b > a => Some(0.8 * n as f64 / (b - a)),
        _ => None,
    };
    latencies.sort_by(f64::total_cmp);
    page_latencies.sort_by(f64::total_cmp);
    list_latencies.sort_by(f64::total_cmp);

    println!();
    println!(
        "import            {import_seconds:>8.1} s for {n} rows ({csv_mib:.0} MiB CSV, {:.0} rows/s, with consent and evidence)",
        n as f64 / import_seconds
    );
    println!(
        "estimate          {estimate_seconds:>8.2} s (eligible, exclusions, cost, ETA over the whole audience)"
    );
    if let Some(t) = first_done_at {
        println!(
            "first sends       {t:>8.1} s after launch (the first progress read that counted any)"
        );
    }
    match planned_at {
        Some(t) => println!(
            "fan-out           {t:>8.1} s to plan every recipient ({:.0} recipients/s into PostgreSQL; hand-off to RabbitMQ follows the send rate, {} queued at most)",
            n as f64 / t.max(0.001),
            config.campaign_window
        ),
        None => println!("fan-out           planning finished between two polls"),
    }
    println!(
        "send              {campaign_seconds:>8.1} s launch to completed: {:.0} messages/s overall{}",
        n as f64 / campaign_seconds,
        steady
            .map(|r| format!(", {r:.0} messages/s between 10% and 90%"))
            .unwrap_or_default()
    );
    println!(
        "progress poll     p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   ({} reads, one every {:.1} s)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        latencies.len(),
        every.as_secs_f64()
    );
    for (what, samples) in [
        ("console page", &page_latencies),
        ("console list", &list_latencies),
    ] {
        println!(
            "{what:<17} p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   ({} reads of the {})",
            percentile(samples, 0.5),
            percentile(samples, 0.99),
            samples.last().copied().unwrap_or(0.0),
            samples.len(),
            if what == "console page" {
                "running campaign's page"
            } else {
                "campaign list"
            }
        );
    }
    if let Some(otps) = &otp_latencies {
        println!(
            "OTP during it     p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   ({} authentication messages at {}/s on the campaign's senders, enqueue → accepted)",
            percentile(&otps.accepted, 0.5),
            percentile(&otps.accepted, 0.99),
            otps.accepted.last().copied().unwrap_or(0.0),
            otps.sent,
            args.otp_rate
        );
        println!(
            "  of which API    p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   (request → 202, the message durable and queued)",
            percentile(&otps.answered, 0.5),
            percentile(&otps.answered, 0.99),
            otps.answered.last().copied().unwrap_or(0.0),
        );
    }
    println!("process           peak RSS    CPU import   CPU campaign (µs per recipient)");
    for (i, child) in children.iter().enumerate() {
        let import_cpu = after_import.children[i] - before_import.children[i];
        let run_cpu = after_run.children[i] - before_launch.children[i];
        println!(
            "  {:<14} {:>7.1} MiB {:>9.1} s {:>10.1} s ({:.0})",
            child.name,
            peaks[i],
            import_cpu,
            run_cpu,
            run_cpu * 1e6 / n as f64
        );
    }
    for (i, (name, _)) in after_run.services.iter().enumerate() {
        let import_cpu = after_import.services[i].1 - before_import.services[i].1;
        let run_cpu = after_run.services[i].1 - before_launch.services[i].1;
        println!(
            "  {:<14} {:>11} {:>9.1} s {:>10.1} s ({:.0})",
            name,
            "(server)",
            import_cpu,
            run_cpu,
            run_cpu * 1e6 / n as f64
        );
    }
    println!(
        "checked           the simulator received {received} messages for {} distinct recipients: each exactly once",
        seen.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_and_memory_in_proc() {
        let (comm, cpu) = process_cpu("self").unwrap();
        assert!(!comm.is_empty());
        assert!(cpu >= 0.0);
        assert!(process_peak_rss_mib("self") > 0.0);
    }

    #[test]
    fn contact_csv_has_unique_valid_numbers() {
        let csv = String::from_utf8(contact_csv(3)).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "telefono,nombre,cupon,acepta,prueba");
        assert_eq!(
            lines[1],
            "5215510000000,Cliente 0,C0000000,si,formulario web 2026-11"
        );
        assert_eq!(lines.len(), 4);
        for line in &lines[1..] {
            let phone = line.split(',').next().unwrap();
            assert!(crate::domain::phone::normalize(phone).is_ok(), "{phone}");
        }
    }

    #[test]
    fn percentiles_of_sorted_samples() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&s, 0.5), 3.0);
        assert_eq!(percentile(&s, 0.99), 5.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
