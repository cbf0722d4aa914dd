//! `pregon campaign …`, `pregon contacts …`, `pregon consent export`, `pregon templates sync`: thin
//! clients of the HTTP API (so they obey the same roles and checks), plus a live progress bar.

pub mod commands;

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::app::AppError;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Base URL of the pregon API.
    #[arg(long, env = "PREGON_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,
    /// API key (a marketing or admin key for campaigns and contacts).
    #[arg(long, env = "PREGON_API_KEY", hide_env_values = true)]
    pub api_key: String,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

fn failed(e: impl std::fmt::Display) -> AppError {
    AppError::Invalid(e.to_string())
}

impl Client {
    pub fn new(args: &ApiArgs) -> Result<Client, AppError> {
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3600))
                .build()
                .map_err(failed)?,
            base: args.api_url.trim_end_matches('/').to_string(),
            key: args.api_key.clone(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, AppError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(failed)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?;
                Some(format!(
                    "{} ({}{})",
                    e.get("message")?.as_str()?,
                    e.get("code")?.as_str()?,
                    e.get("field")
                        .and_then(Value::as_str)
                        .map(|f| format!(", field {f}"))
                        .unwrap_or_default()
                ))
            })
            .unwrap_or(text);
        Err(AppError::Invalid(format!("HTTP {status}: {detail}")))
    }

    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, AppError> {
        self.call(method, path, body)
            .await?
            .json()
            .await
            .map_err(failed)
    }

    /// A GET whose answer is text (a CSV report).
    pub async fn text(&self, path: &str) -> Result<String, AppError> {
        self.call(reqwest::Method::GET, path, None)
            .await?
            .text()
            .await
            .map_err(failed)
    }

    /// A call whose answer has no body (204).
    pub async fn send(&self, method: reqwest::Method, path: &str) -> Result<(), AppError> {
        self.call(method, path, None).await.map(|_| ())
    }

    /// Streams a CSV answer to a file or stdout.
    pub async fn download(
        &self,
        path: &str,
        output: Option<&std::path::Path>,
    ) -> Result<(), AppError> {
        let mut response = self.call(reqwest::Method::GET, path, None).await?;
        let mut out: Box<dyn Write> = match output {
            Some(p) => Box::new(std::fs::File::create(p)?),
            None => Box::new(std::io::stdout()),
        };
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            out.write_all(&chunk)?;
        }
        out.flush()?;
        Ok(())
    }
}

pub fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// A one-line summary of an estimate, for the launch confirmation.
pub fn estimate_summary(e: &Value) -> String {
    let excluded: Vec<String> = e["excluded"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} eligible of {} (excluded: {}); cost ≈ {} {} (rate card of {}); ETA {}",
        e["eligible"],
        e["audience"],
        if excluded.is_empty() {
            "none".into()
        } else {
            excluded.join(", ")
        },
        e["cost"]["total"],
        e["cost"]["currency"].as_str().unwrap_or(""),
        e["cost"]["rate_card_valid_from"].as_str().unwrap_or("?"),
        human(e["eta_seconds"].as_u64().unwrap_or(0)),
    )
}

fn human(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn count(p: &Value, status: &str) -> u64 {
    match &p["counts"][status] {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::Object(o) => o.get("total").and_then(Value::as_u64).unwrap_or(0),
        _ => 0,
    }
}

/// One line of progress: a bar, counts, rate and ETA.
pub fn progress_line(p: &Value) -> String {
    let total = p["total"].as_u64().unwrap_or(0);
    let done = p["done"].as_u64().unwrap_or(0);
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(0) as usize;
    let bar: String = "#".repeat(filled) + &".".repeat(width as usize - filled);
    let percent = if total == 0 {
        0.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    format!(
        "[{bar}] {percent:5.1}% {done}/{total} {state} | sent {} delivered {} read {} replied {} failed {} skipped {} deferred {} | {} msg/s ETA {}",
        count(p, "sent") + count(p, "delivered") + count(p, "read"),
        count(p, "delivered") + count(p, "read"),
        count(p, "read"),
        count(p, "replied"),
        count(p, "failed"),
        count(p, "skipped"),
        count(p, "deferred"),
        p["rate_per_second"]
            .as_f64()
            .map_or("-".into(), |r| format!("{r:.0}")),
        p["eta_seconds"].as_u64().map_or("-".into(), human),
        state = match (
            p["campaign"]["state"].as_str(),
            p["campaign"]["planned"].as_bool()
        ) {
            (Some("running"), Some(false)) => "running, planning",
            (Some(state), _) => state,
            (None, _) => "?",
        },
    )
}

/// Redraws the progress line until the campaign completes or is cancelled.
pub async fn watch(client: &Client, id: &str, every: Duration) -> Result<(), AppError> {
    loop {
        let p = client
            .json(reqwest::Method::GET, &format!("/v1/campaigns/{id}"), None)
            .await?;
        eprint!("\r\x1b[2K{}", progress_line(&p));
        let state = p["campaign"]["state"].as_str().unwrap_or("");
        if matches!(state, "completed" | "cancelled") {
            eprintln!();
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_lines_show_the_bar_counts_and_eta() {
        let p = json!({"total": 10, "done": 5, "rate_per_second": 2.0, "eta_seconds": 3,
            "campaign": {"state": "running"},
            "counts": {"sent": 3, "delivered": 2, "failed": {"total": 0, "by_reason": {}}}});
        let line = progress_line(&p);
        assert!(line.starts_with("[###############...............]  50.0% 5/10 running"));
        assert!(line.contains("sent 5 delivered 2"));
        assert!(line.ends_with("2 msg/s ETA 3s"));
        let planning = json!({"total": 4000, "done": 1000, "campaign": {"state": "running", "planned": false},
            "counts": {}});
        let line = progress_line(&planning);
        assert!(line.contains("1000/4000 running, planning |"), "{line}");
        assert!(line.ends_with("- msg/s ETA -"), "{line}");
        let e = json!({"eligible": 8, "audience": 10, "excluded": {"no_opt_in": 2, "duplicate": 0},
            "cost": {"total": 0.24, "currency": "USD", "rate_card_valid_from": "2026-10-01"},
            "eta_seconds": 3700});
        assert_eq!(
            estimate_summary(&e),
            "8 eligible of 10 (excluded: no_opt_in 2); cost ≈ 0.24 USD (rate card of 2026-10-01); ETA 1h01m"
        );
    }
}
