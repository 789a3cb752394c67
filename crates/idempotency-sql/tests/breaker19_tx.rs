//! breaker19: attacks on the Postgres `complete_in` as changed by 2a048f5 — two statements in
//! the caller's transaction (the `lock_timeout` bound, then the completion that fails when it
//! does not apply) and the abort sent after a client-side timeout. The guarantee under test: a
//! side effect never commits without its record (one committed order per key, even when the
//! handler ignores `complete_in`'s error and commits).
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Fingerprint, Guard, Idempotency, IdempotencyError, IdempotencyKey, Scope, StoreError,
    StoredOutcome,
};
use idempotency_sql::sqlx::postgres::{PgPool, PgPoolOptions};
use idempotency_sql::{PostgresStore, sqlx};
use idempotency_testkit::fixtures::PostgresServer;

fn receipt(text: &str) -> StoredOutcome {
    StoredOutcome::new(text.to_owned(), Some("application/json".into()))
}

fn unique(what: &str) -> String {
    format!("{what}_{}", &idempotency_testkit::unique_prefix()[1..17])
}

/// A pool on `server`.
async fn pool_on(server: &PostgresServer, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(server.url())
        .await
        .expect("connecting to the local postgres server")
}

/// Thaws the server when a test ends, whatever happened (a failed assertion must not leave
/// the server frozen for the fixture's shutdown).
struct Thaw<'a>(&'a PostgresServer);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume();
    }
}

/// An engine over a store on its own records table, with an orders table next to it.
struct Fixture {
    engine: Idempotency<PostgresStore>,
    orders: String,
    pool: PgPool,
}

impl Fixture {
    async fn new(pool: PgPool, lease: Duration, store_timeout: Duration) -> Self {
        let store = PostgresStore::builder(pool.clone())
            .table(unique("b19_records"))
            .operation_timeout(Duration::from_secs(10))
            .wake_waiters(false)
            .migrate()
            .await
            .expect("migrating");
        let orders = unique("b19_orders");
        sqlx::query(&format!(
            "CREATE TABLE {orders} (id BIGSERIAL PRIMARY KEY, who TEXT NOT NULL)"
        ))
        .execute(&pool)
        .await
        .expect("orders table");
        let engine = Idempotency::builder(store)
            .prefix(idempotency_testkit::unique_prefix())
            .lease(lease)
            .retention(Duration::from_secs(86_400))
            .renew_leases(false)
            .store_timeout(store_timeout)
            .ignore_env()
            .build()
            .expect("engine");
        Self {
            engine,
            orders,
            pool,
        }
    }

    fn table(&self) -> &str {
        self.engine.store().table()
    }

    fn store_key(&self, key: &IdempotencyKey) -> String {
        self.engine
            .store_key(&Scope::global(), key)
            .as_str()
            .to_owned()
    }

    async fn count(&self) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", self.orders))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// `begin` until it runs (a claim released in the background has landed), within 10 s;
    /// `None` when the key replays.
    async fn run_or_replay(&self, key: &IdempotencyKey) -> Option<Guard<PostgresStore>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self
                .engine
                .begin(&Scope::global(), key, Fingerprint::of("order"))
                .await
            {
                Ok(Begin::Run(guard)) => return Some(guard),
                Ok(Begin::Replay(_)) => return None,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "still refused after 10 s: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn run(&self, key: &IdempotencyKey) -> Guard<PostgresStore> {
        self.run_or_replay(key).await.expect("runs")
    }

    /// The documented flow, errors handled, for a retry of `key`: one more order, unless the
    /// key replays.
    async fn retry_orders(&self, key: &IdempotencyKey) {
        let Some(guard) = self.run_or_replay(key).await else {
            return;
        };
        let mut tx = self.pool.begin().await.expect("begin tx");
        self.insert(&mut tx, "retry").await;
        let pending = self
            .engine
            .store()
            .complete_in(&mut tx, guard, receipt("retry"))
            .await
            .expect("the retry completes");
        tx.commit().await.expect("commit");
        pending.committed();
    }

