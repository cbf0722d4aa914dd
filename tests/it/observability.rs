//! What ops will see, proven against a real Prometheus (from the system's packages): it scrapes a
//! running pregon (API, worker and simulator) pushing messages, retries, failures, throttles, a
//! tier limit, a paused sender, a campaign and webhooks, with the alert rules of
//! `deploy/prometheus/` loaded. Then every panel query of every dashboard in `dashboards/` and
//! every alert expression is evaluated through Prometheus's HTTP API: none may error, and every
//! panel must return series.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Env, Options, inbound, recipients};

const STEADY: &str = "1065550800";
const TROUBLED: &str = "1065550801";
/// The campaign's own sender: the steady one's tier is used up by the enqueued messages.
const CAMPAIGNS: &str = "1065550802";

/// Where Prometheus is: `PROMETHEUS_BIN`, or `prometheus` on the PATH (`deploy/dev.sh test`
/// installs it from the system's packages).
fn prometheus() -> String {
    std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into())
}

fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Every query of every panel of every dashboard: (dashboard file, panel title, expression).
fn panel_queries() -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(repo_path("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for file in files {
        let dashboard: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let mut panels: Vec<&Value> = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            panels.push(panel);
            // Rows may hold their panels.
            if let Some(inner) = panel["panels"].as_array() {
                panels.extend(inner);
            }
        }
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    queries.push((
                        name.clone(),
                        panel["title"].as_str().unwrap_or("").to_string(),
                        grafana_to_promql(expr),
                    ));
                }
            }
        }
    }
    queries
}

/// Grafana's variables as a dashboard would resolve them here: every instance and sender, and a
/// rate window of a minute.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("=~\"$sender\"", "=~\".*\"")
        .replace("=~\"$instance\"", "=~\".*\"")
}

struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_prometheus(target: &str) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("pregon-prom-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = repo_path("deploy/prometheus/alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: pregon\n    static_configs:\n      - targets: [\"{target}\"]\n",
        rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(prometheus())
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "could not run {}: {e}; `deploy/dev.sh test` installs Prometheus from the \
                 system's packages, or set PROMETHEUS_BIN",
                prometheus()
            )
        });
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: TempDir(dir),
    };
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{}/-/ready", prometheus.url)).send().await
            && r.status() == StatusCode::OK
        {
            return prometheus;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Prometheus did not become ready");
}

