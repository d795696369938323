//! The API host's handlers: tokens, signups, invites, clients, connections and autodash.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::checks::{
    fail, int_of, json_object, not_found, number_of, string_field, unauthorized, unprocessable,
    Answer, Credential, Refusal,
};
use super::readings::{ConnectionList, Readings};
use super::{
    stamp, ApiState, Client, Clock, Connection, Dashboard, Invite, Job, Phase, Signup, Store,
};

pub(super) async fn create_token(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let body = json_object(&headers, &body)?;
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
    if text("grant_type") != "password" {
        return Err(fail(StatusCode::BAD_REQUEST, "unsupported grant_type"));
    }
    if text("scope") != "default" {
        return Err(fail(StatusCode::BAD_REQUEST, "unsupported scope"));
    }
    let o = &s.options;
    let credentials_ok = text("username") == o.username
        && text("password") == o.password
        && int_of(body.get("clientId")) == Some(o.client_id)
        && text("clientSecret") == o.client_secret;
    if !credentials_ok {
        return Err(unauthorized("invalid credentials"));
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut state = s.state.lock().unwrap();
    let ttl = state.token_ttl;
    state.tokens.insert(token.clone(), Instant::now() + ttl);
    state.issued.push(token.clone());
    let id = state.issued.len() as i64;
    let now = OffsetDateTime::now_utc();
    let r = &state.readings;
    Ok(r.reply(json!({
        "refreshed_at": stamp(now),
        "oauth_client_id": r.id(o.client_id),
        "token_type": "bearer",
        "id": r.id(id),
        "access_token": token,
        "scope": "default",
        "user_id": r.id(1),
        "create_at": stamp(now),
        "client_id": null,
        "expires_at": stamp(now + ttl),
        "grant_type": "password",
        "expires_in": ttl.as_secs(),
        "refresh_token": null,
    })))
}

pub(super) async fn create_signup(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let body = json_object(&headers, &body)?;
    let company = string_field(&body, "company")?;
    string_field(&body, "email")?;
    let mut state = s.state.lock().unwrap();
    let fails = std::mem::take(&mut state.fail_next_signup);
    let clock = Clock::start(state.job_duration);
    let client_id = (!fails).then(|| {
        let id = state.next_client;
        state.next_client += 1;
        id
    });
    if let Some(client_id) = client_id {
        state.clients.insert(
            client_id,
            Client {
                id: client_id,
                name: company,
                properties: Map::new(),
                signup: Value::Object(body),
                ready: clock,
            },
        );
        seed_older_connection(&mut state, client_id);
    }
    let id = uuid::Uuid::new_v4().to_string();
    state.signups.insert(
        id.clone(),
        Signup {
            clock,
            fails,
            client_id,
        },
    );
    let url = format!("/v3/signups/{id}");
    Ok(state.readings.reply(json!({ "url": url, "id": id })))
}

/// Every client starts with an older, established connection and a completed
/// test of it, so list answers always hold an entry that is not ours.
fn seed_older_connection(state: &mut Store, client_id: i64) {
    let id = state.next_connection;
    state.next_connection += 1;
    let clock = Clock::done_ago(Duration::from_secs(86_400));
    let created = stamp(clock.started_wall);
    let properties = json!({
        "host": "legacy-db.internal", "port": "3306", "dbName": "legacy_store",
        "username": "boxcutter", "status": "1", "useSSL": "false",
        "encryption_type": "none", "created": created,
    });
    state.connections.push(Connection {
        id,
        client_id,
        name: "legacy".into(),
        kind: "mysql".into(),
        display_name: Value::Null,
        properties: properties.as_object().cloned().unwrap_or_default(),
        body: json!({ "name": "legacy", "type": "mysql", "properties": properties }),
        clock,
        preexisting: true,
    });
    let job = state.next_job;
    state.next_job += 1;
    state.jobs.push(Job {
        id: job,
        client_id,
        connection_id: id,
        sync_and_sample: 1,
        clock,
        fails: false,
        error: None,
        form: String::new(),
    });
}

pub(super) async fn get_signup(State(s): State<ApiState>, Path(id): Path<String>) -> Answer {
    let state = s.state.lock().unwrap();
    let signup = state.signups.get(&id).ok_or_else(|| not_found("signup"))?;
    let r = &state.readings;
    let answer = match (signup.clock.phase(), signup.fails, signup.client_id) {
        (Phase::Queued, ..) => json!({ "status": r.word("pending"), "client_id": null }),
        (Phase::Running, ..) => json!({ "status": r.word("running"), "client_id": null }),
        (Phase::Done, true, _) | (Phase::Done, _, None) => json!({
            "status": r.word("failed"),
            "client_id": null,
            "error": "client provisioning failed",
        }),
        (Phase::Done, false, Some(client_id)) => json!({
            "pubkey": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQsandbox",
            "status": r.word("completed"),
            "client_id": r.id(client_id),
        }),
    };
    Ok(r.reply(answer))
}

/// A client whose signup has completed, or 404.
pub(super) fn ready_client<'a>(
    state: &'a mut Store,
    raw_id: &str,
) -> Result<&'a mut Client, Refusal> {
    raw_id
        .parse::<i64>()
        .ok()
        .and_then(|id| state.clients.get_mut(&id))
        .filter(|c| c.ready.phase() == Phase::Done)
        .ok_or_else(|| not_found("client"))
}

