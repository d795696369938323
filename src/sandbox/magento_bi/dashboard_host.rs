//! The dashboard host's handlers: connection-test jobs.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::api_host::ready_client;
use super::checks::{content_type_is, fail, not_found, unprocessable, Answer, Credential};
use super::readings::{JobIdOnCreate, JobList, JobWorkload, Readings};
use super::{stamp, ApiState, Clock, Job, Phase};

/// The job type the dashboard host knows: "Connection Test".
const CONNECTION_TEST: i64 = 27;

pub(super) fn job_status(job: &Job) -> (i64, &'static str) {
    match (job.clock.phase(), job.fails) {
        (Phase::Queued, _) => (1, "Queued"),
        (Phase::Running, _) => (2, "Running"),
        (Phase::Done, false) => (3, "Completed"),
        (Phase::Done, true) => (4, "Failed"),
    }
}

fn job_json(job: &Job, r: &Readings) -> Value {
    let (status_id, status) = job_status(job);
    let phase = job.clock.phase();
    let start = (phase != Phase::Queued).then(|| stamp(job.clock.started_wall));
    let end = (phase == Phase::Done).then(|| stamp(job.clock.end_wall()));
    let mut answer = json!({
        "id": r.id(job.id),
        "type": { "name": "Connection Test", "id": CONNECTION_TEST },
        "status": r.job_status(status_id, status),
        "start": start,
        "end": end,
    });
    if r.job_workload == JobWorkload::Present {
        answer["workload"] = json!({
            "connectionId": r.id(job.connection_id),
            "syncAndSample": job.sync_and_sample,
        });
    }
    if status == "Failed" {
        answer["error"] = json!(job.error.unwrap_or("connection test failed"));
    }
    answer
}

pub(super) async fn create_job(
    State(s): State<ApiState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    if !content_type_is(&headers, "application/x-www-form-urlencoded") {
        return Err(fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/x-www-form-urlencoded",
        ));
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("jobType").map(String::as_str) != Some("27") {
        return Err(unprocessable("jobType: unknown job type"));
    }
    let connection_id = form
        .get("workload[connectionId]")
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| unprocessable("workload[connectionId] is required"))?;
    let sync_and_sample = form
        .get("workload[syncAndSample]")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    let connection = state
        .connections
        .iter()
        .find(|c| c.id == connection_id && c.client_id == client_id)
        .ok_or_else(|| unprocessable("workload[connectionId]: no such connection"))?;
    // Testing a connection that is not established yet fails, as it would for real.
    let error = if connection.clock.phase() != Phase::Done {
        Some("connection is not established yet")
    } else {
        None
    };
    let knob = std::mem::take(&mut state.fail_next_connection_test);
    let fails = knob || error.is_some();
    let error = error.or(knob.then_some("Could not connect to MySQL server"));
    let id = state.next_job;
    state.next_job += 1;
    let job = Job {
        id,
        client_id,
        connection_id,
        sync_and_sample,
        clock: Clock::start(state.job_duration),
        fails,
        error,
        form: String::from_utf8_lossy(&body).into_owned(),
    };
    state.jobs.push(job);
    // The seed's answer: the job is queued and has no id yet.
    let r = &state.readings;
    let id = match r.job_id_on_create {
        JobIdOnCreate::Null => Value::Null,
        JobIdOnCreate::Id => r.id(id),
    };
    Ok(r.reply(json!({
        "status": r.job_status(1, "Queued"),
        "end": null,
        "start": null,
        "type": { "name": "Connection Test", "id": CONNECTION_TEST },
        "id": id,
    })))
}

pub(super) async fn list_jobs(
    State(s): State<ApiState>,
    Path((client_id, type_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    s.authorize(&headers, Credential::Cookie)?;
    let mut state = s.state.lock().unwrap();
    let client_id = ready_client(&mut state, &client_id)?.id;
    // Only connection tests exist here; any other type lists nothing.
    let wanted = type_id.parse::<i64>().ok() == Some(CONNECTION_TEST);
    let r = &state.readings;
    let mut list: Vec<Value> = state
        .jobs
        .iter()
        .rev()
        .filter(|j| wanted && j.client_id == client_id)
        .map(|j| job_json(j, r))
        .collect();
    let answer = match r.job_list {
        JobList::List => Value::Array(list),
        JobList::OldestFirst => {
            list.reverse();
            Value::Array(list)
        }
        JobList::Object => match list.into_iter().next() {
            Some(latest) => latest,
            None => return Err(not_found("job of this type")),
        },
        JobList::Wrapped => json!({ "total": list.len(), "jobs": list }),
        JobList::WrappedData => json!({ "meta": { "count": list.len() }, "data": list }),
    };
    Ok(r.reply(answer))
}
