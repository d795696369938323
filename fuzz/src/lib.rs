//! One fuzz input is one delivery from `onboarding.requests`, and [`check`] runs
//! it through what the worker does with it before any I/O, asserting what must
//! hold whatever a publisher sends. Shared by the libFuzzer target
//! (`fuzz_targets/front_door.rs`) and the main crate's `tests/fuzz_corpus.rs`
//! (included there with `#[path]`), so the corpus replayed in `cargo test` runs
//! exactly these checks.
//!
//! # Input format
//! `BODY` or `BODY "\0DLV" TRAILER`. Everything before the first `\0DLV` (all
//! of it when there is none) is the message body, byte for byte: a seed file
//! that is a plain JSON request is a delivery with that body and default
//! properties. The trailer, read a byte at a time (zeros past its end), gives:
//! - a flags byte: bit 0 a small body limit (`next byte × 8` instead of 1 MiB),
//!   bit 1 a `content_type`, bit 2 a `message_id`, bit 3 a `correlation_id`,
//!   bit 4 a delivery mode, bit 5 an (empty if no entries) header table;
//! - then those values in that order (texts are a length byte and that many bytes);
//! - a header count byte (`% 9` entries), each a key selector (`request_id`,
//!   the replay mark, the `x-onboarding-*` names the worker writes, `x-death`,
//!   or a text key) and a typed AMQP value (boolean, long and short strings,
//!   integers, a float, a timestamp, void, a nested table, an array).

use std::collections::HashMap;
use std::sync::OnceLock;

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::Value;

use onboarding_worker::broker::{dead_properties, is_replay};
use onboarding_worker::config::Settings;
use onboarding_worker::domain::valid_request_id;
use onboarding_worker::engine::front_door::{dead_reason, failed_event, front_door, Admitted};
use onboarding_worker::engine::wire::{Event, Invalid, StepMessage};
use onboarding_worker::engine::REPLAY_HEADER;
use onboarding_worker::metrics::Metrics;
use onboarding_worker::providers::{build_all, Providers};

/// Separates the body from the trailer that describes the rest of the delivery.
pub const TRAILER: &[u8] = b"\0DLV";

/// The contract's body limit (`amqp.max_body_bytes`'s default).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Reasons are short: a few words, a field path, a clipped quote.
pub const MAX_REASON_CHARS: usize = 400;

/// A delivery as the worker receives it.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub body: &'a [u8],
    pub max_body_bytes: usize,
    pub properties: BasicProperties,
}

/// The providers of a worker built from the default settings (no I/O).
pub fn providers() -> &'static Providers {
    static PROVIDERS: OnceLock<Providers> = OnceLock::new();
    PROVIDERS.get_or_init(|| {
        let settings =
            Settings::load_with_env(None, Some(HashMap::new())).expect("default settings load");
        build_all(&settings.providers, &Metrics::new())
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn bytes(&mut self) -> &'a [u8] {
        let n = (self.byte() as usize).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }
    fn text(&mut self) -> String {
        // A short string holds at most 255 bytes: cut lossy text at a char boundary.
        let mut s = String::from_utf8_lossy(self.bytes()).into_owned();
        while s.len() > 255 {
            s.pop();
        }
        s
    }
    fn short(&mut self) -> ShortString {
        ShortString::try_new(self.text()).expect("at most 255 bytes")
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }
    fn value(&mut self, nested: bool) -> AMQPValue {
        match self.byte() % 11 {
            0 => AMQPValue::Boolean(self.byte() & 1 == 1),
            1 => AMQPValue::LongString(LongString::from(self.bytes().to_vec())),
            2 => AMQPValue::ShortString(self.short()),
            3 => AMQPValue::LongInt(i32::from_le_bytes(self.array())),
            4 => AMQPValue::Void,
            5 if !nested => {
                let mut table = FieldTable::default();
                table.insert("request_id".into(), self.value(true));
                AMQPValue::FieldTable(table)
            }
            6 if !nested => {
                let items = vec![self.value(true), self.value(true)];
                AMQPValue::FieldArray(FieldArray::from(items))
            }
            7 => AMQPValue::LongLongInt(i64::from_le_bytes(self.array())),
            8 => AMQPValue::Double(f64::from_le_bytes(self.array())),
            9 => AMQPValue::Timestamp(u64::from_le_bytes(self.array())),
            _ => AMQPValue::LongString(LongString::from("true")),
        }
    }
    fn key(&mut self) -> ShortString {
        match self.byte() % 8 {
            0 => "request_id".into(),
            1 => REPLAY_HEADER.into(),
            2 => "x-onboarding-reason".into(),
            3 => "x-onboarding-error-kind".into(),
            4 => "x-onboarding-step".into(),
            5 => "x-death".into(),
            6 => "x-onboarding-failed-at".into(),
            _ => self.short(),
        }
    }
}

