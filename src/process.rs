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
    if roles.api {
        let listener = tokio::net::TcpListener::bind(&services.config.listen).await?;
        tracing::info!(address = %services.config.listen, "API listening");
        tasks.push(tokio::spawn(serve_api(
            services.clone(),
            listener,
            shutdown.clone(),
        )));
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
    let _ = background.writer.await;
    tracing::info!("stopped cleanly");
    Ok(())
}

pub async fn serve_api(
    services: Services,
    listener: tokio::net::TcpListener,
    mut shutdown: Shutdown,
) {
    let router = crate::api::router(services);
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "API server failed");
    }
}
