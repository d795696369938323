//! Group commit: the ledger's writes, queued by the steps that make them
//! and written together, one transaction per batch. A batch costs one
//! commit (one fsync, or one WAL flush) and takes its locks once, however
//! many steps it carries, so under load the ledger's cost per step falls
//! as the queue grows; one at a time, a batch is one write.
//!
//! The queue and the hand-back of answers live here; each backend writes a
//! batch its own way ([`WriteBatch`]). Writes in one batch are concurrent:
//! every caller waits for its answer before it writes again, so no write in
//! a batch depends on another's outcome, and a backend may write them in
//! any order (both write accepts, records and claims kind by kind, see
//! [`Write`], then the rest in arrival order). A batch that fails for
//! another reason than an outage is written again one write at a time, so
//! one bad write fails only itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::rows::object_text;
use super::{Accept, Claim, Finish, LedgerError, NewRequest, Progress};

/// Most writes in one transaction.
const MAX_BATCH: usize = 128;

/// A claim waiting to be written ([`super::Ledger::claim`]).
pub(super) struct ClaimOp {
    pub request_id: String,
    pub seq: i64,
    pub step: i64,
    pub owner: String,
    pub lease_ms: i64,
}

/// A step record waiting to be written ([`super::Ledger::record_step`]).
pub(super) struct RecordOp {
    pub request_id: String,
    pub step_key: String,
    /// JSON object text.
    pub outputs: String,
    /// JSON object text.
    pub secrets: String,
    pub progress: Progress,
}

/// A cursor move after a confirmed successor ([`super::Ledger::advance`]).
pub(super) struct AdvanceOp {
    pub request_id: String,
    pub owner: String,
    pub next_seq: i64,
    pub progress: Progress,
}

/// A request's end ([`super::Ledger::finish`]).
pub(super) struct FinishOp {
    pub request_id: String,
    pub finish: Finish,
}

/// A lease's heartbeat ([`super::Ledger::renew`]).
pub(super) struct RenewOp {
    pub request_id: String,
    pub owner: String,
    pub lease_ms: i64,
}

/// A lease given up ([`super::Ledger::abandon`]).
pub(super) struct AbandonOp {
    pub request_id: String,
    pub owner: String,
}

/// One write of a batch. Both backends write a batch's accepts, then its
/// records, then its claims (a request accepted in a batch can be claimed
/// in it, a step recorded in it is in the record its claim reads), then the
/// rest in arrival order.
pub(super) enum Write {
    Accept(NewRequest),
    Record(RecordOp),
    Claim(ClaimOp),
    Advance(AdvanceOp),
    Finish(FinishOp),
    Renew(RenewOp),
    Abandon(AbandonOp),
}

/// The batch's step records, in order.
pub(super) fn records(writes: &[Write]) -> Vec<&RecordOp> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Record(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Where each request recorded stands after the batch: the progress of its
/// last record (which would have been written last).
pub(super) fn last_progress<'w>(records: &[&'w RecordOp]) -> HashMap<&'w str, &'w Progress> {
    records
        .iter()
        .map(|r| (r.request_id.as_str(), &r.progress))
        .collect()
}

/// What one write got.
#[derive(Debug)]
pub(super) enum Answer {
    Accepted(Accept),
    Claimed(Claim),
    /// Whether the lease was still the renewer's.
    Renewed(bool),
    Done,
}

/// A backend's way of writing a batch.
#[async_trait]
pub(super) trait WriteBatch: Send + Sync + 'static {
    /// Writes `writes` in one transaction and returns an answer per write,
    /// in order. `Err` when the transaction failed: nothing of it was
    /// committed. A write's own `Err` in the list fails that write only (a
    /// record that cannot be read back), the rest being committed.
    async fn write_batch(
        &self,
        writes: &[Write],
    ) -> Result<Vec<Result<Answer, LedgerError>>, LedgerError>;
}

type Reply = oneshot::Sender<Result<Answer, LedgerError>>;
type Queue = mpsc::UnboundedReceiver<(Write, Reply)>;

/// The handle to the writer tasks; they end when the handle is dropped.
pub(super) struct GroupCommit {
    queue: mpsc::UnboundedSender<(Write, Reply)>,
}

fn stopped() -> LedgerError {
    LedgerError::Batch {
        message: "the ledger's writer has stopped".into(),
        outage: false,
    }
}

fn mismatched(answer: &Answer) -> LedgerError {
    LedgerError::Batch {
        message: format!("the ledger's writer answered {answer:?} to another kind of write"),
        outage: false,
    }
}

