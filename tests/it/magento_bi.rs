//! Magento BI cloud onboarding end to end (CONTRACT §4 "magento_bi / onboard"):
//! ten steps, a shared access token that expires, and four provider jobs waited
//! on in the broker's delay queues; the whole onboarding under each reading of
//! the seed's open points (the sandbox's `[sandbox.magento_bi]` knobs, listed in
//! the provider module's doc); a create whose answer was lost is adopted, not
//! made twice.

use std::time::{Duration, Instant};

use base64::Engine as _;
use onboarding_worker::config::Secret;
use onboarding_worker::sandbox::faults::{Fault, FaultRule};
use onboarding_worker::sandbox::magento_bi::{
    ConnectionList, EstablishedForm, Ids, JobIdOnCreate, JobList, JobStatusForm, JobWorkload,
    Nulls, Readings, StatusCase,
};
use serde_json::Value;

use crate::support::env::{captured_logs, TestEnv};
use crate::support::prometheus::metric_value;
use crate::support::requests::{magento_request, steps_of};

/// The contract's step order.
const STEPS: [&str; 10] = [
    "create_signup",
    "poll_signup",
    "invite_user",
    "update_client",
    "create_connection",
    "poll_connection",
    "test_connection",
    "poll_connection_test",
    "create_dashboards",
    "poll_dashboards",
];

const MYSQL_PASSWORD: &str = "mysql-pw-not-for-logs";

fn id(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("an id, got {v}"))
}

fn magento_metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("provider", "magento_bi")];
    all.extend_from_slice(labels);
    metric_value(metrics, name, &all).unwrap_or(0.0)
}

