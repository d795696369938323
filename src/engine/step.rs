//! The small interface every provider implements. Providers know HTTP and their
//! API; they never see the broker, the ledger or a delay. They answer "done",
//! "not yet" or a typed error, and the engine decides what happens next.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::domain::{Operation, ProviderId, RetryReason};

/// One step of a request's plan: its contract name (events, metric labels) and,
/// for a step done once per entry of a list (Sharespine's `create_user`), the entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StepKey {
    pub name: &'static str,
    pub index: Option<u32>,
}

impl StepKey {
    pub const fn new(name: &'static str) -> Self {
        StepKey { name, index: None }
    }
    pub const fn indexed(name: &'static str, index: u32) -> Self {
        StepKey {
            name,
            index: Some(index),
        }
    }
    /// Ledger key: `create_user#1`, or the bare name.
    pub fn ledger_key(&self) -> String {
        match self.index {
            Some(i) => format!("{}#{i}", self.name),
            None => self.name.to_string(),
        }
    }
}

/// Everything a step may read. Built by the engine from the ledger.
#[derive(Debug)]
pub struct StepContext<'a> {
    pub request_id: &'a str,
    pub operation: Operation,
    /// The request's `input` object, as published.
    pub input: &'a Value,
    /// Outputs of the steps done so far (public: they appear in events).
    pub outputs: &'a Map<String, Value>,
    /// Values earlier steps kept privately (e.g. an API password). Never logged,
    /// never in an event unless the request says `return_credentials: true`.
    pub secrets: &'a Map<String, Value>,
    pub step: &'a StepKey,
    /// Transient failures of this step so far (0 on the first try).
    pub attempt: u32,
    /// How many times this poll step has already answered "not yet".
    pub polls: u32,
    /// Private state the previous "not yet" of this step asked to keep.
    pub poll_state: Option<&'a Value>,
    /// An earlier attempt of this call may have reached the provider without
    /// its answer being recorded (its worker died mid-step, or the call timed
    /// out or broke off). A create may find its resource already there; a
    /// provider that can recognise its own resource says so with
    /// [`StepDone::repeat_detected`].
    pub possible_repeat: bool,
}

/// A step that went as far as it could.
#[derive(Debug, Default)]
pub struct StepDone {
    /// Merged into the request's outputs.
    pub outputs: Map<String, Value>,
    /// Merged into the request's private values (ledger only).
    pub secrets: Map<String, Value>,
    /// The provider answered "already exists" to a possible repeat and the
    /// resource was recognised as this request's own (counted in a metric).
    pub repeat_detected: bool,
}

impl StepDone {
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.outputs.insert(key.to_string(), value.into());
        self
    }
    pub fn with_secret(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.secrets.insert(key.to_string(), value.into());
        self
    }
}

#[derive(Debug)]
pub enum StepOutcome {
    Done(StepDone),
    /// The provider's job is not finished; ask again after the poll interval.
    /// `state` is handed back to the next poll (e.g. ids seen before).
    Pending {
        status: String,
        state: Option<Value>,
    },
}

/// A step that did not finish. `message` must be safe to publish: no secret,
/// no credential, no full response body.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Worth trying again after a delay (connection, timeout, 408, 425, 429, 5xx, ...).
    #[error("{message}")]
    Transient {
        reason: RetryReason,
        retry_after: Option<Duration>,
        http_status: Option<u16>,
        message: String,
    },
    /// The provider said no for good (other 4xx, or a 2xx that contradicts the request).
    #[error("{message}")]
    Rejected {
        http_status: Option<u16>,
        message: String,
    },
    /// The provider reported its asynchronous job as failed.
    #[error("{message}")]
    JobFailed { message: String },
}

impl StepError {
    pub fn rejected(http_status: Option<u16>, message: impl Into<String>) -> Self {
        StepError::Rejected {
            http_status,
            message: message.into(),
        }
    }
    pub fn job_failed(message: impl Into<String>) -> Self {
        StepError::JobFailed {
            message: message.into(),
        }
    }
    pub fn transient(reason: RetryReason, message: impl Into<String>) -> Self {
        StepError::Transient {
            reason,
            retry_after: None,
            http_status: None,
            message: message.into(),
        }
    }
    pub fn http_status(&self) -> Option<u16> {
        match self {
            StepError::Transient { http_status, .. } | StepError::Rejected { http_status, .. } => {
                *http_status
            }
            StepError::JobFailed { .. } => None,
        }
    }
}

/// How long a poll step may wait and how often it asks.
#[derive(Clone, Debug, PartialEq)]
pub struct PollPolicy {
    pub interval: Duration,
    pub growth: f64,
    pub max_interval: Duration,
    pub deadline: Duration,
}

impl PollPolicy {
    /// The wait after the `polls`-th "not yet" (0-based): interval × growth^polls, capped.
    pub fn wait(&self, polls: u32) -> Duration {
        let ms = self.interval.as_millis() as f64 * self.growth.powi(polls.min(64) as i32);
        Duration::from_millis(ms.min(self.max_interval.as_millis() as f64) as u64)
    }
}

/// How transient failures of a provider's calls are retried.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

/// The providers a worker runs, by id (built by `providers::build_all`).
pub type Providers = std::collections::HashMap<ProviderId, std::sync::Arc<dyn Provider>>;

/// A provider, as the engine sees it.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn id(&self) -> ProviderId;

    /// Checks `input` for `operation` and gives the ordered steps to run.
    /// `Err` is the `invalid_request` message: which field is missing or ill-typed.
    /// Called for every step message, so it must be deterministic.
    fn plan(&self, operation: Operation, input: &Value) -> Result<Vec<StepKey>, String>;

    /// Polling policy of a step that waits on a job; `None` for a one-shot step.
    fn poll_policy(&self, step: &str) -> Option<PollPolicy>;

    fn retry_policy(&self) -> RetryPolicy;

    /// Upper bound of one call; the engine leases a step for this plus a margin.
    fn call_timeout(&self) -> Duration;

    /// Steps of this provider in flight at once in one worker.
    fn concurrency(&self) -> usize;

    /// Runs one step: exactly one provider call (plus any token renewal).
    async fn run(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError>;
}
