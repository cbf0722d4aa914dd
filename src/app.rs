//! Wiring: connects the adapters once per process and offers the operations that must keep
//! PostgreSQL and Redis in step (registering senders and templates, recording consent).

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::config::{Config, ConfigError, Derived};
use crate::domain::decision::{ConsentAction, SenderStatus, TemplateStatus};
use crate::domain::tier::Tier;
use crate::metrics::Metrics;
use crate::queue::{self, Broker, Names, Publisher, QueueError};
use crate::state::{SenderMirror, State, StateError};
use crate::store::webhooks::{TemplateField, TemplateUpdated};
use crate::store::{
    self, ConsentEvent, MessageWriter, Sender, StoreError, Template, WriterConfig, WriterHandle,
};
use crate::whatsapp::{ClientConfig, CloudApi};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Client(#[from] crate::whatsapp::ClientError),
    #[error("{0}")]
    Invalid(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Sealing(#[from] crate::sealing::SealError),
}

/// How long a starting process waits for another one rebuilding Redis's copy before it starts
/// anyway (its readers hold until the copy is whole).
const STARTUP_COPY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Everything a process talks to, connected once and shared.
#[derive(Clone)]
pub struct Services {
    pub config: Arc<Config>,
    pub derived: Arc<Derived>,
    pub pool: PgPool,
    pub state: State,
    /// The consumers' connection (reconnected by itself after the broker went away).
    pub amqp: Broker,
    pub publisher: Publisher,
    pub writer: MessageWriter,
    /// Committed jobs on their way to RabbitMQ, published together (`enqueue::JobHandoff`).
    pub jobs: crate::enqueue::JobHandoff,
    pub names: Names,
    pub catalog: Catalog,
    pub cloud: CloudApi,
    pub metrics: Metrics,
}

/// Handles a process keeps to shut down in order.
pub struct Background {
    pub writer: WriterHandle,
}

impl Services {
    /// Connects to PostgreSQL (creating and migrating the database if needed), Redis and
    /// RabbitMQ (declaring the base topology).
    pub async fn connect(
        config: Config,
        process: &str,
    ) -> Result<(Services, Background), AppError> {
        let derived = config.derived()?;
        if !derived.keyring.seals() {
            tracing::warn!(
                "no master key (PREGON_SECRET_KEY or PREGON_SECRET_KEY_FILE): access tokens and signing secrets are stored in the clear"
            );
        }
        store::ensure_database(&config.database_url).await?;
        let pool = store::connect(&config.database_url, config.database_max_connections).await?;
        store::migrate(&pool).await?;
        let state = State::connect(&config.redis_url, &config.redis_prefix).await?;
        let names = Names {
            ns: config.amqp_namespace.clone(),
        };
        // Consumers and publishers on connections of their own: a publisher blocked by flow
        // control must not stall the acks that would relieve it.
        let amqp = Broker::connect(
            &config.amqp_url,
            &format!("pregon-{process}"),
            Some((names.clone(), derived.delay_steps.clone())),
        )
        .await?;
        let publishing =
            Broker::connect(&config.amqp_url, &format!("pregon-{process}-publish"), None).await?;
        let publisher = Publisher::new(publishing, 4, config.publish_timeout.0).await?;
        let (writer, writer_handle) = MessageWriter::spawn(
            pool.clone(),
            WriterConfig {
                batch_size: config.write_batch_size,
                linger: config.write_linger.0,
            },
        );
        let cloud = CloudApi::new(&ClientConfig {
            base_url: config.whatsapp_base_url.clone(),
            api_version: config.whatsapp_api_version.clone(),
            timeout: config.http_timeout.0,
            connect_timeout: config.http_connect_timeout.0,
            max_idle_per_host: config.http_max_idle_per_host,
        })?;
        let catalog = Catalog::new(
            pool.clone(),
            derived.keyring.clone(),
            config.sender_refresh.0,
        );
        catalog.refresh().await?;
        let jobs = crate::enqueue::JobHandoff::spawn(
            publisher.clone(),
            writer.clone(),
            names.send_exchange(),
            config.job_chunk,
        );
        let services = Services {
            jobs,
            config: Arc::new(config),
            derived: Arc::new(derived),
            pool,
            state,
            amqp,
            publisher,
            writer,
            names,
            catalog,
            cloud,
            metrics: Metrics::new(),
        };
        // Redis may have come back empty since the last run: nothing reads it until it is whole.
        crate::state_copy::ensure(&services, STARTUP_COPY_WAIT).await?;
        Ok((
            services,
            Background {
                writer: writer_handle,
            },
        ))
    }

    /// Registers or updates a sender: PostgreSQL, the Redis mirror the worker decides on, and
    /// its lanes in RabbitMQ, before answering.
    pub async fn register_sender(&self, sender: Sender) -> Result<Sender, AppError> {
        if !(1..=1000).contains(&sender.mps) {
            return Err(AppError::Invalid("mps must be 1 to 1000".into()));
        }
        let saved = store::upsert_sender(&self.pool, &self.derived.keyring, &sender).await?;
        self.mirror_sender(&saved).await?;
        let channel = self
            .amqp
            .connection()
            .create_channel()
            .await
            .map_err(QueueError::from)?;
        queue::declare_sender(&channel, &self.names, &saved.phone_number_id).await?;
        let _ = channel.close(200, "done".into()).await;
        self.catalog.put_sender(saved.clone());
        Ok(saved)
    }

    pub async fn mirror_sender(&self, sender: &Sender) -> Result<(), StateError> {
        self.state
            .mirror_sender(
                &sender.phone_number_id,
                &SenderMirror {
                    status: sender.status.clone(),
                    quality: sender.quality,
                    paused: sender.paused,
                },
            )
            .await
    }

    /// Pauses or resumes a sender in PostgreSQL and Redis; its messages stay queued.
    pub async fn set_sender_paused(
        &self,
        phone_number_id: &str,
        paused: bool,
        reason: Option<&str>,
        source: store::PauseSource,
    ) -> Result<(), AppError> {
        store::set_sender_paused(&self.pool, phone_number_id, paused, reason, source).await?;
        self.reload_sender(phone_number_id).await?;
        self.metrics
            .sender_paused
            .with_label_values(&[phone_number_id])
            .set(i64::from(paused));
        Ok(())
    }

    /// Rereads a sender changed in PostgreSQL into the catalog and the Redis mirror.
    async fn reload_sender(
        &self,
        phone_number_id: &str,
    ) -> Result<Option<std::sync::Arc<Sender>>, AppError> {
        self.catalog.refresh().await?;
        let sender = self.catalog.sender(phone_number_id).await?;
        if let Some(sender) = &sender {
            self.mirror_sender(sender).await?;
        }
        Ok(sender)
    }

    pub async fn register_template(&self, template: Template) -> Result<(), AppError> {
        store::upsert_template(&self.pool, &template).await?;
        self.state
            .mirror_template(&template.name, &template.language, template.status.as_str())
            .await?;
        self.catalog.put_template(template);
        Ok(())
    }

    /// Appends consent events to the log, then mirrors them to Redis, before returning: a
    /// change is visible to the worker before the caller hears back.
    /// Changes a template's status, quality or category in the registry (with its history), in
    /// Redis and in this process's catalog at once, as Meta reported it by webhook (`at` the
    /// entry's time) or by a send's answer (132015, 132016; `at` None: now). A change older than
    /// the one the field holds is not applied.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_template(
        &self,
        name: &str,
        language: &str,
        field: TemplateField,
        value: &str,
        why: Option<&str>,
        template_id: Option<&str>,
        at: Option<i64>,
    ) -> Result<TemplateUpdated, AppError> {
        let updated = store::webhooks::update_template_field(
            &self.pool,
            name,
            language,
            field,
            value,
            why,
            template_id,
            meta_time(at),
        )
        .await?;
        if let TemplateUpdated::Applied(template) = &updated {
            if field == TemplateField::Status && value == TemplateStatus::Paused.as_str() {
                // The first probe of a paused template comes one recheck after the pause.
                let every = self.config.template_pause_recheck.0;
                self.state
                    .claim_template_probe(name, language, every)
                    .await?;
            }
            self.state
                .mirror_template(&template.name, &template.language, template.status.as_str())
                .await?;
            self.catalog.put_template(template.clone());
        }
        Ok(updated)
    }

    pub async fn record_consent(&self, events: &[ConsentEvent]) -> Result<Vec<i64>, AppError> {
        let mut mirror = Vec::with_capacity(events.len());
        for e in events {
            let action = ConsentAction::parse(&e.action)
                .ok_or_else(|| AppError::Invalid(format!("unknown consent action {}", e.action)))?;
            mirror.push((e.recipient.clone(), e.purpose.clone(), action));
        }
        let ids = store::append_consent(&self.pool, events).await?;
        self.state.mirror_consent(&mirror).await?;
        Ok(ids)
    }

    /// Suppresses a recipient Meta reports as not on WhatsApp, in PostgreSQL and Redis.
    pub async fn suppress(&self, recipient: &str, evidence: &str) -> Result<(), AppError> {
        store::webhooks::suppress(&self.pool, recipient, "not_on_whatsapp", evidence).await?;
        self.state.set_suppressed(recipient, true).await?;
        Ok(())
    }

    /// Lifts a suppression; returns whether there was one.
    pub async fn unsuppress(&self, recipient: &str) -> Result<bool, AppError> {
        let had = store::webhooks::unsuppress(&self.pool, recipient).await?;
        self.state.set_suppressed(recipient, false).await?;
        Ok(had)
    }

    /// Applies what Meta reported about a number to PostgreSQL and the Redis mirror the worker
    /// decides on, before returning: the next decision follows it. Returns how many reported
    /// fields were left out as older than what they hold.
    pub async fn apply_sender_health(
        &self,
        phone_number_id: &str,
        change: &crate::domain::webhook::SenderChange,
    ) -> Result<u32, AppError> {
        let stale = store::webhooks::update_sender_health(
            &self.pool,
            phone_number_id,
            change.quality.as_deref(),
            change.status.as_deref(),
            change.tier.map(Tier::limit),
            change.mps,
            meta_time(change.at),
        )
        .await?;
        if let Some(sender) = self.reload_sender(phone_number_id).await? {
            let unable = sender.paused || sender.status != SenderStatus::Connected;
            self.metrics
                .sender_paused
                .with_label_values(&[phone_number_id])
                .set(i64::from(unable));
            tracing::info!(sender = phone_number_id, quality = %sender.quality, status = %sender.status,
                tier = sender.tier, mps = sender.mps, "sender health updated from a webhook");
        }
        Ok(stale)
    }

    /// The tier counter and limit of a sender under the configured scope.
    pub fn tier_counter(&self, sender: &Sender) -> (String, Tier) {
        (
            self.config
                .tier_scope
                .counter_id(&sender.phone_number_id, &sender.business_portfolio_id),
            Tier::from_limit(sender.tier),
        )
    }

    /// Readiness: all three services answer.
    pub async fn ready(&self) -> Result<(), String> {
        for (service, answer) in self.dependencies().await {
            answer.map_err(|e| format!("{service}: {e}"))?;
        }
        Ok(())
    }

    /// Each backing service, and whether it answers this process now (within two seconds).
    pub async fn dependencies(&self) -> [(&'static str, Result<(), String>); 3] {
        const WITHIN: std::time::Duration = std::time::Duration::from_secs(2);
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        let postgresql = match tokio::time::timeout(WITHIN, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 2 s".to_string()),
        };
        let redis = match tokio::time::timeout(WITHIN, self.state.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 2 s".to_string()),
        };
        let rabbitmq = if !self.amqp.is_connected() {
            Err("not connected".to_string())
        } else if !self.publisher.is_ready() {
            Err("publishing connection down or blocked".to_string())
        } else {
            Ok(())
        };
        [
            ("postgresql", postgresql),
            ("redis", redis),
            ("rabbitmq", rabbitmq),
        ]
    }
}

/// A shutdown signal every long-running task watches.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    pub async fn wait(&mut self) {
        while !*self.rx.borrow_and_update() {
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// When Meta made a change, from its webhook's seconds; now for what pregon learned itself (or
/// an entry without a usable time).
fn meta_time(at: Option<i64>) -> chrono::DateTime<chrono::Utc> {
    at.and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
        .unwrap_or_else(chrono::Utc::now)
}
