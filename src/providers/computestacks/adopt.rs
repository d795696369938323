//! How `create_user` and `create_order` recognise what an interrupted earlier
//! attempt of the same request made, to adopt it (`repeat_detected`) instead
//! of creating another (the module doc's "Recognising our own earlier create").

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::engine::step::{StepDone, StepError};

use super::calls::read;
use super::{wire, ComputeStacks, CREATE_ORDER, CREATE_USER};

impl ComputeStacks {
    /// The user an interrupted `create_user` of this request may have made:
    /// `Some` (adopted) when the user holding the request's email is the one
    /// the request describes, `None` when there is no such user.
    pub(super) async fn earlier_user(
        &self,
        wanted: &Map<String, Value>,
    ) -> Result<Option<StepDone>, StepError> {
        let text = |key: &str| {
            wanted
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim()
        };
        // The provider keeps emails lower-cased and compares them as stored.
        let email = text("email").to_lowercase();
        let key = base64::engine::general_purpose::STANDARD.encode(email.as_bytes());
        let mut url = self.url(&["api", "admin", "users", &key])?;
        url.query_pairs_mut().append_pair("find_by_email", "true");
        let response = match self
            .http
            .send(CREATE_USER, self.as_admin(self.http.inner().get(url)))
            .await
        {
            Ok(response) => response,
            Err(StepError::Rejected {
                http_status: Some(404),
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let found = read(CREATE_USER, &response, wire::user)?;
        let external_id = match wanted.get("external_id") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let differs = [
            (
                "email",
                found.email.as_deref().map(str::to_lowercase),
                Some(email.clone()),
            ),
            (
                "fname",
                found.fname.map(|s| s.trim().to_string()),
                Some(text("fname").to_string()),
            ),
            (
                "lname",
                found.lname.map(|s| s.trim().to_string()),
                Some(text("lname").to_string()),
            ),
        ]
        .into_iter()
        // A name the answer does not show is no evidence either way; the email is.
        .filter(|(key, shown, _)| *key == "email" || shown.is_some())
        .chain(external_id.map(|id| ("external_id", found.external_id.clone(), Some(id))))
        .filter(|(_, shown, sent)| shown != sent)
        .map(|(key, _, _)| key)
        .collect::<Vec<_>>();
        if !differs.is_empty() {
            return Err(StepError::rejected(
                None,
                format!(
                    "provider rejected create_user: an earlier attempt of this request may have \
                     created the user, but the user holding this email differs from the request \
                     ({}); not adopting it",
                    differs.join(", ")
                ),
            ));
        }
        let mut done = StepDone::default().with("user_id", found.id.to_value());
        done.repeat_detected = true;
        Ok(Some(done))
    }

    /// The order an interrupted `create_order` of this request may have placed
    /// in the account this request created: `Some` (adopted) when exactly one
    /// order there is the one the request describes, `None` when none is.
    pub(super) async fn earlier_order(
        &self,
        order: &Map<String, Value>,
        username: &str,
        password: &str,
    ) -> Result<Option<StepDone>, StepError> {
        let as_user = |r: reqwest::RequestBuilder| r.basic_auth(username, Some(password));
        let wanted = order
            .get("project_name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let request = as_user(self.http.inner().get(self.url(&["api", "orders"])?));
        let response = self.http.send(CREATE_ORDER, request).await?;
        let listed = read(CREATE_ORDER, &response, wire::orders)?;
        // Listed with another project name: another order. Without a name yet: maybe ours.
        let candidates: Vec<&wire::Listed> = listed
            .iter()
            .filter(|o| match (wanted, o.project_name.as_deref()) {
                (Some(wanted), Some(shown)) => wanted == shown,
                _ => true,
            })
            .collect();
        let candidate = match candidates.as_slice() {
            [] => return Ok(None),
            [one] => &one.id,
            many => {
                return Err(ambiguous_order(format!(
                    "{} orders in the account could be it",
                    many.len()
                )))
            }
        };
        let request =
            as_user(
                self.http
                    .inner()
                    .get(self.url(&["api", "orders", &candidate.segment()])?),
            );
        let response = self.http.send(CREATE_ORDER, request).await?;
        let shown = read(CREATE_ORDER, &response, |body| {
            wire::order_state(body, candidate)
        })?;
        match (wanted, shown.project_name.as_deref()) {
            (Some(wanted), Some(name)) if wanted != name => return Ok(None),
            (Some(_), None) => {
                return Err(ambiguous_order(
                    "the account's order does not show its project name".into(),
                ))
            }
            _ => {}
        }
        let mut done = StepDone::default()
            .with("order_id", candidate.to_value())
            .with("load_balancer_ip", shown.load_balancer_ip);
        done.repeat_detected = true;
        Ok(Some(done))
    }
}

fn ambiguous_order(why: String) -> StepError {
    StepError::rejected(
        None,
        format!(
            "provider rejected create_order: an earlier attempt of this request may have placed \
             the order, and {why}; not placing another, nor adopting one"
        ),
    )
}
