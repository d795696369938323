//! The four creates, one call each (after a look-up on a possible repeat).

use serde_json::{json, Map, Value};

use crate::engine::step::{StepDone, StepError};

use super::adopt::{could_be, says_exists};
use super::calls::read_optional;
use super::input::LoginTarget;
use super::{wire, Sharespine, CREATE_CONNECTION, CREATE_LOGIN_URL, CREATE_TENANT, CREATE_USER};

/// The seed's own body for "Create an API Connection", sent when the request has none.
pub(super) fn default_connection() -> Value {
    json!({"active": true, "name": "API", "type": "api", "configuration": {}})
}

impl Sharespine {
    pub(super) async fn create_tenant(
        &self,
        tenant: &Value,
        possible_repeat: bool,
    ) -> Result<StepDone, StepError> {
        if possible_repeat {
            if let Some(done) = self.earlier_tenant(tenant).await? {
                return Ok(done);
            }
        }
        let code_name = self
            .post(
                CREATE_TENANT,
                &["reseller", "tenant"],
                tenant,
                wire::code_name,
            )
            .await?;
        Ok(StepDone::default().with("code_name", code_name))
    }

    pub(super) async fn create_user(
        &self,
        code_name: &str,
        user: &Value,
        outputs: &Map<String, Value>,
        possible_repeat: bool,
    ) -> Result<StepDone, StepError> {
        let wanted = user
            .get("login")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let segments = ["reseller", "tenant", code_name, "user"];
        let mut repeat_detected = false;
        let mut listed = false;
        if possible_repeat {
            if let Some(logins) = self.lookup(CREATE_USER, &segments, wire::logins).await? {
                listed = true;
                repeat_detected = logins.contains(&wanted);
            }
        }
        let login = if repeat_detected {
            wanted
        } else {
            match self.call(CREATE_USER, &segments, Some(user)).await {
                Ok(response) => read_optional(CREATE_USER, &response, |body| {
                    wire::created_login(body, &wanted)
                })?,
                // Our own earlier attempt may have created it before its worker
                // died: in the tenant this request made, the login is ours.
                Err(StepError::Rejected {
                    http_status: Some(status @ (409 | 422)),
                    message,
                }) if possible_repeat && !listed && (status == 409 || says_exists(&message)) => {
                    repeat_detected = true;
                    wanted
                }
                Err(e) => return Err(e),
            }
        };
        let mut logins: Vec<Value> = outputs
            .get("logins")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // A step run again after its output was recorded must not list it twice.
        let login = Value::String(login);
        if !logins.contains(&login) {
            logins.push(login);
        }
        let mut done = StepDone::default().with("logins", logins);
        done.repeat_detected = repeat_detected;
        Ok(done)
    }

    pub(super) async fn create_connection(
        &self,
        code_name: &str,
        connection: &Value,
        possible_repeat: bool,
    ) -> Result<StepDone, StepError> {
        let segments = ["reseller", "tenant", code_name, "connection"];
        if possible_repeat {
            if let Some(listed) = self
                .lookup(CREATE_CONNECTION, &segments, wire::connections)
                .await?
            {
                let candidates: Vec<&wire::ListedConnection> = listed
                    .iter()
                    .filter(|c| could_be(connection, &c.fields))
                    .collect();
                match candidates.as_slice() {
                    [] => {}
                    [wire::ListedConnection { id: Some(id), .. }] => {
                        let mut done = StepDone::default().with("connection_id", id.as_str());
                        done.repeat_detected = true;
                        return Ok(done);
                    }
                    some => {
                        return Err(StepError::rejected(
                            None,
                            format!(
                                "provider rejected create_connection: an earlier attempt of this \
                                 request may have created the connection, and the tenant holds {} \
                                 that could be it{}; not creating another, nor adopting one",
                                some.len(),
                                if some.len() == 1 {
                                    " without showing its id"
                                } else {
                                    ""
                                }
                            ),
                        ))
                    }
                }
            }
        }
        let id = self
            .post(
                CREATE_CONNECTION,
                &segments,
                connection,
                wire::connection_id,
            )
            .await?;
        Ok(StepDone::default().with("connection_id", id))
    }

    pub(super) async fn create_login_url(
        &self,
        code_name: &str,
        target: &LoginTarget<'_>,
    ) -> Result<StepDone, StepError> {
        // A possible repeat issues another URL: the earlier one expires unused.
        let created = self
            .post(
                CREATE_LOGIN_URL,
                &["reseller", "tenant", code_name, "login", target.login],
                &json!({ "path": target.path }),
                wire::login_url,
            )
            .await?;
        Ok(StepDone::default()
            .with("login_url", created.url)
            .with("login_url_expires", created.expires))
    }
}
