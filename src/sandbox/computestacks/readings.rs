//! The readings: how the emulated API answers where the guide leaves an answer
//! open, one knob per open point, and how each knob shapes an answer.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// How the emulated API answers where the guide leaves an answer open: one
/// knob per open point of the provider module's inventory. Every default is
/// the guide's own example.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Readings {
    /// `POST /api/admin/users` and the user lookup: `{"user": {..}}` or bare.
    pub user: Envelope,
    /// `POST /api/users/{id}/api_credentials`: `{"api_credential": {..}}` or bare.
    pub api_credential: Envelope,
    /// `POST /api/orders`: `{"order": {..}}` or bare.
    pub order_created: Envelope,
    /// `GET /api/orders/{id}`: wrapped, bare, or in a list (shaped by [`Readings::orders`]).
    pub order_shown: Shown,
    /// User, credential, product and project ids.
    pub ids: Ids,
    /// Order ids (chosen when an order is placed).
    pub order_ids: OrderIds,
    /// The letter case of order statuses.
    pub status_case: Case,
    /// `GET /api/products`.
    pub products: List,
    /// `GET /api/orders` (and [`Shown::List`]).
    pub orders: List,
    /// Where an order shows its load balancer's IP.
    pub load_balancer_ip: LoadBalancerIp,
    /// How a value not known (yet) is written: `redirect_url`, a project
    /// before completion, an absent `external_id`, a late load balancer IP.
    pub unknown: Unknown,
    /// Unknown fields added to every answer, at the top and inside objects.
    pub extra_fields: bool,
    /// The form of every error body the API itself writes (injected faults keep theirs).
    pub errors: ErrorForm,
}

/// An object answer `{"<name>": {..}}` (the guide) or the object itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    #[default]
    Named,
    Bare,
}

/// `GET /api/orders/{id}`: `{"order": {..}}` (the guide), bare, or a list of one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shown {
    #[default]
    Named,
    Bare,
    List,
}

/// Ids as numbers (the guide) or numeric strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ids {
    #[default]
    Number,
    NumericString,
}

/// Order ids as UUIDs (the guide), numbers or numeric strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderIds {
    #[default]
    Uuid,
    Number,
    NumericString,
}

/// `completed` (the guide), `Completed` or `COMPLETED`; every status alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    #[default]
    Lower,
    Capitalized,
    Upper,
}

/// A list answer: `{"<name>": [..]}` (the guide), `{"data": [..]}` or bare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum List {
    #[default]
    Named,
    Data,
    Bare,
}

/// Where an order shows its load balancer's IP. `GET /api/orders/{id}` shows
/// it in `order_data` (where the provider keeps it) whenever it is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancerIp {
    /// `load_balancer_ip` in the create's answer (the guide).
    #[default]
    AtCreate,
    /// `load_balancer: {"ip": ..}` in the create's answer.
    Nested,
    /// Not known at create (`null` or absent); known once the order is completed.
    Late,
    /// Never shown.
    Nowhere,
}

/// A value not known written as `null` (the guide) or left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    #[default]
    Null,
    Absent,
}

/// Error bodies: the provider's Rails form and the others an API may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorForm {
    /// `{"errors": ["Email has already been taken"]}`.
    #[default]
    ErrorsList,
    /// `{"errors": {"email": ["has already been taken"]}}`.
    ErrorsByField,
    /// `{"error": "Email has already been taken"}`.
    Error,
    /// `{"message": "Email has already been taken"}`.
    Message,
    /// `Email has already been taken`, as `text/plain`.
    PlainText,
}

