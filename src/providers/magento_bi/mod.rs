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
//!
//! # Tolerant readers, strict writers
//!
//! The seed is a page of curl examples: it shows most answers once, some never,
//! and leaves shapes, spellings and types open. The client sends exactly what
//! the seed shows (JSON numbers for ids in bodies, the form as the curl writes
//! it, `jobType=27`), and reads every answer in each of the readings below
//! ([`answers`]). An answer it still cannot read is a transient `bad_response`
//! whose message says what was expected and the shape that came, e.g.
//! `poll_connection_test: unexpected response body (218 bytes): expected a job
//! object or a list of jobs with status.name (...); got an object without
//! status`, never a value from the body.
//!
//! ## The open points and the readings accepted (21)
//!
//! The sandbox serves each reading that has a knob (`[sandbox] magento_*`, or
//! `POST /_sandbox/readings`; see `sandbox::magento_bi::Readings`); the others
//! are covered by the table tests in `tests.rs`.
//!
//! 1. **The job list's shape** (`GET {dashboard_base}/v2/client/{client_id}/job/type/27`;
//!    the seed never shows the answer). A list; one job object (the latest
//!    job); a list wrapped in an object under `jobs`, `data`, `items` or
//!    `results`; `null`, `{}`, `[]` or a 404 as "no job yet".
//!    Knob `magento_job_list` = `list` | `object` | `wrapped` | `wrapped_data` | `oldest_first`.
//! 2. **The job list's order**, newest or oldest first: position is never read.
//!    The newest of several is the one with the highest numeric id, then the
//!    latest creation time the entry gives (`created_at`, `created`,
//!    `createdAt`). Knob `oldest_first`.
//! 3. **Which job is ours.** Never one whose workload names another connection,
//!    nor one whose `type` says another job type. In order: (a) the job whose
//!    id the POST answered (kept as the output `connection_test_job_id`);
//!    (b) else the newest job whose `workload.connectionId` is our connection,
//!    among those not listed before our POST; (c) else, among jobs that name
//!    no connection, the only one not listed before our POST: `test_connection`
//!    lists the jobs just before it POSTs and keeps their ids as the output
//!    `connection_tests_before` (no clock is compared). Several such jobs, or
//!    none: not yet (the poll's deadline ends the wait).
//!    Knobs `magento_job_workload` = `present` | `absent`,
//!    `magento_job_id_on_create` = `null` | `id`.
//! 4. **The job type in the poll URL.** The seed's curl polls `type/5` while
//!    the job is created with `jobType=27`: the client asks for `type/27`,
//!    the type it created. `type` as `{"id": 27, "name": "Connection Test"}`
//!    (seed), a bare id, or a bare name; absent is accepted (the URL asked
//!    for type 27).
//! 5. **Job status.** `status` as an object with a `name` (seed) or a bare
//!    word, in any letter case (`Completed`, `completed`, `COMPLETED`).
//!    `completed`/`complete` → done; `failed`, `failure`, `error`, `errored`,
//!    `cancelled`, `canceled` → `job_failed`, with the job's `error` (any
//!    shape) as the reason; anything else → not yet. Knobs
//!    `magento_status_case` = `seed` | `title` | `lower` | `upper`,
//!    `magento_job_status` = `object` | `string`.
//! 6. **A job's workload.** An object, or the same object JSON-encoded in a
//!    string; the connection as `connectionId` (the seed's form field) or
//!    `connection_id`; `[]` (PHP's empty array) as none.
//! 7. **The job POST's answer.** The seed shows the queued job with
//!    `"id": null`. An id, when given, is kept and settles point 3; an
//!    unreadable or empty answer is no error (the job was made; the poll
//!    finds it another way). Knob `magento_job_id_on_create`.
//! 8. **Signup status.** The text says "until the status returns as
//!    complete", the example shows `completed`: both, in any letter case, as
//!    a bare word or `{"name": ...}`; failure words as in point 5. Knob
//!    `magento_status_case`.
//! 9. **A signup's `client_id`.** A number (seed) or numeric text, also as
//!    `clientId`; absent or null until completed; a completed signup without
//!    one is an unreadable answer. Knob `magento_ids`.
//! 10. **Where to poll a signup.** The seed says to use the answer's `url`;
//!     the client polls `{api_base}/v3/signups/{id}` instead and never calls
//!     a host named in an answer. The signup id may be text or a number.
//! 11. **Id types.** Client, user, connection and job ids as numbers or
//!     numeric text, read as the same id (`"14"` is `14`); signup and autodash
//!     ids are UUID text. Written back as JSON numbers, as the seed's bodies
//!     show (invite `client_id`, autodash `connection_id` and `user_id`), and
//!     as text in paths and in the form. Knob `magento_ids` = `number` |
//!     `string` (the sandbox refuses an id sent back as a string).
//! 12. **Create answers.** The new `id` at the top level (seed) or inside
//!     `{"data": {...}}`; without one the answer is unreadable ("expected an
//!     object with the new user's id; got an object without id").
//! 13. **The connection list.** A bare list (seed), or wrapped under
//!     `connections`, `input-connections`, `data`, `items` or `results`, or
//!     one object. Our entry is found by id. Knob `magento_connection_list` =
//!     `list` | `wrapped`.
//! 14. **`properties.established`.** Set: a timestamp (seed), `true`, a Unix
//!     time, other text. Not set: null, absent, `false`, `0`, `""`, `"0"`,
//!     `"false"`, MySQL's zero date. The connection's `properties.status`
//!     (`"1"` in the seed) is not read: the contract waits for `established`.
//!     Knob `magento_established` = `timestamp` | `bool` | `epoch`.
//! 15. **`null` versus absent.** Read alike everywhere (ids, `start`, `end`,
//!     `established`, `client_id`, `workload`, `error`). Knob `magento_nulls`
//!     = `null` | `absent`.
//! 16. **Unknown fields.** Ignored everywhere; nothing is read with
//!     `deny_unknown_fields`. Knob `magento_extra_fields` = `true`.
//! 17. **Autodash.** The create answer's id as UUID text (seed) or a number;
//!     the poll's `status` as in point 8 (knob `magento_status_case`); its
//!     `job_id` is not read.
//! 18. **The token's `expires_in`.** A number (seed) or numeric text; absent
//!     or null → assumed one hour (a 401 renews sooner). `access_token` is
//!     required.
//! 19. **`update_client`'s answer.** The seed shows none: any 2xx body, empty
//!     included, is accepted unread.
//! 20. **Error bodies.** `{"message"}`, `{"error"}`, `{"errors": ...}`, Rails
//!     style or none: read by `providers::http::detail` into a short reason.
//! 21. **Looking up our own earlier create** (`StepContext::possible_repeat`).
//!     `create_connection` first lists the connections and adopts one with
//!     our name, host and type; `test_connection` adopts the newest test of
//!     our connection unless it failed (both set `repeat_detected`). The seed
//!     documents no way to list signups, invited users or autodash jobs (only
//!     GETs by an id we lack when the answer was lost), so `create_signup`,
//!     `invite_user` and `create_dashboards` post again; the engine counts
//!     such repeats in `onboarding_create_repeats_total`.

