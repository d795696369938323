//! The step engine end to end on Sharespine: a new customer and a returning one.

use std::time::Duration;

use onboarding_worker::sandbox::faults::{Fault, FaultRule};
use onboarding_worker::sandbox::sharespine::{
    each_reading, Expires, List, Readings, Reads, Tenant,
};
use serde_json::{json, Value};

use crate::support::env::TestEnv;
use crate::support::prometheus::metric_value;
use crate::support::requests::{sharespine_request, steps_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_customer_is_onboarded_with_outputs_equal_to_what_the_sandbox_holds() {
    let env = TestEnv::start().await;
    env.publish(&sharespine_request(
        "new-1",
        "mycustomer",
        &["anna", "bob"],
        Some("anna"),
    ))
    .await;
    let done = env.final_event("new-1", Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed", "{done:#}");

    let tenants = env.sandbox.sharespine.tenants();
    assert_eq!(tenants.len(), 1, "one tenant");
    let t = &tenants[0];
    assert_eq!(
        t.code_name, "prefixmycustomer-1",
        "codeName derived from customerReference"
    );
    let out = &done["outputs"];
    assert_eq!(out["code_name"], t.code_name.as_str());
    assert_eq!(out["logins"], json!(["anna", "bob"]));
    assert_eq!(out["connection_id"], t.connections[0].id.as_str());
    assert_eq!(out["login_url"], t.login_urls[0].url.as_str());
    assert_eq!(out["login_url_expires"], t.login_urls[0].expires.as_str());
    let mut body = t.connections[0].body.clone();
    body.as_object_mut().unwrap().remove("id");
    assert_eq!(
        body,
        json!({"active": true, "name": "API", "type": "api", "configuration": {}}),
        "default connection body"
    );

    let events = env.events_of("new-1").await;
    assert_eq!(events[0]["event"], "accepted");
    assert_eq!(
        steps_of(&events),
        [
            "create_tenant",
            "create_user",
            "create_user",
            "create_connection",
            "create_login_url"
        ]
    );
    assert_eq!(done["provider"], "sharespine");
    assert_eq!(done["operation"], "onboard");
    assert!(done["duration_ms"].as_i64().unwrap() >= 0);
    assert!(env
        .sandbox
        .sharespine
        .user_agents()
        .iter()
        .all(|ua| ua == &env.settings.providers.sharespine.user_agent));

    // Nothing left behind in the worker's queues.
    for q in [
        "onboarding.requests",
        "onboarding.steps.sharespine",
        "onboarding.dead",
    ] {
        assert_eq!(env.vhost.queue_counts(q).await, (0, 0), "{q} is empty");
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_url_is_skipped_when_the_request_has_no_login() {
    let env = TestEnv::start().await;
    env.publish(&sharespine_request("nologin-1", "nologin", &[], None))
        .await;
    let done = env.final_event("nologin-1", Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    assert_eq!(
        steps_of(&env.events_of("nologin-1").await),
        ["create_tenant", "create_connection"]
    );
    assert!(done["outputs"].get("login_url").is_none());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_customer_gets_a_fresh_login_url() {
    let env = TestEnv::start().await;
    env.publish(&sharespine_request(
        "first-visit",
        "returning",
        &["anna"],
        Some("anna"),
    ))
    .await;
    let first = env
        .final_event("first-visit", Duration::from_secs(30))
        .await;
    let code_name = first["outputs"]["code_name"].as_str().unwrap().to_string();

    env.publish(
        &json!({"request_id": "second-visit", "provider": "sharespine", "operation": "login_url",
                        "input": {"code_name": code_name, "login": "anna", "path": "/orders"}}),
    )
    .await;
    let again = env
        .final_event("second-visit", Duration::from_secs(30))
        .await;
    assert_eq!(again["event"], "completed", "{again:#}");
    assert_eq!(again["operation"], "login_url");
    let url = again["outputs"]["login_url"].as_str().unwrap();
    assert_ne!(
        url,
        first["outputs"]["login_url"].as_str().unwrap(),
        "a fresh URL"
    );
    let tenant = env.sandbox.sharespine.tenant(&code_name).unwrap();
    assert_eq!(tenant.login_urls.len(), 2);
    assert_eq!(tenant.login_urls[1].path, "/orders");
    assert!(again["outputs"]["login_url_expires"].is_string());
    env.shutdown().await;
}

/// The outputs a completed onboarding of `tenant` must end with: what the
/// sandbox holds, whatever form the answers took.
fn outputs_held(tenant: &Tenant, expiry_shown: bool) -> Value {
    let url = tenant.login_urls.last().expect("a login URL");
    json!({
        "code_name": tenant.code_name,
        "logins": tenant.logins(),
        "connection_id": tenant.connections[0].id,
        "login_url": url.url,
        "login_url_expires": if expiry_shown { json!(url.expires) } else { Value::Null },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_of_an_open_point_of_the_seed_onboards_with_the_outputs_the_sandbox_holds() {
    let env = TestEnv::start().await;
    let ss = &env.sandbox.sharespine;
    for (i, (why, readings)) in each_reading().into_iter().enumerate() {
        let expiry_shown = !matches!(readings.expires, Expires::Null | Expires::Absent);
        ss.set_readings(readings);
        let id = format!("reading-{i}");
        let reference = format!("reading{i}");
        env.publish(&sharespine_request(
            &id,
            &reference,
            &["anna", "bob"],
            Some("bob"),
        ))
        .await;
        let done = env.final_event(&id, Duration::from_secs(30)).await;
        assert_eq!(done["event"], "completed", "{why}: {done:#}");
        let tenant = ss
            .tenant(&format!("prefix{reference}-1"))
            .expect("the request's tenant");
        assert_eq!(
            done["outputs"],
            outputs_held(&tenant, expiry_shown),
            "{why}"
        );
        assert_eq!(tenant.logins(), ["anna", "bob"], "{why}");
        assert_eq!(
            steps_of(&env.events_of(&id).await),
            [
                "create_tenant",
                "create_user",
                "create_user",
                "create_connection",
                "create_login_url"
            ],
            "{why}"
        );
    }
    assert_eq!(
        ss.tenants().len(),
        each_reading().len(),
        "one tenant per onboarding"
    );
    assert!(env.dead().await.is_empty());
    env.shutdown().await;
}

/// A create that succeeds at the provider whose answer is lost (a 503 instead):
/// the engine runs the step again as a possible repeat.
fn lost_answer(path: &str) -> FaultRule {
    FaultRule {
        method: Some("POST".into()),
        path_contains: path.into(),
        fault: Fault::AfterSuccess { status: 503 },
        times: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_user_and_connection_whose_create_answers_were_lost_are_found_and_adopted_not_made_twice(
) {
    let env = TestEnv::start().await;
    let ss = &env.sandbox.sharespine;
    for (i, (why, readings)) in [
        ("the seed's answers", Readings::default()),
        (
            "lists under data, with extra fields",
            Readings {
                lists: List::Data,
                extra_fields: true,
                ..Readings::default()
            },
        ),
    ]
    .into_iter()
    .enumerate()
    {
        ss.set_readings(readings);
        let before = ss.knobs.all_calls();
        let calls =
            |endpoint: &str| ss.knobs.calls(endpoint) - before.get(endpoint).copied().unwrap_or(0);
        // In plan order: each rule is used up by the first create it matches.
        for path in ["/reseller/tenant", "/user", "/connection", "/login/"] {
            ss.knobs.inject(lost_answer(path));
        }
        let id = format!("lost-{i}");
        let reference = format!("lost{i}");
        env.publish(&sharespine_request(
            &id,
            &reference,
            &["anna", "bob"],
            Some("anna"),
        ))
        .await;
        let done = env.final_event(&id, Duration::from_secs(30)).await;
        assert_eq!(done["event"], "completed", "{why}: {done:#}");
        let tenants: Vec<Tenant> = ss
            .tenants()
            .into_iter()
            .filter(|t| t.customer_reference == reference)
            .collect();
        assert_eq!(tenants.len(), 1, "{why}: one tenant");
        let tenant = &tenants[0];
        assert_eq!(tenant.logins(), ["anna", "bob"], "{why}: each user once");
        assert_eq!(tenant.connections.len(), 1, "{why}: one connection");
        assert_eq!(
            tenant.login_urls.len(),
            2,
            "{why}: a login URL is issued again (nothing to find; the first expires unused)"
        );
        assert_eq!(done["outputs"], outputs_held(tenant, true), "{why}");
        for (endpoint, n) in [
            ("POST /reseller/tenant", 1),
            ("GET /reseller/tenant", 1),
            ("POST /reseller/tenant/{code_name}/user", 2),
            ("GET /reseller/tenant/{code_name}/user", 1),
            ("POST /reseller/tenant/{code_name}/connection", 1),
            ("GET /reseller/tenant/{code_name}/connection", 1),
            ("POST /reseller/tenant/{code_name}/login/{login}", 2),
        ] {
            assert_eq!(calls(endpoint), n, "{why}: {endpoint}");
        }
    }
    let metrics = env.metrics_text().await;
    for step in [
        "create_tenant",
        "create_user",
        "create_connection",
        "create_login_url",
    ] {
        assert_eq!(
            metric_value(
                &metrics,
                "onboarding_create_repeats_total",
                &[("provider", "sharespine"), ("step", step)]
            ),
            Some(2.0),
            "{step}: each possible repeat counted"
        );
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_reads_a_lost_user_create_is_recognised_by_its_422_and_a_lost_tenant_create_is_made_again(
) {
    let env = TestEnv::start().await;
    let ss = &env.sandbox.sharespine;
    ss.set_readings(Readings {
        reads: Reads::NotOffered,
        ..Readings::default()
    });
    ss.knobs.inject(lost_answer("/reseller/tenant"));
    ss.knobs.inject(lost_answer("/user"));
    env.publish(&sharespine_request("no-reads", "noreads", &["anna"], None))
        .await;
    let done = env.final_event("no-reads", Duration::from_secs(30)).await;
    assert_eq!(done["event"], "completed", "{done:#}");
    let tenants = ss.tenants();
    assert_eq!(
        tenants.len(),
        2,
        "the window as the contract says: the lost tenant cannot be found"
    );
    assert_eq!(done["outputs"]["code_name"], "prefixnoreads-2");
    assert_eq!(
        tenants[1].logins(),
        ["anna"],
        "the user once, found by the 422"
    );
    assert_eq!(
        ss.knobs.calls("POST /reseller/tenant/{code_name}/user"),
        2,
        "the second create met \"login already exists\""
    );
    env.shutdown().await;
}
