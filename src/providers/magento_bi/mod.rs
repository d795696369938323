//! Magento BI Cloud Onboarding (CONTRACT §4 "magento_bi / onboard"; seed
//! `magento-bi-cloud-onboarding.md`): the ten steps from signup to templated
//! dashboards, each one call to the API host or the dashboard host.
//!
//! Owns the request bodies and answer shapes of those calls, the input
//! validation of `plan`, and (in [`token`]) the access token shared by every
//! onboarding this provider runs. Signups go without auth, `/v3/invites` with
//! `Authorization: Bearer`, everything else with the `DASHSESS2` cookie; a 401
//! there renews the token once and repeats the call once.
//!
//! Waiting is the engine's: a poll step answers `Pending` until the job is done.

mod token;

use std::cmp::Reverse;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use url::Url;

use crate::config::MagentoBiSettings;
use crate::domain::{Operation, ProviderId, RetryReason};
use crate::engine::step::{
    PollPolicy, Provider, RetryPolicy, StepContext, StepDone, StepError, StepKey, StepOutcome,
};
use crate::metrics::Metrics;
use crate::providers::http::{detail, HttpClient, Response};
use token::{Token, Tokens};

/// The onboard plan, in order (CONTRACT §4).
const STEPS: [&str; 10] = [
    "create_signup",
    "poll_signup",
    "invite_user",
    "update_client",
    "create_connection",
    "poll_connection",
    "test_connection",
    "poll_connection_test",
    "create_dashboards",
    "poll_dashboards",
];

/// The steps that wait on a provider job; each has `[providers.magento_bi.polls.STEP]`.
const POLL_STEPS: [&str; 4] = [
    "poll_signup",
    "poll_connection",
    "poll_connection_test",
    "poll_dashboards",
];

/// The dashboard host's job type for a connection test.
const CONNECTION_TEST_JOB: &str = "27";

pub struct MagentoBi {
    settings: MagentoBiSettings,
    http: HttpClient,
    tokens: Tokens,
}

impl fmt::Debug for MagentoBi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MagentoBi")
            .field("api_base", &self.settings.api_base)
            .field("dashboard_base", &self.settings.dashboard_base)
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// Where a call carries the token.
#[derive(Clone, Copy)]
enum Auth {
    Bearer,
    Cookie,
}

/// Answers that carry just the new object's `id`.
#[derive(Deserialize)]
struct Created {
    id: Value,
}

/// `GET /v3/signups/{id}` and `GET .../autodash/{id}`.
#[derive(Deserialize)]
struct JobStatus {
    status: String,
    #[serde(default)]
    client_id: Value,
}

impl MagentoBi {
    pub fn new(settings: &MagentoBiSettings, metrics: Metrics) -> Self {
        let http = HttpClient::new(ProviderId::MagentoBi, &settings.calls, metrics.clone());
        MagentoBi {
            settings: settings.clone(),
            tokens: Tokens::new(settings, http.clone(), metrics),
            http,
        }
    }

    fn api(&self, segments: &[&str]) -> Result<Url, StepError> {
        endpoint(&self.settings.api_base, "api_base", segments)
    }

    fn dashboard(&self, segments: &[&str]) -> Result<Url, StepError> {
        endpoint(&self.settings.dashboard_base, "dashboard_base", segments)
    }

