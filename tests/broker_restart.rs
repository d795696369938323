//! The broker restarted under the worker (CONTRACT §6: "losing the broker
//! connection is not fatal"): `rabbitmqctl stop_app` with onboardings in
//! flight, `/readyz` 503 while it is away, `rabbitmqctl start_app`, and every
//! onboarding completes with one tenant each.
//!
//! Also a broker that stops confirming (a memory alarm): the session fails
//! after `amqp.confirm_timeout_ms` and the onboarding completes once.
//!
//! A test binary of its own: `stop_app` and the alarm take every vhost down,
//! and cargo runs test binaries one after another, never next to this one.
//! The broker is started again, and its alarm cleared, whatever happens
//! (guards). Needs `rabbitmqctl` on PATH and the right to run it (root, as
//! `scripts/services.sh` sets the broker up).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use onboarding_worker::broker::admin::Admin;
use onboarding_worker::ledger::Status;
use serde_json::{json, Value};

use crate::support::env::{wait_until, TestEnv};
use crate::support::management::Take;
use crate::support::processes::{listening, rabbitmqctl, readyz};
use crate::support::prometheus::metric_value;
use crate::support::requests::sharespine_request;

const REQUESTS: usize = 20;
/// Where the test keeps every event, across the restart (durable, quorum).
const EVENTS_QUEUE: &str = "test.events";
/// The tests here act on the whole node (its application, its memory alarm):
/// one at a time, though cargo runs a binary's tests in parallel.
static NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a port check waits for an answer.
const PORT_CHECK: Duration = Duration::from_millis(500);

