//! A ledger that times every operation of the ledger it wraps into
//! `onboarding_ledger_seconds{op}`, and retries the idempotent ones through a
//! short database outage (so a step whose provider call succeeded is not
//! handed back, and called again, because its record hit a locked file); the
//! worker always uses one. `accept` is not retried: an insert that committed
//! before its answer was lost would come back as "already known".

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{Accept, Claim, Finish, Ledger, LedgerError, NewRequest, Progress, RequestRecord};
use crate::metrics::{Health, Metrics};

pub struct Timed {
    inner: Arc<dyn Ledger>,
    metrics: Metrics,
    /// Marked not ready at the first database error, so `/readyz` says so
    /// within seconds; the broker's handlers clear it once the ledger answers.
    health: Health,
}

/// How long an idempotent operation is retried before its error is returned.
const RETRY_FOR: Duration = Duration::from_secs(20);

/// Runs `op` again while it fails with a database error, with capped back-off.
async fn retried<T, F, Fut>(
    (health, metrics): (&Health, &Metrics),
    what: &str,
    mut op: F,
) -> Result<T, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match op().await {
            Err(e @ (LedgerError::Database(_) | LedgerError::Batch(_)))
                if started.elapsed() < RETRY_FOR =>
            {
                if e.is_outage() {
                    health.set_ledger_down(true, metrics);
                }
                tracing::warn!(op = what, error.message = %e, retry_in_ms = pause.as_millis() as u64, "ledger operation failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Ok(v) => {
                if health.ledger_down() {
                    health.set_ledger_down(false, metrics);
                }
                return Ok(v);
            }
            other => return other,
        }
    }
}

impl Timed {
    pub fn wrap(inner: Arc<dyn Ledger>, metrics: Metrics, health: Health) -> Arc<dyn Ledger> {
        Arc::new(Timed {
            inner,
            metrics,
            health,
        })
    }

    fn timer(&self, op: &str) -> prometheus::HistogramTimer {
        self.metrics
            .ledger_seconds
            .with_label_values(&[op])
            .start_timer()
    }
}

#[async_trait]
impl Ledger for Timed {
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
        retried((&self.health, &self.metrics), "claim", || {
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
        retried((&self.health, &self.metrics), "record_step", || {
            self.inner
                .record_step(request_id, step_key, outputs, secrets, progress)
        })
        .await
    }
    async fn finish(&self, request_id: &str, finish: &Finish) -> Result<(), LedgerError> {
        let _t = self.timer("finish");
        retried((&self.health, &self.metrics), "finish", || {
            self.inner.finish(request_id, finish)
        })
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
        retried((&self.health, &self.metrics), "advance", || {
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
        retried((&self.health, &self.metrics), "abandon", || {
            self.inner.abandon(request_id, owner)
        })
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
        retried((&self.health, &self.metrics), "redrive", || {
            self.inner.redrive(request_id)
        })
        .await
    }
    async fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let _t = self.timer("get");
        retried((&self.health, &self.metrics), "get", || {
            self.inner.get(request_id)
        })
        .await
    }
    async fn counts(&self) -> Result<(i64, i64), LedgerError> {
        let _t = self.timer("counts");
        self.inner.counts().await
    }
}
