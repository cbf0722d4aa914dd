//! `pregon bench`: the end-to-end load run. N messages over M senders (unlimited tier, high caps)
//! go through enqueue → RabbitMQ → worker → simulator → PostgreSQL on this machine. The simulator
//! runs as a separate process so the CPU and memory figures are the dispatcher's own. The same run
//! measures the broker's raw capacity (publish with confirms + consume of as many persistent
//! messages) so the result reads as a ratio of what the machine's RabbitMQ can do.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, QueueDeleteOptions};
use serde_json::json;

use crate::app::AppError;
use crate::config::Config;
use crate::demo::replace_database;
use crate::enqueue::{self, Request};
use crate::process::{LocalStack, local_sender_id};
use crate::store::{self, Sender, Template};

pub(crate) mod campaign;
mod http;
mod rebuild;

pub use campaign::CampaignBenchArgs;
pub use http::HttpBenchArgs;
pub use rebuild::RebuildBenchArgs;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchMode {
    /// A campaign instead of notifications: import a contact CSV, estimate, launch over a pool of
    /// senders, with the API, a worker and the simulator as separate processes.
    Campaign(CampaignBenchArgs),
    /// The single-message HTTP path: `POST /v1/{id}/messages` one message a request over keep-alive
    /// connections, at the most the API accepts and then at half that rate, with the API, a
    /// worker and the simulator as separate processes.
    Http(HttpBenchArgs),
    /// Redis restarted empty: how long the rebuild of its copy from PostgreSQL holds sends, for a
    /// database of N contacts (filled by the bench itself).
    Rebuild(RebuildBenchArgs),
}

#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    /// Messages to send end to end.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Sender numbers to spread them over.
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Messages-per-second cap of each sender (and of the simulated numbers).
    #[arg(long, default_value_t = 1000)]
    pub mps: u32,
    /// Concurrent enqueue batches of 1,000.
    #[arg(long, default_value_t = 4)]
    pub enqueue_tasks: usize,
    /// Skip the raw broker measurement.
    #[arg(long)]
    pub skip_broker: bool,
    /// Keep the run's database, Redis keys and queues for inspection (the next run wipes them);
    /// by default they are removed at the end of a run that succeeded.
    #[arg(long)]
    pub keep: bool,
}

/// What a run that succeeded prints once it removed what it wrote.
const REMOVED: &str = "removed the run's tables, Redis keys and queues (--keep keeps them)";

/// Removes what a benchmark run of other processes left in its namespace, once they stopped.
async fn remove_namespace(config: Config) -> Result<(), AppError> {
    LocalStack::remove(config).await?;
    println!("{REMOVED}");
    Ok(())
}

/// Cores this machine offers, for the benchmarks' headings.
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

