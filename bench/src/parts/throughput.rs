//! Parts 2 and 3 on one ledger: the worker's throughput at zero provider
//! latency (and what each process spends on a step), then the latency of one
//! onboarding at a time. The worker and the sandbox run as processes of their
//! own, so their CPU is read apart from the bench's and the broker's.

use std::time::{Duration, Instant};

use onboarding_worker::broker::admin::{Admin, EventStream};
use serde_json::Value;

use crate::args::{Args, Sizes};
use crate::ledgers::{LedgerKind, Location};
use crate::load::{await_completed, publish_all, sharespine, SHARESPINE_STEPS};
use crate::percentile;
use crate::processes::{spawn_sandbox, spawn_worker, worker_env, WorkerProc};
use crate::procfs::{CpuPerStep, Watched};
use crate::scrape::Phases;
use crate::vhost::Vhost;

/// What parts 2 and 3 found on one ledger.
pub struct ThroughputPart {
    pub ledger: LedgerKind,
    pub steps_per_s: f64,
    pub onboardings_per_s: f64,
    /// CPU per step of each process over the throughput run.
    pub cpu: CpuPerStep,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// Hops of one onboarding: the request, then one message per step.
pub const HOPS_PER_ONBOARDING: usize = SHARESPINE_STEPS + 1;

/// Runs parts 2 and 3 on a fresh vhost and a fresh `ledger` location, both
/// removed afterwards whatever happens.
pub async fn run(args: &Args, sizes: &Sizes, ledger: LedgerKind) -> anyhow::Result<ThroughputPart> {
    let vhost = Vhost::new(&args.management).await?;
    let location = match Location::fresh(ledger, &args.postgres_url).await {
        Ok(l) => l,
        Err(e) => {
            vhost.delete().await;
            return Err(e);
        }
    };
    let part = on(args, sizes, ledger, &vhost, &location).await;
    vhost.delete().await;
    let removed = location.remove().await;
    let part = part?;
    removed?;
    Ok(part)
}

async fn on(
    args: &Args,
    sizes: &Sizes,
    ledger: LedgerKind,
    vhost: &Vhost,
    location: &Location,
) -> anyhow::Result<ThroughputPart> {
    eprintln!(
        "[2/6] worker throughput, {} ledger: {} Sharespine onboardings at zero provider latency",
        ledger.name(),
        sizes.onboardings
    );
    let (sandbox, urls) = spawn_sandbox(0, 1000)?;
    let mut worker = spawn_worker(&worker_env(
        &vhost.amqp(),
        location.url(),
        &urls,
        args.concurrency,
    ))?;
    worker.ready().await?;
    let admin = Admin::connect(&vhost.amqp()).await?;
    let mut events = admin.subscribe_events("#").await?;
    let measured = measure(sizes, ledger, &worker, sandbox.pid(), &admin, &mut events).await;
    drop(worker);
    drop(sandbox);
    drop(events);
    admin.close().await;
    measured
}

async fn measure(
    sizes: &Sizes,
    ledger: LedgerKind,
    worker: &WorkerProc,
    sandbox_pid: u32,
    admin: &Admin,
    events: &mut EventStream,
) -> anyhow::Result<ThroughputPart> {
    // Warm up (connections, token caches, ledger pages).
    publish_all(admin, &[sharespine("warmup-1")]).await?;
    await_completed(events, 1, Duration::from_secs(60)).await?;
    events.drain_pending(Duration::from_millis(200)).await;
    let requests: Vec<Value> = (0..sizes.onboardings)
        .map(|i| sharespine(&format!("tp-{i}")))
        .collect();
    let watched = Watched::new(worker.pid(), sandbox_pid);
    let phases = Phases::scrape(&worker.metrics_url).await?;
    let cpu_before = watched.sample();
    let started = Instant::now();
    publish_all(admin, &requests).await?;
    await_completed(events, sizes.onboardings, Duration::from_secs(600)).await?;
    let took = started.elapsed();
    let steps = sizes.onboardings * SHARESPINE_STEPS;
    let cpu = cpu_before.per_step_until(&watched.sample(), steps);
    let steps_per_s = steps as f64 / took.as_secs_f64();
    let onboardings_per_s = sizes.onboardings as f64 / took.as_secs_f64();
    eprintln!("      {steps_per_s:.0} steps/s, {onboardings_per_s:.1} onboardings/s");
    let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    eprintln!(
        "      CPU per step (ms): worker {}, broker {}, sandbox {}, bench {}",
        ms(cpu.worker),
        ms(cpu.broker),
        ms(cpu.sandbox),
        ms(cpu.bench)
    );
    Phases::scrape(&worker.metrics_url)
        .await?
        .print_since(&phases, "under load");

    eprintln!(
        "[3/6] latency, {} ledger: {} onboardings one at a time",
        ledger.name(),
        sizes.latency_runs
    );
    events.drain_pending(Duration::from_millis(300)).await;
    let phases = Phases::scrape(&worker.metrics_url).await?;
    let mut lat = Vec::new();
    for i in 0..sizes.latency_runs {
        let t = Instant::now();
        publish_all(admin, &[sharespine(&format!("lat-{i}"))]).await?;
        await_completed(events, 1, Duration::from_secs(30)).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let (latency_p50_ms, latency_p99_ms) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    eprintln!("      p50 {latency_p50_ms:.1} ms, p99 {latency_p99_ms:.1} ms");
    Phases::scrape(&worker.metrics_url)
        .await?
        .print_since(&phases, "one at a time");
    Ok(ThroughputPart {
        ledger,
        steps_per_s,
        onboardings_per_s,
        cpu,
        latency_p50_ms,
        latency_p99_ms,
    })
}
