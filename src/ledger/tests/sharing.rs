//! Several workers on one ledger: reopening, setting the schema up at once, concurrent writes.

use super::*;

pub(super) async fn reopening_keeps_the_data(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    l.record_step(
        "r1",
        "s",
        &map(&[("k", "v".into())]),
        &Map::new(),
        &Progress::default(),
    )
    .await
    .unwrap();
    drop(l);
    // A restart, and a second worker: the schema is found, not made again.
    let a = s.open().await;
    let b = s.open().await;
    for l in [a, b] {
        let r = l.get("r1").await.unwrap().unwrap();
        assert_eq!(
            (r.outputs["k"].as_str(), r.done_steps.len()),
            (Some("v"), 1)
        );
    }
}

pub(super) async fn workers_starting_at_once_set_the_schema_up_once(s: Store) {
    let s = Arc::new(s);
    let opens = (0..6).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            let l = s.open().await;
            l.accept(&req(&format!("r{i}"))).await.unwrap();
        })
    });
    for t in futures::future::join_all(opens).await {
        t.unwrap();
    }
    assert_eq!(s.open().await.counts().await.unwrap(), (6, 0));
}

pub(super) async fn two_processes_writing_one_ledger_all_succeed(s: Store) {
    // Two pools stand for two worker processes sharing the ledger.
    let a = s.open().await;
    let b = s.open().await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let l = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let id = format!("r{i}");
            l.accept(&req(&id)).await.unwrap();
            l.claim(&id, 0, 0, "w", Duration::from_secs(5))
                .await
                .unwrap();
            l.record_step(&id, "s", &Map::new(), &Map::new(), &Progress::default())
                .await
                .unwrap();
            l.advance(&id, "w", 1, &Progress::default()).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.counts().await.unwrap().0, 100);
    let r = b.get("r99").await.unwrap().unwrap();
    assert_eq!((r.cursor, r.done_steps.len()), (1, 1));
}

pub(super) async fn concurrent_accepts_of_one_request_find_it_new_once(s: Store) {
    let a = s.open().await;
    let b = s.open().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { l.accept(&req("r1")).await.unwrap() })
        })
        .collect();
    let mut new = 0;
    for t in futures::future::join_all(tasks).await {
        match t.unwrap() {
            Accept::New { .. } => new += 1,
            Accept::Existing(r) => assert_eq!(r.status, Status::Running),
        }
    }
    assert_eq!(new, 1, "one copy is new, the others find it");
}

