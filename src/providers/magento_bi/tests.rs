//! The provider against the Magento BI sandbox served on real ports.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::connection_test::TEST_JOB_ID;
use super::*;
use crate::config::{Secret, Settings};
use crate::domain::RetryReason;
use crate::engine::local::{run_plan, LocalRun};
use crate::engine::step::StepDone;
use crate::sandbox::faults::{Fault, FaultRule};
use crate::sandbox::magento_bi::{
    Api, ConnectionList, EstablishedForm, Ids, JobIdOnCreate, JobList, JobStatusForm, JobWorkload,
    Nulls, Options, Readings, StatusCase,
};

const PASSWORD: &str = "pw-hunter2-magento";
const SECRET: &str = "cs-hunter2-magento";
const POLL_SLEEP: Duration = Duration::from_millis(25);

/// The sandbox on two ports and a provider configured for it.
struct Harness {
    api: Api,
    settings: MagentoBiSettings,
    metrics: Metrics,
    provider: MagentoBi,
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn test_settings() -> MagentoBiSettings {
    let mut s = Settings::load(None).unwrap().providers.magento_bi;
    s.password = Secret::new(PASSWORD);
    s.client_secret = Secret::new(SECRET);
    s.token_renew_margin_ms = 100;
    s.calls.timeout_ms = 5000;
    s.calls.max_attempts = 3.try_into().unwrap();
    s.calls.retry_base_ms = 10;
    s.calls.retry_cap_ms = 50;
    for p in s.polls.values_mut() {
        p.interval_ms = 20;
        p.max_interval_ms = 20;
        p.deadline_ms = 30_000;
    }
    s
}

impl Harness {
    /// A sandbox accepting the configured credentials.
    async fn start(job: Duration, token_ttl: Duration) -> Harness {
        Self::start_with(job, token_ttl, PASSWORD).await
    }

    /// A sandbox whose accepted password is `sandbox_password`.
    async fn start_with(job: Duration, token_ttl: Duration, sandbox_password: &str) -> Harness {
        Self::start_full(job, token_ttl, sandbox_password, Readings::default()).await
    }

    /// A sandbox answering in `readings`.
    async fn start_reading(job: Duration, readings: Readings) -> Harness {
        Self::start_full(job, Duration::from_secs(3600), PASSWORD, readings).await
    }

    async fn start_full(
        job: Duration,
        token_ttl: Duration,
        sandbox_password: &str,
        readings: Readings,
    ) -> Harness {
        let mut settings = test_settings();
        let api = Api::new(Options {
            username: settings.username.clone(),
            password: sandbox_password.into(),
            client_id: settings.client_id,
            client_secret: SECRET.into(),
            token_ttl,
            job_duration: job,
            readings,
        });
        settings.api_base = serve(api.api_router()).await;
        settings.dashboard_base = serve(api.dashboard_router()).await;
        let metrics = Metrics::new();
        let provider = MagentoBi::new(&settings, metrics.clone());
        Harness {
            api,
            settings,
            metrics,
            provider,
        }
    }

    async fn run(&self, input: &Value) -> LocalRun {
        run_plan(&self.provider, Operation::Onboard, input, POLL_SLEEP, 400)
            .await
            .unwrap()
    }

    fn renewals(&self) -> u64 {
        self.metrics
            .token_renewals_total
            .with_label_values(&["magento_bi"])
            .get()
    }

    /// Runs one step once with `outputs` so far.
    async fn step(
        &self,
        input: &Value,
        outputs: &Map<String, Value>,
        name: &'static str,
    ) -> Result<StepOutcome, StepError> {
        self.step_with(input, outputs, name, false).await
    }

    /// As [`Harness::step`], saying whether an earlier attempt may have reached the provider.
    async fn step_with(
        &self,
        input: &Value,
        outputs: &Map<String, Value>,
        name: &'static str,
        possible_repeat: bool,
    ) -> Result<StepOutcome, StepError> {
        let key = StepKey::new(name);
        let secrets = Map::new();
        let ctx = StepContext {
            request_id: "test",
            operation: Operation::Onboard,
            input,
            outputs,
            secrets: &secrets,
            step: &key,
            attempt: 0,
            polls: 0,
            poll_state: None,
            possible_repeat,
        };
        self.provider.run(&ctx).await
    }

    /// Runs one step until it is done, merging its outputs.
    async fn finish(
        &self,
        input: &Value,
        outputs: &mut Map<String, Value>,
        name: &'static str,
    ) -> Result<(), StepError> {
        for _ in 0..400 {
            match self.step(input, outputs, name).await? {
                StepOutcome::Done(done) => {
                    outputs.extend(done.outputs);
                    return Ok(());
                }
                StepOutcome::Pending { .. } => tokio::time::sleep(POLL_SLEEP).await,
            }
        }
        panic!("{name} never finished");
    }
}

/// CONTRACT §4's example input.
fn input() -> Value {
    json!({
        "signup": { "tier": "T100", "company": "Coco Co.", "first_name": "Csm", "last_name": "Last",
                    "email": "csm@example.com", "role": "csm",
                    "magento": { "customer_id": "MAG0000001", "subscription_id": "1000" } },
        "invite": { "email": "owner@coco.example", "first_name": "Ann", "last_name": "Owner", "force_create": 1,
                    "client_rights": { "admin": 1, "billing": 1, "readonly": 1, "technical": 0 } },
        "client": { "name": "Coco Co.", "properties": { "timezone": "America/New_York", "default_currency": "USD" } },
        "connection": { "name": "store", "display_name": "Store DB", "type": "mysql",
                        "credentials": { "password": "db-password", "encryption_password": null },
                        "properties": { "host": "db.coco.example", "port": "3306", "dbName": "magento_store",
                                        "username": "magento" } },
        "dashboards": { "package": "magento1_rjql1", "database": "magento_store", "table_prefix": "mg_" }
    })
}

fn names(run: &LocalRun) -> Vec<&'static str> {
    run.steps_done.iter().map(|s| s.name).collect()
}

