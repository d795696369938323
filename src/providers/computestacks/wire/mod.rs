//! ComputeStacks answers, read tolerantly: every reading the module doc's
//! inventory lists is accepted, and an answer still unreadable gives a reason
//! naming what was expected and what came (a shape, field names, a count),
//! never a value from the body. Serde stays here, at the edge: the readers
//! work on a parsed [`Value`] and hand typed results to the steps.

use std::fmt;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::config::Secret;

/// An id as the provider gives it: a number, or a string. A string holding a
/// canonical decimal (`"13"`, not `"013"`) is the same id as the number, so the
/// outputs are the same under either reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Id {
    Int(i64),
    Text(String),
}

impl Id {
    /// A number, or a non-empty string fit for a URL path segment.
    pub fn read(value: &Value) -> Option<Id> {
        match value {
            Value::Number(n) => n.as_i64().map(Id::Int),
            Value::String(s) => Id::from_text(s),
            _ => None,
        }
    }

    fn from_text(s: &str) -> Option<Id> {
        if s.is_empty() || matches!(s, "." | "..") || s.chars().any(char::is_control) {
            return None;
        }
        match s.parse::<i64>() {
            Ok(n) if n.to_string() == s => Some(Id::Int(n)),
            _ => Some(Id::Text(s.to_string())),
        }
    }

    /// As an output: a number when it is one.
    pub fn to_value(&self) -> Value {
        match self {
            Id::Int(n) => Value::from(*n),
            Id::Text(s) => Value::from(s.as_str()),
        }
    }

    /// As a URL path segment (percent-encoded by the caller's URL builder).
    pub fn segment(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Int(n) => write!(f, "{n}"),
            Id::Text(s) => f.write_str(s),
        }
    }
}

pub use crate::providers::describe;
use crate::providers::list_of;

/// The object `body` stands for: `{"<name>": {..}}` (the guide's envelope) or
/// the object itself (bare, as the admin API docs show a created user). Which
/// one is told by where `needs` is.
fn unwrap<'a>(body: &'a Value, name: &str, needs: &str) -> Result<&'a Map<String, Value>, String> {
    let article = if matches!(name, "order" | "api_credential") {
        "an"
    } else {
        "a"
    };
    let what = format!("{article} {name} object");
    let Value::Object(top) = body else {
        return Err(format!(
            "expected {what} with {needs}; got {}",
            describe(body)
        ));
    };
    if let Some(Value::Object(inner)) = top.get(name) {
        if inner.contains_key(needs) || !top.contains_key(needs) {
            return Ok(inner);
        }
    }
    if top.contains_key(needs) {
        return Ok(top);
    }
    Err(format!(
        "expected {what} with {needs}; got {}",
        describe(body)
    ))
}

/// A required id field: present, and a number or a usable string.
fn id_field(object: &Map<String, Value>, key: &str) -> Result<Id, String> {
    match object.get(key) {
        None | Some(Value::Null) => Err(format!("missing field `{key}`")),
        Some(v) => Id::read(v).ok_or_else(|| {
            format!(
                "field `{key}` is {}, not a number or an id string",
                describe(v)
            )
        }),
    }
}

/// A required non-empty string field.
fn text_field<'a>(object: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match object.get(key) {
        None | Some(Value::Null) => Err(format!("missing field `{key}`")),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("field `{key}` is empty")),
        Some(v) => Err(format!("field `{key}` is {}, not a string", describe(v))),
    }
}

/// An optional string field: `null`, absent and empty all read as `None`.
fn optional_text<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A list answer: a bare list, `{"<name>": [..]}` or `{"data": [..]}`.
fn list<'a>(body: &'a Value, name: &str) -> Result<&'a [Value], String> {
    match body {
        Value::Array(items) => Ok(items),
        Value::Object(top) => match (top.get(name), top.get("data")) {
            (Some(Value::Array(items)), _) => Ok(items),
            (None | Some(Value::Null), Some(Value::Array(items))) => Ok(items),
            _ => Err(format!(
                "expected a list of {name} (bare, or under \"{name}\" or \"data\"); got {}",
                describe(body)
            )),
        },
        other => Err(format!(
            "expected a list of {name} (bare, or under \"{name}\" or \"data\"); got {}",
            describe(other)
        )),
    }
}

