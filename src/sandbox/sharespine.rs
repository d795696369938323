//! Emulated Sharespine Reseller API: tenants, tenant users, connections and
//! login URLs, held in memory, as strict as the real service is documented to be
//! (`seeds/sharespine-onboard-tenant.txt`).
//!
//! Every API call is checked in this order, and the first failure answers:
//! 1. `401` unless `Authorization` is Basic with the configured username and password;
//! 2. `400` unless `X-Reseller` equals the configured reseller code;
//! 3. `415` unless `Content-Type` is `application/json`;
//! 4. `400` unless the body is a JSON object;
//! 5. `404` for an unknown tenant `codeName` (or, for a login URL, an unknown login);
//! 6. `422` for a missing or ill-typed required field, or a login already used in the tenant.
//!
//! Errors are `{"message": "..."}` (by default: see [`Readings::errors`]). Required fields: tenant `customerReference`
//! (a non-empty string); user `login` (a non-empty string, not `.` or `..`);
//! connection: none (`type` defaults to `api`, and must be a string if given);
//! login URL: none (`path` defaults to `/`, and must be a string if given). Other
//! fields are kept as sent. Logins are unique per tenant, compared exactly.
//! Creates answer `201`, a login URL `200`.
//!
//! A tenant's `codeName` is [`CODE_NAME_PREFIX`] + the lower-cased
//! `customerReference` + `-` + how many tenants share that (lower-cased)
//! reference, so the first `mycustomer` is `prefixmycustomer-1`. Connections get
//! a random 32-hex-digit id (by default: see [`Readings::connection_ids`]); login URLs are `http://<Host>/_tokenlogin/{login}/{token}`
//! and expire [`LOGIN_URL_TTL`] after they are made. `GET` on such a URL (not
//! part of the reseller API, so neither counted nor faulted) answers `200` while
//! it is valid, so a demo's links lead somewhere.
//!
//! The `User-Agent` of every call is recorded ([`Api::user_agents`]) but not
//! required: the seed shows one without saying the service refuses its absence.
//!
//! Besides the seed's four creates, the reads the seed alludes to ("access some
//! basic information of the tenants") without showing them, which the worker
//! uses to find what an interrupted create made: `GET /reseller/tenant` (the
//! reseller's tenants), `GET /reseller/tenant/{codeName}/user` and
//! `GET /reseller/tenant/{codeName}/connection`. They check 1, 2 and 5 above.
//!
//! [`Readings`]: how answers look where the seed leaves it open (answer
//! envelopes, id types, the login URL's field name, the expiry's form, list
//! forms, whether the reads are offered at all, extra fields, error forms); one
//! knob per open point of the provider module's inventory, the seed's example
//! by default. Set from config (`[sandbox.sharespine]`, listed by
//! `onboarding-worker sandbox --help`: [`READINGS_HELP`]), in-process
//! ([`Api::set_readings`]) or over HTTP:
//! `GET /_sandbox/readings` shows them, `POST /_sandbox/readings` replaces them
//! (knobs left out take their default, so `{}` restores the seed's readings).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::faults::{self, Knobs};

/// Starts every `codeName`; the seed's own example ("prefixmycustomer-number").
pub const CODE_NAME_PREFIX: &str = "prefix";

/// How long a login URL stays valid.
pub const LOGIN_URL_TTL: Duration = Duration::from_secs(5 * 60);

/// What the emulated API accepts.
#[derive(Clone, Debug)]
pub struct Options {
    pub username: String,
    pub password: String,
    pub reseller_code: String,
    /// How answers look where the seed leaves it open (at start; see [`Api::set_readings`]).
    pub readings: Readings,
}

/// How the emulated API answers where the seed leaves an answer open: one knob
/// per open point of the provider module's inventory. Every default is the
/// seed's own example.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Readings {
    /// `POST /reseller/tenant`.
    pub tenant_created: TenantAnswer,
    /// `POST /reseller/tenant/{codeName}/user`.
    pub user_created: UserAnswer,
    /// `POST /reseller/tenant/{codeName}/connection`: bare (the seed) or under `connection`.
    pub connection_created: Envelope,
    /// Connection ids (chosen when a connection is made).
    pub connection_ids: ConnectionIds,
    /// The login URL's field name.
    pub login_url_field: LoginUrlField,
    /// The login URL's expiry.
    pub expires: Expires,
    /// The three lists: bare, under their name, or under `data`.
    pub lists: List,
    /// Whether the three lists are offered at all (404 when not).
    pub reads: Reads,
    /// Unknown fields added to every answer, at the top and inside objects.
    pub extra_fields: bool,
    /// The form of every error body the API itself writes (injected faults keep theirs).
    pub errors: ErrorForm,
}

/// `POST /reseller/tenant`'s answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantAnswer {
    /// `{"codeName": ..}` (the seed).
    #[default]
    CodeName,
    /// The tenant as received, with its `codeName`.
    Echo,
    /// `{"tenant": {<the tenant with its codeName>}}`.
    Named,
}

/// `POST /reseller/tenant/{codeName}/user`'s answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserAnswer {
    /// The user as received, `login` included (the seed).
    #[default]
    Echo,
    /// `{"user": {..}}`.
    Named,
    /// The user as received, without `login`.
    WithoutLogin,
    /// No body at all.
    NoBody,
}

