//! `pregon bench http`: the single-message HTTP path other systems use for notifications, driven
//! the way they drive it. The API, a worker and the simulator run as separate processes; this
//! process is the load: `POST /v1/{id}/messages`, one message a request, over keep-alive
//! connections. Two phases:
//! - **closed loop**: each connection sends its next request as soon as the last is answered, for
//!   a fixed time: the most the API accepts, and its latency at that load;
//! - **fixed rate**: requests at a steady half of that rate, each timed from the moment it was due
//!   (not from when a connection was free), so the p99 is what a caller at that load sees.
//!
//! Then it waits for every accepted message to reach the simulator, checks each arrived exactly
//! once, and reports the delivery rate, the peak RSS of each process and the CPU per message of
//! every process on the machine (the load generator's own included, reported apart).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use super::campaign::{
    Api, Child, add_templates, child_env, free_port, percentile, register_senders, snapshot,
    wait_ready,
};
use super::process_peak_rss_mib;
use crate::api::auth::{Role, create_key};
use crate::app::AppError;
use crate::config::Config;
use crate::demo::replace_database;
use crate::process::{LocalStack, local_sender_id};

#[derive(clap::Args, Debug, Clone)]
pub struct HttpBenchArgs {
    /// Concurrent keep-alive connections sending one message a request.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of closed-loop load.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Seconds of load at a fixed rate, half the closed-loop rate (0 skips this phase).
    #[arg(long, default_value_t = 20.0)]
    pub fixed_seconds: f64,
    /// Senders the messages are spread over.
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Messages-per-second cap of each sender (and of the simulated numbers).
    #[arg(long, default_value_t = 1000)]
    pub mps: u32,
    /// Keep the run's database, Redis keys and queues for inspection (the next run wipes them);
    /// by default they are removed at the end of a run that succeeded.
    #[arg(long)]
    pub keep: bool,
}

/// What one phase of load saw.
#[derive(Default)]
struct Phase {
    /// Milliseconds from when each accepted request was due to its answer, sorted.
    latencies: Vec<f64>,
    accepted: usize,
    /// Answers other than 202, with the first body seen.
    refused: usize,
    first_refusal: Option<String>,
    seconds: f64,
}

impl Phase {
    fn merge(&mut self, other: Phase) {
        self.latencies.extend(other.latencies);
        self.accepted += other.accepted;
        self.refused += other.refused;
        if self.first_refusal.is_none() {
            self.first_refusal = other.first_refusal;
        }
    }

    fn rate(&self) -> f64 {
        self.accepted as f64 / self.seconds.max(0.001)
    }
}

/// The load's shared parts: one HTTP client (its pool holds the keep-alive connections), the
/// key, the senders, and a counter that makes every recipient distinct.
struct Load {
    http: reqwest::Client,
    url: String,
    authorization: String,
    senders: Vec<String>,
    next: AtomicUsize,
}

impl Load {
    async fn send_one(&self) -> Result<(), String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let sender = &self.senders[n % self.senders.len()];
        let body = format!(
            r#"{{"messaging_product":"whatsapp","to":"521{n:010}","type":"template","template":{{"name":"order_update","language":{{"code":"es_MX"}},"components":[{{"type":"body","parameters":[{{"type":"text","text":"A-{n}"}}]}}]}}}}"#
        );
        let response = self
            .http
            .post(format!("{}/v1/{sender}/messages", self.url))
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if status == StatusCode::ACCEPTED {
            Ok(())
        } else {
            Err(format!("{status}: {text}"))
        }
    }
}

fn record(phase: &mut Phase, due: Instant, outcome: Result<(), String>) {
    match outcome {
        Ok(()) => {
            phase.accepted += 1;
            phase.latencies.push(due.elapsed().as_secs_f64() * 1000.0);
        }
        Err(e) => {
            phase.refused += 1;
            if phase.first_refusal.is_none() {
                phase.first_refusal = Some(e);
            }
        }
    }
}

/// Every connection sends as soon as its last request was answered, until `seconds` pass.
async fn closed_loop(load: &Arc<Load>, connections: usize, seconds: f64) -> Phase {
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            let mut phase = Phase::default();
            while Instant::now() < until {
                let due = Instant::now();
                let outcome = load.send_one().await;
                record(&mut phase, due, outcome);
            }
            phase
        }));
    }
    gather(tasks, started).await
}

