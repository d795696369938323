//! The ledger's behaviour, written once and run against every backend.
//!
//! Each test is an async function taking a [`Store`] (a fresh, empty ledger
//! location it can open as often as it likes, as several workers would);
//! `ledger_tests!` instantiates it as `sqlite::NAME` and `postgres::NAME`.
//!
//! PostgreSQL tests use the server at `ONBOARDING_TEST_POSTGRES_URL` (default
//! [`pg::DEFAULT_URL`]); each gets a schema of its own (dropped afterwards),
//! so they run in parallel. An unreachable server fails them, saying how to
//! start it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::*;
use crate::domain::{Operation, ProviderId};

/// A fresh ledger location.
struct Store {
    url: String,
    /// Keeps an SQLite ledger's directory alive.
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    /// Opens the ledger through [`open`], as a worker would.
    async fn open(&self) -> Arc<dyn Ledger> {
        match open(&self.url).await {
            Ok(l) => l,
            Err(e) => panic!("opening the ledger failed: {e}"),
        }
    }
}

async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ledger.sqlite", dir.path().display());
    test(Store {
        url,
        _dir: Some(dir),
    })
    .await
}

async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let schema = pg::TestSchema::create().await;
    let store = Store {
        url: schema.url.clone(),
        _dir: None,
    };
    // Run in a task of its own so that a failing test still drops its schema.
    let outcome = tokio::spawn(test(store)).await;
    schema.drop().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task: {e}"),
        }
    }
}

mod pg {
    use std::time::Duration;

    use sqlx::{AssertSqlSafe, Connection, PgConnection};

    pub const DEFAULT_URL: &str = "postgres://onboarding:onboarding@127.0.0.1:5432/onboarding_test";

    fn base_url() -> String {
        std::env::var("ONBOARDING_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into())
    }

    fn redacted(url: &str) -> String {
        match url::Url::parse(url) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            Err(_) => "(unparseable url)".into(),
        }
    }

    fn fail_unreachable(url: &str, why: &str) -> ! {
        panic!(
            "PostgreSQL for the ledger tests is not reachable at {} ({why}).\n\
             Start it with `bash .ci/run` (or `bash scripts/services.sh`), which installs and starts \
             PostgreSQL and creates the role and database; or by hand:\n  \
             pg_ctlcluster --skip-systemctl-redirect 15 main start\n  \
             su postgres -c \"psql -c \\\"CREATE ROLE onboarding LOGIN PASSWORD 'onboarding' CREATEDB\\\"\"\n  \
             su postgres -c \"createdb -O onboarding onboarding_test\"\n\
             or point ONBOARDING_TEST_POSTGRES_URL at another server.",
            redacted(url)
        )
    }

    /// A schema of its own in the test database, named in the URL's
    /// `search_path` so the ledger creates its tables there.
    pub struct TestSchema {
        admin: PgConnection,
        name: String,
        pub url: String,
    }

    impl TestSchema {
        pub async fn create() -> TestSchema {
            let base = base_url();
            let mut admin =
                match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&base))
                    .await
                {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => fail_unreachable(&base, &e.to_string()),
                    Err(_) => fail_unreachable(&base, "no answer in 10 s"),
                };
            let name = format!("ledger_test_{}", uuid::Uuid::new_v4().simple());
            // The name is ours: "ledger_test_" and hex digits.
            sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {name}")))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("CREATE SCHEMA {name}: {e}"));
            let mut url = url::Url::parse(&base).expect("ONBOARDING_TEST_POSTGRES_URL");
            url.query_pairs_mut()
                .append_pair("options[search_path]", &name);
            TestSchema {
                admin,
                name,
                url: url.to_string(),
            }
        }

        pub async fn drop(mut self) {
            sqlx::query(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                self.name
            )))
            .execute(&mut self.admin)
            .await
            .unwrap_or_else(|e| panic!("DROP SCHEMA {}: {e}", self.name));
            let _ = self.admin.close().await;
        }
    }
}

