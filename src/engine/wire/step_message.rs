//! The internal step message: what carries a request from one step to the
//! next, read once into a typed [`StepMessage`] or an [`UnreadableStep`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::ProviderId;

/// The internal message that carries a request from one step to the next.
/// Small on purpose: input and outputs live in the ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMessage {
    pub request_id: String,
    pub provider: ProviderId,
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
    /// `Some(null)` stays `Some(null)` through a round trip: a provider's state
    /// is handed back exactly as it was kept.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_value"
    )]
    pub poll_state: Option<Value>,
    /// Not to be run before this (ms since epoch); a delay tier may deliver early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
    /// The previous attempt timed out or broke off after the call was sent:
    /// the provider may have acted on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uncertain: bool,
    /// The request's `accepted` event is still to be published, before
    /// anything else of it: set on the message that starts a request, cleared
    /// on every message after the event was confirmed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub announce: bool,
    /// Times the broker refused (nacked) a publish of this step's outcome in
    /// a row; the onboarding is held back longer each time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held: u32,
    /// The lease holder this message found gone once: taken over if it is
    /// still gone when asked again, a moment later (a database restart drops
    /// every worker's liveness lock until the worker takes it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_holder: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A member that is there is `Some`, even when it is `null` (serde's `Option`
/// would read `null` as absent).
fn present_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Why a delivery on a step queue is no step message this worker can run.
/// Only the worker writes step messages: one that can't be read is kept for a human.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableStep {
    /// A step message in every other respect, naming a provider this
    /// worker does not know.
    #[error("step message for unknown provider {provider:?}")]
    UnknownProvider {
        request_id: String,
        provider: String,
    },
    #[error("unreadable internal step message: {0}")]
    Unreadable(serde_json::Error),
}

impl UnreadableStep {
    /// The request the message names, when it names one usably.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            UnreadableStep::UnknownProvider { request_id, .. } => Some(request_id),
            UnreadableStep::Unreadable(_) => None,
        }
    }
}

impl StepMessage {
    /// The message that starts `request_id`'s chain at its first step.
    pub fn first(request_id: &str, provider: ProviderId) -> StepMessage {
        StepMessage {
            request_id: request_id.into(),
            provider,
            seq: 0,
            step: 0,
            attempt: 0,
            polls: 0,
            poll_deadline_ms: None,
            poll_state: None,
            not_before_ms: None,
            uncertain: false,
            announce: false,
            held: 0,
            gone_holder: None,
        }
    }

    pub fn from_bytes(body: &[u8]) -> Result<StepMessage, UnreadableStep> {
        serde_json::from_slice(body)
            .map_err(|e| unknown_provider(body).unwrap_or(UnreadableStep::Unreadable(e)))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("step message serialises")
    }
}

/// A body that would be a step message but for its provider's name: read
/// again with a known provider in its place.
fn unknown_provider(body: &[u8]) -> Option<UnreadableStep> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let provider = v.get("provider")?.as_str()?.to_string();
    if ProviderId::parse(&provider).is_some() {
        return None;
    }
    v["provider"] = Value::from(ProviderId::ALL[0].as_str());
    let m: StepMessage = serde_json::from_value(v).ok()?;
    Some(UnreadableStep::UnknownProvider {
        request_id: m.request_id,
        provider,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::wire::strategies::json_value;
    use proptest::prelude::*;

    const VALID_ID: &str = "[A-Za-z0-9._:-]{1,128}";

    #[test]
    fn a_body_is_read_as_a_step_message_or_says_why_not() {
        for (body, expect, why) in [
            (
                r#"{"request_id":"r","provider":"sharespine","seq":2,"step":1}"#,
                "ok sharespine",
                "a step message",
            ),
            (
                r#"{"request_id":"r","provider":"acme","seq":2,"step":1}"#,
                "step message for unknown provider \"acme\"",
                "an unknown provider",
            ),
            (
                r#"{"request_id":"r","provider":"Sharespine","seq":2,"step":1}"#,
                "step message for unknown provider \"Sharespine\"",
                "a provider's name in the wrong case",
            ),
            (
                r#"{"request_id":"r","provider":"acme","step":1}"#,
                "unreadable internal step message: ",
                "an unknown provider and no seq",
            ),
            (
                r#"{"request_id":"r","provider":7,"seq":2,"step":1}"#,
                "unreadable internal step message: ",
                "a provider that is not text",
            ),
            ("not json", "unreadable internal step message: ", "not JSON"),
        ] {
            let got = match StepMessage::from_bytes(body.as_bytes()) {
                Ok(m) => format!("ok {}", m.provider),
                Err(e) => e.to_string(),
            };
            assert!(got.starts_with(expect), "{why}: {got:?}");
        }
        let e =
            StepMessage::from_bytes(br#"{"request_id":"r-1","provider":"acme","seq":0,"step":0}"#)
                .unwrap_err();
        assert_eq!(e.request_id(), Some("r-1"));
    }

    #[test]
    fn step_message_round_trips() {
        let m = StepMessage {
            request_id: "r".into(),
            provider: ProviderId::Sharespine,
            seq: 3,
            step: 1,
            attempt: 2,
            polls: 0,
            poll_deadline_ms: Some(5),
            poll_state: None,
            not_before_ms: None,
            uncertain: false,
            announce: false,
            held: 0,
            gone_holder: None,
        };
        assert_eq!(
            serde_json::from_slice::<StepMessage>(&m.to_bytes()).unwrap(),
            m
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_step_message_round_trips(
            request_id in VALID_ID,
            provider in prop::sample::select(ProviderId::ALL.to_vec()),
            seq in any::<i64>(),
            step in any::<u32>(),
            attempt in any::<u32>(),
            polls in any::<u32>(),
            poll_deadline_ms in any::<Option<i64>>(),
            poll_state in prop::option::of(json_value()),
            not_before_ms in any::<Option<i64>>(),
            uncertain in any::<bool>(),
            announce in any::<bool>(),
            held in any::<u32>(),
        ) {
            let m = StepMessage {
                request_id, provider, seq, step, attempt, polls,
                poll_deadline_ms, poll_state, not_before_ms, uncertain, announce, held,
                gone_holder: None,
            };
            let back: StepMessage = serde_json::from_slice(&m.to_bytes()).unwrap();
            prop_assert_eq!(back, m);
        }
    }

    #[test]
    fn a_poll_state_of_null_stays_null() {
        let m = StepMessage {
            request_id: "r".into(),
            provider: ProviderId::MagentoBi,
            seq: 1,
            step: 1,
            attempt: 0,
            polls: 1,
            poll_deadline_ms: None,
            poll_state: Some(Value::Null),
            not_before_ms: None,
            uncertain: false,
            announce: false,
            held: 0,
            gone_holder: None,
        };
        let back: StepMessage = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(back.poll_state, Some(Value::Null));
        let absent: StepMessage = serde_json::from_str(
            r#"{"request_id":"r","provider":"computestacks","seq":0,"step":0}"#,
        )
        .unwrap();
        assert_eq!(absent.poll_state, None);
    }
}
