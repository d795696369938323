//! Everything RabbitMQ: the only module that imports lapin.
//!
//! Owns the connection and its recovery (reconnect with back-off, readiness
//! meanwhile), the topology ([`topology`]), confirmed publishing (the engine's
//! [`Transport`]) and consuming: one consumer per queue, each delivery handled
//! in its own task and acknowledged only after the engine says everything that
//! follows from it is confirmed.

pub mod admin;
pub mod ceiling;
pub mod topology;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::domain::ProviderId;
use crate::engine::{
    DeadReason, Engine, EngineError, Incoming, OriginalProps, Transport, TransportError,
    REPLAY_HEADER,
};
use crate::metrics::{Health, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker: {0}")]
    Other(String),
}

/// How the worker talks to the broker.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    pub url: String,
    pub prefetch: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub shutdown_grace: Duration,
    /// For `amqps://`: CA certificates (PEM) trusted besides the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

/// Connects, naming the connection so operators can find it in the management UI.
///
/// An `amqps://` URL is verified with rustls against the system's roots
/// (rustls-platform-verifier) plus, when given, the CA certificates in
/// `tls_ca_file` (PEM); the server's certificate must name the URL's host.
/// `tls_ca_file` is read on every call, so a reconnect picks up a renewed CA.
pub async fn connect(
    url: &str,
    name: &str,
    tls_ca_file: Option<&Path>,
) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let Some(path) = tls_ca_file else {
        return Ok(Connection::connect(url, props).await?);
    };
    let pem = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| BrokerError::Other(format!("amqp.tls_ca_file {}: {e}", path.display())))?;
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    };
    let runtime = lapin::runtime::default_runtime()?;
    Ok(Connection::connect_with_config(url, props, tls, runtime).await?)
}

/// A channel in confirm mode, for publishing.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, BrokerError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

fn persistent(content_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(content_type.into())
}

