//! Configuration: `PREGON_*` environment variables over an optional TOML file over defaults that
//! point at services on localhost.
//!
//! The struct is flat on purpose: every setting has exactly one name, `foo_bar` in the file and
//! `PREGON_FOO_BAR` in the environment, and [`SETTINGS`] documents each one for `--help`.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::campaign::RateCard;
use crate::domain::duration::parse_duration;
use crate::domain::policy::Limits;
use crate::domain::retry::{BackoffPolicy, parse_steps};
use crate::domain::tier::{Tier, TierScope, parse_ladder};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// A duration written the way people write them: `500ms`, `2s`, `10m`, `24h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        parse_duration(&raw)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

fn days(n: u64) -> HumanDuration {
    secs(n * 86_400)
}

fn secs(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(n))
}

/// `Debug` prints the redacted form: a logged or panicked `Config` never shows a secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database_url: String,
    pub database_max_connections: u32,
    pub redis_url: String,
    pub redis_prefix: String,
    pub amqp_url: String,
    pub amqp_namespace: String,
    pub listen: String,
    pub metrics_listen: String,
    pub whatsapp_base_url: String,
    pub whatsapp_api_version: String,
    pub http_timeout: HumanDuration,
    pub http_connect_timeout: HumanDuration,
    pub http_max_idle_per_host: usize,
    pub tier_scope: TierScope,
    pub tier_ladder: String,
    pub default_mps: u32,
    pub pair_rate_interval: HumanDuration,
    pub pair_rate_burst: u32,
    pub max_attempts: u32,
    pub max_throttles: u32,
    pub retry_base: HumanDuration,
    pub retry_cap: HumanDuration,
    pub delay_steps: String,
    pub throttle_cooldown: HumanDuration,
    pub marketing_pause_on_spam: HumanDuration,
    pub prefetch: u16,
    pub job_chunk: usize,
    pub sender_concurrency: usize,
    pub hold_recheck: HumanDuration,
    pub lease_ttl: HumanDuration,
    pub sender_refresh: HumanDuration,
    pub idempotency_ttl: HumanDuration,
    pub write_batch_size: usize,
    pub write_linger: HumanDuration,
    pub publish_timeout: HumanDuration,
    pub shutdown_grace: HumanDuration,
    pub batch_max_items: usize,
    pub max_body_bytes: usize,
    pub import_max_bytes: u64,
    pub api_key_rate: u32,
    pub api_key_burst: u32,
    pub api_max_in_flight: usize,
    pub api_request_timeout: HumanDuration,
    pub suppress_unreachable: bool,
    pub webhook_verify_token: String,
    pub webhook_app_secrets: String,
    pub secret_key: String,
    pub secret_key_file: String,
    pub retain_message_bodies: HumanDuration,
    pub retain_webhook_payloads: HumanDuration,
    pub retain_inbound_messages: HumanDuration,
    pub retain_delivery_logs: HumanDuration,
    pub retain_import_errors: HumanDuration,
    pub retain_refusals: HumanDuration,
    pub purge_interval: HumanDuration,
    pub webhook_max_body_bytes: usize,
    pub opt_out_keywords: String,
    pub opt_out_confirmation: String,
    pub background_poll: HumanDuration,
    pub callback_timeout: HumanDuration,
    pub callback_max_age: HumanDuration,
    pub callback_concurrency: usize,
    pub callback_retry_base: HumanDuration,
    pub callback_allow_http: bool,
    pub callback_allow_private: bool,
    pub template_pause_recheck: HumanDuration,
    pub campaign_poll: HumanDuration,
    pub campaign_window: u32,
    pub campaign_chunk: u32,
    pub rate_card: String,
    pub console_secure_cookies: bool,
    pub console_session_idle: HumanDuration,
    pub console_session_lifetime: HumanDuration,
    pub log_format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: "postgres://postgres@127.0.0.1:5432/pregon".into(),
            database_max_connections: 16,
            redis_url: "redis://127.0.0.1:6379/".into(),
            redis_prefix: "pregon".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            amqp_namespace: "pregon".into(),
            listen: "127.0.0.1:8080".into(),
            metrics_listen: String::new(),
            whatsapp_base_url: "http://127.0.0.1:8090".into(),
            whatsapp_api_version: "v26.0".into(),
            http_timeout: secs(10),
            http_connect_timeout: secs(2),
            http_max_idle_per_host: 256,
            tier_scope: TierScope::PhoneNumber,
            tier_ladder: "250,1K,10K,100K,unlimited".into(),
            default_mps: 80,
            pair_rate_interval: secs(6),
            pair_rate_burst: 10,
            max_attempts: 8,
            max_throttles: 50,
            retry_base: secs(1),
            retry_cap: secs(600),
            delay_steps: "1s,5s,30s,2m,10m,1h".into(),
            throttle_cooldown: secs(30),
            marketing_pause_on_spam: secs(600),
            prefetch: 64,
            job_chunk: 32,
            sender_concurrency: 64,
            hold_recheck: secs(2),
            lease_ttl: secs(15),
            sender_refresh: secs(2),
            idempotency_ttl: secs(86_400),
            write_batch_size: 1000,
            write_linger: HumanDuration(Duration::from_millis(2)),
            publish_timeout: secs(10),
            shutdown_grace: secs(30),
            batch_max_items: 1000,
            max_body_bytes: 4 * 1024 * 1024,
            import_max_bytes: 512 * 1024 * 1024,
            api_key_rate: 200,
            api_key_burst: 400,
            api_max_in_flight: 1024,
            api_request_timeout: secs(30),
            suppress_unreachable: true,
            webhook_verify_token: String::new(),
            webhook_app_secrets: String::new(),
            secret_key: String::new(),
            secret_key_file: String::new(),
            retain_message_bodies: days(30),
            retain_webhook_payloads: days(30),
            retain_inbound_messages: days(90),
            retain_delivery_logs: days(30),
            retain_import_errors: days(30),
            retain_refusals: days(30),
            purge_interval: secs(600),
            webhook_max_body_bytes: 4 * 1024 * 1024,
            opt_out_keywords: crate::domain::webhook::DEFAULT_OPT_OUT_KEYWORDS.into(),
            opt_out_confirmation: String::new(),
            background_poll: HumanDuration(Duration::from_millis(200)),
            callback_timeout: secs(10),
            callback_max_age: secs(86_400),
            callback_concurrency: 32,
            callback_retry_base: secs(5),
            callback_allow_http: false,
            callback_allow_private: false,
            template_pause_recheck: secs(60),
            campaign_poll: HumanDuration(Duration::from_millis(250)),
            campaign_window: 20_000,
            campaign_chunk: 2_000,
            rate_card: String::new(),
            console_secure_cookies: true,
            console_session_idle: secs(12 * 3600),
            console_session_lifetime: secs(7 * 86_400),
            log_format: "text".into(),
        }
    }
}

