//! Sharespine answers, read tolerantly: every reading the module doc's
//! inventory lists is accepted, and an answer still unreadable gives a reason
//! naming what was expected and what came (a shape, field names, a count),
//! never a value from the body (a login URL is a credential of sorts).

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

pub use crate::providers::describe;

/// The object an answer stands for: the object itself when it has one of
/// `needs`, else the object under one of `envelopes` that has one. `None` when
/// neither: the caller says what it expected.
fn object<'a>(
    body: &'a Value,
    envelopes: &[&str],
    needs: &[&str],
) -> Option<&'a Map<String, Value>> {
    let top = body.as_object()?;
    let has = |o: &Map<String, Value>| {
        needs
            .iter()
            .any(|k| o.get(*k).is_some_and(|v| !v.is_null()))
    };
    if has(top) {
        return Some(top);
    }
    envelopes
        .iter()
        .filter_map(|e| top.get(*e)?.as_object())
        .find(|inner| has(inner))
}

/// An identifier Sharespine hands out (a `codeName`, a connection id), as the
/// text it is: a string, or a number written in decimal. It must be usable as
/// one URL path segment.
fn identifier(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return None,
    };
    let usable = !text.is_empty()
        && text.len() <= 200
        && !matches!(text.as_str(), "." | "..")
        && !text.chars().any(char::is_control);
    usable.then_some(text)
}

fn identifier_field(object: &Map<String, Value>, key: &str) -> Result<String, String> {
    match object.get(key) {
        None | Some(Value::Null) => Err(format!("missing field `{key}`")),
        Some(v) => identifier(v)
            .ok_or_else(|| format!("field `{key}` is {}, not a usable identifier", describe(v))),
    }
}

/// `POST /reseller/tenant`: `{"codeName": ..}` (the seed), the tenant echoed
/// with it, or either under `tenant` or `data`. A number is its decimal text.
pub fn code_name(body: &Value) -> Result<String, String> {
    let tenant = object(body, &["tenant", "data"], &["codeName"]).ok_or_else(|| {
        format!(
            "expected a tenant object with codeName; got {}",
            describe(body)
        )
    })?;
    identifier_field(tenant, "codeName")
}

/// `POST /reseller/tenant/{codeName}/user`: the login the tenant user got. The
/// seed says it is the one sent, and shows it echoed; an answer without one
/// (an empty body, `{}`, an object without `login`) means the one sent.
pub fn created_login(body: Option<&Value>, sent: &str) -> Result<String, String> {
    let Some(body) = body else {
        return Ok(sent.to_string());
    };
    let Value::Object(_) = body else {
        return Err(format!(
            "expected a tenant user object; got {}",
            describe(body)
        ));
    };
    match object(body, &["user", "data"], &["login"]).and_then(|u| u.get("login")) {
        None => Ok(sent.to_string()),
        Some(v) => identifier(v)
            .ok_or_else(|| format!("field `login` is {}, not a usable login", describe(v))),
    }
}

/// `POST /reseller/tenant/{codeName}/connection`: its `id` (a hex string in
/// the seed; a number is its decimal text), bare or under `connection` or `data`.
pub fn connection_id(body: &Value) -> Result<String, String> {
    let connection = object(body, &["connection", "data"], &["id"]).ok_or_else(|| {
        format!(
            "expected a connection object with id; got {}",
            describe(body)
        )
    })?;
    identifier_field(connection, "id")
}

/// The URL field's names: the seed's first.
const URL_FIELDS: [&str; 4] = ["loginUrl", "loginURL", "login_url", "url"];
/// The expiry field's names: the seed's first.
const EXPIRES_FIELDS: [&str; 3] = ["expires", "expiresAt", "expires_at"];

/// `POST /reseller/tenant/{codeName}/login/{login}`.
#[derive(Debug, PartialEq)]
pub struct LoginUrl {
    pub url: String,
    /// RFC 3339 in UTC; `None` when the answer has no expiry (null or absent).
    pub expires: Option<String>,
}

