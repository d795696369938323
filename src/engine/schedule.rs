//! When a step runs again: exponential back-off with full jitter for transient
//! failures (never sooner than the provider's `Retry-After`), and the growing
//! poll interval, cut at the poll deadline. Pure functions, tested exactly.

use std::time::Duration;

use rand::Rng;

use super::step::RetryPolicy;

/// The wait before retry number `attempt` (1 for the first retry): drawn
/// uniformly from `0..=min(cap, base * 2^(attempt-1))`, then raised to `retry_after`.
pub fn retry_delay(
    policy: &RetryPolicy,
    attempt: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let exp =
        policy.base.as_millis() as u64 * 2u64.saturating_pow(attempt.saturating_sub(1).min(32));
    let ceiling = exp.min(policy.cap.as_millis() as u64);
    let drawn = Duration::from_millis(rng.random_range(0..=ceiling));
    drawn.max(retry_after.unwrap_or_default())
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
                let d = retry_delay(&policy(), attempt, None, &mut rng);
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
            .map(|_| retry_delay(&policy(), 4, None, &mut rng).as_millis())
            .collect();
        assert!(ds.iter().any(|&d| d < 200), "some short delays");
        assert!(ds.iter().any(|&d| d > 600), "some long delays");
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let d = retry_delay(&policy(), 1, Some(Duration::from_secs(1)), &mut rng);
            assert!(d >= Duration::from_secs(1), "{d:?}");
        }
    }
}
