//! Construction, migrations and expired-row cleanup on both databases: a missing table or one
//! of the wrong shape is a typed error naming the migration; `migrate()` is idempotent and safe
//! to run concurrently; `purge_expired` deletes in bounded batches and never a live row.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use idempotency_core::{Claim, Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreKey};
use idempotency_sql::{PostgresStore, PurgeExpired, PurgeTask, SqlStoreError, SqliteStore, sqlx};

fn table_name() -> String {
    format!("idem_{}", &idempotency_testkit::unique_prefix()[1..17])
}

fn claim_record() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 1,
    }
}

#[tokio::test]
async fn postgres_missing_table_names_the_migration() {
    let pool = common::pg_pool(2).await;
    let error = PostgresStore::builder(pool)
        .table(table_name())
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            SqlStoreError::MissingTable {
                migration: "0001_create_records",
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("migrate()") && message.contains("0001_create_records"),
        "{message}"
    );
}

#[tokio::test]
async fn sqlite_missing_table_names_the_migration() {
    let (pool, _dir) = common::sqlite_pool(2).await;
    let error = SqliteStore::new(pool).await.unwrap_err();
    assert!(
        matches!(
            error,
            SqlStoreError::MissingTable {
                migration: "0001_create_records",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn postgres_wrong_shape_is_refused() {
    let pool = common::pg_pool(2).await;
    let table = table_name();
    sqlx::query(&format!(
        "CREATE TABLE {table} (store_key TEXT PRIMARY KEY, state INTEGER)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let error = PostgresStore::builder(pool)
        .table(&table)
        .build()
        .await
        .unwrap_err();
    match error {
        SqlStoreError::WrongShape {
            detail, migration, ..
        } => {
            assert_eq!(migration, "0002_waiters");
            assert!(detail.contains("missing column `token`"), "{detail}");
            assert!(
                detail.contains("column `state` is integer, expected text"),
                "{detail}"
            );
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
}

/// A table of an earlier version (migration 0001 only, with a live row) is refused by `build()`
/// naming the missing migration, and upgraded by `migrate()` with its rows kept.
#[tokio::test]
async fn postgres_table_of_0001_is_upgraded() {
    let pool = common::pg_pool(2).await;
    let table = table_name();
    let create = include_str!("../migrations/postgres/0001_create_records.sql")
        .replace(
            "\"idempotency_records_expires_at\"",
            &format!("\"{table}_expires_at\""),
        )
        .replace("\"idempotency_records\"", &format!("\"{table}\""));
    sqlx::raw_sql(&create).execute(&pool).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} (store_key, state, token, fingerprint, created_at_ms, expires_at) \
         VALUES ('k', 'in_progress', '\\x00', '\\x00', 0, clock_timestamp() + interval '1 hour')"
    ))
    .execute(&pool)
    .await
    .unwrap();
    match PostgresStore::builder(pool.clone())
        .table(&table)
        .build()
        .await
        .unwrap_err()
    {
        SqlStoreError::WrongShape {
            detail, migration, ..
        } => {
            assert_eq!(migration, "0002_waiters");
            assert_eq!(detail, "missing column `waiters`");
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
    // Recorded as not applied: `migrate()` applies 0001 (a no-op: IF NOT EXISTS) and 0002.
    PostgresStore::builder(pool.clone())
        .table(&table)
        .migrate()
        .await
        .expect("upgrade");
    let waiters: Vec<bool> = sqlx::query_scalar(&format!("SELECT waiters FROM {table}"))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(waiters, vec![false], "the row is kept, without waiters");
}

#[tokio::test]
async fn sqlite_wrong_shape_is_refused() {
    let (pool, _dir) = common::sqlite_pool(2).await;
    sqlx::query("CREATE TABLE idempotency_records (store_key TEXT PRIMARY KEY, body TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    let error = SqliteStore::new(pool).await.unwrap_err();
    assert!(
        matches!(error, SqlStoreError::WrongShape { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn invalid_table_names_are_refused_before_any_sql() {
    let pool = common::pg_pool(1).await;
    for bad in ["drop table x; --", "a\"b", "a.b.c"] {
        let error = PostgresStore::builder(pool.clone())
            .table(bad)
            .migrate()
            .await
            .unwrap_err();
        assert!(
            matches!(error, SqlStoreError::InvalidTableName { .. }),
            "{bad}: {error:?}"
        );
    }
    let (lite, _dir) = common::sqlite_pool(1).await;
    let error = SqliteStore::builder(lite)
        .table("main.records")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, SqlStoreError::InvalidTableName { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrate_is_idempotent_and_concurrency_safe() {
    let pool = common::pg_pool(8).await;
    let table = table_name();
    // Four instances starting at once on a fresh database.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let builder = PostgresStore::builder(pool.clone()).table(&table);
            tokio::spawn(builder.migrate())
        })
        .collect();
    for run in runs {
        run.await.unwrap().expect("concurrent migrate");
    }
    let store = PostgresStore::builder(pool.clone())
        .table(&table)
        .migrate()
        .await
        .expect("again");
    let versions: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM {table}_migrations ORDER BY version"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(versions, vec![1, 2]);
    let key = StoreKey::from_raw("k");
    assert_eq!(
        store
            .try_claim(&key, &claim_record(), Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Claimed
    );
    // A schema-qualified table works too.
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS s_{table}"))
        .execute(&pool)
        .await
        .unwrap();
    let qualified = PostgresStore::builder(pool.clone())
        .table(format!("s_{table}.records"))
        .migrate()
        .await
        .expect("schema-qualified");
    assert_eq!(
        qualified
            .try_claim(&key, &claim_record(), Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Claimed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrate_is_idempotent_and_concurrency_safe() {
    let (pool, _dir) = common::sqlite_pool(4).await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(
                SqliteStore::builder(pool.clone())
                    .table("records")
                    .migrate(),
            )
        })
        .collect();
    for run in runs {
        run.await.unwrap().expect("concurrent migrate");
    }
    SqliteStore::builder(pool.clone())
        .table("records")
        .migrate()
        .await
        .expect("again");
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM records_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2]);
}

async fn purge_checks<S: IdempotencyStore + PurgeExpired + Clone>(store: S) {
    let prefix = idempotency_testkit::unique_prefix();
    for n in 0..25 {
        let key = StoreKey::from_raw(format!("{prefix}short-{n}"));
        store
            .try_claim(&key, &claim_record(), Duration::from_millis(1))
            .await
            .unwrap();
    }
    let live = StoreKey::from_raw(format!("{prefix}live"));
    let live_claim = claim_record();
    store
        .try_claim(&live, &live_claim, Duration::from_secs(60))
        .await
        .unwrap();
    // 1 ms leases on the database clock.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let first = store.purge_expired(10).await.unwrap();
    assert_eq!(first, 10, "one bounded batch");
    let rest = store.purge_all_expired(10).await.unwrap();
    assert!(rest >= 15, "the rest, batch by batch ({rest})");
    assert_eq!(store.purge_expired(10).await.unwrap(), 0);
    assert_eq!(
        store.get(&live).await.unwrap(),
        Some(idempotency_core::Record::InProgress(live_claim)),
        "live rows are never purged"
    );

    // The background task does the same on its own.
    for n in 0..5 {
        let key = StoreKey::from_raw(format!("{prefix}bg-{n}"));
        store
            .try_claim(&key, &claim_record(), Duration::from_millis(1))
            .await
            .unwrap();
    }
    let task = PurgeTask::spawn(store.clone(), Duration::from_millis(20), 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Purged rows are gone from the table, not only invisible: a purge finds nothing left.
        tokio::time::sleep(Duration::from_millis(30)).await;
        if store.purge_expired(100).await.unwrap() == 0 || Instant::now() > deadline {
            break;
        }
    }
    task.stop();
    assert_eq!(store.purge_expired(100).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_purge_expired_in_batches() {
    let pool = common::pg_pool(4).await;
    let store = PostgresStore::builder(pool)
        .table(table_name())
        .migrate()
        .await
        .unwrap();
    purge_checks(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_purge_expired_in_batches() {
    let (store, _dir) = common::sqlite_store(4).await;
    purge_checks(store).await;
}
