//! One step message run with the request's lease held: `accepted` first when
//! the message starts the request, then the provider call (unless the ledger
//! has the step's outcome), its result classified by [`classify`], and the
//! decision acted on: record the step and publish its event then its
//! successor, or publish the same step again through a delay queue, or end
//! the request (`end.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tracing::{debug, info, warn};

use super::classify::{self, Again, Decision, Situation};
use super::step::{Provider, StepContext, StepError, StepKey, StepOutcome};
use super::transport::Transport;
use super::wire::{self, Event, StepMessage};
use super::{Engine, EngineError};
use crate::domain::{ErrorKind, EventKind, Operation, ProviderId};
use crate::ledger::{now_ms, LedgerError, Progress, RequestRecord, Status};

/// One step message being worked on, with the lease held.
pub(super) struct StepRun<'a> {
    pub(super) engine: &'a Engine,
    pub(super) t: &'a dyn Transport,
    pub(super) provider: &'a dyn Provider,
    pub(super) provider_id: ProviderId,
    pub(super) m: StepMessage,
    pub(super) owner: String,
    pub(super) record: RequestRecord,
    /// A copy of this message died or stalled mid-step (its lease ran out).
    pub(super) interrupted: bool,
    /// Set once this run's `accepted` event is confirmed.
    pub(super) announced: &'a AtomicBool,
    /// Set when the provider was called: from then on a failure leaves the
    /// outcome unknown.
    pub(super) called: &'a AtomicBool,
    /// Set when a renewal found the lease taken by another copy: this run
    /// then publishes nothing, leaving the step to that copy.
    pub(super) lease_lost: &'a AtomicBool,
}

