//! The Postgres records table named without a schema (the default `idempotency_records`) is
//! resolved once, when the store is built or migrated, and every statement names it with that
//! schema: a table of the same name in a schema earlier in the connections' `search_path` (one
//! created after the store was built, or one the path of a pool connection finds first) never
//! becomes the store's table.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::orders::{Fixture, claim, identifier};
use common::{fresh_database, pool_on};
use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyKey, IdempotencyStore, InProgress,
    LeaseToken, Record, StoreKey, StoredOutcome,
};
use idempotency_sql::sqlx::postgres::PgPool;
use idempotency_sql::{PostgresStore, SqlStoreError, sqlx};

async fn execute(pool: &PgPool, sql: &str) {
    sqlx::query(sql).execute(pool).await.expect(sql);
}

/// Whether the relation `name` (`schema.table`) exists.
async fn exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT pg_catalog.to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("to_regclass")
}

/// The body of the row `key` of the table `table` (`schema.table`), if any.
async fn body_in(pool: &PgPool, table: &str, key: &StoreKey) -> Option<Vec<u8>> {
    sqlx::query_scalar::<_, Option<Vec<u8>>>(&format!(
        "SELECT body FROM {table} WHERE store_key = $1"
    ))
    .bind(key.as_str())
    .fetch_optional(pool)
    .await
    .expect("select body")
    .flatten()
}

/// Whether the table `table` (`schema.table`) has a row for `key`.
async fn has_row(pool: &PgPool, table: &str, key: &StoreKey) -> bool {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE store_key = $1)"
    ))
    .bind(key.as_str())
    .fetch_one(pool)
    .await
    .expect("select row")
}

fn in_progress() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("order"),
        created_at_ms: 1_764_000_000_000,
    }
}

fn completed(claim: &InProgress, body: &str) -> Completed {
    Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: claim.created_at_ms,
        completed_at_ms: claim.created_at_ms + 5,
        outcome: StoredOutcome::new(body.to_owned(), None),
    }
}

