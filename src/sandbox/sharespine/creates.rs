//! The seed's four creates: tenants, users, connections and login URLs.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::checks::{optional_str, required_str, ApiError};
use super::readings::{ConnectionIds, Envelope, Expires, LoginUrlField, TenantAnswer, UserAnswer};
use super::{Api, Connection, LoginUrl, Tenant, User, CODE_NAME_PREFIX, LOGIN_URL_TTL};

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub(super) async fn create_tenant(
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

pub(super) async fn create_user(
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

pub(super) async fn create_connection(
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

pub(super) async fn create_login_url(
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