async fn query(prometheus: &Prometheus, expr: &str) -> Value {
    let url = url::Url::parse_with_params(
        &format!("{}/api/v1/query", prometheus.url),
        &[("query", expr)],
    )
    .unwrap();
    reqwest::Client::new()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_panel_and_alert_evaluates_against_a_real_prometheus_scraping_real_traffic() {
    let mut env = Env::start(Options {
        sim_webhooks: true,
        ..Options::default()
    })
    .await;
    let api = env.api_url.trim_start_matches("http://").to_string();
    let prometheus = start_prometheus(&api).await;

    // A steady sender with a 250 tier (300 recipients: some deferred) and a troubled one: Meta
    // allows it fewer messages a second than pregon was told (throttles, pacing), answers 500
    // twice (retries), and some of its recipients are not on WhatsApp (failures).
    env.sender(STEADY, json!(250), 80).await;
    env.sender(TROUBLED, json!(1000), 40).await;
    env.sender(CAMPAIGNS, json!(1000), 80).await;
    env.template("order_update", "utility").await;
    env.sim(
        "/_sim/numbers",
        json!({"phone_number_id": TROUBLED, "mps": 10}),
    )
    .await;
    env.sim(
        "/_sim/faults",
        json!({"phone_number_id": TROUBLED, "kind": "http_500", "count": 2}),
    )
    .await;
    let troubled = recipients(60, 81);
    env.sim("/_sim/undeliverable", json!({"numbers": troubled[..5]}))
        .await;
    let steady = recipients(300, 80);
    env.enqueue_templates(STEADY, &steady, "order_update").await;
    env.enqueue_templates(TROUBLED, &troubled, "order_update")
        .await;
    // A marketing campaign to people who opted in, paused and resumed; a contact import; a
    // callback subscription (its endpoint is the simulator, which refuses it: still deliveries).
    env.template("promo", "marketing").await;
    let audience = recipients(20, 82);
    env.opt_in(&audience).await;
    // One of them is not on WhatsApp: the funnel's failed step.
    env.sim("/_sim/undeliverable", json!({"numbers": [audience[19]]}))
        .await;
    let csv = format!("phone,name\n{},Ana\n", audience[0]);
    let (status, report) = env
        .import_csv(&env.admin_key, "phone=phone&name=name", &csv)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let (status, body) = env
        .post(
            "/v1/subscriptions",
            json!({"url": format!("{}/callbacks", env.sim_url)}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, campaign) = env
        .post(
            "/v1/campaigns",
            json!({"name": "observed", "template": {"name": "promo", "language": "es_MX"},
                   "sender": CAMPAIGNS, "audience": {"numbers": audience}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{campaign}");
    let id = campaign["id"].as_str().unwrap().to_string();
    for action in ["launch", "pause", "resume"] {
        let (status, body) = env
            .post(&format!("/v1/campaigns/{id}/{action}"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
    }
    // A forged webhook.
    let (status, _) = env.webhook_signed(b"{}", Some("not-the-secret")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The troubled sender paused by an operator for a while: its lane holds.
    env.start_worker();
    let (status, _) = env
        .post(&format!("/v1/senders/{TROUBLED}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = env
        .post(&format!("/v1/senders/{TROUBLED}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Every message of the troubled sender in a final state (statuses move them on to
    // delivered and read).
    env.wait_counts(TROUBLED, Duration::from_secs(90), |c| {
        let waiting = ["planned", "queued", "deferred"];
        let done: i64 = c
            .iter()
            .filter(|(state, _)| !waiting.contains(&state.as_str()))
            .map(|(_, n)| n)
            .sum();
        done >= troubled.len() as i64
    })
    .await;
    // One recipient answers the campaign (the funnel's replied step).
    let wamid = env
        .eventually("a campaign message sent", Duration::from_secs(30), async || {
            sqlx::query_scalar::<_, String>(
                "SELECT wamid FROM messages WHERE campaign_id = $1::uuid AND wamid IS NOT NULL LIMIT 1",
            )
            .bind(&id)
            .fetch_optional(&env.services.pool)
            .await
            .unwrap()
        })
        .await;
    let replier: String = sqlx::query_scalar("SELECT recipient FROM messages WHERE wamid = $1")
        .bind(&wamid)
        .fetch_one(&env.services.pool)
        .await
        .unwrap();
    env.webhook(&inbound(
        CAMPAIGNS,
        &replier,
        "wamid.observed-reply",
        json!({"type": "text", "text": {"body": "Me interesa"},
               "context": {"from": CAMPAIGNS, "id": wamid}}),
    ))
    .await;
    // Enough scrapes for every rate window to hold two samples after the traffic, and the
    // campaign gauges (refreshed every 10 s) scraped at least once since the campaign sent,
    // failed, was answered and billed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let campaign_steps = [
        r#"pregon_campaign_messages{status=~"sent|delivered|read"}"#,
        r#"pregon_campaign_messages{status="failed"}"#,
        r#"pregon_campaign_messages{status="replied"}"#,
        r#"pregon_campaign_cost{kind="billed"} > 0"#,
    ];
    for expr in campaign_steps {
        loop {
            let answer = query(&prometheus, expr).await;
            if answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the campaign gauges never showed {expr}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // A few more evaluations, so rates over the per-campaign counts have two points.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let rules: Value = reqwest::get(format!("{}/api/v1/rules", prometheus.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut alerts = Vec::new();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            alerts.push((
                rule["name"].as_str().unwrap().to_string(),
                rule["query"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(alerts.len() >= 20, "only {} rules loaded", alerts.len());
    for (name, expr) in &alerts {
        let answer = query(&prometheus, expr).await;
        assert_eq!(answer["status"], "success", "alert {name}: {answer}");
    }

    let panels = panel_queries();
    assert!(panels.len() >= 14, "only {} panel queries", panels.len());
    let mut empty = Vec::new();
    for (dashboard, title, expr) in &panels {
        let answer = query(&prometheus, expr).await;
        assert_eq!(
            answer["status"], "success",
            "{dashboard}: {title}: {expr}: {answer}"
        );
        if answer["data"]["result"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            empty.push(format!("{dashboard}: {title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels with no series although the traffic should have produced them:\n{}",
        empty.join("\n")
    );
    // `deploy/dev.sh snapshot` asks for a picture of the key panels, from this Prometheus.
    if let Ok(out) = std::env::var("SNAPSHOT_PNG") {
        let python = std::env::var("SNAPSHOT_PYTHON").unwrap_or_else(|_| "python3".into());
        let status = std::process::Command::new(python)
            .arg(repo_path("deploy/snapshot.py"))
            .args([
                "--prometheus",
                &prometheus.url,
                "--out",
                &out,
                "--minutes",
                "1.5",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "deploy/snapshot.py failed");
    }
    drop(prometheus);
    env.cleanup().await;
}
