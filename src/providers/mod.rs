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
use crate::engine::step::Provider;
use crate::metrics::Metrics;

/// The providers a worker runs, by id.
pub type Providers = HashMap<ProviderId, Arc<dyn Provider>>;

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
        max_attempts: c.max_attempts,
        base: Duration::from_millis(c.retry_base_ms),
        cap: Duration::from_millis(c.retry_cap_ms),
    }
}
