//! `onboarding-worker demo`: the sandbox and a worker in one process, one
//! sample onboarding per provider (and a returning Sharespine customer), a
//! live progress bar per onboarding as its events arrive, then a summary table.
//!
//! Owns its logging: the worker's log lines go to a file named on the first
//! line, or with `-v` to stderr above the bars (never through them).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::MakeWriter;

use crate::broker::admin::Admin;
use crate::config::Settings;
use crate::domain::{Operation, ProviderId};
use crate::sandbox::{Listens, Sandbox, SandboxOptions};
use crate::worker::Worker;

/// Sample requests the demo (and tests) publish; `tag` keeps ids and e-mails unique per run.
pub fn sample_requests(tag: &str) -> Vec<Value> {
    vec![
        json!({
            "request_id": format!("demo-{tag}-sharespine"),
            "provider": "sharespine",
            "operation": "onboard",
            "input": {
                "tenant": {"customerReference": format!("demo{tag}"), "active": true, "fullName": "Demo Store AB",
                           "email": "owner@demo.example", "defaultLanguage": "swe", "languages": ["swe"], "options": []},
                "users": [{"login": "anna", "fullName": "Anna Andersson", "email": "anna@demo.example", "permissions": [], "defaultLanguage": "swe"}],
                "connection": {"active": true, "name": "API", "type": "api", "configuration": {}},
                "login": {"login": "anna", "path": "/"}
            }
        }),
        json!({
            "request_id": format!("demo-{tag}-computestacks"),
            "provider": "computestacks",
            "input": {
                "user": {"fname": "Cora", "lname": "Stack", "email": format!("cora+{tag}@demo.example"), "password": "demo-Passw0rd!",
                         "password_confirmation": "demo-Passw0rd!", "skip_email_confirm": true, "external_id": format!("cust-{tag}")},
                "api_credential": {"name": "billing"},
                "order": {"project_name": format!("demo project {tag}"), "location_id": 1,
                          "containers": [{"image_id": 4, "resources": {"product": "small"}, "params": [], "domains": []}]}
            }
        }),
        json!({
            "request_id": format!("demo-{tag}-magento"),
            "provider": "magento_bi",
            "input": {
                "signup": {"tier": "T100", "company": "Coco Co.", "first_name": "Cam", "last_name": "Sim", "email": format!("csm+{tag}@demo.example"),
                           "role": "csm", "magento": {"customer_id": "MAG0000001", "subscription_id": "1000"}},
                "invite": {"email": format!("owner+{tag}@demo.example"), "first_name": "Olive", "last_name": "Owner", "force_create": 1,
                           "client_rights": {"admin": 1, "billing": 1, "readonly": 1, "technical": 0}},
                "client": {"name": "Coco Co.", "properties": {"timezone": "America/New_York", "default_currency": "USD"}},
                "connection": {"name": "store", "display_name": "Store DB", "type": "mysql",
                               "credentials": {"password": "demo-db-password", "encryption_password": null},
                               "properties": {"host": "db.demo.example", "port": "3306", "dbName": "magento_store", "username": "magento"}},
                "dashboards": {"package": "magento1_rjql1", "database": "magento_store", "table_prefix": ""}
            }
        }),
    ]
}

/// One onboarding's bar and what the summary table reports of it.
struct Progress {
    provider: String,
    bar: ProgressBar,
    state: &'static str,
    started: Instant,
    took: Option<Duration>,
    detail: String,
}

impl Progress {
    fn new(bars: &MultiProgress, provider: &str, total: usize, first: &str) -> Progress {
        let style = ProgressStyle::with_template(
            "{prefix:<14} [{bar:20}] {pos}/{len} {elapsed:>4} {wide_msg}",
        )
        .expect("a valid template")
        .progress_chars("#>-");
        let bar = bars.add(ProgressBar::new(total as u64).with_style(style));
        bar.set_prefix(provider.to_string());
        bar.set_message(format!("{first}: published"));
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress {
            provider: provider.into(),
            bar,
            state: "published",
            started: Instant::now(),
            took: None,
            detail: String::new(),
        }
    }

