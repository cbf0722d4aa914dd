//! `pregon demo`: everything on this machine, end to end. Starts the simulator and the API and a
//! worker in this process (against the local RabbitMQ, Redis and PostgreSQL), registers three
//! senders with different tiers and caps, records consent, fires a campaign-sized burst of
//! notifications through the HTTP API — including some that must be refused — and prints what
//! happened, as seen by pregon and by the simulated Cloud API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{AppError, shutdown_channel};
use crate::config::Config;
use crate::process::{LocalStack, local_sender_id};
use crate::simulator::{Received, SimConfig, peak_per_second};
use crate::store::{self, ConsentEvent};

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Multiplies the number of messages (1 = about 12,000).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Keep the API and the simulator running after the summary, until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

struct Plan {
    sender: String,
    label: &'static str,
    tier: Value,
    mps: u32,
    marketing: usize,
    utility: usize,
    otp: usize,
}

pub async fn run(mut config: Config, args: DemoArgs) -> Result<(), AppError> {
    let scale = |n: usize| ((n as f64) * args.scale).round().max(1.0) as usize;
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", sim_listener.local_addr()?);
    let (sim_stop, mut sim_signal) = shutdown_channel();
    let sim = tokio::spawn(crate::simulator::serve(
        sim_listener,
        SimConfig {
            default_mps: 1000,
            latency: Duration::from_millis(5),
            ..SimConfig::default()
        },
        async move { sim_signal.wait().await },
    ));
    config.whatsapp_base_url = sim_url.clone();
    config.database_url = replace_database(&config.database_url, "pregon_demo");
    config.redis_prefix = "pregon-demo".into();
    config.amqp_namespace = "pregon-demo".into();
    println!(
        "pregon demo: RabbitMQ {}, Redis {}, PostgreSQL {}",
        config.amqp_namespace, config.redis_prefix, config.database_url
    );
    println!("simulated Cloud API at {sim_url}");
    let mut stack = LocalStack::fresh(config, "demo").await?;
    let services = stack.services.clone();
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_url = format!("http://{}", api_listener.local_addr()?);
    let (api_stop, api_signal) = shutdown_channel();
    let api = tokio::spawn(crate::process::serve_api(
        services.clone(),
        api_listener,
        api_signal,
    ));
    let (_, admin) =
        crate::api::auth::create_key(&services.pool, "demo", crate::api::auth::Role::Admin, None)
            .await?;
    println!("API at {api_url} (admin key {admin})\n");
    let http = reqwest::Client::new();
    let call = |path: String, body: Value| {
        let http = http.clone();
        let url = format!("{api_url}{path}");
        let admin = admin.clone();
        async move {
            let resp = http.post(url).bearer_auth(admin).json(&body).send().await;
            match resp {
                Ok(r) => {
                    let status = r.status();
                    (status, r.json::<Value>().await.unwrap_or(Value::Null))
                }
                Err(e) => (
                    reqwest::StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": e.to_string()}),
                ),
            }
        }
    };

    let plans = vec![
        Plan {
            sender: local_sender_id(1),
            label: "store (TIER_1K, 80 mps)",
            tier: json!("TIER_1K"),
            mps: 80,
            marketing: scale(1_500),
            utility: scale(300),
            otp: 0,
        },
        Plan {
            sender: local_sender_id(2),
            label: "bank (unlimited, 1000 mps)",
            tier: json!("TIER_UNLIMITED"),
            mps: 1000,
            marketing: scale(6_000),
            utility: scale(2_000),
            otp: scale(500),
        },
        Plan {
            sender: local_sender_id(3),
            label: "delivery (TIER_10K, 250 mps)",
            tier: json!("TIER_10K"),
            mps: 250,
            marketing: 0,
            utility: scale(1_500),
            otp: scale(200),
        },
    ];
    for plan in &plans {
        let (status, body) = call(
            "/v1/senders".into(),
            json!({"phone_number_id": plan.sender, "business_portfolio_id": "demo-portfolio", "tier": plan.tier,
                   "mps": plan.mps, "access_token": "demo-token"}),
        )
        .await;
        if !status.is_success() {
            return Err(AppError::Invalid(format!(
                "registering a sender failed: {body}"
            )));
        }
    }
    for (name, category) in [
        ("spring_sale", "marketing"),
        ("order_shipped", "utility"),
        ("login_code", "authentication"),
    ] {
        call(
            "/v1/templates".into(),
            json!({"name": name, "language": "es_MX", "category": category}),
        )
        .await;
    }
    // Consent: everyone in the campaign opted in on the web shop; a few later said STOP.
    let marketing_total: usize = plans.iter().map(|p| p.marketing).sum();
    let audience: Vec<String> = (0..marketing_total)
        .map(|i| format!("52155{:08}", i))
        .collect();
    let opt_ins: Vec<ConsentEvent> = audience
        .iter()
        .map(|r| ConsentEvent {
            recipient: r.clone(),
            purpose: "marketing".into(),
            action: "opt_in".into(),
            source: "web_form".into(),
            evidence: Some("checked \"send me offers on WhatsApp\" at checkout".into()),
            actor: Some("demo".into()),
        })
        .collect();
    for chunk in opt_ins.chunks(5_000) {
        services.record_consent(chunk).await?;
    }
    let stops: Vec<ConsentEvent> = audience
        .iter()
        .step_by(50)
        .map(|r| ConsentEvent {
            recipient: r.clone(),
            purpose: "marketing".into(),
            action: "opt_out".into(),
            source: "keyword".into(),
            evidence: Some("STOP".into()),
            actor: Some("demo".into()),
        })
        .collect();
    services.record_consent(&stops).await?;

    stack.start_worker();
    let started = Instant::now();
    let mut accepted = 0usize;
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut next_marketing = 0usize;
    let mut transactional = 0usize;
    for plan in &plans {
        let mut bodies = Vec::new();
        for _ in 0..plan.marketing {
            bodies.push(template(&audience[next_marketing], "spring_sale"));
            next_marketing += 1;
        }
        for _ in 0..plan.utility {
            transactional += 1;
            bodies.push(template(
                &format!("52133{transactional:08}"),
                "order_shipped",
            ));
        }
        for _ in 0..plan.otp {
            transactional += 1;
            bodies.push(template(&format!("52133{transactional:08}"), "login_code"));
        }
        // Mistakes other systems make: a bad number, a free-form text with no open window.
        bodies.push(template("+52 55 12", "order_shipped"));
        bodies.push(json!({"messaging_product": "whatsapp", "to": "5213300000001", "type": "text", "text": {"body": "hola"}}));
        for chunk in bodies.chunks(1000) {
            let (status, body) = call(
                format!("/v1/{}/messages/batch", plan.sender),
                json!({"messages": chunk}),
            )
            .await;
            if !status.is_success() {
                return Err(AppError::Invalid(format!("batch failed: {body}")));
            }
            for item in body["results"].as_array().into_iter().flatten() {
                if item["status"] == "accepted" {
                    accepted += 1;
                } else {
                    *refused
                        .entry(item["error"]["code"].as_str().unwrap_or("?").to_string())
                        .or_default() += 1;
                }
            }
        }
    }
    let enqueue_time = started.elapsed();
    println!(
        "enqueued {accepted} messages through the HTTP API in {:.1}s; refused at the door: {refused:?}",
        enqueue_time.as_secs_f64()
    );

    // Wait until nothing is queued any more (deferred messages wait for their tier to free up).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let counts = store::count_by_status(&services.pool, None).await?;
        let pending = counts.get("queued").copied().unwrap_or(0);
        println!(
            "  queued {pending:>6}  sent {:>6}  deferred {:>5}  skipped {:>4}  failed {:>4}",
            counts.get("sent").copied().unwrap_or(0),
            counts.get("deferred").copied().unwrap_or(0),
            counts.get("skipped").copied().unwrap_or(0),
            counts.get("failed").copied().unwrap_or(0)
        );
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let elapsed = started.elapsed();
    println!();
    println!(
        "{:<32} {:>7} {:>9} {:>8} {:>7} {:>13} {:>13}",
        "sender", "sent", "deferred", "skipped", "failed", "at simulator", "peak msgs/s"
    );
    for plan in &plans {
        let counts = store::count_by_status(&services.pool, Some(&plan.sender)).await?;
        let received = fetch_received(&http, &sim_url, &plan.sender).await;
        let get = |k: &str| counts.get(k).copied().unwrap_or(0);
        println!(
            "{:<32} {:>7} {:>9} {:>8} {:>7} {:>13} {:>8} (cap {})",
            plan.label,
            get("sent"),
            get("deferred"),
            get("skipped"),
            get("failed"),
            received.len(),
            peak_per_second(&received),
            plan.mps
        );
    }
    let total_sent = store::count_by_status(&services.pool, None)
        .await?
        .get("sent")
        .copied()
        .unwrap_or(0);
    println!(
        "\n{total_sent} messages accepted by the Cloud API in {:.1}s ({:.0} msgs/s overall).",
        elapsed.as_secs_f64(),
        total_sent as f64 / elapsed.as_secs_f64()
    );
    println!("Deferred messages wait for the store's 1K messaging limit to free up (moving 24 h);");
    println!(
        "refused ones never entered a queue: recipients who said STOP, a bad number, free-form text outside a window."
    );
    println!("Metrics: {api_url}/metrics   Message: {api_url}/v1/messages/<id>");
    if args.keep_running {
        println!("\nRunning until Ctrl-C.");
        crate::app::termination_signal().await;
    }
    api_stop.trigger();
    let _ = api.await;
    stack.stop().await;
    sim_stop.trigger();
    let _ = sim.await;
    Ok(())
}

fn template(to: &str, name: &str) -> Value {
    json!({"messaging_product": "whatsapp", "to": to, "type": "template",
           "template": {"name": name, "language": {"code": "es_MX"},
             "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]}})
}

async fn fetch_received(http: &reqwest::Client, sim_url: &str, sender: &str) -> Vec<Received> {
    let Ok(resp) = http
        .get(format!("{sim_url}/_sim/received?phone_number_id={sender}"))
        .send()
        .await
    else {
        return Vec::new();
    };
    let Ok(v) = resp.json::<Value>().await else {
        return Vec::new();
    };
    serde_json::from_value(v["messages"].clone()).unwrap_or_default()
}

/// The same server and credentials, another database name.
pub fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > base.find("://").map(|j| j + 2).unwrap_or(0) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            replace_database("postgres://u@h:5432/pregon", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u@h/pregon?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
    }
}
