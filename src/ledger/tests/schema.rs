//! The schema: the same tables and columns in both backends, and a ledger
//! written by the previous version (before the one data model) opening and
//! working on.

use sqlx::{AssertSqlSafe, Connection};

use super::*;

const REQUEST_COLUMNS: &[&str] = &[
    "accepted_at",
    "body",
    "current_index",
    "current_step",
    "cursor",
    "final_event",
    "lease_owner",
    "lease_seq",
    "lease_step",
    "lease_until",
    "operation",
    "provider",
    "request_id",
    "status",
    "updated_at",
    "waiting_until",
];

const STEP_COLUMNS: &[&str] = &[
    "completed_at",
    "outputs",
    "recorded",
    "request_id",
    "secrets",
    "step_key",
];

fn sqlite_options(url: &str) -> sqlx::sqlite::SqliteConnectOptions {
    use std::str::FromStr;
    sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .unwrap()
        .create_if_missing(true)
}

/// A table's column names, sorted, read from the database's catalogue.
async fn columns(url: &str, table: &str) -> Vec<String> {
    let mut names: Vec<String> = if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect_with(&sqlite_options(url))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
            .bind(table)
            .fetch_all(&mut conn)
            .await
            .unwrap()
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(
            "SELECT column_name::TEXT FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(table)
        .fetch_all(&mut conn)
        .await
        .unwrap()
    };
    names.sort();
    names
}

async fn assert_the_one_model(url: &str) {
    assert_eq!(columns(url, "requests").await, REQUEST_COLUMNS);
    assert_eq!(columns(url, "steps").await, STEP_COLUMNS);
}

pub(super) async fn both_backends_have_the_same_tables_and_columns(s: Store) {
    s.open().await;
    assert_the_one_model(&s.url).await;
}

/// The previous version's SQLite file (`user_version` 4): outputs and
/// private values per step, `requests.outputs`/`.secrets` never written, the
/// interrupted flag a column.
const OLD_SQLITE: &[&str] = &[
    "CREATE TABLE requests (
        request_id TEXT PRIMARY KEY, provider TEXT NOT NULL, operation TEXT NOT NULL,
        body BLOB NOT NULL, status TEXT NOT NULL, cursor INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT, lease_until INTEGER,
        outputs TEXT NOT NULL DEFAULT '{}', secrets TEXT NOT NULL DEFAULT '{}',
        current_step TEXT, current_index INTEGER, waiting_until INTEGER, final_event TEXT,
        accepted_at INTEGER NOT NULL, updated_at INTEGER NOT NULL)",
    "CREATE TABLE steps (
        request_id TEXT NOT NULL, step_key TEXT NOT NULL, outputs TEXT NOT NULL,
        completed_at INTEGER NOT NULL, PRIMARY KEY (request_id, step_key))",
    "CREATE INDEX requests_status ON requests (status)",
    "ALTER TABLE requests ADD COLUMN lease_seq INTEGER",
    "ALTER TABLE requests ADD COLUMN lease_interrupted INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE steps ADD COLUMN secrets TEXT NOT NULL DEFAULT '{}'",
    "ALTER TABLE requests ADD COLUMN lease_step INTEGER",
    "PRAGMA user_version = 4",
    "INSERT INTO requests (request_id, provider, operation, body, status, cursor, lease_owner,
        lease_until, lease_seq, lease_interrupted, lease_step, current_step, current_index,
        accepted_at, updated_at)
     VALUES ('r1', 'sharespine', 'onboard', X'7b7d', 'running', 1, 'old-owner',
        9000000000000, 1, 1, 1, 'create_user', 1, 5, 6)",
    // Recorded in this order, the second in the same millisecond.
    "INSERT INTO steps (request_id, step_key, outputs, secrets, completed_at)
     VALUES ('r1', 'create_user#1', '{\"user_id\":42,\"shared\":\"first\"}', '{}', 7)",
    "INSERT INTO steps (request_id, step_key, outputs, secrets, completed_at)
     VALUES ('r1', 'create_tenant', '{\"code_name\":\"x-1\",\"shared\":\"second\"}', '{\"api_password\":\"pw\"}', 7)",
];