#[test]
fn plan_checks_every_section_and_names_the_bad_field() {
    let provider = MagentoBi::new(&test_settings(), Metrics::new());
    type Edit = fn(&mut Value);
    let cases: Vec<(&str, Edit, Option<&str>)> = vec![
        ("the contract's example", |_| {}, None),
        (
            "unknown fields are kept",
            |v| v["signup"]["extra"] = json!({"a": 1}),
            None,
        ),
        (
            "no table prefix",
            |v| {
                v["dashboards"]
                    .as_object_mut()
                    .unwrap()
                    .remove("table_prefix");
            },
            None,
        ),
        (
            "input not an object",
            |v| *v = json!([1]),
            Some("input must be an object"),
        ),
        (
            "no signup",
            |v| {
                v.as_object_mut().unwrap().remove("signup");
            },
            Some("input.signup is missing"),
        ),
        (
            "signup a string",
            |v| v["signup"] = json!("x"),
            Some("input.signup must be an object"),
        ),
        (
            "signup without email",
            |v| {
                v["signup"].as_object_mut().unwrap().remove("email");
            },
            Some("input.signup.email is missing"),
        ),
        (
            "signup company empty",
            |v| v["signup"]["company"] = json!(""),
            Some("input.signup.company must be a non-empty string"),
        ),
        (
            "no invite",
            |v| v["invite"] = Value::Null,
            Some("input.invite is missing"),
        ),
        (
            "invite email a number",
            |v| v["invite"]["email"] = json!(5),
            Some("input.invite.email must be a non-empty string"),
        ),
        (
            "client a list",
            |v| v["client"] = json!([]),
            Some("input.client must be an object"),
        ),
        (
            "client properties a string",
            |v| v["client"]["properties"] = json!("x"),
            Some("input.client.properties must be an object"),
        ),
        (
            "client name a number",
            |v| v["client"]["name"] = json!(1),
            Some("input.client.name must be a string"),
        ),
        (
            "no connection",
            |v| {
                v.as_object_mut().unwrap().remove("connection");
            },
            Some("input.connection is missing"),
        ),
        (
            "connection type a number",
            |v| v["connection"]["type"] = json!(3),
            Some("input.connection.type must be a non-empty string"),
        ),
        (
            "connection without name",
            |v| {
                v["connection"].as_object_mut().unwrap().remove("name");
            },
            Some("input.connection.name is missing"),
        ),
        (
            "connection properties a list",
            |v| v["connection"]["properties"] = json!([]),
            Some("input.connection.properties must be an object"),
        ),
        (
            "connection without credentials",
            |v| {
                v["connection"]
                    .as_object_mut()
                    .unwrap()
                    .remove("credentials");
            },
            Some("input.connection.credentials is missing"),
        ),
        (
            "no dashboards",
            |v| {
                v.as_object_mut().unwrap().remove("dashboards");
            },
            Some("input.dashboards is missing"),
        ),
        (
            "dashboards package a number",
            |v| v["dashboards"]["package"] = json!(1),
            Some("input.dashboards.package must be a non-empty string"),
        ),
        (
            "dashboards without database",
            |v| {
                v["dashboards"].as_object_mut().unwrap().remove("database");
            },
            Some("input.dashboards.database is missing"),
        ),
        (
            "dashboards table prefix null",
            |v| v["dashboards"]["table_prefix"] = Value::Null,
            Some("input.dashboards.table_prefix must be a string"),
        ),
    ];
    for (why, edit, expected) in cases {
        let mut v = input();
        edit(&mut v);
        let got = provider.plan(Operation::Onboard, &v);
        match expected {
            None => {
                let steps: Vec<_> = got
                    .unwrap_or_else(|e| panic!("{why}: {e}"))
                    .into_iter()
                    .map(|s| s.name)
                    .collect();
                assert_eq!(steps, STEPS, "{why}");
            }
            Some(message) => assert_eq!(got.unwrap_err(), message, "{why}"),
        }
    }
}

#[test]
fn login_url_is_not_offered() {
    let provider = MagentoBi::new(&test_settings(), Metrics::new());
    assert_eq!(
        provider.plan(Operation::LoginUrl, &input()).unwrap_err(),
        "operation login_url is not offered by magento_bi"
    );
}

#[test]
fn poll_policies_come_from_settings_for_the_four_poll_steps_only() {
    let settings = test_settings();
    let provider = MagentoBi::new(&settings, Metrics::new());
    for step in POLL_STEPS {
        assert_eq!(
            provider.poll_policy(step),
            Some(crate::providers::poll_policy(&settings.polls[step])),
            "{step}"
        );
    }
    for step in STEPS.iter().filter(|s| !POLL_STEPS.contains(s)) {
        assert_eq!(provider.poll_policy(step), None, "{step}");
    }
}

#[tokio::test]
async fn a_full_onboard_ends_with_outputs_the_sandbox_holds() {
    let h = Harness::start(Duration::from_millis(300), Duration::from_secs(3600)).await;
    let input = input();
    let run = h.run(&input).await;
    assert!(run.failure.is_none(), "{:?}", run.failure);
    assert_eq!(names(&run), STEPS);
    assert!(run.polls > 0, "the jobs took time");
    let out = &run.outputs;

    let clients = h.api.clients();
    assert_eq!(clients.len(), 1);
    let client = &clients[0];
    assert_eq!(out["client_id"], client.id);
    assert_eq!(client.name, "Coco Co.", "update_client set the name");
    assert_eq!(client.properties["timezone"], "America/New_York");
    assert_eq!(
        client.signup, input["signup"],
        "the signup body passed through"
    );

    let invites = h.api.invites();
    assert_eq!(invites.len(), 1);
    assert_eq!(out["user_id"], invites[0].id);
    assert_eq!(invites[0].client_id, client.id);
    assert_eq!(
        invites[0].body["client_rights"],
        input["invite"]["client_rights"]
    );

    let ours: Vec<_> = h
        .api
        .connections()
        .into_iter()
        .filter(|c| !c.preexisting)
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(out["connection_id"], ours[0].id);
    assert!(ours[0].established);
    assert_eq!(ours[0].body, input["connection"]);

    let tests: Vec<_> = h
        .api
        .jobs()
        .into_iter()
        .filter(|j| j.connection_id == ours[0].id)
        .collect();
    assert_eq!(tests.len(), 1);
    assert_eq!(
        tests[0].form,
        format!(
            "jobType=27&workload[connectionId]={}&workload[syncAndSample]=1",
            ours[0].id
        )
    );
    assert_eq!(tests[0].status, "Completed");

    let dashboards = h.api.dashboards();
    assert_eq!(dashboards.len(), 1);
    let d = &dashboards[0];
    assert_eq!(out["dashboard_job_id"], d.id.as_str());
    assert_eq!((d.connection_id, d.user_id), (ours[0].id, invites[0].id));
    assert_eq!(
        (
            d.package.as_str(),
            d.database.as_str(),
            d.table_prefix.as_str()
        ),
        ("magento1_rjql1", "magento_store", "mg_")
    );
    assert_eq!(d.status, "completed");

    let mut keys: Vec<_> = out.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "client_id",
            "connection_id",
            "connection_tests_before",
            "dashboard_job_id",
            "signup_id",
            "user_id"
        ]
    );
    let older_tests: Vec<Value> = h
        .api
        .jobs()
        .iter()
        .filter(|j| j.form.is_empty())
        .map(|j| json!(j.id))
        .collect();
    assert_eq!(
        out["connection_tests_before"],
        Value::Array(older_tests),
        "the jobs listed before ours"
    );
    assert_eq!(
        h.api.tokens_issued(),
        1,
        "one token for the whole onboarding"
    );
    assert_eq!(h.renewals(), 1);
}