/// `both: [tests...]` run on every backend; `postgres: [tests...]` on PostgreSQL only.
macro_rules! ledger_tests {
    (both: [$($name:ident),* $(,)?], postgres: [$($pg_name:ident),* $(,)?] $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::on_sqlite(super::$name).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::on_postgres(super::$name).await
                }
            )*
            $(
                #[tokio::test]
                async fn $pg_name() {
                    super::on_postgres(super::$pg_name).await
                }
            )*
        }
    };
}

ledger_tests! {
    both: [
        a_request_is_new_once_then_existing,
        the_request_is_kept_byte_for_byte,
        an_unknown_request_is_unknown_everywhere,
        an_older_step_message_is_stale_once_the_cursor_moved_on,
        claiming_a_newer_message_makes_older_copies_stale,
        a_newer_message_of_the_same_step_does_not_take_over_a_live_lease,
        an_expired_unreleased_lease_marks_the_next_claim_interrupted,
        a_late_advance_does_not_overwrite_newer_progress,
        a_held_lease_makes_a_second_copy_wait_until_it_expires,
        a_released_lease_lets_the_next_copy_in_at_once,
        the_successor_of_the_lease_holder_takes_the_lease_over_at_once,
        recorded_steps_merge_outputs_once,
        advance_notes_progress_while_running,
        a_finished_request_keeps_its_end_through_a_late_advance,
        only_a_failed_request_can_be_redriven,
        counts_are_running_and_waiting_requests,
        reopening_keeps_the_data,
        workers_starting_at_once_set_the_schema_up_once,
        two_processes_writing_one_ledger_all_succeed,
        concurrent_accepts_of_one_request_find_it_new_once,
        concurrent_claims_of_one_step_message_grant_exactly_one,
        concurrent_records_of_one_request_lose_no_outputs,
        a_live_worker_s_lease_holder_is_alive_and_a_gone_one_is_not,
    ],
    postgres: [
        a_claim_that_waited_for_a_step_record_sees_the_step,
        a_postgresql_url_names_the_same_ledger,
    ],
}

