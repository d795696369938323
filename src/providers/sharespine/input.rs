//! The `input` of Sharespine's two operations, checked once and borrowed from
//! the request: `plan` reports the first problem as the `invalid_request`
//! message, `run` reads the same shape. A JSON `null` counts as absent for every
//! optional field, since publishers often serialise "none" that way.

use serde_json::{Map, Value};

/// `sharespine / onboard` input (CONTRACT §4).
#[derive(Debug)]
pub(super) struct Onboard<'a> {
    /// Sent verbatim; has a non-empty string `customerReference`.
    pub tenant: &'a Value,
    /// Sent verbatim, one `create_user` each.
    pub users: Vec<NewUser<'a>>,
    /// Sent verbatim when present, else the seed's default API connection.
    pub connection: Option<&'a Value>,
    /// Whom `create_login_url` signs in; no such step when absent.
    pub login: Option<LoginTarget<'a>>,
}

#[derive(Debug)]
pub(super) struct NewUser<'a> {
    pub body: &'a Value,
}

#[derive(Debug, PartialEq)]
pub(super) struct LoginTarget<'a> {
    pub login: &'a str,
    pub path: &'a str,
}

/// `sharespine / login_url` input.
#[derive(Debug, PartialEq)]
pub(super) struct LoginUrl<'a> {
    pub code_name: &'a str,
    pub target: LoginTarget<'a>,
}

pub(super) fn onboard(input: &Value) -> Result<Onboard<'_>, String> {
    let input = as_object(Some(input), "input")?;
    let tenant = present(input, "tenant");
    let tenant_fields = as_object(tenant, "input.tenant")?;
    non_empty_str(tenant_fields, "customerReference", "input.tenant")?;

    let mut users = Vec::new();
    match present(input, "users") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, body) in items.iter().enumerate() {
                let name = format!("input.users[{i}]");
                path_segment(as_object(Some(body), &name)?, "login", &name)?;
                // A login repeated in the list is left to the provider: its 422
                // is the contract's `rejected` at `create_user`, with the
                // tenant and earlier users in the outputs for the operator.
                users.push(NewUser { body });
            }
        }
        Some(_) => return Err("input.users must be an array".into()),
    }

    let connection = match present(input, "connection") {
        None => None,
        Some(v @ Value::Object(_)) => Some(v),
        Some(_) => return Err("input.connection must be an object".into()),
    };

    let login = match present(input, "login") {
        None => None,
        Some(v) => Some(login_target(
            as_object(Some(v), "input.login")?,
            "input.login",
        )?),
    };

    Ok(Onboard {
        tenant: tenant.expect("checked to be an object above"),
        users,
        connection,
        login,
    })
}

pub(super) fn login_url(input: &Value) -> Result<LoginUrl<'_>, String> {
    let input = as_object(Some(input), "input")?;
    Ok(LoginUrl {
        code_name: path_segment(input, "code_name", "input")?,
        target: login_target(input, "input")?,
    })
}

fn login_target<'a>(map: &'a Map<String, Value>, name: &str) -> Result<LoginTarget<'a>, String> {
    let login = path_segment(map, "login", name)?;
    let path = match present(map, "path") {
        None => "/",
        Some(Value::String(s)) => s,
        Some(_) => return Err(format!("{name}.path must be a string")),
    };
    Ok(LoginTarget { login, path })
}

/// The field's value unless it is absent or `null`.
fn present<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn as_object<'a>(value: Option<&'a Value>, name: &str) -> Result<&'a Map<String, Value>, String> {
    match value {
        None | Some(Value::Null) => Err(format!("{name} is missing")),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(format!("{name} must be an object")),
    }
}

fn non_empty_str<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<&'a str, String> {
    match present(map, key) {
        None => Err(format!("{parent}.{key} is missing")),
        Some(Value::String(s)) if s.is_empty() => Err(format!("{parent}.{key} must not be empty")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{parent}.{key} must be a string")),
    }
}

/// A string that becomes one URL path segment: "." and ".." cannot be sent as one.
fn path_segment<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    parent: &str,
) -> Result<&'a str, String> {
    let s = non_empty_str(map, key, parent)?;
    if matches!(s, "." | "..") {
        return Err(format!("{parent}.{key} must not be \".\" or \"..\""));
    }
    Ok(s)
}
