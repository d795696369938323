//! The test's own three-node cluster (`scripts/cluster`: onb1..onb3@localhost,
//! AMQP 5701..5703): started and stopped by the script, each node driven with
//! `rabbitmqctl -n`, one stopped (`stop_app`) or SIGKILLed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;

pub fn node_url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster")
}

/// Runs `scripts/cluster <arg>`; its output (the step timings) on failure.
pub fn cluster_script(arg: &str) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(script())
        .arg(arg)
        // The test's nodes are on the script's default ports.
        .env_remove("ONBOARDING_CLUSTER_BASE_PORT")
        .output()
        .map_err(|e| format!("cannot run scripts/cluster {arg}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "scripts/cluster {arg} failed ({}):\n{text}",
            out.status
        ))
    }
}

/// `rabbitmqctl -n node args`.
pub fn rabbitmqctl(node: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["-n", node];
    all.extend_from_slice(args);
    support::processes::rabbitmqctl(&all)
}

/// Every queue of the default vhost as `node` lists it (exact counts, not sampled).
pub async fn list_queues(node: &'static str) -> Result<Vec<Value>, String> {
    tokio::task::spawn_blocking(move || {
        let out = rabbitmqctl(
            node,
            &[
                "-q",
                "list_queues",
                "name",
                "type",
                "leader",
                "members",
                "messages_ready",
                "messages_unacknowledged",
                "--formatter",
                "json",
            ],
        )?;
        serde_json::from_str::<Vec<Value>>(out.trim())
            .map_err(|e| format!("list_queues output is not JSON ({e}): {out}"))
    })
    .await
    .unwrap()
}

/// How the leader's node is taken away: `rabbitmqctl stop_app` (default: the
/// broker closes its connections and hands leadership over), or
/// `CLUSTER_STOP=kill`: its Erlang VM SIGKILLed (connections reset, the other
/// nodes see it vanish), then started again by `scripts/cluster start`.
#[derive(Clone, Copy, Debug)]
pub enum StopMode {
    StopApp,
    Kill,
}

pub fn stop_mode() -> StopMode {
    match std::env::var("CLUSTER_STOP").as_deref() {
        Ok("kill") => StopMode::Kill,
        Ok("stop_app") | Err(_) => StopMode::StopApp,
        Ok(other) => panic!("CLUSTER_STOP is `stop_app` or `kill`, not {other:?}"),
    }
}

/// SIGKILLs `node`'s Erlang VM (its pid file in the script's state directory).
pub fn kill_node(node: &str) -> Result<(), String> {
    let dir = std::env::var("ONBOARDING_CLUSTER_DIR")
        .unwrap_or_else(|_| "/tmp/onboarding-cluster".into());
    let short = node.split('@').next().unwrap_or(node);
    let pid_file = Path::new(&dir).join(short).join("pid");
    let pid =
        std::fs::read_to_string(&pid_file).map_err(|e| format!("{}: {e}", pid_file.display()))?;
    let pid = pid.trim();
    let status = Command::new("kill")
        .args(["-9", pid])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("kill -9 {pid} failed ({status})"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return Err(format!("{node} (pid {pid}) still there 10 s after SIGKILL"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Stops the cluster and removes its state when dropped, whatever happened.
pub struct ClusterGuard;

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        if let Err(e) = cluster_script("stop") {
            eprintln!("could not stop the test cluster: {e}; run `scripts/cluster stop`");
        }
    }
}
