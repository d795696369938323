//! How the SQLite ledger writes a batch of [`group_commit`] writes: in one
//! `BEGIN IMMEDIATE` transaction (one fsync for the lot, the write lock
//! taken at the start, so no read has to upgrade to it), sent to SQLite's
//! thread as at most two commands, because every command is a hand-off to
//! that thread and back:
//!
//! 1. when the batch accepts or claims: `BEGIN IMMEDIATE` and the leases of
//!    the requests concerned. Accepts and claims are then decided here, in
//!    order ([`lease::decide`] for each claim, against the leases as the
//!    earlier writes of the batch left them);
//! 2. every write, kind by kind in [`Write`]'s order, the records the
//!    granted claims and repeated accepts read back, and `COMMIT`.
//!
//! On any error nothing of the batch is committed: the connection, with
//! whatever transaction it was in, is closed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, Column, FromRow, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::Mutex;

use super::STEPS;
use crate::ledger::group_commit::{self, Answer, Write, WriteBatch};
use crate::ledger::lease::{self, InBatch, LeaseState};
use crate::ledger::rows::{RequestRow, RECORD_PROGRESS, REQUEST_COLUMNS};
use crate::ledger::{now_ms, Accept, Claim, LedgerError, RequestRecord};

/// Writes batches holding the process's one-writer lock for each, on a
/// connection of the pool it keeps for itself (a new one after a failed
/// batch). Its scripts' texts vary with what a batch holds, and sqlx keeps
/// up to 100 prepared per connection: through whichever connection was
/// free, a burst left them in every connection of the pool (12 MB of
/// SQLite's heap in six connections after 10,000 onboardings, most of the
/// worker's RSS growth then).
pub(super) struct SqliteWriter {
    pool: SqlitePool,
    write: Arc<Mutex<()>>,
    conn: Mutex<Option<PoolConnection<Sqlite>>>,
}

impl SqliteWriter {
    pub fn new(pool: SqlitePool, write: Arc<Mutex<()>>) -> SqliteWriter {
        SqliteWriter {
            pool,
            write,
            conn: Mutex::new(None),
        }
    }
}

#[async_trait]
impl WriteBatch for SqliteWriter {
    async fn write_batch(
        &self,
        writes: &[Write],
    ) -> Result<Vec<Result<Answer, LedgerError>>, LedgerError> {
        let _writer = self.write.lock().await;
        let mut kept = self.conn.lock().await;
        let conn = match kept.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        let mut conn = CloseUnlessKept(Some(conn));
        let written = write(conn.0.as_mut().expect("just set"), writes).await;
        match (&written, conn.0.as_mut()) {
            (Ok(_), _) => *kept = conn.0.take(),
            // Gives the write lock back at once (harmless when the
            // transaction never began); the connection is then closed, and
            // the next batch takes a fresh one. After a panic it is closed
            // with whatever transaction it was in.
            (Err(_), Some(c)) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut **c).await;
            }
            (Err(_), None) => {}
        }
        written
    }
}

/// A connection closed when dropped, unless taken back out: one that a
/// failed batch may have left inside a transaction, holding the file's
/// write lock, must not go back to the pool.
struct CloseUnlessKept(Option<PoolConnection<Sqlite>>);

impl Drop for CloseUnlessKept {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Statements sent to SQLite's thread as one command. Values are bound,
/// never formatted in. Each is written `?N` (its number in the script) where
/// the statement is built, and sent as a bare `?` bound in the order the
/// statement uses it: sqlx binds bare `?` across a script's statements in
/// order, but binds `?N` wrongly past the first statement once a statement
/// leaves a number unused.
#[derive(Default)]
struct Script {
    sql: String,
    values: Vec<Val>,
    args: SqliteArguments,
    error: Option<sqlx::error::BoxDynError>,
}

/// A value to bind.
#[derive(Clone)]
enum Val {
    Int(Option<i64>),
    Text(Option<String>),
    Blob(Vec<u8>),
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(Some(v))
    }
}
impl From<Option<i64>> for Val {
    fn from(v: Option<i64>) -> Val {
        Val::Int(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(Some(v.to_string()))
    }
}
impl From<Option<&str>> for Val {
    fn from(v: Option<&str>) -> Val {
        Val::Text(v.map(str::to_string))
    }
}
impl From<&[u8]> for Val {
    fn from(v: &[u8]) -> Val {
        Val::Blob(v.to_vec())
    }
}

impl Script {
    /// Keeps `value` for the statements; its placeholder.
    fn bind(&mut self, value: impl Into<Val>) -> String {
        self.values.push(value.into());
        format!("?{}", self.values.len())
    }

