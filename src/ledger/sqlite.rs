//! SQLite ledger: one file shared by every worker process on a host.
//!
//! WAL journal (readers don't block the writer), `synchronous = FULL` and a
//! busy timeout. FULL, not NORMAL: under WAL, NORMAL keeps the database
//! consistent but may lose the last commits in a power cut, and a recorded
//! create whose successor is already published must not be forgotten (it
//! would be made again). The bench measures what it costs. Every write is a single statement (claims
//! decide and take the lease in one `UPDATE ... RETURNING`): a deferred
//! transaction that reads and then upgrades to a write lock fails at once with
//! "database is locked" when several processes share the file, and one
//! statement is one round trip to SQLite's thread. Schema changes run in a
//! `BEGIN IMMEDIATE` transaction.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::{
    now_ms, parse_kind, parse_map, Accept, Claim, Finish, Ledger, LedgerError, NewRequest,
    Progress, RequestRecord, Status,
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
    // The plan step the lease was taken for: only a later step's message is
    // the holder's successor and may take the lease over.
    "ALTER TABLE requests ADD COLUMN lease_step INTEGER",
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
    write: Arc<tokio::sync::Mutex<()>>,
    /// Claims and step records, the two writes of every step, go to one task
    /// that writes all those waiting in one statement each (group commit).
    batch: mpsc::UnboundedSender<BatchOp>,
    /// `host:<name>:pidns:<inode>:pid:<pid>:<start time>`: the process,
    /// findable in `/proc` from the same host and pid namespace.
    worker_id: String,
}

/// This host's name, as the kernel has it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`): pids are
/// only comparable within one (containers sharing a host name may not share it).
fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| {
            p.to_string_lossy()
                .trim_start_matches("pid:")
                .trim_matches(['[', ']'])
                .to_string()
        })
        .unwrap_or_default()
}

/// The start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`)
/// of a running process: with its pid, it names the process even when the
/// pid is reused. `None` when there is no such process.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ...": the name may hold spaces and parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named in a lease owner written by [`SqliteLedger`]
/// still runs; `true` whenever it cannot be told: another host or pid
/// namespace, an owner of another form, or a `/proc` that hides other
/// processes (`hidepid`: then even pid 1 is not to be seen).
fn sqlite_holder_alive(owner: &str, this_host: &str, this_pidns: &str) -> bool {
    let id = owner.split('/').next().unwrap_or_default();
    let parts: Vec<&str> = id.split(':').collect();
    let ["host", host, "pidns", pidns, "pid", pid, start] = parts.as_slice() else {
        return true;
    };
    if *host != this_host || *pidns != this_pidns || process_start(1).is_none() {
        return true;
    }
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return true;
    };
    process_start(pid) == Some(start)
}

/// Most operations written in one statement.
const MAX_BATCH: usize = 128;

/// A write waiting for the batch writer.
enum BatchOp {
    Claim {
        request_id: String,
        seq: i64,
        step: i64,
        owner: String,
        lease_ms: i64,
        /// `Some` when granted: the record and whether a copy was interrupted.
        reply: oneshot::Sender<Result<Option<(RequestRecord, bool)>, LedgerError>>,
    },
    Record {
        request_id: String,
        step_key: String,
        outputs: String,
        secrets: String,
        reply: oneshot::Sender<Result<(), LedgerError>>,
    },
}

