//! breaker18: attacks on the Postgres `complete_in` inside the application's transaction — its
//! bounded wait for the row (`lock_timeout` set and restored in the statement), the settings
//! it touches, the transaction modes and roles it meets, and the abort of the caller's
//! transaction when the completion did not apply. The guarantee under test: a side effect
//! never commits without its record (one committed order per key, even when the handler
//! ignores `complete_in`'s error and commits), and the application's settings come out of
//! `complete_in` as they went in.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::orders::{Fixture, operator_locks_row, receipt, unique};
use idempotency_core::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, Scope, StoreError,
};
use idempotency_sql::sqlx::postgres::{PgPool, PgPoolOptions};
use idempotency_sql::{PostgresStore, sqlx};

/// An engine over a store on its own records table (so a test may lock or truncate it), with
/// an orders table next to it; leases not renewed.
async fn fixture(pool: PgPool, lease: Duration, store_timeout: Duration) -> Fixture {
    let store = PostgresStore::builder(pool)
        .table(unique("b18_records"))
        .operation_timeout(Duration::from_secs(10))
        .wake_waiters(false)
        .migrate()
        .await
        .expect("migrating");
    Fixture::build(store, unique("b18_orders"), |builder| {
        builder
            .lease(lease)
            .retention(lease.max(Duration::from_secs(86_400)))
            .renew_leases(false)
            .store_timeout(store_timeout)
    })
    .await
}

/// [`fixture`] on a pool of the shared server.
async fn on_shared(lease: Duration, store_timeout: Duration) -> Fixture {
    fixture(common::pg_pool(12).await, lease, store_timeout).await
}

/// Whether the backend `pid` is waiting for a heavyweight lock (a row or a table).
async fn waits_on_a_lock(f: &Fixture, pid: i32) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity \
         WHERE pid = $1",
    )
    .bind(pid)
    .fetch_one(&f.pool)
    .await
    .expect("pg_stat_activity")
}

