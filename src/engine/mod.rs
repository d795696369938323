//! The step machine: validates requests, runs one step per message, classifies
//! the outcome in one place and decides what follows (next step, delayed retry
//! or poll, final event). Knows nothing of lapin or HTTP: it reaches the broker
//! through [`Transport`] and providers through [`step::Provider`].
//!
//! Every handler returns `Ok` only once everything that follows from its
//! message (ledger record, next message, event) is recorded and confirmed; the
//! caller acknowledges the message then, and not before.

pub mod front_door;
pub mod local;
pub mod pauses;
pub mod schedule;
pub mod step;
pub mod wire;

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value};
use tracing::{debug, info, warn, Instrument};

use crate::domain::{ErrorKind, EventKind, Operation, ProviderId, RetryReason};
use crate::ledger::{
    now_ms, Accept, Claim, Finish, Ledger, LedgerError, NewRequest, Progress, RequestRecord, Status,
};
use crate::metrics::Metrics;
use step::{Provider, Providers, StepContext, StepError, StepKey, StepOutcome};
use wire::{Event, Invalid, StepMessage};

/// The header that marks a request copy as an operator's redrive (`dead replay`).
pub const REPLAY_HEADER: &str = "x-onboarding-replay";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("broker: {0}")]
    Broker(String),
    #[error("broker returned the message as unroutable: {0}")]
    Unroutable(String),
    #[error("broker refused the message (nack)")]
    Nacked,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A step message for a request this worker's ledger does not hold: most
    /// likely workers on different ledgers. Handed back to the queue for a
    /// worker that has it (the delivery limit ends the loop in `onboarding.dead`).
    #[error("step message for request {0:?}, which this worker's ledger does not hold (are all workers on one ledger?)")]
    UnknownRequest(String),
    /// Another copy took this step's lease while it ran (this worker was
    /// taken for gone): it publishes nothing and leaves the step to that copy.
    #[error("the step's lease was taken over by another copy while it ran")]
    LeaseLost,
}

impl EngineError {
    /// The ledger's database could not be reached (as opposed to data it
    /// holds being wrong): the worker pauses until it can, rather than
    /// spinning deliveries through the broker.
    pub fn is_ledger_outage(&self) -> bool {
        matches!(self, EngineError::Ledger(e) if e.is_outage())
    }
}

/// The broker's properties of a message the engine forwards whole; opaque here.
#[derive(Clone, Default)]
pub struct OriginalProps(pub Option<Arc<dyn Any + Send + Sync>>);

/// Why a message goes to `onboarding.dead`; becomes its headers.
#[derive(Debug, Clone)]
pub struct DeadReason {
    pub request_id: Option<String>,
    pub kind: ErrorKind,
    pub step: Option<String>,
    pub message: String,
}

/// What the engine needs of the broker; every publish is confirmed before it returns.
#[async_trait]
pub trait Transport: Send + Sync {
    /// A step message to `provider`'s step queue, after `delay` (through a delay tier).
    async fn publish_step(
        &self,
        provider: ProviderId,
        body: Vec<u8>,
        delay: Duration,
    ) -> Result<(), TransportError>;
    /// An event to `onboarding.events`.
    async fn publish_event(
        &self,
        routing_key: &str,
        request_id: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(), TransportError>;
    /// Tells every worker to hold `provider`'s steps until `until_ms`
    /// (best effort: a worker that misses it finds the limit itself).
    async fn publish_pause(
        &self,
        provider: ProviderId,
        until_ms: i64,
    ) -> Result<(), TransportError>;
    /// The original message, whole, to `onboarding.dead`.
    async fn publish_dead(
        &self,
        body: &[u8],
        props: &OriginalProps,
        reason: &DeadReason,
    ) -> Result<(), TransportError>;
}

/// The `request_id` header of a delivery, which must equal the body's when
/// present (CONTRACT §4).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum HeaderId {
    #[default]
    Absent,
    Text(String),
    /// Present, but not text (a number, a table...): it names no request.
    NotText,
}

/// A delivery as the engine sees it.
pub struct Incoming<'a> {
    pub body: &'a [u8],
    /// The broker delivered it before (a worker died or a channel closed holding it).
    pub redelivered: bool,
    /// Carries the replay mark of `dead replay`.
    pub replay: bool,
    pub props: OriginalProps,
    /// Earlier deliveries of this message (the quorum queue's `x-delivery-count`).
    pub delivery_count: u32,
    pub header_request_id: HeaderId,
}

/// Engine settings that are not per provider.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub max_body_bytes: usize,
    pub lease_margin: Duration,
}

#[derive(Clone)]
pub struct Engine {
    providers: Providers,
    ledger: Arc<dyn Ledger>,
    metrics: Metrics,
    settings: EngineSettings,
    pauses: pauses::ProviderPauses,
}

/// How long a claimer waits before asking again whether a lease's holder is
/// gone: longer than a live worker takes to retake its liveness lock.
const HOLDER_RECHECK: Duration = Duration::from_secs(2);

/// A delay tier may deliver this much early and the step still runs.
const EARLY_TOLERANCE_MS: i64 = 25;

impl Engine {
    pub fn new(
        providers: Providers,
        ledger: Arc<dyn Ledger>,
        metrics: Metrics,
        settings: EngineSettings,
    ) -> Self {
        Engine {
            providers,
            ledger,
            metrics,
            settings,
            pauses: pauses::ProviderPauses::default(),
        }
    }

