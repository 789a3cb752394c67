//! newuser4: the exactly-once path as a new user follows it from the crate docs (`complete_in`
//! in the application's own transaction), pushed where the existing tests do not go: a handler
//! that panics inside its transaction, 16 concurrent duplicates running the whole flow, a
//! Postgres restart in the middle, a transaction at `REPEATABLE READ` / `SERIALIZABLE` (a typed
//! `TransactionConflict`, the claim released), and a wrong connection string.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::orders::{Fixture, claim, count, insert, operator_locks_row, receipt, runs_within};
use idempotency_core::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, Scope, StoreError,
};
use idempotency_sql::sqlx::postgres::PgPoolOptions;
use idempotency_sql::{PostgresStore, SqliteStore, TransactionConflict, sqlx};
use idempotency_testkit::fixtures::PostgresServer;

async fn pg_engine(lease: Duration) -> (Idempotency<PostgresStore>, String) {
    pg_engine_renewing(lease, true).await
}

/// [`pg_engine`], with lease renewal on or off.
async fn pg_engine_renewing(lease: Duration, renew: bool) -> (Idempotency<PostgresStore>, String) {
    pg_engine_timed(lease, renew, Duration::from_millis(1500)).await
}

/// As [`pg_engine_renewing`], with the engine's store timeout.
async fn pg_engine_timed(
    lease: Duration,
    renew: bool,
    store_timeout: Duration,
) -> (Idempotency<PostgresStore>, String) {
    let f = Fixture::on_store(common::pg_store(20).await, lease, renew, store_timeout).await;
    (f.engine, f.orders)
}

