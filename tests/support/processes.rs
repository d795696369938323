//! Processes around a test: the built binary as a worker process (its
//! environment, spawning it, killing it whatever happens), free ports, a
//! worker's `/readyz`, and `rabbitmqctl`.

use std::process::{Child, Command};
use std::time::Duration;

use onboarding_worker::config::Settings;

use super::env::TestEnv;

/// A port nothing listens on at the moment (someone may take it before it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether something accepts connections on 127.0.0.1:`port` (within `timeout`).
pub fn listening(port: u16, timeout: Duration) -> bool {
    std::net::TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().unwrap(), timeout)
        .is_ok()
}

/// A child process killed (and reaped) when dropped, also when an assert fails.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(status, body)` of the `/readyz` of the worker whose metrics listener is
/// on `port`; `None` when it does not answer.
pub async fn readyz(http: &reqwest::Client, port: u16) -> Option<(u16, String)> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// Runs `rabbitmqctl args`: its standard output, or why it failed.
pub fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `rabbitmqctl {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`rabbitmqctl {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The environment of a worker process on `settings`' sandbox and
/// `ledger_url`, with the tests' timing: calls of `call_timeout_ms`, fast
/// retries and reconnects, polls every 200 to 500 ms (deadline 60 s), a 0.5 s
/// lease margin. No broker address: the caller adds `ONBOARDING__AMQP__URL`
/// or `__URLS`.
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
    // Every poll step the configuration knows, per provider.
    for (provider, polls) in [
        ("COMPUTESTACKS", &p.computestacks.polls),
        ("MAGENTO_BI", &p.magento_bi.polls),
    ] {
        for step in polls.keys() {
            for (key, value) in [
                ("INTERVAL_MS", "200"),
                ("MAX_INTERVAL_MS", "500"),
                ("DEADLINE_MS", "60000"),
            ] {
                vars.push((
                    format!(
                        "ONBOARDING__PROVIDERS__{provider}__POLLS__{}__{key}",
                        step.to_uppercase()
                    ),
                    value.into(),
                ));
            }
        }
    }
    vars
}

/// The built binary as a worker process on `env`'s vhost, sandbox and ledger
/// ([`worker_process_env`], 1.5 s calls), then `extra` environment variables
/// on top. Its log lines go to `log`, or nowhere.
pub fn spawn_worker_process(
    env: &TestEnv,
    extra: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> Child {
    let s = &env.settings;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onboarding-worker"));
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
