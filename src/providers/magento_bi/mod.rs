//! Magento BI Cloud Onboarding (CONTRACT §4 "magento_bi / onboard"; seed
//! `magento-bi-cloud-onboarding.md`): the ten steps from signup to templated
//! dashboards, each one call to the API host or the dashboard host.
//!
//! Owns the request bodies and answer shapes of those calls, the input
//! validation of `plan`, and (in [`token`]) the access token shared by every
//! onboarding this provider runs. Signups go without auth, `/v3/invites` with
//! `Authorization: Bearer`, everything else with the `DASHSESS2` cookie; a 401
//! there renews the token once and repeats the call once.
//!
//! Waiting is the engine's: a poll step answers `Pending` until the job is done.
//!
//! Files: one per group of steps (`client`, `connection`, `connection_test`,
//! `dashboards`), `calls` (URLs, the token-carrying call, reading answers),
//! `input` (the checks of `plan`), `answers` and `jobs` (the tolerant readers;
//! `jobs` picks our connection test out of the job list), `token`; this file holds the plan
//! and the [`Provider`] impl.
//!
//! # Tolerant readers, strict writers
//!
//! The seed is a page of curl examples: it shows most answers once, some never,
//! and leaves shapes, spellings and types open. The client sends exactly what
//! the seed shows (JSON numbers for ids in bodies, the form as the curl writes
//! it, `jobType=27`), and reads every answer in each of the readings below
//! ([`answers`]). An answer it still cannot read is a transient `bad_response`
//! whose message says what was expected and the shape that came, e.g.
//! `poll_connection_test: unexpected response body (218 bytes): expected a job
//! object or a list of jobs with status.name (...); got an object without
//! status`, never a value from the body.
//!
//! ## The open points and the readings accepted (21)
//!
//! The sandbox serves each reading that has a knob (`[sandbox] magento_*`, or
//! `POST /_sandbox/readings`; see `sandbox::magento_bi::Readings`); the others
//! are covered by the table tests in `tests.rs`.
//!
//! 1. **The job list's shape** (`GET {dashboard_base}/v2/client/{client_id}/job/type/27`;
//!    the seed never shows the answer). A list; one job object (the latest
//!    job); a list wrapped in an object under `jobs`, `data`, `items` or
//!    `results`; `null`, `{}`, `[]` or a 404 as "no job yet".
//!    Knob `magento_job_list` = `list` | `object` | `wrapped` | `wrapped_data` | `oldest_first`.
//! 2. **The job list's order**, newest or oldest first: position is never read.
//!    The newest of several is the one with the highest numeric id, then the
//!    latest creation time the entry gives (`created_at`, `created`,
//!    `createdAt`). Knob `oldest_first`.
//! 3. **Which job is ours.** Never one whose workload names another connection,
//!    nor one whose `type` says another job type. In order: (a) the job whose
//!    id the POST answered (kept as the output `connection_test_job_id`);
//!    (b) else the newest job whose `workload.connectionId` is our connection,
//!    among those not listed before our POST; (c) else, among jobs that name
//!    no connection, the only one not listed before our POST: `test_connection`
//!    lists the jobs just before it POSTs and keeps their ids as the output
//!    `connection_tests_before` (no clock is compared). Several such jobs, or
//!    none: not yet (the poll's deadline ends the wait).
//!    Knobs `magento_job_workload` = `present` | `absent`,
//!    `magento_job_id_on_create` = `null` | `id`.
//! 4. **The job type in the poll URL.** The seed's curl polls `type/5` while
//!    the job is created with `jobType=27`: the client asks for `type/27`,
//!    the type it created. `type` as `{"id": 27, "name": "Connection Test"}`
//!    (seed), a bare id, or a bare name; absent is accepted (the URL asked
//!    for type 27).
//! 5. **Job status.** `status` as an object with a `name` (seed) or a bare
//!    word, in any letter case (`Completed`, `completed`, `COMPLETED`).
//!    `completed`/`complete` → done; `failed`, `failure`, `error`, `errored`,
//!    `cancelled`, `canceled` → `job_failed`, with the job's `error` (any
//!    shape) as the reason; anything else → not yet. Knobs
//!    `magento_status_case` = `seed` | `title` | `lower` | `upper`,
//!    `magento_job_status` = `object` | `string`.
//! 6. **A job's workload.** An object, or the same object JSON-encoded in a
//!    string; the connection as `connectionId` (the seed's form field) or
//!    `connection_id`; `[]` (PHP's empty array) as none.
//! 7. **The job POST's answer.** The seed shows the queued job with
//!    `"id": null`. An id, when given, is kept and settles point 3; an
//!    unreadable or empty answer is no error (the job was made; the poll
//!    finds it another way). Knob `magento_job_id_on_create`.
//! 8. **Signup status.** The text says "until the status returns as
//!    complete", the example shows `completed`: both, in any letter case, as
//!    a bare word or `{"name": ...}`; failure words as in point 5. Knob
//!    `magento_status_case`.
//! 9. **A signup's `client_id`.** A number (seed) or numeric text, also as
//!    `clientId`; absent or null until completed; a completed signup without
//!    one is an unreadable answer. Knob `magento_ids`.
//! 10. **Where to poll a signup.** The seed says to use the answer's `url`;
//!     the client polls `{api_base}/v3/signups/{id}` instead and never calls
//!     a host named in an answer. The signup id may be text or a number.
//! 11. **Id types.** Client, user, connection and job ids as numbers or
//!     numeric text, read as the same id (`"14"` is `14`); signup and autodash
//!     ids are UUID text. Written back as JSON numbers, as the seed's bodies
//!     show (invite `client_id`, autodash `connection_id` and `user_id`), and
//!     as text in paths and in the form. Knob `magento_ids` = `number` |
//!     `string` (the sandbox refuses an id sent back as a string).
//! 12. **Create answers.** The new `id` at the top level (seed) or inside
//!     `{"data": {...}}`; without one the answer is unreadable ("expected an
//!     object with the new user's id; got an object without id").
//! 13. **The connection list.** A bare list (seed), or wrapped under
//!     `connections`, `input-connections`, `data`, `items` or `results`, or
//!     one object. Our entry is found by id. Knob `magento_connection_list` =
//!     `list` | `wrapped`.
//! 14. **`properties.established`.** Set: a timestamp (seed), `true`, a Unix
//!     time, other text. Not set: null, absent, `false`, `0`, `""`, `"0"`,
//!     `"false"`, MySQL's zero date. The connection's `properties.status`
//!     (`"1"` in the seed) is not read: the contract waits for `established`.
//!     Knob `magento_established` = `timestamp` | `bool` | `epoch`.
//! 15. **`null` versus absent.** Read alike everywhere (ids, `start`, `end`,
//!     `established`, `client_id`, `workload`, `error`). Knob `magento_nulls`
//!     = `null` | `absent`.
//! 16. **Unknown fields.** Ignored everywhere; nothing is read with
//!     `deny_unknown_fields`. Knob `magento_extra_fields` = `true`.
//! 17. **Autodash.** The create answer's id as UUID text (seed) or a number;
//!     the poll's `status` as in point 8 (knob `magento_status_case`); its
//!     `job_id` is not read.
//! 18. **The token's `expires_in`.** A number (seed) or numeric text; absent
//!     or null → assumed one hour (a 401 renews sooner). `access_token` is
//!     required.
//! 19. **`update_client`'s answer.** The seed shows none: any 2xx body, empty
//!     included, is accepted unread.
//! 20. **Error bodies.** `{"message"}`, `{"error"}`, `{"errors": ...}`, Rails
//!     style or none: read by `providers::http::detail` into a short reason.
//! 21. **Looking up our own earlier create** (`StepContext::possible_repeat`).
//!     `create_connection` first lists the connections and adopts one with
//!     our name, host and type; `test_connection` adopts the newest test of
//!     our connection unless it failed (both set `repeat_detected`). The seed
//!     documents no way to list signups, invited users or autodash jobs (only
//!     GETs by an id we lack when the answer was lost), so `create_signup`,
//!     `invite_user` and `create_dashboards` post again; the engine counts
//!     such repeats in `onboarding_create_repeats_total`.

