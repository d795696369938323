//! The emulated Magento BI API over HTTP on real ports: its strictness, its
//! readings and its knobs.

use std::net::SocketAddr;

use serde_json::json;

use super::*;

const USER: &str = "bi@example.com";
const PASSWORD: &str = "pw-sandbox-test";
const SECRET: &str = "cs-sandbox-test";

fn options(job: Duration) -> Options {
    Options {
        username: USER.into(),
        password: PASSWORD.into(),
        client_id: 7,
        client_secret: SECRET.into(),
        token_ttl: Duration::from_secs(3600),
        job_duration: job,
        readings: Readings::default(),
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Both hosts served on real ports, and a client to call them.
struct Hosts {
    api: Api,
    base: String,
    dash: String,
    http: reqwest::Client,
}

impl Hosts {
    async fn start(job: Duration) -> Hosts {
        let api = Api::new(options(job));
        let base = serve(api.api_router()).await;
        let dash = serve(api.dashboard_router()).await;
        Hosts {
            api,
            base,
            dash,
            http: reqwest::Client::new(),
        }
    }

    async fn token(&self) -> String {
        let r = self
            .http
            .post(format!("{}/v1/tokens", self.base))
            .json(
                &json!({"username": USER, "password": PASSWORD, "grant_type": "password",
                "scope": "default", "clientId": 7, "clientSecret": SECRET}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    /// A ready client (signup done), with the given job duration for later jobs.
    async fn client(&self) -> i64 {
        let r = self
            .http
            .post(format!("{}/v3/signups", self.base))
            .json(&json!({"tier": "T100", "company": "Coco Co.", "email": "a@b.c"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "signups need no auth");
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        loop {
            let v: Value = self
                .http
                .get(format!("{}/v3/signups/{id}", self.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v["status"] == "completed" {
                return v["client_id"].as_i64().unwrap();
            }
            assert_ne!(v["status"], "failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn connection(&self, token: &str, client: i64) -> i64 {
        let r = self
            .http
            .post(format!(
                "{}/v1/v2/clients/{client}/connections/input-connections",
                self.base
            ))
            .header("cookie", format!("DASHSESS2={token}"))
            .json(&json!({"name": "new conn", "type": "mysql",
                "credentials": {"password": "db-pw"}, "properties": {"host": "db"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    async fn list(&self, token: &str, client: i64) -> (u16, Value) {
        let r = self
            .http
            .get(format!(
                "{}/v1/v2/clients/{client}/connections/input-connections?include_deleted=false",
                self.base
            ))
            .header("cookie", format!("DASHSESS2={token}"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn job(&self, token: &str, client: i64, content_type: &str, body: &str) -> u16 {
        self.http
            .post(format!("{}/v2/client/{client}/job", self.dash))
            .header("cookie", format!("dashuid=1; DASHSESS2={token}"))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn jobs(&self, token: &str, client: i64) -> Vec<Value> {
        self.http
            .get(format!("{}/v2/client/{client}/job/type/27", self.dash))
            .header("cookie", format!("DASHSESS2={token}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn tokens_need_every_credential_and_report_their_ttl() {
    let h = Hosts::start(Duration::ZERO).await;
    let good = json!({"username": USER, "password": PASSWORD, "grant_type": "password",
        "scope": "default", "clientId": 7, "clientSecret": SECRET});
    for (field, value, status) in [
        ("password", json!("wrong"), 401),
        ("clientSecret", json!("wrong"), 401),
        ("clientId", json!(8), 401),
        ("username", json!("x@y.z"), 401),
        ("grant_type", json!("client_credentials"), 400),
    ] {
        let mut body = good.clone();
        body[field] = value;
        let r = h
            .http
            .post(format!("{}/v1/tokens", h.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "a wrong {field}");
        let text = r.text().await.unwrap();
        assert!(!text.contains(PASSWORD) && !text.contains(SECRET), "{text}");
    }
    let v: Value = h
        .http
        .post(format!("{}/v1/tokens", h.base))
        .json(&good)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(h.api.tokens_issued(), 1);
    assert_eq!(
        h.api.issued_tokens(),
        vec![v["access_token"].as_str().unwrap()]
    );
}

#[tokio::test]
async fn each_endpoint_takes_only_its_own_credential() {
    let h = Hosts::start(Duration::ZERO).await;
    let token = h.token().await;
    let client = h.client().await;
    let invite = json!({"email": "u@x.y", "client_id": client, "force_create": 1});
    let invites = format!("{}/v3/invites", h.base);
    let cookie = format!("DASHSESS2={token}");
    let r = h
        .http
        .post(&invites)
        .header("cookie", &cookie)
        .json(&invite)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the cookie on invites");
    let r = h.http.post(&invites).json(&invite).send().await.unwrap();
    assert_eq!(r.status(), 401, "no credential on invites");
    let r = h
        .http
        .post(&invites)
        .bearer_auth("not-a-token")
        .json(&invite)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "an unknown Bearer");
    let r = h
        .http
        .post(&invites)
        .bearer_auth(&token)
        .json(&invite)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a Bearer on invites");
    assert_eq!(h.api.invites().len(), 1);

    let client_url = format!("{}/v1/clients/{client}", h.base);
    let body = json!({"name": "Coco", "properties": {"timezone": "UTC"}});
    let r = h
        .http
        .put(&client_url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a Bearer on clients");
    let r = h
        .http
        .put(&client_url)
        .header("cookie", &cookie)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the cookie on clients");
    assert_eq!(h.api.clients()[0].properties["timezone"], "UTC");

    let conns = format!(
        "{}/v1/v2/clients/{client}/connections/input-connections",
        h.base
    );
    let r = h.http.get(&conns).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 401, "a Bearer on connections");
    let r = h
        .http
        .get(format!("{}/v2/client/{client}/job/type/27", h.dash))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a Bearer on jobs");
    let r = h
        .http
        .post(format!("{}/v1/clients/{client}/autodash", h.base))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a Bearer on autodash");
}

#[tokio::test]
async fn a_token_is_refused_once_its_ttl_has_passed_or_it_was_revoked() {
    let h = Hosts::start(Duration::ZERO).await;
    let client = h.client().await;
    h.api.set_token_ttl(Duration::from_millis(150));
    let token = h.token().await;
    assert_eq!(h.list(&token, client).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = h.list(&token, client).await;
    assert_eq!(status, 401, "expired");
    assert_eq!(body["message"], "token expired");

    h.api.set_token_ttl(Duration::from_secs(60));
    let token = h.token().await;
    assert_eq!(h.list(&token, client).await.0, 200);
    h.api.revoke_tokens();
    assert_eq!(h.list(&token, client).await.0, 401, "revoked");
}

#[tokio::test]
async fn a_connection_list_holds_an_older_established_entry_and_only_this_clients() {
    let h = Hosts::start(Duration::from_millis(200)).await;
    let token = h.token().await;
    let a = h.client().await;
    let b = h.client().await;
    let ours = h.connection(&token, a).await;
    let theirs = h.connection(&token, b).await;
    let (status, list) = h.list(&token, a).await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "the older one and ours: {list:?}");
    let older = list.iter().find(|c| c["id"] != ours).unwrap();
    assert!(older["properties"]["established"].is_string());
    assert!(older["id"].as_i64().unwrap() < ours);
    let new = list.iter().find(|c| c["id"] == ours).unwrap();
    assert!(new["properties"]["established"].is_null(), "not yet");
    assert!(
        new.get("credentials").is_none(),
        "credentials are never echoed"
    );
    assert!(list
        .iter()
        .all(|c| c["id"] != theirs && c["client_id"] == a));

    tokio::time::sleep(Duration::from_millis(250)).await;
    let (_, list) = h.list(&token, a).await;
    let new = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == ours)
        .unwrap()
        .clone();
    assert!(
        new["properties"]["established"].is_string(),
        "after the job duration"
    );
    assert!(h
        .api
        .connections()
        .iter()
        .any(|c| c.id == ours && c.established));
}

#[tokio::test]
async fn the_job_endpoint_wants_a_form_with_a_connection_test_of_this_clients_connection() {
    let h = Hosts::start(Duration::ZERO).await;
    let token = h.token().await;
    let a = h.client().await;
    let b = h.client().await;
    let ours = h.connection(&token, a).await;
    let theirs = h.connection(&token, b).await;
    let good = format!("jobType=27&workload[connectionId]={ours}&workload[syncAndSample]=1");
    for (content_type, body, status, why) in [
        (
            "application/json",
            good.clone(),
            415,
            "JSON instead of a form",
        ),
        (
            FORM,
            format!("jobType=5&workload[connectionId]={ours}"),
            422,
            "another job type",
        ),
        (FORM, "jobType=27".to_string(), 422, "no connection id"),
        (
            FORM,
            "jobType=27&workload[connectionId]=999999".to_string(),
            422,
            "unknown connection",
        ),
        (
            FORM,
            format!("jobType=27&workload[connectionId]={theirs}"),
            422,
            "another client's connection",
        ),
        (FORM, good.clone(), 200, "the seed's form"),
    ] {
        assert_eq!(h.job(&token, a, content_type, &body).await, status, "{why}");
    }
    let jobs = h.api.jobs();
    let created: Vec<_> = jobs.iter().filter(|j| !j.form.is_empty()).collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].form, good);
    assert_eq!(created[0].connection_id, ours);
}

#[tokio::test]
async fn jobs_progress_over_the_job_duration_and_the_knobs_make_them_fail() {
    let h = Hosts::start(Duration::ZERO).await;
    let token = h.token().await;
    let client = h.client().await;
    let conn = h.connection(&token, client).await;
    let form = format!("jobType=27&workload[connectionId]={conn}&workload[syncAndSample]=1");

    h.api.set_job_duration(Duration::from_millis(300));
    assert_eq!(h.job(&token, client, FORM, &form).await, 200);
    let jobs = h.jobs(&token, client).await;
    assert_eq!(jobs.len(), 2, "ours and the older connection's: {jobs:?}");
    assert_eq!(jobs[0]["workload"]["connectionId"], conn, "newest first");
    assert_eq!(jobs[0]["status"]["name"], "Queued");
    assert_eq!(jobs[1]["status"]["name"], "Completed");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        h.jobs(&token, client).await[0]["status"]["name"],
        "Completed"
    );

    h.api.fail_next_connection_test();
    h.api.set_job_duration(Duration::ZERO);
    assert_eq!(h.job(&token, client, FORM, &form).await, 200);
    let jobs = h.jobs(&token, client).await;
    assert_eq!(jobs[0]["status"]["name"], "Failed");
    assert!(jobs[0]["error"].is_string());
    assert_eq!(h.job(&token, client, FORM, &form).await, 200);
    assert_eq!(
        h.jobs(&token, client).await[0]["status"]["name"],
        "Completed",
        "only the next one fails"
    );

    h.api.fail_next_signup();
    let r = h
        .http
        .post(format!("{}/v3/signups", h.base))
        .json(&json!({"company": "Doomed", "email": "d@x.y"}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v: Value = h
        .http
        .get(format!("{}/v3/signups/{id}", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "failed");
}

#[tokio::test]
async fn autodash_needs_this_clients_connection_and_invited_user() {
    let h = Hosts::start(Duration::ZERO).await;
    let token = h.token().await;
    let client = h.client().await;
    let other = h.client().await;
    let conn = h.connection(&token, client).await;
    let foreign = h.connection(&token, other).await;
    let r = h
        .http
        .post(format!("{}/v3/invites", h.base))
        .bearer_auth(&token)
        .json(&json!({"email": "u@x.y", "client_id": client}))
        .send()
        .await
        .unwrap();
    let user = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let url = format!("{}/v1/clients/{client}/autodash", h.base);
    let cookie = format!("DASHSESS2={token}");
    let body = |c: i64, u: i64| {
        json!({"connections": {"db": {"connection_id": c,
        "database": "magento_store", "table_prefix": ""}}, "package": "magento1_rjql1", "user_id": u})
    };
    for (b, status, why) in [
        (body(foreign, user), 422, "another client's connection"),
        (body(conn, 1), 422, "a user not invited"),
        (
            json!({"package": "p", "user_id": user}),
            422,
            "no connections",
        ),
        (body(conn, user), 200, "the seed's body"),
    ] {
        let r = h
            .http
            .post(&url)
            .header("cookie", &cookie)
            .json(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{why}");
        if status == 200 {
            let id = r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            let v: Value = h
                .http
                .get(format!("{url}/{id}"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(v["status"], "completed");
            assert_eq!(v["job_id"], id.as_str());
        }
    }
    let d = &h.api.dashboards()[0];
    assert_eq!(
        (d.connection_id, d.user_id, d.package.as_str()),
        (conn, user, "magento1_rjql1")
    );
}

#[tokio::test]
async fn faults_and_call_counts_apply_to_both_hosts() {
    let h = Hosts::start(Duration::ZERO).await;
    let token = h.token().await;
    let client = h.client().await;
    let conn = h.connection(&token, client).await;
    h.api.knobs.inject(faults::FaultRule {
        method: Some("POST".into()),
        path_contains: "/job".into(),
        fault: faults::Fault::Status { status: 503 },
        times: 1,
    });
    let form = format!("jobType=27&workload[connectionId]={conn}&workload[syncAndSample]=1");
    assert_eq!(h.job(&token, client, FORM, &form).await, 503);
    assert_eq!(h.job(&token, client, FORM, &form).await, 200);
    assert_eq!(h.api.knobs.calls("POST /v2/client/{client_id}/job"), 2);
    assert_eq!(h.api.knobs.calls("POST /v1/tokens"), 1);
    assert_eq!(h.api.knobs.calls("POST /v3/signups"), 1);
    let r = h
        .http
        .get(format!("{}/_sandbox/calls", h.base))
        .send()
        .await
        .unwrap();
    let calls: Value = r.json().await.unwrap();
    assert_eq!(
        calls["POST /v1/v2/clients/{client_id}/connections/input-connections"],
        1
    );
}

impl Hosts {
    /// The job list's raw answer.
    async fn job_answer(&self, token: &str, client: i64) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/v2/client/{client}/job/type/27", self.dash))
            .header("cookie", format!("DASHSESS2={token}"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Replaces the readings over HTTP, as an operator would.
    async fn post_readings(&self, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/_sandbox/readings", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn each_reading_shapes_the_answers_as_its_knob_says() {
    let h = Hosts::start(Duration::ZERO).await;
    let token = h.token().await;
    let client = h.client().await;
    let conn = h.connection(&token, client).await;
    let form = format!("jobType=27&workload[connectionId]={conn}&workload[syncAndSample]=1");
    let created = h
        .http
        .post(format!("{}/v2/client/{client}/job", h.dash))
        .header("cookie", format!("DASHSESS2={token}"))
        .header("content-type", FORM)
        .body(form.clone())
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(created["id"].is_null(), "the seed's POST answer: {created}");
    let (ours, older) = (h.api.jobs()[1].id, h.api.jobs()[0].id);

    type Check = fn(&Value, i64, i64, i64);
    let cases: Vec<(Value, Check)> = vec![
        (json!({}), |v, ours, older, conn| {
            assert_eq!(v[0]["id"], ours, "newest first");
            assert_eq!(v[1]["id"], older);
            assert_eq!(v[0]["workload"]["connectionId"], conn);
            assert_eq!(v[0]["status"]["name"], "Completed");
            assert!(v[0]["start"].is_string() && v[0].get("x_sandbox").is_none());
        }),
        (json!({"job_list": "oldest_first"}), |v, ours, older, _| {
            assert_eq!(
                (v[0]["id"].as_i64(), v[1]["id"].as_i64()),
                (Some(older), Some(ours))
            );
        }),
        (json!({"job_list": "object"}), |v, ours, _, _| {
            assert!(v.is_object(), "{v}");
            assert_eq!(v["id"], ours, "the latest job alone");
        }),
        (json!({"job_list": "wrapped"}), |v, ours, _, _| {
            assert_eq!(v["jobs"][0]["id"], ours);
            assert_eq!(v["total"], 2);
        }),
        (json!({"job_list": "wrapped_data"}), |v, ours, _, _| {
            assert_eq!(v["data"][0]["id"], ours);
        }),
        (
            json!({"job_status": "string", "status_case": "upper"}),
            |v, _, _, _| {
                assert_eq!(v[0]["status"], "COMPLETED");
            },
        ),
        (json!({"status_case": "lower"}), |v, _, _, _| {
            assert_eq!(v[0]["status"]["name"], "completed");
        }),
        (json!({"ids": "string"}), |v, ours, _, conn| {
            assert_eq!(v[0]["id"], ours.to_string());
            assert_eq!(v[0]["workload"]["connectionId"], conn.to_string());
        }),
        (json!({"job_workload": "absent"}), |v, _, _, _| {
            assert!(v[0].get("workload").is_none(), "{v}");
        }),
        (
            json!({"nulls": "absent", "extra_fields": true}),
            |v, _, _, _| {
                let job = v[0].as_object().unwrap();
                assert!(job.values().all(|f| !f.is_null()), "no nulls: {v}");
                assert!(job.contains_key("x_sandbox"), "{v}");
                assert!(
                    v[0]["status"].get("x_sandbox").is_some(),
                    "inside objects too"
                );
            },
        ),
    ];
    for (readings, check) in cases {
        let r = h.post_readings(readings.clone()).await;
        assert_eq!(r.status(), 200, "{readings}");
        let (status, answer) = h.job_answer(&token, client).await;
        assert_eq!(status, 200, "{readings}");
        check(&answer, ours, older, conn);
    }

    h.post_readings(json!({"job_id_on_create": "id", "ids": "string"}))
        .await;
    let created = h
        .http
        .post(format!("{}/v2/client/{client}/job", h.dash))
        .header("cookie", format!("DASHSESS2={token}"))
        .header("content-type", FORM)
        .body(form)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let newest = h.api.jobs().last().unwrap().id;
    assert_eq!(created["id"], newest.to_string(), "the POST gives the id");

    h.post_readings(json!({"connection_list": "wrapped", "established": "bool"}))
        .await;
    let (_, list) = h.list(&token, client).await;
    let entries = list["connections"].as_array().unwrap();
    assert!(entries
        .iter()
        .all(|c| c["properties"]["established"].is_boolean()));
    h.post_readings(json!({"established": "epoch"})).await;
    let (_, list) = h.list(&token, client).await;
    assert!(list[0]["properties"]["established"].is_i64(), "{list}");

    h.post_readings(json!({"status_case": "upper", "ids": "string"}))
        .await;
    let signup = h
        .http
        .post(format!("{}/v3/signups", h.base))
        .json(&json!({"company": "C", "email": "c@x.y"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let v: Value = h
        .http
        .get(format!(
            "{}/v3/signups/{}",
            h.base,
            signup["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "COMPLETED");
    assert!(v["client_id"].is_string(), "{v}");

    // GET shows the readings in force; {} restores the seed's.
    let shown: Readings = h
        .http
        .get(format!("{}/_sandbox/readings", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown.status_case, StatusCase::Upper);
    assert_eq!(shown, h.api.readings());
    h.post_readings(json!({})).await;
    assert_eq!(h.api.readings(), Readings::default());
    let r = h.post_readings(json!({"job_lists": "object"})).await;
    assert!(r.status().is_client_error(), "an unknown knob is refused");
    let r = h.post_readings(json!({"job_list": "sideways"})).await;
    assert!(r.status().is_client_error(), "an unknown value is refused");
    assert_eq!(
        h.api.knobs.calls("GET /_sandbox/readings"),
        0,
        "not counted"
    );
}

#[tokio::test]
async fn ids_written_back_as_strings_are_refused_as_the_seed_shows_numbers() {
    let h = Hosts::start(Duration::ZERO).await;
    let token = h.token().await;
    let client = h.client().await;
    let r = h
        .http
        .post(format!("{}/v3/invites", h.base))
        .bearer_auth(&token)
        .json(&json!({"email": "u@x.y", "client_id": client.to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "client_id must be a number");
}

#[test]
fn readings_come_from_config_and_every_knob_is_in_the_sandbox_help() {
    let defaults = crate::config::Settings::load(None).unwrap();
    assert_eq!(
        defaults.sandbox.magento_bi,
        Readings::default(),
        "default.toml says the seed's readings"
    );
    let env: HashMap<String, String> = [
        ("ONBOARDING__SANDBOX__MAGENTO_BI__JOB_LIST", "object"),
        ("ONBOARDING__SANDBOX__MAGENTO_BI__IDS", "string"),
        ("ONBOARDING__SANDBOX__MAGENTO_BI__EXTRA_FIELDS", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let s = crate::config::Settings::load_with_env(None, Some(env)).unwrap();
    let r = &s.sandbox.magento_bi;
    assert_eq!(
        (r.job_list, r.ids, r.extra_fields),
        (JobList::Object, Ids::String, true)
    );
    let options = crate::sandbox::SandboxOptions::from_settings(&s.sandbox, &s.providers);
    assert_eq!(
        &options.magento_bi.readings, r,
        "the sandbox starts with them"
    );

    use clap::CommandFactory;
    let mut cli = crate::cli::Cli::command();
    let help = cli
        .find_subcommand_mut("sandbox")
        .unwrap()
        .render_long_help()
        .to_string();
    let knobs = serde_json::to_value(Readings::default()).unwrap();
    for key in knobs.as_object().unwrap().keys() {
        assert!(
            help.contains(&format!("  {key} ")),
            "sandbox --help lists {key}"
        );
        assert!(
            crate::config::DEFAULT_TOML.contains(&format!("\n{key} = ")),
            "default.toml documents {key}"
        );
    }
    for value in ["oldest_first", "wrapped_data", "upper", "absent", "epoch"] {
        assert!(help.contains(value), "sandbox --help lists {value}");
    }
}

#[test]
fn options_debug_hides_the_accepted_secrets() {
    let text = format!("{:?}", options(Duration::ZERO));
    assert!(!text.contains(PASSWORD) && !text.contains(SECRET), "{text}");
}
