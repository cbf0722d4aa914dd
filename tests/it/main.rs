//! Integration tests against real PostgreSQL, Redis and RabbitMQ, and the simulator over HTTP.
//! Each test isolates itself, so they run in parallel.

mod authorization;
mod broker_restart;
mod browser;
mod campaign_counts;
mod campaigns;
mod console;
mod contract;
mod dispatch;
mod enqueue;
mod harness;
mod ingest;
mod limits;
mod observability;
mod privacy;
mod reservations;
mod resilience;
mod secrets;
mod simulator;
mod state_loss;
mod webhooks;
mod writer;
