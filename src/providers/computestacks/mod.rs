//! ComputeStacks (CONTRACT §4 "computestacks / onboard", after the provider's
//! "custom onboarding" guide): a user, an API credential for that user, an
//! order placed as that user, then waiting for the order's project.
//!
//! Owns the four steps and their HTTP calls; `input` checks the request's
//! `input`, `wire` reads the provider's answers. Admin calls carry the
//! configured admin Basic auth; the order is placed and polled with the new
//! credential, whose password travels only through the engine's private
//! `secrets` (never an output, a log line or an error message).
//!
//! # Open points of the guide, and the readings accepted
//!
//! The guide shows one example per answer. Where it leaves an answer's shape, a
//! spelling, an id's type, a field's presence or an error's form open, the
//! client accepts every reading below (readers in `wire`, tested as tables
//! there) and the sandbox serves each one (`sandbox::computestacks::Readings`,
//! the end-to-end tests run a whole onboarding under each). Requests go out
//! exactly as the guide shows them. 19 open points:
//!
//! 1. **Created user**: `{"user": {..}}` (the guide's pattern for every
//!    object) or the bare user (the provider's admin API docs show it bare).
//! 2. **User id**: a number or a numeric string (`13`, `"13"`); output as a number.
//! 3. **Created API credential**: `{"api_credential": {..}}` (the guide) or bare.
//! 4. **Credential id**: a number or a numeric string; output as a number.
//! 5. **Catalogue** (`GET /api/products`): `{"products": [..]}` (the guide),
//!    `{"data": [..]}` or a bare list. Entries without a usable id or name are
//!    skipped (they can match no name).
//! 6. **Product id**: a number or a numeric string; sent as the guide shows it,
//!    a number (a non-numeric id is sent as the provider gave it).
//! 7. **Product name's letter case**: an exact match first, else one match
//!    ignoring case; two matches are ambiguous and rejected, naming the name.
//! 8. **Created order**: `{"order": {..}}` (the guide) or bare. A list is
//!    refused: which item is ours cannot be told from one create's answer.
//! 9. **Order id**: a UUID string (the guide), a number or a numeric string;
//!    output as a string or (when numeric) a number.
//! 10. **Load balancer IP**: `order.load_balancer_ip` (the guide),
//!     `order.load_balancer.ip`, or `order_data.load_balancer_ip` (where the
//!     provider keeps it, shown by `GET /api/orders/{id}`). Null, absent or not
//!     an IP address: `load_balancer_ip` is output `null` by `create_order` and
//!     filled in by `poll_order` when the order shows it.
//! 11. **Order shown by `GET /api/orders/{id}`**: wrapped, bare, or a list
//!     holding it (bare, under `orders` or under `data`). It is taken only when
//!     it is ours: a shown `id` must be ours, and a list item is taken by its
//!     `id` only (never a lone item without one).
//! 12. **Order status in any letter case**: `completed`, `Completed`,
//!     `COMPLETED`; `failed`, `cancelled` or `canceled` are `job_failed`;
//!     anything else (`open`, `pending`, `awaiting_payment`, `processing`) is
//!     "not yet".
//! 13. **Project**: `project` null, absent or `{"id": null}` is "not yet",
//!     also when the status already says completed; its id a number or a
//!     numeric string.
//! 14. **`null` versus absent** for every optional field (`redirect_url`,
//!     `project`, `location`, `external_id`, `load_balancer_ip`...): the same.
//! 15. **Unknown extra fields**, at the top or inside an object: ignored.
//! 16. **Error bodies**: `{"errors": [..]}` (the provider's Rails answers),
//!     `{"errors": {"email": [..]}}`, `{"error": ".."}`, `{"message": ".."}`,
//!     plain text or nothing. A short reason is quoted from the JSON forms
//!     ([`http::detail`](crate::providers::http::detail)), never from plain
//!     text; submitted passwords are masked in any case.
//! 17. **Success status**: any 2xx (the provider answers creates with 201).
//! 18. **User lookup** (`GET /api/admin/users/{key}?find_by_email=true`):
//!     wrapped (the docs) or bare; a 404, with or without a body, is "no such user".
//! 19. **The user's orders** (`GET /api/orders`): `{"orders": [..]}` (the API
//!     docs), `{"data": [..]}` or bare; `project` null until provisioned.
//!
//! An answer still unreadable is a transient `bad_response` whose message says
//! what was expected and what came, by shape and field names only:
//! `create_order: unexpected response body (52 bytes): expected an order object
//! with id; got a list of 2 items`.
//!
//! # Recognising our own earlier create
//!
//! When the engine says a claim may repeat an interrupted attempt
//! (`possible_repeat`), each create first asks the provider what it offers:
//! - `create_user`: the admin API's user lookup by email (`GET
//!   /api/admin/users/{base64(email)}?find_by_email=true`, the provider's admin
//!   API docs; an email is unique at ComputeStacks). No such user: created. A
//!   user matching the request (email, `fname`, `lname`, and `external_id` when
//!   the request gives one): adopted (`repeat_detected`), no second create. A
//!   user that differs: `rejected`, naming `create_user` and the earlier
//!   attempt; it is not adopted and nothing is sent.
//! - `create_api_credential`: the API offers no way. It lists no credentials and
//!   shows a password only in the create's answer, so an earlier credential could
//!   not be used even if found. A repeat makes a second credential on the same
//!   user (counted by the engine as made afresh); the window stays as CONTRACT
//!   §6 and the README say.
//! - `create_order`: the user's orders (`GET /api/orders`, as the new user: the
//!   account is this request's own). Orders whose project name (listed, or
//!   `order_data.project_name` of `GET /api/orders/{id}`) is the request's
//!   `project_name` are candidates (every order, when the request names none).
//!   None: placed. One: adopted with its id and load balancer IP, no second
//!   order. More than one, or one whose project name cannot be read:
//!   `rejected`, naming `create_order` and the earlier attempt.
//! - `poll_order` only reads.

