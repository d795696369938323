//! How a call's answer is read, or refused as unreadable, and how secrets are
//! kept out of a call's errors.

use serde_json::Value;

use crate::domain::RetryReason;
use crate::engine::step::StepError;
use crate::providers::http::Response;

/// Parses a 2xx answer and reads it with `reader`; what cannot be read is a
/// transient `bad_response` saying what was expected and what came.
pub(super) fn read<T>(
    step: &str,
    response: &Response,
    reader: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<T, StepError> {
    let body: Value = response.json(step)?;
    reader(&body).map_err(|why| StepError::Transient {
        reason: RetryReason::BadResponse,
        retry_after: None,
        http_status: Some(response.status),
        message: format!(
            "{step}: unexpected response body ({} bytes): {why}",
            response.body.len()
        ),
    })
}

/// Masks `secrets` in an error's message: a provider may quote a submitted
/// value back in its error body, and that body's reason ends up in the message.
pub(super) fn scrub(error: StepError, secrets: &[&str]) -> StepError {
    let clean = |message: String| {
        secrets
            .iter()
            .filter(|s| !s.is_empty())
            .fold(message, |m, s| m.replace(s, "[redacted]"))
    };
    match error {
        StepError::Transient {
            reason,
            retry_after,
            http_status,
            message,
        } => StepError::Transient {
            reason,
            retry_after,
            http_status,
            message: clean(message),
        },
        StepError::Rejected {
            http_status,
            message,
        } => StepError::Rejected {
            http_status,
            message: clean(message),
        },
        StepError::JobFailed { message } => StepError::JobFailed {
            message: clean(message),
        },
    }
}
