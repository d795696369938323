//! The events of CONTRACT §5, as published to `onboarding.events` and kept
//! as a request's final event in the ledger.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::{ErrorKind, EventKind, Operation, ProviderId};

/// `error` of a failed event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventError {
    pub kind: ErrorKind,
    pub step: Option<String>,
    pub http_status: Option<u16>,
    pub message: String,
}

/// An event of CONTRACT §5.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub event: EventKind,
    pub request_id: Option<String>,
    /// `None` for a message that names no known provider.
    pub provider: Option<ProviderId>,
    pub operation: Option<Operation>,
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
            event: kind,
            request_id: request_id.map(Into::into),
            provider,
            operation,
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
            kind,
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
            self.provider.map_or("unknown", ProviderId::as_str),
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
    use crate::engine::wire::strategies::json_map;
    use proptest::prelude::*;

    /// The event as it was before its members were typed: every string the
    /// contract allows, written as text.
    #[derive(Serialize)]
    struct TextEvent {
        event: String,
        request_id: Option<String>,
        provider: Option<String>,
        operation: Option<String>,
        occurred_at: String,
        duration_ms: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        step_index: Option<u32>,
        outputs: Map<String, Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<TextError>,
    }

    #[derive(Serialize)]
    struct TextError {
        kind: String,
        step: Option<String>,
        http_status: Option<u16>,
        message: String,
    }

    #[test]
    fn typed_events_are_byte_for_byte_the_contract_strings() {
        let providers = ProviderId::ALL.map(Some).into_iter().chain([None]);
        let mut seen = 0;
        for provider in providers {
            for operation in Operation::ALL.map(Some).into_iter().chain([None]) {
                for event in EventKind::ALL {
                    for kind in ErrorKind::ALL.map(Some).into_iter().chain([None]) {
                        let mut e = Event::new(event, Some("r-1"), provider, operation);
                        if let Some(kind) = kind {
                            e = e.failed(kind, Some("create_user"), Some(409), "no".into());
                        }
                        let text = TextEvent {
                            event: event.as_str().into(),
                            request_id: Some("r-1".into()),
                            provider: provider.map(|p| p.as_str().into()),
                            operation: operation.map(|o| o.as_str().into()),
                            occurred_at: e.occurred_at.clone(),
                            duration_ms: 0,
                            step: None,
                            step_index: None,
                            outputs: Map::new(),
                            error: kind.map(|k| TextError {
                                kind: k.as_str().into(),
                                step: Some("create_user".into()),
                                http_status: Some(409),
                                message: "no".into(),
                            }),
                        };
                        assert_eq!(
                            String::from_utf8(e.to_bytes()).unwrap(),
                            serde_json::to_string(&text).unwrap(),
                        );
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(seen, 4 * 3 * 4 * 6);
        let unknown = Event::new(EventKind::Failed, None, None, None);
        assert_eq!(unknown.routing_key(), "unknown.failed");
        let known = Event::new(
            EventKind::StepCompleted,
            None,
            Some(ProviderId::MagentoBi),
            None,
        );
        assert_eq!(known.routing_key(), "magento_bi.step_completed");
    }

    #[test]
    fn an_event_with_a_word_outside_the_contract_is_refused() {
        let good = r#"{"event":"failed","request_id":"r","provider":"sharespine","operation":"onboard","occurred_at":"t","duration_ms":1,"outputs":{},"error":{"kind":"rejected","step":null,"http_status":null,"message":"m"}}"#;
        assert!(serde_json::from_str::<Event>(good).is_ok());
        for (from, to) in [
            ("\"failed\"", "\"done\""),
            ("\"sharespine\"", "\"acme\""),
            ("\"onboard\"", "\"delete\""),
            ("\"rejected\"", "\"refused\""),
        ] {
            let bad = good.replacen(from, to, 1);
            assert!(serde_json::from_str::<Event>(&bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn an_event_round_trips(
            event in prop::sample::select(EventKind::ALL.to_vec()),
            request_id in prop::option::of(any::<String>()),
            provider in prop::option::of(prop::sample::select(ProviderId::ALL.to_vec())),
            operation in prop::option::of(prop::sample::select(Operation::ALL.to_vec())),
            occurred_at in any::<String>(),
            duration_ms in any::<i64>(),
            step in prop::option::of(any::<String>()),
            step_index in any::<Option<u32>>(),
            outputs in json_map(),
            error in prop::option::of((
                prop::sample::select(ErrorKind::ALL.to_vec()),
                prop::option::of(any::<String>()),
                any::<Option<u16>>(),
                any::<String>(),
            )),
        ) {
            let e = Event {
                event, request_id, provider, operation, occurred_at,
                duration_ms, step, step_index, outputs,
                error: error.map(|(kind, step, http_status, message)| EventError {
                    kind, step, http_status, message,
                }),
            };
            let back: Event = serde_json::from_slice(&e.to_bytes()).unwrap();
            prop_assert_eq!(back, e);
        }
    }
}
