//! Waiting duplicates on Postgres are woken by `LISTEN`/`NOTIFY`, not polling (issue 12 item 4):
//! by a completion, a release, a transactional completion only once it commits, and after a
//! missed notification by the listener's reconnection; a waiting duplicate sends no polling
//! statements (counted by the server).
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Completed, Fingerprint, IdempotencyKey, IdempotencyStore, Record, Scope, StoredOutcome,
    Waited, unix_millis_now,
};
use idempotency_sql::sqlx::postgres::{PgConnection, PgListener, PgPoolOptions};
use idempotency_sql::sqlx::{self, Connection as _};
use idempotency_sql::{PostgresStore, WAKE_LISTENER_APPLICATION_NAME};
use idempotency_testkit::fixtures::PostgresServer;

use common::wake::{
    MAX_WAIT, POLL, engine_of, first_attempt, key, shared_engine, spawn_duplicate, until_flagged,
    until_waiting,
};

async fn admin(server: &PostgresServer) -> PgConnection {
    PgConnection::connect(server.url()).await.unwrap()
}

/// A fresh database on `server` and its URL.
async fn fresh_database(admin: &mut PgConnection, server: &PostgresServer, name: &str) -> String {
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut *admin)
        .await
        .unwrap();
    let base = server
        .url()
        .strip_suffix("/postgres")
        .expect("a local server's URL ends with /postgres");
    format!("{base}/{name}")
}

async fn backends_of(admin: &mut PgConnection, db: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
        .bind(db)
        .fetch_one(&mut *admin)
        .await
        .unwrap()
}

