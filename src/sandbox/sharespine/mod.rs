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
//!
//! Files: `readings` (the answer knobs), `checks` (checks 1 to 4, errors and
//! their form), `creates` and `reads` (the handlers); this file holds the state,
//! the router and the knobs.

mod checks;
mod creates;
mod readings;
mod reads;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::faults::{self, Knobs};

use checks::{error_form, ApiError};
use creates::{create_connection, create_login_url, create_tenant, create_user};
pub use readings::{
    each_reading, ConnectionIds, Envelope, ErrorForm, Expires, List, LoginUrlField, Readings,
    Reads, TenantAnswer, UserAnswer, READINGS_HELP,
};
use reads::{list_connections, list_tenants, list_users, token_login};

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