    /// Sends `build()` with the shared token; on a 401 renews the token once
    /// and sends again (a second 401 stays `Rejected`).
    async fn call(
        &self,
        step: &str,
        auth: Auth,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, StepError> {
        let with = |t: &Token| match auth {
            Auth::Bearer => build().header(AUTHORIZATION, t.bearer()),
            Auth::Cookie => build().header(COOKIE, t.cookie()),
        };
        let token = self.tokens.get(step).await?;
        match self.http.send(step, with(&token)).await {
            Err(StepError::Rejected {
                http_status: Some(401),
                ..
            }) => {
                tracing::info!(
                    provider = "magento_bi",
                    step,
                    "401: renewing the token once"
                );
                let token = self.tokens.renew(step, &token).await?;
                self.http.send(step, with(&token)).await
            }
            other => other,
        }
    }

    async fn create_signup(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let body = section(ctx, "signup")?;
        let url = self.api(&["v3", "signups"])?;
        // Signups take no credential (the seed sends none).
        let answer = self
            .http
            .send(step, self.http.inner().post(url).json(body))
            .await?;
        let id = created_id(step, &answer)?;
        done(StepDone::default().with("signup_id", id))
    }

    async fn poll_signup(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let (_, signup) = earlier(ctx, "signup_id")?;
        let url = self.api(&["v3", "signups", &signup])?;
        let answer = self.http.send(step, self.http.inner().get(url)).await?;
        let job: JobStatus = answer.json(step)?;
        match job.status.to_ascii_lowercase().as_str() {
            "completed" => {
                if id_text(&job.client_id).is_none() {
                    return Err(bad_response(step, "a completed signup without a client_id"));
                }
                done(StepDone::default().with("client_id", job.client_id))
            }
            "failed" => Err(job_failed(step, "signup", &answer)),
            _ => pending(&job.status),
        }
    }

    async fn invite_user(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let (client_id, _) = earlier(ctx, "client_id")?;
        let mut body = section(ctx, "invite")?.clone();
        body.insert("client_id".into(), client_id.clone());
        let url = self.api(&["v3", "invites"])?;
        let answer = self
            .call(step, Auth::Bearer, || {
                self.http.inner().post(url.clone()).json(&body)
            })
            .await?;
        let id = created_id(step, &answer)?;
        done(StepDone::default().with("user_id", id))
    }

    async fn update_client(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let (_, client) = earlier(ctx, "client_id")?;
        let body = section(ctx, "client")?;
        let url = self.api(&["v1", "clients", &client])?;
        self.call(step, Auth::Cookie, || {
            self.http.inner().put(url.clone()).json(body)
        })
        .await?;
        done(StepDone::default())
    }

    fn connections_url(&self, client: &str) -> Result<Url, StepError> {
        self.api(&[
            "v1",
            "v2",
            "clients",
            client,
            "connections",
            "input-connections",
        ])
    }

    async fn create_connection(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let (_, client) = earlier(ctx, "client_id")?;
        let body = section(ctx, "connection")?;
        let url = self.connections_url(&client)?;
        let answer = self
            .call(step, Auth::Cookie, || {
                self.http.inner().post(url.clone()).json(body)
            })
            .await?;
        let id = created_id(step, &answer)?;
        done(StepDone::default().with("connection_id", id))
    }

    async fn poll_connection(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let (_, client) = earlier(ctx, "client_id")?;
        let (ours, _) = earlier(ctx, "connection_id")?;
        let mut url = self.connections_url(&client)?;
        url.query_pairs_mut()
            .append_pair("include_deleted", "false");
        let answer = self
            .call(step, Auth::Cookie, || self.http.inner().get(url.clone()))
            .await?;
        // The list holds the client's other, older connections too: only ours counts.
        let list: Vec<Value> = answer.json(step)?;
        let Some(entry) = list.iter().find(|c| same_id(&c["id"], ours)) else {
            return pending("not listed yet");
        };
        match &entry["properties"]["established"] {
            Value::Null => pending("not established"),
            Value::String(s) if s.is_empty() => pending("not established"),
            _ => done(StepDone::default()),
        }
    }

    async fn test_connection(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let (_, client) = earlier(ctx, "client_id")?;
        let (_, connection) = earlier(ctx, "connection_id")?;
        let url = self.dashboard(&["v2", "client", &client, "job"])?;
        // The dashboard host wants the brackets literally, as the seed's curl sends them.
        let connection: String =
            url::form_urlencoded::byte_serialize(connection.as_bytes()).collect();
        let form = format!(
            "jobType={CONNECTION_TEST_JOB}&workload[connectionId]={connection}&workload[syncAndSample]=1"
        );
        self.call(step, Auth::Cookie, || {
            self.http
                .inner()
                .post(url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.clone())
        })
        .await?;
        // The answer is a queued job without an id; the poll finds it by connection.
        done(StepDone::default())
    }

    async fn poll_connection_test(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let (_, client) = earlier(ctx, "client_id")?;
        let (ours, _) = earlier(ctx, "connection_id")?;
        let url = self.dashboard(&["v2", "client", &client, "job", "type", CONNECTION_TEST_JOB])?;
        let answer = self
            .call(step, Auth::Cookie, || self.http.inner().get(url.clone()))
            .await?;
        let jobs: Vec<Value> = answer.json(step)?;
        // Tests of other connections are listed too. Of ours, the newest counts
        // (highest id; the list is newest first when ids are absent).
        let newest = jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| same_id(&j["workload"]["connectionId"], ours))
            .max_by_key(|(pos, j)| (j["id"].as_i64(), Reverse(*pos)))
            .map(|(_, j)| j);
        let Some(job) = newest else {
            return pending("not listed yet");
        };
        let status = job["status"]["name"].as_str().unwrap_or_default();
        match status.to_ascii_lowercase().as_str() {
            "completed" => done(StepDone::default()),
            "failed" => {
                let why = job
                    .get("error")
                    .and_then(|e| detail(&serde_json::to_vec(e).unwrap_or_default()))
                    .unwrap_or_else(|| "no reason given".into());
                Err(StepError::job_failed(format!(
                    "{step}: the provider reported the connection test as failed: {why}"
                )))
            }
            _ => pending(status),
        }
    }