/// Gate: no backend serves `db` any more. A backend reports its pending statistics when it
/// exits, so `pg_stat_database` is then exact for `db` (idle backends report them only up to
/// 10 s late).
async fn until_no_backends(admin: &mut PgConnection, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while backends_of(admin, db).await > 0 {
        assert!(Instant::now() < deadline, "backends of {db} stay connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn terminate_backends(admin: &mut PgConnection, db: &str) {
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(db)
        .execute(&mut *admin)
        .await
        .unwrap();
    until_no_backends(admin, db).await;
}

/// `(xact_commit, sessions)` of `db`.
async fn committed_transactions(admin: &mut PgConnection, db: &str) -> (i64, i64) {
    sqlx::query_as("SELECT xact_commit, sessions FROM pg_stat_database WHERE datname = $1")
        .bind(db)
        .fetch_one(&mut *admin)
        .await
        .unwrap()
}

/// The transactions (each statement of the store is one) that `db` commits from the moment a
/// duplicate starts waiting on a key whose first attempt then works for `work` and completes,
/// to the duplicate's answer (a replay).
async fn statements_of_a_waiting_duplicate(
    server: &PostgresServer,
    db: &str,
    wake: bool,
    work: Duration,
) -> i64 {
    let mut admin = admin(server).await;
    let url = fresh_database(&mut admin, server, db).await;
    // One pooled connection, so the count is the same at every run: each statement runs on
    // it (prepared on first use after the reconnection below).
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let store = PostgresStore::builder(pool)
        .wake_waiters(wake)
        .operation_timeout(Duration::from_secs(10))
        .migrate()
        .await
        .unwrap();
    let engine = engine_of(store, MAX_WAIT);
    let (scope, k) = (Scope::global(), key("count"));
    let guard = first_attempt(&engine, &scope, &k).await;
    // Every backend of `db` exits (reporting its statistics); the pool reconnects on demand.
    terminate_backends(&mut admin, db).await;
    let before = committed_transactions(&mut admin, db).await;
    let duplicate = spawn_duplicate(&engine, &scope, &k);
    if wake {
        until_waiting(engine.store()).await;
    }
    // The first attempt keeps working: `work / POLL` polls' worth.
    tokio::time::sleep(work).await;
    guard
        .complete(StoredOutcome::new("done", None))
        .await
        .unwrap();
    match duplicate.await.unwrap().0.unwrap() {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
        Begin::Run(_) => panic!("must wait, not run"),
    }
    engine.store().pool().close().await;
    drop(engine);
    until_no_backends(&mut admin, db).await;
    let after = committed_transactions(&mut admin, db).await;
    eprintln!(
        "{db}: xact_commit +{}, sessions +{}",
        after.0 - before.0,
        after.1 - before.1
    );
    after.0 - before.0
}

/// Counted by the server (`pg_stat_database.xact_commit` of a database of the test's own, read
/// once every backend has exited): the same scenario, polled, shows the polls; woken, it costs
/// the same few statements whatever the first attempt's duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_duplicate_sends_no_polling_statements() {
    let server = PostgresServer::start_local().expect("local postgres (see the testkit docs)");
    let work = POLL * 200;
    let polled = statements_of_a_waiting_duplicate(&server, "polled", false, work).await;
    let short = statements_of_a_waiting_duplicate(&server, "woken_short", true, POLL * 4).await;
    let long = statements_of_a_waiting_duplicate(&server, "woken_long", true, work).await;
    eprintln!(
        "transactions committed while a duplicate waits {work:?} and gets its replay: \
         polled {polled}, woken {long} (woken after {:?}: {short})",
        POLL * 4
    );
    // Woken, the statements are the duplicate's claim, the listener's `LISTEN`, the flag
    // after it (marks the row as waited on), the first attempt's completion (with its
    // `pg_notify`), the duplicate's re-read (a claim) and the listener's `UNLISTEN *` when
    // the store is dropped (as the server's log shows with `log_statement = all`); the count
    // adds sqlx's prepares on the reopened connection and the two sessions' start-up, the
    // same at every run.
    assert_eq!(short, long, "the cost does not grow with the time waited");
    // Polling every 5 ms for 1 s: about 100 claims on an idle machine, fewer under load.
    assert!(
        polled >= long + 30,
        "the count shows polling when it happens: {polled}"
    );
    assert!(long <= 15, "{long}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_wakes_the_waiter() {
    let engine = shared_engine().await;
    let (scope, k) = (Scope::global(), key("wake-complete"));
    let guard = first_attempt(&engine, &scope, &k).await;
    let duplicate = spawn_duplicate(&engine, &scope, &k);
    until_flagged(engine.store(), &engine.store_key(&scope, &k)).await;
    let completing = Instant::now();
    guard
        .complete(StoredOutcome::new("done", None))
        .await
        .unwrap();
    let (answer, answered) = duplicate.await.unwrap();
    match answer.unwrap() {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
        Begin::Run(_) => panic!("must wait, not run"),
    }
    assert!(
        answered.duration_since(completing) < MAX_WAIT / 4,
        "woken, not timed out"
    );
    // The last waiter unregistered.
    assert_eq!(engine.store().waited_keys(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wakes_the_waiter_which_runs() {
    let engine = shared_engine().await;
    let (scope, k) = (Scope::global(), key("wake-release"));
    let guard = first_attempt(&engine, &scope, &k).await;
    let duplicate = spawn_duplicate(&engine, &scope, &k);
    until_flagged(engine.store(), &engine.store_key(&scope, &k)).await;
    let releasing = Instant::now();
    guard.release().await.unwrap();
    let (answer, answered) = duplicate.await.unwrap();
    let Begin::Run(second) = answer.unwrap() else {
        panic!("a released key is claimed by the waiter")
    };
    assert!(
        answered.duration_since(releasing) < MAX_WAIT / 4,
        "woken, not timed out"
    );
    second.release().await.unwrap();
}

/// A duplicate of a claim whose owner is gone (it neither completes nor releases: nothing
/// notifies) takes the key over when the 300 ms lease lapses: the statement that flags the row
/// answers the lease's time left, and the wait ends then. It used to sleep until its
/// `max_wait` (20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_takes_a_lapsed_claim_over_when_its_lease_ends() {
    let store = common::pg_store(4).await;
    assert!(store.notifies_waiters());
    let after = idempotency_testkit::lapse::duplicate_takes_over_a_lapsed_claim(
        store.clone(),
        Duration::from_millis(300),
        MAX_WAIT,
    )
    .await;
    assert!(
        after < MAX_WAIT / 4,
        "taken over at the lapse ({after:?}), not at the {MAX_WAIT:?} deadline"
    );
    assert_eq!(store.waited_keys(), 0);
}

/// The store-level wait on a key completed inside the application's transaction: no wake-up
/// while the transaction is open, a wake-up at its commit, none at a rollback.
async fn transactional_completion(commit: bool) {
    let engine = shared_engine().await;
    let store = engine.store().clone();
    let (scope, k) = (Scope::global(), key("wake-tx"));
    let guard = first_attempt(&engine, &scope, &k).await;
    let store_key = engine.store_key(&scope, &k);
    let Some(Record::InProgress(held)) = store.get(&store_key).await.unwrap() else {
        panic!("in progress")
    };
    let wait_for = if commit {
        MAX_WAIT
    } else {
        Duration::from_secs(2)
    };
    let waiter = tokio::spawn({
        let (store, store_key) = (store.clone(), store_key.clone());
        async move {
            let waited = store
                .wait_for_change(&store_key, &held.token, wait_for)
                .await;
            (waited, Instant::now())
        }
    });
    until_flagged(&store, &store_key).await;
    let mut tx = store.pool().begin().await.unwrap();
    let pending = store
        .complete_in(&mut tx, guard, StoredOutcome::new("done", None))
        .await
        .unwrap();
    // The completion is written (uncommitted): its notification is queued, not delivered.
    let mut waiter = waiter;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiter)
            .await
            .is_err(),
        "woken before the commit"
    );
    let ended = Instant::now();
    if commit {
        tx.commit().await.unwrap();
        pending.committed();
        let (waited, at) = waiter.await.unwrap();
        assert_eq!(waited.unwrap(), Waited::Changed);
        assert!(
            at.duration_since(ended) < MAX_WAIT / 4,
            "woken at the commit"
        );
        match engine
            .begin(&scope, &k, Fingerprint::of("a"))
            .await
            .unwrap()
        {
            Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
            Begin::Run(_) => panic!("committed: replay"),
        }
    } else {
        tx.rollback().await.unwrap();
        let (waited, _) = waiter.await.unwrap();
        assert_eq!(
            waited.unwrap(),
            Waited::TimedOut,
            "a rolled back completion notifies nobody"
        );
        // Settling the rolled back completion releases the claim: that does notify.
        let waiter = tokio::spawn({
            let (store, store_key) = (store.clone(), store_key.clone());
            async move {
                store
                    .wait_for_change(&store_key, &held.token, MAX_WAIT)
                    .await
            }
        });
        until_waiting(&store).await;
        pending.release().await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), Waited::Changed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_completion_wakes_only_at_commit() {
    transactional_completion(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_completion_wakes_nobody() {
    transactional_completion(false).await;
}

/// A transactional completion that holds the row longer than the store's operation timeout:
/// the waiter's flag statement waits for the row lock, times out, and that wait polls (the
/// engine's fallback); the duplicate still gets the replay once the transaction commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_on_the_row_falls_back_to_polling() {
    let store = PostgresStore::builder(common::pg_pool(8).await)
        .operation_timeout(Duration::from_millis(200))
        .migrate()
        .await
        .unwrap();
    let engine = engine_of(store, MAX_WAIT);
    let store = engine.store().clone();
    let (scope, k) = (Scope::global(), key("wake-long-tx"));
    let guard = first_attempt(&engine, &scope, &k).await;
    let mut tx = store.pool().begin().await.unwrap();
    let pending = store
        .complete_in(&mut tx, guard, StoredOutcome::new("done", None))
        .await
        .unwrap();
    // The row is locked by `tx` from here until its commit.
    let duplicate = spawn_duplicate(&engine, &scope, &k);
    until_waiting(&store).await;
    // Gate: the waiter gave up on the wake-up (its flag statement timed out) and polls.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.waited_keys() != 0 {
        assert!(
            Instant::now() < deadline,
            "the flag statement never timed out"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!duplicate.is_finished(), "answered while the row is locked");
    tx.commit().await.unwrap();
    pending.committed();
    match duplicate.await.unwrap().0.unwrap() {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
        Begin::Run(_) => panic!("committed: replay"),
    }
}

/// A completion whose notification the listener never saw (written by a store that does not
/// notify, while the listener's connection is cut and new connections to the database are
/// refused) is caught by the re-read every waiter makes when the listener is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_missed_while_reconnecting_is_caught() {
    let server = PostgresServer::start_local().expect("local postgres (see the testkit docs)");
    let mut admin = admin(&server).await;
    let url = fresh_database(&mut admin, &server, "reconnect").await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let max_wait = Duration::from_secs(30);
    let engine = engine_of(
        PostgresStore::builder(pool.clone())
            .operation_timeout(Duration::from_secs(5))
            .migrate()
            .await
            .unwrap(),
        max_wait,
    );
    // Its pool keeps the connection `build()` opened, for use while new ones are refused.
    let silent = PostgresStore::builder(pool)
        .wake_waiters(false)
        .build()
        .await
        .unwrap();
    let (scope, k) = (Scope::global(), key("wake-reconnect"));
    let _guard = first_attempt(&engine, &scope, &k).await;
    let store_key = engine.store_key(&scope, &k);
    let Some(Record::InProgress(held)) = engine.store().get(&store_key).await.unwrap() else {
        panic!("in progress")
    };
    let started = Instant::now();
    let duplicate = spawn_duplicate(&engine, &scope, &k);
    until_waiting(engine.store()).await;
    // Gate: the duplicate's statement after `LISTEN` ran and flagged the row in progress.
    until_flagged(engine.store(), &store_key).await;
    assert_eq!(engine.store().wake_up_listener(), (true, 1));
    // No new connections to the database (superusers included), then cut the listener's.
    sqlx::query("ALTER DATABASE reconnect ALLOW_CONNECTIONS false")
        .execute(&mut admin)
        .await
        .unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(WAKE_LISTENER_APPLICATION_NAME)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(killed, vec![true]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.store().wake_up_listener().0 {
        assert!(Instant::now() < deadline, "the listener never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let completed = Completed {
        token: held.token,
        fingerprint: held.fingerprint,
        created_at_ms: held.created_at_ms,
        completed_at_ms: unix_millis_now(),
        outcome: StoredOutcome::new("done", None),
    };
    silent
        .complete(&store_key, &held.token, &completed, Duration::from_secs(60))
        .await
        .unwrap();
    sqlx::query("ALTER DATABASE reconnect ALLOW_CONNECTIONS true")
        .execute(&mut admin)
        .await
        .unwrap();
    match duplicate.await.unwrap().0.unwrap() {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
        Begin::Run(_) => panic!("must replay"),
    }
    assert!(
        started.elapsed() < max_wait / 2,
        "caught on reconnect, not by the end of the wait"
    );
    assert_eq!(
        engine.store().wake_up_listener(),
        (true, 2),
        "reconnected once"
    );
}

/// Completions and releases nobody waits for send no notification (a notifying commit takes a
/// cluster-wide lock); a completion with a waiter sends one. Notifications are delivered in
/// commit order, so had the unwaited ones notified, a listener would see them first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_rows_with_waiters_notify() {
    let engine = shared_engine().await;
    let store = engine.store();
    let mut listener = PgListener::connect(common::shared_server().url())
        .await
        .unwrap();
    listener
        .listen(store.wake_channel().unwrap())
        .await
        .unwrap();
    let scope = Scope::global();
    let (a, b, c) = (key("quiet-a"), key("quiet-b"), key("waited-c"));
    first_attempt(&engine, &scope, &a)
        .await
        .complete(StoredOutcome::new("a", None))
        .await
        .unwrap();
    first_attempt(&engine, &scope, &b)
        .await
        .release()
        .await
        .unwrap();
    let guard = first_attempt(&engine, &scope, &c).await;
    let duplicate = spawn_duplicate(&engine, &scope, &c);
    until_flagged(store, &engine.store_key(&scope, &c)).await;
    guard.complete(StoredOutcome::new("c", None)).await.unwrap();
    assert!(matches!(
        duplicate.await.unwrap().0.unwrap(),
        Begin::Replay(_)
    ));
    let payload = |k: &IdempotencyKey| {
        let store_key = engine.store_key(&scope, k);
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex')")
                .bind(store_key.as_str())
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (pa, pb, pc) = (payload(&a).await, payload(&b).await, payload(&c).await);
    // Other tests of this binary notify the same channel: read until ours arrives.
    loop {
        let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("the waited completion notifies")
            .unwrap();
        assert_ne!(
            notification.payload(),
            pa,
            "an unwaited completion notified"
        );
        assert_ne!(notification.payload(), pb, "an unwaited release notified");
        if notification.payload() == pc {
            break;
        }
    }
}
