//! `pregon demo`: everything on this machine, end to end. Starts the simulator and the API and a
//! worker in this process (against the local RabbitMQ, Redis and PostgreSQL), registers three
//! senders with different tiers and caps, records consent, fires a campaign-sized burst of
//! notifications through the HTTP API — including some that must be refused — and prints what
//! happened, as seen by pregon and by the simulated Cloud API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::app::{AppError, shutdown_channel};
use crate::cli::{ApiArgs, Client};
use crate::config::Config;
use crate::process::{LocalStack, local_sender_id};
use crate::simulator::{Received, SimConfig, peak_per_second};
use crate::store::{self, ConsentEvent};

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Multiplies the number of messages (1 = about 12,000).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// End after the summary instead of keeping the API, the console and the simulator running
    /// until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

const DEMO_APP_SECRET: &str = "pregon-demo-secret";
const DEMO_USER: &str = "marketing@demo.pregon";

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
    if config.secret_key.is_empty() && config.secret_key_file.is_empty() {
        // The demo's database is its own and starts empty: a key for this run seals its tokens.
        config.secret_key = crate::sealing::generate_key()?;
    }
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_url = format!("http://{}", api_listener.local_addr()?);
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", sim_listener.local_addr()?);
    let (sim_stop, mut sim_signal) = shutdown_channel();
    // The simulator reports delivered, read and failed statuses back, signed, as Meta does.
    let sim = tokio::spawn(crate::simulator::serve(
        sim_listener,
        SimConfig {
            default_mps: 1000,
            latency: Duration::from_millis(5),
            webhook_url: Some(format!("{api_url}/webhooks/whatsapp")),
            app_secret: DEMO_APP_SECRET.into(),
            ..SimConfig::default()
        },
        async move { sim_signal.wait().await },
    ));
    config.whatsapp_base_url = sim_url.clone();
    config.webhook_app_secrets = DEMO_APP_SECRET.into();
    config.database_url = replace_database(&config.database_url, "pregon_demo");
    config.redis_prefix = "pregon-demo".into();
    config.amqp_namespace = "pregon-demo".into();
    // The demo serves plain HTTP on this machine: the console's cookies cannot be Secure.
    config.console_secure_cookies = false;
    println!(
        "pregon demo: RabbitMQ {}, Redis {}, PostgreSQL {}",
        config.amqp_namespace,
        config.redis_prefix,
        crate::config::redact_url(&config.database_url)
    );
    println!("simulated Cloud API at {sim_url}");
    let mut stack = LocalStack::fresh(config, "demo").await?;
    let services = stack.services.clone();
    let (api_stop, api_signal) = shutdown_channel();
    let api = tokio::spawn(crate::process::serve_api(
        services.clone(),
        api_listener,
        api_signal,
    ));
    let (_, admin) =
        crate::api::auth::create_key(&services.pool, "demo", crate::api::auth::Role::Admin, None)
            .await?;
    println!("API at {api_url} (admin key {admin})");
    // A person for the console; the demo's database starts empty each run, so the address is free.
    let console_password = crate::console::generate_password();
    crate::console::create_user(
        &services.pool,
        DEMO_USER,
        &console_password,
        "marketing",
        None,
    )
    .await
    .map_err(|e| AppError::Invalid(e.to_string()))?;
    println!(
        "Console at {api_url}/console (sign in as {DEMO_USER}, password {console_password})\n"
    );
    let http = reqwest::Client::new();
    let admin_api = Client::new(&ApiArgs {
        api_url: api_url.clone(),
        api_key: admin.clone(),
    })?;
    let call = |path: String, body: Value| {
        let admin_api = &admin_api;
        async move {
            admin_api
                .json(Method::POST, &path, Some(body.to_string().into_bytes()))
                .await
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
        call(
            "/v1/senders".into(),
            json!({"phone_number_id": plan.sender, "business_portfolio_id": "demo-portfolio", "tier": plan.tier,
                   "mps": plan.mps, "access_token": "demo-token"}),
        )
        .await
        .map_err(|e| AppError::Invalid(format!("registering a sender failed: {e}")))?;
    }
    for (name, category) in [
        ("spring_sale", "marketing"),
        ("order_shipped", "utility"),
        ("login_code", "authentication"),
    ] {
        // Best effort, as it always was here: a refused template shows as refused sends below.
        let _ = call(
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
            let body = call(
                format!("/v1/{}/messages/batch", plan.sender),
                json!({"messages": chunk}),
            )
            .await
            .map_err(|e| AppError::Invalid(format!("batch failed: {e}")))?;
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
            ["sent", "delivered", "read"]
                .iter()
                .map(|k| counts.get(*k).copied().unwrap_or(0))
                .sum::<i64>(),
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
            get("sent") + get("delivered") + get("read"),
            get("deferred"),
            get("skipped"),
            get("failed"),
            received.len(),
            peak_per_second(&received),
            plan.mps
        );
    }
    let all = store::count_by_status(&services.pool, None).await?;
    let total_sent: i64 = ["sent", "delivered", "read"]
        .iter()
        .map(|k| all.get(*k).copied().unwrap_or(0))
        .sum();
    println!(
        "\n{total_sent} messages accepted by the Cloud API in {:.1}s ({:.0} msgs/s overall).",
        elapsed.as_secs_f64(),
        total_sent as f64 / elapsed.as_secs_f64()
    );
    println!("Deferred messages wait for the store's 1K messaging limit to free up (moving 24 h);");
    println!(
        "refused ones never entered a queue: recipients who said STOP, a bad number, free-form text outside a window."
    );

    campaign_walkthrough(
        &Walkthrough {
            http: &http,
            api_url: &api_url,
            sim_url: &sim_url,
            admin: &admin_api,
            pool: [plans[1].sender.as_str(), plans[2].sender.as_str()],
        },
        &services,
        scale(2_000),
    )
    .await?;
    println!("\nMetrics: {api_url}/metrics   Message: {api_url}/v1/messages/<id>");
    if !args.exit {
        println!(
            "\nConsole: {api_url}/console (sign in as {DEMO_USER}, password {console_password}).\n\
             Running until Ctrl-C."
        );
        crate::app::termination_signal().await;
    }
    api_stop.trigger();
    let _ = api.await;
    stack.stop().await;
    sim_stop.trigger();
    let _ = sim.await;
    Ok(())
}

