//! Sharespine's Reseller API (CONTRACT §4 "sharespine / onboard" and
//! "sharespine / login_url"): owns the input checks ([`input`]), the plan, and the
//! four steps `create_tenant`, `create_user` (one per entry of `users`),
//! `create_connection` and `create_login_url`, each one `POST` with Basic auth,
//! `X-Reseller` and `User-Agent`. Nothing here is asynchronous at the provider,
//! so no step polls.
//!
//! Outputs: `code_name`, `logins` (every login created so far, so each
//! `create_user` replaces the list with a longer one), `connection_id`,
//! `login_url`, `login_url_expires`.
//!
//! Files: `steps` (the four creates), `adopt` (finding what an interrupted
//! create made), `calls` (URLs, headers, reading answers), `input`, `wire`;
//! this file holds the plan, the step dispatch and the [`Provider`] impl.
//!
//! # Open points of the seed, and the readings accepted
//!
//! The seed shows one example per answer. Where it leaves an answer's shape, a
//! field's name, presence or type, or an error's form open, the client accepts
//! every reading below (readers in `wire`, tested as tables there) and the
//! sandbox serves each one (`sandbox::sharespine::Readings`; the end-to-end
//! tests run a whole onboarding under each). Requests go out exactly as the
//! seed shows them. 14 open points:
//!
//! 1. **Created tenant**: `{"codeName": ..}` (the seed), the tenant echoed
//!    with its `codeName`, or either under `tenant` or `data`.
//! 2. **`codeName`'s type**: a string (the seed) or a number, read as its
//!    decimal text; it must be usable as one URL path segment. Output as a
//!    string, since `login_url` takes it back as one.
//! 3. **Created tenant user**: the seed shows `{"login": .., "....": ..}`; also
//!    under `user` or `data`, or without `login` (`{}`, other fields, an empty
//!    body): then it is the login sent (the seed: "same as defined in the
//!    request"). A login answered is the one recorded.
//! 4. **Created connection**: `{"id": .., "type": ..}` (the seed), bare or
//!    under `connection` or `data`.
//! 5. **Connection id's type**: a hex string (the seed), a number or a numeric
//!    string; output as text, never re-typed (leading zeros are kept).
//! 6. **Login URL's field name**: `loginUrl` (the seed), `loginURL`,
//!    `login_url` or `url`; bare or under `login` or `data`; an http(s) URL.
//! 7. **Login URL's expiry**: `expires` (the seed), `expiresAt` or
//!    `expires_at`; RFC 3339 with any offset (the seed's ends in `Z`), or a Unix
//!    timestamp in seconds or milliseconds, as a number or a numeric string.
//!    Output as RFC 3339 in UTC; null or absent gives `login_url_expires: null`.
//! 8. **`null` versus absent** for every optional field: the same.
//! 9. **Unknown extra fields**, at the top or inside an object: ignored.
//! 10. **Success status**: any 2xx (creates answer 201 or 200).
//! 11. **Error bodies**: `{"message": ..}`, `{"error": ..}`, `{"errors": [..]}`,
//!     plain text or nothing. A short reason is quoted from the JSON forms
//!     ([`http::detail`](crate::providers::http::detail)), never from plain text.
//! 12. **The reseller's tenants** (`GET /reseller/tenant`; the seed says the
//!     Reseller API gives "some basic information of the tenants" without
//!     showing it): bare, under `tenants` or under `data`; each entry (or its
//!     `tenant`) with `codeName` and `customerReference`.
//! 13. **A tenant's users** (`GET /reseller/tenant/{codeName}/user`): bare,
//!     under `users` or `data`; user objects with `login`, or bare logins.
//! 14. **A tenant's connections** (`GET /reseller/tenant/{codeName}/connection`):
//!     bare, under `connections` or `data`; entries with `id`.
//!
//! Whether the reads of 12 to 14 exist at all is open too: a 404, 405 or 501
//! to one means "not offered", and the step goes on as it would without them.
//! An answer still unreadable is a transient `bad_response` whose message says
//! what was expected and what came, by shape and field names only:
//! `create_tenant: unexpected response body (9 bytes): expected a tenant object
//! with codeName; got a list of 2 items`.
//!
//! # Recognising our own earlier create
//!
//! When the engine says a claim may repeat an interrupted attempt
//! (`possible_repeat`), each create first looks for what that attempt made:
//! - `create_tenant`: the reseller's tenants. Those carrying the request's
//!   `customerReference` (ignoring case, as code names do) and contradicting
//!   none of the fields sent that the list shows are candidates. None:
//!   created. One: adopted (`repeat_detected`), no second tenant. More than
//!   one: `rejected`, naming `create_tenant` and the earlier attempt. The seed
//!   has one tenant per customer account and `customerReference` is the
//!   reseller's reference for the customer, so the one tenant carrying it is
//!   this customer's; a second tenant made on purpose for the same reference by
//!   another request is the case this cannot tell apart, and then it refuses.
//! - `create_user`: the tenant is this request's own (its `codeName` came from
//!   this request's `create_tenant`). Its users: the login there is adopted,
//!   unless an earlier entry of this request asks for the same login (then it
//!   is that entry's, and the create goes ahead to meet Sharespine's 422).
//!   Without the list, a 409, or a 422 whose reason says the login exists, is
//!   taken as ours on the same terms.
//! - `create_connection`: the tenant's connections. In this request's own
//!   tenant each one is from this request (the customer is sent a login URL
//!   only after). Those whose `type` and `name` (where shown) match the body
//!   sent are candidates: none, created; one, adopted with its id; more,
//!   `rejected` naming `create_connection` and the earlier attempt.
//! - `create_login_url`: nothing to find. A login URL is temporary and a repeat
//!   issues another; the earlier one expires unused.
//!
//! Where a read is not offered, the create goes ahead and the window stays as
//! CONTRACT §6 and the README say (the engine counts the possible repeat).

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