    fn push(&mut self, statement: &str) {
        let mut rest = statement;
        while let Some(at) = rest.find('?') {
            self.sql.push_str(&rest[..at]);
            self.sql.push('?');
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - at - 1);
            let value = rest[at + 1..at + 1 + digits]
                .parse::<usize>()
                .ok()
                .and_then(|n| self.values.get(n.checked_sub(1)?))
                .cloned();
            let added = match value {
                Some(Val::Int(v)) => self.args.add(v),
                Some(Val::Text(v)) => self.args.add(v),
                Some(Val::Blob(v)) => self.args.add(v),
                // Every `?` in the ledger's SQL is one of `bind`'s; anything
                // else fails the batch before it is sent.
                None => Err(format!(
                    "a `?` in the ledger's SQL that is no bound value: {statement}"
                )
                .into()),
            };
            if let Err(e) = added {
                self.error.get_or_insert(e);
            }
            rest = &rest[at + 1 + digits..];
        }
        self.sql.push_str(rest);
        self.sql.push_str(";\n");
    }

    /// Runs the script; the rows its statements returned, in order.
    ///
    /// Several statements in one query is SQLite-only in sqlx, and
    /// `fetch_many`, which would tell them apart, is deprecated: every row
    /// read here says what it is by its first column's name.
    async fn run(self, conn: &mut SqliteConnection) -> Result<Vec<SqliteRow>, LedgerError> {
        if let Some(e) = self.error {
            return Err(sqlx::Error::Encode(e).into());
        }
        Ok(sqlx::query_with(sqlx::AssertSqlSafe(self.sql), self.args)
            .fetch_all(conn)
            .await?)
    }
}

/// A request's id with its lease.
#[derive(sqlx::FromRow)]
struct LeaseRow {
    request_id: String,
    #[sqlx(flatten)]
    lease: LeaseState,
}

/// What was decided for one write before the second command.
enum Planned {
    /// Answered already (a new accept, an unknown request's claim, ...).
    Answer(Answer),
    /// Answered with the request's record as the batch leaves it.
    Record(Then),
    /// Answered with whether the lease was still the renewer's.
    Renew,
}

/// What a record read back answers.
enum Then {
    Existing,
    Granted { interrupted: bool },
}

