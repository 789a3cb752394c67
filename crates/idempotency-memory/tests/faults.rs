//! The engine under store faults, with tokio's paused clock (the memory store reads the same
//! clock): background release of orphaned claims, completion retries, `Retry-After` from the
//! remaining lease, the fallback policy, replays while the store refuses writes, and waiting
//! for an attempt in progress.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{LEASE, engine_on, fp, key, memory};
use idempotency_core::{
    Begin, ConfigError, FailurePolicy, Fingerprint, Idempotency, IdempotencyError,
    IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoredOutcome,
};
use idempotency_memory::MemoryStore;
use idempotency_testkit::faults::{Fault, FaultyStore};
use tokio::sync::oneshot;
use tokio::time::{Instant, advance, sleep};

#[tokio::test(start_paused = true)]
async fn a_claim_whose_reply_was_lost_is_released_as_soon_as_the_store_answers() {
    let memory = memory();
    let store = FaultyStore::new(Arc::new(memory.clone()));
    let engine = Idempotency::builder(store.clone())
        .lease(Duration::from_secs(60))
        .ignore_env()
        .build()
        .unwrap();
    store.set(Fault::LoseClaimReplies);
    let err = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            IdempotencyError::StoreUnavailable(StoreError::Timeout { .. })
        ),
        "{err:?}"
    );
    // The claim landed with nobody holding its token, and the store goes down before the
    // background release can run.
    store.set(Fault::Unavailable);
    let store_key = engine.store_key(&Scope::global(), &key("k"));
    assert!(matches!(
        memory.get(&store_key).await.unwrap(),
        Some(Record::InProgress(_))
    ));
    sleep(Duration::from_secs(5)).await;
    assert!(
        memory.get(&store_key).await.unwrap().is_some(),
        "still held while the store is down"
    );
    store.set(Fault::None);
    // Within one backoff step (at most 1 s) of the store answering again.
    sleep(Duration::from_millis(1100)).await;
    assert_eq!(memory.get(&store_key).await.unwrap(), None, "released");
    assert_eq!(engine.stats().background_releases, 1);
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key("k"), fp())
            .await
            .unwrap(),
        Begin::Run(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failed_release_is_retried_in_the_background() {
    let memory = memory();
    let store = FaultyStore::new(Arc::new(memory.clone()));
    let engine = Idempotency::builder(store.clone())
        .lease(Duration::from_secs(60))
        .ignore_env()
        .build()
        .unwrap();
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("runs")
    };
    store.set(Fault::Unavailable);
    assert!(matches!(
        guard.release().await,
        Err(IdempotencyError::StoreUnavailable(_))
    ));
    sleep(Duration::from_secs(3)).await;
    let store_key = engine.store_key(&Scope::global(), &key("k"));
    assert!(memory.get(&store_key).await.unwrap().is_some());
    store.set(Fault::None);
    sleep(Duration::from_millis(1100)).await;
    assert_eq!(memory.get(&store_key).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_pending_completion_is_released_once_the_store_answers() {
    // A transactional completion (e.g. `complete_in` on the SQL store) whose transaction never
    // committed, dropped while the store is down: its release must not give up after one
    // attempt and leave the key blocked for the whole lease (found by the chaos run on Postgres).
    let memory = memory();
    let store = FaultyStore::new(Arc::new(memory.clone()));
    let engine = Idempotency::builder(store.clone())
        .lease(Duration::from_secs(60))
        .ignore_env()
        .build()
        .unwrap();
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("runs")
    };
    let pending = guard
        .prepare(StoredOutcome::new(
            b"written in a transaction".to_vec(),
            None,
        ))
        .await
        .unwrap();
    store.set(Fault::Unavailable);
    drop(pending);
    sleep(Duration::from_secs(5)).await;
    let store_key = engine.store_key(&Scope::global(), &key("k"));
    assert!(
        memory.get(&store_key).await.unwrap().is_some(),
        "still held while the store is down"
    );
    store.set(Fault::None);
    // Within one backoff step (at most 1 s) of the store answering again, long before the
    // 60 s lease ends.
    sleep(Duration::from_millis(1100)).await;
    assert_eq!(memory.get(&store_key).await.unwrap(), None, "released");
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key("k"), fp())
            .await
            .unwrap(),
        Begin::Run(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn background_releases_give_up_when_the_lease_has_ended() {
    let store = FaultyStore::new(Arc::new(memory()));
    let engine = Idempotency::builder(store.clone())
        .lease(Duration::from_secs(2))
        .ignore_env()
        .build()
        .unwrap();
    store.set(Fault::LoseClaimReplies);
    let _ = engine.begin(&Scope::global(), &key("k"), fp()).await;
    store.set(Fault::Unavailable);
    sleep(Duration::from_secs(4)).await;
    let calls = store.calls();
    sleep(Duration::from_secs(30)).await;
    assert_eq!(
        store.calls(),
        calls,
        "no more attempts once the lease has passed"
    );
}

#[tokio::test(start_paused = true)]
async fn completion_rides_out_a_short_outage_while_the_lease_is_renewed() {
    let store = FaultyStore::new(Arc::new(memory()));
    let engine = engine_on(store.clone());
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("runs")
    };
    store.set(Fault::FailCompletions);
    let (done_tx, done_rx) = oneshot::channel();
    let completing = tokio::spawn(async move {
        let result = guard.complete(StoredOutcome::new("stored", None)).await;
        let _ = done_tx.send(());
        result
    });
    // Two seconds of failing completions: four leases long. Renewal keeps the claim, so a
    // duplicate is still told "in progress" instead of running again.
    sleep(Duration::from_secs(2)).await;
    let duplicate = engine.begin(&Scope::global(), &key("k"), fp()).await;
    assert!(
        matches!(duplicate, Err(IdempotencyError::InProgress { .. })),
        "{duplicate:?}"
    );
    store.set(Fault::None);
    done_rx.await.unwrap();
    completing.await.unwrap().unwrap();
    assert!(engine.stats().completion_retries >= 3);
    let Begin::Replay(outcome) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("replay")
    };
    assert_eq!(&outcome.body[..], b"stored");
}

