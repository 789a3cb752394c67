//! breaker6: the store's timer anchor (one background task per store) — no task left behind by
//! stores created and dropped in a loop, a store moved to another runtime or outliving its
//! creating runtime, and a store under a paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use idempotency_core::{IdempotencyStore, StoreError, StoreOperation};
use idempotency_redis::RedisStore;
use idempotency_testkit::fixtures::RedisServer;

mod common;

fn url() -> &'static str {
    common::shared_server().url()
}

async fn until_tasks(at_most: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..2000 {
        if metrics.num_alive_tasks() <= at_most {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    metrics.num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_created_and_dropped_in_a_loop_leave_no_task() {
    let k = common::unique_key("b6", "loop");
    // One store first, so that whatever the client keeps per process is there already.
    drop(RedisStore::connect(url()).await.unwrap());
    let before = until_tasks(0).await;
    for _ in 0..100 {
        let store = RedisStore::connect(url()).await.unwrap();
        let clone = store.clone();
        // The anchor (and the client's tasks) run while the store lives.
        assert!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                > before
        );
        assert!(clone.get(&k).await.unwrap().is_none());
        drop(store);
        drop(clone);
    }
    let after = until_tasks(before).await;
    eprintln!("alive tasks: {before} before, {after} after 100 stores");
    assert!(
        after <= before,
        "{after} tasks alive after 100 stores (before: {before})"
    );
}

/// A store built on one runtime, that runtime shut down, then used from another: every
/// operation answers (an error at worst) within its timeout; nothing panics or hangs, and
/// dropping the store (its anchor's task is gone with the first runtime) is fine.
#[test]
fn a_store_outliving_its_runtime_answers_within_its_timeout() {
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let budget = Duration::from_millis(300);
    let store = first.block_on(async {
        RedisStore::builder()
            .operation_timeout(budget)
            .connect(url())
            .await
            .unwrap()
    });
    let k = common::unique_key("b6", "moved");
    // Still alive: used from another runtime.
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = second.block_on(async { tokio::time::timeout(budget * 4, store.get(&k)).await });
    assert!(matches!(answer, Ok(Ok(None))), "{answer:?}");
    first.shutdown_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let answer = second.block_on(async { tokio::time::timeout(budget * 4, store.get(&k)).await });
    let took = started.elapsed();
    eprintln!("after the first runtime shut down: {answer:?} in {took:?}");
    assert!(
        answer.is_ok(),
        "bounded by the store's own timeout, not hung: {answer:?}"
    );
    drop(store);
}

/// A frozen server (SIGSTOP) under timeouts long enough for the anchor to run (period = half
/// the timeout), on both runtime flavours: every operation times out on time — the anchor's
/// timer being due first never delays an operation's own timer.
#[test]
fn operation_timeouts_fire_on_time_with_the_anchor_running() {
    let mut server = RedisServer::start_local().expect("local redis-server");
    for multi in [false, true] {
        let runtime = if multi {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        for budget in [Duration::from_millis(40), Duration::from_millis(700)] {
            let store = runtime.block_on(async {
                RedisStore::builder()
                    .operation_timeout(budget)
                    .connect(server.url())
                    .await
                    .unwrap()
            });
            let k = common::unique_key("b6", "frozen");
            runtime.block_on(async { store.get(&k).await.unwrap() });
            server.pause().expect("pause");
            let took = runtime.block_on(async {
                let mut took = Vec::new();
                for _ in 0..3 {
                    let started = tokio::time::Instant::now();
                    let answer = store.get(&k).await;
                    took.push(started.elapsed());
                    assert!(
                        matches!(answer, Err(StoreError::Timeout { operation: StoreOperation::Get, after }) if after == budget),
                        "{answer:?}"
                    );
                    // Idle for a while between operations: the anchor fires meanwhile.
                    tokio::time::sleep(budget * 3 / 4).await;
                }
                took
            });
            server.resume().expect("resume");
            eprintln!("multi {multi} budget {budget:?}: {took:?}");
            for t in took {
                assert!(
                    t >= budget && t < budget + Duration::from_millis(150),
                    "budget {budget:?}, timed out after {t:?}"
                );
            }
            drop(store);
        }
    }
}

/// `Retry-After` on Redis (`PTTL`): the fixed value for a young claim, the remaining lease for
/// a claim created long ago and not refreshed since, the fixed value again for an old claim
/// whose lease was just refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_for_young_stale_and_refreshed_claims() {
    use idempotency_core::{
        Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, InProgress, LeaseToken,
        Scope,
    };
    let store = RedisStore::connect(url()).await.unwrap();
    let lease = Duration::from_secs(30);
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .prefix(idempotency_testkit::unique_prefix())
        .lease(lease)
        .retry_after_from_lease(true)
        .in_progress_retry_after(Duration::from_secs(2))
        .build()
        .unwrap();
    let scope = Scope::global();
    let young = IdempotencyKey::new("young").unwrap();
    let Begin::Run(held) = engine
        .begin(&scope, &young, Fingerprint::of("b6"))
        .await
        .unwrap()
    else {
        panic!("claims")
    };
    let answer = engine.begin(&scope, &young, Fingerprint::of("b6")).await;
    assert!(
        matches!(answer, Err(IdempotencyError::InProgress { retry_after }) if retry_after == Duration::from_secs(2)),
        "young: {:?}",
        answer.map(|_| ())
    );
    held.release().await.unwrap();
    let old = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("b6"),
        created_at_ms: 1,
    };
    let stale = IdempotencyKey::new("stale").unwrap();
    store
        .try_claim(
            &engine.store_key(&scope, &stale),
            &old,
            Duration::from_secs(7),
        )
        .await
        .unwrap();
    match engine.begin(&scope, &stale, Fingerprint::of("b6")).await {
        Err(IdempotencyError::InProgress { retry_after }) => assert!(
            retry_after > Duration::from_secs(5) && retry_after <= Duration::from_secs(7),
            "stale: {retry_after:?}"
        ),
        other => panic!("stale: {:?}", other.map(|_| ())),
    }
    let refreshed = IdempotencyKey::new("refreshed").unwrap();
    store
        .try_claim(&engine.store_key(&scope, &refreshed), &old, lease)
        .await
        .unwrap();
    let answer = engine
        .begin(&scope, &refreshed, Fingerprint::of("b6"))
        .await;
    assert!(
        matches!(answer, Err(IdempotencyError::InProgress { retry_after }) if retry_after == Duration::from_secs(2)),
        "refreshed: {:?}",
        answer.map(|_| ())
    );
}
