//! Each reader against every reading of the inventory, and the reasons it
//! gives for what it cannot read.

use serde_json::json;

use super::*;

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
            Err("field `id` is an object with fields value, not a number or an id string".into()),
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
