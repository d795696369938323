//! The request (CONTRACT §4): parsed and checked once into a
//! [`ValidRequest`], or the [`Invalid`] reason an operator reads.

use serde::Deserialize;
use serde_json::Value;

use crate::domain::{valid_request_id, Operation, ProviderId};

/// A request that passed the contract's checks.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub request_id: String,
    pub provider: ProviderId,
    pub operation: Operation,
    pub input: Value,
    pub return_credentials: bool,
}

/// Why a message is not a valid request; `request_id` when one was usable.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub request_id: Option<String>,
    pub provider: Option<ProviderId>,
    pub operation: Option<Operation>,
    pub message: String,
}

/// Deepest JSON nesting accepted; serde_json stops at 128 itself, this keeps
/// the message readable.
const MAX_DEPTH: usize = 64;

/// The request_id rule as operators read it in a reason.
const ID_RULE: &str = "request_id must be 1 to 128 characters of A-Z a-z 0-9 . _ : -";

fn depth_ok(body: &[u8]) -> bool {
    // Count brackets outside strings; cheap and never recursive.
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in body {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// "a number", "null", ...: what a value is, for "must be a string, not ..." reasons.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The names of the top level's members, in order, duplicates kept (a
/// `serde_json::Value` keeps only the last of two equal names).
struct TopLevelNames(Vec<String>);

impl<'de> Deserialize<'de> for TopLevelNames {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = TopLevelNames;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevelNames, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    names.push(name);
                }
                Ok(TopLevelNames(names))
            }
        }
        d.deserialize_map(Names)
    }
}

/// The first top-level name given twice, if any.
fn duplicate_name(body: &[u8]) -> Option<String> {
    let names = serde_json::from_slice::<TopLevelNames>(body).ok()?.0;
    let mut seen = std::collections::HashSet::new();
    names.into_iter().find(|n| !seen.insert(n.clone()))
}

/// Why `id` breaks the request_id rule, in words; `None` when it keeps it.
fn request_id_problem(id: &str) -> Option<String> {
    if valid_request_id(id) {
        return None;
    }
    let chars = id.chars().count();
    let what = if chars == 0 {
        "it is empty".to_string()
    } else if chars > 128 {
        format!("it is {chars} characters long")
    } else {
        let (at, c) = id
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
            .map(|(i, c)| (i + 1, c))
            .unwrap_or((1, '?'));
        format!("character {at} is {}", describe_char(c))
    };
    Some(format!("{ID_RULE}; {what}"))
}

/// A character named so a reader can tell it from its look-alikes: `'/' (U+002F)`,
/// `U+0430, not plain ASCII`, `U+0000, a control or invisible character`.
fn describe_char(c: char) -> String {
    let code = format!("U+{:04X}", c as u32);
    if c.is_ascii_graphic() || c == ' ' {
        format!("'{c}' ({code})")
    } else if c.is_control() || is_invisible(c) {
        format!("{code}, a control or invisible character")
    } else {
        format!("{code}, not plain ASCII")
    }
}

/// Characters that change how text around them looks without showing themselves:
/// zero-width and bidirectional marks, separators, the byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// `"text"`, quoted for a reason: at most [`CLIP_CHARS`] characters of caller
/// text, control and invisible characters dropped, and a note naming the first
/// character outside plain ASCII, so "shаrespine" with a Cyrillic 'а' does not
/// read as "sharespine".
fn quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in clip(s).chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    if let Some((at, c)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii()) {
        if at < CLIP_CHARS {
            out.push_str(&format!(" (character {} is {})", at + 1, describe_char(c)));
        }
    }
    out
}

