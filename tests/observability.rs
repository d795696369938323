//! Operating the worker, proven with the operators' own tools: every query of
//! the Grafana dashboard against a real Prometheus scraping a real worker,
//! `promtool check metrics` on `/metrics`, and the docker-compose stack's file.
//!
//! Needs `prometheus`, `promtool` and `docker-compose` on PATH (Debian's
//! `prometheus` and `docker-compose` packages): `bash scripts/services.sh`
//! installs them (and starts RabbitMQ, which these tests use as well).

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onboarding_worker::sandbox::faults::{Fault, FaultRule};
use serde_json::Value;

use crate::support::env::TestEnv;
use crate::support::processes::{free_port, KillOnDrop};
use crate::support::requests::sharespine_request;

const DASHBOARD: &str = "deploy/grafana/dashboards/onboarding-worker.json";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The full path of `name` on PATH, or a failure that says how to install it.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: run `bash scripts/services.sh` \
                 (installs Debian's prometheus (prometheus, promtool) and docker-compose packages)"
            )
        })
}

fn rule(method: &str, path_contains: &str, fault: Fault, times: u32) -> FaultRule {
    FaultRule {
        method: Some(method.into()),
        path_contains: path_contains.into(),
        fault,
        times,
    }
}

// ---- a real Prometheus ------------------------------------------------------

