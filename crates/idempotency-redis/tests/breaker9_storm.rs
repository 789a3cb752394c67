//! breaker9 (issue 15): the Redis store's lean attempt under a `SCRIPT FLUSH` storm and a
//! server restart while 16 tasks claim, extend, complete and release — with stale tokens and
//! contended keys — on a single server and on the fixture's 3-master cluster: every answer is
//! the one the fencing rules give, one claim wins per key, and no error reaches the caller but
//! `Unavailable`/`Timeout` while the server is away.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotency_core::{
    Claim, Fenced, IdempotencyStore, LeaseToken, Record, StoreError, StoreKey, StoredOutcome,
};
use idempotency_redis::redis::aio::{ConnectionLike, ConnectionManager};
use idempotency_redis::{ClaimStrategy, RedisStore, redis};
use idempotency_testkit::fixtures::{RedisCluster, RedisServer};

mod common;
use common::{claim_record, completed};

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(60);
const WORKERS: usize = 16;
const ROUNDS: usize = 24;

/// One round of one worker on the contended key `k` (every worker claims it; one wins and
/// drives it through extend/complete or release, with stale tokens in between). Returns whether
/// this worker won the claim.
async fn round<C>(store: &RedisStore<C>, k: &StoreKey, release: bool) -> bool
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let r = claim_record();
    let stale = LeaseToken::generate();
    match store.try_claim(k, &r, LEASE).await.unwrap() {
        Claim::Claimed => {}
        _ => return false,
    }
    assert_eq!(
        store.extend(k, &stale, LEASE).await.unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        store.extend(k, &r.token, LEASE).await.unwrap(),
        Fenced::Applied
    );
    let done = completed(&r, StoredOutcome::new(k.as_str().to_owned(), None));
    let stale_done = completed(&r, StoredOutcome::new("stale", None));
    assert_eq!(
        store
            .complete(k, &stale, &stale_done, RETENTION)
            .await
            .unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(store.release(k, &stale).await.unwrap(), Fenced::LeaseLost);
    if release {
        assert_eq!(store.release(k, &r.token).await.unwrap(), Fenced::Applied);
        assert_eq!(store.release(k, &r.token).await.unwrap(), Fenced::LeaseLost);
        // Another worker may have claimed the released key since: not ours, in any case.
        let now = store.get(k).await.unwrap();
        assert!(
            !matches!(&now, Some(Record::InProgress(p)) if p.token == r.token),
            "{now:?}"
        );
    } else {
        assert_eq!(
            store.complete(k, &r.token, &done, RETENTION).await.unwrap(),
            Fenced::Applied
        );
        assert_eq!(
            store.extend(k, &r.token, LEASE).await.unwrap(),
            Fenced::LeaseLost
        );
        assert_eq!(store.get(k).await.unwrap(), Some(Record::Completed(done)));
    }
    true
}

/// A task flushing the script cache of every node (`conns`, one per master) in a loop until
/// the returned flag is set; it answers how many rounds it ran.
fn flusher(mut conns: Vec<ConnectionManager>) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut flushes = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for conn in &mut conns {
                    redis::cmd("SCRIPT")
                        .arg("FLUSH")
                        .query_async::<()>(conn)
                        .await
                        .unwrap();
                }
                flushes += 1;
                tokio::task::yield_now().await;
            }
            flushes
        })
    };
    (stop, task)
}