impl StepRun<'_> {
    pub(super) fn operation(&self) -> Operation {
        self.record.operation
    }

    /// The request as it was taken on: the body the ledger stored, read
    /// once into the validated request.
    fn request(&self) -> Result<wire::ValidRequest, EngineError> {
        wire::parse_request(&self.record.body, usize::MAX).map_err(|invalid| {
            LedgerError::Corrupt {
                request_id: self.record.request_id.clone(),
                message: format!("its stored request: {}", invalid.message),
            }
            .into()
        })
    }

    pub(super) async fn go(self) -> Result<(), EngineError> {
        if self.record.status != Status::Running {
            return self.republish_final().await;
        }
        if self.m.announce {
            let accepted = Event::new(
                EventKind::Accepted,
                Some(&self.m.request_id),
                Some(self.provider_id),
                Some(self.operation()),
            );
            self.engine.publish_event(self.t, &accepted).await?;
            self.announced.store(true, Ordering::SeqCst);
        }
        let request = self.request()?;
        let plan = match self.provider.plan(self.operation(), &request.input) {
            Ok(p) => p,
            Err(message) => {
                return self
                    .fail(None, ErrorKind::InvalidRequest, None, message)
                    .await
            }
        };
        let Some(step) = plan.get(self.m.step as usize).cloned() else {
            // Past the last step (a redrive of a request that failed after its last step).
            return self.complete(&plan, request.return_credentials, None).await;
        };
        tracing::Span::current().record("step", step.name);
        match self.execute(&step, &request.input).await {
            Decision::Advance { outputs, secrets } => {
                self.advance(&plan, &step, request.return_credentials, outputs, secrets)
                    .await
            }
            Decision::Again {
                delay,
                why: _,
                attempt,
                polls,
                poll_deadline_ms,
                poll_state,
                uncertain,
            } => {
                let again = StepMessage {
                    seq: self.m.seq + 1,
                    uncertain,
                    attempt,
                    polls,
                    poll_deadline_ms,
                    poll_state,
                    not_before_ms: None,
                    announce: false,
                    held: 0,
                    gone_holder: None,
                    ..self.m.clone()
                };
                self.again(&step, again, delay).await
            }
            Decision::Fail {
                kind,
                http_status,
                message,
            } => self.fail(Some(&step), kind, http_status, message).await,
        }
    }

    /// The step is done: recorded, then its event and its successor (or the
    /// request's end) published, in that order.
    async fn advance(
        self,
        plan: &[StepKey],
        step: &StepKey,
        return_credentials: bool,
        outputs: Map<String, Value>,
        secrets: Map<String, Value>,
    ) -> Result<(), EngineError> {
        let is_last = self.m.step as usize + 1 >= plan.len();
        let progress = match plan.get(self.m.step as usize + 1) {
            Some(next_step) => Progress {
                current_step: Some(next_step.name.into()),
                current_index: Some(self.m.step as i64 + 1),
                waiting_until_ms: None,
            },
            None => Progress::default(),
        };
        let mut all_outputs = self.record.outputs.clone();
        all_outputs.extend(outputs.clone());
        let mut step_event = self.event(EventKind::StepCompleted);
        step_event.step = Some(step.name.into());
        step_event.step_index = step.index;
        step_event.outputs = all_outputs.clone();
        // Recorded first: an event must never announce outputs the ledger
        // does not keep (a crash or a failed record would run the step
        // again, perhaps with other outputs). A run whose lease was taken
        // over still records what it has (the copy that took it may then
        // find the step done) but publishes nothing.
        self.record(step, &outputs, &secrets, &progress).await?;
        if self.lease_lost.load(Ordering::SeqCst) {
            return Err(EngineError::LeaseLost);
        }
        if is_last {
            let mut record = self.record.clone();
            record.outputs = all_outputs;
            record.secrets.extend(secrets);
            let run = StepRun { record, ..self };
            return run
                .complete(plan, return_credentials, Some(step_event))
                .await;
        }
        let next = StepMessage {
            seq: self.m.seq + 1,
            step: self.m.step + 1,
            attempt: 0,
            polls: 0,
            poll_deadline_ms: None,
            poll_state: None,
            not_before_ms: None,
            uncertain: false,
            announce: false,
            held: 0,
            gone_holder: None,
            ..self.m.clone()
        };
        // The event is confirmed before the successor exists: once the
        // successor is out, this message is stale and would never publish a
        // refused event again.
        self.engine.publish_event(self.t, &step_event).await?;
        self.t
            .publish_step(self.provider_id, next.to_bytes(), Duration::ZERO)
            .await?;
        // No ledger write here: the successor's claim moves the cursor
        // and takes the lease over (it exists, so it was confirmed).
        info!(step = step.name, index = ?step.index, "step completed");
        Ok(())
    }

    /// Records the finished step. Idempotent: a step found recorded is
    /// recorded again with no change to its outputs, and the progress is
    /// noted. A step whose provider call made something is held here,
    /// outcome in hand, until the ledger takes it: handing the message back
    /// instead would make the create again. While the ledger is away nobody
    /// else can claim the request, and consumption is paused.
    async fn record(
        &self,
        step: &StepKey,
        outputs: &Map<String, Value>,
        secrets: &Map<String, Value>,
        progress: &Progress,
    ) -> Result<(), EngineError> {
        let mut pause = Duration::from_secs(1);
        loop {
            match self
                .engine
                .ledger
                .record_step(
                    &self.m.request_id,
                    &step.ledger_key(),
                    outputs,
                    secrets,
                    progress,
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.is_outage() => {
                    warn!(
                        step = step.name,
                        retry_in_ms = pause.as_millis() as u64,
                        "the ledger is away: holding the step's outcome until it can be recorded"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The same step again after `delay`, through a delay queue; the chain
    /// moves on to that message once it is confirmed.
    async fn again(
        self,
        step: &StepKey,
        again: StepMessage,
        delay: Duration,
    ) -> Result<(), EngineError> {
        let due = now_ms() + delay.as_millis() as i64;
        let again = StepMessage {
            not_before_ms: Some(due),
            ..again
        };
        self.t
            .publish_step(self.provider_id, again.to_bytes(), delay)
            .await?;
        let progress = Progress {
            current_step: Some(step.name.into()),
            current_index: Some(self.m.step as i64),
            waiting_until_ms: Some(due),
        };
        self.engine
            .ledger
            .advance(&self.m.request_id, &self.owner, again.seq, &progress)
            .await?;
        Ok(())
    }

    /// Runs the provider call (unless the ledger has it) and classifies what
    /// came back; counts and logs the decision.
    async fn execute(&self, step: &StepKey, input: &Value) -> Decision {
        let p = self.provider_id.as_str();
        if self.record.done_steps.contains(&step.ledger_key()) {
            debug!(
                step = step.name,
                "step already recorded; not calling the provider again"
            );
            self.count(step, "skipped");
            return Decision::Advance {
                outputs: Map::new(),
                secrets: Map::new(),
            };
        }
        let ctx = StepContext {
            request_id: &self.m.request_id,
            operation: self.operation(),
            input,
            outputs: &self.record.outputs,
            secrets: &self.record.secrets,
            step,
            attempt: self.m.attempt,
            polls: self.m.polls,
            poll_state: self.m.poll_state.as_ref(),
            possible_repeat: self.interrupted || self.m.uncertain,
        };
        let gauge = self.engine.metrics.steps_in_flight.with_label_values(&[p]);
        gauge.inc();
        self.called.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let result = self.provider.run(&ctx).await;
        gauge.dec();
        self.engine
            .metrics
            .step_duration_seconds
            .with_label_values(&[p, step.name])
            .observe(started.elapsed().as_secs_f64());
        if ctx.possible_repeat {
            self.note_possible_repeat(step, &result);
        }
        let now = now_ms();
        if let Some(until) = classify::shared_pause(&result, now) {
            self.engine.pause_provider(self.provider_id, until);
            if let Err(e) = self.t.publish_pause(self.provider_id, until).await {
                warn!(error.message = %e, "could not tell the other workers of the provider's pause");
            }
        }
        let situation = Situation {
            step: step.name,
            attempt: self.m.attempt,
            polls: self.m.polls,
            poll_deadline_ms: self.m.poll_deadline_ms,
            poll_state: self.m.poll_state.clone(),
            poll_policy: self.provider.poll_policy(step.name),
            retry_policy: self.provider.retry_policy(),
            now_ms: now,
            jitter: rand::random(),
        };
        let decision = classify::classify(result, situation);
        self.observe(step, &decision);
        decision
    }

    /// Counts and logs a step's decision.
    fn observe(&self, step: &StepKey, decision: &Decision) {
        let p = self.provider_id.as_str();
        match decision {
            Decision::Again {
                delay,
                why: Again::Poll { status },
                ..
            } => {
                self.engine
                    .metrics
                    .polls_total
                    .with_label_values(&[p, step.name])
                    .inc();
                debug!(step = step.name, status = %status, wait_ms = delay.as_millis() as u64, "not yet; polling again later");
            }
            Decision::Again {
                delay,
                why: Again::Retry { reason, message },
                attempt,
                ..
            } => {
                self.engine
                    .metrics
                    .retries_total
                    .with_label_values(&[p, reason.as_str()])
                    .inc();
                warn!(step = step.name, reason = reason.as_str(), attempt, delay_ms = delay.as_millis() as u64, error.message = %message, "transient failure; retrying from a delay queue");
            }
            Decision::Advance { .. } | Decision::Fail { .. } => {}
        }
        self.count(step, decision.label());
    }

    /// A create that may have been made twice: the provider recognised its
    /// own resource, or answered "already exists" (409/422), or made it afresh
    /// (a one-shot step that succeeded: most providers cannot tell their own
    /// from a new one, so the earlier attempt may have made one too). Counted
    /// and logged; the README's guarantees section explains the window this
    /// comes from.
    fn note_possible_repeat(&self, step: &StepKey, result: &Result<StepOutcome, StepError>) {
        let (counted, why) = match result {
            Ok(StepOutcome::Done(done)) if done.repeat_detected => {
                (true, "the provider already had it")
            }
            Ok(StepOutcome::Done(_)) if self.provider.poll_policy(step.name).is_none() => {
                (true, "made afresh: the provider may now hold it twice")
            }
            Err(StepError::Rejected {
                http_status: Some(409 | 422),
                ..
            }) => (true, "the provider already had it"),
            _ => (false, ""),
        };
        if counted {
            self.engine
                .metrics
                .create_repeats_total
                .with_label_values(&[self.provider_id.as_str(), step.name])
                .inc();
            if matches!(result, Ok(StepOutcome::Done(done)) if done.repeat_detected) {
                self.engine
                    .metrics
                    .create_repeats_recognised_total
                    .with_label_values(&[self.provider_id.as_str(), step.name])
                    .inc();
            }
            warn!(
                step = step.name,
                why, "a create was run again after an interrupted attempt"
            );
        }
    }

    pub(super) fn count(&self, step: &StepKey, outcome: &str) {
        self.engine
            .metrics
            .steps_total
            .with_label_values(&[self.provider_id.as_str(), step.name, outcome])
            .inc();
    }

    pub(super) fn event(&self, kind: EventKind) -> Event {
        let mut e = Event::new(
            kind,
            Some(&self.m.request_id),
            Some(self.provider_id),
            Some(self.operation()),
        );
        e.duration_ms = (now_ms() - self.record.accepted_at_ms).max(0);
        e
    }
}
