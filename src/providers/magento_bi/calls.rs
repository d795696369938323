//! What the steps share: the endpoints' URLs, a call carrying the shared
//! token (renewed once on a 401), reading an answer or refusing it as
//! unreadable, a step's input section and earlier outputs, and its outcome.

use reqwest::header::{AUTHORIZATION, COOKIE};
use serde_json::{Map, Value};
use url::Url;

use crate::domain::RetryReason;
use crate::engine::step::{StepContext, StepDone, StepError, StepOutcome};
use crate::providers::http::{detail, Response};

use super::answers::{Created, Id};
use super::token::Token;
use super::MagentoBi;

/// Where a call carries the token.
#[derive(Clone, Copy)]
pub(super) enum Auth {
    Bearer,
    Cookie,
}

impl MagentoBi {
    pub(super) fn api(&self, segments: &[&str]) -> Result<Url, StepError> {
        endpoint(&self.settings.api_base, "api_base", segments)
    }

    pub(super) fn dashboard(&self, segments: &[&str]) -> Result<Url, StepError> {
        endpoint(&self.settings.dashboard_base, "dashboard_base", segments)
    }

    /// Sends `build()` with the shared token; on a 401 renews the token once
    /// and sends again (a second 401 stays `Rejected`).
    pub(super) async fn call(
        &self,
        step: &str,
        auth: Auth,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, StepError> {
        let with = |t: &Token| match auth {
            Auth::Bearer => build().header(AUTHORIZATION, t.bearer()),
            Auth::Cookie => build().header(COOKIE, t.cookie()),
        };
        let token = self.tokens.get(step).await?;
        match self.http.send(step, with(&token)).await {
            Err(StepError::Rejected {
                http_status: Some(401),
                ..
            }) => {
                tracing::info!(
                    provider = "magento_bi",
                    step,
                    "401: renewing the token once"
                );
                let token = self.tokens.renew(step, &token).await?;
                self.http.send(step, with(&token)).await
            }
            other => other,
        }
    }
}

/// `base` plus path segments, each percent-encoded (ids come from the provider).
pub(super) fn endpoint(base: &str, key: &str, segments: &[&str]) -> Result<Url, StepError> {
    let bad = || {
        StepError::rejected(
            None,
            format!("providers.magento_bi.{key} is not a usable http(s) URL"),
        )
    };
    let mut url = Url::parse(base).map_err(|_| bad())?;
    url.path_segments_mut()
        .map_err(|_| bad())?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

pub(super) fn done(step: StepDone) -> Result<StepOutcome, StepError> {
    Ok(StepOutcome::Done(step))
}

/// "Not yet", with the provider's status word (short, printable) for logs.
pub(super) fn pending(status: &str) -> Result<StepOutcome, StepError> {
    let status: String = status
        .chars()
        .filter(|c| !c.is_control())
        .take(40)
        .collect();
    Ok(StepOutcome::Pending {
        status: if status.is_empty() {
            "unknown".into()
        } else {
            status
        },
        state: None,
    })
}

/// The request's input section a step sends (validated by `plan`).
pub(super) fn section<'a>(
    ctx: &StepContext<'a>,
    key: &str,
) -> Result<&'a Map<String, Value>, StepError> {
    ctx.input
        .get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| {
            StepError::rejected(
                None,
                format!("{}: input.{key} must be an object", ctx.step.name),
            )
        })
}

/// An id an earlier step put in the outputs.
pub(super) fn earlier(ctx: &StepContext<'_>, key: &str) -> Result<Id, StepError> {
    match ctx.outputs.get(key).map(Id::read) {
        Some(Ok(Some(id))) => Ok(id),
        _ => Err(StepError::rejected(
            None,
            format!("{} needs {key} from an earlier step", ctx.step.name),
        )),
    }
}

/// A 2xx body as JSON; not JSON is an unreadable answer.
pub(super) fn body_json(step: &str, answer: &Response, expected: &str) -> Result<Value, StepError> {
    serde_json::from_slice(&answer.body).map_err(|e| {
        let got = match e.classify() {
            serde_json::error::Category::Eof if answer.body.is_empty() => "an empty body",
            serde_json::error::Category::Eof => "truncated JSON",
            _ => "a body that is not JSON",
        };
        unreadable(step, answer, expected, got)
    })
}

/// An answer that cannot be read: what was expected and the shape that came
/// (never a value), as a transient `bad_response`.
pub(super) fn unreadable(step: &str, answer: &Response, expected: &str, got: &str) -> StepError {
    StepError::Transient {
        reason: RetryReason::BadResponse,
        retry_after: None,
        http_status: Some(answer.status),
        message: format!(
            "{step}: unexpected response body ({} bytes): expected {expected}; got {got}",
            answer.body.len()
        ),
    }
}

/// The new object's id from a create answer (point 12).
pub(super) fn created_id(step: &str, answer: &Response, what: &str) -> Result<Id, StepError> {
    let expected = format!("an object with the new {what}'s id");
    let body = body_json(step, answer, &expected)?;
    Created::required(&body).map_err(|got| unreadable(step, answer, &expected, &got))
}

pub(super) fn job_failed(step: &str, what: &str, answer: &Response) -> StepError {
    let why = detail(&answer.body).unwrap_or_else(|| "no reason given".into());
    StepError::job_failed(format!(
        "{step}: the provider reported the {what} as failed: {why}"
    ))
}
