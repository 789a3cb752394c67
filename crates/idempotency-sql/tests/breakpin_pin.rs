//! breakpin: a Postgres records table named without a schema is pinned, at `build()` /
//! `migrate()`, to the schema it resolves to; these are the resolutions that cannot be pinned.
//! A relation of the name that is not a table (a materialized view, a composite type, a
//! sequence), or the connection's own temporary schema, is refused with a typed error at
//! construction, instead of a store that was built and whose every statement then failed.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::orders::identifier;
use common::{fresh_database, pool_on};
use idempotency_core::{Claim, Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreKey};
use idempotency_sql::sqlx::postgres::PgPool;
use idempotency_sql::{PostgresStore, SqlStoreError, sqlx};

async fn execute(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql).execute(pool).await.expect(sql);
}

/// A claim of a new key on `store` succeeds.
async fn claims(store: &PostgresStore) {
    let key = StoreKey::from_raw(identifier("k"));
    let claim = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("order"),
        created_at_ms: 1_764_000_000_000,
    };
    assert_eq!(
        store
            .try_claim(&key, &claim, Duration::from_secs(30))
            .await
            .expect("a claim"),
        Claim::Claimed
    );
}

/// Every column of the records table, as a composite type would list them.
const COLUMNS: &str = "store_key text, state text, token bytea, fingerprint bytea, \
     created_at_ms bigint, completed_at_ms bigint, content_type text, encoding smallint, \
     body bytea, expires_at timestamptz, waiters boolean";

/// A materialized view and a composite type named `idempotency_records`, with every column of
/// the records table, in the only schema of `search_path`: `build()` refuses each with
/// `WrongShape` naming what it is, and `migrate()` with `NotMigratable`, creating nothing
/// (no bookkeeping table). A sequence of the name is named so too. Before, `build()` accepted
/// the materialized view and the composite type (their columns matched) and every claim then
/// failed with `StoreError::Backend`; `migrate()` failed with a raw database error after
/// creating the bookkeeping table. A simple view over the records table is still a table the
/// store can use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relation_of_the_name_that_is_not_a_table_is_refused() {
    let (_, url) = fresh_database("breakpin_kind").await;
    let admin = pool_on(&url, None, 2).await;
    execute(&admin, "CREATE SCHEMA real").await;
    PostgresStore::builder(admin.clone())
        .table("real.idempotency_records")
        .migrate()
        .await
        .expect("the real table");
    for (schema, ddl, what) in [
        (
            "mv",
            "CREATE MATERIALIZED VIEW mv.idempotency_records AS \
             SELECT * FROM real.idempotency_records",
            "a materialized view",
        ),
        (
            "ty",
            &format!("CREATE TYPE ty.idempotency_records AS ({COLUMNS})"),
            "a composite type",
        ),
        (
            "seq",
            "CREATE SEQUENCE seq.idempotency_records",
            "a sequence",
        ),
    ] {
        execute(&admin, &format!("CREATE SCHEMA {schema}")).await;
        execute(&admin, ddl).await;
        let pool = pool_on(&url, Some(schema), 1).await;
        let expected = format!("it is {what}, not a table");
        for table in [
            "idempotency_records".to_owned(),
            format!("{schema}.idempotency_records"),
        ] {
            let error = PostgresStore::builder(pool.clone())
                .table(&table)
                .build()
                .await
                .expect_err(&format!("{table} in {schema} is {what}"));
            assert!(
                matches!(&error, SqlStoreError::WrongShape { detail, .. } if *detail == expected),
                "{schema}: {error:?}"
            );
            assert!(error.to_string().contains(&expected), "{error}");
            let error = PostgresStore::builder(pool.clone())
                .table(&table)
                .migrate()
                .await
                .expect_err(&format!("{table} in {schema} is {what}"));
            assert!(
                matches!(&error, SqlStoreError::NotMigratable { detail, .. } if *detail == expected),
                "{schema}: {error:?}"
            );
        }
        let bookkeeping: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{schema}.idempotency_records_migrations"))
            .fetch_one(&admin)
            .await
            .unwrap();
        assert!(!bookkeeping, "{schema}: migrate() created nothing");
    }
    // Held: a simple view over the records table is updatable, ON CONFLICT included.
    execute(&admin, "CREATE SCHEMA v").await;
    execute(
        &admin,
        "CREATE VIEW v.idempotency_records AS SELECT * FROM real.idempotency_records",
    )
    .await;
    let store = PostgresStore::builder(pool_on(&url, Some("v"), 1).await)
        .build()
        .await
        .expect("a view over the records table");
    assert_eq!(store.quoted_table(), "\"v\".\"idempotency_records\"");
    claims(&store).await;
}

