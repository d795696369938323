//! The test environment: `TestEnv::start()` gives a fresh vhost, a sandbox, a
//! temporary ledger and a running worker, plus ways to publish requests and
//! read events, dead messages and queue depths the way an operator would.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use onboarding_worker::broker::admin::{Admin, DeadMessage, EventStream};
use onboarding_worker::config::Settings;
use onboarding_worker::sandbox::{Listens, Sandbox, SandboxOptions};
use onboarding_worker::worker::Worker;
use serde_json::Value;
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

/// Every log line any in-process worker wrote, for the secrets test.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = CaptureWriter(buf.clone());
        if std::env::var("RUST_LOG").is_err() {
            // SAFETY: set once, before any worker thread reads the environment.
            unsafe {
                std::env::set_var(
                    "RUST_LOG",
                    "debug,sqlx=warn,lapin=info,hyper=info,reqwest=info",
                )
            };
        }
        onboarding_worker::telemetry::init("text", move || writer.clone());
        buf
    })
    .clone()
}

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if std::env::var("TEST_LOG").is_ok() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn broker_must_be_up() {
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!(
            "RabbitMQ is not listening on 127.0.0.1:5672. Start it with `bash .ci/run` (installs and starts it), \
             or `apt-get install -y rabbitmq-server && rabbitmq-plugins enable rabbitmq_management && rabbitmq-server -detached`"
        );
    }
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:15672".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!("RabbitMQ's management API is not on 127.0.0.1:15672: run `rabbitmq-plugins enable rabbitmq_management`");
    }
}

/// A blocking call to the management API (usable from `Drop`).
pub fn mgmt(method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect("127.0.0.1:15672").expect("management API");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    // guest:guest
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    let status = resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies: keep it simple, find the JSON.
    let body = match (body.find(['{', '[']), body.rfind(['}', ']'])) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body,
    };
    (status, body)
}

