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
//! - Errors are Rails-like: `{"errors": ["Email has already been taken"]}`.
//! - An order is `pending`, then `processing` after a third of its duration,
//!   then `completed` with a project (or `failed`, see [`Api::fail_next_orders`]
//!   and [`Api::fail_orders_for_project`]). Its duration is the one in force
//!   when it was placed ([`Api::set_order_duration`] changes it for new orders).
//!   Status is worked out whenever an order is read, so no task runs per order.
//!
//! Latency, injected faults and call counts come from the shared
//! [`faults`](super::faults) middleware, as `"POST /api/orders"`,
//! `"GET /api/orders/{id}"`, `"POST /api/users/{id}/api_credentials"`...

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use rand::distr::{Alphanumeric, SampleString};
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
            .route("/api/users/{id}/api_credentials", post(create_credential))
            .route("/api/products", get(list_products))
            .route("/api/orders", post(create_order))
            .route("/api/orders/{id}", get(show_order))
            .route_layer(axum::middleware::from_fn_with_state(
                self.knobs.clone(),
                faults::apply,
            ))
            .with_state(self.state.clone())
            .merge(faults::control_routes(self.knobs.clone()))
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
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"ComputeStacks\"")];
            (self.status, challenge, body).into_response()
        } else {
            (self.status, body).into_response()
        }
    }
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
    // `merge_labels` is a list of {key: value} objects; the user shows them as `labels`.
    let mut labels = Map::new();
    if let Some(Value::Array(items)) = record.other.get("merge_labels") {
        for item in items.iter().filter_map(Value::as_object) {
            labels.extend(item.clone());
        }
    }
    let answer = json!({ "user": {
        "id": record.id,
        "email": record.email,
        "fname": record.fname,
        "lname": record.lname,
        "external_id": record.external_id,
        "labels": labels,
    }});
    s.users.push(record);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
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
    let answer = json!({ "api_credential": {
        "id": record.id,
        "username": record.username,
        "password": password,
    }});
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
    authenticate(&state.lock().unwrap(), &headers)?;
    let products: Vec<Value> = PRODUCTS
        .iter()
        .map(|(id, name, cpu, memory, storage, price)| {
            json!({
                "id": id, "name": name, "price": price, "term": "hour",
                "cpu": cpu, "memory": memory, "storage": storage, "bandwidth": 100,
                "backup": 0, "local_disk": storage, "memory_swap": null,
                "memory_swappiness": null, "region": 1,
            })
        })
        .collect();
    Ok(Json(json!({ "products": products })).into_response())
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
    let record = OrderRecord {
        id: uuid::Uuid::new_v4().to_string(),
        user_id,
        status: "pending".to_string(),
        project_id: None,
        project_name,
        product_ids,
        load_balancer_ip: format!("198.51.100.{}", (number - 1) % 254 + 1),
    };
    let answer = json!({ "order": {
        "id": record.id,
        "redirect_url": null,
        "load_balancer_ip": record.load_balancer_ip,
    }});
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
    let project = order
        .record
        .project_id
        .map(|id| json!({ "id": id, "name": order.record.project_name }));
    let location = (order.location_id == LOCATION_ID)
        .then(|| json!({ "id": LOCATION_ID, "name": LOCATION_NAME }));
    Ok(Json(json!({ "order": {
        "id": order.record.id,
        "status": order.record.status,
        "order_data": order.order_data,
        "created_at": now_rfc3339(order.created_at),
        "updated_at": now_rfc3339(order.updated_at),
        "project": project,
        "location": location,
    }}))
    .into_response())
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
}
