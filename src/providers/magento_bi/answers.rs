//! Tolerant readers of the Magento BI answers: every reading the module doc's
//! inventory lists is accepted, anything else fails with what was expected and
//! the shape that came (never a value: ids, hosts and tokens stay out of
//! messages).
//!
//! Field types ([`Id`], [`Status`], [`Established`], and the job fields in
//! [`super::jobs`]) have hand-written `Deserialize` impls that go through a
//! `serde_json::Value`, so their errors are phrases of ours ("whose status is
//! a number") and never echo the provider's text. `null` reads as absent
//! everywhere; unknown fields are ignored everywhere.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::{Map, Value};

// The job list's readers live in `jobs`; the steps reach them through here.
pub(super) use super::jobs::{pick_job, Job, OurTest, Pick, CONNECTION_TEST, EXPECTED_JOBS};

/// The shape of a JSON value in a few words, never its content.
pub(super) fn shape(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(s) if s.is_empty() => "an empty string".into(),
        Value::String(_) => "a string".into(),
        Value::Array(a) if a.is_empty() => "an empty list".into(),
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Object(o) if o.is_empty() => "an empty object".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Why `serde_json::from_value` refused an object, as a phrase that follows
/// "an object ": serde's "missing field `x`" becomes "without x"; our own
/// deserializers already speak in such phrases.
fn phrase(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.strip_prefix("missing field `") {
        Some(rest) => format!("without {}", rest.trim_end_matches('`')),
        None => text,
    }
}

/// Reads an object as `T`; `Err` is "an object without status" and the like.
pub(super) fn object_as<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<T, String> {
    if !v.is_object() {
        return Err(shape(v));
    }
    serde_json::from_value(v.clone()).map_err(|e| format!("an object {}", phrase(&e)))
}

/// `v`, or its `data` object when `v` is an object without `key` that wraps
/// its content in `{"data": {...}}`.
pub(super) fn unwrap_data<'a>(v: &'a Value, key: &str) -> &'a Value {
    match v.get(key) {
        Some(found) if !found.is_null() => v,
        _ => match v.get("data") {
            Some(inner @ Value::Object(_)) => inner,
            _ => v,
        },
    }
}

// ---- ids -----------------------------------------------------------------

/// An id as the provider spells it. A number and the same number written as a
/// string are one id ([`Id::Num`]); other text stays text (signup and autodash
/// ids are UUIDs). Written back as a JSON number when numeric, as the seed's
/// request bodies show every id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Id {
    Num(i64),
    Text(String),
}

impl Id {
    /// `None` for null and the empty string (no id yet).
    pub(super) fn read(v: &Value) -> Result<Option<Id>, String> {
        match v {
            Value::Null => Ok(None),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Some(Id::Num(i)))
                } else if let Some(u) = n.as_u64() {
                    Ok(Some(Id::Text(u.to_string())))
                } else {
                    match n.as_f64() {
                        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                            Ok(Some(Id::Num(f as i64)))
                        }
                        _ => Err("with an id given as a fractional number".into()),
                    }
                }
            }
            Value::String(s) => Ok(Id::parse(s)),
            other => Err(format!("with an id given as {}", shape(other))),
        }
    }

    /// Text as an id: numeric text (without leading zeros) is a number.
    pub(super) fn parse(text: &str) -> Option<Id> {
        let t = text.trim();
        if t.is_empty() {
            return None;
        }
        Some(match t.parse::<i64>() {
            Ok(n) if n.to_string() == t => Id::Num(n),
            _ => Id::Text(t.to_string()),
        })
    }

    /// As the seed writes ids in request bodies: a number when numeric.
    pub(super) fn to_value(&self) -> Value {
        match self {
            Id::Num(n) => Value::from(*n),
            Id::Text(t) => Value::from(t.as_str()),
        }
    }

    pub(super) fn number(&self) -> Option<i64> {
        match self {
            Id::Num(n) => Some(*n),
            Id::Text(_) => None,
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Num(n) => write!(f, "{n}"),
            Id::Text(t) => f.write_str(t),
        }
    }
}

