//! ComputeStacks end to end: a user, an API credential, an order placed as
//! that user, then polling the order while the onboarding waits in the
//! broker's delay queues (never in the worker).

use std::process::Child;
use std::time::{Duration, Instant};

use base64::Engine as _;
use onboarding_worker::broker::topology::{delay_queue, DELAY_TIERS_MS};
use onboarding_worker::config::{PollSettings, Settings};
use onboarding_worker::sandbox::computestacks::{
    each_reading, CredentialRecord, ErrorForm, LoadBalancerIp, OrderRecord, Readings, UserRecord,
};
use onboarding_worker::sandbox::faults::{Fault, FaultRule};
use serde_json::{json, Value};

use crate::support::env::{captured_logs, TestEnv};
use crate::support::prometheus::metric_value;
use crate::support::requests::steps_of;

const STEP_QUEUE: &str = "onboarding.steps.computestacks";
const USER_PASSWORD: &str = "user-pass-Zq7-secret";

/// A ComputeStacks onboarding request for `email` with one container whose
/// `resources` are given; the project is named `site-<request_id>`.
fn request(request_id: &str, email: &str, resources: Value) -> Value {
    json!({
        "request_id": request_id,
        "provider": "computestacks",
        "operation": "onboard",
        "input": {
            "user": {"fname": "Ada", "lname": "Lovelace", "email": email,
                     "password": USER_PASSWORD, "password_confirmation": USER_PASSWORD,
                     "skip_email_confirm": true, "external_id": format!("crm-{request_id}"),
                     "company_name": "Analytical Engines"},
            "api_credential": {"name": "billing"},
            "order": {"project_name": format!("site-{request_id}"), "location_id": 1,
                      "containers": [{"image_id": 4, "resources": resources,
                                      "params": [], "domains": []}]}
        }
    })
}

/// Sets the `poll_order` policy.
fn poll_order(s: &mut Settings, interval_ms: u64, growth: f64, max_ms: u64, deadline_ms: u64) {
    s.providers.computestacks.polls.insert(
        "poll_order".into(),
        PollSettings {
            interval_ms,
            growth,
            max_interval_ms: max_ms,
            deadline_ms,
        },
    );
}

/// The event names of `events`, in order.
fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// What the sandbox holds behind a completed onboarding's outputs.
fn held_by_sandbox(env: &TestEnv, outputs: &Value) -> (UserRecord, CredentialRecord, OrderRecord) {
    let cs = &env.sandbox.computestacks;
    let user = cs
        .users()
        .into_iter()
        .find(|u| outputs["user_id"] == u.id)
        .expect("the user in the outputs exists");
    let credential = cs
        .api_credentials()
        .into_iter()
        .find(|c| outputs["api_credential_id"] == c.id)
        .expect("the credential in the outputs exists");
    let order = cs
        .orders()
        .into_iter()
        .find(|o| outputs["order_id"] == o.id.as_str())
        .expect("the order in the outputs exists");
    (user, credential, order)
}

/// Ready messages in every delay tier together (exact counts, read at once).
async fn waiting_in_delay_queues(env: &TestEnv) -> u32 {
    let queues: Vec<String> = DELAY_TIERS_MS.iter().map(|ms| delay_queue(*ms)).collect();
    let depths = futures::future::join_all(queues.iter().map(|q| env.admin.queue_depth(q))).await;
    depths.into_iter().map(|d| d.expect("queue depth")).sum()
}

/// The value of a counter or gauge in `/metrics` text, 0 when absent.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(text, name, labels).unwrap_or(0.0)
}

/// Waits until every request of `ids` has finished placing its order.
async fn wait_orders_placed(env: &TestEnv, ids: &[String]) {
    for id in ids {
        let id = id.clone();
        env.wait_event(Duration::from_secs(30), move |e| {
            e["request_id"] == id.as_str()
                && e["event"] == "step_completed"
                && e["step"] == "create_order"
        })
        .await;
    }
}