mod input;
mod wire;

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use url::Url;

use crate::config::ComputeStacksSettings;
use crate::domain::{Operation, ProviderId, RetryReason};
use crate::engine::step::{
    PollPolicy, Provider, RetryPolicy, StepContext, StepDone, StepError, StepKey, StepOutcome,
};
use crate::metrics::Metrics;
use crate::providers::http::{HttpClient, Response};

use wire::{Id, Status};

const CREATE_USER: &str = "create_user";
const CREATE_API_CREDENTIAL: &str = "create_api_credential";
const CREATE_ORDER: &str = "create_order";
const POLL_ORDER: &str = "poll_order";

/// Where the credential's password is kept between steps (engine secrets).
const API_PASSWORD: &str = "api_password";

/// The ComputeStacks provider.
pub struct ComputeStacks {
    settings: ComputeStacksSettings,
    /// `base_url`, parsed once; a bad one fails each step instead of the start-up
    /// of a worker that may never be asked for this provider.
    base: Result<Url, String>,
    http: HttpClient,
}

impl ComputeStacks {
    pub fn new(settings: &ComputeStacksSettings, metrics: Metrics) -> Self {
        let base = Url::parse(&settings.base_url)
            .ok()
            .filter(|u| !u.cannot_be_a_base())
            .ok_or_else(|| "providers.computestacks.base_url is not an http(s) URL".to_string());
        ComputeStacks {
            settings: settings.clone(),
            base,
            http: HttpClient::new(ProviderId::Computestacks, &settings.calls, metrics),
        }
    }

    /// `base_url` plus path segments, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, StepError> {
        let mut url = self
            .base
            .clone()
            .map_err(|m| StepError::rejected(None, m))?;
        url.path_segments_mut()
            .expect("checked: can be a base")
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn as_admin(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.basic_auth(
            &self.settings.admin_username,
            Some(self.settings.admin_password.expose()),
        )
    }