/// Splits a fuzz input into a delivery (see the module doc).
pub fn decode(data: &[u8]) -> Delivery<'_> {
    let (body, trailer) = match data.windows(TRAILER.len()).position(|w| w == TRAILER) {
        Some(at) => (&data[..at], &data[at + TRAILER.len()..]),
        None => (data, &[][..]),
    };
    let mut r = Reader(trailer);
    let flags = r.byte();
    let max_body_bytes = if flags & 1 != 0 {
        r.byte() as usize * 8
    } else {
        MAX_BODY_BYTES
    };
    let mut properties = BasicProperties::default();
    if flags & 2 != 0 {
        properties = properties.with_content_type(r.short());
    }
    if flags & 4 != 0 {
        properties = properties.with_message_id(r.short());
    }
    if flags & 8 != 0 {
        properties = properties.with_correlation_id(r.short());
    }
    if flags & 16 != 0 {
        properties = properties.with_delivery_mode(r.byte());
    }
    let count = r.byte() % 9;
    if flags & 32 != 0 || count > 0 {
        let mut headers = FieldTable::default();
        for _ in 0..count {
            let key = r.key();
            let value = r.value(false);
            headers.insert(key, value);
        }
        properties = properties.with_headers(headers);
    }
    Delivery {
        body,
        max_body_bytes,
        properties,
    }
}

/// Decodes `data` and runs [`check_delivery`].
pub fn check(data: &[u8]) -> Result<Admitted, Invalid> {
    check_delivery(&decode(data))
}

/// What the worker decides for `d`, after asserting everything that must hold
/// for any delivery; panics (a fuzzer finding) when something does not.
pub fn check_delivery(d: &Delivery<'_>) -> Result<Admitted, Invalid> {
    let headers = d.properties.headers().clone().unwrap_or_default();
    let replay = is_replay(&d.properties);
    if !headers.contains_key(REPLAY_HEADER) {
        assert!(!replay, "a replay mark without the replay header");
    }
    let verdict = front_door(d.body, d.max_body_bytes, providers());
    let again = front_door(d.body, d.max_body_bytes, providers());
    assert_eq!(
        format!("{verdict:?}"),
        format!("{again:?}"),
        "the front door is deterministic"
    );
    // What the body itself says, when it is a JSON object.
    let body_id = serde_json::from_slice::<Value>(d.body).ok().and_then(|v| {
        v.get("request_id")
            .and_then(Value::as_str)
            .map(String::from)
    });
    match &verdict {
        Ok(admitted) => check_admitted(d, admitted, body_id.as_deref()),
        Err(invalid) => check_invalid(d, invalid, body_id.as_deref()),
    }
    verdict
}

