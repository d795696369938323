//! What the handlers check on every request (its credential and its body) and
//! the refusal they answer when a check fails.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::Shared;

/// Why the sandbox refuses a call; answered as `{"message": ...}` with its status.
pub(super) struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "message": self.message }))).into_response()
    }
}

pub(super) fn fail(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

pub(super) fn unauthorized(message: &str) -> Refusal {
    fail(StatusCode::UNAUTHORIZED, message)
}

pub(super) fn unprocessable(message: impl Into<String>) -> Refusal {
    fail(StatusCode::UNPROCESSABLE_ENTITY, message)
}

pub(super) fn not_found(what: &str) -> Refusal {
    fail(StatusCode::NOT_FOUND, format!("{what} not found"))
}

pub(super) type Answer = Result<Response, Refusal>;

pub(super) fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

/// A JSON object body; checked after auth so a bad credential is always 401.
pub(super) fn json_object(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Map<String, Value>, Refusal> {
    if !content_type_is(headers, "application/json") {
        return Err(fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        ));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(fail(StatusCode::BAD_REQUEST, "expected a JSON object")),
        Err(_) => Err(fail(StatusCode::BAD_REQUEST, "body is not valid JSON")),
    }
}

pub(super) fn string_field(body: &Map<String, Value>, key: &str) -> Result<String, Refusal> {
    match body.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(unprocessable(format!("{key} is required"))),
    }
}

/// An integer id given as a number or a numeric string (both occur in the seed).
pub(super) fn int_of(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// An id the client sends back in a body: a JSON number, as the seed shows
/// every such id (an id the answers gave as a string must be written back as
/// a number).
pub(super) fn number_of(body: &Map<String, Value>, key: &str) -> Result<i64, Refusal> {
    match body.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| unprocessable(format!("{key} must be an integer"))),
        None | Some(Value::Null) => Err(unprocessable(format!("{key} is required"))),
        Some(_) => Err(unprocessable(format!("{key} must be a number"))),
    }
}

// ---- auth ----------------------------------------------------------------

/// Where a token must be presented.
#[derive(Clone, Copy)]
pub(super) enum Credential {
    Bearer,
    Cookie,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == "DASHSESS2")
        .map(|(_, value)| value)
}

impl Shared {
    pub(super) fn authorize(&self, headers: &HeaderMap, want: Credential) -> Result<(), Refusal> {
        let token = match want {
            Credential::Bearer => bearer(headers).ok_or_else(|| {
                unauthorized("authentication required: Authorization: Bearer <token>")
            })?,
            Credential::Cookie => session_cookie(headers)
                .ok_or_else(|| unauthorized("authentication required: DASHSESS2 cookie"))?,
        };
        let state = self.state.lock().unwrap();
        match state.tokens.get(token) {
            Some(expires) if Instant::now() < *expires => Ok(()),
            Some(_) => Err(unauthorized("token expired")),
            None => Err(unauthorized("invalid token")),
        }
    }
}
