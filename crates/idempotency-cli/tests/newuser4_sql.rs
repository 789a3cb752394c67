//! newuser4: the operators' CLI on the SQL store as a new operator meets it: a mistyped
//! `DATABASE_URL`, and what `inspect` says about a claim's lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{json, run, store_key};
use idempotency::sql::SqliteStore;
use idempotency::sql::sqlx;
use idempotency::{Fingerprint, IdempotencyStore, InProgress, LeaseToken};
use idempotency_testkit::fixtures::{HOW_TO_GET_POSTGRES, PostgresServer};

/// A mistyped SQLite path (the operator's shell is in another directory than the app's) must not
/// be answered "no record" (exit 3), which reads as "the record is gone": the CLI used to create
/// an empty database file there, migrate the records table into it and report the key missing
/// (`doctor` even said all is well, 0 rows). Every command fails with exit 2 naming the
/// database, and creates nothing.
#[test]
fn a_mistyped_sqlite_path_is_not_created_and_not_answered_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo-shop.db");
    let url = format!("sqlite://{}", path.display());
    let env = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", url.as_str())];
    for args in [
        &["inspect", "alice", "order-1"][..],
        &["doctor"],
        &["stats"],
        &["purge", "--scope", "alice", "--yes"],
    ] {
        let ran = run(&env, args);
        assert!(!path.exists(), "{args:?} created {}", path.display());
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.all());
        assert!(ran.stderr.contains("typo-shop.db"), "{}", ran.stderr);
        assert!(
            ran.stderr.contains("never creates a database"),
            "{}",
            ran.stderr
        );
    }
}

/// A SQLite database that exists but is not the app's (no records table): refused with exit 2
/// naming the database and the table, and left as it was (no table, no migrations table).
#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_database_without_the_records_table_is_refused_and_not_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let pool =
        sqlx::sqlite::SqlitePool::connect_with(idempotency::sql::sqlite_connect_options(&path))
            .await
            .unwrap();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let url = format!("sqlite://{}", path.display());
    let env = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", url.as_str())];
    for args in [
        &["inspect", "alice", "order-1"][..],
        &["doctor"],
        &["stats"],
    ] {
        let ran = run(&env, args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.all());
        assert!(ran.stderr.contains("shop.db"), "{}", ran.stderr);
        assert!(ran.stderr.contains("idempotency_records"), "{}", ran.stderr);
        assert!(
            ran.stderr.contains("never creates or migrates"),
            "{}",
            ran.stderr
        );
    }
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(tables, ["orders"]);
}

/// A Postgres database that exists but is not the app's (here: a fresh server's, never
/// migrated): exit 2 naming the table, and no DDL run in it.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_database_without_the_records_table_is_refused_and_not_migrated() {
    let server = PostgresServer::start().unwrap_or_else(|e| panic!("{e}: {HOW_TO_GET_POSTGRES}"));
    let env = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", server.url())];
    for args in [&["inspect", "alice", "order-1"][..], &["doctor"]] {
        let ran = run(&env, args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.all());
        assert!(ran.stderr.contains("idempotency_records"), "{}", ran.stderr);
        assert!(
            ran.stderr.contains("is DATABASE_URL the app's database"),
            "{}",
            ran.stderr
        );
    }
    let pool = sqlx::postgres::PgPool::connect(server.url()).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name LIKE 'idempotency%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "the CLI created a table");
}

/// A store that does not answer: the CLI's own error only (exit 1), not the app's start-up
/// banner ("THE IDEMPOTENCY STORE IS NOT REACHABLE: starting without it…") before it.
#[test]
fn an_unreachable_store_prints_only_the_clis_error() {
    // A port nothing listens on, held so no other server takes it while the test runs.
    let down = idempotency_testkit::RefusedPort::new();
    let port = down.port();
    let postgres = format!("postgres://app:hunter2@127.0.0.1:{port}/shop");
    let redis = format!("redis://:hunter2@127.0.0.1:{port}/0");
    for env in [
        vec![
            ("IDEMPOTENCY_STORE", "sql"),
            ("DATABASE_URL", postgres.as_str()),
        ],
        vec![("REDIS_URL", redis.as_str())],
    ] {
        let ran = run(&env, &["inspect", "alice", "order-1"]);
        assert_eq!(ran.code, 1, "{}", ran.all());
        assert!(
            ran.stderr.starts_with("error: cannot reach the store"),
            "{}",
            ran.stderr
        );
        assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
        assert!(!ran.all().contains("starting without it"), "{}", ran.all());
        assert!(!ran.all().contains("hunter2"), "{}", ran.all());
    }
}

/// `inspect` on a SQL claim shows the "lease/retention left" the README promises (the SQL
/// stores answer `time_to_live` from the row's `expires_at`), so the operator deciding whether
/// to `release` a stuck claim sees when it would lapse by itself.
#[tokio::test(flavor = "multi_thread")]
async fn inspect_on_sqlite_shows_the_lease_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let pool =
        sqlx::sqlite::SqlitePool::connect_with(idempotency::sql::sqlite_connect_options(&path))
            .await
            .unwrap();
    let store = SqliteStore::builder(pool).migrate().await.unwrap();
    let claim = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("order"),
        created_at_ms: idempotency::unix_millis_now(),
    };
    store
        .try_claim(
            &store_key("alice", "order-1"),
            &claim,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let url = format!("sqlite://{}", path.display());
    let env = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", url.as_str())];
    let inspected = run(&env, &["inspect", "alice", "order-1", "--json"]);
    assert_eq!(inspected.code, 0, "{}", inspected.all());
    let value = json(&inspected);
    assert_eq!(value["state"], "in_progress");
    let left = value["lease_left_ms"].as_u64();
    assert!(
        left.is_some_and(|ms| ms > 50_000 && ms <= 60_000),
        "lease left: {value}"
    );
}

/// Pins the good behaviour: an unusable SQLite URL (a directory that does not exist) is a
/// configuration error (exit 2) naming the cause, and a `mysql://` URL is refused before any
/// connection.
#[test]
fn unusable_database_urls_exit_2_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/no/such/dir/app.db", dir.path().display());
    let env = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", url.as_str())];
    let opened = run(&env, &["inspect", "alice", "order-1"]);
    assert_eq!(opened.code, 2, "{}", opened.all());
    assert!(
        opened.stderr.contains("unable to open database file"),
        "{}",
        opened.stderr
    );
    let env = [
        ("IDEMPOTENCY_STORE", "sql"),
        ("DATABASE_URL", "mysql://app:secret@db/shop"),
    ];
    let refused = run(&env, &["stats"]);
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert!(
        refused
            .stderr
            .contains("neither a postgres:// nor a sqlite: URL"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains("secret"), "{}", refused.stderr);
}