pub(super) async fn concurrent_claims_of_one_step_message_grant_exactly_one(s: Store) {
    // Two pools on one ledger: workers on two hosts given copies of one message.
    let a = s.open().await;
    let b = s.open().await;
    a.accept(&req("r1")).await.unwrap();
    for round in 0..3i64 {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let l = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    l.claim("r1", round, round as u32, &format!("w{round}-{i}"), MINUTE)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let (mut granted, mut busy) = (0, 0);
        for t in futures::future::join_all(tasks).await {
            match t.unwrap() {
                Claim::Granted { .. } => granted += 1,
                Claim::Busy { .. } => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            (granted, busy),
            (1, 15),
            "round {round}: exactly one copy is granted"
        );
        // Its holder is not known here; the successor (round + 1) takes over.
    }
}

pub(super) async fn concurrent_records_of_one_request_lose_no_outputs(s: Store) {
    let a = s.open().await;
    let b = s.open().await;
    a.accept(&req("r1")).await.unwrap();
    // Eight steps, each recorded twice at once with different outputs (two
    // workers that both ran it): no step's outputs lost, none recorded twice.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            let step = i / 2;
            tokio::spawn(async move {
                let out = map(&[(format!("out{step}").as_str(), json!(i))]);
                let sec = map(&[(format!("sec{step}").as_str(), json!(i))]);
                l.record_step(
                    "r1",
                    &format!("step{step}"),
                    &out,
                    &sec,
                    &Progress::default(),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        t.unwrap();
    }
    let r = a.get("r1").await.unwrap().unwrap();
    let mut done = r.done_steps.clone();
    done.sort();
    assert_eq!(done, (0..8).map(|s| format!("step{s}")).collect::<Vec<_>>());
    assert_eq!((r.outputs.len(), r.secrets.len()), (8, 8));
    for step in 0..8i64 {
        let out = r.outputs[&format!("out{step}")].as_i64().unwrap();
        assert!(out / 2 == step, "out{step} = {out}");
        // Outputs and secrets of one step come from the same record.
        assert_eq!(r.secrets[&format!("sec{step}")], json!(out));
    }
}

/// PostgreSQL: `postgresql://` is the same as `postgres://`.
pub(super) async fn a_postgresql_url_names_the_same_ledger(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let url = s.url.replacen("postgres://", "postgresql://", 1);
    assert!(url.starts_with("postgresql://"), "{url}");
    let other = open(&url).await.unwrap();
    assert!(other.get("r1").await.unwrap().is_some());
}

/// Writes of every kind made at the same moment (so batched together where
/// the backend groups its commits) each get the answer they would get alone.
pub(super) async fn writes_of_every_kind_made_at_once_each_get_their_own_answer(s: Store) {
    let l = s.open().await;
    let lease = Duration::from_secs(30);
    for id in [
        "claimed",
        "advanced",
        "finished",
        "renewed",
        "abandoned",
        "stale",
    ] {
        l.accept(&req(id)).await.unwrap();
    }
    for (id, owner) in [
        ("advanced", "w/a"),
        ("renewed", "w/r"),
        ("abandoned", "w/x"),
    ] {
        assert!(matches!(
            l.claim(id, 1, 0, owner, lease).await.unwrap(),
            Claim::Granted { .. }
        ));
    }
    l.claim("stale", 5, 0, "w/s", lease).await.unwrap();
    let finish = Finish {
        status: Status::Completed,
        final_event: "{}".into(),
        step: None,
        index: None,
    };
    let progress = Progress::default();
    let outputs = map(&[("k", "v".into())]);
    let (fresh_request, claimed_request, none) = (req("fresh"), req("claimed"), Map::new());
    let (fresh, again, claimed, stale, recorded, advanced, finished, renewed, not_ours, abandoned) = tokio::join!(
        l.accept(&fresh_request),
        l.accept(&claimed_request),
        l.claim("claimed", 1, 0, "w/c", lease),
        l.claim("stale", 2, 0, "w/t", lease),
        l.record_step("claimed", "create_tenant", &outputs, &none, &progress),
        l.advance("advanced", "w/a", 2, &progress),
        l.finish("finished", &finish),
        l.renew("renewed", "w/r", lease),
        l.renew("renewed", "w/other", lease),
        l.abandon("abandoned", "w/x"),
    );
    assert!(matches!(fresh.unwrap(), Accept::New { .. }));
    assert!(matches!(again.unwrap(), Accept::Existing(r) if r.request_id == "claimed"));
    match claimed.unwrap() {
        Claim::Granted {
            record,
            interrupted,
        } => {
            assert!(!interrupted);
            assert_eq!(record.request_id, "claimed");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(stale.unwrap(), Claim::Stale));
    recorded.unwrap();
    advanced.unwrap();
    finished.unwrap();
    assert!(renewed.unwrap());
    assert!(!not_ours.unwrap());
    abandoned.unwrap();
    let get = |id: &'static str| {
        let l = l.clone();
        async move { l.get(id).await.unwrap().unwrap() }
    };
    assert_eq!(get("claimed").await.done_steps, vec!["create_tenant"]);
    assert_eq!(get("advanced").await.cursor, 2);
    assert_eq!(get("finished").await.status, Status::Completed);
    // The abandoned lease ran out: the next claim takes it over, interrupted.
    assert!(matches!(
        l.claim("abandoned", 1, 0, "w/y", lease).await.unwrap(),
        Claim::Granted {
            interrupted: true,
            ..
        }
    ));
    // The advanced lease was released: free for a copy, not interrupted.
    assert!(matches!(
        l.claim("advanced", 2, 0, "w/b", lease).await.unwrap(),
        Claim::Granted {
            interrupted: false,
            ..
        }
    ));
}

/// A request whose row another transaction keeps locked (its client hung)
/// holds up only its own write: the writes batched with it are written, and
/// it fails once the lock wait runs out.
pub(super) async fn a_row_locked_by_a_hung_transaction_holds_up_only_its_own_write(s: Store) {
    use sqlx::Connection;
    let l = s.open().await;
    for id in ["locked", "free-0", "free-1", "free-2"] {
        l.accept(&req(id)).await.unwrap();
    }
    let mut hung = sqlx::PgConnection::connect(&s.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut hung).await.unwrap();
    sqlx::query("SELECT 1 FROM requests WHERE request_id = 'locked' FOR UPDATE")
        .execute(&mut hung)
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let started = std::time::Instant::now();
    let others = (0..3).map(|i| {
        let l = l.clone();
        async move {
            let id = format!("free-{i}");
            l.record_step(
                &id,
                "create_tenant",
                &Map::new(),
                &Map::new(),
                &Progress::default(),
            )
            .await
            .map(|()| started.elapsed())
        }
    });
    let claim = async {
        let answer = l.claim("locked", 1, 0, "w/1", lease).await;
        (answer, started.elapsed())
    };
    let ((locked, claim_done), others) = tokio::join!(claim, futures::future::join_all(others));
    // Each written before the locked claim gave up, not held until then.
    for done in others {
        let done = done.unwrap();
        assert!(
            done < claim_done,
            "written at {done:?}, the claim gave up at {claim_done:?}"
        );
    }
    assert!(locked.is_err(), "{locked:?}");
    sqlx::query("ROLLBACK").execute(&mut hung).await.unwrap();
    assert!(matches!(
        l.claim("locked", 1, 0, "w/1", lease).await.unwrap(),
        Claim::Granted { .. }
    ));
}
