//! The ledgers a worker under measurement writes to: which backend, and a
//! fresh, empty location of it for each run (an SQLite file in a temporary
//! directory, or a PostgreSQL schema of its own, dropped afterwards).

use std::time::Duration;

use anyhow::Context;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerKind {
    Sqlite,
    Postgres,
}

impl LedgerKind {
    pub fn name(self) -> &'static str {
        match self {
            LedgerKind::Sqlite => "SQLite",
            LedgerKind::Postgres => "PostgreSQL",
        }
    }

    /// Prefix of this ledger's JSON keys: none for SQLite (the keys CI has
    /// always read), `postgres_` for PostgreSQL.
    pub fn key_prefix(self) -> &'static str {
        match self {
            LedgerKind::Sqlite => "",
            LedgerKind::Postgres => "postgres_",
        }
    }
}

/// A fresh ledger location; [`Location::remove`] deletes it.
pub enum Location {
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        schema: String,
        admin: PgConnection,
    },
}

impl Location {
    /// A new, empty location of `kind`; `postgres_url` names the server (and
    /// database) a PostgreSQL schema is made in.
    pub async fn fresh(kind: LedgerKind, postgres_url: &str) -> anyhow::Result<Location> {
        match kind {
            LedgerKind::Sqlite => {
                let dir = tempfile::tempdir()?;
                Ok(Location::Sqlite {
                    url: format!("sqlite://{}/ledger.sqlite", dir.path().display()),
                    _dir: dir,
                })
            }
            LedgerKind::Postgres => {
                let mut admin = tokio::time::timeout(
                    Duration::from_secs(10),
                    PgConnection::connect(postgres_url),
                )
                .await
                .map_err(|_| anyhow::anyhow!("no answer in 10 s"))
                .and_then(|r| r.map_err(anyhow::Error::from))
                .with_context(|| {
                    format!(
                        "PostgreSQL at {} (bash scripts/services.sh starts it; \
                                 --postgres-url or ONBOARDING_BENCH_POSTGRES_URL names another; \
                                 --ledger sqlite skips it)",
                        redacted(postgres_url)
                    )
                })?;
                let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
                // The name is ours: "bench_" and hex digits.
                sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("CREATE SCHEMA {schema}"))?;
                // As the library's ledger tests do: the schema named in the
                // URL's search_path, so the worker makes its tables there.
                let mut url = url::Url::parse(postgres_url).context("--postgres-url")?;
                url.query_pairs_mut()
                    .append_pair("options[search_path]", &schema);
                Ok(Location::Postgres {
                    url: url.to_string(),
                    schema,
                    admin,
                })
            }
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Location::Sqlite { url, .. } | Location::Postgres { url, .. } => url,
        }
    }

    /// Deletes the location (its directory, or its schema with every table).
    pub async fn remove(self) -> anyhow::Result<()> {
        match self {
            Location::Sqlite { .. } => Ok(()),
            Location::Postgres {
                schema, mut admin, ..
            } => {
                sqlx::query(AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&mut admin)
                .await
                .with_context(|| format!("DROP SCHEMA {schema}"))?;
                let _ = admin.close().await;
                Ok(())
            }
        }
    }
}

fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(unparseable url)".into(),
    }
}