async fn write(
    conn: &mut SqliteConnection,
    writes: &[Write],
) -> Result<Vec<Result<Answer, LedgerError>>, LedgerError> {
    // 1. The leases of the requests accepted or claimed.
    let mut leases: HashMap<String, LeaseState> = HashMap::new();
    let wanted: Vec<&str> = {
        let mut seen = HashSet::new();
        writes
            .iter()
            .filter_map(|w| match w {
                Write::Accept(r) => Some(r.request_id.as_str()),
                Write::Claim(c) => Some(c.request_id.as_str()),
                _ => None,
            })
            .filter(|id| seen.insert(*id))
            .collect()
    };
    let began = !wanted.is_empty();
    if began {
        let mut first = Script::default();
        first.push("BEGIN IMMEDIATE");
        let list: Vec<String> = wanted.iter().map(|id| first.bind(*id)).collect();
        first.push(&format!(
            "SELECT request_id, cursor, lease_owner, lease_until, lease_seq, lease_step
             FROM requests WHERE request_id IN ({})",
            list.join(", ")
        ));
        for row in first.run(conn).await? {
            let row = LeaseRow::from_row(&row)?;
            leases.insert(row.request_id, row.lease);
        }
    }
    // The clock once the write lock is ours (`BEGIN IMMEDIATE` may have
    // waited for another process): a lock wait must not eat the leases
    // granted. `?1` in every statement of the second command.
    let now = now_ms();
    let mut script = Script::default();
    script.bind(now);
    if !began {
        script.push("BEGIN IMMEDIATE");
    }
    // Decided in order: accepts first (a request accepted here can be
    // claimed here), then claims.
    let mut planned: Vec<Option<Planned>> = writes.iter().map(|_| None).collect();
    let mut fresh = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        if let Write::Accept(request) = w {
            planned[i] = Some(if leases.contains_key(&request.request_id) {
                Planned::Record(Then::Existing)
            } else {
                leases.insert(request.request_id.clone(), LeaseState::default());
                fresh.push(request);
                Planned::Answer(Answer::Accepted(Accept::New {
                    accepted_at_ms: now,
                }))
            });
        }
    }
    let mut taken: Vec<&str> = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        if let Write::Claim(c) = w {
            planned[i] = Some(
                match lease::decide_in_batch(&mut leases, c, now, &mut taken) {
                    InBatch::Refused(claim) => Planned::Answer(Answer::Claimed(claim)),
                    InBatch::Granted { interrupted } => {
                        Planned::Record(Then::Granted { interrupted })
                    }
                },
            );
        }
    }
    // 2. Every write, then the records read back, then the commit.
    if !fresh.is_empty() {
        let rows: Vec<String> = fresh
            .iter()
            .map(|r| {
                let values = [
                    script.bind(r.request_id.as_str()),
                    script.bind(r.provider.as_str()),
                    script.bind(r.operation.as_str()),
                    script.bind(r.body.as_slice()),
                ];
                format!("({}, 'running', 0, ?1, ?1)", values.join(", "))
            })
            .collect();
        script.push(&format!(
            "INSERT INTO requests (request_id, provider, operation, body, status, cursor, accepted_at, updated_at)
             VALUES {} ON CONFLICT (request_id) DO NOTHING",
            rows.join(", ")
        ));
    }
    record_steps(&mut script, writes);
    take_leases(&mut script, &taken, &leases);
    let read: Vec<&str> = {
        let mut seen = HashSet::new();
        writes
            .iter()
            .zip(&planned)
            .filter_map(|(w, p)| match (w, p) {
                (Write::Accept(r), Some(Planned::Record(_))) => Some(r.request_id.as_str()),
                (Write::Claim(c), Some(Planned::Record(_))) => Some(c.request_id.as_str()),
                _ => None,
            })
            .filter(|id| seen.insert(*id))
            .collect()
    };
    if !read.is_empty() {
        let list: Vec<String> = read.iter().map(|id| script.bind(*id)).collect();
        script.push(&format!(
            "SELECT {REQUEST_COLUMNS}, {STEPS} FROM requests WHERE request_id IN ({})",
            list.join(", ")
        ));
    }
    for (i, w) in writes.iter().enumerate() {
        if let Some(answer) = other_write(&mut script, w) {
            planned[i] = Some(answer);
        }
    }
    script.push("COMMIT");
    let mut records: HashMap<String, Result<RequestRecord, String>> = HashMap::new();
    let mut renewed: HashSet<(String, String)> = HashSet::new();
    // The script has committed: from here on nothing may fail the batch.
    // A row that cannot be read fails the writes that read it, and only
    // those (a renewal not read back counts as not renewed).
    for row in script.run(conn).await? {
        if row.columns().first().map(|c| c.name()) == Some("renewed_id") {
            if let (Ok(id), Ok(owner)) = (row.try_get(0), row.try_get(1)) {
                renewed.insert((id, owner));
            }
            continue;
        }
        let Ok(request_id) = row.try_get::<String, _>("request_id") else {
            continue;
        };
        let record = RequestRow::from_row(&row)
            .map_err(LedgerError::from)
            .and_then(RequestRecord::try_from)
            .map_err(|e| match e {
                LedgerError::Corrupt { message, .. } => message,
                other => other.to_string(),
            });
        records.insert(request_id, record);
    }
    Ok(writes
        .iter()
        .zip(planned)
        .map(|(w, p)| answer(w, p, &records, &renewed))
        .collect())
}