#[tokio::test]
async fn a_token_living_one_second_is_renewed_through_jobs_of_a_second_and_a_half() {
    let h = Harness::start(Duration::from_millis(1500), Duration::from_secs(1)).await;
    let run = h.run(&input()).await;
    assert!(run.failure.is_none(), "{:?}", run.failure);
    assert_eq!(names(&run), STEPS);
    let issued = h.api.tokens_issued();
    assert!(issued >= 2, "only {issued} token(s) issued");
    assert_eq!(h.renewals(), issued as u64, "every new token is counted");
}

#[tokio::test]
async fn a_margin_longer_than_the_tokens_lifetime_still_lets_calls_share_it() {
    let mut h = Harness::start(Duration::ZERO, Duration::from_secs(2)).await;
    // The default margin (60 s) against a 2 s token: renewed when half of it is left.
    h.settings.token_renew_margin_ms = 60_000;
    h.provider = MagentoBi::new(&h.settings, h.metrics.clone());
    let run = h.run(&input()).await;
    assert!(run.failure.is_none(), "{:?}", run.failure);
    assert_eq!(
        h.api.tokens_issued(),
        1,
        "one token for a run shorter than half its life"
    );
}

#[tokio::test]
async fn concurrent_onboardings_share_one_token() {
    let h = Harness::start(Duration::from_millis(100), Duration::from_secs(3600)).await;
    let input = input();
    let (a, b, c) = tokio::join!(h.run(&input), h.run(&input), h.run(&input));
    for run in [&a, &b, &c] {
        assert!(run.failure.is_none(), "{:?}", run.failure);
    }
    assert_eq!(h.api.clients().len(), 3);
    assert_eq!(h.api.tokens_issued(), 1);
}