/// An object answer bare (the seed) or under its name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    #[default]
    Bare,
    Named,
}

/// Connection ids: 32 hex digits (the seed), numbers, or zero-padded numeric strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionIds {
    #[default]
    Hex,
    Number,
    NumericString,
}

/// `loginUrl` (the seed), `url` or `login_url`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginUrlField {
    #[default]
    LoginUrl,
    Url,
    SnakeCase,
}

/// The login URL's `expires`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expires {
    /// RFC 3339 in UTC, `...Z` (the seed).
    #[default]
    Rfc3339,
    /// RFC 3339 at `+02:00`.
    Offset,
    /// Unix seconds, a number.
    UnixSeconds,
    /// Unix milliseconds, a number.
    UnixMillis,
    Null,
    Absent,
}

/// A list answer bare, under its name (`tenants`, `users`, `connections`) or under `data`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum List {
    #[default]
    Bare,
    Named,
    Data,
}

/// Whether the reads are offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reads {
    #[default]
    Offered,
    /// Every read answers 404.
    NotOffered,
}

/// Error bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorForm {
    /// `{"message": "login already exists"}`.
    #[default]
    Message,
    /// `{"error": "login already exists"}`.
    Error,
    /// `{"errors": ["login already exists"]}`.
    Errors,
    /// `login already exists`, as `text/plain`.
    PlainText,
}