impl GroupCommit {
    /// Starts `writers` tasks that each take every write waiting (up to
    /// [`MAX_BATCH`]) and write them with `backend`. One writer for a
    /// database with one write lock; more where batches on other rows can
    /// commit side by side.
    pub fn start(backend: impl WriteBatch, writers: usize) -> GroupCommit {
        let (queue, rx) = mpsc::unbounded_channel();
        let backend = Arc::new(backend);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(run(backend.clone(), rx.clone()));
        }
        GroupCommit { queue }
    }

    async fn write(&self, write: Write) -> Result<Answer, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((write, reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    // The writes of [`super::Ledger`], with its arguments.

    pub async fn accept(&self, request: &NewRequest) -> Result<Accept, LedgerError> {
        match self.write(Write::Accept(request.clone())).await? {
            Answer::Accepted(accept) => Ok(accept),
            other => Err(mismatched(&other)),
        }
    }

    pub async fn claim(
        &self,
        request_id: &str,
        seq: i64,
        step: u32,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, LedgerError> {
        let op = ClaimOp {
            request_id: request_id.to_string(),
            seq,
            step: i64::from(step),
            owner: owner.to_string(),
            lease_ms: lease.as_millis() as i64,
        };
        match self.write(Write::Claim(op)).await? {
            Answer::Claimed(claim) => Ok(claim),
            other => Err(mismatched(&other)),
        }
    }

    pub async fn record_step(
        &self,
        request_id: &str,
        step_key: &str,
        outputs: &Map<String, Value>,
        secrets: &Map<String, Value>,
        progress: &Progress,
    ) -> Result<(), LedgerError> {
        self.done(Write::Record(RecordOp {
            request_id: request_id.to_string(),
            step_key: step_key.to_string(),
            outputs: object_text(outputs),
            secrets: object_text(secrets),
            progress: progress.clone(),
        }))
        .await
    }

    pub async fn finish(&self, request_id: &str, finish: &Finish) -> Result<(), LedgerError> {
        self.done(Write::Finish(FinishOp {
            request_id: request_id.to_string(),
            finish: finish.clone(),
        }))
        .await
    }

    pub async fn advance(
        &self,
        request_id: &str,
        owner: &str,
        next_seq: i64,
        progress: &Progress,
    ) -> Result<(), LedgerError> {
        self.done(Write::Advance(AdvanceOp {
            request_id: request_id.to_string(),
            owner: owner.to_string(),
            next_seq,
            progress: progress.clone(),
        }))
        .await
    }

    pub async fn renew(
        &self,
        request_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, LedgerError> {
        let op = RenewOp {
            request_id: request_id.to_string(),
            owner: owner.to_string(),
            lease_ms: lease.as_millis() as i64,
        };
        match self.write(Write::Renew(op)).await? {
            Answer::Renewed(held) => Ok(held),
            other => Err(mismatched(&other)),
        }
    }

    pub async fn abandon(&self, request_id: &str, owner: &str) -> Result<(), LedgerError> {
        self.done(Write::Abandon(AbandonOp {
            request_id: request_id.to_string(),
            owner: owner.to_string(),
        }))
        .await
    }

    /// A write answered with nothing but its success.
    async fn done(&self, write: Write) -> Result<(), LedgerError> {
        match self.write(write).await? {
            Answer::Done => Ok(()),
            other => Err(mismatched(&other)),
        }
    }
}

/// Writes every write waiting, a batch at a time, until the handle is dropped.
async fn run(backend: Arc<impl WriteBatch>, rx: Arc<Mutex<Queue>>) {
    loop {
        let (writes, replies): (Vec<Write>, Vec<Reply>) = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch.into_iter().unzip()
        };
        write_all(&*backend, &writes, replies).await;
    }
}

/// Writes `writes` as one batch and answers each caller; when the batch
/// fails because of what one write carries or reads, each write again on
/// its own, so that one bad write (or one unreadable row, or one locked
/// row) fails only itself, not every write batched with it. A panic in the
/// backend fails the batch it was writing, not the writer.
async fn write_all(backend: &impl WriteBatch, writes: &[Write], replies: Vec<Reply>) {
    let failure = match guarded(backend, writes).await {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            return;
        }
        Err(e) => e,
    };
    if writes.len() == 1 || !may_be_one_writes(&failure) {
        for reply in replies {
            let _ = reply.send(Err(shared(&failure)));
        }
        return;
    }
    // At once, each answered as soon as it is written, so that a write
    // left waiting (a locked row) holds up no other; a backend with one
    // write lock takes them in turn.
    let failure = &failure;
    futures::future::join_all(writes.iter().zip(replies).map(|(write, reply)| async move {
        let answer = match guarded(backend, std::slice::from_ref(write)).await {
            Ok(mut one) => one.pop().unwrap_or_else(|| Err(shared(failure))),
            Err(e) => Err(shared(&e)),
        };
        let _ = reply.send(answer);
    }))
    .await;
}

/// Whether a batch's failure may be one write's fault (its data, a row it
/// reads, or a row another transaction keeps locked: PostgreSQL's
/// `lock_timeout`), so that writing the others again can succeed. Not an
/// outage, SQLite's busy file or a full disk: those fail every write alike,
/// and writing them one at a time would only wait as long again for each.
fn may_be_one_writes(e: &LedgerError) -> bool {
    use sqlx::error::ErrorKind;
    match e {
        LedgerError::Corrupt { .. } => true,
        LedgerError::Database(sqlx::Error::Database(db)) => {
            !matches!(db.kind(), ErrorKind::Other)
                || db.code().as_deref() == Some(LOCK_NOT_AVAILABLE)
        }
        LedgerError::Database(
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::Encode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::RowNotFound,
        ) => true,
        // A panic while writing it.
        LedgerError::Batch { outage: false, .. } => true,
        _ => false,
    }
}

/// PostgreSQL's SQLSTATE for a lock wait past `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

async fn guarded(
    backend: &impl WriteBatch,
    writes: &[Write],
) -> Result<Vec<Result<Answer, LedgerError>>, LedgerError> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(backend.write_batch(writes))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(LedgerError::Batch {
                message: "the ledger's writer panicked writing this batch".into(),
                outage: false,
            })
        })
}

/// A batch's error, for each of its callers: as text, since it is shared;
/// whether it was an outage is kept, for the callers that wait one out.
fn shared(e: &LedgerError) -> LedgerError {
    LedgerError::Batch {
        message: e.to_string(),
        outage: e.is_outage(),
    }
}
