//! The command line: `run`, `sandbox`, `demo`, `status`, `dead list`,
//! `dead replay`. Parses arguments, loads settings, and maps failures to exit
//! codes: 0 success, 1 not found, 2 usage or configuration error, 3 runtime failure.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::broker::admin::Admin;
use crate::config::{LogFormat, Settings};
use crate::sandbox::{Listens, Sandbox, SandboxOptions};
use crate::worker::{shutdown_signal, Worker};

#[derive(Parser, Debug)]
#[command(
    name = "onboarding-worker",
    version,
    about = "Turns billing systems' onboarding requests from RabbitMQ into provisioned accounts at Magento BI, ComputeStacks and Sharespine.",
    long_about = "Turns billing systems' onboarding requests from RabbitMQ into provisioned accounts at Magento BI, \
ComputeStacks and Sharespine: one provider call per step message, waiting on provider jobs in delay queues, \
publishing accepted / step_completed / completed / failed events.\n\n\
Settings: config/default.toml, then --config FILE (or ONBOARDING_CONFIG), then ONBOARDING__SECTION__KEY \
environment variables (e.g. ONBOARDING__AMQP__URL).\n\n\
Exit codes: 0 success, 1 not found, 2 usage or configuration error, 3 runtime failure."
)]
pub struct Cli {
    /// A TOML file layered over the defaults.
    #[arg(long, global = true, env = "ONBOARDING_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format (overrides worker.log_format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the worker: consume onboarding.requests until SIGTERM or SIGINT.
    Run,
    /// Serve the emulated provider APIs on the ports of [sandbox] until SIGTERM or SIGINT.
    ///
    /// Each API is strict the way the real one is; faults, latency, call counts
    /// and readings are driven over HTTP at /_sandbox/faults, /_sandbox/latency,
    /// /_sandbox/calls, /_sandbox/reset and /_sandbox/readings on each API's
    /// port (Magento BI: its API port, which also counts the dashboard host's
    /// calls). The readings, listed below, are how each API answers where its
    /// provider's documents leave the shape of an answer open.
    #[command(after_long_help = crate::sandbox::readings_help())]
    Sandbox,
    /// Run sandbox and worker together, publish one sample onboarding per provider and show their progress.
    Demo {
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// Write the worker's logs to stderr, above the progress bars, instead
        /// of to the file named on the first line.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Print where an onboarding stands, read from the ledger (exit 1 if unknown).
    Status {
        request_id: String,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or replay onboarding.dead.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeadCommand {
    /// List what sits in onboarding.dead and why (the messages stay there).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead messages as a redrive: the worker resumes each request from the step that failed.
    Replay {
        /// Replay the messages of this request only.
        #[arg(long, conflicts_with = "all")]
        request_id: Option<String>,
        /// Replay every message.
        #[arg(long)]
        all: bool,
    },
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub error: anyhow::Error,
}

impl Exit {
    fn config(e: impl Into<anyhow::Error>) -> Exit {
        Exit {
            code: 2,
            error: e.into(),
        }
    }
    fn runtime(e: impl Into<anyhow::Error>) -> Exit {
        Exit {
            code: 3,
            error: e.into(),
        }
    }
}

/// Loads settings for `cli` (exit 2 on a bad value).
pub fn settings(cli: &Cli) -> Result<Settings, Exit> {
    let mut s = Settings::load(cli.config.as_deref()).map_err(Exit::config)?;
    if let Some(format) = cli.log_format {
        s.worker.log_format = format;
    }
    Ok(s)
}

fn broker_hint(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach RabbitMQ ({e}). Start it (Debian: apt-get install -y rabbitmq-server && rabbitmq-server -detached) \
or point ONBOARDING__AMQP__URL at yours"
    )
}

pub async fn execute(cli: Cli, settings: Settings) -> Result<i32, Exit> {
    match cli.command {
        Command::Run => {
            let shutdown = CancellationToken::new();
            let worker = Worker::start(&settings, shutdown.clone())
                .await
                .map_err(Exit::runtime)?;
            shutdown_signal().await;
            shutdown.cancel();
            worker.stopped().await;
            Ok(0)
        }
        Command::Sandbox => {
            let sandbox = Sandbox::start(
                SandboxOptions::from_settings(&settings.sandbox, &settings.providers),
                Listens::from_settings(&settings.sandbox),
            )
            .await
            .context("binding the sandbox's ports")
            .map_err(Exit::runtime)?;
            println!("sandbox serving:");
            println!("  sharespine        {}", sandbox.sharespine_url());
            println!("  computestacks     {}", sandbox.computestacks_url());
            println!("  magento_bi api    {}", sandbox.magento_api_url());
            println!("  magento_bi dash   {}", sandbox.magento_dashboard_url());
            shutdown_signal().await;
            sandbox.shutdown().await;
            Ok(0)
        }
        Command::Demo { timeout_s, verbose } => {
            crate::demo::run(settings, Duration::from_secs(timeout_s), verbose)
                .await
                .map_err(Exit::runtime)
        }
        Command::Status { request_id, json } => {
            let ledger = crate::ledger::open(settings.ledger.url.expose())
                .await
                .map_err(Exit::runtime)?;
            let Some(record) = ledger.get(&request_id).await.map_err(Exit::runtime)? else {
                eprintln!("no onboarding with request_id {request_id:?} in the ledger");
                return Ok(1);
            };
            let providers =
                crate::providers::build_all(&settings.providers, &crate::metrics::Metrics::new());
            let next = serde_json::from_slice::<serde_json::Value>(&record.body)
                .ok()
                .and_then(|body| {
                    let provider = providers.get(&record.provider)?;
                    let plan = provider.plan(record.operation, body.get("input")?).ok()?;
                    crate::status::next_step(&record, &plan)
                });
            println!("{}", crate::status::render(&record, next, json));
            Ok(0)
        }
        Command::Dead { command } => {
            let admin = Admin::connect_any(
                &settings
                    .amqp
                    .nodes()
                    .iter()
                    .map(|u| u.expose())
                    .collect::<Vec<_>>(),
                settings.amqp.tls_ca_path(),
            )
            .await
            .map_err(|e| Exit::runtime(broker_hint(e)))?;
            let code = match command {
                DeadCommand::List { json } => {
                    let dead = admin.dead_list().await.map_err(Exit::runtime)?;
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&dead).expect("serialises")
                        );
                    } else if dead.is_empty() {
                        println!("onboarding.dead is empty");
                    } else {
                        println!(
                            "{:<32} {:<16} {:<22} {:>8}  REASON",
                            "REQUEST_ID", "KIND", "STEP", "BYTES"
                        );
                        for d in &dead {
                            println!(
                                "{:<32} {:<16} {:<22} {:>8}  {}",
                                d.request_id.as_deref().unwrap_or("-"),
                                d.error_kind.as_deref().unwrap_or("-"),
                                d.step.as_deref().unwrap_or("-"),
                                d.bytes,
                                d.reason.as_deref().unwrap_or("-")
                            );
                        }
                    }
                    0
                }
                DeadCommand::Replay { request_id, all } => {
                    if request_id.is_none() && !all {
                        return Err(Exit::config(anyhow::anyhow!(
                            "dead replay needs --request-id ID or --all"
                        )));
                    }
                    let replayed = admin
                        .dead_replay(request_id.as_deref())
                        .await
                        .map_err(Exit::runtime)?;
                    for d in &replayed {
                        println!(
                            "replayed {}",
                            d.request_id.as_deref().unwrap_or("(no request_id)")
                        );
                    }
                    if replayed.is_empty() {
                        eprintln!("nothing to replay");
                        1
                    } else {
                        0
                    }
                }
            };
            admin.close().await;
            Ok(code)
        }
    }
}