/// The readings knobs, for `onboarding-worker sandbox --help` (see [`super::readings_help`]).
pub const READINGS_HELP: &str = "\
Sharespine: [sandbox.sharespine], ONBOARDING__SANDBOX__SHARESPINE__<KEY>, or at run time
POST /_sandbox/readings on the Sharespine port.
  tenant_created      code_name (default, {\"codeName\": ..}) | echo (the tenant as sent, with
                      its codeName) | named ({\"tenant\": {..}})
  user_created        echo (default, the user as sent) | named ({\"user\": {..}})
                      | without_login (as sent, without login) | no_body
  connection_created  bare (default) | named ({\"connection\": {..}})
  connection_ids      hex (default, 32 hex digits) | number | numeric_string (zero-padded)
  login_url_field     login_url (default, loginUrl) | url | snake_case (login_url)
  expires             rfc3339 (default, ...Z) | offset (RFC 3339 at +02:00) | unix_seconds
                      | unix_millis | null | absent: the login URL's expiry
  lists               bare (default) | named ({\"tenants\": [...]}, users, connections)
                      | data ({\"data\": [...]}): the three GET lists
  reads               offered (default) | not_offered (the three GET lists answer 404)
  extra_fields        false (default) | true (unknown fields in every answer and object)
  errors              message (default, {\"message\": ..}) | error ({\"error\": ..})
                      | errors ({\"errors\": [..]}) | plain_text";

/// Every reading, one open point at a time, then all at once: for tests that
/// run the same onboarding under each.
pub fn each_reading() -> Vec<(&'static str, Readings)> {
    let seed = Readings::default;
    vec![
        ("the seed's own answers", seed()),
        (
            "the tenant echoed with its codeName",
            Readings {
                tenant_created: TenantAnswer::Echo,
                ..seed()
            },
        ),
        (
            "the tenant under tenant",
            Readings {
                tenant_created: TenantAnswer::Named,
                ..seed()
            },
        ),
        (
            "the user under user",
            Readings {
                user_created: UserAnswer::Named,
                ..seed()
            },
        ),
        (
            "the user without its login",
            Readings {
                user_created: UserAnswer::WithoutLogin,
                ..seed()
            },
        ),
        (
            "the user created without a body",
            Readings {
                user_created: UserAnswer::NoBody,
                ..seed()
            },
        ),
        (
            "the connection under connection",
            Readings {
                connection_created: Envelope::Named,
                ..seed()
            },
        ),
        (
            "connection ids as numbers",
            Readings {
                connection_ids: ConnectionIds::Number,
                ..seed()
            },
        ),
        (
            "connection ids as zero-padded numeric strings",
            Readings {
                connection_ids: ConnectionIds::NumericString,
                ..seed()
            },
        ),
        (
            "the login URL as url",
            Readings {
                login_url_field: LoginUrlField::Url,
                ..seed()
            },
        ),
        (
            "the login URL as login_url",
            Readings {
                login_url_field: LoginUrlField::SnakeCase,
                ..seed()
            },
        ),
        (
            "the expiry at +02:00",
            Readings {
                expires: Expires::Offset,
                ..seed()
            },
        ),
        (
            "the expiry in Unix seconds",
            Readings {
                expires: Expires::UnixSeconds,
                ..seed()
            },
        ),
        (
            "the expiry in Unix milliseconds",
            Readings {
                expires: Expires::UnixMillis,
                ..seed()
            },
        ),
        (
            "the expiry null",
            Readings {
                expires: Expires::Null,
                ..seed()
            },
        ),
        (
            "the expiry absent",
            Readings {
                expires: Expires::Absent,
                ..seed()
            },
        ),
        (
            "lists under their name",
            Readings {
                lists: List::Named,
                ..seed()
            },
        ),
        (
            "lists under data",
            Readings {
                lists: List::Data,
                ..seed()
            },
        ),
        (
            "no reads offered",
            Readings {
                reads: Reads::NotOffered,
                ..seed()
            },
        ),
        (
            "unknown extra fields everywhere",
            Readings {
                extra_fields: true,
                ..seed()
            },
        ),
        (
            "every reading but the seed's at once",
            Readings {
                tenant_created: TenantAnswer::Named,
                user_created: UserAnswer::NoBody,
                connection_created: Envelope::Named,
                connection_ids: ConnectionIds::NumericString,
                login_url_field: LoginUrlField::Url,
                expires: Expires::UnixMillis,
                lists: List::Data,
                reads: Reads::NotOffered,
                extra_fields: true,
                errors: ErrorForm::PlainText,
            },
        ),
    ]
}

impl Readings {
    /// Fields no client asked for, inside an object.
    fn extras(&self, object: &mut Map<String, Value>) {
        if self.extra_fields {
            object.insert("x_sandbox_note".into(), json!("an unknown field"));
            object.insert("links".into(), json!({"self": null}));
        }
    }

    /// `object` bare, or under `name` (with unknown fields at the top too).
    fn object(&self, named: bool, name: &str, mut object: Map<String, Value>) -> Value {
        self.extras(&mut object);
        if !named {
            return Value::Object(object);
        }
        let mut top = Map::new();
        top.insert(name.into(), Value::Object(object));
        if self.extra_fields {
            top.insert("meta".into(), json!({"version": 1}));
        }
        Value::Object(top)
    }

    fn list(&self, name: &str, items: Vec<Value>) -> Value {
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut item| {
                if let Some(o) = item.as_object_mut() {
                    self.extras(o);
                }
                item
            })
            .collect();
        let key = match self.lists {
            List::Bare => return Value::Array(items),
            List::Named => name,
            List::Data => "data",
        };
        let mut top = Map::new();
        top.insert(key.into(), Value::Array(items));
        if self.extra_fields {
            top.insert(
                "total".into(),
                json!(top[key].as_array().map_or(0, Vec::len)),
            );
        }
        Value::Object(top)
    }
}

/// A tenant as the sandbox holds it, for assertions.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    pub code_name: String,
    pub customer_reference: String,
    /// The create request's body as received (unknown fields kept).
    pub body: Value,
    pub users: Vec<User>,
    pub connections: Vec<Connection>,
    pub login_urls: Vec<LoginUrl>,
}

impl Tenant {
    /// The users' logins, in the order they were created.
    pub fn logins(&self) -> Vec<String> {
        self.users.iter().map(|u| u.login.clone()).collect()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub login: String,
    /// The create request's body as received.
    pub body: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    /// 32 lower-case hex digits.
    pub id: String,
    /// The create request's body with `id` and the defaulted `type` added: what was answered.
    pub body: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoginUrl {
    pub login: String,
    pub path: String,
    /// As answered in `loginUrl`.
    pub url: String,
    /// The random last segment of `url`.
    pub token: String,
    /// As answered in `expires` (RFC 3339, whole seconds).
    pub expires: String,
}

#[derive(Default)]
struct Store {
    /// In creation order; few enough in a sandbox that a linear search is fine.
    tenants: Vec<Tenant>,
    user_agents: BTreeSet<String>,
    /// Connections made so far (numeric connection ids count from it).
    connections_made: u64,
}

impl Store {
    fn tenant_mut(&mut self, code_name: &str) -> Result<&mut Tenant, ApiError> {
        self.tenants
            .iter_mut()
            .find(|t| t.code_name == code_name)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "tenant not found"))
    }
}

/// The emulated API: its knobs and its state; cheap to clone.
#[derive(Clone)]
pub struct Api {
    pub knobs: Knobs,
    options: Arc<Options>,
    /// The readings in force (`options.readings` at start).
    readings: Arc<Mutex<Readings>>,
    store: Arc<Mutex<Store>>,
}

impl Api {
    pub fn new(options: Options) -> Self {
        Api {
            knobs: Knobs::default(),
            readings: Arc::new(Mutex::new(options.readings.clone())),
            options: Arc::new(options),
            store: Arc::default(),
        }
    }

    /// The readings in force.
    pub fn readings(&self) -> Readings {
        self.readings.lock().unwrap().clone()
    }

    /// Answers from now on follow `readings`.
    pub fn set_readings(&self, readings: Readings) {
        *self.readings.lock().unwrap() = readings;
    }

    /// The reseller API (counted and faulted by [`faults::apply`]), the token-login
    /// page and the `/_sandbox` control routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/reseller/tenant", post(create_tenant).get(list_tenants))
            .route(
                "/reseller/tenant/{code_name}/user",
                post(create_user).get(list_users),
            )
            .route(
                "/reseller/tenant/{code_name}/connection",
                post(create_connection).get(list_connections),
            )
            .route(
                "/reseller/tenant/{code_name}/login/{login}",
                post(create_login_url),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                error_form,
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                self.knobs.clone(),
                faults::apply,
            ))
            .route("/_tokenlogin/{login}/{token}", get(token_login))
            .route(
                "/_sandbox/readings",
                get(|State(api): State<Api>| async move { Json(api.readings()) }).post(
                    |State(api): State<Api>, Json(readings): Json<Readings>| async move {
                        api.set_readings(readings);
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(self.clone())
            .merge(faults::control_routes(self.knobs.clone()))
    }

    /// Every tenant, in creation order.
    pub fn tenants(&self) -> Vec<Tenant> {
        self.store.lock().unwrap().tenants.clone()
    }

    pub fn tenant(&self, code_name: &str) -> Option<Tenant> {
        let store = self.store.lock().unwrap();
        store
            .tenants
            .iter()
            .find(|t| t.code_name == code_name)
            .cloned()
    }

    /// Every distinct `User-Agent` the API was called with.
    pub fn user_agents(&self) -> Vec<String> {
        let store = self.store.lock().unwrap();
        store.user_agents.iter().cloned().collect()
    }

    /// Checks 1 to 4 of the module doc; gives the body as an object.
    fn admit(&self, headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
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
    fn admit_list(&self, headers: &HeaderMap) -> Result<Readings, ApiError> {
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
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
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
async fn error_form(State(api): State<Api>, request: Request, next: Next) -> Response {
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
fn required_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Err(ApiError::invalid(format!("{field} is required"))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ApiError::invalid(format!("{field} must not be empty"))),
        Some(_) => Err(ApiError::invalid(format!("{field} must be a string"))),
    }
}

/// An optional string field with a default, or 422 when it is not a string.
fn optional_str<'a>(
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

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

async fn create_tenant(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut body = api.admit(&headers, &body)?;
    let reference = required_str(&body, "customerReference")?.to_string();
    let lower = reference.to_lowercase();
    let mut store = api.store.lock().unwrap();
    let number = 1 + store
        .tenants
        .iter()
        .filter(|t| t.customer_reference.to_lowercase() == lower)
        .count();
    let code_name = format!("{CODE_NAME_PREFIX}{lower}-{number}");
    let received = Value::Object(body.clone());
    body.insert("codeName".into(), json!(code_name));
    let r = api.readings();
    let answer = match r.tenant_created {
        TenantAnswer::CodeName => {
            let mut only = Map::new();
            only.insert("codeName".into(), json!(code_name));
            r.object(false, "tenant", only)
        }
        TenantAnswer::Echo => r.object(false, "tenant", body),
        TenantAnswer::Named => r.object(true, "tenant", body),
    };
    store.tenants.push(Tenant {
        code_name,
        customer_reference: reference,
        body: received,
        users: Vec::new(),
        connections: Vec::new(),
        login_urls: Vec::new(),
    });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn create_user(
    State(api): State<Api>,
    Path(code_name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = api.admit(&headers, &body)?;
    let mut store = api.store.lock().unwrap();
    let tenant = store.tenant_mut(&code_name)?;
    let login = required_str(&body, "login")?;
    if matches!(login, "." | "..") {
        // Such a login could never be addressed in a login-URL path.
        return Err(ApiError::invalid("login must not be . or .."));
    }
    if tenant.users.iter().any(|u| u.login == login) {
        return Err(ApiError::invalid("login already exists"));
    }
    tenant.users.push(User {
        login: login.to_string(),
        body: Value::Object(body.clone()),
    });
    let r = api.readings();
    let answer = match r.user_created {
        UserAnswer::Echo => r.object(false, "user", body),
        UserAnswer::Named => r.object(true, "user", body),
        UserAnswer::WithoutLogin => {
            let mut without = body;
            without.remove("login");
            r.object(false, "user", without)
        }
        UserAnswer::NoBody => return Ok(StatusCode::CREATED.into_response()),
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn create_connection(
    State(api): State<Api>,
    Path(code_name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut body = api.admit(&headers, &body)?;
    let r = api.readings();
    let mut store = api.store.lock().unwrap();
    let number = 9000 + store.connections_made + 1;
    let tenant = store.tenant_mut(&code_name)?;
    let kind = optional_str(&body, "type", "api")?.to_string();
    let (id, shown) = match r.connection_ids {
        ConnectionIds::Hex => {
            let id = random_hex();
            (id.clone(), json!(id))
        }
        ConnectionIds::Number => (number.to_string(), json!(number)),
        ConnectionIds::NumericString => {
            let id = format!("{number:012}");
            (id.clone(), json!(id))
        }
    };
    body.insert("type".into(), json!(kind));
    body.insert("id".into(), shown);
    tenant.connections.push(Connection {
        id,
        body: Value::Object(body.clone()),
    });
    store.connections_made += 1;
    let answer = r.object(r.connection_created == Envelope::Named, "connection", body);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn create_login_url(
    State(api): State<Api>,
    Path((code_name, login)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = api.admit(&headers, &body)?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let mut store = api.store.lock().unwrap();
    let tenant = store.tenant_mut(&code_name)?;
    if !tenant.users.iter().any(|u| u.login == login) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "login not found"));
    }
    let path = optional_str(&body, "path", "/")?.to_string();
    let token = random_hex();
    let mut url = url::Url::parse(&format!("http://{host}"))
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad Host header"))?;
    url.path_segments_mut()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad Host header"))?
        .pop_if_empty()
        .extend(["_tokenlogin", login.as_str(), token.as_str()]);
    let expires_at = (OffsetDateTime::now_utc() + LOGIN_URL_TTL)
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    let expires = expires_at
        .format(&Rfc3339)
        .expect("a UTC time formats as RFC 3339");
    let issued = LoginUrl {
        login,
        path: path.clone(),
        url: url.to_string(),
        token,
        expires: expires.clone(),
    };
    tenant.login_urls.push(issued.clone());
    let r = api.readings();
    let mut answer = Map::new();
    answer.insert("path".into(), json!(path));
    let url_field = match r.login_url_field {
        LoginUrlField::LoginUrl => "loginUrl",
        LoginUrlField::Url => "url",
        LoginUrlField::SnakeCase => "login_url",
    };
    answer.insert(url_field.into(), json!(issued.url));
    let two_hours_east = UtcOffset::from_hms(2, 0, 0).expect("a valid offset");
    let shown = match r.expires {
        Expires::Rfc3339 => Some(json!(expires)),
        Expires::Offset => Some(json!(expires_at
            .to_offset(two_hours_east)
            .format(&Rfc3339)
            .expect("formats as RFC 3339"))),
        Expires::UnixSeconds => Some(json!(expires_at.unix_timestamp())),
        Expires::UnixMillis => Some(json!(expires_at.unix_timestamp() * 1000)),
        Expires::Null => Some(Value::Null),
        Expires::Absent => None,
    };
    if let Some(shown) = shown {
        answer.insert("expires".into(), shown);
    }
    Ok((StatusCode::OK, Json(r.object(false, "login", answer))).into_response())
}

/// GET /reseller/tenant: the reseller's tenants, each as received with its `codeName`.
async fn list_tenants(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    let r = api.admit_list(&headers)?;
    let store = api.store.lock().unwrap();
    let items = store
        .tenants
        .iter()
        .map(|t| {
            let mut shown = t.body.as_object().cloned().unwrap_or_default();
            shown.insert("codeName".into(), json!(t.code_name));
            Value::Object(shown)
        })
        .collect();
    Ok(Json(r.list("tenants", items)).into_response())
}

/// GET /reseller/tenant/{codeName}/user: the tenant's users, as received.
async fn list_users(
    State(api): State<Api>,
    Path(code_name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let r = api.admit_list(&headers)?;
    let mut store = api.store.lock().unwrap();
    let tenant = store.tenant_mut(&code_name)?;
    let items = tenant.users.iter().map(|u| u.body.clone()).collect();
    Ok(Json(r.list("users", items)).into_response())
}

/// GET /reseller/tenant/{codeName}/connection: the tenant's connections, as answered.
async fn list_connections(
    State(api): State<Api>,
    Path(code_name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let r = api.admit_list(&headers)?;
    let mut store = api.store.lock().unwrap();
    let tenant = store.tenant_mut(&code_name)?;
    let items = tenant.connections.iter().map(|c| c.body.clone()).collect();
    Ok(Json(r.list("connections", items)).into_response())
}

/// Where a login URL leads: a plain page while the URL is valid.
async fn token_login(
    State(api): State<Api>,
    Path((login, token)): Path<(String, String)>,
) -> Response {
    let store = api.store.lock().unwrap();
    let now = OffsetDateTime::now_utc();
    let found = store.tenants.iter().find_map(|t| {
        t.login_urls
            .iter()
            .find(|u| u.token == token && u.login == login)
            .map(|u| (t, u))
    });
    let valid = found.filter(|(_, u)| {
        OffsetDateTime::parse(&u.expires, &Rfc3339).is_ok_and(|expires| now < expires)
    });
    match valid {
        Some((tenant, url)) => (
            StatusCode::OK,
            format!(
                "Signed in to {} as {}; continuing to {}\n",
                tenant.code_name, url.login, url.path
            ),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "unknown or expired login link\n").into_response(),
    }
}

/// Serves `api` on a free local port for the tests of this module and of the provider.
#[cfg(test)]
pub(crate) async fn serve_for_tests(api: &Api) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a free port");
    let addr = listener.local_addr().expect("bound address");
    let router = api.router();
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("sandbox serves");
    });
    addr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::faults::{Fault, FaultRule};

    const USER: &str = "reseller";
    const PASSWORD: &str = "sandbox-test-password";
    const RESELLER: &str = "test-reseller";

    struct Served {
        api: Api,
        base: String,
        client: reqwest::Client,
    }

    async fn served() -> Served {
        let api = Api::new(Options {
            username: USER.into(),
            password: PASSWORD.into(),
            reseller_code: RESELLER.into(),
            readings: Readings::default(),
        });
        let addr = serve_for_tests(&api).await;
        Served {
            api,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    impl Served {
        /// A POST that passes every header check.
        fn post(&self, path: &str) -> reqwest::RequestBuilder {
            self.client
                .post(format!("{}{path}", self.base))
                .basic_auth(USER, Some(PASSWORD))
                .header("X-Reseller", RESELLER)
                .header("User-Agent", "sandbox-tests/1.0")
        }

        async fn call(&self, path: &str, body: Value) -> (u16, Value) {
            answer(self.post(path).json(&body)).await
        }

        async fn tenant(&self, reference: &str) -> String {
            let (status, body) = self
                .call("/reseller/tenant", json!({"customerReference": reference}))
                .await;
            assert_eq!(status, 201, "{body}");
            body["codeName"].as_str().unwrap().to_string()
        }

        async fn user(&self, code_name: &str, login: &str) -> (u16, Value) {
            self.call(
                &format!("/reseller/tenant/{code_name}/user"),
                json!({"login": login}),
            )
            .await
        }
    }

    async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("sandbox answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    #[tokio::test]
    async fn missing_or_wrong_credentials_get_401() {
        let s = served().await;
        let url = format!("{}/reseller/tenant", s.base);
        let body = json!({"customerReference": "c"});
        for (request, why) in [
            (s.client.post(&url), "no Authorization"),
            (
                s.client.post(&url).basic_auth(USER, Some("wrong")),
                "wrong password",
            ),
            (
                s.client.post(&url).basic_auth("someone", Some(PASSWORD)),
                "wrong username",
            ),
            (s.client.post(&url).bearer_auth(PASSWORD), "not Basic"),
        ] {
            let response = request
                .header("X-Reseller", RESELLER)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 401, "{why}");
            assert!(response.headers().contains_key("www-authenticate"), "{why}");
        }
        assert!(s.api.tenants().is_empty());
    }

    #[tokio::test]
    async fn missing_or_wrong_reseller_gets_400_with_a_message() {
        let s = served().await;
        let url = format!("{}/reseller/tenant", s.base);
        let body = json!({"customerReference": "c"});
        let authed = || s.client.post(&url).basic_auth(USER, Some(PASSWORD));
        let (status, answer_body) = answer(authed().json(&body)).await;
        assert_eq!(status, 400);
        assert_eq!(answer_body["message"], "missing X-Reseller header");
        let (status, answer_body) =
            answer(authed().header("X-Reseller", "someone-else").json(&body)).await;
        assert_eq!(status, 400);
        assert_eq!(answer_body["message"], "unknown reseller");
        assert!(s.api.tenants().is_empty());
    }

    #[tokio::test]
    async fn a_post_that_is_not_json_gets_415_and_a_body_that_is_not_an_object_400() {
        let s = served().await;
        let (status, _) = answer(
            s.post("/reseller/tenant")
                .header("Content-Type", "text/plain")
                .body(r#"{"customerReference":"c"}"#),
        )
        .await;
        assert_eq!(status, 415, "text/plain");
        let (status, _) = answer(
            s.post("/reseller/tenant")
                .body(r#"{"customerReference":"c"}"#),
        )
        .await;
        assert_eq!(status, 415, "no Content-Type");
        let (status, _) = answer(
            s.post("/reseller/tenant")
                .header("Content-Type", "application/json; charset=utf-8")
                .body(r#"{"customerReference":"c"}"#),
        )
        .await;
        assert_eq!(status, 201, "a charset parameter is fine");
        for bad in ["not json", "[1]", ""] {
            let (status, _) = answer(
                s.post("/reseller/tenant")
                    .header("Content-Type", "application/json")
                    .body(bad),
            )
            .await;
            assert_eq!(status, 400, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn missing_required_fields_get_422() {
        let s = served().await;
        let code = s.tenant("acme").await;
        for (path, body, message) in [
            (
                "/reseller/tenant".to_string(),
                json!({"fullName": "Acme"}),
                "customerReference is required",
            ),
            (
                "/reseller/tenant".to_string(),
                json!({"customerReference": 7}),
                "customerReference must be a string",
            ),
            (
                "/reseller/tenant".to_string(),
                json!({"customerReference": ""}),
                "customerReference must not be empty",
            ),
            (
                format!("/reseller/tenant/{code}/user"),
                json!({"fullName": "Anna"}),
                "login is required",
            ),
            (
                format!("/reseller/tenant/{code}/user"),
                json!({"login": ".."}),
                "login must not be . or ..",
            ),
            (
                format!("/reseller/tenant/{code}/connection"),
                json!({"type": 1}),
                "type must be a string",
            ),
        ] {
            let (status, answer_body) = s.call(&path, body.clone()).await;
            assert_eq!(status, 422, "{path} {body}");
            assert_eq!(answer_body["message"], message, "{path} {body}");
        }
        assert_eq!(s.api.tenants().len(), 1);
        assert!(s.api.tenant(&code).unwrap().users.is_empty());
        assert!(s.api.tenant(&code).unwrap().connections.is_empty());
    }

    #[tokio::test]
    async fn unknown_tenant_or_login_gets_404() {
        let s = served().await;
        let code = s.tenant("acme").await;
        for path in [
            "/reseller/tenant/prefixnobody-1/user".to_string(),
            "/reseller/tenant/prefixnobody-1/connection".to_string(),
            "/reseller/tenant/prefixnobody-1/login/anna".to_string(),
            format!("/reseller/tenant/{code}/login/anna"),
        ] {
            let (status, body) = s.call(&path, json!({"login": "anna", "path": "/"})).await;
            assert_eq!(status, 404, "{path}");
            assert!(body["message"].is_string(), "{path}");
        }
    }

    #[tokio::test]
    async fn duplicate_login_is_rejected_with_422() {
        let s = served().await;
        let first = s.tenant("acme").await;
        let second = s.tenant("other").await;
        assert_eq!(s.user(&first, "anna").await.0, 201);
        let (status, body) = s.user(&first, "anna").await;
        assert_eq!(status, 422);
        assert_eq!(body, json!({"message": "login already exists"}));
        assert_eq!(
            s.user(&second, "anna").await.0,
            201,
            "logins are unique per tenant only"
        );
        assert_eq!(s.api.tenant(&first).unwrap().logins(), ["anna"]);
    }

    #[tokio::test]
    async fn code_names_count_tenants_per_customer_reference() {
        let s = served().await;
        assert_eq!(s.tenant("mycustomer").await, "prefixmycustomer-1");
        assert_eq!(s.tenant("other").await, "prefixother-1");
        assert_eq!(
            s.tenant("MyCustomer").await,
            "prefixmycustomer-2",
            "references differing in case share a count, so code names stay unique"
        );
        let tenants = s.api.tenants();
        assert_eq!(tenants.len(), 3);
        assert_eq!(tenants[2].customer_reference, "MyCustomer");
        assert_eq!(tenants[2].body, json!({"customerReference": "MyCustomer"}));
    }

    #[tokio::test]
    async fn connections_get_a_32_hex_id_and_default_to_type_api() {
        let s = served().await;
        let code = s.tenant("acme").await;
        let (status, body) = s
            .call(
                &format!("/reseller/tenant/{code}/connection"),
                json!({"active": true, "name": "API", "configuration": {}}),
            )
            .await;
        assert_eq!(status, 201);
        let id = body["id"].as_str().unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(body["type"], "api");
        assert_eq!(s.api.tenant(&code).unwrap().connections[0].id, id);
    }

    #[tokio::test]
    async fn login_urls_point_at_the_sandbox_and_expire_in_five_minutes() {
        let s = served().await;
        let code = s.tenant("acme").await;
        assert_eq!(s.user(&code, "anna b").await.0, 201);
        let (status, body) = s
            .call(
                &format!("/reseller/tenant/{code}/login/anna%20b"),
                json!({"path": "/orders"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["path"], "/orders");
        let url = body["loginUrl"].as_str().unwrap();
        let prefix = format!("{}/_tokenlogin/anna%20b/", s.base);
        assert!(url.starts_with(&prefix), "{url}");
        assert_eq!(url.len(), prefix.len() + 32, "{url}");
        let expires = OffsetDateTime::parse(
            body["expires"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let ahead = expires - OffsetDateTime::now_utc();
        assert!(
            ahead > time::Duration::minutes(4) && ahead <= time::Duration::minutes(5),
            "{ahead}"
        );
        let held = &s.api.tenant(&code).unwrap().login_urls[0];
        assert_eq!((held.url.as_str(), held.login.as_str()), (url, "anna b"));

        let page = s.client.get(url).send().await.unwrap();
        assert_eq!(page.status().as_u16(), 200, "the link leads somewhere");
        let (status, body) = s
            .call(
                &format!("/reseller/tenant/{code}/login/anna%20b"),
                json!({}),
            )
            .await;
        assert_eq!(
            (status, &body["path"]),
            (200, &json!("/")),
            "path defaults to /"
        );
    }

    #[tokio::test]
    async fn calls_are_counted_per_route_and_faults_apply() {
        let s = served().await;
        let code = s.tenant("acme").await;
        s.api.knobs.inject(FaultRule {
            method: Some("POST".into()),
            path_contains: "/user".into(),
            fault: Fault::Status { status: 503 },
            times: 1,
        });
        assert_eq!(s.user(&code, "anna").await.0, 503);
        assert_eq!(s.user(&code, "anna").await.0, 201);
        assert_eq!(s.api.knobs.calls("POST /reseller/tenant"), 1);
        assert_eq!(
            s.api.knobs.calls("POST /reseller/tenant/{code_name}/user"),
            2
        );
        assert_eq!(s.api.user_agents(), ["sandbox-tests/1.0"]);
    }

    impl Served {
        /// A GET that passes every header check.
        async fn read(&self, path: &str) -> (u16, Value) {
            answer(
                self.client
                    .get(format!("{}{path}", self.base))
                    .basic_auth(USER, Some(PASSWORD))
                    .header("X-Reseller", RESELLER),
            )
            .await
        }
    }

    #[tokio::test]
    async fn tenants_users_and_connections_are_listed_in_the_form_the_readings_say() {
        let s = served().await;
        let code = s.tenant("acme").await;
        s.tenant("other").await;
        assert_eq!(s.user(&code, "anna").await.0, 201);
        let (_, conn) = s
            .call(
                &format!("/reseller/tenant/{code}/connection"),
                json!({"name": "API"}),
            )
            .await;
        let (status, tenants) = s.read("/reseller/tenant").await;
        assert_eq!(status, 200);
        assert_eq!(
            tenants[0]["codeName"],
            code.as_str(),
            "bare by default: {tenants}"
        );
        assert_eq!(tenants[0]["customerReference"], "acme");
        assert_eq!(tenants.as_array().unwrap().len(), 2);
        for (lists, key) in [(List::Named, "users"), (List::Data, "data")] {
            s.api.set_readings(Readings {
                lists,
                ..Readings::default()
            });
            let (_, users) = s.read(&format!("/reseller/tenant/{code}/user")).await;
            assert_eq!(users[key][0]["login"], "anna", "{lists:?}: {users}");
        }
        let (_, connections) = s.read(&format!("/reseller/tenant/{code}/connection")).await;
        assert_eq!(connections["data"][0]["id"], conn["id"]);
        assert_eq!(s.read("/reseller/tenant/prefixnobody-1/user").await.0, 404);
        s.api.set_readings(Readings {
            reads: Reads::NotOffered,
            ..Readings::default()
        });
        for path in [
            "/reseller/tenant".to_string(),
            format!("/reseller/tenant/{code}/user"),
        ] {
            assert_eq!(s.read(&path).await.0, 404, "{path}: not offered");
        }
        let unauthorized = s
            .client
            .get(format!("{}/reseller/tenant", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(unauthorized.status().as_u16(), 401, "credentials first");
        assert_eq!(s.api.knobs.calls("GET /reseller/tenant"), 3);
    }

    #[tokio::test]
    async fn every_create_answers_in_the_shape_its_reading_says() {
        let s = served().await;
        s.api.set_readings(Readings {
            tenant_created: TenantAnswer::Named,
            user_created: UserAnswer::WithoutLogin,
            connection_created: Envelope::Named,
            connection_ids: ConnectionIds::NumericString,
            login_url_field: LoginUrlField::SnakeCase,
            expires: Expires::UnixSeconds,
            extra_fields: true,
            ..Readings::default()
        });
        let (_, tenant) = s
            .call(
                "/reseller/tenant",
                json!({"customerReference": "acme", "fullName": "Acme"}),
            )
            .await;
        assert_eq!(tenant["tenant"]["codeName"], "prefixacme-1", "{tenant}");
        assert_eq!(tenant["tenant"]["fullName"], "Acme");
        assert_eq!(tenant["meta"]["version"], 1, "extra fields at the top");
        let (status, user) = s.user("prefixacme-1", "anna").await;
        assert_eq!(status, 201);
        assert!(user.get("login").is_none(), "{user}");
        assert_eq!(user["x_sandbox_note"], "an unknown field");
        let (_, conn) = s
            .call("/reseller/tenant/prefixacme-1/connection", json!({}))
            .await;
        assert_eq!(conn["connection"]["id"], "000000009001", "{conn}");
        let (_, url) = s
            .call("/reseller/tenant/prefixacme-1/login/anna", json!({}))
            .await;
        let held = &s.api.tenant("prefixacme-1").unwrap().login_urls[0];
        assert_eq!(url["login_url"], held.url.as_str(), "{url}");
        let expires = OffsetDateTime::parse(&held.expires, &Rfc3339).unwrap();
        assert_eq!(url["expires"], expires.unix_timestamp());

        s.api.set_readings(Readings {
            user_created: UserAnswer::NoBody,
            expires: Expires::Offset,
            ..Readings::default()
        });
        let response = s
            .post("/reseller/tenant/prefixacme-1/user")
            .json(&json!({"login": "bob"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        assert_eq!(response.bytes().await.unwrap().len(), 0, "no body");
        let (_, url) = s
            .call("/reseller/tenant/prefixacme-1/login/bob", json!({}))
            .await;
        let at = OffsetDateTime::parse(url["expires"].as_str().unwrap(), &Rfc3339).unwrap();
        assert_eq!(at.offset().whole_hours(), 2, "{url}");
    }

    #[tokio::test]
    async fn readings_are_shown_and_replaced_over_http() {
        let s = served().await;
        let (status, shown) = answer(s.client.get(format!("{}/_sandbox/readings", s.base))).await;
        assert_eq!(status, 200);
        assert_eq!(shown, serde_json::to_value(Readings::default()).unwrap());
        let set = |body: Value| {
            s.client
                .post(format!("{}/_sandbox/readings", s.base))
                .json(&body)
                .send()
        };
        let response = set(json!({"expires": "unix_millis", "errors": "plain_text"}))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 204);
        assert_eq!(s.api.readings().expires, Expires::UnixMillis);
        assert_eq!(s.api.readings().errors, ErrorForm::PlainText);
        set(json!({})).await.unwrap();
        assert_eq!(s.api.readings(), Readings::default());
    }

    #[tokio::test]
    async fn error_bodies_take_the_form_their_reading_says() {
        let s = served().await;
        let code = s.tenant("acme").await;
        s.user(&code, "anna").await;
        for (form, content_type, body) in [
            (
                ErrorForm::Message,
                "application/json",
                r#"{"message":"login already exists"}"#,
            ),
            (
                ErrorForm::Error,
                "application/json",
                r#"{"error":"login already exists"}"#,
            ),
            (
                ErrorForm::Errors,
                "application/json",
                r#"{"errors":["login already exists"]}"#,
            ),
            (
                ErrorForm::PlainText,
                "text/plain; charset=utf-8",
                "login already exists",
            ),
        ] {
            s.api.set_readings(Readings {
                errors: form,
                ..Readings::default()
            });
            let response = s
                .post(&format!("/reseller/tenant/{code}/user"))
                .json(&json!({"login": "anna"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 422, "{form:?}");
            assert_eq!(response.headers()["content-type"], content_type, "{form:?}");
            assert_eq!(response.text().await.unwrap(), body, "{form:?}");
        }
    }
}
