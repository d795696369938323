//! Hostile requests: deep nesting, huge strings and arrays on both sides of the
//! 1 MiB limit, request ids with control characters, of 10 kB or with look-alike
//! letters, values of the wrong JSON type, headers that claim another request,
//! no body at all. Each ends as a `failed` event with `invalid_request`, is kept
//! whole in `onboarding.dead` with a reason an operator can act on, reaches no
//! provider, and the worker goes on.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::{json, Value};

use onboarding_worker::broker::topology;
use onboarding_worker::engine::REPLAY_HEADER;

use crate::support::env::TestEnv;
use crate::support::requests::sharespine_request;

const MIB: usize = 1024 * 1024;

/// One hostile message and what must come of it.
struct Case {
    why: &'static str,
    body: Vec<u8>,
    /// Headers the publisher adds (a forged `request_id`, the replay mark, ...).
    headers: Vec<(&'static str, AMQPValue)>,
    /// The request_id the failed event and the dead copy carry: only one the body gave.
    request_id: Option<&'static str>,
    /// Words the reason must contain.
    reason: &'static [&'static str],
}

fn case(
    why: &'static str,
    body: impl Into<Vec<u8>>,
    request_id: Option<&'static str>,
    reason: &'static [&'static str],
) -> Case {
    Case {
        why,
        body: body.into(),
        headers: Vec::new(),
        request_id,
        reason,
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A Sharespine request with `request_id` and `provider` as given (any JSON).
fn request(request_id: Value, provider: Value) -> Vec<u8> {
    json!({
        "request_id": request_id,
        "provider": provider,
        "operation": "onboard",
        "input": {"tenant": {"customerReference": "hostile", "active": true}},
    })
    .to_string()
    .into_bytes()
}

/// `{"request_id":..,"provider":"sharespine","input":{"pad":"xxx…"}}` of exactly `len` bytes,
/// with an unknown provider so that, under the limit, it fails after the size check.
fn padded(request_id: &str, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"request_id":"{request_id}","provider":"nobody","input":{{"pad":""#);
    let tail = r#""}}"#;
    let pad = len - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

fn cases() -> Vec<Case> {
    let deep_object = format!(
        r#"{{"request_id":"deep-object","provider":"sharespine","input":{}1{}}}"#,
        r#"{"a":"#.repeat(200),
        "}".repeat(200)
    );
    let deep_arrays = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let many_users: Vec<Value> = (0..20_000)
        .map(|i| json!({"login": format!("user{i}"), "email": "u@example.test"}))
        .chain([json!({"email": "no-login@example.test"})])
        .collect();
    let mut forged_invalid = case(
        "no request_id in the body, one in the headers",
        json!({"provider": "sharespine", "input": {}}).to_string(),
        None,
        &["request_id", "missing"],
    );
    forged_invalid.headers = vec![
        ("request_id", text("victim-order-1")),
        (REPLAY_HEADER, AMQPValue::Boolean(true)),
        ("x-onboarding-reason", text("all is well")),
    ];
    let mut forged_other = case(
        "the body's request_id differs from the header's",
        request(json!("hostile-own-id"), json!("acme")),
        Some("hostile-own-id"),
        &["unknown provider", "acme"],
    );
    forged_other.headers = vec![("request_id", text("victim-order-2"))];
    // Headers that fill the publisher's frame: the dead copy cannot add its
    // reason to them and stay within one frame, so they are dropped, not the
    // connection (which would bring the message round again and again).
    let mut full_frame = case(
        "a header table that fills a whole AMQP frame",
        json!({"provider": "sharespine", "input": {}, "note": "a frame of headers"}).to_string(),
        None,
        &["request_id", "missing"],
    );
    full_frame.headers = vec![
        ("x-pad", text(&"h".repeat(130_960))),
        ("request_id", text("victim-order-4")),
    ];
    let mut forged_unusable = case(
        "an unusable request_id in the body, a usable one in a header table",
        request(json!("bad id"), json!("sharespine")),
        None,
        &["request_id", "1 to 128", "' '"],
    );
    forged_unusable.headers = vec![(
        "request_id",
        AMQPValue::FieldTable({
            let mut t = FieldTable::default();
            t.insert("id".into(), text("victim-order-3"));
            t
        }),
    )];

    vec![
        // Nesting and size.
        case("objects nested 200 deep", deep_object, None, &["nests", "deeper than 64"]),
        case("arrays nested 100 000 deep", deep_arrays, None, &["nests", "deeper than 64"]),
        case(
            "a 900 kB request_id",
            request(json!("r".repeat(900_000)), json!("sharespine")),
            None,
            &["request_id", "1 to 128", "900000 characters long"],
        ),
        case(
            "a 900 kB provider name",
            request(json!("hostile-long-provider"), json!("p".repeat(900_000))),
            Some("hostile-long-provider"),
            &["unknown provider", "expected magento_bi, computestacks or sharespine"],
        ),
        case(
            "an input that is a 400 000 element array",
            format!(
                r#"{{"request_id":"hostile-huge-array","provider":"sharespine","input":[{}0]}}"#,
                "0,".repeat(400_000)
            ),
            Some("hostile-huge-array"),
            &["input must be an object", "array"],
        ),
        case(
            "20 001 users, the last without a login",
            json!({"request_id": "hostile-many-users", "provider": "sharespine",
                   "input": {"tenant": {"customerReference": "many"}, "users": many_users}})
            .to_string(),
            Some("hostile-many-users"),
            &["input.users[20000].login", "missing"],
        ),
        case(
            "exactly 1 MiB (allowed, then refused for its provider)",
            padded("hostile-exactly-1mib", MIB),
            Some("hostile-exactly-1mib"),
            &["unknown provider", "nobody"],
        ),
        case(
            "1 MiB and one byte",
            padded("hostile-1mib-plus-1", MIB + 1),
            None,
            &["1048577 bytes", "more than the 1048576 allowed"],
        ),
        case(
            "a 1.5 MiB array",
            format!("[{}0]", "0,".repeat(MIB * 3 / 4)),
            None,
            &["more than the 1048576 allowed"],
        ),
        // The request_id.
        case(
            "a request_id with control characters",
            request(json!("evt-\u{7}\u{1b}[2J\r\nFAKE LOG LINE"), json!("sharespine")),
            None,
            &["request_id", "1 to 128", "U+0007", "control"],
        ),
        case(
            "a 10 kB request_id",
            request(json!("k".repeat(10_000)), json!("sharespine")),
            None,
            &["request_id", "10000 characters long"],
        ),
        case(
            "a Cyrillic 'а' in the request_id",
            request(json!("billing-evt-0001\u{430}"), json!("sharespine")),
            None,
            &["request_id", "character 17", "U+0430", "not plain ASCII"],
        ),
        case(
            "request_id given twice",
            r#"{"request_id":"hostile-a","request_id":"hostile-b","provider":"sharespine","input":{}}"#,
            None,
            &["request_id twice"],
        ),
        // Look-alikes and wrong types.
        case(
            "a Cyrillic 'а' in \"sharespine\"",
            request(json!("hostile-cyrillic-provider"), json!("sh\u{430}respine")),
            Some("hostile-cyrillic-provider"),
            &["unknown provider", "character 3", "U+0430", "not plain ASCII"],
        ),
        case(
            "a right-to-left override in the provider",
            request(json!("hostile-bidi-provider"), json!("\u{202e}enipserahs")),
            Some("hostile-bidi-provider"),
            &["unknown provider", "U+202E", "invisible"],
        ),
        case(
            "a number as request_id",
            request(json!(12345), json!("sharespine")),
            None,
            &["request_id must be a string", "not a number"],
        ),
        case(
            "a number as provider",
            request(json!("hostile-number-provider"), json!(3)),
            Some("hostile-number-provider"),
            &["provider must be a string", "not a number"],
        ),
        case(
            "provider: null",
            request(json!("hostile-null-provider"), Value::Null),
            Some("hostile-null-provider"),
            &["provider must be a string", "not null"],
        ),
        case(
            "a number as customerReference",
            json!({"request_id": "hostile-number-reference", "provider": "sharespine",
                   "input": {"tenant": {"customerReference": 42}}})
            .to_string(),
            Some("hostile-number-reference"),
            &["input.tenant.customerReference", "must be a string"],
        ),
        // Not a request object at all.
        case("no body", Vec::new(), None, &["no body"]),
        case("a JSON string", r#""onboard me""#, None, &["not an object", "a string"]),
        case("a JSON number", "42", None, &["not an object", "a number"]),
        case("JSON null", "null", None, &["not an object", "null"]),
        case(
            "a byte-order mark before the JSON",
            [
                &b"\xEF\xBB\xBF"[..],
                &request(json!("hostile-bom"), json!("sharespine")),
            ]
            .concat(),
            None,
            &["not JSON", "byte-order mark"],
        ),
        case(
            "bytes that are not UTF-8",
            &b"{\"request_id\":\"hostile-latin1\",\"provider\":\"sharespine\",\"input\":{\"n\":\"M\xFCller\"}}"[..],
            None,
            &["not UTF-8", "byte 71"],
        ),
        // Headers that claim another request.
        forged_invalid,
        forged_other,
        forged_unusable,
        full_frame,
    ]
}

/// Publishes as a billing system would, with `headers` added.
async fn publish(conn: &Connection, body: &[u8], headers: &[(&'static str, AMQPValue)]) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if !headers.is_empty() {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        props = props.with_headers(table);
    }
    let confirm = ch
        .basic_publish(
            topology::REQUESTS_EXCHANGE.into(),
            "hostile".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");
    let _ = ch.close(200, "published".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_fail_as_invalid_request_and_the_worker_goes_on() {
    let env = TestEnv::start().await;
    let conn = Connection::connect(&env.vhost.amqp_url(), ConnectionProperties::default())
        .await
        .expect("publisher connects");
    let cases = cases();
    for c in &cases {
        publish(&conn, &c.body, &c.headers).await;
    }
    // The worker goes on: a valid request after them completes.
    env.publish(&sharespine_request(
        "after-the-hostile-ones",
        "survivor",
        &["anna"],
        None,
    ))
    .await;
    let ok = env
        .final_event("after-the-hostile-ones", Duration::from_secs(60))
        .await;
    assert_eq!(ok["event"], "completed", "{ok:#}");

    let events = env.drain_events(Duration::from_millis(500)).await;
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "failed").collect();
    let dead = env.dead().await;
    for c in &cases {
        let why = c.why;
        let d = dead
            .iter()
            .find(|d| d.body == c.body)
            .unwrap_or_else(|| panic!("{why}: not kept whole in onboarding.dead"));
        assert_eq!(d.error_kind.as_deref(), Some("invalid_request"), "{why}");
        let reason = d.reason.clone().unwrap_or_default();
        for word in c.reason {
            assert!(
                reason.contains(word),
                "{why}: reason {reason:?} lacks {word:?}"
            );
        }
        assert!(
            reason.chars().count() <= 300,
            "{why}: a short reason: {reason:?}"
        );
        assert!(
            !reason.chars().any(char::is_control),
            "{why}: no control character in {reason:?}"
        );
        assert!(
            !reason.contains(&"x".repeat(80))
                && !reason.contains(&"p".repeat(80))
                && !reason.contains(&"k".repeat(80)),
            "{why}: caller text is clipped: {reason:?}"
        );
        assert_eq!(
            d.request_id.as_deref(),
            c.request_id,
            "{why}: the dead copy's request_id is the body's, never a header's"
        );
        let e = failed
            .iter()
            .find(|e| {
                e["error"]["message"] == reason.as_str() && e["request_id"] == json!(c.request_id)
            })
            .unwrap_or_else(|| panic!("{why}: no failed event with reason {reason:?}"));
        assert_eq!(e["error"]["kind"], "invalid_request", "{why}");
        assert!(e["error"]["step"].is_null(), "{why}");
    }
    assert_eq!(
        failed.len(),
        cases.len(),
        "one failed event each: {failed:#?}"
    );
    assert_eq!(dead.len(), cases.len(), "each one in onboarding.dead");

    // No forged id shows anywhere, and an operator's replay by it finds nothing.
    for victim in [
        "victim-order-1",
        "victim-order-2",
        "victim-order-3",
        "victim-order-4",
    ] {
        assert!(
            events.iter().all(|e| e["request_id"] != victim),
            "{victim} in an event"
        );
        assert!(
            dead.iter().all(|d| d.request_id.as_deref() != Some(victim)),
            "{victim} as a dead copy's request_id"
        );
        let replayed = env.admin.dead_replay(Some(victim)).await.unwrap();
        assert!(
            replayed.is_empty(),
            "replay by {victim} picked {replayed:?}"
        );
    }
    assert_eq!(env.dead().await.len(), cases.len(), "nothing was replayed");

    // No provider call for any of them: only the valid onboarding's.
    assert!(
        env.sandbox.computestacks.knobs.all_calls().is_empty(),
        "computestacks called: {:?}",
        env.sandbox.computestacks.knobs.all_calls()
    );
    assert!(
        env.sandbox.magento_bi.knobs.all_calls().is_empty(),
        "magento_bi called: {:?}",
        env.sandbox.magento_bi.knobs.all_calls()
    );
    let calls = env.sandbox.sharespine.knobs.all_calls();
    assert_eq!(
        calls.get("POST /reseller/tenant"),
        Some(&1),
        "one tenant, the valid request's: {calls:?}"
    );
    assert_eq!(env.sandbox.sharespine.tenants().len(), 1);
    // Nothing went back to the queue to come round again.
    assert_eq!(
        env.vhost.queue_counts(topology::REQUESTS_QUEUE).await,
        (0, 0)
    );
    let _ = conn.close(200, "done".into()).await;
    env.shutdown().await;
}
