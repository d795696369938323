//! Part 6: the ledger's cost of durability. It runs SQLite with
//! `synchronous` FULL, so that a recorded create survives a power cut; this
//! times one single-row commit under FULL and under NORMAL.

use std::time::Instant;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::ConnectOptions;

use crate::args::Sizes;

/// Mean milliseconds of one commit under each setting.
pub struct DurabilityPart {
    pub normal_ms: f64,
    pub full_ms: f64,
}

pub async fn run(sizes: &Sizes) -> anyhow::Result<DurabilityPart> {
    let commits = sizes.commits;
    eprintln!(
        "[6/6] ledger durability: {commits} SQLite commits (WAL), synchronous NORMAL vs FULL"
    );
    let normal_ms = commit_ms(SqliteSynchronous::Normal, commits).await?;
    let full_ms = commit_ms(SqliteSynchronous::Full, commits).await?;
    eprintln!(
        "      NORMAL {normal_ms:.3} ms per commit, FULL {full_ms:.3} ms ({:.2}×)",
        full_ms / normal_ms
    );
    Ok(DurabilityPart { normal_ms, full_ms })
}

/// Mean time of one single-row commit to a fresh WAL SQLite file with
/// `synchronous` as given.
async fn commit_ms(synchronous: SqliteSynchronous, commits: u32) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut conn = SqliteConnectOptions::new()
        .filename(dir.path().join("durability.sqlite"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .connect()
        .await?;
    sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    for k in 0..commits {
        sqlx::query("INSERT INTO t (k, v) VALUES (?, 'a recorded step')")
            .bind(k)
            .execute(&mut conn)
            .await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / commits as f64)
}