/// A user as `POST /api/admin/users` or `GET /api/admin/users/{key}` shows it.
#[derive(Debug, PartialEq)]
pub struct User {
    pub id: Id,
    pub email: Option<String>,
    pub fname: Option<String>,
    pub lname: Option<String>,
    /// A string or a number as the provider holds it; `None` when null, absent or empty.
    pub external_id: Option<String>,
}

pub fn user(body: &Value) -> Result<User, String> {
    let user = unwrap(body, "user", "id")?;
    let text = |key: &str| optional_text(user, key).map(str::to_string);
    Ok(User {
        id: id_field(user, "id")?,
        email: text("email"),
        fname: text("fname"),
        lname: text("lname"),
        external_id: match user.get("external_id") {
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        },
    })
}

/// `POST /api/users/{id}/api_credentials`: the only answer that ever shows the password.
pub struct Credential {
    pub id: Id,
    pub username: String,
    /// A [`Secret`] from the moment it is read, so no `Debug` can print it.
    pub password: Secret,
}

pub fn credential(body: &Value) -> Result<Credential, String> {
    let credential = unwrap(body, "api_credential", "id")?;
    Ok(Credential {
        id: id_field(credential, "id")?,
        username: text_field(credential, "username")?.to_string(),
        password: Secret::new(text_field(credential, "password")?),
    })
}

/// A catalogue entry; entries without a usable id or name are left out (they
/// can match no name).
#[derive(Debug, PartialEq)]
pub struct Product {
    pub id: Id,
    pub name: String,
}

pub fn products(body: &Value) -> Result<Vec<Product>, String> {
    Ok(list(body, "products")?
        .iter()
        .filter_map(|item| {
            let item = item.as_object()?;
            Some(Product {
                id: Id::read(item.get("id")?)?,
                name: item.get("name")?.as_str()?.to_string(),
            })
        })
        .collect())
}

/// `POST /api/orders`.
#[derive(Debug, PartialEq)]
pub struct OrderCreated {
    pub id: Id,
    pub load_balancer_ip: Option<String>,
}

pub fn order_created(body: &Value) -> Result<OrderCreated, String> {
    let order = unwrap(body, "order", "id")?;
    Ok(OrderCreated {
        id: id_field(order, "id")?,
        load_balancer_ip: load_balancer_ip(order),
    })
}

/// The load balancer's public IP wherever an order shows it: `load_balancer_ip`
/// (the guide), `load_balancer.ip`, or `order_data.load_balancer_ip` (where the
/// provider keeps it). Anything that is not an IP address reads as unknown.
pub fn load_balancer_ip(order: &Map<String, Value>) -> Option<String> {
    let nested = |outer: &str, inner: &str| {
        order
            .get(outer)
            .and_then(Value::as_object)
            .and_then(|o| o.get(inner))
            .and_then(Value::as_str)
    };
    [
        order.get("load_balancer_ip").and_then(Value::as_str),
        nested("load_balancer", "ip"),
        nested("order_data", "load_balancer_ip"),
    ]
    .into_iter()
    .flatten()
    .find_map(|s| s.trim().parse::<IpAddr>().ok())
    .map(|ip| ip.to_string())
}

/// An order's status, in any letter case.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Completed,
    /// `failed`, `cancelled` (or `canceled`).
    Failed,
    /// Anything else: `open`, `pending`, `awaiting_payment`, `processing`...
    Waiting,
}

impl Status {
    pub fn read(status: &str) -> Status {
        match status.trim().to_ascii_lowercase().as_str() {
            "completed" => Status::Completed,
            "failed" | "cancelled" | "canceled" => Status::Failed,
            _ => Status::Waiting,
        }
    }
}

