//! breaker15: attacks on the Postgres `complete_in` that aborts the caller's transaction when
//! the fenced UPDATE did not apply. The guarantee under test: an attempt whose `complete_in`
//! failed never gets its side effect committed, even when the handler ignores the error and
//! commits, and exactly one attempt's side effect exists in the end.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::orders::{Fixture, assert_aborted, identifier, receipt};
use idempotency_core::{
    Begin, Fingerprint, Guard, IdempotencyError, IdempotencyKey, IdempotencyStore, Scope,
};
use idempotency_sql::sqlx::postgres::{PgPool, PgPoolOptions};
use idempotency_sql::{PostgresStore, sqlx};

/// An engine over `store` whose 300 ms lease is not renewed (a claim lapses when the test
/// sleeps 400 ms), with a 10 s store timeout.
async fn lapsing(store: PostgresStore) -> Fixture {
    Fixture::on_store(
        store,
        Duration::from_millis(300),
        false,
        Duration::from_secs(10),
    )
    .await
}

/// An engine over `store` whose 60 s lease is renewed, with `store_timeout`.
async fn renewing(store: PostgresStore, store_timeout: Duration) -> Fixture {
    Fixture::on_store(store, Duration::from_secs(60), true, store_timeout).await
}

/// A claim of `key` that lapses and is taken over: the stale attempt's guard and the new
/// owner's.
async fn taken_over(
    f: &Fixture,
    key: &IdempotencyKey,
) -> (Guard<PostgresStore>, Guard<PostgresStore>) {
    let stale = f.run(key).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let owner = f.run(key).await;
    (stale, owner)
}

/// [`taken_over`] with the stale attempt's transaction (on `pool`) open and its order
/// (`stale`) written before the lease lapses.
async fn stale_order(
    f: &Fixture,
    pool: &PgPool,
    key: &IdempotencyKey,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    Guard<PostgresStore>,
    Guard<PostgresStore>,
) {
    let stale = f.run(key).await;
    let mut tx = pool.begin().await.expect("begin tx");
    f.insert(&mut tx, "stale").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let owner = f.run(key).await;
    (tx, stale, owner)
}

/// The UPDATE of `complete_in` waits on the record's row, locked by an operator's open
/// transaction that deletes the claim (CLI `delete` in a transaction, or any DBA session),
/// longer than the engine's `store_timeout`. breaker15: `complete_in` answered a timeout
/// without aborting the caller's transaction; a handler that ignored it and committed got the
/// UPDATE finished first (matching nothing once the delete committed), then its order
/// committed without a record, and the retry ordered again. Now the wait is bounded on the
/// server (`lock_timeout` a little under the budget): the UPDATE fails with 55P03, which aborts
/// the transaction, and the answer is still a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_completion_ignored_then_committed_orders_once() {
    let f = renewing(common::pg_store(8).await, Duration::from_millis(300)).await;
    let key = IdempotencyKey::new("b15-timeout").unwrap();
    let guard = f.run(&key).await;

    // The operator's transaction: deletes the claim, holds the row lock.
    let mut operator = f.pool.begin().await.expect("operator tx");
    let deleted = sqlx::query(&format!("DELETE FROM {} WHERE store_key = $1", f.table()))
        .bind(f.store_key(&key))
        .execute(&mut *operator)
        .await
        .expect("operator delete");
    assert_eq!(deleted.rows_affected(), 1);

    let mut tx = f.pool.begin().await.expect("begin tx");
    f.order_fails_on_the_lock(&mut tx, guard, "first").await;
    operator.commit().await.expect("operator commit");
    // The handler ignores the error and commits.
    let _ = tx.commit().await;
    assert_eq!(
        f.count().await,
        0,
        "the attempt whose complete_in failed must not commit its order"
    );
    f.retry_orders(&key).await;
    assert_eq!(f.count().await, 1, "one order for the key");
}

