//! Wire formats the engine reads and writes: the request (CONTRACT §4), the
//! internal step message, and the events (CONTRACT §5). Serde lives here; the
//! rest of the engine works on the parsed values.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::{valid_request_id, ErrorKind, EventKind, Operation, ProviderId};

/// A request that passed the contract's checks.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub request_id: String,
    pub provider: ProviderId,
    pub operation: Operation,
    pub input: Value,
    pub return_credentials: bool,
}

/// Why a message is not a valid request; `request_id` when one was usable.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub request_id: Option<String>,
    pub provider: Option<ProviderId>,
    pub operation: Option<Operation>,
    pub message: String,
}

/// Deepest JSON nesting accepted; serde_json stops at 128 itself, this keeps
/// the message readable.
const MAX_DEPTH: usize = 64;

fn depth_ok(body: &[u8]) -> bool {
    // Count brackets outside strings; cheap and never recursive.
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in body {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Parses and checks a request body against CONTRACT §4, up to (not including)
/// the provider's own input checks.
pub fn parse_request(body: &[u8], max_body_bytes: usize) -> Result<ValidRequest, Invalid> {
    let invalid = |request_id: Option<String>, message: String| Invalid {
        request_id,
        provider: None,
        operation: None,
        message,
    };
    if body.is_empty() {
        return Err(invalid(None, "the message has no body".into()));
    }
    if body.len() > max_body_bytes {
        return Err(invalid(
            None,
            format!(
                "the body is {} bytes, more than the {} allowed",
                body.len(),
                max_body_bytes
            ),
        ));
    }
    if !depth_ok(body) {
        return Err(invalid(
            None,
            format!("the body nests JSON deeper than {MAX_DEPTH} levels"),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(None, format!("the body is not JSON: {}", e)))?;
    let Value::Object(obj) = value else {
        return Err(invalid(None, "the body is not a JSON object".into()));
    };
    let request_id = match obj.get("request_id") {
        Some(Value::String(s)) if valid_request_id(s) => s.clone(),
        Some(Value::String(_)) => {
            return Err(invalid(
                None,
                "request_id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -".into(),
            ))
        }
        Some(_) => return Err(invalid(None, "request_id must be a string".into())),
        None => return Err(invalid(None, "request_id is missing".into())),
    };
    let rid = Some(request_id.clone());
    let provider = match obj.get("provider") {
        Some(Value::String(s)) => ProviderId::parse(s).ok_or_else(|| {
            invalid(
                rid.clone(),
                format!(
                    "unknown provider {:?}: expected magento_bi, computestacks or sharespine",
                    clip(s)
                ),
            )
        })?,
        Some(_) => return Err(invalid(rid, "provider must be a string".into())),
        None => return Err(invalid(rid, "provider is missing".into())),
    };
    let operation = match obj.get("operation") {
        None | Some(Value::Null) => Operation::Onboard,
        Some(Value::String(s)) => Operation::parse(s).ok_or_else(|| Invalid {
            request_id: rid.clone(),
            provider: Some(provider),
            operation: None,
            message: format!(
                "unknown operation {:?}: expected onboard or login_url",
                clip(s)
            ),
        })?,
        Some(_) => {
            return Err(Invalid {
                request_id: rid,
                provider: Some(provider),
                operation: None,
                message: "operation must be a string".into(),
            })
        }
    };
    let input = match obj.get("input") {
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(Invalid {
                request_id: rid,
                provider: Some(provider),
                operation: Some(operation),
                message: "input must be an object".into(),
            })
        }
        None => {
            return Err(Invalid {
                request_id: rid,
                provider: Some(provider),
                operation: Some(operation),
                message: "input is missing".into(),
            })
        }
    };
    let return_credentials = match obj.get("return_credentials") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Invalid {
                request_id: rid,
                provider: Some(provider),
                operation: Some(operation),
                message: "return_credentials must be true or false".into(),
            })
        }
    };
    Ok(ValidRequest {
        request_id,
        provider,
        operation,
        input,
        return_credentials,
    })
}

/// Quotes at most 64 characters of caller text in a message.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// The internal message that carries a request from one step to the next.
/// Small on purpose: input and outputs live in the ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMessage {
    pub request_id: String,
    pub provider: String,
    /// Position in the request's chain of messages; older copies are stale.
    pub seq: i64,
    /// Index into the provider's plan.
    pub step: u32,
    /// Transient failures of this step so far.
    #[serde(default)]
    pub attempt: u32,
    /// "Not yet" answers of this poll step so far.
    #[serde(default)]
    pub polls: u32,
    /// When this poll step times out (ms since epoch), fixed at its first poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_deadline_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_state: Option<Value>,
    /// Not to be run before this (ms since epoch); a delay tier may deliver early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
}

