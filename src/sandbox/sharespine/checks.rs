//! The checks every call passes, in the module doc's order (credentials,
//! reseller, body), and the error answers, written in the readings' error form.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::readings::{ErrorForm, Readings, Reads};
use super::Api;

impl Api {
    /// Checks 1 to 4 of the module doc; gives the body as an object.
    pub(super) fn admit(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Map<String, Value>, ApiError> {
        self.admit_read(headers)?;
        if !is_json(headers) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            ));
        }
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "body must be a JSON object",
            )),
        }
    }

    /// Checks 1 and 2 of the module doc (a read has no body); 404 when the
    /// readings say reads are not offered.
    fn admit_read(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if !self.authorized(headers) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid or missing credentials",
            ));
        }
        match headers.get("x-reseller").map(|v| v.as_bytes()) {
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "missing X-Reseller header",
                ))
            }
            Some(code) if code != self.options.reseller_code.as_bytes() => {
                return Err(ApiError::new(StatusCode::BAD_REQUEST, "unknown reseller"))
            }
            Some(_) => {}
        }
        if let Some(ua) = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            let mut store = self.store.lock().unwrap();
            store.user_agents.insert(ua.to_string());
        }
        Ok(())
    }

    /// A read's admission: [`Api::admit_read`], and 404 when reads are not offered.
    pub(super) fn admit_list(&self, headers: &HeaderMap) -> Result<Readings, ApiError> {
        self.admit_read(headers)?;
        let readings = self.readings();
        if readings.reads == Reads::NotOffered {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not found"));
        }
        Ok(readings)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(encoded) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let expected = format!("{}:{}", self.options.username, self.options.password);
        decoded == expected.as_bytes()
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// An error answer: `{"message": ...}` with its status.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub(super) fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "message": self.message }));
        let mut response = if self.status == StatusCode::UNAUTHORIZED {
            let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"reseller\"")];
            (self.status, challenge, body).into_response()
        } else {
            (self.status, body).into_response()
        };
        // For [`error_form`], which writes it in the form the readings say.
        response.extensions_mut().insert(ErrorText(self.message));
        response
    }
}

/// The message of an [`ApiError`] answer.
#[derive(Clone)]
struct ErrorText(String);

/// Middleware: rewrites the API's own error bodies in [`Readings::errors`]'s form.
pub(super) async fn error_form(State(api): State<Api>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let Some(ErrorText(message)) = response.extensions().get::<ErrorText>().cloned() else {
        return response;
    };
    let (content_type, body) = match api.readings().errors {
        ErrorForm::Message => return response,
        ErrorForm::Error => ("application/json", json!({ "error": message }).to_string()),
        ErrorForm::Errors => (
            "application/json",
            json!({ "errors": [message] }).to_string(),
        ),
        ErrorForm::PlainText => ("text/plain; charset=utf-8", message),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Response::from_parts(parts, Body::from(body))
}

/// A required, non-empty string field, or 422.
pub(super) fn required_str<'a>(
    body: &'a Map<String, Value>,
    field: &str,
) -> Result<&'a str, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(ApiError::invalid(format!("{field} is required"))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ApiError::invalid(format!("{field} must not be empty"))),
        Some(_) => Err(ApiError::invalid(format!("{field} must be a string"))),
    }
}

/// An optional string field with a default, or 422 when it is not a string.
pub(super) fn optional_str<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    default: &'a str,
) -> Result<&'a str, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::invalid(format!("{field} must be a string"))),
    }
}