/// For `#[serde(default, deserialize_with = "opt_id")]`: null, `""` and absent are `None`.
pub(super) fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Id>, D::Error> {
    let v = Value::deserialize(d)?;
    Id::read(&v).map_err(de::Error::custom)
}

// ---- statuses ------------------------------------------------------------

/// What a status word means to a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// `completed` or `complete`, in any letter case.
    Completed,
    /// `failed`, `failure`, `error`, `errored`, `cancelled`, `canceled`.
    Failed,
    /// Anything else (`queued`, `pending`, `running`, words we do not know):
    /// asked again until the poll's deadline.
    Waiting,
}

/// A job's status: a bare word (`"completed"`, the signup and autodash answers)
/// or an object with a `name` (`{"name": "Completed", "id": 3}`, the dashboard
/// host's jobs), compared without regard to letter case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Status {
    /// As sent (trimmed), for logs.
    pub(super) word: String,
}

impl Status {
    pub(super) fn read(v: &Value) -> Result<Status, String> {
        let word = match v {
            Value::Null => return Err("without status".into()),
            Value::String(s) => s,
            Value::Object(o) => match o.get("name") {
                Some(Value::String(s)) => s,
                None | Some(Value::Null) => return Err("whose status has no name".into()),
                Some(other) => return Err(format!("whose status.name is {}", shape(other))),
            },
            other => return Err(format!("whose status is {}", shape(other))),
        };
        let word = word.trim();
        if word.is_empty() {
            return Err("whose status is an empty string".into());
        }
        Ok(Status { word: word.into() })
    }

    pub(super) fn phase(&self) -> Phase {
        let w = self.word.to_ascii_lowercase();
        match w.as_str() {
            "completed" | "complete" => Phase::Completed,
            "failed" | "failure" | "error" | "errored" | "cancelled" | "canceled" => Phase::Failed,
            _ => Phase::Waiting,
        }
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Status::read(&v).map_err(de::Error::custom)
    }
}

// ---- connections ---------------------------------------------------------

/// `properties.established`: set once the connection is made. The seed shows a
/// timestamp; `true`, a Unix time and any other non-empty text count as set;
/// null, absent, `false`, `0`, `""`, `"0"`, `"false"` and MySQL's zero date as not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Established(pub(super) bool);

impl Established {
    pub(super) fn read(v: &Value) -> Result<Established, String> {
        Ok(Established(match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            Value::String(s) => !matches!(
                s.trim().to_ascii_lowercase().as_str(),
                "" | "0" | "false" | "null" | "no" | "0000-00-00 00:00:00" | "0000-00-00"
            ),
            other => return Err(format!("whose established is {}", shape(other))),
        }))
    }
}

impl<'de> Deserialize<'de> for Established {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Established::read(&v).map_err(de::Error::custom)
    }
}

#[derive(Debug, Default, Deserialize)]
struct ConnectionProperties {
    #[serde(default)]
    host: Option<Value>,
    #[serde(default)]
    established: Established,
}

/// One entry of the connection list.
#[derive(Debug, Deserialize)]
pub(super) struct Connection {
    #[serde(default, deserialize_with = "opt_id")]
    pub(super) id: Option<Id>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default, rename = "type")]
    kind: Option<Value>,
    #[serde(default)]
    properties: Option<ConnectionProperties>,
}

impl Connection {
    pub(super) fn read(v: &Value) -> Result<Connection, String> {
        object_as(v)
    }

    pub(super) fn established(&self) -> bool {
        self.properties.as_ref().is_some_and(|p| p.established.0)
    }

