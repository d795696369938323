//! Operator and tooling access to the broker: publish a request, follow the
//! events, list and replay what sits in `onboarding.dead`. Used by the CLI,
//! the demo and tests; the worker itself does not need it.

use std::collections::BTreeMap;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use super::{confirm_channel, connect, publish_confirmed, topology, BrokerError};
use crate::engine::REPLAY_HEADER;

/// A message found in `onboarding.dead`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadMessage {
    pub request_id: Option<String>,
    pub error_kind: Option<String>,
    pub step: Option<String>,
    pub reason: Option<String>,
    pub failed_at: Option<String>,
    pub bytes: usize,
    /// The body as published (lossy UTF-8 for display).
    #[serde(skip)]
    pub body: Vec<u8>,
}

fn header_text(props: &BasicProperties, key: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

impl DeadMessage {
    fn from(props: &BasicProperties, body: &[u8]) -> Self {
        DeadMessage {
            // A step message the broker moved here carries no header of ours.
            request_id: header_text(props, "request_id")
                .or_else(|| step_message_provider(body).map(|(id, _)| id)),
            error_kind: header_text(props, "x-onboarding-error-kind"),
            step: header_text(props, "x-onboarding-step"),
            reason: header_text(props, "x-onboarding-reason"),
            failed_at: header_text(props, "x-onboarding-failed-at"),
            bytes: body.len(),
            body: body.to_vec(),
        }
    }
}

/// A connection for tooling, with topology declared and a confirm channel.
pub struct Admin {
    conn: Connection,
    channel: Channel,
}

/// Events as they arrive: (routing key, body).
pub struct EventStream {
    consumer: lapin::Consumer,
    _channel: Channel,
}

impl EventStream {
    pub async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        let delivery = self.consumer.next().await?.ok()?;
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        Some((delivery.routing_key.to_string(), delivery.data))
    }

    /// Discards events until none arrives for `quiet`.
    pub async fn drain_pending(&mut self, quiet: std::time::Duration) {
        while let Ok(Some(_)) = tokio::time::timeout(quiet, self.next()).await {}
    }
}

impl Admin {
    pub async fn connect(url: &str) -> Result<Admin, BrokerError> {
        Self::connect_with_ca(url, None).await
    }

