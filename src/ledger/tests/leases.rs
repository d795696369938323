//! Claims and leases: stale copies, busy copies, the successor's takeover, interruptions, holders alive or gone.

use super::*;

pub(super) async fn an_older_step_message_is_stale_once_the_cursor_moved_on(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    assert!(matches!(
        l.claim("r1", 0, 0, "a", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Granted { .. }
    ));
    l.advance("r1", "a", 1, &Progress::default()).await.unwrap();
    assert!(matches!(
        l.claim("r1", 0, 0, "b", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Stale
    ));
    assert!(matches!(
        l.claim("r1", 1, 1, "b", Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Granted { .. }
    ));
    // The cursor never goes back.
    l.advance("r1", "b", 0, &Progress::default()).await.unwrap();
    assert_eq!(l.get("r1").await.unwrap().unwrap().cursor, 1);
}

pub(super) async fn a_held_lease_makes_a_second_copy_wait_until_it_expires(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let lease = Duration::from_millis(1000);
    let before = now_ms();
    assert!(matches!(
        l.claim("r1", 0, 0, "a", lease).await.unwrap(),
        Claim::Granted { .. }
    ));
    let after = now_ms();
    let until = match l.claim("r1", 0, 0, "b", lease).await.unwrap() {
        Claim::Busy { until_ms, holder } => {
            assert_eq!(holder, "a", "the holder is named");
            until_ms
        }
        other => panic!("{other:?}"),
    };
    assert!(
        (before + 1000..=after + 1000).contains(&until),
        "the lease runs until its holder's claim plus the lease: {until}"
    );
    let wait = until + 50 - now_ms();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    assert!(matches!(
        l.claim("r1", 0, 0, "b", lease).await.unwrap(),
        Claim::Granted { .. }
    ));
    // And now "a"'s copy waits for "b".
    assert!(matches!(
        l.claim("r1", 0, 0, "a", lease).await.unwrap(),
        Claim::Busy { .. }
    ));
}

pub(super) async fn a_live_worker_s_lease_holder_is_alive_and_a_gone_one_is_not(s: Store) {
    let l = s.open().await;
    let ours = format!("{}/claim-1", l.worker_id());
    assert!(l.holder_alive(&ours).await.unwrap(), "this worker is alive");
    let other = s.open().await;
    let theirs = format!("{}/claim-2", other.worker_id());
    assert!(
        l.holder_alive(&theirs).await.unwrap(),
        "another live worker is alive"
    );
    // A worker that is gone: a PostgreSQL key nobody holds; a process that
    // does not run on this host (pid 0 is never a user process).
    let gone = if l.worker_id().starts_with("pg:") {
        "pg:12345/claim-3".to_string()
    } else {
        let parts: Vec<&str> = l.worker_id().split(':').collect();
        format!("host:{}:pidns:{}:pid:0:1/claim-3", parts[1], parts[3])
    };
    assert!(!l.holder_alive(&gone).await.unwrap(), "{gone} is gone");
    for unknown in [
        "3f1e-uuid-of-an-older-version",
        "host:elsewhere:pidns:1:pid:1:1/x",
        "host:here:pid:1:1/an-older-form",
    ] {
        assert!(
            l.holder_alive(unknown).await.unwrap(),
            "{unknown}: cannot be told, so alive"
        );
    }
}

pub(super) async fn a_released_lease_lets_the_next_copy_in_at_once(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    assert!(matches!(
        l.claim("r1", 0, 0, "a", MINUTE).await.unwrap(),
        Claim::Granted { .. }
    ));
    // Someone else's advance releases nothing.
    l.advance("r1", "x", 0, &Progress::default()).await.unwrap();
    assert!(matches!(
        l.claim("r1", 0, 0, "b", MINUTE).await.unwrap(),
        Claim::Busy { .. }
    ));
    // The holder's does (here without moving the cursor, as a retry that
    // failed to publish would not).
    l.advance("r1", "a", 0, &Progress::default()).await.unwrap();
    assert!(matches!(
        l.claim("r1", 0, 0, "b", MINUTE).await.unwrap(),
        Claim::Granted { .. }
    ));
}

pub(super) async fn the_successor_of_the_lease_holder_takes_the_lease_over_at_once(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    assert!(matches!(
        l.claim("r1", 0, 0, "a", MINUTE).await.unwrap(),
        Claim::Granted { .. }
    ));
    // "a" published seq 1 and has not yet released its lease.
    assert!(matches!(
        l.claim("r1", 1, 1, "b", MINUTE).await.unwrap(),
        Claim::Granted { .. }
    ));
    // A second copy of seq 1 waits for "b".
    assert!(matches!(
        l.claim("r1", 1, 1, "c", MINUTE).await.unwrap(),
        Claim::Busy { .. }
    ));
    // "a" releasing late does not release "b"'s lease.
    l.advance("r1", "a", 1, &Progress::default()).await.unwrap();
    assert!(matches!(
        l.claim("r1", 1, 1, "c", MINUTE).await.unwrap(),
        Claim::Busy { .. }
    ));
}

pub(super) async fn a_newer_message_of_the_same_step_does_not_take_over_a_live_lease(s: Store) {
    // A forked chain: (seq 2, step 2) is calling the provider when (seq 3,
    // step 2) arrives. Only a later step's message is the holder's successor.
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    assert!(matches!(
        l.claim("r1", 2, 2, "a", MINUTE).await.unwrap(),
        Claim::Granted { .. }
    ));
    assert!(matches!(
        l.claim("r1", 3, 2, "b", MINUTE).await.unwrap(),
        Claim::Busy { .. }
    ));
    assert!(matches!(
        l.claim("r1", 3, 3, "c", MINUTE).await.unwrap(),
        Claim::Granted { .. }
    ));
}

pub(super) async fn claiming_a_newer_message_makes_older_copies_stale(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    assert!(matches!(
        l.claim("r1", 0, 0, "a", MINUTE).await.unwrap(),
        Claim::Granted { .. }
    ));
    // Seq 1 exists, so it was published: seq 0 is superseded even before "a" advances.
    assert!(matches!(
        l.claim("r1", 1, 1, "b", MINUTE).await.unwrap(),
        Claim::Granted { .. }
    ));
    assert!(matches!(
        l.claim("r1", 0, 0, "c", MINUTE).await.unwrap(),
        Claim::Stale
    ));
    assert_eq!(l.get("r1").await.unwrap().unwrap().cursor, 1);
}

pub(super) async fn an_expired_unreleased_lease_marks_the_next_claim_interrupted(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let short = Duration::from_millis(200);
    assert!(matches!(
        l.claim("r1", 0, 0, "a", short).await.unwrap(),
        Claim::Granted {
            interrupted: false,
            ..
        }
    ));
    tokio::time::sleep(Duration::from_millis(250)).await;
    // "a" died mid-step: its lease ran out unreleased.
    assert!(matches!(
        l.claim("r1", 0, 0, "b", short).await.unwrap(),
        Claim::Granted {
            interrupted: true,
            ..
        }
    ));
    // A released lease is no sign of a crash.
    l.advance("r1", "b", 1, &Progress::default()).await.unwrap();
    assert!(matches!(
        l.claim("r1", 1, 1, "c", short).await.unwrap(),
        Claim::Granted {
            interrupted: false,
            ..
        }
    ));
    // Nor is a predecessor's lease taken over by its successor.
    assert!(matches!(
        l.claim("r1", 2, 2, "d", short).await.unwrap(),
        Claim::Granted {
            interrupted: false,
            ..
        }
    ));
}

/// PostgreSQL: a claim that waited for the row lock of a concurrent
/// `record_step` sees the step that transaction recorded (a locking SELECT
/// reading the steps in the same statement would not: its snapshot is older
/// than the commit it waited for, and the step would be called again).
pub(super) async fn a_claim_that_waited_for_a_step_record_sees_the_step(s: Store) {
    use sqlx::{Connection, PgConnection};
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let mut raw = PgConnection::connect(&s.url).await.unwrap();
    let mut tx = raw.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM requests WHERE request_id = 'r1' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO steps (request_id, step_key, outputs, completed_at) VALUES ('r1', 'create_user#1', '{}', 0)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let claim = tokio::spawn({
        let l = l.clone();
        async move { l.claim("r1", 0, 0, "a", MINUTE).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!claim.is_finished(), "the claim waits for the row lock");
    tx.commit().await.unwrap();
    match claim.await.unwrap() {
        Claim::Granted { record: r, .. } => {
            assert_eq!(r.done_steps, vec!["create_user#1".to_string()])
        }
        other => panic!("{other:?}"),
    }
}
