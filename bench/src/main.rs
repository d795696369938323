//! The benchmark: in one process run, on fresh vhosts, it measures the broker's
//! own ceiling for the worker's message pattern and holds the worker against it.
//!
//! ```sh
//! cargo run --release --bin bench            # full run (a few minutes)
//! cargo run --release --bin bench -- --quick # under a minute, for CI's smoke run
//! cargo run --release --bin bench -- --json  # last line: one JSON object
//! ```
//!
//! Parts: (1) broker ceiling; (2) worker throughput on Sharespine at zero latency
//! and its ratio to the ceiling; (3) latency of one onboarding at a time against
//! the ceiling's hop latency × hops; (4) RSS and alive tasks before and after
//! many onboardings all wait on slow provider jobs; (5) one worker process vs two
//! on a latency-bound load. Figures are printed, never asserted.
//!
//! It is a workspace member of its own (`bench/`), so none of it ships in the
//! worker; the root manifest makes it a default member so that the commands
//! above work from the repository root.
//!
//! The bench re-executes itself with `__sandbox` / `__worker` to run the sandbox
//! and workers as separate processes where a part needs that.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod ceiling;

use anyhow::{bail, Context};
use clap::Parser;
use onboarding_worker::broker::admin::Admin;
use onboarding_worker::config::{Secret, Settings};
use onboarding_worker::sandbox::{Listens, Sandbox, SandboxOptions};
use onboarding_worker::worker::Worker;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Measures the worker against the broker's own ceiling, in one run. Needs RabbitMQ with its management plugin (bash scripts/services.sh)."
)]
struct Args {
    /// Small sizes: finishes in under a minute (CI's smoke run).
    #[arg(long)]
    quick: bool,
    /// Print one JSON object with every figure as the last line.
    #[arg(long)]
    json: bool,
    /// Management API of the broker (to make fresh vhosts).
    #[arg(long, default_value = "http://guest:guest@127.0.0.1:15672")]
    management: String,
    /// Onboardings in the throughput part.
    #[arg(long)]
    onboardings: Option<usize>,
    /// Seconds the ceiling part runs.
    #[arg(long)]
    ceiling_s: Option<u64>,
    /// Onboardings measured one at a time in the latency part.
    #[arg(long)]
    latency_runs: Option<usize>,
    /// Onboardings left waiting in the memory part.
    #[arg(long)]
    waiting: Option<usize>,
    /// Onboardings in each scale-out run.
    #[arg(long)]
    scaleout: Option<usize>,
    /// Steps of one provider in flight per worker (its prefetch).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Skip the waiting and scale-out parts (for profiling the throughput).
    #[arg(long)]
    throughput_only: bool,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(clap::Subcommand, Debug, Clone)]
enum Role {
    /// (internal) serve the sandbox and print its URLs as one JSON line.
    #[command(name = "__sandbox", hide = true)]
    Sandbox { latency_ms: u64, order_ms: u64 },
    /// (internal) run a worker configured from the environment.
    #[command(name = "__worker", hide = true)]
    Worker,
}

struct Sizes {
    onboardings: usize,
    ceiling: Duration,
    latency_runs: usize,
    waiting: usize,
    scaleout: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.role.clone() {
        Some(Role::Sandbox {
            latency_ms,
            order_ms,
        }) => rt.block_on(serve_sandbox(latency_ms, order_ms)),
        Some(Role::Worker) => rt.block_on(run_worker()),
        None => rt.block_on(bench(args)),
    }
}

async fn serve_sandbox(latency_ms: u64, order_ms: u64) -> anyhow::Result<()> {
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

async fn run_worker() -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    let token = CancellationToken::new();
    let worker = Worker::start(&settings, token.clone()).await?;
    onboarding_worker::worker::shutdown_signal().await;
    token.cancel();
    worker.stopped().await;
    Ok(())
}

/// A child process killed when dropped.
struct ChildGuard(Child);
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