/// Claims and completes `key` on `store` with the body `body`, kept for `retention`.
async fn completed_record(store: &PostgresStore, key: &StoreKey, body: &str, retention: Duration) {
    let claim = in_progress();
    assert_eq!(
        store
            .try_claim(key, &claim, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store
            .complete(key, &claim.token, &completed(&claim, body), retention)
            .await
            .unwrap(),
        Fenced::Applied
    );
}

/// The completed record's body `store` answers for `key`.
async fn replayed_body(store: &PostgresStore, key: &StoreKey) -> Option<Vec<u8>> {
    match store.get(key).await.unwrap() {
        Some(Record::Completed(done)) => Some(done.outcome.body.to_vec()),
        _ => None,
    }
}

/// The evil schema's own store (its table named with the schema), on `admin`.
async fn evil_store(admin: &PgPool) -> PostgresStore {
    PostgresStore::builder(admin.clone())
        .table("evil.idempotency_records")
        .operation_timeout(Duration::from_secs(10))
        .migrate()
        .await
        .expect("evil's table")
}

/// A store built on connections whose `search_path` is `evil, app`, while only `app` has the
/// records table; then `evil.idempotency_records` appears (someone with CREATE rights on
/// `evil`) holding completed records. The store keeps answering from `app`: a claim of a key
/// evil holds runs (no replay of evil's record), the completion in the caller's transaction
/// and the plain `complete` land in `app`, and `get`, `time_to_live`, `release`, `delete` and
/// the purge read and change `app` only; evil's rows are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_named_table_appearing_earlier_in_search_path_is_never_the_stores() {
    let (_, url) = fresh_database("sqlpin_a").await;
    let admin = pool_on(&url, None, 2).await;
    execute(&admin, "CREATE SCHEMA app").await;
    execute(&admin, "CREATE SCHEMA evil").await;
    PostgresStore::builder(pool_on(&url, Some("app"), 1).await)
        .migrate()
        .await
        .expect("migrated in app");
    assert!(exists(&admin, "app.idempotency_records").await);

    let pool = pool_on(&url, Some("evil,app"), 4).await;
    let store = PostgresStore::builder(pool.clone())
        .operation_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("the store builds on app's table");
    assert_eq!(store.table(), "idempotency_records", "as configured");
    let f = Fixture::on_store(
        store.clone(),
        Duration::from_secs(30),
        false,
        Duration::from_secs(10),
    )
    .await;

    // Now evil's table appears, holding completed records of the keys used below.
    let evil = evil_store(&admin).await;
    let key = IdempotencyKey::new("order-1").unwrap();
    let in_tx = StoreKey::from_raw(f.store_key(&key));
    let plain = StoreKey::from_raw(format!("{}-plain", f.store_key(&key)));
    let released = StoreKey::from_raw(format!("{}-released", f.store_key(&key)));
    let hour = Duration::from_secs(3600);
    for k in [&in_tx, &plain, &released] {
        completed_record(&evil, k, "evil's", hour).await;
    }
    // And an expired row of evil's, which the store's purge must not delete.
    let lapsed = StoreKey::from_raw(format!("{}-lapsed", f.store_key(&key)));
    assert_eq!(
        evil.try_claim(&lapsed, &in_progress(), Duration::from_millis(1))
            .await
            .unwrap(),
        Claim::Claimed
    );

    // The claim runs (evil's completed record would be replayed), and the completion in the
    // caller's transaction lands in app's table.
    let guard = claim(&f.engine, &key).await;
    let mut tx = pool.begin().await.unwrap();
    f.insert(&mut tx, "ours").await;
    let pending = f
        .complete_in(&mut tx, guard, "ours")
        .await
        .expect("complete_in applies to app's row");
    tx.commit().await.unwrap();
    pending.committed();
    let ours = body_in(&admin, "app.idempotency_records", &in_tx)
        .await
        .expect("the completion is in app's table");
    assert!(String::from_utf8_lossy(&ours).contains("ours"));
    assert_eq!(
        body_in(&admin, "evil.idempotency_records", &in_tx).await,
        Some(b"evil's".to_vec())
    );
    assert_eq!(replayed_body(&store, &in_tx).await, Some(ours));

    // The plain claim and complete, on the pool.
    let mine = in_progress();
    assert_eq!(
        store
            .try_claim(&plain, &mine, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed,
        "a key evil holds is claimed in app"
    );
    let minute = Duration::from_secs(60);
    assert_eq!(
        store
            .complete(&plain, &mine.token, &completed(&mine, "mine"), minute)
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert_eq!(
        body_in(&admin, "app.idempotency_records", &plain).await,
        Some(b"mine".to_vec())
    );
    assert_eq!(replayed_body(&store, &plain).await, Some(b"mine".to_vec()));
    let left = store.time_to_live(&plain).await.unwrap().expect("live");
    assert!(
        left <= minute,
        "app's retention (60 s), not evil's (1 h): {left:?}"
    );

    // release and delete change app's rows only.
    let other = in_progress();
    assert_eq!(
        store
            .try_claim(&released, &other, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.release(&released, &other.token).await.unwrap(),
        Fenced::Applied
    );
    assert!(!has_row(&admin, "app.idempotency_records", &released).await);
    assert!(store.delete(&plain).await.unwrap());
    assert!(!has_row(&admin, "app.idempotency_records", &plain).await);

    // The purge leaves evil's lapsed row alone.
    assert_eq!(store.purge_expired(100).await.unwrap(), 0);
    assert!(has_row(&admin, "evil.idempotency_records", &lapsed).await);

    // evil's records are as evil wrote them.
    for k in [&in_tx, &plain, &released] {
        assert_eq!(
            replayed_body(&evil, k).await,
            Some(b"evil's".to_vec()),
            "{k:?}"
        );
    }
    // Every statement names app's table.
    assert_eq!(store.quoted_table(), "\"app\".\"idempotency_records\"");
    assert!(
        store
            .statements()
            .claim
            .contains("\"app\".\"idempotency_records\""),
        "{}",
        store.statements().claim
    );
}

/// `migrate()` with the default name on connections whose `search_path` is `app` creates the
/// table and its bookkeeping table in `app` and pins the store to it: after every connection
/// of its pool is switched to `search_path = evil, app` (session `SET`) and a same-named table
/// in `evil` holds a completed record, a claim of that key runs and completes in `app`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_with_the_default_name_pins_the_schema_it_creates_the_table_in() {
    let (_, url) = fresh_database("sqlpin_m").await;
    let admin = pool_on(&url, None, 2).await;
    execute(&admin, "CREATE SCHEMA app").await;
    execute(&admin, "CREATE SCHEMA evil").await;
    const MAX: u32 = 3;
    let pool = pool_on(&url, Some("app"), MAX).await;
    let store = PostgresStore::builder(pool.clone())
        .operation_timeout(Duration::from_secs(10))
        .migrate()
        .await
        .expect("migrated");
    assert!(exists(&admin, "app.idempotency_records").await);
    assert!(exists(&admin, "app.idempotency_records_migrations").await);
    let warm = StoreKey::from_raw(identifier("warm"));
    completed_record(&store, &warm, "warm", Duration::from_secs(60)).await;

    let evil = evil_store(&admin).await;
    let key = StoreKey::from_raw(identifier("k"));
    completed_record(&evil, &key, "evil's", Duration::from_secs(3600)).await;

    // Every connection of the pool now looks in evil first (held at once, so each is one).
    let mut held = Vec::new();
    for _ in 0..MAX {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SET search_path = evil, app")
            .execute(&mut *conn)
            .await
            .unwrap();
        held.push(conn);
    }
    drop(held);

    let mine = in_progress();
    assert_eq!(
        store
            .try_claim(&key, &mine, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed,
        "evil's record must not be replayed"
    );
    assert_eq!(
        store
            .complete(
                &key,
                &mine.token,
                &completed(&mine, "mine"),
                Duration::from_secs(60)
            )
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert_eq!(
        body_in(&admin, "app.idempotency_records", &key).await,
        Some(b"mine".to_vec())
    );
    assert_eq!(
        body_in(&admin, "evil.idempotency_records", &key).await,
        Some(b"evil's".to_vec())
    );
    assert_eq!(replayed_body(&store, &warm).await, Some(b"warm".to_vec()));
}

/// An install made by an older version, in a schema later in `search_path` than the one
/// tables are created in (`current_schema()`): `migrate()` finds and uses it (its records
/// replay), and creates no second table in the first schema of the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_uses_an_existing_table_found_through_search_path() {
    let (_, url) = fresh_database("sqlpin_l").await;
    let admin = pool_on(&url, None, 2).await;
    execute(&admin, "CREATE SCHEMA legacy").await;
    execute(&admin, "CREATE SCHEMA fresh").await;
    let old = PostgresStore::builder(pool_on(&url, Some("legacy"), 1).await)
        .migrate()
        .await
        .expect("the old install");
    let key = StoreKey::from_raw(identifier("k"));
    completed_record(&old, &key, "kept", Duration::from_secs(3600)).await;

    let store = PostgresStore::builder(pool_on(&url, Some("fresh,legacy"), 2).await)
        .migrate()
        .await
        .expect("migrates the existing table");
    assert!(!exists(&admin, "fresh.idempotency_records").await);
    assert!(!exists(&admin, "fresh.idempotency_records_migrations").await);
    assert_eq!(replayed_body(&store, &key).await, Some(b"kept".to_vec()));
    assert!(
        store
            .statements()
            .get
            .contains("\"legacy\".\"idempotency_records\"")
    );
}

/// A schema whose name needs quoting (a `"`, a space, capitals) is quoted when the store pins
/// the table to it; and `migrate()` with no schema in `search_path` that exists fails naming
/// the cause instead of creating anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_schema_names_are_quoted_and_no_schema_is_a_clear_error() {
    let (database, url) = fresh_database("sqlpin_q").await;
    let admin = pool_on(&url, None, 2).await;
    execute(&admin, "CREATE SCHEMA \"My \"\"odd\"\" schema\"").await;
    // The database's setting: new connections start with it.
    execute(
        &admin,
        &format!("ALTER DATABASE {database} SET search_path = \"My \"\"odd\"\" schema\""),
    )
    .await;
    let odd = pool_on(&url, None, 2).await;
    let current: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
        .fetch_one(&odd)
        .await
        .unwrap();
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&odd)
        .await
        .unwrap();
    assert_eq!(
        current.as_deref(),
        Some("My \"odd\" schema"),
        "search_path: {path}"
    );
    let store = PostgresStore::builder(odd.clone())
        .migrate()
        .await
        .expect("migrated in the odd schema");
    assert!(exists(&admin, "\"My \"\"odd\"\" schema\".idempotency_records").await);
    let key = StoreKey::from_raw(identifier("k"));
    completed_record(&store, &key, "odd", Duration::from_secs(60)).await;
    assert_eq!(replayed_body(&store, &key).await, Some(b"odd".to_vec()));

    let nowhere = pool_on(&url, Some("no_such_schema"), 1).await;
    let error = PostgresStore::builder(nowhere.clone())
        .migrate()
        .await
        .expect_err("nowhere to create the table");
    assert!(
        matches!(&error, SqlStoreError::NoSchema { table } if table == "idempotency_records"),
        "{error:?}"
    );
    assert!(error.to_string().contains("search_path"), "{error}");
    let error = PostgresStore::builder(nowhere)
        .build()
        .await
        .expect_err("no table");
    assert!(
        matches!(error, SqlStoreError::MissingTable { .. }),
        "{error:?}"
    );
}
