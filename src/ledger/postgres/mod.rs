//! PostgreSQL ledger: one database shared by workers on many hosts.
//!
//! Every change to a request runs under that request's row lock. The writes
//! of a step's path go through group commit ([`batch`]): a batch takes the
//! locks of all its requests with one `SELECT ... FOR UPDATE` (in
//! `request_id` order), decides its claims by `ledger::lease`, and writes
//! each kind of write with one statement where it can; several batches run
//! at once. A redrive is a single `UPDATE` (which takes the same lock and,
//! under READ COMMITTED, re-evaluates its expressions against the newest
//! version of the row). So two workers claiming one step message are
//! serialised per request, and only one of them is granted the lease.
//!
//! The tables live in the first schema of the connection's `search_path`
//! (`public` unless the URL says otherwise, e.g.
//! `postgres://u:p@host/db?options[search_path]=ledger`), set up by
//! [`schema`].

mod batch;
mod schema;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgConnection, PgPool, Row};

use super::group_commit::GroupCommit;
use super::rows::{RequestRow, REQUEST_COLUMNS};
use super::{
    now_ms, Accept, Claim, Finish, Ledger, LedgerError, NewRequest, Progress, RequestRecord,
};

/// A request's steps (`ledger::rows`), for a statement on `requests`.
const STEPS: &str = "COALESCE((SELECT json_agg(json_build_array(s.step_key, s.outputs, s.secrets) ORDER BY s.recorded)
    FROM steps s WHERE s.request_id = requests.request_id)::TEXT, '[]') AS steps";

pub struct PostgresLedger {
    pool: PgPool,
    /// `pg:<key>`: this worker holds the session advisory lock
    /// (`LIVENESS_LOCK_CLASS`, key) for its life, on a connection of its own.
    worker_id: String,
    /// Keeps that connection (and the lock) up; stopped with the ledger.
    liveness: tokio::task::JoinHandle<()>,
    /// Every write but a redrive (group commit).
    batch: GroupCommit,
}

/// First key of the advisory locks that say a worker is alive ("ONBW").
const LIVENESS_LOCK_CLASS: i32 = 0x4f4e_4257;

impl Drop for PostgresLedger {
    fn drop(&mut self) {
        self.liveness.abort();
    }
}

/// Holds this worker's liveness lock on a connection of its own for as long
/// as the ledger lives, taking it again (on a new connection) whenever the
/// connection is lost, e.g. across a database restart. Checked every second:
/// meanwhile a claimer may take this worker for dead and take its leases.
async fn hold_liveness_lock(options: PgConnectOptions, key: i32, mut conn: Option<PgConnection>) {
    use sqlx::Connection;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let alive = match conn.as_mut() {
            Some(c) => c.ping().await.is_ok(),
            None => false,
        };
        if !alive {
            conn = take_liveness_lock(&options, key).await.ok();
        }
    }
}

/// A connection of its own holding this worker's liveness lock.
async fn take_liveness_lock(
    options: &PgConnectOptions,
    key: i32,
) -> Result<PgConnection, LedgerError> {
    use sqlx::Connection;
    let mut conn = PgConnection::connect_with(options).await?;
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(LIVENESS_LOCK_CLASS)
        .bind(key)
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

impl PostgresLedger {
    /// Connects to the database named by `url` (`postgres://` or
    /// `postgresql://`) and creates or migrates the schema.
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| LedgerError::Url(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // Bounds connecting too (sqlx retries a refused connection until then).
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // Our transactions never wait on anything but the database:
                    // one left idle means its client is gone; don't let it hold
                    // a request's row lock until TCP notices.
                    conn.execute("SET idle_in_transaction_session_timeout = '60s'")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        let mut tx = pool.begin().await?;
        schema::migrate(&mut tx).await?;
        tx.commit().await?;
        let key: i32 = rand::random();
        let conn = take_liveness_lock(&options, key).await?;
        let liveness = tokio::spawn(hold_liveness_lock(options, key, Some(conn)));
        Ok(PostgresLedger {
            batch: GroupCommit::start(batch::PgWriter { pool: pool.clone() }, batch::WRITERS),
            pool,
            worker_id: format!("pg:{key}"),
            liveness,
        })
    }
}

/// The records of `ids` (each unreadable one as its error).
async fn fetch_records(
    conn: &mut PgConnection,
    ids: &[&str],
) -> Result<HashMap<String, Result<RequestRecord, LedgerError>>, LedgerError> {
    let rows: Vec<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {REQUEST_COLUMNS}, {STEPS} FROM requests WHERE request_id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.request_id.clone(), RequestRecord::try_from(row)))
        .collect())
}

async fn fetch_record(
    conn: &mut PgConnection,
    request_id: &str,
) -> Result<Option<RequestRecord>, LedgerError> {
    sqlx::query_as::<_, RequestRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {REQUEST_COLUMNS}, {STEPS} FROM requests WHERE request_id = $1"
    )))
    .bind(request_id)
    .fetch_optional(conn)
    .await?
    .map(RequestRecord::try_from)
    .transpose()
}

/// The database's clock in ms since the epoch (at the moment of evaluation,
/// not the transaction's start).
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

#[async_trait]
impl Ledger for PostgresLedger {
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
        let Some(key) = owner
            .split('/')
            .next()
            .and_then(|id| id.strip_prefix("pg:"))
            .and_then(|k| k.parse::<i32>().ok())
        else {
            return Ok(true);
        };
        // Granted only if no session holds it: the holder's session is gone.
        // A transaction-level lock, released at once by the commit.
        let mut tx = self.pool.begin().await?;
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(LIVENESS_LOCK_CLASS)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(!free)
    }

    async fn redrive(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE requests SET status = 'running', final_event = NULL, lease_owner = NULL, lease_until = NULL,
             updated_at = $1 WHERE request_id = $2 AND status = 'failed'",
        )
        .bind(now_ms())
        .bind(request_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let result = if changed == 1 {
            fetch_record(&mut tx, request_id).await?
        } else {
            None
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError> {
        let mut conn = self.pool.acquire().await?;
        fetch_record(&mut conn, request_id).await
    }

    async fn counts(&self) -> Result<(i64, i64), LedgerError> {
        let row = sqlx::query(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE waiting_until > $1)
             FROM requests WHERE status = 'running'",
        )
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
}