/// Each record's step, unless recorded already (the first record of a step
/// is the one kept) or its request is unknown; then where each running
/// request stands (the batch's last record of a request wins).
fn record_steps(script: &mut Script, writes: &[Write]) {
    let records = group_commit::records(writes);
    if records.is_empty() {
        return;
    }
    let rows: Vec<String> = records
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let values = [
                script.bind(k as i64),
                script.bind(r.request_id.as_str()),
                script.bind(r.step_key.as_str()),
                script.bind(r.outputs.as_str()),
                script.bind(r.secrets.as_str()),
            ];
            format!("({})", values.join(", "))
        })
        .collect();
    script.push(&format!(
        "WITH v(k, request_id, step_key, outputs, secrets) AS (VALUES {})
         INSERT INTO steps (request_id, step_key, outputs, secrets, completed_at)
         SELECT v.request_id, v.step_key, v.outputs, v.secrets, ?1 FROM v
         WHERE EXISTS (SELECT 1 FROM requests r WHERE r.request_id = v.request_id)
         ORDER BY v.k
         ON CONFLICT (request_id, step_key) DO NOTHING",
        rows.join(", ")
    ));
    let last = group_commit::last_progress(&records);
    let rows: Vec<String> = last
        .into_iter()
        .map(|(request_id, progress)| {
            let values = [
                script.bind(request_id),
                script.bind(progress.current_step.as_deref()),
                script.bind(progress.current_index),
                script.bind(progress.waiting_until_ms),
            ];
            format!("({})", values.join(", "))
        })
        .collect();
    script.push(&format!(
        "WITH v(request_id, step, step_index, waiting) AS (VALUES {})
         UPDATE requests SET {RECORD_PROGRESS}, updated_at = ?1
         FROM v WHERE requests.request_id = v.request_id",
        rows.join(", ")
    ));
}

/// The leases of the requests `taken`, as the claims left them (a claim
/// also ends any wait).
fn take_leases(script: &mut Script, taken: &[&str], leases: &HashMap<String, LeaseState>) {
    if taken.is_empty() {
        return;
    }
    let rows: Vec<String> = taken
        .iter()
        .map(|id| {
            let lease = &leases[*id];
            let values = [
                script.bind(*id),
                script.bind(lease.lease_owner.as_deref()),
                script.bind(lease.lease_until),
                script.bind(lease.lease_seq),
                script.bind(lease.lease_step),
                script.bind(lease.cursor),
            ];
            format!("({})", values.join(", "))
        })
        .collect();
    script.push(&format!(
        "WITH v(request_id, owner, until, seq, step, cursor) AS (VALUES {})
         UPDATE requests SET lease_owner = v.owner, lease_until = v.until, lease_seq = v.seq,
           lease_step = v.step, cursor = v.cursor, waiting_until = NULL, updated_at = ?1
         FROM v WHERE requests.request_id = v.request_id",
        rows.join(", ")
    ));
}