/// The crate front page's example, run as written (a Postgres with an `orders` table): the
/// first call orders, the second replays the receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_page_example_runs_as_written() {
    let (engine, orders) = pg_engine(Duration::from_secs(60)).await;
    let pool = engine.store().pool().clone();
    let (scope, key) = (
        Scope::new("customer-42"),
        IdempotencyKey::new("order-7f3a").unwrap(),
    );
    for round in 0..2 {
        let fingerprint = Fingerprint::of(r#"{"sku":"tea","qty":2}"#);
        match engine
            .begin(&scope, &key, fingerprint)
            .await
            .expect("begin")
        {
            Begin::Replay(outcome) => {
                assert_eq!(round, 1, "the first call runs");
                assert_eq!(&outcome.body[..], br#"{"order":1}"#);
            }
            Begin::Run(guard) => {
                assert_eq!(round, 0, "the retry replays");
                let mut tx = pool.begin().await.expect("begin tx");
                insert(&mut tx, &orders, "tea").await;
                let pending = engine
                    .store()
                    .complete_in(&mut tx, guard, receipt(r#"{"order":1}"#))
                    .await
                    .expect("complete_in");
                tx.commit().await.expect("commit");
                pending.committed();
            }
        }
    }
    assert_eq!(count(&engine, &orders).await, 1);
}

/// A handler that panics inside its transaction, after its write, before `complete_in` (the
/// guard is dropped during the unwind): nothing is committed and the retry runs at once, not
/// after the 60 s lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_panic_before_complete_in_rolls_back_and_frees_the_key() {
    let (engine, orders) = pg_engine(Duration::from_secs(60)).await;
    let engine = Arc::new(engine);
    let key = IdempotencyKey::new("panic-before").unwrap();
    let handler = {
        let (engine, orders, key) = (engine.clone(), orders.clone(), key.clone());
        tokio::spawn(async move {
            let _guard = claim(&engine, &key).await;
            let mut tx = engine.store().pool().begin().await.expect("begin tx");
            insert(&mut tx, &orders, "first").await;
            panic!("handler bug after the write");
        })
    };
    assert!(handler.await.unwrap_err().is_panic());
    let retry = runs_within(&engine, &key, Duration::from_secs(5))
        .await
        .expect("the retry runs once the panicked claim is released");
    assert_eq!(count(&engine, &orders).await, 0, "nothing committed");
    retry.release().await.expect("release");
}

/// The same panic after `complete_in`, before the commit: the pending completion is dropped in
/// the unwind, the transaction (write + record) rolls back, and the retry runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_panic_after_complete_in_rolls_back_and_frees_the_key() {
    let (engine, orders) = pg_engine(Duration::from_secs(60)).await;
    let engine = Arc::new(engine);
    let key = IdempotencyKey::new("panic-after").unwrap();
    let handler = {
        let (engine, orders, key) = (engine.clone(), orders.clone(), key.clone());
        tokio::spawn(async move {
            let guard = claim(&engine, &key).await;
            let mut tx = engine.store().pool().begin().await.expect("begin tx");
            insert(&mut tx, &orders, "first").await;
            let _pending = engine
                .store()
                .complete_in(&mut tx, guard, receipt("lost"))
                .await
                .expect("complete_in");
            panic!("handler bug between complete_in and commit");
        })
    };
    assert!(handler.await.unwrap_err().is_panic());
    let retry = runs_within(&engine, &key, Duration::from_secs(5))
        .await
        .expect("the retry runs once the panicked claim is released");
    assert_eq!(count(&engine, &orders).await, 0, "nothing committed");
    retry.release().await.expect("release");
}

/// The outcome of one of 16 concurrent duplicates running the whole documented flow.
#[derive(Debug)]
enum Answer {
    Ran,
    Replayed(Vec<u8>),
    InProgress,
}

/// 16 tasks send the same key at once, each running the documented flow (begin; on `Run`:
/// transaction, write, `complete_in`, commit). Exactly one order; every other task replays the
/// receipt or is told "in progress"; afterwards the key replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sixteen_concurrent_duplicates_order_once() {
    let (engine, orders) = pg_engine(Duration::from_secs(60)).await;
    let engine = Arc::new(engine);
    let key = IdempotencyKey::new("sixteen").unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (engine, orders, key, barrier) =
            (engine.clone(), orders.clone(), key.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            match engine
                .begin(&Scope::global(), &key, Fingerprint::of("order"))
                .await
            {
                Ok(Begin::Run(guard)) => {
                    let mut tx = engine.store().pool().begin().await.expect("begin tx");
                    insert(&mut tx, &orders, "x").await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let pending = engine
                        .store()
                        .complete_in(&mut tx, guard, receipt(r#"{"order":"x"}"#))
                        .await
                        .expect("complete_in");
                    tx.commit().await.expect("commit");
                    pending.committed();
                    Answer::Ran
                }
                Ok(Begin::Replay(outcome)) => Answer::Replayed(outcome.body.to_vec()),
                Err(IdempotencyError::InProgress { .. }) => Answer::InProgress,
                Err(other) => panic!("unexpected answer to a duplicate: {other}"),
            }
        }));
    }
    let mut ran = 0;
    for task in tasks {
        match task.await.expect("task") {
            Answer::Ran => ran += 1,
            Answer::Replayed(body) => assert_eq!(body, br#"{"order":"x"}"#),
            Answer::InProgress => {}
        }
    }
    assert_eq!(ran, 1, "exactly one duplicate runs");
    assert_eq!(count(&engine, &orders).await, 1, "exactly one order");
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key, Fingerprint::of("order"))
            .await,
        Ok(Begin::Replay(_))
    ));
}

