//! Abandoned SQL claims (a claim whose time budget ran out while its statement waited for a
//! lock) are released once they land, and never at a caller's expense: through the engine,
//! storms of duplicates behind a lock let go around the store budget (never two runs, every
//! run completes, the key replays or is free afterwards; on the code before the release the
//! key stayed "in progress"); a dropped claim that found another owner's record leaves it; a
//! small pool recovers; a caller that retries a timed-out claim with the same record waits for
//! the abandoned attempt's release instead of being told it holds a key the release then
//! frees (found by a break pass of the first version).
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::abandoned::{attempt, claimed_row_locked, settled};

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Claim, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, IdempotencyStore,
    InProgress, Record, Scope, StoreKey, StoredOutcome,
};
use idempotency_sql::sqlx::sqlite::{SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use idempotency_sql::sqlx::{Connection as _, SqliteConnection};
use idempotency_sql::{PostgresStore, SqliteStore, sqlite_connect_options, sqlx};
use idempotency_testkit::unique_prefix;

const LEASE: Duration = Duration::from_secs(60);

fn engine<S: IdempotencyStore + 'static>(store: S, budget: Duration, wait: bool) -> Idempotency<S> {
    let mut b = Idempotency::builder(store)
        .prefix(unique_prefix())
        .lease(LEASE)
        .store_timeout(budget)
        .ignore_env();
    if wait {
        b = b.wait_for_in_progress(Duration::from_millis(400), Duration::from_millis(10));
    }
    b.build().unwrap()
}

