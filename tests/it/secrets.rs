//! No configured secret reaches a log line, an event, a dead message or `/metrics`.

use std::time::Duration;

use base64::Engine as _;
use onboarding_worker::sandbox::faults::{Fault, FaultRule};

use crate::support::env::{captured_logs, TestEnv};
use crate::support::requests::sharespine_request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_configured_secret_appears_in_logs_events_dead_messages_or_metrics() {
    let env = TestEnv::start().await;
    env.sandbox.sharespine.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/user".into(),
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    env.publish(&sharespine_request(
        "secret-ok",
        "secretive",
        &["anna"],
        Some("anna"),
    ))
    .await;
    env.publish(&sharespine_request(
        "secret-fail",
        "secretive2",
        &["anna", "anna"],
        None,
    ))
    .await;
    env.final_event("secret-ok", Duration::from_secs(30)).await;
    env.final_event("secret-fail", Duration::from_secs(30))
        .await;
    let events = env.drain_events(Duration::from_millis(300)).await;
    let dead = env.dead().await;
    let metrics = env.metrics_text().await;
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    assert!(
        logs.contains("secret-ok"),
        "logs were captured and carry the request id"
    );

    let p = &env.settings.providers;
    let mut secrets = vec![
        p.sharespine.password.expose().to_string(),
        p.computestacks.admin_password.expose().to_string(),
        p.magento_bi.password.expose().to_string(),
        p.magento_bi.client_secret.expose().to_string(),
    ];
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        p.sharespine.username,
        p.sharespine.password.expose()
    ));
    secrets.push(basic);
    let everything = format!(
        "{logs}\n{}\n{}\n{metrics}",
        serde_json::to_string(&events).unwrap(),
        dead.iter()
            .map(|d| format!("{d:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for s in &secrets {
        let encoded: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
        assert!(
            !everything.contains(s.as_str()),
            "a secret leaked in plain form"
        );
        assert!(
            !everything.contains(&encoded),
            "a secret leaked URL-encoded"
        );
    }
    env.shutdown().await;
}
