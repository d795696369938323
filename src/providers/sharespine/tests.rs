//! The provider against the Sharespine sandbox: plan, steps, errors, readings
//! and the adoption of earlier creates.

use serde_json::{json, Map};

use crate::domain::RetryReason;
use crate::engine::local::{run_plan, LocalRun};
use crate::sandbox::faults::{Fault, FaultRule};
use crate::sandbox::sharespine::{self as sandbox, Api};

use super::steps::default_connection;
use super::*;

const PASSWORD: &str = "hunter2-sharespine-secret";

fn settings() -> SharespineSettings {
    let mut s = crate::config::Settings::load(None)
        .expect("default settings load")
        .providers
        .sharespine;
    s.password = crate::config::Secret::new(PASSWORD);
    s.calls.timeout_ms = 2_000;
    s.calls.max_attempts = 3.try_into().unwrap();
    s
}

/// A sandbox accepting `settings()`, served on a free port, and a provider pointed at it.
async fn sandbox_and_provider() -> (Api, Sharespine, SharespineSettings) {
    let mut s = settings();
    let api = Api::new(sandbox::Options {
        username: s.username.clone(),
        password: s.password.expose().to_string(),
        reseller_code: s.reseller_code.clone(),
        readings: sandbox::Readings::default(),
    });
    s.base_url = format!("http://{}", sandbox::serve_for_tests(&api).await);
    let provider = Sharespine::new(&s, Metrics::new());
    (api, provider, s)
}

async fn run(provider: &Sharespine, operation: Operation, input: &Value) -> LocalRun {
    run_plan(provider, operation, input, Duration::from_millis(5), 0)
        .await
        .expect("input is valid")
}

/// Runs one step directly, as the engine would with these outputs.
async fn run_step(
    provider: &Sharespine,
    operation: Operation,
    input: &Value,
    outputs: &Map<String, Value>,
    step: StepKey,
) -> Result<StepOutcome, StepError> {
    run_step_as(provider, operation, input, outputs, step, false).await
}

async fn run_step_as(
    provider: &Sharespine,
    operation: Operation,
    input: &Value,
    outputs: &Map<String, Value>,
    step: StepKey,
    possible_repeat: bool,
) -> Result<StepOutcome, StepError> {
    let secrets = Map::new();
    let ctx = StepContext {
        request_id: "test",
        operation,
        input,
        outputs,
        secrets: &secrets,
        step: &step,
        attempt: 0,
        polls: 0,
        poll_state: None,
        possible_repeat,
    };
    provider.run(&ctx).await
}

fn full_input() -> Value {
    json!({
        "tenant": {"customerReference": "mycustomer", "active": true, "fullName": "My Customer AB",
                   "email": "it@mycustomer.example", "defaultLanguage": "swe", "languages": ["swe"],
                   "options": [], "x-unknown": {"kept": true}},
        "users": [
            {"login": "anna", "fullName": "Anna A", "email": "anna@mycustomer.example",
             "permissions": [], "defaultLanguage": "swe"},
            {"login": "api"}
        ],
        "connection": {"active": true, "name": "Shop API", "type": "api", "configuration": {"a": 1}},
        "login": {"login": "anna", "path": "/orders"}
    })
}

