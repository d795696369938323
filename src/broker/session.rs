//! One connection's life and the loop around it: connect to a node (the next
//! one when a session fails), declare the topology, consume every queue, hand
//! each delivery to its own task, and fail the session on a lost connection,
//! an ended consumer or a closed channel.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::domain::ProviderId;
use crate::engine::Engine;
use crate::metrics::{Health, Metrics};

use super::delivery::Handler;
use super::publish::AmqpTransport;
use super::{connect, node_name, topology, BrokerError, BrokerSettings};

/// Why a session ended by failure: a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionFailure {
    ConnectionLost,
    ConsumerCancelled,
    ChannelClosed,
    ConfirmTimeout,
}

impl SessionFailure {
    fn as_str(self) -> &'static str {
        match self {
            SessionFailure::ConnectionLost => "connection_lost",
            SessionFailure::ConsumerCancelled => "consumer_cancelled",
            SessionFailure::ChannelClosed => "channel_closed",
            SessionFailure::ConfirmTimeout => "confirm_timeout",
        }
    }
}

/// Which queue a consumer reads.
#[derive(Clone, Copy, Debug)]
pub(super) enum Source {
    Requests,
    Steps(ProviderId),
    /// This session's own queue on `onboarding.control`.
    Control,
}

impl Source {
    pub(super) fn queue(self) -> String {
        match self {
            Source::Requests => topology::REQUESTS_QUEUE.to_string(),
            Source::Steps(p) => topology::step_queue(p),
            Source::Control => topology::CONTROL_EXCHANGE.to_string(),
        }
    }
}

/// A message on `onboarding.control`: a provider's pause to honour.
fn on_control(engine: &Engine, body: &[u8]) {
    match serde_json::from_slice::<crate::engine::pauses::PauseMessage>(body) {
        Ok(p) => engine.pause_provider(p.provider, p.until_ms()),
        Err(e) => {
            warn!(error.message = %e, bytes = body.len(), "unreadable control message ignored")
        }
    }
}

