//! Emulated ComputeStacks API: the five endpoints of the provider's "custom
//! onboarding" guide, strict the way the real (Rails) service is.
//!
//! Owns the emulated users, API credentials and orders, and the knobs tests
//! turn on them:
//! - Admin Basic auth (the configured `admin_username`/`admin_password`) for
//!   `POST /api/admin/users` and `POST /api/users/{id}/api_credentials`; a
//!   user's API credential there is a 403, anything else a 401.
//! - A user's API credential (or the admin's, for the catalogue) for
//!   `GET /api/products`; only a user's for `POST /api/orders`; an order is
//!   visible to its owner only (404 for anyone else, admin included).
//! - Errors are Rails-like: `{"errors": ["Email has already been taken"]}`
//!   (by default: see [`Readings::errors`]).
//! - An order is `pending`, then `processing` after a third of its duration,
//!   then `completed` with a project (or `failed`, see [`Api::fail_next_orders`]
//!   and [`Api::fail_orders_for_project`]). Its duration is the one in force
//!   when it was placed ([`Api::set_order_duration`] changes it for new orders).
//!   Status is worked out whenever an order is read, so no task runs per order.
//! - Besides the guide's five endpoints, the two reads the provider's API docs
//!   offer for finding what an interrupted create made: the admin's user
//!   lookup `GET /api/admin/users/{key}` (`key` a user id, or with
//!   `?find_by_email=true` the Base64 of an email, or with
//!   `?find_by_external_id=true` an external id; 404 when none), and the
//!   user's `GET /api/orders` (their own orders only).
//! - [`Readings`]: how answers look where the guide leaves it open (envelopes,
//!   id types, status case, list forms, where the load balancer IP is, `null`
//!   or absent, extra fields, error forms); one knob per open point of the
//!   provider module's inventory, the guide's example by default. Set from
//!   config (`[sandbox.computestacks]`, listed by `onboarding-worker sandbox
//!   --help`: [`READINGS_HELP`]), in-process ([`Api::set_readings`]) or over
//!   HTTP: `GET /_sandbox/readings`
//!   shows them, `POST /_sandbox/readings` replaces them (knobs left out take
//!   their default, so `{}` restores the guide's readings).
//!
//! Latency, injected faults and call counts come from the shared
//! [`faults`](super::faults) middleware, as `"POST /api/orders"`,
//! `"GET /api/orders/{id}"`, `"POST /api/users/{id}/api_credentials"`...

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::faults::{self, Knobs};

/// What the emulated API accepts and how long its jobs take.
#[derive(Clone, Debug)]
pub struct Options {
    /// The administrator's Basic auth, as the worker is configured.
    pub admin_username: String,
    pub admin_password: String,
    /// How long a new order takes to reach `completed` (or `failed`).
    pub order_duration: Duration,
    /// How answers look where the guide leaves it open (at start; see [`Api::set_readings`]).
    pub readings: Readings,
}

/// How the emulated API answers where the guide leaves an answer open: one
/// knob per open point of the provider module's inventory. Every default is
/// the guide's own example.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Readings {
    /// `POST /api/admin/users` and the user lookup: `{"user": {..}}` or bare.
    pub user: Envelope,
    /// `POST /api/users/{id}/api_credentials`: `{"api_credential": {..}}` or bare.
    pub api_credential: Envelope,
    /// `POST /api/orders`: `{"order": {..}}` or bare.
    pub order_created: Envelope,
    /// `GET /api/orders/{id}`: wrapped, bare, or in a list (shaped by [`Readings::orders`]).
    pub order_shown: Shown,
    /// User, credential, product and project ids.
    pub ids: Ids,
    /// Order ids (chosen when an order is placed).
    pub order_ids: OrderIds,
    /// The letter case of order statuses.
    pub status_case: Case,
    /// `GET /api/products`.
    pub products: List,
    /// `GET /api/orders` (and [`Shown::List`]).
    pub orders: List,
    /// Where an order shows its load balancer's IP.
    pub load_balancer_ip: LoadBalancerIp,
    /// How a value not known (yet) is written: `redirect_url`, a project
    /// before completion, an absent `external_id`, a late load balancer IP.
    pub unknown: Unknown,
    /// Unknown fields added to every answer, at the top and inside objects.
    pub extra_fields: bool,
    /// The form of every error body the API itself writes (injected faults keep theirs).
    pub errors: ErrorForm,
}

/// An object answer `{"<name>": {..}}` (the guide) or the object itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    #[default]
    Named,
    Bare,
}

/// `GET /api/orders/{id}`: `{"order": {..}}` (the guide), bare, or a list of one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shown {
    #[default]
    Named,
    Bare,
    List,
}

/// Ids as numbers (the guide) or numeric strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ids {
    #[default]
    Number,
    NumericString,
}

/// Order ids as UUIDs (the guide), numbers or numeric strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderIds {
    #[default]
    Uuid,
    Number,
    NumericString,
}

/// `completed` (the guide), `Completed` or `COMPLETED`; every status alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    #[default]
    Lower,
    Capitalized,
    Upper,
}

/// A list answer: `{"<name>": [..]}` (the guide), `{"data": [..]}` or bare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum List {
    #[default]
    Named,
    Data,
    Bare,
}

/// Where an order shows its load balancer's IP. `GET /api/orders/{id}` shows
/// it in `order_data` (where the provider keeps it) whenever it is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancerIp {
    /// `load_balancer_ip` in the create's answer (the guide).
    #[default]
    AtCreate,
    /// `load_balancer: {"ip": ..}` in the create's answer.
    Nested,
    /// Not known at create (`null` or absent); known once the order is completed.
    Late,
    /// Never shown.
    Nowhere,
}

/// A value not known written as `null` (the guide) or left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    #[default]
    Null,
    Absent,
}

/// Error bodies: the provider's Rails form and the others an API may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorForm {
    /// `{"errors": ["Email has already been taken"]}`.
    #[default]
    ErrorsList,
    /// `{"errors": {"email": ["has already been taken"]}}`.
    ErrorsByField,
    /// `{"error": "Email has already been taken"}`.
    Error,
    /// `{"message": "Email has already been taken"}`.
    Message,
    /// `Email has already been taken`, as `text/plain`.
    PlainText,
}