/// Requests due at a steady `rate` for `seconds`; each is timed from when it was due, so a request
/// that waited for a free connection counts its wait (no coordinated omission).
async fn fixed_rate(load: &Arc<Load>, connections: usize, rate: f64, seconds: f64) -> Phase {
    let started = Instant::now();
    let total = (rate * seconds).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let issued = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let load = load.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut phase = Phase::default();
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
                tokio::time::sleep_until(due.into()).await;
                let outcome = load.send_one().await;
                record(&mut phase, due, outcome);
            }
            phase
        }));
    }
    gather(tasks, started).await
}

/// One phase's connections, merged once they are done.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Phase>>, started: Instant) -> Phase {
    let mut all = Phase::default();
    for task in tasks {
        if let Ok(phase) = task.await {
            all.merge(phase);
        }
    }
    all.seconds = started.elapsed().as_secs_f64();
    all.latencies.sort_by(f64::total_cmp);
    all
}

/// What the simulator has received so far.
async fn received(http: &reqwest::Client, sim: &str) -> Result<(usize, usize), AppError> {
    let summary: Value = http
        .get(format!("{sim}/_sim/summary"))
        .send()
        .await
        .map_err(|e| AppError::Invalid(format!("simulator: {e}")))?
        .json()
        .await
        .map_err(|e| AppError::Invalid(format!("simulator: {e}")))?;
    let count = summary["count"].as_u64().unwrap_or(0) as usize;
    let distinct = summary["distinct_ids"].as_u64().unwrap_or(0) as usize;
    Ok((count, distinct))
}

