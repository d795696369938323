//! The broker's own ceiling for the worker's message pattern, measured with
//! nothing else in the way (no HTTP, no ledger): consume a persistent message
//! from a quorum queue, publish its successor with a publisher confirm, ack.
//! Used by the benchmark to put the worker's figures in proportion; it uses
//! the library's own confirmed publishing, so the ceiling is measured with the
//! same publish the worker makes. The broker's CPU per step here is what the
//! message pattern alone costs it, to compare the worker's runs with.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use onboarding_worker::broker::{confirm_channel, connect, publish_confirmed};

use crate::args::{Args, Sizes};
use crate::procfs;
use crate::vhost::Vhost;

/// Size of a step message the ceiling chains carry: a typical step message
/// (see the library's `engine::wire::StepMessage`).
const STEP_MESSAGE_BYTES: usize = 160;

/// What the ceiling part found.
pub struct CeilingPart {
    pub steps_per_s: f64,
    /// One hop of one chain running alone, p50 (ms).
    pub hop_ms: f64,
    /// The broker's CPU per step at the ceiling; `None` when the broker is
    /// not on this machine.
    pub broker_cpu_ms_per_step: Option<f64>,
}

/// Part 1: the ceiling with as many chains and prefetch as the worker's
/// concurrency, then one chain alone for the latency of a hop.
pub async fn run(args: &Args, sizes: &Sizes) -> anyhow::Result<CeilingPart> {
    eprintln!(
        "[1/6] broker ceiling: {} chains, prefetch {}, {} s",
        args.concurrency,
        args.concurrency,
        sizes.ceiling.as_secs()
    );
    let vhost = Vhost::new(&args.management).await?;
    let measured = async {
        let c = measure(
            &vhost.amqp(),
            args.concurrency,
            args.concurrency.try_into()?,
            STEP_MESSAGE_BYTES,
            sizes.ceiling,
        )
        .await?;
        let single = measure(&vhost.amqp(), 1, 1, STEP_MESSAGE_BYTES, sizes.hop).await?;
        anyhow::Ok((c, single))
    }
    .await;
    vhost.delete().await;
    let (c, single) = measured?;
    let broker_cpu_ms_per_step = c
        .broker_cpu_ticks
        .map(|t| procfs::ms_per_step(t, c.steps as usize));
    let mut hops = single.hop_latencies_ms;
    hops.sort_by(f64::total_cmp);
    let part = CeilingPart {
        steps_per_s: c.steps_per_s(),
        hop_ms: crate::percentile(&hops, 0.5),
        broker_cpu_ms_per_step,
    };
    match part.broker_cpu_ms_per_step {
        Some(cpu) => eprintln!(
            "      {:.0} steps/s, broker CPU {cpu:.3} ms per step",
            part.steps_per_s
        ),
        None => eprintln!("      {:.0} steps/s", part.steps_per_s),
    }
    Ok(part)
}

/// What one ceiling run measured.
#[derive(Debug, Clone)]
pub struct Ceiling {
    pub steps: u64,
    pub elapsed: Duration,
    /// Consume-to-consume time of one hop, per hop (ms), when one chain runs alone.
    pub hop_latencies_ms: Vec<f64>,
    /// CPU ticks the broker's processes spent while the chains ran.
    pub broker_cpu_ticks: Option<u64>,
}

impl Ceiling {
    pub fn steps_per_s(&self) -> f64 {
        self.steps as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `chains` independent chains of messages of `message_bytes` through one
/// quorum queue for `duration`, with `prefetch` and `publishers` confirm channels
/// (as many as the worker uses).
pub async fn measure(
    url: &str,
    chains: usize,
    prefetch: u16,
    message_bytes: usize,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
    let conn = connect(url, "onboarding-bench-ceiling", None).await?;
    let setup = conn.create_channel().await?;
    let queue = format!("onboarding.bench.ceiling.{}", uuid::Uuid::new_v4().simple());
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let publish = confirm_channel(&conn).await?;
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let props = || {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
    };
    let body = vec![b'x'; message_bytes];
    for _ in 0..chains {
        publish_confirmed(&publish, "", &queue, true, &body, props()).await?;
    }
    let steps = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let broker = procfs::broker_pids();
    let broker_before = procfs::cpu_ticks_of(&broker);
    let started = Instant::now();
    let mut hops = Vec::new();
    let mut last = Instant::now();
    let tracker = tokio_util::task::TaskTracker::new();
    while started.elapsed() < duration {
        let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        else {
            break;
        };
        if chains == 1 {
            hops.push(last.elapsed().as_secs_f64() * 1000.0);
            last = Instant::now();
        }
        let (publish, queue, body, steps, stop) = (
            publish.clone(),
            queue.clone(),
            body.clone(),
            steps.clone(),
            stop.clone(),
        );
        // Like the worker: each delivery handled in its own task.
        tracker.spawn(async move {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if publish_confirmed(&publish, "", &queue, true, &body, props())
                .await
                .is_ok()
            {
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                steps.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let elapsed = started.elapsed();
    let broker_cpu_ticks = procfs::cpu_ticks_of(&broker)
        .zip(broker_before)
        .and_then(|(after, before)| after.checked_sub(before));
    stop.store(true, Ordering::Relaxed);
    tracker.close();
    tracker.wait().await;
    let _ = setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    if !hops.is_empty() {
        hops.remove(0); // the first includes start-up
    }
    Ok(Ceiling {
        steps: steps.load(Ordering::Relaxed),
        elapsed,
        hop_latencies_ms: hops,
        broker_cpu_ticks,
    })
}
