//! Emulated Magento BI Cloud Onboarding API (seed: `magento-bi-cloud-onboarding.md`):
//! the API host (tokens, signups, invites, clients, connections, autodash) and
//! the dashboard host (connection-test jobs), sharing one state.
//!
//! Strict the way the real service is:
//! - `POST /v1/tokens` checks every credential; a token lives `token_ttl`, after
//!   which (or if unknown) it is 401.
//! - Signups need no auth. `/v3/invites` needs `Authorization: Bearer`; the client,
//!   connection, autodash and job endpoints need the `DASHSESS2` cookie. The other
//!   credential in the other place is 401.
//! - `POST /v2/client/{client_id}/job` wants `application/x-www-form-urlencoded`
//!   (415), `jobType=27` and `workload[connectionId]` of a connection of that
//!   client (422).
//! - Signups, connection establishment, connection tests and autodash progress
//!   over `job_duration` (fixed when each job starts), checked lazily on read.
//! - Every client comes with an older, already established connection (and a
//!   completed test job for it), so a poller that picks the wrong list entry
//!   finishes early and shows. A client sees only its own connections.
//!
//! - Ids the client sends back in bodies (invite `client_id`, autodash
//!   `connection_id` and `user_id`) must be JSON numbers, as the seed shows
//!   them, whatever [`Readings::ids`] makes the answers say (422 otherwise).
//!
//! The seed leaves answers open in many places (the provider module's doc
//! lists them); [`Readings`] has one knob per open point, the seed's example
//! by default. By default `GET /v2/client/{client_id}/job/type/{type}` answers
//! a JSON list, newest first:
//! `[{"id": 9001, "type": {"id": 27, "name": "Connection Test"},
//!    "status": {"id": 3, "name": "Completed"}, "start": "...", "end": "...",
//!    "workload": {"connectionId": 14, "syncAndSample": 1}}]`
//! with status ids 1 Queued, 2 Running, 3 Completed, 4 Failed (and `error` when failed).
//! Readings are set from `[sandbox.magento_bi]`, in-process
//! ([`Api::set_readings`]) or over HTTP on the API host: `GET /_sandbox/readings`
//! shows them, `POST /_sandbox/readings` replaces them (knobs left out take
//! their default, so `{}` restores the seed's readings).
//!
//! Knobs ([`Api`] methods) make the next signup or connection test fail, change
//! job duration and token ttl, revoke tokens, and expose what was created.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::faults::{self, Knobs};

/// The job type the dashboard host knows: "Connection Test".
const CONNECTION_TEST: i64 = 27;

/// What the emulated API accepts and how long things take.
#[derive(Clone)]
pub struct Options {
    pub username: String,
    pub password: String,
    pub client_id: i64,
    pub client_secret: String,
    /// `expires_in` of every token issued (until [`Api::set_token_ttl`]).
    pub token_ttl: Duration,
    /// How long each asynchronous job takes (until [`Api::set_job_duration`]).
    pub job_duration: Duration,
    /// How answers look where the seed leaves them open (until [`Api::set_readings`]).
    pub readings: Readings,
}

/// How the emulated API answers where the seed leaves an answer open: one knob
/// per open point of the provider module's inventory (`providers::magento_bi`).
/// Every default is the seed's own example (or, where the seed shows nothing,
/// what this sandbox always answered).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Readings {
    /// `GET /v2/client/{client_id}/job/type/27` (points 1 and 2).
    pub job_list: JobList,
    /// A job's `status`: `{"name": .., "id": ..}` (seed) or the bare name (point 5).
    pub job_status: JobStatusForm,
    /// The letter case of every status word: jobs, signups, autodash (points 5, 8, 17).
    pub status_case: StatusCase,
    /// Client, user, connection and job ids (and the token's ids) (points 9, 11).
    pub ids: Ids,
    /// Whether listed jobs say which connection they test (point 3).
    pub job_workload: JobWorkload,
    /// The job POST's `id`: `null` as in the seed, or the new job's id (point 7).
    pub job_id_on_create: JobIdOnCreate,
    /// `GET .../connections/input-connections` (point 13).
    pub connection_list: ConnectionList,
    /// `properties.established` (point 14).
    pub established: EstablishedForm,
    /// A value not known (yet) written as `null` (seed) or left out (point 15).
    pub nulls: Nulls,
    /// Unknown fields added to every answer, at the top and inside every object (point 16).
    pub extra_fields: bool,
}

/// The job list's form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobList {
    /// A bare list, newest first.
    #[default]
    List,
    /// A bare list, oldest first.
    OldestFirst,
    /// The latest job alone, as one object (404 when there is none).
    Object,
    /// `{"jobs": [...], "total": n}`, newest first.
    Wrapped,
    /// `{"data": [...], "meta": {"count": n}}`, newest first.
    WrappedData,
}

/// A job's `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatusForm {
    /// `{"name": "Completed", "id": 3}`, as the seed's job POST answer shows.
    #[default]
    Object,
    /// `"Completed"`.
    String,
}

/// How status words are spelt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusCase {
    /// As the seed spells them: `Queued`, `Completed` for jobs; `completed` for signups and autodash.
    #[default]
    Seed,
    /// `Completed` everywhere.
    Title,
    /// `completed` everywhere.
    Lower,
    /// `COMPLETED` everywhere.
    Upper,
}

/// Ids in answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ids {
    /// JSON numbers, as in the seed.
    #[default]
    Number,
    /// Numeric strings: `"14"`.
    String,
}

/// Listed jobs' `workload`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobWorkload {
    /// `{"connectionId": 14, "syncAndSample": 1}`, echoing the POST's form.
    #[default]
    Present,
    /// No `workload`: a job does not say which connection it tests.
    Absent,
}

/// The job POST's `id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobIdOnCreate {
    /// `"id": null`, as in the seed.
    #[default]
    Null,
    /// The new job's id, as later listed.
    Id,
}

/// The connection list's form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionList {
    /// A bare list, as in the seed.
    #[default]
    List,
    /// `{"connections": [...], "total": n}`.
    Wrapped,
}

/// `properties.established`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstablishedForm {
    /// `"2018-04-10 10:03:20"` once established, `null` before (seed).
    #[default]
    Timestamp,
    /// `true` / `false`.
    Bool,
    /// Unix seconds once established, `null` before.
    Epoch,
}

/// A value not known (yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nulls {
    /// `null`, as in the seed.
    #[default]
    Null,
    /// The key left out.
    Absent,
}