use crate::config::SharespineSettings;
use crate::domain::{Operation, ProviderId};
use crate::engine::step::{
    PollPolicy, Provider, RetryPolicy, StepContext, StepDone, StepError, StepKey, StepOutcome,
};
use crate::metrics::Metrics;
use crate::providers::http::HttpClient;

use steps::default_connection;

const CREATE_TENANT: &str = "create_tenant";
const CREATE_USER: &str = "create_user";
const CREATE_CONNECTION: &str = "create_connection";
const CREATE_LOGIN_URL: &str = "create_login_url";

pub struct Sharespine {
    /// Base URL, credentials, reseller code, user agent and call limits.
    settings: SharespineSettings,
    http: HttpClient,
}

impl Sharespine {
    pub fn new(settings: &SharespineSettings, metrics: Metrics) -> Self {
        Sharespine {
            settings: settings.clone(),
            http: HttpClient::new(ProviderId::Sharespine, &settings.calls, metrics),
        }
    }

    async fn run_onboard(&self, ctx: &StepContext<'_>) -> Result<StepDone, StepError> {
        let step = ctx.step.name;
        // `plan` accepted this input before any step ran; failing here means the
        // request changed under us, which no retry can mend.
        let input = input::onboard(ctx.input).map_err(|m| StepError::rejected(None, m))?;
        if step == CREATE_TENANT {
            return self.create_tenant(input.tenant, ctx.possible_repeat).await;
        }
        let code_name = ctx
            .outputs
            .get("code_name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                StepError::rejected(None, format!("{step}: no code_name from create_tenant"))
            })?;
        match step {
            CREATE_USER => {
                let user = ctx
                    .step
                    .index
                    .and_then(|i| input.users.get(i as usize))
                    .ok_or_else(|| {
                        StepError::rejected(
                            None,
                            format!("{}: no such entry in input.users", ctx.step.ledger_key()),
                        )
                    })?;
                // The login can only be our own earlier attempt's if no earlier
                // entry of this request asked for the same login.
                let login_of =
                    |v: &Value| v.get("login").and_then(Value::as_str).map(str::to_string);
                let index = ctx.step.index.unwrap_or(0) as usize;
                let repeated_in_request = input.users[..index.min(input.users.len())]
                    .iter()
                    .any(|u| login_of(u.body).is_some() && login_of(u.body) == login_of(user.body));
                self.create_user(
                    code_name,
                    user.body,
                    ctx.outputs,
                    ctx.possible_repeat && !repeated_in_request,
                )
                .await
            }
            CREATE_CONNECTION => {
                let default = default_connection();
                let connection = input.connection.unwrap_or(&default);
                self.create_connection(code_name, connection, ctx.possible_repeat)
                    .await
            }
            CREATE_LOGIN_URL => {
                let target = input.login.ok_or_else(|| {
                    StepError::rejected(None, format!("{step}: input.login is missing"))
                })?;
                self.create_login_url(code_name, &target).await
            }
            other => Err(unknown_step(Operation::Onboard, other)),
        }
    }
}

fn unknown_step(operation: Operation, step: &str) -> StepError {
    StepError::rejected(None, format!("sharespine {operation} has no step {step:?}"))
}

#[async_trait]
impl Provider for Sharespine {
    fn id(&self) -> ProviderId {
        ProviderId::Sharespine
    }

    fn plan(&self, operation: Operation, input: &Value) -> Result<Vec<StepKey>, String> {
        match operation {
            Operation::Onboard => {
                let input = input::onboard(input)?;
                let mut steps = vec![StepKey::new(CREATE_TENANT)];
                for i in 0..input.users.len() {
                    let i = u32::try_from(i).map_err(|_| "input.users is too long".to_string())?;
                    steps.push(StepKey::indexed(CREATE_USER, i));
                }
                steps.push(StepKey::new(CREATE_CONNECTION));
                if input.login.is_some() {
                    steps.push(StepKey::new(CREATE_LOGIN_URL));
                }
                Ok(steps)
            }
            Operation::LoginUrl => {
                input::login_url(input)?;
                Ok(vec![StepKey::new(CREATE_LOGIN_URL)])
            }
        }
    }

    fn poll_policy(&self, _step: &str) -> Option<PollPolicy> {
        None
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
        let done = match (ctx.operation, ctx.step.name) {
            (Operation::Onboard, _) => self.run_onboard(ctx).await?,
            (Operation::LoginUrl, CREATE_LOGIN_URL) => {
                let input =
                    input::login_url(ctx.input).map_err(|m| StepError::rejected(None, m))?;
                self.create_login_url(input.code_name, &input.target)
                    .await?
            }
            (operation, other) => return Err(unknown_step(operation, other)),
        };
        Ok(StepOutcome::Done(done))
    }
}
