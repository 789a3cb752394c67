//! `migrate()` on a table it cannot repair (F5), on both databases: a table lacking a column the
//! first migration would have created, or with a column of another type, is refused with
//! `NotMigratable` before any migration SQL runs, and nothing is recorded. A table of the full
//! shape without bookkeeping is adopted. And (F6) a SQLite row whose `expires_at` is not a number
//! is corrupt, never permanent.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use idempotency_core::{
    Claim, Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreError, StoreKey,
};
use idempotency_sql::{PostgresStore, SqlStoreError, SqliteStore, sqlx};

fn table_name() -> String {
    format!("idem_{}", &idempotency_testkit::unique_prefix()[1..17])
}

/// The SQLite 0001 table without `expires_at`.
const LITE_NO_EXPIRY: &str = "CREATE TABLE {t} (store_key TEXT NOT NULL PRIMARY KEY, \
     state TEXT NOT NULL, token BLOB NOT NULL, fingerprint BLOB NOT NULL, \
     created_at_ms INTEGER NOT NULL, completed_at_ms INTEGER, content_type TEXT, \
     encoding INTEGER, body BLOB)";

/// The Postgres 0001 table without `expires_at`.
const PG_NO_EXPIRY: &str = "CREATE TABLE {t} (store_key TEXT NOT NULL PRIMARY KEY, \
     state TEXT NOT NULL, token BYTEA NOT NULL, fingerprint BYTEA NOT NULL, \
     created_at_ms BIGINT NOT NULL, completed_at_ms BIGINT, content_type TEXT, \
     encoding SMALLINT, body BYTEA)";

fn assert_not_migratable(error: SqlStoreError, expected: &str) {
    match &error {
        SqlStoreError::NotMigratable {
            detail, migration, ..
        } => {
            assert!(detail.contains(expected), "{detail}");
            assert_eq!(*migration, "0002_waiters");
            let text = error.to_string();
            assert!(
                text.contains("by hand") && text.contains("nothing was changed"),
                "{text}"
            );
        }
        other => panic!("expected NotMigratable, got {other:?}"),
    }
}

async fn lite_refused(create: &str, expected: &str) {
    let (pool, _dir) = common::sqlite_pool(2).await;
    let t = table_name();
    sqlx::query(&create.replace("{t}", &t))
        .execute(&pool)
        .await
        .unwrap();
    let error = SqliteStore::builder(pool.clone())
        .table(&t)
        .migrate()
        .await
        .unwrap_err();
    assert_not_migratable(error, expected);
    let bookkeeping: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = ?1")
        .bind(format!("{t}_migrations"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        bookkeeping, 0,
        "no migration recorded (the run rolled back)"
    );
}

async fn pg_refused(create: &str, expected: &str) {
    let pool = common::pg_pool(2).await;
    let t = table_name();
    sqlx::query(&create.replace("{t}", &t))
        .execute(&pool)
        .await
        .unwrap();
    let error = PostgresStore::builder(pool.clone())
        .table(&t)
        .migrate()
        .await
        .unwrap_err();
    assert_not_migratable(error, expected);
    let bookkeeping: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{t}_migrations"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!bookkeeping, "no migration recorded (the run rolled back)");
}

#[tokio::test]
async fn sqlite_table_without_expires_at_is_not_migratable() {
    lite_refused(LITE_NO_EXPIRY, "missing column `expires_at`").await;
}

#[tokio::test]
async fn sqlite_column_of_another_type_is_not_migratable() {
    let create = LITE_NO_EXPIRY.replace("body BLOB)", "body BLOB, expires_at TEXT NOT NULL)");
    lite_refused(&create, "column `expires_at` is TEXT, expected INTEGER").await;
}

#[tokio::test]
async fn postgres_table_without_expires_at_is_not_migratable() {
    pg_refused(PG_NO_EXPIRY, "missing column `expires_at`").await;
}

#[tokio::test]
async fn postgres_column_of_another_type_is_not_migratable() {
    let create = PG_NO_EXPIRY.replace("body BYTEA)", "body BYTEA, expires_at BIGINT NOT NULL)");
    pg_refused(
        &create,
        "column `expires_at` is bigint, expected timestamp with time zone",
    )
    .await;
}

/// A table created with the documented SQL of every migration, by another tool (no
/// bookkeeping): `migrate()` records the migrations without re-running SQLite's `ADD COLUMN`.
#[tokio::test]
async fn sqlite_full_table_without_bookkeeping_is_adopted() {
    let (pool, _dir) = common::sqlite_pool(2).await;
    for sql in [
        include_str!("../migrations/sqlite/0001_create_records.sql"),
        include_str!("../migrations/sqlite/0002_waiters.sql"),
    ] {
        sqlx::raw_sql(sql).execute(&pool).await.unwrap();
    }
    SqliteStore::builder(pool.clone())
        .migrate()
        .await
        .expect("adopted");
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM idempotency_records_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2]);
}

/// F6: on SQLite any text sorts above every number, so `expires_at = 'never'` would make a row
/// live for ever; it is corrupt for `get` and `try_claim`, as other invalid rows are.
#[tokio::test]
async fn sqlite_non_numeric_expires_at_is_corrupt() {
    let (store, _dir) = common::sqlite_store(2).await;
    let key = StoreKey::from_raw("never");
    let record = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 1,
    };
    assert_eq!(
        store
            .try_claim(&key, &record, Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Claimed
    );
    for bad in ["'never'", "'2999-01-01'", "x'00'"] {
        sqlx::query(&format!(
            "UPDATE idempotency_records SET expires_at = {bad} WHERE store_key = 'never'"
        ))
        .execute(store.pool())
        .await
        .unwrap();
        let got = store.get(&key).await;
        assert!(matches!(got, Err(StoreError::Corrupt(_))), "{bad}: {got:?}");
        let other = InProgress {
            token: LeaseToken::generate(),
            ..record.clone()
        };
        let claimed = store.try_claim(&key, &other, Duration::from_secs(60)).await;
        assert!(
            matches!(claimed, Err(StoreError::Corrupt(_))),
            "{bad}: {claimed:?}"
        );
    }
}