#[test]
fn plan_checks_input_and_names_the_bad_field() {
    let provider = Sharespine::new(&settings(), Metrics::new());
    let create_user = |i| StepKey::indexed(CREATE_USER, i);
    let tenant = StepKey::new(CREATE_TENANT);
    let connection = StepKey::new(CREATE_CONNECTION);
    let login_url = StepKey::new(CREATE_LOGIN_URL);
    let check =
        |why: &str, operation: Operation, input: Value, want: Result<Vec<StepKey>, &str>| {
            let got = provider.plan(operation, &input);
            assert_eq!(got, want.map_err(String::from), "{why}: {input}");
        };
    use Operation::{LoginUrl, Onboard};
    let t = json!({"customerReference": "c"});

    check(
        "everything",
        Onboard,
        full_input(),
        Ok(vec![
            tenant.clone(),
            create_user(0),
            create_user(1),
            connection.clone(),
            login_url.clone(),
        ]),
    );
    check(
        "tenant only",
        Onboard,
        json!({"tenant": t}),
        Ok(vec![tenant.clone(), connection.clone()]),
    );
    check(
        "empty users, null login",
        Onboard,
        json!({"tenant": t, "users": [], "login": null}),
        Ok(vec![tenant.clone(), connection.clone()]),
    );
    check(
        "login without path",
        Onboard,
        json!({"tenant": t, "login": {"login": "a"}}),
        Ok(vec![tenant.clone(), connection.clone(), login_url.clone()]),
    );
    check(
        "input not an object",
        Onboard,
        json!([1]),
        Err("input must be an object"),
    );
    check(
        "no tenant",
        Onboard,
        json!({}),
        Err("input.tenant is missing"),
    );
    check(
        "null tenant",
        Onboard,
        json!({"tenant": null}),
        Err("input.tenant is missing"),
    );
    check(
        "tenant not an object",
        Onboard,
        json!({"tenant": "acme"}),
        Err("input.tenant must be an object"),
    );
    check(
        "no reference",
        Onboard,
        json!({"tenant": {"fullName": "x"}}),
        Err("input.tenant.customerReference is missing"),
    );
    check(
        "reference a number",
        Onboard,
        json!({"tenant": {"customerReference": 5}}),
        Err("input.tenant.customerReference must be a string"),
    );
    check(
        "reference empty",
        Onboard,
        json!({"tenant": {"customerReference": ""}}),
        Err("input.tenant.customerReference must not be empty"),
    );
    check(
        "users an object",
        Onboard,
        json!({"tenant": t, "users": {"login": "a"}}),
        Err("input.users must be an array"),
    );
    check(
        "user not an object",
        Onboard,
        json!({"tenant": t, "users": ["a"]}),
        Err("input.users[0] must be an object"),
    );
    check(
        "user without login",
        Onboard,
        json!({"tenant": t, "users": [{"login": "a"}, {}]}),
        Err("input.users[1].login is missing"),
    );
    check(
        "user login a number",
        Onboard,
        json!({"tenant": t, "users": [{"login": "a"}, {"login": 2}]}),
        Err("input.users[1].login must be a string"),
    );
    check(
        "user login ..",
        Onboard,
        json!({"tenant": t, "users": [{"login": ".."}]}),
        Err("input.users[0].login must not be \".\" or \"..\""),
    );
    check(
        "same login twice is left to the provider's 422",
        Onboard,
        json!({"tenant": t, "users": [{"login": "a"}, {"login": "b"}, {"login": "a"}]}),
        Ok(vec![
            tenant.clone(),
            create_user(0),
            create_user(1),
            create_user(2),
            connection.clone(),
        ]),
    );
    check(
        "connection an array",
        Onboard,
        json!({"tenant": t, "connection": []}),
        Err("input.connection must be an object"),
    );
    check(
        "login a string",
        Onboard,
        json!({"tenant": t, "login": "anna"}),
        Err("input.login must be an object"),
    );
    check(
        "login without login",
        Onboard,
        json!({"tenant": t, "login": {"path": "/"}}),
        Err("input.login.login is missing"),
    );
    check(
        "login.login a bool",
        Onboard,
        json!({"tenant": t, "login": {"login": true}}),
        Err("input.login.login must be a string"),
    );
    check(
        "login.path a number",
        Onboard,
        json!({"tenant": t, "login": {"login": "a", "path": 1}}),
        Err("input.login.path must be a string"),
    );

    check(
        "login_url",
        LoginUrl,
        json!({"code_name": "prefixc-1", "login": "anna"}),
        Ok(vec![login_url.clone()]),
    );
    check(
        "login_url with path",
        LoginUrl,
        json!({"code_name": "prefixc-1", "login": "anna", "path": "/x"}),
        Ok(vec![login_url.clone()]),
    );
    check(
        "login_url without code_name",
        LoginUrl,
        json!({"login": "anna"}),
        Err("input.code_name is missing"),
    );
    check(
        "login_url code_name a number",
        LoginUrl,
        json!({"code_name": 1, "login": "anna"}),
        Err("input.code_name must be a string"),
    );
    check(
        "login_url without login",
        LoginUrl,
        json!({"code_name": "c"}),
        Err("input.login is missing"),
    );
    check(
        "login_url path an object",
        LoginUrl,
        json!({"code_name": "c", "login": "a", "path": {}}),
        Err("input.path must be a string"),
    );
    check(
        "login_url input null",
        LoginUrl,
        Value::Null,
        Err("input is missing"),
    );
}

