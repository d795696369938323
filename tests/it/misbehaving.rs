//! Providers that misbehave (issue "Hostile input and misbehaving providers",
//! part 3): a 200 that is HTML, a 200 missing the field the next step needs, a
//! 10 MB body, a body that never ends, a redirect loop, a 4xx with an empty
//! body, a connection reset mid-response. Each ends in the class CONTRACT §6
//! gives it: the transient ones are retried and complete when the fault stops,
//! and end `exhausted` with a message naming the fault when it never stops;
//! the others are `rejected` at once. Never a panic, never a hang (every test
//! is bounded in time), never more memory than `max_response_bytes` (the
//! worker-process test watches its peak RSS).

use std::future::Future;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use onboarding_worker::sandbox::faults::{Fault, FaultRule};
use serde_json::{json, Value};

use crate::support::env::TestEnv;
use crate::support::prometheus::metric_value;
use crate::support::requests::sharespine_request;

/// Attempts per step in these tests (the limited faults strike twice, so the third succeeds).
const ATTEMPTS: u32 = 3;
/// A fault that never stops.
const FOREVER: u32 = u32::MAX;
/// No test here may take longer: past it, something hangs.
const BOUND: Duration = Duration::from_secs(90);
/// Waiting for one onboarding's final event.
const WAIT: Duration = Duration::from_secs(40);
/// Ten megabytes: ten times `max_response_bytes` (1 MiB).
const TEN_MB: usize = 10 * 1000 * 1000;
const LIMIT: usize = 1024 * 1024;
/// The bodies of the memory test: far above both.
const BIG: usize = 64 * 1024 * 1024;

fn post(path: &str, fault: Fault, times: u32) -> FaultRule {
    FaultRule {
        method: Some("POST".into()),
        path_contains: path.into(),
        fault,
        times,
    }
}

/// Fails the test if `test` does not finish within [`BOUND`].
async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, test)
        .await
        .unwrap_or_else(|_| panic!("not finished within {BOUND:?}: something hangs"))
}

async fn start() -> TestEnv {
    TestEnv::start_with(|s| {
        assert_eq!(s.providers.sharespine.calls.max_response_bytes, LIMIT);
        s.providers.sharespine.calls.max_attempts = ATTEMPTS.try_into().unwrap();
        s.providers.computestacks.calls.max_attempts = ATTEMPTS.try_into().unwrap();
    })
    .await
}

/// A Sharespine misbehaviour on one step, and what it must become.
struct Case {
    /// `path_contains` of the fault rule.
    path: &'static str,
    /// The endpoint as the sandbox counts it.
    endpoint: &'static str,
    step: &'static str,
    fault: Fault,
    /// The transient failure's message (the `exhausted` one adds "(gave up after N attempts)").
    message: &'static str,
    /// `onboarding_retries_total`'s `reason`.
    reason: &'static str,
    /// `error.http_status` of the `exhausted` event.
    http_status: Value,
}

