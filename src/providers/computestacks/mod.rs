//! ComputeStacks (CONTRACT §4 "computestacks / onboard", after the provider's
//! "custom onboarding" guide): a user, an API credential for that user, an
//! order placed as that user, then waiting for the order's project.
//!
//! Owns the four steps and their HTTP calls; `input` checks the request's
//! `input`, `wire` holds the provider's response shapes. Admin calls carry
//! the configured admin Basic auth; the order is placed and polled with the
//! new credential, whose password travels only through the engine's private
//! `secrets` (never an output, a log line or an error message).

mod input;
mod wire;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use url::Url;

use crate::config::ComputeStacksSettings;
use crate::domain::{Operation, ProviderId};
use crate::engine::step::{
    PollPolicy, Provider, RetryPolicy, StepContext, StepDone, StepError, StepKey, StepOutcome,
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

    async fn create_user(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let user = input::user(ctx.input)?;
        let request = self
            .as_admin(
                self.http
                    .inner()
                    .post(self.url(&["api", "admin", "users"])?),
            )
            .json(&json!({ "user": user }));
        let passwords = [
            user["password"].as_str().unwrap_or_default(),
            user["password_confirmation"].as_str().unwrap_or_default(),
        ];
        let response = self
            .http
            .send(CREATE_USER, request)
            .await
            .map_err(|e| scrub(e, &passwords))?;
        let created: wire::UserCreated = response.json(CREATE_USER)?;
        Ok(StepOutcome::Done(
            StepDone::default().with("user_id", created.user.id),
        ))
    }

    async fn create_api_credential(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let user_id = earlier_id(ctx, "user_id")?;
        let url = self.url(&["api", "users", &user_id, "api_credentials"])?;
        let request = self
            .as_admin(self.http.inner().post(url))
            .json(&json!({ "api_credential": input::api_credential(ctx.input)? }));
        let response = self.http.send(CREATE_API_CREDENTIAL, request).await?;
        let created: wire::CredentialCreated = response.json(CREATE_API_CREDENTIAL)?;
        let credential = created.api_credential;
        Ok(StepOutcome::Done(
            StepDone::default()
                .with("api_credential_id", credential.id)
                .with("api_username", credential.username)
                .with_secret(API_PASSWORD, credential.password.expose()),
        ))
    }

    async fn create_order(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let (username, password) = user_credential(ctx)?;
        let as_user = |r: reqwest::RequestBuilder| r.basic_auth(username, Some(password));
        let mut order = input::order(ctx.input)?;

        let wants_names = input::resources_mut(&mut order).any(|r| r.contains_key("product"));
        if wants_names {
            // The API takes product ids only; names are resolved against its catalogue.
            let request = as_user(self.http.inner().get(self.url(&["api", "products"])?));
            let response = self
                .http
                .send(CREATE_ORDER, request)
                .await
                .map_err(|e| scrub(e, &[password]))?;
            let catalogue: wire::Products = response.json(CREATE_ORDER)?;
            resolve_products(&mut order, &catalogue.products)?;
        }

        let request = as_user(self.http.inner().post(self.url(&["api", "orders"])?))
            .json(&json!({ "order": order }));
        let response = self
            .http
            .send(CREATE_ORDER, request)
            .await
            .map_err(|e| scrub(e, &[password]))?;
        let created: wire::OrderEnvelope<wire::OrderCreated> = response.json(CREATE_ORDER)?;
        Ok(StepOutcome::Done(
            StepDone::default()
                .with("order_id", created.order.id)
                .with("load_balancer_ip", created.order.load_balancer_ip),
        ))
    }

    async fn poll_order(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let (username, password) = user_credential(ctx)?;
        let order_id = earlier_id(ctx, "order_id")?;
        let request = self
            .http
            .inner()
            .get(self.url(&["api", "orders", &order_id])?)
            .basic_auth(username, Some(password));
        let response = self
            .http
            .send(POLL_ORDER, request)
            .await
            .map_err(|e| scrub(e, &[password]))?;
        let shown: wire::OrderEnvelope<wire::OrderState> = response.json(POLL_ORDER)?;
        let status = shown.order.status;
        let project_id = shown.order.project.and_then(|p| p.id);
        match (status.as_str(), project_id) {
            ("completed", Some(project_id)) => Ok(StepOutcome::Done(
                StepDone::default().with("project_id", project_id),
            )),
            ("failed" | "cancelled", _) => Err(StepError::job_failed(format!(
                "order {order_id} failed (status {status})"
            ))),
            // "completed" without a project yet is still "not yet", as the guide says.
            _ => Ok(StepOutcome::Pending {
                status: printable(&status, 64),
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
        // create_order may make two calls (catalogue, then order).
        self.settings.calls.timeout() * 2
    }

    fn concurrency(&self) -> usize {
        self.settings.calls.concurrency
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

/// An id an earlier step put in the outputs, as a path segment.
fn earlier_id(ctx: &StepContext<'_>, key: &str) -> Result<String, StepError> {
    match ctx.outputs.get(key) {
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(StepError::rejected(
            None,
            format!(
                "{}: output {key} of an earlier step is missing",
                ctx.step.name
            ),
        )),
    }
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

/// Replaces every `resources.product` name by its `product_id`.
fn resolve_products(
    order: &mut Map<String, Value>,
    catalogue: &[wire::Product],
) -> Result<(), StepError> {
    for resources in input::resources_mut(order) {
        let Some(name) = resources.remove("product") else {
            continue;
        };
        let name = name.as_str().unwrap_or_default();
        let mut matches = catalogue.iter().filter(|p| p.name == name);
        let product = match (matches.next(), matches.next()) {
            (Some(p), None) => p,
            (None, _) => {
                return Err(StepError::rejected(
                    None,
                    format!(
                        "provider rejected create_order: unknown product \"{}\"",
                        printable(name, 100)
                    ),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(StepError::rejected(
                    None,
                    format!(
                        "provider rejected create_order: product name \"{}\" is ambiguous; give product_id",
                        printable(name, 100)
                    ),
                ))
            }
        };
        resources.insert("product_id".into(), json!(product.id));
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
    use crate::sandbox::computestacks::{Api, Options};
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
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = api.router();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        cs.base_url = format!("http://{addr}");
        cs.calls.timeout_ms = 5_000;
        cs.calls.max_attempts = 3;
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
}
