//! Part 5: one worker process against two on a latency-bound load, where a
//! second worker should nearly double the rate.

use std::time::{Duration, Instant};

use onboarding_worker::broker::admin::Admin;
use serde_json::Value;

use crate::args::{Args, Sizes};
use crate::load::{await_completed, publish_all, sharespine, SHARESPINE_STEPS};
use crate::processes::{spawn_sandbox, spawn_worker, worker_env};
use crate::vhost::Vhost;

/// Provider latency of every call in this part.
const LATENCY_MS: u64 = 100;
/// Steps in flight per worker: few, so that latency bounds the rate.
const PER_WORKER: usize = 4;

/// Steps/s of one worker and of two.
pub struct ScaleoutPart {
    pub one: f64,
    pub two: f64,
}

pub async fn run(args: &Args, sizes: &Sizes) -> anyhow::Result<ScaleoutPart> {
    eprintln!("[5/6] scale-out: {} onboardings, {LATENCY_MS} ms provider latency, {PER_WORKER} steps in flight per worker", sizes.scaleout);
    let one = steps_per_s(args, 1, sizes.scaleout).await?;
    let two = steps_per_s(args, 2, sizes.scaleout).await?;
    eprintln!(
        "      one worker {one:.1} steps/s, two {two:.1} steps/s: {:.2}×",
        two / one
    );
    Ok(ScaleoutPart { one, two })
}

/// Steps/s of `workers` worker processes on `n` Sharespine onboardings.
async fn steps_per_s(args: &Args, workers: usize, n: usize) -> anyhow::Result<f64> {
    let vhost = Vhost::new(&args.management).await?;
    let (sandbox, urls) = spawn_sandbox(LATENCY_MS, 1000)?;
    let dir = tempfile::tempdir()?;
    let ledger = format!("sqlite://{}/ledger.sqlite", dir.path().display());
    let admin = Admin::connect(&vhost.amqp()).await?;
    let mut events = admin.subscribe_events("#").await?;
    let env = worker_env(&vhost.amqp(), &ledger, &urls, PER_WORKER);
    let procs = (0..workers)
        .map(|_| spawn_worker(&env))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let measured = async {
        publish_all(&admin, &[sharespine(&format!("so{workers}-warmup"))]).await?;
        await_completed(&mut events, 1, Duration::from_secs(60)).await?;
        let requests: Vec<Value> = (0..n)
            .map(|i| sharespine(&format!("so{workers}-{i}")))
            .collect();
        let started = Instant::now();
        publish_all(&admin, &requests).await?;
        await_completed(&mut events, n, Duration::from_secs(600)).await?;
        anyhow::Ok((n * SHARESPINE_STEPS) as f64 / started.elapsed().as_secs_f64())
    }
    .await;
    drop(procs);
    drop(sandbox);
    drop(events);
    admin.close().await;
    vhost.delete().await;
    measured
}