#[tokio::test(start_paused = true)]
async fn completion_gives_up_after_its_bound_and_the_claim_lapses() {
    let store = FaultyStore::new(Arc::new(memory()));
    let engine = Idempotency::builder(store.clone())
        .lease(LEASE)
        .completion_retry(Duration::from_secs(3))
        .ignore_env()
        .build()
        .unwrap();
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("runs")
    };
    store.set(Fault::FailCompletions);
    let started = Instant::now();
    let err = guard
        .complete(StoredOutcome::new("x", None))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(
            err,
            IdempotencyError::StoreUnavailable(StoreError::Unavailable { .. })
        ),
        "{err:?}"
    );
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_secs(3),
        "bounded by the configured 3 s: {waited:?}"
    );
    // Not released (the operation ran): the claim stands until its lease ends, then lapses.
    store.set(Fault::None);
    assert!(matches!(
        engine.begin(&Scope::global(), &key("k"), fp()).await,
        Err(IdempotencyError::InProgress { .. })
    ));
    sleep(LEASE * 2).await;
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key("k"), fp())
            .await
            .unwrap(),
        Begin::Run(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn completion_without_retries_fails_at_once() {
    let store = FaultyStore::new(Arc::new(memory()));
    let engine = Idempotency::builder(store.clone())
        .completion_retry(Duration::ZERO)
        .ignore_env()
        .build()
        .unwrap();
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("runs")
    };
    store.set(Fault::FailCompletions);
    let started = Instant::now();
    assert!(guard.complete(StoredOutcome::new("x", None)).await.is_err());
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(engine.stats().completion_retries, 0);
}

#[tokio::test(start_paused = true)]
async fn retry_after_comes_from_the_remaining_lease_of_an_abandoned_claim() {
    let memory = memory();
    let engine = Idempotency::builder(memory.clone())
        .lease(Duration::from_secs(60))
        .ignore_env()
        .build()
        .unwrap();
    // A claim nobody renews (its owner crashed): written straight into the store.
    let store_key = engine.store_key(&Scope::global(), &key("k"));
    let dead = InProgress {
        token: LeaseToken::generate(),
        fingerprint: fp(),
        created_at_ms: 0,
    };
    memory
        .try_claim(&store_key, &dead, Duration::from_secs(60))
        .await
        .unwrap();
    let answer = |r: Result<Begin<MemoryStore>, IdempotencyError>| match r {
        Err(IdempotencyError::InProgress { retry_after }) => retry_after,
        other => panic!("{other:?}"),
    };
    // Just claimed: the owner may be alive and about to finish.
    let fresh = answer(engine.begin(&Scope::global(), &key("k"), fp()).await);
    assert_eq!(fresh, Duration::from_secs(1));
    // Not refreshed for 45 s (a live owner renews every 20 s): the key frees in 15 s.
    advance(Duration::from_secs(45)).await;
    let stale = answer(engine.begin(&Scope::global(), &key("k"), fp()).await);
    assert_eq!(stale, Duration::from_secs(15));
    // Never below 1 s.
    advance(Duration::from_millis(14_700)).await;
    let last = answer(engine.begin(&Scope::global(), &key("k"), fp()).await);
    assert_eq!(last, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_the_lease_can_be_switched_off() {
    let memory = memory();
    let engine = Idempotency::builder(memory.clone())
        .lease(Duration::from_secs(60))
        .retry_after_from_lease(false)
        .in_progress_retry_after(Duration::from_secs(2))
        .ignore_env()
        .build()
        .unwrap();
    let _held = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap();
    // Renewal is on, so take the claim out of the picture: an abandoned one, 45 s old.
    let dead = InProgress {
        token: LeaseToken::generate(),
        fingerprint: fp(),
        created_at_ms: 0,
    };
    let other = engine.store_key(&Scope::global(), &key("dead"));
    memory
        .try_claim(&other, &dead, Duration::from_secs(60))
        .await
        .unwrap();
    advance(Duration::from_secs(45)).await;
    let err = engine
        .begin(&Scope::global(), &key("dead"), fp())
        .await
        .unwrap_err();
    assert!(
        matches!(err, IdempotencyError::InProgress { retry_after } if retry_after == Duration::from_secs(2)),
        "the fixed value: {err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fallback_policy_protects_duplicates_within_the_process() {
    let primary = FaultyStore::new(Arc::new(memory()));
    let engine = Idempotency::builder(primary.clone())
        .failure_policy(FailurePolicy::Fallback)
        .fallback_store(memory())
        .ignore_env()
        .build()
        .unwrap();
    primary.set(Fault::Unavailable);
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        let value = engine
            .run(&Scope::global(), &key("k"), fp(), || async {
                Ok::<_, std::io::Error>(runs.fetch_add(1, Ordering::SeqCst))
            })
            .await
            .unwrap();
        assert_eq!(value, 0, "every retry gets the first outcome");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = engine.stats();
    assert_eq!((stats.fallback_claims, stats.replays), (1, 2));
    // A different request under the key is still refused.
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key("k"), Fingerprint::of("other"))
            .await,
        Err(IdempotencyError::FingerprintMismatch)
    ));
    // A fallback claim in progress answers duplicates "in progress", and is renewed.
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k2"), fp())
        .await
        .unwrap()
    else {
        panic!("runs")
    };
    assert!(guard.is_fallback());
    sleep(Duration::from_secs(120)).await;
    assert!(matches!(
        engine.begin(&Scope::global(), &key("k2"), fp()).await,
        Err(IdempotencyError::InProgress { .. })
    ));
    guard.complete(StoredOutcome::new("x", None)).await.unwrap();
    // Documented limit: records are not copied back once the store is healthy again.
    primary.set(Fault::None);
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key("k"), fp())
            .await
            .unwrap(),
        Begin::Run(_)
    ));
}