/// Parses and checks a request body against CONTRACT §4, up to (not including)
/// the provider's own input checks. Reasons are short and quote caller text
/// only clipped and cleaned (see [`quote`]).
pub fn parse_request(body: &[u8], max_body_bytes: usize) -> Result<ValidRequest, Invalid> {
    let invalid = |request_id: Option<String>, message: String| Invalid {
        request_id,
        provider: None,
        operation: None,
        message,
    };
    if body.is_empty() {
        return Err(invalid(None, "the message has no body".into()));
    }
    if body.len() > max_body_bytes {
        return Err(invalid(
            None,
            format!(
                "the body is {} bytes, more than the {} allowed",
                body.len(),
                max_body_bytes
            ),
        ));
    }
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err(invalid(
            None,
            "the body is not JSON: it starts with a UTF-8 byte-order mark".into(),
        ));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(invalid(
            None,
            format!(
                "the body is not UTF-8 text (byte {} is not)",
                e.valid_up_to() + 1
            ),
        ));
    }
    if !depth_ok(body) {
        return Err(invalid(
            None,
            format!("the body nests JSON deeper than {MAX_DEPTH} levels"),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(None, format!("the body is not JSON: {e}")))?;
    let obj = match value {
        Value::Object(obj) => obj,
        other => {
            return Err(invalid(
                None,
                format!(
                    "the body is JSON but not an object: it is {}",
                    kind_of(&other)
                ),
            ))
        }
    };
    let duplicate = duplicate_name(body);
    if duplicate.as_deref() == Some("request_id") {
        return Err(invalid(None, "the body has request_id twice".into()));
    }
    let request_id = match obj.get("request_id") {
        Some(Value::String(s)) => match request_id_problem(s) {
            None => s.clone(),
            Some(problem) => return Err(invalid(None, problem)),
        },
        Some(other) => {
            return Err(invalid(
                None,
                format!("request_id must be a string, not {}", kind_of(other)),
            ))
        }
        None => return Err(invalid(None, "request_id is missing".into())),
    };
    let rid = Some(request_id.clone());
    if let Some(name) = duplicate {
        return Err(invalid(rid, format!("the body has {} twice", quote(&name))));
    }
    let provider = match obj.get("provider") {
        Some(Value::String(s)) => ProviderId::parse(s).ok_or_else(|| {
            invalid(
                rid.clone(),
                format!(
                    "unknown provider {}: expected magento_bi, computestacks or sharespine",
                    quote(s)
                ),
            )
        })?,
        Some(other) => {
            return Err(invalid(
                rid,
                format!("provider must be a string, not {}", kind_of(other)),
            ))
        }
        None => return Err(invalid(rid, "provider is missing".into())),
    };
    let with_provider = |operation: Option<Operation>, message: String| Invalid {
        request_id: rid.clone(),
        provider: Some(provider),
        operation,
        message,
    };
    let operation = match obj.get("operation") {
        None | Some(Value::Null) => Operation::Onboard,
        Some(Value::String(s)) => Operation::parse(s).ok_or_else(|| {
            with_provider(
                None,
                format!(
                    "unknown operation {}: expected onboard or login_url",
                    quote(s)
                ),
            )
        })?,
        Some(other) => {
            return Err(with_provider(
                None,
                format!("operation must be a string, not {}", kind_of(other)),
            ))
        }
    };
    let input = match obj.get("input") {
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => {
            return Err(with_provider(
                Some(operation),
                format!("input must be an object, not {}", kind_of(other)),
            ))
        }
        None => return Err(with_provider(Some(operation), "input is missing".into())),
    };
    let return_credentials = match obj.get("return_credentials") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(with_provider(
                Some(operation),
                format!(
                    "return_credentials must be true or false, not {}",
                    kind_of(other)
                ),
            ))
        }
    };
    Ok(ValidRequest {
        request_id,
        provider,
        operation,
        input,
        return_credentials,
    })
}

/// The most characters of caller text a reason quotes.
const CLIP_CHARS: usize = 64;