/// The `step_completed` event of `step` for `request_id`.
async fn step_completed(env: &TestEnv, request_id: &str, step: &str, timeout: Duration) -> Value {
    let (request_id, step) = (request_id.to_string(), step.to_string());
    env.wait_event(timeout, move |e| {
        e["request_id"] == request_id.as_str()
            && e["event"] == "step_completed"
            && e["step"] == step.as_str()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_onboarding_completes_with_the_ten_steps_in_order_and_outputs_the_sandbox_holds() {
    let env = TestEnv::start().await;
    let request = magento_request("mbi-e2e-1", "Coco Co.", MYSQL_PASSWORD);
    env.publish(&request).await;
    let done = env.final_event("mbi-e2e-1", Duration::from_secs(60)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    assert_eq!(done["provider"], "magento_bi");
    assert_eq!(done["operation"], "onboard");
    let out = &done["outputs"];
    let api = &env.sandbox.magento_bi;

    let clients = api.clients();
    assert_eq!(clients.len(), 1, "one client: {clients:?}");
    let client = &clients[0];
    assert_eq!(id(&out["client_id"]), client.id, "client_id");
    assert!(client.ready, "the signup job finished");
    assert_eq!(client.signup["company"], "Coco Co.", "the signup body");
    assert_eq!(
        client.properties["timezone"], "America/New_York",
        "update_client set the client's properties"
    );
    assert_eq!(client.properties["default_currency"], "USD");

    let invites = api.invites();
    assert_eq!(invites.len(), 1, "one invite: {invites:?}");
    assert_eq!(id(&out["user_id"]), invites[0].id, "user_id");
    assert_eq!(invites[0].client_id, client.id);
    assert_eq!(invites[0].email, "analyst@example.test");

    let ours: Vec<_> = api
        .connections()
        .into_iter()
        .filter(|c| c.client_id == client.id && !c.preexisting)
        .collect();
    assert_eq!(ours.len(), 1, "one new connection: {ours:?}");
    assert_eq!(id(&out["connection_id"]), ours[0].id, "connection_id");
    assert!(ours[0].established);
    assert_eq!(ours[0].kind, "mysql");

    let tests: Vec<_> = api
        .jobs()
        .into_iter()
        .filter(|j| !j.form.is_empty())
        .collect();
    assert_eq!(tests.len(), 1, "one connection test: {tests:?}");
    assert_eq!(tests[0].connection_id, ours[0].id);
    assert_eq!(tests[0].status, "Completed");

    let dashboards = api.dashboards();
    assert_eq!(dashboards.len(), 1, "one autodash job: {dashboards:?}");
    let d = &dashboards[0];
    assert_eq!(out["dashboard_job_id"], d.id.as_str(), "dashboard_job_id");
    assert_eq!(
        (d.client_id, d.connection_id, d.user_id),
        (client.id, ours[0].id, invites[0].id),
        "the dashboards use our connection and the invited user"
    );
    assert_eq!(
        (
            d.package.as_str(),
            d.database.as_str(),
            d.table_prefix.as_str()
        ),
        ("magento1_rjql1", "magento_store", "")
    );
    assert_eq!(d.status, "completed");

    let events = env.events_of("mbi-e2e-1").await;
    assert_eq!(events[0]["event"], "accepted");
    assert_eq!(
        steps_of(&events),
        STEPS,
        "step_completed events in contract order"
    );
    assert_eq!(
        events.last().unwrap()["event"],
        "completed",
        "completed comes last"
    );
    let last_step = events
        .iter()
        .rfind(|e| e["event"] == "step_completed")
        .unwrap();
    assert_eq!(
        &last_step["outputs"], out,
        "the last step_completed carries every output"
    );
    assert!(done["duration_ms"].as_i64().unwrap() >= 0);
    assert_eq!(
        api.tokens_issued(),
        1,
        "one token, shared by every step, while it lasts"
    );

    for q in [
        "onboarding.requests",
        "onboarding.steps.magento_bi",
        "onboarding.dead",
    ] {
        assert_eq!(env.vhost.queue_counts(q).await, (0, 0), "{q} is empty");
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_living_three_seconds_is_renewed_while_five_second_jobs_are_waited_on() {
    let env = TestEnv::start_with(|s| {
        s.sandbox.token_ttl_s = 3;
        s.sandbox.job_duration_ms = 5000;
    })
    .await;
    let started = Instant::now();
    env.publish(&magento_request(
        "mbi-token-1",
        "Short Lived",
        MYSQL_PASSWORD,
    ))
    .await;
    // Halfway, the provider forgets every session: the next call is a 401.
    step_completed(
        &env,
        "mbi-token-1",
        "poll_connection",
        Duration::from_secs(60),
    )
    .await;
    env.sandbox.magento_bi.revoke_tokens();
    let done = env
        .final_event("mbi-token-1", Duration::from_secs(90))
        .await;
    let took = started.elapsed();
    assert_eq!(
        done["event"], "completed",
        "an expiring token is no failure: {done:#}"
    );
    assert_eq!(steps_of(&env.events_of("mbi-token-1").await), STEPS);
    assert!(
        took >= Duration::from_secs(20),
        "four 5 s jobs were waited on: {took:?}"
    );

    let issued = env.sandbox.magento_bi.tokens_issued();
    let metrics = env.metrics_text().await;
    let renewals = magento_metric(&metrics, "onboarding_token_renewals_total", &[]);
    let calls = env.sandbox.magento_bi.knobs.all_calls();
    let polls: f64 = [
        "poll_signup",
        "poll_connection",
        "poll_connection_test",
        "poll_dashboards",
    ]
    .iter()
    .map(|s| magento_metric(&metrics, "onboarding_polls_total", &[("step", s)]))
    .sum();
    eprintln!(
        "token test: took {took:?}, {issued} tokens issued, {renewals} renewals counted, {polls} polls, calls {calls:?}"
    );
    assert!(issued >= 2, "a token beyond the first: {issued} issued");
    assert!(renewals >= 2.0, "renewals counted: {renewals}");
    assert_eq!(renewals as usize, issued, "every token issued was counted");
    // While it lasts, a token is shared: replaced when half of its 3 s is left
    // at the latest, not fetched again for every call.
    let authenticated: u64 = calls
        .iter()
        .filter(|(k, _)| !k.contains("/v1/tokens") && !k.contains("/v3/signups"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        (issued as f64) <= took.as_secs_f64() / 1.5 + 2.0 && (issued as u64) < authenticated,
        "{issued} tokens for {authenticated} authenticated calls in {took:?}"
    );
    let unauthorized = magento_metric(
        &metrics,
        "onboarding_provider_http_requests_total",
        &[("status_class", "4xx")],
    );
    assert!(
        unauthorized >= 1.0,
        "the revoked token was answered 401 ({unauthorized} times), and that was no failure"
    );
    for outcome in ["rejected", "exhausted"] {
        assert_eq!(
            metric_value(
                &metrics,
                "onboarding_steps_total",
                &[("provider", "magento_bi"), ("outcome", outcome)]
            ),
            None,
            "no step ended {outcome}"
        );
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connection_test_fails_job_failed_at_poll_connection_test_with_what_was_created() {
    let env = TestEnv::start().await;
    env.sandbox.magento_bi.fail_next_connection_test();
    let request = magento_request("mbi-conn-fail", "Broken Db", MYSQL_PASSWORD);
    env.publish(&request).await;
    let failed = env
        .final_event("mbi-conn-fail", Duration::from_secs(60))
        .await;
    assert_eq!(failed["event"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["kind"], "job_failed");
    assert_eq!(failed["error"]["step"], "poll_connection_test");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Could not connect to MySQL server"),
        "the provider's reason reaches the operator: {message}"
    );

    let api = &env.sandbox.magento_bi;
    let out = &failed["outputs"];
    let client = api.clients()[0].id;
    let connection = api
        .connections()
        .into_iter()
        .find(|c| c.client_id == client && !c.preexisting)
        .expect("our connection");
    assert_eq!(id(&out["client_id"]), client);
    assert_eq!(id(&out["user_id"]), api.invites()[0].id);
    assert_eq!(id(&out["connection_id"]), connection.id);
    assert!(out.get("dashboard_job_id").is_none(), "{out:#}");
    assert!(
        api.dashboards().is_empty(),
        "no dashboards after a failed test"
    );
    assert_eq!(steps_of(&env.events_of("mbi-conn-fail").await), STEPS[..7]);

    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].request_id.as_deref(), Some("mbi-conn-fail"));
    assert_eq!(dead[0].error_kind.as_deref(), Some("job_failed"));
    assert_eq!(dead[0].step.as_deref(), Some("poll_connection_test"));
    let original: Value = serde_json::from_slice(&dead[0].body).unwrap();
    assert_eq!(original, request, "kept whole");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_slower_than_their_deadline_time_out_at_poll_dashboards() {
    let env = TestEnv::start_with(|s| {
        // Every job takes 2 s; the dashboards are given 0.5 s.
        s.sandbox.job_duration_ms = 2000;
        s.providers
            .magento_bi
            .polls
            .get_mut("poll_dashboards")
            .unwrap()
            .deadline_ms = 500;
    })
    .await;
    let request = magento_request("mbi-slow-dash", "Slow Dash", MYSQL_PASSWORD);
    env.publish(&request).await;
    let failed = env
        .final_event("mbi-slow-dash", Duration::from_secs(60))
        .await;
    assert_eq!(failed["event"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["kind"], "timed_out");
    assert_eq!(failed["error"]["step"], "poll_dashboards");
    let dashboards = env.sandbox.magento_bi.dashboards();
    assert_eq!(dashboards.len(), 1);
    assert_ne!(dashboards[0].status, "completed", "it was still running");
    assert_eq!(
        failed["outputs"]["dashboard_job_id"],
        dashboards[0].id.as_str(),
        "the job to look at is in the outputs"
    );
    assert_eq!(steps_of(&env.events_of("mbi-slow-dash").await), STEPS[..9]);

    let metrics = env.metrics_text().await;
    let polls = magento_metric(
        &metrics,
        "onboarding_polls_total",
        &[("step", "poll_dashboards")],
    );
    assert!(polls >= 1.0, "polled before giving up: {polls}");
    assert_eq!(
        magento_metric(
            &metrics,
            "onboarding_steps_total",
            &[("step", "poll_dashboards"), ("outcome", "timed_out")]
        ),
        1.0
    );
    let dead = env.dead().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].error_kind.as_deref(), Some("timed_out"));
    assert_eq!(dead[0].step.as_deref(), Some("poll_dashboards"));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_invite_is_timed_out_and_retried_without_a_second_invite() {
    let env = TestEnv::start().await;
    // Longer than the 1.5 s call timeout.
    let hang = Duration::from_millis(4000);
    env.sandbox.magento_bi.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/v3/invites".into(),
        fault: Fault::Hang {
            ms: hang.as_millis() as u64,
        },
        times: 1,
    });
    let started = Instant::now();
    env.publish(&magento_request("mbi-hang-1", "Hanging", MYSQL_PASSWORD))
        .await;
    let done = env.final_event("mbi-hang-1", Duration::from_secs(60)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    // Whatever the hung call would still do, it has done by now.
    let settle = (hang + Duration::from_millis(500)).saturating_sub(started.elapsed());
    tokio::time::sleep(settle).await;

    let api = &env.sandbox.magento_bi;
    assert_eq!(
        api.knobs.calls("POST /v3/invites"),
        2,
        "timed out once, then retried"
    );
    let client = id(&done["outputs"]["client_id"]);
    let invites: Vec<_> = api
        .invites()
        .into_iter()
        .filter(|i| i.client_id == client)
        .collect();
    assert_eq!(invites.len(), 1, "one invite for the client: {invites:?}");
    assert_eq!(id(&done["outputs"]["user_id"]), invites[0].id);
    let metrics = env.metrics_text().await;
    assert_eq!(
        magento_metric(
            &metrics,
            "onboarding_retries_total",
            &[("reason", "timeout")]
        ),
        1.0
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_established_connection_in_the_list_does_not_end_poll_connection_early() {
    // Signup and connection jobs take 2 s; the later ones are made quick below.
    let job = Duration::from_millis(2000);
    let env = TestEnv::start_with(|s| s.sandbox.job_duration_ms = job.as_millis() as u64).await;
    env.publish(&magento_request(
        "mbi-older-1",
        "Older Conn",
        MYSQL_PASSWORD,
    ))
    .await;
    let created = step_completed(
        &env,
        "mbi-older-1",
        "create_connection",
        Duration::from_secs(60),
    )
    .await;
    let ours = id(&created["outputs"]["connection_id"]);
    let client = id(&created["outputs"]["client_id"]);
    let api = &env.sandbox.magento_bi;
    api.set_job_duration(Duration::from_millis(300));
    let listed = api.connections();
    let older = listed
        .iter()
        .find(|c| c.client_id == client && c.preexisting)
        .expect("the sandbox lists an older connection");
    assert!(older.established && older.id != ours, "{listed:?}");

    let polled = step_completed(
        &env,
        "mbi-older-1",
        "poll_connection",
        Duration::from_secs(30),
    )
    .await;
    let connection = api
        .connections()
        .into_iter()
        .find(|c| c.id == ours)
        .unwrap();
    assert!(connection.established, "ours is established");
    let waited = polled["duration_ms"].as_i64().unwrap() - created["duration_ms"].as_i64().unwrap();
    assert!(
        waited >= job.as_millis() as i64 / 2,
        "poll_connection waited for our connection's {job:?} job, not {waited} ms"
    );

    let done = env
        .final_event("mbi-older-1", Duration::from_secs(60))
        .await;
    assert_eq!(done["event"], "completed", "{done:#}");
    let tests: Vec<_> = api
        .jobs()
        .into_iter()
        .filter(|j| j.client_id == client && !j.form.is_empty())
        .collect();
    assert_eq!(tests.len(), 1, "{tests:?}");
    assert_eq!(
        tests[0].connection_id, ours,
        "test_connection targeted ours"
    );
    assert!(
        tests[0]
            .form
            .contains(&format!("workload[connectionId]={ours}")),
        "{}",
        tests[0].form
    );
    assert_eq!(
        tests[0].status, "Completed",
        "tested after it was established (the sandbox fails a test of one that is not)"
    );
    let metrics = env.metrics_text().await;
    let polls = magento_metric(
        &metrics,
        "onboarding_polls_total",
        &[("step", "poll_connection")],
    );
    eprintln!("older connection test: waited {waited} ms, {polls} poll_connection polls");
    assert!(polls >= 1.0, "at least one \"not yet\": {polls}");
    env.shutdown().await;
}

/// `secret` as it could leak: plain, URL-encoded (both spellings of a space), Base64.
fn spellings(secret: &str) -> Vec<(String, &'static str)> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    vec![
        (secret.to_string(), "plain"),
        (form.replace('+', "%20"), "URL-encoded"),
        (form, "form-encoded"),
        (
            base64::engine::general_purpose::STANDARD.encode(secret),
            "Base64",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_magento_secret_appears_in_logs_events_dead_messages_or_metrics() {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let password = format!("mbi pw/{unique}+&=?");
    let client_secret = format!("mbi cs/{unique}+&=?");
    let (pw, cs) = (password.clone(), client_secret.clone());
    let env = TestEnv::start_with(move |s| {
        s.providers.magento_bi.password = Secret::new(pw);
        s.providers.magento_bi.client_secret = Secret::new(cs);
        // Short-lived tokens, so several are issued and renewed.
        s.sandbox.token_ttl_s = 1;
        s.providers.magento_bi.token_renew_margin_ms = 200;
    })
    .await;
    let api = &env.sandbox.magento_bi;
    // A transient failure and a 401, so the warning and renewal paths log too.
    api.knobs.inject(FaultRule {
        method: Some("PUT".into()),
        path_contains: "/v1/clients/".into(),
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    let ok_mysql = format!("my sql/{unique}+ok&=");
    let ok = magento_request("mbi-secret-ok", "Secretive", &ok_mysql);
    env.publish(&ok).await;
    step_completed(
        &env,
        "mbi-secret-ok",
        "invite_user",
        Duration::from_secs(60),
    )
    .await;
    api.revoke_tokens();
    let done = env
        .final_event("mbi-secret-ok", Duration::from_secs(60))
        .await;
    assert_eq!(done["event"], "completed", "{done:#}");

    api.fail_next_connection_test();
    let failing_mysql = format!("my sql/{unique}+fail&=");
    let failing = magento_request("mbi-secret-fail", "Secretive Two", &failing_mysql);
    env.publish(&failing).await;
    let failed = env
        .final_event("mbi-secret-fail", Duration::from_secs(60))
        .await;
    assert_eq!(failed["event"], "failed", "{failed:#}");

    let events = env.drain_events(Duration::from_millis(300)).await;
    let dead = env.dead().await;
    let metrics = env.metrics_text().await;
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    assert!(
        logs.contains("mbi-secret-ok") && logs.contains("mbi-secret-fail"),
        "logs were captured and carry the request ids"
    );
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&dead[0].body).unwrap(),
        failing,
        "the dead message is the publisher's request, kept whole (CONTRACT §5)"
    );

    let p = &env.settings.providers.magento_bi;
    let issued = api.issued_tokens();
    assert!(issued.len() >= 2, "tokens renewed: {issued:?}");
    let mut secrets = vec![
        (password.clone(), "the magento password".to_string()),
        (client_secret.clone(), "the client secret".to_string()),
        (
            format!("{}:{}", p.username, password),
            "username:password (Basic)".to_string(),
        ),
        (
            format!("{}:{}", p.client_id, client_secret),
            "client_id:client_secret (Basic)".to_string(),
        ),
        (ok_mysql.clone(), "a MySQL password".to_string()),
        (failing_mysql.clone(), "a MySQL password".to_string()),
    ];
    secrets.extend(
        issued
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), format!("access token #{}", i + 1))),
    );
    let dead_headers = dead
        .iter()
        .map(|d| {
            format!(
                "{:?} {:?} {:?} {:?} {:?}",
                d.request_id, d.error_kind, d.step, d.reason, d.failed_at
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let places = [
        ("logs", logs),
        ("events", serde_json::to_string(&events).unwrap()),
        ("dead message headers", dead_headers),
        ("/metrics", metrics),
    ];
    for (secret, what) in &secrets {
        for (form, how) in spellings(secret) {
            for (place, text) in &places {
                assert!(!text.contains(&form), "{what} leaked {how} into {place}");
            }
        }
    }
    // The request body in onboarding.dead is the publisher's own (with its MySQL
    // password); nothing the worker holds was added to it.
    let body = String::from_utf8_lossy(&dead[0].body).to_string();
    for (secret, what) in secrets.iter().filter(|(s, _)| *s != failing_mysql) {
        for (form, how) in spellings(secret) {
            assert!(
                !body.contains(&form),
                "{what} leaked {how} into the dead body"
            );
        }
    }
    env.shutdown().await;
}

// ---- the seed's open points: one whole onboarding per reading --------------

/// Checks a completed onboarding of `request_id` against what the sandbox made:
/// one client, invite, connection, connection test and autodash job, and the
/// outputs naming them (ids as numbers, whatever the answers said).
async fn assert_onboarded(env: &TestEnv, request_id: &str, why: &str) {
    let done = env.final_event(request_id, Duration::from_secs(60)).await;
    assert_eq!(done["event"], "completed", "{why}: {done:#}");
    assert_eq!(steps_of(&env.events_of(request_id).await), STEPS, "{why}");
    let out = &done["outputs"];
    let api = &env.sandbox.magento_bi;
    let client = api.clients()[0].id;
    assert_eq!(out["client_id"], client, "{why}: client_id, as a number");
    let invite = api.invites()[0].id;
    assert_eq!(out["user_id"], invite, "{why}: user_id, as a number");
    let ours: Vec<_> = api
        .connections()
        .into_iter()
        .filter(|c| c.client_id == client && !c.preexisting)
        .collect();
    assert_eq!(ours.len(), 1, "{why}: one connection: {ours:?}");
    assert_eq!(out["connection_id"], ours[0].id, "{why}: connection_id");
    let tests: Vec<_> = api
        .jobs()
        .into_iter()
        .filter(|j| !j.form.is_empty())
        .collect();
    assert_eq!(tests.len(), 1, "{why}: one connection test: {tests:?}");
    assert_eq!(tests[0].connection_id, ours[0].id, "{why}");
    assert_eq!(tests[0].status, "Completed", "{why}");
    let dashboards = api.dashboards();
    assert_eq!(dashboards.len(), 1, "{why}: {dashboards:?}");
    assert_eq!(
        (dashboards[0].connection_id, dashboards[0].user_id),
        (ours[0].id, invite),
        "{why}: the dashboards use our connection and the invited user"
    );
    assert_eq!(dashboards[0].status, "completed", "{why}");
    assert_eq!(out["dashboard_job_id"], dashboards[0].id.as_str(), "{why}");
    assert!(
        env.dead().await.is_empty(),
        "{why}: nothing in onboarding.dead"
    );
}

/// One whole onboarding with the sandbox started in `readings` (through the
/// `[sandbox.magento_bi]` settings).
async fn onboards_under(request_id: &str, readings: Readings) {
    let why = format!("{readings:?}");
    let env = TestEnv::start_with(move |s| s.sandbox.magento_bi = readings).await;
    env.publish(&magento_request(request_id, "Readings Co.", MYSQL_PASSWORD))
        .await;
    assert_onboarded(&env, request_id, &why).await;
    env.shutdown().await;
}

fn seed() -> Readings {
    Readings::default()
}

/// Issue 14: the provider's emulation answered the job list with the latest job
/// as one object; every onboarding failed at poll_connection_test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_the_job_list_answers_one_object() {
    let readings = Readings {
        job_list: JobList::Object,
        ..seed()
    };
    onboards_under("mbi-read-object", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_the_job_list_is_oldest_first() {
    let readings = Readings {
        job_list: JobList::OldestFirst,
        ..seed()
    };
    onboards_under("mbi-read-oldest", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_the_job_list_is_wrapped_under_jobs() {
    let readings = Readings {
        job_list: JobList::Wrapped,
        ..seed()
    };
    onboards_under("mbi-read-wrapped", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_the_job_list_is_wrapped_under_data() {
    let readings = Readings {
        job_list: JobList::WrappedData,
        ..seed()
    };
    onboards_under("mbi-read-data", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_a_jobs_status_is_a_bare_word() {
    let readings = Readings {
        job_status: JobStatusForm::String,
        ..seed()
    };
    onboards_under("mbi-read-status-word", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_every_status_is_title_case() {
    let readings = Readings {
        status_case: StatusCase::Title,
        ..seed()
    };
    onboards_under("mbi-read-title", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_every_status_is_lower_case() {
    let readings = Readings {
        status_case: StatusCase::Lower,
        ..seed()
    };
    onboards_under("mbi-read-lower", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_every_status_is_upper_case() {
    let readings = Readings {
        status_case: StatusCase::Upper,
        ..seed()
    };
    onboards_under("mbi-read-upper", readings).await;
}

/// The sandbox refuses an id written back as a string, so this also shows the
/// client writes the seed's numbers whatever the answers said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_ids_are_numeric_strings_and_writes_them_back_as_numbers() {
    let readings = Readings {
        ids: Ids::String,
        ..seed()
    };
    onboards_under("mbi-read-string-ids", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_listed_jobs_name_no_connection() {
    let readings = Readings {
        job_workload: JobWorkload::Absent,
        ..seed()
    };
    onboards_under("mbi-read-no-workload", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_the_job_post_answers_the_jobs_id() {
    let readings = Readings {
        job_id_on_create: JobIdOnCreate::Id,
        ..seed()
    };
    onboards_under("mbi-read-job-id", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_the_connection_list_is_wrapped() {
    let readings = Readings {
        connection_list: ConnectionList::Wrapped,
        ..seed()
    };
    onboards_under("mbi-read-conn-wrapped", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_established_is_a_boolean() {
    let readings = Readings {
        established: EstablishedForm::Bool,
        ..seed()
    };
    onboards_under("mbi-read-est-bool", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_established_is_a_unix_time() {
    let readings = Readings {
        established: EstablishedForm::Epoch,
        ..seed()
    };
    onboards_under("mbi-read-est-epoch", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_unknown_values_are_left_out_rather_than_null() {
    let readings = Readings {
        nulls: Nulls::Absent,
        ..seed()
    };
    onboards_under("mbi-read-absent", readings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_answers_carry_unknown_fields() {
    let readings = Readings {
        extra_fields: true,
        ..seed()
    };
    onboards_under("mbi-read-extra", readings).await;
}

/// Every knob at its least expected value at once, set over HTTP while the
/// sandbox runs, as an operator of `onboarding-worker sandbox` would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboards_when_every_open_point_takes_its_least_expected_reading_set_over_http() {
    let env = TestEnv::start().await;
    let all = serde_json::json!({
        "job_list": "object", "job_status": "string", "status_case": "upper", "ids": "string",
        "job_workload": "absent", "job_id_on_create": "null", "connection_list": "wrapped",
        "established": "bool", "nulls": "absent", "extra_fields": true,
    });
    let r = reqwest::Client::new()
        .post(format!(
            "{}/_sandbox/readings",
            env.sandbox.magento_api_url()
        ))
        .json(&all)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        serde_json::to_value(env.sandbox.magento_bi.readings()).unwrap(),
        all,
        "every knob set"
    );
    env.publish(&magento_request("mbi-read-all", "All Odd", MYSQL_PASSWORD))
        .await;
    assert_onboarded(&env, "mbi-read-all", "every reading at once").await;
    env.shutdown().await;
}

// ---- a create whose answer was lost is recognised -------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_before_its_answer_was_lost_is_adopted_not_made_twice() {
    let env = TestEnv::start().await;
    let api = &env.sandbox.magento_bi;
    // The connection is made; its answer is a 503 (the "call succeeded,
    // answer lost" case): the retry may repeat it, and looks first.
    api.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/connections/input-connections".into(),
        fault: Fault::AfterSuccess { status: 503 },
        times: 1,
    });
    env.publish(&magento_request(
        "mbi-lost-conn",
        "Lost Answer",
        MYSQL_PASSWORD,
    ))
    .await;
    assert_onboarded(&env, "mbi-lost-conn", "a lost create answer").await;
    assert_eq!(
        api.knobs
            .calls("POST /v1/v2/clients/{client_id}/connections/input-connections"),
        1,
        "no second POST"
    );
    let metrics = env.metrics_text().await;
    assert_eq!(
        magento_metric(
            &metrics,
            "onboarding_create_repeats_total",
            &[("step", "create_connection")]
        ),
        1.0,
        "the repeat was recognised and counted"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_test_started_before_its_answer_was_lost_is_adopted_not_started_twice() {
    let env = TestEnv::start().await;
    let api = &env.sandbox.magento_bi;
    api.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/job".into(),
        fault: Fault::AfterSuccess { status: 503 },
        times: 1,
    });
    env.publish(&magento_request(
        "mbi-lost-test",
        "Lost Test",
        MYSQL_PASSWORD,
    ))
    .await;
    assert_onboarded(&env, "mbi-lost-test", "a lost job answer").await;
    assert_eq!(
        api.knobs.calls("POST /v2/client/{client_id}/job"),
        1,
        "no second test"
    );
    env.shutdown().await;
}
