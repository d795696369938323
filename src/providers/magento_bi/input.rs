//! The request's input checks: every field a step will need, so a bad request
//! fails at `plan`, before any call.

use serde_json::{Map, Value};

/// Checks every field a step will need, so a bad request fails before any call.
pub(super) fn validate(input: &Value) -> Result<(), String> {
    let input = input.as_object().ok_or("input must be an object")?;

    let signup = object(input, "input", "signup")?;
    for key in ["company", "email"] {
        text(signup, "input.signup", key)?;
    }

    let invite = object(input, "input", "invite")?;
    text(invite, "input.invite", "email")?;

    let client = object(input, "input", "client")?;
    optional(client, "input.client", "name", Value::is_string, "a string")?;
    optional(
        client,
        "input.client",
        "properties",
        Value::is_object,
        "an object",
    )?;

    let connection = object(input, "input", "connection")?;
    for key in ["name", "type"] {
        text(connection, "input.connection", key)?;
    }
    for key in ["properties", "credentials"] {
        object(connection, "input.connection", key)?;
    }

    let dashboards = object(input, "input", "dashboards")?;
    for key in ["package", "database"] {
        text(dashboards, "input.dashboards", key)?;
    }
    optional(
        dashboards,
        "input.dashboards",
        "table_prefix",
        Value::is_string,
        "a string",
    )?;
    Ok(())
}

pub(super) fn object<'a>(
    parent: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<&'a Map<String, Value>, String> {
    match parent.get(key) {
        None | Some(Value::Null) => Err(format!("{path}.{key} is missing")),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(format!("{path}.{key} must be an object")),
    }
}

pub(super) fn text(parent: &Map<String, Value>, path: &str, key: &str) -> Result<(), String> {
    match parent.get(key) {
        None | Some(Value::Null) => Err(format!("{path}.{key} is missing")),
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        Some(_) => Err(format!("{path}.{key} must be a non-empty string")),
    }
}

fn optional(
    parent: &Map<String, Value>,
    path: &str,
    key: &str,
    ok: fn(&Value) -> bool,
    what: &str,
) -> Result<(), String> {
    match parent.get(key) {
        Some(v) if !ok(v) => Err(format!("{path}.{key} must be {what}")),
        _ => Ok(()),
    }
}
