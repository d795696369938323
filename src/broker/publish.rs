//! Confirmed publishing: the engine's [`Transport`] over a pool of
//! confirm-mode channels, each carrying one publish at a time.

use std::time::Duration;

use async_trait::async_trait;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Semaphore;

use crate::domain::ProviderId;
use crate::engine::{DeadReason, OriginalProps, Transport, TransportError};
use crate::metrics::Metrics;

use super::properties::dead_properties;
use super::{confirm_channel, topology, BrokerError};

pub(super) fn persistent(content_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(content_type.into())
}

pub(super) fn lstr(s: &str) -> AMQPValue {
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
    /// How long a publish waits for its confirm (`amqp.confirm_timeout_ms`).
    /// RabbitMQ confirms in milliseconds, or closes the channel or
    /// connection; a confirm that never comes (a stalled queue, a connection
    /// blocked by a resource alarm, a half-open connection) would otherwise
    /// hold the delivery, and its request, unacknowledged for as long as the
    /// connection lives, with nothing logged.
    confirm_timeout: Duration,
    /// A publish went unconfirmed past `confirm_timeout`: its channel is out
    /// of the pool (a late confirm would be taken for the next publish's) and
    /// the session must start over.
    stalled: std::sync::atomic::AtomicBool,
}

impl ChannelPool {
    async fn open(
        conn: &Connection,
        size: usize,
        confirm_timeout: Duration,
    ) -> Result<ChannelPool, BrokerError> {
        let mut channels = Vec::with_capacity(size);
        for _ in 0..size {
            channels.push(confirm_channel(conn).await?);
        }
        Ok(ChannelPool {
            permits: Semaphore::new(size),
            free: std::sync::Mutex::new(channels),
            confirm_timeout,
            stalled: std::sync::atomic::AtomicBool::new(false),
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
        let permit = self
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
        let publish = publish_confirmed(&channel, exchange, routing_key, mandatory, body, props);
        match tokio::time::timeout(self.confirm_timeout, publish).await {
            Ok(result) => {
                self.free.lock().expect("pool lock").push(channel);
                drop(permit);
                result
            }
            Err(_) => {
                // The channel is not given back, nor its permit (a permit
                // without a channel would find the pool empty): the session
                // sees `stalled` and reconnects, which hands every delivery in
                // hand back to the broker.
                permit.forget();
                self.stalled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(TransportError::Broker(format!(
                    "no confirm from the broker within {} ms",
                    self.confirm_timeout.as_millis()
                )))
            }
        }
    }

    /// Whether a publish went unconfirmed past its deadline.
    fn stalled(&self) -> bool {
        self.stalled.load(std::sync::atomic::Ordering::Relaxed)
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
    /// be in flight at once, each failing when unconfirmed after `confirm_timeout`.
    pub async fn open(
        conn: &Connection,
        channels: usize,
        confirm_timeout: Duration,
        metrics: Metrics,
    ) -> Result<Self, BrokerError> {
        Ok(AmqpTransport {
            pool: ChannelPool::open(conn, channels.max(1), confirm_timeout).await?,
            metrics,
        })
    }

    /// Whether every publishing channel is still open.
    pub(super) fn all_open(&self) -> bool {
        self.pool.all_open()
    }

    /// Whether a publish went unconfirmed past its deadline.
    pub(super) fn stalled(&self) -> bool {
        self.pool.stalled()
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
            provider,
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
