//! The ledger as the worker uses it: [`Resilient`] wraps the ledger of
//! either backend, times every operation into `onboarding_ledger_seconds{op}`,
//! and retries the idempotent ones through a short database outage (so a step
//! whose provider call succeeded is not handed back, and called again,
//! because its record hit a locked file). `accept` is not retried: an insert
//! that committed before its answer was lost would come back as "already
//! known"; nor are `renew` (the next heartbeat is the retry), `ping`,
//! `holder_alive` and `counts`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use serde_json::{Map, Value};

use super::{Accept, Claim, Finish, Ledger, LedgerError, NewRequest, Progress, RequestRecord};
use crate::metrics::{Health, Metrics};

pub struct Resilient {
    inner: Arc<dyn Ledger>,
    metrics: Metrics,
    policy: RetryPolicy,
    /// Marked not ready at the first outage, so `/readyz` says so within
    /// seconds; cleared when a retried operation succeeds (and by the
    /// broker's handlers once the ledger answers).
    health: Health,
}

/// How an idempotent operation is retried.
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    /// How long (wall time from the first try) before the error is returned.
    retry_for: Duration,
    pauses: ExponentialBuilder,
}

/// 20 s; pauses of 50 ms, doubling, at most 2 s; no jitter (the database,
/// not a crowd of clients, is what is waited for).
const THROUGH_AN_OUTAGE: RetryPolicy = RetryPolicy {
    retry_for: Duration::from_secs(20),
    pauses: ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_factor(2.0)
        .with_max_delay(Duration::from_secs(2))
        .without_max_times(),
};

/// A database error (or a failed batch, its text): worth trying again.
/// Corrupt data and a bad URL are not.
fn retryable(e: &LedgerError) -> bool {
    matches!(e, LedgerError::Database(_) | LedgerError::Batch { .. })
}

impl Resilient {
    pub fn wrap(inner: Arc<dyn Ledger>, metrics: Metrics, health: Health) -> Arc<dyn Ledger> {
        Arc::new(Resilient {
            inner,
            metrics,
            policy: THROUGH_AN_OUTAGE,
            health,
        })
    }

    fn timer(&self, op: &str) -> prometheus::HistogramTimer {
        self.metrics
            .ledger_seconds
            .with_label_values(&[op])
            .start_timer()
    }

    /// Runs `op` again after each [`retryable`] error until the policy's
    /// time has passed, marking the ledger down at each outage and up again once
    /// it answers.
    async fn retried<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, LedgerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, LedgerError>>,
    {
        let started = Instant::now();
        let result = op
            .retry(self.policy.pauses)
            .when(|e| retryable(e) && started.elapsed() < self.policy.retry_for)
            .notify(|e, pause| {
                if e.is_outage() {
                    self.health.set_ledger_down(true, &self.metrics);
                }
                tracing::warn!(op = what, error.message = %e, retry_in_ms = pause.as_millis() as u64, "ledger operation failed; retrying");
            })
            .await;
        if result.is_ok() && self.health.ledger_down() {
            self.health.set_ledger_down(false, &self.metrics);
        }
        result
    }
}