/// A vhost of its own, deleted when dropped.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn new() -> Vhost {
        broker_must_be_up();
        let name = format!("test-{}", uuid::Uuid::new_v4().simple());
        let (s, b) = mgmt("PUT", &format!("/api/vhosts/{name}"), Some("{}"));
        assert!(s == 201 || s == 204, "create vhost: {s} {b}");
        let (s, b) = mgmt(
            "PUT",
            &format!("/api/permissions/{name}/guest"),
            Some(r#"{"configure":".*","write":".*","read":".*"}"#),
        );
        assert!(s == 201 || s == 204, "permissions: {s} {b}");
        Vhost { name }
    }
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }
    /// (ready, unacknowledged) message counts of a queue.
    pub fn queue_counts(&self, queue: &str) -> (i64, i64) {
        let (s, b) = mgmt("GET", &format!("/api/queues/{}/{}", self.name, queue), None);
        assert_eq!(s, 200, "queue {queue}: {b}");
        let v: Value = serde_json::from_str(&b).unwrap_or(Value::Null);
        (
            v["messages_ready"].as_i64().unwrap_or(0),
            v["messages_unacknowledged"].as_i64().unwrap_or(0),
        )
    }
    /// The worker's queues (requests, steps, delays) holding ready or
    /// unacknowledged messages, as "name (ready N, unacked M)". Used by the
    /// chaos and broker-restart binaries, which share this file.
    #[allow(dead_code)]
    pub fn busy_queues(&self) -> Vec<String> {
        let (status, body) = mgmt(
            "GET",
            &format!(
                "/api/queues/{}?columns=name,messages_ready,messages_unacknowledged",
                self.name
            ),
            None,
        );
        if status != 200 {
            return vec![format!("(management API answered {status})")];
        }
        let queues: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        queues
            .iter()
            .filter(|q| {
                let name = q["name"].as_str().unwrap_or_default();
                name == "onboarding.requests"
                    || name.starts_with("onboarding.steps.")
                    || name.starts_with("onboarding.delay.")
            })
            .filter_map(|q| {
                let ready = q["messages_ready"].as_i64().unwrap_or(0);
                let unacked = q["messages_unacknowledged"].as_i64().unwrap_or(0);
                (ready != 0 || unacked != 0).then(|| {
                    format!(
                        "{} (ready {ready}, unacked {unacked})",
                        q["name"].as_str().unwrap_or("?")
                    )
                })
            })
            .collect()
    }

    /// Force-closes the worker's connections in this vhost, as
    /// `rabbitmqctl close_all_connections` would (without touching other tests' vhosts).
    pub fn close_worker_connections(&self) -> usize {
        // The management API lists a new connection after its next statistics round.
        let deadline = Instant::now() + Duration::from_secs(10);
        let conns = loop {
            let (_, b) = mgmt(
                "GET",
                &format!("/api/vhosts/{}/connections", self.name),
                None,
            );
            let all: Vec<Value> = serde_json::from_str(&b).unwrap_or_default();
            let ours: Vec<Value> = all
                .into_iter()
                .filter(|c| c["client_properties"]["connection_name"] == "onboarding-worker")
                .collect();
            if !ours.is_empty() || Instant::now() > deadline {
                break ours;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        for c in &conns {
            let name = c["name"].as_str().unwrap();
            let enc: String = url::form_urlencoded::byte_serialize(name.as_bytes())
                .collect::<String>()
                .replace('+', "%20");
            mgmt("DELETE", &format!("/api/connections/{enc}"), None);
        }
        conns.len()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        mgmt("DELETE", &format!("/api/vhosts/{}", self.name), None);
    }
}

/// Settings for a test: fast retries and polls, short timeouts.
pub fn test_settings(vhost: &Vhost, ledger_dir: &std::path::Path) -> Settings {
    let mut s = Settings::load(None).expect("default settings");
    s.amqp.url = onboarding_worker::config::Secret::new(vhost.amqp_url());
    s.amqp.reconnect_min_ms = 100;
    s.amqp.reconnect_max_ms = 1000;
    s.metrics.listen = "127.0.0.1:0".into();
    s.ledger.url = onboarding_worker::config::Secret::new(format!(
        "sqlite://{}/ledger.sqlite",
        ledger_dir.display()
    ));
    s.worker.lease_margin_ms = 1000;
    s.worker.shutdown_grace_ms = 5000;
    for calls in [
        &mut s.providers.sharespine.calls,
        &mut s.providers.computestacks.calls,
        &mut s.providers.magento_bi.calls,
    ] {
        calls.timeout_ms = 1500;
        calls.retry_base_ms = 50;
        calls.retry_cap_ms = 400;
        calls.max_attempts = 6;
    }
    for polls in [
        &mut s.providers.computestacks.polls,
        &mut s.providers.magento_bi.polls,
    ] {
        for p in polls.values_mut() {
            p.interval_ms = 200;
            p.growth = 1.5;
            p.max_interval_ms = 500;
            p.deadline_ms = 20_000;
        }
    }
    s.sandbox.job_duration_ms = 500;
    s
}

pub struct TestEnv {
    pub vhost: Vhost,
    pub sandbox: Sandbox,
    pub settings: Settings,
    pub admin: Admin,
    /// Holds the temporary ledger until the test ends.
    #[allow(dead_code)]
    pub ledger_dir: tempfile::TempDir,
    worker: Option<(Worker, CancellationToken)>,
    events: AsyncMutex<EventStream>,
    /// Every event seen so far, in order.
    pub seen: AsyncMutex<Vec<Value>>,
}

impl TestEnv {
    pub async fn start() -> TestEnv {
        Self::start_with(|_| {}).await
    }

    /// Starts with `tweak` applied to the settings (after the sandbox is configured).
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> TestEnv {
        let env = Self::prepare(tweak).await;
        env.with_worker().await
    }

    /// Everything but the worker.
    pub async fn prepare(tweak: impl FnOnce(&mut Settings)) -> TestEnv {
        captured_logs();
        let vhost = Vhost::new();
        let ledger_dir = tempfile::tempdir().unwrap();
        let mut settings = test_settings(&vhost, ledger_dir.path());
        tweak(&mut settings);
        let sandbox = Sandbox::start(
            SandboxOptions::from_settings(&settings.sandbox, &settings.providers),
            Listens::ephemeral(),
        )
        .await
        .expect("sandbox starts");
        sandbox.configure(&mut settings.providers);
        let admin = Admin::connect(&vhost.amqp_url())
            .await
            .expect("admin connects");
        let events = admin
            .subscribe_events("#")
            .await
            .expect("subscribe to events");
        TestEnv {
            vhost,
            sandbox,
            settings,
            admin,
            ledger_dir,
            worker: None,
            events: AsyncMutex::new(events),
            seen: AsyncMutex::new(Vec::new()),
        }
    }

    pub async fn with_worker(mut self) -> TestEnv {
        self.start_worker().await;
        self
    }

    pub async fn start_worker(&mut self) {
        let token = CancellationToken::new();
        let worker = Worker::start(&self.settings, token.clone())
            .await
            .expect("worker starts");
        wait_until(Duration::from_secs(10), || worker.health.is_ready()).await;
        self.worker = Some((worker, token));
    }

    pub fn worker(&self) -> &Worker {
        &self.worker.as_ref().expect("a worker").0
    }

    pub async fn stop_worker(&mut self) {
        if let Some((w, t)) = self.worker.take() {
            t.cancel();
            w.stopped().await;
        }
    }

    pub async fn publish(&self, request: &Value) {
        self.publish_raw(request.to_string().as_bytes()).await;
    }

    pub async fn publish_raw(&self, body: &[u8]) {
        self.admin
            .publish_request("test", body)
            .await
            .expect("publish request");
    }

    /// Reads events until `pred` holds for one; returns it.
    pub async fn wait_event(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.seen.lock().await.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + timeout;
        let mut events = self.events.lock().await;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.next()).await {
                Ok(Some((_, body))) => {
                    let v: Value = serde_json::from_slice(&body).expect("events are JSON");
                    self.seen.lock().await.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                _ => panic!(
                    "no matching event within {timeout:?}; seen: {:#?}",
                    self.seen.lock().await
                ),
            }
        }
    }

    /// The `completed` or `failed` event of `request_id`.
    pub async fn final_event(&self, request_id: &str, timeout: Duration) -> Value {
        let id = request_id.to_string();
        self.wait_event(timeout, move |e| {
            e["request_id"] == id.as_str() && (e["event"] == "completed" || e["event"] == "failed")
        })
        .await
    }

    /// Events seen so far for `request_id`, in order.
    pub async fn events_of(&self, request_id: &str) -> Vec<Value> {
        self.seen
            .lock()
            .await
            .iter()
            .filter(|e| e["request_id"] == request_id)
            .cloned()
            .collect()
    }

    /// Waits a moment for stragglers, then returns every event seen.
    pub async fn drain_events(&self, quiet: Duration) -> Vec<Value> {
        let mut events = self.events.lock().await;
        while let Ok(Some((_, body))) = tokio::time::timeout(quiet, events.next()).await {
            self.seen
                .lock()
                .await
                .push(serde_json::from_slice(&body).unwrap());
        }
        self.seen.lock().await.clone()
    }

    /// What `onboarding.dead` holds. A message's copy is published there
    /// right after its `failed` event is confirmed, so this waits (up to 5 s)
    /// until it holds at least one message per `failed` event seen so far.
    pub async fn dead(&self) -> Vec<DeadMessage> {
        let failed = self
            .seen
            .lock()
            .await
            .iter()
            .filter(|e| e["event"] == "failed")
            .count();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let dead = self.admin.dead_list().await.expect("list dead");
            if dead.len() >= failed || Instant::now() > deadline {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.worker().metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn shutdown(mut self) {
        self.stop_worker().await;
    }
}

pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Sharespine onboarding request with `users` logins.
pub fn sharespine_request(
    request_id: &str,
    reference: &str,
    users: &[&str],
    login: Option<&str>,
) -> Value {
    let users: Vec<Value> = users
        .iter()
        .map(|l| serde_json::json!({"login": l, "fullName": format!("User {l}"), "email": format!("{l}@example.test"), "permissions": [], "defaultLanguage": "swe"}))
        .collect();
    let mut input = serde_json::json!({
        "tenant": {"customerReference": reference, "active": true, "fullName": "Test Store", "email": "owner@example.test",
                   "defaultLanguage": "swe", "languages": ["swe"], "options": []},
        "users": users,
    });
    if let Some(l) = login {
        input["login"] = serde_json::json!({"login": l, "path": "/"});
    }
    serde_json::json!({"request_id": request_id, "provider": "sharespine", "operation": "onboard", "input": input})
}

/// The steps named in `step_completed` events, in order.
pub fn steps_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "step_completed")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect()
}