/// Writes every operation waiting, a batch at a time, until the ledger is dropped.
async fn batch_writer(
    pool: SqlitePool,
    write: Arc<tokio::sync::Mutex<()>>,
    mut rx: mpsc::UnboundedReceiver<BatchOp>,
) {
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let _writer = write.lock().await;
        let mut claims = Vec::new();
        let mut records = Vec::new();
        for op in ops {
            match op {
                BatchOp::Claim {
                    request_id,
                    seq,
                    step,
                    owner,
                    lease_ms,
                    reply,
                } => claims.push((request_id, seq, step, owner, lease_ms, reply)),
                BatchOp::Record {
                    request_id,
                    step_key,
                    outputs,
                    secrets,
                    reply,
                } => records.push((request_id, step_key, outputs, secrets, reply)),
            }
        }
        if !records.is_empty() {
            let result = write_records(&pool, &records).await;
            for (.., reply) in records {
                let _ = reply.send(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| LedgerError::Batch(e.to_string())),
                );
            }
        }
        // One claim per request in each statement: a second copy of the same
        // request's message goes in the next round and sees the first's lease.
        while !claims.is_empty() {
            let mut round = Vec::new();
            let mut rest = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for c in claims {
                if seen.insert(c.0.clone()) {
                    round.push(c);
                } else {
                    rest.push(c);
                }
            }
            match write_claims(&pool, &round).await {
                Ok(mut granted) => {
                    for (request_id, .., reply) in round {
                        let _ = reply.send(Ok(granted.remove(&request_id)));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for (.., reply) in round {
                        let _ = reply.send(Err(LedgerError::Batch(message.clone())));
                    }
                }
            }
            claims = rest;
        }
    }
}

type RecordArgs = (
    String,
    String,
    String,
    String,
    oneshot::Sender<Result<(), LedgerError>>,
);
type ClaimArgs = (
    String,
    i64,
    i64,
    String,
    i64,
    oneshot::Sender<Result<Option<(RequestRecord, bool)>, LedgerError>>,
);

async fn write_records(pool: &SqlitePool, records: &[RecordArgs]) -> Result<(), LedgerError> {
    let now = now_ms();
    let values = vec!["(?, ?, ?, ?, ?)"; records.len()].join(", ");
    // Only placeholders are formatted in; every value is bound.
    let sql = format!(
        "INSERT INTO steps (request_id, step_key, outputs, secrets, completed_at) VALUES {values}
         ON CONFLICT (request_id, step_key) DO NOTHING"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (request_id, step_key, outputs, secrets, _) in records {
        q = q
            .bind(request_id)
            .bind(step_key)
            .bind(outputs)
            .bind(secrets)
            .bind(now);
    }
    q.execute(pool).await?;
    Ok(())
}

/// The claim is not the lease holder's successor: not a later message of a
/// later plan step (a lease from before `lease_step` existed counts as same).
const SAME_STEP: &str = "(v.seq <= COALESCE(requests.lease_seq, 9223372036854775807)
     OR v.step <= COALESCE(requests.lease_step, 9223372036854775807))";

