//! A RabbitMQ cluster under the workers (issue 17, CONTRACT §6 "survives the
//! loss of the node it is connected to"): three nodes of Debian's
//! rabbitmq-server on this machine (`scripts/cluster start`: onb1..onb3@localhost,
//! AMQP 5701..5703), the topology declared once all three are members (so
//! every quorum queue has three members), a subscriber's quorum queue bound to
//! `onboarding.events` with `#`, three worker processes on a PostgreSQL
//! ledger, and a mixed load (12 Sharespine, 6 ComputeStacks onboardings). Mid-run
//! the node that leads `onboarding.steps.sharespine` and holds every worker's
//! connection is stopped (`rabbitmqctl stop_app`), kept down 5 s and started
//! again; half of the requests are published while it is down.
//!
//! Asserted: each worker is ready again on another node; every onboarding is
//! completed in the ledger and has its `completed` event in the subscriber's
//! queue, after its `accepted` and step events in plan order (copies of an
//! earlier event are at-least-once and allowed, and counted); nothing failed;
//! the sandbox holds one tenant (with its users, connection and login URL)
//! per Sharespine request and one user, credential and order per ComputeStacks
//! request; `onboarding.dead` is empty and the worker queues are drained.
//!
//! A test binary of its own: it runs three more RabbitMQ nodes and stops one.
//! The machine's main broker (rabbit@<host>, 5672) is not touched. The cluster
//! is started fresh (`scripts/cluster stop` first: a cluster a user started
//! with the script is replaced) and stopped, with its state removed, whatever
//! happens. Figures: `cargo test --test cluster -- --nocapture`; worker logs
//! are kept under `target/tmp/cluster/` when the run fails (or with
//! `CLUSTER_KEEP_LOGS=1`).
//!
//! - `nodes`: the cluster's nodes (`scripts/cluster`, `rabbitmqctl -n`), stopped
//!   and started again.
//! - `workers`: the worker processes and their readiness, node by node.
//! - `load`: the requests and the events each should produce (from the
//!   providers' own plans).
//! - `events`: the subscriber's queue, read across nodes, and publishing
//!   through whichever node takes it.

mod events;
mod load;
mod nodes;
// A folder binary's `mod` lines resolve inside `tests/cluster/`; the support
// shared by every test binary is one level up.
#[path = "../support/mod.rs"]
mod support;
mod workers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onboarding_worker::broker::admin::Admin;
use onboarding_worker::config::Settings;
use onboarding_worker::ledger::Status;
use onboarding_worker::sandbox::{Listens, Sandbox, SandboxOptions};
use serde_json::Value;

use events::{declare_events_queue, publish, spawn_events_reader};
use load::{event_key, in_order, plan};
use nodes::{
    cluster_script, kill_node, list_queues, node_url, rabbitmqctl, stop_mode, ClusterGuard,
    StopMode,
};
use support::pg::PgDatabase;
use support::processes::{free_port, listening, readyz, KillOnDrop};
use support::prometheus::metric_value;
use workers::{ms_of, ready_on, wall_ms, watch_readiness, worker_env, Workers};

