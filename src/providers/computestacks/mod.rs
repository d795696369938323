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
//! Files: `steps` (the four steps), `adopt` (finding what an interrupted
//! create made), `calls` (reading answers, scrubbing secrets from errors),
//! `input`, `wire`; this file holds the plan and the [`Provider`] impl.
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

mod adopt;
mod calls;
mod input;
mod steps;
#[cfg(test)]
mod tests;
mod wire;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use url::Url;

use crate::config::ComputeStacksSettings;
use crate::domain::{Operation, ProviderId};
use crate::engine::step::{
    PollPolicy, Provider, RetryPolicy, StepContext, StepError, StepKey, StepOutcome,
};
use crate::metrics::Metrics;
use crate::providers::http::HttpClient;

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
