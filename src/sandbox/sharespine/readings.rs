//! The readings: how the emulated API answers where the seed leaves an answer
//! open, one knob per open point, and how each knob shapes an answer.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// How the emulated API answers where the seed leaves an answer open: one knob
/// per open point of the provider module's inventory. Every default is the
/// seed's own example.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Readings {
    /// `POST /reseller/tenant`.
    pub tenant_created: TenantAnswer,
    /// `POST /reseller/tenant/{codeName}/user`.
    pub user_created: UserAnswer,
    /// `POST /reseller/tenant/{codeName}/connection`: bare (the seed) or under `connection`.
    pub connection_created: Envelope,
    /// Connection ids (chosen when a connection is made).
    pub connection_ids: ConnectionIds,
    /// The login URL's field name.
    pub login_url_field: LoginUrlField,
    /// The login URL's expiry.
    pub expires: Expires,
    /// The three lists: bare, under their name, or under `data`.
    pub lists: List,
    /// Whether the three lists are offered at all (404 when not).
    pub reads: Reads,
    /// Unknown fields added to every answer, at the top and inside objects.
    pub extra_fields: bool,
    /// The form of every error body the API itself writes (injected faults keep theirs).
    pub errors: ErrorForm,
}

/// `POST /reseller/tenant`'s answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantAnswer {
    /// `{"codeName": ..}` (the seed).
    #[default]
    CodeName,
    /// The tenant as received, with its `codeName`.
    Echo,
    /// `{"tenant": {<the tenant with its codeName>}}`.
    Named,
}

/// `POST /reseller/tenant/{codeName}/user`'s answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserAnswer {
    /// The user as received, `login` included (the seed).
    #[default]
    Echo,
    /// `{"user": {..}}`.
    Named,
    /// The user as received, without `login`.
    WithoutLogin,
    /// No body at all.
    NoBody,
}

/// An object answer bare (the seed) or under its name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    #[default]
    Bare,
    Named,
}

/// Connection ids: 32 hex digits (the seed), numbers, or zero-padded numeric strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionIds {
    #[default]
    Hex,
    Number,
    NumericString,
}

/// `loginUrl` (the seed), `url` or `login_url`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginUrlField {
    #[default]
    LoginUrl,
    Url,
    SnakeCase,
}

/// The login URL's `expires`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expires {
    /// RFC 3339 in UTC, `...Z` (the seed).
    #[default]
    Rfc3339,
    /// RFC 3339 at `+02:00`.
    Offset,
    /// Unix seconds, a number.
    UnixSeconds,
    /// Unix milliseconds, a number.
    UnixMillis,
    Null,
    Absent,
}

/// A list answer bare, under its name (`tenants`, `users`, `connections`) or under `data`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum List {
    #[default]
    Bare,
    Named,
    Data,
}

/// Whether the reads are offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reads {
    #[default]
    Offered,
    /// Every read answers 404.
    NotOffered,
}

/// Error bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorForm {
    /// `{"message": "login already exists"}`.
    #[default]
    Message,
    /// `{"error": "login already exists"}`.
    Error,
    /// `{"errors": ["login already exists"]}`.
    Errors,
    /// `login already exists`, as `text/plain`.
    PlainText,
}

