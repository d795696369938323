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
//!
//! Files: `readings` (the answer knobs), `checks` (Basic auth, bodies, errors
//! and their form), `users` and `orders` (the handlers); this file holds the
//! state, the router and the knobs.

mod checks;
mod orders;
mod readings;
#[cfg(test)]
mod tests;
mod users;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::faults::{self, Knobs};

use checks::error_form;
use orders::{create_order, list_orders, list_products, show_order};
pub use readings::{
    each_reading, Case, Envelope, ErrorForm, Ids, List, LoadBalancerIp, OrderIds, Readings, Shown,
    Unknown, READINGS_HELP,
};
use users::{create_credential, create_user, show_user};

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
