//! Prometheus metrics, one registry per process (tests build their own).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Message outcomes: enqueued, refused, sent, failed, skipped, deferred.
    pub messages: IntCounterVec,
    pub enqueue_to_accepted: Histogram,
    pub cloud_api_duration: HistogramVec,
    pub retries: IntCounterVec,
    pub failures: IntCounterVec,
    pub deferrals: IntCounterVec,
    pub holds: IntCounterVec,
    pub lane_depth: IntGaugeVec,
    /// How long the message a lane handed out last had been ready to send; 0 once it is empty.
    pub lane_head_wait: prometheus::GaugeVec,
    pub tier_usage: IntGaugeVec,
    pub tier_limit: IntGaugeVec,
    pub pacing_wait_seconds: prometheus::CounterVec,
    pub sender_paused: IntGaugeVec,
    /// A sender's quality rating as a number: 3 GREEN, 2 YELLOW, 1 RED, 0 unknown.
    pub sender_quality: IntGaugeVec,
    /// A sender's configured messages-per-second cap.
    pub sender_mps: IntGaugeVec,
    /// 1 while a backing service answers this process, per service.
    pub dependency_up: IntGaugeVec,
    pub ingest_refused: IntCounterVec,
    /// API requests turned away before a handler ran, by reason (rate_limited, overloaded,
    /// request_timeout).
    pub api_refused: IntCounterVec,
    /// Rows the retention purge removed (or, for message bodies, emptied), by kind.
    pub purged_rows: IntCounterVec,
    /// People whose data was erased on request.
    pub erasures: prometheus::IntCounter,
    /// Webhook POSTs and verification handshakes by outcome.
    pub webhook_requests: IntCounterVec,
    /// Webhook updates processed, by kind (status, inbound, template, …, unknown).
    pub webhook_updates: IntCounterVec,
    pub webhook_ack_seconds: Histogram,
    /// Webhook events stored and not processed yet.
    pub webhook_backlog: IntGauge,
    pub events_published: IntCounterVec,
    pub event_outbox_depth: IntGauge,
    pub callback_deliveries: IntCounterVec,
    /// Campaign launches, pauses, resumes, completions by event and cause.
    pub campaign_transitions: IntCounterVec,
    /// Campaign messages written at planning.
    pub campaign_planned: prometheus::IntCounter,
    /// Campaign messages handed to RabbitMQ.
    pub campaign_handed: prometheus::IntCounter,
    /// How long the longest-paused campaign has been paused, in seconds (0: none is paused).
    pub campaign_longest_pause_seconds: IntGauge,
    /// Messages of each watched campaign by status (at most `WATCHED_CAMPAIGNS` campaigns).
    pub campaign_messages: IntGaugeVec,
    /// Each watched campaign's estimated cost and what it has been billed so far, in the rate
    /// card's currency.
    pub campaign_cost: prometheus::GaugeVec,
    /// Contact rows imported, by outcome (created, updated, error).
    pub contacts_imported: IntCounterVec,
    /// 1 while Redis holds a complete copy of PostgreSQL's state, 0 while it is lost or rebuilt.
    pub state_copy_complete: IntGauge,
    /// Rebuilds of Redis's copy this process carried out.
    pub state_rebuilds: prometheus::IntCounter,
    /// How long this process's last rebuild took, in milliseconds.
    pub state_rebuild_ms: IntGauge,
    /// Stored webhook events that failed three times or more and are retried with backoff.
    pub webhook_events_retrying: IntGauge,
    /// Dead-lettered jobs not sent again yet.
    pub dead_jobs: IntGauge,
    /// Jobs committed and not yet confirmed by RabbitMQ.
    pub job_outbox_depth: IntGauge,
    /// Jobs the outbox relay published (their first publish failed or never happened).
    pub jobs_relayed: prometheus::IntCounter,
}