/// A lost claim (lease lapsed, taken over) met by `complete_in` run inside a savepoint
/// (`tx.begin()`, a nested sqlx transaction) whose error the handler ignores. The abort only
/// aborts the savepoint: the handler's `sp.commit()` fails (RELEASE in an aborted
/// subtransaction), the savepoint is rolled back on drop, and the outer `COMMIT` commits the
/// order written before the savepoint without its record. The key's new owner orders too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "documented limitation (crate docs, Transactional completion): Postgres ROLLBACK TO SAVEPOINT clears the abort, so ignored errors + outer COMMIT commit the stale side effect"]
async fn lease_lost_in_a_savepoint_ignored_then_outer_commit_orders_once() {
    let f = lapsing(common::pg_store(8).await).await;
    let key = IdempotencyKey::new("b15-savepoint").unwrap();
    let (mut tx, stale, owner) = stale_order(&f, &f.pool, &key).await;
    {
        let mut savepoint = sqlx::Connection::begin(&mut *tx).await.expect("savepoint");
        let error = f
            .complete_in(&mut savepoint, stale, "stale")
            .await
            .expect_err("the stale attempt cannot complete");
        assert!(matches!(error, IdempotencyError::LeaseLost), "{error:?}");
        // Ignored, like the error: a failed RELEASE leaves the savepoint to roll back on drop.
        let _ = savepoint.commit().await;
    }
    let _ = tx.commit().await;
    f.order_and_complete(owner, "owner", "the owner completes")
        .await;
    assert_eq!(f.count().await, 1, "one order for the key");
}

/// Pins what the handler that ignores a `LeaseLost` sees afterwards: `tx.commit()` answers
/// `Ok(())` (Postgres answers COMMIT of an aborted transaction with ROLLBACK, no error), the
/// order is gone, and the connection goes back to the pool healthy: the next user of the pool
/// (one connection) runs statements and commits normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_ignored_commit_is_ok_rolled_back_and_the_connection_is_reusable() {
    let pool = common::pg_pool(1).await;
    // The store's own pool is separate (the one connection is the caller's).
    let f = lapsing(common::pg_store(4).await).await;
    let key = IdempotencyKey::new("b15-commit-ok").unwrap();
    let (mut tx, stale, owner) = stale_order(&f, &pool, &key).await;
    let error = f
        .complete_in(&mut tx, stale, "stale")
        .await
        .expect_err("lost");
    assert!(matches!(error, IdempotencyError::LeaseLost), "{error:?}");
    // Later statements of the transaction are refused (25P02).
    assert_aborted(&mut tx).await;
    let committed = tx.commit().await;
    assert!(
        committed.is_ok(),
        "COMMIT of the aborted transaction: {committed:?}"
    );
    assert_eq!(f.count().await, 0, "rolled back");
    // The only connection of the pool, reused: no transaction left open, no aborted state.
    let mut next = pool.begin().await.expect("next user's tx");
    sqlx::query(&format!("INSERT INTO {} (who) VALUES ('owner')", f.orders))
        .execute(&mut *next)
        .await
        .expect("the next user's statement runs");
    let pending = f
        .complete_in(&mut next, owner, "owner")
        .await
        .expect("owner completes on the reused connection");
    next.commit().await.expect("commit");
    pending.committed();
    assert_eq!(f.count().await, 1);
}

/// A database without PL/pgSQL (`DROP EXTENSION plpgsql`): the `DO` block fails for another
/// reason (language missing), and any error aborts the transaction, so the ignored `LeaseLost`
/// + COMMIT still rolls the order back. Pins that the abort does not depend on PL/pgSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_ignored_without_plpgsql_still_rolls_back() {
    let admin = common::pg_pool(2).await;
    let database = identifier("b15_noplpgsql");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await
        .expect("create database");
    let url = common::shared_server()
        .url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{database}"))
        .expect("url with a database");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .expect("pool on the new database");
    sqlx::query("DROP EXTENSION plpgsql")
        .execute(&pool)
        .await
        .expect("drop plpgsql");
    let store = PostgresStore::builder(pool.clone())
        .operation_timeout(Duration::from_secs(10))
        .migrate()
        .await
        .expect("the store migrates without plpgsql");
    let f = lapsing(store).await;
    let key = IdempotencyKey::new("b15-noplpgsql").unwrap();
    let (mut tx, stale, owner) = stale_order(&f, &pool, &key).await;
    let error = f
        .complete_in(&mut tx, stale, "stale")
        .await
        .expect_err("lost");
    assert!(matches!(error, IdempotencyError::LeaseLost), "{error:?}");
    let _ = tx.commit().await;
    assert_eq!(f.count().await, 0, "rolled back without plpgsql");
    f.order_and_complete(owner, "owner", "owner completes")
        .await;
    assert_eq!(f.count().await, 1);
    drop(f);
    pool.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&admin)
        .await;
}

