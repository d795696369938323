//! The sandbox and the workers as processes of their own (the bench
//! re-executes itself with `__sandbox` / `__worker`), so that each one's CPU
//! and memory can be read apart from the bench's and the others'.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use onboarding_worker::config::Settings;
use onboarding_worker::sandbox::{Listens, Sandbox, SandboxOptions};
use onboarding_worker::worker::Worker;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The `__sandbox` role: serves the sandbox and prints its URLs as one JSON line.
pub async fn serve_sandbox(latency_ms: u64, order_ms: u64) -> anyhow::Result<()> {
    let mut settings = Settings::load(None)?;
    settings.sandbox.latency_ms = latency_ms;
    settings.sandbox.job_duration_ms = order_ms;
    let sandbox = Sandbox::start(
        SandboxOptions::from_settings(&settings.sandbox, &settings.providers),
        Listens::ephemeral(),
    )
    .await?;
    println!(
        "{}",
        json!({"sharespine": sandbox.sharespine_url(), "computestacks": sandbox.computestacks_url(),
               "magento_api": sandbox.magento_api_url(), "magento_dashboard": sandbox.magento_dashboard_url()})
    );
    onboarding_worker::worker::shutdown_signal().await;
    Ok(())
}

/// The `__worker` role: a worker configured from the environment, until SIGTERM.
pub async fn run_worker() -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    let token = CancellationToken::new();
    let worker = Worker::start(&settings, token.clone()).await?;
    onboarding_worker::worker::shutdown_signal().await;
    token.cancel();
    worker.stopped().await;
    Ok(())
}

/// A child process, stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sandbox process with `latency_ms` per call and orders of `order_ms`,
/// and its URLs (`sharespine`, `computestacks`, `magento_api`, `magento_dashboard`).
pub fn spawn_sandbox(latency_ms: u64, order_ms: u64) -> anyhow::Result<(ChildGuard, Value)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["__sandbox", &latency_ms.to_string(), &order_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("the sandbox's stdout")?;
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    Ok((guard, serde_json::from_str(&line).context("sandbox URLs")?))
}

/// A worker process, with its `/metrics` URL; its stderr goes to a file that
/// a failed start quotes.
pub struct WorkerProc {
    pub process: ChildGuard,
    pub metrics_url: String,
    ready_url: String,
    log: tempfile::NamedTempFile,
}

/// Starts a worker process configured by `env` (see [`worker_env`]) with
/// its metrics on a port of its own.
pub fn spawn_worker(env: &HashMap<String, String>) -> anyhow::Result<WorkerProc> {
    let port = free_port()?;
    let log = tempfile::NamedTempFile::new()?;
    let child = Command::new(std::env::current_exe()?)
        .arg("__worker")
        .envs(env)
        .env("ONBOARDING__METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log.reopen()?)
        .spawn()?;
    Ok(WorkerProc {
        process: ChildGuard(child),
        metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        ready_url: format!("http://127.0.0.1:{port}/readyz"),
        log,
    })
}

impl WorkerProc {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Waits until the worker answers `/readyz` (connected, ledger open).
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(&self.ready_url).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline || matches!(self.process.0.try_wait(), Ok(Some(_))) {
                let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "the worker process did not become ready; its last log lines:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The environment of a worker on `vhost_url` and `ledger` against the
/// sandbox at `urls`, `concurrency` Sharespine steps in flight.
pub fn worker_env(
    vhost_url: &str,
    ledger: &str,
    urls: &Value,
    concurrency: usize,
) -> HashMap<String, String> {
    let url = |name: &str| urls[name].as_str().unwrap_or_default().to_string();
    [
        ("ONBOARDING__AMQP__URL", vhost_url.to_string()),
        ("ONBOARDING__LEDGER__URL", ledger.to_string()),
        ("ONBOARDING__METRICS__LISTEN", "127.0.0.1:0".into()),
        (
            "ONBOARDING__PROVIDERS__SHARESPINE__BASE_URL",
            url("sharespine"),
        ),
        (
            "ONBOARDING__PROVIDERS__COMPUTESTACKS__BASE_URL",
            url("computestacks"),
        ),
        (
            "ONBOARDING__PROVIDERS__MAGENTO_BI__API_BASE",
            url("magento_api"),
        ),
        (
            "ONBOARDING__PROVIDERS__MAGENTO_BI__DASHBOARD_BASE",
            url("magento_dashboard"),
        ),
        (
            "ONBOARDING__PROVIDERS__SHARESPINE__CALLS__CONCURRENCY",
            concurrency.to_string(),
        ),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