/// One round: `n` duplicates of `key` begin at once while `hold` keeps a lock (taken by
/// `lock`, released by `unlock` after `hold`); then every caller told `Run` completes, which
/// must succeed (a claim reported to its caller and then released by an orphan release would
/// fail with `LeaseLost`); at most one caller runs; afterwards the key replays or is free.
async fn storm_round<S, L, U, LF, UF>(
    engine: &Idempotency<S>,
    key: &str,
    n: usize,
    hold: Duration,
    lock: L,
    unlock: U,
) -> (usize, usize)
where
    S: IdempotencyStore + 'static,
    L: FnOnce() -> LF,
    U: FnOnce() -> UF,
    LF: std::future::Future<Output = ()>,
    UF: std::future::Future<Output = ()>,
{
    let key = IdempotencyKey::new(key).unwrap();
    lock().await;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (engine, key) = (engine.clone(), key.clone());
            tokio::spawn(async move {
                engine
                    .begin(&Scope::global(), &key, Fingerprint::of("order"))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(hold).await;
    unlock().await;
    let mut runs = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Begin::Run(g)) => runs.push(g),
            Ok(Begin::Replay(_)) => panic!("replay before any completion"),
            Err(_) => errors += 1,
        }
    }
    assert!(runs.len() <= 1, "{} callers run the same key", runs.len());
    // Give every abandoned statement time to land and every orphan release time to run.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let ran = runs.len();
    let mut completed = 0;
    for g in runs {
        let done = g.complete(StoredOutcome::new("done", None)).await;
        // Only a lost lease is the fault looked for: with a 40 ms budget on a loaded machine a
        // completion may also time out, which says nothing about orphan releases.
        assert!(
            !matches!(done, Err(IdempotencyError::LeaseLost)),
            "a caller told Run lost its claim (released by an orphan?): {done:?}"
        );
        completed += usize::from(done.is_ok());
    }
    // Afterwards: a replay if someone completed, else the key must be free (claimable; a
    // completion that failed released its claim).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match engine
            .begin(&Scope::global(), &key, Fingerprint::of("order"))
            .await
        {
            Ok(Begin::Replay(_)) if completed == 1 => break,
            Ok(Begin::Run(g)) if completed == 0 => {
                // Claimable: the key was free. Whether this release itself fits the budget
                // does not matter here.
                drop(g.release().await);
                break;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "key left in a bad state after the round (ran {ran}, completed {completed}): {:?}",
                    other.map(|b| matches!(b, Begin::Run(_)))
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (ran, errors)
}

async fn sqlite_storms(journal: SqliteJournalMode) {
    let dir = tempfile::tempdir().unwrap();
    let opts = sqlite_connect_options(dir.path().join("app.db")).journal_mode(journal);
    let pool: SqlitePool = SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts.clone())
        .await
        .unwrap();
    let budget = Duration::from_millis(40);
    let store = SqliteStore::builder(pool.clone())
        .operation_timeout(budget)
        .migrate()
        .await
        .unwrap();
    let locker = Arc::new(tokio::sync::Mutex::new(
        SqliteConnection::connect_with(&opts).await.unwrap(),
    ));
    let (mut total_runs, mut total_err) = (0, 0);
    for wait in [false, true] {
        let engine = engine(store.clone(), budget, wait);
        for round in [0u64, 3, 6, 11] {
            settled(&pool).await;
            let hold = Duration::from_millis(round * 8);
            let (l1, l2) = (Arc::clone(&locker), Arc::clone(&locker));
            let (r, e) = storm_round(
                &engine,
                &format!("k{round}"),
                24,
                hold,
                move || async move {
                    sqlx::query("BEGIN IMMEDIATE")
                        .execute(&mut *l1.lock().await)
                        .await
                        .unwrap();
                },
                move || async move {
                    sqlx::query("ROLLBACK")
                        .execute(&mut *l2.lock().await)
                        .await
                        .unwrap();
                },
            )
            .await;
            total_runs += r;
            total_err += e;
        }
    }
    println!("sqlite {journal:?}: runs {total_runs}, errors {total_err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_engine_storms() {
    sqlite_storms(SqliteJournalMode::Wal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rollback_journal_engine_storms() {
    sqlite_storms(SqliteJournalMode::Delete).await;
}

/// Postgres: the key holds a lapsed claim whose row another transaction locks; duplicates
/// wait for the row; the lock is let go at various times around the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_engine_storms() {
    let budget = Duration::from_millis(60);
    let store = PostgresStore::builder(common::pg_pool(16).await)
        .operation_timeout(budget)
        .migrate()
        .await
        .unwrap();
    let holder_pool = common::pg_pool(1).await;
    let (mut total_runs, mut total_err) = (0, 0);
    for wait in [false, true] {
        let engine = engine(store.clone(), budget, wait);
        for round in [0u64, 4, 6, 9] {
            settled(store.pool()).await;
            let name = format!("k{round}");
            // A lapsed claim under the key, so that the row exists to be locked.
            let skey = engine_key(&engine, &name);
            let first = store
                .try_claim(&skey, &attempt(), Duration::from_millis(1))
                .await
                .unwrap();
            assert!(matches!(first, Claim::Claimed));
            tokio::time::sleep(Duration::from_millis(5)).await;
            let tx = Arc::new(tokio::sync::Mutex::new(Some(
                holder_pool.begin().await.unwrap(),
            )));
            let (t1, t2) = (Arc::clone(&tx), Arc::clone(&tx));
            let table = store.quoted_table().to_owned();
            let hold = Duration::from_millis(round * 12);
            let (r, e) = storm_round(
                &engine,
                &name,
                16,
                hold,
                move || async move {
                    let mut g = t1.lock().await;
                    sqlx::query(&format!(
                        "SELECT 1 FROM {table} WHERE store_key = $1 FOR UPDATE"
                    ))
                    .bind(skey.as_str())
                    .fetch_one(&mut **g.as_mut().unwrap())
                    .await
                    .unwrap();
                },
                move || async move {
                    let t = t2.lock().await.take().unwrap();
                    t.commit().await.unwrap();
                },
            )
            .await;
            total_runs += r;
            total_err += e;
        }
    }
    println!("postgres: runs {total_runs}, errors {total_err}");
}

fn engine_key<S: IdempotencyStore + 'static>(engine: &Idempotency<S>, name: &str) -> StoreKey {
    engine.store_key(&Scope::global(), &IdempotencyKey::new(name).unwrap())
}

/// A claim waits for the row of a lapsed record, which another transaction (holding the row)
/// takes over for its owner; the claim times out and then lands as `Existing(owner)`: the
/// orphan release (fenced by the dropped claim's token) must not touch the owner's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropped_claim_that_found_another_owner_leaves_it() {
    let store = PostgresStore::builder(common::pg_pool(4).await)
        .operation_timeout(Duration::from_millis(150))
        .migrate()
        .await
        .unwrap();
    let key = StoreKey::from_raw(format!("{}-owner", unique_prefix()));
    let mut holder = claimed_row_locked(&store, &key, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let owner = attempt();
    let late = store.try_claim(&key, &attempt(), LEASE).await;
    assert!(
        matches!(late, Err(idempotency_core::StoreError::Timeout { .. })),
        "{late:?}"
    );
    sqlx::query(&format!(
        "UPDATE {} SET token = $2, expires_at = clock_timestamp() + interval '60 seconds' \
         WHERE store_key = $1",
        store.quoted_table()
    ))
    .bind(key.as_str())
    .bind(owner.token.as_bytes().as_slice())
    .execute(&mut *holder)
    .await
    .unwrap();
    holder.commit().await.unwrap();
    settled(store.pool()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    match store.get(&key).await.unwrap() {
        Some(Record::InProgress(r)) => assert_eq!(r.token, owner.token, "owner replaced"),
        other => panic!("the owner's record was touched: {other:?}"),
    }
}

/// Pool of 2, 10 abandoned claims behind a row lock held 2 s: healthy claims of other keys
/// (budget 150 ms each) are tried every 50 ms; report how many failed while the lock was held
/// and how long after it was released the first one succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_small_pool_starvation_and_recovery() {
    let store = PostgresStore::builder(common::pg_pool(2).await)
        .operation_timeout(Duration::from_millis(150))
        .migrate()
        .await
        .unwrap();
    let key = StoreKey::from_raw(format!("{}-busy", unique_prefix()));
    let first = store
        .try_claim(&key, &attempt(), Duration::from_millis(1))
        .await
        .unwrap();
    assert!(matches!(first, Claim::Claimed));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let holder_pool = common::pg_pool(1).await;
    let mut holder = holder_pool.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT 1 FROM {} WHERE store_key = $1 FOR UPDATE",
        store.quoted_table()
    ))
    .bind(key.as_str())
    .fetch_one(&mut *holder)
    .await
    .unwrap();
    let stuck = futures::future::join_all((0..10).map(|_| {
        let (store, key) = (store.clone(), key.clone());
        async move { store.try_claim(&key, &attempt(), LEASE).await }
    }))
    .await;
    let timeouts = stuck.iter().filter(|r| r.is_err()).count();
    let start = Instant::now();
    let mut failed_during = 0;
    let mut ok_during = 0;
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(2) {
        n += 1;
        let k = StoreKey::from_raw(format!("{}-other-{n}", unique_prefix()));
        match store.try_claim(&k, &attempt(), LEASE).await {
            Ok(_) => ok_during += 1,
            Err(_) => failed_during += 1,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder.commit().await.unwrap();
    let released = Instant::now();
    let recovered = loop {
        n += 1;
        let k = StoreKey::from_raw(format!("{}-other-{n}", unique_prefix()));
        if store.try_claim(&k, &attempt(), LEASE).await.is_ok() {
            break released.elapsed();
        }
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "never recovered"
        );
    };
    settled(store.pool()).await;
    let after = store.get(&key).await.unwrap();
    println!(
        "pool 2: {timeouts}/10 stuck claims timed out; other keys during the lock: {ok_during} ok, \
         {failed_during} failed; first success {recovered:?} after release; key after: {}",
        match &after {
            None => "free".to_owned(),
            Some(r) => format!("{r:?}"),
        }
    );
    assert!(after.is_none(), "key held after the orphans settled");
}