mod answers;
mod token;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE};
use serde_json::{json, Map, Value};
use url::Url;

use crate::config::MagentoBiSettings;
use crate::domain::{Operation, ProviderId, RetryReason};
use crate::engine::step::{
    PollPolicy, Provider, RetryPolicy, StepContext, StepDone, StepError, StepKey, StepOutcome,
};
use crate::metrics::Metrics;
use crate::providers::http::{detail, HttpClient, Response};
use answers::{Autodash, Connection, Created, Id, Job, OurTest, Phase, Pick, Signup};
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

/// Output: the connection-test job's id, when the POST answered one (point 3).
const TEST_JOB_ID: &str = "connection_test_job_id";
/// Output: job ids listed just before the test was posted (point 3).
const TESTS_BEFORE: &str = "connection_tests_before";
/// More earlier jobs than this are not kept (point 3's last rule then waits).
const MAX_TESTS_BEFORE: usize = 500;

const EXPECTED_CONNECTIONS: &str =
    "a list of connections with id (bare, or under connections/data/items/results)";

pub struct MagentoBi {
    settings: MagentoBiSettings,
    http: HttpClient,
    tokens: Tokens,
}

impl std::fmt::Debug for MagentoBi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
        let id = created_id(step, &answer, "signup")?;
        done(StepDone::default().with("signup_id", id.to_value()))
    }

    async fn poll_signup(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let signup = earlier(ctx, "signup_id")?;
        let url = self.api(&["v3", "signups", &signup.to_string()])?;
        let answer = self.http.send(step, self.http.inner().get(url)).await?;
        let body = body_json(step, &answer, answers::EXPECTED_SIGNUP)?;
        let job = Signup::read(&body)
            .map_err(|got| unreadable(step, &answer, answers::EXPECTED_SIGNUP, &got))?;
        match job.status.phase() {
            Phase::Completed => match job.client_id {
                Some(client) => done(StepDone::default().with("client_id", client.to_value())),
                None => Err(unreadable(
                    step,
                    &answer,
                    answers::EXPECTED_SIGNUP,
                    "a completed signup without client_id",
                )),
            },
            Phase::Failed => Err(job_failed(step, "signup", &answer)),
            Phase::Waiting => pending(&job.status.word),
        }
    }

    async fn invite_user(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let client_id = earlier(ctx, "client_id")?;
        let mut body = section(ctx, "invite")?.clone();
        body.insert("client_id".into(), client_id.to_value());
        let url = self.api(&["v3", "invites"])?;
        let answer = self
            .call(step, Auth::Bearer, || {
                self.http.inner().post(url.clone()).json(&body)
            })
            .await?;
        let id = created_id(step, &answer, "user")?;
        done(StepDone::default().with("user_id", id.to_value()))
    }

    async fn update_client(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let client = earlier(ctx, "client_id")?;
        let body = section(ctx, "client")?;
        let url = self.api(&["v1", "clients", &client.to_string()])?;
        // The seed shows no answer: whatever 2xx body comes is not read (point 19).
        self.call(step, Auth::Cookie, || {
            self.http.inner().put(url.clone()).json(body)
        })
        .await?;
        done(StepDone::default())
    }

    fn connections_url(&self, client: &Id) -> Result<Url, StepError> {
        self.api(&[
            "v1",
            "v2",
            "clients",
            &client.to_string(),
            "connections",
            "input-connections",
        ])
    }

    /// The client's connections (point 13); an unreadable entry is kept as its
    /// description, so a search can skip it unless nothing else matched.
    async fn list_connections(
        &self,
        step: &str,
        client: &Id,
    ) -> Result<(Response, Vec<Result<Connection, String>>), StepError> {
        let mut url = self.connections_url(client)?;
        url.query_pairs_mut()
            .append_pair("include_deleted", "false");
        let answer = self
            .call(step, Auth::Cookie, || self.http.inner().get(url.clone()))
            .await?;
        let body = body_json(step, &answer, EXPECTED_CONNECTIONS)?;
        let entries = answers::entries(&body)
            .map_err(|got| unreadable(step, &answer, EXPECTED_CONNECTIONS, &got))?;
        let read = entries.iter().map(Connection::read).collect();
        Ok((answer, read))
    }

    async fn create_connection(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let client = earlier(ctx, "client_id")?;
        let body = section(ctx, "connection")?;
        if ctx.possible_repeat {
            // An earlier attempt may have made it: adopt a connection with our
            // name and host rather than make a second (point 21).
            let (_, listed) = self.list_connections(step, &client).await?;
            let adopted = listed
                .iter()
                .filter_map(|c| c.as_ref().ok())
                .filter(|c| c.id.is_some() && c.is_ours(body))
                .max_by_key(|c| c.id.as_ref().and_then(Id::number));
            if let Some(Connection { id: Some(id), .. }) = adopted {
                tracing::info!(
                    provider = "magento_bi",
                    step,
                    "adopting the connection an earlier attempt made"
                );
                let mut done = StepDone::default().with("connection_id", id.to_value());
                done.repeat_detected = true;
                return Ok(StepOutcome::Done(done));
            }
        }
        let url = self.connections_url(&client)?;
        let answer = self
            .call(step, Auth::Cookie, || {
                self.http.inner().post(url.clone()).json(body)
            })
            .await?;
        let id = created_id(step, &answer, "connection")?;
        done(StepDone::default().with("connection_id", id.to_value()))
    }

    async fn poll_connection(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let client = earlier(ctx, "client_id")?;
        let ours = earlier(ctx, "connection_id")?;
        let (answer, listed) = self.list_connections(step, &client).await?;
        // The list holds the client's other, older connections too: only ours counts.
        let entry = listed
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .find(|c| c.id.as_ref() == Some(&ours));
        match entry {
            Some(c) if c.established() => done(StepDone::default()),
            Some(_) => pending("not established"),
            None => match listed
                .iter()
                .enumerate()
                .find_map(|(i, c)| c.as_ref().err().map(|e| (i, e)))
            {
                Some((i, why)) => Err(unreadable(
                    step,
                    &answer,
                    EXPECTED_CONNECTIONS,
                    &format!("a list of {} whose entry {} is {why}", listed.len(), i + 1),
                )),
                None => pending("not listed yet"),
            },
        }
    }

    fn jobs_url(&self, client: &Id) -> Result<Url, StepError> {
        self.dashboard(&[
            "v2",
            "client",
            &client.to_string(),
            "job",
            "type",
            &answers::CONNECTION_TEST.to_string(),
        ])
    }

    /// The client's connection-test jobs, as entries (point 1); a 404 is "none yet".
    async fn list_jobs(
        &self,
        step: &str,
        client: &Id,
    ) -> Result<(Option<Response>, Vec<Value>), StepError> {
        let url = self.jobs_url(client)?;
        let answer = match self
            .call(step, Auth::Cookie, || self.http.inner().get(url.clone()))
            .await
        {
            Ok(answer) => answer,
            Err(StepError::Rejected {
                http_status: Some(404),
                ..
            }) => return Ok((None, Vec::new())),
            Err(e) => return Err(e),
        };
        let body = body_json(step, &answer, answers::EXPECTED_JOBS)?;
        let entries = answers::entries(&body)
            .map_err(|got| unreadable(step, &answer, answers::EXPECTED_JOBS, &got))?;
        Ok((Some(answer), entries))
    }

    async fn test_connection(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let client = earlier(ctx, "client_id")?;
        let connection = earlier(ctx, "connection_id")?;
        // The jobs listed before ours: what the poll must not take for ours
        // when jobs name no connection (point 3), and, after an interrupted
        // attempt, a test of ours to adopt (point 21).
        let (_, before) = self.list_jobs(step, &client).await?;
        let jobs: Vec<Job> = before.iter().filter_map(|j| Job::read(j).ok()).collect();
        if ctx.possible_repeat {
            // The newest test of our connection, unless it failed (then a new one is wanted).
            let adopted = jobs
                .iter()
                .filter(|j| j.kind.is_connection_test())
                .filter(|j| j.workload.connection.as_ref() == Some(&connection))
                .max_by_key(|j| j.id.as_ref().and_then(Id::number))
                .filter(|j| j.status.phase() != Phase::Failed);
            if let Some(job) = adopted {
                tracing::info!(
                    provider = "magento_bi",
                    step,
                    "adopting the connection test an earlier attempt started"
                );
                let mut done = StepDone::default();
                if let Some(id) = &job.id {
                    done = done.with(TEST_JOB_ID, id.to_value());
                }
                done.repeat_detected = true;
                return Ok(StepOutcome::Done(done));
            }
        }
        let url = self.dashboard(&["v2", "client", &client.to_string(), "job"])?;
        // The dashboard host wants the brackets literally, as the seed's curl sends them.
        let id: String =
            url::form_urlencoded::byte_serialize(connection.to_string().as_bytes()).collect();
        let form = format!(
            "jobType={}&workload[connectionId]={id}&workload[syncAndSample]=1",
            answers::CONNECTION_TEST
        );
        let answer = self
            .call(step, Auth::Cookie, || {
                self.http
                    .inner()
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.clone())
            })
            .await?;
        // The seed's answer is the queued job with `"id": null`; an id, when
        // given, settles which job is ours (point 7). Unreadable is no error.
        let posted = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| answers::entries(&v).ok())
            .and_then(|e| e.into_iter().next())
            .and_then(|j| Created::read(&j).ok())
            .and_then(|c| c.id);
        let mut done = StepDone::default();
        if let Some(id) = posted {
            done = done.with(TEST_JOB_ID, id.to_value());
        }
        let ids: Vec<Value> = jobs
            .iter()
            .filter_map(|j| j.id.as_ref())
            .map(Id::to_value)
            .collect();
        if ids.len() <= MAX_TESTS_BEFORE && jobs.len() == before.len() {
            done = done.with(TESTS_BEFORE, Value::Array(ids));
        }
        Ok(StepOutcome::Done(done))
    }

    async fn poll_connection_test(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let client = earlier(ctx, "client_id")?;
        let connection = earlier(ctx, "connection_id")?;
        let posted = ctx
            .outputs
            .get(TEST_JOB_ID)
            .and_then(|v| Id::read(v).ok().flatten());
        let before: Option<Vec<Id>> =
            ctx.outputs
                .get(TESTS_BEFORE)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| Id::read(v).ok().flatten())
                        .collect()
                });
        let (answer, entries) = self.list_jobs(step, &client).await?;
        let ours = OurTest {
            connection: Some(&connection),
            job: posted.as_ref(),
            before: before.as_deref(),
        };
        let job = match answers::pick_job(&entries, &ours) {
            Ok(Pick::Ours(job)) => job,
            Ok(Pick::NotYet(why)) => return pending(&why),
            // Only entries can be unreadable, and a 404 (no answer) has none.
            Err(got) => {
                return Err(match &answer {
                    Some(answer) => unreadable(step, answer, answers::EXPECTED_JOBS, &got),
                    None => StepError::transient(RetryReason::BadResponse, got),
                })
            }
        };
        match job.status.phase() {
            Phase::Completed => done(StepDone::default()),
            Phase::Failed => {
                let why = job
                    .error
                    .as_ref()
                    .and_then(|e| detail(&serde_json::to_vec(e).unwrap_or_default()))
                    .unwrap_or_else(|| "no reason given".into());
                Err(StepError::job_failed(format!(
                    "{step}: the provider reported the connection test as failed: {why}"
                )))
            }
            Phase::Waiting => pending(&job.status.word),
        }
    }

    async fn create_dashboards(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let client = earlier(ctx, "client_id")?;
        let connection_id = earlier(ctx, "connection_id")?;
        let user_id = earlier(ctx, "user_id")?;
        // input.dashboards is flat; the API wants database and prefix under
        // connections.db. Other fields pass through at the top level.
        let mut body = section(ctx, "dashboards")?.clone();
        let database = body.remove("database").unwrap_or_default();
        let table_prefix = body.remove("table_prefix").unwrap_or_else(|| json!(""));
        body.insert(
            "connections".into(),
            json!({ "db": {
                "connection_id": connection_id.to_value(),
                "database": database,
                "table_prefix": table_prefix,
            }}),
        );
        body.insert("user_id".into(), user_id.to_value());
        let url = self.api(&["v1", "clients", &client.to_string(), "autodash"])?;
        let answer = self
            .call(step, Auth::Cookie, || {
                self.http.inner().post(url.clone()).json(&body)
            })
            .await?;
        let id = created_id(step, &answer, "autodash job")?;
        done(StepDone::default().with("dashboard_job_id", id.to_value()))
    }

    async fn poll_dashboards(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let step = ctx.step.name;
        let client = earlier(ctx, "client_id")?;
        let job = earlier(ctx, "dashboard_job_id")?;
        let url = self.api(&[
            "v1",
            "clients",
            &client.to_string(),
            "autodash",
            &job.to_string(),
        ])?;
        let answer = self
            .call(step, Auth::Cookie, || self.http.inner().get(url.clone()))
            .await?;
        let body = body_json(step, &answer, answers::EXPECTED_AUTODASH)?;
        let job = Autodash::read(&body)
            .map_err(|got| unreadable(step, &answer, answers::EXPECTED_AUTODASH, &got))?;
        match job.status.phase() {
            Phase::Completed => done(StepDone::default()),
            Phase::Failed => Err(job_failed(step, "dashboard creation", &answer)),
            Phase::Waiting => pending(&job.status.word),
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
        // One call's timeout, though a step may make several (a look-up
        // before a create, a token): the engine renews the lease while the
        // step runs, so the lease only bounds how long a dead holder blocks.
        self.settings.calls.timeout()
    }

    fn concurrency(&self) -> usize {
        self.settings.calls.concurrency.get()
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

/// An id an earlier step put in the outputs.
fn earlier(ctx: &StepContext<'_>, key: &str) -> Result<Id, StepError> {
    match ctx.outputs.get(key).map(Id::read) {
        Some(Ok(Some(id))) => Ok(id),
        _ => Err(StepError::rejected(
            None,
            format!("{} needs {key} from an earlier step", ctx.step.name),
        )),
    }
}

/// A 2xx body as JSON; not JSON is an unreadable answer.
fn body_json(step: &str, answer: &Response, expected: &str) -> Result<Value, StepError> {
    serde_json::from_slice(&answer.body).map_err(|e| {
        let got = match e.classify() {
            serde_json::error::Category::Eof if answer.body.is_empty() => "an empty body",
            serde_json::error::Category::Eof => "truncated JSON",
            _ => "a body that is not JSON",
        };
        unreadable(step, answer, expected, got)
    })
}

/// An answer that cannot be read: what was expected and the shape that came
/// (never a value), as a transient `bad_response`.
fn unreadable(step: &str, answer: &Response, expected: &str, got: &str) -> StepError {
    StepError::Transient {
        reason: RetryReason::BadResponse,
        retry_after: None,
        http_status: Some(answer.status),
        message: format!(
            "{step}: unexpected response body ({} bytes): expected {expected}; got {got}",
            answer.body.len()
        ),
    }
}

/// The new object's id from a create answer (point 12).
fn created_id(step: &str, answer: &Response, what: &str) -> Result<Id, StepError> {
    let expected = format!("an object with the new {what}'s id");
    let body = body_json(step, answer, &expected)?;
    Created::required(&body).map_err(|got| unreadable(step, answer, &expected, &got))
}

fn job_failed(step: &str, what: &str, answer: &Response) -> StepError {
    let why = detail(&answer.body).unwrap_or_else(|| "no reason given".into());
    StepError::job_failed(format!(
        "{step}: the provider reported the {what} as failed: {why}"
    ))
}

#[cfg(test)]
mod tests;
