//! pregon: a self-hosted, high-throughput WhatsApp Business (Cloud API) broadcast and
//! notification dispatcher.
//!
//! Layers (see ARCHITECTURE.md): [`domain`] holds the pure rules; [`queue`], [`state`],
//! [`store`], [`whatsapp`] and [`metrics`] are thin adapters ([`sealing`] seals the secrets
//! [`store`] keeps); [`api`], [`worker`] and
//! [`simulator`] are the processes, wired by [`app`] and started from `main.rs`.

pub mod api;
pub mod app;
pub mod bench;
pub mod campaigns;
pub mod catalog;
pub mod chaos;
pub mod cli;
pub mod config;
pub mod console;
pub mod contacts;
pub mod dead;
pub mod demo;
pub mod domain;
pub mod enqueue;
pub mod events;
pub mod metrics;
pub mod privacy;
pub mod process;
pub mod queue;
pub mod sealing;
pub mod simulator;
pub mod state;
pub mod state_copy;
pub mod store;
pub mod templates;
pub mod webhooks;
pub mod whatsapp;
pub mod worker;

/// This process's identity: the owner of every lease it takes (senders in Redis, campaigns in
/// PostgreSQL) and the prefix of its consumer tags. One per process, so all of a worker's leases
/// name the same owner and an operator can tell which process holds what.
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    })
}
