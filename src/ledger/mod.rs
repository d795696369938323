//! The ledger: what each request has done, so that a step that succeeded is
//! never called again, a copy of a request is recognised, and a chain of step
//! messages that forked after a crash collapses back to one.
//!
//! Per request it holds the original body (for `onboarding.dead`), status,
//! the **cursor** (the sequence number of the newest step message known to be
//! published; older ones are stale) and a **lease** (one step message of a
//! request is worked on at a time, across workers). Per step it holds the
//! outputs and private values recorded when the step finished; a request's
//! are those of its steps, merged in the order they were recorded.
//!
//! One implementation per backend behind [`Ledger`]: SQLite (default, many
//! processes on one host) and PostgreSQL (many hosts), over one data model
//! ([`rows`]: the same tables and columns) and one lease rule ([`lease`]).
//! [`resilient::Resilient`] wraps either for the worker: every operation
//! timed, the idempotent ones retried through a short outage.

mod group_commit;
mod lease;
pub mod postgres;
pub mod resilient;
mod rows;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::domain::{Operation, ProviderId};

/// Milliseconds since the Unix epoch; the ledger's clock.
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("ledger holds unreadable data for {request_id}: {message}")]
    Corrupt { request_id: String, message: String },
    #[error("ledger url: {0}")]
    Url(String),
    /// A batched write failed (the batch's error, as text: it is shared;
    /// `outage` if it was one).
    #[error("ledger database error: {message}")]
    Batch { message: String, outage: bool },
}

impl LedgerError {
    /// The database could not be reached or did not answer (as opposed to
    /// data it holds being wrong, or a bad URL).
    ///
    /// Only connection-level failures count: the database unreachable, a
    /// broken or refused connection, a pool that could not hand one out, a
    /// server shutting down (SQLSTATE classes 08 and 57P). A database that
    /// answers but refuses the work (read-only, disk full, constraint) is not
    /// an outage: pausing until `SELECT 1` answers would not help it, so it
    /// takes the ordinary path of a failing message (back-off, then give up).
    pub fn is_outage(&self) -> bool {
        match self {
            LedgerError::Database(e) => sqlx_outage(e),
            LedgerError::Batch { outage, .. } => *outage,
            _ => false,
        }
    }
}

fn sqlx_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// A request's status in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Option<Status> {
        match s {
            "running" => Some(Status::Running),
            "completed" => Some(Status::Completed),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// A valid request, as first recorded.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub request_id: String,
    pub provider: ProviderId,
    pub operation: Operation,
    /// The message body exactly as published.
    pub body: Vec<u8>,
}

/// Everything the ledger holds about one request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub request_id: String,
    pub provider: ProviderId,
    pub operation: Operation,
    pub body: Vec<u8>,
    pub status: Status,
    pub cursor: i64,
    pub outputs: Map<String, Value>,
    pub secrets: Map<String, Value>,
    /// Ledger keys of the steps recorded as done (`create_user#1`).
    pub done_steps: Vec<String>,
    /// Contract name of the step the request is at (waiting for, or failed at).
    pub current_step: Option<String>,
    /// Plan index of that step.
    pub current_index: Option<i64>,
    /// When the step message waiting in a delay queue is due.
    pub waiting_until_ms: Option<i64>,
    /// The final event (`completed` or `failed`) as published, to publish again for a copy.
    pub final_event: Option<String>,
    pub accepted_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What `accept` found.
#[derive(Debug)]
pub enum Accept {
    /// First time: recorded as running with cursor 0.
    New { accepted_at_ms: i64 },
    /// Known already.
    Existing(Box<RequestRecord>),
}

/// What `claim` found for a step message with sequence number `seq`.
#[derive(Debug)]
pub enum Claim {
    /// The lease is ours until released or expired. `interrupted`: a copy of
    /// this message held the lease and let it run out unreleased (its worker
    /// died or stalled mid-step), so its provider call may have been made.
    Granted {
        record: Box<RequestRecord>,
        interrupted: bool,
    },
    /// A newer step message was already published: this copy is superseded.
    Stale,
    /// Another copy holds the lease until then (ms since epoch); `holder` is
    /// its owner, whose worker may be asked after ([`Ledger::holder_alive`]).
    Busy { until_ms: i64, holder: String },
    /// No such request (a ledger that was wiped).
    Unknown,
}

