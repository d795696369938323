//! What every handler checks (Basic auth, a JSON body, required parameters)
//! and the Rails-like errors it answers, written in the readings' error form.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::readings::ErrorForm;
use super::{Caller, Inner, Shared};

/// A Rails-like error answer: `{"errors": [...]}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    errors: Vec<String>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            errors: vec![error.into()],
        }
    }
    pub(super) fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized")
    }
    pub(super) fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden")
    }
    pub(super) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found")
    }
    fn missing_param(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("param is missing or the value is empty: {name}"),
        )
    }
    pub(super) fn invalid(errors: Vec<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "errors": self.errors }));
        let mut response = if self.status == StatusCode::UNAUTHORIZED {
            let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"ComputeStacks\"")];
            (self.status, challenge, body).into_response()
        } else {
            (self.status, body).into_response()
        };
        // For [`error_form`], which writes them in the form the readings say.
        response.extensions_mut().insert(ErrorTexts(self.errors));
        response
    }
}

/// The messages of an [`ApiError`] answer.
#[derive(Clone)]
struct ErrorTexts(Vec<String>);

/// Middleware: rewrites the API's own error bodies in [`super::Readings::errors`]'s form.
pub(super) async fn error_form(
    State(state): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let Some(ErrorTexts(errors)) = response.extensions().get::<ErrorTexts>().cloned() else {
        return response;
    };
    let form = state.lock().unwrap().options.readings.errors;
    let (content_type, body) = match form {
        ErrorForm::ErrorsList => return response,
        ErrorForm::ErrorsByField => {
            // "Email has already been taken" -> {"email": ["has already been taken"]}
            let mut fields: Map<String, Value> = Map::new();
            for error in &errors {
                let (field, rest) = match error.split_once(' ') {
                    Some((field, rest)) => (field.to_lowercase(), rest.to_string()),
                    None => ("base".to_string(), error.clone()),
                };
                if let Value::Array(list) = fields.entry(field).or_insert_with(|| json!([])) {
                    list.push(json!(rest));
                }
            }
            ("application/json", json!({ "errors": fields }).to_string())
        }
        ErrorForm::Error => (
            "application/json",
            json!({"error": errors.join(", ")}).to_string(),
        ),
        ErrorForm::Message => (
            "application/json",
            json!({"message": errors.join(", ")}).to_string(),
        ),
        ErrorForm::PlainText => ("text/plain; charset=utf-8", errors.join("\n")),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Response::from_parts(parts, Body::from(body))
}

/// Reads Basic auth: the admin, a user's API credential, or a 401.
pub(super) fn authenticate(s: &Inner, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let (username, password) = basic_auth(headers).ok_or_else(ApiError::unauthorized)?;
    if username == s.options.admin_username && password == s.options.admin_password {
        return Ok(Caller::Admin);
    }
    s.credentials
        .iter()
        .find(|c| c.record.username == username && c.password == password)
        .map(|c| Caller::User(c.record.user_id))
        .ok_or_else(ApiError::unauthorized)
}

pub(super) fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

pub(super) fn require_admin(s: &Inner, headers: &HeaderMap) -> Result<(), ApiError> {
    match authenticate(s, headers)? {
        Caller::Admin => Ok(()),
        Caller::User(_) => Err(ApiError::forbidden()),
    }
}

/// The body as a JSON object. Checked after authentication, as Rails does, so
/// an anonymous caller learns nothing from a bad body.
pub(super) fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body is not a JSON object",
        )),
    }
}

/// `key` of `params` as a required object parameter.
pub(super) fn param<'a>(
    params: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a Map<String, Value>, ApiError> {
    params
        .get(key)
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::missing_param(key))
}

pub(super) fn non_blank<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}
