//! Recorded steps: outputs and private values merged once, in the order recorded; progress noted.

use super::*;

pub(super) async fn recorded_steps_merge_outputs_once(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let out = map(&[("code_name", "x-1".into())]);
    let sec = map(&[("api_password", "pw".into())]);
    l.record_step("r1", "create_tenant", &out, &sec, &Progress::default())
        .await
        .unwrap();
    let again = map(&[("code_name", "x-2".into())]);
    l.record_step(
        "r1",
        "create_tenant",
        &again,
        &Map::new(),
        &Progress::default(),
    )
    .await
    .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        r.outputs["code_name"], "x-1",
        "a second record of the same step changes nothing"
    );
    assert_eq!(r.secrets["api_password"], "pw");
    assert_eq!(r.done_steps, vec!["create_tenant".to_string()]);
    // A later step adds to (and may overwrite) what the earlier ones left.
    let out2 = map(&[
        ("code_name", "x-3".into()),
        ("user_id", json!(42)),
        ("nested", json!({"a": [1, null, "ü"]})),
    ]);
    l.record_step(
        "r1",
        "create_user#1",
        &out2,
        &Map::new(),
        &Progress::default(),
    )
    .await
    .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        r.outputs,
        map(&[
            ("code_name", "x-3".into()),
            ("user_id", json!(42)),
            ("nested", json!({"a": [1, null, "ü"]})),
        ])
    );
    assert_eq!(r.secrets, sec);
    let mut done = r.done_steps.clone();
    done.sort();
    assert_eq!(done, vec!["create_tenant", "create_user#1"]);
    // And a claim brings all of it.
    let Claim::Granted { record: c, .. } = l.claim("r1", 0, 0, "a", MINUTE).await.unwrap() else {
        panic!("not granted")
    };
    assert_eq!((c.outputs, c.secrets), (r.outputs, r.secrets));
    let mut claimed_done = c.done_steps;
    claimed_done.sort();
    assert_eq!(claimed_done, done);
}

pub(super) async fn steps_read_back_in_the_order_recorded(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    // Within one millisecond and against the alphabet: the order is the
    // recording's, and a later step's value wins.
    for (key, value) in [("z", 1), ("a", 2), ("m", 3)] {
        l.record_step(
            "r1",
            key,
            &map(&[("last", json!(value))]),
            &map(&[("secret", json!(value))]),
            &Progress::default(),
        )
        .await
        .unwrap();
    }
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(r.done_steps, ["z", "a", "m"]);
    assert_eq!(
        (&r.outputs["last"], &r.secrets["secret"]),
        (&json!(3), &json!(3))
    );
    let Claim::Granted { record: c, .. } = l.claim("r1", 0, 0, "a", MINUTE).await.unwrap() else {
        panic!("not granted")
    };
    assert_eq!(c.done_steps, ["z", "a", "m"]);
    assert_eq!(c.outputs["last"], json!(3));
}

pub(super) async fn recording_a_step_notes_progress_while_running(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let next = Progress {
        current_step: Some("create_user".into()),
        current_index: Some(1),
        waiting_until_ms: Some(now_ms() + 60_000),
    };
    l.record_step("r1", "create_tenant", &Map::new(), &Map::new(), &next)
        .await
        .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        (r.current_step, r.current_index, r.waiting_until_ms),
        (
            next.current_step.clone(),
            next.current_index,
            next.waiting_until_ms
        )
    );
    // A step recorded again still notes progress; none named keeps the step.
    l.record_step(
        "r1",
        "create_tenant",
        &Map::new(),
        &Map::new(),
        &Progress::default(),
    )
    .await
    .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.current_step.as_deref(),
            r.current_index,
            r.waiting_until_ms
        ),
        (Some("create_user"), Some(1), None)
    );
    // A finished request keeps its end.
    l.finish(
        "r1",
        &Finish {
            status: Status::Failed,
            final_event: "{}".into(),
            step: Some("create_user".into()),
            index: Some(1),
        },
    )
    .await
    .unwrap();
    l.record_step("r1", "create_user#1", &Map::new(), &Map::new(), &next)
        .await
        .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.status,
            r.current_step.as_deref(),
            r.current_index,
            r.waiting_until_ms
        ),
        (Status::Failed, Some("create_user"), Some(1), None)
    );
    assert_eq!(r.done_steps, ["create_tenant", "create_user#1"]);
}

pub(super) async fn a_step_of_an_unknown_request_is_not_recorded(s: Store) {
    let l = s.open().await;
    l.record_step(
        "nope",
        "create_tenant",
        &map(&[("k", "v".into())]),
        &Map::new(),
        &Progress::default(),
    )
    .await
    .unwrap();
    // Not even once the request is known (a wiped ledger's stray record).
    l.accept(&req("nope")).await.unwrap();
    let r = l.get("nope").await.unwrap().unwrap();
    assert!(r.done_steps.is_empty() && r.outputs.is_empty());
}

/// A request whose row cannot be read back (a word outside the contract,
/// written by hand or by a newer version) fails its own claims only: steps
/// recorded at the same moment for other requests, perhaps in the same
/// batch, are recorded.
pub(super) async fn an_unreadable_request_fails_its_own_claim_not_steps_recorded_beside_it(
    s: Store,
) {
    use sqlx::Connection;
    let l = s.open().await;
    l.accept(&req("bad")).await.unwrap();
    for i in 0..8 {
        l.accept(&req(&format!("good-{i}"))).await.unwrap();
    }
    let sql = "UPDATE requests SET provider = 'nope' WHERE request_id = 'bad'";
    if s.url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&s.url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(&s.url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    let lease = Duration::from_secs(30);
    let records = (0..8).map(|i| {
        let l = l.clone();
        async move {
            let id = format!("good-{i}");
            l.record_step(
                &id,
                "create_tenant",
                &map(&[("k", "v".into())]),
                &Map::new(),
                &Progress::default(),
            )
            .await
        }
    });
    let (claim, recorded) = tokio::join!(
        l.claim("bad", 1, 0, "w/1", lease),
        futures::future::join_all(records)
    );
    assert!(
        matches!(claim, Err(LedgerError::Corrupt { ref request_id, .. }) if request_id == "bad"),
        "{claim:?}"
    );
    for (i, r) in recorded.into_iter().enumerate() {
        r.unwrap();
        let got = l.get(&format!("good-{i}")).await.unwrap().unwrap();
        assert_eq!(got.done_steps, ["create_tenant"]);
    }
}
