//! The command line: which parts run, on which ledgers, at what sizes; and the
//! internal roles the bench re-executes itself with.

use std::time::Duration;

use clap::Parser;

use crate::ledgers::LedgerKind;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Measures the worker against the broker's own ceiling, in one run. Needs RabbitMQ with its management plugin, and PostgreSQL unless --ledger sqlite (bash scripts/services.sh)."
)]
pub struct Args {
    /// Small sizes: finishes in about a minute (CI's smoke run).
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON object with every figure as the last line.
    #[arg(long)]
    pub json: bool,
    /// Management API of the broker (to make fresh vhosts).
    #[arg(long, default_value = "http://guest:guest@127.0.0.1:15672")]
    pub management: String,
    /// Ledgers the throughput and latency parts run on.
    #[arg(long, value_enum, default_value_t = LedgerChoice::Both)]
    pub ledger: LedgerChoice,
    /// PostgreSQL server for the PostgreSQL ledger; each run gets a schema of
    /// its own there, dropped afterwards.
    #[arg(
        long,
        env = "ONBOARDING_BENCH_POSTGRES_URL",
        default_value = "postgres://onboarding:onboarding@127.0.0.1:5432/onboarding_test"
    )]
    pub postgres_url: String,
    /// Onboardings in the throughput part.
    #[arg(long)]
    pub onboardings: Option<usize>,
    /// Seconds the ceiling part runs.
    #[arg(long)]
    pub ceiling_s: Option<u64>,
    /// Onboardings measured one at a time in the latency part.
    #[arg(long)]
    pub latency_runs: Option<usize>,
    /// Onboardings left waiting in the memory part.
    #[arg(long)]
    pub waiting: Option<usize>,
    /// Onboardings in each scale-out run.
    #[arg(long)]
    pub scaleout: Option<usize>,
    /// Steps of one provider in flight per worker (its prefetch).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Skip the waiting, scale-out and durability parts (for profiling the throughput).
    #[arg(long)]
    pub throughput_only: bool,
    /// Run only the waiting part (the worker's RSS while many onboardings wait).
    #[arg(long, conflicts_with = "throughput_only")]
    pub waiting_only: bool,
    #[command(subcommand)]
    pub role: Option<Role>,
}

/// `--ledger`: one ledger or both.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerChoice {
    Sqlite,
    Postgres,
    Both,
}

impl LedgerChoice {
    pub fn kinds(self) -> &'static [LedgerKind] {
        match self {
            LedgerChoice::Sqlite => &[LedgerKind::Sqlite],
            LedgerChoice::Postgres => &[LedgerKind::Postgres],
            LedgerChoice::Both => &[LedgerKind::Sqlite, LedgerKind::Postgres],
        }
    }
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Role {
    /// (internal) serve the sandbox and print its URLs as one JSON line.
    #[command(name = "__sandbox", hide = true)]
    Sandbox { latency_ms: u64, order_ms: u64 },
    /// (internal) run a worker configured from the environment.
    #[command(name = "__worker", hide = true)]
    Worker,
}

/// How much each part does.
pub struct Sizes {
    pub onboardings: usize,
    pub ceiling: Duration,
    /// The single-chain ceiling run that measures one hop's latency.
    pub hop: Duration,
    pub latency_runs: usize,
    pub waiting: usize,
    pub scaleout: usize,
    /// Commits timed per `synchronous` setting in the durability part.
    pub commits: u32,
}

impl Sizes {
    /// `--quick` or full sizes, each overridden by its own flag.
    pub fn from_args(args: &Args) -> Sizes {
        let defaults = if args.quick {
            Sizes {
                onboardings: 150,
                ceiling: Duration::from_secs(4),
                hop: Duration::from_secs(2),
                latency_runs: 10,
                waiting: 300,
                scaleout: 24,
                commits: 200,
            }
        } else {
            Sizes {
                onboardings: 1500,
                ceiling: Duration::from_secs(15),
                hop: Duration::from_secs(5),
                latency_runs: 50,
                waiting: 10_000,
                scaleout: 120,
                commits: 2_000,
            }
        };
        Sizes {
            onboardings: args.onboardings.unwrap_or(defaults.onboardings),
            ceiling: args
                .ceiling_s
                .map(Duration::from_secs)
                .unwrap_or(defaults.ceiling),
            latency_runs: args.latency_runs.unwrap_or(defaults.latency_runs),
            waiting: args.waiting.unwrap_or(defaults.waiting),
            scaleout: args.scaleout.unwrap_or(defaults.scaleout),
            ..defaults
        }
    }
}
