//! Running the long-lived processes: API and workers together (`serve`) or apart.

use crate::app::{AppError, Services, Shutdown, shutdown_channel, termination_signal};
use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
}

/// Runs the chosen roles until SIGTERM or Ctrl-C, then drains: the API stops taking requests,
/// workers finish in-flight sends, pending writes are flushed, and only then does it return.
pub async fn run(config: Config, roles: Roles) -> Result<(), AppError> {
    let name = match (roles.api, roles.worker) {
        (true, true) => "serve",
        (true, false) => "api",
        _ => "worker",
    };
    let (services, background) = Services::connect(config, name).await?;
    let (trigger, shutdown) = shutdown_channel();
    let mut tasks = Vec::new();
    let listener = tokio::net::TcpListener::bind(&services.config.listen).await?;
    if !services.config.metrics_listen.is_empty() {
        // Prometheus scrapes a listener of its own, which need not be exposed with the API.
        let metrics = tokio::net::TcpListener::bind(&services.config.metrics_listen).await?;
        tracing::info!(address = %services.config.metrics_listen, "metrics listening");
        let router = crate::api::metrics_router(services.clone());
        let mut signal = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(metrics, router)
                .with_graceful_shutdown(async move { signal.wait().await })
                .await;
        }));
    }
    if roles.api {
        tracing::info!(address = %services.config.listen, "API listening");
        tasks.push(tokio::spawn(serve_api(
            services.clone(),
            listener,
            shutdown.clone(),
        )));
    } else {
        // A worker alone still answers /metrics, /healthz and /readyz for Prometheus and probes.
        tracing::info!(address = %services.config.listen, "metrics listening");
        let router = crate::api::ops_router(services.clone());
        let mut signal = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { signal.wait().await })
                .await;
        }));
    }
    if roles.worker {
        let services = services.clone();
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = crate::worker::run(services, shutdown).await {
                tracing::error!(error = %e, "worker failed");
            }
        }));
    }
    termination_signal().await;
    tracing::info!("shutting down: draining in-flight work");
    trigger.trigger();
    for task in tasks {
        let _ = task.await;
    }
    drop(services);
    background.writer.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

pub async fn serve_api(
    services: Services,
    listener: tokio::net::TcpListener,
    mut shutdown: Shutdown,
) {
    let keeper = tokio::spawn(crate::state_copy::keep(services.clone(), shutdown.clone()));
    // The peer address counts failed console sign-ins per client.
    let router =
        crate::api::router(services).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "API server failed");
    }
    let _ = keeper.await;
}

/// An in-process stack for `demo` and `bench`: services connected, a worker running.
pub struct LocalStack {
    pub services: Services,
    background: crate::app::Background,
    worker: Option<(crate::app::ShutdownTrigger, tokio::task::JoinHandle<()>)>,
}

impl LocalStack {
    /// Connects to the services under a fresh namespace, wiping what an earlier run left there.
    pub async fn fresh(config: Config, name: &str) -> Result<LocalStack, AppError> {
        crate::store::ensure_database(&config.database_url).await?;
        let pool = crate::store::connect(&config.database_url, 2).await?;
        empty_schema(&pool).await?;
        pool.close().await;
        let (services, background) = Services::connect(config, name).await?;
        services.state.delete_all().await?;
        crate::state_copy::ensure(&services, std::time::Duration::from_secs(60)).await?;
        delete_queues(&services).await?;
        let setup = services
            .amqp
            .connection()
            .create_channel()
            .await
            .map_err(crate::queue::QueueError::from)?;
        crate::queue::declare_base(&setup, &services.names, &services.derived.delay_steps).await?;
        let _ = setup.close(200, "done".into()).await;
        Ok(LocalStack {
            services,
            background,
            worker: None,
        })
    }

    pub fn start_worker(&mut self) {
        let (trigger, signal) = shutdown_channel();
        let services = self.services.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = crate::worker::run(services, signal).await {
                tracing::error!(error = %e, "worker failed");
            }
        });
        self.worker = Some((trigger, handle));
    }

    /// Removes what a run left in a namespace once its processes have stopped: connects to it as
    /// it is and clears it, without the wipe, migration and state rebuild of [`LocalStack::fresh`].
    pub async fn remove(config: Config) -> Result<(), AppError> {
        let (services, background) = Services::connect(config, "cleanup").await?;
        LocalStack {
            services,
            background,
            worker: None,
        }
        .clear()
        .await
    }

    /// Stops, then leaves nothing behind in the namespace: its Redis keys, its queues and its
    /// tables (the database stays, empty). A benchmark's million rows and keys otherwise weigh on
    /// the services it shares with everything else until the next run wipes them.
    pub async fn clear(self) -> Result<(), AppError> {
        let services = self.services.clone();
        self.stop().await;
        services.state.delete_all().await?;
        delete_queues(&services).await?;
        empty_schema(&services.pool).await
    }

    pub async fn stop(mut self) {
        if let Some((trigger, handle)) = self.worker.take() {
            trigger.trigger();
            let _ = handle.await;
        }
        self.background.writer.close().await;
    }
}

/// Drops every table of the database (it stays, empty).
async fn empty_schema(pool: &sqlx::PgPool) -> Result<(), AppError> {
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .execute(pool)
        .await
        .map_err(crate::store::StoreError::from)?;
    Ok(())
}

/// Deletes the namespace's queues, those of every sender id `demo` and `bench` use included.
async fn delete_queues(services: &Services) -> Result<(), AppError> {
    let senders: Vec<String> = (0..200).map(local_sender_id).collect();
    crate::queue::delete_namespace(
        &services.amqp.connection(),
        &services.names,
        &senders,
        &services.derived.delay_steps,
    )
    .await?;
    Ok(())
}

/// The sender ids `demo` and `bench` use (and `LocalStack::fresh` cleans up).
pub fn local_sender_id(i: usize) -> String {
    format!("{}{i:03}", 1_065_550_000)
}