/// The script's nodes: name and AMQP port.
const NODES: [(&str, u16); 3] = [
    ("onb1@localhost", 5701),
    ("onb2@localhost", 5702),
    ("onb3@localhost", 5703),
];
const SHARESPINE: usize = 12;
const COMPUTESTACKS: usize = 6;
const WORKERS: usize = 3;
/// The subscriber's queue: durable, quorum, bound with `#`.
const EVENTS_QUEUE: &str = "test.events";
/// How long the stopped node stays down.
const DOWN_FOR: Duration = Duration::from_secs(5);
const FINALS_DEADLINE: Duration = Duration::from_secs(120);
const CS_PASSWORD: &str = "cluster-Passw0rd-cs";
/// How long a port check waits for an answer.
const PORT_CHECK: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_that_leads_the_step_queues_and_holds_the_workers_loses_nothing() {
    let run_started = Instant::now();

    // ---- the cluster ----
    assert!(
        Command::new("rabbitmqctl").arg("--help").output().is_ok(),
        "rabbitmqctl is not on PATH: apt-get install -y rabbitmq-server (Debian's package; \
         the test starts three nodes of its own with scripts/cluster)"
    );
    let _ = tokio::task::spawn_blocking(|| cluster_script("stop"))
        .await
        .unwrap();
    let guard = ClusterGuard;
    let cluster_started = Instant::now();
    let start_log = tokio::task::spawn_blocking(|| cluster_script("start"))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the three-node cluster must start: {e}"));
    let cluster_start_took = cluster_started.elapsed();
    for (name, port) in NODES {
        assert!(
            listening(port, PORT_CHECK),
            "{name} listens on {port}: {start_log}"
        );
    }
    let running = tokio::task::spawn_blocking(|| {
        rabbitmqctl(
            NODES[0].0,
            &["-q", "eval", "lists:sort(rabbit_nodes:all_running())."],
        )
    })
    .await
    .unwrap()
    .expect("cluster membership");
    assert_eq!(
        running.trim(),
        "[onb1@localhost,onb2@localhost,onb3@localhost]",
        "the three nodes run as one cluster"
    );
    let all_urls: Vec<String> = NODES.iter().map(|(_, p)| node_url(*p)).collect();

    // ---- the topology, declared once all three are members ----
    let setup = Admin::connect(&all_urls[0])
        .await
        .expect("the topology is declared on the cluster");
    setup.close().await;
    declare_events_queue(&all_urls[0])
        .await
        .expect("the subscriber's queue is declared");
    let queues = list_queues(NODES[0].0).await.expect("list queues");
    let mut leaders: BTreeMap<String, String> = BTreeMap::new();
    for q in &queues {
        let name = q["name"].as_str().unwrap_or_default().to_string();
        if !(name.starts_with("onboarding.") || name == EVENTS_QUEUE) {
            continue;
        }
        assert_eq!(q["type"], "quorum", "{name} is a quorum queue: {q}");
        let members: BTreeSet<&str> = q["members"]
            .as_array()
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            members,
            NODES.iter().map(|(n, _)| *n).collect::<BTreeSet<_>>(),
            "{name} is replicated on all three nodes: {q}"
        );
        leaders.insert(name, q["leader"].as_str().unwrap_or("?").to_string());
    }
    for q in [
        "onboarding.requests",
        "onboarding.dead",
        "onboarding.steps.sharespine",
        "onboarding.steps.computestacks",
        EVENTS_QUEUE,
    ] {
        assert!(leaders.contains_key(q), "{q} exists: {leaders:?}");
    }
    let victim_name = leaders["onboarding.steps.sharespine"].clone();
    let (victim, victim_port) = *NODES
        .iter()
        .find(|(n, _)| *n == victim_name)
        .unwrap_or_else(|| panic!("the leader {victim_name} is one of the three"));
    let victim_leads: Vec<&String> = leaders
        .iter()
        .filter(|(_, l)| **l == victim_name)
        .map(|(q, _)| q)
        .collect();
    let survivors: Vec<(&'static str, u16)> = NODES
        .iter()
        .copied()
        .filter(|(n, _)| *n != victim)
        .collect();
    let survivor_urls: Vec<String> = survivors.iter().map(|(_, p)| node_url(*p)).collect();

    // ---- sandbox, ledger, workers (each tries the leader first) ----
    let mut settings = Settings::load(None).expect("default settings");
    settings.sandbox.latency_ms = 250;
    settings.sandbox.job_duration_ms = 1500;
    let sandbox = Sandbox::start(
        SandboxOptions::from_settings(&settings.sandbox, &settings.providers),
        Listens::ephemeral(),
    )
    .await
    .expect("sandbox starts");
    sandbox.configure(&mut settings.providers);
    let pg = PgDatabase::create().await;

    let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cluster")
        .join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&log_dir).unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut workers = Workers(Vec::new());
    for w in 0..WORKERS {
        let mut urls = vec![node_url(victim_port)];
        let mut others = survivor_urls.clone();
        let n = others.len();
        others.rotate_left(w % n);
        urls.extend(others);
        let port = free_port();
        let log = std::fs::File::create(log_dir.join(format!("worker-{}.log", w + 1))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_onboarding-worker"))
            .arg("run")
            .envs(worker_env(&settings, &pg.url, &urls))
            .env("ONBOARDING__METRICS__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the built binary starts");
        workers.0.push((KillOnDrop(child), port));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, (child, port)) in workers.0.iter_mut().enumerate() {
        loop {
            let answer = readyz(&http, *port).await;
            if let Some(on) = ready_on(&answer) {
                assert_eq!(
                    on,
                    victim_port,
                    "worker {} is on the leader's node first: {answer:?}",
                    i + 1
                );
                break;
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!(
                    "worker {} exited ({status}); see {}",
                    i + 1,
                    log_dir.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "worker {} not ready within 30 s: {answer:?}; see {}",
                i + 1,
                log_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // ---- the events reader and the publisher, on the survivors ----
    let (reader, mut rx, reader_reconnects) = spawn_events_reader(survivor_urls.clone());
    let mut admin: Option<Admin> = None;
    let requests = plan();
    let half = requests.len() / 2;
    let load_started = Instant::now();
    let mut publish_retries = 0;
    for r in &requests[..half] {
        publish_retries += publish(&mut admin, &survivor_urls, &r.body).await;
    }
    let mut events: Vec<(Instant, Value)> = Vec::new();
    // Mid-run: some tenants made, most of the work still ahead.
    let tenants_deadline = Instant::now() + Duration::from_secs(30);
    while sandbox.sharespine.tenants().len() < 3 {
        assert!(
            Instant::now() < tenants_deadline,
            "no progress within 30 s; see {}",
            log_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let completed_before = events
        .iter()
        .filter(|(_, e)| e["event"] == "completed")
        .count();
    let steps_before: BTreeSet<(String, String)> = events
        .iter()
        .filter(|(_, e)| e["event"] == "step_completed")
        .map(|(_, e)| (e["request_id"].to_string(), event_key(e)))
        .collect();

    // ---- the leader's node goes away ----
    let stop_wall_ms = wall_ms();
    let stopped_at = Instant::now();
    let ports: Vec<u16> = workers.0.iter().map(|(_, p)| *p).collect();
    let watcher = tokio::spawn(watch_readiness(
        http.clone(),
        ports,
        victim_port,
        stopped_at,
    ));
    let how = stop_mode();
    tokio::task::spawn_blocking(move || match how {
        StopMode::StopApp => rabbitmqctl(victim, &["stop_app"]).map(drop),
        StopMode::Kill => kill_node(victim),
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("stopping the leader's node ({how:?}): {e}"));
    let stop_took = stopped_at.elapsed();
    assert!(
        !listening(victim_port, PORT_CHECK),
        "{victim} no longer takes AMQP"
    );
    let mut problems: Vec<String> = Vec::new();
    // The other half arrives while it is down.
    for r in &requests[half..] {
        publish_retries += publish(&mut admin, &survivor_urls, &r.body).await;
    }
    let published_during_outage_by = stopped_at.elapsed();
    // The node comes back after DOWN_FOR.
    let down_left = DOWN_FOR.saturating_sub(stopped_at.elapsed().saturating_sub(stop_took));
    tokio::time::sleep(down_left).await;
    let restart_at = stopped_at.elapsed();
    tokio::task::spawn_blocking(move || match how {
        StopMode::StopApp => {
            rabbitmqctl(victim, &["start_app"])?;
            rabbitmqctl(victim, &["await_startup"]).map(drop)
        }
        // The script starts the missing node again; it rejoins by itself.
        StopMode::Kill => cluster_script("start").map(drop),
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("starting the stopped node again ({how:?}): {e}"));
    let back_at = stopped_at.elapsed();
    // Each worker ready again, on another node.
    let (noticed, ready_again) = watcher.await.unwrap();
    for (i, r) in ready_again.iter().enumerate() {
        if r.is_none() {
            problems.push(format!(
                "worker {} not ready on another node within 60 s of stop_app",
                i + 1
            ));
        }
    }

    // ---- every onboarding completes ----
    let ids: BTreeSet<String> = requests.iter().map(|r| r.id.clone()).collect();
    let finals_at;
    loop {
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        let finished: BTreeSet<&str> = events
            .iter()
            .filter(|(_, e)| e["event"] == "completed" || e["event"] == "failed")
            .filter_map(|(_, e)| e["request_id"].as_str())
            .collect();
        if ids.iter().all(|id| finished.contains(id.as_str())) {
            finals_at = stopped_at.elapsed();
            break;
        }
        if run_started.elapsed() > FINALS_DEADLINE {
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !finished.contains(id.as_str()))
                .collect();
            problems.push(format!(
                "no final event within {FINALS_DEADLINE:?} of the start for {missing:?}"
            ));
            finals_at = stopped_at.elapsed();
            break;
        }
        for (i, (child, _)) in workers.0.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.0.try_wait() {
                problems.push(format!("worker {} exited on its own ({status})", i + 1));
            }
        }
        if !problems.is_empty() {
            finals_at = stopped_at.elapsed();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // When the last request's first final event arrived.
    let last_final = ids
        .iter()
        .filter_map(|id| {
            events
                .iter()
                .find(|(_, e)| {
                    e["request_id"] == id.as_str()
                        && (e["event"] == "completed" || e["event"] == "failed")
                })
                .map(|(at, _)| at.saturating_duration_since(stopped_at))
        })
        .max();
    // The first step run after the workers were ready again: its record in
    // the ledger (completed_at, the worker's clock in ms) and its event.
    let first_ready = ready_again.iter().flatten().min().copied();
    let all_ready = ready_again.iter().flatten().max().copied();
    let recorded: Vec<i64> = {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&pg.url)
            .await
            .expect("the run's database");
        let rows: Vec<i64> =
            sqlx::query_scalar("SELECT completed_at FROM steps ORDER BY completed_at")
                .fetch_all(&mut conn)
                .await
                .expect("read step records");
        let _ = conn.close().await;
        rows
    };
    let since_stop = |ms: i64| Duration::from_millis((ms - stop_wall_ms).max(0) as u64);
    let first_recorded_after = |after: Option<Duration>| {
        let after = after?;
        recorded
            .iter()
            .map(|&ms| since_stop(ms))
            .find(|&d| ms_of(d) > ms_of(after))
    };
    let step_after_first_ready = first_recorded_after(first_ready);
    let step_after_all_ready = first_recorded_after(all_ready);
    let recorded_while_away = recorded
        .iter()
        .filter(|&&ms| ms > stop_wall_ms && first_ready.is_some_and(|r| since_stop(ms) <= r))
        .count();
    let event_after_ready = first_ready.and_then(|r| {
        events
            .iter()
            .filter(|(at, e)| {
                at.duration_since(stopped_at) > r
                    && e["event"] == "step_completed"
                    && !steps_before.contains(&(e["request_id"].to_string(), event_key(e)))
            })
            .map(|(at, _)| at.duration_since(stopped_at))
            .min()
    });

    // ---- nothing left behind ----
    let survivor = survivors[0].0;
    let mut quiet_looks = 0;
    let quiet_deadline = Instant::now() + Duration::from_secs(30);
    while quiet_looks < 2 {
        let busy: Vec<String> = match list_queues(survivor).await {
            Ok(qs) => qs
                .iter()
                .filter(|q| {
                    let n = q["name"].as_str().unwrap_or_default();
                    n == "onboarding.requests"
                        || n.starts_with("onboarding.steps.")
                        || n.starts_with("onboarding.delay.")
                })
                .filter(|q| {
                    q["messages_ready"].as_i64().unwrap_or(0) != 0
                        || q["messages_unacknowledged"].as_i64().unwrap_or(0) != 0
                })
                .map(|q| q.to_string())
                .collect(),
            Err(e) => vec![e],
        };
        quiet_looks = if busy.is_empty() { quiet_looks + 1 } else { 0 };
        if Instant::now() > quiet_deadline {
            problems.push(format!(
                "worker queues not drained 30 s after the last final event: {busy:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let leaders_after: BTreeMap<String, String> = list_queues(survivor)
        .await
        .unwrap_or_default()
        .iter()
        .filter(|q| {
            let n = q["name"].as_str().unwrap_or_default();
            n.starts_with("onboarding.steps.") || n == "onboarding.requests"
        })
        .map(|q| {
            (
                q["name"].as_str().unwrap_or("?").to_string(),
                q["leader"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }

    // ---- metrics of every worker, then stop them ----
    let mut repeats = 0.0;
    let mut sessions_failed = 0.0;
    let mut dropped = 0.0;
    for (_, port) in &workers.0 {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            let text = r.text().await.unwrap_or_default();
            repeats += metric_value(&text, "onboarding_create_repeats_total", &[]).unwrap_or(0.0);
            sessions_failed +=
                metric_value(&text, "onboarding_broker_session_failures_total", &[]).unwrap_or(0.0);
            dropped +=
                metric_value(&text, "onboarding_duplicates_dropped_total", &[]).unwrap_or(0.0);
        }
    }
    drop(workers);
    reader.abort();

    // ---- events: each request's in order, its completed there ----
    let mut copies = 0;
    let mut completed_events = 0;
    for r in &requests {
        let seen: Vec<String> = events
            .iter()
            .filter(|(_, e)| e["request_id"] == r.id.as_str())
            .map(|(_, e)| event_key(e))
            .collect();
        completed_events += seen.iter().filter(|k| *k == "completed").count();
        match in_order(&seen, &r.expected) {
            Ok(c) => copies += c,
            Err(e) => problems.push(format!("{}: events {seen:?}: {e}", r.id)),
        }
    }
    let failed: Vec<&Value> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e["event"] == "failed")
        .collect();
    if !failed.is_empty() {
        problems.push(format!("failed events: {failed:?}"));
    }
    let strangers: Vec<&Value> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| !e["request_id"].as_str().is_some_and(|id| ids.contains(id)))
        .collect();
    if !strangers.is_empty() {
        problems.push(format!("events of no request of this run: {strangers:?}"));
    }

    // ---- the ledger: each completed ----
    let ledger = onboarding_worker::ledger::open(&pg.url)
        .await
        .expect("the run's ledger opens");
    for id in &ids {
        match ledger.get(id).await {
            Ok(Some(rec)) if rec.status == Status::Completed => {}
            other => problems.push(format!(
                "{id}: not completed in the ledger: {:?}",
                other.map(|o| o.map(|r| (r.status, r.cursor)))
            )),
        }
    }

    // ---- the providers: one of each create ----
    let tenants = sandbox.sharespine.tenants();
    let cs = &sandbox.computestacks;
    let (cs_users, cs_credentials, cs_orders) = (cs.users(), cs.api_credentials(), cs.orders());
    for r in &requests {
        if let Some(reference) = &r.sharespine_ref {
            let mine: Vec<_> = tenants
                .iter()
                .filter(|t| &t.customer_reference == reference)
                .collect();
            if mine.len() != 1 {
                problems.push(format!("{}: {} tenants for {reference}", r.id, mine.len()));
                continue;
            }
            let t = mine[0];
            if t.logins() != ["anna", "bob"] || t.connections.len() != 1 || t.login_urls.len() != 1
            {
                problems.push(format!(
                    "{}: tenant {} has users {:?}, {} connections, {} login URLs",
                    r.id,
                    t.code_name,
                    t.logins(),
                    t.connections.len(),
                    t.login_urls.len()
                ));
            }
        }
        if let Some((email, project)) = &r.cs {
            let users: Vec<i64> = cs_users
                .iter()
                .filter(|u| u.email.eq_ignore_ascii_case(email))
                .map(|u| u.id)
                .collect();
            let credentials = cs_credentials
                .iter()
                .filter(|c| users.contains(&c.user_id))
                .count();
            let orders = cs_orders
                .iter()
                .filter(|o| &o.project_name == project)
                .count();
            if (users.len(), credentials, orders) != (1, 1, 1) {
                problems.push(format!(
                    "{}: {} users, {credentials} credentials, {orders} orders",
                    r.id,
                    users.len()
                ));
            }
        }
    }
    let ss_calls = sandbox.sharespine.knobs.all_calls();
    let cs_calls = cs.knobs.all_calls();
    let create_calls = format!(
        "tenant {}, user {}, connection {}, login URL {}; CS user {}, credential {}, order {}",
        ss_calls.get("POST /reseller/tenant").copied().unwrap_or(0),
        ss_calls
            .get("POST /reseller/tenant/{code_name}/user")
            .copied()
            .unwrap_or(0),
        ss_calls
            .iter()
            .filter(|(k, _)| k.starts_with("POST") && k.contains("connection"))
            .map(|(_, v)| v)
            .sum::<u64>(),
        ss_calls
            .iter()
            .filter(|(k, _)| k.starts_with("POST") && k.contains("login"))
            .map(|(_, v)| v)
            .sum::<u64>(),
        cs_calls.get("POST /api/admin/users").copied().unwrap_or(0),
        cs_calls
            .get("POST /api/users/{id}/api_credentials")
            .copied()
            .unwrap_or(0),
        cs_calls.get("POST /api/orders").copied().unwrap_or(0),
    );

    // ---- onboarding.dead ----
    let dead = match Admin::connect(&survivor_urls[0]).await {
        Ok(a) => {
            let d = a.dead_list().await.expect("list dead");
            a.close().await;
            d
        }
        Err(e) => {
            problems.push(format!("no admin connection for onboarding.dead: {e}"));
            Vec::new()
        }
    };
    if !dead.is_empty() {
        problems.push(format!("onboarding.dead holds {dead:?}"));
    }
    if let Some(a) = admin.take() {
        a.close().await;
    }

    let secs = |d: Duration| format!("{:.1}", d.as_secs_f64());
    let list = |v: &[Option<Duration>]| {
        v.iter()
            .map(|r| r.map(secs).unwrap_or_else(|| "never".into()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let gaps: Vec<Option<Duration>> = noticed
        .iter()
        .zip(&ready_again)
        .map(|(n, r)| Some(r.as_ref()?.saturating_sub(*n.as_ref()?)))
        .collect();
    let opt = |d: Option<Duration>| d.map(secs).unwrap_or_else(|| "never".into());
    println!(
        "cluster: 3 nodes started in {} s; {victim} led {victim_leads:?} and held the {WORKERS} workers' connections; \
         stopped with {completed_before} of {} completed",
        secs(cluster_start_took),
        requests.len()
    );
    println!(
        "cluster: leaders after the stop {leaders_after:?}; publish retries {publish_retries}; events reader reconnects {}",
        reader_reconnects.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "figures: times from the start of the stop ({how:?}) of {victim}: the stop returned {}; workers not ready [{}]; \
         ready on another node [{}] (all by {}; without a broker for [{}]); \
         first step recorded after the first was ready {}, after all were ready {} \
         ({recorded_while_away} steps recorded from the start of the stop until the first was ready); first new step_completed event received {}; \
         half the requests published during the outage by {}; node restarted at {}, back at {}; all {} completed by {} \
         (the loop noticed at {}; {completed_events} completed events, {copies} event copies); create calls: {create_calls}; \
         create repeats counted {repeats}, duplicates dropped {dropped}, broker session failures {sessions_failed}; \
         load {} s, total run {} s (seconds throughout)",
        secs(stop_took),
        list(&noticed),
        list(&ready_again),
        opt(all_ready),
        list(&gaps),
        opt(step_after_first_ready),
        opt(step_after_all_ready),
        opt(event_after_ready),
        secs(published_during_outage_by),
        secs(restart_at),
        secs(back_at),
        requests.len(),
        opt(last_final),
        secs(finals_at),
        secs(load_started.elapsed()),
        secs(run_started.elapsed()),
    );
    drop(pg);
    let keep = !problems.is_empty() || std::env::var_os("CLUSTER_KEEP_LOGS").is_some();
    if keep {
        println!("cluster: worker logs kept in {}", log_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&log_dir);
    }
    drop(guard);
    assert!(
        problems.is_empty(),
        "cluster run (worker logs in {}):\n- {}",
        log_dir.display(),
        problems.join("\n- ")
    );
}
