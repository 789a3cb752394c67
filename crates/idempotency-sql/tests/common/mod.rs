//! Shared test helpers: one Postgres per test binary, fresh SQLite files, and the behaviour
//! suite's harnesses over both stores.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use idempotency_testkit::async_trait;
use std::str::FromStr as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use idempotency_core::{DynIdempotencyStore, StoreKey};
use idempotency_sql::sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use idempotency_sql::sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use idempotency_sql::{PostgresStore, SqliteStore, sqlite_connect_options, sqlx};
use idempotency_testkit::fixtures::PostgresServer;
use idempotency_testkit::{RawValue, StoreHarness, unique_prefix};

pub mod abandoned;
pub mod orders;
pub mod wake;

/// One server for every test of the binary (statics are never dropped: the fixture's watchdog
/// stops the server when the test binary exits).
pub fn shared_server() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(|| PostgresServer::start().expect("starting the shared postgres server"))
}

/// A pool on the shared server, for the current test's runtime.
pub async fn pg_pool(max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(shared_server().url())
        .await
        .expect("connecting to the shared postgres server")
}

/// A fresh database on the shared server (`name` + a unique suffix): its name and URL.
pub async fn fresh_database(name: &str) -> (String, String) {
    let database = orders::identifier(name);
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&pg_pool(1).await)
        .await
        .expect("create database");
    shared_server()
        .url()
        .rsplit_once('/')
        .map(|(base, _)| (database.clone(), format!("{base}/{database}")))
        .expect("url with a database")
}

/// A pool of up to `max` connections on `url`, each starting with `search_path` = `path`
/// (`None`: the database's default).
pub async fn pool_on(url: &str, path: Option<&str>, max: u32) -> PgPool {
    let mut connect = PgConnectOptions::from_str(url).expect("url");
    if let Some(path) = path {
        connect = connect.options([("search_path", path)]);
    }
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect)
        .await
        .expect("pool")
}

/// A migrated store on the default table of the shared server.
pub async fn pg_store(max: u32) -> PostgresStore {
    PostgresStore::builder(pg_pool(max).await)
        .operation_timeout(Duration::from_secs(10))
        .migrate()
        .await
        .expect("migrating")
}

/// A fresh SQLite database file (WAL, busy timeout) and a pool on it; the directory lives as
/// long as the returned guard.
pub async fn sqlite_pool(max: u32) -> (SqlitePool, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = SqlitePoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(sqlite_connect_options(dir.path().join("app.db")))
        .await
        .expect("opening sqlite");
    (pool, dir)
}

/// A migrated store on a fresh SQLite database.
pub async fn sqlite_store(max: u32) -> (SqliteStore, tempfile::TempDir) {
    let (pool, dir) = sqlite_pool(max).await;
    let store = SqliteStore::builder(pool)
        .operation_timeout(Duration::from_secs(10))
        .migrate()
        .await
        .expect("migrating");
    (store, dir)
}

/// Columns of a row that is not a record: an unknown state (the raw bytes) with tokens of the
/// wrong length, or a completed row without an outcome.
fn raw_columns(value: &RawValue) -> (String, Vec<u8>, Vec<u8>) {
    match value {
        RawValue::String(bytes) => (
            String::from_utf8_lossy(bytes).into_owned(),
            bytes.clone(),
            bytes.clone(),
        ),
        RawValue::Hash => ("completed".to_owned(), vec![7; 16], vec![7; 32]),
    }
}

pub struct PgHarness {
    pub store: Arc<PostgresStore>,
    pub prefix: String,
}

pub async fn pg_harness() -> PgHarness {
    PgHarness {
        store: Arc::new(pg_store(24).await),
        prefix: unique_prefix(),
    }
}

#[async_trait]
impl StoreHarness for PgHarness {
    fn store(&self) -> Arc<dyn DynIdempotencyStore> {
        self.store.clone()
    }
    async fn put_raw(&self, key: &StoreKey, value: RawValue) {
        let (state, token, fingerprint) = raw_columns(&value);
        let table = self.store.table();
        sqlx::query(&format!("DELETE FROM {table} WHERE store_key = $1"))
            .bind(key.as_str())
            .execute(self.store.pool())
            .await
            .expect("DELETE");
        sqlx::query(&format!(
            "INSERT INTO {table} (store_key, state, token, fingerprint, created_at_ms, expires_at) \
             VALUES ($1, $2, $3, $4, 0, clock_timestamp() + interval '1 hour')"
        ))
        .bind(key.as_str())
        .bind(state)
        .bind(token)
        .bind(fingerprint)
        .execute(self.store.pool())
        .await
        .expect("INSERT raw");
    }
    fn key_prefix(&self) -> &str {
        &self.prefix
    }
}

pub struct SqliteHarness {
    pub store: Arc<SqliteStore>,
    pub prefix: String,
    _dir: tempfile::TempDir,
}

pub async fn sqlite_harness() -> SqliteHarness {
    let (store, dir) = sqlite_store(8).await;
    SqliteHarness {
        store: Arc::new(store),
        prefix: unique_prefix(),
        _dir: dir,
    }
}

#[async_trait]
impl StoreHarness for SqliteHarness {
    fn store(&self) -> Arc<dyn DynIdempotencyStore> {
        self.store.clone()
    }
    async fn put_raw(&self, key: &StoreKey, value: RawValue) {
        let (state, token, fingerprint) = raw_columns(&value);
        let table = self.store.table();
        sqlx::query(&format!(
            "INSERT OR REPLACE INTO {table} \
             (store_key, state, token, fingerprint, created_at_ms, expires_at) \
             VALUES (?1, ?2, ?3, ?4, 0, 99999999999999)"
        ))
        .bind(key.as_str())
        .bind(state)
        .bind(token)
        .bind(fingerprint)
        .execute(self.store.pool())
        .await
        .expect("INSERT raw");
    }
    fn key_prefix(&self) -> &str {
        &self.prefix
    }
}
