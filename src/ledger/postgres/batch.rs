//! How the PostgreSQL ledger writes a batch of [`group_commit`] writes: one
//! transaction per batch (one WAL flush for the lot), several batches at
//! once on connections of their own, each statement covering every write of
//! its kind (arrays bound with `UNNEST`, not a statement per write):
//!
//! 1. the row locks of every request the batch touches, in `request_id`
//!    order (so two batches never wait for each other in a cycle), waiting
//!    at most [`LOCK_TIMEOUT`] for them, then the database's clock;
//! 2. the accepted requests inserted (in `request_id` order too: an insert
//!    waits for another batch's uncommitted insert of the same id);
//! 3. the claims decided in Rust, in order ([`lease::decide`], against the
//!    leases as the earlier writes of the batch left them);
//! 4. the steps recorded, where each request stands, the leases taken, the
//!    records that granted claims and repeated accepts read back, then each
//!    cursor move, end, heartbeat and abandoned lease, and `COMMIT`.
//!
//! Every statement after the locks touches only rows this batch locked or
//! inserted; an error rolls the whole batch back.
//!
//! [`group_commit`]: crate::ledger::group_commit

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::{fetch_records, DB_NOW_MS};
use crate::ledger::group_commit::{self, Answer, Write, WriteBatch};
use crate::ledger::lease::{self, InBatch, LeaseState};
use crate::ledger::rows::RECORD_PROGRESS;
use crate::ledger::{now_ms, Accept, Claim, LedgerError, RequestRecord};

/// Batches written at once, each on a connection of the pool (which has 8).
pub(super) const WRITERS: usize = 4;

/// The longest a batch waits for a row lock.
const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) struct PgWriter {
    pub pool: PgPool,
}

#[async_trait]
impl WriteBatch for PgWriter {
    async fn write_batch(
        &self,
        writes: &[Write],
    ) -> Result<Vec<Result<Answer, LedgerError>>, LedgerError> {
        // A row another transaction keeps locked (its client hung) fails
        // the batch after `LOCK_TIMEOUT` instead of holding every write of
        // it; group commit then writes them one by one, and only the locked
        // request's write waits again. Sent with the BEGIN, one round trip.
        let mut tx = self
            .pool
            .begin_with(sqlx::AssertSqlSafe(format!(
                "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                LOCK_TIMEOUT.as_millis()
            )))
            .await?;
        let answers = write(&mut tx, writes).await?;
        tx.commit().await?;
        Ok(answers)
    }
}

/// A request's id with its lease.
#[derive(sqlx::FromRow)]
struct Locked {
    request_id: String,
    #[sqlx(flatten)]
    lease: LeaseState,
}

/// What a write's answer waits for after the statements.
enum Planned {
    Answer(Answer),
    /// The request's record as the batch leaves it.
    Existing,
    Granted {
        interrupted: bool,
    },
    Renew,
}

fn request_of(w: &Write) -> &str {
    match w {
        Write::Accept(r) => &r.request_id,
        Write::Record(r) => &r.request_id,
        Write::Claim(c) => &c.request_id,
        Write::Advance(a) => &a.request_id,
        Write::Finish(f) => &f.request_id,
        Write::Renew(r) => &r.request_id,
        Write::Abandon(a) => &a.request_id,
    }
}

