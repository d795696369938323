//! The ledger away for longer than a delivery's life (CONTRACT §6, "nothing
//! ends silently"): PostgreSQL stopped under a worker with onboardings in
//! flight, kept down for 30 s (longer than the 20 s a ledger operation is
//! retried), then started again. The worker reports not-ready within seconds,
//! pauses instead of spinning deliveries, and once the ledger is back every
//! onboarding completes, each create once, nothing left `running`.
//!
//! A test binary of its own: it stops the machine's PostgreSQL server, which
//! no other test may be using meanwhile (cargo runs test binaries one after
//! another). The server is started again whatever happens (a guard).

mod support;

use std::time::{Duration, Instant};

use onboarding_worker::config::Secret;
use onboarding_worker::ledger::Status;

use crate::support::env::{wait_until, TestEnv};
use crate::support::pg::{PgDatabase, StoppedServer};
use crate::support::prometheus::metric_value;
use crate::support::requests::sharespine_request;

const REQUESTS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_away_longer_than_a_delivery_s_life_pauses_the_worker_and_loses_nothing() {
    let db = PgDatabase::create().await;
    let url = db.url.clone();
    let env = TestEnv::prepare(move |s| s.ledger.url = Secret::new(url))
        .await
        .with_worker()
        .await;
    // Slow enough that the onboardings are mid-way when the ledger goes.
    env.sandbox
        .sharespine
        .knobs
        .set_latency(Duration::from_millis(300));
    let ids: Vec<String> = (0..REQUESTS).map(|i| format!("outage-{i}")).collect();
    for id in &ids {
        env.publish(&sharespine_request(id, id, &["anna", "bert"], None))
            .await;
    }
    wait_until(Duration::from_secs(20), || {
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant") >= 2
    })
    .await;

    let health = env.worker().health.clone();
    let stopped_at = Instant::now();
    let server = StoppedServer::stop();
    wait_until(Duration::from_secs(30), || !health.is_ready()).await;
    let not_ready_after = stopped_at.elapsed();
    let calls_when_down = env.sandbox.sharespine.knobs.all_calls();
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped_at.elapsed())).await;
    assert!(
        !health.is_ready(),
        "/readyz stays not-ready while the ledger is away"
    );
    let text = env.metrics_text().await;
    assert_eq!(
        metric_value(&text, "onboarding_ledger_unreachable", &[]),
        Some(1.0),
        "the pause is visible"
    );
    let requests_counts = env.vhost.queue_counts("onboarding.requests").await;
    let steps_counts = env.vhost.queue_counts("onboarding.steps.sharespine").await;
    let started_at = Instant::now();
    server.start();
    wait_until(Duration::from_secs(30), || health.is_ready()).await;
    let ready_after = started_at.elapsed();

    for id in &ids {
        let done = env.final_event(id, Duration::from_secs(60)).await;
        assert_eq!(done["event"], "completed", "{id}: {done:#}");
    }
    assert_eq!(
        env.sandbox.sharespine.tenants().len(),
        REQUESTS,
        "each tenant created once"
    );
    for id in &ids {
        let record = env.worker().ledger.get(id).await.unwrap().unwrap();
        assert_eq!(
            record.status,
            Status::Completed,
            "{id}: nothing left running"
        );
    }
    assert!(env.dead().await.is_empty(), "nothing in onboarding.dead");
    let text = env.metrics_text().await;
    let repeats = metric_value(&text, "onboarding_create_repeats_total", &[]).unwrap_or(0.0);
    eprintln!(
        "figures: not-ready {not_ready_after:?} after the stop; ready {ready_after:?} after the start; \
         queues while down: requests {requests_counts:?}, sharespine steps {steps_counts:?} (ready, unacked); \
         calls when it went: {calls_when_down:?}; create repeats counted: {repeats}; calls in all: {:?}",
        env.sandbox.sharespine.knobs.all_calls()
    );
    env.shutdown().await;
    drop(db);
}
