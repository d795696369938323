//! SQLite ledger: one file shared by every worker process on a host.
//!
//! WAL journal (readers don't block the writer), `synchronous = NORMAL` (safe
//! under WAL), a busy timeout, and `BEGIN IMMEDIATE` for every write
//! transaction: deferred transactions that upgrade to a write lock fail at once
//! with "database is locked" when several processes share the file.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::{
    merged, now_ms, parse_map, Accept, Claim, Finish, Ledger, LedgerError, NewRequest, Progress,
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
const MIGRATIONS: &[&str] = &["ALTER TABLE requests ADD COLUMN lease_seq INTEGER"];

const SELECT_REQUEST: &str = "SELECT request_id, provider, operation, body, status, cursor, lease_owner, lease_until, lease_seq,
    outputs, secrets, current_step, current_index, waiting_until, final_event, accepted_at, updated_at
    FROM requests WHERE request_id = ?";

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

    async fn done_steps(
        &self,
        conn: &mut sqlx::SqliteConnection,
        request_id: &str,
    ) -> Result<Vec<String>, LedgerError> {
        let rows =
            sqlx::query("SELECT step_key FROM steps WHERE request_id = ? ORDER BY completed_at")
                .bind(request_id)
                .fetch_all(conn)
                .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }
}

fn record_from(row: &SqliteRow, done_steps: Vec<String>) -> Result<RequestRecord, LedgerError> {
    let request_id: String = row.try_get("request_id")?;
    let status: String = row.try_get("status")?;
    let status = Status::parse(&status).ok_or_else(|| LedgerError::Corrupt {
        request_id: request_id.clone(),
        message: format!("status {status:?}"),
    })?;
    let outputs: String = row.try_get("outputs")?;
    let secrets: String = row.try_get("secrets")?;
    Ok(RequestRecord {
        provider: row.try_get("provider")?,
        operation: row.try_get("operation")?,
        body: row.try_get("body")?,
        status,
        cursor: row.try_get("cursor")?,
        outputs: parse_map(&request_id, &outputs)?,
        secrets: parse_map(&request_id, &secrets)?,
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

#[async_trait]
impl Ledger for SqliteLedger {
    async fn accept(&self, request: &NewRequest) -> Result<Accept, LedgerError> {
        let now = now_ms();
        let _writer = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let inserted = sqlx::query(
            "INSERT INTO requests (request_id, provider, operation, body, status, cursor, accepted_at, updated_at)
             VALUES (?, ?, ?, ?, 'running', 0, ?, ?) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&request.request_id)
        .bind(&request.provider)
        .bind(&request.operation)
        .bind(&request.body)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let result = if inserted == 1 {
            Accept::New {
                accepted_at_ms: now,
            }
        } else {
            let row = sqlx::query(SELECT_REQUEST)
                .bind(&request.request_id)
                .fetch_one(&mut *tx)
                .await?;
            let done = self.done_steps(&mut tx, &request.request_id).await?;
            Accept::Existing(Box::new(record_from(&row, done)?))
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn claim(
        &self,
        request_id: &str,
        seq: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, LedgerError> {
        let now = now_ms();
        let _writer = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let Some(row) = sqlx::query(SELECT_REQUEST)
            .bind(request_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(Claim::Unknown);
        };
        let cursor: i64 = row.try_get("cursor")?;
        if seq < cursor {
            tx.rollback().await?;
            return Ok(Claim::Stale);
        }
        let holder: Option<String> = row.try_get("lease_owner")?;
        let until: Option<i64> = row.try_get("lease_until")?;
        let held_seq: Option<i64> = row.try_get("lease_seq")?;
        if let (Some(holder), Some(until)) = (holder, until) {
            // A newer message is the holder's own successor (published only
            // after the holder's provider work was recorded): it takes over.
            if holder != owner && until > now && seq <= held_seq.unwrap_or(i64::MAX) {
                tx.rollback().await?;
                return Ok(Claim::Busy { until_ms: until });
            }
        }
        sqlx::query(
            "UPDATE requests SET lease_owner = ?, lease_until = ?, lease_seq = ?3, cursor = MAX(cursor, ?3)
             WHERE request_id = ?4",
        )
            .bind(owner)
            .bind(now + lease.as_millis() as i64)
            .bind(seq)
            .bind(request_id)
            .execute(&mut *tx)
            .await?;
        let done = self.done_steps(&mut tx, request_id).await?;
        let record = record_from(&row, done)?;
        tx.commit().await?;
        Ok(Claim::Granted(Box::new(record)))
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let inserted = sqlx::query(
            "INSERT INTO steps (request_id, step_key, outputs, completed_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (request_id, step_key) DO NOTHING",
        )
        .bind(request_id)
        .bind(step_key)
        .bind(Value::Object(outputs.clone()).to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row = sqlx::query("SELECT outputs, secrets FROM requests WHERE request_id = ?")
            .bind(request_id)
            .fetch_one(&mut *tx)
            .await?;
        let (mut new_outputs, mut new_secrets): (String, String) =
            (row.try_get(0)?, row.try_get(1)?);
        if inserted == 1 {
            new_outputs = merged(request_id, &new_outputs, outputs)?;
            new_secrets = merged(request_id, &new_secrets, secrets)?;
        }
        sqlx::query(
            "UPDATE requests SET outputs = ?, secrets = ?, updated_at = ?,
               current_step = CASE WHEN status = 'running' THEN COALESCE(?, current_step) ELSE current_step END,
               current_index = CASE WHEN status = 'running' THEN COALESCE(?, current_index) ELSE current_index END,
               waiting_until = CASE WHEN status = 'running' THEN ? ELSE waiting_until END
             WHERE request_id = ?",
        )
        .bind(new_outputs)
        .bind(new_secrets)
        .bind(now)
        .bind(&progress.current_step)
        .bind(progress.current_index)
        .bind(progress.waiting_until_ms)
        .bind(request_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish(&self, request_id: &str, finish: &Finish) -> Result<(), LedgerError> {
        let _writer = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn redrive(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let _writer = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let changed = sqlx::query(
            "UPDATE requests SET status = 'running', final_event = NULL, lease_owner = NULL, lease_until = NULL,
             updated_at = ? WHERE request_id = ? AND status = 'failed'",
        )
        .bind(now_ms())
        .bind(request_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let result = if changed == 1 {
            let row = sqlx::query(SELECT_REQUEST)
                .bind(request_id)
                .fetch_one(&mut *tx)
                .await?;
            let done = self.done_steps(&mut tx, request_id).await?;
            Some(record_from(&row, done)?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let mut conn = self.pool.acquire().await?;
        let Some(row) = sqlx::query(SELECT_REQUEST)
            .bind(request_id)
            .fetch_optional(&mut *conn)
            .await?
        else {
            return Ok(None);
        };
        let done = self.done_steps(&mut conn, request_id).await?;
        Ok(Some(record_from(&row, done)?))
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
