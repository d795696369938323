//! The three providers, each in its own folder, each implementing the engine's
//! [`Provider`](crate::engine::step::Provider) trait over the shared
//! [`http::HttpClient`]. Providers never import the broker or the ledger.

pub mod computestacks;
pub mod http;
pub mod magento_bi;
pub mod sharespine;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::ProvidersSettings;
use crate::domain::ProviderId;
pub use crate::engine::step::Providers;
use crate::metrics::Metrics;

/// Builds every provider from its settings.
pub fn build_all(settings: &ProvidersSettings, metrics: &Metrics) -> Providers {
    let mut map: Providers = HashMap::new();
    map.insert(
        ProviderId::Sharespine,
        Arc::new(sharespine::Sharespine::new(
            &settings.sharespine,
            metrics.clone(),
        )),
    );
    map.insert(
        ProviderId::Computestacks,
        Arc::new(computestacks::ComputeStacks::new(
            &settings.computestacks,
            metrics.clone(),
        )),
    );
    map.insert(
        ProviderId::MagentoBi,
        Arc::new(magento_bi::MagentoBi::new(
            &settings.magento_bi,
            metrics.clone(),
        )),
    );
    map
}

/// Converts a `[providers.X.polls.STEP]` table into the engine's policy.
pub fn poll_policy(p: &crate::config::PollSettings) -> crate::engine::step::PollPolicy {
    use std::time::Duration;
    crate::engine::step::PollPolicy {
        interval: Duration::from_millis(p.interval_ms),
        growth: p.growth,
        max_interval: Duration::from_millis(p.max_interval_ms),
        deadline: Duration::from_millis(p.deadline_ms),
    }
}

/// Converts `[providers.X.calls]` into the engine's retry policy.
pub fn retry_policy(c: &crate::config::CallSettings) -> crate::engine::step::RetryPolicy {
    use std::time::Duration;
    crate::engine::step::RetryPolicy {
        max_attempts: c.max_attempts.get(),
        base: Duration::from_millis(c.retry_base_ms),
        cap: Duration::from_millis(c.retry_cap_ms),
    }
}

/// What a JSON value is, for a message: its shape and, for an object, up to six
/// field names (names only, and only when they look like names). Never a value.
pub fn describe(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(_) => "a boolean".into(),
        serde_json::Value::Number(_) => "a number".into(),
        serde_json::Value::String(_) => "a string".into(),
        serde_json::Value::Array(items) => list_of(items.len()),
        serde_json::Value::Object(map) if map.is_empty() => "an empty object".into(),
        serde_json::Value::Object(map) => {
            let names: Vec<&str> = map
                .keys()
                .filter(|k| {
                    k.len() <= 40
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                })
                .map(String::as_str)
                .take(6)
                .collect();
            let more = if map.len() > names.len() { ", ..." } else { "" };
            if names.is_empty() {
                format!("an object with {} fields", map.len())
            } else {
                format!("an object with fields {}{more}", names.join(", "))
            }
        }
    }
}

/// "an empty list", "a list of 1 item", "a list of N items".
pub fn list_of(n: usize) -> String {
    match n {
        0 => "an empty list".into(),
        1 => "a list of 1 item".into(),
        n => format!("a list of {n} items"),
    }
}