    async fn create_dashboards(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let (_, client) = earlier(ctx, "client_id")?;
        let (connection_id, _) = earlier(ctx, "connection_id")?;
        let (user_id, _) = earlier(ctx, "user_id")?;
        // input.dashboards is flat; the API wants database and prefix under
        // connections.db. Other fields pass through at the top level.
        let mut body = section(ctx, "dashboards")?.clone();
        let database = body.remove("database").unwrap_or_default();
        let table_prefix = body.remove("table_prefix").unwrap_or_else(|| json!(""));
        body.insert(
            "connections".into(),
            json!({ "db": {
                "connection_id": connection_id,
                "database": database,
                "table_prefix": table_prefix,
            }}),
        );
        body.insert("user_id".into(), user_id.clone());
        let url = self.api(&["v1", "clients", &client, "autodash"])?;
        let answer = self
            .call(step, Auth::Cookie, || {
                self.http.inner().post(url.clone()).json(&body)
            })
            .await?;
        let id = created_id(step, &answer)?;
        done(StepDone::default().with("dashboard_job_id", id))
    }

    async fn poll_dashboards(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let (_, client) = earlier(ctx, "client_id")?;
        let (_, job) = earlier(ctx, "dashboard_job_id")?;
        let url = self.api(&["v1", "clients", &client, "autodash", &job])?;
        let answer = self
            .call(step, Auth::Cookie, || self.http.inner().get(url.clone()))
            .await?;
        let job: JobStatus = answer.json(step)?;
        match job.status.to_ascii_lowercase().as_str() {
            "completed" => done(StepDone::default()),
            "failed" => Err(job_failed(step, "dashboard creation", &answer)),
            _ => pending(&job.status),
        }
    }
}

#[async_trait]
impl Provider for MagentoBi {
    fn id(&self) -> ProviderId {
        ProviderId::MagentoBi
    }

    fn plan(&self, operation: Operation, input: &Value) -> Result<Vec<StepKey>, String> {
        if operation != Operation::Onboard {
            return Err(format!(
                "operation {operation} is not offered by {}",
                ProviderId::MagentoBi
            ));
        }
        validate(input)?;
        Ok(STEPS.iter().map(|s| StepKey::new(s)).collect())
    }

    fn poll_policy(&self, step: &str) -> Option<PollPolicy> {
        if !POLL_STEPS.contains(&step) {
            return None;
        }
        self.settings
            .polls
            .get(step)
            .map(crate::providers::poll_policy)
    }

    fn retry_policy(&self) -> RetryPolicy {
        crate::providers::retry_policy(&self.settings.calls)
    }

    fn call_timeout(&self) -> Duration {
        // At most four calls: a token, the call, a new token after a 401, the call again.
        self.settings.calls.timeout() * 4
    }

    fn concurrency(&self) -> usize {
        self.settings.calls.concurrency
    }

    async fn run(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        match ctx.step.name {
            "create_signup" => self.create_signup(ctx).await,
            "poll_signup" => self.poll_signup(ctx).await,
            "invite_user" => self.invite_user(ctx).await,
            "update_client" => self.update_client(ctx).await,
            "create_connection" => self.create_connection(ctx).await,
            "poll_connection" => self.poll_connection(ctx).await,
            "test_connection" => self.test_connection(ctx).await,
            "poll_connection_test" => self.poll_connection_test(ctx).await,
            "create_dashboards" => self.create_dashboards(ctx).await,
            "poll_dashboards" => self.poll_dashboards(ctx).await,
            other => Err(StepError::rejected(
                None,
                format!("magento_bi has no step {other}"),
            )),
        }
    }
}

// ---- input validation ----------------------------------------------------

