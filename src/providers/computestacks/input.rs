//! The `input` of a computestacks onboard request (CONTRACT §4): checked once
//! by `plan` (every message, so it is pure), then read by the steps. The inner
//! objects are the provider's own request bodies and go out as given, unknown
//! fields kept. Messages name the field, never its value: a value may be a
//! password.

use serde_json::{json, Map, Value};

use crate::engine::step::StepError;

/// Required non-empty strings of `input.user`, as the provider requires them.
const USER_FIELDS: [&str; 5] = [
    "fname",
    "lname",
    "email",
    "password",
    "password_confirmation",
];

/// The API credential's name when the request gives none.
pub const DEFAULT_CREDENTIAL_NAME: &str = "onboarding-worker";

/// Checks `input`; the error is the `invalid_request` message.
pub fn validate(input: &Value) -> Result<(), String> {
    let input = input.as_object().ok_or("input must be an object")?;

    let user = object(input, "input", "user")?;
    for field in USER_FIELDS {
        match user.get(field) {
            None | Some(Value::Null) => return Err(format!("input.user.{field} is required")),
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(_) => return Err(format!("input.user.{field} must be a non-empty string")),
        }
    }

    match input.get("api_credential") {
        None | Some(Value::Null) => {}
        Some(Value::Object(credential)) => match credential.get("name") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(_) => {
                return Err("input.api_credential.name must be a non-empty string".to_string())
            }
        },
        Some(_) => return Err("input.api_credential must be an object".to_string()),
    }

    let order = object(input, "input", "order")?;
    let containers = match order.get("containers") {
        None | Some(Value::Null) => return Err("input.order.containers is required".into()),
        Some(Value::Array(c)) if c.is_empty() => {
            return Err("input.order.containers must not be empty".into())
        }
        Some(Value::Array(c)) => c,
        Some(_) => return Err("input.order.containers must be an array".into()),
    };
    for (i, container) in containers.iter().enumerate() {
        let at = format!("input.order.containers[{i}]");
        let container = container
            .as_object()
            .ok_or_else(|| format!("{at} must be an object"))?;
        let resources = object(container, &at, "resources")?;
        let product_id = resources.get("product_id").filter(|v| !v.is_null());
        let product = resources.get("product").filter(|v| !v.is_null());
        match (product_id, product) {
            (None, None) => return Err(format!("{at}.resources needs product_id or product")),
            // Two answers to one question: which one the customer meant is not ours to guess.
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{at}.resources has both product_id and product; give one"
                ))
            }
            (Some(id), None) if id.as_i64().is_none() => {
                return Err(format!("{at}.resources.product_id must be an integer"))
            }
            (None, Some(name)) if name.as_str().is_none_or(str::is_empty) => {
                return Err(format!("{at}.resources.product must be a non-empty string"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `parent.key` as a required object.
fn object<'a>(
    parent: &'a Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<&'a Map<String, Value>, String> {
    match parent.get(key) {
        None | Some(Value::Null) => Err(format!("{at}.{key} is required")),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(format!("{at}.{key} must be an object")),
    }
}

/// Steps read an input that `plan` accepted; anything else is a bug upstream,
/// refused without a call.
fn checked(input: &Value) -> Result<&Map<String, Value>, StepError> {
    validate(input).map_err(|m| StepError::rejected(None, m))?;
    Ok(input.as_object().expect("validated as an object"))
}

/// `input.user`, the body of `POST /api/admin/users`.
pub fn user(input: &Value) -> Result<&Map<String, Value>, StepError> {
    Ok(checked(input)?["user"]
        .as_object()
        .expect("validated as an object"))
}

/// `input.api_credential` with its default name filled in.
pub fn api_credential(input: &Value) -> Result<Value, StepError> {
    let mut credential = checked(input)?
        .get("api_credential")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if credential.get("name").is_none_or(Value::is_null) {
        credential.insert("name".into(), json!(DEFAULT_CREDENTIAL_NAME));
    }
    Ok(Value::Object(credential))
}

/// `input.order`, the body of `POST /api/orders` before product names are resolved.
pub fn order(input: &Value) -> Result<Map<String, Value>, StepError> {
    Ok(checked(input)?["order"]
        .as_object()
        .expect("validated as an object")
        .clone())
}

/// The `resources` object of every container of a validated order.
pub fn resources_mut(
    order: &mut Map<String, Value>,
) -> impl Iterator<Item = &mut Map<String, Value>> {
    order
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get_mut("resources").and_then(Value::as_object_mut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        json!({
            "user": {"fname": "Ada", "lname": "Lovelace", "email": "ada@example.com",
                     "password": "pw", "password_confirmation": "pw", "external_id": "crm-1"},
            "api_credential": {"name": "billing"},
            "order": {"project_name": "site", "location_id": 1,
                      "containers": [{"image_id": 4, "resources": {"product": "small"}},
                                     {"image_id": 5, "resources": {"product_id": 2}}]}
        })
    }

    /// Sets (`Some`) or removes (`None`) the value at the JSON pointer `at` of a
    /// valid input (the whole input when `at` is empty) and checks the verdict.
    fn check(why: &str, at: &str, edit: Option<Value>, expected: Result<(), &str>) {
        let mut input = valid();
        if at.is_empty() {
            input = edit.expect("a whole input");
        } else {
            let (parent, key) = at.rsplit_once('/').unwrap();
            let parent = input
                .pointer_mut(parent)
                .unwrap_or_else(|| panic!("{why}: no {parent}"));
            match (parent, edit) {
                (Value::Array(items), Some(v)) => items[key.parse::<usize>().unwrap()] = v,
                (Value::Object(map), Some(v)) => {
                    map.insert(key.to_string(), v);
                }
                (Value::Object(map), None) => {
                    map.remove(key);
                }
                _ => panic!("{why}: cannot edit {at}"),
            }
        }
        assert_eq!(validate(&input), expected.map_err(str::to_string), "{why}");
    }

    /// (why, JSON pointer, new value or removal, expected verdict)
    type Case = (
        &'static str,
        &'static str,
        Option<Value>,
        Result<(), &'static str>,
    );

    #[test]
    fn plan_validation_names_the_offending_field() {
        let ok = Ok(());
        let cases: Vec<Case> = vec![
            ("the contract's example", "", Some(valid()), ok),
            ("api_credential is optional", "/api_credential", None, ok),
            (
                "api_credential may be null",
                "/api_credential",
                Some(Value::Null),
                ok,
            ),
            (
                "api_credential without a name",
                "/api_credential",
                Some(json!({})),
                ok,
            ),
            (
                "unknown user fields are fine",
                "/user/merge_labels",
                Some(json!([{"a": "b"}])),
                ok,
            ),
            (
                "input not an object",
                "",
                Some(json!([])),
                Err("input must be an object"),
            ),
            ("no user", "/user", None, Err("input.user is required")),
            (
                "user not an object",
                "/user",
                Some(json!("ada")),
                Err("input.user must be an object"),
            ),
            (
                "no fname",
                "/user/fname",
                None,
                Err("input.user.fname is required"),
            ),
            (
                "lname a number",
                "/user/lname",
                Some(json!(7)),
                Err("input.user.lname must be a non-empty string"),
            ),
            (
                "empty email",
                "/user/email",
                Some(json!("")),
                Err("input.user.email must be a non-empty string"),
            ),
            (
                "no password",
                "/user/password",
                None,
                Err("input.user.password is required"),
            ),
            (
                "null confirmation",
                "/user/password_confirmation",
                Some(Value::Null),
                Err("input.user.password_confirmation is required"),
            ),
            (
                "api_credential a string",
                "/api_credential",
                Some(json!("billing")),
                Err("input.api_credential must be an object"),
            ),
            (
                "api_credential name a number",
                "/api_credential/name",
                Some(json!(1)),
                Err("input.api_credential.name must be a non-empty string"),
            ),
            ("no order", "/order", None, Err("input.order is required")),
            (
                "order an array",
                "/order",
                Some(json!([])),
                Err("input.order must be an object"),
            ),
            (
                "no containers",
                "/order/containers",
                None,
                Err("input.order.containers is required"),
            ),
            (
                "containers empty",
                "/order/containers",
                Some(json!([])),
                Err("input.order.containers must not be empty"),
            ),
            (
                "containers an object",
                "/order/containers",
                Some(json!({})),
                Err("input.order.containers must be an array"),
            ),
            (
                "container a number",
                "/order/containers/1",
                Some(json!(3)),
                Err("input.order.containers[1] must be an object"),
            ),
            (
                "no resources",
                "/order/containers/0/resources",
                None,
                Err("input.order.containers[0].resources is required"),
            ),
            (
                "resources without a product",
                "/order/containers/0/resources",
                Some(json!({})),
                Err("input.order.containers[0].resources needs product_id or product"),
            ),
            (
                "both product and product_id",
                "/order/containers/0/resources",
                Some(json!({"product": "small", "product_id": 1})),
                Err(
                    "input.order.containers[0].resources has both product_id and product; give one",
                ),
            ),
            (
                "product_id a string",
                "/order/containers/1/resources/product_id",
                Some(json!("2")),
                Err("input.order.containers[1].resources.product_id must be an integer"),
            ),
            (
                "product_id a fraction",
                "/order/containers/1/resources/product_id",
                Some(json!(2.5)),
                Err("input.order.containers[1].resources.product_id must be an integer"),
            ),
            (
                "product a number",
                "/order/containers/0/resources/product",
                Some(json!(1)),
                Err("input.order.containers[0].resources.product must be a non-empty string"),
            ),
            (
                "product empty",
                "/order/containers/0/resources/product",
                Some(json!("")),
                Err("input.order.containers[0].resources.product must be a non-empty string"),
            ),
        ];
        for (why, at, edit, expected) in cases {
            check(why, at, edit, expected);
        }
    }

    #[test]
    fn a_validation_message_never_quotes_a_value() {
        let mut input = valid();
        input["user"]["password"] = json!(["hunter2"]);
        let msg = validate(&input).unwrap_err();
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn api_credential_defaults_its_name_and_keeps_other_fields() {
        let mut input = valid();
        input.as_object_mut().unwrap().remove("api_credential");
        assert_eq!(
            api_credential(&input).unwrap(),
            json!({"name": "onboarding-worker"})
        );
        input["api_credential"] = json!({"note": "x"});
        assert_eq!(
            api_credential(&input).unwrap(),
            json!({"name": "onboarding-worker", "note": "x"})
        );
        input["api_credential"] = json!({"name": "billing"});
        assert_eq!(api_credential(&input).unwrap(), json!({"name": "billing"}));
    }
}