/// Poll until backend `pid` waits on a lock (at most 10 s).
async fn until_waiting(f: &Fixture, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !waits_on_a_lock(f, pid).await {
        assert!(Instant::now() < deadline, "backend {pid} never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pid")
}

/// The `lock_timeout` bound is set by the completion statement itself, so it covers only the
/// waits that start after the statement began executing: the row lock. A table-level lock is
/// taken before that (at parse / plan-cache revalidation: `RowExclusiveLock` on the records
/// table), so a completion queued behind an operator's table lock waits with no bound on the
/// server. The client gives up at the store timeout and answers `Timeout` without aborting the
/// transaction, and the UPDATE stays queued on the caller's connection. A handler that ignores
/// the error and commits: sqlx first drains the queued UPDATE, which matches nothing when the
/// claim is gone by the time the lock goes, then `COMMIT` commits the order without its
/// record, and the retry orders again. Three ways the claim is gone:
/// - the operator truncates the table in a transaction (`TRUNCATE`: `ACCESS EXCLUSIVE`);
/// - the operator's transaction takes a table lock (`LOCK TABLE … IN SHARE MODE`, what
///   `CREATE INDEX` takes) and deletes the key;
/// - no operator write at all: the table lock (a `CREATE INDEX`, `VACUUM FULL`, a migration's
///   `ALTER TABLE`) is held longer than the lease, which lapses (the renewals queue behind the
///   same lock; off here so the lapse is exact).
///
/// Found by breaker18: every case fails (2 orders) on aee4bdd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_lock_wait_past_the_store_timeout_ignored_then_committed_orders_once() {
    let lease = Duration::from_millis(800);
    let cases = [
        ("TRUNCATE {t}", Duration::ZERO),
        (
            "LOCK TABLE {t} IN SHARE MODE; DELETE FROM {t} WHERE store_key = '{k}'",
            Duration::ZERO,
        ),
        ("LOCK TABLE {t} IN SHARE MODE", lease + lease / 2),
    ];
    let mut orders = Vec::new();
    for (operator_sql, hold) in cases {
        let f = on_shared(lease, Duration::from_millis(300)).await;
        let key = IdempotencyKey::new("b18-table-lock").unwrap();
        let guard = f.run(&key).await;

        let mut operator = f.pool.begin().await.expect("operator tx");
        let sql = operator_sql
            .replace("{t}", f.table())
            .replace("{k}", &f.store_key(&key));
        sqlx::raw_sql(&sql)
            .execute(&mut *operator)
            .await
            .expect("operator's statements");

        let mut tx = f.pool.begin().await.expect("begin tx");
        f.insert(&mut tx, "first").await;
        let started = Instant::now();
        let error = f
            .complete_in(&mut tx, guard, "first")
            .await
            .expect_err("the completion waits on the operator's table lock");
        assert!(
            matches!(
                error,
                IdempotencyError::StoreUnavailable(StoreError::Timeout { .. })
            ),
            "{operator_sql}: {error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // (On aee4bdd the UPDATE is still queued on the caller's connection, behind the
        // operator's lock; not asserted: a fix may cancel it.)
        // The lock is held past the lease (the third case).
        tokio::time::sleep(hold.saturating_sub(started.elapsed())).await;

        operator.commit().await.expect("operator commit");
        // The handler ignores the error and commits.
        let _ = tx.commit().await;
        let after_ignored_commit = f.count().await;
        f.retry_orders(&key).await;
        orders.push((operator_sql, after_ignored_commit, f.count().await));
    }
    for (operator_sql, after_ignored_commit, after_retry) in &orders {
        assert_eq!(
            (*after_ignored_commit, *after_retry),
            (0, 1),
            "{operator_sql}: the attempt whose complete_in failed must not commit its order \
             (orders after its ignored commit, after the retry); all cases: {orders:?}"
        );
    }
}

/// `lock_timeout` set every way an application sets it — session-level `SET` before `BEGIN`,
/// session-level `SET` inside the transaction, `SET LOCAL`, in `min`/`s`/`ms`/`us`, `0` — reads
/// the same after `complete_in` inside the transaction, and after `COMMIT` in the next
/// transaction on the same pooled connection (the session value, the `SET` inside the
/// transaction having been committed; a `SET LOCAL` gone). `statement_timeout` and
/// `idle_in_transaction_session_timeout` are untouched. Pinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_set_every_way_survives_complete_in_and_the_next_transaction() {
    // One connection: every transaction below runs on the same session.
    let pool = common::pg_pool(1).await;
    let f = fixture(pool, Duration::from_secs(60), Duration::from_secs(2)).await;
    // (before BEGIN, inside the transaction, read inside after complete_in, read in the next
    // transaction)
    let cases: [(&str, &str, &str, &str); 7] = [
        ("", "", "0", "0"),
        ("SET lock_timeout = '1min'", "", "1min", "1min"),
        ("", "SET lock_timeout = '2s'", "2s", "2s"),
        (
            "SET lock_timeout = '3s'",
            "SET LOCAL lock_timeout = '150ms'",
            "150ms",
            "3s",
        ),
        ("", "SET LOCAL lock_timeout = '1500us'", "2ms", "3s"),
        ("", "SET LOCAL lock_timeout = 0", "0", "3s"),
        (
            "RESET lock_timeout",
            "SET lock_timeout = '20000ms'",
            "20s",
            "20s",
        ),
    ];
    for (i, (before, inside, during, after)) in cases.into_iter().enumerate() {
        let key = IdempotencyKey::new(format!("b18-settings-{i}")).unwrap();
        let guard = f.run(&key).await;
        if !before.is_empty() {
            sqlx::query(before).execute(&f.pool).await.expect("before");
        }
        let mut tx = f.pool.begin().await.expect("begin tx");
        sqlx::query("SET LOCAL statement_timeout = '45s'")
            .execute(&mut *tx)
            .await
            .expect("statement_timeout");
        sqlx::query("SET LOCAL idle_in_transaction_session_timeout = '1min'")
            .execute(&mut *tx)
            .await
            .expect("idle timeout");
        if !inside.is_empty() {
            sqlx::query(inside).execute(&mut *tx).await.expect("inside");
        }
        f.insert(&mut tx, "x").await;
        let pending = f.complete_in(&mut tx, guard, "x").await.expect("completes");
        let read: (String, String, String) = sqlx::query_as(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'), \
             current_setting('idle_in_transaction_session_timeout')",
        )
        .fetch_one(&mut *tx)
        .await
        .expect("read settings");
        assert_eq!(
            read,
            (during.to_owned(), "45s".to_owned(), "1min".to_owned()),
            "case {i}: {before:?} / {inside:?}"
        );
        tx.commit().await.expect("commit");
        pending.committed();
        let mut next = f.pool.begin().await.expect("next tx");
        let next_value: String = sqlx::query_scalar("SHOW lock_timeout")
            .fetch_one(&mut *next)
            .await
            .expect("show");
        next.commit().await.expect("commit next");
        assert_eq!(next_value, after, "case {i}: the next transaction");
    }
    assert_eq!(f.count().await, 7);
}

