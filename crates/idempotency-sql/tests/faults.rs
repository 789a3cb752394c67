//! Faults: an exhausted pool, a frozen server, a stopped server and SQLite's write lock held
//! elsewhere all end in a typed, transient `StoreError` within the store's time budget (never a
//! hang), and the engine's failure policy applies.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, DynIdempotencyStore, FailurePolicy, Fingerprint, Idempotency, IdempotencyError,
    IdempotencyKey, IdempotencyStore, InProgress, LeaseToken, Scope, StoreError, StoreKey,
    Unprotected,
};
use idempotency_sql::sqlx::postgres::PgPoolOptions;
use idempotency_sql::{PostgresStore, SqliteStore, sqlx};
use idempotency_testkit::fixtures::PostgresServer;

const BUDGET: Duration = Duration::from_millis(300);
/// Budget plus generous scheduling slack on a loaded 2-core machine: "not a hang".
const BOUND: Duration = Duration::from_secs(3);

fn record() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 1,
    }
}

async fn assert_transient_within<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> StoreError {
    let started = Instant::now();
    let result = call.await;
    let elapsed = started.elapsed();
    let error = result.expect_err(what);
    assert!(error.is_transient(), "{what}: {error:?}");
    assert!(elapsed < BOUND, "{what}: took {elapsed:?}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_exhausted_pool_times_out_and_the_engine_fails_closed() {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect(common::shared_server().url())
        .await
        .unwrap();
    let store = PostgresStore::builder(pool.clone())
        .operation_timeout(BUDGET)
        .migrate()
        .await
        .unwrap();
    let held = pool.acquire().await.unwrap();
    let key = StoreKey::from_raw(format!("{}exhausted", idempotency_testkit::unique_prefix()));
    let error = assert_transient_within(
        "try_claim",
        store.try_claim(&key, &record(), Duration::from_secs(5)),
    )
    .await;
    assert!(
        matches!(
            error,
            StoreError::Timeout {
                operation: idempotency_core::StoreOperation::TryClaim,
                ..
            }
        ),
        "{error:?}"
    );

    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    let begun = engine
        .begin(
            &Scope::global(),
            &IdempotencyKey::new("k").unwrap(),
            Fingerprint::of("x"),
        )
        .await;
    assert!(
        matches!(
            begun,
            Err(IdempotencyError::StoreUnavailable(
                StoreError::Timeout { .. }
            ))
        ),
        "{begun:?}"
    );

    let open = Idempotency::builder(store.clone())
        .failure_policy(FailurePolicy::FailOpen)
        .ignore_env()
        .build()
        .unwrap();
    match open
        .begin(
            &Scope::global(),
            &IdempotencyKey::new("k").unwrap(),
            Fingerprint::of("x"),
        )
        .await
    {
        Ok(Begin::Run(guard)) => {
            assert_eq!(guard.unprotected_reason(), Some(Unprotected::FailOpen))
        }
        other => panic!("fail open runs unprotected, got {other:?}"),
    }
    drop(held);
    assert!(
        store
            .try_claim(&key, &record(), Duration::from_secs(5))
            .await
            .is_ok(),
        "recovers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_frozen_then_stopped_server_is_a_transient_error_within_the_budget() {
    let server = PostgresServer::start_local().expect("a local postgres for fault tests");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect(server.url())
        .await
        .unwrap();
    let store = PostgresStore::builder(pool)
        .operation_timeout(BUDGET)
        .migrate()
        .await
        .unwrap();
    let key = StoreKey::from_raw("frozen");
    store.get(&key).await.expect("answers before the fault");

    server.pause().unwrap();
    let error = assert_transient_within("get on a frozen server", store.get(&key)).await;
    assert!(matches!(error, StoreError::Timeout { .. }), "{error:?}");
    server.resume().unwrap();
    // The connection whose query was abandoned is discarded; the store answers again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.get(&key).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the store recovers after the server thaws"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    drop(server);
    assert_transient_within("get on a stopped server", store.get(&key)).await;
    assert_transient_within(
        "try_claim on a stopped server",
        store.try_claim(&key, &record(), Duration::from_secs(5)),
    )
    .await;
}

#[tokio::test]
async fn postgres_unreachable_database_at_construction_is_a_typed_error() {
    // Nothing listens there, and no other server takes the port while the test runs.
    let down = idempotency_testkit::RefusedPort::new();
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!("postgres://postgres@{}/postgres", down.addr()))
        .unwrap();
    let started = Instant::now();
    let error = PostgresStore::new(pool).await.unwrap_err();
    assert!(
        matches!(error, idempotency_sql::SqlStoreError::Database(_)),
        "{error:?}"
    );
    assert!(started.elapsed() < BOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_write_lock_held_elsewhere_times_out() {
    let (pool, _dir) = common::sqlite_pool(4).await;
    let store = SqliteStore::builder(pool.clone())
        .operation_timeout(BUDGET)
        .migrate()
        .await
        .unwrap();
    let mut blocker = pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let key = StoreKey::from_raw("locked");
    let error = assert_transient_within(
        "try_claim",
        store.try_claim(&key, &record(), Duration::from_secs(5)),
    )
    .await;
    assert!(matches!(error, StoreError::Timeout { .. }), "{error:?}");
    sqlx::query("ROLLBACK")
        .execute(&mut *blocker)
        .await
        .unwrap();
    drop(blocker);
    assert!(
        store
            .try_claim(&key, &record(), Duration::from_secs(5))
            .await
            .is_ok()
    );
}

/// SQLITE_BUSY on the claim proves nothing was written: it is `WriteRefused` (transient), so the
/// engine answers from a read where it can.
#[tokio::test]
async fn sqlite_busy_claim_after_a_short_busy_timeout_is_write_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = idempotency_sql::sqlite_connect_options(dir.path().join("busy.db"))
        .busy_timeout(Duration::from_millis(50));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let store = SqliteStore::builder(pool.clone())
        .operation_timeout(Duration::from_secs(5))
        .migrate()
        .await
        .unwrap();
    let mut blocker = pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let error = assert_transient_within(
        "try_claim",
        store.try_claim(
            &StoreKey::from_raw("busy"),
            &record(),
            Duration::from_secs(5),
        ),
    )
    .await;
    assert!(
        matches!(error, StoreError::WriteRefused { .. }),
        "{error:?}"
    );
    assert!(!error.outcome_unknown());
    sqlx::query("ROLLBACK")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let _ = &store as &dyn DynIdempotencyStore;
}

/// F8: while another transaction holds SQLite's write lock (as long as it likes), a completed
/// key still replays at once (the claim reads the live record in WAL mode without waiting for
/// the lock), an in-progress key answers "in progress", and only a new key, which needs the
/// write, fails closed within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_completed_key_replays_while_the_write_lock_is_held() {
    let (pool, _dir) = common::sqlite_pool(4).await;
    let store = SqliteStore::builder(pool.clone())
        .operation_timeout(BUDGET)
        .migrate()
        .await
        .unwrap();
    let engine = Idempotency::builder(store)
        .prefix(idempotency_testkit::unique_prefix())
        .ignore_env()
        .build()
        .unwrap();
    let done = IdempotencyKey::new("done").unwrap();
    let running = IdempotencyKey::new("running").unwrap();
    let outcome = idempotency_core::StoredOutcome::new("kept", Some("text/plain".into()));
    let begin = |key: &IdempotencyKey| {
        let engine = engine.clone();
        let key = key.clone();
        async move {
            engine
                .begin(&Scope::global(), &key, Fingerprint::of("x"))
                .await
        }
    };
    let Ok(Begin::Run(guard)) = begin(&done).await else {
        panic!("first attempt runs")
    };
    guard.complete(outcome.clone()).await.unwrap();
    let Ok(Begin::Run(_running_guard)) = begin(&running).await else {
        panic!("first attempt runs")
    };

    let mut blocker = pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = Instant::now();
    match begin(&done).await {
        Ok(Begin::Replay(replayed)) => assert_eq!(replayed, outcome),
        other => panic!("a completed key must replay while the lock is held, got {other:?}"),
    }
    assert!(
        matches!(
            begin(&running).await,
            Err(IdempotencyError::InProgress { .. })
        ),
        "an in-progress key is in progress"
    );
    assert!(
        started.elapsed() < BUDGET,
        "answered without waiting for the lock"
    );
    let new = IdempotencyKey::new("new").unwrap();
    let refused = begin(&new).await;
    assert!(
        matches!(refused, Err(IdempotencyError::StoreUnavailable(_))),
        "{refused:?}"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut *blocker)
        .await
        .unwrap();
}
