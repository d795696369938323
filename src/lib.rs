//! onboarding-worker turns a billing system's "new customer" request, consumed
//! from RabbitMQ, into a provisioned account at a SaaS provider, one provider
//! call per step message, waiting on provider jobs in delay queues.
//!
//! # Layout
//! - [`config`]: typed settings from file and environment; [`config::Secret`].
//! - [`domain`]: the contract's closed vocabularies (providers, operations, error kinds).
//! - [`engine`]: the step machine and the [`engine::step::Provider`] interface.
//! - [`broker`]: everything RabbitMQ (the only module that imports lapin).
//! - [`ledger`]: what is done, per request and step (SQLite or PostgreSQL).
//! - [`providers`]: Magento BI, ComputeStacks, Sharespine over a shared HTTP client.
//! - [`sandbox`]: the emulated provider APIs for development and tests.
//! - [`metrics`]: metric names, `/metrics`, `/healthz`, `/readyz`.
//! - [`worker`]: wires it all together and runs until shutdown.
//! - [`tls`]: CA files, read and checked in one place.
//! - [`cli`], [`telemetry`]: the binary's edges.

pub mod broker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod ledger;
pub mod metrics;
pub mod providers;
pub mod sandbox;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod worker;
