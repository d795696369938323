//! How a call to the Reseller API is made (URL, headers, auth) and how its
//! answer is read, or refused as unreadable.

use serde_json::Value;

use crate::domain::RetryReason;
use crate::engine::step::StepError;
use crate::providers::http::Response;

use super::Sharespine;

impl Sharespine {
    /// `{base_url}/seg/seg/...`, each segment percent-encoded (logins are user input).
    pub(super) fn url(&self, step: &str, segments: &[&str]) -> Result<url::Url, StepError> {
        // A segment of "." or ".." would be dropped by URL normalisation and
        // address another resource; `plan` refuses them, this guards outputs too.
        if let Some(bad) = segments
            .iter()
            .find(|s| s.is_empty() || matches!(**s, "." | ".."))
        {
            return Err(StepError::rejected(
                None,
                format!("{step}: {bad:?} cannot be a URL path segment"),
            ));
        }
        let unusable = || {
            StepError::rejected(
                None,
                format!("{step}: providers.sharespine.base_url is not a usable http(s) URL"),
            )
        };
        let mut url = url::Url::parse(&self.settings.base_url).map_err(|_| unusable())?;
        url.path_segments_mut()
            .map_err(|_| unusable())?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// One call with the reseller's headers: `POST` with `body` as JSON, or
    /// `GET` when there is none. A 2xx comes back whole.
    pub(super) async fn call(
        &self,
        step: &str,
        segments: &[&str],
        body: Option<&Value>,
    ) -> Result<Response, StepError> {
        let url = self.url(step, segments)?;
        let request = match body {
            Some(body) => self.http.inner().post(url).json(body),
            None => self.http.inner().get(url),
        }
        .basic_auth(
            &self.settings.username,
            Some(self.settings.password.expose()),
        )
        .header("X-Reseller", &self.settings.reseller_code)
        .header(reqwest::header::USER_AGENT, &self.settings.user_agent);
        self.http.send(step, request).await
    }

    /// A `POST` whose 2xx answer is read with `reader`.
    pub(super) async fn post<T>(
        &self,
        step: &str,
        segments: &[&str],
        body: &Value,
        reader: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<T, StepError> {
        let response = self.call(step, segments, Some(body)).await?;
        read(step, &response, reader)
    }

    /// A `GET` read with `reader`; `None` when the API does not offer it
    /// (404, 405 or 501: the seed does not show these reads).
    pub(super) async fn lookup<T>(
        &self,
        step: &str,
        segments: &[&str],
        reader: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<Option<T>, StepError> {
        match self.call(step, segments, None).await {
            Ok(response) => read(step, &response, reader).map(Some),
            Err(StepError::Rejected {
                http_status: Some(404 | 405 | 501),
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Parses a 2xx answer and reads it with `reader`; what cannot be read is a
/// transient `bad_response` saying what was expected and what came.
pub(super) fn read<T>(
    step: &str,
    response: &Response,
    reader: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<T, StepError> {
    let body: Value = response.json(step)?;
    reader(&body).map_err(|why| unreadable(step, response, why))
}

/// As [`read`], for an answer that may have no body at all (`None` then).
pub(super) fn read_optional<T>(
    step: &str,
    response: &Response,
    reader: impl FnOnce(Option<&Value>) -> Result<T, String>,
) -> Result<T, StepError> {
    if response.body.iter().all(u8::is_ascii_whitespace) {
        return reader(None).map_err(|why| unreadable(step, response, why));
    }
    let body: Value = response.json(step)?;
    reader(Some(&body)).map_err(|why| unreadable(step, response, why))
}

pub(super) fn unreadable(step: &str, response: &Response, why: String) -> StepError {
    StepError::Transient {
        reason: RetryReason::BadResponse,
        retry_after: None,
        http_status: Some(response.status),
        message: format!(
            "{step}: unexpected response body ({} bytes): {why}",
            response.body.len()
        ),
    }
}