/// A `prometheus` process scraping one target every second, with its storage
/// in a temporary directory; killed when dropped.
struct Prometheus {
    // Dropped first: the process ends before its directory is removed.
    _process: KillOnDrop,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Prometheus {
        let binary = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: onboarding-worker\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let log_path = dir.path().join("prometheus.log");
        // A free port can be taken by someone else before Prometheus binds it: try a few.
        for _ in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut process = KillOnDrop(
                Command::new(&binary)
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.path().join("data").display()
                    ))
                    .arg(format!("--web.listen-address={addr}"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("prometheus starts"),
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(r) = http.get(format!("http://{addr}/-/ready")).send().await {
                    if r.status().is_success() {
                        return Prometheus {
                            _process: process,
                            addr,
                            dir,
                            http,
                        };
                    }
                }
                if process.0.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!(
            "prometheus did not become ready; its log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through the HTTP API, as Grafana sends it: the whole response.
    async fn query(&self, expr: &str) -> Value {
        let r = self
            .http
            .get(self.url("/api/v1/query"))
            .query(&[("query", expr)])
            .send()
            .await
            .expect("prometheus answers");
        r.json().await.expect("a JSON answer")
    }

    /// Waits until Prometheus has scraped the worker successfully.
    async fn wait_target_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.query(r#"up{job="onboarding-worker"}"#).await;
            if value_of_first(&v) == Some(1.0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus never scraped the worker: {v}\nits log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn value_of_first(answer: &Value) -> Option<f64> {
    samples(answer).first().map(|(_, v)| *v)
}

/// `(labels, value)` of every sample of a vector or scalar answer.
fn samples(answer: &Value) -> Vec<(String, f64)> {
    let data = &answer["data"];
    let value = |v: &Value| -> f64 {
        v[1].as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN)
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        let labels = r["metric"]
                            .as_object()
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default();
                        (format!("{{{labels}}}"), value(&r["value"]))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        Some("scalar") => vec![("scalar".into(), value(&data["result"]))],
        _ => Vec::new(),
    }
}

/// Every (panel title, refId, expr) of the dashboard, rows included.
fn dashboard_queries() -> Vec<(String, String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("(untitled)").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    let ref_id = t["refId"].as_str().unwrap_or("?").to_string();
                    out.push((title.clone(), ref_id, expr.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let text = std::fs::read_to_string(repo_root().join(DASHBOARD)).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Whether an answer is data a panel can draw: success, at least one sample,
/// and at least one that is a number (not NaN, as `histogram_quantile` of no
/// observations is).
fn has_data(answer: &Value) -> bool {
    answer["status"] == "success" && samples(answer).iter().any(|(_, v)| v.is_finite())
}

/// Publishes a run of onboardings that gives every panel something to show:
/// completed ones for each provider, a retry (503 once), a failure that is
/// dead-lettered (400), a duplicate copy of a running request, and ComputeStacks
/// and Magento BI onboardings (polls, token renewals). Returns the request ids
/// whose final event is awaited.
async fn drive_wave(env: &TestEnv, wave: &str) -> Vec<String> {
    let knobs = &env.sandbox.sharespine.knobs;
    // Only the connection call of these tenants' onboardings carries their codeName.
    knobs.inject(rule(
        "POST",
        &format!("prefixflaky{wave}"),
        Fault::Status { status: 503 },
        1,
    ));
    knobs.inject(rule(
        "POST",
        &format!("prefixdoomed{wave}"),
        Fault::Status { status: 400 },
        1,
    ));
    let mut requests = vec![
        sharespine_request(
            &format!("obs-{wave}-new"),
            &format!("new{wave}"),
            &["anna", "bob"],
            Some("anna"),
        ),
        sharespine_request(
            &format!("obs-{wave}-flaky"),
            &format!("flaky{wave}"),
            &[],
            None,
        ),
        sharespine_request(
            &format!("obs-{wave}-doomed"),
            &format!("doomed{wave}"),
            &[],
            None,
        ),
    ];
    requests.extend(onboarding_worker::demo::sample_requests(&format!(
        "obs{wave}"
    )));
    let twice = sharespine_request(
        &format!("obs-{wave}-twice"),
        &format!("twice{wave}"),
        &["anna"],
        None,
    );
    // The same request twice at once: the second copy finds the first running.
    env.publish(&twice).await;
    env.publish(&twice).await;
    for r in &requests {
        env.publish(r).await;
    }
    requests.push(twice);
    requests
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect()
}

async fn await_finals(env: &TestEnv, ids: &[String]) {
    for id in ids {
        let e = env.final_event(id, Duration::from_secs(40)).await;
        let want = if id.ends_with("-doomed") {
            "failed"
        } else {
            "completed"
        };
        assert_eq!(e["event"], want, "{id}: {e:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_query_returns_data_from_a_real_prometheus() {
    let queries = dashboard_queries();
    assert!(!queries.is_empty(), "the dashboard has queries");
    let env = TestEnv::start().await;
    // A little provider latency: the duplicate surely finds its first copy running.
    env.sandbox
        .sharespine
        .knobs
        .set_latency(Duration::from_millis(50));
    let prom = Prometheus::start(env.worker().metrics_addr).await;
    prom.wait_target_up().await;

    // Two waves a few scrapes apart, so counters move between samples.
    let first = drive_wave(&env, "a").await;
    await_finals(&env, &first).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = drive_wave(&env, "b").await;
    await_finals(&env, &second).await;
    assert_eq!(env.dead().await.len(), 2, "one dead letter per wave");

    // Keep scraping until every query has data (a few 1 s scrapes after the
    // last change), then assert on one final round.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut all = true;
        for (_, _, expr) in &queries {
            all &= has_data(&prom.query(expr).await);
        }
        if all || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Two more scrapes, so the figures below include the last samples.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut missing = Vec::new();
    for (title, ref_id, expr) in &queries {
        let answer = prom.query(expr).await;
        let got = samples(&answer);
        println!(
            "panel {title:?} [{ref_id}]: status {}, {} series",
            answer["status"],
            got.len()
        );
        for (labels, value) in &got {
            println!("    {labels} = {value}");
        }
        assert_eq!(
            answer["status"], "success",
            "panel {title:?} [{ref_id}] `{expr}`: {answer}"
        );
        if !has_data(&answer) {
            missing.push(format!("panel {title:?} [{ref_id}] `{expr}`: {answer}"));
        }
    }
    assert!(
        missing.is_empty(),
        "panels without data:\n{}",
        missing.join("\n")
    );
    drop(prom);
    env.shutdown().await;
}

// ---- promtool check metrics -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_passes_on_the_metrics_endpoint() {
    let promtool = tool("promtool");
    let env = TestEnv::start().await;
    env.sandbox.sharespine.knobs.inject(rule(
        "POST",
        "prefixflakylint",
        Fault::Status { status: 503 },
        1,
    ));
    env.sandbox.sharespine.knobs.inject(rule(
        "POST",
        "prefixdoomedlint",
        Fault::Status { status: 400 },
        1,
    ));
    let mut ids = Vec::new();
    for (id, reference, users, login) in [
        ("lint-new", "newlint", &["anna"][..], Some("anna")),
        ("lint-flaky", "flakylint", &[][..], None),
        ("lint-doomed", "doomedlint", &[][..], None),
    ] {
        env.publish(&sharespine_request(id, reference, users, login))
            .await;
        ids.push(id.to_string());
    }
    let cs = onboarding_worker::demo::sample_requests("lint")
        .into_iter()
        .find(|r| r["provider"] == "computestacks")
        .unwrap();
    env.publish(&cs).await;
    ids.push(cs["request_id"].as_str().unwrap().to_string());
    for id in &ids {
        env.final_event(id, Duration::from_secs(30)).await;
    }

    let text = env.metrics_text().await;
    assert!(
        text.contains("onboarding_step_duration_seconds_bucket{"),
        "{text}"
    );
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "promtool check metrics ({} lines of /metrics): {}\n{}",
        text.lines().count(),
        out.status,
        if report.trim().is_empty() {
            "(no problems reported)"
        } else {
            report.trim()
        }
    );
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{report}",
        out.status
    );
    env.shutdown().await;
}

#[test]
fn the_compose_stacks_prometheus_config_passes_promtool_check_config() {
    let out = Command::new(tool("promtool"))
        .current_dir(repo_root())
        .args(["check", "config", "deploy/prometheus/prometheus.yml"])
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("promtool check config: {}\n{}", out.status, report.trim());
    assert!(out.status.success(), "{report}");
}

// ---- docker-compose ---------------------------------------------------------

/// Host paths of the bind mounts in a `docker-compose config` YAML output (which
/// resolves them to absolute paths) and its build contexts.
fn scan_resolved_yaml(yaml: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let unquote = |s: &str| s.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
    let mut mounts = Vec::new();
    let mut contexts = Vec::new();
    let mut in_volumes: Option<usize> = None;
    for line in yaml.lines() {
        let t = line.trim_start();
        if let Some(key_indent) = in_volumes {
            let item = t.starts_with("- ") && indent(line) >= key_indent;
            if item || indent(line) > key_indent {
                let entry = t.strip_prefix("- ").unwrap_or(t);
                let host = if let Some(src) = entry.strip_prefix("source:") {
                    Some(unquote(src))
                } else if entry.contains(':') && !entry.trim_end().ends_with(':') {
                    let e = unquote(entry);
                    e.split(':').next().map(str::to_string)
                } else {
                    None
                };
                if let Some(h) = host.filter(|h| h.starts_with('/') || h.starts_with('.')) {
                    mounts.push(PathBuf::from(h));
                }
                continue;
            }
            in_volumes = None;
        }
        if t == "volumes:" {
            in_volumes = Some(indent(line));
        } else if let Some(ctx) = t.strip_prefix("context:") {
            contexts.push(PathBuf::from(unquote(ctx)));
        }
    }
    (mounts, contexts)
}

/// The same from `docker-compose config --format json` (newer docker-compose).
fn scan_resolved_json(config: &Value) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut mounts = Vec::new();
    let mut contexts = Vec::new();
    for svc in config["services"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let host = match v {
                Value::String(s) => s.split(':').next().unwrap_or("").to_string(),
                v if v["type"] == "bind" => v["source"].as_str().unwrap_or("").to_string(),
                _ => String::new(),
            };
            if host.starts_with('/') || host.starts_with('.') {
                mounts.push(PathBuf::from(host));
            }
        }
        match &svc["build"] {
            Value::String(s) => contexts.push(PathBuf::from(s)),
            b => {
                if let Some(c) = b["context"].as_str() {
                    contexts.push(PathBuf::from(c));
                }
            }
        }
    }
    (mounts, contexts)
}

/// `volumes:` entries of the compose file itself that start with `./`.
fn relative_mounts_in_file(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- "))
        .map(|e| e.trim().trim_matches(|c| c == '"' || c == '\''))
        .filter(|e| e.starts_with("./") && e.contains(':'))
        .map(|e| e.split(':').next().unwrap().to_string())
        .collect()
}

/// The sources of the Dockerfile's `COPY` lines that copy from the build context.
fn dockerfile_copy_sources(dockerfile: &str) -> Vec<String> {
    let mut sources = Vec::new();
    for line in dockerfile.lines() {
        let Some(rest) = line.trim_start().strip_prefix("COPY ") else {
            continue;
        };
        let args: Vec<String> = if rest.trim_start().starts_with('[') {
            serde_json::from_str(rest.trim()).expect("COPY [\"src\", ..., \"dest\"]")
        } else {
            rest.split_whitespace().map(str::to_string).collect()
        };
        if args.iter().any(|a| a.starts_with("--from")) {
            continue; // from another stage, not from the context
        }
        let args: Vec<String> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
        assert!(
            args.len() >= 2,
            "COPY needs a source and a destination: {line}"
        );
        sources.extend(args[..args.len() - 1].iter().cloned());
    }
    sources
}

#[test]
fn docker_compose_file_is_valid_and_every_mounted_file_exists() {
    let compose = tool("docker-compose");
    let root = repo_root();
    let run = |args: &[&str]| {
        Command::new(&compose)
            .current_dir(root)
            .args(["-f", "docker-compose.yml"])
            .args(args)
            .output()
            .expect("docker-compose runs")
    };
    let check = run(&["config", "-q"]);
    println!(
        "docker-compose config -q: {}\n{}",
        check.status,
        String::from_utf8_lossy(&check.stderr).trim()
    );
    assert!(
        check.status.success(),
        "docker-compose -f docker-compose.yml config -q: {}\n{}",
        check.status,
        String::from_utf8_lossy(&check.stderr)
    );

    // The configuration as docker-compose resolved it: JSON where supported.
    let json = run(&["config", "--format", "json"]);
    let (mounts, contexts) = match serde_json::from_slice::<Value>(&json.stdout) {
        Ok(v) if json.status.success() => scan_resolved_json(&v),
        _ => {
            let yaml = run(&["config"]);
            assert!(yaml.status.success());
            scan_resolved_yaml(&String::from_utf8_lossy(&yaml.stdout))
        }
    };
    let file = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let relative = relative_mounts_in_file(&file);
    println!("bind mounts: {mounts:?}\nbuild contexts: {contexts:?}\n./ entries: {relative:?}");
    assert!(
        !relative.is_empty(),
        "the stack mounts the Prometheus config and Grafana's provisioning"
    );
    assert_eq!(
        mounts.len(),
        relative.len(),
        "docker-compose resolved every ./ mount"
    );
    for m in &mounts {
        let host = if m.is_absolute() {
            m.clone()
        } else {
            root.join(m)
        };
        assert!(host.exists(), "mounted host path {m:?} does not exist");
    }
    for r in &relative {
        assert!(
            root.join(r).exists(),
            "mounted host path {r} does not exist"
        );
    }
    assert!(
        !contexts.is_empty(),
        "the worker and sandbox are built here"
    );
    for c in &contexts {
        let ctx = if c.is_absolute() {
            c.clone()
        } else {
            root.join(c)
        };
        assert!(
            ctx.join("Dockerfile").is_file(),
            "build context {c:?} has a Dockerfile"
        );
    }

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("the Dockerfile");
    let sources = dockerfile_copy_sources(&dockerfile);
    println!("Dockerfile COPY sources: {sources:?}");
    assert!(!sources.is_empty(), "the Dockerfile copies the sources in");
    let unique: BTreeSet<&String> = sources.iter().collect();
    for s in unique {
        assert!(
            root.join(s).exists(),
            "the Dockerfile copies {s}, which does not exist"
        );
    }
}
