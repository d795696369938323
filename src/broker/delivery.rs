//! One delivery's handling: run the engine on it, wait while the ledger is
//! away, pause before a failed message goes back, give up before the
//! delivery limit, and acknowledge or reject.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicRejectOptions};
use tracing::{error, info, warn};

use crate::engine::{schedule, Engine, HeaderId, Incoming, OriginalProps};
use crate::metrics::{Health, Metrics};

use super::properties::{delivery_count, header_request_id, is_replay};
use super::publish::AmqpTransport;
use super::session::Source;

/// What a delivery's task needs.
pub(super) struct Handler {
    pub(super) engine: Engine,
    pub(super) transport: Arc<AmqpTransport>,
    pub(super) health: Health,
    pub(super) metrics: Metrics,
    pub(super) give_up_after: u32,
}

impl Handler {
    pub(super) async fn handle(self, source: Source, mut delivery: lapin::message::Delivery) {
        let replay = is_replay(&delivery.properties);
        let count = delivery_count(&delivery.properties);
        let header = header_request_id(&delivery.properties);
        let props = OriginalProps(Some(Arc::new(delivery.properties.clone())));
        let body = Arc::new(std::mem::take(&mut delivery.data));
        let redelivered = delivery.redelivered;
        let incoming = |body: &Arc<Vec<u8>>| (body.clone(), props.clone(), header.clone());
        // While the ledger is unreachable nothing is handled: the deliveries
        // in hand wait here (the prefetch stops the broker sending more), so
        // none is spent and none spins.
        if self.health.ledger_down() {
            self.wait_for_ledger().await;
        }
        let result = self
            .run(source, incoming(&body), redelivered, replay, count)
            .await;
        let result = match result {
            Err(e) if e.outage => {
                // The ledger went away under this delivery: wait until it is
                // back, then hand the message back whole to start over.
                self.wait_for_ledger().await;
                Err(e.message)
            }
            Err(e) if count + 1 >= self.give_up_after => {
                let (body, props, header) = incoming(&body);
                let msg = Incoming {
                    body: &body,
                    redelivered,
                    replay,
                    props,
                    delivery_count: count,
                    header_request_id: header,
                };
                let from_steps = matches!(source, Source::Steps(_));
                match self
                    .engine
                    .give_up(self.transport.as_ref(), from_steps, msg, &e.message)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(give_up) => Err(format!("{}; and giving up failed: {give_up}", e.message)),
                }
            }
            Err(e) => {
                // A pause that grows with the deliveries, so a message that
                // keeps failing does not become a hot loop.
                tokio::time::sleep(schedule::redelivery_pause(count)).await;
                Err(e.message)
            }
            Ok(()) => Ok(()),
        };
        match result {
            Ok(()) => match delivery.acker.ack(BasicAckOptions::default()).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!("ack not delivered (channel reconnected); the message will come again")
                }
                Err(e) => warn!(error.message = %e, "ack failed; the message will come again"),
            },
            Err(e) => {
                error!(error.message = %e, queue = %source.queue(), deliveries = count + 1, "could not finish handling a message; it goes back to its queue");
                // basic.reject, not nack: from RabbitMQ 4.3 a requeueing nack
                // no longer counts as a delivery, and the delivery count is
                // what ends a message that keeps failing.
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await;
            }
        }
    }

    /// Runs the engine on a delivery in a task of its own, so that a panic
    /// still ends in a nack instead of leaving the delivery unacknowledged
    /// until the channel closes.
    async fn run(
        &self,
        source: Source,
        (body, props, header): (Arc<Vec<u8>>, OriginalProps, HeaderId),
        redelivered: bool,
        replay: bool,
        delivery_count: u32,
    ) -> Result<(), Failure> {
        let engine = self.engine.clone();
        let transport = self.transport.clone();
        let work = tokio::spawn(async move {
            let incoming = Incoming {
                body: &body,
                redelivered,
                replay,
                props,
                delivery_count,
                header_request_id: header,
            };
            match source {
                Source::Requests => engine.handle_request(transport.as_ref(), incoming).await,
                Source::Steps(_) => engine.handle_step(transport.as_ref(), incoming).await,
                // Read by the session itself, never handed to a handler.
                Source::Control => Ok(()),
            }
        });
        match work.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure {
                outage: e.is_ledger_outage(),
                message: e.to_string(),
            }),
            Err(e) => Err(Failure {
                outage: false,
                message: format!("the handler panicked: {e}"),
            }),
        }
    }

    /// Returns once the ledger answers; while it does not, the worker is not
    /// ready. Asks at once, then with back-off up to 5 s.
    async fn wait_for_ledger(&self) {
        let mut pause = Duration::from_millis(200);
        while !self.engine.ledger_reachable().await {
            if !self.health.ledger_down() {
                warn!("the ledger does not answer: pausing consumption until it does");
            }
            self.health.set_ledger_down(true, &self.metrics);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        if self.health.ledger_down() {
            info!("the ledger answers again: resuming");
        }
        self.health.set_ledger_down(false, &self.metrics);
    }
}

/// A delivery's handling failed.
struct Failure {
    /// Because the ledger could not be reached.
    outage: bool,
    message: String,
}
