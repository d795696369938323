//! Chaos: three worker processes (the built binary) on one ledger, 40 mixed
//! onboardings across the three providers, and five times one worker
//! SIGKILLed at a random moment and replaced. Once on a SQLite file, once on
//! a PostgreSQL database of its own.
//!
//! Asserted (CONTRACT §6, README "Delivery guarantees"):
//! - every request ends in exactly one final event kind: `completed`, or
//!   `failed` where the test meant it (copies of the same final event are
//!   at-least-once and allowed);
//! - the sandbox holds exactly one create per request and step (derived from
//!   its own state), except repeats the workers counted in
//!   `onboarding_create_repeats_total` (scraped from every live worker's
//!   `/metrics`; a repeat no worker counted is a failure);
//! - `onboarding.dead` holds the intended failures only;
//! - nothing is left ready or unacknowledged in the requests, step and delay
//!   queues.
//!
//! At each kill moment every worker's `/metrics` is read and the victim is
//! one with a step in flight if there is one (so kills land mid-step, where
//! the README's "remaining window" is), else the seed's pick.
//!
//! The request mix, the job duration and the kill moments come from a seed:
//! fixed by default, `CHAOS_SEED=<u64>` picks another. The seed and the run's
//! figures are printed (`cargo test --test chaos -- --nocapture`). Worker
//! logs are kept under `target/tmp/chaos/` when a run fails (or with
//! `CHAOS_KEEP_LOGS=1`).

#[path = "it/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "it/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use helpers::*;

/// The default seed; `CHAOS_SEED` overrides it.
const DEFAULT_SEED: u64 = 20_250_611;
const REQUESTS: usize = 40;
const WORKERS: usize = 3;
const KILLS: usize = 5;
/// Requests are published over about this long (random gaps).
const PUBLISH_SPREAD_MS: u64 = 10_000;
/// Kills happen at random moments in this window after the start.
const KILL_WINDOW_MS: (u64, u64) = (1_000, 16_000);
/// All final events must have arrived by then.
const FINALS_DEADLINE: Duration = Duration::from_secs(90);
const CS_PASSWORD: &str = "chaos-Passw0rd-cs";

/// The two chaos runs share the machine's two cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_worker_processes_on_one_sqlite_ledger_survive_five_kills() {
    let _one = ONE_AT_A_TIME.lock().await;
    run_chaos(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_worker_processes_on_one_postgres_ledger_survive_five_kills() {
    let _one = ONE_AT_A_TIME.lock().await;
    run_chaos(Backend::Postgres).await;
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CHAOS_SEED must be an unsigned integer, not {s:?}")),
        Err(_) => DEFAULT_SEED,
    }
}

// ---- the plan: requests, what each is meant to end in, kills ---------------

/// How a request is meant to end.
#[derive(Clone, Debug, PartialEq)]
enum Intent {
    Complete,
    /// `failed` with this error kind at this step (`None`: before any step).
    Fail {
        kind: &'static str,
        step: Option<&'static str>,
    },
}

/// What identifies a request's resources in the sandbox.
#[derive(Clone, Debug)]
enum Shape {
    Sharespine {
        reference: String,
        users: Vec<String>,
        login: Option<String>,
    },
    ComputeStacks {
        email: String,
        project: String,
        /// The test made a user with this e-mail before the run.
        taken: bool,
    },
    MagentoBi {
        company: String,
    },
}

impl Shape {
    fn provider(&self) -> &'static str {
        match self {
            Shape::Sharespine { .. } => "sharespine",
            Shape::ComputeStacks { .. } => "computestacks",
            Shape::MagentoBi { .. } => "magento_bi",
        }
    }
}

#[derive(Clone, Debug)]
struct Planned {
    id: String,
    at: Duration,
    body: Value,
    shape: Shape,
    intent: Intent,
}

#[derive(Clone, Debug)]
struct Kill {
    at: Duration,
    /// Index into the live workers.
    slot: usize,
}

struct Plan {
    requests: Vec<Planned>,
    kills: Vec<Kill>,
    job_duration_ms: u64,
}

