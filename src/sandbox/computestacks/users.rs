//! Users and their API credentials: `POST /api/admin/users`, the admin's user
//! lookup and `POST /api/users/{id}/api_credentials`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Map, Value};

use super::checks::{json_body, non_blank, param, require_admin, ApiError};
use super::readings::Readings;
use super::{Credential, CredentialRecord, Shared, UserRecord};

/// POST /api/admin/users
pub(super) async fn create_user(
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
pub(super) async fn show_user(
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
pub(super) async fn create_credential(
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