    async fn insert(&self, conn: &mut sqlx::PgConnection, who: &str) {
        sqlx::query(&format!("INSERT INTO {} (who) VALUES ($1)", self.orders))
            .bind(who)
            .execute(conn)
            .await
            .expect("insert order");
    }

    /// Whether the backend `pid` is waiting for a heavyweight lock (a row or a table).
    async fn waits_on_a_lock(&self, pid: i32) -> bool {
        sqlx::query_scalar::<_, bool>(
            "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity \
             WHERE pid = $1",
        )
        .bind(pid)
        .fetch_one(&self.pool)
        .await
        .expect("pg_stat_activity")
    }

    /// Poll until backend `pid` waits on a lock (at most 10 s).
    async fn until_waiting(&self, pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.waits_on_a_lock(pid).await {
            assert!(Instant::now() < deadline, "backend {pid} never waited");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pid")
}

fn is_timeout(error: &IdempotencyError) -> bool {
    matches!(
        error,
        IdempotencyError::StoreUnavailable(StoreError::Timeout { .. })
    )
}

/// The server stalls (frozen: a CPU-starved host, a VM pause, a network that delays replies
/// past the store timeout) while the first of `complete_in`'s two statements — the
/// `lock_timeout` bound — is on the wire. The client times out on that statement, so the
/// completion, the statement that fails when it does not apply, is never sent; the abort
/// that should replace it (`abort_after_timeout`) first waits for the bound's reply, gives up
/// after its grace (a tenth of the budget, at least 10 ms) and is never sent either. The
/// caller's transaction is left healthy: a handler that ignores the `Timeout` and commits
/// commits its order without the record, the dropped pending completion releases the claim,
/// and the retry orders again — the breaker18 failure (`Timeout` ignored, `COMMIT`, two
/// orders) reached by a stall instead of a table lock. With one statement (before 2a048f5),
/// once prepared on the connection, the completion was on the wire in one flight and ran when
/// the server thawed, record and order together. A fix: send the abort without first waiting
/// for the pending reply (or send both statements in one flight).
///
/// Found by breaker19: 2 orders on 49278f8.
#[ignore = "documented limit (crate docs, Transactional completion): the lock bound and the completion are two statements; a server stall between them, or a caller dropping complete_in during the first prepare, leaves the transaction committable — roll back on every error"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stall_during_the_lock_bound_ignored_timeout_then_commit_orders_once() {
    let server = PostgresServer::start_local().expect("local postgres (see the testkit docs)");
    let f = Fixture::new(
        pool_on(&server, 4).await,
        Duration::from_secs(30),
        Duration::from_millis(300),
    )
    .await;
    let key = IdempotencyKey::new("b19-stall").unwrap();
    let guard = f.run(&key).await;
    let mut tx = f.pool.begin().await.expect("begin tx");
    f.insert(&mut tx, "first").await;

    let thaw = Thaw(&server);
    server.pause().expect("freeze the server");
    let started = Instant::now();
    let result = f
        .engine
        .store()
        .complete_in(&mut tx, guard, receipt("first"))
        .await;
    let took = started.elapsed();
    server.resume().expect("thaw the server");
    drop(thaw);
    let error = result.expect_err("no answer from a frozen server");
    assert!(is_timeout(&error), "{error:?}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");

    // The handler ignores the error and commits.
    let committed = tx.commit().await;
    let after_ignored_commit = f.count().await;
    f.retry_orders(&key).await;
    let after_retry = f.count().await;
    assert_eq!(
        (after_ignored_commit, after_retry),
        (0, 1),
        "the attempt whose complete_in timed out must not commit its order without the record \
         (orders after its ignored commit ({committed:?}), after the retry)"
    );
}

/// The caller bounds `complete_in` with its own timeout (`tokio::time::timeout` around it,
/// a request deadline) while the completion is held at parse by an operator's table lock (a
/// migration, `CREATE INDEX`): its future is dropped after the completion's `Parse` is on the
/// wire but before the `Bind`/`Execute` that would run it (sqlx prepares a statement on its
/// first use on a connection in a round trip of its own). The operator deletes the key
/// meanwhile. When the lock goes the `Parse` succeeds and nothing else runs: the transaction is
/// healthy, its `lock_timeout` is left at the bound, and a handler that ignores its own
/// timeout and commits orders without the record; the retry orders again.
///
/// The crate says the completion aborts the transaction "even when nobody reads the answer any
/// more (a statement that ends after the caller's timeout, or after its future was
/// dropped)" — true once the whole statement is on the wire, not for a prepared-then-dropped
/// one. Lower severity than the stall above (the caller's own timeout, then a commit).
///
/// Found by breaker19: 2 orders on 49278f8.
#[ignore = "documented limit (crate docs, Transactional completion): the lock bound and the completion are two statements; a server stall between them, or a caller dropping complete_in during the first prepare, leaves the transaction committable — roll back on every error"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_dropped_while_parse_waits_on_a_table_lock_then_commit_orders_once() {
    let server = PostgresServer::start_local().expect("local postgres (see the testkit docs)");
    let f = Fixture::new(
        pool_on(&server, 4).await,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .await;
    let key = IdempotencyKey::new("b19-dropped").unwrap();
    let guard = f.run(&key).await;

    let mut operator = f.pool.begin().await.expect("operator tx");
    sqlx::raw_sql(&format!(
        "LOCK TABLE {} IN SHARE MODE; DELETE FROM {} WHERE store_key = '{}'",
        f.table(),
        f.table(),
        f.store_key(&key)
    ))
    .execute(&mut *operator)
    .await
    .expect("operator's statements");

    let mut tx = f.pool.begin().await.expect("begin tx");
    let pid = backend_pid(&mut tx).await;
    f.insert(&mut tx, "first").await;
    let completion = f
        .engine
        .store()
        .complete_in(&mut tx, guard, receipt("first"));
    // The caller's own deadline: here, "as soon as the completion waits on the lock".
    let finished = tokio::select! {
        result = completion => Some(result.is_ok()),
        () = f.until_waiting(pid) => None,
    };
    assert_eq!(
        finished, None,
        "the completion waits on the operator's lock"
    );

    operator.commit().await.expect("operator commit");
    // The handler ignores its own timeout and commits.
    let committed = tx.commit().await;
    let after_ignored_commit = f.count().await;
    f.retry_orders(&key).await;
    let after_retry = f.count().await;
    assert_eq!(
        (after_ignored_commit, after_retry),
        (0, 1),
        "the attempt whose complete_in was dropped must not commit its order without the \
         record (orders after its ignored commit ({committed:?}), after the retry)"
    );
}

/// The caller's transaction runs with settings that change how text is read and written —
/// `standard_conforming_strings = off` (backslashes in literals), `IntervalStyle =
/// iso_8601` (the `lock_timeout` text is read as an interval), `DateStyle`, `lock_timeout`
/// in minutes, `REPEATABLE READ` opened after the claim — and `complete_in` still completes,
/// restores `lock_timeout` as the application wrote it, and, when the claim is gone, aborts
/// the transaction (the isolation level parsed back from the failure). Pins behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_session_settings_complete_restore_and_abort() {
    let server = PostgresServer::start_local().expect("local postgres (see the testkit docs)");
    let f = Fixture::new(
        pool_on(&server, 4).await,
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await;
    let settings = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
         SET LOCAL standard_conforming_strings = off; SET LOCAL IntervalStyle = 'iso_8601'; \
         SET LOCAL DateStyle = 'German, DMY'; SET LOCAL lock_timeout = '1min'";

    // Applied.
    let key = IdempotencyKey::new("b19-settings-applied").unwrap();
    let guard = f.run(&key).await;
    let mut tx = f.pool.begin().await.expect("begin tx");
    sqlx::raw_sql(settings)
        .execute(&mut *tx)
        .await
        .expect("settings");
    f.insert(&mut tx, "applied").await;
    let pending = f
        .engine
        .store()
        .complete_in(&mut tx, guard, receipt("applied"))
        .await
        .expect("completes");
    let lock_timeout: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut *tx)
        .await
        .expect("SHOW");
    assert_eq!(lock_timeout, "1min");
    tx.commit().await.expect("commit");
    pending.committed();
    assert!(f.run_or_replay(&key).await.is_none(), "replays");
    assert_eq!(f.count().await, 1);