pub fn login_url(body: &Value) -> Result<LoginUrl, String> {
    let answer = object(body, &["login", "data"], &URL_FIELDS).ok_or_else(|| {
        format!(
            "expected a login URL object with loginUrl; got {}",
            describe(body)
        )
    })?;
    let (key, value) = URL_FIELDS
        .iter()
        .find_map(|k| Some((*k, answer.get(*k).filter(|v| !v.is_null())?)))
        .expect("found by object()");
    let url = value
        .as_str()
        .filter(|s| url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https")))
        .ok_or_else(|| format!("field `{key}` is {}, not an http(s) URL", describe(value)))?;
    let expires = match EXPIRES_FIELDS
        .iter()
        .find_map(|k| Some((*k, answer.get(*k).filter(|v| !v.is_null())?)))
    {
        None => None,
        Some((key, value)) => Some(expiry(value).ok_or_else(|| {
            format!(
                "field `{key}` is {}, neither an RFC 3339 time nor a Unix timestamp",
                describe(value)
            )
        })?),
    };
    Ok(LoginUrl {
        url: url.to_string(),
        expires,
    })
}

/// An expiry as RFC 3339 in UTC: from RFC 3339 with any offset (the seed), or
/// a Unix timestamp in seconds or milliseconds (a number or a numeric string;
/// above 10^11 it can only be milliseconds: 10^11 seconds is the year 5138).
fn expiry(value: &Value) -> Option<String> {
    let from_number = |n: i64| {
        let seconds = if n.abs() >= 100_000_000_000 {
            n / 1000
        } else {
            n
        };
        OffsetDateTime::from_unix_timestamp(seconds).ok()
    };
    let when = match value {
        Value::Number(n) => from_number(n.as_i64()?)?,
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(n) => from_number(n)?,
            Err(_) => OffsetDateTime::parse(s.trim(), &Rfc3339).ok()?,
        },
        _ => return None,
    };
    when.to_offset(UtcOffset::UTC).format(&Rfc3339).ok()
}

/// A list answer: bare, under `<name>` or under `data`.
fn list<'a>(body: &'a Value, name: &str) -> Result<&'a [Value], String> {
    let items = match body {
        Value::Array(items) => Some(items),
        Value::Object(top) => [name, "data"]
            .iter()
            .find_map(|k| top.get(*k).and_then(Value::as_array)),
        _ => None,
    };
    items.map(Vec::as_slice).ok_or_else(|| {
        format!(
            "expected a list of {name} (bare, or under \"{name}\" or \"data\"); got {}",
            describe(body)
        )
    })
}

/// An entry of the reseller's tenant list, as far as it tells whose it is.
#[derive(Debug, PartialEq)]
pub struct ListedTenant {
    pub code_name: String,
    pub customer_reference: Option<String>,
    /// The other fields the entry shows, to compare with what was sent.
    pub fields: Map<String, Value>,
}

/// `GET /reseller/tenant`; entries without a usable `codeName` are left out.
pub fn tenants(body: &Value) -> Result<Vec<ListedTenant>, String> {
    Ok(list(body, "tenants")?
        .iter()
        .filter_map(|item| {
            let item = item.as_object()?;
            let item = match item.get("tenant") {
                Some(Value::Object(inner)) => inner,
                _ => item,
            };
            Some(ListedTenant {
                code_name: identifier(item.get("codeName")?)?,
                customer_reference: item
                    .get("customerReference")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                fields: item.clone(),
            })
        })
        .collect())
}

/// `GET /reseller/tenant/{codeName}/user`: the logins, from user objects or
/// bare strings.
pub fn logins(body: &Value) -> Result<Vec<String>, String> {
    Ok(list(body, "users")?
        .iter()
        .filter_map(|item| match item {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => {
                let o = match o.get("user") {
                    Some(Value::Object(inner)) => inner,
                    _ => o,
                };
                o.get("login").and_then(identifier)
            }
            _ => None,
        })
        .collect())
}

/// An entry of a tenant's connection list.
#[derive(Debug, PartialEq)]
pub struct ListedConnection {
    /// `None` when the entry shows no usable id.
    pub id: Option<String>,
    pub fields: Map<String, Value>,
}

