//! The delivery guarantees at their edges (CONTRACT §6), each under a fault a
//! production broker produces: a subscriber's full `reject-publish` queue
//! (nacks), a step queue deleted under the worker (`basic.cancel` and
//! returns), many unroutable publishes in flight at once, a channel closed by
//! a channel error, a provider step longer than its lease, a header that names
//! another request, and a message that keeps failing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onboarding_worker::broker::{self, AmqpTransport};
use onboarding_worker::domain::ProviderId;
use onboarding_worker::engine::{Transport, TransportError};
use onboarding_worker::metrics::Metrics;
use onboarding_worker::sandbox::faults::{Fault, FaultRule};
use serde_json::{json, Value};

use crate::support::env::{wait_until, wait_until_async, TestEnv};
use crate::support::management::Take;
use crate::support::prometheus::metric_value;
use crate::support::requests::sharespine_request;
use crate::support::vhost::Vhost;

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(text, name, labels).unwrap_or(0.0)
}

/// Records when readiness first dropped and when it came back, sampled every 5 ms.
fn watch_readiness(env: &TestEnv) -> Arc<Mutex<(Option<Instant>, Option<Instant>)>> {
    let health = env.worker().health.clone();
    let seen = Arc::new(Mutex::new((None, None)));
    let out = seen.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let ready = health.is_ready();
            {
                let mut s = seen.lock().unwrap();
                match (s.0, s.1, ready) {
                    (None, _, false) => s.0 = Some(Instant::now()),
                    (Some(_), None, true) => {
                        s.1 = Some(Instant::now());
                        return;
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_a_full_reject_publish_subscriber_once_it_drains() {
    let env = TestEnv::start().await;
    // A subscriber's bounded queue, already full.
    env.vhost
        .declare_queue(
            "subscriber",
            json!({"durable": true, "arguments": {"x-max-length": 3, "x-overflow": "reject-publish"}}),
        )
        .await;
    env.vhost.bind("onboarding.events", "subscriber", "#").await;
    for i in 0..3 {
        env.vhost
            .publish_json(
                "amq.default",
                "subscriber",
                &json!({"filler": i}),
                json!({}),
            )
            .await;
    }
    // Full by construction (three routed into a queue of three); the
    // management API counts them a statistics round or more later.
    wait_until_async(Duration::from_secs(30), async || {
        env.vhost.queue_counts("subscriber").await.0 == 3
    })
    .await;

    let ids = ["held-1", "held-2"];
    for id in ids {
        env.publish(&sharespine_request(id, id, &["anna"], Some("anna")))
            .await;
    }
    // While the broker refuses `accepted`, nothing of the onboarding goes out:
    // no provider call, no later event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant"),
        0,
        "no step runs before its request's `accepted` is taken"
    );
    let held = metric(
        &env.metrics_text().await,
        "onboarding_retries_total",
        &[("reason", "refused")],
    );
    assert!(
        held >= 2.0,
        "both onboardings are held back (counted {held})"
    );

    // The subscriber drains its queue, a few at a time, as a slow consumer would.
    let started = Instant::now();
    let mut received: Vec<Value> = Vec::new();
    while received
        .iter()
        .filter(|e| e["event"] == "completed")
        .count()
        < ids.len()
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the subscriber did not receive both completions; got {received:#?}"
        );
        received.extend(
            env.vhost
                .take("subscriber", 2, Take::Remove)
                .await
                .into_iter()
                .filter(|e| e.get("filler").is_none()),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = [
        "accepted:",
        "step_completed:create_tenant",
        "step_completed:create_user",
        "step_completed:create_connection",
        "step_completed:create_login_url",
        "completed:",
    ];
    for id in ids {
        let seen: Vec<String> = received
            .iter()
            .filter(|e| e["request_id"] == id)
            .map(|e| {
                format!(
                    "{}:{}",
                    e["event"].as_str().unwrap(),
                    e["step"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(seen, expected, "{id}: every event, once, in order");
    }
    assert_eq!(
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant"),
        2,
        "each create once"
    );
    assert_eq!(env.sandbox.sharespine.tenants().len(), 2);
    eprintln!(
        "figures: {} of {} events delivered to the full subscriber after it drained, in {:?}; {held} hold-backs while full",
        received.len(),
        expected.len() * ids.len(),
        started.elapsed()
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_queue_deleted_under_the_worker_is_noticed_declared_again_and_no_request_is_lost() {
    let env = TestEnv::start().await;
    let readiness = watch_readiness(&env);
    let deleted_at = Instant::now();
    env.vhost.delete_queue("onboarding.steps.sharespine").await;
    // Published at once, while the queue is gone: their first step is unroutable.
    let ids = ["gone-1", "gone-2", "gone-3", "gone-4"];
    for id in ids {
        env.publish(&sharespine_request(id, id, &["anna"], None))
            .await;
    }
    for id in ids {
        let done = env.final_event(id, Duration::from_secs(60)).await;
        assert_eq!(done["event"], "completed", "{id}: {done:#}");
    }
    let (down, up) = *readiness.lock().unwrap();
    let down = down.expect("/readyz went not-ready after the queue was deleted");
    let up = up.expect("/readyz came back");
    assert!(
        down - deleted_at < Duration::from_secs(5),
        "noticed within seconds"
    );
    let text = env.metrics_text().await;
    assert!(
        metric(
            &text,
            "onboarding_broker_session_failures_total",
            &[("reason", "consumer_cancelled")]
        ) >= 1.0,
        "the cancelled consumer is counted"
    );
    // The topology is back: the queue exists and is consumed.
    assert!(
        env.vhost
            .queue("onboarding.steps.sharespine")
            .await
            .is_some(),
        "the step queue was declared again"
    );
    assert_eq!(
        env.sandbox.sharespine.tenants().len(),
        ids.len(),
        "each create once"
    );
    assert!(
        env.dead().await.is_empty(),
        "nothing ended in onboarding.dead"
    );
    for id in ids {
        let accepted = env
            .events_of(id)
            .await
            .iter()
            .filter(|e| e["event"] == "accepted")
            .count();
        assert!(
            accepted <= 2,
            "{id}: no accept loop ({accepted} accepted events)"
        );
        let record = env.worker().ledger.get(id).await.unwrap().unwrap();
        assert_eq!(
            record.status,
            onboarding_worker::ledger::Status::Completed,
            "{id}"
        );
    }
    eprintln!(
        "figures: not-ready {:?} after the delete, ready again {:?} later",
        down - deleted_at,
        up - down
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unroutable_publish_is_a_failure_of_its_own_message_however_many_are_in_flight() {
    let vhost = Vhost::new().await;
    let admin = onboarding_worker::broker::admin::Admin::connect(&vhost.amqp_url())
        .await
        .expect("admin connects and declares the topology");
    vhost.delete_queue("onboarding.steps.computestacks").await;
    let conn = broker::connect(&vhost.amqp_url(), "test-transport", None)
        .await
        .expect("connects");
    let transport = AmqpTransport::open(&conn, 16, Duration::from_secs(30), Metrics::new())
        .await
        .expect("opens its channels");
    for round in 0..3 {
        let results = futures::future::join_all((0..120).map(|i| {
            let provider = if i % 3 == 0 {
                ProviderId::Computestacks
            } else {
                ProviderId::Sharespine
            };
            let t = &transport;
            async move {
                let body = json!({"request_id": format!("r{round}-{i}"), "provider": provider.as_str(), "seq": 0, "step": 0});
                (provider, t.publish_step(provider, body.to_string().into_bytes(), Duration::ZERO).await)
            }
        }))
        .await;
        for (i, (provider, result)) in results.iter().enumerate() {
            match provider {
                ProviderId::Computestacks => assert!(
                    matches!(result, Err(TransportError::Unroutable(_))),
                    "round {round}, publish {i} to the deleted queue: {result:?}"
                ),
                _ => assert!(
                    result.is_ok(),
                    "round {round}, publish {i} to a live queue: {result:?}"
                ),
            }
        }
    }
    // Every routable publish arrived (the management API counts a moment later).
    let started = Instant::now();
    let mut counted = (0, 0);
    while started.elapsed() < Duration::from_secs(30) {
        counted = vhost.queue_counts("onboarding.steps.sharespine").await;
        if counted.0 == 3 * 80 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(counted, (3 * 80, 0), "every routable publish arrived, once");
    let _ = conn.close(200, "done".into()).await;
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_closed_by_a_channel_error_is_noticed_and_the_onboarding_completes_once() {
    let env = TestEnv::start().await;
    let readiness = watch_readiness(&env);
    // The retry after this 429 waits in a delay tier, published to the delay
    // exchange, which is gone: the broker closes the publishing channel
    // (404 NOT_FOUND).
    env.sandbox.sharespine.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/reseller/tenant".into(),
        fault: Fault::RateLimited { retry_after_s: 1 },
        times: 1,
    });
    env.vhost.delete_exchange("onboarding.delay").await;
    env.publish(&sharespine_request("closed-1", "closed", &["anna"], None))
        .await;
    let done = env.final_event("closed-1", Duration::from_secs(60)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    let text = env.metrics_text().await;
    assert!(
        metric(
            &text,
            "onboarding_broker_session_failures_total",
            &[("reason", "channel_closed")]
        ) >= 1.0,
        "the closed channel is counted: {}",
        text.lines()
            .filter(|l| l.contains("session_failures"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (down, up) = *readiness.lock().unwrap();
    assert!(
        down.is_some() && up.is_some(),
        "/readyz was not-ready meanwhile and came back"
    );
    assert!(
        env.vhost.exchange_exists("onboarding.delay").await,
        "the delay exchange was declared again"
    );
    assert_eq!(env.sandbox.sharespine.tenants().len(), 1, "one tenant");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_outlasts_its_lease_keeps_it_and_its_create_is_not_repeated() {
    // Lease: call timeout 1.5 s + margin 1 s. `create_order` with a product
    // name makes two calls (the catalogue, then the order), each 1.4 s here:
    // the step outlasts its lease, and only the heartbeat keeps it.
    let env = TestEnv::start().await;
    for (method, path) in [("GET", "/api/products"), ("POST", "/api/orders")] {
        env.sandbox.computestacks.knobs.inject(FaultRule {
            method: Some(method.into()),
            path_contains: path.into(),
            fault: Fault::Hang { ms: 1400 },
            times: 1,
        });
    }
    let id = "long-1";
    env.publish(&json!({
        "request_id": id, "provider": "computestacks", "operation": "onboard",
        "input": {
            "user": {"fname": "Ada", "lname": "Lovelace", "email": "ada@example.test",
                     "password": "pw-Zq7-secret", "password_confirmation": "pw-Zq7-secret",
                     "skip_email_confirm": true},
            "api_credential": {"name": "billing"},
            "order": {"project_name": "site-long", "location_id": 1,
                      "containers": [{"image_id": 4, "resources": {"product": "small"}, "params": [], "domains": []}]}
        }
    }))
    .await;
    wait_until(Duration::from_secs(20), || {
        env.sandbox.computestacks.knobs.calls("GET /api/products") >= 1
    })
    .await;
    // A copy of the running step message (as a redelivery after a lost ack
    // would be), arriving after the lease's first length has passed.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    env.vhost
        .publish_json(
            "onboarding.steps",
            "now.computestacks",
            &json!({"request_id": id, "provider": "computestacks", "seq": 2, "step": 2}),
            json!({}),
        )
        .await;
    let done = env.final_event(id, Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    // Let the copy come round and be dropped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.sandbox.computestacks.knobs.calls("POST /api/orders"),
        1,
        "one order call"
    );
    assert_eq!(env.sandbox.computestacks.orders().len(), 1, "one order");
    let text = env.metrics_text().await;
    assert_eq!(
        metric(&text, "onboarding_create_repeats_total", &[]),
        0.0,
        "no possible repeat"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_header_names_another_request_is_invalid_kept_whole_and_calls_nothing() {
    let env = TestEnv::start().await;
    let request = sharespine_request("body-id-1", "mixup", &["anna"], None);
    env.vhost
        .publish_json(
            "onboarding.requests",
            "test",
            &request,
            json!({"request_id": "header-id-9"}),
        )
        .await;
    let failed = env
        .wait_event(Duration::from_secs(20), |e| e["event"] == "failed")
        .await;
    assert_eq!(failed["error"]["kind"], "invalid_request", "{failed:#}");
    assert_eq!(failed["request_id"], Value::Null, "neither id is usable");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("header-id-9") && message.contains("body-id-1"),
        "names both ids: {message}"
    );
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "kept in onboarding.dead");
    let kept: Value = serde_json::from_slice(&dead[0].body).unwrap();
    assert_eq!(kept, request, "kept whole");
    assert_eq!(
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant"),
        0,
        "nothing called"
    );
    assert!(
        env.worker()
            .ledger
            .get("body-id-1")
            .await
            .unwrap()
            .is_none(),
        "not taken on"
    );
    // The worker goes on.
    env.publish(&sharespine_request("after-1", "after", &[], None))
        .await;
    let done = env.final_event("after-1", Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_ends_failed_exhausted_before_the_broker_s_delivery_limit() {
    let env =
        TestEnv::start_with(|s| s.worker.give_up_after_deliveries = 3.try_into().unwrap()).await;
    // A step message for a request this worker's ledger does not hold: it
    // fails every time (workers on different ledgers, or a wiped one).
    env.vhost
        .publish_json(
            "onboarding.steps",
            "now.sharespine",
            &json!({"request_id": "ghost-1", "provider": "sharespine", "seq": 0, "step": 0}),
            json!({}),
        )
        .await;
    let failed = env.final_event("ghost-1", Duration::from_secs(30)).await;
    assert_eq!(failed["event"], "failed");
    assert_eq!(failed["error"]["kind"], "exhausted", "{failed:#}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("after 3 deliveries"), "{message}");
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "kept in onboarding.dead");
    assert_eq!(dead[0].error_kind.as_deref(), Some("exhausted"));
    assert_eq!(
        env.vhost.queue_counts("onboarding.steps.sharespine").await,
        (0, 0)
    );
    env.shutdown().await;
}