fn spawn_sandbox(latency_ms: u64, order_ms: u64) -> anyhow::Result<(ChildGuard, Value)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["__sandbox", &latency_ms.to_string(), &order_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    Ok((
        ChildGuard(child),
        serde_json::from_str(&line).context("sandbox URLs")?,
    ))
}

fn worker_env(
    vhost_url: &str,
    ledger: &str,
    urls: &Value,
    concurrency: usize,
) -> HashMap<String, String> {
    let mut env = HashMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("ONBOARDING__AMQP__URL", vhost_url.into());
    set("ONBOARDING__LEDGER__URL", ledger.into());
    set("ONBOARDING__METRICS__LISTEN", "127.0.0.1:0".into());
    set(
        "ONBOARDING__PROVIDERS__SHARESPINE__BASE_URL",
        urls["sharespine"].as_str().unwrap().into(),
    );
    set(
        "ONBOARDING__PROVIDERS__COMPUTESTACKS__BASE_URL",
        urls["computestacks"].as_str().unwrap().into(),
    );
    set(
        "ONBOARDING__PROVIDERS__MAGENTO_BI__API_BASE",
        urls["magento_api"].as_str().unwrap().into(),
    );
    set(
        "ONBOARDING__PROVIDERS__MAGENTO_BI__DASHBOARD_BASE",
        urls["magento_dashboard"].as_str().unwrap().into(),
    );
    set(
        "ONBOARDING__PROVIDERS__SHARESPINE__CALLS__CONCURRENCY",
        concurrency.to_string(),
    );
    set("RUST_LOG", "warn".into());
    env
}

/// A fresh vhost through the management API, deleted when dropped.
struct Vhost {
    name: String,
    mgmt: String,
    http: reqwest::Client,
}

impl Vhost {
    async fn new(mgmt: &str) -> anyhow::Result<Vhost> {
        let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let http = reqwest::Client::new();
        let url = url::Url::parse(mgmt)?;
        let base = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(15672)
        );
        let (user, pass) = (
            url.username().to_string(),
            url.password().unwrap_or("").to_string(),
        );
        let r = http
            .put(format!("{base}/api/vhosts/{name}"))
            .basic_auth(&user, Some(&pass))
            .json(&json!({}))
            .send()
            .await;
        let r = r.context(
            "the broker's management API (bash scripts/services.sh starts RabbitMQ with it)",
        )?;
        if !r.status().is_success() {
            bail!("creating vhost {name}: {}", r.status());
        }
        http.put(format!("{base}/api/permissions/{name}/{user}"))
            .basic_auth(&user, Some(&pass))
            .json(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await?
            .error_for_status()?;
        Ok(Vhost {
            name,
            mgmt: format!("{base}|{user}|{pass}"),
            http,
        })
    }
    fn amqp(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }
    async fn delete(self) {
        let parts: Vec<&str> = self.mgmt.split('|').collect();
        let _ = self
            .http
            .delete(format!("{}/api/vhosts/{}", parts[0], self.name))
            .basic_auth(parts[1], Some(parts[2]))
            .send()
            .await;
    }
}

fn sharespine(id: &str) -> Value {
    json!({"request_id": id, "provider": "sharespine", "input": {
        "tenant": {"customerReference": id.replace(['-', '.'], ""), "active": true, "fullName": "Bench AB", "email": "b@bench.example",
                   "defaultLanguage": "swe", "languages": ["swe"], "options": []},
        "users": [{"login": "anna", "fullName": "Anna", "email": "anna@bench.example", "permissions": [], "defaultLanguage": "swe"}],
        "login": {"login": "anna", "path": "/"}}})
}

/// Steps of the Sharespine onboarding above: tenant, one user, connection, login URL.
const SHARESPINE_STEPS: usize = 4;

fn computestacks(id: &str) -> Value {
    json!({"request_id": id, "provider": "computestacks", "input": {
        "user": {"fname": "B", "lname": "Ench", "email": format!("{id}@bench.example"), "password": "bench-Passw0rd!",
                 "password_confirmation": "bench-Passw0rd!", "skip_email_confirm": true},
        "order": {"project_name": id, "location_id": 1, "containers": [{"image_id": 4, "resources": {"product_id": 1}, "params": [], "domains": []}]}}})
}

