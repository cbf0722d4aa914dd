//! The worker process: takes leases on senders, runs one dispatch loop per owned sender,
//! consumes the direct-ingest queue, runs webhook processing, the event relay and callback
//! deliveries beside them, and keeps lane-depth and tier-usage gauges current.

mod campaigns;
mod ingest;
mod outcomes;
pub mod pacing;
mod sender;
mod share;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::app::{Services, Shutdown, ShutdownTrigger, shutdown_channel};
use crate::domain::Lane;

pub use sender::WorkerError;

struct Running {
    stop: ShutdownTrigger,
    handle: JoinHandle<Result<(), WorkerError>>,
}

/// The lease owner and consumer-tag prefix of this process's worker tasks.
pub fn owner() -> String {
    format!("worker-{}", crate::instance_id())
}

/// The work beside dispatching that only needs PostgreSQL and RabbitMQ: webhook processing, the
/// event relay, HTTP callbacks, the job outbox relay, the dead-letter intake and the retention
/// purge (also run alone by tests about webhooks).
pub fn spawn_event_tasks(services: &Services, stop: &Shutdown) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(crate::webhooks::run(services.clone(), stop.clone())),
        tokio::spawn(crate::events::run_relay(services.clone(), stop.clone())),
        tokio::spawn(crate::events::run_callbacks(services.clone(), stop.clone())),
        tokio::spawn(crate::enqueue::run_outbox_relay(
            services.clone(),
            stop.clone(),
        )),
        tokio::spawn(crate::dead::run_intake(services.clone(), stop.clone())),
        tokio::spawn(crate::privacy::run_purge(services.clone(), stop.clone())),
    ]
}

pub async fn run(services: Services, mut stop: Shutdown) -> Result<(), WorkerError> {
    let owner = owner();
    let config = services.config.clone();
    let ingest = tokio::spawn(ingest::run(services.clone(), stop.clone()));
    let mut background = spawn_event_tasks(&services, &stop);
    background.push(tokio::spawn(crate::state_copy::keep(
        services.clone(),
        stop.clone(),
    )));
    background.push(tokio::spawn(campaigns::run(
        services.clone(),
        owner.clone(),
        stop.clone(),
    )));
    let mut running: HashMap<String, Running> = HashMap::new();
    let tick = (config.lease_ttl.0 / 3)
        .min(config.sender_refresh.0)
        .max(Duration::from_millis(100));
    let mut gauges_at = tokio::time::Instant::now();
    tracing::info!(%owner, "worker started");
    loop {
        if let Err(e) = services.catalog.refresh().await {
            tracing::warn!(error = %e, "could not refresh senders");
        }
        if !services.amqp.is_connected() {
            // Without a broker this process cannot dispatch: hand its senders to a worker that
            // has one (they move within lease_ttl), and take none until the connection is back.
            if !running.is_empty() {
                tracing::warn!(
                    senders = running.len(),
                    "RabbitMQ lost; giving up sender leases"
                );
                stop_all(&services, &owner, &mut running).await;
            }
            tokio::select! {
                _ = stop.wait() => break,
                _ = tokio::time::sleep(tick) => {}
            }
            continue;
        }
        for sender in services.catalog.senders() {
            let id = sender.phone_number_id.clone();
            let finished = running.get(&id).is_some_and(|r| r.handle.is_finished());
            if finished && let Some(r) = running.remove(&id) {
                match r.handle.await {
                    Ok(Err(e)) => {
                        tracing::warn!(sender = %id, error = %e, "dispatch loop ended; restarting")
                    }
                    Err(e) => {
                        tracing::error!(sender = %id, error = %e, "dispatch loop panicked; restarting")
                    }
                    Ok(Ok(())) => {}
                }
            }
            match services
                .state
                .hold_lease(&id, &owner, config.lease_ttl.0)
                .await
            {
                Ok(true) => {
                    if let Entry::Vacant(slot) = running.entry(id) {
                        let (trigger, signal) = shutdown_channel();
                        let handle = tokio::spawn(sender::run(
                            services.clone(),
                            sender.clone(),
                            owner.clone(),
                            signal,
                        ));
                        slot.insert(Running {
                            stop: trigger,
                            handle,
                        });
                    }
                }
                Ok(false) => {
                    if let Some(r) = running.remove(&id) {
                        tracing::warn!(sender = %id, "lost the lease; stopping this sender here");
                        r.stop.trigger();
                        let _ = r.handle.await;
                    }
                }
                Err(e) => tracing::warn!(sender = %id, error = %e, "lease check failed"),
            }
        }
        if gauges_at.elapsed() >= Duration::from_secs(5) {
            gauges_at = tokio::time::Instant::now();
            update_gauges(&services, running.keys()).await;
        }
        tokio::select! {
            _ = stop.wait() => break,
            _ = tokio::time::sleep(tick) => {}
        }
    }
    tracing::info!("worker draining");
    stop_all(&services, &owner, &mut running).await;
    let _ = ingest.await;
    for task in background {
        let _ = task.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Stops every dispatch loop (each drains its sends in flight) and gives up their leases.
async fn stop_all(services: &Services, owner: &str, running: &mut HashMap<String, Running>) {
    for r in running.values() {
        r.stop.trigger();
    }
    for (id, r) in running.drain() {
        let _ = r.handle.await;
        let _ = services.state.release_lease(&id, owner).await;
    }
}

async fn update_gauges<'a>(services: &Services, owned: impl Iterator<Item = &'a String>) {
    for id in owned {
        for lane in Lane::ALL {
            if let Ok(Some(depth)) = crate::queue::depth(
                &services.amqp.connection(),
                &services.names.lane_queue(id, lane),
            )
            .await
            {
                services
                    .metrics
                    .lane_depth
                    .with_label_values(&[id.as_str(), lane.suffix()])
                    .set(i64::from(depth));
                if depth == 0 {
                    // Nothing waits: the last message's wait no longer says anything.
                    services
                        .metrics
                        .lane_head_wait
                        .with_label_values(&[id.as_str(), lane.suffix()])
                        .set(0.0);
                }
            }
        }
        if let Ok(Some(sender)) = services.catalog.sender(id).await {
            services
                .metrics
                .sender_quality
                .with_label_values(&[id.as_str()])
                .set(sender.quality.level());
            services
                .metrics
                .sender_mps
                .with_label_values(&[id.as_str()])
                .set(i64::from(sender.mps));
            let (counter, tier) = services.tier_counter(&sender);
            if let Ok(usage) = services.state.tier_usage(&counter).await {
                services
                    .metrics
                    .tier_usage
                    .with_label_values(&[&counter])
                    .set(usage as i64);
                services
                    .metrics
                    .tier_limit
                    .with_label_values(&[&counter])
                    .set(tier.limit());
            }
        }
    }
}