/// Grants each claim whose request is not past its `seq` and whose lease is
/// free, expired, or held for an older message (the holder's successor takes
/// over). Every SET expression reads the row as it was before the statement.
async fn write_claims(
    pool: &SqlitePool,
    claims: &[ClaimArgs],
) -> Result<std::collections::HashMap<String, (RequestRecord, bool)>, LedgerError> {
    let now = now_ms();
    // Numbered placeholders throughout: ?1 is `now`, then five per claim
    // (sqlx numbers bare `?` on its own, so the two styles must not be mixed).
    let values = (0..claims.len())
        .map(|i| {
            let b = 2 + 5 * i;
            format!("(?{}, ?{}, ?{}, ?{}, ?{})", b, b + 1, b + 2, b + 3, b + 4)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH v(request_id, seq, step, owner, lease_until) AS (VALUES {values})
         UPDATE requests SET
           lease_interrupted = (requests.lease_owner IS NOT NULL AND requests.lease_owner <> v.owner
                                AND requests.lease_until <= ?1 AND {SAME_STEP}),
           lease_owner = v.owner, lease_until = v.lease_until, lease_seq = v.seq, lease_step = v.step,
           cursor = MAX(requests.cursor, v.seq), waiting_until = NULL, updated_at = ?1
         FROM v
         WHERE requests.request_id = v.request_id AND requests.cursor <= v.seq
           AND NOT (requests.lease_owner IS NOT NULL AND requests.lease_owner <> v.owner
                    AND requests.lease_until > ?1 AND {SAME_STEP})
         RETURNING {REQUEST_COLUMNS}, {STEPS_JSON}"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
    for (request_id, seq, step, owner, lease_ms, _) in claims {
        q = q
            .bind(request_id)
            .bind(*seq)
            .bind(*step)
            .bind(owner)
            .bind(now + lease_ms);
    }
    let rows = q.fetch_all(pool).await?;
    let mut granted = std::collections::HashMap::new();
    for row in rows {
        let interrupted: bool = row.try_get("lease_interrupted")?;
        let record = record_from_json(&row)?;
        granted.insert(record.request_id.clone(), (record, interrupted));
    }
    Ok(granted)
}

impl SqliteLedger {
    /// Opens (creating if missing) the file named by `url` (`sqlite://path`, `sqlite::memory:`).
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        // Workers starting at once on a new file race to switch it to WAL,
        // and SQLite answers the losers SQLITE_BUSY without waiting on its
        // busy handler: try again for a few seconds.
        let mut tries = 0;
        loop {
            match Self::open_once(url).await {
                Err(LedgerError::Database(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("5") && tries < 50 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
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
        let write = Arc::new(tokio::sync::Mutex::new(()));
        let (batch, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_writer(pool.clone(), write.clone(), rx));
        let pid = std::process::id();
        let worker_id = format!(
            "host:{}:pidns:{}:pid:{pid}:{}",
            host_name(),
            pid_namespace(),
            process_start(pid).unwrap_or(0)
        );
        Ok(SqliteLedger {
            pool,
            write,
            batch,
            worker_id,
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
    let (provider, operation) = parse_kind(
        &request_id,
        &row.try_get::<String, _>("provider")?,
        &row.try_get::<String, _>("operation")?,
    )?;
    Ok(RequestRecord {
        provider,
        operation,
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
            .bind(request.provider.as_str())
            .bind(request.operation.as_str())
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
        step: u32,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, LedgerError> {
        let now = now_ms();
        let (reply, granted) = oneshot::channel();
        self.batch
            .send(BatchOp::Claim {
                request_id: request_id.to_string(),
                seq,
                step: step as i64,
                owner: owner.to_string(),
                lease_ms: lease.as_millis() as i64,
                reply,
            })
            .map_err(|_| LedgerError::Batch("the ledger's writer has stopped".into()))?;
        let granted = granted
            .await
            .map_err(|_| LedgerError::Batch("the ledger's writer has stopped".into()))??;
        if let Some((record, interrupted)) = granted {
            return Ok(Claim::Granted {
                record: Box::new(record),
                interrupted,
            });
        }
        // Not granted: find out why (the rare path).
        let Some(row) = sqlx::query(
            "SELECT cursor, lease_until, lease_owner FROM requests WHERE request_id = ?",
        )
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
        let holder: Option<String> = row.try_get(2)?;
        Ok(Claim::Busy {
            until_ms: until.unwrap_or(now),
            holder: holder.unwrap_or_default(),
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
        // What makes the step never called again. Progress is not written here:
        // the next claim clears any wait, and `status` derives the next step
        // from the plan and the steps recorded.
        let _ = progress;
        let (reply, done) = oneshot::channel();
        self.batch
            .send(BatchOp::Record {
                request_id: request_id.to_string(),
                step_key: step_key.to_string(),
                outputs: Value::Object(outputs.clone()).to_string(),
                secrets: Value::Object(secrets.clone()).to_string(),
                reply,
            })
            .map_err(|_| LedgerError::Batch("the ledger's writer has stopped".into()))?;
        done.await
            .map_err(|_| LedgerError::Batch("the ledger's writer has stopped".into()))?
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

    async fn renew(
        &self,
        request_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, LedgerError> {
        let _writer = self.write.lock().await;
        let changed = sqlx::query(
            "UPDATE requests SET lease_until = ?1 WHERE request_id = ?2 AND lease_owner = ?3",
        )
        .bind(now_ms() + lease.as_millis() as i64)
        .bind(request_id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn abandon(&self, request_id: &str, owner: &str) -> Result<(), LedgerError> {
        let _writer = self.write.lock().await;
        sqlx::query(
            "UPDATE requests SET lease_until = 0 WHERE request_id = ?1 AND lease_owner = ?2",
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
        Ok(sqlite_holder_alive(owner, &host_name(), &pid_namespace()))
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
