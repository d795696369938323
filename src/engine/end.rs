//! How a request ends. `completed` after its last step; `failed` with the
//! `failed` event first and then the request whole in `onboarding.dead`
//! ([`Engine::announce_failure`]); a message that keeps failing is given up on
//! (`failed` `exhausted`, [`Engine::give_up`]); and a step message that finds
//! its request ended publishes the final event again.

use serde_json::Value;
use tracing::{info, warn, Instrument};

use super::execute::StepRun;
use super::step::StepKey;
use super::transport::{DeadReason, Incoming, OriginalProps, Transport};
use super::wire::{self, Event, Invalid, StepMessage};
use super::{front_door, Engine, EngineError};
use crate::domain::{ErrorKind, EventKind, Operation, ProviderId};
use crate::ledger::{now_ms, Finish, LedgerError, Progress, RequestRecord, Status};

impl Engine {
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
            match StepMessage::from_bytes(msg.body) {
                Ok(m) => Some(m.request_id),
                Err(unreadable) => unreadable.request_id().map(str::to_string),
            }
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
                let provider = request_provider(msg.body);
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
            let reason = dead_reason_of(&record.request_id, &event)?;
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
    pub(super) async fn announce_failure(
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
}

impl StepRun<'_> {
    /// Ends the request `completed`. `last_step`, the last step's event, is
    /// published while the end is recorded (it must precede `completed`).
    pub(super) async fn complete(
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

    pub(super) async fn fail(
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
        let reason = dead_reason_of(&self.m.request_id, event)?;
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
    pub(super) async fn republish_final(self) -> Result<(), EngineError> {
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
/// `failed` event; a `failed` event without its error is corrupt.
pub(super) fn dead_reason_of(request_id: &str, event: &Event) -> Result<DeadReason, LedgerError> {
    let Some(error) = &event.error else {
        return Err(LedgerError::Corrupt {
            request_id: request_id.to_string(),
            message: format!("its {} event has no error", event.event),
        });
    };
    Ok(DeadReason {
        request_id: Some(request_id.to_string()),
        kind: error.kind,
        step: error.step.clone(),
        message: error.message.clone(),
    })
}

/// The known provider a message body names, if any (for a message the worker
/// gives up on: a request or a step message).
fn request_provider(body: &[u8]) -> Option<ProviderId> {
    let v = serde_json::from_slice::<Value>(body).ok()?;
    ProviderId::parse(v.get("provider")?.as_str()?)
}
