//! A provider's rate limit, shared by every worker: when a provider answers
//! 429 or 503 with `Retry-After`, its steps are held until then, in this
//! worker at once and in every other through the broker (a pause message on
//! `onboarding.control`, which each worker consumes from a queue of its own).
//! Steps of other providers go on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::ProviderId;
use crate::ledger::now_ms;

/// Until when each provider's steps are held (ms since the epoch).
#[derive(Clone, Default)]
pub struct ProviderPauses {
    until: Arc<Mutex<HashMap<ProviderId, i64>>>,
}

impl ProviderPauses {
    /// Holds `provider`'s steps until `until_ms`, unless already held longer.
    /// Returns whether this extended the pause.
    pub fn pause(&self, provider: ProviderId, until_ms: i64) -> bool {
        let mut map = self.until.lock().expect("pauses lock");
        let current = map.entry(provider).or_insert(0);
        if until_ms > *current {
            *current = until_ms;
            true
        } else {
            false
        }
    }

    /// How long `provider`'s steps are still held, in ms (0 when not held).
    pub fn remaining_ms(&self, provider: ProviderId) -> i64 {
        let until = self
            .until
            .lock()
            .expect("pauses lock")
            .get(&provider)
            .copied()
            .unwrap_or(0);
        (until - now_ms()).max(0)
    }
}

/// The message every worker sees: `{"provider": "...", "for_ms": ...}`. The
/// pause's length, not its end: hosts' clocks differ. A provider this worker
/// does not know (a newer worker's) makes the message unreadable, and ignored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PauseMessage {
    pub provider: ProviderId,
    pub for_ms: i64,
}

/// The longest pause a worker takes from another's message.
pub const MAX_PAUSE_MS: i64 = 3_600_000;

impl PauseMessage {
    /// When the pause ends on this host's clock (at most [`MAX_PAUSE_MS`] away).
    pub fn until_ms(&self) -> i64 {
        now_ms() + self.for_ms.clamp(0, MAX_PAUSE_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_only_grows_and_runs_out() {
        let p = ProviderPauses::default();
        let now = now_ms();
        assert_eq!(p.remaining_ms(ProviderId::Sharespine), 0);
        assert!(p.pause(ProviderId::Sharespine, now + 2_000));
        assert!(
            !p.pause(ProviderId::Sharespine, now + 1_000),
            "a shorter pause does not shorten it"
        );
        let left = p.remaining_ms(ProviderId::Sharespine);
        assert!((1_900..=2_000).contains(&left), "{left}");
        assert_eq!(
            p.remaining_ms(ProviderId::Computestacks),
            0,
            "other providers go on"
        );
        assert!(p.pause(ProviderId::Computestacks, now - 10));
        assert_eq!(
            p.remaining_ms(ProviderId::Computestacks),
            0,
            "a pause in the past holds nothing"
        );
    }
}
