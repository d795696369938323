//! The step machine: validates requests, runs one step per message, classifies
//! the outcome in one place and decides what follows (next step, delayed retry
//! or poll, final event). Knows nothing of lapin or HTTP: it reaches the broker
//! through [`Transport`] and providers through [`step::Provider`].
//!
//! Every handler returns `Ok` only once everything that follows from its
//! message (ledger record, next message, event) is recorded and confirmed; the
//! caller acknowledges the message then, and not before.
//!
//! # Layout
//! - [`transport`]: the [`Transport`] trait and the delivery as the engine sees it.
//! - `request`: a message from `onboarding.requests` ([`Engine::handle_request`]).
//! - `step_run`: a message from a step queue ([`Engine::handle_step`]): the
//!   lease, its heartbeat, and the hold-back after a nack.
//! - `execute`: one step run with the lease held: the provider call, then
//!   acting on the [`classify`] decision.
//! - [`classify`]: the pure decision on a step's result.
//! - `end`: how a request ends (`completed`, `failed`, given up on).
//! - [`front_door`], [`wire`], [`schedule`], [`pauses`], [`step`], [`local`].

pub mod classify;
mod end;
mod execute;
pub mod front_door;
#[cfg(test)]
pub mod local;
pub mod pauses;
mod request;
pub mod schedule;
pub mod step;
mod step_run;
pub mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::domain::ProviderId;
use crate::ledger::{now_ms, Ledger, LedgerError};
use crate::metrics::Metrics;
use step::{Provider, Providers};
use wire::Event;

pub use transport::{
    DeadReason, HeaderId, Incoming, OriginalProps, Transport, TransportError, REPLAY_HEADER,
};

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

    /// Whether the ledger's database answers now.
    pub async fn ledger_reachable(&self) -> bool {
        self.ledger.ping().await.is_ok()
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
            .with_label_values(&[event.event.as_str()])
            .inc();
        Ok(())
    }
}
