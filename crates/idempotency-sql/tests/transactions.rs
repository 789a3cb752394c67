//! Completion inside the application's transaction, on Postgres and SQLite: commit → replay;
//! rollback → the claim is freed and a retry runs; a stale owner gets `LeaseLost` inside its
//! transaction and its side effect rolls back with it.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, IdempotencyStore, Scope,
    StoredOutcome,
};
use idempotency_sql::sqlx;

fn outcome(text: &str) -> StoredOutcome {
    StoredOutcome::new(text.to_owned(), Some("application/json".into()))
}

fn engine<S: IdempotencyStore + 'static>(store: S, prefix: &str) -> Idempotency<S> {
    Idempotency::builder(store)
        .prefix(prefix)
        .ignore_env()
        .build()
        .expect("engine")
}

async fn begin_run<S: IdempotencyStore + 'static>(
    engine: &Idempotency<S>,
    key: &IdempotencyKey,
) -> idempotency_core::Guard<S> {
    match engine
        .begin(&Scope::global(), key, Fingerprint::of("order"))
        .await
    {
        Ok(Begin::Run(guard)) => guard,
        other => panic!("expected to run, got {other:?}"),
    }
}

/// Poll `begin` until it runs (a background release has landed), within 5 s.
async fn eventually_runs<S: IdempotencyStore + 'static>(
    engine: &Idempotency<S>,
    key: &IdempotencyKey,
) -> idempotency_core::Guard<S> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match engine
            .begin(&Scope::global(), key, Fingerprint::of("order"))
            .await
        {
            Ok(Begin::Run(guard)) => return guard,
            Err(IdempotencyError::InProgress { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("the released claim should run again, got {other:?}"),
        }
    }
}

