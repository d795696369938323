//! The reads the worker uses to find what an interrupted create made, and the
//! page a login URL leads to.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::checks::ApiError;
use super::Api;

/// GET /reseller/tenant: the reseller's tenants, each as received with its `codeName`.
pub(super) async fn list_tenants(
    State(api): State<Api>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
pub(super) async fn list_users(
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
pub(super) async fn list_connections(
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
pub(super) async fn token_login(
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