/// Starts the broker's application and waits until AMQP and the management
/// API answer. Idempotent: `start_app` on a running node does nothing.
fn start_broker() -> Result<(), String> {
    rabbitmqctl(&["start_app"])?;
    rabbitmqctl(&["await_startup"])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(listening(5672, PORT_CHECK) && listening(15672, PORT_CHECK)) {
        if Instant::now() > deadline {
            return Err("RabbitMQ's ports 5672 and 15672 did not open within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Starts the broker again when dropped (unless the test already did),
/// whether the test passed or not.
struct BrokerComesBack {
    armed: bool,
}

impl Drop for BrokerComesBack {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = start_broker() {
            eprintln!("could not start RabbitMQ again: {e}; run `rabbitmqctl start_app`");
        }
    }
}

/// The status of the worker's `/readyz`; `None` when it does not answer.
async fn ready_status(client: &reqwest::Client, port: u16) -> Option<u16> {
    readyz(client, port).await.map(|(status, _)| status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_with_onboardings_in_flight_is_survived_and_each_completes_once() {
    let _node = NODE.lock().await;
    let env = TestEnv::start_with(|s| {
        s.sandbox.latency_ms = 100;
        // Four steps at a time, so the twenty are still going when the broker stops.
        s.providers.sharespine.calls.concurrency = 4.try_into().unwrap();
    })
    .await;
    env.vhost
        .declare_queue(
            EVENTS_QUEUE,
            json!({"durable": true, "arguments": {"x-queue-type": "quorum"}}),
        )
        .await;
    env.vhost.bind("onboarding.events", EVENTS_QUEUE, "#").await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let metrics_port = env.worker().metrics_addr.port();
    assert_eq!(
        ready_status(&client, metrics_port).await,
        Some(200),
        "ready at first"
    );

    let ids: Vec<String> = (0..REQUESTS).map(|i| format!("restart-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        env.publish(&sharespine_request(
            id,
            &format!("restart{i}"),
            &["anna", "bob", "carl"],
            Some("anna"),
        ))
        .await;
    }
    let sharespine = env.sandbox.sharespine.clone();
    wait_until(Duration::from_secs(30), || sharespine.tenants().len() >= 4).await;

    // ---- the broker goes away ----
    let started = Instant::now();
    let mut guard = BrokerComesBack { armed: true };
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .unwrap()
        .expect("stop the broker");
    let stop_took = started.elapsed();
    let users_at_stop: usize = sharespine.tenants().iter().map(|t| t.users.len()).sum();
    assert!(!listening(5672, PORT_CHECK), "the broker is down");
    assert!(
        users_at_stop < REQUESTS * 3,
        "onboardings still in flight when the broker went away ({users_at_stop} users made)"
    );
    let mut not_ready = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while not_ready < 5 {
        match ready_status(&client, metrics_port).await {
            Some(503) => not_ready += 1,
            other => {
                not_ready = 0;
                assert!(
                    Instant::now() < deadline,
                    "/readyz answered {other:?}, not 503, 10 s after the broker stopped"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // ---- and comes back ----
    tokio::task::spawn_blocking(start_broker)
        .await
        .unwrap()
        .expect("start the broker again");
    let back_after = started.elapsed();
    guard.armed = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready_status(&client, metrics_port).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "/readyz not 200 within 30 s of the broker's return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_again_after = started.elapsed();

    // ---- every onboarding completes, once ----
    let ledger = onboarding_worker::ledger::open(env.settings.ledger.url.expose())
        .await
        .expect("the test's ledger opens");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut open = Vec::new();
        for id in &ids {
            let record = ledger.get(id).await.expect("ledger read");
            if record.as_ref().map(|r| r.status) != Some(Status::Completed) {
                open.push(format!(
                    "{id}: {:?}",
                    record.map(|r| (r.status, r.cursor, r.done_steps, r.current_step))
                ));
            }
        }
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {REQUESTS} not completed in the ledger 60 s after the broker's return \
             (status, cursor, steps done, current step): {open:#?}\nworker queues: {:?}",
            open.len(),
            env.vhost.busy_queues().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Their `completed` events were published and confirmed (at least once).
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        // Read and left in place: a read that times out loses nothing.
        let events = env
            .vhost
            .try_take(EVENTS_QUEUE, 5000, Take::Requeue)
            .await
            .unwrap_or_default();
        let without: Vec<&String> = ids
            .iter()
            .filter(|id| {
                !events
                    .iter()
                    .any(|e| e["request_id"] == id.as_str() && e["event"] == "completed")
            })
            .collect();
        if without.is_empty() {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "no completed event in {EVENTS_QUEUE} for {without:?}; {} events there",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let completed_after = started.elapsed();
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "failed").collect();
    assert!(failed.is_empty(), "nothing failed: {failed:#?}");

    let tenants = sharespine.tenants();
    let mut per_reference: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tenants {
        *per_reference
            .entry(t.customer_reference.clone())
            .or_default() += 1;
    }
    for i in 0..REQUESTS {
        let reference = format!("restart{i}");
        assert_eq!(
            per_reference.get(&reference),
            Some(&1),
            "exactly one tenant for {reference}: {per_reference:?}"
        );
    }
    for t in &tenants {
        assert_eq!(t.logins(), ["anna", "bob", "carl"], "{}", t.code_name);
        assert_eq!(t.connections.len(), 1, "{}", t.code_name);
        assert_eq!(t.login_urls.len(), 1, "{}", t.code_name);
    }
    let calls = sharespine.knobs.all_calls();
    assert_eq!(
        calls.get("POST /reseller/tenant"),
        Some(&(REQUESTS as u64)),
        "one tenant create per request: {calls:?}"
    );

    // Nothing left behind: no dead letter, no message in a worker queue.
    let admin = Admin::connect(&env.vhost.amqp_url())
        .await
        .expect("a new admin connection");
    let dead = admin.dead_list().await.expect("list dead");
    assert!(dead.is_empty(), "no dead letters: {dead:?}");
    // The management API samples every 500 ms: three quiet looks in a row.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet = 0;
    while quiet < 3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let busy = env.vhost.busy_queues().await;
        quiet = if busy.is_empty() { quiet + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "messages left in worker queues: {busy:?}"
        );
    }
    let metrics = reqwest::get(format!("http://{}/metrics", env.worker().metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let connections = metric_value(&metrics, "onboarding_broker_connections_total", &[]);
    assert!(
        connections.unwrap_or(0.0) >= 2.0,
        "the worker connected again: {connections:?}"
    );
    println!(
        "broker restart: stop_app took {:.1} s ({users_at_stop} of {} users made by then), /readyz 503 while away, \
         broker back {:.1} s after stop_app began, worker ready {:.1} s after, all {REQUESTS} completed {:.1} s after; \
         {} completed events; user create calls {:?}",
        stop_took.as_secs_f64(),
        REQUESTS * 3,
        back_after.as_secs_f64(),
        ready_again_after.as_secs_f64(),
        completed_after.as_secs_f64(),
        events.iter().filter(|e| e["event"] == "completed").count(),
        calls.get("POST /reseller/tenant/{code_name}/user"),
    );
    admin.close().await;
    env.shutdown().await;
}

/// Puts the broker's memory limit back when dropped, whether the test passed
/// or not: a memory alarm left on would block every publisher on the node.
struct AlarmCleared;

impl Drop for AlarmCleared {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]) {
            eprintln!("could not clear the memory alarm: {e}; run `rabbitmqctl set_vm_memory_high_watermark 0.4`");
        }
    }
}

/// A broker that stops confirming (here a memory alarm, which blocks every
/// publishing connection; also a stalled queue or a half-open connection):
/// the publish waiting for its confirm fails after `amqp.confirm_timeout_ms`,
/// the session fails (`reason="confirm_timeout"`) and the worker reconnects,
/// handing the delivery back, instead of holding it unacknowledged for as long
/// as the connection lives. Once the broker confirms again the onboarding
/// completes, with one tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_confirming_fails_the_session_and_the_onboarding_completes_once() {
    let _node = NODE.lock().await;
    let env = TestEnv::start_with(|s| {
        // The create is in flight when the alarm goes on (calls time out at 1.5 s).
        s.sandbox.latency_ms = 1000;
        s.amqp.confirm_timeout_ms = 2000.try_into().unwrap();
    })
    .await;
    let sharespine = env.sandbox.sharespine.clone();
    env.publish(&sharespine_request(
        "alarm-1",
        "alarm1",
        &["anna"],
        Some("anna"),
    ))
    .await;
    let knobs = sharespine.knobs.clone();
    wait_until(Duration::from_secs(20), || {
        knobs.all_calls().get("POST /reseller/tenant").copied() >= Some(1)
    })
    .await;

    // ---- the broker stops confirming ----
    let _cleared = AlarmCleared;
    let started = Instant::now();
    tokio::task::spawn_blocking(|| rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]))
        .await
        .unwrap()
        .expect("set a memory alarm");
    let metrics_url = format!("http://{}/metrics", env.worker().metrics_addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let failed = metric_value(
            &text,
            "onboarding_broker_session_failures_total",
            &[("reason", "confirm_timeout")],
        );
        if failed >= Some(1.0) {
            break;
        }
        if Instant::now() > deadline {
            let logs = crate::support::env::captured_logs();
            let logs = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
            let tail: Vec<&str> = logs
                .lines()
                .filter(|l| !l.contains("CA root"))
                .rev()
                .take(30)
                .collect();
            panic!(
                "no confirm_timeout session failure within 30 s of the alarm: {failed:?}; last log lines: {tail:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let noticed_after = started.elapsed();

    // ---- and confirms again ----
    tokio::task::spawn_blocking(|| rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]))
        .await
        .unwrap()
        .expect("clear the memory alarm");
    let ledger = onboarding_worker::ledger::open(env.settings.ledger.url.expose())
        .await
        .expect("the test's ledger opens");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let record = ledger.get("alarm-1").await.expect("ledger read");
        if record.as_ref().map(|r| r.status) == Some(Status::Completed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not completed 60 s after the alarm cleared: {:?}; worker queues: {:?}",
            record.map(|r| (r.status, r.cursor, r.done_steps, r.current_step)),
            env.vhost.busy_queues().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let completed_after = started.elapsed();
    let end = env.final_event("alarm-1", Duration::from_secs(20)).await;
    assert_eq!(end["event"], "completed", "{end:#}");
    assert_eq!(sharespine.tenants().len(), 1, "one tenant");
    assert_eq!(
        knobs.all_calls().get("POST /reseller/tenant"),
        Some(&1),
        "one tenant create"
    );
    println!(
        "confirms stopped: session failed (confirm_timeout) {:.1} s after the alarm, onboarding completed {:.1} s after",
        noticed_after.as_secs_f64(),
        completed_after.as_secs_f64()
    );
}