/// The readings knobs, for `onboarding-worker sandbox --help`
/// (see [`crate::sandbox::readings_help`]).
pub const READINGS_HELP: &str = "\
ComputeStacks: [sandbox.computestacks], ONBOARDING__SANDBOX__COMPUTESTACKS__<KEY>, or at run
time POST /_sandbox/readings on the ComputeStacks port.
  user                named (default, {\"user\": {..}}) | bare: the created user and the user lookup
  api_credential      named (default, {\"api_credential\": {..}}) | bare
  order_created       named (default, {\"order\": {..}}) | bare: POST /api/orders
  order_shown         named (default, {\"order\": {..}}) | bare | list (a list of one, as orders
                      says): GET /api/orders/{id}
  ids                 number (default) | numeric_string (\"14\"): user, credential, product and
                      project ids
  order_ids           uuid (default) | number | numeric_string
  status_case         lower (default, completed) | capitalized (Completed) | upper (COMPLETED)
  products            named (default, {\"products\": [...]}) | data ({\"data\": [...]}) | bare
  orders              named (default, {\"orders\": [...]}) | data ({\"data\": [...]}) | bare
  load_balancer_ip    at_create (default, load_balancer_ip in the create's answer)
                      | nested (load_balancer: {\"ip\": ..} there) | late (known once completed)
                      | nowhere; GET /api/orders/{id} shows it in order_data once known
  unknown             null (default) | absent (unknown values left out)
  extra_fields        false (default) | true (unknown fields in every answer and object)
  errors              errors_list (default, {\"errors\": [\"Email has already been taken\"]})
                      | errors_by_field ({\"errors\": {\"email\": [\"has already been taken\"]}})
                      | error ({\"error\": ..}) | message ({\"message\": ..}) | plain_text";

/// Every reading, one open point at a time, then all at once: for tests that
/// run the same onboarding under each.
pub fn each_reading() -> Vec<(&'static str, Readings)> {
    let seed = Readings::default;
    vec![
        ("the guide's own answers", seed()),
        (
            "a created user answered bare",
            Readings {
                user: Envelope::Bare,
                ..seed()
            },
        ),
        (
            "a created credential answered bare",
            Readings {
                api_credential: Envelope::Bare,
                ..seed()
            },
        ),
        (
            "a created order answered bare",
            Readings {
                order_created: Envelope::Bare,
                ..seed()
            },
        ),
        (
            "an order shown bare",
            Readings {
                order_shown: Shown::Bare,
                ..seed()
            },
        ),
        (
            "an order shown in a list",
            Readings {
                order_shown: Shown::List,
                ..seed()
            },
        ),
        (
            "ids as numeric strings",
            Readings {
                ids: Ids::NumericString,
                ..seed()
            },
        ),
        (
            "order ids as numbers",
            Readings {
                order_ids: OrderIds::Number,
                ..seed()
            },
        ),
        (
            "order ids as numeric strings",
            Readings {
                order_ids: OrderIds::NumericString,
                ..seed()
            },
        ),
        (
            "statuses Capitalized",
            Readings {
                status_case: Case::Capitalized,
                ..seed()
            },
        ),
        (
            "statuses in UPPER CASE",
            Readings {
                status_case: Case::Upper,
                ..seed()
            },
        ),
        (
            "the catalogue under data",
            Readings {
                products: List::Data,
                ..seed()
            },
        ),
        (
            "the catalogue as a bare list",
            Readings {
                products: List::Bare,
                ..seed()
            },
        ),
        (
            "the load balancer IP nested",
            Readings {
                load_balancer_ip: LoadBalancerIp::Nested,
                ..seed()
            },
        ),
        (
            "the load balancer IP known only once the order completes",
            Readings {
                load_balancer_ip: LoadBalancerIp::Late,
                ..seed()
            },
        ),
        (
            "the load balancer IP never shown",
            Readings {
                load_balancer_ip: LoadBalancerIp::Nowhere,
                ..seed()
            },
        ),
        (
            "unknown values left out instead of null",
            Readings {
                unknown: Unknown::Absent,
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
            "every reading but the guide's at once",
            Readings {
                user: Envelope::Bare,
                api_credential: Envelope::Bare,
                order_created: Envelope::Bare,
                order_shown: Shown::List,
                ids: Ids::NumericString,
                order_ids: OrderIds::Number,
                status_case: Case::Upper,
                products: List::Bare,
                orders: List::Data,
                load_balancer_ip: LoadBalancerIp::Late,
                unknown: Unknown::Absent,
                extra_fields: true,
                errors: ErrorForm::PlainText,
            },
        ),
    ]
}

impl Readings {
    pub(super) fn id(&self, id: i64) -> Value {
        match self.ids {
            Ids::Number => json!(id),
            Ids::NumericString => json!(id.to_string()),
        }
    }

    pub(super) fn order_id(&self, id: &str) -> Value {
        match (self.order_ids, id.parse::<i64>()) {
            (OrderIds::Number, Ok(n)) => json!(n),
            _ => json!(id),
        }
    }

    pub(super) fn status(&self, status: &str) -> String {
        match self.status_case {
            Case::Lower => status.to_string(),
            Case::Upper => status.to_uppercase(),
            Case::Capitalized => {
                let mut chars = status.chars();
                chars
                    .next()
                    .map(|c| c.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            }
        }
    }

    /// Writes an unknown `key` as `null`, or leaves it out.
    pub(super) fn unknown(&self, object: &mut Map<String, Value>, key: &str) {
        if self.unknown == Unknown::Null {
            object.insert(key.to_string(), Value::Null);
        }
    }

    /// `value` under `key`, or the unknown form when `None`.
    pub(super) fn maybe(&self, object: &mut Map<String, Value>, key: &str, value: Option<Value>) {
        match value {
            Some(v) => {
                object.insert(key.to_string(), v);
            }
            None => self.unknown(object, key),
        }
    }

    /// Fields no client asked for, inside an object.
    fn extras(&self, object: &mut Map<String, Value>) {
        if self.extra_fields {
            object.insert("x_sandbox_note".into(), json!("an unknown field"));
            object.insert("links".into(), json!({"self": null, "related": []}));
        }
    }

    pub(super) fn object(
        &self,
        envelope: Envelope,
        name: &str,
        mut object: Map<String, Value>,
    ) -> Value {
        self.extras(&mut object);
        match envelope {
            Envelope::Bare => Value::Object(object),
            Envelope::Named => self.top(json!({ name: object })),
        }
    }

    pub(super) fn list(&self, form: List, name: &str, items: Vec<Map<String, Value>>) -> Value {
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut item| {
                self.extras(&mut item);
                Value::Object(item)
            })
            .collect();
        match form {
            List::Named => self.top(json!({ name: items })),
            List::Data => self.top(json!({ "data": items })),
            List::Bare => Value::Array(items),
        }
    }

    /// Unknown fields at the top of a wrapped answer.
    pub(super) fn top(&self, mut answer: Value) -> Value {
        if let (true, Some(top)) = (self.extra_fields, answer.as_object_mut()) {
            top.insert("meta".into(), json!({"api_version": 51, "page": 1}));
        }
        answer
    }
}