/// The readings knobs, for `onboarding-worker sandbox --help` (see [`super::readings_help`]).
pub const READINGS_HELP: &str = "\
Magento BI: [sandbox.magento_bi], ONBOARDING__SANDBOX__MAGENTO_BI__<KEY>, or at run time
POST /_sandbox/readings on the Magento BI API port (not the dashboard's).
  job_list            list (default, newest first) | oldest_first | object (the latest job alone)
                      | wrapped ({\"jobs\": [...]}) | wrapped_data ({\"data\": [...]})
  job_status          object (default, {\"name\": \"Completed\", \"id\": 3}) | string (\"Completed\")
  status_case         seed (default: jobs Completed, signups and autodash completed)
                      | title | lower | upper
  ids                 number (default) | string (\"14\"): client, user, connection and job ids
  job_workload        present (default, {\"connectionId\": 14, ...}) | absent
  job_id_on_create    null (default, as the seed's job POST answer) | id
  connection_list     list (default) | wrapped ({\"connections\": [...]})
  established         timestamp (default) | bool | epoch
  nulls               null (default) | absent (unknown values left out)
  extra_fields        false (default) | true (unknown fields in every answer and object)";

impl Readings {
    fn id(&self, id: i64) -> Value {
        match self.ids {
            Ids::Number => json!(id),
            Ids::String => json!(id.to_string()),
        }
    }

    /// `seed_word` (the seed's spelling) in the letter case in force.
    fn word(&self, seed_word: &str) -> String {
        match self.status_case {
            StatusCase::Seed => seed_word.to_string(),
            StatusCase::Lower => seed_word.to_lowercase(),
            StatusCase::Upper => seed_word.to_uppercase(),
            StatusCase::Title => {
                let lower = seed_word.to_lowercase();
                let mut chars = lower.chars();
                chars
                    .next()
                    .map(|c| c.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            }
        }
    }

    /// A job's `status`.
    fn job_status(&self, id: i64, name: &str) -> Value {
        match self.job_status {
            JobStatusForm::Object => json!({ "name": self.word(name), "id": id }),
            JobStatusForm::String => json!(self.word(name)),
        }
    }

    /// `properties.established` of a connection established at `at` (or not yet).
    fn established(&self, at: Option<OffsetDateTime>) -> Value {
        match (self.established, at) {
            (EstablishedForm::Timestamp, Some(t)) => json!(stamp(t)),
            (EstablishedForm::Epoch, Some(t)) => json!(t.unix_timestamp()),
            (EstablishedForm::Bool, at) => json!(at.is_some()),
            (_, None) => Value::Null,
        }
    }

    /// An answer as the readings in force write it: nulls left out or not,
    /// unknown fields added or not.
    fn finish(&self, mut v: Value) -> Value {
        fn walk(v: &mut Value, r: &Readings) {
            match v {
                Value::Object(map) => {
                    if r.nulls == Nulls::Absent {
                        map.retain(|_, v| !v.is_null());
                    }
                    for child in map.values_mut() {
                        walk(child, r);
                    }
                    if r.extra_fields {
                        map.insert(
                            "x_sandbox".into(),
                            json!({ "note": "a field the seed does not show", "revision": 2,
                                    "related": [{ "kind": "unknown", "seen": true }] }),
                        );
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(|i| walk(i, r)),
                _ => {}
            }
        }
        walk(&mut v, self);
        v
    }

    fn reply(&self, v: Value) -> Response {
        Json(self.finish(v)).into_response()
    }
}

// Hand-written so the sandbox's accepted credentials never reach a log.
impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("token_ttl", &self.token_ttl)
            .field("job_duration", &self.job_duration)
            .finish()
    }
}

/// A client as the sandbox holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientView {
    pub id: i64,
    pub name: String,
    /// False until its signup job completes; the client endpoints answer 404 before.
    pub ready: bool,
    pub properties: Value,
    /// The signup body that created it.
    pub signup: Value,
}

/// A user invited through `/v3/invites`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InviteView {
    pub id: i64,
    pub client_id: i64,
    pub email: String,
    pub body: Value,
}

/// An input connection, including each client's seeded older one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectionView {
    pub id: i64,
    pub client_id: i64,
    pub name: String,
    pub kind: String,
    pub established: bool,
    /// The older connection every client starts with (not created through the API).
    pub preexisting: bool,
    pub body: Value,
}

/// A connection-test job on the dashboard host.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobView {
    pub id: i64,
    pub client_id: i64,
    pub connection_id: i64,
    /// Queued, Running, Completed or Failed.
    pub status: String,
    /// The request body exactly as received (empty for seeded jobs).
    pub form: String,
}

/// An autodash (templated dashboards) job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DashboardView {
    pub id: String,
    pub client_id: i64,
    pub connection_id: i64,
    pub user_id: i64,
    pub package: String,
    pub database: String,
    pub table_prefix: String,
    /// pending, running or completed.
    pub status: String,
}

/// When an asynchronous job started and how long it takes.
#[derive(Clone, Copy)]
struct Clock {
    started: Instant,
    started_wall: OffsetDateTime,
    duration: Duration,
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Queued,
    Running,
    Done,
}

impl Clock {
    fn start(duration: Duration) -> Self {
        Clock {
            started: Instant::now(),
            started_wall: OffsetDateTime::now_utc(),
            duration,
        }
    }
    /// A job that finished long ago (the seeded older connection and its test).
    fn done_ago(ago: Duration) -> Self {
        Clock {
            started: Instant::now(),
            started_wall: OffsetDateTime::now_utc() - ago,
            duration: Duration::ZERO,
        }
    }
    fn phase(&self) -> Phase {
        let elapsed = self.started.elapsed();
        if elapsed >= self.duration {
            Phase::Done
        } else if elapsed < self.duration / 3 {
            Phase::Queued
        } else {
            Phase::Running
        }
    }
    fn end_wall(&self) -> OffsetDateTime {
        self.started_wall + self.duration
    }
}

fn stamp(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&f).unwrap_or_default()
}

struct Signup {
    clock: Clock,
    fails: bool,
    /// The client it creates (none when it fails).
    client_id: Option<i64>,
}

struct Client {
    id: i64,
    name: String,
    properties: Map<String, Value>,
    signup: Value,
    /// Ready when its signup job is done.
    ready: Clock,
}

struct Invite {
    id: i64,
    client_id: i64,
    email: String,
    body: Value,
}

struct Connection {
    id: i64,
    client_id: i64,
    name: String,
    kind: String,
    display_name: Value,
    properties: Map<String, Value>,
    body: Value,
    /// Established when done.
    clock: Clock,
    preexisting: bool,
}

struct Job {
    id: i64,
    client_id: i64,
    connection_id: i64,
    sync_and_sample: i64,
    clock: Clock,
    fails: bool,
    error: Option<&'static str>,
    form: String,
}

struct Dashboard {
    id: String,
    client_id: i64,
    connection_id: i64,
    user_id: i64,
    package: String,
    database: String,
    table_prefix: String,
    clock: Clock,
}

struct Store {
    readings: Readings,
    job_duration: Duration,
    token_ttl: Duration,
    fail_next_signup: bool,
    fail_next_connection_test: bool,
    /// Token value -> expiry.
    tokens: HashMap<String, Instant>,
    /// Every token issued, in order (tests look for leaks with these).
    issued: Vec<String>,
    next_client: i64,
    next_connection: i64,
    next_user: i64,
    next_job: i64,
    signups: HashMap<String, Signup>,
    clients: BTreeMap<i64, Client>,
    invites: Vec<Invite>,
    connections: Vec<Connection>,
    jobs: Vec<Job>,
    dashboards: Vec<Dashboard>,
}

struct Shared {
    options: Options,
    state: Mutex<Store>,
}

type ApiState = Arc<Shared>;

/// The emulated API: its knobs and its state, shared by both routers.
#[derive(Clone)]
pub struct Api {
    pub knobs: Knobs,
    shared: ApiState,
}

impl Api {
    pub fn new(options: Options) -> Self {
        let state = Store {
            readings: options.readings.clone(),
            job_duration: options.job_duration,
            token_ttl: options.token_ttl,
            fail_next_signup: false,
            fail_next_connection_test: false,
            tokens: HashMap::new(),
            issued: Vec::new(),
            next_client: 100,
            next_connection: 10,
            next_user: 3000,
            next_job: 9000,
            signups: HashMap::new(),
            clients: BTreeMap::new(),
            invites: Vec::new(),
            connections: Vec::new(),
            jobs: Vec::new(),
            dashboards: Vec::new(),
        };
        Api {
            knobs: Knobs::default(),
            shared: Arc::new(Shared {
                options,
                state: Mutex::new(state),
            }),
        }
    }

    /// The API host: tokens, signups, invites, clients, connections, autodash,
    /// and the `/_sandbox/...` control routes.
    pub fn api_router(&self) -> Router {
        Router::new()
            .route("/v1/tokens", post(create_token))
            .route("/v3/signups", post(create_signup))
            .route("/v3/signups/{id}", get(get_signup))
            .route("/v3/invites", post(create_invite))
            .route("/v1/clients/{client_id}", put(update_client))
            .route(
                "/v1/v2/clients/{client_id}/connections/input-connections",
                post(create_connection).get(list_connections),
            )
            .route("/v1/clients/{client_id}/autodash", post(create_autodash))
            .route("/v1/clients/{client_id}/autodash/{id}", get(get_autodash))
            .route_layer(axum::middleware::from_fn_with_state(
                self.knobs.clone(),
                faults::apply,
            ))
            .with_state(self.shared.clone())
            .merge(faults::control_routes(self.knobs.clone()))
            .merge(
                Router::new()
                    .route(
                        "/_sandbox/readings",
                        get(|State(s): State<ApiState>| async move {
                            Json(s.state.lock().unwrap().readings.clone())
                        })
                        .post(
                            |State(s): State<ApiState>, Json(readings): Json<Readings>| async move {
                                s.state.lock().unwrap().readings = readings.clone();
                                Json(readings)
                            },
                        ),
                    )
                    .with_state(self.shared.clone()),
            )
    }

    /// The dashboard host: connection-test jobs.
    pub fn dashboard_router(&self) -> Router {
        Router::new()
            .route("/v2/client/{client_id}/job", post(create_job))
            .route("/v2/client/{client_id}/job/type/{type_id}", get(list_jobs))
            .route_layer(axum::middleware::from_fn_with_state(
                self.knobs.clone(),
                faults::apply,
            ))
            .with_state(self.shared.clone())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.state.lock().unwrap()
    }

    /// The readings in force.
    pub fn readings(&self) -> Readings {
        self.state().readings.clone()
    }
    /// Answers from now on follow `readings`.
    pub fn set_readings(&self, readings: Readings) {
        self.state().readings = readings;
    }
    /// The next signup job ends `failed` (and creates no client).
    pub fn fail_next_signup(&self) {
        self.state().fail_next_signup = true;
    }
    /// The next connection-test job ends `Failed`.
    pub fn fail_next_connection_test(&self) {
        self.state().fail_next_connection_test = true;
    }
    /// Duration of jobs started from now on.
    pub fn set_job_duration(&self, duration: Duration) {
        self.state().job_duration = duration;
    }
    /// Lifetime of tokens issued from now on (`expires_in` is its whole seconds).
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.state().token_ttl = ttl;
    }
    /// Every token issued so far answers 401 from now on (a session purge).
    pub fn revoke_tokens(&self) {
        self.state().tokens.clear();
    }
    /// How many tokens `POST /v1/tokens` has issued.
    pub fn tokens_issued(&self) -> usize {
        self.state().issued.len()
    }
    /// The values of every token issued, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state().issued.clone()
    }

    pub fn clients(&self) -> Vec<ClientView> {
        self.state()
            .clients
            .values()
            .map(|c| ClientView {
                id: c.id,
                name: c.name.clone(),
                ready: c.ready.phase() == Phase::Done,
                properties: Value::Object(c.properties.clone()),
                signup: c.signup.clone(),
            })
            .collect()
    }

    pub fn invites(&self) -> Vec<InviteView> {
        self.state()
            .invites
            .iter()
            .map(|i| InviteView {
                id: i.id,
                client_id: i.client_id,
                email: i.email.clone(),
                body: i.body.clone(),
            })
            .collect()
    }

    pub fn connections(&self) -> Vec<ConnectionView> {
        self.state()
            .connections
            .iter()
            .map(|c| ConnectionView {
                id: c.id,
                client_id: c.client_id,
                name: c.name.clone(),
                kind: c.kind.clone(),
                established: c.clock.phase() == Phase::Done,
                preexisting: c.preexisting,
                body: c.body.clone(),
            })
            .collect()
    }

    pub fn jobs(&self) -> Vec<JobView> {
        self.state()
            .jobs
            .iter()
            .map(|j| JobView {
                id: j.id,
                client_id: j.client_id,
                connection_id: j.connection_id,
                status: job_status(j).1.to_string(),
                form: j.form.clone(),
            })
            .collect()
    }

    pub fn dashboards(&self) -> Vec<DashboardView> {
        self.state()
            .dashboards
            .iter()
            .map(|d| DashboardView {
                id: d.id.clone(),
                client_id: d.client_id,
                connection_id: d.connection_id,
                user_id: d.user_id,
                package: d.package.clone(),
                database: d.database.clone(),
                table_prefix: d.table_prefix.clone(),
                status: autodash_status(&d.clock).to_string(),
            })
            .collect()
    }
}

// ---- answers -------------------------------------------------------------

/// Why the sandbox refuses a call; answered as `{"message": ...}` with its status.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "message": self.message }))).into_response()
    }
}

fn fail(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

fn unauthorized(message: &str) -> Refusal {
    fail(StatusCode::UNAUTHORIZED, message)
}

fn unprocessable(message: impl Into<String>) -> Refusal {
    fail(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn not_found(what: &str) -> Refusal {
    fail(StatusCode::NOT_FOUND, format!("{what} not found"))
}

type Answer = Result<Response, Refusal>;

fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

/// A JSON object body; checked after auth so a bad credential is always 401.
fn json_object(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, Refusal> {
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

fn string_field(body: &Map<String, Value>, key: &str) -> Result<String, Refusal> {
    match body.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(unprocessable(format!("{key} is required"))),
    }
}

/// An integer id given as a number or a numeric string (both occur in the seed).
fn int_of(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// An id the client sends back in a body: a JSON number, as the seed shows
/// every such id (an id the answers gave as a string must be written back as
/// a number).
fn number_of(body: &Map<String, Value>, key: &str) -> Result<i64, Refusal> {
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
enum Credential {
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
    fn authorize(&self, headers: &HeaderMap, want: Credential) -> Result<(), Refusal> {
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

// ---- API host ------------------------------------------------------------

async fn create_token(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Answer {
    let body = json_object(&headers, &body)?;
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
    if text("grant_type") != "password" {
        return Err(fail(StatusCode::BAD_REQUEST, "unsupported grant_type"));
    }
    if text("scope") != "default" {
        return Err(fail(StatusCode::BAD_REQUEST, "unsupported scope"));
    }
    let o = &s.options;
    let credentials_ok = text("username") == o.username
        && text("password") == o.password
        && int_of(body.get("clientId")) == Some(o.client_id)
        && text("clientSecret") == o.client_secret;
    if !credentials_ok {
        return Err(unauthorized("invalid credentials"));
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut state = s.state.lock().unwrap();
    let ttl = state.token_ttl;
    state.tokens.insert(token.clone(), Instant::now() + ttl);
    state.issued.push(token.clone());
    let id = state.issued.len() as i64;
    let now = OffsetDateTime::now_utc();
    let r = &state.readings;
    Ok(r.reply(json!({
        "refreshed_at": stamp(now),
        "oauth_client_id": r.id(o.client_id),
        "token_type": "bearer",
        "id": r.id(id),
        "access_token": token,
        "scope": "default",
        "user_id": r.id(1),
        "create_at": stamp(now),
        "client_id": null,
        "expires_at": stamp(now + ttl),
        "grant_type": "password",
        "expires_in": ttl.as_secs(),
        "refresh_token": null,
    })))
}

async fn create_signup(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Answer {
    let body = json_object(&headers, &body)?;
    let company = string_field(&body, "company")?;
    string_field(&body, "email")?;
    let mut state = s.state.lock().unwrap();
    let fails = std::mem::take(&mut state.fail_next_signup);
    let clock = Clock::start(state.job_duration);
    let client_id = (!fails).then(|| {
        let id = state.next_client;
        state.next_client += 1;
        id
    });
    if let Some(client_id) = client_id {
        state.clients.insert(
            client_id,
            Client {
                id: client_id,
                name: company,
                properties: Map::new(),
                signup: Value::Object(body),
                ready: clock,
            },
        );
        seed_older_connection(&mut state, client_id);
    }
    let id = uuid::Uuid::new_v4().to_string();
    state.signups.insert(
        id.clone(),
        Signup {
            clock,
            fails,
            client_id,
        },
    );
    let url = format!("/v3/signups/{id}");
    Ok(state.readings.reply(json!({ "url": url, "id": id })))
}

/// Every client starts with an older, established connection and a completed
/// test of it, so list answers always hold an entry that is not ours.
fn seed_older_connection(state: &mut Store, client_id: i64) {
    let id = state.next_connection;
    state.next_connection += 1;
    let clock = Clock::done_ago(Duration::from_secs(86_400));
    let created = stamp(clock.started_wall);
    let properties = json!({
        "host": "legacy-db.internal", "port": "3306", "dbName": "legacy_store",
        "username": "boxcutter", "status": "1", "useSSL": "false",
        "encryption_type": "none", "created": created,
    });
    state.connections.push(Connection {
        id,
        client_id,
        name: "legacy".into(),
        kind: "mysql".into(),
        display_name: Value::Null,
        properties: properties.as_object().cloned().unwrap_or_default(),
        body: json!({ "name": "legacy", "type": "mysql", "properties": properties }),
        clock,
        preexisting: true,
    });
    let job = state.next_job;
    state.next_job += 1;
    state.jobs.push(Job {
        id: job,
        client_id,
        connection_id: id,
        sync_and_sample: 1,
        clock,
        fails: false,
        error: None,
        form: String::new(),
    });
}

async fn get_signup(State(s): State<ApiState>, Path(id): Path<String>) -> Answer {
    let state = s.state.lock().unwrap();
    let signup = state.signups.get(&id).ok_or_else(|| not_found("signup"))?;
    let r = &state.readings;
    let answer = match (signup.clock.phase(), signup.fails, signup.client_id) {
        (Phase::Queued, ..) => json!({ "status": r.word("pending"), "client_id": null }),
        (Phase::Running, ..) => json!({ "status": r.word("running"), "client_id": null }),
        (Phase::Done, true, _) | (Phase::Done, _, None) => json!({
            "status": r.word("failed"),
            "client_id": null,
            "error": "client provisioning failed",
        }),
        (Phase::Done, false, Some(client_id)) => json!({
            "pubkey": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQsandbox",
            "status": r.word("completed"),
            "client_id": r.id(client_id),
        }),
    };
    Ok(r.reply(answer))
}

/// A client whose signup has completed, or 404.
fn ready_client<'a>(state: &'a mut Store, raw_id: &str) -> Result<&'a mut Client, Refusal> {
    raw_id
        .parse::<i64>()
        .ok()
        .and_then(|id| state.clients.get_mut(&id))
        .filter(|c| c.ready.phase() == Phase::Done)
        .ok_or_else(|| not_found("client"))
}

async fn create_invite(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Answer {
    s.authorize(&headers, Credential::Bearer)?;
    let body = json_object(&headers, &body)?;
    let email = string_field(&body, "email")?;
    let client_id = number_of(&body, "client_id")?;
    let mut state = s.state.lock().unwrap();
    ready_client(&mut state, &client_id.to_string())
        .map_err(|_| unprocessable("client_id: no such client"))?;
    let id = state.next_user;
    state.next_user += 1;
    state.invites.push(Invite {
        id,
        client_id,
        email: email.clone(),
        body: Value::Object(body),
    });
    let r = &state.readings;
    Ok(r.reply(json!({
        "inviter_user_id": r.id(1),
        "client_id": r.id(client_id),
        "email": email,
        "id": r.id(id),
    })))
}

async fn update_client(
    State(s): State<ApiState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let body = json_object(&headers, &body)?;
    let name = match body.get("name") {
        None => None,
        Some(Value::String(n)) => Some(n.clone()),
        Some(_) => return Err(unprocessable("name must be a string")),
    };
    let properties = match body.get("properties") {
        None => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err(unprocessable("properties must be an object")),
    };
    let mut state = s.state.lock().unwrap();
    let client = ready_client(&mut state, &client_id)?;
    if let Some(name) = name {
        client.name = name;
    }
    client.properties.extend(properties);
    let (id, answer) = (
        client.id,
        json!({ "name": client.name, "properties": client.properties }),
    );
    let r = &state.readings;
    let mut answer = answer;
    answer["id"] = r.id(id);
    Ok(r.reply(answer))
}

fn connection_json(c: &Connection, r: &Readings) -> Value {
    let mut properties = c.properties.clone();
    let established = (c.clock.phase() == Phase::Done).then(|| c.clock.end_wall());
    properties.insert("established".into(), r.established(established));
    json!({
        "namespace": "input-connections",
        "created_at": format!("{}.0", stamp(c.clock.started_wall)),
        "display_name": c.display_name,
        "id": r.id(c.id),
        "type": c.kind,
        "name": c.name,
        "meta_id": r.id(1),
        "client_id": r.id(c.client_id),
        "properties": properties,
    })
}

async fn create_connection(
    State(s): State<ApiState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let body = json_object(&headers, &body)?;
    let name = string_field(&body, "name")?;
    let kind = string_field(&body, "type")?;
    let Some(Value::Object(mut properties)) = body.get("properties").cloned() else {
        return Err(unprocessable("properties must be an object"));
    };
    if !matches!(body.get("credentials"), Some(Value::Object(_))) {
        return Err(unprocessable("credentials must be an object"));
    }
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    let id = state.next_connection;
    state.next_connection += 1;
    let clock = Clock::start(state.job_duration);
    properties.insert("created".into(), json!(stamp(clock.started_wall)));
    let connection = Connection {
        id,
        client_id,
        name,
        kind,
        display_name: body.get("display_name").cloned().unwrap_or(Value::Null),
        properties,
        body: Value::Object(body),
        clock,
        preexisting: false,
    };
    // The create answer has no `established`, as in the seed.
    let r = state.readings.clone();
    let mut answer = connection_json(&connection, &r);
    if let Some(p) = answer["properties"].as_object_mut() {
        p.remove("established");
    }
    answer["meta_id"] = r.id(5);
    state.connections.push(connection);
    Ok(r.reply(answer))
}

async fn list_connections(
    State(s): State<ApiState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    let r = &state.readings;
    let list: Vec<Value> = state
        .connections
        .iter()
        .filter(|c| c.client_id == client_id)
        .map(|c| connection_json(c, r))
        .collect();
    Ok(r.reply(match r.connection_list {
        ConnectionList::List => Value::Array(list),
        ConnectionList::Wrapped => json!({ "total": list.len(), "connections": list }),
    }))
}

fn autodash_status(clock: &Clock) -> &'static str {
    match clock.phase() {
        Phase::Queued => "pending",
        Phase::Running => "running",
        Phase::Done => "completed",
    }
}

async fn create_autodash(
    State(s): State<ApiState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let body = json_object(&headers, &body)?;
    let package = string_field(&body, "package")?;
    let db = body
        .get("connections")
        .and_then(|c| c.get("db"))
        .and_then(Value::as_object)
        .ok_or_else(|| unprocessable("connections.db is required"))?;
    let connection_id = number_of(db, "connection_id")
        .map_err(|_| unprocessable("connections.db.connection_id must be a number"))?;
    let database = db
        .get("database")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| unprocessable("connections.db.database is required"))?
        .to_string();
    let table_prefix = db
        .get("table_prefix")
        .and_then(Value::as_str)
        .ok_or_else(|| unprocessable("connections.db.table_prefix is required"))?
        .to_string();
    let user_id = number_of(&body, "user_id")?;
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    if !state
        .connections
        .iter()
        .any(|c| c.id == connection_id && c.client_id == client_id)
    {
        return Err(unprocessable(
            "connections.db.connection_id: no such connection",
        ));
    }
    if !state
        .invites
        .iter()
        .any(|i| i.id == user_id && i.client_id == client_id)
    {
        return Err(unprocessable("user_id: no such user on this client"));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let clock = Clock::start(state.job_duration);
    state.dashboards.push(Dashboard {
        id: id.clone(),
        client_id,
        connection_id,
        user_id,
        package,
        database,
        table_prefix,
        clock,
    });
    Ok(state.readings.reply(json!({ "id": id })))
}

async fn get_autodash(
    State(s): State<ApiState>,
    Path((client_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    let dash = state
        .dashboards
        .iter()
        .find(|d| d.id == id && d.client_id == client_id)
        .ok_or_else(|| not_found("autodash job"))?;
    let r = &state.readings;
    Ok(r.reply(json!({ "status": r.word(autodash_status(&dash.clock)), "job_id": dash.id })))
}

// ---- dashboard host ------------------------------------------------------

fn job_status(job: &Job) -> (i64, &'static str) {
    match (job.clock.phase(), job.fails) {
        (Phase::Queued, _) => (1, "Queued"),
        (Phase::Running, _) => (2, "Running"),
        (Phase::Done, false) => (3, "Completed"),
        (Phase::Done, true) => (4, "Failed"),
    }
}

fn job_json(job: &Job, r: &Readings) -> Value {
    let (status_id, status) = job_status(job);
    let phase = job.clock.phase();
    let start = (phase != Phase::Queued).then(|| stamp(job.clock.started_wall));
    let end = (phase == Phase::Done).then(|| stamp(job.clock.end_wall()));
    let mut answer = json!({
        "id": r.id(job.id),
        "type": { "name": "Connection Test", "id": CONNECTION_TEST },
        "status": r.job_status(status_id, status),
        "start": start,
        "end": end,
    });
    if r.job_workload == JobWorkload::Present {
        answer["workload"] = json!({
            "connectionId": r.id(job.connection_id),
            "syncAndSample": job.sync_and_sample,
        });
    }
    if status == "Failed" {
        answer["error"] = json!(job.error.unwrap_or("connection test failed"));
    }
    answer
}

async fn create_job(
    State(s): State<ApiState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    if !content_type_is(&headers, "application/x-www-form-urlencoded") {
        return Err(fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/x-www-form-urlencoded",
        ));
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("jobType").map(String::as_str) != Some("27") {
        return Err(unprocessable("jobType: unknown job type"));
    }
    let connection_id = form
        .get("workload[connectionId]")
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| unprocessable("workload[connectionId] is required"))?;
    let sync_and_sample = form
        .get("workload[syncAndSample]")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    let connection = state
        .connections
        .iter()
        .find(|c| c.id == connection_id && c.client_id == client_id)
        .ok_or_else(|| unprocessable("workload[connectionId]: no such connection"))?;
    // Testing a connection that is not established yet fails, as it would for real.
    let error = if connection.clock.phase() != Phase::Done {
        Some("connection is not established yet")
    } else {
        None
    };
    let knob = std::mem::take(&mut state.fail_next_connection_test);
    let fails = knob || error.is_some();
    let error = error.or(knob.then_some("Could not connect to MySQL server"));
    let id = state.next_job;
    state.next_job += 1;
    let job = Job {
        id,
        client_id,
        connection_id,
        sync_and_sample,
        clock: Clock::start(state.job_duration),
        fails,
        error,
        form: String::from_utf8_lossy(&body).into_owned(),
    };
    state.jobs.push(job);
    // The seed's answer: the job is queued and has no id yet.
    let r = &state.readings;
    let id = match r.job_id_on_create {
        JobIdOnCreate::Null => Value::Null,
        JobIdOnCreate::Id => r.id(id),
    };
    Ok(r.reply(json!({
        "status": r.job_status(1, "Queued"),
        "end": null,
        "start": null,
        "type": { "name": "Connection Test", "id": CONNECTION_TEST },
        "id": id,
    })))
}

async fn list_jobs(
    State(s): State<ApiState>,
    Path((client_id, type_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    // Only connection tests exist here; any other type lists nothing.
    let wanted = type_id.parse::<i64>().ok() == Some(CONNECTION_TEST);
    let r = &state.readings;
    let mut list: Vec<Value> = state
        .jobs
        .iter()
        .rev()
        .filter(|j| wanted && j.client_id == client_id)
        .map(|j| job_json(j, r))
        .collect();
    let answer = match r.job_list {
        JobList::List => Value::Array(list),
        JobList::OldestFirst => {
            list.reverse();
            Value::Array(list)
        }
        JobList::Object => match list.into_iter().next() {
            Some(latest) => latest,
            None => return Err(not_found("job of this type")),
        },
        JobList::Wrapped => json!({ "total": list.len(), "jobs": list }),
        JobList::WrappedData => json!({ "meta": { "count": list.len() }, "data": list }),
    };
    Ok(r.reply(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    const USER: &str = "bi@example.com";
    const PASSWORD: &str = "pw-sandbox-test";
    const SECRET: &str = "cs-sandbox-test";

    fn options(job: Duration) -> Options {
        Options {
            username: USER.into(),
            password: PASSWORD.into(),
            client_id: 7,
            client_secret: SECRET.into(),
            token_ttl: Duration::from_secs(3600),
            job_duration: job,
            readings: Readings::default(),
        }
    }

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    /// Both hosts served on real ports, and a client to call them.
    struct Hosts {
        api: Api,
        base: String,
        dash: String,
        http: reqwest::Client,
    }

    impl Hosts {
        async fn start(job: Duration) -> Hosts {
            let api = Api::new(options(job));
            let base = serve(api.api_router()).await;
            let dash = serve(api.dashboard_router()).await;
            Hosts {
                api,
                base,
                dash,
                http: reqwest::Client::new(),
            }
        }

        async fn token(&self) -> String {
            let r = self
                .http
                .post(format!("{}/v1/tokens", self.base))
                .json(
                    &json!({"username": USER, "password": PASSWORD, "grant_type": "password",
                    "scope": "default", "clientId": 7, "clientSecret": SECRET}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            v["access_token"].as_str().unwrap().to_string()
        }

        /// A ready client (signup done), with the given job duration for later jobs.
        async fn client(&self) -> i64 {
            let r = self
                .http
                .post(format!("{}/v3/signups", self.base))
                .json(&json!({"tier": "T100", "company": "Coco Co.", "email": "a@b.c"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "signups need no auth");
            let id = r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            loop {
                let v: Value = self
                    .http
                    .get(format!("{}/v3/signups/{id}", self.base))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if v["status"] == "completed" {
                    return v["client_id"].as_i64().unwrap();
                }
                assert_ne!(v["status"], "failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn connection(&self, token: &str, client: i64) -> i64 {
            let r = self
                .http
                .post(format!(
                    "{}/v1/v2/clients/{client}/connections/input-connections",
                    self.base
                ))
                .header("cookie", format!("DASHSESS2={token}"))
                .json(&json!({"name": "new conn", "type": "mysql",
                    "credentials": {"password": "db-pw"}, "properties": {"host": "db"}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
        }

        async fn list(&self, token: &str, client: i64) -> (u16, Value) {
            let r = self
                .http
                .get(format!(
                    "{}/v1/v2/clients/{client}/connections/input-connections?include_deleted=false",
                    self.base
                ))
                .header("cookie", format!("DASHSESS2={token}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
        }

        async fn job(&self, token: &str, client: i64, content_type: &str, body: &str) -> u16 {
            self.http
                .post(format!("{}/v2/client/{client}/job", self.dash))
                .header("cookie", format!("dashuid=1; DASHSESS2={token}"))
                .header("content-type", content_type)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }

        async fn jobs(&self, token: &str, client: i64) -> Vec<Value> {
            self.http
                .get(format!("{}/v2/client/{client}/job/type/27", self.dash))
                .header("cookie", format!("DASHSESS2={token}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        }
    }

    const FORM: &str = "application/x-www-form-urlencoded";

    #[tokio::test]
    async fn tokens_need_every_credential_and_report_their_ttl() {
        let h = Hosts::start(Duration::ZERO).await;
        let good = json!({"username": USER, "password": PASSWORD, "grant_type": "password",
            "scope": "default", "clientId": 7, "clientSecret": SECRET});
        for (field, value, status) in [
            ("password", json!("wrong"), 401),
            ("clientSecret", json!("wrong"), 401),
            ("clientId", json!(8), 401),
            ("username", json!("x@y.z"), 401),
            ("grant_type", json!("client_credentials"), 400),
        ] {
            let mut body = good.clone();
            body[field] = value;
            let r = h
                .http
                .post(format!("{}/v1/tokens", h.base))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status, "a wrong {field}");
            let text = r.text().await.unwrap();
            assert!(!text.contains(PASSWORD) && !text.contains(SECRET), "{text}");
        }
        let v: Value = h
            .http
            .post(format!("{}/v1/tokens", h.base))
            .json(&good)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["expires_in"], 3600);
        assert_eq!(h.api.tokens_issued(), 1);
        assert_eq!(
            h.api.issued_tokens(),
            vec![v["access_token"].as_str().unwrap()]
        );
    }

    #[tokio::test]
    async fn each_endpoint_takes_only_its_own_credential() {
        let h = Hosts::start(Duration::ZERO).await;
        let token = h.token().await;
        let client = h.client().await;
        let invite = json!({"email": "u@x.y", "client_id": client, "force_create": 1});
        let invites = format!("{}/v3/invites", h.base);
        let cookie = format!("DASHSESS2={token}");
        let r = h
            .http
            .post(&invites)
            .header("cookie", &cookie)
            .json(&invite)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "the cookie on invites");
        let r = h.http.post(&invites).json(&invite).send().await.unwrap();
        assert_eq!(r.status(), 401, "no credential on invites");
        let r = h
            .http
            .post(&invites)
            .bearer_auth("not-a-token")
            .json(&invite)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "an unknown Bearer");
        let r = h
            .http
            .post(&invites)
            .bearer_auth(&token)
            .json(&invite)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a Bearer on invites");
        assert_eq!(h.api.invites().len(), 1);

        let client_url = format!("{}/v1/clients/{client}", h.base);
        let body = json!({"name": "Coco", "properties": {"timezone": "UTC"}});
        let r = h
            .http
            .put(&client_url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "a Bearer on clients");
        let r = h
            .http
            .put(&client_url)
            .header("cookie", &cookie)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the cookie on clients");
        assert_eq!(h.api.clients()[0].properties["timezone"], "UTC");

        let conns = format!(
            "{}/v1/v2/clients/{client}/connections/input-connections",
            h.base
        );
        let r = h.http.get(&conns).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 401, "a Bearer on connections");
        let r = h
            .http
            .get(format!("{}/v2/client/{client}/job/type/27", h.dash))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "a Bearer on jobs");
        let r = h
            .http
            .post(format!("{}/v1/clients/{client}/autodash", h.base))
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "a Bearer on autodash");
    }

    #[tokio::test]
    async fn a_token_is_refused_once_its_ttl_has_passed_or_it_was_revoked() {
        let h = Hosts::start(Duration::ZERO).await;
        let client = h.client().await;
        h.api.set_token_ttl(Duration::from_millis(150));
        let token = h.token().await;
        assert_eq!(h.list(&token, client).await.0, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, body) = h.list(&token, client).await;
        assert_eq!(status, 401, "expired");
        assert_eq!(body["message"], "token expired");

        h.api.set_token_ttl(Duration::from_secs(60));
        let token = h.token().await;
        assert_eq!(h.list(&token, client).await.0, 200);
        h.api.revoke_tokens();
        assert_eq!(h.list(&token, client).await.0, 401, "revoked");
    }

    #[tokio::test]
    async fn a_connection_list_holds_an_older_established_entry_and_only_this_clients() {
        let h = Hosts::start(Duration::from_millis(200)).await;
        let token = h.token().await;
        let a = h.client().await;
        let b = h.client().await;
        let ours = h.connection(&token, a).await;
        let theirs = h.connection(&token, b).await;
        let (status, list) = h.list(&token, a).await;
        assert_eq!(status, 200);
        let list = list.as_array().unwrap().clone();
        assert_eq!(list.len(), 2, "the older one and ours: {list:?}");
        let older = list.iter().find(|c| c["id"] != ours).unwrap();
        assert!(older["properties"]["established"].is_string());
        assert!(older["id"].as_i64().unwrap() < ours);
        let new = list.iter().find(|c| c["id"] == ours).unwrap();
        assert!(new["properties"]["established"].is_null(), "not yet");
        assert!(
            new.get("credentials").is_none(),
            "credentials are never echoed"
        );
        assert!(list
            .iter()
            .all(|c| c["id"] != theirs && c["client_id"] == a));

        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, list) = h.list(&token, a).await;
        let new = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == ours)
            .unwrap()
            .clone();
        assert!(
            new["properties"]["established"].is_string(),
            "after the job duration"
        );
        assert!(h
            .api
            .connections()
            .iter()
            .any(|c| c.id == ours && c.established));
    }

    #[tokio::test]
    async fn the_job_endpoint_wants_a_form_with_a_connection_test_of_this_clients_connection() {
        let h = Hosts::start(Duration::ZERO).await;
        let token = h.token().await;
        let a = h.client().await;
        let b = h.client().await;
        let ours = h.connection(&token, a).await;
        let theirs = h.connection(&token, b).await;
        let good = format!("jobType=27&workload[connectionId]={ours}&workload[syncAndSample]=1");
        for (content_type, body, status, why) in [
            (
                "application/json",
                good.clone(),
                415,
                "JSON instead of a form",
            ),
            (
                FORM,
                format!("jobType=5&workload[connectionId]={ours}"),
                422,
                "another job type",
            ),
            (FORM, "jobType=27".to_string(), 422, "no connection id"),
            (
                FORM,
                "jobType=27&workload[connectionId]=999999".to_string(),
                422,
                "unknown connection",
            ),
            (
                FORM,
                format!("jobType=27&workload[connectionId]={theirs}"),
                422,
                "another client's connection",
            ),
            (FORM, good.clone(), 200, "the seed's form"),
        ] {
            assert_eq!(h.job(&token, a, content_type, &body).await, status, "{why}");
        }
        let jobs = h.api.jobs();
        let created: Vec<_> = jobs.iter().filter(|j| !j.form.is_empty()).collect();
        assert_eq!(created.len(), 1);
        assert_eq!(created[0].form, good);
        assert_eq!(created[0].connection_id, ours);
    }

    #[tokio::test]
    async fn jobs_progress_over_the_job_duration_and_the_knobs_make_them_fail() {
        let h = Hosts::start(Duration::ZERO).await;
        let token = h.token().await;
        let client = h.client().await;
        let conn = h.connection(&token, client).await;
        let form = format!("jobType=27&workload[connectionId]={conn}&workload[syncAndSample]=1");

        h.api.set_job_duration(Duration::from_millis(300));
        assert_eq!(h.job(&token, client, FORM, &form).await, 200);
        let jobs = h.jobs(&token, client).await;
        assert_eq!(jobs.len(), 2, "ours and the older connection's: {jobs:?}");
        assert_eq!(jobs[0]["workload"]["connectionId"], conn, "newest first");
        assert_eq!(jobs[0]["status"]["name"], "Queued");
        assert_eq!(jobs[1]["status"]["name"], "Completed");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            h.jobs(&token, client).await[0]["status"]["name"],
            "Completed"
        );

        h.api.fail_next_connection_test();
        h.api.set_job_duration(Duration::ZERO);
        assert_eq!(h.job(&token, client, FORM, &form).await, 200);
        let jobs = h.jobs(&token, client).await;
        assert_eq!(jobs[0]["status"]["name"], "Failed");
        assert!(jobs[0]["error"].is_string());
        assert_eq!(h.job(&token, client, FORM, &form).await, 200);
        assert_eq!(
            h.jobs(&token, client).await[0]["status"]["name"],
            "Completed",
            "only the next one fails"
        );

        h.api.fail_next_signup();
        let r = h
            .http
            .post(format!("{}/v3/signups", h.base))
            .json(&json!({"company": "Doomed", "email": "d@x.y"}))
            .send()
            .await
            .unwrap();
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let v: Value = h
            .http
            .get(format!("{}/v3/signups/{id}", h.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "failed");
    }

    #[tokio::test]
    async fn autodash_needs_this_clients_connection_and_invited_user() {
        let h = Hosts::start(Duration::ZERO).await;
        let token = h.token().await;
        let client = h.client().await;
        let other = h.client().await;
        let conn = h.connection(&token, client).await;
        let foreign = h.connection(&token, other).await;
        let r = h
            .http
            .post(format!("{}/v3/invites", h.base))
            .bearer_auth(&token)
            .json(&json!({"email": "u@x.y", "client_id": client}))
            .send()
            .await
            .unwrap();
        let user = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
        let url = format!("{}/v1/clients/{client}/autodash", h.base);
        let cookie = format!("DASHSESS2={token}");
        let body = |c: i64, u: i64| {
            json!({"connections": {"db": {"connection_id": c,
            "database": "magento_store", "table_prefix": ""}}, "package": "magento1_rjql1", "user_id": u})
        };
        for (b, status, why) in [
            (body(foreign, user), 422, "another client's connection"),
            (body(conn, 1), 422, "a user not invited"),
            (
                json!({"package": "p", "user_id": user}),
                422,
                "no connections",
            ),
            (body(conn, user), 200, "the seed's body"),
        ] {
            let r = h
                .http
                .post(&url)
                .header("cookie", &cookie)
                .json(&b)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status, "{why}");
            if status == 200 {
                let id = r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let v: Value = h
                    .http
                    .get(format!("{url}/{id}"))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(v["status"], "completed");
                assert_eq!(v["job_id"], id.as_str());
            }
        }
        let d = &h.api.dashboards()[0];
        assert_eq!(
            (d.connection_id, d.user_id, d.package.as_str()),
            (conn, user, "magento1_rjql1")
        );
    }

    #[tokio::test]
    async fn faults_and_call_counts_apply_to_both_hosts() {
        let h = Hosts::start(Duration::ZERO).await;
        let token = h.token().await;
        let client = h.client().await;
        let conn = h.connection(&token, client).await;
        h.api.knobs.inject(faults::FaultRule {
            method: Some("POST".into()),
            path_contains: "/job".into(),
            fault: faults::Fault::Status { status: 503 },
            times: 1,
        });
        let form = format!("jobType=27&workload[connectionId]={conn}&workload[syncAndSample]=1");
        assert_eq!(h.job(&token, client, FORM, &form).await, 503);
        assert_eq!(h.job(&token, client, FORM, &form).await, 200);
        assert_eq!(h.api.knobs.calls("POST /v2/client/{client_id}/job"), 2);
        assert_eq!(h.api.knobs.calls("POST /v1/tokens"), 1);
        assert_eq!(h.api.knobs.calls("POST /v3/signups"), 1);
        let r = h
            .http
            .get(format!("{}/_sandbox/calls", h.base))
            .send()
            .await
            .unwrap();
        let calls: Value = r.json().await.unwrap();
        assert_eq!(
            calls["POST /v1/v2/clients/{client_id}/connections/input-connections"],
            1
        );
    }

    impl Hosts {
        /// The job list's raw answer.
        async fn job_answer(&self, token: &str, client: i64) -> (u16, Value) {
            let r = self
                .http
                .get(format!("{}/v2/client/{client}/job/type/27", self.dash))
                .header("cookie", format!("DASHSESS2={token}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
        }

        /// Replaces the readings over HTTP, as an operator would.
        async fn post_readings(&self, body: Value) -> reqwest::Response {
            self.http
                .post(format!("{}/_sandbox/readings", self.base))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    }

    #[tokio::test]
    async fn each_reading_shapes_the_answers_as_its_knob_says() {
        let h = Hosts::start(Duration::ZERO).await;
        let token = h.token().await;
        let client = h.client().await;
        let conn = h.connection(&token, client).await;
        let form = format!("jobType=27&workload[connectionId]={conn}&workload[syncAndSample]=1");
        let created = h
            .http
            .post(format!("{}/v2/client/{client}/job", h.dash))
            .header("cookie", format!("DASHSESS2={token}"))
            .header("content-type", FORM)
            .body(form.clone())
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert!(created["id"].is_null(), "the seed's POST answer: {created}");
        let (ours, older) = (h.api.jobs()[1].id, h.api.jobs()[0].id);

        type Check = fn(&Value, i64, i64, i64);
        let cases: Vec<(Value, Check)> = vec![
            (json!({}), |v, ours, older, conn| {
                assert_eq!(v[0]["id"], ours, "newest first");
                assert_eq!(v[1]["id"], older);
                assert_eq!(v[0]["workload"]["connectionId"], conn);
                assert_eq!(v[0]["status"]["name"], "Completed");
                assert!(v[0]["start"].is_string() && v[0].get("x_sandbox").is_none());
            }),
            (json!({"job_list": "oldest_first"}), |v, ours, older, _| {
                assert_eq!(
                    (v[0]["id"].as_i64(), v[1]["id"].as_i64()),
                    (Some(older), Some(ours))
                );
            }),
            (json!({"job_list": "object"}), |v, ours, _, _| {
                assert!(v.is_object(), "{v}");
                assert_eq!(v["id"], ours, "the latest job alone");
            }),
            (json!({"job_list": "wrapped"}), |v, ours, _, _| {
                assert_eq!(v["jobs"][0]["id"], ours);
                assert_eq!(v["total"], 2);
            }),
            (json!({"job_list": "wrapped_data"}), |v, ours, _, _| {
                assert_eq!(v["data"][0]["id"], ours);
            }),
            (
                json!({"job_status": "string", "status_case": "upper"}),
                |v, _, _, _| {
                    assert_eq!(v[0]["status"], "COMPLETED");
                },
            ),
            (json!({"status_case": "lower"}), |v, _, _, _| {
                assert_eq!(v[0]["status"]["name"], "completed");
            }),
            (json!({"ids": "string"}), |v, ours, _, conn| {
                assert_eq!(v[0]["id"], ours.to_string());
                assert_eq!(v[0]["workload"]["connectionId"], conn.to_string());
            }),
            (json!({"job_workload": "absent"}), |v, _, _, _| {
                assert!(v[0].get("workload").is_none(), "{v}");
            }),
            (
                json!({"nulls": "absent", "extra_fields": true}),
                |v, _, _, _| {
                    let job = v[0].as_object().unwrap();
                    assert!(job.values().all(|f| !f.is_null()), "no nulls: {v}");
                    assert!(job.contains_key("x_sandbox"), "{v}");
                    assert!(
                        v[0]["status"].get("x_sandbox").is_some(),
                        "inside objects too"
                    );
                },
            ),
        ];
        for (readings, check) in cases {
            let r = h.post_readings(readings.clone()).await;
            assert_eq!(r.status(), 200, "{readings}");
            let (status, answer) = h.job_answer(&token, client).await;
            assert_eq!(status, 200, "{readings}");
            check(&answer, ours, older, conn);
        }

        h.post_readings(json!({"job_id_on_create": "id", "ids": "string"}))
            .await;
        let created = h
            .http
            .post(format!("{}/v2/client/{client}/job", h.dash))
            .header("cookie", format!("DASHSESS2={token}"))
            .header("content-type", FORM)
            .body(form)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let newest = h.api.jobs().last().unwrap().id;
        assert_eq!(created["id"], newest.to_string(), "the POST gives the id");

        h.post_readings(json!({"connection_list": "wrapped", "established": "bool"}))
            .await;
        let (_, list) = h.list(&token, client).await;
        let entries = list["connections"].as_array().unwrap();
        assert!(entries
            .iter()
            .all(|c| c["properties"]["established"].is_boolean()));
        h.post_readings(json!({"established": "epoch"})).await;
        let (_, list) = h.list(&token, client).await;
        assert!(list[0]["properties"]["established"].is_i64(), "{list}");

        h.post_readings(json!({"status_case": "upper", "ids": "string"}))
            .await;
        let signup = h
            .http
            .post(format!("{}/v3/signups", h.base))
            .json(&json!({"company": "C", "email": "c@x.y"}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let v: Value = h
            .http
            .get(format!(
                "{}/v3/signups/{}",
                h.base,
                signup["id"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "COMPLETED");
        assert!(v["client_id"].is_string(), "{v}");

        // GET shows the readings in force; {} restores the seed's.
        let shown: Readings = h
            .http
            .get(format!("{}/_sandbox/readings", h.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(shown.status_case, StatusCase::Upper);
        assert_eq!(shown, h.api.readings());
        h.post_readings(json!({})).await;
        assert_eq!(h.api.readings(), Readings::default());
        let r = h.post_readings(json!({"job_lists": "object"})).await;
        assert!(r.status().is_client_error(), "an unknown knob is refused");
        let r = h.post_readings(json!({"job_list": "sideways"})).await;
        assert!(r.status().is_client_error(), "an unknown value is refused");
        assert_eq!(
            h.api.knobs.calls("GET /_sandbox/readings"),
            0,
            "not counted"
        );
    }

    #[tokio::test]
    async fn ids_written_back_as_strings_are_refused_as_the_seed_shows_numbers() {
        let h = Hosts::start(Duration::ZERO).await;
        let token = h.token().await;
        let client = h.client().await;
        let r = h
            .http
            .post(format!("{}/v3/invites", h.base))
            .bearer_auth(&token)
            .json(&json!({"email": "u@x.y", "client_id": client.to_string()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["message"], "client_id must be a number");
    }

    #[test]
    fn readings_come_from_config_and_every_knob_is_in_the_sandbox_help() {
        let defaults = crate::config::Settings::load(None).unwrap();
        assert_eq!(
            defaults.sandbox.magento_bi,
            Readings::default(),
            "default.toml says the seed's readings"
        );
        let env: HashMap<String, String> = [
            ("ONBOARDING__SANDBOX__MAGENTO_BI__JOB_LIST", "object"),
            ("ONBOARDING__SANDBOX__MAGENTO_BI__IDS", "string"),
            ("ONBOARDING__SANDBOX__MAGENTO_BI__EXTRA_FIELDS", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = crate::config::Settings::load_with_env(None, Some(env)).unwrap();
        let r = &s.sandbox.magento_bi;
        assert_eq!(
            (r.job_list, r.ids, r.extra_fields),
            (JobList::Object, Ids::String, true)
        );
        let options = crate::sandbox::SandboxOptions::from_settings(&s.sandbox, &s.providers);
        assert_eq!(
            &options.magento_bi.readings, r,
            "the sandbox starts with them"
        );

        use clap::CommandFactory;
        let mut cli = crate::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("sandbox")
            .unwrap()
            .render_long_help()
            .to_string();
        let knobs = serde_json::to_value(Readings::default()).unwrap();
        for key in knobs.as_object().unwrap().keys() {
            assert!(
                help.contains(&format!("  {key} ")),
                "sandbox --help lists {key}"
            );
            assert!(
                crate::config::DEFAULT_TOML.contains(&format!("\n{key} = ")),
                "default.toml documents {key}"
            );
        }
        for value in ["oldest_first", "wrapped_data", "upper", "absent", "epoch"] {
            assert!(help.contains(value), "sandbox --help lists {value}");
        }
    }

    #[test]
    fn options_debug_hides_the_accepted_secrets() {
        let text = format!("{:?}", options(Duration::ZERO));
        assert!(!text.contains(PASSWORD) && !text.contains(SECRET), "{text}");
    }
}