/// The request mix, its intended failures and the kill moments, from `seed`.
fn plan(seed: u64, tag: &str) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed);
    let job_duration_ms = rng.random_range(1000..=2000);
    // Five meant to fail, at random positions; the rest a random mix.
    let mut kinds: Vec<&str> = vec![
        "cs_taken_email",
        "cs_taken_email",
        "cs_failing_order",
        "sharespine_unknown_login",
        "magento_invalid",
    ];
    while kinds.len() < REQUESTS {
        let roll = rng.random_range(0..10);
        kinds.push(match roll {
            0..=3 => "sharespine",
            4..=6 => "computestacks",
            _ => "magento_bi",
        });
    }
    // Fisher-Yates with our rng (stable across rand versions' shuffle changes).
    for i in (1..kinds.len()).rev() {
        let j = rng.random_range(0..=i);
        kinds.swap(i, j);
    }
    let logins = ["anna", "bob", "carl", "dora"];
    let mut at = Duration::ZERO;
    let gap_max = 2 * PUBLISH_SPREAD_MS / REQUESTS as u64;
    let mut requests = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let provider = match *kind {
            "sharespine" | "sharespine_unknown_login" => "sharespine",
            "magento_bi" | "magento_invalid" => "magento_bi",
            _ => "computestacks",
        };
        let id = format!("chaos-{tag}-{i:02}-{provider}");
        let (body, shape, intent) = match *kind {
            "sharespine" | "sharespine_unknown_login" => {
                let reference = format!("chaos{tag}x{i}");
                let n = rng.random_range(0..=3);
                let users: Vec<String> = logins[..n].iter().map(|s| s.to_string()).collect();
                let (login, intent) = if *kind == "sharespine_unknown_login" {
                    (
                        Some("nobody".to_string()),
                        Intent::Fail {
                            kind: "rejected",
                            step: Some("create_login_url"),
                        },
                    )
                } else if n > 0 && rng.random_bool(0.6) {
                    (
                        Some(users[rng.random_range(0..n)].clone()),
                        Intent::Complete,
                    )
                } else {
                    (None, Intent::Complete)
                };
                let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
                let body = sharespine_request(&id, &reference, &user_refs, login.as_deref());
                (
                    body,
                    Shape::Sharespine {
                        reference,
                        users,
                        login,
                    },
                    intent,
                )
            }
            "magento_bi" | "magento_invalid" => {
                let company = format!("Chaos Co {tag} {i}");
                let mut body = magento_request(&id, &company, &format!("db-pw-{i}"));
                let intent = if *kind == "magento_invalid" {
                    body["input"]["invite"]
                        .as_object_mut()
                        .unwrap()
                        .remove("email");
                    Intent::Fail {
                        kind: "invalid_request",
                        step: None,
                    }
                } else {
                    Intent::Complete
                };
                (body, Shape::MagentoBi { company }, intent)
            }
            _ => {
                let taken = *kind == "cs_taken_email";
                let email = if taken {
                    format!("taken{i}@chaos.example.com")
                } else {
                    format!("cs{i}@chaos.example.com")
                };
                let project = format!("site-{id}");
                let resources = match rng.random_range(0..3) {
                    0 => json!({"product": "small"}),
                    1 => json!({"product": "medium"}),
                    _ => json!({"product_id": 3}),
                };
                let body = json!({
                    "request_id": id,
                    "provider": "computestacks",
                    "operation": "onboard",
                    "input": {
                        "user": {"fname": "Ada", "lname": "Lovelace", "email": email,
                                 "password": CS_PASSWORD, "password_confirmation": CS_PASSWORD,
                                 "skip_email_confirm": true, "external_id": format!("crm-{id}")},
                        "api_credential": {"name": "billing"},
                        "order": {"project_name": project, "location_id": 1,
                                  "containers": [{"image_id": 4, "resources": resources,
                                                  "params": [], "domains": []}]}
                    }
                });
                let intent = match *kind {
                    "cs_taken_email" => Intent::Fail {
                        kind: "rejected",
                        step: Some("create_user"),
                    },
                    "cs_failing_order" => Intent::Fail {
                        kind: "job_failed",
                        step: Some("poll_order"),
                    },
                    _ => Intent::Complete,
                };
                (
                    body,
                    Shape::ComputeStacks {
                        email,
                        project,
                        taken,
                    },
                    intent,
                )
            }
        };
        requests.push(Planned {
            id,
            at,
            body,
            shape,
            intent,
        });
        at += Duration::from_millis(rng.random_range(0..=gap_max));
    }
    let mut kills: Vec<Kill> = (0..KILLS)
        .map(|_| Kill {
            at: Duration::from_millis(rng.random_range(KILL_WINDOW_MS.0..=KILL_WINDOW_MS.1)),
            slot: rng.random_range(0..WORKERS),
        })
        .collect();
    kills.sort_by_key(|k| k.at);
    Plan {
        requests,
        kills,
        job_duration_ms,
    }
}

// ---- the worker processes -------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

struct Proc {
    n: usize,
    child: Child,
    port: u16,
    /// The last `/metrics` text scraped from it.
    metrics: Option<String>,
}

