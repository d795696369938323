//! The SQLite ledger's schema: the first tables and every change since,
//! applied once each, in order, when a ledger is opened; the file's
//! `PRAGMA user_version` counts the changes applied. Append, never edit: a
//! file of any earlier version opens and is brought up to this one.

use sqlx::{Row, SqliteConnection};

use crate::ledger::LedgerError;

/// The first schema (of an empty file; a no-op on any other).
const FIRST: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS requests (
        request_id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        operation TEXT NOT NULL,
        body BLOB NOT NULL,
        status TEXT NOT NULL,
        cursor INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_until INTEGER,
        outputs TEXT NOT NULL DEFAULT '{}',
        secrets TEXT NOT NULL DEFAULT '{}',
        current_step TEXT,
        current_index INTEGER,
        waiting_until INTEGER,
        final_event TEXT,
        accepted_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS steps (
        request_id TEXT NOT NULL,
        step_key TEXT NOT NULL,
        outputs TEXT NOT NULL,
        completed_at INTEGER NOT NULL,
        PRIMARY KEY (request_id, step_key)
    )",
    "CREATE INDEX IF NOT EXISTS requests_status ON requests (status)",
];

/// Changes after the first schema.
const MIGRATIONS: &[&[&str]] = &[
    // 1
    &["ALTER TABLE requests ADD COLUMN lease_seq INTEGER"],
    // 2: set by a claim that found an unreleased, expired lease of the same
    // message (dropped in 5: the claim decides in Rust).
    &["ALTER TABLE requests ADD COLUMN lease_interrupted INTEGER NOT NULL DEFAULT 0"],
    // 3: private values live with the step that produced them, as outputs do.
    &["ALTER TABLE steps ADD COLUMN secrets TEXT NOT NULL DEFAULT '{}'"],
    // 4: the plan step the lease was taken for: only a later step's message
    // is the holder's successor and may take the lease over.
    &["ALTER TABLE requests ADD COLUMN lease_step INTEGER"],
    // 5: the data model shared with PostgreSQL (`ledger::rows`): the
    // requests' never-written `outputs` and `secrets` and the no longer
    // needed `lease_interrupted` dropped; steps numbered in the order they
    // were recorded (`recorded`, the rowid: each new row's is the largest
    // yet), renumbered from the order they were read in before.
    &[
        "ALTER TABLE requests DROP COLUMN outputs",
        "ALTER TABLE requests DROP COLUMN secrets",
        "ALTER TABLE requests DROP COLUMN lease_interrupted",
        "CREATE TABLE steps_5 (
            recorded INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            step_key TEXT NOT NULL,
            outputs TEXT NOT NULL,
            secrets TEXT NOT NULL DEFAULT '{}',
            completed_at INTEGER NOT NULL,
            UNIQUE (request_id, step_key)
        )",
        "INSERT INTO steps_5 (recorded, request_id, step_key, outputs, secrets, completed_at)
         SELECT row_number() OVER (ORDER BY completed_at, rowid), request_id, step_key, outputs, secrets, completed_at
         FROM steps",
        "DROP TABLE steps",
        "ALTER TABLE steps_5 RENAME TO steps",
    ],
];

/// Brings the schema up to date, in the caller's (`BEGIN IMMEDIATE`) transaction.
pub(super) async fn migrate(conn: &mut SqliteConnection) -> Result<(), LedgerError> {
    for stmt in FIRST {
        sqlx::query(*stmt).execute(&mut *conn).await?;
    }
    let version: i64 = sqlx::query("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    if version as usize > MIGRATIONS.len() {
        tracing::warn!(
            version,
            known = MIGRATIONS.len(),
            "the ledger's schema is newer than this worker's"
        );
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        for stmt in *migration {
            sqlx::query(*stmt).execute(&mut *conn).await?;
        }
        // PRAGMA takes no bind parameters; the value is our own integer.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {}",
            i + 1
        )))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
