//! The dashboards' steps: `create_dashboards` (autodash) and `poll_dashboards`.

use serde_json::json;

use crate::engine::step::{StepContext, StepDone, StepError, StepOutcome};

use super::answers::{Autodash, Phase};
use super::calls::{
    body_json, created_id, done, earlier, job_failed, pending, section, unreadable, Auth,
};
use super::{answers, MagentoBi};

impl MagentoBi {
    pub(super) async fn create_dashboards(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
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

    pub(super) async fn poll_dashboards(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
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
