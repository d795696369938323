//! Every message that cannot be processed ends in a `failed` event with
//! `invalid_request` and is kept whole in `onboarding.dead`; nothing reaches a
//! provider and the worker goes on.

use std::time::Duration;

use serde_json::json;

use crate::support::env::TestEnv;
use crate::support::requests::sharespine_request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_fail_as_invalid_request_and_are_kept_whole_in_dead() {
    let env = TestEnv::start().await;
    let big = format!(
        r#"{{"request_id":"too-big","provider":"sharespine","input":{{"pad":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, Option<&str>, &str)> = vec![
        ("not JSON", b"this is not json".to_vec(), None, "not JSON"),
        ("no request_id", json!({"provider": "sharespine", "input": {}}).to_string().into_bytes(), None, "request_id is missing"),
        ("bad request_id", json!({"request_id": "has spaces", "provider": "sharespine", "input": {}}).to_string().into_bytes(), None, "1 to 128"),
        ("unknown provider", json!({"request_id": "bad-provider", "provider": "acme", "input": {}}).to_string().into_bytes(), Some("bad-provider"), "unknown provider"),
        ("unknown operation", json!({"request_id": "bad-op", "provider": "sharespine", "operation": "delete", "input": {}}).to_string().into_bytes(), Some("bad-op"), "unknown operation"),
        ("missing tenant", json!({"request_id": "no-tenant", "provider": "sharespine", "input": {"users": []}}).to_string().into_bytes(), Some("no-tenant"), "tenant"),
        ("2 MB body", big.into_bytes(), None, "more than the 1048576 allowed"),
    ];
    for (_, body, _, _) in &cases {
        env.publish_raw(body).await;
    }
    // The worker keeps going: a valid request after them completes.
    env.publish(&sharespine_request(
        "after-the-bad-ones",
        "survivor",
        &["anna"],
        None,
    ))
    .await;
    let ok = env
        .final_event("after-the-bad-ones", Duration::from_secs(30))
        .await;
    assert_eq!(ok["event"], "completed");

    let events = env.drain_events(Duration::from_millis(500)).await;
    let failed: Vec<_> = events.iter().filter(|e| e["event"] == "failed").collect();
    assert_eq!(
        failed.len(),
        cases.len(),
        "one failed event per bad message: {failed:#?}"
    );
    let dead = env.dead().await;
    assert_eq!(
        dead.len(),
        cases.len(),
        "every bad message in onboarding.dead"
    );
    for (why, body, request_id, reason) in &cases {
        let d = dead
            .iter()
            .find(|d| &d.body == body)
            .unwrap_or_else(|| panic!("{why}: kept whole in dead"));
        assert_eq!(d.error_kind.as_deref(), Some("invalid_request"), "{why}");
        assert!(
            d.reason.as_deref().unwrap_or("").contains(reason),
            "{why}: reason header {:?}",
            d.reason
        );
        assert_eq!(
            d.request_id.as_deref(),
            *request_id,
            "{why}: request_id header"
        );
        let e = failed
            .iter()
            .find(|e| e["error"]["message"].as_str().unwrap().contains(reason))
            .unwrap_or_else(|| panic!("{why}: failed event"));
        assert_eq!(e["error"]["kind"], "invalid_request", "{why}");
        match request_id {
            Some(id) => assert_eq!(e["request_id"], *id, "{why}"),
            None => assert!(e["request_id"].is_null(), "{why}: request_id null"),
        }
    }
    assert_eq!(
        env.sandbox.sharespine.tenants().len(),
        1,
        "no provider call for any bad message"
    );
    env.shutdown().await;
}