/// One set of tests per database: `$store` builds `(store, keep-alive value)`, `$orders` is the
/// side-effect table's DDL, `$insert` adds an order; the enclosing module provides `StoreOf`,
/// `ConnOf` and `begin_tx` (a transaction on the store's pool).
macro_rules! transactional_tests {
    ($db:ident, $store:expr, $orders:expr, $insert:expr) => {
        mod $db {
            use super::*;

            async fn setup() -> (
                Idempotency<std::sync::Arc<StoreOf>>,
                String,
                Box<dyn std::any::Any + Send>,
            ) {
                let (store, guard) = $store;
                let orders = format!("orders_{}", &idempotency_testkit::unique_prefix()[1..17]);
                sqlx::query(&$orders.replace("orders", &orders))
                    .execute(store.pool())
                    .await
                    .expect("create orders");
                let prefix = idempotency_testkit::unique_prefix();
                (engine(std::sync::Arc::new(store), &prefix), orders, guard)
            }

            async fn count(engine: &Idempotency<std::sync::Arc<StoreOf>>, orders: &str) -> i64 {
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {orders}"))
                    .fetch_one(engine.store().pool())
                    .await
                    .expect("count")
            }

            async fn insert(conn: &mut ConnOf, orders: &str, who: &str) {
                sqlx::query(&$insert.replace("orders", orders))
                    .bind(who)
                    .execute(conn)
                    .await
                    .expect("insert order");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn commit_then_replay() {
                let (engine, orders, _keep) = setup().await;
                let key = IdempotencyKey::new("commit").unwrap();
                let guard = begin_run(&engine, &key).await;
                let store = engine.store().clone();
                let mut tx = begin_tx(store.pool()).await.expect("begin");
                insert(&mut tx, &orders, "first").await;
                let pending = store
                    .complete_in(&mut tx, guard, outcome(r#"{"order":1}"#))
                    .await
                    .expect("complete_in");
                tx.commit().await.expect("commit");
                pending.committed();
                assert_eq!(engine.stats().completions, 1, "counted as a completion");
                match engine
                    .begin(&Scope::global(), &key, Fingerprint::of("order"))
                    .await
                {
                    Ok(Begin::Replay(replayed)) => assert_eq!(replayed, outcome(r#"{"order":1}"#)),
                    other => panic!("a retry must replay, got {other:?}"),
                }
                assert_eq!(count(&engine, &orders).await, 1);
            }

            /// The whole flow is `Send` (it runs in `tokio::spawn`, as inside an axum handler).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_flow_runs_in_a_spawned_task() {
                let (engine, orders, _keep) = setup().await;
                let task = tokio::spawn(async move {
                    let key = IdempotencyKey::new("spawned").unwrap();
                    let guard = begin_run(&engine, &key).await;
                    let store = engine.store().clone();
                    let mut tx = begin_tx(store.pool()).await.expect("begin");
                    insert(&mut tx, &orders, "first").await;
                    let pending = store
                        .complete_in(&mut tx, guard, outcome("spawned"))
                        .await
                        .expect("complete_in");
                    tx.commit().await.expect("commit");
                    pending.committed();
                    count(&engine, &orders).await
                });
                assert_eq!(task.await.expect("task"), 1);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dropping_a_committed_pending_completion_changes_nothing() {
                let (engine, orders, _keep) = setup().await;
                let key = IdempotencyKey::new("commit-drop").unwrap();
                let guard = begin_run(&engine, &key).await;
                let store = engine.store().clone();
                let mut tx = begin_tx(store.pool()).await.expect("begin");
                insert(&mut tx, &orders, "first").await;
                let pending = store
                    .complete_in(&mut tx, guard, outcome("done"))
                    .await
                    .expect("complete_in");
                tx.commit().await.expect("commit");
                // Its background release is fenced on "in progress": the completed record stays.
                drop(pending);
                // A direct release with the same token shows what the background one sees.
                let record = engine
                    .get(&Scope::global(), &key)
                    .await
                    .expect("get")
                    .expect("record");
                let store_key = engine.store_key(&Scope::global(), &key);
                assert_eq!(
                    engine
                        .store()
                        .release(&store_key, record.token())
                        .await
                        .expect("release"),
                    idempotency_core::Fenced::LeaseLost
                );
                assert!(matches!(
                    engine
                        .begin(&Scope::global(), &key, Fingerprint::of("order"))
                        .await,
                    Ok(Begin::Replay(_))
                ));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_then_release_lets_a_retry_run() {
                let (engine, orders, _keep) = setup().await;
                let key = IdempotencyKey::new("rollback").unwrap();
                let guard = begin_run(&engine, &key).await;
                let store = engine.store().clone();
                let mut tx = begin_tx(store.pool()).await.expect("begin");
                insert(&mut tx, &orders, "first").await;
                let pending = store
                    .complete_in(&mut tx, guard, outcome("lost"))
                    .await
                    .expect("complete_in");
                tx.rollback().await.expect("rollback");
                pending.release().await.expect("release after rollback");
                assert_eq!(
                    count(&engine, &orders).await,
                    0,
                    "the side effect rolled back"
                );
                // The retry runs (not in progress, not a replay of the rolled-back outcome).
                let retry = begin_run(&engine, &key).await;
                retry.release().await.expect("release");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_with_the_pending_completion_dropped_frees_the_claim() {
                let (engine, orders, _keep) = setup().await;
                let key = IdempotencyKey::new("rollback-drop").unwrap();
                let guard = begin_run(&engine, &key).await;
                let store = engine.store().clone();
                {
                    let mut tx = begin_tx(store.pool()).await.expect("begin");
                    insert(&mut tx, &orders, "first").await;
                    let _pending = store
                        .complete_in(&mut tx, guard, outcome("lost"))
                        .await
                        .expect("complete_in");
                    // Early return / `?` / panic: the transaction and the pending completion are
                    // dropped together; the transaction rolls back, the claim is released.
                }
                let retry = eventually_runs(&engine, &key).await;
                assert_eq!(count(&engine, &orders).await, 0);
                retry.release().await.expect("release");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stale_owner_gets_lease_lost_and_its_side_effect_rolls_back() {
                let (engine, orders, _keep) = setup().await;
                let key = IdempotencyKey::new("stale").unwrap();
                let stale = begin_run(&engine, &key).await;
                // The stale attempt's claim goes away (lapsed or deleted) and a retry takes the
                // key over while the stale attempt still works.
                assert!(
                    engine
                        .invalidate(&Scope::global(), &key)
                        .await
                        .expect("invalidate")
                );
                let owner = begin_run(&engine, &key).await;

                let store = engine.store().clone();
                let mut tx = begin_tx(store.pool()).await.expect("begin");
                insert(&mut tx, &orders, "stale").await;
                let refused = store.complete_in(&mut tx, stale, outcome("stale")).await;
                assert!(
                    matches!(refused, Err(IdempotencyError::LeaseLost)),
                    "{refused:?}"
                );
                tx.rollback().await.expect("rollback");

                let mut tx = begin_tx(store.pool()).await.expect("begin");
                insert(&mut tx, &orders, "owner").await;
                let pending = store
                    .complete_in(&mut tx, owner, outcome("owner"))
                    .await
                    .expect("complete_in");
                tx.commit().await.expect("commit");
                pending.committed();

                let who: Vec<String> = sqlx::query_scalar(&format!("SELECT who FROM {orders}"))
                    .fetch_all(store.pool())
                    .await
                    .expect("orders");
                assert_eq!(
                    who,
                    vec!["owner".to_owned()],
                    "only the owner's side effect exists"
                );
                match engine
                    .begin(&Scope::global(), &key, Fingerprint::of("order"))
                    .await
                {
                    Ok(Begin::Replay(replayed)) => assert_eq!(replayed, outcome("owner")),
                    other => panic!("a retry must replay the owner's outcome, got {other:?}"),
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_oversized_outcome_is_refused_and_the_claim_released() {
                let (store, _keep) = $store;
                let engine = Idempotency::builder(store)
                    .prefix(idempotency_testkit::unique_prefix())
                    .max_outcome_size(16)
                    .ignore_env()
                    .build()
                    .expect("engine");
                let key = IdempotencyKey::new("too-big").unwrap();
                let guard = begin_run(&engine, &key).await;
                let mut tx = begin_tx(engine.store().pool()).await.expect("begin");
                let refused = engine
                    .store()
                    .complete_in(&mut tx, guard, outcome(&"x".repeat(64)))
                    .await;
                assert!(
                    matches!(
                        refused,
                        Err(IdempotencyError::OutcomeTooLarge { size: 64, max: 16 })
                    ),
                    "{refused:?}"
                );
                drop(tx);
                let retry = eventually_runs(&engine, &key).await;
                retry.release().await.expect("release");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_unprotected_guard_writes_nothing() {
                let (store, _keep) = $store;
                let engine = Idempotency::builder(store)
                    .prefix(idempotency_testkit::unique_prefix())
                    .disabled(true)
                    .ignore_env()
                    .build()
                    .expect("engine");
                let key = IdempotencyKey::new("disabled").unwrap();
                let guard = begin_run(&engine, &key).await;
                let mut tx = begin_tx(engine.store().pool()).await.expect("begin");
                let pending = engine
                    .store()
                    .complete_in(&mut tx, guard, outcome("x"))
                    .await
                    .expect("complete_in");
                assert!(pending.parts().is_none());
                tx.commit().await.expect("commit");
                pending.committed();
                assert_eq!(engine.get(&Scope::global(), &key).await.expect("get"), None);
            }
        }
    };
}

type PgStore = idempotency_sql::PostgresStore;
type LiteStore = idempotency_sql::SqliteStore;

#[allow(unreachable_pub)]
mod pg_types {
    use idempotency_sql::sqlx;
    pub type StoreOf = idempotency_sql::PostgresStore;
    pub type ConnOf = sqlx::PgConnection;
    pub async fn begin_tx(
        pool: &sqlx::PgPool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        pool.begin().await
    }
}
#[allow(unreachable_pub)]
mod lite_types {
    use idempotency_sql::sqlx;
    pub type StoreOf = idempotency_sql::SqliteStore;
    pub type ConnOf = sqlx::SqliteConnection;
    /// `BEGIN IMMEDIATE`: take SQLite's write lock up front, as the crate docs advise.
    pub async fn begin_tx(
        pool: &sqlx::SqlitePool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }
}

mod postgres_tx {
    use super::pg_types::*;
    use super::*;
    transactional_tests!(
        cases,
        (
            common::pg_store(8).await,
            Box::new(()) as Box<dyn std::any::Any + Send>
        ),
        "CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, who TEXT NOT NULL)",
        "INSERT INTO orders (who) VALUES ($1)"
    );
    #[allow(dead_code)]
    fn _types(_: PgStore) {}
}

mod sqlite_tx {
    use super::lite_types::*;
    use super::*;
    transactional_tests!(
        cases,
        {
            let (store, dir) = common::sqlite_store(4).await;
            (store, Box::new(dir) as Box<dyn std::any::Any + Send>)
        },
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, who TEXT NOT NULL)",
        "INSERT INTO orders (who) VALUES (?1)"
    );
    #[allow(dead_code)]
    fn _types(_: LiteStore) {}
}

/// Postgres: a retry that arrives while the first attempt's completion waits in its open
/// transaction is answered "in progress" from the claim statement's snapshot, without waiting for
/// the row lock; once the transaction commits the retry replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retry_during_an_open_completion_is_in_progress_without_waiting() {
    let store = std::sync::Arc::new(common::pg_store(8).await);
    let engine = engine(store.clone(), &idempotency_testkit::unique_prefix());
    let key = IdempotencyKey::new("open-tx").unwrap();
    let guard = begin_run(&engine, &key).await;
    let mut tx = store.pool().begin().await.expect("begin");
    let pending = store
        .complete_in(&mut tx, guard, outcome("done"))
        .await
        .expect("complete_in");
    // The row is now locked by `tx`. The engine's own store timeout (1.5 s) bounds the retry;
    // an answer at all (rather than a timeout) shows it did not wait for the lock.
    let retry = engine
        .begin(&Scope::global(), &key, Fingerprint::of("order"))
        .await;
    assert!(
        matches!(retry, Err(IdempotencyError::InProgress { .. })),
        "{retry:?}"
    );
    tx.commit().await.expect("commit");
    pending.committed();
    match engine
        .begin(&Scope::global(), &key, Fingerprint::of("order"))
        .await
    {
        Ok(Begin::Replay(replayed)) => assert_eq!(replayed, outcome("done")),
        other => panic!("a retry after the commit replays, got {other:?}"),
    }
}

/// A SQLite store whose own operations give up after 300 ms (lease renewals that wait for the
/// write lock fail fast and are retried), with an engine leasing for `lease`.
async fn sqlite_engine(
    lease: Duration,
    renew: bool,
) -> (Idempotency<idempotency_sql::SqliteStore>, tempfile::TempDir) {
    let (pool, dir) = common::sqlite_pool(4).await;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("orders table");
    let store = idempotency_sql::SqliteStore::builder(pool)
        .operation_timeout(Duration::from_millis(300))
        .migrate()
        .await
        .expect("migrating");
    let engine = Idempotency::builder(store)
        .prefix(idempotency_testkit::unique_prefix())
        .lease(lease)
        .renew_leases(renew)
        .ignore_env()
        .build()
        .expect("engine");
    (engine, dir)
}

/// SQLite: the handler's `BEGIN IMMEDIATE` transaction holds the write lock for longer than the
/// lease, so every renewal waits and fails and the lease lapses by the database clock; the
/// completion in that transaction still succeeds (fenced on the token: nobody could take the
/// key over while the lock was held), and a retry replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_transaction_longer_than_the_lease_completes() {
    let (engine, _dir) = sqlite_engine(Duration::from_millis(300), true).await;
    let key = IdempotencyKey::new("long-tx").unwrap();
    let guard = begin_run(&engine, &key).await;
    let store = engine.store().clone();
    let mut tx = store
        .pool()
        .begin_with("BEGIN IMMEDIATE")
        .await
        .expect("begin");
    sqlx::query("INSERT INTO orders (who) VALUES ('long')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    // Real time: the lease lives on the database's clock. Three leases long.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        !guard.is_lease_lost(),
        "a blocked renewal is not a lost lease"
    );
    let pending = store
        .complete_in(&mut tx, guard, outcome("long"))
        .await
        .expect("the transaction holding the write lock completes its own claim");
    tx.commit().await.expect("commit");
    pending.committed();
    match engine
        .begin(&Scope::global(), &key, Fingerprint::of("order"))
        .await
    {
        Ok(Begin::Replay(replayed)) => assert_eq!(replayed, outcome("long")),
        other => panic!("a retry must replay, got {other:?}"),
    }
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(orders, 1);
}

/// SQLite: a real takeover (the lease lapsed with no renewal and another attempt claimed the
/// key) before the stale attempt's transaction still gives `LeaseLost` in that transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_takeover_before_the_transaction_is_lease_lost() {
    let (engine, _dir) = sqlite_engine(Duration::from_millis(200), false).await;
    let key = IdempotencyKey::new("taken-over").unwrap();
    let stale = begin_run(&engine, &key).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let owner = begin_run(&engine, &key).await;
    let store = engine.store().clone();
    let mut tx = store
        .pool()
        .begin_with("BEGIN IMMEDIATE")
        .await
        .expect("begin");
    sqlx::query("INSERT INTO orders (who) VALUES ('stale')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    let refused = store.complete_in(&mut tx, stale, outcome("stale")).await;
    assert!(
        matches!(refused, Err(IdempotencyError::LeaseLost)),
        "{refused:?}"
    );
    tx.rollback().await.expect("rollback");
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(orders, 0, "the stale side effect rolled back");
    owner.release().await.expect("release");
}