/// The readings knobs, for `onboarding-worker sandbox --help` (see [`super::readings_help`]).
pub const READINGS_HELP: &str = "\
ComputeStacks: [sandbox.computestacks], ONBOARDING__SANDBOX__COMPUTESTACKS__<KEY>, or at run
time POST /_sandbox/readings on the ComputeStacks port.
  user                named (default, {\"user\": {..}}) | bare: the created user and the user lookup
  api_credential      named (default, {\"api_credential\": {..}}) | bare
  order_created       named (default, {\"order\": {..}}) | bare: POST /api/orders
  order_shown         named (default, {\"order\": {..}}) | bare | list (a list of one, as orders
                      says): GET /api/orders/{id}
  ids                 number (default) | numeric_string (\"14\"): user, credential, product and
                      project ids
  order_ids           uuid (default) | number | numeric_string
  status_case         lower (default, completed) | capitalized (Completed) | upper (COMPLETED)
  products            named (default, {\"products\": [...]}) | data ({\"data\": [...]}) | bare
  orders              named (default, {\"orders\": [...]}) | data ({\"data\": [...]}) | bare
  load_balancer_ip    at_create (default, load_balancer_ip in the create's answer)
                      | nested (load_balancer: {\"ip\": ..} there) | late (known once completed)
                      | nowhere; GET /api/orders/{id} shows it in order_data once known
  unknown             null (default) | absent (unknown values left out)
  extra_fields        false (default) | true (unknown fields in every answer and object)
  errors              errors_list (default, {\"errors\": [\"Email has already been taken\"]})
                      | errors_by_field ({\"errors\": {\"email\": [\"has already been taken\"]}})
                      | error ({\"error\": ..}) | message ({\"message\": ..}) | plain_text";

/// Every reading, one open point at a time, then all at once: for tests that
/// run the same onboarding under each.
pub fn each_reading() -> Vec<(&'static str, Readings)> {
    let seed = Readings::default;
    vec![
        ("the guide's own answers", seed()),
        (
            "a created user answered bare",
            Readings {
                user: Envelope::Bare,
                ..seed()
            },
        ),
        (
            "a created credential answered bare",
            Readings {
                api_credential: Envelope::Bare,
                ..seed()
            },
        ),
        (
            "a created order answered bare",
            Readings {
                order_created: Envelope::Bare,
                ..seed()
            },
        ),
        (
            "an order shown bare",
            Readings {
                order_shown: Shown::Bare,
                ..seed()
            },
        ),
        (
            "an order shown in a list",
            Readings {
                order_shown: Shown::List,
                ..seed()
            },
        ),
        (
            "ids as numeric strings",
            Readings {
                ids: Ids::NumericString,
                ..seed()
            },
        ),
        (
            "order ids as numbers",
            Readings {
                order_ids: OrderIds::Number,
                ..seed()
            },
        ),
        (
            "order ids as numeric strings",
            Readings {
                order_ids: OrderIds::NumericString,
                ..seed()
            },
        ),
        (
            "statuses Capitalized",
            Readings {
                status_case: Case::Capitalized,
                ..seed()
            },
        ),
        (
            "statuses in UPPER CASE",
            Readings {
                status_case: Case::Upper,
                ..seed()
            },
        ),
        (
            "the catalogue under data",
            Readings {
                products: List::Data,
                ..seed()
            },
        ),
        (
            "the catalogue as a bare list",
            Readings {
                products: List::Bare,
                ..seed()
            },
        ),
        (
            "the load balancer IP nested",
            Readings {
                load_balancer_ip: LoadBalancerIp::Nested,
                ..seed()
            },
        ),
        (
            "the load balancer IP known only once the order completes",
            Readings {
                load_balancer_ip: LoadBalancerIp::Late,
                ..seed()
            },
        ),
        (
            "the load balancer IP never shown",
            Readings {
                load_balancer_ip: LoadBalancerIp::Nowhere,
                ..seed()
            },
        ),
        (
            "unknown values left out instead of null",
            Readings {
                unknown: Unknown::Absent,
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
            "every reading but the guide's at once",
            Readings {
                user: Envelope::Bare,
                api_credential: Envelope::Bare,
                order_created: Envelope::Bare,
                order_shown: Shown::List,
                ids: Ids::NumericString,
                order_ids: OrderIds::Number,
                status_case: Case::Upper,
                products: List::Bare,
                orders: List::Data,
                load_balancer_ip: LoadBalancerIp::Late,
                unknown: Unknown::Absent,
                extra_fields: true,
                errors: ErrorForm::PlainText,
            },
        ),
    ]
}

impl Readings {
    fn id(&self, id: i64) -> Value {
        match self.ids {
            Ids::Number => json!(id),
            Ids::NumericString => json!(id.to_string()),
        }
    }

    fn order_id(&self, id: &str) -> Value {
        match (self.order_ids, id.parse::<i64>()) {
            (OrderIds::Number, Ok(n)) => json!(n),
            _ => json!(id),
        }
    }

    fn status(&self, status: &str) -> String {
        match self.status_case {
            Case::Lower => status.to_string(),
            Case::Upper => status.to_uppercase(),
            Case::Capitalized => {
                let mut chars = status.chars();
                chars
                    .next()
                    .map(|c| c.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            }
        }
    }

    /// Writes an unknown `key` as `null`, or leaves it out.
    fn unknown(&self, object: &mut Map<String, Value>, key: &str) {
        if self.unknown == Unknown::Null {
            object.insert(key.to_string(), Value::Null);
        }
    }

    /// `value` under `key`, or the unknown form when `None`.
    fn maybe(&self, object: &mut Map<String, Value>, key: &str, value: Option<Value>) {
        match value {
            Some(v) => {
                object.insert(key.to_string(), v);
            }
            None => self.unknown(object, key),
        }
    }

    /// Fields no client asked for, inside an object.
    fn extras(&self, object: &mut Map<String, Value>) {
        if self.extra_fields {
            object.insert("x_sandbox_note".into(), json!("an unknown field"));
            object.insert("links".into(), json!({"self": null, "related": []}));
        }
    }

    fn object(&self, envelope: Envelope, name: &str, mut object: Map<String, Value>) -> Value {
        self.extras(&mut object);
        match envelope {
            Envelope::Bare => Value::Object(object),
            Envelope::Named => self.top(json!({ name: object })),
        }
    }

    fn list(&self, form: List, name: &str, items: Vec<Map<String, Value>>) -> Value {
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut item| {
                self.extras(&mut item);
                Value::Object(item)
            })
            .collect();
        match form {
            List::Named => self.top(json!({ name: items })),
            List::Data => self.top(json!({ "data": items })),
            List::Bare => Value::Array(items),
        }
    }

    /// Unknown fields at the top of a wrapped answer.
    fn top(&self, mut answer: Value) -> Value {
        if let (true, Some(top)) = (self.extra_fields, answer.as_object_mut()) {
            top.insert("meta".into(), json!({"api_version": 51, "page": 1}));
        }
        answer
    }
}

/// A user as the sandbox holds it (the password is not kept: nothing logs in).
#[derive(Clone, Debug, PartialEq)]
pub struct UserRecord {
    pub id: i64,
    pub email: String,
    pub fname: String,
    pub lname: String,
    pub external_id: Option<String>,
    /// Every other field of the create request except the passwords, so tests
    /// can see unknown fields arrive untouched.
    pub other: Map<String, Value>,
}

/// An API credential, without its password.
#[derive(Clone, Debug, PartialEq)]
pub struct CredentialRecord {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub username: String,
}

/// An order as of now.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderRecord {
    pub id: String,
    /// The user whose credential placed it.
    pub user_id: i64,
    pub status: String,
    /// Set once the order is `completed`.
    pub project_id: Option<i64>,
    pub project_name: String,
    /// `resources.product_id` of each container, in order.
    pub product_ids: Vec<i64>,
    pub load_balancer_ip: String,
}

/// The emulated API: its state, its knobs and its router. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    /// Latency, faults and call counts (shared middleware).
    pub knobs: Knobs,
    state: Shared,
}

type Shared = Arc<Mutex<Inner>>;

struct Credential {
    record: CredentialRecord,
    password: String,
}

struct Order {
    record: OrderRecord,
    location_id: i64,
    /// The request's `order` object, echoed as `order_data` like the real API.
    order_data: Value,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    /// Monotonic twin of `created_at`, for the status clock (tokio's, so paused
    /// time in tests moves it).
    placed: Instant,
    duration: Duration,
    /// Decided when placed, so a knob changed later does not touch it.
    will_fail: bool,
}

struct Inner {
    /// The readings in force are `options.readings`.
    options: Options,
    users: Vec<UserRecord>,
    credentials: Vec<Credential>,
    orders: Vec<Order>,
    next_project_id: i64,
    fail_next: u32,
    fail_projects: BTreeSet<String>,
}

/// Who a request's Basic auth names.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    Admin,
    User(i64),
}

/// The one location of the sandbox, as in the guide's example.
const LOCATION_ID: i64 = 1;
const LOCATION_NAME: &str = "demo";

impl Api {
    pub fn new(options: Options) -> Self {
        Api {
            knobs: Knobs::default(),
            state: Arc::new(Mutex::new(Inner {
                options,
                users: Vec::new(),
                credentials: Vec::new(),
                orders: Vec::new(),
                // Project ids unlike user ids, so a mix-up shows in tests.
                next_project_id: 85,
                fail_next: 0,
                fail_projects: BTreeSet::new(),
            })),
        }
    }

    /// The API routes behind the fault middleware, plus `/_sandbox/...`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/admin/users", post(create_user))
            .route("/api/admin/users/{key}", get(show_user))
            .route("/api/users/{id}/api_credentials", post(create_credential))
            .route("/api/products", get(list_products))
            .route("/api/orders", post(create_order).get(list_orders))
            .route("/api/orders/{id}", get(show_order))
            .route_layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                error_form,
            ))
            .route_layer(axum::middleware::from_fn_with_state(
                self.knobs.clone(),
                faults::apply,
            ))
            .route(
                "/_sandbox/readings",
                get(|State(s): State<Shared>| async move {
                    Json(s.lock().unwrap().options.readings.clone())
                })
                .post(
                    |State(s): State<Shared>, Json(readings): Json<Readings>| async move {
                        s.lock().unwrap().options.readings = readings;
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(self.state.clone())
            .merge(faults::control_routes(self.knobs.clone()))
    }

    /// The readings in force.
    pub fn readings(&self) -> Readings {
        self.state.lock().unwrap().options.readings.clone()
    }

    /// Answers from now on follow `readings`.
    pub fn set_readings(&self, readings: Readings) {
        self.state.lock().unwrap().options.readings = readings;
    }

    pub fn users(&self) -> Vec<UserRecord> {
        self.state.lock().unwrap().users.clone()
    }

    pub fn api_credentials(&self) -> Vec<CredentialRecord> {
        let s = self.state.lock().unwrap();
        s.credentials.iter().map(|c| c.record.clone()).collect()
    }

    /// The password the API handed out with credential `id`, for tests that
    /// check where it travels (kept out of [`CredentialRecord`] so no `Debug`
    /// of the records prints it).
    pub fn api_credential_password(&self, id: i64) -> Option<String> {
        let s = self.state.lock().unwrap();
        s.credentials
            .iter()
            .find(|c| c.record.id == id)
            .map(|c| c.password.clone())
    }

    /// Every order, with its status brought up to date.
    pub fn orders(&self) -> Vec<OrderRecord> {
        let mut s = self.state.lock().unwrap();
        let s = &mut *s;
        s.orders
            .iter_mut()
            .map(|o| {
                advance(o, &mut s.next_project_id);
                o.record.clone()
            })
            .collect()
    }

    /// How long orders placed from now on take.
    pub fn set_order_duration(&self, duration: Duration) {
        self.state.lock().unwrap().options.order_duration = duration;
    }

    /// The next `n` orders placed end `failed` instead of `completed`.
    pub fn fail_next_orders(&self, n: u32) {
        self.state.lock().unwrap().fail_next = n;
    }

    /// Orders placed from now on with this `project_name` end `failed`.
    pub fn fail_orders_for_project(&self, project_name: &str) {
        self.state
            .lock()
            .unwrap()
            .fail_projects
            .insert(project_name.to_string());
    }
}

/// Brings an order's status up to its clock; a project appears on completion.
fn advance(order: &mut Order, next_project_id: &mut i64) {
    if matches!(order.record.status.as_str(), "completed" | "failed") {
        return;
    }
    let elapsed = order.placed.elapsed();
    let status = if elapsed >= order.duration {
        if order.will_fail {
            "failed"
        } else {
            "completed"
        }
    } else if elapsed >= order.duration / 3 {
        "processing"
    } else {
        "pending"
    };
    if status != order.record.status {
        order.record.status = status.to_string();
        order.updated_at = OffsetDateTime::now_utc();
        if status == "completed" {
            order.record.project_id = Some(*next_project_id);
            *next_project_id += 1;
        }
    }
}

/// A Rails-like error answer: `{"errors": [...]}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    errors: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            errors: vec![error.into()],
        }
    }
    fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized")
    }
    fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden")
    }
    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not Found")
    }
    fn missing_param(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("param is missing or the value is empty: {name}"),
        )
    }
    fn invalid(errors: Vec<String>) -> Self {
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

/// Middleware: rewrites the API's own error bodies in [`Readings::errors`]'s form.
async fn error_form(State(state): State<Shared>, request: Request, next: Next) -> Response {
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
fn authenticate(s: &Inner, headers: &HeaderMap) -> Result<Caller, ApiError> {
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

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
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

fn require_admin(s: &Inner, headers: &HeaderMap) -> Result<(), ApiError> {
    match authenticate(s, headers)? {
        Caller::Admin => Ok(()),
        Caller::User(_) => Err(ApiError::forbidden()),
    }
}

/// The body as a JSON object. Checked after authentication, as Rails does, so
/// an anonymous caller learns nothing from a bad body.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
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
fn param<'a>(
    params: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a Map<String, Value>, ApiError> {
    params
        .get(key)
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::missing_param(key))
}

fn non_blank<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

fn now_rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// POST /api/admin/users
async fn create_user(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut s = state.lock().unwrap();
    require_admin(&s, &headers)?;
    let params = json_body(&headers, &body)?;
    let user = param(&params, "user")?;

    let mut errors = Vec::new();
    for (key, label) in [
        ("fname", "Fname"),
        ("lname", "Lname"),
        ("email", "Email"),
        ("password", "Password"),
    ] {
        if non_blank(user, key).is_none() {
            errors.push(format!("{label} can't be blank"));
        }
    }
    if let Some(email) = non_blank(user, "email") {
        if !plausible_email(email) {
            errors.push("Email is invalid".to_string());
        } else if s.users.iter().any(|u| u.email.eq_ignore_ascii_case(email)) {
            errors.push("Email has already been taken".to_string());
        }
    }
    let password = user.get("password").and_then(Value::as_str);
    match user.get("password_confirmation").and_then(Value::as_str) {
        None | Some("") => errors.push("Password confirmation can't be blank".to_string()),
        Some(confirmation) if Some(confirmation) != password => {
            errors.push("Password confirmation doesn't match Password".to_string())
        }
        Some(_) => {}
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }

    let text = |key: &str| non_blank(user, key).unwrap_or_default().trim().to_string();
    let external_id = match user.get("external_id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let mut other = user.clone();
    for key in [
        "fname",
        "lname",
        "email",
        "password",
        "password_confirmation",
        "external_id",
    ] {
        other.remove(key);
    }
    let record = UserRecord {
        id: s.users.len() as i64 + 1,
        email: text("email").to_lowercase(),
        fname: text("fname"),
        lname: text("lname"),
        external_id,
        other,
    };
    let answer = {
        let r = &s.options.readings;
        r.object(r.user, "user", user_view(&record, r))
    };
    s.users.push(record);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// A user as the API shows it.
fn user_view(user: &UserRecord, r: &Readings) -> Map<String, Value> {
    // `merge_labels` is a list of {key: value} objects; the user shows them as `labels`.
    let mut labels = Map::new();
    if let Some(Value::Array(items)) = user.other.get("merge_labels") {
        for item in items.iter().filter_map(Value::as_object) {
            labels.extend(item.clone());
        }
    }
    let mut view = Map::new();
    view.insert("id".into(), r.id(user.id));
    view.insert("email".into(), json!(user.email));
    view.insert("fname".into(), json!(user.fname));
    view.insert("lname".into(), json!(user.lname));
    r.maybe(
        &mut view,
        "external_id",
        user.external_id.clone().map(Value::from),
    );
    view.insert("labels".into(), Value::Object(labels));
    view
}

/// GET /api/admin/users/{key}: by id, or (flags of the admin API docs) by the
/// Base64 of an email or by external id. 404 when there is no such user.
async fn show_user(
    State(state): State<Shared>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = state.lock().unwrap();
    require_admin(&s, &headers)?;
    let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
    let user = if flag("find_by_email") {
        // Lenient like Ruby's Base64.decode64: line breaks and blanks are ignored.
        let compact: String = key.chars().filter(|c| !c.is_whitespace()).collect();
        let email = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        // Compared as stored (lower-cased), as the provider's database does.
        email.and_then(|email| s.users.iter().find(|u| u.email == email))
    } else if flag("find_by_external_id") {
        s.users
            .iter()
            .find(|u| u.external_id.as_deref() == Some(key.as_str()))
    } else {
        key.parse::<i64>()
            .ok()
            .and_then(|id| s.users.iter().find(|u| u.id == id))
    };
    let user = user.ok_or_else(ApiError::not_found)?;
    let r = &s.options.readings;
    Ok(Json(r.object(r.user, "user", user_view(user, r))).into_response())
}

/// Syntax only, like the guide says (deliverability is not checked).
fn plausible_email(email: &str) -> bool {
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// POST /api/users/{id}/api_credentials
async fn create_credential(
    State(state): State<Shared>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut s = state.lock().unwrap();
    require_admin(&s, &headers)?;
    let user_id = user_id
        .parse::<i64>()
        .ok()
        .filter(|id| s.users.iter().any(|u| u.id == *id))
        .ok_or_else(ApiError::not_found)?;
    let params = json_body(&headers, &body)?;
    let credential = param(&params, "api_credential")?;
    let name = non_blank(credential, "name")
        .ok_or_else(|| ApiError::invalid(vec!["Name can't be blank".to_string()]))?
        .to_string();
    let mut rng = rand::rng();
    let record = CredentialRecord {
        id: s.credentials.len() as i64 + 1,
        user_id,
        name,
        username: Alphanumeric.sample_string(&mut rng, 20),
    };
    let password = Alphanumeric.sample_string(&mut rng, 40);
    let answer = {
        let r = &s.options.readings;
        let mut view = Map::new();
        view.insert("id".into(), r.id(record.id));
        view.insert("username".into(), json!(record.username));
        view.insert("password".into(), json!(password));
        r.object(r.api_credential, "api_credential", view)
    };
    s.credentials.push(Credential { record, password });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The catalogue: (id, name, cpu, memory MB, storage GB, price per hour).
const PRODUCTS: [(i64, &str, &str, u32, u32, &str); 3] = [
    (1, "small", "1.0", 256, 5, "0.0"),
    (2, "medium", "2.0", 1024, 20, "0.01"),
    (3, "large", "4.0", 4096, 80, "0.04"),
];

/// GET /api/products
async fn list_products(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = state.lock().unwrap();
    authenticate(&s, &headers)?;
    let r = &s.options.readings;
    let products: Vec<Map<String, Value>> = PRODUCTS
        .iter()
        .map(|(id, name, cpu, memory, storage, price)| {
            let mut product = json!({
                "name": name, "price": price, "term": "hour",
                "cpu": cpu, "memory": memory, "storage": storage, "bandwidth": 100,
                "backup": 0, "local_disk": storage, "memory_swap": null,
                "memory_swappiness": null, "region": 1,
            });
            let product = product.as_object_mut().expect("an object");
            product.insert("id".into(), r.id(*id));
            std::mem::take(product)
        })
        .collect();
    Ok(Json(r.list(r.products, "products", products)).into_response())
}

/// POST /api/orders
async fn create_order(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut s = state.lock().unwrap();
    let Caller::User(user_id) = authenticate(&s, &headers)? else {
        // Orders belong to the customer: they are placed with the customer's credential.
        return Err(ApiError::forbidden());
    };
    let params = json_body(&headers, &body)?;
    let order = param(&params, "order")?;

    let mut errors = Vec::new();
    let location_id = match order.get("location_id") {
        None | Some(Value::Null) => LOCATION_ID,
        Some(v) => v.as_i64().unwrap_or(-1),
    };
    if location_id != LOCATION_ID {
        errors.push("Location not found".to_string());
    }
    let containers = order
        .get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty());
    let mut product_ids = Vec::new();
    match containers {
        None => errors.push("Containers can't be blank".to_string()),
        Some(containers) => {
            for (i, container) in containers.iter().enumerate() {
                // The real API knows products by id only; names are the worker's to resolve.
                let product_id = container
                    .get("resources")
                    .and_then(|r| r.get("product_id"))
                    .and_then(Value::as_i64);
                match product_id {
                    None => errors.push(format!("Container {}: product can't be blank", i + 1)),
                    Some(id) if !PRODUCTS.iter().any(|p| p.0 == id) => {
                        errors.push(format!("Container {}: product {id} not found", i + 1))
                    }
                    Some(id) => product_ids.push(id),
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }

    let number = s.orders.len() + 1;
    let project_name = non_blank(order, "project_name")
        .map(str::to_string)
        .unwrap_or_else(|| format!("Project {number}"));
    let will_fail = if s.fail_next > 0 {
        s.fail_next -= 1;
        true
    } else {
        s.fail_projects.contains(&project_name)
    };
    let now = OffsetDateTime::now_utc();
    let id = match s.options.readings.order_ids {
        OrderIds::Uuid => uuid::Uuid::new_v4().to_string(),
        OrderIds::Number | OrderIds::NumericString => (1000 + number).to_string(),
    };
    let record = OrderRecord {
        id,
        user_id,
        status: "pending".to_string(),
        project_id: None,
        project_name,
        product_ids,
        load_balancer_ip: format!("198.51.100.{}", (number - 1) % 254 + 1),
    };
    let answer = {
        let r = &s.options.readings;
        let mut view = Map::new();
        view.insert("id".into(), r.order_id(&record.id));
        r.unknown(&mut view, "redirect_url");
        match r.load_balancer_ip {
            LoadBalancerIp::AtCreate => {
                view.insert("load_balancer_ip".into(), json!(record.load_balancer_ip));
            }
            LoadBalancerIp::Nested => {
                view.insert(
                    "load_balancer".into(),
                    json!({ "ip": record.load_balancer_ip }),
                );
            }
            LoadBalancerIp::Late | LoadBalancerIp::Nowhere => {
                r.unknown(&mut view, "load_balancer_ip")
            }
        }
        r.object(r.order_created, "order", view)
    };
    let duration = s.options.order_duration;
    s.orders.push(Order {
        record,
        location_id,
        order_data: Value::Object(order.clone()),
        created_at: now,
        updated_at: now,
        placed: Instant::now(),
        duration,
        will_fail,
    });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// GET /api/orders/{id}
async fn show_order(
    State(state): State<Shared>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut s = state.lock().unwrap();
    let caller = authenticate(&s, &headers)?;
    let s = &mut *s;
    let order = s
        .orders
        .iter_mut()
        .find(|o| o.record.id == order_id && caller == Caller::User(o.record.user_id))
        .ok_or_else(ApiError::not_found)?;
    advance(order, &mut s.next_project_id);
    let r = &s.options.readings;
    let view = order_view(order, r, true);
    let answer = match r.order_shown {
        Shown::Named => r.object(Envelope::Named, "order", view),
        Shown::Bare => r.object(Envelope::Bare, "order", view),
        Shown::List => r.list(r.orders, "orders", vec![view]),
    };
    Ok(Json(answer).into_response())
}

/// An order as `GET /api/orders/{id}` (`whole`) or `GET /api/orders` shows it.
fn order_view(order: &Order, r: &Readings, whole: bool) -> Map<String, Value> {
    let mut view = Map::new();
    view.insert("id".into(), r.order_id(&order.record.id));
    view.insert("status".into(), json!(r.status(&order.record.status)));
    if whole {
        // The provider keeps the IP in the order's data, shown as `order_data`.
        let mut data = order.order_data.clone();
        let shown = match r.load_balancer_ip {
            LoadBalancerIp::AtCreate | LoadBalancerIp::Nested => true,
            LoadBalancerIp::Late => order.record.status == "completed",
            LoadBalancerIp::Nowhere => false,
        };
        if let (true, Some(data)) = (shown, data.as_object_mut()) {
            data.insert(
                "load_balancer_ip".into(),
                json!(order.record.load_balancer_ip),
            );
        }
        view.insert("order_data".into(), data);
    }
    view.insert("created_at".into(), json!(now_rfc3339(order.created_at)));
    view.insert("updated_at".into(), json!(now_rfc3339(order.updated_at)));
    let project = order
        .record
        .project_id
        .map(|id| json!({ "id": r.id(id), "name": order.record.project_name }));
    r.maybe(&mut view, "project", project);
    if whole {
        let location = (order.location_id == LOCATION_ID)
            .then(|| json!({ "id": LOCATION_ID, "name": LOCATION_NAME }));
        r.maybe(&mut view, "location", location);
    }
    view
}

/// GET /api/orders: the caller's own orders (none for the admin).
async fn list_orders(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut s = state.lock().unwrap();
    let caller = authenticate(&s, &headers)?;
    let s = &mut *s;
    let mut items = Vec::new();
    for order in s
        .orders
        .iter_mut()
        .filter(|o| caller == Caller::User(o.record.user_id))
    {
        advance(order, &mut s.next_project_id);
        items.push(order_view(order, &s.options.readings, false));
    }
    let r = &s.options.readings;
    Ok(Json(r.list(r.orders, "orders", items)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::faults::{Fault, FaultRule};

    const ADMIN: (&str, &str) = ("admin", "admin-secret");

    struct Served {
        api: Api,
        base: String,
        client: reqwest::Client,
    }

    async fn serve(order_duration: Duration) -> Served {
        let api = Api::new(Options {
            admin_username: ADMIN.0.to_string(),
            admin_password: ADMIN.1.to_string(),
            order_duration,
            readings: Readings::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = api.router();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Served {
            api,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    impl Served {
        async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            auth: Option<(&str, &str)>,
            body: Option<Value>,
        ) -> (u16, Value) {
            let mut req = self.client.request(method, format!("{}{path}", self.base));
            if let Some((user, pass)) = auth {
                req = req.basic_auth(user, Some(pass));
            }
            if let Some(body) = body {
                req = req.json(&body);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.json::<Value>().await.unwrap_or(Value::Null);
            (status, body)
        }
        async fn post(&self, path: &str, auth: Option<(&str, &str)>, body: Value) -> (u16, Value) {
            self.call(reqwest::Method::POST, path, auth, Some(body))
                .await
        }
        async fn get(&self, path: &str, auth: Option<(&str, &str)>) -> (u16, Value) {
            self.call(reqwest::Method::GET, path, auth, None).await
        }

        /// A user and their API credential: (user id, username, password).
        async fn user_with_credential(&self, email: &str) -> (i64, String, String) {
            let (status, body) = self
                .post("/api/admin/users", Some(ADMIN), user_body(email))
                .await;
            assert_eq!(status, 201, "{body}");
            let id = body["user"]["id"].as_i64().unwrap();
            let (status, body) = self
                .post(
                    &format!("/api/users/{id}/api_credentials"),
                    Some(ADMIN),
                    json!({"api_credential": {"name": "test"}}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            let c = &body["api_credential"];
            (
                id,
                c["username"].as_str().unwrap().to_string(),
                c["password"].as_str().unwrap().to_string(),
            )
        }
    }

    fn user_body(email: &str) -> Value {
        json!({"user": {
            "fname": "Ada", "lname": "Lovelace", "email": email,
            "password": "correct horse", "password_confirmation": "correct horse",
            "skip_email_confirm": true, "external_id": "crm-1",
        }})
    }

    fn order_body(product_id: i64) -> Value {
        json!({"order": {
            "project_name": "site", "location_id": 1,
            "containers": [{"image_id": 4, "resources": {"product_id": product_id}}],
        }})
    }

    #[tokio::test]
    async fn admin_endpoints_need_admin_credentials() {
        let s = serve(Duration::ZERO).await;
        let (_, user, pass) = s.user_with_credential("ada@example.com").await;
        let body = user_body("bob@example.com");
        for (auth, expected, why) in [
            (None, 401, "no credentials"),
            (Some(("admin", "wrong")), 401, "wrong admin password"),
            (Some(("nobody", "x")), 401, "unknown user"),
            (
                Some((user.as_str(), pass.as_str())),
                403,
                "a user's API credential",
            ),
        ] {
            let (status, _) = s.post("/api/admin/users", auth, body.clone()).await;
            assert_eq!(status, expected, "create user with {why}");
            let (status, _) = s
                .post(
                    "/api/users/1/api_credentials",
                    auth,
                    json!({"api_credential": {"name": "x"}}),
                )
                .await;
            assert_eq!(status, expected, "create credential with {why}");
        }
        assert_eq!(
            s.api.users().len(),
            1,
            "no user created by the refused calls"
        );
    }

    #[tokio::test]
    async fn create_user_requires_names_email_and_a_matching_password() {
        let s = serve(Duration::ZERO).await;
        for (field, value, error) in [
            ("fname", Value::Null, "Fname can't be blank"),
            ("lname", json!(""), "Lname can't be blank"),
            ("email", Value::Null, "Email can't be blank"),
            ("email", json!("not-an-email"), "Email is invalid"),
            ("password", Value::Null, "Password can't be blank"),
            (
                "password_confirmation",
                Value::Null,
                "Password confirmation can't be blank",
            ),
            (
                "password_confirmation",
                json!("something else"),
                "Password confirmation doesn't match Password",
            ),
        ] {
            let mut body = user_body("ada@example.com");
            body["user"][field] = value;
            let (status, answer) = s.post("/api/admin/users", Some(ADMIN), body).await;
            assert_eq!(status, 422, "{field}: {answer}");
            assert!(
                answer["errors"].as_array().unwrap().contains(&json!(error)),
                "{field}: expected {error:?} in {answer}"
            );
            assert!(
                !answer.to_string().contains("correct horse"),
                "an error never echoes the password"
            );
        }
        let (status, _) = s
            .post("/api/admin/users", Some(ADMIN), json!({"name": "x"}))
            .await;
        assert_eq!(status, 400, "no `user` parameter");
        assert!(s.api.users().is_empty());
    }

    #[tokio::test]
    async fn duplicate_email_is_rejected_with_422() {
        let s = serve(Duration::ZERO).await;
        let (status, created) = s
            .post(
                "/api/admin/users",
                Some(ADMIN),
                user_body("ada@example.com"),
            )
            .await;
        assert_eq!(status, 201);
        assert_eq!(created["user"]["email"], "ada@example.com");
        assert_eq!(created["user"]["external_id"], "crm-1");
        let (status, body) = s
            .post(
                "/api/admin/users",
                Some(ADMIN),
                user_body("ADA@example.com"),
            )
            .await;
        assert_eq!(status, 422);
        assert_eq!(body, json!({"errors": ["Email has already been taken"]}));
        let users = s.api.users();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].other["skip_email_confirm"], json!(true));
        assert!(!users[0].other.contains_key("password"));
    }

    #[tokio::test]
    async fn api_credential_acts_as_its_user_and_unknown_users_are_404() {
        let s = serve(Duration::ZERO).await;
        let (status, _) = s
            .post(
                "/api/users/42/api_credentials",
                Some(ADMIN),
                json!({"api_credential": {"name": "x"}}),
            )
            .await;
        assert_eq!(status, 404, "unknown user");
        let (user_id, user, pass) = s.user_with_credential("ada@example.com").await;
        let (status, body) = s
            .post(
                &format!("/api/users/{user_id}/api_credentials"),
                Some(ADMIN),
                json!({"api_credential": {}}),
            )
            .await;
        assert_eq!(status, 400, "empty api_credential: {body}");
        assert_eq!(
            s.api.api_credentials(),
            vec![CredentialRecord {
                id: 1,
                user_id,
                name: "test".into(),
                username: user.clone()
            }]
        );
        let (status, body) = s
            .post("/api/orders", Some((&user, &pass)), order_body(1))
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(s.api.orders()[0].user_id, user_id);
        let (status, _) = s
            .post("/api/orders", Some((&user, "wrong")), order_body(1))
            .await;
        assert_eq!(status, 401, "a wrong password for a real username");
    }

    #[tokio::test]
    async fn products_are_listed_for_any_valid_caller() {
        let s = serve(Duration::ZERO).await;
        let (_, user, pass) = s.user_with_credential("ada@example.com").await;
        assert_eq!(s.get("/api/products", None).await.0, 401);
        for auth in [ADMIN, (user.as_str(), pass.as_str())] {
            let (status, body) = s.get("/api/products", Some(auth)).await;
            assert_eq!(status, 200);
            let names: Vec<(i64, &str)> = body["products"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["id"].as_i64().unwrap(), p["name"].as_str().unwrap()))
                .collect();
            assert_eq!(names, vec![(1, "small"), (2, "medium"), (3, "large")]);
        }
    }

    #[tokio::test]
    async fn orders_need_existing_products_by_id_and_a_users_credential() {
        let s = serve(Duration::ZERO).await;
        let (_, user, pass) = s.user_with_credential("ada@example.com").await;
        let auth = Some((user.as_str(), pass.as_str()));
        let (status, body) = s.post("/api/orders", auth, order_body(99)).await;
        assert_eq!(status, 422);
        assert_eq!(
            body,
            json!({"errors": ["Container 1: product 99 not found"]})
        );
        let by_name = json!({"order": {"containers": [{"resources": {"product": "small"}}]}});
        assert_eq!(
            s.post("/api/orders", auth, by_name).await.0,
            422,
            "the API knows product ids only"
        );
        let no_containers = json!({"order": {"project_name": "x", "containers": []}});
        assert_eq!(s.post("/api/orders", auth, no_containers).await.0, 422);
        let mut bad_location = order_body(1);
        bad_location["order"]["location_id"] = json!(7);
        assert_eq!(s.post("/api/orders", auth, bad_location).await.0, 422);
        assert_eq!(
            s.post("/api/orders", Some(ADMIN), order_body(1)).await.0,
            403,
            "the admin does not place customers' orders"
        );
        assert_eq!(s.post("/api/orders", None, order_body(1)).await.0, 401);
        assert!(s.api.orders().is_empty());
        assert_eq!(s.api.knobs.calls("POST /api/orders"), 6);
    }

    #[tokio::test]
    async fn an_order_is_visible_to_its_owner_only() {
        let s = serve(Duration::ZERO).await;
        let (_, ada, ada_pass) = s.user_with_credential("ada@example.com").await;
        let (_, bob, bob_pass) = s.user_with_credential("bob@example.com").await;
        let (_, body) = s
            .post("/api/orders", Some((&ada, &ada_pass)), order_body(2))
            .await;
        let path = format!("/api/orders/{}", body["order"]["id"].as_str().unwrap());
        assert_eq!(s.get(&path, Some((&ada, &ada_pass))).await.0, 200);
        assert_eq!(
            s.get(&path, Some((&bob, &bob_pass))).await.0,
            404,
            "another user"
        );
        assert_eq!(s.get(&path, Some(ADMIN)).await.0, 404, "the admin");
        assert_eq!(
            s.get("/api/orders/no-such-order", Some((&ada, &ada_pass)))
                .await
                .0,
            404
        );
        assert_eq!(s.api.knobs.calls("GET /api/orders/{id}"), 4);
    }

    #[tokio::test]
    async fn an_order_moves_from_pending_through_processing_to_completed_with_a_project() {
        let s = serve(Duration::from_millis(900)).await;
        let (user_id, user, pass) = s.user_with_credential("ada@example.com").await;
        let auth = Some((user.as_str(), pass.as_str()));
        let (status, created) = s.post("/api/orders", auth, order_body(3)).await;
        assert_eq!(status, 201);
        let order = &created["order"];
        assert!(order["redirect_url"].is_null());
        assert_eq!(order["load_balancer_ip"], "198.51.100.1");
        let id = order["id"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "a uuid: {id}");
        let path = format!("/api/orders/{id}");

        let (_, shown) = s.get(&path, auth).await;
        assert_eq!(shown["order"]["status"], "pending");
        assert!(shown["order"]["project"].is_null());
        assert_eq!(shown["order"]["order_data"]["containers"][0]["image_id"], 4);
        // Wide margins: `processing` lasts from 300 to 900 ms.
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(s.get(&path, auth).await.1["order"]["status"], "processing");
        tokio::time::sleep(Duration::from_millis(550)).await;
        let (_, shown) = s.get(&path, auth).await;
        assert_eq!(shown["order"]["status"], "completed");
        assert_eq!(shown["order"]["project"]["name"], "site");
        assert_eq!(shown["order"]["location"], json!({"id": 1, "name": "demo"}));
        let project_id = shown["order"]["project"]["id"].as_i64().unwrap();
        assert_eq!(
            s.api.orders(),
            vec![OrderRecord {
                id: id.to_string(),
                user_id,
                status: "completed".into(),
                project_id: Some(project_id),
                project_name: "site".into(),
                product_ids: vec![3],
                load_balancer_ip: "198.51.100.1".into(),
            }]
        );
    }

    #[tokio::test]
    async fn failure_knobs_make_orders_fail_without_a_project() {
        let s = serve(Duration::ZERO).await;
        let (_, user, pass) = s.user_with_credential("ada@example.com").await;
        let auth = Some((user.as_str(), pass.as_str()));
        s.api.fail_next_orders(1);
        s.api.fail_orders_for_project("doomed");
        let mut doomed = order_body(1);
        doomed["order"]["project_name"] = json!("doomed");
        for body in [order_body(1), doomed, order_body(1)] {
            s.post("/api/orders", auth, body).await;
        }
        let statuses: Vec<(String, Option<i64>)> = s
            .api
            .orders()
            .into_iter()
            .map(|o| (o.status, o.project_id))
            .collect();
        assert_eq!(
            statuses,
            vec![
                ("failed".to_string(), None),
                ("failed".to_string(), None),
                ("completed".to_string(), Some(85)),
            ],
            "the next order, then the named project; the third completes"
        );
    }

    #[tokio::test]
    async fn order_duration_can_change_at_run_time() {
        let s = serve(Duration::from_secs(3600)).await;
        s.api.set_order_duration(Duration::ZERO);
        let (_, user, pass) = s.user_with_credential("ada@example.com").await;
        s.post("/api/orders", Some((&user, &pass)), order_body(1))
            .await;
        assert_eq!(s.api.orders()[0].status, "completed");
    }

    #[tokio::test]
    async fn shared_fault_middleware_and_control_routes_are_installed() {
        let s = serve(Duration::ZERO).await;
        s.api.knobs.inject(FaultRule {
            method: Some("GET".into()),
            path_contains: "/api/products".into(),
            fault: Fault::Status { status: 503 },
            times: 1,
        });
        assert_eq!(s.get("/api/products", Some(ADMIN)).await.0, 503);
        assert_eq!(s.get("/api/products", Some(ADMIN)).await.0, 200);
        assert_eq!(s.api.knobs.calls("GET /api/products"), 2);
        let (status, calls) = s.get("/_sandbox/calls", None).await;
        assert_eq!(status, 200);
        assert_eq!(calls["GET /api/products"], 2);
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_refused_after_authentication() {
        let s = serve(Duration::ZERO).await;
        let send = |auth: Option<(&str, &str)>| {
            let mut req = s
                .client
                .post(format!("{}/api/admin/users", s.base))
                .header("content-type", "application/json")
                .body("{not json");
            if let Some((u, p)) = auth {
                req = req.basic_auth(u, Some(p));
            }
            req.send()
        };
        assert_eq!(send(None).await.unwrap().status().as_u16(), 401);
        assert_eq!(send(Some(ADMIN)).await.unwrap().status().as_u16(), 400);
    }

    #[tokio::test]
    async fn readings_are_shown_and_replaced_over_http_and_shape_the_answers() {
        let s = serve(Duration::ZERO).await;
        let (status, shown) = s.get("/_sandbox/readings", None).await;
        assert_eq!(status, 200);
        assert_eq!(shown, serde_json::to_value(Readings::default()).unwrap());
        let set = |body: Value| {
            s.client
                .post(format!("{}/_sandbox/readings", s.base))
                .json(&body)
                .send()
        };
        let answer = set(json!({"ids": "numeric_string", "products": "bare", "user": "bare"}))
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 204);
        assert_eq!(s.api.readings().ids, Ids::NumericString);
        let (_, products) = s.get("/api/products", Some(ADMIN)).await;
        assert_eq!(
            products[0]["id"], "1",
            "a bare list, ids as strings: {products}"
        );
        let (_, user) = s
            .post(
                "/api/admin/users",
                Some(ADMIN),
                user_body("ada@example.com"),
            )
            .await;
        assert_eq!(user["id"], "1", "a bare user: {user}");
        assert_eq!(set(json!({})).await.unwrap().status().as_u16(), 204);
        assert_eq!(
            s.api.readings(),
            Readings::default(),
            "{{}} restores the guide's"
        );
    }

    #[tokio::test]
    async fn every_answer_takes_the_shape_its_reading_says() {
        let s = serve(Duration::ZERO).await;
        let (_, user, pass) = s.user_with_credential("ada@example.com").await;
        s.api.set_readings(Readings {
            api_credential: Envelope::Bare,
            order_created: Envelope::Bare,
            order_shown: Shown::List,
            order_ids: OrderIds::Number,
            status_case: Case::Capitalized,
            orders: List::Data,
            load_balancer_ip: LoadBalancerIp::Nested,
            unknown: Unknown::Absent,
            extra_fields: true,
            ..Readings::default()
        });
        let auth = Some((user.as_str(), pass.as_str()));
        let (_, created) = s.post("/api/orders", auth, order_body(1)).await;
        assert_eq!(created["id"], 1001, "bare, a numeric id: {created}");
        assert_eq!(created["load_balancer"]["ip"], "198.51.100.1");
        assert!(created.get("redirect_url").is_none(), "left out: {created}");
        assert!(created.get("load_balancer_ip").is_none());
        assert_eq!(created["x_sandbox_note"], "an unknown field");
        let (_, shown) = s.get("/api/orders/1001", auth).await;
        let order = &shown["data"][0];
        assert_eq!(order["status"], "Completed", "{shown}");
        assert_eq!(order["project"]["id"], 85);
        assert_eq!(order["order_data"]["load_balancer_ip"], "198.51.100.1");
        assert_eq!(shown["meta"]["api_version"], 51, "extra fields at the top");
    }

    #[tokio::test]
    async fn the_load_balancer_ip_is_shown_where_its_reading_says() {
        let s = serve(Duration::from_millis(300)).await;
        let (_, user, pass) = s.user_with_credential("ada@example.com").await;
        let auth = Some((user.as_str(), pass.as_str()));
        for (reading, at_create, shown_pending, shown_completed) in [
            (LoadBalancerIp::AtCreate, json!("198.51.100.1"), true, true),
            (LoadBalancerIp::Late, Value::Null, false, true),
            (LoadBalancerIp::Nowhere, Value::Null, false, false),
        ] {
            s.api.set_readings(Readings {
                load_balancer_ip: reading,
                ..Readings::default()
            });
            let (_, created) = s.post("/api/orders", auth, order_body(1)).await;
            assert_eq!(
                created["order"]["load_balancer_ip"], at_create,
                "{reading:?}"
            );
            let path = format!("/api/orders/{}", created["order"]["id"].as_str().unwrap());
            let (_, pending) = s.get(&path, auth).await;
            let ip = &pending["order"]["order_data"]["load_balancer_ip"];
            assert_eq!(ip.is_string(), shown_pending, "{reading:?} while pending");
            tokio::time::sleep(Duration::from_millis(350)).await;
            let (_, done) = s.get(&path, auth).await;
            let ip = &done["order"]["order_data"]["load_balancer_ip"];
            assert_eq!(
                ip.is_string(),
                shown_completed,
                "{reading:?} once completed"
            );
        }
    }

    #[tokio::test]
    async fn users_are_found_by_id_by_base64_email_or_by_external_id_for_the_admin_only() {
        let s = serve(Duration::ZERO).await;
        let (id, user, pass) = s.user_with_credential("ada@example.com").await;
        let b64 = |e: &str| base64::engine::general_purpose::STANDARD.encode(e);
        let by_email = format!(
            "/api/admin/users/{}?find_by_email=true",
            b64("ada@example.com")
        );
        for path in [
            format!("/api/admin/users/{id}"),
            by_email.clone(),
            // Ruby's Base64.encode64 ends with a newline; the provider decodes leniently.
            format!(
                "/api/admin/users/{}%0A?find_by_email=true",
                b64("ada@example.com")
            ),
            "/api/admin/users/crm-1?find_by_external_id=true".to_string(),
        ] {
            let (status, body) = s.get(&path, Some(ADMIN)).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(body["user"]["id"], id, "{path}");
            assert_eq!(body["user"]["external_id"], "crm-1", "{path}");
        }
        for path in [
            "/api/admin/users/99".to_string(),
            format!(
                "/api/admin/users/{}?find_by_email=true",
                b64("bob@example.com")
            ),
            format!(
                "/api/admin/users/{}?find_by_email=true",
                b64("ADA@example.com")
            ),
            "/api/admin/users/crm-2?find_by_external_id=true".to_string(),
        ] {
            assert_eq!(s.get(&path, Some(ADMIN)).await.0, 404, "{path}");
        }
        assert_eq!(
            s.get(&by_email, Some((&user, &pass))).await.0,
            403,
            "a user's credential"
        );
        assert_eq!(s.get(&by_email, None).await.0, 401);
        s.api.set_readings(Readings {
            user: Envelope::Bare,
            ..Readings::default()
        });
        assert_eq!(s.get(&by_email, Some(ADMIN)).await.1["id"], id, "bare");
    }

    #[tokio::test]
    async fn a_user_lists_their_own_orders_only() {
        let s = serve(Duration::ZERO).await;
        let (_, ada, ada_pass) = s.user_with_credential("ada@example.com").await;
        let (_, bob, bob_pass) = s.user_with_credential("bob@example.com").await;
        let (_, placed) = s
            .post("/api/orders", Some((&ada, &ada_pass)), order_body(2))
            .await;
        let (status, listed) = s.get("/api/orders", Some((&ada, &ada_pass))).await;
        assert_eq!(status, 200);
        let orders = listed["orders"].as_array().unwrap();
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0]["id"], placed["order"]["id"]);
        assert_eq!(orders[0]["status"], "completed");
        assert_eq!(orders[0]["project"]["name"], "site");
        let (_, other) = s.get("/api/orders", Some((&bob, &bob_pass))).await;
        assert_eq!(other, json!({"orders": []}), "another user's list");
        let (_, admin) = s.get("/api/orders", Some(ADMIN)).await;
        assert_eq!(admin, json!({"orders": []}), "the admin places no orders");
        s.api.set_readings(Readings {
            orders: List::Bare,
            ..Readings::default()
        });
        let (_, bare) = s.get("/api/orders", Some((&ada, &ada_pass))).await;
        assert_eq!(bare[0]["id"], placed["order"]["id"]);
    }

    #[tokio::test]
    async fn error_bodies_take_the_form_their_reading_says_and_faults_keep_theirs() {
        let s = serve(Duration::ZERO).await;
        s.post(
            "/api/admin/users",
            Some(ADMIN),
            user_body("ada@example.com"),
        )
        .await;
        for (form, content_type, body) in [
            (
                ErrorForm::ErrorsList,
                "application/json",
                r#"{"errors":["Email has already been taken"]}"#,
            ),
            (
                ErrorForm::ErrorsByField,
                "application/json",
                r#"{"errors":{"email":["has already been taken"]}}"#,
            ),
            (
                ErrorForm::Error,
                "application/json",
                r#"{"error":"Email has already been taken"}"#,
            ),
            (
                ErrorForm::Message,
                "application/json",
                r#"{"message":"Email has already been taken"}"#,
            ),
            (
                ErrorForm::PlainText,
                "text/plain; charset=utf-8",
                "Email has already been taken",
            ),
        ] {
            s.api.set_readings(Readings {
                errors: form,
                ..Readings::default()
            });
            let answer = s
                .client
                .post(format!("{}/api/admin/users", s.base))
                .basic_auth(ADMIN.0, Some(ADMIN.1))
                .json(&user_body("ada@example.com"))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status().as_u16(), 422, "{form:?}");
            assert_eq!(answer.headers()["content-type"], content_type, "{form:?}");
            assert_eq!(answer.text().await.unwrap(), body, "{form:?}");
        }
        let unauthorized = s
            .client
            .get(format!("{}/api/products", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(unauthorized.status().as_u16(), 401);
        assert!(
            unauthorized.headers().contains_key("www-authenticate"),
            "headers kept"
        );
        assert_eq!(unauthorized.text().await.unwrap(), "Unauthorized");
        s.api.knobs.inject(FaultRule {
            method: None,
            path_contains: "/api/products".into(),
            fault: Fault::Status { status: 500 },
            times: 1,
        });
        let (_, fault) = s.get("/api/products", Some(ADMIN)).await;
        assert_eq!(fault, json!({"message": "injected fault"}));
    }
}
