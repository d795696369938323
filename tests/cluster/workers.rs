//! The worker processes on the cluster, and watching each one's readiness
//! (and the node it says it is on) while a node goes away.

use std::time::{Duration, Instant};

use onboarding_worker::config::Settings;

use crate::support::processes::{readyz, worker_process_env, KillOnDrop};

/// The worker processes and their metrics ports, SIGKILLed when dropped.
pub struct Workers(pub Vec<(KillOnDrop, u16)>);

/// The environment of a worker process on the cluster (`urls` in this
/// order), the ledger and the sandbox, with short timeouts, retries, polls.
pub fn worker_env(settings: &Settings, ledger_url: &str, urls: &[String]) -> Vec<(String, String)> {
    let mut vars = worker_process_env(settings, ledger_url, 3000);
    vars.push(("ONBOARDING__AMQP__URLS".into(), urls.join(",")));
    for provider in ["SHARESPINE", "COMPUTESTACKS", "MAGENTO_BI"] {
        // Two steps at a time per worker, so the load outlasts the stop.
        vars.push((
            format!("ONBOARDING__PROVIDERS__{provider}__CALLS__CONCURRENCY"),
            "2".into(),
        ));
    }
    vars
}

pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn ms_of(d: Duration) -> u128 {
    d.as_millis()
}

/// Polls every worker's `/readyz` from `since` until each is ready on a node
/// other than `victim_port` (at most 60 s): per worker, when it was first
/// seen not ready on the victim, and when ready on another node.
pub async fn watch_readiness(
    http: reqwest::Client,
    ports: Vec<u16>,
    victim_port: u16,
    since: Instant,
) -> (Vec<Option<Duration>>, Vec<Option<Duration>>) {
    let mut noticed = vec![None; ports.len()];
    let mut back = vec![None; ports.len()];
    let deadline = since + Duration::from_secs(60);
    while back.iter().any(Option::is_none) && Instant::now() < deadline {
        let answers = futures::future::join_all(ports.iter().map(|p| readyz(&http, *p))).await;
        let at = since.elapsed();
        for (i, answer) in answers.iter().enumerate() {
            let on = ready_on(answer);
            if on != Some(victim_port) && noticed[i].is_none() {
                noticed[i] = Some(at);
            }
            if on.is_some_and(|p| p != victim_port) && back[i].is_none() {
                back[i] = Some(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (noticed, back)
}

/// The AMQP port of the node a ready worker says it is on.
pub fn ready_on(answer: &Option<(u16, String)>) -> Option<u16> {
    match answer {
        Some((200, body)) => body
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.trim().trim_end_matches(')').parse().ok()),
        _ => None,
    }
}