/// A role with only the table privileges it needs (no superuser, nothing granted on the
/// catalog) completes inside its transaction: `pg_settings` (read by the completion for the
/// transaction's `lock_timeout` in ms) is readable by every role. Its shorter `lock_timeout`
/// still bounds the wait. Pinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_role_completes_and_keeps_its_lock_timeout() {
    let admin = on_shared(Duration::from_secs(60), Duration::from_secs(5)).await;
    let role = unique("b18_role");
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON {t}, {o} TO {role}; \
         GRANT USAGE ON SEQUENCE {o}_id_seq TO {role}",
        t = admin.table(),
        o = admin.orders
    ))
    .execute(&admin.pool)
    .await
    .expect("role");
    let url = common::shared_server()
        .url()
        .replacen("postgres@", &format!("{role}@"), 1);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("connect as the role");
    let store = PostgresStore::builder(pool.clone())
        .table(admin.table())
        .wake_waiters(false)
        .build()
        .await
        .expect("build as the role");
    let f = Fixture {
        engine: Idempotency::builder(store)
            .prefix(idempotency_testkit::unique_prefix())
            .lease(Duration::from_secs(60))
            .renew_leases(false)
            .store_timeout(Duration::from_secs(5))
            .ignore_env()
            .build()
            .expect("engine"),
        orders: admin.orders.clone(),
        pool,
    };

    let key = IdempotencyKey::new("b18-role").unwrap();
    let guard = f.run(&key).await;
    let mut tx = f.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL lock_timeout = '150ms'")
        .execute(&mut *tx)
        .await
        .expect("set");
    f.insert(&mut tx, "role").await;
    let pending = f
        .complete_in(&mut tx, guard, "role")
        .await
        .expect("an unprivileged role completes");
    let now: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut *tx)
        .await
        .expect("show");
    assert_eq!(now, "150ms");
    tx.commit().await.expect("commit");
    pending.committed();

    // Its 150 ms bound applies to a wait on a row an operator (the admin) holds.
    let key = IdempotencyKey::new("b18-role-wait").unwrap();
    let guard = f.run(&key).await;
    let operator = operator_locks_row(&admin.pool, f.table(), &f.store_key(&key)).await;
    let mut tx = f.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL lock_timeout = '150ms'")
        .execute(&mut *tx)
        .await
        .expect("set");
    f.insert(&mut tx, "role-wait").await;
    let started = Instant::now();
    let result = f.complete_in(&mut tx, guard, "role-wait").await;
    assert!(
        matches!(
            result,
            Err(IdempotencyError::StoreUnavailable(
                StoreError::Timeout { .. }
            ))
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let _ = tx.commit().await;
    operator.rollback().await.expect("operator");
    assert_eq!(f.count().await, 1, "the role's first order only");
    sqlx::raw_sql(&format!(
        "REVOKE ALL ON {t}, {o} FROM {role}; REVOKE ALL ON SEQUENCE {o}_id_seq FROM {role}",
        t = admin.table(),
        o = admin.orders
    ))
    .execute(&admin.pool)
    .await
    .expect("revoke");
}

/// The application's own `statement_timeout` (shorter than the store's budget) cancels the
/// completion waiting on a row an operator holds: the error is a failed store operation, the
/// transaction is aborted by it (an ignored error + `COMMIT` rolls back), and a retry orders
/// once. Pinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_of_the_transaction_ends_the_wait_and_aborts() {
    let f = on_shared(Duration::from_secs(60), Duration::from_secs(5)).await;
    let key = IdempotencyKey::new("b18-statement-timeout").unwrap();
    let guard = f.run(&key).await;
    let operator = operator_locks_row(&f.pool, f.table(), &f.store_key(&key)).await;
    let mut tx = f.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL statement_timeout = '150ms'")
        .execute(&mut *tx)
        .await
        .expect("set");
    f.insert(&mut tx, "first").await;
    let started = Instant::now();
    let result = f.complete_in(&mut tx, guard, "first").await;
    assert!(
        matches!(result, Err(IdempotencyError::StoreUnavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let _ = tx.commit().await;
    operator.rollback().await.expect("operator");
    assert_eq!(f.count().await, 0, "the cancelled attempt's order");
    f.retry_orders(&key).await;
    assert_eq!(f.count().await, 1);
}

/// The caller's backend is terminated (`pg_terminate_backend`, an operator or a failover)
/// while `complete_in` waits for the row: a typed `StoreUnavailable`, no order, the claim
/// released so the retry runs and orders once. Pinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_terminated_mid_completion_orders_once() {
    let f = on_shared(Duration::from_secs(60), Duration::from_secs(5)).await;
    let key = IdempotencyKey::new("b18-terminated").unwrap();
    let guard = f.run(&key).await;
    let operator = operator_locks_row(&f.pool, f.table(), &f.store_key(&key)).await;
    let mut tx = f.pool.begin().await.expect("begin");
    let pid = backend_pid(&mut tx).await;
    f.insert(&mut tx, "first").await;
    let store = f.engine.store().clone();
    let completion = tokio::spawn(async move {
        let result = store.complete_in(&mut tx, guard, receipt("first")).await;
        let committed = tx.commit().await;
        (result.map(|_| ()), committed)
    });
    until_waiting(&f, pid).await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&f.pool)
        .await
        .expect("terminate");
    assert!(killed);
    let (result, committed) = completion.await.expect("task");
    assert!(
        matches!(
            result,
            Err(IdempotencyError::StoreUnavailable(
                StoreError::Unavailable { .. }
            ))
        ),
        "{result:?}"
    );
    assert!(
        committed.is_err(),
        "the terminated transaction cannot commit"
    );
    operator.rollback().await.expect("operator");
    assert_eq!(f.count().await, 0);
    f.retry_orders(&key).await;
    assert_eq!(f.count().await, 1);
}

/// A `READ ONLY` transaction (or `default_transaction_read_only`), and a transaction that
/// already failed before `complete_in`: a typed `StoreUnavailable` at once, the claim released
/// (the retry runs without waiting for the lease), one order in the end. Pinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_already_failed_transactions_are_refused_and_release_the_claim() {
    let f = on_shared(Duration::from_secs(60), Duration::from_secs(5)).await;
    for (i, setup) in [
        "SET TRANSACTION READ ONLY",
        "SELECT 1/0",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
    ]
    .into_iter()
    .enumerate()
    {
        let key = IdempotencyKey::new(format!("b18-refused-{i}")).unwrap();
        let guard = f.run(&key).await;
        let mut tx = f.pool.begin().await.expect("begin");
        let _ = sqlx::raw_sql(setup).execute(&mut *tx).await;
        let result = f.complete_in(&mut tx, guard, "refused").await;
        assert!(
            matches!(
                result,
                Err(IdempotencyError::StoreUnavailable(
                    StoreError::Backend { .. }
                ))
            ),
            "{setup}: {result:?}"
        );
        let _ = tx.commit().await;
        // Released in the background: the retry runs well before the 60 s lease.
        let retry = f
            .runs_within(&key, Duration::from_secs(5))
            .await
            .expect("the claim was released");
        f.order_and_complete(retry, "retry", "the retry completes")
            .await;
    }
    assert_eq!(f.count().await, 3);
}