async fn write(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[Write],
) -> Result<Vec<Result<Answer, LedgerError>>, LedgerError> {
    let written_at = now_ms();
    // 1. The locks.
    let mut ids: Vec<&str> = writes.iter().map(request_of).collect();
    ids.sort_unstable();
    ids.dedup();
    let locked: Vec<Locked> = sqlx::query_as(
        "SELECT request_id, cursor, lease_owner, lease_until, lease_seq, lease_step
         FROM requests WHERE request_id = ANY($1) ORDER BY request_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut leases: HashMap<String, LeaseState> = locked
        .into_iter()
        .map(|l| (l.request_id, l.lease))
        .collect();
    let mut planned: Vec<Option<Planned>> = writes.iter().map(|_| None).collect();
    // 2. The accepts.
    let mut fresh: Vec<usize> = writes
        .iter()
        .enumerate()
        .filter(|(_, w)| matches!(w, Write::Accept(r) if !leases.contains_key(&r.request_id)))
        .map(|(i, _)| i)
        .collect();
    fresh.sort_by_key(|i| request_of(&writes[*i]));
    let inserted: HashSet<String> = if fresh.is_empty() {
        HashSet::new()
    } else {
        let (mut id, mut provider, mut operation, mut body) = (vec![], vec![], vec![], vec![]);
        for i in &fresh {
            if let Write::Accept(r) = &writes[*i] {
                id.push(r.request_id.as_str());
                provider.push(r.provider.as_str());
                operation.push(r.operation.as_str());
                body.push(r.body.as_slice());
            }
        }
        sqlx::query(
            "INSERT INTO requests (request_id, provider, operation, body, status, cursor, accepted_at, updated_at)
             SELECT v.request_id, v.provider, v.operation, v.body, 'running', 0, $5, $5
             FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BYTEA[]) AS v(request_id, provider, operation, body)
             ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
        )
        .bind(&id)
        .bind(&provider)
        .bind(&operation)
        .bind(&body)
        .bind(written_at)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?
    };
    for (i, w) in writes.iter().enumerate() {
        if let Write::Accept(r) = w {
            // The first accept of a request inserted here is the new one.
            planned[i] = Some(
                if inserted.contains(&r.request_id) && !leases.contains_key(&r.request_id) {
                    leases.insert(r.request_id.clone(), LeaseState::default());
                    Planned::Answer(Answer::Accepted(Accept::New {
                        accepted_at_ms: written_at,
                    }))
                } else {
                    Planned::Existing
                },
            );
        }
    }
    // 3. The claims, against the database's clock read once every lock is
    // granted (in a statement of its own: a locking SELECT may evaluate its
    // columns before it waits), so that a lock wait does not eat a lease.
    let now = if writes.iter().any(|w| matches!(w, Write::Claim(_))) {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {DB_NOW_MS}")))
            .fetch_one(&mut **tx)
            .await?
    } else {
        written_at
    };
    let mut taken: Vec<&str> = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        if let Write::Claim(c) = w {
            planned[i] = Some(
                match lease::decide_in_batch(&mut leases, c, now, &mut taken) {
                    InBatch::Refused(claim) => Planned::Answer(Answer::Claimed(claim)),
                    InBatch::Granted { interrupted } => Planned::Granted { interrupted },
                },
            );
        }
    }
    // 4. The rest.
    record_steps(tx, writes, written_at).await?;
    take_leases(tx, &taken, &leases, written_at).await?;
    let mut read: Vec<&str> = writes
        .iter()
        .zip(&planned)
        .filter(|(_, p)| matches!(p, Some(Planned::Existing | Planned::Granted { .. })))
        .map(|(w, _)| request_of(w))
        .collect();
    read.sort_unstable();
    read.dedup();
    let records = if read.is_empty() {
        HashMap::new()
    } else {
        fetch_records(tx, &read).await?
    };
    let mut renewed = HashSet::new();
    for (i, w) in writes.iter().enumerate() {
        match w {
            Write::Advance(a) => {
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
                .bind(a.next_seq)
                .bind(&a.owner)
                .bind(&a.progress.current_step)
                .bind(a.progress.current_index)
                .bind(a.progress.waiting_until_ms)
                .bind(written_at)
                .bind(&a.request_id)
                .execute(&mut **tx)
                .await?;
            }
            Write::Finish(f) => {
                sqlx::query(
                    "UPDATE requests SET status = $1, final_event = $2, current_step = $3, current_index = $4,
                     waiting_until = NULL, updated_at = $5 WHERE request_id = $6",
                )
                .bind(f.finish.status.as_str())
                .bind(&f.finish.final_event)
                .bind(&f.finish.step)
                .bind(f.finish.index)
                .bind(written_at)
                .bind(&f.request_id)
                .execute(&mut **tx)
                .await?;
            }
            Write::Renew(r) => {
                let changed = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE requests SET lease_until = {DB_NOW_MS} + $1 WHERE request_id = $2 AND lease_owner = $3"
                )))
                .bind(r.lease_ms)
                .bind(&r.request_id)
                .bind(&r.owner)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if changed == 1 {
                    renewed.insert(i);
                }
                planned[i] = Some(Planned::Renew);
                continue;
            }
            Write::Abandon(a) => {
                sqlx::query(
                    "UPDATE requests SET lease_until = 0 WHERE request_id = $1 AND lease_owner = $2",
                )
                .bind(&a.request_id)
                .bind(&a.owner)
                .execute(&mut **tx)
                .await?;
            }
            Write::Record(_) => {}
            Write::Accept(_) | Write::Claim(_) => continue,
        }
        planned[i] = Some(Planned::Answer(Answer::Done));
    }
    Ok(writes
        .iter()
        .zip(planned)
        .enumerate()
        .map(|(i, (w, p))| match p {
            Some(Planned::Answer(answer)) => Ok(answer),
            Some(Planned::Renew) => Ok(Answer::Renewed(renewed.contains(&i))),
            Some(Planned::Existing) => {
                record(&records, request_of(w)).map(|r| Answer::Accepted(Accept::Existing(r)))
            }
            Some(Planned::Granted { interrupted }) => {
                record(&records, request_of(w)).map(|record| {
                    Answer::Claimed(Claim::Granted {
                        record,
                        interrupted,
                    })
                })
            }
            None => Err(LedgerError::Batch {
                message: "a write the batch did not plan".into(),
                outage: false,
            }),
        })
        .collect())
}