/// The previous version's PostgreSQL schema (`schema_version` 2): outputs
/// and private values merged into `requests` (in the order the steps were
/// recorded), each step's outputs written to `steps` but never read.
const OLD_POSTGRES: &[&str] = &[
    "CREATE TABLE schema_version (
        only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row), version INTEGER NOT NULL)",
    "INSERT INTO schema_version (version) VALUES (2)",
    "CREATE TABLE requests (
        request_id TEXT PRIMARY KEY, provider TEXT NOT NULL, operation TEXT NOT NULL,
        body BYTEA NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
        cursor BIGINT NOT NULL DEFAULT 0, lease_owner TEXT, lease_until BIGINT, lease_seq BIGINT,
        outputs TEXT NOT NULL DEFAULT '{}', secrets TEXT NOT NULL DEFAULT '{}',
        current_step TEXT, current_index BIGINT, waiting_until BIGINT, final_event TEXT,
        accepted_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE steps (
        request_id TEXT NOT NULL REFERENCES requests (request_id) ON DELETE CASCADE,
        step_key TEXT NOT NULL, outputs TEXT NOT NULL, completed_at BIGINT NOT NULL,
        PRIMARY KEY (request_id, step_key))",
    "CREATE INDEX requests_running ON requests (waiting_until) WHERE status = 'running'",
    "ALTER TABLE requests ADD COLUMN lease_step BIGINT",
    "INSERT INTO requests (request_id, provider, operation, body, status, cursor, lease_owner,
        lease_until, lease_seq, lease_step, outputs, secrets, current_step, current_index,
        accepted_at, updated_at)
     VALUES ('r1', 'sharespine', 'onboard', '\\x7b7d', 'running', 1, 'old-owner',
        9000000000000, 1, 1, '{\"user_id\":42,\"code_name\":\"x-1\",\"shared\":\"second\"}',
        '{\"api_password\":\"pw\"}', 'create_user', 1, 5, 6)",
    "INSERT INTO steps (request_id, step_key, outputs, completed_at)
     VALUES ('r1', 'create_user#1', '{\"user_id\":42,\"shared\":\"first\"}', 7)",
    "INSERT INTO steps (request_id, step_key, outputs, completed_at)
     VALUES ('r1', 'create_tenant', '{\"code_name\":\"x-1\",\"shared\":\"second\"}', 8)",
];

async fn write_old_ledger(url: &str) {
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect_with(&sqlite_options(url))
            .await
            .unwrap();
        let version: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
        assert!(
            parts[..2] >= [3, 35][..],
            "SQLite {version}: ALTER TABLE ... DROP COLUMN needs 3.35"
        );
        for stmt in OLD_SQLITE {
            sqlx::query(AssertSqlSafe(*stmt))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        for stmt in OLD_POSTGRES {
            sqlx::query(AssertSqlSafe(*stmt))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
    }
}

pub(super) async fn a_ledger_of_the_previous_version_opens_and_keeps_working(s: Store) {
    write_old_ledger(&s.url).await;
    let l = s.open().await;
    assert_the_one_model(&s.url).await;
    let expected_outputs = map(&[
        ("user_id", json!(42)),
        ("code_name", "x-1".into()),
        ("shared", "second".into()),
    ]);
    let expected_secrets = map(&[("api_password", "pw".into())]);
    let r = l.get("r1").await.unwrap().expect("the old request");
    assert_eq!(
        (
            r.provider,
            r.operation,
            r.body.as_slice(),
            r.status,
            r.cursor
        ),
        (
            ProviderId::Sharespine,
            Operation::Onboard,
            &b"{}"[..],
            Status::Running,
            1
        )
    );
    assert_eq!(
        (r.current_step.as_deref(), r.current_index),
        (Some("create_user"), Some(1))
    );
    assert_eq!((r.accepted_at_ms, r.updated_at_ms), (5, 6));
    assert_eq!(r.done_steps, ["create_user#1", "create_tenant"]);
    assert_eq!(r.outputs, expected_outputs);
    assert_eq!(r.secrets, expected_secrets);
    // The old lease still holds: a copy of its step waits, its successor takes over.
    assert!(matches!(
        l.claim("r1", 1, 1, "copy", MINUTE).await.unwrap(),
        Claim::Busy { holder, .. } if holder == "old-owner"
    ));
    let Claim::Granted {
        record,
        interrupted: false,
    } = l.claim("r1", 2, 2, "new", MINUTE).await.unwrap()
    else {
        panic!("the successor was not granted the lease")
    };
    assert_eq!(
        (&record.outputs, &record.secrets),
        (&expected_outputs, &expected_secrets)
    );
    // New steps go after the old ones, and their values over them.
    l.record_step(
        "r1",
        "create_order",
        &map(&[("shared", "third".into())]),
        &Map::new(),
        &Progress::default(),
    )
    .await
    .unwrap();
    drop(l);
    let r = s.open().await.get("r1").await.unwrap().unwrap();
    assert_eq!(
        r.done_steps,
        ["create_user#1", "create_tenant", "create_order"]
    );
    assert_eq!(r.outputs["shared"], "third");
    assert_eq!(r.outputs.len(), 3);
}