/// At most [`CLIP_CHARS`] characters of caller text, without control or
/// invisible characters; `…` marks a cut.
fn clip(s: &str) -> String {
    let mut kept = s.chars().filter(|c| !c.is_control() && !is_invisible(*c));
    let mut out: String = kept.by_ref().take(CLIP_CHARS).collect();
    if kept.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expect: Result<(), &str>, why: &str) {
        let got = parse_request(body.as_bytes(), 1024 * 1024);
        match (got, expect) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(fragment)) => assert!(
                e.message.contains(fragment),
                "{why}: {:?} lacks {fragment:?}",
                e.message
            ),
            (got, expect) => panic!("{why}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn requests_are_checked_as_the_contract_says() {
        let ok = r#"{"request_id":"r-1","provider":"sharespine","input":{}}"#;
        check(ok, Ok(()), "operation defaults to onboard");
        check("", Err("no body"), "empty body");
        check("not json", Err("not JSON"), "not JSON");
        check("[1,2]", Err("not an object: it is an array"), "an array");
        check(
            r#"{"provider":"sharespine","input":{}}"#,
            Err("request_id is missing"),
            "no request_id",
        );
        check(
            r#"{"request_id":"a b","provider":"sharespine","input":{}}"#,
            Err("1 to 128"),
            "space in request_id",
        );
        check(
            r#"{"request_id":7,"provider":"sharespine","input":{}}"#,
            Err("request_id must be a string"),
            "number as request_id",
        );
        check(
            r#"{"request_id":"r","provider":"acme","input":{}}"#,
            Err("unknown provider \"acme\""),
            "unknown provider",
        );
        check(
            r#"{"request_id":"r","provider":"sharespine","operation":"delete","input":{}}"#,
            Err("unknown operation"),
            "unknown operation",
        );
        check(
            r#"{"request_id":"r","provider":"sharespine"}"#,
            Err("input is missing"),
            "no input",
        );
        check(
            r#"{"request_id":"r","provider":"sharespine","input":[]}"#,
            Err("input must be an object"),
            "input array",
        );
        check(
            &format!("{}{}", "[".repeat(100), "]".repeat(100)),
            Err("deeper than"),
            "deep nesting",
        );
    }

    #[test]
    fn hostile_bodies_get_reasons_an_operator_can_act_on() {
        let req = |id: &str, provider: &str| {
            format!(r#"{{"request_id":"{id}","provider":"{provider}","input":{{}}}}"#)
        };
        check("\u{feff}{}", Err("byte-order mark"), "BOM");
        check("null", Err("not an object: it is null"), "null body");
        check(
            r#"{"request_id":"r","provider":null,"input":{}}"#,
            Err("provider must be a string, not null"),
            "null provider",
        );
        check(
            r#"{"request_id":"r","provider":"sharespine","operation":7,"input":{}}"#,
            Err("operation must be a string, not a number"),
            "number as operation",
        );
        check(
            r#"{"request_id":"a","provider":"sharespine","request_id":"b","input":{}}"#,
            Err("request_id twice"),
            "two request_ids",
        );
        check(
            &req("r", "sh\\u0430respine"),
            Err("character 3 is U+0430, not plain ASCII"),
            "a Cyrillic look-alike is named",
        );
        check(
            &req("r\\u0430", "sharespine"),
            Err("character 2 is U+0430, not plain ASCII"),
            "a look-alike in the id",
        );
        check(
            &req("r\\u0007", "sharespine"),
            Err("U+0007, a control or invisible character"),
            "a control character in the id",
        );
        let err = parse_request(b"{\"request_id\":\"r\xff\"}", 1 << 20).unwrap_err();
        assert_eq!(err.message, "the body is not UTF-8 text (byte 17 is not)");

        // Caller text is quoted clipped and cleaned, never whole.
        let long = format!("{}\\u001b[2J{}", "p".repeat(100), "q".repeat(100));
        let err = parse_request(req("r", &long).as_bytes(), 1 << 20).unwrap_err();
        assert!(
            err.message.contains(&format!("\"{}…\"", "p".repeat(64))),
            "{}",
            err.message
        );
        assert!(!err.message.contains('q') && !err.message.contains('\u{1b}'));
    }

    #[test]
    fn a_body_over_the_limit_is_invalid_without_being_parsed() {
        let big = format!(
            r#"{{"request_id":"r","provider":"sharespine","input":{{"x":"{}"}}}}"#,
            "a".repeat(2000)
        );
        let err = parse_request(big.as_bytes(), 1000).unwrap_err();
        assert!(
            err.message.contains("more than the 1000 allowed"),
            "{}",
            err.message
        );
        assert_eq!(err.request_id, None);
    }

    #[test]
    fn an_invalid_request_keeps_its_usable_id() {
        let err = parse_request(
            br#"{"request_id":"r-9","provider":"acme","input":{}}"#,
            1 << 20,
        )
        .unwrap_err();
        assert_eq!(err.request_id.as_deref(), Some("r-9"));
    }
}