    /// Our connection as `create_connection` sent it: the same name, the same
    /// host (letter case aside) and, when both say, the same type.
    pub(super) fn is_ours(&self, sent: &Map<String, Value>) -> bool {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::trim).map(String::from);
        let name = text(self.name.as_ref());
        if name.is_none() || name != text(sent.get("name")) {
            return false;
        }
        let host = text(self.properties.as_ref().and_then(|p| p.host.as_ref()));
        let sent_host = text(sent.get("properties").and_then(|p| p.get("host")));
        let hosts_agree = match (&host, &sent_host) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (None, None) => true,
            _ => false,
        };
        let kinds_agree = match (text(self.kind.as_ref()), text(sent.get("type"))) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(&b),
            _ => true,
        };
        hosts_agree && kinds_agree
    }
}

// ---- lists ---------------------------------------------------------------

/// A list answer in any of its readings: a bare list, a list wrapped in an
/// object, one object (the latest entry), or nothing (`null`, `{}`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Listing {
    List(Vec<Value>),
    Wrapped(Wrapped),
    One(Map<String, Value>),
    Nothing(()),
}

/// `{"jobs": [...]}`, `{"data": [...]}` and the other envelopes seen in the wild.
#[derive(Deserialize)]
struct Wrapped {
    #[serde(
        rename = "jobs",
        alias = "data",
        alias = "items",
        alias = "results",
        alias = "connections",
        alias = "input-connections",
        alias = "input_connections"
    )]
    entries: Vec<Value>,
}

/// The entries of a list answer; `Err` is the shape that came.
pub(super) fn entries(v: &Value) -> Result<Vec<Value>, String> {
    match Listing::deserialize(v) {
        Ok(Listing::List(list)) => Ok(list),
        Ok(Listing::Wrapped(w)) => Ok(w.entries),
        Ok(Listing::One(map)) if map.is_empty() => Ok(Vec::new()),
        Ok(Listing::One(map)) => Ok(vec![Value::Object(map)]),
        Ok(Listing::Nothing(())) => Ok(Vec::new()),
        Err(_) => Err(shape(v)),
    }
}

// ---- single-object answers -----------------------------------------------

/// `GET /v3/signups/{id}`: `status`, and `client_id` once completed.
#[derive(Debug, Deserialize)]
pub(super) struct Signup {
    pub(super) status: Status,
    #[serde(default, alias = "clientId", deserialize_with = "opt_id")]
    pub(super) client_id: Option<Id>,
}

pub(super) const EXPECTED_SIGNUP: &str =
    "a signup object with status (and client_id once completed)";

impl Signup {
    pub(super) fn read(v: &Value) -> Result<Signup, String> {
        object_as(unwrap_data(v, "status"))
    }
}

/// `GET /v1/clients/{client_id}/autodash/{id}`: `status`.
#[derive(Debug, Deserialize)]
pub(super) struct Autodash {
    pub(super) status: Status,
}

pub(super) const EXPECTED_AUTODASH: &str = "an autodash job object with status";

impl Autodash {
    pub(super) fn read(v: &Value) -> Result<Autodash, String> {
        object_as(unwrap_data(v, "status"))
    }
}

/// An answer that carries the new object's `id` (signup, invite, connection,
/// autodash, and the job POST, whose `id` the seed shows as null).
#[derive(Debug, Deserialize)]
pub(super) struct Created {
    #[serde(default, deserialize_with = "opt_id")]
    pub(super) id: Option<Id>,
}

impl Created {
    pub(super) fn read(v: &Value) -> Result<Created, String> {
        object_as(unwrap_data(v, "id"))
    }

    /// The id, required: `Err` describes an answer without one.
    pub(super) fn required(v: &Value) -> Result<Id, String> {
        Created::read(v)?.id.ok_or_else(|| {
            let v = unwrap_data(v, "id");
            match v.get("id") {
                Some(Value::Null) => "an object whose id is null".to_string(),
                Some(_) => "an object whose id is an empty string".to_string(),
                None => "an object without id".to_string(),
            }
        })
    }
}

/// `expires_in` of the token answer: a number or numeric text of seconds.
pub(super) fn seconds(v: &Value) -> Result<Option<f64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64()),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| "whose expires_in is text that is not a number".to_string()),
        other => Err(format!("whose expires_in is {}", shape(other))),
    }
}