#[allow(dead_code)]
pub fn env_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---- magento_bi (used by tests/it/magento_bi.rs) ---------------------------

/// A Magento BI onboarding request shaped like CONTRACT §4's example, for
/// `company`, whose MySQL connection carries `mysql_password`.
#[allow(dead_code)]
pub fn magento_request(request_id: &str, company: &str, mysql_password: &str) -> Value {
    serde_json::json!({
        "request_id": request_id,
        "provider": "magento_bi",
        "operation": "onboard",
        "input": {
            "signup": {"tier": "T100", "company": company, "first_name": "Coco", "last_name": "Owner",
                       "email": "owner@example.test", "role": "csm",
                       "magento": {"customer_id": "cust-42", "subscription_id": "sub-42"}},
            "invite": {"email": "analyst@example.test", "first_name": "Ana", "last_name": "Lyst",
                       "force_create": 1,
                       "client_rights": {"admin": 1, "billing": 1, "readonly": 1, "technical": 0}},
            "client": {"name": company,
                       "properties": {"timezone": "America/New_York", "default_currency": "USD"}},
            "connection": {"name": "store", "display_name": "Store DB", "type": "mysql",
                           "credentials": {"password": mysql_password, "encryption_password": null},
                           "properties": {"host": "db.example.test", "port": "3306",
                                          "dbName": "magento_store", "username": "bi_reader"}},
            "dashboards": {"package": "magento1_rjql1", "database": "magento_store", "table_prefix": ""}
        }
    })
}

