//! Part 4: waiting costs nothing. Many ComputeStacks onboardings wait on
//! 30-minute orders; the worker process's RSS and its runtime's alive tasks
//! are read before and after (the worker and the sandbox run as processes of
//! their own, so the figures are the worker's alone).

use std::time::Duration;

use onboarding_worker::broker::admin::Admin;
use serde_json::Value;

use crate::args::{Args, Sizes};
use crate::load::{computestacks, publish_all};
use crate::processes::{spawn_sandbox, spawn_worker, worker_env, WorkerProc};
use crate::procfs::rss_mb;
use crate::scrape::{gauge, wait_gauge};
use crate::vhost::{delay_depth, Vhost};

/// What the waiting part found.
pub struct WaitingPart {
    pub waiting: usize,
    pub rss_before_mb: f64,
    pub rss_after_mb: f64,
    pub tasks_before: i64,
    pub tasks_after: i64,
    pub in_delay_queues: u32,
}

pub async fn run(args: &Args, sizes: &Sizes) -> anyhow::Result<WaitingPart> {
    eprintln!(
        "[4/6] waiting: {} ComputeStacks onboardings waiting on orders that take 30 minutes",
        sizes.waiting
    );
    let vhost = Vhost::new(&args.management).await?;
    let (sandbox, urls) = spawn_sandbox(0, 30 * 60 * 1000)?;
    let dir = tempfile::tempdir()?;
    let ledger = format!("sqlite://{}/ledger.sqlite", dir.path().display());
    let mut env = worker_env(&vhost.amqp(), &ledger, &urls, args.concurrency);
    for (key, value) in [
        ("CALLS__CONCURRENCY", args.concurrency.to_string()),
        ("POLLS__POLL_ORDER__INTERVAL_MS", "60000".into()),
        ("POLLS__POLL_ORDER__MAX_INTERVAL_MS", "300000".into()),
        ("POLLS__POLL_ORDER__DEADLINE_MS", "3600000".into()),
    ] {
        env.insert(
            format!("ONBOARDING__PROVIDERS__COMPUTESTACKS__{key}"),
            value,
        );
    }
    let worker = spawn_worker(&env)?;
    let admin = Admin::connect(&vhost.amqp()).await?;
    let part = measure(args, sizes, &worker, &admin).await;
    drop(worker);
    admin.close().await;
    drop(sandbox);
    vhost.delete().await;
    part
}

async fn measure(
    args: &Args,
    sizes: &Sizes,
    worker: &WorkerProc,
    admin: &Admin,
) -> anyhow::Result<WaitingPart> {
    let metrics_url = &worker.metrics_url;
    // Warm-up: as many onboardings as the worker runs at once, left waiting,
    // so pools and caches are at their working size before the baseline.
    let warmup = args.concurrency;
    let warm: Vec<Value> = (0..warmup)
        .map(|i| computestacks(&format!("wait-warm-{i}")))
        .collect();
    publish_all(admin, &warm).await?;
    wait_gauge(metrics_url, "onboarding_onboardings_waiting", warmup as f64).await?;
    // Idle provider connections (a task each) close after 30 s; a full run
    // waits that out before each sample so only what waiting costs remains.
    let settle = if args.quick {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(36)
    };
    tokio::time::sleep(settle).await;
    let (rss_before_mb, tasks_before) = (
        rss_mb(worker.pid()),
        gauge(metrics_url, "onboarding_runtime_alive_tasks").await?,
    );
    let requests: Vec<Value> = (0..sizes.waiting)
        .map(|i| computestacks(&format!("wait-{i}")))
        .collect();
    publish_all(admin, &requests).await?;
    wait_gauge(
        metrics_url,
        "onboarding_onboardings_waiting",
        (sizes.waiting + warmup) as f64,
    )
    .await?;
    tokio::time::sleep(settle).await;
    let (rss_after_mb, tasks_after) = (
        rss_mb(worker.pid()),
        gauge(metrics_url, "onboarding_runtime_alive_tasks").await?,
    );
    let in_delay_queues = delay_depth(admin).await?;
    eprintln!("      worker process RSS {rss_before_mb:.1} → {rss_after_mb:.1} MB, alive tasks {tasks_before} → {tasks_after}, {in_delay_queues} messages in delay queues");
    Ok(WaitingPart {
        waiting: sizes.waiting,
        rss_before_mb,
        rss_after_mb,
        tasks_before: tasks_before as i64,
        tasks_after: tasks_after as i64,
        in_delay_queues,
    })
}
