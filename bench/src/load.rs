//! The load: onboarding requests as a billing system sends them, published in
//! bulk, and the wait for their completion events.

use std::time::{Duration, Instant};

use anyhow::bail;
use onboarding_worker::broker::admin::{Admin, EventStream};
use serde_json::{json, Value};

/// A Sharespine onboarding of [`SHARESPINE_STEPS`] steps.
pub fn sharespine(id: &str) -> Value {
    json!({"request_id": id, "provider": "sharespine", "input": {
        "tenant": {"customerReference": id.replace(['-', '.'], ""), "active": true, "fullName": "Bench AB", "email": "b@bench.example",
                   "defaultLanguage": "swe", "languages": ["swe"], "options": []},
        "users": [{"login": "anna", "fullName": "Anna", "email": "anna@bench.example", "permissions": [], "defaultLanguage": "swe"}],
        "login": {"login": "anna", "path": "/"}}})
}

/// Steps of the Sharespine onboarding above: tenant, one user, connection, login URL.
pub const SHARESPINE_STEPS: usize = 4;

/// A ComputeStacks onboarding: it waits on its order (a provider job).
pub fn computestacks(id: &str) -> Value {
    json!({"request_id": id, "provider": "computestacks", "input": {
        "user": {"fname": "B", "lname": "Ench", "email": format!("{id}@bench.example"), "password": "bench-Passw0rd!",
                 "password_confirmation": "bench-Passw0rd!", "skip_email_confirm": true},
        "order": {"project_name": id, "location_id": 1, "containers": [{"image_id": 4, "resources": {"product_id": 1}, "params": [], "domains": []}]}}})
}

/// Publishes every request, confirmed, 200 at a time.
pub async fn publish_all(admin: &Admin, requests: &[Value]) -> anyhow::Result<()> {
    for chunk in requests.chunks(200) {
        let bodies: Vec<Vec<u8>> = chunk.iter().map(|r| r.to_string().into_bytes()).collect();
        let results =
            futures::future::join_all(bodies.iter().map(|b| admin.publish_request("bench", b)))
                .await;
        for r in results {
            r?;
        }
    }
    Ok(())
}

/// Waits for `n` completed events (or any failure) on `events`.
pub async fn await_completed(
    events: &mut EventStream,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut done = 0;
    while done < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((rk, body))) = tokio::time::timeout(left, events.next()).await else {
            bail!("only {done} of {n} onboardings completed within {timeout:?}");
        };
        if rk.ends_with(".completed") {
            done += 1;
        } else if rk.ends_with(".failed") {
            bail!("an onboarding failed: {}", String::from_utf8_lossy(&body));
        }
    }
    Ok(())
}
