//! What the worker reads from and writes into a message's properties: the
//! dead copy's headers, the replay mark, the `request_id` header and the
//! delivery count.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use crate::engine::{DeadReason, HeaderId, REPLAY_HEADER};

use super::publish::{lstr, persistent};

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
pub(super) fn header_request_id(props: &BasicProperties) -> HeaderId {
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
pub(super) fn delivery_count(props: &BasicProperties) -> u32 {
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