/// Checks every field a step will need, so a bad request fails before any call.
fn validate(input: &Value) -> Result<(), String> {
    let input = input.as_object().ok_or("input must be an object")?;

    let signup = object(input, "input", "signup")?;
    for key in ["company", "email"] {
        text(signup, "input.signup", key)?;
    }

    let invite = object(input, "input", "invite")?;
    text(invite, "input.invite", "email")?;

    let client = object(input, "input", "client")?;
    optional(client, "input.client", "name", Value::is_string, "a string")?;
    optional(
        client,
        "input.client",
        "properties",
        Value::is_object,
        "an object",
    )?;

    let connection = object(input, "input", "connection")?;
    for key in ["name", "type"] {
        text(connection, "input.connection", key)?;
    }
    for key in ["properties", "credentials"] {
        object(connection, "input.connection", key)?;
    }

    let dashboards = object(input, "input", "dashboards")?;
    for key in ["package", "database"] {
        text(dashboards, "input.dashboards", key)?;
    }
    optional(
        dashboards,
        "input.dashboards",
        "table_prefix",
        Value::is_string,
        "a string",
    )?;
    Ok(())
}

fn object<'a>(
    parent: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<&'a Map<String, Value>, String> {
    match parent.get(key) {
        None | Some(Value::Null) => Err(format!("{path}.{key} is missing")),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(format!("{path}.{key} must be an object")),
    }
}

fn text(parent: &Map<String, Value>, path: &str, key: &str) -> Result<(), String> {
    match parent.get(key) {
        None | Some(Value::Null) => Err(format!("{path}.{key} is missing")),
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        Some(_) => Err(format!("{path}.{key} must be a non-empty string")),
    }
}

fn optional(
    parent: &Map<String, Value>,
    path: &str,
    key: &str,
    ok: fn(&Value) -> bool,
    what: &str,
) -> Result<(), String> {
    match parent.get(key) {
        Some(v) if !ok(v) => Err(format!("{path}.{key} must be {what}")),
        _ => Ok(()),
    }
}

// ---- helpers -------------------------------------------------------------

/// `base` plus path segments, each percent-encoded (ids come from the provider).
fn endpoint(base: &str, key: &str, segments: &[&str]) -> Result<Url, StepError> {
    let bad = || {
        StepError::rejected(
            None,
            format!("providers.magento_bi.{key} is not a usable http(s) URL"),
        )
    };
    let mut url = Url::parse(base).map_err(|_| bad())?;
    url.path_segments_mut()
        .map_err(|_| bad())?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

fn done(step: StepDone) -> Result<StepOutcome, StepError> {
    Ok(StepOutcome::Done(step))
}

/// "Not yet", with the provider's status word (short, printable) for logs.
fn pending(status: &str) -> Result<StepOutcome, StepError> {
    let status: String = status
        .chars()
        .filter(|c| !c.is_control())
        .take(40)
        .collect();
    Ok(StepOutcome::Pending {
        status: if status.is_empty() {
            "unknown".into()
        } else {
            status
        },
        state: None,
    })
}

/// The request's input section a step sends (validated by `plan`).
fn section<'a>(ctx: &StepContext<'a>, key: &str) -> Result<&'a Map<String, Value>, StepError> {
    ctx.input
        .get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| {
            StepError::rejected(
                None,
                format!("{}: input.{key} must be an object", ctx.step.name),
            )
        })
}

/// An id an earlier step put in the outputs: as given, and as URL text.
fn earlier<'a>(ctx: &StepContext<'a>, key: &str) -> Result<(&'a Value, String), StepError> {
    let value = ctx.outputs.get(key);
    match value.and_then(|v| id_text(v).map(|t| (v, t))) {
        Some(found) => Ok(found),
        None => Err(StepError::rejected(
            None,
            format!("{} needs {key} from an earlier step", ctx.step.name),
        )),
    }
}

/// Ids come as numbers (client, user, connection) or strings (signup, autodash).
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The same id, whether either side spells it as a number or a string.
fn same_id(a: &Value, b: &Value) -> bool {
    matches!((id_text(a), id_text(b)), (Some(x), Some(y)) if x == y)
}

fn created_id(step: &str, answer: &Response) -> Result<Value, StepError> {
    let created: Created = answer.json(step)?;
    if id_text(&created.id).is_none() {
        return Err(bad_response(step, "an answer without an id"));
    }
    Ok(created.id)
}

fn bad_response(step: &str, what: &str) -> StepError {
    StepError::Transient {
        reason: RetryReason::BadResponse,
        retry_after: None,
        http_status: None,
        message: format!("{step}: the provider sent {what}"),
    }
}

fn job_failed(step: &str, what: &str, answer: &Response) -> StepError {
    let why = detail(&answer.body).unwrap_or_else(|| "no reason given".into());
    StepError::job_failed(format!(
        "{step}: the provider reported the {what} as failed: {why}"
    ))
}

#[cfg(test)]
mod tests;