    async fn create_user(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
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

    /// The user an interrupted `create_user` of this request may have made:
    /// `Some` (adopted) when the user holding the request's email is the one
    /// the request describes, `None` when there is no such user.
    async fn earlier_user(
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

    async fn create_api_credential(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
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

    async fn create_order(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
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

    /// The order an interrupted `create_order` of this request may have placed
    /// in the account this request created: `Some` (adopted) when exactly one
    /// order there is the one the request describes, `None` when none is.
    async fn earlier_order(
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

    async fn poll_order(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
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

#[async_trait]
impl Provider for ComputeStacks {
    fn id(&self) -> ProviderId {
        ProviderId::Computestacks
    }

    fn plan(&self, operation: Operation, input: &Value) -> Result<Vec<StepKey>, String> {
        match operation {
            Operation::Onboard => {
                input::validate(input)?;
                Ok(vec![
                    StepKey::new(CREATE_USER),
                    StepKey::new(CREATE_API_CREDENTIAL),
                    StepKey::new(CREATE_ORDER),
                    StepKey::new(POLL_ORDER),
                ])
            }
            other => Err(format!("operation {other} is not offered by computestacks")),
        }
    }

    fn poll_policy(&self, step: &str) -> Option<PollPolicy> {
        (step == POLL_ORDER)
            .then(|| self.settings.polls.get(POLL_ORDER))
            .flatten()
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
            CREATE_USER => self.create_user(ctx).await,
            CREATE_API_CREDENTIAL => self.create_api_credential(ctx).await,
            CREATE_ORDER => self.create_order(ctx).await,
            POLL_ORDER => self.poll_order(ctx).await,
            other => Err(StepError::rejected(
                None,
                format!("computestacks has no step {other}"),
            )),
        }
    }
}

/// Parses a 2xx answer and reads it with `reader`; what cannot be read is a
/// transient `bad_response` saying what was expected and what came.
fn read<T>(
    step: &str,
    response: &Response,
    reader: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<T, StepError> {
    let body: Value = response.json(step)?;
    reader(&body).map_err(|why| StepError::Transient {
        reason: RetryReason::BadResponse,
        retry_after: None,
        http_status: Some(response.status),
        message: format!(
            "{step}: unexpected response body ({} bytes): {why}",
            response.body.len()
        ),
    })
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

/// Masks `secrets` in an error's message: a provider may quote a submitted
/// value back in its error body, and that body's reason ends up in the message.
fn scrub(error: StepError, secrets: &[&str]) -> StepError {
    let clean = |message: String| {
        secrets
            .iter()
            .filter(|s| !s.is_empty())
            .fold(message, |m, s| m.replace(s, "[redacted]"))
    };
    match error {
        StepError::Transient {
            reason,
            retry_after,
            http_status,
            message,
        } => StepError::Transient {
            reason,
            retry_after,
            http_status,
            message: clean(message),
        },
        StepError::Rejected {
            http_status,
            message,
        } => StepError::Rejected {
            http_status,
            message: clean(message),
        },
        StepError::JobFailed { message } => StepError::JobFailed {
            message: clean(message),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PollSettings, Settings};
    use crate::engine::local::{run_plan, LocalRun};
    use crate::sandbox::computestacks::{Api, Options, Readings};
    use crate::sandbox::faults::{Fault, FaultRule};

    struct Harness {
        api: Api,
        provider: ComputeStacks,
    }

    /// A sandbox on a free port (orders take 300 ms) and a provider pointed at it.
    async fn harness() -> Harness {
        let mut settings = Settings::load(None).expect("default settings load");
        let cs = &mut settings.providers.computestacks;
        let api = Api::new(Options {
            admin_username: cs.admin_username.clone(),
            admin_password: cs.admin_password.expose().to_string(),
            order_duration: Duration::from_millis(300),
            readings: Readings::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = api.router();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        cs.base_url = format!("http://{addr}");
        cs.calls.timeout_ms = 5_000;
        cs.calls.max_attempts = 3.try_into().unwrap();
        cs.polls.insert(
            POLL_ORDER.into(),
            PollSettings {
                interval_ms: 25,
                growth: 1.0,
                max_interval_ms: 25,
                deadline_ms: 5_000,
            },
        );
        Harness {
            provider: ComputeStacks::new(cs, Metrics::new()),
            api,
        }
    }

    const USER_PASSWORD: &str = "user-pass-Zq7";

    fn onboarding(email: &str, resources: Value) -> Value {
        json!({
            "user": {"fname": "Ada", "lname": "Lovelace", "email": email,
                     "password": USER_PASSWORD, "password_confirmation": USER_PASSWORD,
                     "skip_email_confirm": true, "external_id": "crm-42",
                     "company_name": "Analytical Engines"},
            "order": {"project_name": "site", "location_id": 1,
                      "containers": [{"image_id": 4, "resources": resources,
                                      "params": [], "domains": []}]}
        })
    }

    async fn run(h: &Harness, input: &Value) -> LocalRun {
        run_plan(
            &h.provider,
            Operation::Onboard,
            input,
            Duration::from_millis(25),
            200,
        )
        .await
        .expect("plan accepted and finished")
    }

    fn names(run: &LocalRun) -> Vec<&'static str> {
        run.steps_done.iter().map(|s| s.name).collect()
    }

    /// Every output and error text of a run, for leak checks.
    fn printed(run: &LocalRun) -> String {
        let failure = run
            .failure
            .as_ref()
            .map(|(_, e)| format!("{e} {e:?}"))
            .unwrap_or_default();
        format!("{:?} {failure}", run.outputs)
    }

    fn assert_no_secret_printed(run: &LocalRun) {
        let printed = printed(run);
        assert!(
            !printed.contains(USER_PASSWORD),
            "user password in {printed}"
        );
        if let Some(p) = run.secrets.get(API_PASSWORD).and_then(Value::as_str) {
            assert!(!printed.contains(p), "api password in {printed}");
        }
    }

    #[tokio::test]
    async fn onboard_with_a_product_name_creates_what_the_outputs_say() {
        let h = harness().await;
        let run = run(
            &h,
            &onboarding("ada@example.com", json!({"product": "medium"})),
        )
        .await;
        assert!(run.failure.is_none(), "{:?}", run.failure);
        assert_eq!(
            names(&run),
            vec![CREATE_USER, CREATE_API_CREDENTIAL, CREATE_ORDER, POLL_ORDER]
        );
        assert!(run.polls > 0, "the order took a while");

        let users = h.api.users();
        let credentials = h.api.api_credentials();
        let orders = h.api.orders();
        assert_eq!((users.len(), credentials.len(), orders.len()), (1, 1, 1));
        let (user, credential, order) = (&users[0], &credentials[0], &orders[0]);
        let expected: Map<String, Value> = json!({
            "user_id": user.id,
            "api_credential_id": credential.id,
            "api_username": credential.username,
            "order_id": order.id,
            "project_id": order.project_id.expect("completed with a project"),
            "load_balancer_ip": order.load_balancer_ip,
        })
        .as_object()
        .unwrap()
        .clone();
        assert_eq!(run.outputs, expected);

        assert_eq!(credential.user_id, user.id);
        assert_eq!(credential.name, input::DEFAULT_CREDENTIAL_NAME);
        assert_eq!(order.user_id, user.id, "ordered as the new user");
        assert_eq!(order.product_ids, vec![2], "medium resolved to its id");
        assert_eq!(order.project_name, "site");
        assert_eq!(user.external_id.as_deref(), Some("crm-42"));
        assert_eq!(
            user.other["company_name"], "Analytical Engines",
            "unknown fields pass through"
        );
        assert!(run.secrets[API_PASSWORD].is_string());
        assert_no_secret_printed(&run);
        assert_eq!(h.api.knobs.calls("GET /api/products"), 1);
        assert_eq!(h.api.knobs.calls("POST /api/orders"), 1);
    }

    #[tokio::test]
    async fn onboard_with_a_product_id_skips_the_catalogue() {
        let h = harness().await;
        let mut input = onboarding("ada@example.com", json!({"product_id": 3}));
        input["api_credential"] = json!({"name": "billing"});
        let run = run(&h, &input).await;
        assert!(run.failure.is_none(), "{:?}", run.failure);
        let order = &h.api.orders()[0];
        assert_eq!(order.product_ids, vec![3]);
        assert_eq!(run.outputs["order_id"], json!(order.id));
        assert_eq!(run.outputs["project_id"], json!(order.project_id.unwrap()));
        assert_eq!(h.api.api_credentials()[0].name, "billing");
        assert_eq!(h.api.knobs.calls("GET /api/products"), 0);
    }

    #[tokio::test]
    async fn an_unknown_product_is_rejected_naming_it_before_any_order() {
        let h = harness().await;
        let run = run(
            &h,
            &onboarding("ada@example.com", json!({"product": "jumbo"})),
        )
        .await;
        let (step, error) = run.failure.as_ref().expect("fails");
        assert_eq!(step.name, CREATE_ORDER);
        match error {
            StepError::Rejected {
                http_status,
                message,
            } => {
                assert_eq!(*http_status, None);
                assert_eq!(
                    message,
                    "provider rejected create_order: unknown product \"jumbo\""
                );
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert_eq!(h.api.knobs.calls("POST /api/orders"), 0);
        assert!(
            run.outputs.contains_key("user_id"),
            "what was created is kept"
        );
        assert_no_secret_printed(&run);
    }

    #[tokio::test]
    async fn an_existing_email_is_rejected_with_422_at_create_user() {
        let h = harness().await;
        let first = run(&h, &onboarding("ada@example.com", json!({"product_id": 1}))).await;
        assert!(first.failure.is_none());
        let run = run(&h, &onboarding("ada@example.com", json!({"product_id": 1}))).await;
        let (step, error) = run.failure.as_ref().expect("fails");
        assert_eq!(step.name, CREATE_USER);
        assert!(
            matches!(
                error,
                StepError::Rejected {
                    http_status: Some(422),
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "provider rejected create_user: Email has already been taken"
        );
        assert!(run.outputs.is_empty());
        assert_eq!(h.api.users().len(), 1);
        assert_no_secret_printed(&run);
    }

    #[tokio::test]
    async fn a_failed_order_is_job_failed() {
        let h = harness().await;
        h.api.fail_orders_for_project("site");
        let run = run(
            &h,
            &onboarding("ada@example.com", json!({"product": "small"})),
        )
        .await;
        let (step, error) = run.failure.as_ref().expect("fails");
        assert_eq!(step.name, POLL_ORDER);
        let order_id = run.outputs["order_id"].as_str().unwrap();
        assert!(matches!(error, StepError::JobFailed { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("order {order_id} failed")),
            "{error}"
        );
        assert_eq!(h.api.orders()[0].status, "failed");
        assert!(!run.outputs.contains_key("project_id"));
        assert_no_secret_printed(&run);
    }

    #[tokio::test]
    async fn transient_faults_are_retried_without_a_second_order() {
        let h = harness().await;
        for path in ["/api/products", "/api/orders/"] {
            h.api.knobs.inject(FaultRule {
                method: Some("GET".into()),
                path_contains: path.into(),
                fault: Fault::Status { status: 503 },
                times: 1,
            });
        }
        let run = run(
            &h,
            &onboarding("ada@example.com", json!({"product": "large"})),
        )
        .await;
        assert!(run.failure.is_none(), "{:?}", run.failure);
        assert_eq!(h.api.knobs.calls("GET /api/products"), 2);
        assert_eq!(h.api.knobs.calls("POST /api/orders"), 1);
        assert_eq!(h.api.orders()[0].product_ids, vec![3]);
    }

    #[tokio::test]
    async fn the_api_password_stays_out_of_outputs_and_errors_even_when_echoed() {
        let h = harness().await;
        let run = run(&h, &onboarding("ada@example.com", json!({"product_id": 1}))).await;
        let password = run.secrets[API_PASSWORD].as_str().unwrap().to_string();
        assert!(password.len() >= 20);
        assert!(!format!("{:?}", run.outputs).contains(&password));
        assert!(!format!("{:?}", run.outputs).contains(USER_PASSWORD));

        // A provider quoting a submitted value back: the message masks it.
        let echoed = StepError::rejected(
            Some(422),
            format!("provider rejected create_order: {password} is not allowed"),
        );
        let message = scrub(echoed, &[&password]).to_string();
        assert_eq!(
            message,
            "provider rejected create_order: [redacted] is not allowed"
        );
    }

    #[tokio::test]
    async fn a_wrong_api_password_is_rejected_401_without_quoting_it() {
        let h = harness().await;
        let input = onboarding("ada@example.com", json!({"product_id": 1}));
        let outputs: Map<String, Value> = json!({"user_id": 1, "api_username": "nobody"})
            .as_object()
            .unwrap()
            .clone();
        let secrets: Map<String, Value> = json!({ API_PASSWORD: "not-the-password-1234" })
            .as_object()
            .unwrap()
            .clone();
        let step = StepKey::new(CREATE_ORDER);
        let ctx = StepContext {
            request_id: "r-1",
            operation: Operation::Onboard,
            input: &input,
            outputs: &outputs,
            secrets: &secrets,
            step: &step,
            attempt: 0,
            polls: 0,
            poll_state: None,
            possible_repeat: false,
        };
        let error = h.provider.run(&ctx).await.unwrap_err();
        assert_eq!(error.http_status(), Some(401));
        assert!(!format!("{error} {error:?}").contains("not-the-password-1234"));
    }

    #[test]
    fn login_url_is_not_an_operation_of_computestacks() {
        let provider = ComputeStacks::new(
            &Settings::load(None).unwrap().providers.computestacks,
            Metrics::new(),
        );
        let input = onboarding("ada@example.com", json!({"product_id": 1}));
        assert_eq!(
            provider.plan(Operation::LoginUrl, &input),
            Err("operation login_url is not offered by computestacks".to_string())
        );
        assert_eq!(provider.plan(Operation::Onboard, &input).unwrap().len(), 4);
        assert_eq!(
            provider.plan(Operation::Onboard, &json!({})),
            Err("input.user is required".to_string())
        );
    }

    #[test]
    fn only_poll_order_has_a_poll_policy_from_settings() {
        let settings = Settings::load(None).unwrap().providers.computestacks;
        let provider = ComputeStacks::new(&settings, Metrics::new());
        let policy = provider.poll_policy(POLL_ORDER).expect("poll_order polls");
        assert_eq!(
            policy,
            crate::providers::poll_policy(&settings.polls[POLL_ORDER])
        );
        for step in [CREATE_USER, CREATE_API_CREDENTIAL, CREATE_ORDER] {
            assert_eq!(provider.poll_policy(step), None, "{step}");
        }
    }

    #[tokio::test]
    async fn a_bad_base_url_fails_the_step_without_a_call() {
        let mut settings = Settings::load(None).unwrap().providers.computestacks;
        settings.base_url = "not a url".into();
        let provider = ComputeStacks::new(&settings, Metrics::new());
        let input = onboarding("ada@example.com", json!({"product_id": 1}));
        let run = run_plan(&provider, Operation::Onboard, &input, Duration::ZERO, 1)
            .await
            .unwrap();
        let (_, error) = run.failure.expect("fails");
        assert!(error.to_string().contains("base_url"), "{error}");
    }

    use crate::sandbox::computestacks::{
        each_reading, Envelope, ErrorForm, Ids, List, LoadBalancerIp, OrderIds, Shown,
    };

    /// The outputs a completed onboarding must have: what the sandbox holds.
    fn expected_outputs(h: &Harness, ip_shown: bool) -> Map<String, Value> {
        let users = h.api.users();
        let credentials = h.api.api_credentials();
        let orders = h.api.orders();
        let (user, credential, order) = (
            users.last().unwrap(),
            credentials.last().unwrap(),
            orders.last().unwrap(),
        );
        let order_id = match order.id.parse::<i64>() {
            Ok(n) => json!(n),
            Err(_) => json!(order.id),
        };
        json!({
            "user_id": user.id,
            "api_credential_id": credential.id,
            "api_username": credential.username,
            "order_id": order_id,
            "project_id": order.project_id.expect("completed with a project"),
            "load_balancer_ip": if ip_shown { json!(order.load_balancer_ip) } else { Value::Null },
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[tokio::test]
    async fn every_reading_of_an_open_point_onboards_with_the_outputs_the_sandbox_holds() {
        let h = harness().await;
        h.api.set_order_duration(Duration::from_millis(60));
        for (i, (why, readings)) in each_reading().into_iter().enumerate() {
            let ip_shown = readings.load_balancer_ip != LoadBalancerIp::Nowhere;
            h.api.set_readings(readings);
            let run = run(
                &h,
                &onboarding(
                    &format!("reading-{i}@example.com"),
                    json!({"product": "medium"}),
                ),
            )
            .await;
            assert!(run.failure.is_none(), "{why}: {:?}", run.failure);
            assert_eq!(run.outputs, expected_outputs(&h, ip_shown), "{why}");
            let order = h.api.orders().pop().unwrap();
            assert_eq!(
                order.product_ids,
                vec![2],
                "{why}: medium resolved to its id"
            );
            assert_no_secret_printed(&run);
        }
        let n = each_reading().len() as u64;
        assert_eq!(h.api.knobs.calls("POST /api/admin/users"), n);
        assert_eq!(h.api.knobs.calls("POST /api/orders"), n);
    }

    #[tokio::test]
    async fn a_taken_email_is_rejected_under_every_error_form_quoting_json_reasons_only() {
        let h = harness().await;
        let first = run(
            &h,
            &onboarding("taken@example.com", json!({"product_id": 1})),
        )
        .await;
        assert!(first.failure.is_none());
        for (form, expected) in [
            (
                ErrorForm::ErrorsList,
                "provider rejected create_user: Email has already been taken",
            ),
            (
                ErrorForm::ErrorsByField,
                "provider rejected create_user: email has already been taken",
            ),
            (
                ErrorForm::Error,
                "provider rejected create_user: Email has already been taken",
            ),
            (
                ErrorForm::Message,
                "provider rejected create_user: Email has already been taken",
            ),
            (
                ErrorForm::PlainText,
                "provider rejected create_user: HTTP 422",
            ),
        ] {
            h.api.set_readings(Readings {
                errors: form,
                ..Readings::default()
            });
            let again = run(
                &h,
                &onboarding("taken@example.com", json!({"product_id": 1})),
            )
            .await;
            let (step, error) = again.failure.as_ref().expect("rejected");
            assert_eq!(step.name, CREATE_USER, "{form:?}");
            assert_eq!(error.http_status(), Some(422), "{form:?}");
            assert_eq!(error.to_string(), expected, "{form:?}");
            assert_no_secret_printed(&again);
        }
        assert_eq!(h.api.users().len(), 1);
    }

    /// Runs one step as the engine would, with these outputs and secrets.
    async fn step(
        h: &Harness,
        input: &Value,
        outputs: &Map<String, Value>,
        secrets: &Map<String, Value>,
        name: &'static str,
        possible_repeat: bool,
    ) -> Result<StepOutcome, StepError> {
        let key = StepKey::new(name);
        let ctx = StepContext {
            request_id: "r-repeat",
            operation: Operation::Onboard,
            input,
            outputs,
            secrets,
            step: &key,
            attempt: 1,
            polls: 0,
            poll_state: None,
            possible_repeat,
        };
        h.provider.run(&ctx).await
    }

    fn done(outcome: Result<StepOutcome, StepError>) -> StepDone {
        match outcome {
            Ok(StepOutcome::Done(done)) => done,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_repeated_create_user_adopts_the_user_this_request_made_without_a_second_create() {
        for (why, readings) in [
            ("the guide's answers", Readings::default()),
            (
                "a bare user with a string id",
                Readings {
                    user: Envelope::Bare,
                    ids: Ids::NumericString,
                    ..Readings::default()
                },
            ),
        ] {
            let h = harness().await;
            h.api.set_readings(readings);
            let input = onboarding("Ada@Example.com", json!({"product_id": 1}));
            let (none, secrets) = (Map::new(), Map::new());
            let first = done(step(&h, &input, &none, &secrets, CREATE_USER, false).await);
            assert!(!first.repeat_detected, "{why}");
            let again = done(step(&h, &input, &none, &secrets, CREATE_USER, true).await);
            assert!(again.repeat_detected, "{why}: recognised");
            assert_eq!(again.outputs, first.outputs, "{why}: the same user");
            assert_eq!(h.api.users().len(), 1, "{why}");
            assert_eq!(
                h.api.knobs.calls("POST /api/admin/users"),
                1,
                "{why}: no second create"
            );
            assert_eq!(
                h.api.knobs.calls("GET /api/admin/users/{key}"),
                1,
                "{why}: one lookup"
            );
        }
    }

    #[tokio::test]
    async fn a_repeated_create_user_refuses_a_user_that_differs_from_the_request() {
        let h = harness().await;
        let (none, secrets) = (Map::new(), Map::new());
        let input = onboarding("ada@example.com", json!({"product_id": 1}));
        done(step(&h, &input, &none, &secrets, CREATE_USER, false).await);
        let mut other = input.clone();
        other["user"]["external_id"] = json!("crm-someone-else");
        other["user"]["lname"] = json!("Byron");
        let error = step(&h, &other, &none, &secrets, CREATE_USER, true)
            .await
            .expect_err("not adopted");
        assert!(
            matches!(
                error,
                StepError::Rejected {
                    http_status: None,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "provider rejected create_user: an earlier attempt of this request may have created \
             the user, but the user holding this email differs from the request (lname, \
             external_id); not adopting it"
        );
        assert!(!error.to_string().contains(USER_PASSWORD));
        assert_eq!(
            h.api.knobs.calls("POST /api/admin/users"),
            1,
            "nothing sent"
        );
    }

    #[tokio::test]
    async fn a_repeated_create_user_with_no_earlier_user_creates_it() {
        let h = harness().await;
        let (none, secrets) = (Map::new(), Map::new());
        let input = onboarding("new@example.com", json!({"product_id": 1}));
        let created = done(step(&h, &input, &none, &secrets, CREATE_USER, true).await);
        assert!(!created.repeat_detected);
        assert_eq!(created.outputs["user_id"], json!(h.api.users()[0].id));
        assert_eq!(
            h.api.knobs.calls("GET /api/admin/users/{key}"),
            1,
            "looked first"
        );
        assert_eq!(h.api.knobs.calls("POST /api/admin/users"), 1);
    }

    /// Outputs and secrets as they stand when `create_order` runs.
    async fn before_order(h: &Harness, input: &Value) -> (Map<String, Value>, Map<String, Value>) {
        let mut outputs = Map::new();
        let mut secrets = Map::new();
        for name in [CREATE_USER, CREATE_API_CREDENTIAL] {
            let d = done(step(h, input, &outputs, &secrets, name, false).await);
            outputs.extend(d.outputs);
            secrets.extend(d.secrets);
        }
        (outputs, secrets)
    }

    #[tokio::test]
    async fn a_repeated_create_order_adopts_the_order_this_request_placed() {
        for (why, readings) in [
            ("the guide's answers", Readings::default()),
            (
                "lists under data, numeric order ids, the IP known late",
                Readings {
                    orders: List::Data,
                    order_ids: OrderIds::Number,
                    order_shown: Shown::Bare,
                    load_balancer_ip: LoadBalancerIp::Late,
                    ..Readings::default()
                },
            ),
        ] {
            let h = harness().await;
            h.api.set_order_duration(Duration::ZERO);
            h.api.set_readings(readings.clone());
            let input = onboarding("ada@example.com", json!({"product": "small"}));
            let (outputs, secrets) = before_order(&h, &input).await;
            let placed = done(step(&h, &input, &outputs, &secrets, CREATE_ORDER, false).await);
            let again = done(step(&h, &input, &outputs, &secrets, CREATE_ORDER, true).await);
            assert!(again.repeat_detected, "{why}");
            assert_eq!(
                again.outputs["order_id"], placed.outputs["order_id"],
                "{why}"
            );
            let order = &h.api.orders()[0];
            assert_eq!(
                again.outputs["load_balancer_ip"],
                json!(order.load_balancer_ip),
                "{why}: the IP the order shows"
            );
            assert_eq!(h.api.orders().len(), 1, "{why}");
            assert_eq!(
                h.api.knobs.calls("POST /api/orders"),
                1,
                "{why}: no second order"
            );
            assert_eq!(h.api.knobs.calls("GET /api/orders"), 1, "{why}");
        }
    }

    #[tokio::test]
    async fn a_repeated_create_order_refuses_when_two_orders_could_be_it_and_places_none() {
        let h = harness().await;
        let input = onboarding("ada@example.com", json!({"product_id": 1}));
        let (outputs, secrets) = before_order(&h, &input).await;
        for _ in 0..2 {
            done(step(&h, &input, &outputs, &secrets, CREATE_ORDER, false).await);
        }
        let error = step(&h, &input, &outputs, &secrets, CREATE_ORDER, true)
            .await
            .expect_err("ambiguous");
        assert_eq!(
            error.to_string(),
            "provider rejected create_order: an earlier attempt of this request may have placed \
             the order, and 2 orders in the account could be it; not placing another, nor adopting one"
        );
        assert_eq!(h.api.knobs.calls("POST /api/orders"), 2);
    }

    #[tokio::test]
    async fn a_repeated_create_order_ignores_orders_of_another_project_and_places_its_own() {
        let h = harness().await;
        let input = onboarding("ada@example.com", json!({"product_id": 1}));
        let (outputs, secrets) = before_order(&h, &input).await;
        let mut other = input.clone();
        other["order"]["project_name"] = json!("another project");
        h.api.set_order_duration(Duration::ZERO);
        done(step(&h, &other, &outputs, &secrets, CREATE_ORDER, false).await);
        let placed = done(step(&h, &input, &outputs, &secrets, CREATE_ORDER, true).await);
        assert!(!placed.repeat_detected);
        assert_eq!(
            h.api.knobs.calls("POST /api/orders"),
            2,
            "its own order placed"
        );
        let ours = h.api.orders().pop().unwrap();
        assert_eq!(placed.outputs["order_id"], json!(ours.id));
        assert_eq!(ours.project_name, "site");
    }

    #[tokio::test]
    async fn a_repeated_create_api_credential_makes_a_second_one_as_the_api_offers_no_way_to_find_the_first(
    ) {
        let h = harness().await;
        let input = onboarding("ada@example.com", json!({"product_id": 1}));
        let (outputs, secrets) = before_order(&h, &input).await;
        let mut outputs = outputs;
        outputs.remove("api_credential_id");
        let again = done(step(&h, &input, &outputs, &secrets, CREATE_API_CREDENTIAL, true).await);
        assert!(!again.repeat_detected);
        assert_eq!(h.api.api_credentials().len(), 2);
        assert_eq!(h.api.knobs.calls("POST /api/users/{id}/api_credentials"), 2);
    }

    #[tokio::test]
    async fn an_order_answer_naming_another_order_is_never_taken_as_ours() {
        let h = harness().await;
        let input = onboarding("ada@example.com", json!({"product_id": 1}));
        let (mut outputs, secrets) = before_order(&h, &input).await;
        let placed = done(step(&h, &input, &outputs, &secrets, CREATE_ORDER, false).await);
        outputs.extend(placed.outputs);
        h.api.knobs.inject(FaultRule {
            method: Some("GET".into()),
            path_contains: "/api/orders/".into(),
            fault: Fault::Json200 {
                body: json!({"order": {"id": "someone-elses", "status": "completed",
                                       "project": {"id": 1}}}),
            },
            times: 1,
        });
        let error = step(&h, &input, &outputs, &secrets, POLL_ORDER, false)
            .await
            .expect_err("another order");
        assert!(
            matches!(
                error,
                StepError::Transient {
                    reason: RetryReason::BadResponse,
                    ..
                }
            ),
            "{error:?}"
        );
        let order_id = outputs["order_id"].as_str().unwrap();
        assert!(
            error.to_string().ends_with(&format!(
                "expected order {order_id} with status; got another order"
            )),
            "{error}"
        );
    }
}