/// `GET /reseller/tenant/{codeName}/connection`.
pub fn connections(body: &Value) -> Result<Vec<ListedConnection>, String> {
    Ok(list(body, "connections")?
        .iter()
        .filter_map(|item| {
            let item = item.as_object()?;
            let item = match item.get("connection") {
                Some(Value::Object(inner)) => inner,
                _ => item,
            };
            Some(ListedConnection {
                id: item.get("id").and_then(identifier),
                fields: item.clone(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn code_names_are_read_in_every_answer_form() {
        let cases: Vec<(&str, Value, Result<&str, &str>)> = vec![
            ("the seed's answer", json!({"codeName": "prefixacme-1"}), Ok("prefixacme-1")),
            (
                "the tenant echoed with it, extra fields",
                json!({"codeName": "prefixacme-1", "customerReference": "acme", "active": true, "x": {}}),
                Ok("prefixacme-1"),
            ),
            ("under tenant", json!({"tenant": {"codeName": "prefixacme-1"}}), Ok("prefixacme-1")),
            ("under data", json!({"data": {"codeName": "prefixacme-1"}, "meta": {}}), Ok("prefixacme-1")),
            ("a number", json!({"codeName": 4711}), Ok("4711")),
            (
                "a list",
                json!([{"codeName": "a"}, {"codeName": "b"}]),
                Err("expected a tenant object with codeName; got a list of 2 items"),
            ),
            (
                "no codeName",
                json!({"customerReference": "acme"}),
                Err("expected a tenant object with codeName; got an object with fields customerReference"),
            ),
            ("null", json!({"codeName": null}), Err("expected a tenant object with codeName; got an object with fields codeName")),
            (
                "not a path segment",
                json!({"codeName": ".."}),
                Err("field `codeName` is a string, not a usable identifier"),
            ),
            (
                "an object",
                json!({"codeName": {"value": "x"}}),
                Err("field `codeName` is an object with fields value, not a usable identifier"),
            ),
        ];
        for (why, body, expected) in cases {
            assert_eq!(
                code_name(&body),
                expected.map(str::to_string).map_err(str::to_string),
                "{why}"
            );
        }
    }

    #[test]
    fn a_created_users_login_is_the_one_answered_or_else_the_one_sent() {
        let cases: Vec<(&str, Option<Value>, Result<&str, &str>)> = vec![
            (
                "the seed's answer",
                Some(json!({"login": "anna", "fullName": "A"})),
                Ok("anna"),
            ),
            (
                "under user",
                Some(json!({"user": {"login": "anna"}})),
                Ok("anna"),
            ),
            ("no body", None, Ok("anna")),
            ("an empty object", Some(json!({})), Ok("anna")),
            (
                "an object without login",
                Some(json!({"id": 17})),
                Ok("anna"),
            ),
            ("login null", Some(json!({"login": null})), Ok("anna")),
            ("a numeric login", Some(json!({"login": 1234})), Ok("1234")),
            (
                "a list",
                Some(json!([{"login": "anna"}])),
                Err("expected a tenant user object; got a list of 1 item"),
            ),
            (
                "a login that is an object",
                Some(json!({"login": {"name": "anna"}})),
                Err("field `login` is an object with fields name, not a usable login"),
            ),
        ];
        for (why, body, expected) in cases {
            assert_eq!(
                created_login(body.as_ref(), "anna"),
                expected.map(str::to_string).map_err(str::to_string),
                "{why}"
            );
        }
    }

    #[test]
    fn connection_ids_are_text_whatever_their_json_type() {
        let cases: Vec<(&str, Value, Result<&str, &str>)> =
            vec![
            (
                "the seed's hex string",
                json!({"id": "00076ad40b558ecd874c5482108409ad", "type": "api"}),
                Ok("00076ad40b558ecd874c5482108409ad"),
            ),
            ("a number", json!({"id": 90210, "type": "api"}), Ok("90210")),
            ("a numeric string keeps its leading zeros", json!({"id": "007"}), Ok("007")),
            ("under connection", json!({"connection": {"id": "abc"}}), Ok("abc")),
            (
                "no id",
                json!({"type": "api", "name": "API"}),
                Err("expected a connection object with id; got an object with fields name, type"),
            ),
            (
                "a fraction",
                json!({"id": 1.5}),
                Err("field `id` is a number, not a usable identifier"),
            ),
        ];
        for (why, body, expected) in cases {
            assert_eq!(
                connection_id(&body),
                expected.map(str::to_string).map_err(str::to_string),
                "{why}"
            );
        }
    }

    #[test]
    fn login_urls_are_read_under_any_field_name_and_expiry_form() {
        let url = "https://my.test.plugboard.io/_tokenlogin/anna/abc";
        let at = "2023-04-04T13:57:16Z";
        let ok = |expires: Option<&str>| {
            Ok(LoginUrl {
                url: url.into(),
                expires: expires.map(str::to_string),
            })
        };
        let cases: Vec<(&str, Value, Result<LoginUrl, String>)> = vec![
            ("the seed's answer", json!({"path": "/", "loginUrl": url, "expires": at}), ok(Some(at))),
            ("loginURL", json!({"loginURL": url, "expires": at}), ok(Some(at))),
            ("login_url", json!({"login_url": url, "expires": at}), ok(Some(at))),
            ("url", json!({"url": url, "expires": at}), ok(Some(at))),
            ("under data", json!({"data": {"loginUrl": url, "expires": at}}), ok(Some(at))),
            ("expiresAt", json!({"loginUrl": url, "expiresAt": at}), ok(Some(at))),
            ("expires_at", json!({"loginUrl": url, "expires_at": at}), ok(Some(at))),
            (
                "an offset",
                json!({"loginUrl": url, "expires": "2023-04-04T15:57:16+02:00"}),
                ok(Some(at)),
            ),
            ("Unix seconds", json!({"loginUrl": url, "expires": 1_680_616_636}), ok(Some(at))),
            ("Unix milliseconds", json!({"loginUrl": url, "expires": 1_680_616_636_000_i64}), ok(Some(at))),
            ("seconds as a string", json!({"loginUrl": url, "expires": "1680616636"}), ok(Some(at))),
            ("expires null", json!({"loginUrl": url, "expires": null}), ok(None)),
            ("expires absent", json!({"loginUrl": url}), ok(None)),
            (
                "fractional seconds kept",
                json!({"loginUrl": url, "expires": "2023-04-04T13:57:16.5Z"}),
                ok(Some("2023-04-04T13:57:16.5Z")),
            ),
            (
                "no URL",
                json!({"path": "/", "expires": at}),
                Err("expected a login URL object with loginUrl; got an object with fields expires, path".into()),
            ),
            (
                "a URL that is not http(s)",
                json!({"loginUrl": "javascript:alert(1)"}),
                Err("field `loginUrl` is a string, not an http(s) URL".into()),
            ),
            (
                "an expiry in another format",
                json!({"loginUrl": url, "expires": "04/04/2023 13:57"}),
                Err("field `expires` is a string, neither an RFC 3339 time nor a Unix timestamp".into()),
            ),
            (
                "a list",
                json!([{"loginUrl": url}]),
                Err("expected a login URL object with loginUrl; got a list of 1 item".into()),
            ),
        ];
        for (why, body, expected) in cases {
            let got = login_url(&body);
            assert_eq!(got, expected, "{why}");
            if let Err(message) = got {
                assert!(
                    !message.contains("abc") && !message.contains("alert"),
                    "{why}: {message}"
                );
            }
        }
    }

    #[test]
    fn lists_are_read_bare_or_wrapped_and_entries_without_identity_are_left_out() {
        let tenants_items = json!([
            {"codeName": "prefixacme-1", "customerReference": "acme", "fullName": "Acme"},
            {"tenant": {"codeName": 7, "customerReference": "seven"}},
            {"customerReference": "no code name"},
            "junk"
        ]);
        for (why, body) in [
            ("bare", tenants_items.clone()),
            ("under tenants", json!({"tenants": tenants_items.clone()})),
            (
                "under data",
                json!({"data": tenants_items.clone(), "total": 4}),
            ),
        ] {
            let got = tenants(&body).unwrap_or_else(|e| panic!("{why}: {e}"));
            let seen: Vec<(&str, Option<&str>)> = got
                .iter()
                .map(|t| (t.code_name.as_str(), t.customer_reference.as_deref()))
                .collect();
            assert_eq!(
                seen,
                [("prefixacme-1", Some("acme")), ("7", Some("seven"))],
                "{why}"
            );
        }
        let users = json!([{"login": "anna", "email": "a@x"}, "bob", {"user": {"login": "carl"}}, {"email": "x"}]);
        for body in [
            users.clone(),
            json!({"users": users.clone()}),
            json!({"data": users}),
        ] {
            assert_eq!(logins(&body).unwrap(), ["anna", "bob", "carl"], "{body}");
        }
        let conns =
            json!([{"id": "abc", "type": "api", "name": "API"}, {"id": 5}, {"type": "api"}]);
        for body in [
            conns.clone(),
            json!({"connections": conns.clone()}),
            json!({"data": conns}),
        ] {
            let ids: Vec<Option<String>> = connections(&body)
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect();
            assert_eq!(ids, [Some("abc".into()), Some("5".into()), None], "{body}");
        }
        assert_eq!(
            tenants(&json!({"tenant": {"codeName": "x"}})),
            Err("expected a list of tenants (bare, or under \"tenants\" or \"data\"); got an object with fields tenant".into())
        );
    }
}
