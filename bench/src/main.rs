//! The benchmark: in one process run, on fresh vhosts, it measures the broker's
//! own ceiling for the worker's message pattern and holds the worker against it.
//!
//! ```sh
//! cargo run --release --bin bench                    # full run (a few minutes)
//! cargo run --release --bin bench -- --quick         # about a minute, for CI's smoke run
//! cargo run --release --bin bench -- --json          # last line: one JSON object
//! cargo run --release --bin bench -- --ledger sqlite # parts 2 and 3 on one ledger only
//! cargo run --release --bin bench -- --waiting-only  # part 4 alone (the worker's RSS while many wait)
//! ```
//!
//! Parts: (1) broker ceiling, and the broker's CPU per step there; (2) worker
//! throughput on Sharespine at zero latency, its ratio to the ceiling, and the
//! CPU per step of the worker, the broker (`beam.smp`), the sandbox and the
//! bench, read from `/proc` (stable on a noisy machine where steps/s are not);
//! (3) latency of one onboarding at a time against the ceiling's hop latency ×
//! hops; (2) and (3) run on each ledger of `--ledger` (SQLite and PostgreSQL
//! by default, each in a fresh location); (4) RSS and alive tasks before and
//! after many onboardings all wait on slow provider jobs; (5) one worker
//! process vs two on a latency-bound load; (6) SQLite's cost of durability.
//! Figures are printed, never asserted.
//!
//! It is a workspace member of its own (`bench/`), so none of it ships in the
//! worker; the root manifest makes it a default member so that the commands
//! above work from the repository root.
//!
//! The bench re-executes itself with `__sandbox` / `__worker` to run the
//! sandbox and every worker as processes of their own, so each one's CPU and
//! memory are its own; the worker's phase timings come from its `/metrics`.
//!
//! Modules: [`args`] (command line, sizes), [`processes`] (the child
//! processes), [`procfs`] (CPU and RSS from `/proc`), [`vhost`], [`load`]
//! (requests, publishing, completions), [`ledgers`] (fresh ledger locations),
//! [`scrape`] (a worker's `/metrics`), [`parts`] (one module per part),
//! [`report`] (table and JSON).

mod args;
mod ledgers;
mod load;
mod parts;
mod processes;
mod procfs;
mod report;
mod scrape;
mod vhost;

use clap::Parser;

use args::{Args, Role, Sizes};
use report::Results;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.role.clone() {
        Some(Role::Sandbox {
            latency_ms,
            order_ms,
        }) => rt.block_on(processes::serve_sandbox(latency_ms, order_ms)),
        Some(Role::Worker) => rt.block_on(processes::run_worker()),
        None => rt.block_on(bench(args)),
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let sizes = Sizes::from_args(&args);
    if args.waiting_only {
        let waiting = parts::waiting::run(&args, &sizes).await?;
        report::print_waiting(&waiting, args.json);
        return Ok(());
    }
    let ceiling = parts::ceiling::run(&args, &sizes).await?;
    let mut throughput = Vec::new();
    for ledger in args.ledger.kinds() {
        throughput.push(parts::throughput::run(&args, &sizes, *ledger).await?);
    }
    let mut results = Results {
        ceiling,
        throughput,
        waiting: None,
        scaleout: None,
        durability: None,
    };
    if !args.throughput_only {
        results.waiting = Some(parts::waiting::run(&args, &sizes).await?);
        results.scaleout = Some(parts::scaleout::run(&args, &sizes).await?);
        results.durability = Some(parts::durability::run(&sizes).await?);
    }
    results.print(args.json);
    Ok(())
}

/// The value at fraction `p` of `sorted` (NaN when empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}
