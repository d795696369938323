//! The emulated ComputeStacks API over HTTP on a real port: its strictness, its
//! readings and its knobs.

use base64::Engine as _;
use serde_json::json;

use crate::sandbox::faults::{Fault, FaultRule};

use super::*;

const ADMIN: (&str, &str) = ("admin", "admin-secret");

struct Served {
    api: Api,
    base: String,
    client: reqwest::Client,
}

async fn serve(order_duration: Duration) -> Served {
    let api = Api::new(Options {
        admin_username: ADMIN.0.to_string(),
        admin_password: ADMIN.1.to_string(),
        order_duration,
        readings: Readings::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = api.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Served {
        api,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
    }
}

impl Served {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some((user, pass)) = auth {
            req = req.basic_auth(user, Some(pass));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }
    async fn post(&self, path: &str, auth: Option<(&str, &str)>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, auth, Some(body))
            .await
    }
    async fn get(&self, path: &str, auth: Option<(&str, &str)>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, auth, None).await
    }

    /// A user and their API credential: (user id, username, password).
    async fn user_with_credential(&self, email: &str) -> (i64, String, String) {
        let (status, body) = self
            .post("/api/admin/users", Some(ADMIN), user_body(email))
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["user"]["id"].as_i64().unwrap();
        let (status, body) = self
            .post(
                &format!("/api/users/{id}/api_credentials"),
                Some(ADMIN),
                json!({"api_credential": {"name": "test"}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let c = &body["api_credential"];
        (
            id,
            c["username"].as_str().unwrap().to_string(),
            c["password"].as_str().unwrap().to_string(),
        )
    }
}

fn user_body(email: &str) -> Value {
    json!({"user": {
        "fname": "Ada", "lname": "Lovelace", "email": email,
        "password": "correct horse", "password_confirmation": "correct horse",
        "skip_email_confirm": true, "external_id": "crm-1",
    }})
}

fn order_body(product_id: i64) -> Value {
    json!({"order": {
        "project_name": "site", "location_id": 1,
        "containers": [{"image_id": 4, "resources": {"product_id": product_id}}],
    }})
}

#[tokio::test]
async fn admin_endpoints_need_admin_credentials() {
    let s = serve(Duration::ZERO).await;
    let (_, user, pass) = s.user_with_credential("ada@example.com").await;
    let body = user_body("bob@example.com");
    for (auth, expected, why) in [
        (None, 401, "no credentials"),
        (Some(("admin", "wrong")), 401, "wrong admin password"),
        (Some(("nobody", "x")), 401, "unknown user"),
        (
            Some((user.as_str(), pass.as_str())),
            403,
            "a user's API credential",
        ),
    ] {
        let (status, _) = s.post("/api/admin/users", auth, body.clone()).await;
        assert_eq!(status, expected, "create user with {why}");
        let (status, _) = s
            .post(
                "/api/users/1/api_credentials",
                auth,
                json!({"api_credential": {"name": "x"}}),
            )
            .await;
        assert_eq!(status, expected, "create credential with {why}");
    }
    assert_eq!(
        s.api.users().len(),
        1,
        "no user created by the refused calls"
    );
}

#[tokio::test]
async fn create_user_requires_names_email_and_a_matching_password() {
    let s = serve(Duration::ZERO).await;
    for (field, value, error) in [
        ("fname", Value::Null, "Fname can't be blank"),
        ("lname", json!(""), "Lname can't be blank"),
        ("email", Value::Null, "Email can't be blank"),
        ("email", json!("not-an-email"), "Email is invalid"),
        ("password", Value::Null, "Password can't be blank"),
        (
            "password_confirmation",
            Value::Null,
            "Password confirmation can't be blank",
        ),
        (
            "password_confirmation",
            json!("something else"),
            "Password confirmation doesn't match Password",
        ),
    ] {
        let mut body = user_body("ada@example.com");
        body["user"][field] = value;
        let (status, answer) = s.post("/api/admin/users", Some(ADMIN), body).await;
        assert_eq!(status, 422, "{field}: {answer}");
        assert!(
            answer["errors"].as_array().unwrap().contains(&json!(error)),
            "{field}: expected {error:?} in {answer}"
        );
        assert!(
            !answer.to_string().contains("correct horse"),
            "an error never echoes the password"
        );
    }
    let (status, _) = s
        .post("/api/admin/users", Some(ADMIN), json!({"name": "x"}))
        .await;
    assert_eq!(status, 400, "no `user` parameter");
    assert!(s.api.users().is_empty());
}

#[tokio::test]
async fn duplicate_email_is_rejected_with_422() {
    let s = serve(Duration::ZERO).await;
    let (status, created) = s
        .post(
            "/api/admin/users",
            Some(ADMIN),
            user_body("ada@example.com"),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(created["user"]["email"], "ada@example.com");
    assert_eq!(created["user"]["external_id"], "crm-1");
    let (status, body) = s
        .post(
            "/api/admin/users",
            Some(ADMIN),
            user_body("ADA@example.com"),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body, json!({"errors": ["Email has already been taken"]}));
    let users = s.api.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].other["skip_email_confirm"], json!(true));
    assert!(!users[0].other.contains_key("password"));
}

#[tokio::test]
async fn api_credential_acts_as_its_user_and_unknown_users_are_404() {
    let s = serve(Duration::ZERO).await;
    let (status, _) = s
        .post(
            "/api/users/42/api_credentials",
            Some(ADMIN),
            json!({"api_credential": {"name": "x"}}),
        )
        .await;
    assert_eq!(status, 404, "unknown user");
    let (user_id, user, pass) = s.user_with_credential("ada@example.com").await;
    let (status, body) = s
        .post(
            &format!("/api/users/{user_id}/api_credentials"),
            Some(ADMIN),
            json!({"api_credential": {}}),
        )
        .await;
    assert_eq!(status, 400, "empty api_credential: {body}");
    assert_eq!(
        s.api.api_credentials(),
        vec![CredentialRecord {
            id: 1,
            user_id,
            name: "test".into(),
            username: user.clone()
        }]
    );
    let (status, body) = s
        .post("/api/orders", Some((&user, &pass)), order_body(1))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(s.api.orders()[0].user_id, user_id);
    let (status, _) = s
        .post("/api/orders", Some((&user, "wrong")), order_body(1))
        .await;
    assert_eq!(status, 401, "a wrong password for a real username");
}

#[tokio::test]
async fn products_are_listed_for_any_valid_caller() {
    let s = serve(Duration::ZERO).await;
    let (_, user, pass) = s.user_with_credential("ada@example.com").await;
    assert_eq!(s.get("/api/products", None).await.0, 401);
    for auth in [ADMIN, (user.as_str(), pass.as_str())] {
        let (status, body) = s.get("/api/products", Some(auth)).await;
        assert_eq!(status, 200);
        let names: Vec<(i64, &str)> = body["products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_i64().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        assert_eq!(names, vec![(1, "small"), (2, "medium"), (3, "large")]);
    }
}

#[tokio::test]
async fn orders_need_existing_products_by_id_and_a_users_credential() {
    let s = serve(Duration::ZERO).await;
    let (_, user, pass) = s.user_with_credential("ada@example.com").await;
    let auth = Some((user.as_str(), pass.as_str()));
    let (status, body) = s.post("/api/orders", auth, order_body(99)).await;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({"errors": ["Container 1: product 99 not found"]})
    );
    let by_name = json!({"order": {"containers": [{"resources": {"product": "small"}}]}});
    assert_eq!(
        s.post("/api/orders", auth, by_name).await.0,
        422,
        "the API knows product ids only"
    );
    let no_containers = json!({"order": {"project_name": "x", "containers": []}});
    assert_eq!(s.post("/api/orders", auth, no_containers).await.0, 422);
    let mut bad_location = order_body(1);
    bad_location["order"]["location_id"] = json!(7);
    assert_eq!(s.post("/api/orders", auth, bad_location).await.0, 422);
    assert_eq!(
        s.post("/api/orders", Some(ADMIN), order_body(1)).await.0,
        403,
        "the admin does not place customers' orders"
    );
    assert_eq!(s.post("/api/orders", None, order_body(1)).await.0, 401);
    assert!(s.api.orders().is_empty());
    assert_eq!(s.api.knobs.calls("POST /api/orders"), 6);
}

#[tokio::test]
async fn an_order_is_visible_to_its_owner_only() {
    let s = serve(Duration::ZERO).await;
    let (_, ada, ada_pass) = s.user_with_credential("ada@example.com").await;
    let (_, bob, bob_pass) = s.user_with_credential("bob@example.com").await;
    let (_, body) = s
        .post("/api/orders", Some((&ada, &ada_pass)), order_body(2))
        .await;
    let path = format!("/api/orders/{}", body["order"]["id"].as_str().unwrap());
    assert_eq!(s.get(&path, Some((&ada, &ada_pass))).await.0, 200);
    assert_eq!(
        s.get(&path, Some((&bob, &bob_pass))).await.0,
        404,
        "another user"
    );
    assert_eq!(s.get(&path, Some(ADMIN)).await.0, 404, "the admin");
    assert_eq!(
        s.get("/api/orders/no-such-order", Some((&ada, &ada_pass)))
            .await
            .0,
        404
    );
    assert_eq!(s.api.knobs.calls("GET /api/orders/{id}"), 4);
}

#[tokio::test]
async fn an_order_moves_from_pending_through_processing_to_completed_with_a_project() {
    let s = serve(Duration::from_millis(900)).await;
    let (user_id, user, pass) = s.user_with_credential("ada@example.com").await;
    let auth = Some((user.as_str(), pass.as_str()));
    let (status, created) = s.post("/api/orders", auth, order_body(3)).await;
    assert_eq!(status, 201);
    let order = &created["order"];
    assert!(order["redirect_url"].is_null());
    assert_eq!(order["load_balancer_ip"], "198.51.100.1");
    let id = order["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "a uuid: {id}");
    let path = format!("/api/orders/{id}");

    let (_, shown) = s.get(&path, auth).await;
    assert_eq!(shown["order"]["status"], "pending");
    assert!(shown["order"]["project"].is_null());
    assert_eq!(shown["order"]["order_data"]["containers"][0]["image_id"], 4);
    // Wide margins: `processing` lasts from 300 to 900 ms.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(s.get(&path, auth).await.1["order"]["status"], "processing");
    tokio::time::sleep(Duration::from_millis(550)).await;
    let (_, shown) = s.get(&path, auth).await;
    assert_eq!(shown["order"]["status"], "completed");
    assert_eq!(shown["order"]["project"]["name"], "site");
    assert_eq!(shown["order"]["location"], json!({"id": 1, "name": "demo"}));
    let project_id = shown["order"]["project"]["id"].as_i64().unwrap();
    assert_eq!(
        s.api.orders(),
        vec![OrderRecord {
            id: id.to_string(),
            user_id,
            status: "completed".into(),
            project_id: Some(project_id),
            project_name: "site".into(),
            product_ids: vec![3],
            load_balancer_ip: "198.51.100.1".into(),
        }]
    );
}

#[tokio::test]
async fn failure_knobs_make_orders_fail_without_a_project() {
    let s = serve(Duration::ZERO).await;
    let (_, user, pass) = s.user_with_credential("ada@example.com").await;
    let auth = Some((user.as_str(), pass.as_str()));
    s.api.fail_next_orders(1);
    s.api.fail_orders_for_project("doomed");
    let mut doomed = order_body(1);
    doomed["order"]["project_name"] = json!("doomed");
    for body in [order_body(1), doomed, order_body(1)] {
        s.post("/api/orders", auth, body).await;
    }
    let statuses: Vec<(String, Option<i64>)> = s
        .api
        .orders()
        .into_iter()
        .map(|o| (o.status, o.project_id))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("failed".to_string(), None),
            ("failed".to_string(), None),
            ("completed".to_string(), Some(85)),
        ],
        "the next order, then the named project; the third completes"
    );
}

#[tokio::test]
async fn order_duration_can_change_at_run_time() {
    let s = serve(Duration::from_secs(3600)).await;
    s.api.set_order_duration(Duration::ZERO);
    let (_, user, pass) = s.user_with_credential("ada@example.com").await;
    s.post("/api/orders", Some((&user, &pass)), order_body(1))
        .await;
    assert_eq!(s.api.orders()[0].status, "completed");
}

#[tokio::test]
async fn shared_fault_middleware_and_control_routes_are_installed() {
    let s = serve(Duration::ZERO).await;
    s.api.knobs.inject(FaultRule {
        method: Some("GET".into()),
        path_contains: "/api/products".into(),
        fault: Fault::Status { status: 503 },
        times: 1,
    });
    assert_eq!(s.get("/api/products", Some(ADMIN)).await.0, 503);
    assert_eq!(s.get("/api/products", Some(ADMIN)).await.0, 200);
    assert_eq!(s.api.knobs.calls("GET /api/products"), 2);
    let (status, calls) = s.get("/_sandbox/calls", None).await;
    assert_eq!(status, 200);
    assert_eq!(calls["GET /api/products"], 2);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_after_authentication() {
    let s = serve(Duration::ZERO).await;
    let send = |auth: Option<(&str, &str)>| {
        let mut req = s
            .client
            .post(format!("{}/api/admin/users", s.base))
            .header("content-type", "application/json")
            .body("{not json");
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        req.send()
    };
    assert_eq!(send(None).await.unwrap().status().as_u16(), 401);
    assert_eq!(send(Some(ADMIN)).await.unwrap().status().as_u16(), 400);
}

#[tokio::test]
async fn readings_are_shown_and_replaced_over_http_and_shape_the_answers() {
    let s = serve(Duration::ZERO).await;
    let (status, shown) = s.get("/_sandbox/readings", None).await;
    assert_eq!(status, 200);
    assert_eq!(shown, serde_json::to_value(Readings::default()).unwrap());
    let set = |body: Value| {
        s.client
            .post(format!("{}/_sandbox/readings", s.base))
            .json(&body)
            .send()
    };
    let answer = set(json!({"ids": "numeric_string", "products": "bare", "user": "bare"}))
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 204);
    assert_eq!(s.api.readings().ids, Ids::NumericString);
    let (_, products) = s.get("/api/products", Some(ADMIN)).await;
    assert_eq!(
        products[0]["id"], "1",
        "a bare list, ids as strings: {products}"
    );
    let (_, user) = s
        .post(
            "/api/admin/users",
            Some(ADMIN),
            user_body("ada@example.com"),
        )
        .await;
    assert_eq!(user["id"], "1", "a bare user: {user}");
    assert_eq!(set(json!({})).await.unwrap().status().as_u16(), 204);
    assert_eq!(
        s.api.readings(),
        Readings::default(),
        "{{}} restores the guide's"
    );
}

#[tokio::test]
async fn every_answer_takes_the_shape_its_reading_says() {
    let s = serve(Duration::ZERO).await;
    let (_, user, pass) = s.user_with_credential("ada@example.com").await;
    s.api.set_readings(Readings {
        api_credential: Envelope::Bare,
        order_created: Envelope::Bare,
        order_shown: Shown::List,
        order_ids: OrderIds::Number,
        status_case: Case::Capitalized,
        orders: List::Data,
        load_balancer_ip: LoadBalancerIp::Nested,
        unknown: Unknown::Absent,
        extra_fields: true,
        ..Readings::default()
    });
    let auth = Some((user.as_str(), pass.as_str()));
    let (_, created) = s.post("/api/orders", auth, order_body(1)).await;
    assert_eq!(created["id"], 1001, "bare, a numeric id: {created}");
    assert_eq!(created["load_balancer"]["ip"], "198.51.100.1");
    assert!(created.get("redirect_url").is_none(), "left out: {created}");
    assert!(created.get("load_balancer_ip").is_none());
    assert_eq!(created["x_sandbox_note"], "an unknown field");
    let (_, shown) = s.get("/api/orders/1001", auth).await;
    let order = &shown["data"][0];
    assert_eq!(order["status"], "Completed", "{shown}");
    assert_eq!(order["project"]["id"], 85);
    assert_eq!(order["order_data"]["load_balancer_ip"], "198.51.100.1");
    assert_eq!(shown["meta"]["api_version"], 51, "extra fields at the top");
}

#[tokio::test]
async fn the_load_balancer_ip_is_shown_where_its_reading_says() {
    let s = serve(Duration::from_millis(300)).await;
    let (_, user, pass) = s.user_with_credential("ada@example.com").await;
    let auth = Some((user.as_str(), pass.as_str()));
    for (reading, at_create, shown_pending, shown_completed) in [
        (LoadBalancerIp::AtCreate, json!("198.51.100.1"), true, true),
        (LoadBalancerIp::Late, Value::Null, false, true),
        (LoadBalancerIp::Nowhere, Value::Null, false, false),
    ] {
        s.api.set_readings(Readings {
            load_balancer_ip: reading,
            ..Readings::default()
        });
        let (_, created) = s.post("/api/orders", auth, order_body(1)).await;
        assert_eq!(
            created["order"]["load_balancer_ip"], at_create,
            "{reading:?}"
        );
        let path = format!("/api/orders/{}", created["order"]["id"].as_str().unwrap());
        let (_, pending) = s.get(&path, auth).await;
        let ip = &pending["order"]["order_data"]["load_balancer_ip"];
        assert_eq!(ip.is_string(), shown_pending, "{reading:?} while pending");
        tokio::time::sleep(Duration::from_millis(350)).await;
        let (_, done) = s.get(&path, auth).await;
        let ip = &done["order"]["order_data"]["load_balancer_ip"];
        assert_eq!(
            ip.is_string(),
            shown_completed,
            "{reading:?} once completed"
        );
    }
}

#[tokio::test]
async fn users_are_found_by_id_by_base64_email_or_by_external_id_for_the_admin_only() {
    let s = serve(Duration::ZERO).await;
    let (id, user, pass) = s.user_with_credential("ada@example.com").await;
    let b64 = |e: &str| base64::engine::general_purpose::STANDARD.encode(e);
    let by_email = format!(
        "/api/admin/users/{}?find_by_email=true",
        b64("ada@example.com")
    );
    for path in [
        format!("/api/admin/users/{id}"),
        by_email.clone(),
        // Ruby's Base64.encode64 ends with a newline; the provider decodes leniently.
        format!(
            "/api/admin/users/{}%0A?find_by_email=true",
            b64("ada@example.com")
        ),
        "/api/admin/users/crm-1?find_by_external_id=true".to_string(),
    ] {
        let (status, body) = s.get(&path, Some(ADMIN)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["user"]["id"], id, "{path}");
        assert_eq!(body["user"]["external_id"], "crm-1", "{path}");
    }
    for path in [
        "/api/admin/users/99".to_string(),
        format!(
            "/api/admin/users/{}?find_by_email=true",
            b64("bob@example.com")
        ),
        format!(
            "/api/admin/users/{}?find_by_email=true",
            b64("ADA@example.com")
        ),
        "/api/admin/users/crm-2?find_by_external_id=true".to_string(),
    ] {
        assert_eq!(s.get(&path, Some(ADMIN)).await.0, 404, "{path}");
    }
    assert_eq!(
        s.get(&by_email, Some((&user, &pass))).await.0,
        403,
        "a user's credential"
    );
    assert_eq!(s.get(&by_email, None).await.0, 401);
    s.api.set_readings(Readings {
        user: Envelope::Bare,
        ..Readings::default()
    });
    assert_eq!(s.get(&by_email, Some(ADMIN)).await.1["id"], id, "bare");
}

#[tokio::test]
async fn a_user_lists_their_own_orders_only() {
    let s = serve(Duration::ZERO).await;
    let (_, ada, ada_pass) = s.user_with_credential("ada@example.com").await;
    let (_, bob, bob_pass) = s.user_with_credential("bob@example.com").await;
    let (_, placed) = s
        .post("/api/orders", Some((&ada, &ada_pass)), order_body(2))
        .await;
    let (status, listed) = s.get("/api/orders", Some((&ada, &ada_pass))).await;
    assert_eq!(status, 200);
    let orders = listed["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["id"], placed["order"]["id"]);
    assert_eq!(orders[0]["status"], "completed");
    assert_eq!(orders[0]["project"]["name"], "site");
    let (_, other) = s.get("/api/orders", Some((&bob, &bob_pass))).await;
    assert_eq!(other, json!({"orders": []}), "another user's list");
    let (_, admin) = s.get("/api/orders", Some(ADMIN)).await;
    assert_eq!(admin, json!({"orders": []}), "the admin places no orders");
    s.api.set_readings(Readings {
        orders: List::Bare,
        ..Readings::default()
    });
    let (_, bare) = s.get("/api/orders", Some((&ada, &ada_pass))).await;
    assert_eq!(bare[0]["id"], placed["order"]["id"]);
}

#[tokio::test]
async fn error_bodies_take_the_form_their_reading_says_and_faults_keep_theirs() {
    let s = serve(Duration::ZERO).await;
    s.post(
        "/api/admin/users",
        Some(ADMIN),
        user_body("ada@example.com"),
    )
    .await;
    for (form, content_type, body) in [
        (
            ErrorForm::ErrorsList,
            "application/json",
            r#"{"errors":["Email has already been taken"]}"#,
        ),
        (
            ErrorForm::ErrorsByField,
            "application/json",
            r#"{"errors":{"email":["has already been taken"]}}"#,
        ),
        (
            ErrorForm::Error,
            "application/json",
            r#"{"error":"Email has already been taken"}"#,
        ),
        (
            ErrorForm::Message,
            "application/json",
            r#"{"message":"Email has already been taken"}"#,
        ),
        (
            ErrorForm::PlainText,
            "text/plain; charset=utf-8",
            "Email has already been taken",
        ),
    ] {
        s.api.set_readings(Readings {
            errors: form,
            ..Readings::default()
        });
        let answer = s
            .client
            .post(format!("{}/api/admin/users", s.base))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .json(&user_body("ada@example.com"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 422, "{form:?}");
        assert_eq!(answer.headers()["content-type"], content_type, "{form:?}");
        assert_eq!(answer.text().await.unwrap(), body, "{form:?}");
    }
    let unauthorized = s
        .client
        .get(format!("{}/api/products", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);
    assert!(
        unauthorized.headers().contains_key("www-authenticate"),
        "headers kept"
    );
    assert_eq!(unauthorized.text().await.unwrap(), "Unauthorized");
    s.api.knobs.inject(FaultRule {
        method: None,
        path_contains: "/api/products".into(),
        fault: Fault::Status { status: 500 },
        times: 1,
    });
    let (_, fault) = s.get("/api/products", Some(ADMIN)).await;
    assert_eq!(fault, json!({"message": "injected fault"}));
}
