//! The input connection's steps: `create_connection` (adopting what an earlier
//! attempt made, point 21) and `poll_connection`, over the client's connection list.

use url::Url;

use crate::engine::step::{StepContext, StepDone, StepError, StepOutcome};
use crate::providers::http::Response;

use super::answers::{Connection, Id};
use super::calls::{body_json, created_id, done, earlier, pending, section, unreadable, Auth};
use super::{answers, MagentoBi};

const EXPECTED_CONNECTIONS: &str =
    "a list of connections with id (bare, or under connections/data/items/results)";

impl MagentoBi {
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

    pub(super) async fn create_connection(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
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

    pub(super) async fn poll_connection(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
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
}
