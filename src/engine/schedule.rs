//! When a step runs again: exponential back-off with full jitter for transient
//! failures (never sooner than the provider's `Retry-After`), the hold-back
//! after a nack and the pause before a failed delivery goes back. Pure
//! functions (randomness is passed in), tested exactly.

use std::time::Duration;

use rand::Rng;

use super::step::RetryPolicy;

/// The wait before retry number `attempt` (1 for the first retry): the point
/// `jitter` (drawn uniformly from `0.0..=1.0` by the caller) of
/// `0..=min(cap, base * 2^(attempt-1))`, then raised to `retry_after`.
pub fn retry_delay(
    policy: &RetryPolicy,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let exp =
        policy.base.as_millis() as u64 * 2u64.saturating_pow(attempt.saturating_sub(1).min(32));
    let ceiling = exp.min(policy.cap.as_millis() as u64);
    let drawn = Duration::from_millis((ceiling as f64 * jitter.clamp(0.0, 1.0)).round() as u64);
    drawn.max(retry_after.unwrap_or_default())
}

/// How long an onboarding is held back after the broker refused (nacked) one
/// of its publishes for the `held`-th time in a row (1 for the first): doubling
/// from 200 ms to at most 30 s, the upper half drawn at random so that held
/// onboardings do not all come back at once.
pub fn hold_back_delay(held: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = (200u64 << held.saturating_sub(1).min(16)).min(30_000);
    Duration::from_millis(rng.random_range(ceiling / 2..=ceiling))
}

/// The pause before a delivery whose handling failed goes back to its queue,
/// growing with the broker's delivery count so that a message that keeps
/// failing does not spin: 250 ms doubling to at most 30 s.
pub fn redelivery_pause(delivery_count: u32) -> Duration {
    Duration::from_millis((250u64 << delivery_count.min(16)).min(30_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        }
    }

    #[test]
    fn retry_delays_stay_under_the_growing_ceiling_and_the_cap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (attempt, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            for _ in 0..200 {
                let d = retry_delay(&policy(), attempt, None, rng.random());
                assert!(
                    d <= Duration::from_millis(ceiling),
                    "attempt {attempt}: {d:?} > {ceiling} ms"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_delays_over_the_whole_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ds: Vec<_> = (0..500)
            .map(|_| retry_delay(&policy(), 4, None, rng.random()).as_millis())
            .collect();
        assert!(ds.iter().any(|&d| d < 200), "some short delays");
        assert!(ds.iter().any(|&d| d > 600), "some long delays");
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let d = retry_delay(&policy(), 1, Some(Duration::from_secs(1)), rng.random());
            assert!(d >= Duration::from_secs(1), "{d:?}");
        }
    }

    #[test]
    fn a_refused_publish_holds_back_longer_each_time_up_to_thirty_seconds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (held, low, high) in [
            (1, 100, 200),
            (2, 200, 400),
            (5, 1_600, 3_200),
            (40, 15_000, 30_000),
        ] {
            for _ in 0..100 {
                let d = hold_back_delay(held, &mut rng).as_millis() as u64;
                assert!(
                    (low..=high).contains(&d),
                    "held {held}: {d} ms not in {low}..={high}"
                );
            }
        }
    }

    #[test]
    fn a_failing_delivery_waits_longer_with_each_delivery() {
        for (count, ms) in [(0, 250), (1, 500), (3, 2_000), (7, 30_000), (60, 30_000)] {
            assert_eq!(
                redelivery_pause(count),
                Duration::from_millis(ms),
                "delivery {count}"
            );
        }
    }
}