    /// Moves the bar on for one event; `false` when the event is not one of ours.
    fn apply(&mut self, event: &Value) -> bool {
        match event["event"].as_str().unwrap_or("") {
            "accepted" => {
                self.state = "accepted";
                self.bar.set_message("accepted");
            }
            "step_completed" => {
                self.state = "running";
                self.bar.inc(1);
                let step = event["step"].as_str().unwrap_or("?");
                self.bar.set_message(format!("{step} done"));
            }
            "completed" => {
                self.state = "completed";
                self.took = Some(self.started.elapsed());
                self.detail = event["outputs"].to_string();
                self.bar.set_position(self.bar.length().unwrap_or(0));
                self.bar.finish_with_message("completed");
            }
            "failed" => {
                self.state = "failed";
                self.took = Some(self.started.elapsed());
                self.detail = (event["error"]["message"].as_str())
                    .unwrap_or("")
                    .to_string();
                self.bar
                    .abandon_with_message(format!("failed: {}", self.detail));
            }
            _ => return false,
        }
        true
    }

    /// The same as the bar, as one plain line (when the bars cannot be drawn:
    /// stderr is not a terminal).
    fn line(&self) -> String {
        let (done, total) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let width = 20;
        let filled = (done * width).checked_div(total).unwrap_or(0) as usize;
        format!(
            "{:<14} [{}{}] {done}/{total} {}",
            self.provider,
            "#".repeat(filled),
            "-".repeat(width as usize - filled),
            self.bar.message()
        )
    }
}

/// Log lines written to stderr with the bars lifted out of the way, so a
/// line never lands inside a bar.
#[derive(Clone)]
struct AboveBars(MultiProgress);

impl Write for AboveBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // tracing writes one whole event per call: one suspend per line.
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for AboveBars {
    type Writer = AboveBars;
    fn make_writer(&'a self) -> AboveBars {
        self.clone()
    }
}

/// Sends the logs to a new file in the temporary directory, or with
/// `verbose` to stderr above the bars; says which on the first line.
fn set_up_logs(settings: &Settings, bars: &MultiProgress, verbose: bool) -> anyhow::Result<()> {
    let format = settings.worker.log_format;
    if verbose {
        crate::telemetry::init(format, AboveBars(bars.clone()));
        println!("logs: stderr");
        return Ok(());
    }
    let path: PathBuf = std::env::temp_dir().join(format!(
        "onboarding-demo-{}-{}.log",
        time::OffsetDateTime::now_utc().unix_timestamp(),
        std::process::id()
    ));
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating the demo's log file {}", path.display()))?;
    crate::telemetry::init_file(format, file);
    println!("logs: {} (demo -v: on stderr instead)", path.display());
    Ok(())
}