/// The worker processes of a run: live ones, and what was scraped from the dead.
struct Fleet {
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    live: Vec<Proc>,
    /// (worker number, last metrics seen) of every process that is gone.
    gone: Vec<(usize, Option<String>)>,
    next_n: usize,
    http: reqwest::Client,
    /// Things that went wrong with the processes themselves.
    problems: Vec<String>,
}

impl Fleet {
    fn spawn(&mut self) -> Proc {
        let n = self.next_n;
        self.next_n += 1;
        let port = free_port();
        let log = std::fs::File::create(self.log_dir.join(format!("worker-{n}.log")))
            .expect("worker log file");
        let child = Command::new(env!("CARGO_BIN_EXE_onboarding-worker"))
            .arg("run")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("ONBOARDING__METRICS__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the built binary starts");
        Proc {
            n,
            child,
            port,
            metrics: None,
        }
    }

    async fn ready(&self, port: u16) -> bool {
        matches!(
            self.http.get(format!("http://127.0.0.1:{port}/readyz")).send().await,
            Ok(r) if r.status() == 200
        )
    }

    /// Starts `count` workers and waits until each says ready.
    async fn start(&mut self, count: usize) {
        for _ in 0..count {
            let mut p = self.spawn();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if self.ready(p.port).await {
                    break;
                }
                if let Ok(Some(status)) = p.child.try_wait() {
                    // Perhaps its port was taken meanwhile: once more with another.
                    eprintln!(
                        "worker {} exited at start ({status}); starting another",
                        p.n
                    );
                    p = self.spawn();
                }
                assert!(
                    Instant::now() < deadline,
                    "worker {} not ready within 20 s; see {}",
                    p.n,
                    self.log_dir.display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.live.push(p);
        }
    }

    async fn scrape(http: &reqwest::Client, p: &mut Proc) {
        let url = format!("http://127.0.0.1:{}/metrics", p.port);
        if let Ok(r) = http.get(url).send().await {
            if let Ok(text) = r.text().await {
                if text.contains("onboarding_") {
                    p.metrics = Some(text);
                }
            }
        }
    }

    async fn scrape_all(&mut self) {
        let http = self.http.clone();
        futures::future::join_all(self.live.iter_mut().map(|p| Self::scrape(&http, p))).await;
    }

    /// A live worker that exited by itself is a failure; it is replaced.
    fn check_exits(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            if let Ok(Some(status)) = self.live[i].child.try_wait() {
                let p = self.live.remove(i);
                let log = format!("{}/worker-{}.log", self.log_dir.display(), p.n);
                if p.metrics.is_none() {
                    // Never served /metrics: most likely its port was taken
                    // between our pick and its bind. Not the worker's fault.
                    eprintln!("worker {} exited before serving ({status}); see {log}", p.n);
                } else {
                    self.problems.push(format!(
                        "worker {} exited on its own ({status}); see {log}",
                        p.n
                    ));
                }
                self.gone.push((p.n, p.metrics));
                let replacement = self.spawn();
                self.live.push(replacement);
            } else {
                i += 1;
            }
        }
    }

    /// Scrapes every worker, SIGKILLs one (a worker with a step in flight if
    /// there is one, so kills land mid-step more often) and starts a replacement.
    /// Returns the worker's number, pid and whether it had a step in flight.
    async fn kill_and_replace(&mut self, slot: usize) -> (usize, u32, bool) {
        self.scrape_all().await;
        let busy: Vec<usize> = (0..self.live.len())
            .filter(|&i| {
                self.live[i]
                    .metrics
                    .as_deref()
                    .and_then(|m| metric_value(m, "onboarding_steps_in_flight", &[]))
                    .unwrap_or(0.0)
                    > 0.0
            })
            .collect();
        let (slot, mid_step) = match busy.len() {
            0 => (slot % self.live.len(), false),
            n => (busy[slot % n], true),
        };
        let mut p = self.live.remove(slot);
        let pid = p.child.id();
        p.child.kill().expect("SIGKILL");
        let _ = p.child.wait();
        let n = p.n;
        self.gone.push((p.n, p.metrics));
        let replacement = self.spawn();
        self.live.push(replacement);
        (n, pid, mid_step)
    }

    /// Every process's last metrics text.
    fn all_metrics(&self) -> Vec<&str> {
        self.live
            .iter()
            .filter_map(|p| p.metrics.as_deref())
            .chain(self.gone.iter().filter_map(|(_, m)| m.as_deref()))
            .collect()
    }