impl StepMessage {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("step message serialises")
    }
}

/// `error` of a failed event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventError {
    pub kind: String,
    pub step: Option<String>,
    pub http_status: Option<u16>,
    pub message: String,
}

/// An event of CONTRACT §5.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub event: String,
    pub request_id: Option<String>,
    pub provider: Option<String>,
    pub operation: Option<String>,
    pub occurred_at: String,
    pub duration_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// For a step done once per list entry (Sharespine's users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_index: Option<u32>,
    pub outputs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
}

impl Event {
    pub fn new(
        kind: EventKind,
        request_id: Option<&str>,
        provider: Option<ProviderId>,
        operation: Option<Operation>,
    ) -> Event {
        Event {
            event: kind.as_str().into(),
            request_id: request_id.map(Into::into),
            provider: provider.map(|p| p.as_str().into()),
            operation: operation.map(|o| o.as_str().into()),
            occurred_at: now_rfc3339(),
            duration_ms: 0,
            step: None,
            step_index: None,
            outputs: Map::new(),
            error: None,
        }
    }

    pub fn failed(
        mut self,
        kind: ErrorKind,
        step: Option<&str>,
        http_status: Option<u16>,
        message: String,
    ) -> Event {
        self.error = Some(EventError {
            kind: kind.as_str().into(),
            step: step.map(Into::into),
            http_status,
            message,
        });
        self
    }

    /// `<provider>.<event>`; `unknown.failed` for a message naming no known provider.
    pub fn routing_key(&self) -> String {
        format!(
            "{}.{}",
            self.provider.as_deref().unwrap_or("unknown"),
            self.event
        )
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("event serialises")
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expect: Result<(), &str>, why: &str) {
        let got = parse_request(body.as_bytes(), 1024 * 1024);
        match (got, expect) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(fragment)) => assert!(
                e.message.contains(fragment),
                "{why}: {:?} lacks {fragment:?}",
                e.message
            ),
            (got, expect) => panic!("{why}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn requests_are_checked_as_the_contract_says() {
        let ok = r#"{"request_id":"r-1","provider":"sharespine","input":{}}"#;
        check(ok, Ok(()), "operation defaults to onboard");
        check("", Err("no body"), "empty body");
        check("not json", Err("not JSON"), "not JSON");
        check("[1,2]", Err("not a JSON object"), "an array");
        check(
            r#"{"provider":"sharespine","input":{}}"#,
            Err("request_id is missing"),
            "no request_id",
        );
        check(
            r#"{"request_id":"a b","provider":"sharespine","input":{}}"#,
            Err("1 to 128"),
            "space in request_id",
        );
        check(
            r#"{"request_id":7,"provider":"sharespine","input":{}}"#,
            Err("request_id must be a string"),
            "number as request_id",
        );
        check(
            r#"{"request_id":"r","provider":"acme","input":{}}"#,
            Err("unknown provider \"acme\""),
            "unknown provider",
        );
        check(
            r#"{"request_id":"r","provider":"sharespine","operation":"delete","input":{}}"#,
            Err("unknown operation"),
            "unknown operation",
        );
        check(
            r#"{"request_id":"r","provider":"sharespine"}"#,
            Err("input is missing"),
            "no input",
        );
        check(
            r#"{"request_id":"r","provider":"sharespine","input":[]}"#,
            Err("input must be an object"),
            "input array",
        );
        check(
            &format!("{}{}", "[".repeat(100), "]".repeat(100)),
            Err("deeper than"),
            "deep nesting",
        );
    }

    #[test]
    fn a_body_over_the_limit_is_invalid_without_being_parsed() {
        let big = format!(
            r#"{{"request_id":"r","provider":"sharespine","input":{{"x":"{}"}}}}"#,
            "a".repeat(2000)
        );
        let err = parse_request(big.as_bytes(), 1000).unwrap_err();
        assert!(
            err.message.contains("more than the 1000 allowed"),
            "{}",
            err.message
        );
        assert_eq!(err.request_id, None);
    }

    #[test]
    fn an_invalid_request_keeps_its_usable_id() {
        let err = parse_request(
            br#"{"request_id":"r-9","provider":"acme","input":{}}"#,
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(err.request_id.as_deref(), Some("r-9"));
    }

    #[test]
    fn step_message_round_trips() {
        let m = StepMessage {
            request_id: "r".into(),
            provider: "sharespine".into(),
            seq: 3,
            step: 1,
            attempt: 2,
            polls: 0,
            poll_deadline_ms: Some(5),
            poll_state: None,
            not_before_ms: None,
        };
        assert_eq!(
            serde_json::from_slice::<StepMessage>(&m.to_bytes()).unwrap(),
            m
        );
    }
}