/// The same 16 duplicates on SQLite (the transactions opened with `BEGIN IMMEDIATE`, as the
/// docs advise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sixteen_concurrent_duplicates_order_once() {
    let (store, _dir) = common::sqlite_store(8).await;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")
        .execute(store.pool())
        .await
        .expect("orders table");
    let engine: Arc<Idempotency<SqliteStore>> = Arc::new(
        Idempotency::builder(store)
            .prefix(idempotency_testkit::unique_prefix())
            .ignore_env()
            .build()
            .expect("engine"),
    );
    let key = IdempotencyKey::new("sixteen").unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (engine, key, barrier) = (engine.clone(), key.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            match engine
                .begin(&Scope::global(), &key, Fingerprint::of("order"))
                .await
            {
                Ok(Begin::Run(guard)) => {
                    let mut tx = engine
                        .store()
                        .pool()
                        .begin_with("BEGIN IMMEDIATE")
                        .await
                        .expect("begin tx");
                    sqlx::query("INSERT INTO orders (who) VALUES ('x')")
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                    let pending = engine
                        .store()
                        .complete_in(&mut tx, guard, receipt(r#"{"order":"x"}"#))
                        .await
                        .expect("complete_in");
                    tx.commit().await.expect("commit");
                    pending.committed();
                    Answer::Ran
                }
                Ok(Begin::Replay(outcome)) => Answer::Replayed(outcome.body.to_vec()),
                Err(IdempotencyError::InProgress { .. }) => Answer::InProgress,
                Err(other) => panic!("unexpected answer to a duplicate: {other}"),
            }
        }));
    }
    let mut ran = 0;
    for task in tasks {
        match task.await.expect("task") {
            Answer::Ran => ran += 1,
            Answer::Replayed(body) => assert_eq!(body, br#"{"order":"x"}"#),
            Answer::InProgress => {}
        }
    }
    assert_eq!(ran, 1, "exactly one duplicate runs");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(engine.store().pool())
        .await
        .expect("count");
    assert_eq!(count, 1, "exactly one order");
}

