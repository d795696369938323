//! The SQLite ledger's batch writer: claims and step records, the two writes
//! of every step, go to one task that writes all those waiting in one
//! `BEGIN IMMEDIATE` transaction (group commit: one fsync for the lot, the
//! write lock taken once, at the start, so no read has to upgrade to it).
//!
//! In a batch, step records are written first (so a claim in the same batch
//! sees them), then each claim is decided by [`lease::decide`] in arrival
//! order, against the leases as the earlier claims of the batch left them.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::STEPS;
use crate::ledger::lease::{self, Claimant, Decision, LeaseState};
use crate::ledger::rows::{RequestRow, RECORD_PROGRESS, REQUEST_COLUMNS};
use crate::ledger::{now_ms, Claim, LedgerError, Progress, RequestRecord};

/// Most operations written in one transaction.
const MAX_BATCH: usize = 128;

/// A claim waiting to be written.
pub(super) struct ClaimOp {
    pub request_id: String,
    pub seq: i64,
    pub step: i64,
    pub owner: String,
    pub lease_ms: i64,
}

/// A step record waiting to be written.
pub(super) struct RecordOp {
    pub request_id: String,
    pub step_key: String,
    /// JSON object text.
    pub outputs: String,
    /// JSON object text.
    pub secrets: String,
    pub progress: Progress,
}

/// What a caller waits for: an operation and where its answer goes.
enum Queued {
    Claim(ClaimOp, oneshot::Sender<Result<Claim, LedgerError>>),
    Record(RecordOp, oneshot::Sender<Result<(), LedgerError>>),
}

/// The handle to the writer task; the task ends when the handle is dropped.
pub(super) struct BatchWriter {
    queue: mpsc::UnboundedSender<Queued>,
}

fn stopped() -> LedgerError {
    LedgerError::Batch("the ledger's writer has stopped".into())
}