#[tokio::test]
async fn an_unsupported_url_is_refused_without_echoing_it() {
    let Err(e) = open("mysql://root:hunter2@db/ledger").await else {
        panic!("a mysql url was accepted");
    };
    let text = e.to_string();
    assert!(matches!(e, LedgerError::Url(_)), "{text}");
    assert!(text.contains("\"mysql\""), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

fn req(id: &str) -> NewRequest {
    NewRequest {
        request_id: id.into(),
        provider: ProviderId::Sharespine,
        operation: Operation::Onboard,
        body: b"{}".to_vec(),
    }
}

fn map(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

const MINUTE: Duration = Duration::from_secs(60);

async fn a_request_is_new_once_then_existing(s: Store) {
    let l = s.open().await;
    assert!(matches!(
        l.accept(&req("r1")).await.unwrap(),
        Accept::New { .. }
    ));
    match l.accept(&req("r1")).await.unwrap() {
        Accept::Existing(r) => assert_eq!((r.status, r.cursor), (Status::Running, 0)),
        other => panic!("{other:?}"),
    }
}

async fn the_request_is_kept_byte_for_byte(s: Store) {
    let l = s.open().await;
    // Not UTF-8, with a NUL: the body is bytes, not text.
    let body = vec![0xff, 0x00, b'{', 0xc3, 0x28, b'}', 0x80];
    let new = NewRequest {
        request_id: "r-ü/1".into(),
        provider: ProviderId::Computestacks,
        operation: Operation::LoginUrl,
        body: body.clone(),
    };
    let before = now_ms();
    let Accept::New { accepted_at_ms } = l.accept(&new).await.unwrap() else {
        panic!("not new")
    };
    assert!(accepted_at_ms >= before && accepted_at_ms <= now_ms());
    let r = l.get("r-ü/1").await.unwrap().unwrap();
    assert_eq!(r.request_id, "r-ü/1");
    assert_eq!(r.body, body);
    assert_eq!(
        (r.provider.as_str(), r.operation.as_str()),
        ("computestacks", "login_url")
    );
    assert_eq!((r.status, r.cursor), (Status::Running, 0));
    assert_eq!(
        (r.accepted_at_ms, r.updated_at_ms),
        (accepted_at_ms, accepted_at_ms)
    );
    assert!(r.outputs.is_empty() && r.secrets.is_empty() && r.done_steps.is_empty());
    assert_eq!(
        (
            r.current_step,
            r.current_index,
            r.waiting_until_ms,
            r.final_event
        ),
        (None, None, None, None)
    );
    // A copy with another body changes nothing.
    let copy = NewRequest {
        body: b"other".to_vec(),
        ..new
    };
    match l.accept(&copy).await.unwrap() {
        Accept::Existing(r) => assert_eq!(r.body, body),
        other => panic!("{other:?}"),
    }
}

async fn an_unknown_request_is_unknown_everywhere(s: Store) {
    let l = s.open().await;
    assert!(matches!(
        l.claim("nope", 0, 0, "a", MINUTE).await.unwrap(),
        Claim::Unknown
    ));
    assert!(l.get("nope").await.unwrap().is_none());
    assert!(l.redrive("nope").await.unwrap().is_none());
    // Neither of these makes it known.
    l.advance("nope", "a", 1, &Progress::default())
        .await
        .unwrap();
    l.finish(
        "nope",
        &Finish {
            status: Status::Completed,
            final_event: "{}".into(),
            step: None,
            index: None,
        },
    )
    .await
    .unwrap();
    assert!(l.get("nope").await.unwrap().is_none());
    assert_eq!(l.counts().await.unwrap(), (0, 0));
}

async fn an_older_step_message_is_stale_once_the_cursor_moved_on(s: Store) {
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

async fn a_held_lease_makes_a_second_copy_wait_until_it_expires(s: Store) {
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

async fn a_live_worker_s_lease_holder_is_alive_and_a_gone_one_is_not(s: Store) {
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

async fn a_released_lease_lets_the_next_copy_in_at_once(s: Store) {
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

async fn the_successor_of_the_lease_holder_takes_the_lease_over_at_once(s: Store) {
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

async fn a_newer_message_of_the_same_step_does_not_take_over_a_live_lease(s: Store) {
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

async fn claiming_a_newer_message_makes_older_copies_stale(s: Store) {
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

async fn an_expired_unreleased_lease_marks_the_next_claim_interrupted(s: Store) {
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

async fn a_late_advance_does_not_overwrite_newer_progress(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let waiting = |step: &str, until: i64| Progress {
        current_step: Some(step.into()),
        current_index: Some(3),
        waiting_until_ms: Some(until),
    };
    l.claim("r1", 1, 1, "b", MINUTE).await.unwrap();
    l.advance("r1", "b", 2, &waiting("poll_order", 2_000))
        .await
        .unwrap();
    // The predecessor's advance arrives after its successor's.
    l.advance(
        "r1",
        "a",
        1,
        &Progress {
            current_step: Some("create_order".into()),
            current_index: Some(2),
            waiting_until_ms: None,
        },
    )
    .await
    .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(r.current_step.as_deref(), Some("poll_order"));
    assert_eq!(r.waiting_until_ms, Some(2_000));
    assert_eq!(r.cursor, 2);
}

async fn recorded_steps_merge_outputs_once(s: Store) {
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

async fn advance_notes_progress_while_running(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let due = now_ms() + 60_000;
    l.advance(
        "r1",
        "a",
        1,
        &Progress {
            current_step: Some("wait_for_job".into()),
            current_index: Some(2),
            waiting_until_ms: Some(due),
        },
    )
    .await
    .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.cursor,
            r.current_step.as_deref(),
            r.current_index,
            r.waiting_until_ms
        ),
        (1, Some("wait_for_job"), Some(2), Some(due))
    );
    // No step named: the step stays, the wait is over.
    l.advance("r1", "a", 2, &Progress::default()).await.unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.cursor,
            r.current_step.as_deref(),
            r.current_index,
            r.waiting_until_ms
        ),
        (2, Some("wait_for_job"), Some(2), None)
    );
    assert!(r.updated_at_ms >= r.accepted_at_ms);
}

async fn a_finished_request_keeps_its_end_through_a_late_advance(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    l.advance(
        "r1",
        "a",
        1,
        &Progress {
            current_step: Some("create_user".into()),
            current_index: Some(1),
            waiting_until_ms: Some(now_ms() + 60_000),
        },
    )
    .await
    .unwrap();
    l.finish(
        "r1",
        &Finish {
            status: Status::Completed,
            final_event: r#"{"event":"completed"}"#.into(),
            step: None,
            index: Some(3),
        },
    )
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
        (Status::Completed, None, Some(3), None)
    );
    l.advance(
        "r1",
        "a",
        2,
        &Progress {
            current_step: Some("late".into()),
            current_index: Some(9),
            waiting_until_ms: Some(now_ms() + 60_000),
        },
    )
    .await
    .unwrap();
    let r = l.get("r1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.status,
            r.cursor,
            r.current_step.as_deref(),
            r.current_index,
            r.waiting_until_ms
        ),
        (Status::Completed, 2, None, Some(3), None)
    );
    assert_eq!(r.final_event.as_deref(), Some(r#"{"event":"completed"}"#));
    // A completed request cannot be redriven either.
    assert!(l.redrive("r1").await.unwrap().is_none());
    // A copy of a finished request's step message is still granted: the
    // engine then publishes its final event again.
    match l.claim("r1", 2, 2, "b", MINUTE).await.unwrap() {
        Claim::Granted { record: r, .. } => assert_eq!(r.status, Status::Completed),
        other => panic!("{other:?}"),
    }
}

async fn only_a_failed_request_can_be_redriven(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    assert!(l.redrive("r1").await.unwrap().is_none());
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
    let r = l.redrive("r1").await.unwrap().unwrap();
    assert_eq!((r.status, r.current_index), (Status::Running, Some(1)));
    assert!(r.final_event.is_none());
    // Once running again, not a second time.
    assert!(l.redrive("r1").await.unwrap().is_none());
}

async fn counts_are_running_and_waiting_requests(s: Store) {
    let l = s.open().await;
    assert_eq!(l.counts().await.unwrap(), (0, 0));
    for id in ["run", "wait", "waited", "done", "failed"] {
        l.accept(&req(id)).await.unwrap();
    }
    let waiting = |until: i64| Progress {
        current_step: Some("poll".into()),
        current_index: Some(1),
        waiting_until_ms: Some(until),
    };
    l.advance("wait", "a", 1, &waiting(now_ms() + 60_000))
        .await
        .unwrap();
    // Due already: no longer counted as waiting.
    l.advance("waited", "a", 1, &waiting(now_ms() - 1))
        .await
        .unwrap();
    for (id, status) in [("done", Status::Completed), ("failed", Status::Failed)] {
        l.finish(
            id,
            &Finish {
                status,
                final_event: "{}".into(),
                step: None,
                index: None,
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(l.counts().await.unwrap(), (3, 1));
}

async fn reopening_keeps_the_data(s: Store) {
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

async fn workers_starting_at_once_set_the_schema_up_once(s: Store) {
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

async fn two_processes_writing_one_ledger_all_succeed(s: Store) {
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

async fn concurrent_accepts_of_one_request_find_it_new_once(s: Store) {
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

async fn concurrent_claims_of_one_step_message_grant_exactly_one(s: Store) {
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

async fn concurrent_records_of_one_request_lose_no_outputs(s: Store) {
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

/// PostgreSQL: a claim that waited for the row lock of a concurrent
/// `record_step` sees the step that transaction recorded (a locking SELECT
/// reading the steps in the same statement would not: its snapshot is older
/// than the commit it waited for, and the step would be called again).
async fn a_claim_that_waited_for_a_step_record_sees_the_step(s: Store) {
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

/// PostgreSQL: `postgresql://` is the same as `postgres://`.
async fn a_postgresql_url_names_the_same_ledger(s: Store) {
    let l = s.open().await;
    l.accept(&req("r1")).await.unwrap();
    let url = s.url.replacen("postgres://", "postgresql://", 1);
    assert!(url.starts_with("postgresql://"), "{url}");
    let other = open(&url).await.unwrap();
    assert!(other.get("r1").await.unwrap().is_some());
}