/// The example rate card kept in the repository, used when `rate_card` names no file.
const BUILT_IN_RATE_CARD: &str = include_str!("../deploy/rate-card.csv");

/// Every setting with what it does; `pregon --help` prints this list with the defaults.
pub const SETTINGS: &[(&str, &str)] = &[
    ("database_url", "PostgreSQL connection URL"),
    (
        "database_max_connections",
        "PostgreSQL pool size per process",
    ),
    ("redis_url", "Redis connection URL"),
    (
        "redis_prefix",
        "prefix of every Redis key (isolates installations and tests)",
    ),
    (
        "amqp_url",
        "RabbitMQ connection URL; the nodes of a cluster as several URLs separated by commas",
    ),
    (
        "amqp_namespace",
        "prefix of every RabbitMQ exchange and queue name",
    ),
    ("listen", "address of the HTTP API (serve, api)"),
    (
        "metrics_listen",
        "address of a listener serving only /metrics, which then leaves the API's (empty: /metrics on listen)",
    ),
    (
        "whatsapp_base_url",
        "Cloud API base URL: https://graph.facebook.com in production, the simulator by default",
    ),
    ("whatsapp_api_version", "Graph API version in the send URL"),
    ("http_timeout", "timeout of one Cloud API request"),
    (
        "http_connect_timeout",
        "connect timeout of the Cloud API client",
    ),
    (
        "http_max_idle_per_host",
        "idle keep-alive connections kept to the Cloud API",
    ),
    (
        "tier_scope",
        "whose recipients share a messaging limit: phone_number or business_portfolio",
    ),
    (
        "tier_ladder",
        "messaging-limit ladder, e.g. 250,1K,10K,100K,unlimited or 250,2K,10K,100K,unlimited",
    ),
    (
        "default_mps",
        "messages-per-second cap of a sender registered without one",
    ),
    (
        "pair_rate_interval",
        "minimum spacing of messages to one recipient from one number",
    ),
    (
        "pair_rate_burst",
        "messages to one recipient allowed back to back before spacing applies",
    ),
    (
        "max_attempts",
        "send attempts before a transiently failing message is dead-lettered",
    ),
    (
        "max_throttles",
        "throttle answers (130429/131056) tolerated per message before it is dead-lettered",
    ),
    (
        "retry_base",
        "first retry delay; doubles per attempt, with jitter",
    ),
    ("retry_cap", "longest retry delay"),
    (
        "delay_steps",
        "TTL delay queues used for retries and deferrals",
    ),
    (
        "throttle_cooldown",
        "after 130429 the sender's cap halves at most once per this; it then grows back a twentieth of its cap per second",
    ),
    (
        "marketing_pause_on_spam",
        "how long marketing on a sender holds after 131048",
    ),
    ("prefetch", "unacknowledged deliveries per lane consumer"),
    (
        "job_chunk",
        "send jobs of one lane that one broker message carries at most (1: a message per job); a lane consumer holds at most prefetch × job_chunk jobs",
    ),
    (
        "sender_concurrency",
        "Cloud API requests in flight per sender",
    ),
    (
        "hold_recheck",
        "how often a held lane (sender paused, quality RED) is looked at again",
    ),
    (
        "lease_ttl",
        "how long a worker owns a sender without renewing; a dead worker's senders move after this",
    ),
    (
        "sender_refresh",
        "how often a worker looks for new or changed senders",
    ),
    (
        "idempotency_ttl",
        "how long an Idempotency-Key is remembered",
    ),
    (
        "write_batch_size",
        "most rows in one batched PostgreSQL write",
    ),
    (
        "write_linger",
        "how long a PostgreSQL batch waits for company",
    ),
    (
        "publish_timeout",
        "longest wait for a RabbitMQ publisher confirm",
    ),
    (
        "shutdown_grace",
        "longest drain on SIGTERM before in-flight work is left to redelivery",
    ),
    (
        "batch_max_items",
        "most messages in one /messages/batch request",
    ),
    ("max_body_bytes", "largest accepted HTTP request body"),
    (
        "import_max_bytes",
        "largest contact CSV one import accepts (413 beyond it)",
    ),
    (
        "api_key_rate",
        "requests per second each API key may make, per API process (0: no limit; 429 beyond it)",
    ),
    (
        "api_key_burst",
        "requests an API key may make at once after being idle (at least api_key_rate)",
    ),
    (
        "api_max_in_flight",
        "requests one API process works on at once (503 overloaded beyond it)",
    ),
    (
        "api_request_timeout",
        "longest a request is answered in before 503 request_timeout (uploads excepted)",
    ),
    (
        "suppress_unreachable",
        "suppress recipients Meta reports as not on WhatsApp (131026)",
    ),
    (
        "webhook_verify_token",
        "token Meta's GET /webhooks/whatsapp handshake must present (empty: refuse every handshake)",
    ),
    (
        "webhook_app_secrets",
        "app secrets that may sign webhooks, comma-separated (several during a rotation; empty: refuse every POST)",
    ),
    (
        "secret_key",
        "master keys that seal access tokens and signing secrets at rest: 64 hex digits each, comma-separated, the current first (empty: stored in the clear)",
    ),
    (
        "secret_key_file",
        "file holding master keys as secret_key does, one per line, read after secret_key's",
    ),
    (
        "retain_message_bodies",
        "how long the body of a message in a final state is kept (0s: for ever)",
    ),
    (
        "retain_webhook_payloads",
        "how long processed webhook events are kept, raw (0s: for ever)",
    ),
    (
        "retain_inbound_messages",
        "how long inbound messages are kept (0s: for ever; at least 24h, service windows are read from them)",
    ),
    (
        "retain_delivery_logs",
        "how long applied delivery statuses and finished callback deliveries are kept (0s: for ever)",
    ),
    (
        "retain_import_errors",
        "how long the row errors of a contact import are kept (0s: for ever)",
    ),
    (
        "retain_refusals",
        "how long refused ingest requests are kept, with their payload (0s: for ever)",
    ),
    (
        "purge_interval",
        "how often each worker purges what is kept past its time, in batches of 1,000",
    ),
    (
        "webhook_max_body_bytes",
        "largest accepted webhook body (Meta sends up to 3 MB)",
    ),
    (
        "opt_out_keywords",
        "inbound texts that record a marketing opt-out, comma-separated, compared without case or accents",
    ),
    (
        "opt_out_confirmation",
        "text sent back after an opt-out keyword (empty: send nothing)",
    ),
    (
        "background_poll",
        "how often idle background tasks look for webhook events, outbox events and due callbacks",
    ),
    ("callback_timeout", "timeout of one HTTP callback delivery"),
    (
        "callback_allow_http",
        "accept plain http:// callback URLs (development only; https otherwise)",
    ),
    (
        "callback_allow_private",
        "let callbacks reach loopback, private, link-local and metadata addresses (development only)",
    ),
    (
        "callback_max_age",
        "how long a failing callback delivery is retried before it is given up",
    ),
    (
        "callback_concurrency",
        "HTTP callback deliveries in flight per process",
    ),
    (
        "callback_retry_base",
        "first callback retry delay; doubles per attempt up to an hour, with jitter",
    ),
    (
        "template_pause_recheck",
        "how often messages of a PAUSED template are looked at again; one of them probes the Cloud API each time",
    ),
    (
        "campaign_poll",
        "how often a campaign runner plans, hands over, and checks its senders' health",
    ),
    (
        "campaign_window",
        "most messages of one campaign waiting in RabbitMQ at once (pause and cancel act on the rest in PostgreSQL)",
    ),
    (
        "campaign_chunk",
        "recipients planned or handed over per step",
    ),
    (
        "rate_card",
        "CSV of prices per country and category for estimates (empty: deploy/rate-card.csv as built in)",
    ),
    (
        "console_secure_cookies",
        "mark console cookies Secure (sent over HTTPS only); false only for plain-HTTP development",
    ),
    (
        "console_session_idle",
        "a console session unused this long signs out",
    ),
    (
        "console_session_lifetime",
        "a console session ends this long after sign-in, used or not",
    ),
    ("log_format", "text or json"),
];

