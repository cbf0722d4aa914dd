//! `pregon bench rebuild`: how long the processes hold sends after Redis restarted empty. Fills a
//! database of its own with consent for N contacts, suppressions, customers' messages of the last
//! day and templates sent in the last day, then empties Redis and rebuilds its copy, several times.

use std::time::Instant;

use crate::app::AppError;
use crate::config::Config;
use crate::demo::replace_database;
use crate::process::LocalStack;
use crate::store::StoreError;

#[derive(clap::Args, Debug, Clone)]
pub struct RebuildBenchArgs {
    /// Contacts with a marketing opt-in (a tenth of them also opted out of utility messages).
    #[arg(long, default_value_t = 1_000_000)]
    pub contacts: i64,
    /// Templates sent in the last 24 h (each to a different recipient), counted in the tiers.
    #[arg(long, default_value_t = 300_000)]
    pub sent: i64,
    /// Customers' messages in the last 24 h (open service windows).
    #[arg(long, default_value_t = 100_000)]
    pub inbound: i64,
    /// Suppressed recipients.
    #[arg(long, default_value_t = 50_000)]
    pub suppressed: i64,
    /// Sender numbers.
    #[arg(long, default_value_t = 20)]
    pub senders: i64,
    /// Rebuilds to time.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// The data a rebuild reads, written straight into PostgreSQL. Recipients are numbered, message
/// ids are UUIDv7 of their send time, as pregon makes them.
const FILL: &str = "
INSERT INTO senders (phone_number_id, business_portfolio_id, tier, access_token)
  SELECT '10655590' || lpad(i::text, 2, '0'), 'bp-bench', 100000, 'token'
  FROM generate_series(0, $5 - 1) i;
INSERT INTO templates (name, language, category, status)
  VALUES ('promo', 'es_MX', 'marketing', 'APPROVED');
INSERT INTO consent_events (recipient, purpose, action, source)
  SELECT '521' || lpad(i::text, 10, '0'), 'marketing', 'opt_in', 'import'
  FROM generate_series(1, $1) i;
INSERT INTO consent_events (recipient, purpose, action, source)
  SELECT '521' || lpad(i::text, 10, '0'), 'utility', 'opt_out', 'keyword'
  FROM generate_series(1, $1 / 10) i;
INSERT INTO suppressions (recipient, reason)
  SELECT '522' || lpad(i::text, 10, '0'), 'not_on_whatsapp' FROM generate_series(1, $4) i;
INSERT INTO inbound_messages (wamid, sender, recipient, message_type, occurred_at, handled)
  SELECT 'wamid.in' || i, '10655590' || lpad((i % $5)::text, 2, '0'),
         '521' || lpad(i::text, 10, '0'), 'text', now() - (i % 86000) * interval '1 second', true
  FROM generate_series(1, $3) i;
INSERT INTO messages (id, sender, recipient, category, message_type, template_name,
                      template_language, status, wamid, sent_at)
  SELECT (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
          || substr(md5(i::text), 1, 3) || '8' || substr(md5(i::text), 4, 15))::uuid,
         '10655590' || lpad((i % $5)::text, 2, '0'), '521' || lpad(i::text, 10, '0'),
         'marketing', 'template', 'promo', 'es_MX', 'sent', 'wamid.' || i, ts
  FROM (SELECT i, now() - (i % 80000) * interval '1 second' AS ts
        FROM generate_series(1, $2) i) s;
";

pub async fn run(mut config: Config, args: RebuildBenchArgs) -> Result<(), AppError> {
    if args.runs == 0 || args.senders < 1 || args.senders > 100 {
        return Err(AppError::Invalid(
            "--runs must be positive and --senders 1 to 100".into(),
        ));
    }
    config.database_url = replace_database(&config.database_url, "pregon_bench_rebuild");
    config.redis_prefix = "pregon-bench-rebuild".into();
    config.amqp_namespace = "pregon-bench-rebuild".into();
    let stack = LocalStack::fresh(config, "bench-rebuild").await?;
    let services = stack.services.clone();
    let filled = Instant::now();
    let mut tx = services.pool.begin().await.map_err(StoreError::from)?;
    // The counts are integers from the command line, written into the statements.
    let values = [
        args.contacts,
        args.sent,
        args.inbound,
        args.suppressed,
        args.senders,
    ];
    for statement in FILL.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let mut sql = statement.to_string();
        for (i, value) in values.iter().enumerate().rev() {
            sql = sql.replace(&format!("${}", i + 1), &value.to_string());
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    sqlx::raw_sql("ANALYZE")
        .execute(&services.pool)
        .await
        .map_err(StoreError::from)?;
    println!(
        "filled in {:.1} s: {} contacts ({} consent events), {} suppressed, {} customers' messages, {} templates sent, {} senders",
        filled.elapsed().as_secs_f64(),
        args.contacts,
        args.contacts + args.contacts / 10,
        args.suppressed,
        args.inbound,
        args.sent,
        args.senders
    );
    let mut took = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        // What a Redis restart without persistence leaves: nothing.
        services.state.delete_all().await?;
        let started = Instant::now();
        let report = crate::state_copy::rebuild_now(&services).await?;
        let wall = started.elapsed();
        took.push(wall.as_secs_f64());
        println!(
            "rebuild {run}: {:.2} s — consent {}, suppressions {}, windows {}, tier entries {}, senders {}, templates {}",
            wall.as_secs_f64(),
            report.consent,
            report.suppressions,
            report.windows,
            report.tier_entries,
            report.senders,
            report.templates
        );
    }
    took.sort_by(f64::total_cmp);
    println!(
        "rebuild: median {:.2} s, best {:.2} s, worst {:.2} s; this process's peak RSS {:.1} MiB",
        took[took.len() / 2],
        took[0],
        took[took.len() - 1],
        super::peak_rss_mib()
    );
    services.state.delete_all().await?;
    stack.stop().await;
    Ok(())
}