#[tokio::test]
async fn onboard_outputs_equal_what_the_sandbox_holds() {
    let (api, provider, settings) = sandbox_and_provider().await;
    let input = full_input();
    let run = run(&provider, Operation::Onboard, &input).await;
    assert!(run.failure.is_none(), "{:?}", run.failure);

    let tenants = api.tenants();
    assert_eq!(tenants.len(), 1);
    let tenant = &tenants[0];
    assert_eq!(tenant.code_name, "prefixmycustomer-1");
    assert_eq!(
        tenant.body, input["tenant"],
        "the tenant is sent verbatim, unknown fields kept"
    );
    assert_eq!(
        tenant.users[0].body, input["users"][0],
        "users are sent verbatim"
    );
    assert_eq!(tenant.connections.len(), 1);
    assert_eq!(tenant.connections[0].body["configuration"], json!({"a": 1}));
    let url = &tenant.login_urls[0];
    assert_eq!((url.login.as_str(), url.path.as_str()), ("anna", "/orders"));

    let want: Map<String, Value> = json!({
        "code_name": tenant.code_name,
        "logins": tenant.logins(),
        "connection_id": tenant.connections[0].id,
        "login_url": url.url,
        "login_url_expires": url.expires,
    })
    .as_object()
    .unwrap()
    .clone();
    assert_eq!(run.outputs, want);
    assert!(run.secrets.is_empty());
    assert_eq!(api.user_agents(), [settings.user_agent]);
    for (endpoint, calls) in [
        ("POST /reseller/tenant", 1),
        ("POST /reseller/tenant/{code_name}/user", 2),
        ("POST /reseller/tenant/{code_name}/connection", 1),
        ("POST /reseller/tenant/{code_name}/login/{login}", 1),
    ] {
        assert_eq!(api.knobs.calls(endpoint), calls, "{endpoint}");
    }
}

#[tokio::test]
async fn onboard_without_users_or_login_sends_the_default_connection() {
    let (api, provider, _) = sandbox_and_provider().await;
    let input = json!({"tenant": {"customerReference": "Bare"}});
    let run = run(&provider, Operation::Onboard, &input).await;
    assert!(run.failure.is_none(), "{:?}", run.failure);
    let tenant = api.tenant("prefixbare-1").expect("tenant created");
    assert!(tenant.users.is_empty());
    let mut sent = tenant.connections[0].body.clone();
    sent.as_object_mut().unwrap().remove("id");
    assert_eq!(sent, default_connection());
    let keys: Vec<&str> = run.outputs.keys().map(String::as_str).collect();
    assert_eq!(keys, ["code_name", "connection_id"]);
}

#[tokio::test]
async fn logins_with_reserved_characters_are_percent_encoded_in_paths() {
    let (api, provider, _) = sandbox_and_provider().await;
    let login = "anna/b c?#%";
    let input = json!({
        "tenant": {"customerReference": "enc"},
        "users": [{"login": login}],
        "login": {"login": login}
    });
    let run = run(&provider, Operation::Onboard, &input).await;
    assert!(run.failure.is_none(), "{:?}", run.failure);
    let tenant = api.tenant("prefixenc-1").unwrap();
    assert_eq!(
        tenant.login_urls[0].login, login,
        "the sandbox decoded the same login"
    );
    assert_eq!(tenant.login_urls[0].path, "/", "path defaults to /");
    assert_eq!(run.outputs["logins"], json!([login]));
}

