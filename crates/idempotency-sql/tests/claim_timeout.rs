//! A claim that times out while its statement waits for a lock is not cancelled: SQLite's
//! worker thread runs it once the write lock is free, a Postgres server once the row lock is.
//! It must not land under a token nobody holds (the key would answer "in progress" for the
//! whole lease): the store releases such a claim itself, on the same connection, after it
//! landed. These tests call the store directly (no engine, so no background release by the
//! engine either) with a lease of a minute: the key is free again long before it would lapse.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::abandoned::{attempt, claimed_row_locked, settled};

use std::collections::HashSet;
use std::time::{Duration, Instant};

use idempotency_core::{
    Claim, IdempotencyStore, InProgress, LeaseToken, Record, StoreError, StoreKey,
};
use idempotency_sql::sqlx::sqlite::SqlitePool;
use idempotency_sql::sqlx::{Connection as _, SqliteConnection};
use idempotency_sql::{PostgresStore, SqliteStore, sqlite_connect_options, sqlx};
use idempotency_testkit::unique_prefix;

const LEASE: Duration = Duration::from_secs(60);

/// A store on a fresh WAL SQLite file (busy timeout 5 s) with `budget` per operation, its pool,
/// and a second connection (outside the pool) that takes the write lock.
async fn sqlite_setup(
    max: u32,
    budget: Duration,
) -> (SqliteStore, SqlitePool, SqliteConnection, tempfile::TempDir) {
    let (pool, dir) = common::sqlite_pool(max).await;
    let store = SqliteStore::builder(pool.clone())
        .operation_timeout(budget)
        .migrate()
        .await
        .expect("migrate");
    let locker = SqliteConnection::connect_with(&sqlite_connect_options(dir.path().join("app.db")))
        .await
        .expect("second connection");
    (store, pool, locker, dir)
}

/// Open `n` connections of `pool` before the write lock is taken (opening one waits for the
/// lock), so the attempts reach the claim statement within their budget.
async fn warm(pool: &SqlitePool, n: usize) {
    let open: Vec<_> = futures::future::join_all((0..n).map(|_| pool.acquire())).await;
    drop(open);
    settled(pool).await;
}

/// Poll (generously: up to 5 s, far under the 60 s lease) until a fresh claim of `key` wins.
async fn claimable<S: IdempotencyStore>(store: &S, key: &StoreKey) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let claimed = store.try_claim(key, &attempt(), LEASE).await;
        match claimed {
            Ok(Claim::Claimed) => return,
            other => assert!(
                Instant::now() < deadline,
                "the key is held by a claim nobody holds (a timed-out claim landed): {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_claim_timed_out_behind_the_write_lock_is_not_held_by_nobody() {
    let (store, pool, mut locker, _dir) = sqlite_setup(4, Duration::from_millis(200)).await;
    let key = StoreKey::from_raw(format!("{}-lock", unique_prefix()));
    warm(&pool, 4).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .expect("take the write lock");
    let claimed = store.try_claim(&key, &attempt(), LEASE).await;
    assert!(
        matches!(claimed, Err(StoreError::Timeout { .. })),
        "{claimed:?}"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("let go of the write lock");
    settled(&pool).await;
    claimable(&store, &key).await;
}

/// The break pass of the claim-in-a-task change: 40 claims of one key with a 5 ms budget while
/// the lock is held. Those still waiting for a connection when their budget ran out must write
/// nothing, and those whose statement was sent must be released once it lands: afterwards the
/// key is free, or held by a token one of the callers was told it claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_forty_claims_timed_out_behind_the_write_lock_leave_no_orphan() {
    let (store, pool, mut locker, _dir) = sqlite_setup(8, Duration::from_millis(5)).await;
    let key = StoreKey::from_raw(format!("{}-forty", unique_prefix()));
    warm(&pool, 8).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .expect("take the write lock");
    let attempts: Vec<InProgress> = (0..40).map(|_| attempt()).collect();
    let answers =
        futures::future::join_all(attempts.iter().map(|a| store.try_claim(&key, a, LEASE))).await;
    let claimed: HashSet<LeaseToken> = attempts
        .iter()
        .zip(&answers)
        .filter(|(_, answer)| matches!(answer, Ok(Claim::Claimed)))
        .map(|(a, _)| a.token)
        .collect();
    let timeouts = answers
        .iter()
        .filter(|a| matches!(a, Err(StoreError::Timeout { .. })))
        .count();
    assert!(timeouts > 0, "no claim timed out: {answers:?}");
    sqlx::query("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("let go of the write lock");
    settled(&pool).await;
    match store.get(&key).await.expect("get") {
        None => claimable(&store, &key).await,
        Some(Record::InProgress(held)) => assert!(
            claimed.contains(&held.token),
            "the key is held by a token no caller got ({timeouts} timeouts, {} claimed)",
            claimed.len()
        ),
        Some(other) => panic!("unexpected record {other:?}"),
    }
}

/// Postgres: a claim waits for the key's row, locked by another transaction, after the lease of
/// the record there lapsed; it times out; the holder commits, and the claim takes the key over
/// on the server. It must be released, not left under a token nobody holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claim_timed_out_behind_a_row_lock_is_not_held_by_nobody() {
    let store = PostgresStore::builder(common::pg_pool(4).await)
        .operation_timeout(Duration::from_millis(300))
        .migrate()
        .await
        .expect("migrate");
    let key = StoreKey::from_raw(format!("{}-row", unique_prefix()));
    let holder = claimed_row_locked(&store, &key, Duration::from_millis(300)).await;
    // The record's lease lapses: the next claim takes the key over, once it has the row.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let claimed = store.try_claim(&key, &attempt(), LEASE).await;
    assert!(
        matches!(claimed, Err(StoreError::Timeout { .. })),
        "{claimed:?}"
    );
    holder.commit().await.expect("commit");
    // Once every connection is idle again the timed-out statement has ended (so a fresh claim
    // cannot overtake it on another connection).
    settled(store.pool()).await;
    claimable(&store, &key).await;
}
