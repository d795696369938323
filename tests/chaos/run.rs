//! One chaos run: the plan published while workers are killed and replaced,
//! then the checks (final events, creates, `onboarding.dead`, queues left
//! empty) and the figures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::creates::{create_calls, creates_of};
use crate::fleet::Fleet;
use crate::plan::{plan, Intent, Shape};
use crate::support::env::TestEnv;
use crate::support::pg::PgDatabase;
use crate::{seed, Backend, CS_PASSWORD, FINALS_DEADLINE, WORKERS};

pub async fn run_chaos(backend: Backend) {
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
        Backend::Postgres => Some(PgDatabase::create().await),
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
    let mut fleet = Fleet::new(&env, &ledger_url, log_dir.clone());
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
        busy = env.vhost.busy_queues().await;
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
        for c in creates_of(&env, r, failed_at) {
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
    let processes = fleet.started();
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
