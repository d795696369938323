//! Transient faults, delays that wait in the broker, duplicate requests, a
//! worker killed mid-flight and a broker connection closed under the worker.

use std::time::{Duration, Instant};

use onboarding_worker::sandbox::faults::{Fault, FaultRule};

use crate::support::env::{wait_until, TestEnv};
use crate::support::processes::spawn_worker_process;
use crate::support::requests::sharespine_request;

fn rule(method: &str, path: &str, fault: Fault, times: u32) -> FaultRule {
    FaultRule {
        method: Some(method.into()),
        path_contains: path.into(),
        fault,
        times,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_503s_then_success_completes_with_one_tenant() {
    let env = TestEnv::start().await;
    env.sandbox.sharespine.knobs.inject(rule(
        "POST",
        "/reseller/tenant",
        Fault::Status { status: 503 },
        2,
    ));
    env.publish(&sharespine_request("flaky-1", "flaky", &["anna"], None))
        .await;
    let done = env.final_event("flaky-1", Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    assert_eq!(
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant"),
        3,
        "two 503s and one success"
    );
    assert_eq!(env.sandbox.sharespine.tenants().len(), 1);
    assert!(env
        .metrics_text()
        .await
        .contains(r#"onboarding_retries_total{provider="sharespine",reason="server_error"} 2"#));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_waits_in_a_delay_queue_not_in_memory() {
    let env = TestEnv::start().await;
    env.sandbox.sharespine.knobs.inject(rule(
        "POST",
        "/reseller/tenant",
        Fault::RateLimited { retry_after_s: 2 },
        1,
    ));
    let started = Instant::now();
    env.publish(&sharespine_request("slow-down-1", "ratelimited", &[], None))
        .await;
    // While it waits, the step message sits in the 2 s delay tier and the worker holds nothing.
    let mut seen_waiting = false;
    while started.elapsed() < Duration::from_millis(1800) {
        if env
            .admin
            .queue_depth("onboarding.delay.2000ms")
            .await
            .unwrap()
            == 1
        {
            seen_waiting = true;
            let m = env.metrics_text().await;
            assert!(
                m.contains(r#"onboarding_steps_in_flight{provider="sharespine"} 0"#),
                "no step in flight while waiting"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_waiting, "the retry waited in onboarding.delay.2000ms");
    let done = env
        .final_event("slow-down-1", Duration::from_secs(30))
        .await;
    assert_eq!(done["event"], "completed", "{done:#}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant"),
        2
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_is_timed_out_and_retried() {
    let env = TestEnv::start().await;
    // Longer than the 1.5 s call timeout.
    env.sandbox
        .sharespine
        .knobs
        .inject(rule("POST", "/connection", Fault::Hang { ms: 4000 }, 1));
    env.publish(&sharespine_request("hang-1", "hanging", &[], None))
        .await;
    let done = env.final_event("hang-1", Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    assert_eq!(
        env.sandbox
            .sharespine
            .knobs
            .calls("POST /reseller/tenant/{code_name}/connection"),
        2,
        "timed out once, then retried"
    );
    assert!(env
        .metrics_text()
        .await
        .contains(r#"onboarding_retries_total{provider="sharespine",reason="timeout"} 1"#));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_login_fails_rejected_at_create_user_with_the_outputs_so_far() {
    let env = TestEnv::start().await;
    env.publish(&sharespine_request(
        "dup-login",
        "duplogin",
        &["anna", "anna"],
        Some("anna"),
    ))
    .await;
    let failed = env.final_event("dup-login", Duration::from_secs(30)).await;
    assert_eq!(failed["event"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["kind"], "rejected");
    assert_eq!(failed["error"]["step"], "create_user");
    assert_eq!(failed["error"]["http_status"], 422);
    assert_eq!(
        failed["error"]["message"],
        "provider rejected create_user: login already exists"
    );
    assert_eq!(failed["outputs"]["code_name"], "prefixduplogin-1");
    assert_eq!(failed["outputs"]["logins"], serde_json::json!(["anna"]));
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].request_id.as_deref(), Some("dup-login"));
    assert_eq!(dead[0].error_kind.as_deref(), Some("rejected"));
    assert_eq!(dead[0].step.as_deref(), Some("create_user"));
    let original: serde_json::Value = serde_json::from_slice(&dead[0].body).unwrap();
    assert_eq!(
        original,
        sharespine_request("dup-login", "duplogin", &["anna", "anna"], Some("anna")),
        "kept whole"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_published_twice_at_once_creates_one_tenant() {
    let env = TestEnv::start().await;
    let req = sharespine_request("twice-1", "twice", &["anna"], None);
    env.publish(&req).await;
    env.publish(&req).await;
    let done = env.final_event("twice-1", Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed");
    let events = env.drain_events(Duration::from_millis(800)).await;
    let finals = events
        .iter()
        .filter(|e| e["request_id"] == "twice-1" && e["event"] == "completed")
        .count();
    assert_eq!(finals, 1, "one completed event");
    assert_eq!(env.sandbox.sharespine.tenants().len(), 1, "one tenant");
    assert_eq!(
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant"),
        1
    );
    assert!(env
        .metrics_text()
        .await
        .contains(r#"onboarding_duplicates_dropped_total{provider="sharespine"} 1"#));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_again_after_completion_gets_completed_again_with_the_same_outputs() {
    let env = TestEnv::start().await;
    let req = sharespine_request("again-1", "again", &["anna"], Some("anna"));
    env.publish(&req).await;
    let first = env.final_event("again-1", Duration::from_secs(30)).await;
    env.seen.lock().await.clear();
    env.publish(&req).await;
    let second = env.final_event("again-1", Duration::from_secs(30)).await;
    assert_eq!(second["event"], "completed");
    assert_eq!(second["outputs"], first["outputs"], "same outputs");
    assert_eq!(
        env.sandbox.sharespine.tenants().len(),
        1,
        "no second onboarding"
    );
    assert_eq!(
        env.sandbox
            .sharespine
            .knobs
            .calls("POST /reseller/tenant/{code_name}/login/{login}"),
        1
    );
    env.shutdown().await;
}

/// The built binary as a worker process on `env`'s vhost, sandbox and ledger.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_flight_is_replaced_and_the_onboarding_completes_without_a_second_create(
) {
    let env = TestEnv::prepare(|_| {}).await;
    env.sandbox
        .sharespine
        .knobs
        .set_latency(Duration::from_millis(300));
    let mut first = spawn_worker_process(&env, &[], None);
    env.publish(&sharespine_request(
        "killed-1",
        "killed",
        &["anna", "bob", "carl"],
        Some("anna"),
    ))
    .await;
    env.wait_event(Duration::from_secs(30), |e| {
        e["request_id"] == "killed-1" && e["event"] == "step_completed"
    })
    .await;
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let mut second = spawn_worker_process(&env, &[], None);
    let done = env.final_event("killed-1", Duration::from_secs(60)).await;
    second.kill().ok();
    second.wait().ok();
    assert_eq!(done["event"], "completed", "{done:#}");
    let calls = env.sandbox.sharespine.knobs.all_calls();
    assert_eq!(
        calls.get("POST /reseller/tenant"),
        Some(&1),
        "one tenant create: {calls:?}"
    );
    assert_eq!(env.sandbox.sharespine.tenants().len(), 1);
    assert_eq!(
        env.sandbox.sharespine.tenants()[0].logins(),
        ["anna", "bob", "carl"],
        "each user once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_closed_broker_connection_is_reopened_and_the_onboarding_completes() {
    let env = TestEnv::start().await;
    env.sandbox
        .sharespine
        .knobs
        .set_latency(Duration::from_millis(200));
    env.publish(&sharespine_request(
        "reconnect-1",
        "reconnect",
        &["anna", "bob"],
        Some("anna"),
    ))
    .await;
    env.wait_event(Duration::from_secs(30), |e| {
        e["request_id"] == "reconnect-1" && e["event"] == "step_completed"
    })
    .await;
    let readyz = format!("http://{}/readyz", env.worker().metrics_addr);
    assert!(
        env.vhost.close_worker_connections().await >= 1,
        "the worker's connection was there to close"
    );
    wait_until(Duration::from_secs(5), || !env.worker().health.is_ready()).await;
    wait_until(Duration::from_secs(20), || env.worker().health.is_ready()).await;
    assert_eq!(
        reqwest::get(&readyz).await.unwrap().status(),
        200,
        "ready again after reconnecting"
    );
    let done = env
        .final_event("reconnect-1", Duration::from_secs(60))
        .await;
    assert_eq!(done["event"], "completed", "{done:#}");
    assert_eq!(
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant"),
        1
    );
    assert!(env
        .metrics_text()
        .await
        .contains("onboarding_broker_connections_total 2"));
    env.shutdown().await;
}