fn buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let lane_head_wait = prometheus::GaugeVec::new(
            Opts::new(
                "pregon_lane_head_wait_seconds",
                "How long the message a lane handed out last had been ready to send (the oldest \
                 ready message, lanes being first in, first out); 0 while the lane is empty",
            ),
            &["sender", "lane"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(lane_head_wait.clone()))
            .expect("metric registered once");
        let campaign_messages = gauge(
            "pregon_campaign_messages",
            "Messages of each campaign running, paused or finished within the hour (the newest 20), \
             by status",
            &["campaign", "name", "status"],
        );
        let campaign_cost = prometheus::GaugeVec::new(
            Opts::new(
                "pregon_campaign_cost",
                "Cost of each watched campaign from the rate card: kind=\"estimated\" for what it \
                 planned, kind=\"billed\" for the billable templates Meta reported delivered",
            ),
            &["campaign", "name", "kind", "currency"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(campaign_cost.clone()))
            .expect("metric registered once");
        let messages = counter(
            "pregon_messages_total",
            "Messages by outcome, sender and category",
            &["outcome", "sender", "category"],
        );
        let retries = counter(
            "pregon_retries_total",
            "Send retries by error code",
            &["code"],
        );
        let failures = counter(
            "pregon_failures_total",
            "Failed messages by error code",
            &["code"],
        );
        let deferrals = counter(
            "pregon_deferrals_total",
            "Deferred messages by reason",
            &["reason"],
        );
        let holds = counter(
            "pregon_lane_holds_total",
            "Lane holds by sender and reason",
            &["sender", "reason"],
        );
        let purged_rows = counter(
            "pregon_purged_rows_total",
            "Rows the retention purge removed, by kind",
            &["kind"],
        );
        let api_refused = counter(
            "pregon_api_refused_total",
            "API requests turned away by the abuse limits, by reason",
            &["reason"],
        );
        let ingest_refused = counter(
            "pregon_ingest_refused_total",
            "Refused direct-ingest requests by code",
            &["code"],
        );
        let lane_depth = gauge(
            "pregon_lane_depth",
            "Messages ready in a sender's lane",
            &["sender", "lane"],
        );
        let tier_usage = gauge(
            "pregon_tier_usage",
            "Unique recipients counted in the moving 24 h per tier counter",
            &["counter"],
        );
        let tier_limit = gauge(
            "pregon_tier_limit",
            "Messaging limit per tier counter (-1 unlimited)",
            &["counter"],
        );
        let sender_paused = gauge(
            "pregon_sender_paused",
            "1 while a sender is paused",
            &["sender"],
        );
        let sender_quality = gauge(
            "pregon_sender_quality",
            "A sender's quality rating: 3 GREEN, 2 YELLOW, 1 RED, 0 not rated",
            &["sender"],
        );
        let sender_mps = gauge(
            "pregon_sender_mps",
            "A sender's messages-per-second cap, as registered",
            &["sender"],
        );
        let dependency_up = gauge(
            "pregon_dependency_up",
            "1 while the service (postgresql, redis, rabbitmq) answers this process, checked at each scrape",
            &["service"],
        );
        let webhook_requests = counter(
            "pregon_webhook_requests_total",
            "Webhook requests by outcome (accepted, bad_signature, too_large, malformed, verified, verify_refused)",
            &["outcome"],
        );
        let webhook_updates = counter(
            "pregon_webhook_updates_total",
            "Webhook updates processed by kind",
            &["kind"],
        );
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let webhook_backlog = plain_gauge(
            "pregon_webhook_backlog",
            "Webhook events stored and waiting to be processed",
        );
        let events_published = counter(
            "pregon_events_published_total",
            "Lifecycle events published to RabbitMQ by type",
            &["type"],
        );
        let event_outbox_depth = plain_gauge(
            "pregon_event_outbox_depth",
            "Lifecycle events waiting in the outbox",
        );
        let campaign_longest_pause_seconds = plain_gauge(
            "pregon_campaign_longest_pause_seconds",
            "Seconds the longest-paused campaign has been paused (0 when none is)",
        );
        let callback_deliveries = counter(
            "pregon_callback_deliveries_total",
            "HTTP callback attempts by outcome (delivered, failed, gave_up)",
            &["outcome"],
        );
        let campaign_transitions = counter(
            "pregon_campaign_transitions_total",
            "Campaign state changes by event (launched, paused, auto_paused, auto_resumed, ...) and cause",
            &["event", "cause"],
        );
        let contacts_imported = counter(
            "pregon_contacts_imported_total",
            "Contact import rows by outcome (created, updated, error)",
            &["outcome"],
        );
        let plain_counter = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let erasures = plain_counter(
            "pregon_erasures_total",
            "People whose data was erased on request",
        );
        let campaign_planned = plain_counter(
            "pregon_campaign_planned_total",
            "Campaign messages written at planning",
        );
        let campaign_handed = plain_counter(
            "pregon_campaign_handed_total",
            "Campaign messages handed to RabbitMQ by the fan-out",
        );
        let state_copy_complete = plain_gauge(
            "pregon_state_copy_complete",
            "1 while Redis holds a complete copy of PostgreSQL's state; 0 while sends hold for a rebuild",
        );
        let state_rebuilds = plain_counter(
            "pregon_state_rebuilds_total",
            "Rebuilds of Redis's copy of PostgreSQL's state carried out by this process",
        );
        let state_rebuild_ms = plain_gauge(
            "pregon_state_rebuild_milliseconds",
            "How long this process's last rebuild of Redis's copy took",
        );
        let webhook_events_retrying = plain_gauge(
            "pregon_webhook_events_retrying",
            "Stored webhook events that failed three times or more and are retried with backoff",
        );
        let dead_jobs = plain_gauge(
            "pregon_dead_jobs",
            "Dead-lettered jobs waiting for an operator (pregon dead list)",
        );
        let job_outbox_depth = plain_gauge(
            "pregon_job_outbox_depth",
            "Accepted messages whose job RabbitMQ has not confirmed yet",
        );
        let jobs_relayed = plain_counter(
            "pregon_jobs_relayed_total",
            "Jobs the outbox relay published after their first publish failed or never happened",
        );
        let webhook_ack_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "pregon_webhook_ack_seconds",
                "Time to store and acknowledge a webhook POST",
            )
            .buckets(buckets()),
        )
        .expect("static metric definition");
        registry
            .register(Box::new(webhook_ack_seconds.clone()))
            .expect("metric registered once");
        let enqueue_to_accepted = Histogram::with_opts(
            HistogramOpts::new(
                "pregon_enqueue_to_accepted_seconds",
                "From enqueue to the Cloud API accepting the message",
            )
            .buckets(buckets()),
        )
        .expect("static metric definition");
        registry
            .register(Box::new(enqueue_to_accepted.clone()))
            .expect("metric registered once");
        let cloud_api_duration = HistogramVec::new(
            HistogramOpts::new(
                "pregon_cloud_api_request_seconds",
                "Cloud API send request duration",
            )
            .buckets(buckets()),
            &["outcome"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(cloud_api_duration.clone()))
            .expect("metric registered once");
        let pacing_wait_seconds = prometheus::CounterVec::new(
            Opts::new(
                "pregon_pacing_wait_seconds_total",
                "Time spent waiting for rate limits",
            ),
            &["sender", "limit"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(pacing_wait_seconds.clone()))
            .expect("metric registered once");
        Metrics {
            dead_jobs,
            webhook_events_retrying,
            job_outbox_depth,
            jobs_relayed,
            state_copy_complete,
            state_rebuilds,
            state_rebuild_ms,
            registry,
            messages,
            enqueue_to_accepted,
            cloud_api_duration,
            retries,
            failures,
            deferrals,
            holds,
            lane_depth,
            tier_usage,
            tier_limit,
            pacing_wait_seconds,
            sender_paused,
            lane_head_wait,
            campaign_messages,
            campaign_cost,
            sender_quality,
            sender_mps,
            dependency_up,
            ingest_refused,
            api_refused,
            purged_rows,
            erasures,
            webhook_requests,
            webhook_updates,
            webhook_ack_seconds,
            webhook_backlog,
            events_published,
            event_outbox_depth,
            callback_deliveries,
            campaign_transitions,
            campaign_planned,
            campaign_longest_pause_seconds,
            campaign_handed,
            contacts_imported,
        }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if encoder
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    pub fn outcome(&self, outcome: &str, sender: &str, category: &str) {
        self.messages
            .with_label_values(&[outcome, sender, category])
            .inc();
    }

    /// How many messages this process recorded with `outcome`, over every sender and category.
    pub fn outcome_total(&self, outcome: &str) -> u64 {
        prometheus::core::Collector::collect(&self.messages)
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|label| label.name() == "outcome" && label.value() == outcome)
            })
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_total_sums_every_sender_and_category_of_that_outcome_only() {
        let metrics = Metrics::new();
        assert_eq!(metrics.outcome_total("sent"), 0);
        metrics.outcome("sent", "100", "utility");
        metrics.outcome("sent", "100", "utility");
        metrics.outcome("sent", "200", "marketing");
        metrics.outcome("failed", "100", "utility");
        assert_eq!(metrics.outcome_total("sent"), 3);
        assert_eq!(metrics.outcome_total("failed"), 1);
        assert_eq!(metrics.outcome_total("skipped"), 0);
    }

    /// Every `pregon_*` series the dashboard and the alert rules query must exist.
    #[test]
    fn dashboards_and_alerts_query_real_metrics() {
        let metrics = Metrics::new();
        // Touch every vector once so gather() lists it.
        metrics.outcome("sent", "s", "utility");
        metrics.retries.with_label_values(&["1"]).inc();
        metrics.failures.with_label_values(&["1"]).inc();
        metrics.deferrals.with_label_values(&["r"]).inc();
        metrics.holds.with_label_values(&["s", "r"]).inc();
        metrics.ingest_refused.with_label_values(&["c"]).inc();
        metrics.lane_depth.with_label_values(&["s", "tx"]).set(1);
        metrics.tier_usage.with_label_values(&["c"]).set(1);
        metrics.tier_limit.with_label_values(&["c"]).set(1);
        metrics.sender_paused.with_label_values(&["s"]).set(0);
        metrics.sender_quality.with_label_values(&["s"]).set(3);
        metrics.sender_mps.with_label_values(&["s"]).set(80);
        metrics
            .lane_head_wait
            .with_label_values(&["s", "tx"])
            .set(0.5);
        metrics
            .campaign_messages
            .with_label_values(&["c", "n", "sent"])
            .set(1);
        metrics
            .campaign_cost
            .with_label_values(&["c", "n", "billed", "USD"])
            .set(0.5);
        metrics
            .dependency_up
            .with_label_values(&["postgresql"])
            .set(1);
        metrics
            .pacing_wait_seconds
            .with_label_values(&["s", "mps"])
            .inc();
        metrics
            .cloud_api_duration
            .with_label_values(&["accepted"])
            .observe(0.1);
        metrics.enqueue_to_accepted.observe(0.1);
        metrics
            .webhook_requests
            .with_label_values(&["accepted"])
            .inc();
        metrics.webhook_updates.with_label_values(&["status"]).inc();
        metrics.webhook_ack_seconds.observe(0.01);
        metrics.webhook_backlog.set(0);
        metrics
            .events_published
            .with_label_values(&["message.sent"])
            .inc();
        metrics.event_outbox_depth.set(0);
        metrics
            .campaign_transitions
            .with_label_values(&["auto_paused", "sender_quality_red"])
            .inc();
        metrics
            .contacts_imported
            .with_label_values(&["created"])
            .inc();
        metrics
            .callback_deliveries
            .with_label_values(&["delivered"])
            .inc();
        let known: Vec<String> = metrics
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let root = env!("CARGO_MANIFEST_DIR");
        let mut files: Vec<String> = std::fs::read_dir(format!("{root}/dashboards"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|name| name.ends_with(".json"))
            .map(|name| format!("dashboards/{name}"))
            .collect();
        assert!(files.len() >= 3, "{files:?}");
        files.push("deploy/prometheus/alerts.yml".into());
        for file in &files {
            let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
            let mut rest = text.as_str();
            while let Some(at) = rest.find("pregon_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_count"))
                    .or_else(|| name.strip_suffix("_sum"))
                    .unwrap_or(&name);
                if base != "pregon_" && !base.starts_with("pregon_overview") {
                    assert!(
                        known.iter().any(|k| k == base),
                        "{file} uses {name}, which pregon does not export"
                    );
                }
                rest = &rest[at + name.len().max(1)..];
            }
        }
    }
}