async fn publish_all(admin: &Admin, requests: &[Value]) -> anyhow::Result<()> {
    for chunk in requests.chunks(200) {
        let bodies: Vec<Vec<u8>> = chunk.iter().map(|r| r.to_string().into_bytes()).collect();
        let results =
            futures::future::join_all(bodies.iter().map(|b| admin.publish_request("bench", b)))
                .await;
        for r in results {
            r?;
        }
    }
    Ok(())
}

/// Waits for `n` completed events (or any failure) on `events`.
async fn await_completed(
    events: &mut onboarding_worker::broker::admin::EventStream,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut done = 0;
    while done < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((rk, body))) = tokio::time::timeout(left, events.next()).await else {
            bail!("only {done} of {n} onboardings completed within {timeout:?}");
        };
        if rk.ends_with(".completed") {
            done += 1;
        } else if rk.ends_with(".failed") {
            bail!("an onboarding failed: {}", String::from_utf8_lossy(&body));
        }
    }
    Ok(())
}

/// (sum seconds, count) of every timed phase of the worker's step work.
fn phases(m: &onboarding_worker::metrics::Metrics) -> Vec<(String, f64, u64)> {
    let mut out = Vec::new();
    for op in ["accept", "claim", "record_step", "advance", "finish"] {
        let h = m.ledger_seconds.with_label_values(&[op]);
        out.push((
            format!("ledger {op}"),
            h.get_sample_sum(),
            h.get_sample_count(),
        ));
    }
    for what in ["step", "event"] {
        let h = m.publish_seconds.with_label_values(&[what]);
        out.push((
            format!("publish {what} (to confirm)"),
            h.get_sample_sum(),
            h.get_sample_count(),
        ));
    }
    for step in [
        "create_tenant",
        "create_user",
        "create_connection",
        "create_login_url",
    ] {
        let h = m
            .step_duration_seconds
            .with_label_values(&["sharespine", step]);
        out.push((
            format!("provider call {step}"),
            h.get_sample_sum(),
            h.get_sample_count(),
        ));
    }
    out
}

