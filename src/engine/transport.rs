//! The engine's view of the broker: the [`Transport`] it publishes through
//! (every publish confirmed before it returns), the delivery it is handed
//! ([`Incoming`]), and what it tells the broker of a message it keeps in
//! `onboarding.dead` ([`DeadReason`]). The broker implements these; the
//! engine never sees lapin.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{ErrorKind, ProviderId};

/// The header that marks a request copy as an operator's redrive (`dead replay`).
pub const REPLAY_HEADER: &str = "x-onboarding-replay";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("broker: {0}")]
    Broker(String),
    #[error("broker returned the message as unroutable: {0}")]
    Unroutable(String),
    #[error("broker refused the message (nack)")]
    Nacked,
}

/// The broker's properties of a message the engine forwards whole; opaque here.
#[derive(Clone, Default)]
pub struct OriginalProps(pub Option<Arc<dyn Any + Send + Sync>>);

/// Why a message goes to `onboarding.dead`; becomes its headers.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadReason {
    pub request_id: Option<String>,
    pub kind: ErrorKind,
    pub step: Option<String>,
    pub message: String,
}

/// What the engine needs of the broker; every publish is confirmed before it returns.
#[async_trait]
pub trait Transport: Send + Sync {
    /// A step message to `provider`'s step queue, after `delay` (through a delay tier).
    async fn publish_step(
        &self,
        provider: ProviderId,
        body: Vec<u8>,
        delay: Duration,
    ) -> Result<(), TransportError>;
    /// An event to `onboarding.events`.
    async fn publish_event(
        &self,
        routing_key: &str,
        request_id: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(), TransportError>;
    /// Tells every worker to hold `provider`'s steps until `until_ms`
    /// (best effort: a worker that misses it finds the limit itself).
    async fn publish_pause(
        &self,
        provider: ProviderId,
        until_ms: i64,
    ) -> Result<(), TransportError>;
    /// The original message, whole, to `onboarding.dead`.
    async fn publish_dead(
        &self,
        body: &[u8],
        props: &OriginalProps,
        reason: &DeadReason,
    ) -> Result<(), TransportError>;
}

/// The `request_id` header of a delivery, which must equal the body's when
/// present (CONTRACT §4).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum HeaderId {
    #[default]
    Absent,
    Text(String),
    /// Present, but not text (a number, a table...): it names no request.
    NotText,
}

/// A delivery as the engine sees it.
pub struct Incoming<'a> {
    pub body: &'a [u8],
    /// The broker delivered it before (a worker died or a channel closed holding it).
    pub redelivered: bool,
    /// Carries the replay mark of `dead replay`.
    pub replay: bool,
    pub props: OriginalProps,
    /// Earlier deliveries of this message (the quorum queue's `x-delivery-count`).
    pub delivery_count: u32,
    pub header_request_id: HeaderId,
}