pub(super) async fn create_invite(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.authorize(&headers, Credential::Bearer)?;
    let body = json_object(&headers, &body)?;
    let email = string_field(&body, "email")?;
    let client_id = number_of(&body, "client_id")?;
    let mut state = s.state.lock().unwrap();
    ready_client(&mut state, &client_id.to_string())
        .map_err(|_| unprocessable("client_id: no such client"))?;
    let id = state.next_user;
    state.next_user += 1;
    state.invites.push(Invite {
        id,
        client_id,
        email: email.clone(),
        body: Value::Object(body),
    });
    let r = &state.readings;
    Ok(r.reply(json!({
        "inviter_user_id": r.id(1),
        "client_id": r.id(client_id),
        "email": email,
        "id": r.id(id),
    })))
}

pub(super) async fn update_client(
    State(s): State<ApiState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let body = json_object(&headers, &body)?;
    let name = match body.get("name") {
        None => None,
        Some(Value::String(n)) => Some(n.clone()),
        Some(_) => return Err(unprocessable("name must be a string")),
    };
    let properties = match body.get("properties") {
        None => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err(unprocessable("properties must be an object")),
    };
    let mut state = s.state.lock().unwrap();
    let client = ready_client(&mut state, &client_id)?;
    if let Some(name) = name {
        client.name = name;
    }
    client.properties.extend(properties);
    let (id, answer) = (
        client.id,
        json!({ "name": client.name, "properties": client.properties }),
    );
    let r = &state.readings;
    let mut answer = answer;
    answer["id"] = r.id(id);
    Ok(r.reply(answer))
}

fn connection_json(c: &Connection, r: &Readings) -> Value {
    let mut properties = c.properties.clone();
    let established = (c.clock.phase() == Phase::Done).then(|| c.clock.end_wall());
    properties.insert("established".into(), r.established(established));
    json!({
        "namespace": "input-connections",
        "created_at": format!("{}.0", stamp(c.clock.started_wall)),
        "display_name": c.display_name,
        "id": r.id(c.id),
        "type": c.kind,
        "name": c.name,
        "meta_id": r.id(1),
        "client_id": r.id(c.client_id),
        "properties": properties,
    })
}

pub(super) async fn create_connection(
    State(s): State<ApiState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let body = json_object(&headers, &body)?;
    let name = string_field(&body, "name")?;
    let kind = string_field(&body, "type")?;
    let Some(Value::Object(mut properties)) = body.get("properties").cloned() else {
        return Err(unprocessable("properties must be an object"));
    };
    if !matches!(body.get("credentials"), Some(Value::Object(_))) {
        return Err(unprocessable("credentials must be an object"));
    }
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    let id = state.next_connection;
    state.next_connection += 1;
    let clock = Clock::start(state.job_duration);
    properties.insert("created".into(), json!(stamp(clock.started_wall)));
    let connection = Connection {
        id,
        client_id,
        name,
        kind,
        display_name: body.get("display_name").cloned().unwrap_or(Value::Null),
        properties,
        body: Value::Object(body),
        clock,
        preexisting: false,
    };
    // The create answer has no `established`, as in the seed.
    let r = state.readings.clone();
    let mut answer = connection_json(&connection, &r);
    if let Some(p) = answer["properties"].as_object_mut() {
        p.remove("established");
    }
    answer["meta_id"] = r.id(5);
    state.connections.push(connection);
    Ok(r.reply(answer))
}

pub(super) async fn list_connections(
    State(s): State<ApiState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    let r = &state.readings;
    let list: Vec<Value> = state
        .connections
        .iter()
        .filter(|c| c.client_id == client_id)
        .map(|c| connection_json(c, r))
        .collect();
    Ok(r.reply(match r.connection_list {
        ConnectionList::List => Value::Array(list),
        ConnectionList::Wrapped => json!({ "total": list.len(), "connections": list }),
    }))
}

pub(super) fn autodash_status(clock: &Clock) -> &'static str {
    match clock.phase() {
        Phase::Queued => "pending",
        Phase::Running => "running",
        Phase::Done => "completed",
    }
}

pub(super) async fn create_autodash(
    State(s): State<ApiState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let body = json_object(&headers, &body)?;
    let package = string_field(&body, "package")?;
    let db = body
        .get("connections")
        .and_then(|c| c.get("db"))
        .and_then(Value::as_object)
        .ok_or_else(|| unprocessable("connections.db is required"))?;
    let connection_id = number_of(db, "connection_id")
        .map_err(|_| unprocessable("connections.db.connection_id must be a number"))?;
    let database = db
        .get("database")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| unprocessable("connections.db.database is required"))?
        .to_string();
    let table_prefix = db
        .get("table_prefix")
        .and_then(Value::as_str)
        .ok_or_else(|| unprocessable("connections.db.table_prefix is required"))?
        .to_string();
    let user_id = number_of(&body, "user_id")?;
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    if !state
        .connections
        .iter()
        .any(|c| c.id == connection_id && c.client_id == client_id)
    {
        return Err(unprocessable(
            "connections.db.connection_id: no such connection",
        ));
    }
    if !state
        .invites
        .iter()
        .any(|i| i.id == user_id && i.client_id == client_id)
    {
        return Err(unprocessable("user_id: no such user on this client"));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let clock = Clock::start(state.job_duration);
    state.dashboards.push(Dashboard {
        id: id.clone(),
        client_id,
        connection_id,
        user_id,
        package,
        database,
        table_prefix,
        clock,
    });
    Ok(state.readings.reply(json!({ "id": id })))
}

pub(super) async fn get_autodash(
    State(s): State<ApiState>,
    Path((client_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    let dash = state
        .dashboards
        .iter()
        .find(|d| d.id == id && d.client_id == client_id)
        .ok_or_else(|| not_found("autodash job"))?;
    let r = &state.readings;
    Ok(r.reply(json!({ "status": r.word(autodash_status(&dash.clock)), "job_id": dash.id })))
}
