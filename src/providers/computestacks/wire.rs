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
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_read_as_numbers_or_strings_and_canonical_decimals_are_numbers() {
        for (value, expected, why) in [
            (json!(13), Some(Id::Int(13)), "a number"),
            (
                json!("13"),
                Some(Id::Int(13)),
                "a numeric string is the same id",
            ),
            (
                json!("013"),
                Some(Id::Text("013".into())),
                "not canonical: kept as text",
            ),
            (
                json!("f5a34c0f-e9e2-45e0-9bba-d342d12517fc"),
                Some(Id::Text("f5a34c0f-e9e2-45e0-9bba-d342d12517fc".into())),
                "a uuid",
            ),
            (json!(""), None, "empty"),
            (json!(".."), None, "not a path segment"),
            (json!("a\nb"), None, "control characters"),
            (json!(1.5), None, "a fraction"),
            (json!(null), None, "null"),
            (json!({"id": 1}), None, "an object"),
        ] {
            assert_eq!(Id::read(&value), expected, "{why}");
        }
        assert_eq!(Id::Int(13).to_value(), json!(13));
        assert_eq!(Id::Text("x-1".into()).to_value(), json!("x-1"));
    }

    #[test]
    fn describe_names_shapes_and_field_names_never_values() {
        for (value, expected) in [
            (json!([1, 2]), "a list of 2 items"),
            (json!([{}]), "a list of 1 item"),
            (json!([]), "an empty list"),
            (json!({}), "an empty object"),
            (
                json!({"errors": ["x"], "meta": 1}),
                "an object with fields errors, meta",
            ),
            (json!({"hunter2 secret": 1}), "an object with 1 fields"),
            (json!("hunter2"), "a string"),
            (json!(null), "null"),
        ] {
            assert_eq!(describe(&value), expected, "{value}");
        }
    }

    #[test]
    fn created_users_are_read_wrapped_or_bare_with_ids_of_either_type() {
        let ok = |id: Id| {
            Ok(User {
                id,
                email: Some("ada@example.com".into()),
                fname: Some("Ada".into()),
                lname: None,
                external_id: Some("crm-1".into()),
            })
        };
        let cases: Vec<(&str, Value, Result<User, String>)> = vec![
            (
                "the guide's envelope",
                json!({"user": {"id": 7, "email": "ada@example.com", "fname": "Ada", "external_id": "crm-1"}}),
                ok(Id::Int(7)),
            ),
            (
                "bare, as the admin API docs show it",
                json!({"id": 7, "email": "ada@example.com", "fname": "Ada", "external_id": "crm-1", "labels": {}}),
                ok(Id::Int(7)),
            ),
            (
                "a numeric string id",
                json!({"user": {"id": "7", "email": "ada@example.com", "fname": "Ada", "external_id": "crm-1"}}),
                ok(Id::Int(7)),
            ),
            (
                "unknown fields and nulls",
                json!({"user": {"id": 7, "email": "ada@example.com", "fname": "Ada", "lname": null,
                                "external_id": "crm-1", "api_key": null, "services": {"deployments": 0}}}),
                ok(Id::Int(7)),
            ),
            (
                "a numeric external_id",
                json!({"id": 7, "email": "ada@example.com", "fname": "Ada", "external_id": 42}),
                Ok(User {
                    id: Id::Int(7),
                    email: Some("ada@example.com".into()),
                    fname: Some("Ada".into()),
                    lname: None,
                    external_id: Some("42".into()),
                }),
            ),
            (
                "a list",
                json!([{"id": 7}, {"id": 8}]),
                Err("expected a user object with id; got a list of 2 items".into()),
            ),
            (
                "an object without an id",
                json!({"errors": ["nope"]}),
                Err("expected a user object with id; got an object with fields errors".into()),
            ),
            (
                "an envelope with a null id",
                json!({"user": {"id": null, "email": "x"}}),
                Err("missing field `id`".into()),
            ),
            (
                "an id that is an object",
                json!({"user": {"id": {"value": 7}}}),
                Err(
                    "field `id` is an object with fields value, not a number or an id string"
                        .into(),
                ),
            ),
        ];
        for (why, body, expected) in cases {
            assert_eq!(user(&body), expected, "{why}");
        }
    }

    #[test]
    fn credentials_are_read_wrapped_or_bare_and_a_missing_password_is_named() {
        for (why, body) in [
            (
                "the guide's envelope",
                json!({"api_credential": {"id": 3, "username": "u", "password": "p"}}),
            ),
            (
                "bare",
                json!({"id": "3", "username": "u", "password": "p", "name": "billing"}),
            ),
        ] {
            let c = credential(&body).unwrap_or_else(|e| panic!("{why}: {e}"));
            assert_eq!(
                (c.id, c.username.as_str(), c.password.expose()),
                (Id::Int(3), "u", "p"),
                "{why}"
            );
        }
        for (why, body, expected) in [
            (
                "no password",
                json!({"api_credential": {"id": 9001, "username": "u-9001", "name": "billing"}}),
                "missing field `password`",
            ),
            (
                "a null password",
                json!({"api_credential": {"id": 1, "username": "u", "password": null}}),
                "missing field `password`",
            ),
            (
                "a numeric password",
                json!({"api_credential": {"id": 1, "username": "u", "password": 12345}}),
                "field `password` is a number, not a string",
            ),
            (
                "no username",
                json!({"api_credential": {"id": 1, "password": "p"}}),
                "missing field `username`",
            ),
        ] {
            let message = credential(&body)
                .err()
                .unwrap_or_else(|| panic!("{why}: read"));
            assert_eq!(message, expected, "{why}");
            assert!(!message.contains("12345"), "{why}: a value was quoted");
        }
    }

    #[test]
    fn the_catalogue_is_read_as_a_bare_list_or_under_products_or_data() {
        let expected = vec![
            Product {
                id: Id::Int(1),
                name: "small".into(),
            },
            Product {
                id: Id::Int(2),
                name: "medium".into(),
            },
        ];
        let items = json!([{"id": 1, "name": "small", "price": "0.0"}, {"id": "2", "name": "medium"},
                           {"id": null, "name": "broken"}, "junk"]);
        for (why, body) in [
            (
                "under products (the guide)",
                json!({"products": items.clone()}),
            ),
            (
                "under data",
                json!({"data": items.clone(), "meta": {"page": 1}}),
            ),
            ("bare", items.clone()),
        ] {
            assert_eq!(products(&body).as_ref(), Ok(&expected), "{why}");
        }
        assert_eq!(
            products(&json!({"product": {"id": 1}})),
            Err("expected a list of products (bare, or under \"products\" or \"data\"); got an object with fields product".into())
        );
    }

    #[test]
    fn created_orders_are_read_with_the_load_balancer_ip_wherever_it_is() {
        let uuid = "f5a34c0f-e9e2-45e0-9bba-d342d12517fc";
        let ip = Some("192.168.1.10".to_string());
        let cases: Vec<(&str, Value, Result<OrderCreated, String>)> = vec![
            (
                "the guide's answer",
                json!({"order": {"id": uuid, "redirect_url": null, "load_balancer_ip": "192.168.1.10"}}),
                Ok(OrderCreated {
                    id: Id::Text(uuid.into()),
                    load_balancer_ip: ip.clone(),
                }),
            ),
            (
                "bare, with a numeric id",
                json!({"id": 17, "load_balancer_ip": "192.168.1.10"}),
                Ok(OrderCreated {
                    id: Id::Int(17),
                    load_balancer_ip: ip.clone(),
                }),
            ),
            (
                "nested under load_balancer",
                json!({"order": {"id": "17", "load_balancer": {"ip": "192.168.1.10"}}}),
                Ok(OrderCreated {
                    id: Id::Int(17),
                    load_balancer_ip: ip.clone(),
                }),
            ),
            (
                "in order_data",
                json!({"order": {"id": uuid, "order_data": {"load_balancer_ip": "192.168.1.10"}}}),
                Ok(OrderCreated {
                    id: Id::Text(uuid.into()),
                    load_balancer_ip: ip.clone(),
                }),
            ),
            (
                "null: not known yet",
                json!({"order": {"id": uuid, "load_balancer_ip": null}}),
                Ok(OrderCreated {
                    id: Id::Text(uuid.into()),
                    load_balancer_ip: None,
                }),
            ),
            (
                "absent",
                json!({"order": {"id": uuid}}),
                Ok(OrderCreated {
                    id: Id::Text(uuid.into()),
                    load_balancer_ip: None,
                }),
            ),
            (
                "not an IP address",
                json!({"order": {"id": uuid, "load_balancer_ip": "pending"}}),
                Ok(OrderCreated {
                    id: Id::Text(uuid.into()),
                    load_balancer_ip: None,
                }),
            ),
            (
                "a list is nobody's answer to one create",
                json!({"orders": [{"id": uuid}]}),
                Err("expected an order object with id; got an object with fields orders".into()),
            ),
            (
                "errors in a 2xx",
                json!({"errors": ["Container 1: product can't be blank"]}),
                Err("expected an order object with id; got an object with fields errors".into()),
            ),
        ];
        for (why, body, expected) in cases {
            assert_eq!(order_created(&body), expected, "{why}");
        }
    }

    #[test]
    fn order_states_are_read_in_any_status_case_and_only_for_our_order() {
        let ours = Id::Text("o-1".into());
        let state = |status: Status, text: &str, project: Option<i64>| {
            Ok(OrderState {
                status,
                status_text: text.into(),
                project_id: project.map(Id::Int),
                load_balancer_ip: None,
                project_name: None,
            })
        };
        let cases: Vec<(&str, Value, Result<OrderState, String>)> = vec![
            (
                "the guide's answer",
                json!({"order": {"id": "o-1", "status": "completed", "project": {"id": 85, "name": "x"}}}),
                state(Status::Completed, "completed", Some(85)),
            ),
            (
                "Capitalized",
                json!({"order": {"id": "o-1", "status": "Completed", "project": {"id": "85"}}}),
                state(Status::Completed, "Completed", Some(85)),
            ),
            (
                "UPPER CASE, bare",
                json!({"id": "o-1", "status": "COMPLETED", "project": {"id": 85}}),
                state(Status::Completed, "COMPLETED", Some(85)),
            ),
            (
                "completed before the project has an id",
                json!({"order": {"id": "o-1", "status": "completed", "project": {"id": null}}}),
                state(Status::Completed, "completed", None),
            ),
            (
                "project null",
                json!({"order": {"id": "o-1", "status": "processing", "project": null}}),
                state(Status::Waiting, "processing", None),
            ),
            (
                "project absent, no id shown",
                json!({"order": {"status": "Pending"}}),
                state(Status::Waiting, "Pending", None),
            ),
            (
                "failed",
                json!({"order": {"id": "o-1", "status": "FAILED"}}),
                state(Status::Failed, "FAILED", None),
            ),
            (
                "canceled, American spelling",
                json!({"order": {"id": "o-1", "status": "Canceled"}}),
                state(Status::Failed, "Canceled", None),
            ),
            (
                "a list holding ours among others",
                json!({"orders": [{"id": "o-2", "status": "completed", "project": {"id": 1}},
                                  {"id": "o-1", "status": "completed", "project": {"id": 85}}]}),
                state(Status::Completed, "completed", Some(85)),
            ),
            (
                "a bare list holding ours",
                json!([{"id": "o-1", "status": "pending"}]),
                state(Status::Waiting, "pending", None),
            ),
            (
                "a list without ours",
                json!({"orders": [{"id": "o-2", "status": "completed"}, {"id": "o-3", "status": "completed"}]}),
                Err("expected order o-1 with status; got a list of 2 items without it".into()),
            ),
            (
                "a list of one item without an id is not taken as ours",
                json!([{"status": "completed", "project": {"id": 1}}]),
                Err("expected order o-1 with status; got a list of 1 item without it".into()),
            ),
            (
                "another order",
                json!({"order": {"id": "o-2", "status": "completed", "project": {"id": 1}}}),
                Err("expected order o-1 with status; got another order".into()),
            ),
            (
                "no status",
                json!({"order": {"id": "o-1", "project": {"id": 1}}}),
                Err(
                    "expected an order object with status; got an object with fields id, project"
                        .into(),
                ),
            ),
            (
                "status a number",
                json!({"order": {"id": "o-1", "status": 3}}),
                Err("field `status` is a number".into()),
            ),
        ];
        for (why, body, expected) in cases {
            assert_eq!(order_state(&body, &ours), expected, "{why}");
        }
        let numeric = order_state(
            &json!({"order": {"id": 17, "status": "completed"}}),
            &Id::Int(17),
        );
        assert!(numeric.is_ok(), "a numeric order id matches: {numeric:?}");
        let late = order_state(
            &json!({"order": {"id": "o-1", "status": "completed", "project": {"id": 85},
                              "order_data": {"project_name": "site", "load_balancer_ip": "198.51.100.7"}}}),
            &ours,
        )
        .unwrap();
        assert_eq!(late.load_balancer_ip.as_deref(), Some("198.51.100.7"));
        assert_eq!(late.project_name.as_deref(), Some("site"));
    }

    #[test]
    fn listed_orders_are_read_in_every_list_form() {
        let expected = vec![
            Listed {
                id: Id::Text("o-1".into()),
                project_name: Some("site".into()),
            },
            Listed {
                id: Id::Int(2),
                project_name: None,
            },
        ];
        let items = json!([{"id": "o-1", "status": "completed", "project": {"id": 85, "name": "site"}},
                           {"id": "2", "status": "pending", "project": null},
                           {"status": "pending"}]);
        for (why, body) in [
            (
                "under orders (the API docs)",
                json!({"orders": items.clone()}),
            ),
            ("under data", json!({"data": items.clone()})),
            ("bare", items.clone()),
        ] {
            assert_eq!(orders(&body).as_ref(), Ok(&expected), "{why}");
        }
        assert!(orders(&json!("nope")).is_err());
    }
}
