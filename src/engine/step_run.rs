//! A message from a provider's step queue, up to the step run: read it, let
//! it wait if it came early or its provider is paused, take the request's
//! lease (waiting out a live holder, taking over from a gone one), renew the
//! lease while the step runs, and hold the onboarding back when the broker
//! refuses (nacks) a publish of the step's outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{debug, info, warn, Instrument};

use super::execute::StepRun;
use super::transport::{Incoming, Transport, TransportError};
use super::wire::{Invalid, StepMessage};
use super::{schedule, Engine, EngineError};
use crate::domain::{ProviderId, RetryReason};
use crate::ledger::{now_ms, Claim, Progress};

/// How long a claimer waits before asking again whether a lease's holder is
/// gone: longer than a live worker takes to retake its liveness lock.
const HOLDER_RECHECK: Duration = Duration::from_secs(2);

/// A delay tier may deliver this much early and the step still runs.
const EARLY_TOLERANCE_MS: i64 = 25;

impl Engine {
    /// A message from a provider's step queue.
    pub async fn handle_step(
        &self,
        t: &dyn Transport,
        msg: Incoming<'_>,
    ) -> Result<(), EngineError> {
        let step_msg = match StepMessage::from_bytes(msg.body) {
            Ok(m) => m,
            Err(unreadable) => {
                // Only the worker writes these; one that can't be read (or
                // names a provider this worker does not know) is kept for a human.
                let invalid = Invalid {
                    request_id: None,
                    provider: None,
                    operation: None,
                    message: unreadable.to_string(),
                };
                return self.reject_invalid(t, &msg, invalid).await;
            }
        };
        // `step` is filled in once the plan says which step this message is.
        let span = tracing::info_span!("step", request_id = %step_msg.request_id, provider = %step_msg.provider, seq = step_msg.seq, step = tracing::field::Empty);
        self.run_step_message(t, step_msg).instrument(span).await
    }

    async fn run_step_message(&self, t: &dyn Transport, m: StepMessage) -> Result<(), EngineError> {
        let provider_id = m.provider;
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
}
