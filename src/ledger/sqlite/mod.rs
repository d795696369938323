//! SQLite ledger: one file shared by every worker process on a host.
//!
//! WAL journal (readers don't block the writer), `synchronous = FULL` and a
//! busy timeout. FULL, not NORMAL: under WAL, NORMAL keeps the database
//! consistent but may lose the last commits in a power cut, and a recorded
//! create whose successor is already published must not be forgotten (it
//! would be made again). The bench measures what it costs.
//!
//! Every write of a step's path (accept, claim, record, advance, finish,
//! renew, abandon) goes through group commit ([`batch`]), one `BEGIN
//! IMMEDIATE` transaction per batch; a redrive is a single statement. Never a deferred transaction that reads and then writes: its
//! upgrade to the write lock fails at once with "database is locked" when
//! several processes share the file. Schema changes ([`schema`]) run in a
//! `BEGIN IMMEDIATE` transaction too. Lease times are this host's clock.

mod batch;
mod liveness;
mod schema;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ConstantBuilder, Retryable};
use serde_json::{Map, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use self::batch::SqliteWriter;
use super::group_commit::GroupCommit;
use super::rows::{RequestRow, REQUEST_COLUMNS};
use super::{
    now_ms, Accept, Claim, Finish, Ledger, LedgerError, NewRequest, Progress, RequestRecord,
};

/// A request's steps (`ledger::rows`), for a statement on `requests`.
const STEPS: &str = "(SELECT json_group_array(json_array(s.step_key, s.outputs, s.secrets)) FROM
    (SELECT step_key, outputs, secrets FROM steps WHERE request_id = requests.request_id ORDER BY recorded) AS s)
    AS steps";

pub struct SqliteLedger {
    pool: SqlitePool,
    /// One writer at a time in this process: SQLite has one write lock, and
    /// writers queued here wait without the busy handler's sleeps. Other
    /// processes on the same file still wait through `busy_timeout`.
    write: Arc<tokio::sync::Mutex<()>>,
    /// Every write but a redrive (group commit).
    batch: GroupCommit,
    /// `host:<name>:pidns:<inode>:pid:<pid>:<start time>`: the process,
    /// findable in `/proc` from the same host and pid namespace.
    worker_id: String,
}

/// SQLite's "database is busy".
fn is_busy(e: &LedgerError) -> bool {
    matches!(e, LedgerError::Database(sqlx::Error::Database(e)) if e.code().as_deref() == Some("5"))
}

impl SqliteLedger {
    /// Opens (creating if missing) the file named by `url` (`sqlite://path`, `sqlite::memory:`).
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        // Workers starting at once on a new file race to switch it to WAL,
        // and SQLite answers the losers SQLITE_BUSY without waiting on its
        // busy handler: try again for a few seconds.
        (|| Self::open_once(url))
            .retry(
                ConstantBuilder::new()
                    .with_delay(Duration::from_millis(100))
                    .with_max_times(50),
            )
            .when(is_busy)
            .await
    }

    async fn open_once(url: &str) -> Result<Self, LedgerError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| LedgerError::Url(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // 1 MiB of page cache per connection (the default is 2): the ledger is
            // read by primary key, and memory must not grow with the table.
            .pragma("cache_size", "-1024");
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
        schema::migrate(&mut tx).await?;
        tx.commit().await?;
        let write = Arc::new(tokio::sync::Mutex::new(()));
        Ok(SqliteLedger {
            batch: GroupCommit::start(SqliteWriter::new(pool.clone(), write.clone()), 1),
            pool,
            write,
            worker_id: liveness::this_worker_id(),
        })
    }
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn accept(&self, request: &NewRequest) -> Result<Accept, LedgerError> {
        self.batch.accept(request).await
    }

    async fn claim(
        &self,
        request_id: &str,
        seq: i64,
        step: u32,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, LedgerError> {
        self.batch.claim(request_id, seq, step, owner, lease).await
    }

    async fn record_step(
        &self,
        request_id: &str,
        step_key: &str,
        outputs: &Map<String, Value>,
        secrets: &Map<String, Value>,
        progress: &Progress,
    ) -> Result<(), LedgerError> {
        self.batch
            .record_step(request_id, step_key, outputs, secrets, progress)
            .await
    }

    async fn finish(&self, request_id: &str, finish: &Finish) -> Result<(), LedgerError> {
        self.batch.finish(request_id, finish).await
    }

    async fn advance(
        &self,
        request_id: &str,
        owner: &str,
        next_seq: i64,
        progress: &Progress,
    ) -> Result<(), LedgerError> {
        self.batch
            .advance(request_id, owner, next_seq, progress)
            .await
    }

    async fn renew(
        &self,
        request_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, LedgerError> {
        self.batch.renew(request_id, owner, lease).await
    }

    async fn abandon(&self, request_id: &str, owner: &str) -> Result<(), LedgerError> {
        self.batch.abandon(request_id, owner).await
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn worker_id(&self) -> &str {
        &self.worker_id
    }

    async fn holder_alive(&self, owner: &str) -> Result<bool, LedgerError> {
        Ok(liveness::holder_alive(owner))
    }

    async fn redrive(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let _writer = self.write.lock().await;
        sqlx::query_as::<_, RequestRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE requests SET status = 'running', final_event = NULL, lease_owner = NULL, lease_until = NULL,
             updated_at = ? WHERE request_id = ? AND status = 'failed' RETURNING {REQUEST_COLUMNS}, {STEPS}"
        )))
        .bind(now_ms())
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?
        .map(RequestRecord::try_from)
        .transpose()
    }

    async fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        // One statement, one snapshot: the request and its steps agree.
        sqlx::query_as::<_, RequestRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS}, {STEPS} FROM requests WHERE request_id = ?"
        )))
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?
        .map(RequestRecord::try_from)
        .transpose()
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