/// `GET /api/orders/{id}`, as far as the worker reads it.
#[derive(Debug, PartialEq)]
pub struct OrderState {
    pub status: Status,
    /// As the provider spelled it (printable, short), for "not yet" logs.
    pub status_text: String,
    /// `project.id`; `None` while `project` is null, absent or has no id.
    pub project_id: Option<Id>,
    pub load_balancer_ip: Option<String>,
    /// `order_data.project_name`: what the order was placed for.
    pub project_name: Option<String>,
}

/// Reads the state of order `ours`. The answer may be the order wrapped
/// (`{"order": {..}}`, the guide), bare, or a list holding it; an order is
/// taken only when it is ours: a shown `id` must be `ours`, and in a list the
/// one whose `id` is `ours` is taken, never a lone item without one.
pub fn order_state(body: &Value, ours: &Id) -> Result<OrderState, String> {
    let order = find_order(body, ours)?;
    let status_text = match order.get("status") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        None | Some(Value::Null) => {
            return Err(format!(
                "expected an order object with status; got {}",
                describe(&Value::Object(order.clone()))
            ))
        }
        Some(other) => return Err(format!("field `status` is {}", describe(other))),
    };
    let project_id = order
        .get("project")
        .and_then(Value::as_object)
        .and_then(|p| p.get("id"))
        .and_then(Id::read);
    let project_name = order
        .get("order_data")
        .and_then(Value::as_object)
        .and_then(|d| optional_text(d, "project_name"))
        .map(str::to_string);
    Ok(OrderState {
        status: Status::read(&status_text),
        status_text: status_text
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect(),
        project_id,
        load_balancer_ip: load_balancer_ip(order),
        project_name,
    })
}

fn find_order<'a>(body: &'a Value, ours: &Id) -> Result<&'a Map<String, Value>, String> {
    let is_ours =
        |order: &Map<String, Value>| order.get("id").and_then(Id::read).as_ref() == Some(ours);
    // A list: bare, or under "orders" or "data".
    let items = match body {
        Value::Array(items) => Some(items.as_slice()),
        Value::Object(top) if !top.contains_key("status") && !top.contains_key("order") => {
            list(body, "orders").ok()
        }
        _ => None,
    };
    if let Some(items) = items {
        let mut found = items
            .iter()
            .filter_map(|item| match item {
                Value::Object(o) => match o.get("order") {
                    Some(Value::Object(inner)) => Some(inner),
                    _ => Some(o),
                },
                _ => None,
            })
            .filter(|o| is_ours(o));
        return match (found.next(), found.next()) {
            (Some(order), None) => Ok(order),
            (None, _) => Err(format!(
                "expected order {ours} with status; got {} without it",
                list_of(items.len())
            )),
            (Some(_), Some(_)) => Err(format!(
                "expected order {ours} with status; got a list showing it more than once"
            )),
        };
    }
    let order = unwrap(body, "order", "status")?;
    match order.get("id") {
        None | Some(Value::Null) => Ok(order),
        Some(_) if is_ours(order) => Ok(order),
        Some(_) => Err(format!(
            "expected order {ours} with status; got another order"
        )),
    }
}

/// An entry of `GET /api/orders` (the user's orders).
#[derive(Debug, PartialEq)]
pub struct Listed {
    pub id: Id,
    /// `project.name`, shown once the project exists.
    pub project_name: Option<String>,
}

/// The user's orders; entries without a usable id are left out.
pub fn orders(body: &Value) -> Result<Vec<Listed>, String> {
    Ok(list(body, "orders")?
        .iter()
        .filter_map(|item| {
            let item = item.as_object()?;
            let item = match item.get("order") {
                Some(Value::Object(inner)) => inner,
                _ => item,
            };
            Some(Listed {
                id: Id::read(item.get("id")?)?,
                project_name: item
                    .get("project")
                    .and_then(Value::as_object)
                    .and_then(|p| optional_text(p, "name"))
                    .map(str::to_string),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests;