/// `onboarding_retries_total` of Sharespine for `reason`.
async fn retries(env: &TestEnv, reason: &str) -> f64 {
    metric_value(
        &env.metrics_text().await,
        "onboarding_retries_total",
        &[("provider", "sharespine"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// Injects `case` twice: the onboarding is retried and completes. Then for
/// ever: a second onboarding ends `exhausted` after [`ATTEMPTS`] calls.
/// Returns the `failed` event, with the sandbox's faults and counts reset.
async fn retried_then_exhausted(env: &TestEnv, name: &str, case: Case) -> Value {
    let knobs = &env.sandbox.sharespine.knobs;
    let retries_before = retries(env, case.reason).await;

    knobs.inject(post(case.path, case.fault.clone(), 2));
    let ok = format!("{name}-limited");
    env.publish(&sharespine_request(
        &ok,
        &format!("{name}ok"),
        &["anna"],
        Some("anna"),
    ))
    .await;
    let done = env.final_event(&ok, WAIT).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    assert_eq!(
        knobs.calls(case.endpoint),
        3,
        "two misbehaving answers, then the real one"
    );
    assert_eq!(
        retries(env, case.reason).await - retries_before,
        2.0,
        "retried twice as {}",
        case.reason
    );

    knobs.inject(post(case.path, case.fault.clone(), FOREVER));
    let bad = format!("{name}-forever");
    env.publish(&sharespine_request(
        &bad,
        &format!("{name}bad"),
        &["anna"],
        Some("anna"),
    ))
    .await;
    let failed = env.final_event(&bad, WAIT).await;
    assert_eq!(failed["event"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["kind"], "exhausted", "{failed:#}");
    assert_eq!(failed["error"]["step"], case.step);
    assert_eq!(
        failed["error"]["message"],
        format!("{} (gave up after {ATTEMPTS} attempts)", case.message)
    );
    assert_eq!(failed["error"]["http_status"], case.http_status);
    assert_eq!(
        knobs.calls(case.endpoint),
        3 + u64::from(ATTEMPTS),
        "exactly the retry budget, no more"
    );
    let dead = env.dead().await;
    assert!(
        dead.iter()
            .any(|d| d.request_id.as_deref() == Some(bad.as_str())
                && d.error_kind.as_deref() == Some("exhausted")),
        "kept in onboarding.dead"
    );
    knobs.reset();
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_html_is_retried_then_exhausted_as_not_json() {
    bounded(async {
        let env = start().await;
        let failed = retried_then_exhausted(
            &env,
            "html",
            Case {
                path: "/reseller/tenant",
                endpoint: "POST /reseller/tenant",
                step: "create_tenant",
                fault: Fault::Html200,
                message: "create_tenant: unexpected response body (47 bytes): not JSON",
                reason: "bad_response",
                http_status: json!(200),
            },
        )
        .await;
        assert!(
            !failed["error"]["message"]
                .as_str()
                .unwrap()
                .contains("maintenance"),
            "the page's content is not quoted"
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_body_is_cut_at_the_limit_with_or_without_content_length() {
    bounded(async {
        let env = start().await;
        // Announced in Content-Length: refused before reading.
        retried_then_exhausted(
            &env,
            "huge",
            Case {
                path: "/user",
                endpoint: "POST /reseller/tenant/{code_name}/user",
                step: "create_user",
                fault: Fault::Huge { bytes: TEN_MB },
                message: "create_user: response larger than 1048576 bytes",
                reason: "bad_response",
                http_status: json!(200),
            },
        )
        .await;
        // Chunked: read up to the limit, then abandoned.
        let failed = retried_then_exhausted(
            &env,
            "chunked",
            Case {
                path: "/connection",
                endpoint: "POST /reseller/tenant/{code_name}/connection",
                step: "create_connection",
                fault: Fault::HugeChunked { bytes: TEN_MB },
                message: "create_connection: response larger than 1048576 bytes",
                reason: "bad_response",
                http_status: json!(200),
            },
        )
        .await;
        assert_eq!(
            failed["outputs"]["logins"],
            json!(["anna"]),
            "outputs so far"
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_is_cut_by_the_call_timeout_and_retried() {
    bounded(async {
        let env = start().await;
        let timeout = Duration::from_millis(env.settings.providers.sharespine.calls.timeout_ms);
        let failed = retried_then_exhausted(
            &env,
            "endless",
            Case {
                path: "/login/",
                endpoint: "POST /reseller/tenant/{code_name}/login/{login}",
                step: "create_login_url",
                fault: Fault::Endless,
                message: "create_login_url: timed out",
                reason: "timeout",
                http_status: Value::Null,
            },
        )
        .await;
        // A trickling body (13 bytes every 10 ms) never reaches the size limit:
        // it is the call's timeout, connect to last byte, that cuts each attempt.
        let took = Duration::from_millis(failed["duration_ms"].as_u64().unwrap());
        assert!(
            took >= timeout * ATTEMPTS,
            "each attempt ran into the {timeout:?} timeout: {took:?}"
        );
        assert!(
            took < timeout * ATTEMPTS + Duration::from_secs(15),
            "and no longer: {took:?}"
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_fast_is_cut_at_the_size_limit() {
    bounded(async {
        let env = start().await;
        retried_then_exhausted(
            &env,
            "flood",
            Case {
                path: "/login/",
                endpoint: "POST /reseller/tenant/{code_name}/login/{login}",
                step: "create_login_url",
                fault: Fault::EndlessFast,
                message: "create_login_url: response larger than 1048576 bytes",
                reason: "bad_response",
                http_status: json!(200),
            },
        )
        .await;
        // "larger than" comes only from the size cut: no attempt waited for the timeout.
        assert_eq!(retries(&env, "timeout").await, 0.0);
        env.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_response_is_retried_then_exhausted() {
    bounded(async {
        let env = start().await;
        retried_then_exhausted(
            &env,
            "reset",
            Case {
                path: "/connection",
                endpoint: "POST /reseller/tenant/{code_name}/connection",
                step: "create_connection",
                fault: Fault::ResetMidBody,
                message: "create_connection: connection broke while reading the response",
                reason: "connection",
                http_status: Value::Null,
            },
        )
        .await;
        env.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_with_an_empty_body_is_rejected_at_once_naming_the_status() {
    bounded(async {
        let env = start().await;
        let knobs = &env.sandbox.sharespine.knobs;
        for status in [400u16, 404, 422] {
            knobs.inject(post("/user", Fault::Empty { status }, 1));
            let id = format!("empty-{status}");
            env.publish(&sharespine_request(
                &id,
                &format!("empty{status}"),
                &["anna"],
                Some("anna"),
            ))
            .await;
            let failed = env.final_event(&id, WAIT).await;
            assert_eq!(failed["event"], "failed", "{failed:#}");
            assert_eq!(failed["error"]["kind"], "rejected");
            assert_eq!(failed["error"]["step"], "create_user");
            assert_eq!(failed["error"]["http_status"], status);
            assert_eq!(
                failed["error"]["message"],
                format!("provider rejected create_user: HTTP {status}")
            );
            assert_eq!(
                failed["outputs"]["code_name"],
                format!("prefixempty{status}-1"),
                "what was created is reported"
            );
        }
        assert_eq!(
            knobs.calls("POST /reseller/tenant/{code_name}/user"),
            3,
            "one call each: a 4xx is not retried"
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_loop_is_not_followed_and_is_rejected() {
    bounded(async {
        let env = start().await;
        let knobs = &env.sandbox.sharespine.knobs;
        knobs.inject(post("/reseller/tenant", Fault::RedirectLoop, FOREVER));
        env.publish(&sharespine_request(
            "redirect-1",
            "redirect",
            &["anna"],
            None,
        ))
        .await;
        let failed = env.final_event("redirect-1", WAIT).await;
        assert_eq!(failed["event"], "failed", "{failed:#}");
        assert_eq!(failed["error"]["kind"], "rejected");
        assert_eq!(failed["error"]["step"], "create_tenant");
        assert_eq!(failed["error"]["http_status"], 302);
        assert_eq!(
            failed["error"]["message"],
            "provider rejected create_tenant: HTTP 302"
        );
        assert_eq!(
            knobs.calls("POST /reseller/tenant"),
            1,
            "the redirect was not followed (credentials never go where a Location points)"
        );
        env.shutdown().await;
    })
    .await
}

/// A ComputeStacks onboarding for `email`.
fn computestacks_request(request_id: &str, email: &str) -> Value {
    json!({
        "request_id": request_id,
        "provider": "computestacks",
        "operation": "onboard",
        "input": {
            "user": {"fname": "Ada", "lname": "Lovelace", "email": email,
                     "password": "pw-Misbehaving-1", "password_confirmation": "pw-Misbehaving-1",
                     "skip_email_confirm": true, "external_id": format!("crm-{request_id}")},
            "api_credential": {"name": "billing"},
            "order": {"project_name": format!("site-{request_id}"), "location_id": 1,
                      "containers": [{"image_id": 4, "resources": {"product": "small"},
                                      "params": [], "domains": []}]}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_missing_the_field_the_next_step_needs_is_retried_then_exhausted() {
    bounded(async {
        let env = start().await;
        let knobs = &env.sandbox.computestacks.knobs;
        // create_order authenticates with the credential's password: an answer
        // without it cannot be used, however well-formed the rest is.
        let without_password = Fault::Json200 {
            body: json!({"api_credential": {"id": 9001, "username": "u-9001", "name": "billing"}}),
        };
        let endpoint = "POST /api/users/{id}/api_credentials";

        knobs.inject(post("/api_credentials", without_password.clone(), 2));
        env.publish(&computestacks_request(
            "missing-limited",
            "limited@example.test",
        ))
        .await;
        let done = env.final_event("missing-limited", WAIT).await;
        assert_eq!(done["event"], "completed", "{done:#}");
        assert_eq!(knobs.calls(endpoint), 3);
        assert_ne!(
            done["outputs"]["api_credential_id"], 9001,
            "the unusable answer left nothing behind"
        );
        assert_eq!(env.sandbox.computestacks.orders().len(), 1);

        knobs.inject(post("/api_credentials", without_password, FOREVER));
        env.publish(&computestacks_request(
            "missing-forever",
            "forever@example.test",
        ))
        .await;
        let failed = env.final_event("missing-forever", WAIT).await;
        assert_eq!(failed["event"], "failed", "{failed:#}");
        assert_eq!(failed["error"]["kind"], "exhausted");
        assert_eq!(failed["error"]["step"], "create_api_credential");
        assert_eq!(failed["error"]["http_status"], 200);
        let message = failed["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("create_api_credential: unexpected response body (")
                && message.ends_with(&format!(
                    "missing field `password` (gave up after {ATTEMPTS} attempts)"
                )),
            "{message}"
        );
        assert!(
            failed["outputs"]["user_id"].is_number(),
            "the user created before is reported: {failed:#}"
        );
        assert_eq!(knobs.calls(endpoint), 3 + u64::from(ATTEMPTS));
        assert_eq!(
            env.sandbox.computestacks.orders().len(),
            1,
            "no order without a credential"
        );
        env.shutdown().await;
    })
    .await
}

// ---- the worker as a process: memory --------------------------------------

/// The built binary as a worker on `env`'s vhost, sandbox and ledger, its
/// output in `log`.
fn spawn_worker(env: &TestEnv, log: &std::path::Path) -> Child {
    let s = &env.settings;
    let out = std::fs::File::create(log).unwrap();
    let calls = "ONBOARDING__PROVIDERS__SHARESPINE__CALLS__";
    Command::new(env!("CARGO_BIN_EXE_onboarding-worker"))
        .arg("run")
        .env("ONBOARDING__AMQP__URL", s.amqp.url.expose())
        .env("ONBOARDING__LEDGER__URL", s.ledger.url.expose())
        .env("ONBOARDING__METRICS__LISTEN", "127.0.0.1:0")
        .env(
            "ONBOARDING__PROVIDERS__SHARESPINE__BASE_URL",
            &s.providers.sharespine.base_url,
        )
        .env(format!("{calls}TIMEOUT_MS"), "1500")
        .env(format!("{calls}RETRY_BASE_MS"), "50")
        .env(format!("{calls}RETRY_CAP_MS"), "400")
        .env(format!("{calls}MAX_ATTEMPTS"), ATTEMPTS.to_string())
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("the built binary starts")
}

/// Peak resident memory of process `pid`, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_never_holds_more_than_the_limit_of_a_huge_or_endless_body() {
    bounded(async {
        let env = TestEnv::prepare(|_| {}).await;
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("worker.log");
        let mut worker = spawn_worker(&env, &log);
        let knobs = &env.sandbox.sharespine.knobs;

        // Warm up (connections, pools, the ledger), then take the baseline.
        env.publish(&sharespine_request(
            "rss-warm",
            "rsswarm",
            &["anna"],
            Some("anna"),
        ))
        .await;
        let warm = env.final_event("rss-warm", WAIT).await;
        assert_eq!(warm["event"], "completed", "{warm:#}");
        let baseline = peak_rss(worker.id());

        let started = Instant::now();
        knobs.inject(post("/user", Fault::Huge { bytes: BIG }, 2));
        knobs.inject(post("/connection", Fault::HugeChunked { bytes: BIG }, 2));
        knobs.inject(post("/login/", Fault::EndlessFast, 2));
        env.publish(&sharespine_request(
            "rss-1",
            "rssone",
            &["anna"],
            Some("anna"),
        ))
        .await;
        let done = env.final_event("rss-1", WAIT).await;
        assert_eq!(done["event"], "completed", "{done:#}");
        knobs.inject(post("/login/", Fault::EndlessFast, FOREVER));
        env.publish(&sharespine_request(
            "rss-2",
            "rsstwo",
            &["anna"],
            Some("anna"),
        ))
        .await;
        let failed = env.final_event("rss-2", WAIT).await;
        assert_eq!(failed["error"]["kind"], "exhausted", "{failed:#}");
        let peak = peak_rss(worker.id());
        let elapsed = started.elapsed();

        assert!(
            worker.try_wait().unwrap().is_none(),
            "the worker is still running"
        );
        worker.kill().ok();
        worker.wait().ok();
        let output = std::fs::read_to_string(&log).unwrap();
        assert!(!output.contains("panicked"), "no panic: {output}");

        // 4 bodies of 64 MiB and 5 endless ones went by; the worker read at
        // most 1 MiB of each. Allocator arenas and hyper's buffers account for
        // a few MiB; holding any one body whole would take 64 MiB or more.
        let grew = peak.saturating_sub(baseline);
        eprintln!(
            "peak RSS {} KiB, grew {} KiB over the baseline, in {elapsed:?}",
            peak / 1024,
            grew / 1024
        );
        assert!(
            grew < TEN_MB as u64,
            "peak RSS grew by {} KiB: a body was held whole (baseline {} KiB)",
            grew / 1024,
            baseline / 1024
        );
    })
    .await
}
