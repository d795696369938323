//! SQLite ledger: one file shared by every worker process on a host.
//!
//! WAL journal (readers don't block the writer), `synchronous = NORMAL` (safe
//! under WAL) and a busy timeout. Every write is a single statement (claims
//! decide and take the lease in one `UPDATE ... RETURNING`): a deferred
//! transaction that reads and then upgrades to a write lock fails at once with
//! "database is locked" when several processes share the file, and one
//! statement is one round trip to SQLite's thread. Schema changes run in a
//! `BEGIN IMMEDIATE` transaction.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::{
    now_ms, parse_map, Accept, Claim, Finish, Ledger, LedgerError, NewRequest, Progress,
    RequestRecord, Status,
};

const SCHEMA: &[&str] = &[
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

/// Changes after the first schema, applied once each in order; the file's
/// `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    "ALTER TABLE requests ADD COLUMN lease_seq INTEGER",
    // Set by a claim that found an unreleased, expired lease of the same message.
    "ALTER TABLE requests ADD COLUMN lease_interrupted INTEGER NOT NULL DEFAULT 0",
    // Private values now live with the step that produced them (as outputs do),
    // so recording a step is one INSERT.
    "ALTER TABLE steps ADD COLUMN secrets TEXT NOT NULL DEFAULT '{}'",
];

/// Every column a [`RequestRecord`] is built from (`requests.outputs` and
/// `.secrets` are no longer written: outputs are merged from `steps`).
const REQUEST_COLUMNS: &str = "request_id, provider, operation, body, status, cursor, lease_owner, lease_until,
    lease_seq, lease_interrupted, current_step, current_index, waiting_until, final_event, accepted_at, updated_at";

pub struct SqliteLedger {
    pool: SqlitePool,
    /// One writer at a time in this process: SQLite has one write lock, and
    /// writers queued here wait without the busy handler's sleeps. Other
    /// processes on the same file still wait through `busy_timeout`.
    write: tokio::sync::Mutex<()>,
}

