//! A PostgreSQL database of a test's own on the test server
//! (`ONBOARDING_TEST_POSTGRES_URL`, default the one `scripts/services.sh` sets
//! up), dropped when the test ends; and stopping and starting the server.

use std::time::Duration;

const DEFAULT_POSTGRES_URL: &str =
    "postgres://onboarding:onboarding@127.0.0.1:5432/onboarding_test";

fn postgres_base_url() -> String {
    std::env::var("ONBOARDING_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into())
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

/// A database of its own on the test server, dropped when this is dropped.
pub struct PgDatabase {
    base: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sqlx::Connection;
        let base = postgres_base_url();
        let unreachable = |why: String| -> ! {
            panic!(
                "PostgreSQL for the tests is not reachable at {} ({why}).\n\
                 Start it with `bash scripts/services.sh` (installs and starts PostgreSQL and \
                 creates the role and database), or by hand:\n  \
                 pg_ctlcluster --skip-systemctl-redirect 15 main start\n  \
                 su postgres -c \"psql -c \\\"CREATE ROLE onboarding LOGIN PASSWORD 'onboarding' CREATEDB\\\"\"\n  \
                 su postgres -c \"createdb -O onboarding onboarding_test\"\n\
                 or point ONBOARDING_TEST_POSTGRES_URL at another server (its role needs CREATEDB).",
                redacted(&base)
            )
        };
        let mut admin =
            match tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&base))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => unreachable(e.to_string()),
                Err(_) => unreachable("no answer in 10 s".into()),
            };
        let name = format!("chaos_{}", uuid::Uuid::new_v4().simple());
        // The name is ours: "chaos_" and hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} (the role needs CREATEDB): {e}"));
        let _ = admin.close().await;
        let mut url = url::Url::parse(&base).expect("ONBOARDING_TEST_POSTGRES_URL is a URL");
        url.set_path(&format!("/{name}"));
        PgDatabase {
            base,
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        let dropped = super::on_own_runtime(move || async move {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&base).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
            admin.close().await
        });
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop database {}: {dropped:?}", self.name);
        }
    }
}

/// The local PostgreSQL cluster, stopped for a test and started again when
/// this is dropped, whatever happens (`pg_ctlcluster`, as root: how
/// `scripts/services.sh` runs it).
pub struct StoppedServer {
    version: String,
}

fn pg_ctlcluster(version: &str, action: &str) -> Result<(), String> {
    let mut args = vec!["--skip-systemctl-redirect", version, "main", action];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    let out = std::process::Command::new("pg_ctlcluster")
        .args(&args)
        .output()
        .map_err(|e| {
            format!(
                "pg_ctlcluster {action}: {e} (is PostgreSQL installed? bash scripts/services.sh)"
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pg_ctlcluster {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl StoppedServer {
    /// Stops the newest installed cluster (`/etc/postgresql/<version>/main`).
    pub fn stop() -> StoppedServer {
        let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
            .expect("PostgreSQL is installed (/etc/postgresql): bash scripts/services.sh")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        versions.sort_by_key(|v| v.parse::<u32>().unwrap_or(0));
        let version = versions.pop().expect("a PostgreSQL cluster");
        pg_ctlcluster(&version, "stop").expect("PostgreSQL stops");
        StoppedServer { version }
    }

    /// Starts it again and waits until it accepts connections.
    pub fn start(self) {
        drop(self)
    }
}

impl Drop for StoppedServer {
    fn drop(&mut self) {
        if let Err(e) = pg_ctlcluster(&self.version, "start") {
            eprintln!("could not start PostgreSQL again: {e}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect("127.0.0.1:5432").is_err()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