/// Postgres is killed while the handler's transaction is open (write done, `complete_in` not
/// yet called) and restarted: `complete_in` fails with a store error, nothing is committed,
/// and once the server is back the retry runs (at once, not after the 60 s lease), orders once,
/// and later retries replay — on the same pool, without rebuilding anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_transaction_loses_nothing_and_runs_once() {
    // `synchronous_commit=on`: the fixture's default acknowledges commits before their WAL is
    // written, so a kill would lose the table itself.
    let mut server =
        PostgresServer::start_local_with(&["synchronous_commit=on"]).expect("local postgres");
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect(server.url())
        .await
        .expect("connect");
    sqlx::query("CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, who TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("orders table");
    let store = PostgresStore::builder(pool.clone())
        .migrate()
        .await
        .expect("migrate");
    let engine = Idempotency::builder(store)
        .ignore_env()
        .build()
        .expect("engine");
    let key = IdempotencyKey::new("restart").unwrap();
    let guard = claim(&engine, &key).await;
    let mut tx = pool.begin().await.expect("begin tx");
    sqlx::query("INSERT INTO orders (who) VALUES ('first')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    server.kill().expect("kill");
    let failed = engine
        .store()
        .complete_in(&mut tx, guard, receipt("first"))
        .await;
    assert!(
        matches!(failed, Err(IdempotencyError::StoreUnavailable(_))),
        "{failed:?}"
    );
    drop(tx);
    server.restart().expect("restart");
    let retry = runs_within(&engine, &key, Duration::from_secs(10))
        .await
        .expect("the retry runs once the server is back");
    let mut tx = pool.begin().await.expect("begin tx after restart");
    sqlx::query("INSERT INTO orders (who) VALUES ('retry')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    let pending = engine
        .store()
        .complete_in(&mut tx, retry, receipt("retry"))
        .await
        .expect("complete_in after restart");
    tx.commit().await.expect("commit");
    pending.committed();
    let whos: Vec<String> = sqlx::query_scalar("SELECT who FROM orders ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("orders");
    assert_eq!(whos, vec!["retry".to_owned()], "one order, the retry's");
    match engine
        .begin(&Scope::global(), &key, Fingerprint::of("order"))
        .await
    {
        Ok(Begin::Replay(outcome)) => assert_eq!(&outcome.body[..], b"retry"),
        other => panic!("expected a replay, got {other:?}"),
    }
}

/// Run the documented flow in a transaction opened with `begin` (e.g. `BEGIN ISOLATION LEVEL
/// SERIALIZABLE`), the handler's work taking `work` after its first statement, under a lease of
/// `lease` (renewed every third of it, outside the transaction). On an error the transaction is
/// rolled back (dropped) and the engine, its orders table and the key are returned with it.
async fn flow_at_isolation(
    begin: &str,
    lease: Duration,
    work: Duration,
) -> (
    Idempotency<PostgresStore>,
    String,
    IdempotencyKey,
    Result<(), IdempotencyError>,
) {
    let (engine, orders) = pg_engine(lease).await;
    let key = IdempotencyKey::new("isolation").unwrap();
    let guard = claim(&engine, &key).await;
    let pool = engine.store().pool().clone();
    let mut tx = pool.begin_with(begin.to_owned()).await.expect("begin tx");
    insert(&mut tx, &orders, "first").await;
    tokio::time::sleep(work).await;
    let result = match engine
        .store()
        .complete_in(&mut tx, guard, receipt("done"))
        .await
    {
        Ok(pending) => {
            tx.commit().await.expect("commit");
            pending.committed();
            Ok(())
        }
        Err(error) => {
            drop(tx);
            Err(error)
        }
    };
    (engine, orders, key, result)
}

/// The cause carried by a [`IdempotencyError::TransactionConflict`].
fn conflict_cause(error: &IdempotencyError) -> &TransactionConflict {
    match error {
        IdempotencyError::TransactionConflict { source } => source
            .downcast_ref::<TransactionConflict>()
            .unwrap_or_else(|| panic!("not the SQL store's cause: {source:?}")),
        other => panic!("expected a transaction conflict, got {other:?}"),
    }
}

/// After a failed attempt (rolled back): the retry runs within `within` (well before the
/// failed attempt's lease would lapse: the claim was released), runs the flow at the default
/// READ COMMITTED, and afterwards exactly one order exists, the retry's, and the key replays.
async fn retry_runs_once(
    engine: &Idempotency<PostgresStore>,
    orders: &str,
    key: &IdempotencyKey,
    within: Duration,
) {
    let guard = runs_within(engine, key, within)
        .await
        .expect("the conflicting attempt's claim was released");
    let mut tx = engine.store().pool().begin().await.expect("begin tx");
    insert(&mut tx, orders, "retry").await;
    let pending = engine
        .store()
        .complete_in(&mut tx, guard, receipt("retry"))
        .await
        .expect("the retry at READ COMMITTED completes");
    tx.commit().await.expect("commit");
    pending.committed();
    let whos: Vec<String> = sqlx::query_scalar(&format!("SELECT who FROM {orders}"))
        .fetch_all(engine.store().pool())
        .await
        .expect("orders");
    assert_eq!(whos, vec!["retry".to_owned()], "one order, the retry's");
    match engine
        .begin(&Scope::global(), key, Fingerprint::of("order"))
        .await
    {
        Ok(Begin::Replay(outcome)) => assert_eq!(&outcome.body[..], b"retry"),
        other => panic!("expected a replay, got {other:?}"),
    }
}

/// Baseline: at the default `READ COMMITTED`, a handler whose work spans a few lease renewals
/// completes (the renewals commit outside the transaction; the fenced UPDATE sees them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_committed_transaction_across_renewals_completes() {
    let (engine, orders, _, result) = flow_at_isolation(
        "BEGIN",
        Duration::from_millis(600),
        Duration::from_millis(700),
    )
    .await;
    result.expect("completes");
    assert_eq!(count(&engine, &orders).await, 1);
}

/// A handler at `SERIALIZABLE` or `REPEATABLE READ` whose work outlasts a lease renewal: the
/// renewal commits outside the transaction after its snapshot (taken at its first statement).
/// Work shorter than the lease: the fenced UPDATE reads the old row version, still live, and
/// fails with 40001 (could not serialize access due to concurrent update). Work longer than
/// the lease: the old row version has lapsed, the UPDATE matches nothing, but the claim is live
/// under this attempt on the pool. Both are a `TransactionConflict` naming the cause and the
/// fix (not `LeaseLost`); the write rolls back, and the claim is released, so the retry runs at
/// once (the live lease had more than 1.5 s left) and orders once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_repeatable_read_or_serializable_across_a_renewal_is_a_transaction_conflict() {
    let lease = Duration::from_secs(3);
    let cases = [
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
    ]
    .into_iter()
    .flat_map(|begin| {
        // Renewed at ~1 s: the snapshot's lease end (3 s) is still ahead at 1.8 s, behind at 3.4 s.
        [(begin, Duration::from_millis(1800)), (begin, Duration::from_millis(3400))]
    })
    .map(|(begin, work)| async move {
        let (engine, orders, key, result) = flow_at_isolation(begin, lease, work).await;
        let error = result.expect_err(begin);
        let cause = conflict_cause(&error);
        let message = cause.to_string();
        assert!(message.contains("READ COMMITTED"), "{begin}: {message}");
        if work < lease {
            assert!(
                matches!(cause, TransactionConflict::SerializationFailure { code, .. } if code == "40001"),
                "{begin}, work {work:?}: {cause:?}"
            );
        } else {
            let level = begin.trim_start_matches("BEGIN ISOLATION LEVEL ").to_lowercase();
            assert!(
                matches!(cause, TransactionConflict::StaleSnapshot { isolation: Some(i) } if *i == level),
                "{begin}, work {work:?}: {cause:?}"
            );
            assert!(message.contains(&level), "{message}");
        }
        assert!(!error.is_retryable(), "a retry in the same transaction fails the same way");
        retry_runs_once(&engine, &orders, &key, Duration::from_secs(1)).await;
    });
    futures::future::join_all(cases).await;
}

/// At `REPEATABLE READ`, a transaction whose first statement ran before the claim was taken (the
/// handler read something, then called `begin`) never sees the claim row in its snapshot:
/// `complete_in` answers a `TransactionConflict` (stale snapshot, at "repeatable read") at once,
/// the claim is released (the lease is 60 s: the retry runs within a second) and the retry, at
/// READ COMMITTED, orders once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_repeatable_read_snapshot_taken_before_the_claim_is_a_transaction_conflict() {
    let (engine, orders) = pg_engine(Duration::from_secs(60)).await;
    let pool = engine.store().pool().clone();
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .expect("begin tx");
    let before: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {orders}"))
        .fetch_one(&mut *tx)
        .await
        .expect("read first");
    assert_eq!(before, 0);
    let key = IdempotencyKey::new("snapshot-first").unwrap();
    let guard = claim(&engine, &key).await;
    insert(&mut tx, &orders, "first").await;
    let error = engine
        .store()
        .complete_in(&mut tx, guard, receipt("done"))
        .await
        .expect_err("the snapshot predates the claim");
    assert!(
        matches!(
            conflict_cause(&error),
            TransactionConflict::StaleSnapshot { isolation: Some(level) } if level == "repeatable read"
        ),
        "{error:?}"
    );
    drop(tx);
    retry_runs_once(&engine, &orders, &key, Duration::from_secs(1)).await;
}