    /// A pause message from another worker (or this one): hold `provider`'s
    /// steps until then.
    pub fn pause_provider(&self, provider: ProviderId, until_ms: i64) {
        if self.pauses.pause(provider, until_ms) {
            self.metrics
                .provider_paused_seconds
                .with_label_values(&[provider.as_str()])
                .set((until_ms - now_ms()).max(0) as f64 / 1000.0);
            info!(
                provider = provider.as_str(),
                for_ms = (until_ms - now_ms()).max(0),
                "provider asked us to slow down: holding its steps"
            );
        }
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// A message from `onboarding.requests`.
    pub async fn handle_request(
        &self,
        t: &dyn Transport,
        msg: Incoming<'_>,
    ) -> Result<(), EngineError> {
        let (request, first) =
            match front_door::front_door(msg.body, self.settings.max_body_bytes, &self.providers)
                .and_then(|admitted| front_door::check_header(admitted, &msg.header_request_id))
            {
                Ok(admitted) => (admitted.request, admitted.first),
                Err(invalid) => return self.reject_invalid(t, &msg, invalid).await,
            };
        let span = tracing::info_span!("request", request_id = %request.request_id, provider = request.provider.as_str());
        async {
            if msg.replay {
                if let Some(record) = self.ledger.redrive(&request.request_id).await? {
                    return self.resume_redrive(t, &request, record).await;
                }
                // A replay of a running request: perhaps our own redrive that died
                // after clearing the failure and before publishing its step.
                // Publishing the step at the cursor again is safe: a copy is
                // serialised by the lease and dropped by the cursor.
                if let Some(record) = self.ledger.get(&request.request_id).await? {
                    if record.status == Status::Running {
                        return self.resume_redrive(t, &request, record).await;
                    }
                }
            }
            let new = NewRequest {
                request_id: request.request_id.clone(),
                provider: request.provider,
                operation: request.operation,
                body: msg.body.to_vec(),
            };
            match self.ledger.accept(&new).await? {
                Accept::New { .. } => {
                    self.start(t, &request, &first).await?;
                    self.metrics
                        .requests_accepted_total
                        .with_label_values(&[request.provider.as_str(), request.operation.as_str()])
                        .inc();
                    info!(operation = request.operation.as_str(), "accepted");
                    Ok(())
                }
                Accept::Existing(record) => self.on_copy(t, &msg, &request, &record).await,
            }
        }
        .instrument(span)
        .await
    }

    /// A second copy of a known request (CONTRACT §6 "once per request_id").
    async fn on_copy(
        &self,
        t: &dyn Transport,
        msg: &Incoming<'_>,
        request: &wire::ValidRequest,
        record: &RequestRecord,
    ) -> Result<(), EngineError> {
        match (record.status, &record.final_event) {
            (Status::Completed | Status::Failed, Some(final_event)) => {
                info!(
                    status = record.status.as_str(),
                    "copy of a finished request: publishing its final event again"
                );
                let event: Event =
                    serde_json::from_str(final_event).map_err(|e| LedgerError::Corrupt {
                        request_id: record.request_id.clone(),
                        message: e.to_string(),
                    })?;
                if record.status == Status::Failed {
                    // Every message that ends in `failed` is kept in onboarding.dead.
                    let reason = dead_reason_of(&request.request_id, &event);
                    return self
                        .announce_failure(t, Some(&event), msg.body, &msg.props, &reason)
                        .await;
                }
                self.publish_event(t, &event).await?;
                Ok(())
            }
            _ if msg.redelivered && record.cursor == 0 => {
                // Possibly our own accept that died (or whose first publish
                // failed) before its first step was published; publishing it
                // again is safe (the lease serialises copies, the cursor drops
                // the later one). A request message that keeps failing this
                // way is given up on (`exhausted`), never left running.
                info!("redelivered request not yet started: publishing its first step again");
                self.start(
                    t,
                    request,
                    &first_step(&request.request_id, request.provider),
                )
                .await
            }
            _ => {
                info!("copy of a running request dropped");
                self.metrics
                    .duplicates_dropped_total
                    .with_label_values(&[request.provider.as_str()])
                    .inc();
                Ok(())
            }
        }
    }

    async fn resume_redrive(
        &self,
        t: &dyn Transport,
        request: &wire::ValidRequest,
        record: RequestRecord,
    ) -> Result<(), EngineError> {
        // The first step not recorded: where it failed (or, for a running
        // request, where it stands).
        let plan = self
            .provider(request.provider)
            .plan(request.operation, &request.input)
            .unwrap_or_default();
        let index = plan
            .iter()
            .position(|s| !record.done_steps.contains(&s.ledger_key()))
            .unwrap_or(plan.len()) as u32;
        info!(
            step = record.current_step.as_deref().unwrap_or("?"),
            "redrive: resuming from the step that failed"
        );
        let msg = StepMessage {
            seq: record.cursor,
            step: index,
            ..first_step(&request.request_id, request.provider)
        };
        self.start(t, request, &msg).await
    }

    /// Publishes the step message that (re)starts a request, confirmed. It
    /// carries the `announce` mark: its step run publishes `accepted` before
    /// anything else, and holds the request back while the broker refuses it.
    async fn start(
        &self,
        t: &dyn Transport,
        request: &wire::ValidRequest,
        msg: &StepMessage,
    ) -> Result<(), EngineError> {
        let msg = StepMessage {
            announce: true,
            ..msg.clone()
        };
        t.publish_step(request.provider, msg.to_bytes(), Duration::ZERO)
            .await?;
        Ok(())
    }

    async fn reject_invalid(
        &self,
        t: &dyn Transport,
        msg: &Incoming<'_>,
        invalid: Invalid,
    ) -> Result<(), EngineError> {
        warn!(
            request_id = invalid.request_id.as_deref().unwrap_or("-"),
            reason = %invalid.message,
            bytes = msg.body.len(),
            "invalid request: to onboarding.dead"
        );
        let event = front_door::failed_event(&invalid);
        let reason = front_door::dead_reason(&invalid);
        self.announce_failure(t, Some(&event), msg.body, &msg.props, &reason)
            .await?;
        self.metrics
            .requests_total
            .with_label_values(&[
                invalid.provider.map(|p| p.as_str()).unwrap_or("unknown"),
                invalid.operation.map(|o| o.as_str()).unwrap_or("unknown"),
                ErrorKind::InvalidRequest.as_str(),
            ])
            .inc();
        Ok(())
    }

    fn provider(&self, id: ProviderId) -> &Arc<dyn Provider> {
        self.providers.get(&id).expect("every provider is built")
    }

    async fn publish_event(&self, t: &dyn Transport, event: &Event) -> Result<(), TransportError> {
        t.publish_event(
            &event.routing_key(),
            event.request_id.as_deref(),
            event.to_bytes(),
        )
        .await?;
        self.metrics
            .events_published_total
            .with_label_values(&[&event.event])
            .inc();
        Ok(())
    }

    /// A message from a provider's step queue.
    pub async fn handle_step(
        &self,
        t: &dyn Transport,
        msg: Incoming<'_>,
    ) -> Result<(), EngineError> {
        let step_msg: StepMessage = match serde_json::from_slice(msg.body) {
            Ok(m) => m,
            Err(e) => {
                // Only the worker writes these; one that can't be read is kept for a human.
                let invalid = Invalid {
                    request_id: None,
                    provider: None,
                    operation: None,
                    message: format!("unreadable internal step message: {e}"),
                };
                return self.reject_invalid(t, &msg, invalid).await;
            }
        };
        // `step` is filled in once the plan says which step this message is.
        let span = tracing::info_span!("step", request_id = %step_msg.request_id, provider = %step_msg.provider, seq = step_msg.seq, step = tracing::field::Empty);
        self.run_step_message(t, step_msg, msg.props)
            .instrument(span)
            .await
    }

    async fn run_step_message(
        &self,
        t: &dyn Transport,
        m: StepMessage,
        props: OriginalProps,
    ) -> Result<(), EngineError> {
        let Some(provider_id) = ProviderId::parse(&m.provider) else {
            let invalid = Invalid {
                request_id: None,
                provider: None,
                operation: None,
                message: format!("step message for unknown provider {:?}", m.provider),
            };
            return self
                .reject_invalid(
                    t,
                    &Incoming {
                        body: &m.to_bytes(),
                        redelivered: false,
                        replay: false,
                        props,
                        delivery_count: 0,
                        header_request_id: HeaderId::Absent,
                    },
                    invalid,
                )
                .await;
        };
        let now = now_ms();
        if let Some(nb) = m.not_before_ms {
            if nb - now > EARLY_TOLERANCE_MS {
                // Delivered early by a coarser tier: wait the rest in another.
                t.publish_step(
                    provider_id,
                    m.to_bytes(),
                    Duration::from_millis((nb - now) as u64),
                )
                .await?;
                return Ok(());
            }
        }
        let paused = self.pauses.remaining_ms(provider_id);
        self.metrics
            .provider_paused_seconds
            .with_label_values(&[provider_id.as_str()])
            .set(paused as f64 / 1000.0);
        if paused > 0 {
            // The provider's rate limit holds every worker: wait it out in a
            // delay queue, with a little spread so the steps do not all come
            // back in the same instant.
            self.metrics
                .provider_pause_waits_total
                .with_label_values(&[provider_id.as_str()])
                .inc();
            let spread = rand::random_range(0..=(paused / 10).clamp(1, 1_000));
            let again = StepMessage {
                not_before_ms: Some(now + paused + spread),
                ..m
            };
            t.publish_step(
                provider_id,
                again.to_bytes(),
                Duration::from_millis((paused + spread) as u64),
            )
            .await?;
            return Ok(());
        }
        let provider = self.provider(provider_id).clone();
        let owner = format!("{}/{}", self.ledger.worker_id(), uuid::Uuid::new_v4());
        let lease = provider.call_timeout() + self.settings.lease_margin;
        let mut took_over = false;
        let (record, interrupted) = loop {
            match self
                .ledger
                .claim(&m.request_id, m.seq, m.step, &owner, lease)
                .await?
            {
                Claim::Granted {
                    record,
                    interrupted,
                } => break (*record, interrupted),
                Claim::Stale => {
                    debug!("stale copy of a step message dropped");
                    self.metrics
                        .duplicates_dropped_total
                        .with_label_values(&[provider_id.as_str()])
                        .inc();
                    return Ok(());
                }
                // A holder whose worker is gone (killed, its host lost) need
                // not be waited out: asked twice, 2 s apart (a live worker
                // whose liveness lock a database restart dropped takes it
                // again within a second), its lease is left as expired and
                // claimed again, marked as a possible repeat. A live holder,
                // however slow, keeps it (it renews it).
                Claim::Busy { holder, .. }
                    if !took_over && !self.ledger.holder_alive(&holder).await? =>
                {
                    if m.gone_holder.as_deref() == Some(holder.as_str()) {
                        took_over = true;
                        info!("the lease's holder is gone: taking its step over now");
                        self.metrics.lease_takeovers_total.inc();
                        self.ledger.abandon(&m.request_id, &holder).await?;
                    } else {
                        debug!("the lease's holder looks gone: asking again in 2 s");
                        let again = StepMessage {
                            gone_holder: Some(holder),
                            ..m
                        };
                        t.publish_step(provider_id, again.to_bytes(), HOLDER_RECHECK)
                            .await?;
                        return Ok(());
                    }
                }
                Claim::Busy { until_ms, .. } => {
                    debug!("another copy holds the lease; waiting in a delay queue");
                    self.metrics
                        .retries_total
                        .with_label_values(&[provider_id.as_str(), RetryReason::Leased.as_str()])
                        .inc();
                    let wait = Duration::from_millis((until_ms - now).max(0) as u64 + 50);
                    t.publish_step(provider_id, m.to_bytes(), wait).await?;
                    return Ok(());
                }
                Claim::Unknown => return Err(EngineError::UnknownRequest(m.request_id.clone())),
            }
        };
        let original = m.clone();
        let announced = AtomicBool::new(false);
        let called = AtomicBool::new(false);
        let lease_lost = AtomicBool::new(false);
        let run = StepRun {
            engine: self,
            t,
            provider: provider.as_ref(),
            provider_id,
            m,
            owner: owner.clone(),
            record,
            interrupted,
            announced: &announced,
            called: &called,
            lease_lost: &lease_lost,
        };
        // The lease is renewed while the step runs, well inside its length,
        // so a slow call or a slow ledger never lets a second copy in.
        let go = run.go();
        tokio::pin!(go);
        let result = loop {
            tokio::select! {
                r = &mut go => break r,
                _ = tokio::time::sleep(lease / 3) => {
                    if !self.renew_lease(&original, &owner, lease).await {
                        lease_lost.store(true, Ordering::SeqCst);
                    }
                }
            }
        };
        match result {
            Err(EngineError::Transport(TransportError::Nacked)) => {
                let held = StepMessage {
                    announce: original.announce && !announced.load(Ordering::SeqCst),
                    // The call was made and, unless its outcome was recorded
                    // (then the step is skipped), may have acted.
                    uncertain: original.uncertain || called.load(Ordering::SeqCst),
                    ..original
                };
                self.hold_back(t, provider_id, held, &owner).await
            }
            Err(e) => {
                // The message goes back to the queue. If the provider may
                // have acted and its answer is not recorded, the lease is
                // left as a crash would leave it, so the next claim knows
                // it may repeat a create; otherwise it is released (cursor
                // unchanged) so the redelivered copy need not wait it out.
                // Best effort.
                let _ = if called.load(Ordering::SeqCst) {
                    self.ledger.abandon(&original.request_id, &owner).await
                } else {
                    self.ledger
                        .advance(
                            &original.request_id,
                            &owner,
                            original.seq,
                            &Progress::default(),
                        )
                        .await
                };
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }

    /// Renews the lease; `false` when it is no longer this step's (its
    /// successor took it over, or another copy took it while the ledger was
    /// away or this worker was taken for gone).
    async fn renew_lease(&self, m: &StepMessage, owner: &str, lease: Duration) -> bool {
        match self.ledger.renew(&m.request_id, owner, lease).await {
            Ok(true) => {
                debug!("lease renewed");
                true
            }
            Ok(false) => {
                debug!("the lease is no longer this step's");
                false
            }
            Err(e) => {
                warn!(error.message = %e, "could not renew the lease; trying again");
                true
            }
        }
    }

    /// The broker refused (nacked) a publish of this step's outcome, e.g. an
    /// event to a subscriber's full `reject-publish` queue: nothing that
    /// follows may go out before it. The same step message waits in a delay
    /// queue, longer each time, and runs again: its step is recorded, so the
    /// provider is not called again and the refused publish is retried first.
    /// It costs no delivery, so the delivery limit is never reached this way.
    async fn hold_back(
        &self,
        t: &dyn Transport,
        provider_id: ProviderId,
        m: StepMessage,
        owner: &str,
    ) -> Result<(), EngineError> {
        let held = m.held + 1;
        let delay = schedule::hold_back_delay(held, &mut rand::rng());
        let due = now_ms() + delay.as_millis() as i64;
        warn!(
            held,
            delay_ms = delay.as_millis() as u64,
            "the broker refused a publish (nack); holding the onboarding back"
        );
        self.metrics
            .retries_total
            .with_label_values(&[provider_id.as_str(), RetryReason::Refused.as_str()])
            .inc();
        let again = StepMessage {
            seq: m.seq + 1,
            held,
            not_before_ms: Some(due),
            ..m
        };
        let published = t.publish_step(provider_id, again.to_bytes(), delay).await;
        let progress = Progress {
            waiting_until_ms: published.is_ok().then_some(due),
            ..Progress::default()
        };
        let advanced = match published {
            Ok(()) => {
                self.ledger
                    .advance(&again.request_id, owner, again.seq, &progress)
                    .await
            }
            // The message goes back to its queue: as after any failed step,
            // a call that may have acted leaves the lease as a crash would.
            Err(_) if again.uncertain => self.ledger.abandon(&again.request_id, owner).await,
            Err(_) => {
                self.ledger
                    .advance(&again.request_id, owner, again.seq - 1, &progress)
                    .await
            }
        };
        published?;
        advanced?;
        Ok(())
    }

    /// Ends a message that kept failing, before the broker's delivery limit
    /// would move it to `onboarding.dead` without a word: its request (if the
    /// ledger holds it running) ends `failed` `exhausted` with `cause`, the
    /// request whole in `onboarding.dead`, the ledger row `failed`.
    pub async fn give_up(
        &self,
        t: &dyn Transport,
        from_steps: bool,
        msg: Incoming<'_>,
        cause: &str,
    ) -> Result<(), EngineError> {
        let request_id = if from_steps {
            serde_json::from_slice::<StepMessage>(msg.body)
                .ok()
                .map(|m| m.request_id)
        } else {
            wire::parse_request(msg.body, self.settings.max_body_bytes)
                .ok()
                .map(|r| r.request_id)
        };
        let message = format!(
            "gave up after {} deliveries: {cause}",
            msg.delivery_count + 1
        );
        let record = match &request_id {
            Some(id) => self.ledger.get(id).await?,
            None => None,
        };
        let span =
            tracing::info_span!("give_up", request_id = request_id.as_deref().unwrap_or("-"));
        async {
            // A request that already ended has had its final event: a stray
            // message of it is only kept, with the reason, and no `failed`
            // contradicts its end.
            let ended = record.as_ref().is_some_and(|r| r.status != Status::Running);
            let Some(record) = record.filter(|r| r.status == Status::Running) else {
                // Not a request the ledger holds running: keep the message
                // itself, with the reason, and (unless its request already
                // ended) announce the failure.
                let provider = ProviderId::parse(&request_provider(msg.body));
                let invalid = Invalid {
                    request_id: request_id.clone(),
                    provider,
                    operation: None,
                    message: message.clone(),
                };
                let event = Event::new(EventKind::Failed, request_id.as_deref(), provider, None)
                    .failed(ErrorKind::Exhausted, None, None, message.clone());
                warn!(error.message = %message, "giving up on a message that keeps failing");
                let reason = DeadReason {
                    kind: ErrorKind::Exhausted,
                    ..front_door::dead_reason(&invalid)
                };
                return self
                    .announce_failure(t, (!ended).then_some(&event), msg.body, &msg.props, &reason)
                    .await;
            };
            let step = record.current_step.clone();
            let event = failed_event(
                &record,
                Some(record.provider),
                Some(record.operation),
                ErrorKind::Exhausted,
                step.as_deref(),
                None,
                message.clone(),
            );
            let finish = Finish {
                status: Status::Failed,
                final_event: String::from_utf8(event.to_bytes()).expect("utf-8"),
                step,
                index: record.current_index,
            };
            self.ledger.finish(&record.request_id, &finish).await?;
            warn!(error.message = %message, "giving up on a request whose messages keep failing");
            let reason = dead_reason_of(&record.request_id, &event);
            self.announce_failure(
                t,
                Some(&event),
                &record.body,
                &OriginalProps::default(),
                &reason,
            )
            .await?;
            self.metrics
                .requests_total
                .with_label_values(&[
                    record.provider.as_str(),
                    record.operation.as_str(),
                    ErrorKind::Exhausted.as_str(),
                ])
                .inc();
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Announces a failure: its `failed` event (`None` when its request
    /// already had its end), then the message whole in `onboarding.dead`,
    /// counted by kind. The event first: while the broker refuses it the
    /// message is handled again, and no second copy lands in dead.
    async fn announce_failure(
        &self,
        t: &dyn Transport,
        event: Option<&Event>,
        body: &[u8],
        props: &OriginalProps,
        reason: &DeadReason,
    ) -> Result<(), EngineError> {
        if let Some(event) = event {
            self.publish_event(t, event).await?;
        }
        t.publish_dead(body, props, reason).await?;
        self.metrics
            .dead_lettered_total
            .with_label_values(&[reason.kind.as_str()])
            .inc();
        Ok(())
    }

    /// Whether the ledger's database answers now.
    pub async fn ledger_reachable(&self) -> bool {
        self.ledger.ping().await.is_ok()
    }
}

/// A request's `failed` event, with the outputs recorded so far and the time
/// since it was accepted.
fn failed_event(
    record: &RequestRecord,
    provider: Option<ProviderId>,
    operation: Option<Operation>,
    kind: ErrorKind,
    step: Option<&str>,
    http_status: Option<u16>,
    message: String,
) -> Event {
    let mut event = Event::new(
        EventKind::Failed,
        Some(&record.request_id),
        provider,
        operation,
    )
    .failed(kind, step, http_status, message);
    event.outputs = record.outputs.clone();
    event.duration_ms = (now_ms() - record.accepted_at_ms).max(0);
    event
}

/// Why a failed request's copy goes to `onboarding.dead`, read from its
/// `failed` event.
fn dead_reason_of(request_id: &str, event: &Event) -> DeadReason {
    let error = event.error.as_ref();
    DeadReason {
        request_id: Some(request_id.to_string()),
        kind: error
            .and_then(|e| ErrorKind::parse(&e.kind))
            .unwrap_or(ErrorKind::Rejected),
        step: error.and_then(|e| e.step.clone()),
        message: error
            .map(|e| e.message.clone())
            .unwrap_or_else(|| "failed".into()),
    }
}

/// The `provider` member of a message body, if any (for a message the worker gives up on).
fn request_provider(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("provider")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn first_step(request_id: &str, provider: ProviderId) -> StepMessage {
    StepMessage {
        request_id: request_id.into(),
        provider: provider.as_str().into(),
        seq: 0,
        step: 0,
        attempt: 0,
        polls: 0,
        poll_deadline_ms: None,
        poll_state: None,
        not_before_ms: None,
        uncertain: false,
        announce: false,
        held: 0,
        gone_holder: None,
    }
}

/// One step message being worked on, with the lease held.
struct StepRun<'a> {
    engine: &'a Engine,
    t: &'a dyn Transport,
    provider: &'a dyn Provider,
    provider_id: ProviderId,
    m: StepMessage,
    owner: String,
    record: RequestRecord,
    /// A copy of this message died or stalled mid-step (its lease ran out).
    interrupted: bool,
    /// Set once this run's `accepted` event is confirmed.
    announced: &'a AtomicBool,
    /// Set when the provider was called: from then on a failure leaves the
    /// outcome unknown.
    called: &'a AtomicBool,
    /// Set when a renewal found the lease taken by another copy: this run
    /// then publishes nothing, leaving the step to that copy.
    lease_lost: &'a AtomicBool,
}

/// What a step came to, classified once.
enum Next {
    /// The step is done (now or before): go on to the next one.
    Advance {
        outputs: Map<String, Value>,
        secrets: Map<String, Value>,
    },
    /// Run this step again after a delay.
    Again {
        delay: Duration,
        attempt: u32,
        polls: u32,
        poll_deadline_ms: Option<i64>,
        poll_state: Option<Value>,
        /// The call may have reached the provider (timed out or broke off).
        uncertain: bool,
    },
    /// The request ends in `failed`.
    Fail {
        kind: ErrorKind,
        http_status: Option<u16>,
        message: String,
    },
}

impl StepRun<'_> {
    fn operation(&self) -> Operation {
        self.record.operation
    }

    fn request_json(&self) -> Result<Value, EngineError> {
        serde_json::from_slice(&self.record.body).map_err(|e| {
            LedgerError::Corrupt {
                request_id: self.record.request_id.clone(),
                message: e.to_string(),
            }
            .into()
        })
    }

    async fn go(self) -> Result<(), EngineError> {
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
        let request = self.request_json()?;
        let input = request.get("input").cloned().unwrap_or(Value::Null);
        let return_credentials = request
            .get("return_credentials")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let plan = match self.provider.plan(self.operation(), &input) {
            Ok(p) => p,
            Err(message) => {
                return self
                    .fail(None, ErrorKind::InvalidRequest, None, message)
                    .await
            }
        };
        let Some(step) = plan.get(self.m.step as usize).cloned() else {
            // Past the last step (a redrive of a request that failed after its last step).
            return self.complete(&plan, return_credentials, None).await;
        };
        tracing::Span::current().record("step", step.name);
        let next = self.execute(&step, &input).await;
        match next {
            Next::Advance {
                outputs, secrets, ..
            } => {
                let is_last = self.m.step as usize + 1 >= plan.len();
                let progress = match plan.get(self.m.step as usize + 1) {
                    Some(next_step) => Progress {
                        current_step: Some(next_step.name.into()),
                        current_index: Some(self.m.step as i64 + 1),
                        waiting_until_ms: None,
                    },
                    None => Progress::default(),
                };
                // Idempotent: a step found recorded is recorded again with no
                // change to its outputs, and the progress is noted. A step
                // whose provider call made something is held here, outcome in
                // hand, until the ledger takes it: handing the message back
                // instead would make the create again. While the ledger is
                // away nobody else can claim the request, and consumption is
                // paused.
                let mut pause = Duration::from_secs(1);
                loop {
                    match self
                        .engine
                        .ledger
                        .record_step(
                            &self.m.request_id,
                            &step.ledger_key(),
                            &outputs,
                            &secrets,
                            &progress,
                        )
                        .await
                    {
                        Ok(()) => break,
                        Err(e) if e.is_outage() => {
                            warn!(step = step.name, retry_in_ms = pause.as_millis() as u64, "the ledger is away: holding the step's outcome until it can be recorded");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(5));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                let mut all_outputs = self.record.outputs.clone();
                all_outputs.extend(outputs);
                let mut all_secrets = self.record.secrets.clone();
                all_secrets.extend(secrets);
                if self.lease_lost.load(Ordering::SeqCst) {
                    return Err(EngineError::LeaseLost);
                }
                let mut step_event = self.event(EventKind::StepCompleted);
                step_event.step = Some(step.name.into());
                step_event.step_index = step.index;
                step_event.outputs = all_outputs.clone();
                if is_last {
                    let mut record = self.record.clone();
                    record.outputs = all_outputs;
                    record.secrets = all_secrets;
                    let run = StepRun { record, ..self };
                    return run
                        .complete(&plan, return_credentials, Some(step_event))
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
                // The event is confirmed before the successor exists: once
                // the successor is out, this message is stale and would never
                // publish a refused event again.
                self.engine.publish_event(self.t, &step_event).await?;
                self.t
                    .publish_step(self.provider_id, next.to_bytes(), Duration::ZERO)
                    .await?;
                // No ledger write here: the successor's claim moves the cursor
                // and takes the lease over (it exists, so it was confirmed).
                info!(step = step.name, index = ?step.index, "step completed");
                Ok(())
            }
            Next::Again {
                delay,
                attempt,
                polls,
                poll_deadline_ms,
                poll_state,
                uncertain,
            } => {
                let due = now_ms() + delay.as_millis() as i64;
                let again = StepMessage {
                    seq: self.m.seq + 1,
                    uncertain,
                    attempt,
                    polls,
                    poll_deadline_ms,
                    poll_state,
                    not_before_ms: Some(due),
                    announce: false,
                    held: 0,
                    gone_holder: None,
                    ..self.m.clone()
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
            Next::Fail {
                kind,
                http_status,
                message,
            } => self.fail(Some(&step), kind, http_status, message).await,
        }
    }

    /// Runs the provider call (unless the ledger has it) and classifies what came back.
    async fn execute(&self, step: &StepKey, input: &Value) -> Next {
        let key = step.ledger_key();
        let p = self.provider_id.as_str();
        if self.record.done_steps.contains(&key) {
            debug!(
                step = step.name,
                "step already recorded; not calling the provider again"
            );
            self.engine
                .metrics
                .steps_total
                .with_label_values(&[p, step.name, "skipped"])
                .inc();
            return Next::Advance {
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
        let outcome_label;
        if ctx.possible_repeat {
            self.note_possible_repeat(step, &result);
        }
        let next = match result {
            Ok(StepOutcome::Done(done)) => {
                outcome_label = "done";
                Next::Advance {
                    outputs: done.outputs,
                    secrets: done.secrets,
                }
            }
            Ok(StepOutcome::Pending { status, state }) => {
                let policy = self.provider.poll_policy(step.name);
                let now = now_ms();
                let Some(policy) = policy else {
                    outcome_label = "job_failed";
                    self.count(step, outcome_label);
                    return Next::Fail {
                        kind: ErrorKind::JobFailed,
                        http_status: None,
                        message: format!("{}: a one-shot step answered \"not yet\"", step.name),
                    };
                };
                let deadline = self
                    .m
                    .poll_deadline_ms
                    .unwrap_or(now + policy.deadline.as_millis() as i64);
                if now >= deadline {
                    outcome_label = "timed_out";
                    self.count(step, outcome_label);
                    return Next::Fail {
                        kind: ErrorKind::TimedOut,
                        http_status: None,
                        message: format!(
                            "{}: job still {status:?} after {} polls, past its deadline of {} s",
                            step.name,
                            self.m.polls + 1,
                            policy.deadline.as_secs()
                        ),
                    };
                }
                outcome_label = "pending";
                self.engine
                    .metrics
                    .polls_total
                    .with_label_values(&[p, step.name])
                    .inc();
                let wait = policy
                    .wait(self.m.polls)
                    .min(Duration::from_millis((deadline - now).max(0) as u64));
                debug!(step = step.name, status = %status, wait_ms = wait.as_millis() as u64, "not yet; polling again later");
                Next::Again {
                    delay: wait,
                    attempt: self.m.attempt,
                    polls: self.m.polls + 1,
                    poll_deadline_ms: Some(deadline),
                    poll_state: state,
                    uncertain: false,
                }
            }
            Err(StepError::Transient {
                reason,
                retry_after,
                http_status,
                message,
            }) => {
                if let (RetryReason::RateLimited | RetryReason::ServerError, Some(wait)) =
                    (reason, retry_after)
                {
                    let until = now_ms() + wait.as_millis() as i64;
                    self.engine.pause_provider(self.provider_id, until);
                    if let Err(e) = self.t.publish_pause(self.provider_id, until).await {
                        warn!(error.message = %e, "could not tell the other workers of the provider's pause");
                    }
                }
                let policy = self.provider.retry_policy();
                let attempt = self.m.attempt + 1;
                if attempt >= policy.max_attempts {
                    outcome_label = "exhausted";
                    Next::Fail {
                        kind: ErrorKind::Exhausted,
                        http_status,
                        message: format!("{message} (gave up after {attempt} attempts)"),
                    }
                } else {
                    outcome_label = "retry";
                    let delay =
                        schedule::retry_delay(&policy, attempt, retry_after, &mut rand::rng());
                    self.engine
                        .metrics
                        .retries_total
                        .with_label_values(&[p, reason.as_str()])
                        .inc();
                    warn!(step = step.name, reason = reason.as_str(), attempt, delay_ms = delay.as_millis() as u64, error.message = %message, "transient failure; retrying from a delay queue");
                    Next::Again {
                        delay,
                        attempt,
                        polls: self.m.polls,
                        poll_deadline_ms: self.m.poll_deadline_ms,
                        poll_state: self.m.poll_state.clone(),
                        // The call may have reached the provider: it timed out, broke
                        // off, failed on the provider's side, or answered something
                        // unreadable after acting.
                        uncertain: matches!(
                            reason,
                            RetryReason::Timeout
                                | RetryReason::Connection
                                | RetryReason::BadResponse
                                | RetryReason::ServerError
                        ),
                    }
                }
            }
            Err(StepError::Rejected {
                http_status,
                message,
            }) => {
                outcome_label = "rejected";
                Next::Fail {
                    kind: ErrorKind::Rejected,
                    http_status,
                    message,
                }
            }
            Err(StepError::JobFailed { message }) => {
                outcome_label = "job_failed";
                Next::Fail {
                    kind: ErrorKind::JobFailed,
                    http_status: None,
                    message,
                }
            }
        };
        self.count(step, outcome_label);
        next
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

    fn count(&self, step: &StepKey, outcome: &str) {
        self.engine
            .metrics
            .steps_total
            .with_label_values(&[self.provider_id.as_str(), step.name, outcome])
            .inc();
    }

    fn event(&self, kind: EventKind) -> Event {
        let mut e = Event::new(
            kind,
            Some(&self.m.request_id),
            Some(self.provider_id),
            Some(self.operation()),
        );
        e.duration_ms = (now_ms() - self.record.accepted_at_ms).max(0);
        e
    }

    /// Ends the request `completed`. `last_step`, the last step's event, is
    /// published while the end is recorded (it must precede `completed`).
    async fn complete(
        self,
        plan: &[StepKey],
        return_credentials: bool,
        last_step: Option<Event>,
    ) -> Result<(), EngineError> {
        let mut event = self.event(EventKind::Completed);
        event.outputs = self.record.outputs.clone();
        if return_credentials {
            // Only on request, and only in this one event.
            event.outputs.extend(self.record.secrets.clone());
        }
        let finish = Finish {
            status: Status::Completed,
            final_event: String::from_utf8(event.to_bytes()).expect("utf-8"),
            step: None,
            index: Some(plan.len() as i64),
        };
        // The last step's event is confirmed before the end is recorded: a
        // message that finds the request ended publishes only its final event.
        if let Some(e) = &last_step {
            self.engine.publish_event(self.t, e).await?;
        }
        self.engine
            .ledger
            .finish(&self.m.request_id, &finish)
            .await?;
        self.engine.publish_event(self.t, &event).await?;
        self.wind_up("completed").await?;
        info!(duration_ms = event.duration_ms, "completed");
        Ok(())
    }

    async fn fail(
        self,
        step: Option<&StepKey>,
        kind: ErrorKind,
        http_status: Option<u16>,
        message: String,
    ) -> Result<(), EngineError> {
        let step_name = step.map(|s| s.name);
        let event = failed_event(
            &self.record,
            Some(self.provider_id),
            Some(self.operation()),
            kind,
            step_name,
            http_status,
            message.clone(),
        );
        let finish = Finish {
            status: Status::Failed,
            final_event: String::from_utf8(event.to_bytes()).expect("utf-8"),
            step: step_name.map(Into::into),
            index: Some(self.m.step as i64),
        };
        self.engine
            .ledger
            .finish(&self.m.request_id, &finish)
            .await?;
        warn!(step = step_name.unwrap_or("-"), error.kind = kind.as_str(), http_status, error.message = %message, "failed");
        self.publish_failure(&event).await?;
        self.wind_up(kind.as_str()).await
    }

    /// After a request's end is recorded and announced: the chain moves past
    /// this message (releasing its lease) and the outcome is counted.
    async fn wind_up(&self, outcome: &str) -> Result<(), EngineError> {
        self.engine
            .ledger
            .advance(
                &self.m.request_id,
                &self.owner,
                self.m.seq + 1,
                &Progress::default(),
            )
            .await?;
        self.engine
            .metrics
            .requests_total
            .with_label_values(&[
                self.provider_id.as_str(),
                self.operation().as_str(),
                outcome,
            ])
            .inc();
        Ok(())
    }

    async fn publish_failure(&self, event: &Event) -> Result<(), EngineError> {
        let reason = dead_reason_of(&self.m.request_id, event);
        self.engine
            .announce_failure(
                self.t,
                Some(event),
                &self.record.body,
                &OriginalProps::default(),
                &reason,
            )
            .await
    }

    /// A step message for a request that already ended: a crash came between
    /// recording the end and confirming what follows; publish it again.
    async fn republish_final(self) -> Result<(), EngineError> {
        if let Some(text) = &self.record.final_event {
            let event: Event = serde_json::from_str(text).map_err(|e| LedgerError::Corrupt {
                request_id: self.record.request_id.clone(),
                message: e.to_string(),
            })?;
            if self.record.status == Status::Failed {
                self.publish_failure(&event).await?;
            } else {
                self.engine.publish_event(self.t, &event).await?;
            }
        }
        self.engine
            .ledger
            .advance(
                &self.m.request_id,
                &self.owner,
                self.m.seq + 1,
                &Progress::default(),
            )
            .await?;
        Ok(())
    }
}
