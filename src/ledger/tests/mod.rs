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

mod leases;
mod requests;
mod schema;
mod sharing;
mod steps;

use leases::*;
use requests::*;
use schema::*;
use sharing::*;
use steps::*;

/// A fresh ledger location.
pub(super) struct Store {
    pub url: String,
    /// Keeps an SQLite ledger's directory alive.
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    /// Opens the ledger through [`open`], as a worker would.
    pub async fn open(&self) -> Arc<dyn Ledger> {
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
        writes_of_every_kind_made_at_once_each_get_their_own_answer,
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
        steps_read_back_in_the_order_recorded,
        recording_a_step_notes_progress_while_running,
        a_step_of_an_unknown_request_is_not_recorded,
        an_unreadable_request_fails_its_own_claim_not_steps_recorded_beside_it,
        both_backends_have_the_same_tables_and_columns,
        a_ledger_of_the_previous_version_opens_and_keeps_working,
    ],
    postgres: [
        a_claim_that_waited_for_a_step_record_sees_the_step,
        a_row_locked_by_a_hung_transaction_holds_up_only_its_own_write,
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

pub(super) fn req(id: &str) -> NewRequest {
    NewRequest {
        request_id: id.into(),
        provider: ProviderId::Sharespine,
        operation: Operation::Onboard,
        body: b"{}".to_vec(),
    }
}

pub(super) fn map(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub(super) const MINUTE: Duration = Duration::from_secs(60);