/// Control: the same order (read, then claim, then write and complete) at the default READ
/// COMMITTED completes, since every statement takes a fresh snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_committed_read_before_the_claim_completes() {
    let (engine, orders) = pg_engine(Duration::from_secs(60)).await;
    let pool = engine.store().pool().clone();
    let mut tx = pool.begin().await.expect("begin tx");
    let _: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {orders}"))
        .fetch_one(&mut *tx)
        .await
        .expect("read first");
    let key = IdempotencyKey::new("read-committed-first").unwrap();
    let guard = claim(&engine, &key).await;
    insert(&mut tx, &orders, "first").await;
    let pending = engine
        .store()
        .complete_in(&mut tx, guard, receipt("done"))
        .await
        .expect("complete_in at READ COMMITTED");
    tx.commit().await.expect("commit");
    pending.committed();
    assert_eq!(count(&engine, &orders).await, 1);
}

/// A real takeover stays `LeaseLost` at REPEATABLE READ: the lease lapsed (renewal off) and
/// another attempt claimed the key before the stale attempt's completion. The pool shows the
/// other attempt's token, so the answer is `LeaseLost` and the new owner's claim is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_repeatable_read_takeover_is_still_lease_lost() {
    let (engine, orders) = pg_engine_renewing(Duration::from_millis(300), false).await;
    let key = IdempotencyKey::new("rr-takeover").unwrap();
    let stale = claim(&engine, &key).await;
    let mut tx = engine
        .store()
        .pool()
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .expect("begin tx");
    insert(&mut tx, &orders, "stale").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new_owner = runs_within(&engine, &key, Duration::from_secs(5))
        .await
        .expect("the lapsed claim is taken over");
    let answer = engine
        .store()
        .complete_in(&mut tx, stale, receipt("stale"))
        .await;
    assert!(
        matches!(answer, Err(IdempotencyError::LeaseLost)),
        "{answer:?}"
    );
    drop(tx);
    let pending = {
        let mut tx = engine.store().pool().begin().await.expect("begin tx");
        let pending = engine
            .store()
            .complete_in(&mut tx, new_owner, receipt("new"))
            .await
            .expect("the new owner completes");
        tx.commit().await.expect("commit");
        pending
    };
    pending.committed();
    assert_eq!(
        count(&engine, &orders).await,
        0,
        "the stale write rolled back"
    );
}