/// Where a request stands after a step message was handled.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub current_step: Option<String>,
    pub current_index: Option<i64>,
    pub waiting_until_ms: Option<i64>,
}

/// A request's end, recorded before its final event is published.
#[derive(Clone, Debug)]
pub struct Finish {
    pub status: Status,
    pub final_event: String,
    pub step: Option<String>,
    pub index: Option<i64>,
}

#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Records `request` as running, unless its id is known.
    async fn accept(&self, request: &NewRequest) -> Result<Accept, LedgerError>;

    /// Takes the request's lease for `lease` to work on the step message `seq`,
    /// and moves the cursor to `seq`: a message being claimed was published, so
    /// every older one is superseded. A claim for a later message *and* a later
    /// plan `step` than the lease's is the holder's successor (published only
    /// after the holder's step was recorded) and takes the lease over; a copy
    /// of the same step waits, whatever its `seq`. Callers use a fresh `owner`
    /// per claim.
    async fn claim(
        &self,
        request_id: &str,
        seq: i64,
        step: u32,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, LedgerError>;

    /// Records a finished step with its outputs and private values (merged
    /// over the earlier steps' when the record is read). Idempotent: recording
    /// the same step again changes no output. `progress` (the step that comes
    /// next) is noted while the request runs, also when the step was recorded
    /// already; `status` derives the next step from the plan and the recorded
    /// steps when it is absent. A step of an unknown request is not recorded.
    async fn record_step(
        &self,
        request_id: &str,
        step_key: &str,
        outputs: &Map<String, Value>,
        secrets: &Map<String, Value>,
        progress: &Progress,
    ) -> Result<(), LedgerError>;

    /// Records the request's end (before its final event is published).
    async fn finish(&self, request_id: &str, finish: &Finish) -> Result<(), LedgerError>;

    /// After the successor of a message is confirmed: cursor = max(cursor,
    /// `next_seq`), the lease released if `owner` holds it, and progress noted
    /// unless a newer message already moved the cursor past `next_seq`.
    async fn advance(
        &self,
        request_id: &str,
        owner: &str,
        next_seq: i64,
        progress: &Progress,
    ) -> Result<(), LedgerError>;

    /// Extends the lease `owner` holds to `lease` from now (the ledger's
    /// clock): the holder's heartbeat while its step runs. `false` when
    /// `owner` no longer holds it (it ran out and another copy took it).
    async fn renew(
        &self,
        request_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, LedgerError>;

    /// Gives the lease up after a step whose provider call may have reached
    /// the provider but whose outcome was not recorded: the lease is left as
    /// if it had run out, so the next claim is at once granted *and* marked
    /// `interrupted` (a possible repeat), exactly as after a crash.
    async fn abandon(&self, request_id: &str, owner: &str) -> Result<(), LedgerError>;

    /// One round trip to the database: is the ledger reachable?
    async fn ping(&self) -> Result<(), LedgerError>;

    /// This worker process's identity, the prefix of every lease owner it
    /// writes (`<worker_id>/<claim>`), by which another worker can ask
    /// whether it is still alive.
    fn worker_id(&self) -> &str;

    /// Whether the worker that wrote lease owner `owner` still lives: on
    /// PostgreSQL, whether its session still holds its advisory lock; on
    /// SQLite, whether its process still runs on this host. `true` when it
    /// cannot be told (another host, an owner of an older version).
    async fn holder_alive(&self, owner: &str) -> Result<bool, LedgerError>;

    /// An operator's redrive of a failed request: back to running, failure
    /// cleared, outputs kept. Returns the record as it now stands, or `None`
    /// when the request is not failed (unknown, running or completed).
    async fn redrive(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError>;

    async fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, LedgerError>;

    /// (running, waiting in a delay queue) request counts, for gauges.
    async fn counts(&self) -> Result<(i64, i64), LedgerError>;
}

/// Opens the ledger named by `url` (`sqlite:...` or `postgres://...`), creating its schema.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Ledger>, LedgerError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteLedger::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            postgres::PostgresLedger::open(url).await?,
        ))
    } else {
        // Only the scheme: the rest may hold a password.
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        Err(LedgerError::Url(format!(
            "unsupported scheme {scheme:?}; use sqlite://PATH or postgres://USER:PASSWORD@HOST/DATABASE"
        )))
    }
}