struct CpuClock {
    wall: Instant,
    cpu: Duration,
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we give it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn peak_rss_mib() -> f64 {
    process_peak_rss_mib("self")
}

/// VmHWM of a process (`self` or a pid), in MiB; 0 where /proc cannot tell.
fn process_peak_rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

impl CpuClock {
    fn start() -> CpuClock {
        CpuClock {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }
    fn elapsed(&self) -> (Duration, Duration) {
        (self.wall.elapsed(), cpu_time() - self.cpu)
    }
}

pub async fn run(mut config: Config, args: BenchArgs) -> Result<(), AppError> {
    match args.mode {
        Some(BenchMode::Campaign(campaign)) => return campaign::run(config, campaign).await,
        Some(BenchMode::Rebuild(rebuild)) => return rebuild::run(config, rebuild).await,
        Some(BenchMode::Http(load)) => return http::run(config, load).await,
        None => {}
    }
    if args.senders == 0 || args.messages == 0 {
        return Err(AppError::Invalid(
            "--messages and --senders must be positive".into(),
        ));
    }
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let simulator = campaign::Child::spawn(
        "simulator",
        &[
            "simulator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mps",
            &args.mps.to_string(),
        ],
        &[],
    )?;
    config.whatsapp_base_url = format!("http://127.0.0.1:{port}");
    config.database_url = replace_database(&config.database_url, "pregon_bench");
    config.redis_prefix = "pregon-bench".into();
    config.amqp_namespace = "pregon-bench".into();
    config.pair_rate_burst = 1000;
    // Dropping the simulator's handle stops it.
    measure(config, &args, &simulator).await
}

async fn measure(
    config: Config,
    args: &BenchArgs,
    simulator: &campaign::Child,
) -> Result<(), AppError> {
    println!(
        "pregon bench: {} messages over {} senders ({} mps each), {} cores",
        args.messages,
        args.senders,
        args.mps,
        cores()
    );
    let mut stack = LocalStack::fresh(config, "bench").await?;
    let services = stack.services.clone();
    let broker_rate = if args.skip_broker {
        None
    } else {
        Some(broker_capacity(&services, args.messages).await?)
    };
    let senders: Vec<String> = (0..args.senders)
        .map(|i| local_sender_id(100 + i))
        .collect();
    for id in &senders {
        services
            .register_sender(Sender {
                phone_number_id: id.clone(),
                business_portfolio_id: "bench".into(),
                display_phone_number: None,
                tier: -1,
                quality: crate::domain::decision::Quality::Green,
                status: crate::domain::decision::SenderStatus::Connected,
                paused: false,
                paused_reason: None,
                mps: i32::try_from(args.mps).unwrap_or(1000),
                tier_spread_seconds: None,
                waba_id: None,
                access_token: "bench-token".into(),
            })
            .await?;
    }
    services
        .register_template(Template {
            parameters: Vec::new(),
            name: "order_update".into(),
            language: "es_MX".into(),
            category: crate::domain::Category::Utility,
            status: crate::domain::decision::TemplateStatus::Approved,
        })
        .await?;
    // Wait for the simulator to answer before the clock starts.
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http
            .post(format!("{}/_sim/reset", services.config.whatsapp_base_url))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let clock = CpuClock::start();
    let before = campaign::snapshot(std::slice::from_ref(simulator));
    stack.start_worker();
    let total = args.messages;
    let per_task = total.div_ceil(args.enqueue_tasks.max(1));
    let mut tasks = Vec::new();
    for task in 0..args.enqueue_tasks.max(1) {
        let services = services.clone();
        let senders = senders.clone();
        let from = task * per_task;
        let to = ((task + 1) * per_task).min(total);
        tasks.push(tokio::spawn(async move {
            let mut refused = 0usize;
            let mut i = from;
            while i < to {
                let end = (i + 1000).min(to);
                let requests = (i..end)
                    .map(|n| Request {
                        sender: senders[n % senders.len()].clone(),
                        body: json!({"messaging_product": "whatsapp", "to": format!("521{:010}", n), "type": "template",
                            "template": {"name": "order_update", "language": {"code": "es_MX"},
                              "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-1234"}]}]}}),
                        idempotency_key: None,
                        api_key_id: None,
                        delivery: Default::default(),
                    })
                    .collect();
                refused += enqueue::enqueue_many(&services, requests).await.iter().filter(|r| r.is_err()).count();
                i = end;
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap_or(0);
    }
    let (enqueue_wall, _) = clock.elapsed();
    if refused > 0 {
        return Err(AppError::Invalid(format!(
            "{refused} messages were refused at enqueue"
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        // The worker's own count of recorded sends is free to read; PostgreSQL is asked (a scan
        // of every row, which would otherwise load the database it measures) only once that
        // count says the run is over, and it has the last word.
        if services.metrics.outcome_total("sent") >= total as u64 {
            let counts = store::count_by_status(&services.pool, None).await?;
            let sent = counts.get("sent").copied().unwrap_or(0) as usize;
            if sent >= total {
                break;
            }
        }
        if Instant::now() > deadline {
            let counts = store::count_by_status(&services.pool, None).await?;
            return Err(AppError::Invalid(format!(
                "timed out with {counts:?} of {total} sent"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (wall, cpu) = clock.elapsed();
    let after = campaign::snapshot(std::slice::from_ref(simulator));
    let rss = peak_rss_mib();
    let (p50, p99): (f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at))::float8,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at))::float8
         FROM messages WHERE status = 'sent'",
    )
    .fetch_one(&services.pool)
    .await
    .map_err(store::StoreError::from)?;
    if args.keep {
        stack.stop().await;
    } else {
        stack.clear().await?;
        println!("{REMOVED}");
    }

    let rate = total as f64 / wall.as_secs_f64();
    println!();
    println!(
        "end to end        {rate:>10.0} messages/s  ({total} in {:.1}s; enqueue done after {:.1}s)",
        wall.as_secs_f64(),
        enqueue_wall.as_secs_f64()
    );
    println!(
        "enqueue→accepted  p50 {:>7.1} ms   p99 {:>7.1} ms",
        p50 * 1000.0,
        p99 * 1000.0
    );
    println!(
        "dispatcher CPU    {:>10.3} s per 1,000 messages ({:.1} µs per message; enqueue, dispatch and recording)",
        cpu.as_secs_f64() * 1000.0 / total as f64,
        cpu.as_secs_f64() * 1e6 / total as f64
    );
    println!("dispatcher RSS    {rss:>10.1} MiB peak");
    let per_message = |seconds: f64| seconds * 1e6 / total as f64;
    let mut sum = cpu.as_secs_f64();
    println!("process           CPU (µs per message)");
    println!(
        "  {:<14} {:>8.1} s ({:.0})",
        "pregon",
        cpu.as_secs_f64(),
        per_message(cpu.as_secs_f64())
    );
    let simulator_cpu = after.children[0] - before.children[0];
    sum += simulator_cpu;
    println!(
        "  {:<14} {:>8.1} s ({:.0})",
        "simulator",
        simulator_cpu,
        per_message(simulator_cpu)
    );
    for (i, (name, _)) in after.services.iter().enumerate() {
        let used = after.services[i].1 - before.services[i].1;
        sum += used;
        println!("  {name:<14} {used:>8.1} s ({:.0})", per_message(used));
    }
    println!(
        "  {:<14} {sum:>8.1} s ({:.0})",
        "all of these",
        per_message(sum)
    );
    if let Some(broker) = broker_rate {
        println!(
            "broker capacity   {broker:>10.0} messages/s (persistent, confirmed publish + acked consume, one quorum queue)"
        );
        println!(
            "ratio             {:>10.2} of the broker's raw capacity",
            rate / broker
        );
    }
    Ok(())
}

/// Publishes and consumes `n` persistent messages on a scratch quorum queue, with confirms and
/// acks, and returns messages per second.
async fn broker_capacity(services: &crate::app::Services, n: usize) -> Result<f64, AppError> {
    let queue = format!("{}.bench.raw", services.names.ns);
    let channel = services
        .amqp
        .connection()
        .create_channel()
        .await
        .map_err(crate::queue::QueueError::from)?;
    crate::queue::declare_plain_quorum(&channel, &queue).await?;
    let payload = vec![b'x'; 700];
    let started = Instant::now();
    let publisher = services.publisher.clone();
    let items: Vec<(String, String, Vec<u8>)> = (0..1000)
        .map(|_| (String::new(), queue.clone(), payload.clone()))
        .collect();
    let produce = tokio::spawn(async move {
        let mut sent = 0;
        while sent < n {
            let chunk = (n - sent).min(1000);
            for r in publisher.publish_many(&items[..chunk]).await {
                r?;
            }
            sent += chunk;
        }
        Ok::<(), crate::queue::QueueError>(())
    });
    let (consume_channel, mut consumer) =
        crate::queue::consume(&services.amqp.connection(), &queue, "bench-raw", 1000).await?;
    let mut got = 0;
    while got < n {
        match consumer.next().await {
            Some(Ok(delivery)) => {
                got += 1;
                if got % 100 == 0 || got == n {
                    delivery
                        .ack(BasicAckOptions { multiple: true })
                        .await
                        .map_err(crate::queue::QueueError::from)?;
                }
            }
            _ => return Err(AppError::Invalid("broker consumer stopped".into())),
        }
    }
    produce
        .await
        .map_err(|e| AppError::Invalid(e.to_string()))??;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = consume_channel.close(200, "done".into()).await;
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .map_err(crate::queue::QueueError::from)?;
    Ok(rate)
}