/// `complete_in` on a connection that is not in a transaction (autocommit, `&mut *conn` from
/// `pool.acquire()`): the fenced UPDATE commits on its own; a lost claim answers `LeaseLost`,
/// the abort statement fails harmlessly, and the connection is usable at once (no transaction
/// left behind, statements run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autocommit_connection_lease_lost_leaves_the_connection_usable() {
    let f = lapsing(common::pg_store(8).await).await;
    let engine = &f.engine;
    let key = IdempotencyKey::new("b15-autocommit").unwrap();
    let (stale, owner) = taken_over(&f, &key).await;
    let mut conn = engine.store().pool().acquire().await.expect("acquire");
    let error = engine
        .store()
        .complete_in(&mut conn, stale, receipt("stale"))
        .await
        .expect_err("lost");
    assert!(matches!(error, IdempotencyError::LeaseLost), "{error:?}");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *conn)
        .await
        .expect("the connection runs statements after the failed abort");
    assert_eq!(one, 1);
    let pending = engine
        .store()
        .complete_in(&mut conn, owner, receipt("owner"))
        .await
        .expect("the owner completes in autocommit");
    pending.committed();
    drop(conn);
    let store_key = engine.store_key(&Scope::global(), &key);
    let record = engine.store().get(&store_key).await.expect("get");
    assert!(
        matches!(record, Some(idempotency_core::Record::Completed(_))),
        "{record:?}"
    );
}

/// 16 concurrent duplicates of one key, each running its transaction at `REPEATABLE READ`
/// (snapshot taken after its claim) and **ignoring** `complete_in`'s error before committing,
/// while an operator deletes the key's in-progress claim every few milliseconds (CLI
/// `delete`, up to 40 claims): stale attempts meet `LeaseLost` (0 rows, or 40001 after the delete), their
/// transactions are aborted by the store, so in the end exactly one order exists, the one of
/// the attempt whose completion applied, and the key replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_duplicates_repeatable_read_ignoring_errors_with_operator_deletes_order_once() {
    let f = renewing(common::pg_store(40).await, Duration::from_secs(10)).await;
    let orders = f.orders.clone();
    let engine = std::sync::Arc::new(f.engine);
    let key = IdempotencyKey::new("b15-sixteen").unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let operator = {
        let (engine, key, done) = (engine.clone(), key.clone(), done.clone());
        tokio::spawn(async move {
            let store_key = engine.store_key(&Scope::global(), &key);
            let mut deleted = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) && deleted < 40 {
                let gone = sqlx::query(&format!(
                    "DELETE FROM {} WHERE store_key = $1 AND state = 'in_progress'",
                    engine.store().table()
                ))
                .bind(store_key.as_str())
                .execute(engine.store().pool())
                .await
                .map(|r| r.rows_affected())
                .unwrap_or(0);
                deleted += gone;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            deleted
        })
    };
    let mut tasks = Vec::new();
    for who in 0..16 {
        let (engine, key, orders) = (engine.clone(), key.clone(), orders.clone());
        tasks.push(tokio::spawn(async move {
            let mut applied = 0u32;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                assert!(Instant::now() < deadline, "{who}: never replayed");
                let guard = match engine
                    .begin(&Scope::global(), &key, Fingerprint::of("order"))
                    .await
                {
                    Ok(Begin::Replay(_)) => return applied,
                    Ok(Begin::Run(guard)) => guard,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                let pool = engine.store().pool();
                let Ok(mut tx) = pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .await
                else {
                    continue;
                };
                let _ = sqlx::query(&format!("INSERT INTO {orders} (who) VALUES ($1)"))
                    .bind(who.to_string())
                    .execute(&mut *tx)
                    .await;
                tokio::time::sleep(Duration::from_millis(15)).await;
                let completed = engine
                    .store()
                    .complete_in(&mut tx, guard, receipt(&who.to_string()))
                    .await;
                // The handler ignores the error and commits anyway.
                let committed = tx.commit().await;
                if let Ok(pending) = completed {
                    if committed.is_ok() {
                        applied += 1;
                    }
                    pending.committed();
                }
            }
        }));
    }
    let mut applied = 0;
    for task in tasks {
        applied += task.await.expect("duplicate");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let deleted = operator.await.expect("operator");
    eprintln!("operator deleted {deleted} claims; {applied} completions applied");
    assert_eq!(applied, 1, "one completion applied");
    assert_eq!(
        common::orders::count(&engine, &orders).await,
        1,
        "exactly one order"
    );
}