/// Every request of `ids` completed, one user, credential and order each, and
/// no provider create call made twice.
async fn assert_each_onboarded_once(env: &TestEnv, ids: &[String]) {
    let mut order_ids = Vec::new();
    for id in ids {
        let done = env.final_event(id, Duration::from_secs(60)).await;
        assert_eq!(done["event"], "completed", "{done:#}");
        let (user, credential, order) = held_by_sandbox(env, &done["outputs"]);
        assert_eq!(
            user.external_id.as_deref(),
            Some(format!("crm-{id}").as_str())
        );
        assert_eq!(credential.user_id, user.id);
        assert_eq!(order.user_id, user.id);
        assert_eq!(order.status, "completed");
        assert_eq!(done["outputs"]["project_id"], json!(order.project_id));
        order_ids.push(order.id);
    }
    let cs = &env.sandbox.computestacks;
    let n = ids.len();
    let orders = cs.orders();
    assert_eq!(
        orders.len(),
        n,
        "exactly one order per request: {orders:#?}"
    );
    for id in ids {
        let per_request = orders
            .iter()
            .filter(|o| o.project_name == format!("site-{id}"))
            .count();
        assert_eq!(per_request, 1, "one order for {id}");
    }
    assert_eq!(cs.users().len(), n, "one user per request");
    assert_eq!(cs.api_credentials().len(), n, "one credential per request");
    let calls = cs.knobs.all_calls();
    for call in [
        "POST /api/admin/users",
        "POST /api/users/{id}/api_credentials",
        "POST /api/orders",
    ] {
        assert_eq!(calls.get(call), Some(&(n as u64)), "{call}: {calls:?}");
    }
    order_ids.sort();
    order_ids.dedup();
    assert_eq!(order_ids.len(), n, "distinct orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_given_by_name_and_one_given_by_id_both_onboard_with_outputs_equal_to_what_the_sandbox_holds(
) {
    let env = TestEnv::start().await;
    env.publish(&request(
        "cs-by-name",
        "name@example.com",
        json!({"product": "medium"}),
    ))
    .await;
    env.publish(&request(
        "cs-by-id",
        "id@example.com",
        json!({"product_id": 3}),
    ))
    .await;

    for (id, email, product_id) in [
        ("cs-by-name", "name@example.com", 2),
        ("cs-by-id", "id@example.com", 3),
    ] {
        let done = env.final_event(id, Duration::from_secs(30)).await;
        assert_eq!(done["event"], "completed", "{done:#}");
        assert_eq!(done["provider"], "computestacks");
        assert_eq!(done["operation"], "onboard");

        let (user, credential, order) = held_by_sandbox(&env, &done["outputs"]);
        assert_eq!(
            done["outputs"],
            json!({
                "user_id": user.id,
                "api_credential_id": credential.id,
                "api_username": credential.username,
                "order_id": order.id,
                "project_id": order.project_id.expect("a completed order has a project"),
                "load_balancer_ip": order.load_balancer_ip,
            }),
            "{id}: the outputs are exactly the contract's six"
        );
        assert_eq!(user.email, email);
        assert_eq!(
            user.external_id.as_deref(),
            Some(format!("crm-{id}").as_str())
        );
        assert_eq!(
            user.other["company_name"], "Analytical Engines",
            "unknown fields reach the provider"
        );
        assert_eq!(credential.user_id, user.id);
        assert_eq!(credential.name, "billing");
        assert_eq!(order.user_id, user.id, "ordered as the new user");
        assert_eq!(order.status, "completed");
        assert_eq!(order.product_ids, vec![product_id], "{id}: product");
        assert_eq!(order.project_name, format!("site-{id}"));

        let events = env.events_of(id).await;
        assert_eq!(
            names(&events),
            [
                "accepted",
                "step_completed",
                "step_completed",
                "step_completed",
                "step_completed",
                "completed"
            ],
            "{id}: {events:#?}"
        );
        assert_eq!(
            steps_of(&events),
            [
                "create_user",
                "create_api_credential",
                "create_order",
                "poll_order"
            ]
        );
    }
    let cs = &env.sandbox.computestacks;
    assert_eq!(cs.users().len(), 2);
    assert_eq!(cs.orders().len(), 2);
    assert_eq!(
        cs.knobs.calls("GET /api/products"),
        1,
        "the catalogue is read for the named product only"
    );
    assert_eq!(cs.knobs.calls("POST /api/orders"), 2);

    // Nothing left behind in the broker.
    let mut queues = vec![
        "onboarding.requests".to_string(),
        STEP_QUEUE.to_string(),
        "onboarding.dead".to_string(),
    ];
    queues.extend(DELAY_TIERS_MS.iter().map(|ms| delay_queue(*ms)));
    for q in &queues {
        assert_eq!(env.admin.queue_depth(q).await.unwrap(), 0, "{q} is empty");
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_password_is_in_the_completed_event_only_when_asked_for_and_never_in_logs_other_events_metrics_or_dead_messages(
) {
    let env = TestEnv::start().await;
    let cs = &env.sandbox.computestacks;
    // A retried poll puts a warning with the provider's error in the logs.
    cs.knobs.inject(FaultRule {
        method: Some("GET".into()),
        path_contains: "/api/orders/".into(),
        fault: Fault::Status { status: 503 },
        times: 2,
    });
    cs.fail_orders_for_project("site-creds-failing");

    let mut asked = request(
        "creds-asked",
        "asked@example.com",
        json!({"product": "small"}),
    );
    asked["return_credentials"] = json!(true);
    let mut declined = request(
        "creds-declined",
        "declined@example.com",
        json!({"product_id": 1}),
    );
    declined["return_credentials"] = json!(false);
    let silent = request(
        "creds-silent",
        "silent@example.com",
        json!({"product_id": 1}),
    );
    let mut failing = request(
        "creds-failing",
        "failing@example.com",
        json!({"product": "small"}),
    );
    failing["return_credentials"] = json!(true);
    for r in [&asked, &declined, &silent, &failing] {
        env.publish(r).await;
    }

    let done = env
        .final_event("creds-asked", Duration::from_secs(30))
        .await;
    assert_eq!(done["event"], "completed", "{done:#}");
    let (_, credential, order) = held_by_sandbox(&env, &done["outputs"]);
    let password = cs
        .api_credential_password(credential.id)
        .expect("the sandbox knows the password");
    assert_eq!(
        done["outputs"]["api_password"], password,
        "the credential's password, as the provider handed it out"
    );
    // ... and it works: the customer's order is readable with it, as theirs.
    let base = env.sandbox.computestacks_url();
    let http = reqwest::Client::new();
    let shown = http
        .get(format!("{base}/api/orders/{}", order.id))
        .basic_auth(&credential.username, Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 200);
    let shown: Value = shown.json().await.unwrap();
    assert_eq!(shown["order"]["id"], order.id.as_str());
    assert_eq!(
        done["outputs"].as_object().unwrap().len(),
        7,
        "the six outputs plus api_password: {:#}",
        done["outputs"]
    );

    for id in ["creds-declined", "creds-silent"] {
        let done = env.final_event(id, Duration::from_secs(30)).await;
        assert_eq!(done["event"], "completed", "{done:#}");
        assert!(
            done["outputs"].get("api_password").is_none(),
            "{id}: not asked for: {done:#}"
        );
    }
    let failed = env
        .final_event("creds-failing", Duration::from_secs(30))
        .await;
    assert_eq!(failed["event"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["kind"], "job_failed");
    assert!(
        failed["outputs"].get("api_password").is_none(),
        "asked for, but only a completed event carries it: {failed:#}"
    );

    let events = env.drain_events(Duration::from_millis(300)).await;
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "the failed onboarding is kept");
    let metrics = env.metrics_text().await;
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    assert!(
        logs.contains("creds-asked"),
        "logs were captured and carry the request id"
    );
    assert!(
        metrics.contains("onboarding_polls_total"),
        "metrics were read"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.to_string().contains("api_password"))
            .count(),
        1,
        "one event names api_password: the completed event of creds-asked"
    );

    // Every event but the one that was asked for it, every dead message
    // (headers and body), /metrics and every log line of this test binary.
    let other_events: Vec<&Value> = events
        .iter()
        .filter(|e| !(e["request_id"] == "creds-asked" && e["event"] == "completed"))
        .collect();
    let everything = format!(
        "{logs}\n{}\n{}\n{metrics}",
        serde_json::to_string(&other_events).unwrap(),
        dead.iter()
            .map(|d| format!("{d:?} {}", String::from_utf8_lossy(&d.body)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let credentials = cs.api_credentials();
    assert_eq!(credentials.len(), 4, "a credential per onboarding");
    for c in &credentials {
        let password = cs.api_credential_password(c.id).unwrap();
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", c.username));
        let url_encoded =
            |s: &str| -> String { url::form_urlencoded::byte_serialize(s.as_bytes()).collect() };
        for (form, text) in [
            ("plain", password.clone()),
            ("Basic-encoded", basic.clone()),
            ("URL-encoded", url_encoded(&password)),
            ("URL-encoded Basic", url_encoded(&basic)),
        ] {
            assert!(
                !everything.contains(&text),
                "the API password of credential {} leaked ({form})",
                c.id
            );
        }
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_that_already_exists_fails_rejected_at_create_user_and_is_kept_in_dead() {
    let env = TestEnv::start().await;
    env.publish(&request(
        "email-first",
        "taken@example.com",
        json!({"product_id": 1}),
    ))
    .await;
    env.wait_event(Duration::from_secs(30), |e| {
        e["request_id"] == "email-first" && e["step"] == "create_user"
    })
    .await;
    let second = request(
        "email-second",
        "Taken@example.com",
        json!({"product_id": 1}),
    );
    env.publish(&second).await;

    let failed = env
        .final_event("email-second", Duration::from_secs(30))
        .await;
    assert_eq!(failed["event"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["kind"], "rejected");
    assert_eq!(failed["error"]["step"], "create_user");
    assert_eq!(failed["error"]["http_status"], 422);
    assert_eq!(
        failed["error"]["message"],
        "provider rejected create_user: Email has already been taken"
    );
    assert_eq!(failed["outputs"], json!({}), "nothing was created");
    assert_eq!(
        names(&env.events_of("email-second").await),
        ["accepted", "failed"]
    );
    let first = env
        .final_event("email-first", Duration::from_secs(30))
        .await;
    assert_eq!(first["event"], "completed", "the first one is unharmed");

    let cs = &env.sandbox.computestacks;
    assert_eq!(cs.users().len(), 1, "no second user");
    assert_eq!(cs.api_credentials().len(), 1);
    assert_eq!(cs.orders().len(), 1);

    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0].request_id.as_deref(), Some("email-second"));
    assert_eq!(dead[0].error_kind.as_deref(), Some("rejected"));
    assert_eq!(dead[0].step.as_deref(), Some("create_user"));
    let original: Value = serde_json::from_slice(&dead[0].body).unwrap();
    assert_eq!(original, second, "kept whole");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_slower_than_its_poll_deadline_times_out_at_poll_order_with_what_was_created() {
    let env = TestEnv::start_with(|s| poll_order(s, 200, 1.5, 500, 1500)).await;
    env.sandbox
        .computestacks
        .set_order_duration(Duration::from_secs(60));
    env.publish(&request(
        "slow-order",
        "slow@example.com",
        json!({"product": "large"}),
    ))
    .await;

    let failed = env.final_event("slow-order", Duration::from_secs(30)).await;
    assert_eq!(failed["event"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["kind"], "timed_out");
    assert_eq!(failed["error"]["step"], "poll_order");
    assert!(failed["error"]["http_status"].is_null(), "{failed:#}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("deadline"), "{message}");

    let out = &failed["outputs"];
    let cs = &env.sandbox.computestacks;
    let (user, credential, order) = held_by_sandbox(&env, out);
    assert_eq!(out["user_id"], user.id);
    assert_eq!(out["api_credential_id"], credential.id);
    assert_eq!(out["api_username"], credential.username.as_str());
    assert_eq!(out["order_id"], order.id.as_str());
    assert!(out.get("project_id").is_none(), "no project yet: {out:#}");
    assert!(out.get("api_password").is_none());
    assert_ne!(order.status, "completed", "the order is still running");

    // It waited for its deadline (from the first poll), not much less.
    let events = env.events_of("slow-order").await;
    let placed = events
        .iter()
        .find(|e| e["step"] == "create_order")
        .expect("create_order completed");
    let waited = failed["duration_ms"].as_i64().unwrap() - placed["duration_ms"].as_i64().unwrap();
    assert!(waited >= 1400, "gave up after {waited} ms");
    assert!(
        cs.knobs.calls("GET /api/orders/{id}") >= 3,
        "polled a few times before giving up"
    );

    let dead = env.dead().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].request_id.as_deref(), Some("slow-order"));
    assert_eq!(dead[0].error_kind.as_deref(), Some("timed_out"));
    assert_eq!(dead[0].step.as_deref(), Some("poll_order"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_the_provider_fails_ends_job_failed_at_poll_order() {
    let env = TestEnv::start().await;
    let cs = &env.sandbox.computestacks;
    cs.fail_next_orders(1);
    env.publish(&request(
        "doomed-order",
        "doomed@example.com",
        json!({"product_id": 2}),
    ))
    .await;

    let failed = env
        .final_event("doomed-order", Duration::from_secs(30))
        .await;
    assert_eq!(failed["event"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["kind"], "job_failed");
    assert_eq!(failed["error"]["step"], "poll_order");
    let out = &failed["outputs"];
    let (_, _, order) = held_by_sandbox(&env, out);
    assert_eq!(order.status, "failed");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&order.id) && message.contains("failed"),
        "names the order: {message}"
    );
    for key in ["user_id", "api_credential_id", "api_username", "order_id"] {
        assert!(out.get(key).is_some(), "{key} kept for clean-up: {out:#}");
    }
    assert!(out.get("project_id").is_none());
    assert_eq!(
        steps_of(&env.events_of("doomed-order").await),
        ["create_user", "create_api_credential", "create_order"]
    );

    let dead = env.dead().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].request_id.as_deref(), Some("doomed-order"));
    assert_eq!(dead[0].error_kind.as_deref(), Some("job_failed"));
    assert_eq!(dead[0].step.as_deref(), Some("poll_order"));
    let metrics = env.metrics_text().await;
    assert_eq!(
        metric(
            &metrics,
            "onboarding_requests_total",
            &[("provider", "computestacks"), ("outcome", "job_failed")]
        ),
        1.0
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_second_orders_all_wait_in_delay_queues_at_once_with_nothing_held_by_the_worker(
) {
    const N: usize = 20;
    const ORDER: Duration = Duration::from_secs(5);
    const INTERVAL_MS: u64 = 1000;
    // A fixed 1 s poll interval: each wait is one tier, so a message is never
    // counted in two tiers at once and the 20 waits line up.
    let env = TestEnv::start_with(|s| poll_order(s, INTERVAL_MS, 1.0, INTERVAL_MS, 30_000)).await;
    let cs = &env.sandbox.computestacks;
    cs.set_order_duration(ORDER);
    let ids: Vec<String> = (0..N).map(|i| format!("many-{i:02}")).collect();
    let started = Instant::now();
    for id in &ids {
        env.publish(&request(
            id,
            &format!("{id}@example.com"),
            json!({"product_id": 1}),
        ))
        .await;
    }

    // Watch the broker while the orders run: the exact ready counts of the
    // delay tiers, and the management API's (sampled) view of the step queue
    // for a while after all were seen waiting.
    let mut most_waiting = 0;
    let mut all_waiting_at = None;
    let mut in_flight_when_all_waiting = Vec::new();
    let mut step_queue_samples = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        let waiting = waiting_in_delay_queues(&env).await;
        most_waiting = most_waiting.max(waiting);
        if waiting as usize == N {
            all_waiting_at.get_or_insert(started.elapsed());
            let m = env.metrics_text().await;
            in_flight_when_all_waiting.push(metric(
                &m,
                "onboarding_steps_in_flight",
                &[("provider", "computestacks")],
            ));
        }
        if let Some(at) = all_waiting_at {
            let counts = env.vhost.queue_counts(STEP_QUEUE).await;
            step_queue_samples.push(counts);
            // Long enough for two rounds of the management API's statistics.
            if started.elapsed() > at + Duration::from_millis(1200) {
                break;
            }
        }
        if cs.orders().iter().any(|o| o.status == "completed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_waiting_at = all_waiting_at.unwrap_or_else(|| {
        panic!("the {N} orders were never all waiting in delay queues at once (most seen: {most_waiting})")
    });
    assert!(
        step_queue_samples.iter().any(|(_, unacked)| *unacked == 0),
        "{STEP_QUEUE} showed no moment with 0 unacknowledged while they waited: {step_queue_samples:?}"
    );
    assert!(
        in_flight_when_all_waiting.contains(&0.0),
        "the worker reported no step in flight while all {N} waited: {in_flight_when_all_waiting:?}"
    );
    let most_unacked = step_queue_samples.iter().map(|c| c.1).max().unwrap_or(0);
    assert!(
        cs.orders().iter().all(|o| o.status != "completed"),
        "seen while the orders were still running"
    );

    assert_each_onboarded_once(&env, &ids).await;
    let wall = started.elapsed();

    // The figures.
    let mut waits = Vec::new();
    let mut durations = Vec::new();
    for id in &ids {
        let events = env.events_of(id).await;
        let placed = events
            .iter()
            .find(|e| e["step"] == "create_order")
            .expect("create_order");
        let done = events.iter().find(|e| e["event"] == "completed").unwrap();
        let total = done["duration_ms"].as_i64().unwrap();
        waits.push(total - placed["duration_ms"].as_i64().unwrap());
        durations.push(total);
    }
    let metrics = env.metrics_text().await;
    let not_yet = metric(
        &metrics,
        "onboarding_polls_total",
        &[("provider", "computestacks"), ("step", "poll_order")],
    );
    let gets = cs.knobs.calls("GET /api/orders/{id}");
    let (min_wait, max_wait) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
    println!(
        "{N} orders of {ORDER:?}, polled every {INTERVAL_MS} ms:\n  \
         all {N} waiting in delay queues at {all_waiting_at:?} (most seen at once: {most_waiting}); \
         {STEP_QUEUE} in the next 1.2 s: {} management samples, most unacked {most_unacked}, \
         {} samples with 0 unacked\n  \
         'not yet' polls: {not_yet} in all, {:.1} per onboarding; order reads: {gets} ({:.1} per onboarding)\n  \
         order placed -> completed: min {min_wait} ms, max {max_wait} ms; accepted -> completed: max {} ms\n  \
         wall time, first publish to last completed: {wall:?}",
        step_queue_samples.len(),
        step_queue_samples.iter().filter(|c| c.1 == 0).count(),
        not_yet / N as f64,
        gets as f64 / N as f64,
        durations.iter().max().unwrap(),
    );
    assert!(
        *min_wait >= ORDER.as_millis() as i64 - 100,
        "no order completed before its time: {waits:?}"
    );
    // Paced polling: about one read a second per order, not a busy loop.
    let per_onboarding = gets as f64 / N as f64;
    assert!(
        (3.0..=9.0).contains(&per_onboarding),
        "{per_onboarding} order reads per onboarding"
    );
    assert_eq!(
        not_yet as u64,
        gets - N as u64,
        "every read but the last said not yet"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_orders_are_pending_is_replaced_and_each_request_gets_one_order_and_one_user(
) {
    const N: usize = 5;
    let mut env = TestEnv::start().await;
    env.sandbox
        .computestacks
        .set_order_duration(Duration::from_secs(3));
    let ids: Vec<String> = (0..N).map(|i| format!("stopped-{i}")).collect();
    for id in &ids {
        env.publish(&request(
            id,
            &format!("{id}@example.com"),
            json!({"product": "small"}),
        ))
        .await;
    }
    wait_orders_placed(&env, &ids).await;
    env.stop_worker().await;

    // With no worker, the waiting onboardings are messages in the broker:
    // their delays run out into the step queue, and wait there.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = env.admin.queue_depth(STEP_QUEUE).await.unwrap() as usize;
        if ready == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {N} onboardings in {STEP_QUEUE}; delay queues hold {}",
            waiting_in_delay_queues(&env).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        env.sandbox
            .computestacks
            .orders()
            .iter()
            .all(|o| o.status != "completed"),
        "stopped while the orders were pending"
    );

    env.start_worker().await;
    assert_each_onboarded_once(&env, &ids).await;
    env.shutdown().await;
}

/// A worker process for these tests: polls every 200 to 500 ms.
fn spawn_worker_process(env: &TestEnv, log: &std::path::Path) -> Child {
    crate::support::processes::spawn_worker_process(
        env,
        &[
            (
                "ONBOARDING__PROVIDERS__COMPUTESTACKS__POLLS__POLL_ORDER__INTERVAL_MS",
                "200",
            ),
            (
                "ONBOARDING__PROVIDERS__COMPUTESTACKS__POLLS__POLL_ORDER__MAX_INTERVAL_MS",
                "500",
            ),
        ],
        Some(log),
    )
}

/// A worker process killed when the test ends, passed or not.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_killed_while_orders_are_pending_is_replaced_and_each_request_gets_one_order_and_one_user(
) {
    const N: usize = 5;
    let env = TestEnv::prepare(|_| {}).await;
    env.sandbox
        .computestacks
        .set_order_duration(Duration::from_secs(3));
    let log = env.ledger_dir.path().join("workers.log");
    let mut first = Reaped(spawn_worker_process(&env, &log));
    let ids: Vec<String> = (0..N).map(|i| format!("killed-{i}")).collect();
    for id in &ids {
        env.publish(&request(
            id,
            &format!("{id}@example.com"),
            json!({"product_id": 1}),
        ))
        .await;
    }
    wait_orders_placed(&env, &ids).await;
    first.0.kill().expect("SIGKILL");
    first.0.wait().unwrap();
    assert!(
        env.sandbox
            .computestacks
            .orders()
            .iter()
            .all(|o| o.status != "completed"),
        "killed while the orders were pending"
    );

    let _second = Reaped(spawn_worker_process(&env, &log));
    assert_each_onboarded_once(&env, &ids).await;

    // The worker processes' own logs carry no API password either.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("killed-0"), "the workers logged");
    let cs = &env.sandbox.computestacks;
    for c in cs.api_credentials() {
        let password = cs.api_credential_password(c.id).unwrap();
        assert!(!logs.contains(&password), "API password in a worker's log");
    }
}

/// The outputs an onboarding whose project is `site-<request_id>` must end
/// with: what the sandbox holds, whatever form the answers took.
fn outputs_held(env: &TestEnv, request_id: &str, ip_shown: bool) -> Value {
    let cs = &env.sandbox.computestacks;
    let order = cs
        .orders()
        .into_iter()
        .find(|o| o.project_name == format!("site-{request_id}"))
        .expect("the request's order");
    let user = cs
        .users()
        .into_iter()
        .find(|u| u.id == order.user_id)
        .expect("the order's user");
    let credential = cs
        .api_credentials()
        .into_iter()
        .find(|c| c.user_id == user.id)
        .expect("the user's credential");
    json!({
        "user_id": user.id,
        "api_credential_id": credential.id,
        "api_username": credential.username,
        // A numeric order id is output as a number, a UUID as a string.
        "order_id": order.id.parse::<i64>().map(Value::from).unwrap_or(json!(order.id)),
        "project_id": order.project_id.expect("completed with a project"),
        "load_balancer_ip": if ip_shown { json!(order.load_balancer_ip) } else { Value::Null },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_of_an_open_point_of_the_guide_onboards_with_the_outputs_the_sandbox_holds() {
    let env = TestEnv::start_with(|s| poll_order(s, 100, 1.0, 100, 20_000)).await;
    let cs = &env.sandbox.computestacks;
    cs.set_order_duration(Duration::from_millis(250));
    for (i, (why, readings)) in each_reading().into_iter().enumerate() {
        let ip_shown = readings.load_balancer_ip != LoadBalancerIp::Nowhere;
        cs.set_readings(readings);
        let id = format!("reading-{i}");
        env.publish(&request(
            &id,
            &format!("{id}@example.com"),
            json!({"product": "medium"}),
        ))
        .await;
        let done = env.final_event(&id, Duration::from_secs(30)).await;
        assert_eq!(done["event"], "completed", "{why}: {done:#}");
        assert_eq!(done["outputs"], outputs_held(&env, &id, ip_shown), "{why}");
        assert_eq!(
            steps_of(&env.events_of(&id).await),
            [
                "create_user",
                "create_api_credential",
                "create_order",
                "poll_order"
            ],
            "{why}"
        );
    }
    let n = each_reading().len();
    assert_eq!(cs.users().len(), n, "one user per onboarding");
    assert_eq!(cs.orders().len(), n, "one order per onboarding");
    assert!(
        cs.orders().iter().all(|o| o.product_ids == vec![2]),
        "the named product resolved under every reading"
    );
    assert!(env.dead().await.is_empty());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_email_fails_rejected_at_create_user_under_every_error_form_quoting_json_reasons_only(
) {
    let env = TestEnv::start().await;
    let cs = &env.sandbox.computestacks;
    env.publish(&request(
        "form-first",
        "form@example.com",
        json!({"product_id": 1}),
    ))
    .await;
    let first = env.final_event("form-first", Duration::from_secs(30)).await;
    assert_eq!(first["event"], "completed", "{first:#}");
    for (form, reason) in [
        (ErrorForm::ErrorsList, "Email has already been taken"),
        (ErrorForm::ErrorsByField, "email has already been taken"),
        (ErrorForm::Error, "Email has already been taken"),
        (ErrorForm::Message, "Email has already been taken"),
        (ErrorForm::PlainText, "HTTP 422"),
    ] {
        cs.set_readings(Readings {
            errors: form,
            ..Readings::default()
        });
        let id = format!("form-{form:?}").to_lowercase();
        env.publish(&request(&id, "form@example.com", json!({"product_id": 1})))
            .await;
        let failed = env.final_event(&id, Duration::from_secs(30)).await;
        assert_eq!(failed["event"], "failed", "{form:?}: {failed:#}");
        assert_eq!(failed["error"]["kind"], "rejected", "{form:?}");
        assert_eq!(failed["error"]["step"], "create_user", "{form:?}");
        assert_eq!(failed["error"]["http_status"], 422, "{form:?}");
        assert_eq!(
            failed["error"]["message"],
            format!("provider rejected create_user: {reason}"),
            "{form:?}"
        );
        assert!(!failed.to_string().contains(USER_PASSWORD), "{form:?}");
    }
    assert_eq!(cs.users().len(), 1);
    env.shutdown().await;
}

/// A create that succeeds at the provider whose answer is lost (a 503 instead):
/// the engine runs the step again as a possible repeat.
fn lost_answer(method: &str, path: &str) -> FaultRule {
    FaultRule {
        method: Some(method.into()),
        path_contains: path.into(),
        fault: Fault::AfterSuccess { status: 503 },
        times: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_an_order_whose_create_answers_were_lost_are_found_and_adopted_not_made_twice() {
    let env = TestEnv::start().await;
    let cs = &env.sandbox.computestacks;
    let all_at_once = each_reading().pop().expect("a row").1;
    for (i, (why, readings)) in [
        ("the guide's answers", Readings::default()),
        ("every other reading", all_at_once),
    ]
    .into_iter()
    .enumerate()
    {
        cs.set_readings(readings.clone());
        let before = cs.knobs.all_calls();
        let calls =
            |endpoint: &str| cs.knobs.calls(endpoint) - before.get(endpoint).copied().unwrap_or(0);
        cs.knobs.inject(lost_answer("POST", "/api/admin/users"));
        cs.knobs.inject(lost_answer("POST", "/api/orders"));
        let id = format!("lost-{i}");
        env.publish(&request(
            &id,
            &format!("{id}@example.com"),
            json!({"product": "small"}),
        ))
        .await;
        let done = env.final_event(&id, Duration::from_secs(30)).await;
        assert_eq!(done["event"], "completed", "{why}: {done:#}");
        let ip_shown = readings.load_balancer_ip != LoadBalancerIp::Nowhere;
        assert_eq!(done["outputs"], outputs_held(&env, &id, ip_shown), "{why}");
        assert_eq!(calls("POST /api/admin/users"), 1, "{why}: one user create");
        assert_eq!(
            calls("GET /api/admin/users/{key}"),
            1,
            "{why}: then a lookup"
        );
        assert_eq!(calls("POST /api/orders"), 1, "{why}: one order placed");
        assert_eq!(
            calls("GET /api/orders"),
            1,
            "{why}: then the user's orders read"
        );
    }
    assert_eq!(cs.users().len(), 2, "one user per onboarding");
    assert_eq!(cs.orders().len(), 2, "one order per onboarding");
    let metrics = env.metrics_text().await;
    for step in ["create_user", "create_order"] {
        assert_eq!(
            metric_value(
                &metrics,
                "onboarding_create_repeats_total",
                &[("provider", "computestacks"), ("step", step)]
            ),
            Some(2.0),
            "{step}: each adoption counted"
        );
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_whose_create_answer_was_lost_is_made_again_as_the_api_offers_no_way_to_find_it(
) {
    let env = TestEnv::start().await;
    let cs = &env.sandbox.computestacks;
    cs.knobs.inject(lost_answer("POST", "/api_credentials"));
    env.publish(&request(
        "lost-credential",
        "lostcred@example.com",
        json!({"product_id": 1}),
    ))
    .await;
    let done = env
        .final_event("lost-credential", Duration::from_secs(30))
        .await;
    assert_eq!(done["event"], "completed", "{done:#}");
    let credentials = cs.api_credentials();
    assert_eq!(
        credentials.len(),
        2,
        "the lost one stays on the user, unused"
    );
    assert_eq!(
        done["outputs"]["api_credential_id"], credentials[1].id,
        "the second one is used"
    );
    assert_eq!(cs.orders()[0].user_id, credentials[1].user_id);
    let metrics = env.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "onboarding_create_repeats_total",
            &[
                ("provider", "computestacks"),
                ("step", "create_api_credential")
            ]
        ),
        Some(1.0),
        "counted as made afresh"
    );
    env.shutdown().await;
}
