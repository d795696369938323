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
//! any order (both write them kind by kind, see [`Write`]).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Mutex};

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

/// One write of a batch. The order of the variants is the order in which
/// both backends write a batch's kinds: a request accepted in a batch can
/// be claimed in it, a step recorded in it is in the record its claim reads.
pub(super) enum Write {
    Accept(NewRequest),
    Record(RecordOp),
    Claim(ClaimOp),
    Advance(AdvanceOp),
    Finish(FinishOp),
    Renew(RenewOp),
    Abandon(AbandonOp),
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

    pub async fn accept(&self, request: NewRequest) -> Result<Accept, LedgerError> {
        match self.write(Write::Accept(request)).await? {
            Answer::Accepted(accept) => Ok(accept),
            other => Err(mismatched(&other)),
        }
    }

    pub async fn claim(&self, op: ClaimOp) -> Result<Claim, LedgerError> {
        match self.write(Write::Claim(op)).await? {
            Answer::Claimed(claim) => Ok(claim),
            other => Err(mismatched(&other)),
        }
    }

    pub async fn renew(&self, op: RenewOp) -> Result<bool, LedgerError> {
        match self.write(Write::Renew(op)).await? {
            Answer::Renewed(held) => Ok(held),
            other => Err(mismatched(&other)),
        }
    }

    /// A write answered with nothing but its success: a record, a cursor
    /// move, an end, an abandoned lease.
    pub async fn done(&self, write: Write) -> Result<(), LedgerError> {
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
        match backend.write_batch(&writes).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                // Shared by every caller, so as text; whether it was an
                // outage is kept, for the callers that wait one out.
                let (message, outage) = (e.to_string(), e.is_outage());
                for reply in replies {
                    let _ = reply.send(Err(LedgerError::Batch {
                        message: message.clone(),
                        outage,
                    }));
                }
            }
        }
    }
}