/// A connection string with a wrong password or database: `PgPool::connect` (sqlx, before the
/// store) fails with a typed error naming the cause; nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wrong_database_in_the_url_is_a_clear_error() {
    let url = common::shared_server().url();
    let wrong = format!("{}_no_such_db", url);
    let error = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect(&wrong)
        .await
        .expect_err("no such database");
    let text = error.to_string();
    assert!(text.contains("does not exist"), "{text}");
}

/// SQLite: a handler that opens its `BEGIN IMMEDIATE` transaction first and claims the key
/// afterwards waits for its own write lock. Pins that this ends within the operation timeout
/// with a typed error (nothing hangs, nothing is claimed); the docs' order (claim, then open the
/// transaction) is the one that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_claim_inside_the_apps_own_write_transaction_fails_fast() {
    let (pool, _dir) = common::sqlite_pool(4).await;
    let store = SqliteStore::builder(pool.clone())
        .operation_timeout(Duration::from_millis(300))
        .migrate()
        .await
        .expect("migrate");
    let engine = Idempotency::builder(store)
        .prefix(idempotency_testkit::unique_prefix())
        .ignore_env()
        .build()
        .expect("engine");
    let key = IdempotencyKey::new("tx-first").unwrap();
    let tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin tx");
    let started = Instant::now();
    let claimed = engine
        .begin(&Scope::global(), &key, Fingerprint::of("order"))
        .await;
    assert!(
        matches!(claimed, Err(IdempotencyError::StoreUnavailable(_))),
        "{claimed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(tx);
    let guard = runs_within(&engine, &key, Duration::from_secs(5))
        .await
        .expect("nothing was claimed: the key runs once the lock is free");
    guard.release().await.expect("release");
}

/// SQLite's equivalent of a stale snapshot: a transaction opened with a plain (deferred) `BEGIN`
/// whose first statement is a read, before the claim is committed on the pool, cannot write
/// any more (`SQLITE_BUSY_SNAPSHOT`). `complete_in` answers a `TransactionConflict` saying to
/// open it with `BEGIN IMMEDIATE` after the claim (before: "store unavailable", which invites
/// a retry that fails the same way), and releases the claim: the retry, in a `BEGIN IMMEDIATE`
/// transaction, runs at once and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deferred_transaction_that_read_before_the_claim_is_a_transaction_conflict() {
    let (store, _dir) = common::sqlite_store(4).await;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")
        .execute(store.pool())
        .await
        .expect("orders table");
    let engine = Idempotency::builder(store)
        .prefix(idempotency_testkit::unique_prefix())
        .ignore_env()
        .build()
        .expect("engine");
    let pool = engine.store().pool().clone();
    let mut tx = pool.begin().await.expect("begin tx");
    let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&mut *tx)
        .await
        .expect("read first");
    let key = IdempotencyKey::new("deferred").unwrap();
    let guard = claim(&engine, &key).await;
    let error = engine
        .store()
        .complete_in(&mut tx, guard, receipt("first"))
        .await
        .expect_err("the transaction's snapshot predates the claim");
    let cause = conflict_cause(&error);
    assert!(
        matches!(cause, TransactionConflict::BusySnapshot { .. }),
        "{cause:?}"
    );
    assert!(cause.to_string().contains("BEGIN IMMEDIATE"), "{cause}");
    drop(tx);
    let retry = runs_within(&engine, &key, Duration::from_secs(1))
        .await
        .expect("the claim was released");
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin tx");
    sqlx::query("INSERT INTO orders (who) VALUES ('retry')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    let pending = engine
        .store()
        .complete_in(&mut tx, retry, receipt("retry"))
        .await
        .expect("complete_in in BEGIN IMMEDIATE");
    tx.commit().await.expect("commit");
    pending.committed();
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

/// How a stale attempt reaches a failed `complete_in` in [`ignored_error_then_commit`].
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// `REPEATABLE READ`, snapshot taken before the claim: `TransactionConflict` (stale
    /// snapshot), the claim released.
    StaleSnapshot,
    /// `READ COMMITTED`, the lease lapsed (renewal off) and another attempt took the key over:
    /// `LeaseLost`.
    TakenOver,
    /// `REPEATABLE READ`, the claim deleted (CLI `delete`) and claimed again after the
    /// snapshot: 40001 on the UPDATE, and `LeaseLost` (breaker14: it was a
    /// `TransactionConflict` saying "claim released").
    DeletedAndReclaimed,
}