impl SqliteLedger {
    /// Opens (creating if missing) the file named by `url` (`sqlite://path`, `sqlite::memory:`).
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| LedgerError::Url(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    LedgerError::Url(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&mut *tx).await?;
        }
        let version: i64 = sqlx::query("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        for (i, stmt) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            sqlx::query(*stmt).execute(&mut *tx).await?;
            // PRAGMA takes no bind parameters; the value is our own integer.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "PRAGMA user_version = {}",
                i + 1
            )))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(SqliteLedger {
            pool,
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// The steps recorded for a request, in the order they were recorded.
    async fn steps(&self, request_id: &str) -> Result<Vec<SqliteRow>, LedgerError> {
        Ok(sqlx::query(
            "SELECT step_key, outputs, secrets FROM steps WHERE request_id = ? ORDER BY completed_at, rowid",
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn record(&self, row: &SqliteRow) -> Result<RequestRecord, LedgerError> {
        let request_id: String = row.try_get("request_id")?;
        let steps = self.steps(&request_id).await?;
        record_from(row, &steps)
    }
}

/// The request's steps as one JSON array of `[step_key, outputs, secrets]`, in
/// the order they were recorded: lets a claim return everything in one statement.
const STEPS_JSON: &str = "(SELECT json_group_array(json_array(s.step_key, s.outputs, s.secrets)) FROM
    (SELECT step_key, outputs, secrets FROM steps WHERE request_id = requests.request_id ORDER BY completed_at, rowid) AS s)
    AS steps_json";

/// A record from a row that carries `steps_json`.
fn record_from_json(row: &SqliteRow) -> Result<RequestRecord, LedgerError> {
    let request_id: String = row.try_get("request_id")?;
    let text: String = row.try_get("steps_json")?;
    let corrupt = |message: String| LedgerError::Corrupt {
        request_id: request_id.clone(),
        message,
    };
    let steps: Vec<(String, String, String)> =
        serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let mut record = record_from(row, &[])?;
    for (key, outputs, secrets) in steps {
        record.done_steps.push(key);
        record.outputs.extend(parse_map(&request_id, &outputs)?);
        record.secrets.extend(parse_map(&request_id, &secrets)?);
    }
    Ok(record)
}

/// A request's record: its row, with outputs and private values merged from
/// its steps in the order they were recorded (a later step's key wins).
fn record_from(row: &SqliteRow, steps: &[SqliteRow]) -> Result<RequestRecord, LedgerError> {
    let request_id: String = row.try_get("request_id")?;
    let status: String = row.try_get("status")?;
    let status = Status::parse(&status).ok_or_else(|| LedgerError::Corrupt {
        request_id: request_id.clone(),
        message: format!("status {status:?}"),
    })?;
    let mut outputs = Map::new();
    let mut secrets = Map::new();
    let mut done_steps = Vec::with_capacity(steps.len());
    for step in steps {
        done_steps.push(step.try_get::<String, _>(0)?);
        outputs.extend(parse_map(&request_id, &step.try_get::<String, _>(1)?)?);
        secrets.extend(parse_map(&request_id, &step.try_get::<String, _>(2)?)?);
    }
    Ok(RequestRecord {
        provider: row.try_get("provider")?,
        operation: row.try_get("operation")?,
        body: row.try_get("body")?,
        status,
        cursor: row.try_get("cursor")?,
        outputs,
        secrets,
        done_steps,
        current_step: row.try_get("current_step")?,
        current_index: row.try_get("current_index")?,
        waiting_until_ms: row.try_get("waiting_until")?,
        final_event: row.try_get("final_event")?,
        accepted_at_ms: row.try_get("accepted_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        request_id,
    })
}

// Every write below is a single statement (its own transaction): one round
// trip to SQLite's thread, the write lock held for one statement only.
#[async_trait]
impl Ledger for SqliteLedger {
    async fn accept(&self, request: &NewRequest) -> Result<Accept, LedgerError> {
        let now = now_ms();
        let inserted = {
            let _writer = self.write.lock().await;
            sqlx::query(
                "INSERT INTO requests (request_id, provider, operation, body, status, cursor, accepted_at, updated_at)
                 VALUES (?, ?, ?, ?, 'running', 0, ?, ?) ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(&request.request_id)
            .bind(&request.provider)
            .bind(&request.operation)
            .bind(&request.body)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected()
        };
        if inserted == 1 {
            return Ok(Accept::New {
                accepted_at_ms: now,
            });
        }
        let record = self
            .get(&request.request_id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok(Accept::Existing(Box::new(record)))
    }

    async fn claim(
        &self,
        request_id: &str,
        seq: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, LedgerError> {
        let now = now_ms();
        // Granted when not stale and the lease is free, expired, ours, or held
        // for an older message (whose successor this is). Every SET expression
        // reads the row as it was before the statement.
        let granted = {
            let _writer = self.write.lock().await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE requests SET
                   lease_interrupted = (lease_owner IS NOT NULL AND lease_owner <> ?2 AND lease_until <= ?3
                                        AND ?1 <= COALESCE(lease_seq, 9223372036854775807)),
                   lease_owner = ?2, lease_until = ?4, lease_seq = ?1, cursor = MAX(cursor, ?1),
                   waiting_until = NULL, updated_at = ?3
                 WHERE request_id = ?5 AND cursor <= ?1
                   AND NOT (lease_owner IS NOT NULL AND lease_owner <> ?2 AND lease_until > ?3
                            AND ?1 <= COALESCE(lease_seq, 9223372036854775807))
                 RETURNING {REQUEST_COLUMNS}, {STEPS_JSON}"
            )))
            .bind(seq)
            .bind(owner)
            .bind(now)
            .bind(now + lease.as_millis() as i64)
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?
        };
        if let Some(row) = granted {
            let interrupted: bool = row.try_get("lease_interrupted")?;
            let record = record_from_json(&row)?;
            return Ok(Claim::Granted {
                record: Box::new(record),
                interrupted,
            });
        }
        // Not granted: find out why (the rare path).
        let Some(row) =
            sqlx::query("SELECT cursor, lease_until FROM requests WHERE request_id = ?")
                .bind(request_id)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(Claim::Unknown);
        };
        let cursor: i64 = row.try_get(0)?;
        if seq < cursor {
            return Ok(Claim::Stale);
        }
        let until: Option<i64> = row.try_get(1)?;
        Ok(Claim::Busy {
            until_ms: until.unwrap_or(now),
        })
    }

    async fn record_step(
        &self,
        request_id: &str,
        step_key: &str,
        outputs: &Map<String, Value>,
        secrets: &Map<String, Value>,
        progress: &Progress,
    ) -> Result<(), LedgerError> {
        let now = now_ms();
        let _writer = self.write.lock().await;
        // What makes the step never called again. Progress is not written here:
        // the next claim clears any wait, and `status` derives the next step
        // from the plan and the steps recorded.
        let _ = progress;
        sqlx::query(
            "INSERT INTO steps (request_id, step_key, outputs, secrets, completed_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (request_id, step_key) DO NOTHING",
        )
        .bind(request_id)
        .bind(step_key)
        .bind(Value::Object(outputs.clone()).to_string())
        .bind(Value::Object(secrets.clone()).to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn finish(&self, request_id: &str, finish: &Finish) -> Result<(), LedgerError> {
        let _writer = self.write.lock().await;
        sqlx::query(
            "UPDATE requests SET status = ?, final_event = ?, current_step = ?, current_index = ?,
             waiting_until = NULL, updated_at = ? WHERE request_id = ?",
        )
        .bind(finish.status.as_str())
        .bind(&finish.final_event)
        .bind(&finish.step)
        .bind(finish.index)
        .bind(now_ms())
        .bind(request_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn advance(
        &self,
        request_id: &str,
        owner: &str,
        next_seq: i64,
        progress: &Progress,
    ) -> Result<(), LedgerError> {
        let _writer = self.write.lock().await;
        sqlx::query(
            "UPDATE requests SET cursor = MAX(cursor, ?1),
               lease_until = CASE WHEN lease_owner = ?2 THEN NULL ELSE lease_until END,
               lease_owner = CASE WHEN lease_owner = ?2 THEN NULL ELSE lease_owner END,
               current_step = CASE WHEN status = 'running' AND ?1 >= cursor THEN COALESCE(?3, current_step) ELSE current_step END,
               current_index = CASE WHEN status = 'running' AND ?1 >= cursor THEN COALESCE(?4, current_index) ELSE current_index END,
               waiting_until = CASE WHEN status != 'running' THEN NULL WHEN ?1 >= cursor THEN ?5 ELSE waiting_until END,
               updated_at = ?6
             WHERE request_id = ?7",
        )
        .bind(next_seq)
        .bind(owner)
        .bind(&progress.current_step)
        .bind(progress.current_index)
        .bind(progress.waiting_until_ms)
        .bind(now_ms())
        .bind(request_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn redrive(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let row = {
            let _writer = self.write.lock().await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE requests SET status = 'running', final_event = NULL, lease_owner = NULL, lease_until = NULL,
                 updated_at = ? WHERE request_id = ? AND status = 'failed' RETURNING {REQUEST_COLUMNS}"
            )))
            .bind(now_ms())
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?
        };
        match row {
            Some(row) => Ok(Some(self.record(&row).await?)),
            None => Ok(None),
        }
    }

    async fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        // One read transaction, so the request and its steps agree.
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = ?"
        )))
        .bind(request_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            tx.rollback().await?;
            return Ok(None);
        };
        let steps = sqlx::query(
            "SELECT step_key, outputs, secrets FROM steps WHERE request_id = ? ORDER BY completed_at, rowid",
        )
        .bind(request_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(Some(record_from(&row, &steps)?))
    }

    async fn counts(&self) -> Result<(i64, i64), LedgerError> {
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN waiting_until IS NOT NULL AND waiting_until > ? THEN 1 ELSE 0 END), 0)
             FROM requests WHERE status = 'running'",
        )
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
}
