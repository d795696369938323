//! The front door: everything the worker decides about a message from
//! `onboarding.requests` before any I/O. The body is parsed and checked
//! (CONTRACT §4, [`wire::parse_request`]), the provider checks its `input`
//! (`plan`), and the first step message is built; or the message is invalid and
//! [`failed_event`] and [`dead_reason`] say what the worker publishes for it.
//!
//! Pure and deterministic: [`Engine::handle_request`](super::Engine::handle_request)
//! runs exactly this, `fuzz/` fuzzes it, and `tests/fuzz_corpus.rs` replays the
//! fuzz corpus through it in `cargo test`.

use super::step::Providers;
use crate::domain::{ErrorKind, EventKind};

use super::step::StepKey;
use super::wire::{self, Event, Invalid, StepMessage, ValidRequest};
use super::DeadReason;

/// A request the worker takes on: what the body said, the provider's plan for
/// it, and the step message that starts it.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub request: ValidRequest,
    /// Never empty.
    pub plan: Vec<StepKey>,
    pub first: StepMessage,
}

/// Validates a request body into the message that starts it, or the reason it
/// is an `invalid_request`. Only the body counts: headers and properties of the
/// delivery never change the verdict.
pub fn front_door(
    body: &[u8],
    max_body_bytes: usize,
    providers: &Providers,
) -> Result<Admitted, Invalid> {
    let request = wire::parse_request(body, max_body_bytes)?;
    let invalid = |message: String| Invalid {
        request_id: Some(request.request_id.clone()),
        provider: Some(request.provider),
        operation: Some(request.operation),
        message,
    };
    let Some(provider) = providers.get(&request.provider) else {
        return Err(invalid(format!(
            "provider {} is not run by this worker",
            request.provider
        )));
    };
    let plan = provider
        .plan(request.operation, &request.input)
        .map_err(invalid)?;
    if plan.is_empty() {
        return Err(invalid(format!(
            "{} has nothing to do for this input",
            request.provider
        )));
    }
    let first = StepMessage::first(&request.request_id, request.provider);
    Ok(Admitted {
        request,
        plan,
        first,
    })
}

/// CONTRACT §4: a message header `request_id`, when present, must name the
/// body's request; one that names another (or is not text) makes the message
/// an `invalid_request`, and nothing is called for it. Its `failed` event has
/// `request_id: null`: neither id is usable, and a `failed` for the body's id
/// would contradict that request's own events if it exists.
pub fn check_header(admitted: Admitted, header: &super::HeaderId) -> Result<Admitted, Invalid> {
    let mismatch = match header {
        super::HeaderId::Absent => return Ok(admitted),
        super::HeaderId::Text(id) if *id == admitted.request.request_id => return Ok(admitted),
        super::HeaderId::Text(id) if id.len() <= 128 && crate::domain::valid_request_id(id) => {
            format!("names request {id:?}")
        }
        super::HeaderId::Text(_) => "is not a valid request_id".to_string(),
        super::HeaderId::NotText => "is not text".to_string(),
    };
    let r = &admitted.request;
    Err(Invalid {
        request_id: None,
        provider: Some(r.provider),
        operation: Some(r.operation),
        message: format!(
            "the message header request_id {mismatch}, but the body is request {:?}",
            r.request_id
        ),
    })
}

/// The `failed` event of an invalid message (CONTRACT §5): `request_id` only
/// when the body gave a usable one.
pub fn failed_event(invalid: &Invalid) -> Event {
    Event::new(
        EventKind::Failed,
        invalid.request_id.as_deref(),
        invalid.provider,
        invalid.operation,
    )
    .failed(
        ErrorKind::InvalidRequest,
        None,
        None,
        invalid.message.clone(),
    )
}

/// Why an invalid message goes to `onboarding.dead`.
pub fn dead_reason(invalid: &Invalid) -> DeadReason {
    DeadReason {
        request_id: invalid.request_id.clone(),
        kind: ErrorKind::InvalidRequest,
        step: None,
        message: invalid.message.clone(),
    }
}
