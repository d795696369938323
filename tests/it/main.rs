//! Integration tests: a real RabbitMQ (a fresh vhost per test), the sandbox on
//! port 0, a temporary SQLite ledger, and the worker started in-process (or as
//! the built binary where a test kills it).
//!
//! - `helpers`: `TestEnv`, the broker's management API, log capture.
//! - `front_door`: invalid messages end in `failed` and `onboarding.dead`.
//! - `sharespine`: the step engine end to end on Sharespine.
//! - `resilience`: transient faults, delays in queues, duplicates, crashes, reconnects.
//! - `secrets`: nothing configured as secret shows anywhere.
//! - `computestacks`, `magento_bi`: those providers end to end.
//! - `cli`: the binary as operators use it (config errors, SIGTERM, status, dead).

mod cli;
mod computestacks;
mod front_door;
mod helpers;
mod magento_bi;
mod resilience;
mod secrets;
mod sharespine;
