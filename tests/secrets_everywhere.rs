//! One run of every provider's onboarding — successes, rejections, retries and
//! a token renewal — with every log level on (`RUST_LOG=trace`), then a search
//! of everything the worker wrote for every secret it knew: the configured
//! passwords and client secret, the access tokens it was given, the API
//! password it was handed, and the passwords inside the requests. Plain,
//! Basic-encoded and URL-encoded. Its own test binary, so trace logging does
//! not slow the other tests.

mod support;

use std::time::Duration;

use crate::support::env::{captured_logs, TestEnv};
use crate::support::prometheus::metric_value;
use crate::support::requests::sharespine_request;
use base64::Engine as _;
use onboarding_worker::demo::sample_requests;
use onboarding_worker::sandbox::faults::{Fault, FaultRule};

fn forms(secret: &str) -> Vec<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let url: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    vec![secret.to_string(), url, b64(secret)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_any_provider_appears_anywhere_the_worker_writes_even_at_trace_level() {
    // SAFETY: set before the subscriber and any worker thread exist.
    unsafe { std::env::set_var("RUST_LOG", "trace") };
    let env = TestEnv::start_with(|s| {
        s.providers.sharespine.password =
            onboarding_worker::config::Secret::new("ss-Pa55 w/rd+&=?");
        s.providers.computestacks.admin_password =
            onboarding_worker::config::Secret::new("cs-Adm1n p@ss/+");
        s.providers.magento_bi.password = onboarding_worker::config::Secret::new("mb-Us3r p@ss&=");
        s.providers.magento_bi.client_secret =
            onboarding_worker::config::Secret::new("mb-cl1ent s3cret/+?");
        s.sandbox.token_ttl_s = 1;
        s.providers.magento_bi.token_renew_margin_ms = 200;
    })
    .await;
    let knobs = &env.sandbox;
    knobs.sharespine.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/user".into(),
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    knobs.computestacks.knobs.inject(FaultRule {
        method: Some("GET".into()),
        path_contains: "/api/orders/".into(),
        fault: Fault::RateLimited { retry_after_s: 1 },
        times: 1,
    });

    let samples = sample_requests("sec");
    let (mut sharespine, mut computestacks, mut magento) =
        (samples[0].clone(), samples[1].clone(), samples[2].clone());
    sharespine["request_id"] = "sec-ss-ok".into();
    computestacks["request_id"] = "sec-cs-ok".into();
    computestacks["input"]["user"]["password"] = "cs-Us3r pw/+&".into();
    computestacks["input"]["user"]["password_confirmation"] = "cs-Us3r pw/+&".into();
    magento["request_id"] = "sec-mb-ok".into();
    magento["input"]["connection"]["credentials"]["password"] = "mb-Db pw/+&=".into();
    let mut cs_dup = computestacks.clone();
    cs_dup["request_id"] = "sec-cs-dup".into();
    let mut ss_dup = sharespine_request("sec-ss-dup", "secdup", &["anna", "anna"], None);
    ss_dup["request_id"] = "sec-ss-dup".into();

    for r in [&sharespine, &computestacks, &magento, &ss_dup] {
        env.publish(r).await;
    }
    for id in ["sec-ss-ok", "sec-cs-ok", "sec-mb-ok", "sec-ss-dup"] {
        env.final_event(id, Duration::from_secs(60)).await;
    }
    // The same e-mail again: rejected by ComputeStacks.
    env.publish(&cs_dup).await;
    let dup = env.final_event("sec-cs-dup", Duration::from_secs(60)).await;
    assert_eq!(dup["error"]["kind"], "rejected", "{dup:#}");
    assert_eq!(
        env.final_event("sec-ss-dup", Duration::from_secs(5)).await["event"],
        "failed"
    );
    for id in ["sec-ss-ok", "sec-cs-ok", "sec-mb-ok"] {
        assert_eq!(
            env.final_event(id, Duration::from_secs(5)).await["event"],
            "completed",
            "{id}"
        );
    }

    let metrics = env.metrics_text().await;
    assert!(
        metric_value(
            &metrics,
            "onboarding_token_renewals_total",
            &[("provider", "magento_bi")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "the Magento BI token was renewed"
    );
    assert!(
        metric_value(&metrics, "onboarding_retries_total", &[]).unwrap_or(0.0) >= 2.0,
        "retries happened"
    );

    let events = env.drain_events(Duration::from_millis(300)).await;
    let dead = env.dead().await;
    let mut statuses = String::new();
    for id in [
        "sec-ss-ok",
        "sec-cs-ok",
        "sec-mb-ok",
        "sec-ss-dup",
        "sec-cs-dup",
    ] {
        let record = env
            .worker()
            .ledger
            .get(id)
            .await
            .unwrap()
            .expect("in the ledger");
        statuses.push_str(&onboarding_worker::status::render(&record, None, false));
        statuses.push_str(&onboarding_worker::status::render(&record, None, true));
    }
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    assert!(logs.contains("TRACE"), "trace logging was on");
    assert!(logs.contains("sec-mb-ok"), "logs carry request ids");

    let p = &env.settings.providers;
    let mut secrets: Vec<(String, String)> = vec![
        (
            "sharespine password".into(),
            p.sharespine.password.expose().into(),
        ),
        (
            "computestacks admin password".into(),
            p.computestacks.admin_password.expose().into(),
        ),
        (
            "magento password".into(),
            p.magento_bi.password.expose().into(),
        ),
        (
            "magento client secret".into(),
            p.magento_bi.client_secret.expose().into(),
        ),
        (
            "computestacks user password (request)".into(),
            "cs-Us3r pw/+&".into(),
        ),
        (
            "magento MySQL password (request)".into(),
            "mb-Db pw/+&=".into(),
        ),
        (
            "sharespine Basic credentials".into(),
            format!(
                "{}:{}",
                p.sharespine.username,
                p.sharespine.password.expose()
            ),
        ),
        (
            "computestacks admin Basic credentials".into(),
            format!(
                "{}:{}",
                p.computestacks.admin_username,
                p.computestacks.admin_password.expose()
            ),
        ),
    ];
    for t in env.sandbox.magento_bi.issued_tokens() {
        secrets.push(("a magento access token".into(), t));
    }
    for c in env.sandbox.computestacks.api_credentials() {
        let pw = env
            .sandbox
            .computestacks
            .api_credential_password(c.id)
            .unwrap();
        secrets.push(("a computestacks API password".into(), pw.clone()));
        secrets.push((
            "a computestacks API Basic credential".into(),
            format!("{}:{pw}", c.username),
        ));
    }
    assert!(
        secrets.len() >= 12,
        "tokens and API credentials were issued"
    );

    // Dead messages are kept whole (CONTRACT §5), so a request's own password
    // is in its body by design; everything the worker added must be clean.
    let dead_added: String = dead
        .iter()
        .map(|d| {
            format!(
                "{:?} {:?} {:?} {:?} {:?}",
                d.request_id, d.error_kind, d.step, d.reason, d.failed_at
            )
        })
        .collect();
    let dead_bodies: String = dead
        .iter()
        .map(|d| String::from_utf8_lossy(&d.body).to_string())
        .collect();
    let places = [
        ("logs", logs.as_str()),
        ("events", &serde_json::to_string(&events).unwrap()),
        ("dead-letter headers", &dead_added),
        ("/metrics", &metrics),
        ("status output", &statuses),
    ];
    let mut hits = Vec::new();
    for (what, secret) in &secrets {
        for form in forms(secret) {
            for (place, text) in &places {
                if text.contains(&form) {
                    hits.push(format!("{what} in {place}"));
                }
            }
            let worker_secret = !what.contains("(request)");
            if worker_secret && dead_bodies.contains(&form) {
                hits.push(format!("{what} in a dead message body"));
            }
        }
    }
    assert!(hits.is_empty(), "secrets leaked: {hits:#?}");
    let searched: usize = places.iter().map(|(_, t)| t.len()).sum();
    println!(
        "searched {searched} bytes for {} secrets in 3 forms each: no hit",
        secrets.len()
    );
    env.shutdown().await;
}