/// The statement of a cursor move, an end, a heartbeat or an abandoned
/// lease, each as its own statement (they are few per step, and each reads
/// the row as the statements before it left it).
fn other_write(script: &mut Script, w: &Write) -> Option<Planned> {
    match w {
        Write::Advance(a) => {
            let seq = script.bind(a.next_seq);
            let owner = script.bind(a.owner.as_str());
            let step = script.bind(a.progress.current_step.as_deref());
            let index = script.bind(a.progress.current_index);
            let waiting = script.bind(a.progress.waiting_until_ms);
            let id = script.bind(a.request_id.as_str());
            script.push(&format!(
                "UPDATE requests SET cursor = MAX(cursor, {seq}),
                   lease_until = CASE WHEN lease_owner = {owner} THEN NULL ELSE lease_until END,
                   lease_owner = CASE WHEN lease_owner = {owner} THEN NULL ELSE lease_owner END,
                   current_step = CASE WHEN status = 'running' AND {seq} >= cursor THEN COALESCE({step}, current_step) ELSE current_step END,
                   current_index = CASE WHEN status = 'running' AND {seq} >= cursor THEN COALESCE({index}, current_index) ELSE current_index END,
                   waiting_until = CASE WHEN status != 'running' THEN NULL WHEN {seq} >= cursor THEN {waiting} ELSE waiting_until END,
                   updated_at = ?1
                 WHERE request_id = {id}"
            ));
            Some(Planned::Answer(Answer::Done))
        }
        Write::Finish(f) => {
            let status = script.bind(f.finish.status.as_str());
            let event = script.bind(f.finish.final_event.as_str());
            let step = script.bind(f.finish.step.as_deref());
            let index = script.bind(f.finish.index);
            let id = script.bind(f.request_id.as_str());
            script.push(&format!(
                "UPDATE requests SET status = {status}, final_event = {event}, current_step = {step},
                 current_index = {index}, waiting_until = NULL, updated_at = ?1 WHERE request_id = {id}"
            ));
            Some(Planned::Answer(Answer::Done))
        }
        Write::Renew(r) => {
            let until = script.bind(now_ms() + r.lease_ms);
            let id = script.bind(r.request_id.as_str());
            let owner = script.bind(r.owner.as_str());
            script.push(&format!(
                "UPDATE requests SET lease_until = {until} WHERE request_id = {id} AND lease_owner = {owner}
                 RETURNING request_id AS renewed_id, lease_owner"
            ));
            Some(Planned::Renew)
        }
        Write::Abandon(a) => {
            let id = script.bind(a.request_id.as_str());
            let owner = script.bind(a.owner.as_str());
            script.push(&format!(
                "UPDATE requests SET lease_until = 0 WHERE request_id = {id} AND lease_owner = {owner}"
            ));
            Some(Planned::Answer(Answer::Done))
        }
        Write::Record(_) => Some(Planned::Answer(Answer::Done)),
        Write::Accept(_) | Write::Claim(_) => None,
    }
}

/// The answer to one write, from what was planned and what the script did.
fn answer(
    w: &Write,
    planned: Option<Planned>,
    records: &HashMap<String, Result<RequestRecord, String>>,
    renewed: &HashSet<(String, String)>,
) -> Result<Answer, LedgerError> {
    let request_id = match w {
        Write::Accept(r) => r.request_id.as_str(),
        Write::Claim(c) => c.request_id.as_str(),
        Write::Renew(r) => r.request_id.as_str(),
        _ => "",
    };
    match planned {
        Some(Planned::Answer(answer)) => Ok(answer),
        Some(Planned::Renew) => {
            let owner = match w {
                Write::Renew(r) => r.owner.as_str(),
                _ => "",
            };
            Ok(Answer::Renewed(
                renewed.contains(&(request_id.to_string(), owner.to_string())),
            ))
        }
        Some(Planned::Record(then)) => {
            let record = match records.get(request_id) {
                Some(Ok(record)) => Box::new(record.clone()),
                Some(Err(message)) => {
                    return Err(LedgerError::Corrupt {
                        request_id: request_id.to_string(),
                        message: message.clone(),
                    })
                }
                None => return Err(sqlx::Error::RowNotFound.into()),
            };
            Ok(match then {
                Then::Existing => Answer::Accepted(Accept::Existing(record)),
                Then::Granted { interrupted } => Answer::Claimed(Claim::Granted {
                    record,
                    interrupted,
                }),
            })
        }
        None => Err(LedgerError::Batch {
            message: "a write the batch did not plan".into(),
            outage: false,
        }),
    }
}