/// The connection's own temporary schema is never pinned: a temporary table named
/// `idempotency_records` on the (one) connection `build()` runs on, and `migrate()` of a new
/// table on a connection whose `search_path` starts with `pg_temp` (its temporary schema
/// exists), are refused with `TemporarySchema`. Before, `build()` pinned `"pg_temp_N"` and
/// every statement on the pool's other connections failed ("cannot access temporary tables of
/// other sessions"), and `migrate()` created the records table as a temporary table, dropped
/// when that connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connections_temporary_schema_is_never_pinned() {
    let (_, url) = fresh_database("breakpin_temp").await;
    let one = pool_on(&url, None, 1).await;
    PostgresStore::builder(one.clone())
        .migrate()
        .await
        .expect("public.idempotency_records");
    execute(
        &one,
        "CREATE TEMP TABLE idempotency_records \
         (LIKE public.idempotency_records INCLUDING ALL)",
    )
    .await;
    let error = PostgresStore::builder(one.clone())
        .build()
        .await
        .expect_err("resolves to the temporary table");
    assert!(
        matches!(&error, SqlStoreError::TemporarySchema { table, schema }
            if table == "idempotency_records" && schema.starts_with("pg_temp_")),
        "{error:?}"
    );
    assert!(error.to_string().contains("search_path"), "{error}");
    execute(&one, "DROP TABLE pg_temp.idempotency_records").await;
    let store = PostgresStore::builder(one.clone())
        .build()
        .await
        .expect("the permanent table, once the temporary one is gone");
    assert_eq!(store.quoted_table(), "\"public\".\"idempotency_records\"");

    let temp_first = pool_on(&url, Some("pg_temp,public"), 1).await;
    execute(&temp_first, "CREATE TEMP TABLE scratch (a int)").await;
    let error = PostgresStore::builder(temp_first.clone())
        .table("fresh_records")
        .migrate()
        .await
        .expect_err("would be created as a temporary table");
    assert!(
        matches!(&error, SqlStoreError::TemporarySchema { table, .. } if table == "fresh_records"),
        "{error:?}"
    );
    let created: bool = sqlx::query_scalar("SELECT to_regclass('fresh_records') IS NOT NULL")
        .fetch_one(&temp_first)
        .await
        .unwrap();
    assert!(!created, "nothing created");
    // Held: an existing permanent table later in that path is found and pinned.
    let store = PostgresStore::builder(temp_first)
        .migrate()
        .await
        .expect("public.idempotency_records, found through the path");
    assert_eq!(store.quoted_table(), "\"public\".\"idempotency_records\"");
    claims(&store).await;
}

/// One instance names the table without a schema (resolved through its `search_path` to
/// `rN`), another names it `rN.idempotency_records`; both run `migrate()` at once on a new
/// schema, 20 times: every run succeeds, and both stores use the one table. Before, their
/// advisory locks had different keys (`idempotency-sql:idempotency_records` and
/// `idempotency-sql:rN.idempotency_records`), the two migrations ran side by side, and in
/// most rounds (16 of 20 here) one failed with a raw catalog error (SQLSTATE 23505 on
/// `pg_type_typname_nsp_index`, or 42P07) — the instance's start-up failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_serialises_with_an_instance_naming_the_schema() {
    let (_, url) = fresh_database("breakpin_lock").await;
    let admin = pool_on(&url, None, 2).await;
    let mut failures = Vec::new();
    for round in 0..20 {
        let schema = format!("r{round}");
        execute(&admin, &format!("CREATE SCHEMA {schema}")).await;
        let bare = pool_on(&url, Some(&schema), 1).await;
        let qualified = pool_on(&url, None, 1).await;
        let name = format!("{schema}.idempotency_records");
        let (a, b) = tokio::join!(
            PostgresStore::builder(bare).migrate(),
            PostgresStore::builder(qualified).table(&name).migrate()
        );
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a.quoted_table(), b.quoted_table()),
            (a, b) => failures.push(format!("{round}: {:?} / {:?}", a.err(), b.err())),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