/// Where the campaign walkthrough talks to: the API (as admin, and as marketing through a key it
/// creates) and the simulator.
struct Walkthrough<'a> {
    http: &'a reqwest::Client,
    api_url: &'a str,
    sim_url: &'a str,
    admin: &'a Client,
    /// The senders the campaign spreads its recipients over.
    pool: [&'a str; 2],
}

impl Walkthrough<'_> {
    fn client(&self, key: &str) -> Result<Client, AppError> {
        Client::new(&ApiArgs {
            api_url: self.api_url.to_string(),
            api_key: key.to_string(),
        })
    }

    /// Messages the simulator accepted from the campaign's senders.
    async fn received(&self) -> usize {
        let mut n = 0;
        for sender in self.pool {
            n += fetch_received(self.http, self.sim_url, sender).await.len();
        }
        n
    }
}

/// A contact CSV as marketing exports it from a shop: mostly good rows, and the usual mistakes
/// (a broken number, a repeated person, a row cut short, no consent, an opt-out, a US number, a
/// missing coupon), one of each per hundred rows.
fn shop_csv(size: usize) -> String {
    let mut csv = String::from("Telefono,Nombre,Cupon,Acepta,Prueba\n");
    for i in 0..size {
        let phone = format!("52181{:08}", i);
        let row = match i % 100 {
            7 => format!("81 12{i},Roto,B{i},si,formulario web\n"),
            13 => format!("{phone},Sin Permiso,B{i},,\n"),
            21 => format!("{phone},Baja,B{i},no,pidio no recibir\n"),
            33 => format!(
                "1202555{:04},Visitante,B{i},si,formulario web\n",
                i % 10_000
            ),
            42 => format!("{phone},Sin Cupon,,si,formulario web\n"),
            55 => format!("{phone},Corta\n"),
            _ => format!("{phone},Cliente {i},B{i:05},si,casilla marcada en el checkout\n"),
        };
        csv.push_str(&row);
        if i == 1 {
            csv.push_str(&format!("{phone},Repetido,B{i},si,formulario web\n"));
        }
    }
    csv
}

