//! The client's steps: `create_signup` and `poll_signup` (which make the
//! client), `invite_user` and `update_client`.

use crate::engine::step::{StepContext, StepDone, StepError, StepOutcome};

use super::answers::{Phase, Signup};
use super::calls::{
    body_json, created_id, done, earlier, job_failed, pending, section, unreadable, Auth,
};
use super::{answers, MagentoBi};

impl MagentoBi {
    pub(super) async fn create_signup(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
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

    pub(super) async fn poll_signup(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
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

    pub(super) async fn invite_user(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
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

    pub(super) async fn update_client(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
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
}
