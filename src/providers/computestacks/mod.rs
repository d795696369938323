//! ComputeStacks (placeholder until its module lands).
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::ComputeStacksSettings;
use crate::domain::{Operation, ProviderId};
use crate::engine::step::{
    PollPolicy, Provider, RetryPolicy, StepContext, StepError, StepKey, StepOutcome,
};
use crate::metrics::Metrics;

pub struct ComputeStacks {
    settings: ComputeStacksSettings,
}

impl ComputeStacks {
    pub fn new(settings: &ComputeStacksSettings, _metrics: Metrics) -> Self {
        ComputeStacks {
            settings: settings.clone(),
        }
    }
}

#[async_trait]
impl Provider for ComputeStacks {
    fn id(&self) -> ProviderId {
        ProviderId::Computestacks
    }
    fn plan(&self, _operation: Operation, _input: &Value) -> Result<Vec<StepKey>, String> {
        Err("not implemented yet".into())
    }
    fn poll_policy(&self, _step: &str) -> Option<PollPolicy> {
        None
    }
    fn retry_policy(&self) -> RetryPolicy {
        crate::providers::retry_policy(&self.settings.calls)
    }
    fn call_timeout(&self) -> Duration {
        self.settings.calls.timeout()
    }
    fn concurrency(&self) -> usize {
        self.settings.calls.concurrency
    }
    async fn run(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        Err(StepError::rejected(
            None,
            format!("{} not implemented", ctx.step.name),
        ))
    }
}