    // Not applied: the claim is deleted before the completion.
    let key = IdempotencyKey::new("b19-settings-gone").unwrap();
    let guard = f.run(&key).await;
    let mut tx = f.pool.begin().await.expect("begin tx");
    sqlx::raw_sql(settings)
        .execute(&mut *tx)
        .await
        .expect("settings");
    f.insert(&mut tx, "gone").await;
    sqlx::query(&format!("DELETE FROM {} WHERE store_key = $1", f.table()))
        .bind(f.store_key(&key))
        .execute(&f.pool)
        .await
        .expect("operator delete");
    let error = f
        .engine
        .store()
        .complete_in(&mut tx, guard, receipt("gone"))
        .await
        .expect_err("the claim is gone");
    assert!(matches!(error, IdempotencyError::LeaseLost), "{error:?}");
    let _ = tx.commit().await;
    assert_eq!(f.count().await, 1, "the ignored commit was rolled back");
}

/// A completion already on the wire, waiting for the record's row (an operator's `SELECT …
/// FOR UPDATE`), when the server freezes: the client gives up (`Timeout`) before the server's
/// lock bound ends the wait, and the abort cannot be sent. When the server thaws, the
/// operator's `COMMIT` (sent meanwhile) and the lock bound race: the completion either applies
/// late or fails. Either way the record and the order commit together or not at all — an
/// ignored error and a `COMMIT` leave one order after the retry, and a committed order means
/// the key replays. Pins behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_frozen_while_waiting_for_the_row_ends_consistently() {
    let server = PostgresServer::start_local().expect("local postgres (see the testkit docs)");
    let f = Fixture::new(
        pool_on(&server, 6).await,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let key = IdempotencyKey::new("b19-frozen-row").unwrap();
    let guard = f.run(&key).await;
    let mut operator = f.pool.begin().await.expect("operator tx");
    sqlx::query(&format!(
        "SELECT 1 FROM {} WHERE store_key = $1 FOR UPDATE",
        f.table()
    ))
    .bind(f.store_key(&key))
    .execute(&mut *operator)
    .await
    .expect("operator's row lock");

    let mut tx = f.pool.begin().await.expect("begin tx");
    let pid = backend_pid(&mut tx).await;
    f.insert(&mut tx, "first").await;
    let thaw = Thaw(&server);
    let (result, ()) = tokio::join!(
        f.engine
            .store()
            .complete_in(&mut tx, guard, receipt("first")),
        async {
            f.until_waiting(pid).await;
            server.pause().expect("freeze the server");
        }
    );
    let error = result.expect_err("no answer from a frozen server");
    assert!(is_timeout(&error), "{error:?}");
    // The operator's COMMIT is sent while the server is frozen, then the server thaws.
    let operator_commit = tokio::spawn(async move { operator.commit().await });
    server.resume().expect("thaw the server");
    drop(thaw);
    operator_commit
        .await
        .expect("operator task")
        .expect("operator commit");

    // The handler ignores the error and commits.
    let committed = tx.commit().await;
    let after_ignored_commit = f.count().await;
    let replays = f.run_or_replay(&key).await;
    let replayed = replays.is_none();
    if let Some(guard) = replays {
        drop(guard);
    }
    f.retry_orders(&key).await;
    let after_retry = f.count().await;
    assert_eq!(
        (after_ignored_commit, replayed, after_retry),
        if after_ignored_commit == 1 {
            (1, true, 1)
        } else {
            (0, false, 1)
        },
        "record and order commit together or not at all (ignored commit: {committed:?})"
    );
}
