//! pregon: a self-hosted, high-throughput WhatsApp Business (Cloud API) broadcast and
//! notification dispatcher.
//!
//! Layers (see ARCHITECTURE.md): [`domain`] holds the pure rules; [`queue`], [`state`],
//! [`store`], [`whatsapp`] and [`metrics`] are thin adapters; [`api`], [`worker`] and
//! [`simulator`] are the processes, wired by [`app`] and started from `main.rs`.

pub mod api;
pub mod app;
pub mod bench;
pub mod campaigns;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod contacts;
pub mod demo;
pub mod domain;
pub mod enqueue;
pub mod events;
pub mod metrics;
pub mod process;
pub mod queue;
pub mod simulator;
pub mod state;
pub mod store;
pub mod templates;
pub mod webhooks;
pub mod whatsapp;
pub mod worker;