/// Runs the demo; the exit code is 0 when every onboarding completed, else 3.
/// Sets up logging itself (see the module doc): call it with none installed.
pub async fn run(mut settings: Settings, timeout: Duration, verbose: bool) -> anyhow::Result<i32> {
    let bars = MultiProgress::new();
    set_up_logs(&settings, &bars, verbose)?;
    // Quick jobs and polls so the demo finishes in seconds.
    settings.sandbox.job_duration_ms = settings.sandbox.job_duration_ms.min(1500);
    for polls in [
        &mut settings.providers.magento_bi.polls,
        &mut settings.providers.computestacks.polls,
    ] {
        for p in polls.values_mut() {
            p.interval_ms = p.interval_ms.min(500);
            p.max_interval_ms = p.max_interval_ms.min(1000);
        }
    }
    settings.metrics.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let nodes: Vec<&str> = settings.amqp.nodes().iter().map(|u| u.expose()).collect();
    let admin = Admin::connect_any(&nodes, settings.amqp.tls_ca_path())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach RabbitMQ at the configured amqp.url ({e}). Start it (Debian: \
apt-get install -y rabbitmq-server && rabbitmq-server -detached) or set ONBOARDING__AMQP__URL"
            )
        })?;
    let sandbox = Sandbox::start(
        SandboxOptions::from_settings(&settings.sandbox, &settings.providers),
        Listens::ephemeral(),
    )
    .await?;
    sandbox.configure(&mut settings.providers);
    println!(
        "sandbox: sharespine {} · computestacks {} · magento_bi {} + {}",
        sandbox.sharespine_url(),
        sandbox.computestacks_url(),
        sandbox.magento_api_url(),
        sandbox.magento_dashboard_url()
    );
    let mut events = admin.subscribe_events("#").await?;
    let shutdown = CancellationToken::new();
    let worker = Worker::start(&settings, shutdown.clone()).await?;
    println!("worker: metrics on http://{}/metrics", worker.metrics_addr);
    println!();

    let tag = format!("{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let providers = crate::providers::build_all(&settings.providers, &worker.metrics);
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    let returning = json!({
        "request_id": format!("demo-{tag}-sharespine-login"),
        "provider": "sharespine",
        "operation": "login_url",
        "input": {"code_name": "(after the onboarding)", "login": "anna", "path": "/"}
    });
    for r in sample_requests(&tag) {
        let id = r["request_id"].as_str().unwrap().to_string();
        let provider = ProviderId::parse(r["provider"].as_str().unwrap()).unwrap();
        let total = providers[&provider]
            .plan(Operation::Onboard, &r["input"])
            .map(|p| p.len())
            .unwrap_or(0);
        progress.insert(
            id,
            Progress::new(&bars, provider.as_str(), total, "onboard"),
        );
        admin
            .publish_request(provider.as_str(), r.to_string().as_bytes())
            .await?;
    }
    let deadline = Instant::now() + timeout;
    let mut returning_sent = false;
    while progress.values().any(|p| p.took.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((_, body))) = tokio::time::timeout(left, events.next()).await else {
            for p in progress.values().filter(|p| p.took.is_none()) {
                p.bar
                    .abandon_with_message(format!("{}: gave up waiting", p.state));
            }
            bars.suspend(|| println!("gave up waiting after {} s", timeout.as_secs()));
            break;
        };
        let Ok(e) = serde_json::from_slice::<Value>(&body) else {
            continue;
        };
        let Some(id) = e["request_id"].as_str() else {
            continue;
        };
        let Some(p) = progress.get_mut(id) else {
            continue;
        };
        if p.apply(&e) && bars.is_hidden() {
            println!("{}", p.line());
        }
        // The returning customer needs the tenant's code name first.
        if !returning_sent && id.ends_with("-sharespine") && e["event"] == "completed" {
            let mut r = returning.clone();
            r["input"]["code_name"] = e["outputs"]["code_name"].clone();
            let rid = r["request_id"].as_str().unwrap().to_string();
            progress.insert(rid, Progress::new(&bars, "sharespine", 1, "login_url"));
            admin
                .publish_request("sharespine", r.to_string().as_bytes())
                .await?;
            returning_sent = true;
        }
    }
    // Stopped before the table, so that no log line (with -v) comes after it.
    shutdown.cancel();
    worker.stopped().await;
    sandbox.shutdown().await;
    admin.close().await;

    println!();
    println!(
        "{:<40} {:<14} {:<10} {:>8}  OUTPUTS / ERROR",
        "REQUEST_ID", "PROVIDER", "RESULT", "SECONDS"
    );
    let mut ok = true;
    for (id, p) in &progress {
        ok &= p.state == "completed";
        let secs = p
            .took
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        println!(
            "{id:<40} {:<14} {:<10} {secs:>8}  {}",
            p.provider, p.state, p.detail
        );
    }
    Ok(if ok { 0 } else { 3 })
}