#[test]
fn fallback_policy_needs_a_fallback_store() {
    let built = Idempotency::builder(MemoryStore::new())
        .failure_policy(FailurePolicy::Fallback)
        .ignore_env()
        .build();
    assert!(matches!(built, Err(ConfigError::MissingFallbackStore)));
}

#[tokio::test(start_paused = true)]
async fn completed_records_replay_while_the_store_refuses_writes() {
    let store = FaultyStore::new(Arc::new(memory()));
    let engine = engine_on(store.clone());
    let (scope, k) = (Scope::global(), key("done"));
    let Begin::Run(guard) = engine.begin(&scope, &k, fp()).await.unwrap() else {
        panic!("runs")
    };
    guard
        .complete(StoredOutcome::new("first", None))
        .await
        .unwrap();
    let Begin::Run(running) = engine.begin(&scope, &key("running"), fp()).await.unwrap() else {
        panic!("runs")
    };
    store.set(Fault::RefuseWrites);
    let Begin::Replay(outcome) = engine.begin(&scope, &k, fp()).await.unwrap() else {
        panic!("replayed from a read")
    };
    assert_eq!(&outcome.body[..], b"first");
    assert!(matches!(
        engine.begin(&scope, &k, Fingerprint::of("other")).await,
        Err(IdempotencyError::FingerprintMismatch)
    ));
    assert!(matches!(
        engine.begin(&scope, &key("running"), fp()).await,
        Err(IdempotencyError::InProgress { .. })
    ));
    // Nothing to answer from: the failure policy (fail closed) applies.
    let err = engine.begin(&scope, &key("new"), fp()).await.unwrap_err();
    assert!(
        matches!(
            err,
            IdempotencyError::StoreUnavailable(StoreError::WriteRefused { .. })
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    drop(running);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_an_in_progress_attempt_uses_the_tokio_clock() {
    let engine = Idempotency::builder(memory())
        .wait_for_in_progress(Duration::from_secs(5), Duration::from_millis(10))
        .ignore_env()
        .build()
        .unwrap();
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!()
    };
    let (go, gate) = oneshot::channel::<()>();
    let finisher = tokio::spawn(async move {
        gate.await.unwrap();
        guard
            .complete(StoredOutcome::new("done", None))
            .await
            .unwrap();
    });
    let waiter = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.begin(&Scope::global(), &key("k"), fp()).await })
    };
    sleep(Duration::from_secs(3)).await;
    assert!(
        !waiter.is_finished(),
        "still waiting after 3 s of virtual time"
    );
    go.send(()).unwrap();
    match waiter.await.unwrap().unwrap() {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
        Begin::Run(_) => panic!("must wait, not run"),
    }
    finisher.await.unwrap();

    // Giving up after exactly the configured wait.
    let _held = engine
        .begin(&Scope::global(), &key("held"), fp())
        .await
        .unwrap();
    let started = Instant::now();
    assert!(matches!(
        engine.begin(&Scope::global(), &key("held"), fp()).await,
        Err(IdempotencyError::InProgress { .. })
    ));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4990) && waited <= Duration::from_secs(5),
        "{waited:?}"
    );
}
