//! Past one broker node and one worker (CONTRACT §6): several broker
//! addresses tried in turn, a killed worker's step taken over at once rather
//! than after its lease, and a provider's rate limit honoured by every worker.

use std::time::{Duration, Instant};

use onboarding_worker::config::Secret;
use onboarding_worker::sandbox::faults::{Fault, FaultRule};
use onboarding_worker::worker::Worker;
use tokio_util::sync::CancellationToken;

use crate::support::env::{wait_until, TestEnv};
use crate::support::processes::spawn_worker_process;
use crate::support::prometheus::metric_value;
use crate::support::requests::sharespine_request;

async fn readyz(env: &TestEnv) -> String {
    reqwest::get(format!("http://{}/readyz", env.worker().metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_uses_the_first_broker_node_that_answers_and_the_next_when_it_is_lost() {
    let env = TestEnv::prepare(|s| {
        let vhost = s.amqp.url.expose().rsplit('/').next().unwrap().to_string();
        s.amqp.urls = vec![
            // Nothing listens there: refused at once.
            Secret::new(format!("amqp://guest:guest@127.0.0.1:1/{vhost}")),
            Secret::new(format!("amqp://guest:guest@127.0.0.1:5672/{vhost}")),
            Secret::new(format!("amqp://guest:guest@localhost:5672/{vhost}")),
        ];
    })
    .await
    .with_worker()
    .await;
    let body = readyz(&env).await;
    assert!(
        body.contains("127.0.0.1:5672"),
        "/readyz names the node: {body}"
    );
    let text = env.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "onboarding_broker_node",
            &[("node", "127.0.0.1:5672")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "onboarding_broker_node", &[("node", "127.0.0.1:1")]),
        Some(0.0)
    );
    // The node goes away (its connection is closed): the next one is used.
    assert!(env.vhost.close_worker_connections().await >= 1);
    wait_until(Duration::from_secs(10), || {
        env.worker().health.node().as_deref() == Some("localhost:5672")
    })
    .await;
    assert!(readyz(&env).await.contains("localhost:5672"));
    env.publish(&sharespine_request("nodes-1", "nodes", &["anna"], None))
        .await;
    let done = env.final_event("nodes-1", Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    env.shutdown().await;
}

/// A worker process is killed mid-step; an in-process worker takes the step
/// over. The lease is 15 s (10 s calls + 5 s), so recovery within a few
/// seconds means the dead holder was recognised, not waited out.
async fn a_killed_worker_s_step_is_taken_over_at_once(ledger_url: Option<String>) -> Duration {
    let mut env = TestEnv::prepare(|s| {
        if let Some(url) = ledger_url {
            s.ledger.url = Secret::new(url);
        }
        s.providers.sharespine.calls.timeout_ms = 10_000;
        s.worker.lease_margin_ms = 5_000;
    })
    .await;
    env.sandbox
        .sharespine
        .knobs
        .set_latency(Duration::from_millis(800));
    let mut first = spawn_worker_process(
        &env,
        &[
            (
                "ONBOARDING__PROVIDERS__SHARESPINE__CALLS__TIMEOUT_MS",
                "10000",
            ),
            ("ONBOARDING__WORKER__LEASE_MARGIN_MS", "5000"),
        ],
        None,
    );
    let id = "taken-over-1";
    env.publish(&sharespine_request(
        id,
        "takenover",
        &["anna", "bob", "carl"],
        None,
    ))
    .await;
    env.wait_event(Duration::from_secs(30), |e| {
        e["request_id"] == id && e["step"] == "create_tenant"
    })
    .await;
    // The first create_user is on its way to the provider.
    wait_until(Duration::from_secs(10), || {
        env.sandbox
            .sharespine
            .knobs
            .calls("POST /reseller/tenant/{code_name}/user")
            >= 1
    })
    .await;
    first.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    first.wait().unwrap();
    env.start_worker().await;
    env.wait_event(Duration::from_secs(30), |e| {
        e["request_id"] == id && e["step"] == "create_user"
    })
    .await;
    let recovered = killed_at.elapsed();
    let done = env.final_event(id, Duration::from_secs(60)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    assert!(
        recovered < Duration::from_secs(8),
        "the step went on {recovered:?} after the kill, against a 15 s lease"
    );
    let text = env.metrics_text().await;
    assert!(
        metric_value(&text, "onboarding_lease_takeovers_total", &[]).unwrap_or(0.0) >= 1.0,
        "the takeover is counted"
    );
    let tenants = env.sandbox.sharespine.tenants();
    assert_eq!(tenants.len(), 1);
    assert_eq!(
        tenants[0].logins(),
        ["anna", "bob", "carl"],
        "each user once"
    );
    env.shutdown().await;
    recovered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_step_is_taken_over_at_once_on_sqlite() {
    let recovered = a_killed_worker_s_step_is_taken_over_at_once(None).await;
    eprintln!("figures: sqlite: next step {recovered:?} after the SIGKILL (lease 15 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_step_is_taken_over_at_once_on_postgresql() {
    let db = crate::support::pg::PgDatabase::create().await;
    let recovered = a_killed_worker_s_step_is_taken_over_at_once(Some(db.url.clone())).await;
    eprintln!("figures: postgresql: next step {recovered:?} after the SIGKILL (lease 15 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_s_rate_limit_holds_every_worker_until_its_retry_after() {
    let env =
        TestEnv::start_with(|s| s.providers.sharespine.calls.concurrency = 1.try_into().unwrap())
            .await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let token = CancellationToken::new();
        let w = Worker::start(&env.settings, token.clone()).await.unwrap();
        wait_until(Duration::from_secs(10), || w.health.is_ready()).await;
        others.push((w, token));
    }
    let sharespine = &env.sandbox.sharespine.knobs;
    sharespine.set_latency(Duration::from_millis(150));
    sharespine.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/reseller/tenant".into(),
        fault: Fault::RateLimited { retry_after_s: 4 },
        times: 1,
    });
    let ids: Vec<String> = (0..9).map(|i| format!("limited-{i}")).collect();
    for id in &ids {
        env.publish(&sharespine_request(id, id, &["anna"], None))
            .await;
    }
    // The first tenant create is answered 429 with Retry-After: 4.
    wait_until(Duration::from_secs(10), || {
        sharespine.calls("POST /reseller/tenant") >= 1
    })
    .await;
    let limited_at = Instant::now();
    // Calls already on their way may still land; after that, none.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let total = |k: &onboarding_worker::sandbox::faults::Knobs| k.all_calls().values().sum::<u64>();
    let at_start = total(sharespine);
    // Another provider goes on meanwhile.
    env.publish(&serde_json::json!({
        "request_id": "other-provider-1", "provider": "computestacks", "operation": "onboard",
        "input": {
            "user": {"fname": "Ada", "lname": "Lovelace", "email": "ada@example.test",
                     "password": "pw-Zq7-secret", "password_confirmation": "pw-Zq7-secret"},
            "api_credential": {"name": "billing"},
            "order": {"project_name": "site-other", "location_id": 1,
                      "containers": [{"image_id": 4, "resources": {"product_id": 1}, "params": [], "domains": []}]}
        }
    }))
    .await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(limited_at.elapsed())).await;
    let at_end = total(sharespine);
    assert_eq!(
        at_end,
        at_start,
        "no Sharespine call from any worker during its pause ({:?} into it)",
        limited_at.elapsed()
    );
    assert!(
        env.sandbox
            .computestacks
            .knobs
            .calls("POST /api/admin/users")
            >= 1,
        "ComputeStacks steps went on during Sharespine's pause"
    );
    for id in &ids {
        let done = env.final_event(id, Duration::from_secs(60)).await;
        assert_eq!(done["event"], "completed", "{id}: {done:#}");
    }
    let mut waits = 0.0;
    for (w, _) in &others {
        let text = reqwest::get(format!("http://{}/metrics", w.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        waits += metric_value(
            &text,
            "onboarding_provider_pause_waits_total",
            &[("provider", "sharespine")],
        )
        .unwrap_or(0.0);
    }
    assert!(
        waits >= 1.0,
        "the other workers held steps for the pause ({waits})"
    );
    eprintln!(
        "figures: sharespine calls during the pause {}; steps held by the two other workers {waits}",
        at_end - at_start
    );
    for (w, token) in others {
        token.cancel();
        w.stopped().await;
    }
    env.shutdown().await;
}
