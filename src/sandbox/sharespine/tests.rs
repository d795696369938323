//! The emulated Sharespine Reseller API over HTTP on a real port: its
//! strictness, its readings and its knobs.

use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::sandbox::faults::{Fault, FaultRule};

use super::*;

const USER: &str = "reseller";
const PASSWORD: &str = "sandbox-test-password";
const RESELLER: &str = "test-reseller";

struct Served {
    api: Api,
    base: String,
    client: reqwest::Client,
}

async fn served() -> Served {
    let api = Api::new(Options {
        username: USER.into(),
        password: PASSWORD.into(),
        reseller_code: RESELLER.into(),
        readings: Readings::default(),
    });
    let addr = serve_for_tests(&api).await;
    Served {
        api,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
    }
}

impl Served {
    /// A POST that passes every header check.
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .basic_auth(USER, Some(PASSWORD))
            .header("X-Reseller", RESELLER)
            .header("User-Agent", "sandbox-tests/1.0")
    }

    async fn call(&self, path: &str, body: Value) -> (u16, Value) {
        answer(self.post(path).json(&body)).await
    }

    async fn tenant(&self, reference: &str) -> String {
        let (status, body) = self
            .call("/reseller/tenant", json!({"customerReference": reference}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["codeName"].as_str().unwrap().to_string()
    }

    async fn user(&self, code_name: &str, login: &str) -> (u16, Value) {
        self.call(
            &format!("/reseller/tenant/{code_name}/user"),
            json!({"login": login}),
        )
        .await
    }
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("sandbox answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_401() {
    let s = served().await;
    let url = format!("{}/reseller/tenant", s.base);
    let body = json!({"customerReference": "c"});
    for (request, why) in [
        (s.client.post(&url), "no Authorization"),
        (
            s.client.post(&url).basic_auth(USER, Some("wrong")),
            "wrong password",
        ),
        (
            s.client.post(&url).basic_auth("someone", Some(PASSWORD)),
            "wrong username",
        ),
        (s.client.post(&url).bearer_auth(PASSWORD), "not Basic"),
    ] {
        let response = request
            .header("X-Reseller", RESELLER)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{why}");
        assert!(response.headers().contains_key("www-authenticate"), "{why}");
    }
    assert!(s.api.tenants().is_empty());
}

#[tokio::test]
async fn missing_or_wrong_reseller_gets_400_with_a_message() {
    let s = served().await;
    let url = format!("{}/reseller/tenant", s.base);
    let body = json!({"customerReference": "c"});
    let authed = || s.client.post(&url).basic_auth(USER, Some(PASSWORD));
    let (status, answer_body) = answer(authed().json(&body)).await;
    assert_eq!(status, 400);
    assert_eq!(answer_body["message"], "missing X-Reseller header");
    let (status, answer_body) =
        answer(authed().header("X-Reseller", "someone-else").json(&body)).await;
    assert_eq!(status, 400);
    assert_eq!(answer_body["message"], "unknown reseller");
    assert!(s.api.tenants().is_empty());
}

#[tokio::test]
async fn a_post_that_is_not_json_gets_415_and_a_body_that_is_not_an_object_400() {
    let s = served().await;
    let (status, _) = answer(
        s.post("/reseller/tenant")
            .header("Content-Type", "text/plain")
            .body(r#"{"customerReference":"c"}"#),
    )
    .await;
    assert_eq!(status, 415, "text/plain");
    let (status, _) = answer(
        s.post("/reseller/tenant")
            .body(r#"{"customerReference":"c"}"#),
    )
    .await;
    assert_eq!(status, 415, "no Content-Type");
    let (status, _) = answer(
        s.post("/reseller/tenant")
            .header("Content-Type", "application/json; charset=utf-8")
            .body(r#"{"customerReference":"c"}"#),
    )
    .await;
    assert_eq!(status, 201, "a charset parameter is fine");
    for bad in ["not json", "[1]", ""] {
        let (status, _) = answer(
            s.post("/reseller/tenant")
                .header("Content-Type", "application/json")
                .body(bad),
        )
        .await;
        assert_eq!(status, 400, "{bad:?}");
    }
}

#[tokio::test]
async fn missing_required_fields_get_422() {
    let s = served().await;
    let code = s.tenant("acme").await;
    for (path, body, message) in [
        (
            "/reseller/tenant".to_string(),
            json!({"fullName": "Acme"}),
            "customerReference is required",
        ),
        (
            "/reseller/tenant".to_string(),
            json!({"customerReference": 7}),
            "customerReference must be a string",
        ),
        (
            "/reseller/tenant".to_string(),
            json!({"customerReference": ""}),
            "customerReference must not be empty",
        ),
        (
            format!("/reseller/tenant/{code}/user"),
            json!({"fullName": "Anna"}),
            "login is required",
        ),
        (
            format!("/reseller/tenant/{code}/user"),
            json!({"login": ".."}),
            "login must not be . or ..",
        ),
        (
            format!("/reseller/tenant/{code}/connection"),
            json!({"type": 1}),
            "type must be a string",
        ),
    ] {
        let (status, answer_body) = s.call(&path, body.clone()).await;
        assert_eq!(status, 422, "{path} {body}");
        assert_eq!(answer_body["message"], message, "{path} {body}");
    }
    assert_eq!(s.api.tenants().len(), 1);
    assert!(s.api.tenant(&code).unwrap().users.is_empty());
    assert!(s.api.tenant(&code).unwrap().connections.is_empty());
}

#[tokio::test]
async fn unknown_tenant_or_login_gets_404() {
    let s = served().await;
    let code = s.tenant("acme").await;
    for path in [
        "/reseller/tenant/prefixnobody-1/user".to_string(),
        "/reseller/tenant/prefixnobody-1/connection".to_string(),
        "/reseller/tenant/prefixnobody-1/login/anna".to_string(),
        format!("/reseller/tenant/{code}/login/anna"),
    ] {
        let (status, body) = s.call(&path, json!({"login": "anna", "path": "/"})).await;
        assert_eq!(status, 404, "{path}");
        assert!(body["message"].is_string(), "{path}");
    }
}

#[tokio::test]
async fn duplicate_login_is_rejected_with_422() {
    let s = served().await;
    let first = s.tenant("acme").await;
    let second = s.tenant("other").await;
    assert_eq!(s.user(&first, "anna").await.0, 201);
    let (status, body) = s.user(&first, "anna").await;
    assert_eq!(status, 422);
    assert_eq!(body, json!({"message": "login already exists"}));
    assert_eq!(
        s.user(&second, "anna").await.0,
        201,
        "logins are unique per tenant only"
    );
    assert_eq!(s.api.tenant(&first).unwrap().logins(), ["anna"]);
}

#[tokio::test]
async fn code_names_count_tenants_per_customer_reference() {
    let s = served().await;
    assert_eq!(s.tenant("mycustomer").await, "prefixmycustomer-1");
    assert_eq!(s.tenant("other").await, "prefixother-1");
    assert_eq!(
        s.tenant("MyCustomer").await,
        "prefixmycustomer-2",
        "references differing in case share a count, so code names stay unique"
    );
    let tenants = s.api.tenants();
    assert_eq!(tenants.len(), 3);
    assert_eq!(tenants[2].customer_reference, "MyCustomer");
    assert_eq!(tenants[2].body, json!({"customerReference": "MyCustomer"}));
}

#[tokio::test]
async fn connections_get_a_32_hex_id_and_default_to_type_api() {
    let s = served().await;
    let code = s.tenant("acme").await;
    let (status, body) = s
        .call(
            &format!("/reseller/tenant/{code}/connection"),
            json!({"active": true, "name": "API", "configuration": {}}),
        )
        .await;
    assert_eq!(status, 201);
    let id = body["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(body["type"], "api");
    assert_eq!(s.api.tenant(&code).unwrap().connections[0].id, id);
}

#[tokio::test]
async fn login_urls_point_at_the_sandbox_and_expire_in_five_minutes() {
    let s = served().await;
    let code = s.tenant("acme").await;
    assert_eq!(s.user(&code, "anna b").await.0, 201);
    let (status, body) = s
        .call(
            &format!("/reseller/tenant/{code}/login/anna%20b"),
            json!({"path": "/orders"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/orders");
    let url = body["loginUrl"].as_str().unwrap();
    let prefix = format!("{}/_tokenlogin/anna%20b/", s.base);
    assert!(url.starts_with(&prefix), "{url}");
    assert_eq!(url.len(), prefix.len() + 32, "{url}");
    let expires = OffsetDateTime::parse(
        body["expires"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ahead = expires - OffsetDateTime::now_utc();
    assert!(
        ahead > time::Duration::minutes(4) && ahead <= time::Duration::minutes(5),
        "{ahead}"
    );
    let held = &s.api.tenant(&code).unwrap().login_urls[0];
    assert_eq!((held.url.as_str(), held.login.as_str()), (url, "anna b"));

    let page = s.client.get(url).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200, "the link leads somewhere");
    let (status, body) = s
        .call(
            &format!("/reseller/tenant/{code}/login/anna%20b"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, &body["path"]),
        (200, &json!("/")),
        "path defaults to /"
    );
}

#[tokio::test]
async fn calls_are_counted_per_route_and_faults_apply() {
    let s = served().await;
    let code = s.tenant("acme").await;
    s.api.knobs.inject(FaultRule {
        method: Some("POST".into()),
        path_contains: "/user".into(),
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    assert_eq!(s.user(&code, "anna").await.0, 503);
    assert_eq!(s.user(&code, "anna").await.0, 201);
    assert_eq!(s.api.knobs.calls("POST /reseller/tenant"), 1);
    assert_eq!(
        s.api.knobs.calls("POST /reseller/tenant/{code_name}/user"),
        2
    );
    assert_eq!(s.api.user_agents(), ["sandbox-tests/1.0"]);
}

impl Served {
    /// A GET that passes every header check.
    async fn read(&self, path: &str) -> (u16, Value) {
        answer(
            self.client
                .get(format!("{}{path}", self.base))
                .basic_auth(USER, Some(PASSWORD))
                .header("X-Reseller", RESELLER),
        )
        .await
    }
}

#[tokio::test]
async fn tenants_users_and_connections_are_listed_in_the_form_the_readings_say() {
    let s = served().await;
    let code = s.tenant("acme").await;
    s.tenant("other").await;
    assert_eq!(s.user(&code, "anna").await.0, 201);
    let (_, conn) = s
        .call(
            &format!("/reseller/tenant/{code}/connection"),
            json!({"name": "API"}),
        )
        .await;
    let (status, tenants) = s.read("/reseller/tenant").await;
    assert_eq!(status, 200);
    assert_eq!(
        tenants[0]["codeName"],
        code.as_str(),
        "bare by default: {tenants}"
    );
    assert_eq!(tenants[0]["customerReference"], "acme");
    assert_eq!(tenants.as_array().unwrap().len(), 2);
    for (lists, key) in [(List::Named, "users"), (List::Data, "data")] {
        s.api.set_readings(Readings {
            lists,
            ..Readings::default()
        });
        let (_, users) = s.read(&format!("/reseller/tenant/{code}/user")).await;
        assert_eq!(users[key][0]["login"], "anna", "{lists:?}: {users}");
    }
    let (_, connections) = s.read(&format!("/reseller/tenant/{code}/connection")).await;
    assert_eq!(connections["data"][0]["id"], conn["id"]);
    assert_eq!(s.read("/reseller/tenant/prefixnobody-1/user").await.0, 404);
    s.api.set_readings(Readings {
        reads: Reads::NotOffered,
        ..Readings::default()
    });
    for path in [
        "/reseller/tenant".to_string(),
        format!("/reseller/tenant/{code}/user"),
    ] {
        assert_eq!(s.read(&path).await.0, 404, "{path}: not offered");
    }
    let unauthorized = s
        .client
        .get(format!("{}/reseller/tenant", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401, "credentials first");
    assert_eq!(s.api.knobs.calls("GET /reseller/tenant"), 3);
}

#[tokio::test]
async fn every_create_answers_in_the_shape_its_reading_says() {
    let s = served().await;
    s.api.set_readings(Readings {
        tenant_created: TenantAnswer::Named,
        user_created: UserAnswer::WithoutLogin,
        connection_created: Envelope::Named,
        connection_ids: ConnectionIds::NumericString,
        login_url_field: LoginUrlField::SnakeCase,
        expires: Expires::UnixSeconds,
        extra_fields: true,
        ..Readings::default()
    });
    let (_, tenant) = s
        .call(
            "/reseller/tenant",
            json!({"customerReference": "acme", "fullName": "Acme"}),
        )
        .await;
    assert_eq!(tenant["tenant"]["codeName"], "prefixacme-1", "{tenant}");
    assert_eq!(tenant["tenant"]["fullName"], "Acme");
    assert_eq!(tenant["meta"]["version"], 1, "extra fields at the top");
    let (status, user) = s.user("prefixacme-1", "anna").await;
    assert_eq!(status, 201);
    assert!(user.get("login").is_none(), "{user}");
    assert_eq!(user["x_sandbox_note"], "an unknown field");
    let (_, conn) = s
        .call("/reseller/tenant/prefixacme-1/connection", json!({}))
        .await;
    assert_eq!(conn["connection"]["id"], "000000009001", "{conn}");
    let (_, url) = s
        .call("/reseller/tenant/prefixacme-1/login/anna", json!({}))
        .await;
    let held = &s.api.tenant("prefixacme-1").unwrap().login_urls[0];
    assert_eq!(url["login_url"], held.url.as_str(), "{url}");
    let expires = OffsetDateTime::parse(&held.expires, &Rfc3339).unwrap();
    assert_eq!(url["expires"], expires.unix_timestamp());

    s.api.set_readings(Readings {
        user_created: UserAnswer::NoBody,
        expires: Expires::Offset,
        ..Readings::default()
    });
    let response = s
        .post("/reseller/tenant/prefixacme-1/user")
        .json(&json!({"login": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.bytes().await.unwrap().len(), 0, "no body");
    let (_, url) = s
        .call("/reseller/tenant/prefixacme-1/login/bob", json!({}))
        .await;
    let at = OffsetDateTime::parse(url["expires"].as_str().unwrap(), &Rfc3339).unwrap();
    assert_eq!(at.offset().whole_hours(), 2, "{url}");
}

#[tokio::test]
async fn readings_are_shown_and_replaced_over_http() {
    let s = served().await;
    let (status, shown) = answer(s.client.get(format!("{}/_sandbox/readings", s.base))).await;
    assert_eq!(status, 200);
    assert_eq!(shown, serde_json::to_value(Readings::default()).unwrap());
    let set = |body: Value| {
        s.client
            .post(format!("{}/_sandbox/readings", s.base))
            .json(&body)
            .send()
    };
    let response = set(json!({"expires": "unix_millis", "errors": "plain_text"}))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(s.api.readings().expires, Expires::UnixMillis);
    assert_eq!(s.api.readings().errors, ErrorForm::PlainText);
    set(json!({})).await.unwrap();
    assert_eq!(s.api.readings(), Readings::default());
}

#[tokio::test]
async fn error_bodies_take_the_form_their_reading_says() {
    let s = served().await;
    let code = s.tenant("acme").await;
    s.user(&code, "anna").await;
    for (form, content_type, body) in [
        (
            ErrorForm::Message,
            "application/json",
            r#"{"message":"login already exists"}"#,
        ),
        (
            ErrorForm::Error,
            "application/json",
            r#"{"error":"login already exists"}"#,
        ),
        (
            ErrorForm::Errors,
            "application/json",
            r#"{"errors":["login already exists"]}"#,
        ),
        (
            ErrorForm::PlainText,
            "text/plain; charset=utf-8",
            "login already exists",
        ),
    ] {
        s.api.set_readings(Readings {
            errors: form,
            ..Readings::default()
        });
        let response = s
            .post(&format!("/reseller/tenant/{code}/user"))
            .json(&json!({"login": "anna"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 422, "{form:?}");
        assert_eq!(response.headers()["content-type"], content_type, "{form:?}");
        assert_eq!(response.text().await.unwrap(), body, "{form:?}");
    }
}