#[async_trait]
impl Ledger for Resilient {
    async fn accept(&self, request: &NewRequest) -> Result<Accept, LedgerError> {
        let _t = self.timer("accept");
        self.inner.accept(request).await
    }
    async fn claim(
        &self,
        request_id: &str,
        seq: i64,
        step: u32,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, LedgerError> {
        let _t = self.timer("claim");
        self.retried("claim", || {
            self.inner.claim(request_id, seq, step, owner, lease)
        })
        .await
    }
    async fn record_step(
        &self,
        request_id: &str,
        step_key: &str,
        outputs: &Map<String, Value>,
        secrets: &Map<String, Value>,
        progress: &Progress,
    ) -> Result<(), LedgerError> {
        let _t = self.timer("record_step");
        self.retried("record_step", || {
            self.inner
                .record_step(request_id, step_key, outputs, secrets, progress)
        })
        .await
    }
    async fn finish(&self, request_id: &str, finish: &Finish) -> Result<(), LedgerError> {
        let _t = self.timer("finish");
        self.retried("finish", || self.inner.finish(request_id, finish))
            .await
    }
    async fn advance(
        &self,
        request_id: &str,
        owner: &str,
        next_seq: i64,
        progress: &Progress,
    ) -> Result<(), LedgerError> {
        let _t = self.timer("advance");
        self.retried("advance", || {
            self.inner.advance(request_id, owner, next_seq, progress)
        })
        .await
    }
    async fn renew(
        &self,
        request_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, LedgerError> {
        let _t = self.timer("renew");
        // Not retried: the next heartbeat is the retry.
        self.inner.renew(request_id, owner, lease).await
    }
    async fn abandon(&self, request_id: &str, owner: &str) -> Result<(), LedgerError> {
        let _t = self.timer("abandon");
        self.retried("abandon", || self.inner.abandon(request_id, owner))
            .await
    }
    async fn ping(&self) -> Result<(), LedgerError> {
        self.inner.ping().await
    }
    fn worker_id(&self) -> &str {
        self.inner.worker_id()
    }
    async fn holder_alive(&self, owner: &str) -> Result<bool, LedgerError> {
        let _t = self.timer("holder_alive");
        self.inner.holder_alive(owner).await
    }
    async fn redrive(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let _t = self.timer("redrive");
        self.retried("redrive", || self.inner.redrive(request_id))
            .await
    }
    async fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let _t = self.timer("get");
        self.retried("get", || self.inner.get(request_id)).await
    }
    async fn counts(&self) -> Result<(i64, i64), LedgerError> {
        let _t = self.timer("counts");
        self.inner.counts().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A ledger that fails its first `failures` calls with `error()`.
    struct Flaky {
        failures: usize,
        calls: AtomicUsize,
        error: fn() -> LedgerError,
        /// Whether the ledger was marked down, at each call.
        health: Health,
        seen_down: std::sync::Mutex<Vec<bool>>,
    }

    impl Flaky {
        fn answer(&self) -> Result<(), LedgerError> {
            self.seen_down
                .lock()
                .unwrap()
                .push(self.health.ledger_down());
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                Err((self.error)())
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl Ledger for Flaky {
        async fn accept(&self, _: &NewRequest) -> Result<Accept, LedgerError> {
            self.answer().map(|()| Accept::New { accepted_at_ms: 0 })
        }
        async fn claim(
            &self,
            _: &str,
            _: i64,
            _: u32,
            _: &str,
            _: Duration,
        ) -> Result<Claim, LedgerError> {
            self.answer().map(|()| Claim::Unknown)
        }
        async fn record_step(
            &self,
            _: &str,
            _: &str,
            _: &Map<String, Value>,
            _: &Map<String, Value>,
            _: &Progress,
        ) -> Result<(), LedgerError> {
            self.answer()
        }
        async fn finish(&self, _: &str, _: &Finish) -> Result<(), LedgerError> {
            self.answer()
        }
        async fn advance(&self, _: &str, _: &str, _: i64, _: &Progress) -> Result<(), LedgerError> {
            self.answer()
        }
        async fn renew(&self, _: &str, _: &str, _: Duration) -> Result<bool, LedgerError> {
            self.answer().map(|()| true)
        }
        async fn abandon(&self, _: &str, _: &str) -> Result<(), LedgerError> {
            self.answer()
        }
        async fn ping(&self) -> Result<(), LedgerError> {
            self.answer()
        }
        fn worker_id(&self) -> &str {
            "flaky"
        }
        async fn holder_alive(&self, _: &str) -> Result<bool, LedgerError> {
            self.answer().map(|()| true)
        }
        async fn redrive(&self, _: &str) -> Result<Option<RequestRecord>, LedgerError> {
            self.answer().map(|()| None)
        }
        async fn get(&self, _: &str) -> Result<Option<RequestRecord>, LedgerError> {
            self.answer().map(|()| None)
        }
        async fn counts(&self) -> Result<(i64, i64), LedgerError> {
            self.answer().map(|()| (0, 0))
        }
    }

    fn outage() -> LedgerError {
        LedgerError::Database(sqlx::Error::PoolTimedOut)
    }

    /// The policy's pauses, 10 times shorter, and 200 ms.
    const QUICK: RetryPolicy = RetryPolicy {
        retry_for: Duration::from_millis(200),
        pauses: ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(5))
            .with_factor(2.0)
            .with_max_delay(Duration::from_millis(200))
            .without_max_times(),
    };

    fn wrapped(
        failures: usize,
        error: fn() -> LedgerError,
    ) -> (Arc<Flaky>, Arc<dyn Ledger>, Metrics, Health) {
        let (metrics, health) = (Metrics::new(), Health::default());
        let flaky = Arc::new(Flaky {
            failures,
            calls: AtomicUsize::new(0),
            error,
            health: health.clone(),
            seen_down: Default::default(),
        });
        let ledger = Arc::new(Resilient {
            inner: flaky.clone(),
            metrics: metrics.clone(),
            policy: QUICK,
            health: health.clone(),
        });
        (flaky, ledger, metrics, health)
    }

    #[tokio::test]
    async fn an_outage_is_retried_with_growing_pauses_and_marks_the_ledger_down_meanwhile() {
        let (flaky, ledger, metrics, health) = wrapped(3, outage);
        let started = Instant::now();
        assert!(ledger.get("r1").await.unwrap().is_none());
        // Pauses of 5, 10 and 20 ms.
        assert!(started.elapsed() >= Duration::from_millis(35));
        assert_eq!(
            *flaky.seen_down.lock().unwrap(),
            [false, true, true, true],
            "down from the first failure until it answered"
        );
        assert!(!health.ledger_down());
        assert_eq!(metrics.ledger_unreachable.get(), 0);
        // Timed once, retries included.
        let timed = metrics.ledger_seconds.with_label_values(&["get"]);
        assert_eq!(timed.get_sample_count(), 1);
    }

    #[tokio::test]
    async fn an_outage_is_retried_for_the_policy_s_time_then_returned() {
        let (flaky, ledger, metrics, health) = wrapped(usize::MAX, outage);
        let started = Instant::now();
        let result = ledger
            .record_step("r1", "s", &Map::new(), &Map::new(), &Progress::default())
            .await;
        assert!(
            matches!(result, Err(LedgerError::Database(_))),
            "{result:?}"
        );
        let elapsed = started.elapsed();
        assert!(elapsed >= QUICK.retry_for, "{elapsed:?}");
        assert!(flaky.calls.load(Ordering::SeqCst) >= 5);
        assert!(health.ledger_down(), "still down when given up");
        assert_eq!(metrics.ledger_unreachable.get(), 1);
    }

    #[test]
    fn the_policy_pauses_50_ms_doubling_to_2_s_for_20_s() {
        use backon::BackoffBuilder;
        let pauses: Vec<u64> = THROUGH_AN_OUTAGE
            .pauses
            .build()
            .take(9)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(THROUGH_AN_OUTAGE.retry_for, Duration::from_secs(20));
    }

    #[tokio::test]
    async fn what_is_not_idempotent_or_not_an_outage_is_not_retried() {
        let (flaky, ledger, _, _) = wrapped(usize::MAX, outage);
        assert!(ledger
            .accept(&NewRequest {
                request_id: "r1".into(),
                provider: crate::domain::ProviderId::Sharespine,
                operation: crate::domain::Operation::Onboard,
                body: Vec::new(),
            })
            .await
            .is_err());
        assert!(ledger
            .renew("r1", "a", Duration::from_secs(1))
            .await
            .is_err());
        assert!(ledger.counts().await.is_err());
        assert!(ledger.ping().await.is_err());
        assert!(ledger.holder_alive("a").await.is_err());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 5);
        let corrupt = || LedgerError::Corrupt {
            request_id: "r1".into(),
            message: "x".into(),
        };
        let (flaky, ledger, _, health) = wrapped(usize::MAX, corrupt);
        assert!(ledger.get("r1").await.is_err());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
        assert!(!health.ledger_down());
    }
}