/// Runs the worker's consumers until `shutdown`, reconnecting whenever the
/// connection is lost. Returns after in-flight deliveries settled (or the grace ran out).
pub async fn run(
    settings: BrokerSettings,
    engine: Engine,
    health: Health,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut backoff = new_backoff(&settings);
    let nodes: Vec<String> = settings.urls.iter().map(|u| node_name(u)).collect();
    for n in &nodes {
        metrics.broker_node.with_label_values(&[n]).set(0);
    }
    // Every delivery's handler, across sessions: all are waited for at shutdown.
    let tracker = TaskTracker::new();
    let mut settled = false;
    // The node to try next, and how many have failed in a row.
    let mut node = 0;
    let mut failed_in_a_row = 0;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let started = std::time::Instant::now();
        let outcome = session(
            &settings,
            &settings.urls[node],
            &nodes[node],
            &tracker,
            &engine,
            &health,
            &metrics,
            &shutdown,
        )
        .await;
        metrics
            .broker_node
            .with_label_values(&[&nodes[node]])
            .set(0);
        // A session that stayed up a while resets the back-off.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = new_backoff(&settings);
        }
        match outcome {
            Ok(()) => {
                // Shut down cleanly; the session settled every handler.
                settled = true;
                break;
            }
            Err((reason, e)) => {
                health.set_ready(false);
                health.set_node(None);
                metrics.broker_connected.set(0);
                metrics
                    .broker_session_failures_total
                    .with_label_values(&[reason.as_str()])
                    .inc();
                // The next node at once while some of this round's are
                // untried; a pause that grows once every node has failed.
                if started.elapsed() > Duration::from_secs(30) {
                    failed_in_a_row = 0;
                }
                failed_in_a_row += 1;
                let failed_node = node;
                node = (node + 1) % nodes.len();
                let pause = if failed_in_a_row % nodes.len() != 0 {
                    settings.reconnect_min
                } else {
                    backoff.next().unwrap_or(settings.reconnect_max)
                };
                warn!(reason = reason.as_str(), node = %nodes[failed_node], next_node = %nodes[node], error.message = %e, retry_in_ms = pause.as_millis() as u64, "broker session failed; reconnecting and declaring the topology again");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    health.set_ready(false);
    health.set_node(None);
    metrics.broker_connected.set(0);
    if !settled {
        // Stopped while reconnecting: handlers of earlier sessions may still run.
        settle(&tracker, settings.shutdown_grace).await;
    }
}

fn new_backoff(s: &BrokerSettings) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(s.reconnect_min)
        .with_max_delay(s.reconnect_max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// One connection's life: declare, consume, hand deliveries to the engine.
/// `Ok` after a clean shutdown, `Err` with the reason when the session failed.
#[allow(clippy::too_many_arguments)]
async fn session(
    settings: &BrokerSettings,
    url: &str,
    node: &str,
    tracker: &TaskTracker,
    engine: &Engine,
    health: &Health,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), (SessionFailure, BrokerError)> {
    let lost = |e: BrokerError| (SessionFailure::ConnectionLost, e);
    let conn = connect(url, "onboarding-worker", settings.tls_ca_file.as_deref())
        .await
        .map_err(lost)?;
    let setup = conn.create_channel().await.map_err(|e| lost(e.into()))?;
    topology::declare(&setup)
        .await
        .map_err(|e| lost(e.into()))?;

    let mut sources = vec![(
        Source::Requests,
        topology::REQUESTS_QUEUE.to_string(),
        settings.prefetch,
    )];
    for (id, p) in engine.providers() {
        sources.push((
            Source::Steps(*id),
            topology::step_queue(*id),
            p.concurrency().min(u16::MAX as usize) as u16,
        ));
    }
    // As many publishing channels as deliveries can be in hand at once (each
    // handler publishes one message at a time), within reason.
    let in_hand: usize = sources.iter().map(|(_, _, p)| (*p).max(1) as usize).sum();
    let transport = Arc::new(
        AmqpTransport::open(
            &conn,
            in_hand.min(MAX_PUBLISH_CHANNELS),
            settings.confirm_timeout,
            metrics.clone(),
        )
        .await
        .map_err(lost)?,
    );
    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    for (source, queue, prefetch) in sources {
        let ch = conn.create_channel().await.map_err(|e| lost(e.into()))?;
        ch.basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(|e| lost(e.into()))?;
        let (tag, stream) = consume(&ch, queue.as_str().into(), source, false)
            .await
            .map_err(|e| lost(e.into()))?;
        consumers.push((ch, tag));
        streams.push(stream);
    }
    {
        // A queue of this session's own on the control exchange: exclusive,
        // so it goes with the connection. Auto-acknowledged: a pause is
        // advice, and a lost one is found again at the provider.
        let ch = conn.create_channel().await.map_err(|e| lost(e.into()))?;
        let queue = ch
            .queue_declare(
                "".into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| lost(e.into()))?;
        ch.queue_bind(
            queue.name().clone(),
            topology::CONTROL_EXCHANGE.into(),
            "".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| lost(e.into()))?;
        let (tag, stream) = consume(&ch, queue.name().clone(), Source::Control, true)
            .await
            .map_err(|e| lost(e.into()))?;
        consumers.push((ch, tag));
        streams.push(stream);
    }
    let mut deliveries = futures::stream::select_all(streams);
    health.set_node(Some(node.to_string()));
    health.set_ready(true);
    metrics.broker_connected.set(1);
    metrics.broker_node.with_label_values(&[node]).set(1);
    metrics.broker_connections_total.inc();
    info!(node, "connected to the broker and consuming");
    let mut watchdog = tokio::time::interval(CHANNEL_CHECK_EVERY);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let failure = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            _ = watchdog.tick() => {
                if !conn.status().connected() {
                    break Some((SessionFailure::ConnectionLost, BrokerError::Other("the connection is closed".into())));
                }
                if transport.stalled() {
                    break Some((SessionFailure::ConfirmTimeout, BrokerError::Other(format!("a publish went unconfirmed for {} ms", settings.confirm_timeout.as_millis()))));
                }
                if !transport.all_open() || consumers.iter().any(|(ch, _)| !ch.status().connected()) {
                    break Some((SessionFailure::ChannelClosed, BrokerError::Other("a channel was closed by the broker".into())));
                }
            }
            next = deliveries.next() => match next {
                Some((Source::Control, Some(Ok(delivery)))) => on_control(engine, &delivery.data),
                Some((source, Some(Ok(delivery)))) => {
                    let handler = Handler {
                        engine: engine.clone(),
                        transport: transport.clone(),
                        health: health.clone(),
                        metrics: metrics.clone(),
                        give_up_after: settings.give_up_after_deliveries,
                    };
                    tracker.spawn(handler.handle(source, delivery));
                }
                Some((source, Some(Err(e)))) => {
                    let reason = if conn.status().connected() { SessionFailure::ChannelClosed } else { SessionFailure::ConnectionLost };
                    break Some((reason, BrokerError::Other(format!("consumer of {}: {e}", source.queue()))));
                }
                Some((source, None)) => break Some((
                    SessionFailure::ConsumerCancelled,
                    BrokerError::Other(format!("the consumer of {} was cancelled by the broker (queue deleted, or its node lost)", source.queue())),
                )),
                None => break Some((SessionFailure::ConsumerCancelled, BrokerError::Other("no consumer left".into()))),
            }
        }
    };
    health.set_ready(false);
    metrics.broker_connected.set(0);
    if let Some(failure) = failure {
        // Closing the connection hands every unacknowledged delivery back to
        // the broker at once (in-flight handlers then fail to ack); the ledger
        // makes their redelivery harmless. A half-broken connection left open
        // would keep its consumers' messages.
        close(&conn, "session failed; reconnecting").await;
        return Err(failure);
    }
    info!("shutting down: no new deliveries; settling those in hand");
    for (ch, tag) in &consumers {
        let _ = ch
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    drop(deliveries);
    settle(tracker, settings.shutdown_grace).await;
    close(&conn, "shutdown").await;
    info!("broker connection closed");
    Ok(())
}

/// Closes the connection, waiting at most [`CLOSE_WAIT`] for the broker's
/// close-ok: a broker that has blocked the connection (a resource alarm) reads
/// nothing from it until the alarm clears, and would hold the session, and
/// every reconnection, for as long. Its deliveries then go back to their queues
/// when the broker reads the close.
async fn close(conn: &Connection, why: &str) {
    if tokio::time::timeout(CLOSE_WAIT, conn.close(200, why.into()))
        .await
        .is_err()
    {
        warn!(
            wait_ms = CLOSE_WAIT.as_millis() as u64,
            "the broker did not answer the connection's close (blocked?); going on without it"
        );
    }
}

/// How long a connection's close waits for the broker.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A consumer's deliveries, tagged with where they come from.
type Deliveries = futures::stream::BoxStream<
    'static,
    (
        Source,
        Option<Result<lapin::message::Delivery, lapin::Error>>,
    ),
>;

/// Starts consuming `queue` on `ch` as `source`; returns the consumer tag and
/// its deliveries. The stream yields one last `None` when the consumer ends
/// (the broker's basic.cancel, or its channel closed): `select_all` alone
/// would drop an ended stream silently and the queue would go unconsumed.
async fn consume(
    ch: &Channel,
    queue: ShortString,
    source: Source,
    no_ack: bool,
) -> lapin::Result<(String, Deliveries)> {
    let tag = format!("onboarding-worker-{}", uuid::Uuid::new_v4());
    let consumer = ch
        .basic_consume(
            queue,
            tag.as_str().into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let stream = consumer
        .map(move |d| (source, Some(d)))
        .chain(futures::stream::once(async move { (source, None) }))
        .boxed();
    Ok((tag, stream))
}

/// Waits up to `grace` for every handler still running: this session's and
/// those of earlier sessions (a handler outlives its failed session, perhaps
/// mid-call to a provider).
async fn settle(tracker: &TaskTracker, grace: Duration) {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            grace_ms = grace.as_millis() as u64,
            "grace period over; unsettled deliveries go back to the queue"
        );
    }
}

/// Publishing channels at most, whatever the prefetch settings.
const MAX_PUBLISH_CHANNELS: usize = 128;

/// How often the session checks that its connection and channels are open.
const CHANNEL_CHECK_EVERY: Duration = Duration::from_millis(500);