#[tokio::test]
async fn login_url_for_an_existing_tenant_gives_a_fresh_url() {
    let (api, provider, _) = sandbox_and_provider().await;
    let first = run(&provider, Operation::Onboard, &full_input()).await;
    assert!(first.failure.is_none(), "{:?}", first.failure);
    let input = json!({"code_name": "prefixmycustomer-1", "login": "api", "path": "/settings"});
    let again = run(&provider, Operation::LoginUrl, &input).await;
    assert!(again.failure.is_none(), "{:?}", again.failure);

    let tenant = api.tenant("prefixmycustomer-1").unwrap();
    assert_eq!(tenant.login_urls.len(), 2);
    let issued = &tenant.login_urls[1];
    assert_eq!(
        (issued.login.as_str(), issued.path.as_str()),
        ("api", "/settings")
    );
    assert_eq!(again.outputs["login_url"], json!(issued.url));
    assert_eq!(again.outputs["login_url_expires"], json!(issued.expires));
    assert_ne!(again.outputs["login_url"], first.outputs["login_url"]);
    assert_eq!(api.tenants().len(), 1, "nothing else was created");
}

#[tokio::test]
async fn login_url_for_an_unknown_tenant_is_rejected_with_404() {
    let (_, provider, _) = sandbox_and_provider().await;
    let input = json!({"code_name": "prefixnobody-1", "login": "anna"});
    let run = run(&provider, Operation::LoginUrl, &input).await;
    let (step, err) = run.failure.expect("fails");
    assert_eq!(step.name, CREATE_LOGIN_URL);
    assert!(
        matches!(
            err,
            StepError::Rejected {
                http_status: Some(404),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "provider rejected create_login_url: tenant not found"
    );
}

#[tokio::test]
async fn duplicate_login_is_rejected_with_422() {
    let (api, provider, _) = sandbox_and_provider().await;
    let input = json!({"tenant": {"customerReference": "dup"}, "users": [{"login": "anna"}]});
    let first = run(&provider, Operation::Onboard, &input).await;
    assert!(first.failure.is_none(), "{:?}", first.failure);

    // The same create_user again on that tenant, as after a lost answer.
    let outputs = json!({"code_name": "prefixdup-1"})
        .as_object()
        .unwrap()
        .clone();
    let err = run_step(
        &provider,
        Operation::Onboard,
        &input,
        &outputs,
        StepKey::indexed(CREATE_USER, 0),
    )
    .await
    .unwrap_err();
    match &err {
        StepError::Rejected {
            http_status,
            message,
        } => {
            assert_eq!(*http_status, Some(422));
            assert_eq!(
                message,
                "provider rejected create_user: login already exists"
            );
        }
        other => panic!("want Rejected, got {other:?}"),
    }
    assert_eq!(api.tenant("prefixdup-1").unwrap().logins(), ["anna"]);
}

#[tokio::test]
async fn a_repeated_user_create_after_an_interrupted_attempt_is_recognised_as_done() {
    let (api, provider, _) = sandbox_and_provider().await;
    let input = json!({"tenant": {"customerReference": "rep"}, "users": [{"login": "anna"}]});
    let first = run(&provider, Operation::Onboard, &input).await;
    assert!(first.failure.is_none(), "{:?}", first.failure);
    let outputs = json!({"code_name": "prefixrep-1", "logins": []})
        .as_object()
        .unwrap()
        .clone();
    let again = run_step_as(
        &provider,
        Operation::Onboard,
        &input,
        &outputs,
        StepKey::indexed(CREATE_USER, 0),
        true,
    )
    .await
    .expect("the login this request made is its own");
    let StepOutcome::Done(done) = again else {
        panic!("want Done")
    };
    assert!(done.repeat_detected, "counted as a detected repeat");
    assert_eq!(done.outputs["logins"], json!(["anna"]));
    assert_eq!(
        api.tenant("prefixrep-1").unwrap().logins(),
        ["anna"],
        "no second user"
    );
}

#[tokio::test]
async fn a_login_repeated_in_the_request_is_still_rejected_after_an_interrupted_attempt() {
    let (_api, provider, _) = sandbox_and_provider().await;
    let input = json!({"tenant": {"customerReference": "twice"}, "users": [{"login": "anna"}, {"login": "anna"}]});
    let plan_input =
        json!({"tenant": {"customerReference": "twice"}, "users": [{"login": "anna"}]});
    let first = run(&provider, Operation::Onboard, &plan_input).await;
    assert!(first.failure.is_none(), "{:?}", first.failure);
    let outputs = json!({"code_name": "prefixtwice-1", "logins": ["anna"]})
        .as_object()
        .unwrap()
        .clone();
    let err = run_step_as(
        &provider,
        Operation::Onboard,
        &input,
        &outputs,
        StepKey::indexed(CREATE_USER, 1),
        true,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            StepError::Rejected {
                http_status: Some(422),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn each_user_step_outputs_the_logins_so_far() {
    let (_, provider, _) = sandbox_and_provider().await;
    let input = full_input();
    let mut outputs = json!({"code_name": "prefixmycustomer-1"})
        .as_object()
        .unwrap()
        .clone();
    let tenant = run_step(
        &provider,
        Operation::Onboard,
        &input,
        &Map::new(),
        StepKey::new(CREATE_TENANT),
    )
    .await;
    assert!(tenant.is_ok(), "{tenant:?}");
    for (i, want) in [(0, json!(["anna"])), (1, json!(["anna", "api"]))] {
        let Ok(StepOutcome::Done(done)) = run_step(
            &provider,
            Operation::Onboard,
            &input,
            &outputs,
            StepKey::indexed(CREATE_USER, i),
        )
        .await
        else {
            panic!("create_user#{i} fails");
        };
        assert_eq!(done.outputs["logins"], want, "create_user#{i}");
        outputs.extend(done.outputs);
    }
}

#[tokio::test]
async fn an_injected_503_surfaces_as_a_transient_error_and_is_retried() {
    let (api, provider, _) = sandbox_and_provider().await;
    api.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/connection".into(),
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    let input = json!({"tenant": {"customerReference": "flaky"}});
    let outputs = json!({"code_name": "prefixflaky-1"})
        .as_object()
        .unwrap()
        .clone();
    run_step(
        &provider,
        Operation::Onboard,
        &input,
        &Map::new(),
        StepKey::new(CREATE_TENANT),
    )
    .await
    .expect("tenant created");
    let err = run_step(
        &provider,
        Operation::Onboard,
        &input,
        &outputs,
        StepKey::new(CREATE_CONNECTION),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            StepError::Transient {
                reason: RetryReason::ServerError,
                http_status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );

    api.knobs.inject(FaultRule {
        method: None,
        path_contains: "/reseller/tenant".into(),
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    let run = run(
        &provider,
        Operation::Onboard,
        &json!({"tenant": {"customerReference": "flaky"}}),
    )
    .await;
    assert!(
        run.failure.is_none(),
        "a single 503 is retried: {:?}",
        run.failure
    );
    assert_eq!(run.outputs["code_name"], "prefixflaky-2");
    assert_eq!(api.knobs.calls("POST /reseller/tenant"), 3);
}

#[tokio::test]
async fn a_2xx_without_the_needed_field_is_a_transient_bad_response() {
    let (api, provider, _) = sandbox_and_provider().await;
    api.knobs.inject(FaultRule {
        method: None,
        path_contains: "/reseller/tenant".into(),
        fault: Fault::Html200,
        times: 1,
    });
    let input = json!({"tenant": {"customerReference": "c"}});
    let err = run_step(
        &provider,
        Operation::Onboard,
        &input,
        &Map::new(),
        StepKey::new(CREATE_TENANT),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            StepError::Transient {
                reason: RetryReason::BadResponse,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn no_secret_appears_in_any_error_message() {
    let (api, _, good) = sandbox_and_provider().await;
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{PASSWORD}", good.username))
    };
    let input = json!({"tenant": {"customerReference": "c"}});
    let mut messages = Vec::new();

    let mut wrong_password = good.clone();
    wrong_password.password = crate::config::Secret::new(format!("{PASSWORD}-wrong"));
    let mut wrong_reseller = good.clone();
    wrong_reseller.reseller_code = "someone-else".into();
    let mut nowhere = good.clone();
    nowhere.base_url = "http://127.0.0.1:1".into();
    let mut not_a_url = good.clone();
    not_a_url.base_url = format!("http://user:{PASSWORD}@[bad");
    for (settings, why) in [
        (wrong_password, "401"),
        (wrong_reseller, "400"),
        (nowhere, "connection refused"),
        (not_a_url, "unusable base_url"),
    ] {
        let provider = Sharespine::new(&settings, Metrics::new());
        let err = run_step(
            &provider,
            Operation::Onboard,
            &input,
            &Map::new(),
            StepKey::new(CREATE_TENANT),
        )
        .await
        .expect_err(why);
        messages.push((why, err.to_string(), format!("{err:?}")));
    }
    api.knobs.inject(FaultRule {
        method: None,
        path_contains: "/reseller".into(),
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    let provider = Sharespine::new(&good, Metrics::new());
    let err = run_step(
        &provider,
        Operation::Onboard,
        &input,
        &Map::new(),
        StepKey::new(CREATE_TENANT),
    )
    .await
    .unwrap_err();
    messages.push(("503", err.to_string(), format!("{err:?}")));

    assert!(
        messages[0].1.contains("401") || messages[0].1.contains("credentials"),
        "{messages:?}"
    );
    for (why, display, debug) in &messages {
        for text in [display, debug] {
            assert!(!text.contains(PASSWORD), "{why}: {text}");
            assert!(!text.contains(&basic), "{why}: {text}");
            assert!(
                !text.to_lowercase().contains("authorization"),
                "{why}: {text}"
            );
        }
    }
}

use crate::sandbox::sharespine::{
    each_reading, ConnectionIds, ErrorForm, Expires, List, Readings, Reads,
};

/// The outputs of a completed onboarding of `tenant`: what the sandbox holds.
fn outputs_held(tenant: &sandbox::Tenant, expiry_shown: bool) -> Map<String, Value> {
    let url = tenant.login_urls.last().expect("a login URL");
    json!({
        "code_name": tenant.code_name,
        "logins": tenant.logins(),
        "connection_id": tenant.connections[0].id,
        "login_url": url.url,
        "login_url_expires": if expiry_shown { json!(url.expires) } else { Value::Null },
    })
    .as_object()
    .unwrap()
    .clone()
}

#[tokio::test]
async fn every_reading_of_an_open_point_onboards_with_the_outputs_the_sandbox_holds() {
    let (api, provider, _) = sandbox_and_provider().await;
    for (i, (why, readings)) in each_reading().into_iter().enumerate() {
        let expiry_shown = !matches!(readings.expires, Expires::Null | Expires::Absent);
        api.set_readings(readings);
        let mut input = full_input();
        input["tenant"]["customerReference"] = json!(format!("reading{i}"));
        let run = run(&provider, Operation::Onboard, &input).await;
        assert!(run.failure.is_none(), "{why}: {:?}", run.failure);
        let tenant = api
            .tenant(&format!("prefixreading{i}-1"))
            .expect("the tenant");
        assert_eq!(run.outputs, outputs_held(&tenant, expiry_shown), "{why}");
    }
}

#[tokio::test]
async fn a_repeated_create_tenant_adopts_the_tenant_carrying_this_customer_reference() {
    for lists in [List::Bare, List::Named, List::Data] {
        let (api, provider, _) = sandbox_and_provider().await;
        api.set_readings(Readings {
            lists,
            ..Readings::default()
        });
        let input = full_input();
        let step = || StepKey::new(CREATE_TENANT);
        let first = run_step(&provider, Operation::Onboard, &input, &Map::new(), step()).await;
        let again = run_step_as(
            &provider,
            Operation::Onboard,
            &input,
            &Map::new(),
            step(),
            true,
        )
        .await;
        let (Ok(StepOutcome::Done(first)), Ok(StepOutcome::Done(again))) = (first, again) else {
            panic!("{lists:?}: both done");
        };
        assert!(again.repeat_detected, "{lists:?}");
        assert_eq!(again.outputs, first.outputs, "{lists:?}");
        assert_eq!(api.tenants().len(), 1, "{lists:?}");
        assert_eq!(
            api.knobs.calls("POST /reseller/tenant"),
            1,
            "{lists:?}: no second create"
        );
        assert_eq!(api.knobs.calls("GET /reseller/tenant"), 1, "{lists:?}");
    }
}

#[tokio::test]
async fn a_repeated_create_tenant_refuses_when_two_tenants_carry_the_reference() {
    let (api, provider, _) = sandbox_and_provider().await;
    let input = full_input();
    for _ in 0..2 {
        run_step(
            &provider,
            Operation::Onboard,
            &input,
            &Map::new(),
            StepKey::new(CREATE_TENANT),
        )
        .await
        .expect("created");
    }
    let error = run_step_as(
        &provider,
        Operation::Onboard,
        &input,
        &Map::new(),
        StepKey::new(CREATE_TENANT),
        true,
    )
    .await
    .expect_err("ambiguous");
    assert_eq!(
        error.to_string(),
        "provider rejected create_tenant: an earlier attempt of this request may have created \
         the tenant, and 2 tenants carry its customerReference; not creating another, nor \
         adopting one"
    );
    assert_eq!(api.knobs.calls("POST /reseller/tenant"), 2);
}

#[tokio::test]
async fn a_repeated_create_tenant_creates_when_no_tenant_is_ours_or_reads_are_not_offered() {
    let (api, provider, _) = sandbox_and_provider().await;
    let mut other = full_input();
    other["tenant"]["fullName"] = json!("Another Customer AB");
    run_step(
        &provider,
        Operation::Onboard,
        &other,
        &Map::new(),
        StepKey::new(CREATE_TENANT),
    )
    .await
    .expect("created");
    // Same reference, another full name: not this request's tenant.
    let created = run_step_as(
        &provider,
        Operation::Onboard,
        &full_input(),
        &Map::new(),
        StepKey::new(CREATE_TENANT),
        true,
    )
    .await;
    let Ok(StepOutcome::Done(created)) = created else {
        panic!("{created:?}")
    };
    assert!(!created.repeat_detected);
    assert_eq!(created.outputs["code_name"], "prefixmycustomer-2");
    // Without the list, the create goes ahead: the window stays as the contract says.
    api.set_readings(Readings {
        reads: Reads::NotOffered,
        ..Readings::default()
    });
    let created = run_step_as(
        &provider,
        Operation::Onboard,
        &full_input(),
        &Map::new(),
        StepKey::new(CREATE_TENANT),
        true,
    )
    .await;
    let Ok(StepOutcome::Done(created)) = created else {
        panic!("{created:?}")
    };
    assert!(!created.repeat_detected);
    assert_eq!(api.knobs.calls("POST /reseller/tenant"), 3);
}

#[tokio::test]
async fn a_repeated_create_user_is_recognised_by_the_list_or_else_by_its_422() {
    for (reads, posts) in [(Reads::Offered, 1), (Reads::NotOffered, 2)] {
        let (api, provider, _) = sandbox_and_provider().await;
        api.set_readings(Readings {
            reads,
            errors: ErrorForm::Errors,
            ..Readings::default()
        });
        let input = json!({"tenant": {"customerReference": "rep"}, "users": [{"login": "anna"}]});
        let first = run(&provider, Operation::Onboard, &input).await;
        assert!(first.failure.is_none(), "{reads:?}: {:?}", first.failure);
        let outputs = json!({"code_name": "prefixrep-1"})
            .as_object()
            .unwrap()
            .clone();
        let again = run_step_as(
            &provider,
            Operation::Onboard,
            &input,
            &outputs,
            StepKey::indexed(CREATE_USER, 0),
            true,
        )
        .await;
        let Ok(StepOutcome::Done(again)) = again else {
            panic!("{reads:?}: {again:?}")
        };
        assert!(again.repeat_detected, "{reads:?}");
        assert_eq!(again.outputs["logins"], json!(["anna"]), "{reads:?}");
        assert_eq!(
            api.tenant("prefixrep-1").unwrap().logins(),
            ["anna"],
            "{reads:?}"
        );
        assert_eq!(
            api.knobs.calls("POST /reseller/tenant/{code_name}/user"),
            posts,
            "{reads:?}: a second create only when there is no list to read"
        );
    }
}

#[tokio::test]
async fn a_repeated_create_connection_adopts_the_one_connection_of_this_requests_tenant() {
    let (api, provider, _) = sandbox_and_provider().await;
    api.set_readings(Readings {
        connection_ids: ConnectionIds::Number,
        lists: List::Named,
        ..Readings::default()
    });
    let input = json!({"tenant": {"customerReference": "conn"}});
    let first = run(&provider, Operation::Onboard, &input).await;
    assert!(first.failure.is_none(), "{:?}", first.failure);
    let outputs = json!({"code_name": "prefixconn-1"})
        .as_object()
        .unwrap()
        .clone();
    let step = || StepKey::new(CREATE_CONNECTION);
    let again = run_step_as(
        &provider,
        Operation::Onboard,
        &input,
        &outputs,
        step(),
        true,
    )
    .await;
    let Ok(StepOutcome::Done(again)) = again else {
        panic!("{again:?}")
    };
    assert!(again.repeat_detected);
    assert_eq!(
        again.outputs["connection_id"],
        first.outputs["connection_id"]
    );
    assert_eq!(
        api.knobs
            .calls("POST /reseller/tenant/{code_name}/connection"),
        1
    );

    // Two that could be it: neither is taken, nothing is made.
    run_step(&provider, Operation::Onboard, &input, &outputs, step())
        .await
        .unwrap();
    let error = run_step_as(
        &provider,
        Operation::Onboard,
        &input,
        &outputs,
        step(),
        true,
    )
    .await
    .expect_err("ambiguous");
    assert_eq!(
        error.to_string(),
        "provider rejected create_connection: an earlier attempt of this request may have \
         created the connection, and the tenant holds 2 that could be it; not creating \
         another, nor adopting one"
    );
    assert_eq!(
        api.knobs
            .calls("POST /reseller/tenant/{code_name}/connection"),
        2
    );
}

#[tokio::test]
async fn a_repeated_create_login_url_issues_another_url() {
    let (api, provider, _) = sandbox_and_provider().await;
    let first = run(&provider, Operation::Onboard, &full_input()).await;
    assert!(first.failure.is_none(), "{:?}", first.failure);
    let again = run_step_as(
        &provider,
        Operation::Onboard,
        &full_input(),
        &first.outputs,
        StepKey::new(CREATE_LOGIN_URL),
        true,
    )
    .await;
    let Ok(StepOutcome::Done(again)) = again else {
        panic!("{again:?}")
    };
    assert!(!again.repeat_detected, "nothing to recognise");
    assert_ne!(again.outputs["login_url"], first.outputs["login_url"]);
    assert_eq!(
        api.tenant("prefixmycustomer-1").unwrap().login_urls.len(),
        2
    );
}

#[tokio::test]
async fn an_unreadable_answer_says_what_was_expected_and_what_came() {
    let (api, provider, _) = sandbox_and_provider().await;
    api.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/reseller/tenant".into(),
        fault: Fault::Json200 {
            body: json!([{"codeName": "a"}, {"codeName": "b"}]),
        },
        times: 1,
    });
    let error = run_step(
        &provider,
        Operation::Onboard,
        &full_input(),
        &Map::new(),
        StepKey::new(CREATE_TENANT),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            StepError::Transient {
                reason: RetryReason::BadResponse,
                http_status: Some(200),
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "create_tenant: unexpected response body (35 bytes): expected a tenant object with \
         codeName; got a list of 2 items"
    );
}