fn check_admitted(d: &Delivery<'_>, a: &Admitted, body_id: Option<&str>) {
    assert!(!d.body.is_empty() && d.body.len() <= d.max_body_bytes);
    let id = &a.request.request_id;
    assert!(
        valid_request_id(id),
        "admitted an invalid request_id {id:?}"
    );
    assert_eq!(Some(id.as_str()), body_id, "the request_id is the body's");
    assert!(!a.plan.is_empty(), "an admitted request has steps");

    let first = &a.first;
    assert_eq!(&first.request_id, id);
    assert_eq!(first.provider, a.request.provider);
    assert_eq!(
        (first.seq, first.step, first.attempt, first.polls),
        (0, 0, 0, 0)
    );
    let bytes = first.to_bytes();
    let back: StepMessage = serde_json::from_slice(&bytes).expect("a step message parses");
    assert_eq!(&back, first, "the first step message round-trips");
    assert!(bytes.len() < 512, "a step message stays small");
    let provider = format!("\"provider\":\"{}\"", a.request.provider.as_str());
    assert!(
        String::from_utf8_lossy(&bytes).contains(&provider),
        "the step message names its provider by the contract's name"
    );
}

fn check_invalid(d: &Delivery<'_>, invalid: &Invalid, body_id: Option<&str>) {
    let message = &invalid.message;
    assert!(!message.is_empty(), "an invalid request says why");
    assert!(
        message.chars().count() <= MAX_REASON_CHARS,
        "a reason stays short ({} chars): {message:?}",
        message.chars().count()
    );
    assert!(
        !message.chars().any(char::is_control),
        "no control character in a reason: {message:?}"
    );
    if let Some(id) = &invalid.request_id {
        assert!(valid_request_id(id), "an unusable request_id kept: {id:?}");
        assert_eq!(Some(id.as_str()), body_id, "the request_id is the body's");
    }

    let event = failed_event(invalid);
    assert_eq!(event.event.as_str(), "failed");
    assert_eq!(event.request_id, invalid.request_id);
    let error = event.error.as_ref().expect("a failed event has an error");
    assert_eq!(error.kind.as_str(), "invalid_request");
    assert_eq!(&error.message, message);
    assert_eq!(
        event.routing_key(),
        format!(
            "{}.failed",
            invalid.provider.map(|p| p.as_str()).unwrap_or("unknown")
        )
    );
    let back: Event = serde_json::from_slice(&event.to_bytes()).expect("an event parses");
    assert_eq!(back, event, "the failed event round-trips");

    // The copy in onboarding.dead: the original's properties and headers, the
    // worker's reason, and a request_id header only from the body.
    let dead = dead_properties(Some(&d.properties), &dead_reason(invalid));
    let dead_headers = dead.headers().clone().unwrap_or_default();
    let text = |k: &str| match dead_headers.inner().get(k) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(other) => panic!("{k} header is not text: {other:?}"),
        None => None,
    };
    assert_eq!(
        text("request_id"),
        invalid.request_id,
        "the dead copy's request_id header is the body's, never a header's claim"
    );
    assert!(
        !dead_headers.contains_key(REPLAY_HEADER),
        "a dead copy is not a replay"
    );
    assert_eq!(
        text("x-onboarding-error-kind").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(
        text("x-onboarding-reason").as_deref(),
        Some(message.as_str())
    );
    assert_eq!(
        dead.delivery_mode(),
        &Some(2),
        "the dead copy is persistent"
    );
    assert_eq!(dead.content_type(), d.properties.content_type());
    assert_eq!(dead.message_id(), d.properties.message_id());
    if dead_headers.contains_key("x-onboarding-headers-dropped") {
        return; // Too many bytes of them to keep (not reachable from this input format).
    }
    for (k, v) in d.properties.headers().iter().flat_map(|h| h.inner()) {
        let ours = k.as_str() == "request_id"
            || k.as_str() == REPLAY_HEADER
            || k.as_str().starts_with("x-onboarding-");
        if !ours {
            // Compared as text: a NaN double is kept, yet not equal to itself.
            assert_eq!(
                format!("{:?}", dead_headers.inner().get(k)),
                format!("{:?}", Some(v)),
                "header {k} kept"
            );
        }
    }
}
