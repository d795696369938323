//! Chaos: three worker processes (the built binary) on one ledger, 40 mixed
//! onboardings across the three providers, and five times one worker
//! SIGKILLed at a random moment and replaced. Once on a SQLite file, once on
//! a PostgreSQL database of its own.
//!
//! Asserted (CONTRACT §6, README "Delivery guarantees"):
//! - every request ends in exactly one final event kind: `completed`, or
//!   `failed` where the test meant it (copies of the same final event are
//!   at-least-once and allowed);
//! - the sandbox holds exactly one create per request and step (derived from
//!   its own state), except repeats the workers counted in
//!   `onboarding_create_repeats_total` (scraped from every live worker's
//!   `/metrics`; a repeat no worker counted is a failure);
//! - `onboarding.dead` holds the intended failures only;
//! - nothing is left ready or unacknowledged in the requests, step and delay
//!   queues.
//!
//! At each kill moment every worker's `/metrics` is read and the victim is
//! one with a step in flight if there is one (so kills land mid-step, where
//! the README's "remaining window" is), else the seed's pick.
//!
//! The request mix, the job duration and the kill moments come from a seed:
//! fixed by default, `CHAOS_SEED=<u64>` picks another. The seed and the run's
//! figures are printed (`cargo test --test chaos -- --nocapture`). Worker
//! logs are kept under `target/tmp/chaos/` when a run fails (or with
//! `CHAOS_KEEP_LOGS=1`).
//!
//! - `plan`: the seed's request mix, what each is meant to end in, the kills.
//! - `fleet`: the worker processes, killed and replaced, and their metrics.
//! - `creates`: what the sandbox holds against what each request's plan (the
//!   provider's own) allows.
//! - `run`: one run, its checks and its figures.

mod creates;
mod fleet;
mod plan;
mod run;
// A folder binary's `mod` lines resolve inside `tests/chaos/`; the support
// shared by every test binary is one level up.
#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use run::run_chaos;

/// The default seed; `CHAOS_SEED` overrides it.
const DEFAULT_SEED: u64 = 20_250_611;
const REQUESTS: usize = 40;
const WORKERS: usize = 3;
const KILLS: usize = 5;
/// Requests are published over about this long (random gaps).
const PUBLISH_SPREAD_MS: u64 = 10_000;
/// Kills happen at random moments in this window after the start.
const KILL_WINDOW_MS: (u64, u64) = (1_000, 16_000);
/// All final events must have arrived by then.
const FINALS_DEADLINE: Duration = Duration::from_secs(90);
const CS_PASSWORD: &str = "chaos-Passw0rd-cs";

/// The two chaos runs share the machine's two cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_worker_processes_on_one_sqlite_ledger_survive_five_kills() {
    let _one = ONE_AT_A_TIME.lock().await;
    run_chaos(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_worker_processes_on_one_postgres_ledger_survive_five_kills() {
    let _one = ONE_AT_A_TIME.lock().await;
    run_chaos(Backend::Postgres).await;
}

#[derive(Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

pub fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CHAOS_SEED must be an unsigned integer, not {s:?}")),
        Err(_) => DEFAULT_SEED,
    }
}
