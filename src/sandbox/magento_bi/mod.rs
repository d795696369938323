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
//!
//! Files: `readings` (the answer knobs), `checks` (credentials, bodies,
//! refusals), `api_host` and `dashboard_host` (the handlers); this file holds
//! the state, the routers and the knobs.

mod api_host;
mod checks;
mod dashboard_host;
mod readings;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::faults::{self, Knobs};

use api_host::{
    autodash_status, create_autodash, create_connection, create_invite, create_signup,
    create_token, get_autodash, get_signup, list_connections, update_client,
};
use dashboard_host::{create_job, job_status, list_jobs};
pub use readings::{
    ConnectionList, EstablishedForm, Ids, JobIdOnCreate, JobList, JobStatusForm, JobWorkload,
    Nulls, Readings, StatusCase, READINGS_HELP,
};

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