    /// The sum over every process of the samples of `name` with `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.all_metrics()
            .iter()
            .filter_map(|m| metric_value(m, name, labels))
            .map(|v| v as u64)
            .sum()
    }

    /// The sum over every process of `name`, by the values of `label_keys`.
    fn by_labels(&self, name: &str, label_keys: &[&str]) -> BTreeMap<Vec<String>, f64> {
        let mut out = BTreeMap::new();
        for text in self.all_metrics() {
            for line in text.lines() {
                let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
                    continue;
                };
                let Some((labels, value)) = rest.rsplit_once("} ") else {
                    continue;
                };
                let key: Vec<String> = label_keys
                    .iter()
                    .map(|k| label(labels, k).unwrap_or_default())
                    .collect();
                *out.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
        out
    }

    fn stop_all(&mut self) {
        for mut p in self.live.drain(..) {
            let _ = p.child.kill();
            let _ = p.child.wait();
            self.gone.push((p.n, p.metrics));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.live {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// The value of `key="..."` in a Prometheus label list.
fn label(labels: &str, key: &str) -> Option<String> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(labels[start..end].to_string())
}

/// The environment that points a worker process at this run's broker,
/// ledger and sandbox, with short timeouts, retries and polls.
fn worker_env(env: &TestEnv, ledger_url: &str) -> Vec<(String, String)> {
    let mut vars = worker_process_env(&env.settings, ledger_url, 1500);
    vars.push((
        "ONBOARDING__AMQP__URL".into(),
        env.settings.amqp.url.expose().to_string(),
    ));
    vars
}

// ---- what the sandbox holds -----------------------------------------------------

/// One create step of a request: how many the sandbox holds, how many may be.
struct Creates {
    provider: &'static str,
    step: &'static str,
    label: String,
    found: usize,
    min: usize,
    max: usize,
}

/// Each provider's plan in order, `true` for the steps that create something.
fn plan_of(shape: &Shape) -> Vec<(String, &'static str, bool)> {
    match shape {
        Shape::Sharespine { users, login, .. } => {
            let mut steps = vec![("create_tenant".to_string(), "create_tenant", true)];
            for u in users {
                steps.push((format!("create_user({u})"), "create_user", true));
            }
            steps.push(("create_connection".into(), "create_connection", true));
            if login.is_some() {
                steps.push(("create_login_url".into(), "create_login_url", true));
            }
            steps
        }
        Shape::ComputeStacks { .. } => vec![
            ("create_user".into(), "create_user", true),
            (
                "create_api_credential".into(),
                "create_api_credential",
                true,
            ),
            ("create_order".into(), "create_order", true),
            ("poll_order".into(), "poll_order", false),
        ],
        Shape::MagentoBi { .. } => [
            ("create_signup", true),
            ("poll_signup", false),
            ("invite_user", true),
            ("update_client", false),
            ("create_connection", true),
            ("poll_connection", false),
            ("test_connection", true),
            ("poll_connection_test", false),
            ("create_dashboards", true),
            ("poll_dashboards", false),
        ]
        .into_iter()
        .map(|(s, c)| (s.to_string(), s, c))
        .collect(),
    }
}

/// What the sandbox holds for `shape`, per create step in plan order.
fn found_creates(env: &TestEnv, shape: &Shape) -> Vec<(String, usize)> {
    match shape {
        Shape::Sharespine {
            reference,
            users,
            login,
        } => {
            let tenants: Vec<_> = env
                .sandbox
                .sharespine
                .tenants()
                .into_iter()
                .filter(|t| &t.customer_reference == reference)
                .collect();
            let mut out = vec![("create_tenant".to_string(), tenants.len())];
            for u in users {
                let n = tenants
                    .iter()
                    .flat_map(|t| &t.users)
                    .filter(|x| &x.login == u)
                    .count();
                out.push((format!("create_user({u})"), n));
            }
            out.push((
                "create_connection".into(),
                tenants.iter().map(|t| t.connections.len()).sum(),
            ));
            if login.is_some() {
                out.push((
                    "create_login_url".into(),
                    tenants.iter().map(|t| t.login_urls.len()).sum(),
                ));
            }
            out
        }
        Shape::ComputeStacks {
            email,
            project,
            taken,
        } => {
            let cs = &env.sandbox.computestacks;
            let users: Vec<i64> = cs
                .users()
                .into_iter()
                .filter(|u| u.email.eq_ignore_ascii_case(email))
                .map(|u| u.id)
                .collect();
            let credentials = cs
                .api_credentials()
                .into_iter()
                .filter(|c| users.contains(&c.user_id))
                .count();
            let orders = cs
                .orders()
                .into_iter()
                .filter(|o| &o.project_name == project)
                .count();
            // A taken e-mail's user is the test's own, made before the run.
            let made = users.len() - usize::from(*taken).min(users.len());
            vec![
                ("create_user".into(), made),
                ("create_api_credential".into(), credentials),
                ("create_order".into(), orders),
            ]
        }
        Shape::MagentoBi { company } => {
            let m = &env.sandbox.magento_bi;
            let clients: Vec<i64> = m
                .clients()
                .into_iter()
                .filter(|c| c.signup["company"] == company.as_str())
                .map(|c| c.id)
                .collect();
            let ours = |client_id: i64| clients.contains(&client_id);
            vec![
                ("create_signup".into(), clients.len()),
                (
                    "invite_user".into(),
                    m.invites().iter().filter(|i| ours(i.client_id)).count(),
                ),
                (
                    "create_connection".into(),
                    m.connections()
                        .iter()
                        .filter(|c| ours(c.client_id) && !c.preexisting)
                        .count(),
                ),
                (
                    "test_connection".into(),
                    m.jobs()
                        .iter()
                        .filter(|j| ours(j.client_id) && !j.form.is_empty())
                        .count(),
                ),
                (
                    "create_dashboards".into(),
                    m.dashboards().iter().filter(|d| ours(d.client_id)).count(),
                ),
            ]
        }
    }
}

/// The creates of one request, with the bounds its end allows: every create
/// before the step it failed at exactly once, that step's at most once, none after.
fn creates_of(env: &TestEnv, shape: &Shape, failed_at: Option<Option<&str>>) -> Vec<Creates> {
    let found: BTreeMap<String, usize> = found_creates(env, shape).into_iter().collect();
    let plan = plan_of(shape);
    let fail_index = match failed_at {
        None => None,
        // Failed before any step (invalid request).
        Some(None) => Some(0),
        Some(Some(step)) => Some(
            plan.iter()
                .position(|(_, s, _)| *s == step)
                .unwrap_or(plan.len()),
        ),
    };
    let mut out = Vec::new();
    for (i, (label, step, creates)) in plan.iter().enumerate() {
        if !creates {
            continue;
        }
        let (min, max) = match (fail_index, failed_at) {
            (None, _) => (1, 1),
            (Some(_), Some(None)) => (0, 0),
            (Some(f), _) if i < f => (1, 1),
            // The step it failed at (for Sharespine's create_user, any of them).
            (Some(f), Some(Some(s))) if i == f || *step == s => (0, 1),
            _ => (0, 0),
        };
        out.push(Creates {
            provider: shape.provider(),
            step,
            label: label.clone(),
            found: found.get(label).copied().unwrap_or(0),
            min,
            max,
        });
    }
    out
}

/// (create endpoint, calls, resources the sandbox holds) per provider.
fn create_calls(env: &TestEnv) -> Vec<(String, u64, usize)> {
    let s = &env.sandbox;
    let ss = s.sharespine.knobs.all_calls();
    let cs = s.computestacks.knobs.all_calls();
    let mb = s.magento_bi.knobs.all_calls();
    let tenants = s.sharespine.tenants();
    let m = &s.magento_bi;
    let get = |calls: &BTreeMap<String, u64>, k: &str| calls.get(k).copied().unwrap_or(0);
    let row = |calls: &BTreeMap<String, u64>, k: &str, n: usize| (k.to_string(), get(calls, k), n);
    vec![
        row(&ss, "POST /reseller/tenant", tenants.len()),
        row(
            &ss,
            "POST /reseller/tenant/{code_name}/user",
            tenants.iter().map(|t| t.users.len()).sum(),
        ),
        row(
            &ss,
            "POST /reseller/tenant/{code_name}/connection",
            tenants.iter().map(|t| t.connections.len()).sum(),
        ),
        row(
            &ss,
            "POST /reseller/tenant/{code_name}/login/{login}",
            tenants.iter().map(|t| t.login_urls.len()).sum(),
        ),
        row(&cs, "POST /api/admin/users", s.computestacks.users().len()),
        row(
            &cs,
            "POST /api/users/{id}/api_credentials",
            s.computestacks.api_credentials().len(),
        ),
        row(&cs, "POST /api/orders", s.computestacks.orders().len()),
        row(&mb, "POST /v3/signups", m.clients().len()),
        row(&mb, "POST /v3/invites", m.invites().len()),
        row(
            &mb,
            "POST /v1/v2/clients/{client_id}/connections/input-connections",
            m.connections().iter().filter(|c| !c.preexisting).count(),
        ),
        row(
            &mb,
            "POST /v2/client/{client_id}/job",
            m.jobs().iter().filter(|j| !j.form.is_empty()).count(),
        ),
        row(
            &mb,
            "POST /v1/clients/{client_id}/autodash",
            m.dashboards().len(),
        ),
    ]
}

// ---- the run -------------------------------------------------------------------------

async fn run_chaos(backend: Backend) {
    let seed = seed();
    let b = backend.name();
    let tag = format!("{}{}", &b[..2], seed % 100_000);
    let plan = plan(seed, &tag);
    println!(
        "chaos[{b}] seed {seed} (CHAOS_SEED={seed} to repeat); job duration {} ms",
        plan.job_duration_ms
    );

    let env = TestEnv::prepare(|s| {
        s.sandbox.latency_ms = 20;
        s.sandbox.job_duration_ms = plan.job_duration_ms;
    })
    .await;
    let pg = match backend {
        Backend::Postgres => Some(pg::PgDatabase::create().await),
        Backend::Sqlite => None,
    };
    let ledger_url = match &pg {
        Some(db) => db.url.clone(),
        None => env.settings.ledger.url.expose().to_string(),
    };

    // The users whose e-mails the "taken" requests ask for.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let cs_settings = &env.settings.providers.computestacks;
    for r in &plan.requests {
        if let Shape::ComputeStacks {
            email,
            project,
            taken,
        } = &r.shape
        {
            if *taken {
                let answer = http
                    .post(format!("{}/api/admin/users", env.sandbox.computestacks_url()))
                    .basic_auth(
                        &cs_settings.admin_username,
                        Some(cs_settings.admin_password.expose()),
                    )
                    .json(&json!({"user": {"fname": "Taken", "lname": "Already", "email": email,
                                            "password": CS_PASSWORD, "password_confirmation": CS_PASSWORD}}))
                    .send()
                    .await
                    .expect("the sandbox answers");
                assert!(answer.status().is_success(), "pre-made user: {answer:?}");
            }
            if r.intent
                == (Intent::Fail {
                    kind: "job_failed",
                    step: Some("poll_order"),
                })
            {
                env.sandbox.computestacks.fail_orders_for_project(project);
            }
        }
    }

    let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("chaos")
        .join(format!("{b}-seed{seed}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut fleet = Fleet {
        env: worker_env(&env, &ledger_url),
        log_dir: log_dir.clone(),
        live: Vec::new(),
        gone: Vec::new(),
        next_n: 1,
        http: reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
        problems: Vec::new(),
    };
    fleet.start(WORKERS).await;

    // Events, read by a task of its own so none is lost between polls.
    let mut stream = env.admin.subscribe_events("#").await.expect("subscribe");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let reader = tokio::spawn(async move {
        while let Some((_, body)) = stream.next().await {
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let mut events: Vec<Value> = Vec::new();
    let is_final = |e: &Value| e["event"] == "completed" || e["event"] == "failed";
    let ids: BTreeSet<String> = plan.requests.iter().map(|r| r.id.clone()).collect();

    let started = Instant::now();
    let mut next_publish = 0;
    let mut next_kill = 0;
    let mut last_scrape = Instant::now();
    let mut kill_log = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let finals_at;
    loop {
        let now = started.elapsed();
        while next_publish < plan.requests.len() && plan.requests[next_publish].at <= now {
            env.publish(&plan.requests[next_publish].body).await;
            next_publish += 1;
        }
        while next_kill < plan.kills.len() && plan.kills[next_kill].at <= now {
            let (n, pid, mid_step) = fleet.kill_and_replace(plan.kills[next_kill].slot).await;
            kill_log.push(format!(
                "{:.2}s worker {n} (pid {pid}{})",
                started.elapsed().as_secs_f64(),
                if mid_step { ", mid-step" } else { ", idle" }
            ));
            next_kill += 1;
        }
        if last_scrape.elapsed() >= Duration::from_millis(250) {
            fleet.check_exits();
            fleet.scrape_all().await;
            last_scrape = Instant::now();
        }
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        let finished: BTreeSet<&str> = events
            .iter()
            .filter(|e| is_final(e))
            .filter_map(|e| e["request_id"].as_str())
            .collect();
        if next_publish == plan.requests.len()
            && next_kill == plan.kills.len()
            && ids.iter().all(|id| finished.contains(id.as_str()))
        {
            finals_at = started.elapsed();
            break;
        }
        if now > FINALS_DEADLINE {
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !finished.contains(id.as_str()))
                .collect();
            problems.push(format!(
                "no final event within {FINALS_DEADLINE:?} for {}: {missing:?}",
                missing.len()
            ));
            finals_at = now;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stragglers (copies parked in delay queues behind a dead worker's lease)
    // drain; the management API samples every 500 ms, so three quiet looks in a row.
    let quiet_deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_looks = 0;
    let mut busy = Vec::new();
    while quiet_looks < 3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        fleet.check_exits();
        fleet.scrape_all().await;
        busy = env.vhost.busy_queues();
        quiet_looks = if busy.is_empty() { quiet_looks + 1 } else { 0 };
        if Instant::now() > quiet_deadline {
            problems.push(format!(
                "messages left in worker queues 30 s after the last final event: {busy:?}"
            ));
            break;
        }
    }
    let quiet_at = started.elapsed();
    fleet.scrape_all().await;
    fleet.stop_all();
    problems.append(&mut fleet.problems);
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    reader.abort();

    // ---- final events ----
    let repeats = fleet.by_labels("onboarding_create_repeats_total", &["provider", "step"]);
    let recognised = fleet.by_labels(
        "onboarding_create_repeats_recognised_total",
        &["provider", "step"],
    );
    let counted = |provider: &str, step: &str| -> usize {
        repeats
            .get(&vec![provider.to_string(), step.to_string()])
            .copied()
            .unwrap_or(0.0) as usize
    };
    let mut completed = 0;
    let mut failed_meant = 0;
    // (provider, step) -> failures explained by a counted repeat ("already exists").
    let mut explained: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut final_events = 0;
    let mut ends: BTreeMap<String, Option<Option<String>>> = BTreeMap::new();
    for r in &plan.requests {
        let finals: Vec<&Value> = events
            .iter()
            .filter(|e| e["request_id"] == r.id.as_str() && is_final(e))
            .collect();
        final_events += finals.len();
        let kinds: BTreeSet<&str> = finals.iter().filter_map(|e| e["event"].as_str()).collect();
        if kinds.len() > 1 {
            problems.push(format!(
                "{}: more than one final event kind: {kinds:?}",
                r.id
            ));
        }
        let Some(last) = finals.last() else {
            continue;
        };
        let failed_step = last["error"]["step"].as_str().map(String::from);
        match (&r.intent, last["event"].as_str()) {
            (Intent::Complete, Some("completed")) => {
                completed += 1;
                ends.insert(r.id.clone(), None);
            }
            (Intent::Fail { kind, step }, Some("failed"))
                if last["error"]["kind"] == *kind && failed_step.as_deref() == *step =>
            {
                failed_meant += 1;
                ends.insert(r.id.clone(), Some(failed_step));
            }
            (Intent::Complete, Some("failed"))
                if matches!(last["error"]["http_status"].as_u64(), Some(409 | 422))
                    && failed_step
                        .as_deref()
                        .is_some_and(|s| counted(r.shape.provider(), s) > 0) =>
            {
                // The README's documented end of a repeat that shows: `rejected`.
                let step = failed_step.clone().unwrap();
                explained
                    .entry((r.shape.provider().to_string(), step))
                    .or_default()
                    .push(r.id.clone());
                ends.insert(r.id.clone(), Some(failed_step));
            }
            (intent, _) => problems.push(format!(
                "{}: meant {intent:?}, ended {}",
                r.id,
                serde_json::to_string(last).unwrap()
            )),
        }
    }
    for ((provider, step), ids) in &explained {
        if ids.len() > counted(provider, step) {
            problems.push(format!(
                "{provider}/{step}: {} requests failed on \"already exists\" but only {} repeats were counted: {ids:?}",
                ids.len(),
                counted(provider, step)
            ));
        }
    }

    // ---- creates ----
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut seen_where: Vec<String> = Vec::new();
    for r in &plan.requests {
        let Some(end) = ends.get(&r.id) else {
            continue;
        };
        let failed_at = end.as_ref().map(|s| s.as_deref());
        for c in creates_of(&env, &r.shape, failed_at) {
            if c.found > c.max {
                *seen
                    .entry((c.provider.to_string(), c.step.to_string()))
                    .or_insert(0) += c.found - c.max;
                seen_where.push(format!("{} {} x{}", r.id, c.label, c.found));
                if c.max == 0 {
                    problems.push(format!(
                        "{}: {} created {} times where the request's end allows none",
                        r.id, c.label, c.found
                    ));
                }
            }
            if c.found < c.min {
                problems.push(format!(
                    "{}: {} not at the provider although the request got past it",
                    r.id, c.label
                ));
            }
        }
    }
    let mut steps_with_repeats: BTreeSet<(String, String)> = seen.keys().cloned().collect();
    steps_with_repeats.extend(repeats.keys().map(|k| (k[0].clone(), k[1].clone())));
    let mut seen_total = 0;
    let mut counted_total = 0;
    let mut recognised_total = 0;
    let mut repeat_lines = Vec::new();
    for (provider, step) in &steps_with_repeats {
        let s = seen
            .get(&(provider.clone(), step.clone()))
            .copied()
            .unwrap_or(0);
        let c = counted(provider, step);
        let r = recognised
            .get(&vec![provider.clone(), step.clone()])
            .copied()
            .unwrap_or(0.0) as usize;
        seen_total += s;
        counted_total += c;
        recognised_total += r;
        repeat_lines.push(format!(
            "{provider}/{step}: seen {s}, counted {c} (recognised and adopted {r}, unrecognisable {})",
            c.saturating_sub(r)
        ));
        if s > c {
            problems.push(format!(
                "{provider}/{step}: {s} repeated creates at the provider, only {c} counted in onboarding_create_repeats_total (see {})",
                log_dir.display()
            ));
        }
    }

    // ---- onboarding.dead ----
    let dead = env.dead().await;
    let dead_ids: BTreeSet<String> = dead.iter().filter_map(|d| d.request_id.clone()).collect();
    let mut allowed_dead: BTreeSet<String> = plan
        .requests
        .iter()
        .filter(|r| r.intent != Intent::Complete)
        .map(|r| r.id.clone())
        .collect();
    allowed_dead.extend(explained.values().flatten().cloned());
    let meant_dead: BTreeSet<String> = plan
        .requests
        .iter()
        .filter(|r| r.intent != Intent::Complete)
        .map(|r| r.id.clone())
        .collect();
    if !dead_ids.is_subset(&allowed_dead) || !meant_dead.is_subset(&dead_ids) {
        problems.push(format!(
            "onboarding.dead holds {dead_ids:?}; meant: {meant_dead:?}"
        ));
    }
    if dead.iter().any(|d| d.request_id.is_none()) {
        problems.push("onboarding.dead holds a message without a request_id".into());
    }

    // ---- figures ----
    let calls = create_calls(&env);
    let extra_calls: Vec<String> = calls
        .iter()
        .filter(|(_, c, n)| *c as usize != *n)
        .map(|(k, c, n)| format!("{k}: {c} calls for {n} creates"))
        .collect();
    let by_provider = |p: &str| {
        plan.requests
            .iter()
            .filter(|r| r.shape.provider() == p)
            .count()
    };
    let dropped = fleet.sum("onboarding_duplicates_dropped_total", &[]);
    let leased = fleet.sum("onboarding_retries_total", &[("reason", "leased")]);
    let skipped = fleet.sum("onboarding_steps_total", &[("outcome", "skipped")]);
    let steps = fleet.sum("onboarding_steps_total", &[]);
    let retries: BTreeMap<String, u64> = fleet
        .by_labels("onboarding_retries_total", &["reason"])
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, v)| (k.join(","), v as u64))
        .collect();
    let scraped = fleet.all_metrics().len();
    let processes = fleet.next_n - 1;
    if scraped < processes {
        println!(
            "chaos[{b}] note: {} of {processes} worker processes were never scraped (killed before their listener answered)",
            processes - scraped
        );
    }
    println!(
        "chaos[{b}] seed {seed}: {} requests ({} sharespine, {} computestacks, {} magento_bi), {} meant to fail",
        plan.requests.len(),
        by_provider("sharespine"),
        by_provider("computestacks"),
        by_provider("magento_bi"),
        plan.requests.iter().filter(|r| r.intent != Intent::Complete).count()
    );
    println!("chaos[{b}] kills: {}", kill_log.join(", "));
    println!(
        "chaos[{b}] ends: {completed} completed, {failed_meant} failed as meant, {} failed on a counted repeat {explained:?}; {final_events} final events for {} requests",
        explained.values().map(Vec::len).sum::<usize>(),
        plan.requests.len()
    );
    println!(
        "chaos[{b}] repeated creates: seen {seen_total}, counted {counted_total} (recognised {recognised_total}, unrecognisable {}) [{}] {seen_where:?}",
        counted_total.saturating_sub(recognised_total),
        repeat_lines.join("; ")
    );
    println!(
        "chaos[{b}] redeliveries: create calls above creates [{}]; duplicates dropped {dropped}, lease waits {leased}, recorded steps skipped {skipped}, retries by reason {retries:?}; {steps} step executions in {processes} processes",
        extra_calls.join("; ")
    );
    println!(
        "chaos[{b}] time: all final events at {:.1} s, queues empty at {:.1} s, total {:.1} s; dead letters {}",
        finals_at.as_secs_f64(),
        quiet_at.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        dead.len(),
    );
    drop(pg);
    if busy.is_empty() && problems.is_empty() && std::env::var_os("CHAOS_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&log_dir);
    } else {
        println!("chaos[{b}] worker logs kept in {}", log_dir.display());
    }
    assert!(
        problems.is_empty(),
        "chaos[{b}] seed {seed} (CHAOS_SEED={seed} to repeat; worker logs in {}):\n- {}",
        log_dir.display(),
        problems.join("\n- ")
    );
}