/// 24 concurrent duplicates of one key, each in a `SERIALIZABLE` transaction that reads the
/// orders table before writing its order (SSI predicate locks), every handler ignoring every
/// error (of `begin` aside) and committing; an operator deleting the record now and then.
/// Rounds until one attempt completes: exactly one order committed, matching the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_duplicates_ignoring_errors_order_once() {
    let f =
        std::sync::Arc::new(on_shared(Duration::from_millis(400), Duration::from_secs(2)).await);
    let key = IdempotencyKey::new("b18-serializable").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut attempts = Vec::new();
        for i in 0..24 {
            let f = f.clone();
            let key = key.clone();
            attempts.push(tokio::spawn(async move {
                let Ok(Begin::Run(guard)) = f
                    .engine
                    .begin(&Scope::global(), &key, Fingerprint::of("order"))
                    .await
                else {
                    return;
                };
                let Ok(mut tx) = f
                    .pool
                    .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
                    .await
                else {
                    return;
                };
                let _ = sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {}", f.orders))
                    .fetch_one(&mut *tx)
                    .await;
                let _ = sqlx::query(&format!("INSERT INTO {} (who) VALUES ($1)", f.orders))
                    .bind(format!("attempt-{i}"))
                    .execute(&mut *tx)
                    .await;
                if i % 7 == 3 {
                    // An operator deletes the key's claim meanwhile (never a completed
                    // record: that would legitimately let the key run again).
                    let _ = sqlx::query(&format!(
                        "DELETE FROM {} WHERE store_key = $1 AND state = 'in_progress'",
                        f.table()
                    ))
                    .bind(f.store_key(&key))
                    .execute(&f.pool)
                    .await;
                }
                let completed = f
                    .engine
                    .store()
                    .complete_in(&mut tx, guard, receipt(&format!("attempt-{i}")))
                    .await;
                let committed = tx.commit().await;
                if let (Ok(pending), Ok(())) = (completed, committed) {
                    pending.committed();
                }
            }));
        }
        for attempt in attempts {
            attempt.await.expect("attempt");
        }
        match f
            .engine
            .begin(&Scope::global(), &key, Fingerprint::of("order"))
            .await
        {
            Ok(Begin::Replay(outcome)) => {
                let who: Vec<String> = sqlx::query_scalar(&format!("SELECT who FROM {}", f.orders))
                    .fetch_all(&f.pool)
                    .await
                    .expect("orders");
                assert_eq!(who.len(), 1, "one order for the key: {who:?}");
                assert_eq!(who[0].as_bytes(), &outcome.body[..]);
                return;
            }
            Ok(Begin::Run(guard)) => {
                // Nothing completed yet: every committed order would be without a record.
                assert_eq!(f.count().await, 0, "an order committed without its record");
                drop(guard.release().await);
            }
            Err(_) => {
                assert!(
                    f.count().await <= 1,
                    "more than one order committed for the key"
                );
            }
        }
        assert!(Instant::now() < deadline, "no attempt completed in 30 s");
    }
}

/// An engine `store_timeout` of more than ~24.8 days (accepted by the engine's builder, with
/// a lease longer still): the completion's `lock_timeout` bound (`budget` minus 100 ms, in ms)
/// exceeds Postgres's range for `lock_timeout` (at most 2147483647 ms), so `set_config` fails
/// and every `complete_in` fails (`StoreUnavailable(Backend)`, "invalid value for parameter
/// lock_timeout"): nothing can complete inside a transaction. The bound should be clamped to
/// 2147483647. Low severity (an extreme configuration).
///
/// Found by breaker18: fails on aee4bdd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_timeout_past_postgres_lock_timeout_range_still_completes() {
    let days = |n: u64| Duration::from_secs(n * 86_400);
    let pool = common::pg_pool(4).await;
    let f = fixture(pool, days(60), days(30)).await;
    let key = IdempotencyKey::new("b18-long-budget").unwrap();
    let guard = f.run(&key).await;
    f.order_and_complete(guard, "first", "a long store timeout still completes")
        .await;
    assert_eq!(f.count().await, 1);
}