pub async fn run(mut config: Config, args: HttpBenchArgs) -> Result<(), AppError> {
    if args.connections == 0 || args.senders == 0 || args.seconds <= 0.0 {
        return Err(AppError::Invalid(
            "--connections, --senders and --seconds must be positive".into(),
        ));
    }
    config.database_url = replace_database(&config.database_url, "pregon_bench_http");
    config.redis_prefix = "pregon-bench-http".into();
    config.amqp_namespace = "pregon-bench-http".into();
    let http = reqwest::Client::new();
    let api_port = free_port()?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    let sim_port = free_port()?;
    config.whatsapp_base_url = format!("http://127.0.0.1:{sim_port}");

    let mut children = vec![Child::spawn(
        "simulator",
        &[
            "simulator",
            "--listen",
            &format!("127.0.0.1:{sim_port}"),
            "--mps",
            &args.mps.to_string(),
        ],
        &[],
    )?];
    let stack = LocalStack::fresh(config.clone(), "bench").await?;
    let (_, key) = create_key(&stack.services.pool, "bench", Role::Admin, None).await?;
    stack.stop().await;

    // One key carries the whole load, so its request rate is not what is measured.
    let mut api_env = child_env(&config, &format!("127.0.0.1:{api_port}"), false);
    api_env.push(("PREGON_API_KEY_RATE".into(), "0".into()));
    children.push(Child::spawn("api", &["api"], &api_env)?);
    let worker_port = free_port()?;
    children.push(Child::spawn(
        "worker",
        &["worker"],
        &child_env(&config, &format!("127.0.0.1:{worker_port}"), false),
    )?);
    wait_ready(&http, &format!("{api_url}/readyz")).await?;
    wait_ready(&http, &format!("http://127.0.0.1:{worker_port}/readyz")).await?;
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
    args: &HttpBenchArgs,
    children: &mut [Child],
) -> Result<(), AppError> {
    let api = Api {
        http: http.clone(),
        url: api_url.to_string(),
        key,
    };
    let sim = config.whatsapp_base_url.clone();
    println!(
        "pregon bench http: one message a request over {} connections, {} senders ({} mps each), {} cores",
        args.connections,
        args.senders,
        args.mps,
        super::cores()
    );
    let senders: Vec<String> = (0..args.senders)
        .map(|i| local_sender_id(100 + i))
        .collect();
    register_senders(&api, &senders, args.mps).await?;
    add_templates(
        &api,
        &sim,
        &[("order_update", "UTILITY", "Tu pedido {{1}} va en camino")],
    )
    .await?;

    let load = Arc::new(Load {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections * 2)
            .build()
            .map_err(|e| AppError::Invalid(e.to_string()))?,
        url: api_url.to_string(),
        authorization: format!("Bearer {}", api.key),
        senders,
        next: AtomicUsize::new(0),
    });
    // Warm the connections and the API's caches before the clock starts.
    let warm_up = closed_loop(&load, args.connections, 1.0).await;
    if let Some(refusal) = warm_up.first_refusal {
        return Err(AppError::Invalid(format!(
            "the warm-up was refused: {refusal}"
        )));
    }
    let warm = received_all(http, &sim, load.next.load(Ordering::Relaxed), 120.0).await?;

    let before = snapshot(children);
    let bench_cpu_before = super::cpu_time();
    let started = Instant::now();
    let closed = closed_loop(&load, args.connections, args.seconds).await;
    let (delivered_during, _) = received(http, &sim).await?;
    let fixed = if args.fixed_seconds > 0.0 {
        let rate = closed.rate() / 2.0;
        Some((
            rate,
            fixed_rate(&load, args.connections * 2, rate, args.fixed_seconds).await,
        ))
    } else {
        None
    };
    let load_seconds = started.elapsed().as_secs_f64();
    let total = load.next.load(Ordering::Relaxed);
    let accepted = closed.accepted + fixed.as_ref().map(|(_, f)| f.accepted).unwrap_or(0);
    let refused = closed.refused + fixed.as_ref().map(|(_, f)| f.refused).unwrap_or(0);
    if refused > 0 {
        return Err(AppError::Invalid(format!(
            "{refused} requests were not accepted; the first: {}",
            closed
                .first_refusal
                .or(fixed.and_then(|(_, f)| f.first_refusal))
                .unwrap_or_default()
        )));
    }
    let (count, distinct) = received_all(http, &sim, total, 600.0).await?;
    let drained = started.elapsed().as_secs_f64();
    let bench_cpu = (super::cpu_time() - bench_cpu_before).as_secs_f64();
    let after = snapshot(children);
    let peaks: Vec<f64> = children
        .iter()
        .map(|c| process_peak_rss_mib(&c.pid()))
        .collect();
    let measured = count - warm.0;
    if count != total || distinct != total || measured != accepted {
        return Err(AppError::Invalid(format!(
            "expected {total} messages once each: the simulator received {count} ({distinct} distinct ids), {accepted} accepted in the measured phases"
        )));
    }

    println!();
    let line = |name: &str, phase: &Phase| {
        println!(
            "{name:<17} {:>8.0} requests/s accepted   p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   ({} in {:.1} s)",
            phase.rate(),
            percentile(&phase.latencies, 0.5),
            percentile(&phase.latencies, 0.99),
            phase.latencies.last().copied().unwrap_or(0.0),
            phase.accepted,
            phase.seconds
        );
    };
    line("closed loop", &closed);
    println!(
        "  delivered       {:>8.0} messages/s reached the simulator during it",
        (delivered_during - warm.0) as f64 / closed.seconds.max(0.001)
    );
    if let Some((rate, fixed)) = &fixed {
        line(&format!("fixed {rate:.0}/s"), fixed);
    }
    println!(
        "delivery          {:>8.0} messages/s overall: the last of {accepted} reached the simulator {:.1} s after the load ended",
        accepted as f64 / drained,
        (drained - load_seconds).max(0.0)
    );
    println!("process           peak RSS   CPU (µs per message)");
    let mut sum = 0.0;
    for (i, child) in children.iter().enumerate() {
        let cpu = after.children[i] - before.children[i];
        sum += cpu;
        println!(
            "  {:<14} {:>7.1} MiB {:>8.1} s ({:.0})",
            child.name,
            peaks[i],
            cpu,
            cpu * 1e6 / accepted as f64
        );
    }
    for (i, (name, _)) in after.services.iter().enumerate() {
        let cpu = after.services[i].1 - before.services[i].1;
        sum += cpu;
        println!(
            "  {:<14} {:>11} {:>8.1} s ({:.0})",
            name,
            "(server)",
            cpu,
            cpu * 1e6 / accepted as f64
        );
    }
    println!(
        "  all of these   {:>11} {:>8.1} s ({:.0})",
        "",
        sum,
        sum * 1e6 / accepted as f64
    );
    println!(
        "  load (bench)   {:>11} {:>8.1} s ({:.0}), not counted above",
        "",
        bench_cpu,
        bench_cpu * 1e6 / accepted as f64
    );
    println!(
        "checked           the simulator received {count} messages with {distinct} distinct ids: each accepted message exactly once"
    );
    Ok(())
}

/// Waits until the simulator has received `total` messages; what it received.
async fn received_all(
    http: &reqwest::Client,
    sim: &str,
    total: usize,
    limit_seconds: f64,
) -> Result<(usize, usize), AppError> {
    let deadline = Instant::now() + Duration::from_secs_f64(limit_seconds);
    loop {
        let (count, distinct) = received(http, sim).await?;
        if count >= total {
            return Ok((count, distinct));
        }
        if Instant::now() > deadline {
            return Err(AppError::Invalid(format!(
                "timed out with {count} of {total} received by the simulator"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