/// A record read back (an unreadable one fails the writes that read it,
/// not the batch).
fn record(
    records: &HashMap<String, Result<RequestRecord, LedgerError>>,
    request_id: &str,
) -> Result<Box<RequestRecord>, LedgerError> {
    match records.get(request_id) {
        Some(Ok(record)) => Ok(Box::new(record.clone())),
        Some(Err(LedgerError::Corrupt { message, .. })) => Err(LedgerError::Corrupt {
            request_id: request_id.to_string(),
            message: message.clone(),
        }),
        Some(Err(other)) => Err(LedgerError::Corrupt {
            request_id: request_id.to_string(),
            message: other.to_string(),
        }),
        None => Err(sqlx::Error::RowNotFound.into()),
    }
}

/// Each record's step, unless recorded already (the first record of a step
/// is the one kept) or its request is unknown, numbered in the batch's
/// order; then where each running request stands (the batch's last record
/// of a request wins).
async fn record_steps(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[Write],
    now: i64,
) -> Result<(), LedgerError> {
    let records = group_commit::records(writes);
    if records.is_empty() {
        return Ok(());
    }
    let id: Vec<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    let key: Vec<&str> = records.iter().map(|r| r.step_key.as_str()).collect();
    let outputs: Vec<&str> = records.iter().map(|r| r.outputs.as_str()).collect();
    let secrets: Vec<&str> = records.iter().map(|r| r.secrets.as_str()).collect();
    sqlx::query(
        "INSERT INTO steps (request_id, step_key, outputs, secrets, completed_at)
         SELECT v.request_id, v.step_key, v.outputs, v.secrets, $5
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[]) WITH ORDINALITY
              AS v(request_id, step_key, outputs, secrets, k)
         WHERE EXISTS (SELECT 1 FROM requests r WHERE r.request_id = v.request_id)
         ORDER BY v.k
         ON CONFLICT (request_id, step_key) DO NOTHING",
    )
    .bind(&id)
    .bind(&key)
    .bind(&outputs)
    .bind(&secrets)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let last = group_commit::last_progress(&records);
    let (mut id, mut step, mut index, mut waiting) = (vec![], vec![], vec![], vec![]);
    for (request_id, progress) in last {
        id.push(request_id);
        step.push(progress.current_step.as_deref());
        index.push(progress.current_index);
        waiting.push(progress.waiting_until_ms);
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE requests SET {RECORD_PROGRESS}, updated_at = $5
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[]) AS v(request_id, step, step_index, waiting)
         WHERE requests.request_id = v.request_id"
    )))
    .bind(&id)
    .bind(&step)
    .bind(&index)
    .bind(&waiting)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The leases of the requests `taken`, as the claims left them (a claim
/// also ends any wait).
async fn take_leases(
    tx: &mut Transaction<'_, Postgres>,
    taken: &[&str],
    leases: &HashMap<String, LeaseState>,
    now: i64,
) -> Result<(), LedgerError> {
    if taken.is_empty() {
        return Ok(());
    }
    let (mut owner, mut until, mut seq, mut step, mut cursor) =
        (vec![], vec![], vec![], vec![], vec![]);
    for id in taken {
        let lease = &leases[*id];
        owner.push(lease.lease_owner.as_deref());
        until.push(lease.lease_until);
        seq.push(lease.lease_seq);
        step.push(lease.lease_step);
        cursor.push(lease.cursor);
    }
    sqlx::query(
        "UPDATE requests SET lease_owner = v.owner, lease_until = v.until, lease_seq = v.seq,
           lease_step = v.step, cursor = v.cursor, waiting_until = NULL, updated_at = $7
         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[])
              AS v(request_id, owner, until, seq, step, cursor)
         WHERE requests.request_id = v.request_id",
    )
    .bind(taken)
    .bind(&owner)
    .bind(&until)
    .bind(&seq)
    .bind(&step)
    .bind(&cursor)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