/// Property tests of the request_id rule through [`parse_request`].
#[cfg(test)]
mod properties {
    use super::*;
    use crate::engine::wire::strategies::json_value;
    use proptest::prelude::*;
    use serde_json::json;

    /// Regexes of runs of allowed characters.
    const VALID_ID: &str = "[A-Za-z0-9._:-]{1,128}";
    const UP_TO_60: &str = "[A-Za-z0-9._:-]{0,60}";
    const TOO_LONG: &str = "[A-Za-z0-9._:-]{129,400}";

    fn request_with_id(id: &Value) -> Vec<u8> {
        json!({"request_id": id, "provider": "sharespine", "input": {"tenant": {"customerReference": "x"}}})
            .to_string()
            .into_bytes()
    }

    fn parse(id: &str) -> Result<ValidRequest, Invalid> {
        parse_request(&request_with_id(&json!(id)), 1 << 20)
    }

    /// A character the rule does not allow: ASCII punctuation, space, control,
    /// invisible, look-alike or any other code point.
    fn outside_the_set() -> impl Strategy<Value = char> {
        prop_oneof![
            prop::sample::select(vec![
                ' ', '/', '\\', '"', '\'', '#', '%', '+', '=', '@', '*', '\0', '\t', '\n',
                '\u{7f}', '\u{200b}', '\u{202e}', '\u{feff}', 'а', 'е', 'о', 'і', 'ѕ', 'ｓ', 'ß',
                'é',
            ]),
            any::<char>(),
        ]
        .prop_filter("outside A-Z a-z 0-9 . _ : -", |c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_request_id_of_the_allowed_characters_is_accepted(
            id in VALID_ID
        ) {
            let request = parse(&id).map_err(|e| TestCaseError::fail(e.message))?;
            prop_assert_eq!(request.request_id, id);
        }

        #[test]
        fn a_request_id_with_one_character_outside_the_set_is_refused(
            before in UP_TO_60,
            bad in outside_the_set(),
            after in UP_TO_60,
        ) {
            let id = format!("{before}{bad}{after}");
            let e = parse(&id).unwrap_err();
            prop_assert_eq!(e.request_id, None, "an unusable id is not kept");
            prop_assert!(e.message.contains("1 to 128 characters"), "{}", e.message);
            let at = format!("character {} is", before.chars().count() + 1);
            prop_assert!(e.message.contains(&at), "{} lacks {}", e.message, at);
            prop_assert!(!e.message.chars().any(char::is_control), "{:?}", e.message);
            prop_assert!(after.len() < 8 || !e.message.contains(&after), "no echo: {}", e.message);
        }

        #[test]
        fn a_request_id_longer_than_128_is_refused(
            id in TOO_LONG
        ) {
            let e = parse(&id).unwrap_err();
            prop_assert_eq!(e.request_id, None);
            let len = format!("it is {} characters long", id.len());
            prop_assert!(e.message.contains(&len), "{}", e.message);
            prop_assert!(!e.message.contains(&id[..129]), "no echo: {}", e.message);
        }

        #[test]
        fn a_request_id_that_is_not_a_string_is_refused(id in json_value()) {
            prop_assume!(!id.is_string());
            let e = parse_request(&request_with_id(&id), 1 << 20).unwrap_err();
            prop_assert!(e.message.starts_with("request_id must be a string, not "), "{}", e.message);
        }

        #[test]
        fn any_string_request_id_is_taken_exactly_when_the_rule_allows_it(id in any::<String>()) {
            let verdict = parse(&id);
            prop_assert_eq!(verdict.is_ok(), valid_request_id(&id));
            if let Err(e) = verdict {
                prop_assert!(e.message.chars().count() < 200, "short: {}", e.message);
                prop_assert!(!e.message.chars().any(char::is_control), "{:?}", e.message);
            }
        }
    }

    #[test]
    fn an_empty_request_id_is_refused() {
        let e = parse("").unwrap_err();
        assert!(e.message.contains("it is empty"), "{}", e.message);
        assert_eq!(e.request_id, None);
    }
}