fn lstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Publishes with `mandatory` and waits for the confirm; a nack or a returned
/// (unroutable) message is an error even though the broker acked it.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), TransportError> {
    let rk =
        ShortString::try_new(routing_key).map_err(|e| TransportError::Broker(e.to_string()))?;
    let confirm = channel
        .basic_publish(
            exchange.into(),
            rk,
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .map_err(|e| TransportError::Broker(e.to_string()))?
        .await
        .map_err(|e| TransportError::Broker(e.to_string()))?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(TransportError::Unroutable(format!(
            "{} to {exchange:?}/{routing_key:?}",
            returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(TransportError::Nacked),
        Confirmation::NotRequested => Err(TransportError::Broker(
            "publish on a channel without confirms".into(),
        )),
    }
}

/// The engine's [`Transport`] over one confirm-mode channel.
pub struct AmqpTransport {
    channel: Channel,
    metrics: Metrics,
}

impl AmqpTransport {
    pub fn new(channel: Channel, metrics: Metrics) -> Self {
        AmqpTransport { channel, metrics }
    }

    fn timer(&self, what: &str) -> prometheus::HistogramTimer {
        self.metrics
            .publish_seconds
            .with_label_values(&[what])
            .start_timer()
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    async fn publish_step(
        &self,
        provider: ProviderId,
        body: Vec<u8>,
        delay: Duration,
    ) -> Result<(), TransportError> {
        let _t = self.timer("step");
        let props = persistent("application/json");
        match topology::tier_for(delay.as_millis() as u64) {
            None => {
                let rk = format!("now.{}", provider.as_str());
                publish_confirmed(
                    &self.channel,
                    topology::STEPS_EXCHANGE,
                    &rk,
                    true,
                    &body,
                    props,
                )
                .await
            }
            Some(ms) => {
                let rk = format!("{ms}ms.{}", provider.as_str());
                publish_confirmed(
                    &self.channel,
                    topology::DELAY_EXCHANGE,
                    &rk,
                    true,
                    &body,
                    props,
                )
                .await
            }
        }
    }

    async fn publish_event(
        &self,
        routing_key: &str,
        request_id: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(), TransportError> {
        let _t = self.timer("event");
        let mut headers = FieldTable::default();
        headers.insert(
            "request_id".into(),
            request_id.map(lstr).unwrap_or(AMQPValue::Void),
        );
        let props = persistent("application/json").with_headers(headers);
        // Not mandatory: an events exchange nobody has subscribed to yet is a
        // valid state (pub/sub), not a reason to stop onboarding.
        publish_confirmed(
            &self.channel,
            topology::EVENTS_EXCHANGE,
            routing_key,
            false,
            &body,
            props,
        )
        .await
    }

    async fn publish_dead(
        &self,
        body: &[u8],
        props: &OriginalProps,
        reason: &DeadReason,
    ) -> Result<(), TransportError> {
        let original = props
            .0
            .as_ref()
            .and_then(|p| p.downcast_ref::<BasicProperties>());
        let props = dead_properties(original, reason);
        let _t = self.timer("dead");
        publish_confirmed(&self.channel, "", topology::DEAD_QUEUE, true, body, props).await
    }
}

/// The properties of a message's copy in `onboarding.dead`: the original's,
/// persistent, with the reason in `x-onboarding-*` headers. The `request_id`
/// header is the worker's (from the body), never the publisher's: a message
/// whose body has no usable id has none, so `dead replay --request-id` cannot
/// pick it up by an id its headers merely claim.
///
/// The publisher's other headers are kept unless they take more than
/// [`DEAD_HEADER_BUDGET`] bytes: with the reason added, a header table that
/// filled the publisher's frame would no longer fit one, the broker would close
/// the worker's connection on the publish, and the message would come round
/// again and again. Then they are dropped (the body is kept whole) and
/// `x-onboarding-headers-dropped` says how many bytes went.
/// The publisher's properties for the dead copy, less two that would defeat
/// it: `expiration` (the copy is kept until an operator acts) and `user_id`
/// (the broker refuses a `user_id` other than the publishing connection's).
fn kept_properties(p: &BasicProperties) -> BasicProperties {
    let mut k = BasicProperties::default();
    if let Some(v) = p.content_type() {
        k = k.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        k = k.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        k = k.with_headers(v.clone());
    }
    if let Some(v) = p.priority() {
        k = k.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        k = k.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        k = k.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        k = k.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        k = k.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        k = k.with_type(v.clone());
    }
    if let Some(v) = p.app_id() {
        k = k.with_app_id(v.clone());
    }
    k
}

pub fn dead_properties(original: Option<&BasicProperties>, reason: &DeadReason) -> BasicProperties {
    let props = original
        .map(kept_properties)
        .unwrap_or_else(|| persistent("application/json"))
        .with_delivery_mode(2);
    let mut headers = FieldTable::default();
    for (k, v) in props.headers().iter().flat_map(|h| h.inner()) {
        // A replayed copy that fails again is not a replay any more.
        if k.as_str() != REPLAY_HEADER && k.as_str() != "request_id" {
            headers.insert(k.clone(), v.clone());
        }
    }
    let kept = table_len(&headers);
    if kept > DEAD_HEADER_BUDGET {
        headers = FieldTable::default();
        headers.insert(
            "x-onboarding-headers-dropped".into(),
            lstr(&format!(
                "{kept} bytes of publisher headers, too many to fit one AMQP frame with the reason"
            )),
        );
    }
    headers.insert("x-onboarding-error-kind".into(), lstr(reason.kind.as_str()));
    headers.insert("x-onboarding-reason".into(), lstr(&reason.message));
    headers.insert(
        "x-onboarding-step".into(),
        reason.step.as_deref().map(lstr).unwrap_or(AMQPValue::Void),
    );
    headers.insert(
        "x-onboarding-failed-at".into(),
        lstr(&crate::engine::wire::now_rfc3339()),
    );
    if let Some(id) = &reason.request_id {
        headers.insert("request_id".into(), lstr(id));
    }
    props.with_headers(headers)
}

/// Most bytes of a publisher's headers a dead copy keeps: half of RabbitMQ's
/// default frame (128 KiB), leaving ample room for the properties and the reason.
pub const DEAD_HEADER_BUDGET: usize = 64 * 1024;

/// Encoded size of a header table (AMQP 0-9-1 field table, length prefix included).
fn table_len(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(k, v)| 1 + k.as_str().len() + 1 + value_len(v))
        .sum::<usize>()
}

fn value_len(v: &AMQPValue) -> usize {
    match v {
        AMQPValue::Void => 0,
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.len(),
        AMQPValue::ByteArray(b) => 4 + b.len(),
        AMQPValue::FieldArray(a) => {
            4 + a.as_slice().iter().map(|v| 1 + value_len(v)).sum::<usize>()
        }
        AMQPValue::FieldTable(t) => table_len(t),
    }
}

/// Whether a delivery carries `dead replay`'s mark (`true`, as a boolean or text).
pub fn is_replay(props: &BasicProperties) -> bool {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(REPLAY_HEADER))
        .is_some_and(|v| {
            matches!(v, AMQPValue::Boolean(true))
                || matches!(v, AMQPValue::LongString(s) if s.to_string() == "true")
        })
}

/// Which queue a consumer reads.
#[derive(Clone, Copy, Debug)]
enum Source {
    Requests,
    Steps(ProviderId),
}

impl Source {
    fn queue(self) -> String {
        match self {
            Source::Requests => topology::REQUESTS_QUEUE.to_string(),
            Source::Steps(p) => topology::step_queue(p),
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
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let started = std::time::Instant::now();
        let outcome = session(&settings, &engine, &health, &metrics, &shutdown).await;
        // A session that stayed up a while resets the back-off.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = new_backoff(&settings);
        }
        match outcome {
            Ok(()) => break, // shut down cleanly
            Err(e) => {
                health.set_ready(false);
                metrics.broker_connected.set(0);
                let pause = backoff.next().unwrap_or(settings.reconnect_max);
                warn!(error.message = %e, retry_in_ms = pause.as_millis() as u64, "broker connection lost or refused; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    health.set_ready(false);
    metrics.broker_connected.set(0);
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
/// `Ok` after a clean shutdown, `Err` when the connection failed.
async fn session(
    settings: &BrokerSettings,
    engine: &Engine,
    health: &Health,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let conn = connect(
        &settings.url,
        "onboarding-worker",
        settings.tls_ca_file.as_deref(),
    )
    .await?;
    let setup = conn.create_channel().await?;
    topology::declare(&setup).await?;
    let publish = confirm_channel(&conn).await?;
    let transport: Arc<dyn Transport> =
        Arc::new(AmqpTransport::new(publish.clone(), metrics.clone()));

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
    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    for (source, queue, prefetch) in sources {
        let ch = conn.create_channel().await?;
        ch.basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await?;
        let tag = format!("onboarding-worker-{}", uuid::Uuid::new_v4());
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumers.push((ch, tag));
        streams.push(consumer.map(move |d| (source, d)).boxed());
    }
    let mut deliveries = futures::stream::select_all(streams);
    health.set_ready(true);
    metrics.broker_connected.set(1);
    metrics.broker_connections_total.inc();
    info!("connected to the broker and consuming");

    let tracker = TaskTracker::new();
    let failure = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            next = deliveries.next() => match next {
                Some((source, Ok(delivery))) => {
                    let engine = engine.clone();
                    let transport = transport.clone();
                    tracker.spawn(handle(source, delivery, engine, transport));
                }
                Some((_, Err(e))) => break Some(BrokerError::Amqp(e)),
                None => break Some(BrokerError::Other("a consumer was cancelled by the broker".into())),
            }
        }
    };
    health.set_ready(false);
    metrics.broker_connected.set(0);
    if let Some(e) = failure {
        // In-flight handlers fail to ack on the dead channel; the broker
        // redelivers their messages and the ledger makes that harmless.
        tracker.close();
        return Err(e);
    }
    info!("shutting down: no new deliveries; settling those in hand");
    for (ch, tag) in &consumers {
        let _ = ch
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    drop(deliveries);
    tracker.close();
    if tokio::time::timeout(settings.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            grace_ms = settings.shutdown_grace.as_millis() as u64,
            "grace period over; unsettled deliveries go back to the queue"
        );
    }
    let _ = conn.close(200, "shutdown".into()).await;
    info!("broker connection closed");
    Ok(())
}

async fn handle(
    source: Source,
    mut delivery: lapin::message::Delivery,
    engine: Engine,
    transport: Arc<dyn Transport>,
) {
    let replay = is_replay(&delivery.properties);
    let props = OriginalProps(Some(Arc::new(delivery.properties.clone())));
    let body = std::mem::take(&mut delivery.data);
    let redelivered = delivery.redelivered;
    // In a task of its own, so that a panic still ends in a nack below
    // instead of leaving the delivery unacknowledged until the channel closes.
    let work = tokio::spawn(async move {
        let incoming = Incoming {
            body: &body,
            redelivered,
            replay,
            props,
        };
        match source {
            Source::Requests => engine.handle_request(transport.as_ref(), incoming).await,
            Source::Steps(_) => engine.handle_step(transport.as_ref(), incoming).await,
        }
    });
    let result: Result<(), String> = match work.await {
        Ok(r) => r.map_err(|e: EngineError| e.to_string()),
        Err(e) => Err(format!("the handler panicked: {e}")),
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
            error!(error.message = %e, queue = %source.queue(), "could not finish handling a message; it goes back to its queue");
            // A pause so an outage does not become a hot loop (ledger errors
            // were already retried for a while; see ledger::timed).
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
        }
    }
}
