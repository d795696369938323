//! Integration tests: a real RabbitMQ (a fresh vhost per test), the sandbox on
//! port 0, a temporary SQLite ledger, and the worker started in-process (or as
//! the built binary where a test kills it).
//!
//! - `support` (`tests/support/`, shared with the other test binaries):
//!   `TestEnv`, the broker's management API, PostgreSQL, metrics, requests.
//! - `front_door`: invalid messages end in `failed` and `onboarding.dead`.
//! - `hostile`: hostile requests (nesting, sizes, forged headers, look-alikes) fail cleanly.
//! - `sharespine`: the step engine end to end on Sharespine.
//! - `guarantees`: the guarantees under broker faults (nacks, cancelled consumers,
//!   returns in flight, closed channels, a lease outlasted, a disagreeing header).
//! - `resilience`: transient faults, delays in queues, duplicates, crashes, reconnects.
//! - `misbehaving`: providers answering HTML, unusable JSON, huge or endless bodies,
//!   redirect loops, empty 4xx, resets mid-response: each ends in its contract class.
//! - `scale_out`: several broker nodes, a killed worker taken over at once, a
//!   provider's rate limit shared by every worker.
//! - `secrets`: nothing configured as secret shows anywhere.
//! - `computestacks`, `magento_bi`: those providers end to end.
//! - `cli`: the binary as operators use it (config errors, SIGTERM, status, dead).

mod cli;
mod computestacks;
mod front_door;
mod guarantees;
mod hostile;
mod magento_bi;
mod misbehaving;
mod resilience;
mod scale_out;
mod secrets;
mod sharespine;
// A folder binary's `mod` lines resolve inside `tests/it/`; the support shared
// by every test binary is one level up.
#[path = "../support/mod.rs"]
mod support;