/// Marketing's side: a CSV import with consent, a template, an estimate, a launch over two
/// senders, a pause and a resume while it runs, the failure report and a retry.
async fn campaign_walkthrough(
    w: &Walkthrough<'_>,
    services: &crate::app::Services,
    size: usize,
) -> Result<(), AppError> {
    println!(
        "\nA campaign, as marketing runs it: CSV → template → estimate → launch → pause and resume → failure report"
    );
    let (_, marketing) = crate::api::auth::create_key(
        &services.pool,
        "demo-marketing",
        crate::api::auth::Role::Marketing,
        None,
    )
    .await?;
    let marketing = w.client(&marketing)?;
    let post = |path: String| {
        let marketing = &marketing;
        async move {
            marketing
                .json(Method::POST, &path, Some(b"{}".to_vec()))
                .await
        }
    };
    let started = Instant::now();
    let report = marketing
        .json(
            Method::POST,
            "/v1/contacts/import?phone=Telefono&name=Nombre&attributes=Cupon&tags=buen-fin&consent_column=Acepta&evidence_column=Prueba&consent_source=checkout&list=buen-fin",
            Some(shop_csv(size).into_bytes()),
        )
        .await?;
    println!(
        "1. imported {} rows in {:.1}s: {} contacts created; errors by reason {} (all at /v1/contacts/imports/{}/errors.csv)",
        report["rows"],
        started.elapsed().as_secs_f64(),
        report["created"],
        report["errors_by_reason"],
        report["import_id"].as_str().unwrap_or("?")
    );
    // Registered by hand here; `pregon templates sync` fills it from the Cloud API instead.
    let template = json!({"name": "buen_fin", "language": "es_MX", "category": "marketing", "status": "APPROVED",
        "components": [{"type": "BODY", "text": "Hola {{1}}, tu cupón {{2}} vale 20% este Buen Fin"},
                       {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "No más ofertas"}]}]});
    w.admin
        .json(
            Method::POST,
            "/v1/templates",
            Some(template.to_string().into_bytes()),
        )
        .await?;
    println!(
        "2. template buen_fin registered: body needs {{{{1}}}} (the name) and {{{{2}}}} (the coupon)"
    );
    // One in two hundred numbers is not on WhatsApp: the simulator fails them with 131026.
    let unreachable: Vec<String> = (0..size)
        .filter(|i| i % 200 == 150)
        .map(|i| format!("52181{:08}", i))
        .collect();
    let response = w
        .http
        .post(format!("{}/_sim/undeliverable", w.sim_url))
        .json(&json!({"numbers": unreachable}))
        .send()
        .await;
    if response.is_err() {
        return Err(AppError::Invalid("the simulator did not answer".into()));
    }
    let definition = json!({"name": "Buen Fin", "template": {"name": "buen_fin", "language": "es_MX"},
        "category": "marketing", "senders": w.pool,
        "audience": {"list_id": report["list_id"]},
        "variables": {"body.1": {"attribute": "name", "default": "cliente"},
                      "body.2": {"attribute": "Cupon"}},
        "rate_cap": 300});
    let created = marketing
        .json(
            Method::POST,
            "/v1/campaigns",
            Some(definition.to_string().into_bytes()),
        )
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    let estimate = post(format!("/v1/campaigns/{id}/estimate")).await?;
    println!("3. estimate: {}", crate::cli::estimate_summary(&estimate));
    let eligible = estimate["eligible"].as_u64().unwrap_or(0);
    post(format!("/v1/campaigns/{id}/launch")).await?;
    println!(
        "4. launched over {} and {}, at most 300 messages/s:",
        w.pool[0], w.pool[1]
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut paused_once = false;
    let progress = loop {
        let p = marketing
            .json(Method::GET, &format!("/v1/campaigns/{id}"), None)
            .await?;
        println!("   {}", crate::cli::progress_line(&p));
        let done = p["done"].as_u64().unwrap_or(0);
        if p["campaign"]["state"] == "completed" || Instant::now() > deadline {
            break p;
        }
        if !paused_once && done * 10 >= eligible * 4 {
            paused_once = true;
            post(format!("/v1/campaigns/{id}/pause")).await?;
            let at_pause = w.received().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = w.received().await;
            println!(
                "   paused: the Cloud API received {} more in the 2s after the pause answered; resuming",
                after.saturating_sub(at_pause)
            );
            post(format!("/v1/campaigns/{id}/resume")).await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Failed statuses arrive by webhook shortly after the send was accepted.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let progress = marketing
        .json(Method::GET, &format!("/v1/campaigns/{id}"), None)
        .await
        .unwrap_or(progress);
    println!("   {}", crate::cli::progress_line(&progress));
    let events: Vec<String> = progress["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["event"].as_str().unwrap_or("?").to_string())
        .collect();
    println!("   history: {}", events.join(" → "));
    let failures = marketing
        .text(&format!("/v1/campaigns/{id}/failures.csv"))
        .await?;
    println!(
        "5. failure report (/v1/campaigns/{id}/failures.csv, {} rows), first lines:",
        failures.lines().count().saturating_sub(1)
    );
    for line in failures.lines().take(3) {
        println!("   {line}");
    }
    let retry = post(format!("/v1/campaigns/{id}/retry-failed")).await?;
    println!(
        "6. retry-failed re-queued {} and left alone what cannot succeed: {}",
        retry["requeued"], retry["not_retried"]
    );
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
