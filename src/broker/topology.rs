//! Names and declarations of every exchange and queue (CONTRACT §3 plus the
//! worker's own), declared idempotently at start.
//!
//! - `onboarding.requests` (topic exchange) → `onboarding.requests` (quorum, `#`).
//! - `onboarding.events` (topic exchange): events, routing key `<provider>.<event>`.
//! - `onboarding.dead` (quorum): what could not be processed, whole.
//! - `onboarding.steps` (topic exchange) → `onboarding.steps.<provider>` (quorum,
//!   bound `*.<provider>`): one queue per provider so each has its own prefetch
//!   (its concurrency limit) and a slow provider never starves another.
//! - `onboarding.delay` (topic exchange) → `onboarding.delay.<N>ms` (quorum, bound
//!   `<N>ms.#`), one fixed `x-message-ttl` each: a per-message TTL in one queue
//!   would hold short delays behind long ones, since a queue only expires its head.
//!   Expired messages dead-letter to `onboarding.steps` keeping their routing
//!   key `<N>ms.<provider>`, which lands them in the provider's step queue.
//!   Dead-lettering is `at-least-once` (which needs `x-overflow: reject-publish`):
//!   the default for quorum queues is at-most-once, and a lost dead-letter is a
//!   lost onboarding.
//! - `onboarding.control` (fanout exchange) → one exclusive, auto-delete queue
//!   per worker session: a provider's shared pause, seen by every worker.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::domain::ProviderId;

pub const REQUESTS_EXCHANGE: &str = "onboarding.requests";
pub const REQUESTS_QUEUE: &str = "onboarding.requests";
pub const EVENTS_EXCHANGE: &str = "onboarding.events";
pub const DEAD_QUEUE: &str = "onboarding.dead";
pub const STEPS_EXCHANGE: &str = "onboarding.steps";
pub const DELAY_EXCHANGE: &str = "onboarding.delay";
/// Fanout: messages every worker sees (a provider's shared pause). Each
/// worker binds an exclusive, server-named queue of its own.
pub const CONTROL_EXCHANGE: &str = "onboarding.control";

/// Delay tiers in milliseconds. A delay is waited in the longest tier not
/// longer than it, and the remainder in the next message (the engine re-delays
/// a message that arrives early), so any delay is honoured to within the
/// shortest tier while at most this many queues exist.
pub const DELAY_TIERS_MS: &[u64] = &[
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000,
];

/// Redeliveries after which a message that keeps failing (a worker crash
/// loop) is moved to `onboarding.dead` by the broker rather than looping forever.
pub const DELIVERY_LIMIT: i64 = 50;

pub fn step_queue(provider: ProviderId) -> String {
    format!("onboarding.steps.{}", provider.as_str())
}

pub fn delay_queue(ms: u64) -> String {
    format!("onboarding.delay.{ms}ms")
}

/// The tier a delay is waited in: the longest not longer than `ms`, or the
/// shortest for anything shorter. `None`: go straight to the step queue.
pub fn tier_for(ms: u64) -> Option<u64> {
    if ms < DELAY_TIERS_MS[0] / 4 {
        return None;
    }
    Some(
        DELAY_TIERS_MS
            .iter()
            .rev()
            .copied()
            .find(|&t| t <= ms)
            .unwrap_or(DELAY_TIERS_MS[0]),
    )
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// A quorum queue whose poison messages go to `onboarding.dead` after `DELIVERY_LIMIT` tries.
fn work_queue_args() -> FieldTable {
    args(&[
        ("x-queue-type", text("quorum")),
        ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(DEAD_QUEUE)),
        ("x-dead-letter-strategy", text("at-least-once")),
        ("x-overflow", text("reject-publish")),
    ])
}

/// Declares everything; safe to run again (same arguments every time).
pub async fn declare(channel: &Channel) -> lapin::Result<()> {
    let exchange_opts = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for name in [
        REQUESTS_EXCHANGE,
        EVENTS_EXCHANGE,
        STEPS_EXCHANGE,
        DELAY_EXCHANGE,
    ] {
        channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                exchange_opts,
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .exchange_declare(
            CONTROL_EXCHANGE.into(),
            ExchangeKind::Fanout,
            exchange_opts,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            DEAD_QUEUE.into(),
            durable(),
            args(&[("x-queue-type", text("quorum"))]),
        )
        .await?;
    channel
        .queue_declare(REQUESTS_QUEUE.into(), durable(), work_queue_args())
        .await?;
    channel
        .queue_bind(
            REQUESTS_QUEUE.into(),
            REQUESTS_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for provider in ProviderId::ALL {
        let q = step_queue(provider);
        channel
            .queue_declare(q.as_str().into(), durable(), work_queue_args())
            .await?;
        channel
            .queue_bind(
                q.as_str().into(),
                STEPS_EXCHANGE.into(),
                format!("*.{}", provider.as_str()).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for &ms in DELAY_TIERS_MS {
        let q = delay_queue(ms);
        let a = args(&[
            ("x-queue-type", text("quorum")),
            ("x-message-ttl", AMQPValue::LongLongInt(ms as i64)),
            ("x-dead-letter-exchange", text(STEPS_EXCHANGE)),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ]);
        channel
            .queue_declare(q.as_str().into(), durable(), a)
            .await?;
        channel
            .queue_bind(
                q.as_str().into(),
                DELAY_EXCHANGE.into(),
                format!("{ms}ms.#").into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_map_to_the_longest_tier_not_longer_than_them() {
        for (ms, tier, why) in [
            (0, None, "no delay"),
            (20, None, "far below the shortest tier"),
            (80, Some(100), "just below the shortest tier"),
            (1_000, Some(1_000), "exactly a tier"),
            (
                1_300,
                Some(1_000),
                "between tiers: the rest is waited again",
            ),
            (3_600_000, Some(900_000), "longer than every tier"),
        ] {
            assert_eq!(tier_for(ms), tier, "{why}");
        }
    }
}
