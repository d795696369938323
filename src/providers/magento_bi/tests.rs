//! The provider against the Magento BI sandbox served on real ports.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::*;
use crate::config::{Secret, Settings};
use crate::engine::local::{run_plan, LocalRun};
use crate::sandbox::faults::{Fault, FaultRule};
use crate::sandbox::magento_bi::{Api, Options};

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
    s.calls.max_attempts = 3;
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
        let mut settings = test_settings();
        let api = Api::new(Options {
            username: settings.username.clone(),
            password: sandbox_password.into(),
            client_id: settings.client_id,
            client_secret: SECRET.into(),
            token_ttl,
            job_duration: job,
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
            possible_repeat: false,
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
            "dashboard_job_id",
            "signup_id",
            "user_id"
        ]
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
