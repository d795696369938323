//! Everything RabbitMQ: the only module that imports lapin.
//!
//! Owns the connection and its recovery (reconnect with back-off, readiness
//! meanwhile), the topology ([`topology`]), confirmed publishing (the engine's
//! [`Transport`]) and consuming: one consumer per queue, each delivery handled
//! in its own task and acknowledged only after the engine says everything that
//! follows from it is confirmed.
//!
//! A session fails, and the worker reconnects and declares its topology
//! again, when the connection is lost, when any consumer ends (a
//! `basic.cancel` from the broker, e.g. its queue was deleted) or when any of
//! its channels is closed (a channel error). Each is counted in
//! `onboarding_broker_session_failures_total{reason}` and logged once.

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
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::domain::ProviderId;
use crate::engine::{
    schedule, DeadReason, Engine, HeaderId, Incoming, OriginalProps, Transport, TransportError,
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
    /// The broker's nodes, tried in turn (one for a single broker).
    pub urls: Vec<String>,
    pub prefetch: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub shutdown_grace: Duration,
    /// For `amqps://`: CA certificates (PEM) trusted besides the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// A failing message is given up on (ended `failed` `exhausted`) at this
    /// many deliveries, before the queues' delivery limit.
    pub give_up_after_deliveries: u32,
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

/// Confirm-mode channels that each carry one publish at a time.
///
/// RabbitMQ sends an unroutable mandatory message's `basic.return` just
/// before that publish's `basic.ack`, and lapin hands a returned message to
/// whichever confirm it resolves next; with several publishes in flight on one
/// channel (and acks that confirm several at once) a return can be paired with
/// another publish, and the unroutable one taken for delivered. With one
/// publish per channel the pairing is exact.
struct ChannelPool {
    free: std::sync::Mutex<Vec<Channel>>,
    /// One permit per channel in `free`.
    permits: Semaphore,
}

impl ChannelPool {
    async fn open(conn: &Connection, size: usize) -> Result<ChannelPool, BrokerError> {
        let mut channels = Vec::with_capacity(size);
        for _ in 0..size {
            channels.push(confirm_channel(conn).await?);
        }
        Ok(ChannelPool {
            permits: Semaphore::new(size),
            free: std::sync::Mutex::new(channels),
        })
    }

    /// Publishes on a channel no other publish is using, and waits for its confirm.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), TransportError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| TransportError::Broker("publishing is closed".into()))?;
        let channel = self
            .free
            .lock()
            .expect("pool lock")
            .pop()
            .expect("a free channel for each permit");
        let result =
            publish_confirmed(&channel, exchange, routing_key, mandatory, body, props).await;
        self.free.lock().expect("pool lock").push(channel);
        result
    }

    /// Whether every channel is still open.
    fn all_open(&self) -> bool {
        self.free
            .lock()
            .expect("pool lock")
            .iter()
            .all(|c| c.status().connected())
    }
}

/// The engine's [`Transport`] over a pool of confirm-mode channels.
pub struct AmqpTransport {
    pool: ChannelPool,
    metrics: Metrics,
}

impl AmqpTransport {
    /// Opens `channels` confirm-mode channels on `conn`: as many publishes can
    /// be in flight at once.
    pub async fn open(
        conn: &Connection,
        channels: usize,
        metrics: Metrics,
    ) -> Result<Self, BrokerError> {
        Ok(AmqpTransport {
            pool: ChannelPool::open(conn, channels.max(1)).await?,
            metrics,
        })
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
                self.pool
                    .publish(topology::STEPS_EXCHANGE, &rk, true, &body, props)
                    .await
            }
            Some(ms) => {
                let rk = format!("{ms}ms.{}", provider.as_str());
                self.pool
                    .publish(topology::DELAY_EXCHANGE, &rk, true, &body, props)
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
        self.pool
            .publish(topology::EVENTS_EXCHANGE, routing_key, false, &body, props)
            .await
    }

    async fn publish_pause(
        &self,
        provider: ProviderId,
        until_ms: i64,
    ) -> Result<(), TransportError> {
        let left = (until_ms - crate::ledger::now_ms()).max(1);
        let body = serde_json::to_vec(&crate::engine::pauses::PauseMessage {
            provider: provider.as_str().into(),
            for_ms: left,
        })
        .expect("serialises");
        // Transient, and gone once the pause is over: a worker that starts
        // later would find nothing to hold.
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_expiration(left.to_string().into());
        let _t = self.timer("control");
        self.pool
            .publish(topology::CONTROL_EXCHANGE, "", false, &body, props)
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
        self.pool
            .publish("", topology::DEAD_QUEUE, true, body, props)
            .await
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

/// The `request_id` header of a delivery, as the engine checks it.
fn header_request_id(props: &BasicProperties) -> HeaderId {
    match props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("request_id"))
    {
        None => HeaderId::Absent,
        Some(AMQPValue::LongString(s)) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderId::Text(text.to_string()),
            Err(_) => HeaderId::NotText,
        },
        Some(AMQPValue::ShortString(s)) => HeaderId::Text(s.as_str().to_string()),
        Some(_) => HeaderId::NotText,
    }
}

/// Earlier deliveries of a message: quorum queues count them in `x-delivery-count`.
fn delivery_count(props: &BasicProperties) -> u32 {
    let Some(v) = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
    else {
        return 0;
    };
    let n: i64 = match v {
        AMQPValue::LongLongInt(n) => n,
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        _ => 0,
    };
    n.clamp(0, u32::MAX as i64) as u32
}

/// Why a session ended by failure: a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionFailure {
    ConnectionLost,
    ConsumerCancelled,
    ChannelClosed,
}

impl SessionFailure {
    fn as_str(self) -> &'static str {
        match self {
            SessionFailure::ConnectionLost => "connection_lost",
            SessionFailure::ConsumerCancelled => "consumer_cancelled",
            SessionFailure::ChannelClosed => "channel_closed",
        }
    }
}

/// Which queue a consumer reads.
#[derive(Clone, Copy, Debug)]
enum Source {
    Requests,
    Steps(ProviderId),
    /// This session's own queue on `onboarding.control`.
    Control,
}

impl Source {
    fn queue(self) -> String {
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
        Ok(p) => match ProviderId::parse(&p.provider) {
            Some(provider) => engine.pause_provider(provider, p.until_ms()),
            None => warn!(provider = %p.provider, "pause for an unknown provider ignored"),
        },
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

/// `host:port` of a broker URL: how logs, `/readyz` and the
/// `onboarding_broker_node` metric name a node (never its credentials).
pub fn node_name(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let port = u
                .port()
                .unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 });
            format!("{}:{port}", u.host_str().unwrap_or("?"))
        }
        Err(_) => "(unparseable url)".into(),
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
        AmqpTransport::open(&conn, in_hand.min(MAX_PUBLISH_CHANNELS), metrics.clone())
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
                if !transport.pool.all_open() || consumers.iter().any(|(ch, _)| !ch.status().connected()) {
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
        let _ = conn.close(200, "session failed; reconnecting".into()).await;
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
    let _ = conn.close(200, "shutdown".into()).await;
    info!("broker connection closed");
    Ok(())
}

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

/// What a delivery's task needs.
struct Handler {
    engine: Engine,
    transport: Arc<AmqpTransport>,
    health: Health,
    metrics: Metrics,
    give_up_after: u32,
}

impl Handler {
    async fn handle(self, source: Source, mut delivery: lapin::message::Delivery) {
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
