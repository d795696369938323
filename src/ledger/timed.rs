//! A ledger that times every operation of the ledger it wraps into
//! `onboarding_ledger_seconds{op}`; the worker always uses one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{Accept, Claim, Finish, Ledger, LedgerError, NewRequest, Progress, RequestRecord};
use crate::metrics::Metrics;

pub struct Timed {
    inner: Arc<dyn Ledger>,
    metrics: Metrics,
}

impl Timed {
    pub fn wrap(inner: Arc<dyn Ledger>, metrics: Metrics) -> Arc<dyn Ledger> {
        Arc::new(Timed { inner, metrics })
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
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, LedgerError> {
        let _t = self.timer("claim");
        self.inner.claim(request_id, seq, owner, lease).await
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
        self.inner
            .record_step(request_id, step_key, outputs, secrets, progress)
            .await
    }
    async fn finish(&self, request_id: &str, finish: &Finish) -> Result<(), LedgerError> {
        let _t = self.timer("finish");
        self.inner.finish(request_id, finish).await
    }
    async fn advance(
        &self,
        request_id: &str,
        owner: &str,
        next_seq: i64,
        progress: &Progress,
    ) -> Result<(), LedgerError> {
        let _t = self.timer("advance");
        self.inner
            .advance(request_id, owner, next_seq, progress)
            .await
    }
    async fn redrive(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let _t = self.timer("redrive");
        self.inner.redrive(request_id).await
    }
    async fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let _t = self.timer("get");
        self.inner.get(request_id).await
    }
    async fn counts(&self) -> Result<(i64, i64), LedgerError> {
        let _t = self.timer("counts");
        self.inner.counts().await
    }
}