impl BatchWriter {
    /// Starts the writer task. `write` is the process's one-writer lock,
    /// held for each batch.
    pub fn start(pool: SqlitePool, write: Arc<Mutex<()>>) -> BatchWriter {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, write, rx));
        BatchWriter { queue }
    }

    pub async fn claim(&self, op: ClaimOp) -> Result<Claim, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued::Claim(op, reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub async fn record(&self, op: RecordOp) -> Result<(), LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued::Record(op, reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Writes every operation waiting, a batch at a time, until the handle is dropped.
async fn run(pool: SqlitePool, write: Arc<Mutex<()>>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::default();
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let _writer = write.lock().await;
        batch.write(&pool).await;
    }
}

#[derive(Default)]
struct Batch {
    claims: Vec<ClaimOp>,
    claim_replies: Vec<oneshot::Sender<Result<Claim, LedgerError>>>,
    records: Vec<RecordOp>,
    record_replies: Vec<oneshot::Sender<Result<(), LedgerError>>>,
}

impl Batch {
    fn push(&mut self, queued: Queued) {
        match queued {
            Queued::Claim(op, reply) => {
                self.claims.push(op);
                self.claim_replies.push(reply);
            }
            Queued::Record(op, reply) => {
                self.records.push(op);
                self.record_replies.push(reply);
            }
        }
    }

    fn len(&self) -> usize {
        self.claims.len() + self.records.len()
    }

    /// Writes the batch and answers every caller (the batch's error, as
    /// text, to each when it failed: nothing of it was committed).
    async fn write(self, pool: &SqlitePool) {
        match self.apply(pool).await {
            Ok(claims) => {
                for (reply, claim) in self.claim_replies.into_iter().zip(claims) {
                    let _ = reply.send(claim);
                }
                for reply in self.record_replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for reply in self.claim_replies {
                    let _ = reply.send(Err(LedgerError::Batch(message.clone())));
                }
                for reply in self.record_replies {
                    let _ = reply.send(Err(LedgerError::Batch(message.clone())));
                }
            }
        }
    }

    /// One transaction: the records, then the claims; what each claim got,
    /// in order. A request whose row cannot be read back fails its own
    /// claim only: the records and claims batched with it still commit.
    async fn apply(
        &self,
        pool: &SqlitePool,
    ) -> Result<Vec<Result<Claim, LedgerError>>, LedgerError> {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        if !self.records.is_empty() {
            insert_steps(&mut tx, &self.records, now).await?;
            note_progress(&mut tx, &self.records, now).await?;
        }
        let claims = if self.claims.is_empty() {
            Vec::new()
        } else {
            decide_claims(&mut tx, &self.claims, now).await?
        };
        tx.commit().await?;
        Ok(claims)
    }
}

/// `(?first, ?first+1, ...), (...)`: `rows` tuples of `width` numbered
/// placeholders. Numbered throughout: sqlx numbers bare `?` on its own, so
/// the two styles must not be mixed. Only placeholders are formatted into
/// SQL; every value is bound.
fn placeholders(rows: usize, width: usize, first: usize) -> String {
    (0..rows)
        .map(|row| {
            let base = first + row * width;
            let tuple: Vec<String> = (base..base + width).map(|n| format!("?{n}")).collect();
            format!("({})", tuple.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts each record's step unless recorded already (the first record of
/// a step is the one kept) or its request is unknown.
async fn insert_steps(
    tx: &mut Transaction<'_, Sqlite>,
    records: &[RecordOp],
    now: i64,
) -> Result<(), LedgerError> {
    let values = placeholders(records.len(), 5, 2);
    let sql = format!(
        "WITH v(k, request_id, step_key, outputs, secrets) AS (VALUES {values})
         INSERT INTO steps (request_id, step_key, outputs, secrets, completed_at)
         SELECT v.request_id, v.step_key, v.outputs, v.secrets, ?1 FROM v
         WHERE EXISTS (SELECT 1 FROM requests r WHERE r.request_id = v.request_id)
         ORDER BY v.k
         ON CONFLICT (request_id, step_key) DO NOTHING"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
    for (k, r) in records.iter().enumerate() {
        q = q
            .bind(k as i64)
            .bind(&r.request_id)
            .bind(&r.step_key)
            .bind(&r.outputs)
            .bind(&r.secrets);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Notes where each running request stands after its step (the batch's
/// last record of the request wins, as it would have written last).
async fn note_progress(
    tx: &mut Transaction<'_, Sqlite>,
    records: &[RecordOp],
    now: i64,
) -> Result<(), LedgerError> {
    let mut last: HashMap<&str, &Progress> = HashMap::new();
    for r in records {
        last.insert(&r.request_id, &r.progress);
    }
    let values = placeholders(last.len(), 4, 2);
    let sql = format!(
        "WITH v(request_id, step, step_index, waiting) AS (VALUES {values})
         UPDATE requests SET {RECORD_PROGRESS}, updated_at = ?1
         FROM v WHERE requests.request_id = v.request_id"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
    for (request_id, progress) in last {
        q = q
            .bind(request_id)
            .bind(&progress.current_step)
            .bind(progress.current_index)
            .bind(progress.waiting_until_ms);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// A request's id with its lease.
#[derive(sqlx::FromRow)]
struct LeaseRow {
    request_id: String,
    #[sqlx(flatten)]
    lease: LeaseState,
}

/// Decides every claim in order and writes the leases granted.
async fn decide_claims(
    tx: &mut Transaction<'_, Sqlite>,
    claims: &[ClaimOp],
    now: i64,
) -> Result<Vec<Result<Claim, LedgerError>>, LedgerError> {
    let ids: Vec<&str> = {
        let mut seen = std::collections::HashSet::new();
        claims
            .iter()
            .map(|c| c.request_id.as_str())
            .filter(|id| seen.insert(*id))
            .collect()
    };
    let list = (1..=ids.len())
        .map(|n| format!("?{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut q = sqlx::query_as::<_, LeaseRow>(sqlx::AssertSqlSafe(format!(
        "SELECT request_id, cursor, lease_owner, lease_until, lease_seq, lease_step
         FROM requests WHERE request_id IN ({list})"
    )));
    for id in &ids {
        q = q.bind(*id);
    }
    let mut leases: HashMap<String, LeaseState> = q
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|row| (row.request_id, row.lease))
        .collect();
    let mut decisions = Vec::with_capacity(claims.len());
    let mut taken: Vec<&str> = Vec::new();
    for c in claims {
        let Some(state) = leases.get_mut(&c.request_id) else {
            decisions.push(None);
            continue;
        };
        let claimant = Claimant {
            seq: c.seq,
            step: c.step,
            owner: &c.owner,
        };
        let decision = lease::decide(state, &claimant, now);
        if let Decision::Granted { .. } = decision {
            state.take(&claimant, now + c.lease_ms);
            if !taken.contains(&c.request_id.as_str()) {
                taken.push(&c.request_id);
            }
        }
        decisions.push(Some(decision));
    }
    let records = take_leases(tx, &taken, &leases, now).await?;
    Ok(decisions
        .into_iter()
        .zip(claims)
        .map(|(decision, c)| match decision {
            None => Ok(Claim::Unknown),
            Some(Decision::Stale) => Ok(Claim::Stale),
            Some(Decision::Busy { until_ms, holder }) => Ok(Claim::Busy { until_ms, holder }),
            Some(Decision::Granted { interrupted }) => match &records[&c.request_id] {
                Ok(record) => Ok(Claim::Granted {
                    record: Box::new(record.clone()),
                    interrupted,
                }),
                Err(message) => Err(LedgerError::Corrupt {
                    request_id: c.request_id.clone(),
                    message: message.clone(),
                }),
            },
        })
        .collect())
}

/// Writes the leases of the requests `taken` as `leases` now has them (a
/// claim also ends any wait) and reads their records back (an unreadable
/// one as its error's text: it fails that request's claims, not the batch).
async fn take_leases(
    tx: &mut Transaction<'_, Sqlite>,
    taken: &[&str],
    leases: &HashMap<String, LeaseState>,
    now: i64,
) -> Result<HashMap<String, Result<RequestRecord, String>>, LedgerError> {
    if taken.is_empty() {
        return Ok(HashMap::new());
    }
    let values = placeholders(taken.len(), 6, 2);
    let sql = format!(
        "WITH v(request_id, owner, until, seq, step, cursor) AS (VALUES {values})
         UPDATE requests SET lease_owner = v.owner, lease_until = v.until, lease_seq = v.seq,
           lease_step = v.step, cursor = v.cursor, waiting_until = NULL, updated_at = ?1
         FROM v WHERE requests.request_id = v.request_id
         RETURNING {REQUEST_COLUMNS}, {STEPS}"
    );
    let mut q = sqlx::query_as::<_, RequestRow>(sqlx::AssertSqlSafe(sql)).bind(now);
    for id in taken {
        let lease = &leases[*id];
        q = q
            .bind(*id)
            .bind(&lease.lease_owner)
            .bind(lease.lease_until)
            .bind(lease.lease_seq)
            .bind(lease.lease_step)
            .bind(lease.cursor);
    }
    let mut records = HashMap::new();
    for row in q.fetch_all(&mut **tx).await? {
        let request_id = row.request_id.clone();
        let record = RequestRecord::try_from(row).map_err(|e| match e {
            LedgerError::Corrupt { message, .. } => message,
            other => other.to_string(),
        });
        records.insert(request_id, record);
    }
    Ok(records)
}