/// The sum of the samples of `name` whose labels include every `labels` pair
/// (in `/metrics` text); `None` when no such sample is exported.
#[allow(dead_code)]
pub fn metric_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .reduce(|a, b| a + b)
}
// ---- end magento_bi ----------------------------------------------------------

/// The environment of a worker process on `settings`' sandbox and
/// `ledger_url`, with the tests' timing: calls of `call_timeout_ms`, fast
/// retries and reconnects, polls every 200 to 500 ms (deadline 60 s), a 0.5 s
/// lease margin. No broker address: the caller adds `ONBOARDING__AMQP__URL`
/// or `__URLS`.
#[allow(dead_code)]
pub fn worker_process_env(
    settings: &Settings,
    ledger_url: &str,
    call_timeout_ms: u64,
) -> Vec<(String, String)> {
    let p = &settings.providers;
    let mut vars: Vec<(String, String)> = [
        ("ONBOARDING__AMQP__RECONNECT_MIN_MS", "100"),
        ("ONBOARDING__AMQP__RECONNECT_MAX_MS", "1000"),
        ("ONBOARDING__LEDGER__URL", ledger_url),
        ("ONBOARDING__METRICS__LISTEN", "127.0.0.1:0"),
        ("ONBOARDING__WORKER__LEASE_MARGIN_MS", "500"),
        (
            "ONBOARDING__PROVIDERS__SHARESPINE__BASE_URL",
            &p.sharespine.base_url,
        ),
        (
            "ONBOARDING__PROVIDERS__COMPUTESTACKS__BASE_URL",
            &p.computestacks.base_url,
        ),
        (
            "ONBOARDING__PROVIDERS__MAGENTO_BI__API_BASE",
            &p.magento_bi.api_base,
        ),
        (
            "ONBOARDING__PROVIDERS__MAGENTO_BI__DASHBOARD_BASE",
            &p.magento_bi.dashboard_base,
        ),
        (
            "RUST_LOG",
            "info,onboarding_worker=debug,sqlx=warn,lapin=warn",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let timeout = call_timeout_ms.to_string();
    for provider in ["SHARESPINE", "COMPUTESTACKS", "MAGENTO_BI"] {
        for (key, value) in [
            ("TIMEOUT_MS", timeout.as_str()),
            ("RETRY_BASE_MS", "50"),
            ("RETRY_CAP_MS", "400"),
        ] {
            vars.push((
                format!("ONBOARDING__PROVIDERS__{provider}__CALLS__{key}"),
                value.into(),
            ));
        }
    }
    for (provider, step) in [
        ("COMPUTESTACKS", "POLL_ORDER"),
        ("MAGENTO_BI", "POLL_SIGNUP"),
        ("MAGENTO_BI", "POLL_CONNECTION"),
        ("MAGENTO_BI", "POLL_CONNECTION_TEST"),
        ("MAGENTO_BI", "POLL_DASHBOARDS"),
    ] {
        for (key, value) in [
            ("INTERVAL_MS", "200"),
            ("MAX_INTERVAL_MS", "500"),
            ("DEADLINE_MS", "60000"),
        ] {
            vars.push((
                format!("ONBOARDING__PROVIDERS__{provider}__POLLS__{step}__{key}"),
                value.into(),
            ));
        }
    }
    vars
}

/// The built binary as a worker process on `env`'s vhost, sandbox and ledger
/// ([`worker_process_env`], 1.5 s calls), then `extra` environment variables
/// on top. Its log lines go to `log`, or nowhere.
#[allow(dead_code)]
pub fn spawn_worker_process(
    env: &TestEnv,
    extra: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> std::process::Child {
    let s = &env.settings;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onboarding-worker"));
    cmd.arg("run")
        .envs(worker_process_env(s, s.ledger.url.expose(), 1500))
        .env("ONBOARDING__AMQP__URL", s.amqp.url.expose());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let stderr = match log {
        Some(path) => std::process::Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("the worker's log file"),
        ),
        None => std::process::Stdio::null(),
    };
    cmd.stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("the built binary starts")
}
