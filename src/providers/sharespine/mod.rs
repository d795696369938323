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

mod input;

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::SharespineSettings;
use crate::domain::{Operation, ProviderId};
use crate::engine::step::{
    PollPolicy, Provider, RetryPolicy, StepContext, StepDone, StepError, StepKey, StepOutcome,
};
use crate::metrics::Metrics;
use crate::providers::http::HttpClient;

use input::LoginTarget;

const CREATE_TENANT: &str = "create_tenant";
const CREATE_USER: &str = "create_user";
const CREATE_CONNECTION: &str = "create_connection";
const CREATE_LOGIN_URL: &str = "create_login_url";

/// The seed's own body for "Create an API Connection", sent when the request has none.
fn default_connection() -> Value {
    json!({"active": true, "name": "API", "type": "api", "configuration": {}})
}

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

    /// `{base_url}/seg/seg/...`, each segment percent-encoded (logins are user input).
    fn url(&self, step: &str, segments: &[&str]) -> Result<url::Url, StepError> {
        // A segment of "." or ".." would be dropped by URL normalisation and
        // address another resource; `plan` refuses them, this guards outputs too.
        if let Some(bad) = segments
            .iter()
            .find(|s| s.is_empty() || matches!(**s, "." | ".."))
        {
            return Err(StepError::rejected(
                None,
                format!("{step}: {bad:?} cannot be a URL path segment"),
            ));
        }
        let unusable = || {
            StepError::rejected(
                None,
                format!("{step}: providers.sharespine.base_url is not a usable http(s) URL"),
            )
        };
        let mut url = url::Url::parse(&self.settings.base_url).map_err(|_| unusable())?;
        url.path_segments_mut()
            .map_err(|_| unusable())?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// One call: POST `body` as JSON with the reseller's headers; the 2xx body parsed as `T`.
    async fn post<T: DeserializeOwned>(
        &self,
        step: &str,
        segments: &[&str],
        body: &Value,
    ) -> Result<T, StepError> {
        let url = self.url(step, segments)?;
        let request = self
            .http
            .inner()
            .post(url)
            .basic_auth(
                &self.settings.username,
                Some(self.settings.password.expose()),
            )
            .header("X-Reseller", &self.settings.reseller_code)
            .header(reqwest::header::USER_AGENT, &self.settings.user_agent)
            .json(body);
        self.http.send(step, request).await?.json(step)
    }

    async fn create_tenant(&self, tenant: &Value) -> Result<StepDone, StepError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "codeName")]
            code_name: String,
        }
        let created: Created = self
            .post(CREATE_TENANT, &["reseller", "tenant"], tenant)
            .await?;
        Ok(StepDone::default().with("code_name", created.code_name))
    }

    async fn create_user(
        &self,
        code_name: &str,
        user: &Value,
        outputs: &Map<String, Value>,
        possible_repeat: bool,
    ) -> Result<StepDone, StepError> {
        #[derive(Deserialize)]
        struct Created {
            login: String,
        }
        let wanted = user
            .get("login")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut repeat_detected = false;
        let created: Created = match self
            .post(
                CREATE_USER,
                &["reseller", "tenant", code_name, "user"],
                user,
            )
            .await
        {
            Ok(c) => c,
            // Our own earlier attempt may have created it before its worker
            // died: in the tenant this request made, the login is ours.
            Err(StepError::Rejected {
                http_status: Some(422),
                message,
            }) if possible_repeat && message.contains("already exists") => {
                repeat_detected = true;
                Created { login: wanted }
            }
            Err(e) => return Err(e),
        };
        let mut logins: Vec<Value> = outputs
            .get("logins")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // The seed says to save the login the provider answers; a step run
        // again after its output was recorded must not list it twice.
        let login = Value::String(created.login);
        if !logins.contains(&login) {
            logins.push(login);
        }
        let mut done = StepDone::default().with("logins", logins);
        done.repeat_detected = repeat_detected;
        Ok(done)
    }

    async fn create_connection(
        &self,
        code_name: &str,
        connection: &Value,
    ) -> Result<StepDone, StepError> {
        #[derive(Deserialize)]
        struct Created {
            id: String,
        }
        let created: Created = self
            .post(
                CREATE_CONNECTION,
                &["reseller", "tenant", code_name, "connection"],
                connection,
            )
            .await?;
        Ok(StepDone::default().with("connection_id", created.id))
    }

    async fn create_login_url(
        &self,
        code_name: &str,
        target: &LoginTarget<'_>,
    ) -> Result<StepDone, StepError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "loginUrl")]
            login_url: String,
            expires: String,
        }
        let created: Created = self
            .post(
                CREATE_LOGIN_URL,
                &["reseller", "tenant", code_name, "login", target.login],
                &json!({ "path": target.path }),
            )
            .await?;
        Ok(StepDone::default()
            .with("login_url", created.login_url)
            .with("login_url_expires", created.expires))
    }

    async fn run_onboard(&self, ctx: &StepContext<'_>) -> Result<StepDone, StepError> {
        let step = ctx.step.name;
        // `plan` accepted this input before any step ran; failing here means the
        // request changed under us, which no retry can mend.
        let input = input::onboard(ctx.input).map_err(|m| StepError::rejected(None, m))?;
        if step == CREATE_TENANT {
            return self.create_tenant(input.tenant).await;
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
                self.create_connection(code_name, connection).await
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
        self.settings.calls.timeout()
    }

    fn concurrency(&self) -> usize {
        self.settings.calls.concurrency
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RetryReason;
    use crate::engine::local::{run_plan, LocalRun};
    use crate::sandbox::faults::{Fault, FaultRule};
    use crate::sandbox::sharespine::{self as sandbox, Api};

    const PASSWORD: &str = "hunter2-sharespine-secret";

    fn settings() -> SharespineSettings {
        let mut s = crate::config::Settings::load(None)
            .expect("default settings load")
            .providers
            .sharespine;
        s.password = crate::config::Secret::new(PASSWORD);
        s.calls.timeout_ms = 2_000;
        s.calls.max_attempts = 3;
        s
    }

    /// A sandbox accepting `settings()`, served on a free port, and a provider pointed at it.
    async fn sandbox_and_provider() -> (Api, Sharespine, SharespineSettings) {
        let mut s = settings();
        let api = Api::new(sandbox::Options {
            username: s.username.clone(),
            password: s.password.expose().to_string(),
            reseller_code: s.reseller_code.clone(),
        });
        s.base_url = format!("http://{}", sandbox::serve_for_tests(&api).await);
        let provider = Sharespine::new(&s, Metrics::new());
        (api, provider, s)
    }

    async fn run(provider: &Sharespine, operation: Operation, input: &Value) -> LocalRun {
        run_plan(provider, operation, input, Duration::from_millis(5), 0)
            .await
            .expect("input is valid")
    }

    /// Runs one step directly, as the engine would with these outputs.
    async fn run_step(
        provider: &Sharespine,
        operation: Operation,
        input: &Value,
        outputs: &Map<String, Value>,
        step: StepKey,
    ) -> Result<StepOutcome, StepError> {
        run_step_as(provider, operation, input, outputs, step, false).await
    }

    async fn run_step_as(
        provider: &Sharespine,
        operation: Operation,
        input: &Value,
        outputs: &Map<String, Value>,
        step: StepKey,
        possible_repeat: bool,
    ) -> Result<StepOutcome, StepError> {
        let secrets = Map::new();
        let ctx = StepContext {
            request_id: "test",
            operation,
            input,
            outputs,
            secrets: &secrets,
            step: &step,
            attempt: 0,
            polls: 0,
            poll_state: None,
            possible_repeat,
        };
        provider.run(&ctx).await
    }

    fn full_input() -> Value {
        json!({
            "tenant": {"customerReference": "mycustomer", "active": true, "fullName": "My Customer AB",
                       "email": "it@mycustomer.example", "defaultLanguage": "swe", "languages": ["swe"],
                       "options": [], "x-unknown": {"kept": true}},
            "users": [
                {"login": "anna", "fullName": "Anna A", "email": "anna@mycustomer.example",
                 "permissions": [], "defaultLanguage": "swe"},
                {"login": "api"}
            ],
            "connection": {"active": true, "name": "Shop API", "type": "api", "configuration": {"a": 1}},
            "login": {"login": "anna", "path": "/orders"}
        })
    }

    #[test]
    fn plan_checks_input_and_names_the_bad_field() {
        let provider = Sharespine::new(&settings(), Metrics::new());
        let create_user = |i| StepKey::indexed(CREATE_USER, i);
        let tenant = StepKey::new(CREATE_TENANT);
        let connection = StepKey::new(CREATE_CONNECTION);
        let login_url = StepKey::new(CREATE_LOGIN_URL);
        let check =
            |why: &str, operation: Operation, input: Value, want: Result<Vec<StepKey>, &str>| {
                let got = provider.plan(operation, &input);
                assert_eq!(got, want.map_err(String::from), "{why}: {input}");
            };
        use Operation::{LoginUrl, Onboard};
        let t = json!({"customerReference": "c"});

        check(
            "everything",
            Onboard,
            full_input(),
            Ok(vec![
                tenant.clone(),
                create_user(0),
                create_user(1),
                connection.clone(),
                login_url.clone(),
            ]),
        );
        check(
            "tenant only",
            Onboard,
            json!({"tenant": t}),
            Ok(vec![tenant.clone(), connection.clone()]),
        );
        check(
            "empty users, null login",
            Onboard,
            json!({"tenant": t, "users": [], "login": null}),
            Ok(vec![tenant.clone(), connection.clone()]),
        );
        check(
            "login without path",
            Onboard,
            json!({"tenant": t, "login": {"login": "a"}}),
            Ok(vec![tenant.clone(), connection.clone(), login_url.clone()]),
        );
        check(
            "input not an object",
            Onboard,
            json!([1]),
            Err("input must be an object"),
        );
        check(
            "no tenant",
            Onboard,
            json!({}),
            Err("input.tenant is missing"),
        );
        check(
            "null tenant",
            Onboard,
            json!({"tenant": null}),
            Err("input.tenant is missing"),
        );
        check(
            "tenant not an object",
            Onboard,
            json!({"tenant": "acme"}),
            Err("input.tenant must be an object"),
        );
        check(
            "no reference",
            Onboard,
            json!({"tenant": {"fullName": "x"}}),
            Err("input.tenant.customerReference is missing"),
        );
        check(
            "reference a number",
            Onboard,
            json!({"tenant": {"customerReference": 5}}),
            Err("input.tenant.customerReference must be a string"),
        );
        check(
            "reference empty",
            Onboard,
            json!({"tenant": {"customerReference": ""}}),
            Err("input.tenant.customerReference must not be empty"),
        );
        check(
            "users an object",
            Onboard,
            json!({"tenant": t, "users": {"login": "a"}}),
            Err("input.users must be an array"),
        );
        check(
            "user not an object",
            Onboard,
            json!({"tenant": t, "users": ["a"]}),
            Err("input.users[0] must be an object"),
        );
        check(
            "user without login",
            Onboard,
            json!({"tenant": t, "users": [{"login": "a"}, {}]}),
            Err("input.users[1].login is missing"),
        );
        check(
            "user login a number",
            Onboard,
            json!({"tenant": t, "users": [{"login": "a"}, {"login": 2}]}),
            Err("input.users[1].login must be a string"),
        );
        check(
            "user login ..",
            Onboard,
            json!({"tenant": t, "users": [{"login": ".."}]}),
            Err("input.users[0].login must not be \".\" or \"..\""),
        );
        check(
            "same login twice is left to the provider's 422",
            Onboard,
            json!({"tenant": t, "users": [{"login": "a"}, {"login": "b"}, {"login": "a"}]}),
            Ok(vec![
                tenant.clone(),
                create_user(0),
                create_user(1),
                create_user(2),
                connection.clone(),
            ]),
        );
        check(
            "connection an array",
            Onboard,
            json!({"tenant": t, "connection": []}),
            Err("input.connection must be an object"),
        );
        check(
            "login a string",
            Onboard,
            json!({"tenant": t, "login": "anna"}),
            Err("input.login must be an object"),
        );
        check(
            "login without login",
            Onboard,
            json!({"tenant": t, "login": {"path": "/"}}),
            Err("input.login.login is missing"),
        );
        check(
            "login.login a bool",
            Onboard,
            json!({"tenant": t, "login": {"login": true}}),
            Err("input.login.login must be a string"),
        );
        check(
            "login.path a number",
            Onboard,
            json!({"tenant": t, "login": {"login": "a", "path": 1}}),
            Err("input.login.path must be a string"),
        );

        check(
            "login_url",
            LoginUrl,
            json!({"code_name": "prefixc-1", "login": "anna"}),
            Ok(vec![login_url.clone()]),
        );
        check(
            "login_url with path",
            LoginUrl,
            json!({"code_name": "prefixc-1", "login": "anna", "path": "/x"}),
            Ok(vec![login_url.clone()]),
        );
        check(
            "login_url without code_name",
            LoginUrl,
            json!({"login": "anna"}),
            Err("input.code_name is missing"),
        );
        check(
            "login_url code_name a number",
            LoginUrl,
            json!({"code_name": 1, "login": "anna"}),
            Err("input.code_name must be a string"),
        );
        check(
            "login_url without login",
            LoginUrl,
            json!({"code_name": "c"}),
            Err("input.login is missing"),
        );
        check(
            "login_url path an object",
            LoginUrl,
            json!({"code_name": "c", "login": "a", "path": {}}),
            Err("input.path must be a string"),
        );
        check(
            "login_url input null",
            LoginUrl,
            Value::Null,
            Err("input is missing"),
        );
    }

    #[tokio::test]
    async fn onboard_outputs_equal_what_the_sandbox_holds() {
        let (api, provider, settings) = sandbox_and_provider().await;
        let input = full_input();
        let run = run(&provider, Operation::Onboard, &input).await;
        assert!(run.failure.is_none(), "{:?}", run.failure);

        let tenants = api.tenants();
        assert_eq!(tenants.len(), 1);
        let tenant = &tenants[0];
        assert_eq!(tenant.code_name, "prefixmycustomer-1");
        assert_eq!(
            tenant.body, input["tenant"],
            "the tenant is sent verbatim, unknown fields kept"
        );
        assert_eq!(
            tenant.users[0].body, input["users"][0],
            "users are sent verbatim"
        );
        assert_eq!(tenant.connections.len(), 1);
        assert_eq!(tenant.connections[0].body["configuration"], json!({"a": 1}));
        let url = &tenant.login_urls[0];
        assert_eq!((url.login.as_str(), url.path.as_str()), ("anna", "/orders"));

        let want: Map<String, Value> = json!({
            "code_name": tenant.code_name,
            "logins": tenant.logins(),
            "connection_id": tenant.connections[0].id,
            "login_url": url.url,
            "login_url_expires": url.expires,
        })
        .as_object()
        .unwrap()
        .clone();
        assert_eq!(run.outputs, want);
        assert!(run.secrets.is_empty());
        assert_eq!(api.user_agents(), [settings.user_agent]);
        for (endpoint, calls) in [
            ("POST /reseller/tenant", 1),
            ("POST /reseller/tenant/{code_name}/user", 2),
            ("POST /reseller/tenant/{code_name}/connection", 1),
            ("POST /reseller/tenant/{code_name}/login/{login}", 1),
        ] {
            assert_eq!(api.knobs.calls(endpoint), calls, "{endpoint}");
        }
    }

    #[tokio::test]
    async fn onboard_without_users_or_login_sends_the_default_connection() {
        let (api, provider, _) = sandbox_and_provider().await;
        let input = json!({"tenant": {"customerReference": "Bare"}});
        let run = run(&provider, Operation::Onboard, &input).await;
        assert!(run.failure.is_none(), "{:?}", run.failure);
        let tenant = api.tenant("prefixbare-1").expect("tenant created");
        assert!(tenant.users.is_empty());
        let mut sent = tenant.connections[0].body.clone();
        sent.as_object_mut().unwrap().remove("id");
        assert_eq!(sent, default_connection());
        let keys: Vec<&str> = run.outputs.keys().map(String::as_str).collect();
        assert_eq!(keys, ["code_name", "connection_id"]);
    }

    #[tokio::test]
    async fn logins_with_reserved_characters_are_percent_encoded_in_paths() {
        let (api, provider, _) = sandbox_and_provider().await;
        let login = "anna/b c?#%";
        let input = json!({
            "tenant": {"customerReference": "enc"},
            "users": [{"login": login}],
            "login": {"login": login}
        });
        let run = run(&provider, Operation::Onboard, &input).await;
        assert!(run.failure.is_none(), "{:?}", run.failure);
        let tenant = api.tenant("prefixenc-1").unwrap();
        assert_eq!(
            tenant.login_urls[0].login, login,
            "the sandbox decoded the same login"
        );
        assert_eq!(tenant.login_urls[0].path, "/", "path defaults to /");
        assert_eq!(run.outputs["logins"], json!([login]));
    }

    #[tokio::test]
    async fn login_url_for_an_existing_tenant_gives_a_fresh_url() {
        let (api, provider, _) = sandbox_and_provider().await;
        let first = run(&provider, Operation::Onboard, &full_input()).await;
        assert!(first.failure.is_none(), "{:?}", first.failure);
        let input = json!({"code_name": "prefixmycustomer-1", "login": "api", "path": "/settings"});
        let again = run(&provider, Operation::LoginUrl, &input).await;
        assert!(again.failure.is_none(), "{:?}", again.failure);

        let tenant = api.tenant("prefixmycustomer-1").unwrap();
        assert_eq!(tenant.login_urls.len(), 2);
        let issued = &tenant.login_urls[1];
        assert_eq!(
            (issued.login.as_str(), issued.path.as_str()),
            ("api", "/settings")
        );
        assert_eq!(again.outputs["login_url"], json!(issued.url));
        assert_eq!(again.outputs["login_url_expires"], json!(issued.expires));
        assert_ne!(again.outputs["login_url"], first.outputs["login_url"]);
        assert_eq!(api.tenants().len(), 1, "nothing else was created");
    }

    #[tokio::test]
    async fn login_url_for_an_unknown_tenant_is_rejected_with_404() {
        let (_, provider, _) = sandbox_and_provider().await;
        let input = json!({"code_name": "prefixnobody-1", "login": "anna"});
        let run = run(&provider, Operation::LoginUrl, &input).await;
        let (step, err) = run.failure.expect("fails");
        assert_eq!(step.name, CREATE_LOGIN_URL);
        assert!(
            matches!(
                err,
                StepError::Rejected {
                    http_status: Some(404),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "provider rejected create_login_url: tenant not found"
        );
    }

    #[tokio::test]
    async fn duplicate_login_is_rejected_with_422() {
        let (api, provider, _) = sandbox_and_provider().await;
        let input = json!({"tenant": {"customerReference": "dup"}, "users": [{"login": "anna"}]});
        let first = run(&provider, Operation::Onboard, &input).await;
        assert!(first.failure.is_none(), "{:?}", first.failure);

        // The same create_user again on that tenant, as after a lost answer.
        let outputs = json!({"code_name": "prefixdup-1"})
            .as_object()
            .unwrap()
            .clone();
        let err = run_step(
            &provider,
            Operation::Onboard,
            &input,
            &outputs,
            StepKey::indexed(CREATE_USER, 0),
        )
        .await
        .unwrap_err();
        match &err {
            StepError::Rejected {
                http_status,
                message,
            } => {
                assert_eq!(*http_status, Some(422));
                assert_eq!(
                    message,
                    "provider rejected create_user: login already exists"
                );
            }
            other => panic!("want Rejected, got {other:?}"),
        }
        assert_eq!(api.tenant("prefixdup-1").unwrap().logins(), ["anna"]);
    }

    #[tokio::test]
    async fn a_repeated_user_create_after_an_interrupted_attempt_is_recognised_as_done() {
        let (api, provider, _) = sandbox_and_provider().await;
        let input = json!({"tenant": {"customerReference": "rep"}, "users": [{"login": "anna"}]});
        let first = run(&provider, Operation::Onboard, &input).await;
        assert!(first.failure.is_none(), "{:?}", first.failure);
        let outputs = json!({"code_name": "prefixrep-1", "logins": []})
            .as_object()
            .unwrap()
            .clone();
        let again = run_step_as(
            &provider,
            Operation::Onboard,
            &input,
            &outputs,
            StepKey::indexed(CREATE_USER, 0),
            true,
        )
        .await
        .expect("the login this request made is its own");
        let StepOutcome::Done(done) = again else {
            panic!("want Done")
        };
        assert!(done.repeat_detected, "counted as a detected repeat");
        assert_eq!(done.outputs["logins"], json!(["anna"]));
        assert_eq!(
            api.tenant("prefixrep-1").unwrap().logins(),
            ["anna"],
            "no second user"
        );
    }

    #[tokio::test]
    async fn a_login_repeated_in_the_request_is_still_rejected_after_an_interrupted_attempt() {
        let (_api, provider, _) = sandbox_and_provider().await;
        let input = json!({"tenant": {"customerReference": "twice"}, "users": [{"login": "anna"}, {"login": "anna"}]});
        let plan_input =
            json!({"tenant": {"customerReference": "twice"}, "users": [{"login": "anna"}]});
        let first = run(&provider, Operation::Onboard, &plan_input).await;
        assert!(first.failure.is_none(), "{:?}", first.failure);
        let outputs = json!({"code_name": "prefixtwice-1", "logins": ["anna"]})
            .as_object()
            .unwrap()
            .clone();
        let err = run_step_as(
            &provider,
            Operation::Onboard,
            &input,
            &outputs,
            StepKey::indexed(CREATE_USER, 1),
            true,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                StepError::Rejected {
                    http_status: Some(422),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn each_user_step_outputs_the_logins_so_far() {
        let (_, provider, _) = sandbox_and_provider().await;
        let input = full_input();
        let mut outputs = json!({"code_name": "prefixmycustomer-1"})
            .as_object()
            .unwrap()
            .clone();
        let tenant = run_step(
            &provider,
            Operation::Onboard,
            &input,
            &Map::new(),
            StepKey::new(CREATE_TENANT),
        )
        .await;
        assert!(tenant.is_ok(), "{tenant:?}");
        for (i, want) in [(0, json!(["anna"])), (1, json!(["anna", "api"]))] {
            let Ok(StepOutcome::Done(done)) = run_step(
                &provider,
                Operation::Onboard,
                &input,
                &outputs,
                StepKey::indexed(CREATE_USER, i),
            )
            .await
            else {
                panic!("create_user#{i} fails");
            };
            assert_eq!(done.outputs["logins"], want, "create_user#{i}");
            outputs.extend(done.outputs);
        }
    }

    #[tokio::test]
    async fn an_injected_503_surfaces_as_a_transient_error_and_is_retried() {
        let (api, provider, _) = sandbox_and_provider().await;
        api.knobs.inject(FaultRule {
            method: Some("POST".into()),
            path_contains: "/connection".into(),
            fault: Fault::Status { status: 503 },
            times: 1,
        });
        let input = json!({"tenant": {"customerReference": "flaky"}});
        let outputs = json!({"code_name": "prefixflaky-1"})
            .as_object()
            .unwrap()
            .clone();
        run_step(
            &provider,
            Operation::Onboard,
            &input,
            &Map::new(),
            StepKey::new(CREATE_TENANT),
        )
        .await
        .expect("tenant created");
        let err = run_step(
            &provider,
            Operation::Onboard,
            &input,
            &outputs,
            StepKey::new(CREATE_CONNECTION),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                StepError::Transient {
                    reason: RetryReason::ServerError,
                    http_status: Some(503),
                    ..
                }
            ),
            "{err:?}"
        );

        api.knobs.inject(FaultRule {
            method: None,
            path_contains: "/reseller/tenant".into(),
            fault: Fault::Status { status: 503 },
            times: 1,
        });
        let run = run(
            &provider,
            Operation::Onboard,
            &json!({"tenant": {"customerReference": "flaky"}}),
        )
        .await;
        assert!(
            run.failure.is_none(),
            "a single 503 is retried: {:?}",
            run.failure
        );
        assert_eq!(run.outputs["code_name"], "prefixflaky-2");
        assert_eq!(api.knobs.calls("POST /reseller/tenant"), 3);
    }

    #[tokio::test]
    async fn a_2xx_without_the_needed_field_is_a_transient_bad_response() {
        let (api, provider, _) = sandbox_and_provider().await;
        api.knobs.inject(FaultRule {
            method: None,
            path_contains: "/reseller/tenant".into(),
            fault: Fault::Html200,
            times: 1,
        });
        let input = json!({"tenant": {"customerReference": "c"}});
        let err = run_step(
            &provider,
            Operation::Onboard,
            &input,
            &Map::new(),
            StepKey::new(CREATE_TENANT),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                StepError::Transient {
                    reason: RetryReason::BadResponse,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn no_secret_appears_in_any_error_message() {
        let (api, _, good) = sandbox_and_provider().await;
        let basic = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{PASSWORD}", good.username))
        };
        let input = json!({"tenant": {"customerReference": "c"}});
        let mut messages = Vec::new();

        let mut wrong_password = good.clone();
        wrong_password.password = crate::config::Secret::new(format!("{PASSWORD}-wrong"));
        let mut wrong_reseller = good.clone();
        wrong_reseller.reseller_code = "someone-else".into();
        let mut nowhere = good.clone();
        nowhere.base_url = "http://127.0.0.1:1".into();
        let mut not_a_url = good.clone();
        not_a_url.base_url = format!("http://user:{PASSWORD}@[bad");
        for (settings, why) in [
            (wrong_password, "401"),
            (wrong_reseller, "400"),
            (nowhere, "connection refused"),
            (not_a_url, "unusable base_url"),
        ] {
            let provider = Sharespine::new(&settings, Metrics::new());
            let err = run_step(
                &provider,
                Operation::Onboard,
                &input,
                &Map::new(),
                StepKey::new(CREATE_TENANT),
            )
            .await
            .expect_err(why);
            messages.push((why, err.to_string(), format!("{err:?}")));
        }
        api.knobs.inject(FaultRule {
            method: None,
            path_contains: "/reseller".into(),
            fault: Fault::Status { status: 503 },
            times: 1,
        });
        let provider = Sharespine::new(&good, Metrics::new());
        let err = run_step(
            &provider,
            Operation::Onboard,
            &input,
            &Map::new(),
            StepKey::new(CREATE_TENANT),
        )
        .await
        .unwrap_err();
        messages.push(("503", err.to_string(), format!("{err:?}")));

        assert!(
            messages[0].1.contains("401") || messages[0].1.contains("credentials"),
            "{messages:?}"
        );
        for (why, display, debug) in &messages {
            for text in [display, debug] {
                assert!(!text.contains(PASSWORD), "{why}: {text}");
                assert!(!text.contains(&basic), "{why}: {text}");
                assert!(
                    !text.to_lowercase().contains("authorization"),
                    "{why}: {text}"
                );
            }
        }
    }
}