/// A caller retries a timed-out claim with the SAME record (same token), as the engine's
/// `Seen::Own` ("a retried request's first reply was lost") and the SQL claim
/// (`claimed = token = $2`) allow. The retry must not be told it holds the key and then lose it
/// to the abandoned attempt's release (fenced by the same token): it waits for that release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_claim_retried_with_the_same_record_waits_for_the_abandoned_attempts_release() {
    let dir = tempfile::tempdir().unwrap();
    let opts = sqlite_connect_options(dir.path().join("app.db"));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(4)
        .connect_with(opts.clone())
        .await
        .unwrap();
    let quick = SqliteStore::builder(pool.clone())
        .operation_timeout(Duration::from_millis(100))
        .migrate()
        .await
        .unwrap();
    let patient = SqliteStore::builder(pool.clone())
        .operation_timeout(Duration::from_secs(10))
        .migrate()
        .await
        .unwrap();
    let key = StoreKey::from_raw(format!("{}-retry", unique_prefix()));
    let record = attempt();
    let mut locker = SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();
    let first = quick.try_claim(&key, &record, LEASE).await;
    assert!(first.is_err(), "{first:?}");
    // The retry, same record, with a longer budget.
    let retry = tokio::spawn({
        let (patient, key, record) = (patient.clone(), key.clone(), record.clone());
        async move { patient.try_claim(&key, &record, LEASE).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let retry = retry.await.unwrap().unwrap();
    the_retry_holds_the_key(retry, &patient, &pool, &key, &record).await;
}

/// The same on Postgres (row lock of a lapsed record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_claim_retried_with_the_same_record_waits_for_the_abandoned_attempts_release() {
    let pool = common::pg_pool(4).await;
    let quick = PostgresStore::builder(pool.clone())
        .operation_timeout(Duration::from_millis(100))
        .migrate()
        .await
        .unwrap();
    let patient = PostgresStore::builder(pool.clone())
        .operation_timeout(Duration::from_secs(10))
        .migrate()
        .await
        .unwrap();
    let key = StoreKey::from_raw(format!("{}-retry", unique_prefix()));
    let holder = claimed_row_locked(&quick, &key, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let record = attempt();
    let first = quick.try_claim(&key, &record, LEASE).await;
    assert!(first.is_err(), "{first:?}");
    let retry = tokio::spawn({
        let (patient, key, record) = (patient.clone(), key.clone(), record.clone());
        async move { patient.try_claim(&key, &record, LEASE).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.commit().await.unwrap();
    let retry = retry.await.unwrap().unwrap();
    the_retry_holds_the_key(retry, &patient, &pool, &key, &record).await;
}

/// The release of an abandoned claim waits for its statement at most the claim's lease plus
/// the store's operation timeout: past that, with the write lock still held (here by a
/// `BEGIN IMMEDIATE` that outlasts a busy timeout longer than the test), it gives the
/// connection up, and a pool of one connection can serve again. Before, the task kept the
/// pool's only connection for as long as the lock was held. A statement that lands after the
/// task gave up is a claim by nobody, which lapses after one lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_abandoned_claims_release_gives_its_connection_up_past_lease_plus_timeout() {
    const SHORT_LEASE: Duration = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    // The busy timeout must not end the abandoned statement first.
    let opts = sqlite_connect_options(dir.path().join("app.db")).busy_timeout(LEASE);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(LEASE)
        .connect_with(opts.clone())
        .await
        .unwrap();
    let store = SqliteStore::builder(pool.clone())
        .operation_timeout(Duration::from_millis(200))
        .migrate()
        .await
        .unwrap();
    let key = StoreKey::from_raw(format!("{}-given-up", unique_prefix()));
    let mut locker = SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut locker)
        .await
        .unwrap();
    let abandoned = Instant::now();
    let first = store.try_claim(&key, &attempt(), SHORT_LEASE).await;
    assert!(first.is_err(), "{first:?}");
    // Lease + timeout = 0.5 s; 15 s is plenty. The lock is held throughout.
    let recovered = tokio::time::timeout(Duration::from_secs(15), async {
        while pool.size() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let one: i64 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        one
    })
    .await;
    println!(
        "pool recovered after {:?} (lock still held)",
        abandoned.elapsed()
    );
    assert_eq!(
        recovered.ok(),
        Some(1),
        "the abandoned claim's release kept the pool's only connection while the lock was held"
    );
    // Let the abandoned statement land: a claim by nobody, which lapses with its lease.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = store.get(&key).await.unwrap();
    println!("after the lock: {late:?}");
    let lapsed = tokio::time::timeout(Duration::from_secs(15), async {
        while store.get(&key).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(lapsed.is_ok(), "the late claim never lapsed");
    let next = store.try_claim(&key, &attempt(), LEASE).await;
    assert!(matches!(next, Ok(Claim::Claimed)), "{next:?}");
}

/// The end of the same-record retry tests: the retry was told it holds the key, and once the
/// abandoned attempt's release has run, its claim is still there.
async fn the_retry_holds_the_key<DB: sqlx::Database>(
    retry: Claim,
    patient: &impl IdempotencyStore,
    pool: &sqlx::Pool<DB>,
    key: &StoreKey,
    record: &InProgress,
) {
    let holds = match &retry {
        Claim::Claimed => true,
        Claim::Existing(Record::InProgress(r)) => r.token == record.token,
        Claim::Existing(_) => false,
    };
    assert!(holds, "the retry does not hold the key: {retry:?}");
    settled(pool).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = patient.get(key).await.unwrap();
    assert!(
        matches!(&after, Some(Record::InProgress(r)) if r.token == record.token),
        "the retry was told it holds the key ({retry:?}), but its claim is gone: {after:?}"
    );
}
