//! The connection test's steps: `test_connection` (adopting what an earlier
//! attempt started, point 21) and `poll_connection_test`, which picks our job
//! from the client's job list (points 1 to 7).

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;
use url::Url;

use crate::domain::RetryReason;
use crate::engine::step::{StepContext, StepDone, StepError, StepOutcome};
use crate::providers::http::{detail, Response};

use super::answers::{Created, Id, Job, OurTest, Phase, Pick};
use super::calls::{body_json, done, earlier, pending, unreadable, Auth};
use super::{answers, MagentoBi};

/// Output: the connection-test job's id, when the POST answered one (point 3).
pub(super) const TEST_JOB_ID: &str = "connection_test_job_id";
/// Output: job ids listed just before the test was posted (point 3).
const TESTS_BEFORE: &str = "connection_tests_before";
/// More earlier jobs than this are not kept (point 3's last rule then waits).
const MAX_TESTS_BEFORE: usize = 500;

impl MagentoBi {
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

    pub(super) async fn test_connection(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
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

    pub(super) async fn poll_connection_test(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
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
}