    /// Connects to the first of a cluster's `urls` that answers (see
    /// [`Admin::connect_with_ca`]); the last node's error if none does.
    pub async fn connect_any(
        urls: &[&str],
        tls_ca_file: Option<&std::path::Path>,
    ) -> Result<Admin, BrokerError> {
        let mut last = BrokerError::Other("no broker address configured".into());
        for url in urls {
            match Self::connect_with_ca(url, tls_ca_file).await {
                Ok(admin) => return Ok(admin),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// As [`Admin::connect`], trusting the CA certificates in `tls_ca_file`
    /// for an `amqps://` URL (see [`connect`]).
    pub async fn connect_with_ca(
        url: &str,
        tls_ca_file: Option<&std::path::Path>,
    ) -> Result<Admin, BrokerError> {
        let conn = connect(url, "onboarding-admin", tls_ca_file).await?;
        let setup = conn.create_channel().await?;
        topology::declare(&setup).await?;
        let channel = confirm_channel(&conn).await?;
        Ok(Admin { conn, channel })
    }

    /// Publishes a request as a billing system would (persistent, JSON, confirmed).
    pub async fn publish_request(&self, routing_key: &str, body: &[u8]) -> Result<(), BrokerError> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        publish_confirmed(
            &self.channel,
            topology::REQUESTS_EXCHANGE,
            routing_key,
            true,
            body,
            props,
        )
        .await
        .map_err(|e| BrokerError::Other(e.to_string()))
    }

    /// A private queue bound to `onboarding.events` with `pattern`; gone when dropped.
    pub async fn subscribe_events(&self, pattern: &str) -> Result<EventStream, BrokerError> {
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        ch.queue_bind(
            q.name().clone(),
            topology::EVENTS_EXCHANGE.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let consumer = ch
            .basic_consume(
                q.name().clone(),
                "events".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(EventStream {
            consumer,
            _channel: ch,
        })
    }

    /// Every message in `onboarding.dead`, left where it is.
    pub async fn dead_list(&self) -> Result<Vec<DeadMessage>, BrokerError> {
        // Got without acking on a channel of its own; closing it puts them all back.
        let ch = self.conn.create_channel().await?;
        let mut found = Vec::new();
        while let Some(m) = ch
            .basic_get(
                topology::DEAD_QUEUE.into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        {
            found.push(DeadMessage::from(&m.delivery.properties, &m.delivery.data));
            if m.message_count == 0 {
                break;
            }
        }
        let _ = ch.close(200, "listed".into()).await;
        Ok(found)
    }

    /// Re-publishes dead messages (all, or those of `request_id`) to
    /// `onboarding.requests` with the replay mark; each dead copy is removed
    /// only after its replay is confirmed. Returns the replayed messages.
    pub async fn dead_replay(
        &self,
        request_id: Option<&str>,
    ) -> Result<Vec<DeadMessage>, BrokerError> {
        // At most what is there now: a replay that fails again lands back in
        // the queue and must not be taken again in this pass.
        let mut budget = self.queue_depth(topology::DEAD_QUEUE).await?;
        let ch = self.conn.create_channel().await?;
        let mut replayed = Vec::new();
        while budget > 0 {
            let Some(m) = ch
                .basic_get(
                    topology::DEAD_QUEUE.into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?
            else {
                break;
            };
            budget -= 1;
            let dead = DeadMessage::from(&m.delivery.properties, &m.delivery.data);
            let last = m.message_count == 0;
            // A step message the broker moved here (its delivery limit) goes
            // back to its provider's step queue; a request, to the requests.
            let step_of = step_message_provider(&m.delivery.data);
            let step_request = step_of.as_ref().map(|(id, _)| id.clone());
            let matches = request_id.is_none()
                || dead.request_id.as_deref() == request_id
                || (step_request.is_some() && step_request.as_deref() == request_id);
            if matches {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.delivery.properties.headers() {
                    for (k, v) in h.inner() {
                        if !k.as_str().starts_with("x-onboarding-")
                            && !k.as_str().starts_with("x-death")
                        {
                            headers.insert(k.clone(), v.clone());
                        }
                    }
                }
                headers.insert(REPLAY_HEADER.into(), AMQPValue::Boolean(true));
                let props = m
                    .delivery
                    .properties
                    .clone()
                    .with_headers(FieldTable::from(headers))
                    .with_delivery_mode(2);
                let (exchange, routing_key) = match &step_of {
                    Some((_, provider)) => (topology::STEPS_EXCHANGE, format!("now.{provider}")),
                    None => (topology::REQUESTS_EXCHANGE, "replay".to_string()),
                };
                publish_confirmed(
                    &self.channel,
                    exchange,
                    &routing_key,
                    true,
                    &m.delivery.data,
                    props,
                )
                .await
                .map_err(|e| BrokerError::Other(e.to_string()))?;
                m.delivery.acker.ack(BasicAckOptions::default()).await?;
                replayed.push(dead);
            }
            if last {
                break;
            }
        }
        // Messages not replayed were never acked: closing the channel returns them.
        let _ = ch.close(200, "replayed".into()).await;
        Ok(replayed)
    }

    /// Messages ready in `queue` now (a passive declare: exact, unlike the
    /// management API's sampled statistics).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = ch.close(200, "done".into()).await;
        Ok(q.message_count())
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// `(request_id, provider)` when `body` is one of the worker's own step
/// messages (which a request never is: it has no `seq` and has an `input`).
fn step_message_provider(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("input").is_some() {
        return None;
    }
    let m: crate::engine::wire::StepMessage = serde_json::from_value(v).ok()?;
    Some((m.request_id, m.provider.as_str().to_string()))
}
