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
//! Errors are `{"message": "..."}`. Required fields: tenant `customerReference`
//! (a non-empty string); user `login` (a non-empty string, not `.` or `..`);
//! connection: none (`type` defaults to `api`, and must be a string if given);
//! login URL: none (`path` defaults to `/`, and must be a string if given). Other
//! fields are kept as sent. Logins are unique per tenant, compared exactly.
//! Creates answer `201`, a login URL `200`.
//!
//! A tenant's `codeName` is [`CODE_NAME_PREFIX`] + the lower-cased
//! `customerReference` + `-` + how many tenants share that (lower-cased)
//! reference, so the first `mycustomer` is `prefixmycustomer-1`. Connections get
//! a random 32-hex-digit id; login URLs are `http://<Host>/_tokenlogin/{login}/{token}`
//! and expire [`LOGIN_URL_TTL`] after they are made. `GET` on such a URL (not
//! part of the reseller API, so neither counted nor faulted) answers `200` while
//! it is valid, so a demo's links lead somewhere.
//!
//! The `User-Agent` of every call is recorded ([`Api::user_agents`]) but not
//! required: the seed shows one without saying the service refuses its absence.

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
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

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
    store: Arc<Mutex<Store>>,
}

impl Api {
    pub fn new(options: Options) -> Self {
        Api {
            knobs: Knobs::default(),
            options: Arc::new(options),
            store: Arc::default(),
        }
    }

    /// The reseller API (counted and faulted by [`faults::apply`]), the token-login
    /// page and the `/_sandbox` control routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/reseller/tenant", post(create_tenant))
            .route("/reseller/tenant/{code_name}/user", post(create_user))
            .route(
                "/reseller/tenant/{code_name}/connection",
                post(create_connection),
            )
            .route(
                "/reseller/tenant/{code_name}/login/{login}",
                post(create_login_url),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                self.knobs.clone(),
                faults::apply,
            ))
            .route("/_tokenlogin/{login}/{token}", get(token_login))
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
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"reseller\"")];
            return (self.status, challenge, body).into_response();
        }
        (self.status, body).into_response()
    }
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
    store.tenants.push(Tenant {
        code_name,
        customer_reference: reference,
        body: received,
        users: Vec::new(),
        connections: Vec::new(),
        login_urls: Vec::new(),
    });
    Ok((StatusCode::CREATED, Json(Value::Object(body))).into_response())
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
    Ok((StatusCode::CREATED, Json(Value::Object(body))).into_response())
}

async fn create_connection(
    State(api): State<Api>,
    Path(code_name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut body = api.admit(&headers, &body)?;
    let mut store = api.store.lock().unwrap();
    let tenant = store.tenant_mut(&code_name)?;
    let kind = optional_str(&body, "type", "api")?.to_string();
    let id = random_hex();
    body.insert("type".into(), json!(kind));
    body.insert("id".into(), json!(id));
    let answer = Value::Object(body);
    tenant.connections.push(Connection {
        id,
        body: answer.clone(),
    });
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
    let expires = (OffsetDateTime::now_utc() + LOGIN_URL_TTL)
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a UTC time formats as RFC 3339");
    let issued = LoginUrl {
        login,
        path: path.clone(),
        url: url.to_string(),
        token,
        expires: expires.clone(),
    };
    tenant.login_urls.push(issued.clone());
    let answer = json!({ "path": path, "loginUrl": issued.url, "expires": expires });
    Ok((StatusCode::OK, Json(answer)).into_response())
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
        OffsetDateTime::parse(&u.expires, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|expires| now < expires)
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
}
