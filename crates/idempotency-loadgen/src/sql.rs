//! The SQL rows: a Postgres server (the testkit fixture) and a SQLite file for `postgres` and
//! `sqlite` (the engine on the SQL stores), and the `raw-postgres` baseline: `sqlx` sending
//! exactly the statements `PostgresStore` sends (its own `statements()`), binding the same
//! values, with none of our code in the loop (no engine, no row decoding, no timeouts).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use idempotency_core::{LeaseToken, OutcomeEncoding, unix_millis_now};
use idempotency_sql::sqlx::postgres::{PgPool, PgPoolOptions};
use idempotency_sql::sqlx::sqlite::SqlitePoolOptions;
use idempotency_sql::sqlx::{self, Row as _};
use idempotency_sql::{PostgresStore, SqlStatements, SqliteStore};
use idempotency_testkit::fixtures::PostgresServer;

use crate::load::Worker;
use crate::scenario::{LEASE, RETENTION, Scenario, fingerprint, outcome};

/// Connections in each pool: one per task at the highest default concurrency.
const POOL: u32 = 64;

/// The database servers of a run.
pub(crate) struct SqlServers {
    pub(crate) postgres: PostgresServer,
    sqlite_dir: PathBuf,
}

impl SqlServers {
    pub(crate) fn start() -> Result<Self> {
        let postgres = PostgresServer::start().map_err(|e| anyhow!("postgres server: {e}"))?;
        let sqlite_dir = std::env::temp_dir().join(format!(
            "idempotency-bench-sqlite-{}-{:08x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&sqlite_dir)
            .with_context(|| format!("creating {}", sqlite_dir.display()))?;
        Ok(Self {
            postgres,
            sqlite_dir,
        })
    }

    /// The migrated stores (on the runtime that will drive them).
    pub(crate) async fn connect(&self) -> Result<(PostgresStore, SqliteStore, String)> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL)
            .connect(self.postgres.url())
            .await
            .context("connecting to postgres")?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await?;
        let postgres = PostgresStore::builder(pool).migrate().await?;
        let options = idempotency_sql::sqlite_connect_options(self.sqlite_dir.join("bench.db"));
        let lite = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .context("opening sqlite")?;
        let sqlite = SqliteStore::builder(lite).migrate().await?;
        Ok((postgres, sqlite, version))
    }

    pub(crate) fn stop(self) {
        drop(self.postgres);
        let _ = std::fs::remove_dir_all(&self.sqlite_dir);
    }
}

fn rand_suffix() -> u32 {
    LeaseToken::generate().as_bytes()[0..4]
        .iter()
        .fold(0, |acc, b| (acc << 8) | u32::from(*b))
}

/// Empty the tables so every cell starts from the same state.
pub(crate) async fn flush(postgres: &PostgresStore, sqlite: &SqliteStore) -> Result<()> {
    sqlx::query(&format!("TRUNCATE {}", postgres.quoted_table()))
        .execute(postgres.pool())
        .await?;
    sqlx::query(&format!("DELETE FROM {}", sqlite.table()))
        .execute(sqlite.pool())
        .await?;
    Ok(())
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// One raw `sqlx` task on the store's own pool and statements.
pub(crate) struct RawPgWorker {
    pool: PgPool,
    sql: SqlStatements,
    scenario: Scenario,
    prefix: String,
    n: u64,
    fixed: String,
    fingerprint: [u8; 32],
    body: Vec<u8>,
    content_type: Option<String>,
}

impl RawPgWorker {
    pub(crate) fn new(
        store: &PostgresStore,
        scenario: Scenario,
        prefix: String,
        fixed: String,
    ) -> Self {
        let outcome = outcome();
        Self {
            pool: store.pool().clone(),
            sql: store.statements().clone(),
            scenario,
            prefix,
            n: 0,
            fixed,
            fingerprint: *fingerprint().as_bytes(),
            body: outcome.body.to_vec(),
            content_type: outcome.content_type,
        }
    }

    /// The claim statement; whether it claimed.
    async fn claim(&self, key: &str, token: &[u8; 16]) -> Result<bool> {
        let row = sqlx::query(&self.sql.claim)
            .bind(key)
            .bind(&token[..])
            .bind(&self.fingerprint[..])
            .bind(i64::try_from(unix_millis_now()).unwrap_or(i64::MAX))
            .bind(micros(LEASE))
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<bool>, _>("claimed")? == Some(true))
    }

    async fn complete(&self, key: &str, token: &[u8; 16]) -> Result<()> {
        let encoding: i16 = match outcome().encoding {
            OutcomeEncoding::Lz4 => 1,
            _ => 0,
        };
        let applied: bool = sqlx::query_scalar(&self.sql.complete)
            .bind(key)
            .bind(&token[..])
            .bind(i64::try_from(unix_millis_now()).unwrap_or(i64::MAX))
            .bind(self.content_type.as_deref())
            .bind(encoding)
            .bind(&self.body[..])
            .bind(micros(RETENTION))
            .fetch_one(&self.pool)
            .await?;
        if !applied {
            bail!("completion not applied");
        }
        Ok(())
    }
}

impl Worker for RawPgWorker {
    async fn op(&mut self) -> Result<()> {
        let token = *LeaseToken::generate().as_bytes();
        match self.scenario {
            Scenario::Fresh => {
                let key = format!("{}{}", self.prefix, self.n);
                self.n += 1;
                if !self.claim(&key, &token).await? {
                    bail!("a fresh key was held");
                }
                self.complete(&key, &token).await
            }
            Scenario::Replay | Scenario::Conflict => {
                if self.claim(&self.fixed, &token).await? {
                    bail!("the scenario key was claimed again");
                }
                Ok(())
            }
        }
    }
}

/// Put the fixed key in the state the scenario needs.
pub(crate) async fn prepare_raw(
    store: &PostgresStore,
    scenario: Scenario,
    key: &str,
) -> Result<()> {
    if scenario == Scenario::Fresh {
        return Ok(());
    }
    let worker = RawPgWorker::new(store, scenario, String::new(), key.to_owned());
    let token = *LeaseToken::generate().as_bytes();
    if !worker.claim(key, &token).await? {
        bail!("the scenario key was held");
    }
    if scenario == Scenario::Replay {
        worker.complete(key, &token).await?;
    }
    Ok(())
}
