//! PostgreSQL ledger: one database shared by workers on many hosts.
//!
//! Every change to a request runs under that request's row lock: `claim` and
//! `record_step` take it with `SELECT ... FOR UPDATE` inside a transaction
//! (a claim is then decided by `ledger::lease`),
//! `advance`, `finish` and `redrive` are single `UPDATE`s (which take the same
//! lock and, under READ COMMITTED, re-evaluate their expressions against the
//! newest version of the row). So two workers claiming one step message are
//! serialised per request, and only one of them is granted the lease.
//!
//! The tables live in the first schema of the connection's `search_path`
//! (`public` unless the URL says otherwise, e.g.
//! `postgres://u:p@host/db?options[search_path]=ledger`), set up by
//! [`schema`].

mod schema;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgConnection, PgPool, Row};

use super::lease::{self, Claimant, Decision, LeaseState};
use super::rows::{object_text, RequestRow, RECORD_PROGRESS, REQUEST_COLUMNS};
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
            pool,
            worker_id: format!("pg:{key}"),
            liveness,
        })
    }
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

/// A request's lease, with the database's clock when it was read.
#[derive(sqlx::FromRow)]
struct LeaseNow {
    #[sqlx(flatten)]
    lease: LeaseState,
    now: i64,
}

/// The database's clock in ms since the epoch (at the moment of evaluation,
/// not the transaction's start).
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

#[async_trait]
impl Ledger for PostgresLedger {
    async fn accept(&self, request: &NewRequest) -> Result<Accept, LedgerError> {
        let now = now_ms();
        let mut conn = self.pool.acquire().await?;
        // A concurrent insert of the same id makes this wait for its
        // transaction; then it inserts (that one rolled back) or does nothing.
        let inserted = sqlx::query(
            "INSERT INTO requests (request_id, provider, operation, body, status, cursor, accepted_at, updated_at)
             VALUES ($1, $2, $3, $4, 'running', 0, $5, $5) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&request.request_id)
        .bind(request.provider.as_str())
        .bind(request.operation.as_str())
        .bind(&request.body)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Accept::New {
                accepted_at_ms: now,
            });
        }
        // A new statement, a new snapshot: the conflicting row is committed.
        match fetch_record(&mut conn, &request.request_id).await? {
            Some(record) => Ok(Accept::Existing(Box::new(record))),
            None => Err(sqlx::Error::RowNotFound.into()),
        }
    }

    async fn claim(
        &self,
        request_id: &str,
        seq: i64,
        step: u32,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, LedgerError> {
        let mut tx = self.pool.begin().await?;
        // Lease times are the database's clock, read once the row lock is
        // granted: hosts' clocks differ, and a lock wait must not eat the lease.
        let Some((state, now)) = sqlx::query_as::<_, LeaseNow>(sqlx::AssertSqlSafe(format!(
            "SELECT cursor, lease_owner, lease_until, lease_seq, lease_step, {DB_NOW_MS} AS now
             FROM requests WHERE request_id = $1 FOR UPDATE"
        )))
        .bind(request_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| (row.lease, row.now)) else {
            tx.commit().await?;
            return Ok(Claim::Unknown);
        };
        let claimant = Claimant {
            seq,
            step: i64::from(step),
            owner,
        };
        let interrupted = match lease::decide(&state, &claimant, now) {
            Decision::Stale => {
                tx.commit().await?;
                return Ok(Claim::Stale);
            }
            Decision::Busy { until_ms, holder } => {
                tx.commit().await?;
                return Ok(Claim::Busy { until_ms, holder });
            }
            Decision::Granted { interrupted } => interrupted,
        };
        let mut taken = state;
        taken.take(&claimant, now + lease.as_millis() as i64);
        // A claim also ends any wait.
        sqlx::query(
            "UPDATE requests SET lease_owner = $1, lease_until = $2, lease_seq = $3, lease_step = $4,
             cursor = $5, waiting_until = NULL, updated_at = $6 WHERE request_id = $7",
        )
        .bind(&taken.lease_owner)
        .bind(taken.lease_until)
        .bind(taken.lease_seq)
        .bind(taken.lease_step)
        .bind(taken.cursor)
        .bind(now_ms())
        .bind(request_id)
        .execute(&mut *tx)
        .await?;
        // Read after the lock was granted, in a statement of its own: the
        // locking SELECT's snapshot predates any transaction it waited for, so
        // steps that one recorded would be missing from it.
        let record = fetch_record(&mut tx, request_id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        tx.commit().await?;
        Ok(Claim::Granted {
            record: Box::new(record),
            interrupted,
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
        let mut tx = self.pool.begin().await?;
        // The request's lock first (as every other writer takes it), then the
        // step: steps are numbered (`recorded`) in the order of that lock.
        let known = sqlx::query("SELECT 1 FROM requests WHERE request_id = $1 FOR UPDATE")
            .bind(request_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !known {
            tx.commit().await?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO steps (request_id, step_key, outputs, secrets, completed_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (request_id, step_key) DO NOTHING",
        )
        .bind(request_id)
        .bind(step_key)
        .bind(object_text(outputs))
        .bind(object_text(secrets))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE requests SET {RECORD_PROGRESS}, updated_at = $1
             FROM (VALUES ($2, $3, $4)) AS v(step, step_index, waiting) WHERE request_id = $5"
        )))
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
        sqlx::query(
            "UPDATE requests SET status = $1, final_event = $2, current_step = $3, current_index = $4,
             waiting_until = NULL, updated_at = $5 WHERE request_id = $6",
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
        // One statement: it locks the row, and every expression reads the
        // newest version of it.
        sqlx::query(
            "UPDATE requests SET cursor = GREATEST(cursor, $1),
               lease_until = CASE WHEN lease_owner = $2 THEN NULL ELSE lease_until END,
               lease_owner = CASE WHEN lease_owner = $2 THEN NULL ELSE lease_owner END,
               current_step = CASE WHEN status = 'running' AND $1 >= cursor THEN COALESCE($3, current_step) ELSE current_step END,
               current_index = CASE WHEN status = 'running' AND $1 >= cursor THEN COALESCE($4, current_index) ELSE current_index END,
               waiting_until = CASE WHEN status <> 'running' THEN NULL WHEN $1 >= cursor THEN $5 ELSE waiting_until END,
               updated_at = $6
             WHERE request_id = $7",
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

    async fn renew(
        &self,
        request_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, LedgerError> {
        let changed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE requests SET lease_until = {DB_NOW_MS} + $1 WHERE request_id = $2 AND lease_owner = $3"
        )))
        .bind(lease.as_millis() as i64)
        .bind(request_id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn abandon(&self, request_id: &str, owner: &str) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE requests SET lease_until = 0 WHERE request_id = $1 AND lease_owner = $2",
        )
        .bind(request_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
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
