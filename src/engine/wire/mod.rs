//! Wire formats the engine reads and writes, one file each: the request
//! (CONTRACT §4, [`request`]), the internal step message ([`step_message`]) and
//! the events (CONTRACT §5, [`event`]). Serde lives here; the rest of the engine
//! works on the parsed, typed values.

mod event;
mod request;
mod step_message;

pub use event::{now_rfc3339, Event, EventError};
pub use request::{parse_request, Invalid, ValidRequest};
pub use step_message::{StepMessage, UnreadableStep};

/// Strategies shared by the wire formats' property tests.
#[cfg(test)]
mod strategies {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    /// Any JSON value, a few levels deep. Floats have at most 15 significant
    /// digits: serde_json without its `float_roundtrip` feature may read an
    /// arbitrary f64 back one ulp off (proptest found -3.2966300866829935e-147),
    /// which these round trips would report; values providers return (ids,
    /// amounts, flags) are far from that.
    pub fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            (-999_999_999_999i64..999_999_999_999, 0u32..6)
                .prop_map(|(n, scale)| json!(n as f64 / 10f64.powi(scale as i32))),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    pub fn json_map() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map(any::<String>(), json_value(), 0..6)
            .prop_map(|m| m.into_iter().collect())
    }
}