/// What a webhook app secret given sealed (`pregon secrets seal`) is sealed for.
pub const APP_SECRET_CONTEXT: &str = "webhook_app_secret";

/// The settings derived from the raw ones, validated once at start-up.
#[derive(Debug, Clone)]
pub struct Derived {
    pub ladder: Vec<Tier>,
    /// Prices per delivered template for campaign estimates.
    pub rate_card: RateCard,
    /// App secrets that may sign webhooks.
    pub app_secrets: Vec<Vec<u8>>,
    /// Opt-out keywords, folded for comparison.
    pub opt_out_keywords: Vec<String>,
    pub delay_steps: Vec<Duration>,
    /// The limits of the post-send policy (budgets, backoff, waits).
    pub post_send: Limits,
    /// The master keys secrets are sealed with at rest.
    pub keyring: crate::sealing::Keyring,
}

impl Config {
    /// What callbacks may reach besides public https endpoints.
    pub fn callback_policy(&self) -> crate::domain::callback::CallbackPolicy {
        crate::domain::callback::CallbackPolicy {
            allow_http: self.callback_allow_http,
            allow_private: self.callback_allow_private,
        }
    }

    /// Defaults, then the file (if any), then `PREGON_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let display = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: display.clone(),
                source,
            })?;
            let overrides: toml::Table = text.parse().map_err(|source| ConfigError::Parse {
                path: display.clone(),
                source: Box::new(source),
            })?;
            for (key, value) in overrides {
                if !table.contains_key(&key) {
                    return Err(ConfigError::Invalid(format!(
                        "{display}: unknown setting \"{key}\""
                    )));
                }
                table.insert(key, value);
            }
        }
        for (name, raw) in env {
            let Some(key) = name.strip_prefix("PREGON_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if key == "config" {
                continue;
            }
            let Some(current) = table.get(&key) else {
                return Err(ConfigError::Env {
                    name,
                    message: "unknown setting (see pregon --help)".into(),
                });
            };
            let value =
                match current {
                    toml::Value::Integer(_) => {
                        raw.trim().parse().map(toml::Value::Integer).map_err(|_| {
                            ConfigError::Env {
                                name: name.clone(),
                                message: format!("\"{raw}\" is not a whole number"),
                            }
                        })?
                    }
                    toml::Value::Boolean(_) => {
                        raw.trim().parse().map(toml::Value::Boolean).map_err(|_| {
                            ConfigError::Env {
                                name: name.clone(),
                                message: format!("\"{raw}\" is not true or false"),
                            }
                        })?
                    }
                    _ => toml::Value::String(raw),
                };
            table.insert(key, value);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        config.derived()?;
        Ok(config)
    }

    pub fn derived(&self) -> Result<Derived, ConfigError> {
        let ladder = parse_ladder(&self.tier_ladder)
            .map_err(|e| ConfigError::Invalid(format!("tier_ladder: {e}")))?;
        let delay_steps = parse_steps(&self.delay_steps)
            .map_err(|e| ConfigError::Invalid(format!("delay_steps: {e}")))?;
        if self.default_mps == 0 || self.default_mps > 1000 {
            return Err(ConfigError::Invalid("default_mps must be 1 to 1000".into()));
        }
        if self.prefetch == 0 || self.sender_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "prefetch and sender_concurrency must be positive".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(
                "log_format must be text or json".into(),
            ));
        }
        let inbound = self.retain_inbound_messages.0;
        if !inbound.is_zero() && inbound < Duration::from_secs(86_400) {
            return Err(ConfigError::Invalid(
                "retain_inbound_messages must be 0s (for ever) or at least 24h: service windows are read from them".into(),
            ));
        }
        if self.purge_interval.0.is_zero() {
            return Err(ConfigError::Invalid(
                "purge_interval must be positive".into(),
            ));
        }
        if self.api_max_in_flight == 0 || self.api_request_timeout.0.is_zero() {
            return Err(ConfigError::Invalid(
                "api_max_in_flight and api_request_timeout must be positive".into(),
            ));
        }
        if self.callback_concurrency == 0 || self.background_poll.0.is_zero() {
            return Err(ConfigError::Invalid(
                "callback_concurrency and background_poll must be positive".into(),
            ));
        }
        if self.job_chunk == 0 || self.job_chunk > 1000 {
            return Err(ConfigError::Invalid("job_chunk must be 1 to 1000".into()));
        }
        if self.campaign_window == 0 || self.campaign_chunk == 0 || self.campaign_poll.0.is_zero() {
            return Err(ConfigError::Invalid(
                "campaign_window, campaign_chunk and campaign_poll must be positive".into(),
            ));
        }
        let rate_card_text = if self.rate_card.is_empty() {
            BUILT_IN_RATE_CARD.to_string()
        } else {
            std::fs::read_to_string(&self.rate_card)
                .map_err(|e| ConfigError::Invalid(format!("rate_card {}: {e}", self.rate_card)))?
        };
        let rate_card = RateCard::parse(&rate_card_text)
            .map_err(|e| ConfigError::Invalid(format!("rate_card: {e}")))?;
        let keyring =
            crate::sealing::Keyring::from_settings(&self.secret_key, &self.secret_key_file)
                .map_err(|e| ConfigError::Invalid(format!("secret_key: {e}")))?;
        Ok(Derived {
            rate_card,
            ladder,
            app_secrets: self
                .webhook_app_secrets
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    keyring
                        .open(s, APP_SECRET_CONTEXT)
                        .map(String::into_bytes)
                        .map_err(|e| ConfigError::Invalid(format!("webhook_app_secrets: {e}")))
                })
                .collect::<Result<_, _>>()?,
            opt_out_keywords: crate::domain::webhook::opt_out_keywords(&self.opt_out_keywords),
            delay_steps,
            keyring,
            post_send: Limits {
                max_attempts: self.max_attempts,
                max_throttles: self.max_throttles,
                backoff: BackoffPolicy {
                    base: self.retry_base.0,
                    cap: self.retry_cap.0,
                },
                template_pause_recheck: self.template_pause_recheck.0,
                hold_recheck: self.hold_recheck.0,
                marketing_pause_on_spam: self.marketing_pause_on_spam.0,
                suppress_unreachable: self.suppress_unreachable,
            },
        })
    }

    /// The settings, their defaults and meanings, for `--help`.
    pub fn settings_help() -> String {
        let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
        let mut out = String::from(
            "Settings (PREGON_<NAME> in the environment, <name> in the TOML file given by --config or PREGON_CONFIG):\n",
        );
        for (name, meaning) in SETTINGS {
            let default = defaults
                .get(*name)
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.push_str(&format!(
                "  PREGON_{:<26} {meaning} [default: {default}]\n",
                name.to_ascii_uppercase()
            ));
        }
        out
    }

    /// The effective configuration with secrets blanked, for `pregon config`.
    pub fn redacted(&self) -> String {
        toml::to_string(&self.blanked()).unwrap_or_default()
    }

    /// A copy with every secret blanked: passwords in URLs, app secrets, the verify token.
    fn blanked(&self) -> Config {
        let mut c = self.clone();
        c.database_url = redact_url(&c.database_url);
        c.redis_url = redact_url(&c.redis_url);
        c.amqp_url = redact_url(&c.amqp_url);
        if !c.webhook_app_secrets.is_empty() {
            c.webhook_app_secrets = "***".into();
        }
        if !c.webhook_verify_token.is_empty() {
            c.webhook_verify_token = "***".into();
        }
        if !c.secret_key.is_empty() {
            c.secret_key = "***".into();
        }
        c
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let blanked = serde_json::to_value(self.blanked()).map_err(|_| std::fmt::Error)?;
        write!(f, "Config {blanked}")
    }
}

