//! Runs a provider's whole plan in memory, one step after another, retrying
//! transient errors and re-polling "not yet" after a short sleep. For provider
//! tests only (compiled only under `cfg(test)`): the real engine waits in
//! delay queues, never in a task.

use std::time::Duration;

use serde_json::{Map, Value};

use super::step::{Provider, StepContext, StepError, StepKey, StepOutcome};
use crate::domain::Operation;

/// What a local run ended with.
#[derive(Debug)]
pub struct LocalRun {
    pub outputs: Map<String, Value>,
    pub secrets: Map<String, Value>,
    /// Steps in the order they finished.
    pub steps_done: Vec<StepKey>,
    /// Total "not yet" answers.
    pub polls: u32,
    /// The step that failed and why, if any.
    pub failure: Option<(StepKey, StepError)>,
}

/// Drives `operation` on `input` through `provider`. Polls wait `poll_sleep`;
/// transient errors are retried up to the provider's `max_attempts`, waiting
/// `poll_sleep` as well; a step polled more than `max_polls` times is a test failure.
pub async fn run_plan(
    provider: &dyn Provider,
    operation: Operation,
    input: &Value,
    poll_sleep: Duration,
    max_polls: u32,
) -> Result<LocalRun, String> {
    let plan = provider.plan(operation, input)?;
    let mut run = LocalRun {
        outputs: Map::new(),
        secrets: Map::new(),
        steps_done: Vec::new(),
        polls: 0,
        failure: None,
    };
    let request_id = "local-run";
    for step in plan {
        let mut attempt = 0;
        let mut polls = 0;
        let mut poll_state: Option<Value> = None;
        loop {
            let ctx = StepContext {
                request_id,
                operation,
                input,
                outputs: &run.outputs,
                secrets: &run.secrets,
                step: &step,
                attempt,
                polls,
                poll_state: poll_state.as_ref(),
                possible_repeat: false,
            };
            match provider.run(&ctx).await {
                Ok(StepOutcome::Done(done)) => {
                    run.outputs.extend(done.outputs);
                    run.secrets.extend(done.secrets);
                    run.steps_done.push(step.clone());
                    break;
                }
                Ok(StepOutcome::Pending { state, .. }) => {
                    polls += 1;
                    run.polls += 1;
                    if polls > max_polls {
                        return Err(format!(
                            "{} still pending after {max_polls} polls",
                            step.name
                        ));
                    }
                    poll_state = state;
                    tokio::time::sleep(poll_sleep).await;
                }
                Err(StepError::Transient { .. })
                    if attempt + 1 < provider.retry_policy().max_attempts =>
                {
                    attempt += 1;
                    tokio::time::sleep(poll_sleep).await;
                }
                Err(e) => {
                    run.failure = Some((step, e));
                    return Ok(run);
                }
            }
        }
    }
    Ok(run)
}
