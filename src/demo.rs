//! `onboarding-worker demo`: the sandbox and a worker in one process, one
//! sample onboarding per provider (and a returning Sharespine customer),
//! progress per onboarding as its events arrive, then a summary table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

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

struct Progress {
    provider: String,
    total: usize,
    done: usize,
    step: String,
    state: String,
    started: Instant,
    took: Option<Duration>,
    detail: String,
}

fn bar(done: usize, total: usize) -> String {
    let width = 20;
    let filled = (done * width).checked_div(total).unwrap_or(0);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

pub async fn run(mut settings: Settings, timeout: Duration) -> anyhow::Result<i32> {
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
    settings.metrics.listen = "127.0.0.1:0".into();
    let admin = Admin::connect_any(&settings.amqp.nodes().iter().map(|u| u.expose()).collect::<Vec<_>>(), settings.amqp.tls_ca_path())
        .await
        .map_err(|e| {
        anyhow::anyhow!(
            "cannot reach RabbitMQ at the configured amqp.url ({e}). Start it (Debian: apt-get install -y rabbitmq-server && rabbitmq-server -detached) or set ONBOARDING__AMQP__URL"
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

    let tag = format!("{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let providers = crate::providers::build_all(&settings.providers, &worker.metrics);
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    let mut requests = sample_requests(&tag);
    let returning = json!({
        "request_id": format!("demo-{tag}-sharespine-login"),
        "provider": "sharespine",
        "operation": "login_url",
        "input": {"code_name": "(after the onboarding)", "login": "anna", "path": "/"}
    });
    for r in &requests {
        let id = r["request_id"].as_str().unwrap().to_string();
        let provider = ProviderId::parse(r["provider"].as_str().unwrap()).unwrap();
        let total = providers[&provider]
            .plan(Operation::Onboard, &r["input"])
            .map(|p| p.len())
            .unwrap_or(0);
        progress.insert(
            id,
            Progress {
                provider: provider.as_str().into(),
                total,
                done: 0,
                step: "queued".into(),
                state: "published".into(),
                started: Instant::now(),
                took: None,
                detail: String::new(),
            },
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
            println!("gave up waiting after {} s", timeout.as_secs());
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
        match e["event"].as_str().unwrap_or("") {
            "accepted" => p.state = "accepted".into(),
            "step_completed" => {
                p.done += 1;
                p.step = e["step"].as_str().unwrap_or("?").to_string();
                p.state = "running".into();
            }
            "completed" => {
                p.done = p.total;
                p.state = "completed".into();
                p.took = Some(p.started.elapsed());
                p.detail = e["outputs"].to_string();
            }
            "failed" => {
                p.state = "failed".into();
                p.took = Some(p.started.elapsed());
                p.detail = e["error"]["message"].as_str().unwrap_or("").to_string();
            }
            _ => {}
        }
        println!(
            "{:<14} {} {}/{} {:<22} {}",
            p.provider,
            bar(p.done, p.total),
            p.done,
            p.total,
            p.step,
            p.state
        );
        // The returning customer needs the tenant's code name first.
        if !returning_sent && id.ends_with("-sharespine") && e["event"] == "completed" {
            let mut r = returning.clone();
            r["input"]["code_name"] = e["outputs"]["code_name"].clone();
            let rid = r["request_id"].as_str().unwrap().to_string();
            progress.insert(
                rid,
                Progress {
                    provider: "sharespine".into(),
                    total: 1,
                    done: 0,
                    step: "login_url".into(),
                    state: "published".into(),
                    started: Instant::now(),
                    took: None,
                    detail: String::new(),
                },
            );
            admin
                .publish_request("sharespine", r.to_string().as_bytes())
                .await?;
            requests.push(r);
            returning_sent = true;
        }
    }
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
    shutdown.cancel();
    worker.stopped().await;
    sandbox.shutdown().await;
    admin.close().await;
    Ok(if ok { 0 } else { 3 })
}