/// A URL with the password of its credentials replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => {
                    format!("{}://{}:***{}", &url[..scheme], &creds[..colon], &url[at..])
                }
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_setting_is_documented_and_every_doc_is_a_setting() {
        let table = toml::Table::try_from(Config::default()).unwrap();
        for key in table.keys() {
            assert!(
                SETTINGS.iter().any(|(k, _)| k == key),
                "{key} is not documented"
            );
        }
        for (key, _) in SETTINGS {
            assert!(
                table.contains_key(*key),
                "{key} is documented but not a setting"
            );
        }
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("pregon-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pregon.toml");
        std::fs::write(
            &file,
            "default_mps = 20\nlisten = \"0.0.0.0:9000\"\nretry_base = \"250ms\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[("PREGON_DEFAULT_MPS", "40"), ("HOME", "/root")]),
        )
        .unwrap();
        assert_eq!(c.default_mps, 40);
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.retry_base.0, Duration::from_millis(250));
        assert_eq!(c.redis_prefix, "pregon");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let err = Config::load(None, env(&[("PREGON_DEFAULT_MPS", "fast")])).unwrap_err();
        assert!(err.to_string().contains("PREGON_DEFAULT_MPS"), "{err}");
        let err = Config::load(None, env(&[("PREGON_NO_SUCH", "1")])).unwrap_err();
        assert!(err.to_string().contains("PREGON_NO_SUCH"), "{err}");
        let err = Config::load(None, env(&[("PREGON_TIER_SCOPE", "galaxy")])).unwrap_err();
        assert!(err.to_string().contains("galaxy"), "{err}");
        let err = Config::load(None, env(&[("PREGON_DEFAULT_MPS", "5000")])).unwrap_err();
        assert!(err.to_string().contains("default_mps"), "{err}");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let config = Config {
            database_url: "postgres://pregon:db-secret@h/pregon".into(),
            amqp_url: "amqp://guest:amqp-secret@h:5672/%2f".into(),
            redis_url: "redis://:redis-secret@h:6379".into(),
            webhook_app_secrets: "app-secret".into(),
            webhook_verify_token: "verify-secret".into(),
            ..Config::default()
        };
        let shown = format!("{config:?} {}", config.redacted());
        for secret in [
            "db-secret",
            "amqp-secret",
            "redis-secret",
            "app-secret",
            "verify-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("postgres://pregon:***@h/pregon"), "{shown}");
    }

    #[test]
    fn durations_and_redaction() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert!(parse_duration("2").is_err());
        assert_eq!(HumanDuration(Duration::from_secs(600)).to_string(), "10m");
        assert_eq!(
            redact_url("amqp://guest:guest@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert!(Config::settings_help().contains("PREGON_DEFAULT_MPS"));
    }
}

#[cfg(test)]
mod readme {
    #[test]
    fn the_readme_lists_every_setting() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for (name, _) in super::SETTINGS {
            let var = format!("PREGON_{}", name.to_ascii_uppercase());
            assert!(
                readme.contains(&format!("`{var}`")),
                "README does not list {var}"
            );
        }
    }
}
