//! The provider against the ComputeStacks sandbox: plan, steps, errors,
//! readings and the adoption of earlier creates.

use serde_json::{json, Map};

use crate::config::{PollSettings, Settings};
use crate::domain::RetryReason;
use crate::engine::local::{run_plan, LocalRun};
use crate::engine::step::StepDone;
use crate::sandbox::computestacks::{Api, Options, Readings};
use crate::sandbox::faults::{Fault, FaultRule};

use super::calls::scrub;
use super::*;

struct Harness {
    api: Api,
    provider: ComputeStacks,
}

/// A sandbox on a free port (orders take 300 ms) and a provider pointed at it.
async fn harness() -> Harness {
    let mut settings = Settings::load(None).expect("default settings load");
    let cs = &mut settings.providers.computestacks;
    let api = Api::new(Options {
        admin_username: cs.admin_username.clone(),
        admin_password: cs.admin_password.expose().to_string(),
        order_duration: Duration::from_millis(300),
        readings: Readings::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = api.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    cs.base_url = format!("http://{addr}");
    cs.calls.timeout_ms = 5_000;
    cs.calls.max_attempts = 3.try_into().unwrap();
    cs.polls.insert(
        POLL_ORDER.into(),
        PollSettings {
            interval_ms: 25,
            growth: 1.0,
            max_interval_ms: 25,
            deadline_ms: 5_000,
        },
    );
    Harness {
        provider: ComputeStacks::new(cs, Metrics::new()),
        api,
    }
}

const USER_PASSWORD: &str = "user-pass-Zq7";

fn onboarding(email: &str, resources: Value) -> Value {
    json!({
        "user": {"fname": "Ada", "lname": "Lovelace", "email": email,
                 "password": USER_PASSWORD, "password_confirmation": USER_PASSWORD,
                 "skip_email_confirm": true, "external_id": "crm-42",
                 "company_name": "Analytical Engines"},
        "order": {"project_name": "site", "location_id": 1,
                  "containers": [{"image_id": 4, "resources": resources,
                                  "params": [], "domains": []}]}
    })
}

async fn run(h: &Harness, input: &Value) -> LocalRun {
    run_plan(
        &h.provider,
        Operation::Onboard,
        input,
        Duration::from_millis(25),
        200,
    )
    .await
    .expect("plan accepted and finished")
}

fn names(run: &LocalRun) -> Vec<&'static str> {
    run.steps_done.iter().map(|s| s.name).collect()
}

/// Every output and error text of a run, for leak checks.
fn printed(run: &LocalRun) -> String {
    let failure = run
        .failure
        .as_ref()
        .map(|(_, e)| format!("{e} {e:?}"))
        .unwrap_or_default();
    format!("{:?} {failure}", run.outputs)
}

fn assert_no_secret_printed(run: &LocalRun) {
    let printed = printed(run);
    assert!(
        !printed.contains(USER_PASSWORD),
        "user password in {printed}"
    );
    if let Some(p) = run.secrets.get(API_PASSWORD).and_then(Value::as_str) {
        assert!(!printed.contains(p), "api password in {printed}");
    }
}

#[tokio::test]
async fn onboard_with_a_product_name_creates_what_the_outputs_say() {
    let h = harness().await;
    let run = run(
        &h,
        &onboarding("ada@example.com", json!({"product": "medium"})),
    )
    .await;
    assert!(run.failure.is_none(), "{:?}", run.failure);
    assert_eq!(
        names(&run),
        vec![CREATE_USER, CREATE_API_CREDENTIAL, CREATE_ORDER, POLL_ORDER]
    );
    assert!(run.polls > 0, "the order took a while");

    let users = h.api.users();
    let credentials = h.api.api_credentials();
    let orders = h.api.orders();
    assert_eq!((users.len(), credentials.len(), orders.len()), (1, 1, 1));
    let (user, credential, order) = (&users[0], &credentials[0], &orders[0]);
    let expected: Map<String, Value> = json!({
        "user_id": user.id,
        "api_credential_id": credential.id,
        "api_username": credential.username,
        "order_id": order.id,
        "project_id": order.project_id.expect("completed with a project"),
        "load_balancer_ip": order.load_balancer_ip,
    })
    .as_object()
    .unwrap()
    .clone();
    assert_eq!(run.outputs, expected);

    assert_eq!(credential.user_id, user.id);
    assert_eq!(credential.name, input::DEFAULT_CREDENTIAL_NAME);
    assert_eq!(order.user_id, user.id, "ordered as the new user");
    assert_eq!(order.product_ids, vec![2], "medium resolved to its id");
    assert_eq!(order.project_name, "site");
    assert_eq!(user.external_id.as_deref(), Some("crm-42"));
    assert_eq!(
        user.other["company_name"], "Analytical Engines",
        "unknown fields pass through"
    );
    assert!(run.secrets[API_PASSWORD].is_string());
    assert_no_secret_printed(&run);
    assert_eq!(h.api.knobs.calls("GET /api/products"), 1);
    assert_eq!(h.api.knobs.calls("POST /api/orders"), 1);
}

#[tokio::test]
async fn onboard_with_a_product_id_skips_the_catalogue() {
    let h = harness().await;
    let mut input = onboarding("ada@example.com", json!({"product_id": 3}));
    input["api_credential"] = json!({"name": "billing"});
    let run = run(&h, &input).await;
    assert!(run.failure.is_none(), "{:?}", run.failure);
    let order = &h.api.orders()[0];
    assert_eq!(order.product_ids, vec![3]);
    assert_eq!(run.outputs["order_id"], json!(order.id));
    assert_eq!(run.outputs["project_id"], json!(order.project_id.unwrap()));
    assert_eq!(h.api.api_credentials()[0].name, "billing");
    assert_eq!(h.api.knobs.calls("GET /api/products"), 0);
}

#[tokio::test]
async fn an_unknown_product_is_rejected_naming_it_before_any_order() {
    let h = harness().await;
    let run = run(
        &h,
        &onboarding("ada@example.com", json!({"product": "jumbo"})),
    )
    .await;
    let (step, error) = run.failure.as_ref().expect("fails");
    assert_eq!(step.name, CREATE_ORDER);
    match error {
        StepError::Rejected {
            http_status,
            message,
        } => {
            assert_eq!(*http_status, None);
            assert_eq!(
                message,
                "provider rejected create_order: unknown product \"jumbo\""
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(h.api.knobs.calls("POST /api/orders"), 0);
    assert!(
        run.outputs.contains_key("user_id"),
        "what was created is kept"
    );
    assert_no_secret_printed(&run);
}

#[tokio::test]
async fn an_existing_email_is_rejected_with_422_at_create_user() {
    let h = harness().await;
    let first = run(&h, &onboarding("ada@example.com", json!({"product_id": 1}))).await;
    assert!(first.failure.is_none());
    let run = run(&h, &onboarding("ada@example.com", json!({"product_id": 1}))).await;
    let (step, error) = run.failure.as_ref().expect("fails");
    assert_eq!(step.name, CREATE_USER);
    assert!(
        matches!(
            error,
            StepError::Rejected {
                http_status: Some(422),
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "provider rejected create_user: Email has already been taken"
    );
    assert!(run.outputs.is_empty());
    assert_eq!(h.api.users().len(), 1);
    assert_no_secret_printed(&run);
}

#[tokio::test]
async fn a_failed_order_is_job_failed() {
    let h = harness().await;
    h.api.fail_orders_for_project("site");
    let run = run(
        &h,
        &onboarding("ada@example.com", json!({"product": "small"})),
    )
    .await;
    let (step, error) = run.failure.as_ref().expect("fails");
    assert_eq!(step.name, POLL_ORDER);
    let order_id = run.outputs["order_id"].as_str().unwrap();
    assert!(matches!(error, StepError::JobFailed { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("order {order_id} failed")),
        "{error}"
    );
    assert_eq!(h.api.orders()[0].status, "failed");
    assert!(!run.outputs.contains_key("project_id"));
    assert_no_secret_printed(&run);
}

#[tokio::test]
async fn transient_faults_are_retried_without_a_second_order() {
    let h = harness().await;
    for path in ["/api/products", "/api/orders/"] {
        h.api.knobs.inject(FaultRule {
            method: Some("GET".into()),
            path_contains: path.into(),
            fault: Fault::Status { status: 503 },
            times: 1,
        });
    }
    let run = run(
        &h,
        &onboarding("ada@example.com", json!({"product": "large"})),
    )
    .await;
    assert!(run.failure.is_none(), "{:?}", run.failure);
    assert_eq!(h.api.knobs.calls("GET /api/products"), 2);
    assert_eq!(h.api.knobs.calls("POST /api/orders"), 1);
    assert_eq!(h.api.orders()[0].product_ids, vec![3]);
}

#[tokio::test]
async fn the_api_password_stays_out_of_outputs_and_errors_even_when_echoed() {
    let h = harness().await;
    let run = run(&h, &onboarding("ada@example.com", json!({"product_id": 1}))).await;
    let password = run.secrets[API_PASSWORD].as_str().unwrap().to_string();
    assert!(password.len() >= 20);
    assert!(!format!("{:?}", run.outputs).contains(&password));
    assert!(!format!("{:?}", run.outputs).contains(USER_PASSWORD));

    // A provider quoting a submitted value back: the message masks it.
    let echoed = StepError::rejected(
        Some(422),
        format!("provider rejected create_order: {password} is not allowed"),
    );
    let message = scrub(echoed, &[&password]).to_string();
    assert_eq!(
        message,
        "provider rejected create_order: [redacted] is not allowed"
    );
}

#[tokio::test]
async fn a_wrong_api_password_is_rejected_401_without_quoting_it() {
    let h = harness().await;
    let input = onboarding("ada@example.com", json!({"product_id": 1}));
    let outputs: Map<String, Value> = json!({"user_id": 1, "api_username": "nobody"})
        .as_object()
        .unwrap()
        .clone();
    let secrets: Map<String, Value> = json!({ API_PASSWORD: "not-the-password-1234" })
        .as_object()
        .unwrap()
        .clone();
    let step = StepKey::new(CREATE_ORDER);
    let ctx = StepContext {
        request_id: "r-1",
        operation: Operation::Onboard,
        input: &input,
        outputs: &outputs,
        secrets: &secrets,
        step: &step,
        attempt: 0,
        polls: 0,
        poll_state: None,
        possible_repeat: false,
    };
    let error = h.provider.run(&ctx).await.unwrap_err();
    assert_eq!(error.http_status(), Some(401));
    assert!(!format!("{error} {error:?}").contains("not-the-password-1234"));
}

#[test]
fn login_url_is_not_an_operation_of_computestacks() {
    let provider = ComputeStacks::new(
        &Settings::load(None).unwrap().providers.computestacks,
        Metrics::new(),
    );
    let input = onboarding("ada@example.com", json!({"product_id": 1}));
    assert_eq!(
        provider.plan(Operation::LoginUrl, &input),
        Err("operation login_url is not offered by computestacks".to_string())
    );
    assert_eq!(provider.plan(Operation::Onboard, &input).unwrap().len(), 4);
    assert_eq!(
        provider.plan(Operation::Onboard, &json!({})),
        Err("input.user is required".to_string())
    );
}

#[test]
fn only_poll_order_has_a_poll_policy_from_settings() {
    let settings = Settings::load(None).unwrap().providers.computestacks;
    let provider = ComputeStacks::new(&settings, Metrics::new());
    let policy = provider.poll_policy(POLL_ORDER).expect("poll_order polls");
    assert_eq!(
        policy,
        crate::providers::poll_policy(&settings.polls[POLL_ORDER])
    );
    for step in [CREATE_USER, CREATE_API_CREDENTIAL, CREATE_ORDER] {
        assert_eq!(provider.poll_policy(step), None, "{step}");
    }
}

#[tokio::test]
async fn a_bad_base_url_fails_the_step_without_a_call() {
    let mut settings = Settings::load(None).unwrap().providers.computestacks;
    settings.base_url = "not a url".into();
    let provider = ComputeStacks::new(&settings, Metrics::new());
    let input = onboarding("ada@example.com", json!({"product_id": 1}));
    let run = run_plan(&provider, Operation::Onboard, &input, Duration::ZERO, 1)
        .await
        .unwrap();
    let (_, error) = run.failure.expect("fails");
    assert!(error.to_string().contains("base_url"), "{error}");
}

use crate::sandbox::computestacks::{
    each_reading, Envelope, ErrorForm, Ids, List, LoadBalancerIp, OrderIds, Shown,
};

/// The outputs a completed onboarding must have: what the sandbox holds.
fn expected_outputs(h: &Harness, ip_shown: bool) -> Map<String, Value> {
    let users = h.api.users();
    let credentials = h.api.api_credentials();
    let orders = h.api.orders();
    let (user, credential, order) = (
        users.last().unwrap(),
        credentials.last().unwrap(),
        orders.last().unwrap(),
    );
    let order_id = match order.id.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(order.id),
    };
    json!({
        "user_id": user.id,
        "api_credential_id": credential.id,
        "api_username": credential.username,
        "order_id": order_id,
        "project_id": order.project_id.expect("completed with a project"),
        "load_balancer_ip": if ip_shown { json!(order.load_balancer_ip) } else { Value::Null },
    })
    .as_object()
    .unwrap()
    .clone()
}

#[tokio::test]
async fn every_reading_of_an_open_point_onboards_with_the_outputs_the_sandbox_holds() {
    let h = harness().await;
    h.api.set_order_duration(Duration::from_millis(60));
    for (i, (why, readings)) in each_reading().into_iter().enumerate() {
        let ip_shown = readings.load_balancer_ip != LoadBalancerIp::Nowhere;
        h.api.set_readings(readings);
        let run = run(
            &h,
            &onboarding(
                &format!("reading-{i}@example.com"),
                json!({"product": "medium"}),
            ),
        )
        .await;
        assert!(run.failure.is_none(), "{why}: {:?}", run.failure);
        assert_eq!(run.outputs, expected_outputs(&h, ip_shown), "{why}");
        let order = h.api.orders().pop().unwrap();
        assert_eq!(
            order.product_ids,
            vec![2],
            "{why}: medium resolved to its id"
        );
        assert_no_secret_printed(&run);
    }
    let n = each_reading().len() as u64;
    assert_eq!(h.api.knobs.calls("POST /api/admin/users"), n);
    assert_eq!(h.api.knobs.calls("POST /api/orders"), n);
}

#[tokio::test]
async fn a_taken_email_is_rejected_under_every_error_form_quoting_json_reasons_only() {
    let h = harness().await;
    let first = run(
        &h,
        &onboarding("taken@example.com", json!({"product_id": 1})),
    )
    .await;
    assert!(first.failure.is_none());
    for (form, expected) in [
        (
            ErrorForm::ErrorsList,
            "provider rejected create_user: Email has already been taken",
        ),
        (
            ErrorForm::ErrorsByField,
            "provider rejected create_user: email has already been taken",
        ),
        (
            ErrorForm::Error,
            "provider rejected create_user: Email has already been taken",
        ),
        (
            ErrorForm::Message,
            "provider rejected create_user: Email has already been taken",
        ),
        (
            ErrorForm::PlainText,
            "provider rejected create_user: HTTP 422",
        ),
    ] {
        h.api.set_readings(Readings {
            errors: form,
            ..Readings::default()
        });
        let again = run(
            &h,
            &onboarding("taken@example.com", json!({"product_id": 1})),
        )
        .await;
        let (step, error) = again.failure.as_ref().expect("rejected");
        assert_eq!(step.name, CREATE_USER, "{form:?}");
        assert_eq!(error.http_status(), Some(422), "{form:?}");
        assert_eq!(error.to_string(), expected, "{form:?}");
        assert_no_secret_printed(&again);
    }
    assert_eq!(h.api.users().len(), 1);
}

/// Runs one step as the engine would, with these outputs and secrets.
async fn step(
    h: &Harness,
    input: &Value,
    outputs: &Map<String, Value>,
    secrets: &Map<String, Value>,
    name: &'static str,
    possible_repeat: bool,
) -> Result<StepOutcome, StepError> {
    let key = StepKey::new(name);
    let ctx = StepContext {
        request_id: "r-repeat",
        operation: Operation::Onboard,
        input,
        outputs,
        secrets,
        step: &key,
        attempt: 1,
        polls: 0,
        poll_state: None,
        possible_repeat,
    };
    h.provider.run(&ctx).await
}

fn done(outcome: Result<StepOutcome, StepError>) -> StepDone {
    match outcome {
        Ok(StepOutcome::Done(done)) => done,
        other => panic!("expected Done, got {other:?}"),
    }
}

#[tokio::test]
async fn a_repeated_create_user_adopts_the_user_this_request_made_without_a_second_create() {
    for (why, readings) in [
        ("the guide's answers", Readings::default()),
        (
            "a bare user with a string id",
            Readings {
                user: Envelope::Bare,
                ids: Ids::NumericString,
                ..Readings::default()
            },
        ),
    ] {
        let h = harness().await;
        h.api.set_readings(readings);
        let input = onboarding("Ada@Example.com", json!({"product_id": 1}));
        let (none, secrets) = (Map::new(), Map::new());
        let first = done(step(&h, &input, &none, &secrets, CREATE_USER, false).await);
        assert!(!first.repeat_detected, "{why}");
        let again = done(step(&h, &input, &none, &secrets, CREATE_USER, true).await);
        assert!(again.repeat_detected, "{why}: recognised");
        assert_eq!(again.outputs, first.outputs, "{why}: the same user");
        assert_eq!(h.api.users().len(), 1, "{why}");
        assert_eq!(
            h.api.knobs.calls("POST /api/admin/users"),
            1,
            "{why}: no second create"
        );
        assert_eq!(
            h.api.knobs.calls("GET /api/admin/users/{key}"),
            1,
            "{why}: one lookup"
        );
    }
}

#[tokio::test]
async fn a_repeated_create_user_refuses_a_user_that_differs_from_the_request() {
    let h = harness().await;
    let (none, secrets) = (Map::new(), Map::new());
    let input = onboarding("ada@example.com", json!({"product_id": 1}));
    done(step(&h, &input, &none, &secrets, CREATE_USER, false).await);
    let mut other = input.clone();
    other["user"]["external_id"] = json!("crm-someone-else");
    other["user"]["lname"] = json!("Byron");
    let error = step(&h, &other, &none, &secrets, CREATE_USER, true)
        .await
        .expect_err("not adopted");
    assert!(
        matches!(
            error,
            StepError::Rejected {
                http_status: None,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "provider rejected create_user: an earlier attempt of this request may have created \
         the user, but the user holding this email differs from the request (lname, \
         external_id); not adopting it"
    );
    assert!(!error.to_string().contains(USER_PASSWORD));
    assert_eq!(
        h.api.knobs.calls("POST /api/admin/users"),
        1,
        "nothing sent"
    );
}

#[tokio::test]
async fn a_repeated_create_user_with_no_earlier_user_creates_it() {
    let h = harness().await;
    let (none, secrets) = (Map::new(), Map::new());
    let input = onboarding("new@example.com", json!({"product_id": 1}));
    let created = done(step(&h, &input, &none, &secrets, CREATE_USER, true).await);
    assert!(!created.repeat_detected);
    assert_eq!(created.outputs["user_id"], json!(h.api.users()[0].id));
    assert_eq!(
        h.api.knobs.calls("GET /api/admin/users/{key}"),
        1,
        "looked first"
    );
    assert_eq!(h.api.knobs.calls("POST /api/admin/users"), 1);
}

/// Outputs and secrets as they stand when `create_order` runs.
async fn before_order(h: &Harness, input: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let mut outputs = Map::new();
    let mut secrets = Map::new();
    for name in [CREATE_USER, CREATE_API_CREDENTIAL] {
        let d = done(step(h, input, &outputs, &secrets, name, false).await);
        outputs.extend(d.outputs);
        secrets.extend(d.secrets);
    }
    (outputs, secrets)
}

#[tokio::test]
async fn a_repeated_create_order_adopts_the_order_this_request_placed() {
    for (why, readings) in [
        ("the guide's answers", Readings::default()),
        (
            "lists under data, numeric order ids, the IP known late",
            Readings {
                orders: List::Data,
                order_ids: OrderIds::Number,
                order_shown: Shown::Bare,
                load_balancer_ip: LoadBalancerIp::Late,
                ..Readings::default()
            },
        ),
    ] {
        let h = harness().await;
        h.api.set_order_duration(Duration::ZERO);
        h.api.set_readings(readings.clone());
        let input = onboarding("ada@example.com", json!({"product": "small"}));
        let (outputs, secrets) = before_order(&h, &input).await;
        let placed = done(step(&h, &input, &outputs, &secrets, CREATE_ORDER, false).await);
        let again = done(step(&h, &input, &outputs, &secrets, CREATE_ORDER, true).await);
        assert!(again.repeat_detected, "{why}");
        assert_eq!(
            again.outputs["order_id"], placed.outputs["order_id"],
            "{why}"
        );
        let order = &h.api.orders()[0];
        assert_eq!(
            again.outputs["load_balancer_ip"],
            json!(order.load_balancer_ip),
            "{why}: the IP the order shows"
        );
        assert_eq!(h.api.orders().len(), 1, "{why}");
        assert_eq!(
            h.api.knobs.calls("POST /api/orders"),
            1,
            "{why}: no second order"
        );
        assert_eq!(h.api.knobs.calls("GET /api/orders"), 1, "{why}");
    }
}

#[tokio::test]
async fn a_repeated_create_order_refuses_when_two_orders_could_be_it_and_places_none() {
    let h = harness().await;
    let input = onboarding("ada@example.com", json!({"product_id": 1}));
    let (outputs, secrets) = before_order(&h, &input).await;
    for _ in 0..2 {
        done(step(&h, &input, &outputs, &secrets, CREATE_ORDER, false).await);
    }
    let error = step(&h, &input, &outputs, &secrets, CREATE_ORDER, true)
        .await
        .expect_err("ambiguous");
    assert_eq!(
        error.to_string(),
        "provider rejected create_order: an earlier attempt of this request may have placed \
         the order, and 2 orders in the account could be it; not placing another, nor adopting one"
    );
    assert_eq!(h.api.knobs.calls("POST /api/orders"), 2);
}

#[tokio::test]
async fn a_repeated_create_order_ignores_orders_of_another_project_and_places_its_own() {
    let h = harness().await;
    let input = onboarding("ada@example.com", json!({"product_id": 1}));
    let (outputs, secrets) = before_order(&h, &input).await;
    let mut other = input.clone();
    other["order"]["project_name"] = json!("another project");
    h.api.set_order_duration(Duration::ZERO);
    done(step(&h, &other, &outputs, &secrets, CREATE_ORDER, false).await);
    let placed = done(step(&h, &input, &outputs, &secrets, CREATE_ORDER, true).await);
    assert!(!placed.repeat_detected);
    assert_eq!(
        h.api.knobs.calls("POST /api/orders"),
        2,
        "its own order placed"
    );
    let ours = h.api.orders().pop().unwrap();
    assert_eq!(placed.outputs["order_id"], json!(ours.id));
    assert_eq!(ours.project_name, "site");
}

#[tokio::test]
async fn a_repeated_create_api_credential_makes_a_second_one_as_the_api_offers_no_way_to_find_the_first(
) {
    let h = harness().await;
    let input = onboarding("ada@example.com", json!({"product_id": 1}));
    let (outputs, secrets) = before_order(&h, &input).await;
    let mut outputs = outputs;
    outputs.remove("api_credential_id");
    let again = done(step(&h, &input, &outputs, &secrets, CREATE_API_CREDENTIAL, true).await);
    assert!(!again.repeat_detected);
    assert_eq!(h.api.api_credentials().len(), 2);
    assert_eq!(h.api.knobs.calls("POST /api/users/{id}/api_credentials"), 2);
}

#[tokio::test]
async fn an_order_answer_naming_another_order_is_never_taken_as_ours() {
    let h = harness().await;
    let input = onboarding("ada@example.com", json!({"product_id": 1}));
    let (mut outputs, secrets) = before_order(&h, &input).await;
    let placed = done(step(&h, &input, &outputs, &secrets, CREATE_ORDER, false).await);
    outputs.extend(placed.outputs);
    h.api.knobs.inject(FaultRule {
        method: Some("GET".into()),
        path_contains: "/api/orders/".into(),
        fault: Fault::Json200 {
            body: json!({"order": {"id": "someone-elses", "status": "completed",
                                   "project": {"id": 1}}}),
        },
        times: 1,
    });
    let error = step(&h, &input, &outputs, &secrets, POLL_ORDER, false)
        .await
        .expect_err("another order");
    assert!(
        matches!(
            error,
            StepError::Transient {
                reason: RetryReason::BadResponse,
                ..
            }
        ),
        "{error:?}"
    );
    let order_id = outputs["order_id"].as_str().unwrap();
    assert!(
        error.to_string().ends_with(&format!(
            "expected order {order_id} with status; got another order"
        )),
        "{error}"
    );
}
