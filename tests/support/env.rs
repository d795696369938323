//! The test environment: `TestEnv::start()` gives a fresh vhost, a sandbox on
//! port 0, a temporary SQLite ledger and a running in-process worker, plus
//! ways to publish requests and read events, dead messages and metrics the
//! way an operator would. Also the tests' settings, log capture and waiting.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use onboarding_worker::broker::admin::{Admin, DeadMessage, EventStream};
use onboarding_worker::config::Settings;
use onboarding_worker::sandbox::{Listens, Sandbox, SandboxOptions};
use onboarding_worker::worker::Worker;
use serde_json::Value;
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

use super::vhost::Vhost;

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
        onboarding_worker::telemetry::init(Default::default(), move || writer.clone());
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

/// Settings for a test: fast retries and polls, short timeouts.
pub fn test_settings(vhost: &Vhost, ledger_dir: &std::path::Path) -> Settings {
    let mut s = Settings::load(None).expect("default settings");
    s.amqp.url = onboarding_worker::config::Secret::new(vhost.amqp_url());
    s.amqp.reconnect_min_ms = 100;
    s.amqp.reconnect_max_ms = 1000;
    s.metrics.listen = "127.0.0.1:0".parse().unwrap();
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
        calls.max_attempts = 6.try_into().unwrap();
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
        let vhost = Vhost::new().await;
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

/// Like [`wait_until`], for a condition that has to ask (the management API, a ledger).
pub async fn wait_until_async(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