/// Prints mean milliseconds per phase between two snapshots.
fn print_phases(title: &str, before: &[(String, f64, u64)], after: &[(String, f64, u64)]) {
    eprintln!("      where the time goes ({title}), mean per operation:");
    for ((name, s0, c0), (_, s1, c1)) in before.iter().zip(after) {
        if c1 > c0 {
            eprintln!(
                "        {name:<34} {:>8.3} ms  × {}",
                (s1 - s0) * 1000.0 / (c1 - c0) as f64,
                c1 - c0
            );
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A gauge's value (summed over its series) from a worker's `/metrics`.
async fn gauge(url: &str, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(url).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Waits until a worker's gauge reaches `at_least` (it is sampled every 5 s).
async fn wait_gauge(url: &str, name: &str, at_least: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Ok(v) = gauge(url, name).await {
            if v >= at_least {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{name} did not reach {at_least}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn proc_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn base_settings(
    vhost: &Vhost,
    dir: &std::path::Path,
    concurrency: usize,
) -> anyhow::Result<Settings> {
    let mut s = Settings::load(None)?;
    s.amqp.url = Secret::new(vhost.amqp());
    s.ledger.url = Secret::new(format!("sqlite://{}/ledger.sqlite", dir.display()));
    s.metrics.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    s.providers.sharespine.calls.concurrency = concurrency.try_into()?;
    s.providers.computestacks.calls.concurrency = concurrency.try_into()?;
    Ok(s)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let sizes = if args.quick {
        Sizes {
            onboardings: 150,
            ceiling: Duration::from_secs(4),
            latency_runs: 10,
            waiting: 300,
            scaleout: 24,
        }
    } else {
        Sizes {
            onboardings: 1500,
            ceiling: Duration::from_secs(15),
            latency_runs: 50,
            waiting: 10_000,
            scaleout: 120,
        }
    };
    let sizes = Sizes {
        onboardings: args.onboardings.unwrap_or(sizes.onboardings),
        ceiling: args
            .ceiling_s
            .map(Duration::from_secs)
            .unwrap_or(sizes.ceiling),
        latency_runs: args.latency_runs.unwrap_or(sizes.latency_runs),
        waiting: args.waiting.unwrap_or(sizes.waiting),
        scaleout: args.scaleout.unwrap_or(sizes.scaleout),
    };
    let mut figures = serde_json::Map::new();
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let step_message_bytes = 160; // a step message's typical size (see engine::wire::StepMessage)

    // (1) + (2): ceiling and worker throughput, same chains and prefetch.
    eprintln!(
        "[1/6] broker ceiling: {} chains, prefetch {}, {} s",
        args.concurrency,
        args.concurrency,
        sizes.ceiling.as_secs()
    );
    let vhost = Vhost::new(&args.management).await?;
    let c = ceiling::measure(
        &vhost.amqp(),
        args.concurrency,
        args.concurrency as u16,
        step_message_bytes,
        sizes.ceiling,
    )
    .await?;
    let ceiling_sps = c.steps_per_s();
    eprintln!("      {:.0} steps/s", ceiling_sps);
    let single = ceiling::measure(
        &vhost.amqp(),
        1,
        1,
        step_message_bytes,
        Duration::from_secs(if args.quick { 2 } else { 5 }),
    )
    .await?;
    let mut hops = single.hop_latencies_ms.clone();
    hops.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let hop_ms = percentile(&hops, 0.5);

    eprintln!(
        "[2/6] worker throughput: {} Sharespine onboardings at zero provider latency",
        sizes.onboardings
    );
    let dir = tempfile::tempdir()?;
    let mut settings = base_settings(&vhost, dir.path(), args.concurrency)?;
    let sandbox = Sandbox::start(
        SandboxOptions::from_settings(&settings.sandbox, &settings.providers),
        Listens::ephemeral(),
    )
    .await?;
    sandbox.configure(&mut settings.providers);
    let admin = Admin::connect(&vhost.amqp()).await?;
    let mut events = admin.subscribe_events("#").await?;
    let token = CancellationToken::new();
    let worker = Worker::start(&settings, token.clone()).await?;
    // Warm up (connections, token caches, ledger pages).
    publish_all(&admin, &[sharespine("warmup-1")]).await?;
    await_completed(&mut events, 1, Duration::from_secs(30)).await?;
    events.drain_pending(Duration::from_millis(200)).await;
    let requests: Vec<Value> = (0..sizes.onboardings)
        .map(|i| sharespine(&format!("tp-{i}")))
        .collect();
    let before = phases(&worker.metrics);
    let started = Instant::now();
    publish_all(&admin, &requests).await?;
    await_completed(&mut events, sizes.onboardings, Duration::from_secs(600)).await?;
    let took = started.elapsed();
    let worker_sps = (sizes.onboardings * SHARESPINE_STEPS) as f64 / took.as_secs_f64();
    let ratio = worker_sps / ceiling_sps;
    eprintln!(
        "      {:.0} steps/s, {:.1} onboardings/s, ratio {:.2}",
        worker_sps,
        sizes.onboardings as f64 / took.as_secs_f64(),
        ratio
    );
    print_phases("under load", &before, &phases(&worker.metrics));

    // (3) latency, one at a time.
    eprintln!(
        "[3/6] latency: {} onboardings one at a time",
        sizes.latency_runs
    );
    events.drain_pending(Duration::from_millis(300)).await;
    let mut lat = Vec::new();
    let before = phases(&worker.metrics);
    for i in 0..sizes.latency_runs {
        let t = Instant::now();
        publish_all(&admin, &[sharespine(&format!("lat-{i}"))]).await?;
        await_completed(&mut events, 1, Duration::from_secs(30)).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Hops of one onboarding: the request, then one message per step.
    let hops_per_onboarding = SHARESPINE_STEPS + 1;
    let budget = hop_ms * hops_per_onboarding as f64;
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    eprintln!("      p50 {p50:.1} ms, p99 {p99:.1} ms; budget {budget:.1} ms ({hop_ms:.2} ms per hop × {hops_per_onboarding})");
    print_phases("one at a time", &before, &phases(&worker.metrics));
    token.cancel();
    worker.stopped().await;
    sandbox.shutdown().await;
    drop(events);
    admin.close().await;
    vhost.delete().await;

    if args.throughput_only {
        println!("ceiling {ceiling_sps:.0} steps/s, worker {worker_sps:.0} steps/s, ratio {ratio:.2}, latency p50 {p50:.1} ms (budget {budget:.1} ms)");
        return Ok(());
    }

    // (4) waiting costs nothing. The worker runs as a process of its own (the
    // sandbox too), so its RSS and its runtime's alive tasks are its own.
    eprintln!(
        "[4/6] waiting: {} ComputeStacks onboardings waiting on orders that take 30 minutes",
        sizes.waiting
    );
    let vhost = Vhost::new(&args.management).await?;
    let (_sandbox_proc, urls) = spawn_sandbox(0, 30 * 60 * 1000)?;
    let dir = tempfile::tempdir()?;
    let ledger = format!("sqlite://{}/ledger.sqlite", dir.path().display());
    let metrics_port = free_port()?;
    let mut env = worker_env(&vhost.amqp(), &ledger, &urls, args.concurrency);
    env.insert(
        "ONBOARDING__METRICS__LISTEN".into(),
        format!("127.0.0.1:{metrics_port}"),
    );
    env.insert(
        "ONBOARDING__PROVIDERS__COMPUTESTACKS__CALLS__CONCURRENCY".into(),
        args.concurrency.to_string(),
    );
    env.insert(
        "ONBOARDING__PROVIDERS__COMPUTESTACKS__POLLS__POLL_ORDER__INTERVAL_MS".into(),
        "60000".into(),
    );
    env.insert(
        "ONBOARDING__PROVIDERS__COMPUTESTACKS__POLLS__POLL_ORDER__MAX_INTERVAL_MS".into(),
        "300000".into(),
    );
    env.insert(
        "ONBOARDING__PROVIDERS__COMPUTESTACKS__POLLS__POLL_ORDER__DEADLINE_MS".into(),
        "3600000".into(),
    );
    let child = Command::new(std::env::current_exe()?)
        .arg("__worker")
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let worker_proc = ChildGuard(child);
    let admin = Admin::connect(&vhost.amqp()).await?;
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    // Warm-up: as many onboardings as the worker runs at once, left waiting,
    // so pools and caches are at their working size before the baseline.
    let warmup = args.concurrency;
    let warm: Vec<Value> = (0..warmup)
        .map(|i| computestacks(&format!("wait-warm-{i}")))
        .collect();
    publish_all(&admin, &warm).await?;
    wait_gauge(
        &metrics_url,
        "onboarding_onboardings_waiting",
        warmup as f64,
    )
    .await?;
    // Idle provider connections (a task each) close after 30 s; a full run
    // waits that out before each sample so only what waiting costs remains.
    let settle = if args.quick {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(36)
    };
    tokio::time::sleep(settle).await;
    let (rss0, tasks0) = (
        proc_rss_mb(pid),
        gauge(&metrics_url, "onboarding_runtime_alive_tasks").await?,
    );
    let requests: Vec<Value> = (0..sizes.waiting)
        .map(|i| computestacks(&format!("wait-{i}")))
        .collect();
    publish_all(&admin, &requests).await?;
    wait_gauge(
        &metrics_url,
        "onboarding_onboardings_waiting",
        (sizes.waiting + warmup) as f64,
    )
    .await?;
    tokio::time::sleep(settle).await;
    let (rss1, tasks1) = (
        proc_rss_mb(pid),
        gauge(&metrics_url, "onboarding_runtime_alive_tasks").await?,
    );
    let in_delay = delay_depth(&admin).await?;
    eprintln!("      worker process RSS {rss0:.1} → {rss1:.1} MB, alive tasks {tasks0} → {tasks1}, {in_delay} messages in delay queues");
    drop(worker_proc);
    admin.close().await;
    drop(_sandbox_proc);
    vhost.delete().await;
    let (tasks0, tasks1) = (tasks0 as i64, tasks1 as i64);

    // (5) scale-out on a latency-bound load.
    let latency_ms = 100;
    let per_worker = 4;
    eprintln!("[5/6] scale-out: {} onboardings, {latency_ms} ms provider latency, {per_worker} steps in flight per worker", sizes.scaleout);
    let one = scaleout_run(&args, 1, sizes.scaleout, latency_ms, per_worker).await?;
    let two = scaleout_run(&args, 2, sizes.scaleout, latency_ms, per_worker).await?;
    let scaleout_ratio = two / one;
    eprintln!("      one worker {one:.1} steps/s, two {two:.1} steps/s: {scaleout_ratio:.2}×");

    let commits = if args.quick { 200 } else { 2_000 };
    eprintln!(
        "[6/6] ledger durability: {commits} SQLite commits (WAL), synchronous NORMAL vs FULL"
    );
    let normal_ms = sqlite_commit_ms(sqlx::sqlite::SqliteSynchronous::Normal, commits).await?;
    let full_ms = sqlite_commit_ms(sqlx::sqlite::SqliteSynchronous::Full, commits).await?;
    eprintln!(
        "      NORMAL {normal_ms:.3} ms per commit, FULL {full_ms:.3} ms ({:.2}×)",
        full_ms / normal_ms
    );

    let mut add = |key: &str, label: &str, value: f64, target: Option<(&str, bool)>| {
        figures.insert(key.into(), json!(value));
        let (t, met) = target
            .map(|(t, m)| (t.to_string(), if m { "yes" } else { "NO" }.to_string()))
            .unwrap_or(("".into(), "".into()));
        rows.push((label.into(), format!("{value:.2}"), t, met));
    };
    add(
        "ceiling_steps_per_s",
        "broker ceiling (steps/s)",
        ceiling_sps,
        None,
    );
    add(
        "worker_steps_per_s",
        "worker throughput (steps/s)",
        worker_sps,
        None,
    );
    add(
        "worker_onboardings_per_s",
        "worker throughput (onboardings/s)",
        sizes.onboardings as f64 / took.as_secs_f64(),
        None,
    );
    add(
        "ratio",
        "worker / ceiling",
        ratio,
        Some(("≥ 0.5", ratio >= 0.5)),
    );
    add(
        "ceiling_hop_ms",
        "ceiling: one hop, one chain (ms, p50)",
        hop_ms,
        None,
    );
    add(
        "latency_p50_ms",
        "one onboarding at a time: p50 (ms)",
        p50,
        Some(("≤ 1.5 × budget", p50 <= 1.5 * budget)),
    );
    add(
        "latency_p99_ms",
        "one onboarding at a time: p99 (ms)",
        p99,
        None,
    );
    add(
        "latency_budget_ms",
        "budget: hop × (steps + 1) (ms)",
        budget,
        None,
    );
    add(
        "waiting_onboardings",
        "onboardings waiting on jobs",
        sizes.waiting as f64,
        None,
    );
    add(
        "waiting_in_delay_queues",
        "messages in delay queues then",
        in_delay as f64,
        None,
    );
    add(
        "waiting_rss_delta_mb",
        "RSS growth while they wait (MB)",
        rss1 - rss0,
        Some(("< 20", rss1 - rss0 < 20.0)),
    );
    add(
        "waiting_tasks_delta",
        "alive tasks growth while they wait",
        (tasks1 - tasks0) as f64,
        Some(("flat (≤ 5)", tasks1 - tasks0 <= 5)),
    );
    add(
        "scaleout_one_steps_per_s",
        "scale-out: one worker (steps/s)",
        one,
        None,
    );
    add(
        "scaleout_two_steps_per_s",
        "scale-out: two workers (steps/s)",
        two,
        None,
    );
    add(
        "scaleout_ratio",
        "two workers / one",
        scaleout_ratio,
        Some(("≥ 1.8", scaleout_ratio >= 1.8)),
    );

    add(
        "sqlite_commit_normal_ms",
        "SQLite commit, synchronous NORMAL (ms)",
        normal_ms,
        None,
    );
    add(
        "sqlite_commit_full_ms",
        "SQLite commit, synchronous FULL (ms)",
        full_ms,
        None,
    );
    add(
        "sqlite_full_cost",
        "FULL / NORMAL per commit",
        full_ms / normal_ms,
        None,
    );

    println!(
        "{:<42} {:>12} {:>16} {:>5}",
        "FIGURE", "VALUE", "TARGET", "MET"
    );
    for (label, value, target, met) in &rows {
        println!("{label:<42} {value:>12} {target:>16} {met:>5}");
    }
    if args.json {
        println!("{}", Value::Object(figures));
    }
    Ok(())
}

/// Mean time of one single-row commit to a fresh WAL SQLite file with
/// `synchronous` as given: the ledger's cost of durability (it runs FULL, so
/// that a recorded create survives a power cut).
async fn sqlite_commit_ms(
    synchronous: sqlx::sqlite::SqliteSynchronous,
    commits: u32,
) -> anyhow::Result<f64> {
    use sqlx::ConnectOptions;
    let dir = tempfile::tempdir()?;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("durability.sqlite"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .connect()
        .await?;
    sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    for k in 0..commits {
        sqlx::query("INSERT INTO t (k, v) VALUES (?, 'a recorded step')")
            .bind(k)
            .execute(&mut conn)
            .await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / commits as f64)
}

async fn delay_depth(admin: &Admin) -> anyhow::Result<u32> {
    let mut total = 0;
    for ms in onboarding_worker::broker::topology::DELAY_TIERS_MS {
        total += admin
            .queue_depth(&onboarding_worker::broker::topology::delay_queue(*ms))
            .await?;
    }
    Ok(total)
}

/// Steps/s of `workers` worker processes on `n` Sharespine onboardings with `latency_ms` per call.
async fn scaleout_run(
    args: &Args,
    workers: usize,
    n: usize,
    latency_ms: u64,
    per_worker: usize,
) -> anyhow::Result<f64> {
    let vhost = Vhost::new(&args.management).await?;
    let (_sandbox, urls) = spawn_sandbox(latency_ms, 1000)?;
    let dir = tempfile::tempdir()?;
    let ledger = format!("sqlite://{}/ledger.sqlite", dir.path().display());
    let admin = Admin::connect(&vhost.amqp()).await?;
    let mut events = admin.subscribe_events("#").await?;
    let env = worker_env(&vhost.amqp(), &ledger, &urls, per_worker);
    let mut procs = Vec::new();
    for _ in 0..workers {
        let child = Command::new(std::env::current_exe()?)
            .arg("__worker")
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        procs.push(ChildGuard(child));
    }
    publish_all(&admin, &[sharespine(&format!("so{workers}-warmup"))]).await?;
    await_completed(&mut events, 1, Duration::from_secs(60)).await?;
    let requests: Vec<Value> = (0..n)
        .map(|i| sharespine(&format!("so{workers}-{i}")))
        .collect();
    let started = Instant::now();
    publish_all(&admin, &requests).await?;
    await_completed(&mut events, n, Duration::from_secs(600)).await?;
    let sps = (n * SHARESPINE_STEPS) as f64 / started.elapsed().as_secs_f64();
    drop(procs);
    drop(events);
    admin.close().await;
    vhost.delete().await;
    Ok(sps)
}