use input::validate;

mod answers;
mod calls;
mod client;
mod connection;
mod connection_test;
mod dashboards;
mod input;
mod jobs;
mod token;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::MagentoBiSettings;
use crate::domain::{Operation, ProviderId};
use crate::engine::step::{
    PollPolicy, Provider, RetryPolicy, StepContext, StepError, StepKey, StepOutcome,
};
use crate::metrics::Metrics;
use crate::providers::http::HttpClient;
use token::Tokens;

/// The onboard plan, in order (CONTRACT §4).
const STEPS: [&str; 10] = [
    "create_signup",
    "poll_signup",
    "invite_user",
    "update_client",
    "create_connection",
    "poll_connection",
    "test_connection",
    "poll_connection_test",
    "create_dashboards",
    "poll_dashboards",
];

/// The steps that wait on a provider job; each has `[providers.magento_bi.polls.STEP]`.
const POLL_STEPS: [&str; 4] = [
    "poll_signup",
    "poll_connection",
    "poll_connection_test",
    "poll_dashboards",
];

pub struct MagentoBi {
    settings: MagentoBiSettings,
    http: HttpClient,
    tokens: Tokens,
}

impl std::fmt::Debug for MagentoBi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MagentoBi")
            .field("api_base", &self.settings.api_base)
            .field("dashboard_base", &self.settings.dashboard_base)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl MagentoBi {
    pub fn new(settings: &MagentoBiSettings, metrics: Metrics) -> Self {
        let http = HttpClient::new(ProviderId::MagentoBi, &settings.calls, metrics.clone());
        MagentoBi {
            settings: settings.clone(),
            tokens: Tokens::new(settings, http.clone(), metrics),
            http,
        }
    }
}

#[async_trait]
impl Provider for MagentoBi {
    fn id(&self) -> ProviderId {
        ProviderId::MagentoBi
    }

    fn plan(&self, operation: Operation, input: &Value) -> Result<Vec<StepKey>, String> {
        if operation != Operation::Onboard {
            return Err(format!(
                "operation {operation} is not offered by {}",
                ProviderId::MagentoBi
            ));
        }
        validate(input)?;
        Ok(STEPS.iter().map(|s| StepKey::new(s)).collect())
    }

    fn poll_policy(&self, step: &str) -> Option<PollPolicy> {
        if !POLL_STEPS.contains(&step) {
            return None;
        }
        self.settings
            .polls
            .get(step)
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
            "create_signup" => self.create_signup(ctx).await,
            "poll_signup" => self.poll_signup(ctx).await,
            "invite_user" => self.invite_user(ctx).await,
            "update_client" => self.update_client(ctx).await,
            "create_connection" => self.create_connection(ctx).await,
            "poll_connection" => self.poll_connection(ctx).await,
            "test_connection" => self.test_connection(ctx).await,
            "poll_connection_test" => self.poll_connection_test(ctx).await,
            "create_dashboards" => self.create_dashboards(ctx).await,
            "poll_dashboards" => self.poll_dashboards(ctx).await,
            other => Err(StepError::rejected(
                None,
                format!("magento_bi has no step {other}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