#[tokio::test]
async fn a_401_renews_the_token_once_and_repeats_the_call_once() {
    let h = Harness::start(Duration::ZERO, Duration::from_secs(3600)).await;
    let input = input();
    let mut out = Map::new();
    for step in ["create_signup", "poll_signup", "invite_user"] {
        h.finish(&input, &mut out, step).await.unwrap();
    }
    assert_eq!(h.api.tokens_issued(), 1);

    // The provider forgot every session: one renewal, one repeated call.
    h.api.revoke_tokens();
    h.finish(&input, &mut out, "update_client").await.unwrap();
    assert_eq!(h.api.tokens_issued(), 2);
    assert_eq!(h.api.knobs.calls("PUT /v1/clients/{client_id}"), 2);

    // A 401 that a new token does not cure is the provider's answer.
    h.api.knobs.inject(FaultRule {
        method: Some("PUT".into()),
        path_contains: "/v1/clients/".into(),
        fault: Fault::Status { status: 401 },
        times: 5,
    });
    let err = h.step(&input, &out, "update_client").await.unwrap_err();
    assert!(
        matches!(
            err,
            StepError::Rejected {
                http_status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(h.api.tokens_issued(), 3, "renewed once, not again");
    assert_eq!(
        h.api.knobs.calls("PUT /v1/clients/{client_id}"),
        4,
        "the call was repeated once"
    );
    assert_eq!(h.renewals(), 3);
}

#[tokio::test]
async fn a_token_call_failing_transiently_is_a_transient_error_of_the_step_that_needed_it() {
    let h = Harness::start(Duration::ZERO, Duration::from_secs(3600)).await;
    let input = input();
    let mut out = Map::new();
    for step in ["create_signup", "poll_signup"] {
        h.finish(&input, &mut out, step).await.unwrap();
    }
    h.api.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/v1/tokens".into(),
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    let err = h.step(&input, &out, "invite_user").await.unwrap_err();
    match &err {
        StepError::Transient {
            http_status,
            message,
            ..
        } => {
            assert_eq!(*http_status, Some(503));
            assert_eq!(
                message,
                "invite_user (access token): provider answered 503: injected fault"
            );
        }
        other => panic!("expected transient, got {other:?}"),
    }
    assert!(h.api.invites().is_empty(), "no invite without a token");
    h.finish(&input, &mut out, "invite_user").await.unwrap();
    assert_eq!(h.api.invites().len(), 1);
    assert_eq!(h.renewals(), 1, "only tokens obtained are counted");
}

#[tokio::test]
async fn a_failed_connection_test_is_job_failed_at_poll_connection_test() {
    let h = Harness::start(Duration::from_millis(100), Duration::from_secs(3600)).await;
    h.api.fail_next_connection_test();
    let run = h.run(&input()).await;
    let (step, err) = run.failure.expect("the run fails");
    assert_eq!(step.name, "poll_connection_test");
    assert!(matches!(err, StepError::JobFailed { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("Could not connect to MySQL server"),
        "{err}"
    );
    for key in ["client_id", "user_id", "connection_id"] {
        assert!(
            run.outputs.contains_key(key),
            "{key} is kept for the operator"
        );
    }
    assert!(h.api.dashboards().is_empty());
}

#[tokio::test]
async fn a_failed_signup_is_job_failed_at_poll_signup() {
    let h = Harness::start(Duration::from_millis(50), Duration::from_secs(3600)).await;
    h.api.fail_next_signup();
    let run = h.run(&input()).await;
    let (step, err) = run.failure.expect("the run fails");
    assert_eq!(step.name, "poll_signup");
    assert!(matches!(err, StepError::JobFailed { .. }), "{err:?}");
    assert!(run.outputs.contains_key("signup_id"));
}

#[tokio::test]
async fn older_entries_in_the_connection_and_job_lists_do_not_end_the_polls_early() {
    let h = Harness::start(Duration::ZERO, Duration::from_secs(3600)).await;
    let input = input();
    let mut out = Map::new();
    for step in [
        "create_signup",
        "poll_signup",
        "invite_user",
        "update_client",
    ] {
        h.finish(&input, &mut out, step).await.unwrap();
    }
    h.api.set_job_duration(Duration::from_millis(400));
    h.finish(&input, &mut out, "create_connection")
        .await
        .unwrap();
    let client = out["client_id"].as_i64().unwrap();
    let older: Vec<_> = h
        .api
        .connections()
        .into_iter()
        .filter(|c| c.client_id == client && c.preexisting)
        .collect();
    assert!(
        older.len() == 1 && older[0].established,
        "the list holds an older established connection"
    );
    assert!(h
        .api
        .jobs()
        .iter()
        .any(|j| j.connection_id == older[0].id && j.status == "Completed"));

    let first = h.step(&input, &out, "poll_connection").await.unwrap();
    assert!(matches!(first, StepOutcome::Pending { .. }), "{first:?}");
    h.finish(&input, &mut out, "poll_connection").await.unwrap();
    let ours = out["connection_id"].as_i64().unwrap();
    assert!(h
        .api
        .connections()
        .iter()
        .any(|c| c.id == ours && c.established));

    h.finish(&input, &mut out, "test_connection").await.unwrap();
    let first = h.step(&input, &out, "poll_connection_test").await.unwrap();
    assert!(matches!(first, StepOutcome::Pending { .. }), "{first:?}");
    h.finish(&input, &mut out, "poll_connection_test")
        .await
        .unwrap();
    assert!(h
        .api
        .jobs()
        .iter()
        .any(|j| j.connection_id == ours && j.status == "Completed"));
}

#[tokio::test]
async fn no_secret_appears_in_an_error_message_or_debug_output() {
    // Wrong credentials: the token call is rejected.
    let h = Harness::start_with(
        Duration::ZERO,
        Duration::from_secs(3600),
        "another-password",
    )
    .await;
    let run = h.run(&input()).await;
    let (step, err) = run.failure.as_ref().expect("the run fails");
    assert_eq!(step.name, "invite_user");
    assert!(
        matches!(
            err,
            StepError::Rejected {
                http_status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
    let mut texts = vec![
        err.to_string(),
        format!("{err:?}"),
        format!("{run:?}"),
        format!("{:?}", h.provider),
        format!("{:?}", h.settings),
    ];

    // A good run, a 401 and a transient token failure.
    let h = Harness::start(Duration::ZERO, Duration::from_secs(3600)).await;
    let run = h.run(&input()).await;
    assert!(run.failure.is_none(), "{:?}", run.failure);
    texts.push(format!("{run:?}"));
    texts.push(format!("{:?}", h.provider));
    let mut out = run.outputs.clone();
    h.api.knobs.inject(FaultRule {
        method: None,
        path_contains: "/autodash".into(),
        fault: Fault::Status { status: 401 },
        times: 2,
    });
    let err = h.step(&input(), &out, "poll_dashboards").await.unwrap_err();
    texts.extend([err.to_string(), format!("{err:?}")]);
    h.api.revoke_tokens();
    h.api.knobs.inject(FaultRule {
        method: None,
        path_contains: "/v1/tokens".into(),
        fault: Fault::Status { status: 500 },
        times: 1,
    });
    let err = h.step(&input(), &out, "poll_dashboards").await.unwrap_err();
    texts.extend([err.to_string(), format!("{err:?}")]);
    h.finish(&input(), &mut out, "poll_dashboards")
        .await
        .unwrap();
    texts.push(format!("{:?}", h.provider));

    let tokens = h.api.issued_tokens();
    assert!(tokens.len() >= 3);
    for text in &texts {
        for secret in [PASSWORD, SECRET]
            .iter()
            .copied()
            .chain(tokens.iter().map(String::as_str))
        {
            assert!(!text.contains(secret), "a secret in: {text}");
        }
    }
}

// ---- tolerant readers (module doc, "open points") ------------------------

/// A listed connection test of `connection` (`null` for none) in the seed's form.
fn job(id: i64, connection: Value, status: &str) -> Value {
    let mut j = json!({
        "id": id, "type": {"id": 27, "name": "Connection Test"},
        "status": {"name": status, "id": 2}, "start": null, "end": null,
    });
    if !connection.is_null() {
        j["workload"] = json!({"connectionId": connection, "syncAndSample": 1});
    }
    j
}

/// What the job list `body` gives for our test: "ours <id>", "wait", or the error.
fn pick(
    body: &Value,
    connection: i64,
    posted: Option<i64>,
    before: Option<&[i64]>,
) -> Result<String, String> {
    let connection = answers::Id::Num(connection);
    let posted = posted.map(answers::Id::Num);
    let before: Option<Vec<answers::Id>> =
        before.map(|b| b.iter().map(|i| answers::Id::Num(*i)).collect());
    let ours = answers::OurTest {
        connection: Some(&connection),
        job: posted.as_ref(),
        before: before.as_deref(),
    };
    let entries = answers::entries(body)?;
    Ok(match answers::pick_job(&entries, &ours)? {
        answers::Pick::Ours(j) => {
            format!("ours {}", j.id.map(|i| i.to_string()).unwrap_or("-".into()))
        }
        answers::Pick::NotYet(_) => "wait".into(),
    })
}

#[test]
fn the_job_list_is_read_in_every_shape_and_only_our_job_is_taken() {
    let ours = || job(9001, json!(14), "Running");
    let older = || job(9000, json!(10), "Completed");
    let bare = |id: i64, status: &str| job(id, Value::Null, status);
    type Case<'a> = (
        &'a str,
        Value,
        Option<i64>,
        Option<&'a [i64]>,
        Result<&'a str, &'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "a list, newest first",
            json!([ours(), older()]),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "a list, oldest first",
            json!([older(), ours()]),
            None,
            None,
            Ok("ours 9001"),
        ),
        ("one object: ours", ours(), None, None, Ok("ours 9001")),
        (
            "one object: a newer test of another connection",
            job(9002, json!(15), "Completed"),
            None,
            None,
            Ok("wait"),
        ),
        (
            "wrapped under jobs",
            json!({"jobs": [ours(), older()], "total": 2}),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "wrapped under data, beside an envelope status",
            json!({"status": "ok", "data": [older(), ours()]}),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "wrapped under items",
            json!({"items": [ours()]}),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "wrapped under results",
            json!({"results": [ours()]}),
            None,
            None,
            Ok("ours 9001"),
        ),
        ("null: no job yet", Value::Null, None, None, Ok("wait")),
        (
            "an empty object: no job yet",
            json!({}),
            None,
            None,
            Ok("wait"),
        ),
        (
            "an empty list: no job yet",
            json!([]),
            None,
            None,
            Ok("wait"),
        ),
        (
            "only another connection's test",
            json!([older()]),
            None,
            None,
            Ok("wait"),
        ),
        (
            "two tests of ours: the newest by id, whatever the order",
            json!([
                job(9001, json!(14), "Failed"),
                job(9003, json!(14), "Completed"),
                job(9002, json!(15), "Running")
            ]),
            None,
            None,
            Ok("ours 9003"),
        ),
        (
            "ids and connection ids as numeric text",
            json!([{"id": "9001", "status": {"name": "Queued"}, "workload": {"connectionId": "14"}}]),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "the posted id settles it",
            json!([
                job(9002, json!(14), "Completed"),
                job(9001, json!(14), "Running")
            ]),
            Some(9001),
            None,
            Ok("ours 9001"),
        ),
        (
            "the posted id not listed yet",
            json!([older()]),
            Some(9005),
            None,
            Ok("wait"),
        ),
        (
            "the posted id, in a list that gives no ids",
            json!([{"status": "Running", "workload": {"connectionId": 14}}]),
            Some(9005),
            None,
            Ok("ours -"),
        ),
        (
            "no workload: the only job not listed before our POST",
            json!([bare(9001, "Running"), bare(9000, "Completed")]),
            None,
            Some(&[9000]),
            Ok("ours 9001"),
        ),
        (
            "no workload, one object: still the job from before our POST",
            bare(9000, "Completed"),
            None,
            Some(&[9000]),
            Ok("wait"),
        ),
        (
            "no workload, one object: new since our POST",
            bare(9001, "Queued"),
            None,
            Some(&[9000]),
            Ok("ours 9001"),
        ),
        (
            "no workload, two new jobs: cannot be told apart",
            json!([
                bare(9002, "Completed"),
                bare(9001, "Failed"),
                bare(9000, "Completed")
            ]),
            None,
            Some(&[9000]),
            Ok("wait"),
        ),
        (
            "no workload and nothing listed before known",
            json!([bare(9001, "Completed")]),
            None,
            None,
            Ok("wait"),
        ),
        (
            "a new job naming another connection is never ours",
            json!([job(9001, json!(15), "Completed"), bare(9000, "Completed")]),
            None,
            Some(&[9000]),
            Ok("wait"),
        ),
        (
            "a test of ours listed before our POST is an earlier one",
            json!([job(9000, json!(14), "Failed")]),
            None,
            Some(&[9000]),
            Ok("wait"),
        ),
        (
            "a job of another type is not ours",
            json!([{"id": 9001, "type": {"id": 5, "name": "Sync"}, "status": {"name": "Completed"}, "workload": {"connectionId": 14}}]),
            None,
            None,
            Ok("wait"),
        ),
        (
            "the type as a bare id",
            json!([{"id": 9001, "type": 27, "status": "Completed", "workload": {"connectionId": 14}}]),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "the type as a bare name",
            json!([{"id": 9001, "type": "connection test", "status": "Completed", "workload": {"connectionId": 14}}]),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "the workload JSON-encoded in a string",
            json!([{"id": 9001, "status": "Completed", "workload": "{\"connectionId\":14,\"syncAndSample\":1}"}]),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "the workload's connection as connection_id",
            json!([{"id": 9001, "status": "Completed", "workload": {"connection_id": 14}}]),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "unknown fields everywhere",
            json!([{"id": 9001, "x": {"y": [1]}, "status": {"name": "Completed", "color": "green"},
                    "type": {"id": 27, "extra": true}, "workload": {"connectionId": 14, "more": null}}]),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "an unreadable entry is skipped when ours is found",
            json!([ours(), {"id": 5, "message": "odd"}]),
            None,
            None,
            Ok("ours 9001"),
        ),
        (
            "an unreadable entry and nothing of ours",
            json!([{"id": 5}, older()]),
            None,
            None,
            Err("a list of 2 whose entry 1 is an object without status"),
        ),
        (
            "one object without status",
            json!({"id": 1, "message": "x"}),
            None,
            None,
            Err("an object without status"),
        ),
        (
            "a status of the wrong type",
            json!({"id": 1, "status": 3}),
            None,
            None,
            Err("an object whose status is a number"),
        ),
        (
            "a status without a name",
            json!({"id": 1, "status": {"id": 3}}),
            None,
            None,
            Err("an object whose status has no name"),
        ),
        (
            "a null status reads as none",
            json!({"id": 1, "status": null}),
            None,
            None,
            Err("an object without status"),
        ),
        (
            "an id of the wrong type",
            json!({"id": true, "status": "Completed"}),
            None,
            None,
            Err("an object with an id given as a boolean"),
        ),
        ("a string", json!("hunter2"), None, None, Err("a string")),
        ("a number", json!(7), None, None, Err("a number")),
    ];
    for (why, body, posted, before, expected) in cases {
        let got = pick(&body, 14, posted, before);
        assert_eq!(
            got,
            expected.map(String::from).map_err(String::from),
            "{why}"
        );
        if let Err(e) = &got {
            assert!(
                !e.contains("hunter2") && !e.contains("odd"),
                "{why}: content in {e}"
            );
        }
    }
}

#[test]
fn status_words_are_read_in_any_letter_case_and_either_form() {
    use answers::Phase::*;
    for (v, expected) in [
        (json!("Completed"), Ok(Completed)),
        (json!("completed"), Ok(Completed)),
        (json!("COMPLETED"), Ok(Completed)),
        (json!("complete"), Ok(Completed)),
        (json!({"name": "Completed", "id": 3}), Ok(Completed)),
        (json!({"name": "COMPLETED"}), Ok(Completed)),
        (json!("Failed"), Ok(Failed)),
        (json!("failure"), Ok(Failed)),
        (json!("ERROR"), Ok(Failed)),
        (json!("Cancelled"), Ok(Failed)),
        (json!({"name": "failed", "id": 4}), Ok(Failed)),
        (json!("Queued"), Ok(Waiting)),
        (json!(" running "), Ok(Waiting)),
        (json!("pending"), Ok(Waiting)),
        (json!("something new"), Ok(Waiting)),
        (json!(3), Err("whose status is a number")),
        (json!({"id": 3}), Err("whose status has no name")),
        (json!({"name": 3}), Err("whose status.name is a number")),
        (json!(""), Err("whose status is an empty string")),
        (Value::Null, Err("without status")),
        (json!(["Completed"]), Err("whose status is a list of 1")),
    ] {
        let got = answers::Status::read(&v).map(|s| s.phase());
        assert_eq!(got, expected.map_err(String::from), "{v}");
    }
}

#[test]
fn ids_are_read_as_numbers_or_numeric_text_and_written_back_as_numbers() {
    use answers::Id;
    for (v, expected, written) in [
        (json!(14), Ok(Some(Id::Num(14))), json!(14)),
        (json!("14"), Ok(Some(Id::Num(14))), json!(14)),
        (json!(" 14 "), Ok(Some(Id::Num(14))), json!(14)),
        (json!(14.0), Ok(Some(Id::Num(14))), json!(14)),
        (json!("014"), Ok(Some(Id::Text("014".into()))), json!("014")),
        (
            json!("1827c806-aa"),
            Ok(Some(Id::Text("1827c806-aa".into()))),
            json!("1827c806-aa"),
        ),
        (
            json!(u64::MAX),
            Ok(Some(Id::Text(u64::MAX.to_string()))),
            json!(u64::MAX.to_string()),
        ),
        (Value::Null, Ok(None), Value::Null),
        (json!(""), Ok(None), Value::Null),
        (
            json!(true),
            Err("with an id given as a boolean"),
            Value::Null,
        ),
        (
            json!(14.5),
            Err("with an id given as a fractional number"),
            Value::Null,
        ),
        (
            json!({"id": 1}),
            Err("with an id given as an object"),
            Value::Null,
        ),
    ] {
        let got = Id::read(&v);
        assert_eq!(got, expected.map_err(String::from), "{v}");
        if let Ok(Some(id)) = got {
            assert_eq!(id.to_value(), written, "{v} written back");
        }
    }
    assert_eq!(
        Id::read(&json!("14")).unwrap(),
        Id::read(&json!(14)).unwrap(),
        "one id"
    );
}

#[test]
fn established_is_read_as_a_timestamp_a_boolean_a_number_or_text() {
    for (v, expected) in [
        (json!("2018-04-10 10:03:20"), Ok(true)),
        (json!(true), Ok(true)),
        (json!(1523354600), Ok(true)),
        (json!("yes"), Ok(true)),
        (Value::Null, Ok(false)),
        (json!(false), Ok(false)),
        (json!(0), Ok(false)),
        (json!(""), Ok(false)),
        (json!("0"), Ok(false)),
        (json!("FALSE"), Ok(false)),
        (json!("0000-00-00 00:00:00"), Ok(false)),
        (json!({"at": 1}), Err("whose established is an object")),
    ] {
        let got = answers::Established::read(&v).map(|e| e.0);
        assert_eq!(got, expected.map_err(String::from), "{v}");
    }
}

#[test]
fn connection_lists_are_read_bare_wrapped_or_as_one_object() {
    let ours = json!({"id": "14", "name": "store", "type": "mysql",
                      "properties": {"host": "DB.coco.example", "established": "2018-04-10 10:03:20"}});
    let older =
        json!({"id": 10, "name": "legacy", "properties": {"host": "legacy", "established": true}});
    let sent = input()["connection"].as_object().unwrap().clone();
    for (why, body) in [
        ("a bare list (seed)", json!([older.clone(), ours.clone()])),
        (
            "under connections",
            json!({"connections": [older.clone(), ours.clone()], "total": 2}),
        ),
        (
            "under input-connections",
            json!({"input-connections": [ours.clone()]}),
        ),
        ("under data", json!({"data": [ours.clone(), older.clone()]})),
        ("one object", ours.clone()),
    ] {
        let entries = answers::entries(&body).unwrap_or_else(|e| panic!("{why}: {e}"));
        let found: Vec<answers::Connection> = entries
            .iter()
            .map(|e| answers::Connection::read(e).unwrap())
            .filter(|c| c.id == Some(answers::Id::Num(14)))
            .collect();
        assert_eq!(found.len(), 1, "{why}");
        assert!(found[0].established(), "{why}");
        assert!(
            found[0].is_ours(&sent),
            "{why}: same name, host (case aside) and type"
        );
    }
    let mut other = sent.clone();
    other["properties"]["host"] = json!("elsewhere.example");
    let entry = answers::Connection::read(&ours).unwrap();
    assert!(!entry.is_ours(&other), "another host is not ours");
    other = sent.clone();
    other["name"] = json!("shop");
    assert!(!entry.is_ours(&other), "another name is not ours");
    let not_yet = answers::Connection::read(&json!({"id": 14, "properties": {}})).unwrap();
    assert!(!not_yet.established(), "established absent");
    assert_eq!(
        answers::entries(&json!("x")).unwrap_err(),
        "a string",
        "neither a list nor an object"
    );
}

#[test]
fn signup_autodash_created_and_token_answers_are_read_tolerantly() {
    use answers::{Id, Phase};
    for (body, expected) in [
        (
            json!({"pubkey": "ssh-rsa x", "status": "completed", "client_id": 123}),
            Ok((Phase::Completed, Some(Id::Num(123)))),
        ),
        (
            json!({"status": "COMPLETED", "client_id": "123"}),
            Ok((Phase::Completed, Some(Id::Num(123)))),
        ),
        (
            json!({"status": "Complete", "clientId": 123}),
            Ok((Phase::Completed, Some(Id::Num(123)))),
        ),
        (
            json!({"data": {"status": {"name": "completed"}, "client_id": 123}}),
            Ok((Phase::Completed, Some(Id::Num(123)))),
        ),
        (json!({"status": "pending"}), Ok((Phase::Waiting, None))),
        (
            json!({"status": "running", "client_id": null}),
            Ok((Phase::Waiting, None)),
        ),
        (
            json!({"status": "failed", "error": "no"}),
            Ok((Phase::Failed, None)),
        ),
        (json!({"client_id": 1}), Err("an object without status")),
        (json!([{"status": "completed"}]), Err("a list of 1")),
        (
            json!({"status": "completed", "client_id": false}),
            Err("an object with an id given as a boolean"),
        ),
    ] {
        let got = answers::Signup::read(&body).map(|s| (s.status.phase(), s.client_id));
        assert_eq!(got, expected.map_err(String::from), "{body}");
    }
    for (body, expected) in [
        (
            json!({"status": "completed", "job_id": "d474"}),
            Ok(Phase::Completed),
        ),
        (json!({"status": "Completed"}), Ok(Phase::Completed)),
        (json!({"status": {"name": "RUNNING"}}), Ok(Phase::Waiting)),
        (json!({"job_id": "d474"}), Err("an object without status")),
    ] {
        let got = answers::Autodash::read(&body).map(|a| a.status.phase());
        assert_eq!(got, expected.map_err(String::from), "{body}");
    }
    for (body, expected) in [
        (
            json!({"inviter_user_id": 39203, "client_id": 2, "id": 3892}),
            Ok(Id::Num(3892)),
        ),
        (json!({"id": "3892"}), Ok(Id::Num(3892))),
        (json!({"data": {"id": 14}}), Ok(Id::Num(14))),
        (
            json!({"id": "d4740d5e-4c4e"}),
            Ok(Id::Text("d4740d5e-4c4e".into())),
        ),
        (json!({"url": "/v3/signups/x"}), Err("an object without id")),
        (json!({"id": null}), Err("an object whose id is null")),
        (
            json!({"id": ""}),
            Err("an object whose id is an empty string"),
        ),
        (json!({}), Err("an object without id")),
        (json!([]), Err("an empty list")),
    ] {
        assert_eq!(
            answers::Created::required(&body),
            expected.map_err(String::from),
            "{body}"
        );
    }
    for (v, expected) in [
        (json!(14400), Ok(Some(14400.0))),
        (json!("14400"), Ok(Some(14400.0))),
        (Value::Null, Ok(None)),
        (json!(""), Ok(None)),
        (
            json!("soon"),
            Err("whose expires_in is text that is not a number"),
        ),
        (json!([1]), Err("whose expires_in is a list of 1")),
    ] {
        assert_eq!(answers::seconds(&v), expected.map_err(String::from), "{v}");
    }
}

#[tokio::test]
async fn an_unreadable_job_list_names_what_was_expected_and_what_came_never_its_content() {
    let h = Harness::start(Duration::ZERO, Duration::from_secs(3600)).await;
    let input = input();
    let mut out = Map::new();
    for step in [
        "create_signup",
        "poll_signup",
        "invite_user",
        "update_client",
        "create_connection",
        "poll_connection",
        "test_connection",
    ] {
        h.finish(&input, &mut out, step).await.unwrap();
    }
    let body = json!({"session": "hunter2-not-for-logs", "jobs_total": 1});
    h.api.knobs.inject(FaultRule {
        method: Some("GET".into()),
        path_contains: "/job/type/".into(),
        fault: Fault::Json200 { body: body.clone() },
        times: 1,
    });
    let err = h
        .step(&input, &out, "poll_connection_test")
        .await
        .unwrap_err();
    let size = body.to_string().len();
    assert_eq!(
        err.to_string(),
        format!(
            "poll_connection_test: unexpected response body ({size} bytes): expected a job object \
             or a list of jobs with status.name (bare, or under jobs/data/items/results); \
             got an object without status"
        )
    );
    assert!(matches!(
        err,
        StepError::Transient {
            reason: RetryReason::BadResponse,
            ..
        }
    ));
    h.api.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/v3/invites".into(),
        fault: Fault::Json200 {
            body: json!({"email": "hunter2@x.y", "client_id": 2}),
        },
        times: 1,
    });
    let err = h.step(&input, &out, "invite_user").await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.ends_with("expected an object with the new user's id; got an object without id"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

/// The readings of the sandbox, one knob turned each, and all at once.
fn every_reading() -> Vec<(&'static str, Readings)> {
    let r = Readings::default;
    vec![
        ("the seed's readings", r()),
        (
            "the job list answers one object",
            Readings {
                job_list: JobList::Object,
                ..r()
            },
        ),
        (
            "the job list is oldest first",
            Readings {
                job_list: JobList::OldestFirst,
                ..r()
            },
        ),
        (
            "the job list is wrapped under jobs",
            Readings {
                job_list: JobList::Wrapped,
                ..r()
            },
        ),
        (
            "the job list is wrapped under data",
            Readings {
                job_list: JobList::WrappedData,
                ..r()
            },
        ),
        (
            "a job's status is a bare word",
            Readings {
                job_status: JobStatusForm::String,
                ..r()
            },
        ),
        (
            "statuses are title case",
            Readings {
                status_case: StatusCase::Title,
                ..r()
            },
        ),
        (
            "statuses are lower case",
            Readings {
                status_case: StatusCase::Lower,
                ..r()
            },
        ),
        (
            "statuses are upper case",
            Readings {
                status_case: StatusCase::Upper,
                ..r()
            },
        ),
        (
            "ids are numeric strings",
            Readings {
                ids: Ids::String,
                ..r()
            },
        ),
        (
            "jobs name no connection",
            Readings {
                job_workload: JobWorkload::Absent,
                ..r()
            },
        ),
        (
            "the job POST answers the job's id",
            Readings {
                job_id_on_create: JobIdOnCreate::Id,
                ..r()
            },
        ),
        (
            "the connection list is wrapped",
            Readings {
                connection_list: ConnectionList::Wrapped,
                ..r()
            },
        ),
        (
            "established is a boolean",
            Readings {
                established: EstablishedForm::Bool,
                ..r()
            },
        ),
        (
            "established is a Unix time",
            Readings {
                established: EstablishedForm::Epoch,
                ..r()
            },
        ),
        (
            "unknown values are left out",
            Readings {
                nulls: Nulls::Absent,
                ..r()
            },
        ),
        (
            "answers carry unknown fields",
            Readings {
                extra_fields: true,
                ..r()
            },
        ),
        (
            "every open point takes its least expected reading",
            Readings {
                job_list: JobList::Object,
                job_status: JobStatusForm::String,
                status_case: StatusCase::Upper,
                ids: Ids::String,
                job_workload: JobWorkload::Absent,
                job_id_on_create: JobIdOnCreate::Null,
                connection_list: ConnectionList::Wrapped,
                established: EstablishedForm::Bool,
                nulls: Nulls::Absent,
                extra_fields: true,
            },
        ),
        (
            "jobs name no connection, the list is one object and the POST gives the id",
            Readings {
                job_list: JobList::Object,
                job_workload: JobWorkload::Absent,
                job_id_on_create: JobIdOnCreate::Id,
                ..r()
            },
        ),
    ]
}

#[tokio::test]
async fn a_full_onboard_completes_under_every_reading_of_the_open_points() {
    let runs = every_reading()
        .into_iter()
        .map(|(why, readings)| async move {
            let h = Harness::start_reading(Duration::from_millis(150), readings).await;
            let run = h.run(&input()).await;
            assert!(run.failure.is_none(), "{why}: {:?}", run.failure);
            assert_eq!(names(&run), STEPS, "{why}");
            let out = &run.outputs;
            let client = h.api.clients()[0].id;
            assert_eq!(
                out["client_id"],
                json!(client),
                "{why}: ids are kept as numbers"
            );
            assert_eq!(out["user_id"], json!(h.api.invites()[0].id), "{why}");
            let ours: Vec<_> = h
                .api
                .connections()
                .into_iter()
                .filter(|c| !c.preexisting)
                .collect();
            assert_eq!(ours.len(), 1, "{why}");
            assert_eq!(out["connection_id"], json!(ours[0].id), "{why}");
            let tests: Vec<_> = h
                .api
                .jobs()
                .into_iter()
                .filter(|j| !j.form.is_empty())
                .collect();
            assert_eq!(tests.len(), 1, "{why}: one connection test");
            assert_eq!(tests[0].status, "Completed", "{why}");
            let d = &h.api.dashboards()[0];
            assert_eq!(
                (d.connection_id, d.user_id),
                (ours[0].id, h.api.invites()[0].id),
                "{why}"
            );
            assert_eq!(d.status, "completed", "{why}");
        });
    futures::future::join_all(runs).await;
}

#[tokio::test]
async fn a_newer_test_of_another_connection_is_not_taken_for_ours_when_the_list_shows_one_job() {
    let h = Harness::start_reading(
        Duration::ZERO,
        Readings {
            job_list: JobList::Object,
            ..Readings::default()
        },
    )
    .await;
    let input = input();
    let mut out = Map::new();
    for step in [
        "create_signup",
        "poll_signup",
        "invite_user",
        "update_client",
        "create_connection",
        "poll_connection",
    ] {
        h.finish(&input, &mut out, step).await.unwrap();
    }
    // Our test fails; then someone tests the older connection, which succeeds
    // and is now the latest (the only) job the list shows.
    h.api.fail_next_connection_test();
    h.finish(&input, &mut out, "test_connection").await.unwrap();
    let client = out["client_id"].as_i64().unwrap();
    let older = h
        .api
        .connections()
        .into_iter()
        .find(|c| c.client_id == client && c.preexisting)
        .unwrap();
    let mut theirs = out.clone();
    theirs.insert("connection_id".into(), json!(older.id));
    h.finish(&input, &mut theirs, "test_connection")
        .await
        .unwrap();
    let outcome = h.step(&input, &out, "poll_connection_test").await.unwrap();
    assert!(
        matches!(&outcome, StepOutcome::Pending { status, .. } if status == "no job names our connection"),
        "another connection's completed test is not ours: {outcome:?}"
    );
}

const POST_CONNECTION: &str = "POST /v1/v2/clients/{client_id}/connections/input-connections";
const GET_CONNECTIONS: &str = "GET /v1/v2/clients/{client_id}/connections/input-connections";
const POST_JOB: &str = "POST /v2/client/{client_id}/job";

fn done_of(outcome: StepOutcome) -> StepDone {
    match outcome {
        StepOutcome::Done(done) => done,
        other => panic!("expected done, got {other:?}"),
    }
}

#[tokio::test]
async fn a_repeated_create_connection_adopts_the_connection_with_our_name_and_host() {
    let h = Harness::start_reading(
        Duration::ZERO,
        Readings {
            ids: Ids::String,
            connection_list: ConnectionList::Wrapped,
            ..Readings::default()
        },
    )
    .await;
    let input = input();
    let mut out = Map::new();
    for step in [
        "create_signup",
        "poll_signup",
        "invite_user",
        "update_client",
        "create_connection",
    ] {
        h.finish(&input, &mut out, step).await.unwrap();
    }
    let first = out["connection_id"].clone();
    assert_eq!(h.api.knobs.calls(POST_CONNECTION), 1);
    assert_eq!(
        h.api.knobs.calls(GET_CONNECTIONS),
        0,
        "no look-up on a first attempt"
    );

    // The same step again, as after an attempt whose answer was lost.
    let done = done_of(
        h.step_with(&input, &out, "create_connection", true)
            .await
            .unwrap(),
    );
    assert!(done.repeat_detected, "counted as a detected repeat");
    assert_eq!(
        done.outputs["connection_id"], first,
        "the connection made before"
    );
    assert_eq!(h.api.knobs.calls(POST_CONNECTION), 1, "no second POST");
    assert_eq!(h.api.knobs.calls(GET_CONNECTIONS), 1, "looked up once");

    // A connection of another host is not ours: a repeat with it creates one.
    let mut elsewhere = input.clone();
    elsewhere["connection"]["properties"]["host"] = json!("other-db.coco.example");
    let done = done_of(
        h.step_with(&elsewhere, &out, "create_connection", true)
            .await
            .unwrap(),
    );
    assert!(!done.repeat_detected);
    assert_ne!(done.outputs["connection_id"], first);
    assert_eq!(h.api.knobs.calls(POST_CONNECTION), 2);
    assert_eq!(
        h.api
            .connections()
            .iter()
            .filter(|c| !c.preexisting)
            .count(),
        2
    );
}

#[tokio::test]
async fn a_repeated_test_connection_adopts_our_test_unless_it_failed() {
    let h = Harness::start(Duration::ZERO, Duration::from_secs(3600)).await;
    let input = input();
    let mut out = Map::new();
    for step in [
        "create_signup",
        "poll_signup",
        "invite_user",
        "update_client",
        "create_connection",
        "poll_connection",
        "test_connection",
    ] {
        h.finish(&input, &mut out, step).await.unwrap();
    }
    assert_eq!(h.api.knobs.calls(POST_JOB), 1);
    let done = done_of(
        h.step_with(&input, &out, "test_connection", true)
            .await
            .unwrap(),
    );
    assert!(done.repeat_detected);
    let ours = out["connection_id"].as_i64().unwrap();
    let test = h
        .api
        .jobs()
        .into_iter()
        .find(|j| j.connection_id == ours)
        .unwrap();
    assert_eq!(
        done.outputs[TEST_JOB_ID],
        json!(test.id),
        "the adopted job is kept by id"
    );
    assert_eq!(h.api.knobs.calls(POST_JOB), 1, "no second test");
    out.extend(done.outputs);
    h.finish(&input, &mut out, "poll_connection_test")
        .await
        .unwrap();

    // A failed test of ours is not adopted: the repeat starts a new one.
    h.api.fail_next_connection_test();
    h.finish(&input, &mut out, "test_connection").await.unwrap();
    assert_eq!(h.api.knobs.calls(POST_JOB), 2);
    let done = done_of(
        h.step_with(&input, &out, "test_connection", true)
            .await
            .unwrap(),
    );
    assert!(!done.repeat_detected);
    assert_eq!(h.api.knobs.calls(POST_JOB), 3);
}
