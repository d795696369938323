//! The binary as operators use it: configuration errors, SIGTERM, `status`,
//! `dead list` and `dead replay` (a redrive from the failed step).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use onboarding_worker::sandbox::faults::{Fault, FaultRule};
use serde_json::Value;

use crate::support::env::{wait_until, TestEnv};
use crate::support::requests::{sharespine_request, steps_of};

const BIN: &str = env!("CARGO_BIN_EXE_onboarding-worker");

/// The binary with `env`'s broker, ledger and sandbox in its environment.
fn command(env: &TestEnv, args: &[&str]) -> Command {
    let s = &env.settings;
    let mut c = Command::new(BIN);
    c.args(args)
        .env("ONBOARDING__AMQP__URL", s.amqp.url.expose())
        .env("ONBOARDING__LEDGER__URL", s.ledger.url.expose())
        .env(
            "ONBOARDING__PROVIDERS__SHARESPINE__BASE_URL",
            &s.providers.sharespine.base_url,
        )
        .env(
            "ONBOARDING__PROVIDERS__COMPUTESTACKS__BASE_URL",
            &s.providers.computestacks.base_url,
        )
        .env("RUST_LOG", "warn");
    c
}

async fn run(env: &TestEnv, args: &[&str]) -> Output {
    let mut c = command(env, args);
    tokio::task::spawn_blocking(move || c.output().expect("binary runs"))
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_value_exits_2_naming_its_key() {
    let out = tokio::task::spawn_blocking(|| {
        Command::new(BIN)
            .args(["run"])
            .env("ONBOARDING__AMQP__PREFETCH", "lots")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("prefetch"),
        "names the key: {}",
        text(&out)
    );

    let out = tokio::task::spawn_blocking(|| {
        Command::new(BIN)
            .args(["run", "--config", "/no/such/file.toml"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("/no/such/file.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_explains_every_command() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["status", "--help"],
        vec!["dead", "replay", "--help"],
        vec!["demo", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            out.stdout.len() > 100,
            "{args:?} says something: {}",
            text(&out)
        );
    }
    let out = Command::new(BIN).args(["--help"]).output().unwrap();
    for word in ["run", "sandbox", "demo", "status", "dead", "ONBOARDING__"] {
        assert!(text(&out).contains(word), "--help mentions {word}");
    }
    let out = Command::new(BIN).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_onboardings_in_flight_exits_0_and_a_new_worker_finishes_them() {
    let env = TestEnv::prepare(|_| {}).await;
    env.sandbox
        .sharespine
        .knobs
        .set_latency(Duration::from_millis(150));
    let mut worker = command(&env, &["run"])
        .env("ONBOARDING__METRICS__LISTEN", "127.0.0.1:0")
        .env("ONBOARDING__WORKER__SHUTDOWN_GRACE_MS", "5000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for i in 0..20 {
        env.publish(&sharespine_request(
            &format!("term-{i}"),
            &format!("term{i}"),
            &["anna", "bob"],
            Some("anna"),
        ))
        .await;
    }
    env.wait_event(Duration::from_secs(30), |e| e["event"] == "step_completed")
        .await;
    let pid = worker.id().to_string();
    let sent = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || worker.wait().unwrap())
        .await
        .unwrap();
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    assert!(
        took < Duration::from_secs(6),
        "within the 5 s grace period: {took:?}"
    );
    let mut env = env;
    env.start_worker().await;
    for i in 0..20 {
        let e = env
            .final_event(&format!("term-{i}"), Duration::from_secs(60))
            .await;
        assert_eq!(e["event"], "completed", "{e:#}");
    }
    assert_eq!(
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant"),
        20,
        "one tenant each"
    );
    env.shutdown().await;
}

fn fail_connections(env: &TestEnv, times: u32) {
    env.sandbox.sharespine.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/connection".into(),
        fault: Fault::Status { status: 400 },
        times,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_completed_failed_waiting_and_unknown_requests() {
    let env = TestEnv::start().await;
    env.publish(&sharespine_request("st-done", "stdone", &["anna"], None))
        .await;
    env.final_event("st-done", Duration::from_secs(30)).await;
    fail_connections(&env, 1);
    env.publish(&sharespine_request(
        "st-failed",
        "stfailed",
        &["anna"],
        None,
    ))
    .await;
    env.final_event("st-failed", Duration::from_secs(30)).await;
    env.sandbox.sharespine.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/reseller/tenant".into(),
        fault: Fault::RateLimited { retry_after_s: 30 },
        times: 1,
    });
    env.publish(&sharespine_request("st-waiting", "stwaiting", &[], None))
        .await;
    env.wait_event(Duration::from_secs(30), |e| {
        e["request_id"] == "st-waiting" && e["event"] == "accepted"
    })
    .await;
    wait_until(Duration::from_secs(10), || {
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant") >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = run(&env, &["status", "st-done"]).await;
    assert_eq!(out.status.code(), Some(0));
    let t = text(&out);
    assert!(
        t.contains("completed") && t.contains("code_name") && t.contains("prefixstdone-1"),
        "{t}"
    );

    let out = run(&env, &["status", "st-failed", "--json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["kind"], "rejected");
    assert_eq!(v["error"]["step"], "create_connection");
    assert_eq!(v["outputs"]["code_name"], "prefixstfailed-1");
    assert!(
        text(&run(&env, &["status", "st-failed"]).await).contains("rejected at create_connection")
    );

    let out = run(&env, &["status", "st-waiting", "--json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "running");
    assert_eq!(v["current_step"], "create_tenant");
    assert!(
        v["waiting_until"].is_string(),
        "waiting, with until when: {v:#}"
    );
    assert!(text(&run(&env, &["status", "st-waiting"]).await).contains("waiting"));

    // Running: a step's call in progress (the provider hangs a while). On
    // ComputeStacks: Sharespine's steps are all held by its 30 s rate limit.
    env.sandbox.computestacks.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/api/admin/users".into(),
        fault: Fault::Hang { ms: 1200 },
        times: 1,
    });
    env.publish(&serde_json::json!({
        "request_id": "st-running", "provider": "computestacks", "operation": "onboard",
        "input": {
            "user": {"fname": "Ada", "lname": "Lovelace", "email": "ada@example.test",
                     "password": "pw-Zq7-secret", "password_confirmation": "pw-Zq7-secret"},
            "api_credential": {"name": "billing"},
            "order": {"project_name": "site-running", "location_id": 1,
                      "containers": [{"image_id": 4, "resources": {"product_id": 1}, "params": [], "domains": []}]}
        }
    }))
    .await;
    env.wait_event(Duration::from_secs(30), |e| {
        e["request_id"] == "st-running" && e["event"] == "accepted"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = run(&env, &["status", "st-running", "--json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "running", "{v:#}");
    assert_eq!(v["current_step"], "create_user", "{v:#}");
    assert!(v["waiting_until"].is_null(), "running, not waiting: {v:#}");
    assert!(text(&run(&env, &["status", "st-running"]).await).contains("next step"));

    let out = run(&env, &["status", "no-such-request"]).await;
    assert_eq!(out.status.code(), Some(1), "unknown id exits 1");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_failure_resumes_from_the_failed_step_without_calling_earlier_steps_again() {
    let env = TestEnv::start().await;
    fail_connections(&env, 1);
    env.publish(&sharespine_request(
        "replay-1",
        "replay",
        &["anna", "bob"],
        Some("anna"),
    ))
    .await;
    let failed = env.final_event("replay-1", Duration::from_secs(30)).await;
    assert_eq!(failed["error"]["step"], "create_connection");

    let out = run(&env, &["dead", "list", "--json"]).await;
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["request_id"], "replay-1");
    assert_eq!(listed[0]["error_kind"], "rejected");

    env.seen.lock().await.clear();
    let out = run(&env, &["dead", "replay", "--request-id", "replay-1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let done = env.final_event("replay-1", Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    assert_eq!(
        done["outputs"]["code_name"], failed["outputs"]["code_name"],
        "earlier outputs kept"
    );
    assert_eq!(
        done["outputs"]["logins"],
        serde_json::json!(["anna", "bob"])
    );
    let calls = env.sandbox.sharespine.knobs.all_calls();
    assert_eq!(
        calls["POST /reseller/tenant"], 1,
        "create_tenant not called again"
    );
    assert_eq!(
        calls["POST /reseller/tenant/{code_name}/user"], 2,
        "create_user not called again"
    );
    assert_eq!(
        calls["POST /reseller/tenant/{code_name}/connection"], 2,
        "the failed step, then its replay"
    );
    assert_eq!(
        steps_of(&env.events_of("replay-1").await),
        ["create_connection", "create_login_url"]
    );
    assert!(
        env.dead().await.is_empty(),
        "the dead copy is gone once its replay was confirmed"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_replay_all_redrives_every_dead_message() {
    let env = TestEnv::start().await;
    fail_connections(&env, 3);
    for i in 0..3 {
        env.publish(&sharespine_request(
            &format!("all-{i}"),
            &format!("all{i}"),
            &["anna"],
            None,
        ))
        .await;
        let e = env
            .final_event(&format!("all-{i}"), Duration::from_secs(30))
            .await;
        assert_eq!(e["event"], "failed");
    }
    assert_eq!(env.dead().await.len(), 3);
    let out = run(&env, &["dead", "replay", "--all"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(text(&out).matches("replayed").count(), 3);
    for i in 0..3 {
        let id = format!("all-{i}");
        env.wait_event(Duration::from_secs(30), move |e| {
            e["request_id"] == id.as_str() && e["event"] == "completed"
        })
        .await;
    }
    assert!(env.dead().await.is_empty());
    assert_eq!(
        env.sandbox.sharespine.knobs.calls("POST /reseller/tenant"),
        3,
        "no tenant created twice"
    );
    let out = run(&env, &["dead", "replay", "--all"]).await;
    assert_eq!(out.status.code(), Some(1), "nothing left to replay");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_and_step_on_every_line_of_a_requests_work() {
    let env = TestEnv::prepare(|_| {}).await;
    let worker = command(&env, &["run", "--log-format", "json"])
        .env("ONBOARDING__METRICS__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.publish(&sharespine_request(
        "json-logs",
        "jsonlogs",
        &["anna"],
        Some("anna"),
    ))
    .await;
    let done = env.final_event("json-logs", Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed");
    let pid = worker.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = tokio::task::spawn_blocking(move || worker.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let of_request: Vec<&Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("json-logs"))
        .collect();
    assert!(
        of_request.len() >= 5,
        "the request's work is logged: {text}"
    );
    for l in &of_request {
        assert_eq!(l["span"]["request_id"], "json-logs", "request id on {l}");
    }
    let step_lines: Vec<&&Value> = of_request
        .iter()
        .filter(|l| l["span"]["name"] == "step")
        .collect();
    assert!(!step_lines.is_empty());
    for l in step_lines {
        assert!(l["span"]["step"].is_string(), "step on {l}");
    }
}