/// 16 workers on 24 contended keys (every worker claims each), spread over `stores` (two
/// claim strategies), while a task flushes the script cache of every node in a loop.
async fn storm<C>(stores: Vec<RedisStore<C>>, flush: Vec<ConnectionManager>, tag: &str)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let (stop, flusher) = flusher(flush);
    let keys: Vec<StoreKey> = (0..ROUNDS)
        .map(|i| common::unique_key("b9s", &format!("{tag}-{i}")))
        .collect();
    let wins = Arc::new(Mutex::new(HashMap::<usize, usize>::new()));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let store = stores[w % stores.len()].clone();
        let keys = keys.clone();
        let wins = Arc::clone(&wins);
        workers.push(tokio::spawn(async move {
            for (i, k) in keys.iter().enumerate() {
                if round(&store, k, i % 3 == 0).await {
                    *wins.lock().unwrap().entry(i).or_default() += 1;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let flushes = flusher.await.unwrap();
    assert!(flushes > 5, "the storm ran ({flushes} flushes)");
    let wins = wins.lock().unwrap();
    for i in 0..ROUNDS {
        // A released key may be claimed again by a later worker: at least one winner, and a
        // completed key exactly one.
        let n = wins.get(&i).copied().unwrap_or(0);
        if i % 3 == 0 {
            assert!(n >= 1, "key {i}: {n} winners");
        } else {
            assert_eq!(n, 1, "key {i}: one claim wins a completed key");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_storm_under_16_tasks_keeps_every_fenced_answer() {
    let server = RedisServer::start_local().expect("local redis-server");
    let mut stores = Vec::new();
    for strategy in [ClaimStrategy::Script, ClaimStrategy::SetNxGet] {
        stores.push(
            RedisStore::builder()
                .operation_timeout(Duration::from_secs(2))
                .claim_strategy(strategy)
                .connect(server.url())
                .await
                .unwrap(),
        );
    }
    let flush = vec![stores[0].connection().clone()];
    // (`stores[0]` is a `ConnectionManager` store: its connection flushes the one server.)
    storm(stores, flush, "single").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_storm_on_every_cluster_master_keeps_every_fenced_answer() {
    let cluster = RedisCluster::start(3).expect("a local 3-master redis cluster");
    let mut stores = Vec::new();
    for strategy in [ClaimStrategy::Script, ClaimStrategy::SetNxGet] {
        stores.push(
            RedisStore::builder()
                .operation_timeout(Duration::from_secs(2))
                .claim_strategy(strategy)
                .connect_cluster(cluster.urls())
                .await
                .unwrap(),
        );
    }
    let mut flush = Vec::new();
    for url in cluster.urls() {
        flush.push(
            redis::Client::open(url.as_str())
                .unwrap()
                .get_connection_manager()
                .await
                .unwrap(),
        );
    }
    storm(stores, flush, "cluster").await;
}

/// The server restarted (empty, script cache gone) while 16 tasks run: while it is away every
/// error is `Unavailable` or `Timeout` (never a leaked `NOSCRIPT` as `Backend`), every primitive
/// ends within its operation timeout, a completion by a claim from before the restart never
/// applies once the key was claimed again, and the store works afterwards without a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_16_tasks_leaks_no_other_error_and_keeps_fencing() {
    const BUDGET: Duration = Duration::from_millis(500);
    let mut server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::builder()
        .operation_timeout(BUDGET)
        .claim_strategy(ClaimStrategy::Script)
        .connect(server.url())
        .await
        .unwrap();

    // A claim from before the restart.
    let old = claim_record();
    let k_old = common::unique_key("b9s", "old");
    assert_eq!(
        store.try_claim(&k_old, &old, LEASE).await.unwrap(),
        Claim::Claimed
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let mut answered = 0usize;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let k = common::unique_key("b9s", &format!("restart-{w}-{i}"));
                let r = claim_record();
                let done = completed(&r, StoredOutcome::new("x", None));
                let started = Instant::now();
                let results = [
                    store.try_claim(&k, &r, LEASE).await.map(|_| ()),
                    store.extend(&k, &r.token, LEASE).await.map(|_| ()),
                    store
                        .complete(&k, &r.token, &done, RETENTION)
                        .await
                        .map(|_| ()),
                    store.release(&k, &LeaseToken::generate()).await.map(|_| ()),
                ];
                // Four primitives, each bounded by the budget.
                assert!(
                    started.elapsed() < 4 * BUDGET + Duration::from_millis(500),
                    "{:?}",
                    started.elapsed()
                );
                for result in results {
                    match result {
                        Ok(()) => answered += 1,
                        Err(StoreError::Unavailable { .. } | StoreError::Timeout { .. }) => {}
                        Err(other) => panic!("leaked to the caller: {other:?}"),
                    }
                }
                tokio::task::yield_now().await;
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _server = tokio::task::spawn_blocking(move || {
        server.restart().unwrap();
        server
    })
    .await
    .unwrap();
    // Wait for a claim to be answered again (the store reconnects on its own).
    let mut back = false;
    for _ in 0..50 {
        let k = common::unique_key("b9s", "back");
        if store.try_claim(&k, &claim_record(), LEASE).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the store answers after the restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for w in workers {
        answered += w.await.unwrap();
    }
    assert!(answered > 0);

    // The key is claimed again after the restart; the old claim's completion must not apply.
    let new = claim_record();
    assert_eq!(
        store.try_claim(&k_old, &new, LEASE).await.unwrap(),
        Claim::Claimed
    );
    let stale_done = completed(&old, StoredOutcome::new("stale", None));
    assert_eq!(
        store
            .complete(&k_old, &old.token, &stale_done, RETENTION)
            .await
            .unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        store.extend(&k_old, &old.token, LEASE).await.unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        store.release(&k_old, &old.token).await.unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        store.get(&k_old).await.unwrap(),
        Some(Record::InProgress(new))
    );
}

/// One master of the 3-master cluster restarted (its data and script cache gone, its slots kept
/// through `nodes.conf`): once the cluster store reaches it again, every primitive works on
/// its keys through `NOSCRIPT`, claims made before the restart on its keys are fenced out, and
/// claims on the other masters' keys complete as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_master_is_reloaded_and_keeps_fencing() {
    let mut cluster = RedisCluster::start(3).expect("a local 3-master redis cluster");
    let store = RedisStore::builder()
        .operation_timeout(Duration::from_secs(1))
        .claim_strategy(ClaimStrategy::Script)
        .connect_cluster(cluster.urls())
        .await
        .unwrap();
    let claims: Vec<_> = (0..30)
        .map(|i| (common::unique_key("b9c", &format!("{i}")), claim_record()))
        .collect();
    for (k, r) in &claims {
        assert_eq!(store.try_claim(k, r, LEASE).await.unwrap(), Claim::Claimed);
    }
    // Kept (alive) until the end of the test.
    let _cluster = tokio::task::spawn_blocking(move || {
        cluster.nodes()[0].restart().unwrap();
        cluster
    })
    .await
    .unwrap();

    // Until every key answers again (the cluster client reconnects on its own).
    let mut states = Vec::new();
    for _ in 0..100 {
        states.clear();
        for (k, _) in &claims {
            match store.get(k).await {
                Ok(state) => states.push(state),
                Err(StoreError::Unavailable { .. } | StoreError::Timeout { .. }) => break,
                Err(other) => panic!("leaked to the caller: {other:?}"),
            }
        }
        if states.len() == claims.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        states.len(),
        claims.len(),
        "every key answers after the restart"
    );
    let lost = states.iter().filter(|s| s.is_none()).count();
    assert!(
        lost > 0 && lost < claims.len(),
        "{lost} of {} keys lost",
        claims.len()
    );

    for ((k, r), state) in claims.iter().zip(&states) {
        let done = completed(r, StoredOutcome::new("x", None));
        match state {
            Some(Record::InProgress(held)) => {
                assert_eq!(held, r);
                assert_eq!(
                    store.extend(k, &r.token, LEASE).await.unwrap(),
                    Fenced::Applied
                );
                assert_eq!(
                    store.complete(k, &r.token, &done, RETENTION).await.unwrap(),
                    Fenced::Applied
                );
            }
            None => {
                // Lost with the restart: the old claim is fenced out, a new claim wins.
                assert_eq!(
                    store.extend(k, &r.token, LEASE).await.unwrap(),
                    Fenced::LeaseLost
                );
                let new = claim_record();
                assert_eq!(
                    store.try_claim(k, &new, LEASE).await.unwrap(),
                    Claim::Claimed
                );
                assert_eq!(
                    store.complete(k, &r.token, &done, RETENTION).await.unwrap(),
                    Fenced::LeaseLost
                );
                assert_eq!(store.release(k, &r.token).await.unwrap(), Fenced::LeaseLost);
                assert_eq!(store.release(k, &new.token).await.unwrap(), Fenced::Applied);
            }
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
}
