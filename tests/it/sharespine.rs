//! The step engine end to end on Sharespine: a new customer and a returning one.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

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
        assert_eq!(env.vhost.queue_counts(q), (0, 0), "{q} is empty");
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
