//! A message from `onboarding.requests`: the front door's verdict acted on.
//! A new request is recorded and its first step message published; a copy
//! of a known one publishes its final event again, or its first step (a
//! redelivery of an accept that died), or is dropped; an operator's replay
//! resumes a failed request where it failed; an invalid message ends in a
//! `failed` event and `onboarding.dead`.

use std::time::Duration;

use tracing::{info, warn, Instrument};

use super::transport::{Incoming, Transport};
use super::wire::{self, Event, Invalid, StepMessage};
use super::{end, front_door, Engine, EngineError};
use crate::domain::ErrorKind;
use crate::ledger::{Accept, LedgerError, NewRequest, RequestRecord, Status};

impl Engine {
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
                    let reason = end::dead_reason_of(&request.request_id, &event)?;
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
                    &StepMessage::first(&request.request_id, request.provider),
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
            ..StepMessage::first(&request.request_id, request.provider)
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

    pub(super) async fn reject_invalid(
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
}
