//! The four steps: `create_user`, `create_api_credential`, `create_order`
//! (resolving product names against the catalogue) and `poll_order`.

use serde_json::{json, Map, Value};

use crate::engine::step::{StepContext, StepDone, StepError, StepOutcome};

use super::calls::{read, scrub};
use super::wire::{Id, Status};
use super::{
    input, wire, ComputeStacks, API_PASSWORD, CREATE_API_CREDENTIAL, CREATE_ORDER, CREATE_USER,
    POLL_ORDER,
};

impl ComputeStacks {
    pub(super) async fn create_user(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
        let user = input::user(ctx.input)?;
        let passwords = [
            user["password"].as_str().unwrap_or_default(),
            user["password_confirmation"].as_str().unwrap_or_default(),
        ];
        if ctx.possible_repeat {
            if let Some(done) = self
                .earlier_user(user)
                .await
                .map_err(|e| scrub(e, &passwords))?
            {
                return Ok(StepOutcome::Done(done));
            }
        }
        let request = self
            .as_admin(
                self.http
                    .inner()
                    .post(self.url(&["api", "admin", "users"])?),
            )
            .json(&json!({ "user": user }));
        let response = self
            .http
            .send(CREATE_USER, request)
            .await
            .map_err(|e| scrub(e, &passwords))?;
        let created = read(CREATE_USER, &response, wire::user)?;
        Ok(StepOutcome::Done(
            StepDone::default().with("user_id", created.id.to_value()),
        ))
    }

    pub(super) async fn create_api_credential(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
        // A possible repeat is created afresh: the API lists no credentials and
        // shows a password only once (module doc).
        let user_id = earlier_id(ctx, "user_id")?;
        let url = self.url(&["api", "users", &user_id.segment(), "api_credentials"])?;
        let request = self
            .as_admin(self.http.inner().post(url))
            .json(&json!({ "api_credential": input::api_credential(ctx.input)? }));
        let response = self.http.send(CREATE_API_CREDENTIAL, request).await?;
        let credential = read(CREATE_API_CREDENTIAL, &response, wire::credential)?;
        Ok(StepOutcome::Done(
            StepDone::default()
                .with("api_credential_id", credential.id.to_value())
                .with("api_username", credential.username)
                .with_secret(API_PASSWORD, credential.password.expose()),
        ))
    }

    pub(super) async fn create_order(
        &self,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
        let (username, password) = user_credential(ctx)?;
        let as_user = |r: reqwest::RequestBuilder| r.basic_auth(username, Some(password));
        let mut order = input::order(ctx.input)?;

        if ctx.possible_repeat {
            if let Some(done) = self
                .earlier_order(&order, username, password)
                .await
                .map_err(|e| scrub(e, &[password]))?
            {
                return Ok(StepOutcome::Done(done));
            }
        }

        let wants_names = input::resources_mut(&mut order).any(|r| r.contains_key("product"));
        if wants_names {
            // The API takes product ids only; names are resolved against its catalogue.
            let request = as_user(self.http.inner().get(self.url(&["api", "products"])?));
            let response = self
                .http
                .send(CREATE_ORDER, request)
                .await
                .map_err(|e| scrub(e, &[password]))?;
            let catalogue = read(CREATE_ORDER, &response, wire::products)?;
            resolve_products(&mut order, &catalogue)?;
        }

        let request = as_user(self.http.inner().post(self.url(&["api", "orders"])?))
            .json(&json!({ "order": order }));
        let response = self
            .http
            .send(CREATE_ORDER, request)
            .await
            .map_err(|e| scrub(e, &[password]))?;
        let created = read(CREATE_ORDER, &response, wire::order_created)?;
        Ok(StepOutcome::Done(
            StepDone::default()
                .with("order_id", created.id.to_value())
                .with("load_balancer_ip", created.load_balancer_ip),
        ))
    }

    pub(super) async fn poll_order(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let (username, password) = user_credential(ctx)?;
        let order_id = earlier_id(ctx, "order_id")?;
        let request = self
            .http
            .inner()
            .get(self.url(&["api", "orders", &order_id.segment()])?)
            .basic_auth(username, Some(password));
        let response = self
            .http
            .send(POLL_ORDER, request)
            .await
            .map_err(|e| scrub(e, &[password]))?;
        let shown = read(POLL_ORDER, &response, |body| {
            wire::order_state(body, &order_id)
        })?;
        match (&shown.status, shown.project_id) {
            (Status::Completed, Some(project_id)) => {
                let mut done = StepDone::default().with("project_id", project_id.to_value());
                // Not in create_order's answer: the order shows it once known.
                let known = ctx
                    .outputs
                    .get("load_balancer_ip")
                    .is_some_and(|ip| !ip.is_null());
                if let (false, Some(ip)) = (known, shown.load_balancer_ip) {
                    done = done.with("load_balancer_ip", ip);
                }
                Ok(StepOutcome::Done(done))
            }
            (Status::Failed, _) => Err(StepError::job_failed(format!(
                "order {order_id} failed (status {})",
                shown.status_text
            ))),
            // "completed" without a project yet is still "not yet", as the guide says.
            _ => Ok(StepOutcome::Pending {
                status: shown.status_text,
                state: None,
            }),
        }
    }
}

/// An id an earlier step put in the outputs.
fn earlier_id(ctx: &StepContext<'_>, key: &str) -> Result<Id, StepError> {
    ctx.outputs.get(key).and_then(Id::read).ok_or_else(|| {
        StepError::rejected(
            None,
            format!(
                "{}: output {key} of an earlier step is missing",
                ctx.step.name
            ),
        )
    })
}

/// The new user's Basic auth: `api_username` (output) and `api_password` (secret).
fn user_credential<'a>(ctx: &'a StepContext<'_>) -> Result<(&'a str, &'a str), StepError> {
    let username = ctx.outputs.get("api_username").and_then(Value::as_str);
    let password = ctx.secrets.get(API_PASSWORD).and_then(Value::as_str);
    match (username, password) {
        (Some(u), Some(p)) => Ok((u, p)),
        _ => Err(StepError::rejected(
            None,
            format!(
                "{}: the API credential of create_api_credential is missing",
                ctx.step.name
            ),
        )),
    }
}

/// Replaces every `resources.product` name by its `product_id`: the entry of
/// that exact name, else the one entry of that name in another letter case.
fn resolve_products(
    order: &mut Map<String, Value>,
    catalogue: &[wire::Product],
) -> Result<(), StepError> {
    for resources in input::resources_mut(order) {
        let Some(name) = resources.remove("product") else {
            continue;
        };
        let name = name.as_str().unwrap_or_default();
        let exact: Vec<&wire::Product> = catalogue.iter().filter(|p| p.name == name).collect();
        let matches = if exact.is_empty() {
            catalogue
                .iter()
                .filter(|p| p.name.to_lowercase() == name.to_lowercase())
                .collect()
        } else {
            exact
        };
        let product = match matches.as_slice() {
            [one] => one,
            [] => {
                return Err(StepError::rejected(
                    None,
                    format!(
                        "provider rejected create_order: unknown product \"{}\"",
                        printable(name, 100)
                    ),
                ))
            }
            _ => {
                return Err(StepError::rejected(
                    None,
                    format!(
                        "provider rejected create_order: product name \"{}\" is ambiguous; give product_id",
                        printable(name, 100)
                    ),
                ))
            }
        };
        resources.insert("product_id".into(), product.id.to_value());
    }
    Ok(())
}

/// Provider text fit for a message: no control characters, bounded length.
fn printable(text: &str, max_chars: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}