/// A handler that ignores `complete_in`'s error and commits its transaction anyway (the docs
/// say to roll back). Whatever the failure, the stale attempt's side effect must not commit:
/// the store aborts the caller's transaction before answering, so `COMMIT` rolls it back. Then
/// the key runs once more (the retry, or the attempt that took it over) and exactly one order
/// exists. Before, the stale snapshot case committed the order and released the claim: the
/// retry ordered a second time.
async fn ignored_error_then_commit(failure: Failure) {
    let lease = match failure {
        Failure::TakenOver => Duration::from_millis(300),
        Failure::StaleSnapshot | Failure::DeletedAndReclaimed => Duration::from_secs(60),
    };
    let (engine, orders) = pg_engine_renewing(lease, !matches!(failure, Failure::TakenOver)).await;
    let key = IdempotencyKey::new("ignored-error").unwrap();
    let pool = engine.store().pool().clone();
    let begin = match failure {
        Failure::TakenOver => "BEGIN",
        Failure::StaleSnapshot | Failure::DeletedAndReclaimed => {
            "BEGIN ISOLATION LEVEL REPEATABLE READ"
        }
    };
    let mut tx = pool.begin_with(begin).await.expect("begin tx");
    let _: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {orders}"))
        .fetch_one(&mut *tx)
        .await
        .expect("read first");
    let stale = claim(&engine, &key).await;
    let mut other = None;
    if let Failure::DeletedAndReclaimed = failure {
        // The snapshot must hold the claim's row: take it after the claim (a new statement at
        // REPEATABLE READ would not), so open the transaction again.
        drop(tx);
        tx = pool.begin_with(begin).await.expect("begin tx");
    }
    insert(&mut tx, &orders, "stale").await;
    match failure {
        Failure::StaleSnapshot => {}
        Failure::TakenOver => {
            tokio::time::sleep(Duration::from_millis(400)).await;
            other = Some(
                runs_within(&engine, &key, Duration::from_secs(5))
                    .await
                    .expect("the lapsed claim is taken over"),
            );
        }
        Failure::DeletedAndReclaimed => {
            let store_key = engine.store_key(&Scope::global(), &key);
            assert!(
                idempotency_core::IdempotencyStore::delete(engine.store(), &store_key)
                    .await
                    .expect("delete")
            );
            other = Some(
                runs_within(&engine, &key, Duration::from_secs(5))
                    .await
                    .expect("the deleted key is claimed again"),
            );
        }
    }
    let error = engine
        .store()
        .complete_in(&mut tx, stale, receipt("stale"))
        .await
        .expect_err("the stale attempt cannot complete");
    match failure {
        Failure::StaleSnapshot => {
            conflict_cause(&error);
        }
        Failure::TakenOver | Failure::DeletedAndReclaimed => {
            assert!(matches!(error, IdempotencyError::LeaseLost), "{error:?}");
        }
    }
    // The handler ignores the error and commits (or tries to).
    let _ = tx.commit().await;
    assert_eq!(
        count(&engine, &orders).await,
        0,
        "{failure:?}: the stale attempt's order must not commit"
    );
    let next = match other {
        Some(guard) => guard,
        None => runs_within(&engine, &key, Duration::from_secs(1))
            .await
            .expect("the stale snapshot's claim was released"),
    };
    let mut tx = pool.begin().await.expect("begin tx");
    insert(&mut tx, &orders, "next").await;
    let pending = engine
        .store()
        .complete_in(&mut tx, next, receipt("next"))
        .await
        .expect("the next attempt completes");
    tx.commit().await.expect("commit");
    pending.committed();
    assert_eq!(count(&engine, &orders).await, 1, "{failure:?}: one order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stale_snapshot_ignored_then_committed_orders_once() {
    ignored_error_then_commit(Failure::StaleSnapshot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lease_lost_ignored_then_committed_orders_once() {
    ignored_error_then_commit(Failure::TakenOver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_repeatable_read_deleted_and_reclaimed_is_lease_lost_and_commit_orders_once() {
    ignored_error_then_commit(Failure::DeletedAndReclaimed).await;
}

/// The completion in the caller's transaction bounds its own wait for the row with
/// `lock_timeout` and then puts the transaction's setting back: a handler that set its own
/// `lock_timeout` (here `7s`, `SET LOCAL`) finds it unchanged after `complete_in`, and one that
/// set none finds the server's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_complete_in_leaves_the_transactions_lock_timeout_as_it_was() {
    let (engine, orders) = pg_engine(Duration::from_secs(60)).await;
    for (set, expected) in [(Some("7s"), "7s"), (None, "0")] {
        let key = IdempotencyKey::new(format!("lock-timeout-{expected}")).unwrap();
        let guard = runs_within(&engine, &key, Duration::from_secs(1))
            .await
            .expect("runs");
        let mut tx = engine.store().pool().begin().await.expect("begin tx");
        if let Some(set) = set {
            sqlx::query(&format!("SET LOCAL lock_timeout = '{set}'"))
                .execute(&mut *tx)
                .await
                .expect("set");
        }
        insert(&mut tx, &orders, "x").await;
        let pending = engine
            .store()
            .complete_in(&mut tx, guard, receipt("done"))
            .await
            .expect("completes");
        let now: String = sqlx::query_scalar("SHOW lock_timeout")
            .fetch_one(&mut *tx)
            .await
            .expect("show");
        assert_eq!(now, expected);
        tx.commit().await.expect("commit");
        pending.committed();
    }
    assert_eq!(count(&engine, &orders).await, 2);
}

/// A handler that set a `lock_timeout` shorter than the store's bound keeps it for the
/// completion's own wait: with the record's row held by an operator's open transaction for
/// 3 s, the transaction's `lock_timeout` at 200 ms and the engine's store timeout at 60 s,
/// `complete_in` answers a timeout (and aborts the transaction) while the lock is still held,
/// instead of waiting within the store's budget and completing once the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_complete_in_keeps_a_shorter_lock_timeout_of_the_transaction() {
    let (engine, orders) =
        pg_engine_timed(Duration::from_secs(60), true, Duration::from_secs(60)).await;
    let key = IdempotencyKey::new("shorter-lock-timeout").unwrap();
    let guard = runs_within(&engine, &key, Duration::from_secs(60))
        .await
        .expect("runs");
    let pool = engine.store().pool().clone();
    let store_key = engine.store_key(&Scope::global(), &key);
    let operator = operator_locks_row(&pool, engine.store().table(), store_key.as_str()).await;
    let held = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        operator.commit().await.expect("operator commit");
    });

    let mut tx = pool.begin().await.expect("begin tx");
    sqlx::query("SET LOCAL lock_timeout = '200ms'")
        .execute(&mut *tx)
        .await
        .expect("set");
    insert(&mut tx, &orders, "x").await;
    let result = engine
        .store()
        .complete_in(&mut tx, guard, receipt("done"))
        .await;
    assert!(
        !held.is_finished(),
        "complete_in waited for the operator's lock past the transaction's lock_timeout"
    );
    assert!(
        matches!(
            result,
            Err(IdempotencyError::StoreUnavailable(
                StoreError::Timeout { .. }
            ))
        ),
        "{result:?}"
    );
    let _ = tx.commit().await;
    held.await.expect("operator");
    assert_eq!(count(&engine, &orders).await, 0, "the aborted order");
}