/// The readings knobs, for `onboarding-worker sandbox --help`
/// (see [`crate::sandbox::readings_help`]).
pub const READINGS_HELP: &str = "\
Sharespine: [sandbox.sharespine], ONBOARDING__SANDBOX__SHARESPINE__<KEY>, or at run time
POST /_sandbox/readings on the Sharespine port.
  tenant_created      code_name (default, {\"codeName\": ..}) | echo (the tenant as sent, with
                      its codeName) | named ({\"tenant\": {..}})
  user_created        echo (default, the user as sent) | named ({\"user\": {..}})
                      | without_login (as sent, without login) | no_body
  connection_created  bare (default) | named ({\"connection\": {..}})
  connection_ids      hex (default, 32 hex digits) | number | numeric_string (zero-padded)
  login_url_field     login_url (default, loginUrl) | url | snake_case (login_url)
  expires             rfc3339 (default, ...Z) | offset (RFC 3339 at +02:00) | unix_seconds
                      | unix_millis | null | absent: the login URL's expiry
  lists               bare (default) | named ({\"tenants\": [...]}, users, connections)
                      | data ({\"data\": [...]}): the three GET lists
  reads               offered (default) | not_offered (the three GET lists answer 404)
  extra_fields        false (default) | true (unknown fields in every answer and object)
  errors              message (default, {\"message\": ..}) | error ({\"error\": ..})
                      | errors ({\"errors\": [..]}) | plain_text";

/// Every reading, one open point at a time, then all at once: for tests that
/// run the same onboarding under each.
pub fn each_reading() -> Vec<(&'static str, Readings)> {
    let seed = Readings::default;
    vec![
        ("the seed's own answers", seed()),
        (
            "the tenant echoed with its codeName",
            Readings {
                tenant_created: TenantAnswer::Echo,
                ..seed()
            },
        ),
        (
            "the tenant under tenant",
            Readings {
                tenant_created: TenantAnswer::Named,
                ..seed()
            },
        ),
        (
            "the user under user",
            Readings {
                user_created: UserAnswer::Named,
                ..seed()
            },
        ),
        (
            "the user without its login",
            Readings {
                user_created: UserAnswer::WithoutLogin,
                ..seed()
            },
        ),
        (
            "the user created without a body",
            Readings {
                user_created: UserAnswer::NoBody,
                ..seed()
            },
        ),
        (
            "the connection under connection",
            Readings {
                connection_created: Envelope::Named,
                ..seed()
            },
        ),
        (
            "connection ids as numbers",
            Readings {
                connection_ids: ConnectionIds::Number,
                ..seed()
            },
        ),
        (
            "connection ids as zero-padded numeric strings",
            Readings {
                connection_ids: ConnectionIds::NumericString,
                ..seed()
            },
        ),
        (
            "the login URL as url",
            Readings {
                login_url_field: LoginUrlField::Url,
                ..seed()
            },
        ),
        (
            "the login URL as login_url",
            Readings {
                login_url_field: LoginUrlField::SnakeCase,
                ..seed()
            },
        ),
        (
            "the expiry at +02:00",
            Readings {
                expires: Expires::Offset,
                ..seed()
            },
        ),
        (
            "the expiry in Unix seconds",
            Readings {
                expires: Expires::UnixSeconds,
                ..seed()
            },
        ),
        (
            "the expiry in Unix milliseconds",
            Readings {
                expires: Expires::UnixMillis,
                ..seed()
            },
        ),
        (
            "the expiry null",
            Readings {
                expires: Expires::Null,
                ..seed()
            },
        ),
        (
            "the expiry absent",
            Readings {
                expires: Expires::Absent,
                ..seed()
            },
        ),
        (
            "lists under their name",
            Readings {
                lists: List::Named,
                ..seed()
            },
        ),
        (
            "lists under data",
            Readings {
                lists: List::Data,
                ..seed()
            },
        ),
        (
            "no reads offered",
            Readings {
                reads: Reads::NotOffered,
                ..seed()
            },
        ),
        (
            "unknown extra fields everywhere",
            Readings {
                extra_fields: true,
                ..seed()
            },
        ),
        (
            "every reading but the seed's at once",
            Readings {
                tenant_created: TenantAnswer::Named,
                user_created: UserAnswer::NoBody,
                connection_created: Envelope::Named,
                connection_ids: ConnectionIds::NumericString,
                login_url_field: LoginUrlField::Url,
                expires: Expires::UnixMillis,
                lists: List::Data,
                reads: Reads::NotOffered,
                extra_fields: true,
                errors: ErrorForm::PlainText,
            },
        ),
    ]
}

impl Readings {
    /// Fields no client asked for, inside an object.
    fn extras(&self, object: &mut Map<String, Value>) {
        if self.extra_fields {
            object.insert("x_sandbox_note".into(), json!("an unknown field"));
            object.insert("links".into(), json!({"self": null}));
        }
    }

    /// `object` bare, or under `name` (with unknown fields at the top too).
    pub(super) fn object(&self, named: bool, name: &str, mut object: Map<String, Value>) -> Value {
        self.extras(&mut object);
        if !named {
            return Value::Object(object);
        }
        let mut top = Map::new();
        top.insert(name.into(), Value::Object(object));
        if self.extra_fields {
            top.insert("meta".into(), json!({"version": 1}));
        }
        Value::Object(top)
    }

    pub(super) fn list(&self, name: &str, items: Vec<Value>) -> Value {
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut item| {
                if let Some(o) = item.as_object_mut() {
                    self.extras(o);
                }
                item
            })
            .collect();
        let key = match self.lists {
            List::Bare => return Value::Array(items),
            List::Named => name,
            List::Data => "data",
        };
        let mut top = Map::new();
        top.insert(key.into(), Value::Array(items));
        if self.extra_fields {
            top.insert(
                "total".into(),
                json!(top[key].as_array().map_or(0, Vec::len)),
            );
        }
        Value::Object(top)
    }
}
