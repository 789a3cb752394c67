//! The engine under faults, on the memory store with tokio's paused clock (the store reads the
//! same clock, so leases expire in virtual time): lease renewal, background release of orphaned
//! claims, completion retries, `Retry-After` from the remaining lease, the fallback policy and
//! replays while the store refuses writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_core::{
    Begin, Claim, Completed, ConfigError, FailurePolicy, Fenced, Fingerprint, Idempotency,
    IdempotencyError, IdempotencyKey, IdempotencyStore, InProgress, LeaseToken, Record, RunError,
    Scope, StoreError, StoreKey, StoredOutcome, async_trait,
};
use idempotency_memory::{Clock, MemoryStore};
use idempotency_testkit::faults::{Fault, FaultyStore};
use tokio::sync::oneshot;
use tokio::time::{Instant, advance, sleep};

const LEASE: Duration = Duration::from_millis(500);

/// The memory store's expiry clock on tokio's (paused) clock.
#[derive(Debug)]
struct TokioClock(Instant);

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

fn memory() -> MemoryStore {
    MemoryStore::builder()
        .clock(TokioClock(Instant::now()))
        .build()
}

fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::new(s).unwrap()
}

fn fp() -> Fingerprint {
    Fingerprint::of("request")
}

/// Counts `extend` calls on the way to a memory store.
#[derive(Debug, Clone)]
struct CountingStore {
    inner: MemoryStore,
    extends: Arc<AtomicUsize>,
}

impl CountingStore {
    fn new() -> Self {
        Self {
            inner: memory(),
            extends: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn extends(&self) -> usize {
        self.extends.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl IdempotencyStore for CountingStore {
    async fn try_claim(
        &self,
        k: &StoreKey,
        r: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.inner.try_claim(k, r, lease).await
    }
    async fn complete(
        &self,
        k: &StoreKey,
        t: &LeaseToken,
        r: &Completed,
        ret: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner.complete(k, t, r, ret).await
    }
    async fn release(&self, k: &StoreKey, t: &LeaseToken) -> Result<Fenced, StoreError> {
        self.inner.release(k, t).await
    }
    async fn extend(
        &self,
        k: &StoreKey,
        t: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.extends.fetch_add(1, Ordering::SeqCst);
        self.inner.extend(k, t, lease).await
    }
    async fn get(&self, k: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(k).await
    }
    async fn delete(&self, k: &StoreKey) -> Result<bool, StoreError> {
        self.inner.delete(k).await
    }
}

fn engine_on<S: IdempotencyStore + 'static>(store: S) -> Idempotency<S> {
    Idempotency::builder(store)
        .lease(LEASE)
        .ignore_env()
        .build()
        .unwrap()
}

/// The measurement: a 1.5 s operation on a 500 ms lease, the same request again at
/// 800 ms. Returns (executions, the first attempt's result, the duplicate's answer).
async fn slow_operation_with_a_duplicate<S: IdempotencyStore + 'static>(
    engine: Idempotency<S>,
) -> (
    usize,
    Result<u32, RunError<std::io::Error, u32>>,
    Result<u32, RunError<std::io::Error, u32>>,
) {
    let runs = Arc::new(AtomicUsize::new(0));
    let first = {
        let (engine, runs) = (engine.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            engine
                .run(&Scope::global(), &key("slow"), fp(), || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    sleep(Duration::from_millis(1500)).await;
                    Ok::<_, std::io::Error>(7u32)
                })
                .await
        })
    };
    sleep(Duration::from_millis(800)).await;
    let duplicate = engine
        .run(&Scope::global(), &key("slow"), fp(), || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(8u32)
        })
        .await;
    let first = first.await.unwrap();
    (runs.load(Ordering::SeqCst), first, duplicate)
}

fn assert_in_progress(answer: &Result<u32, RunError<std::io::Error, u32>>) {
    assert!(
        matches!(
            answer,
            Err(RunError::Idempotency(IdempotencyError::InFlight { retry_after }))
                if *retry_after == Duration::from_secs(1)
        ),
        "the duplicate is told the first attempt is in progress (alive: fixed Retry-After): {answer:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn operation_longer_than_its_lease_runs_once() {
    let engine = engine_on(memory());
    let (runs, first, duplicate) = slow_operation_with_a_duplicate(engine.clone()).await;
    assert_eq!(runs, 1);
    assert_eq!(first.unwrap(), 7, "the first attempt completes");
    assert_in_progress(&duplicate);
    let replay = engine
        .run(&Scope::global(), &key("slow"), fp(), || async {
            Ok::<_, std::io::Error>(9u32)
        })
        .await;
    assert_eq!(
        replay.unwrap(),
        7,
        "a later retry replays the first outcome"
    );
}

#[tokio::test(start_paused = true)]
async fn operation_longer_than_its_lease_runs_once_through_the_fault_store() {
    let store = FaultyStore::new(Arc::new(memory()));
    let (runs, first, duplicate) = slow_operation_with_a_duplicate(engine_on(store.clone())).await;
    assert_eq!(runs, 1);
    assert_eq!(first.unwrap(), 7, "the first attempt completes");
    assert!(
        store.calls() >= 2 + 8,
        "renewals went through the fault store"
    );
    assert_in_progress(&duplicate);
}

/// The control: without renewal the same schedule runs the operation twice (what the issue
/// measured), so the tests above prove renewal and not a lucky schedule.
#[tokio::test(start_paused = true)]
async fn without_renewal_the_lease_lapses_and_the_duplicate_runs() {
    let engine = Idempotency::builder(memory())
        .lease(LEASE)
        .renew_leases(false)
        .ignore_env()
        .build()
        .unwrap();
    let (runs, first, duplicate) = slow_operation_with_a_duplicate(engine).await;
    assert_eq!(runs, 2);
    assert_eq!(duplicate.unwrap(), 8);
    assert!(
        matches!(
            first,
            Err(RunError::NotRecorded {
                value: 7,
                error: IdempotencyError::LeaseLost
            })
        ),
        "the first attempt's late completion is fenced off: {first:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn renewal_that_finds_the_lease_lost_fails_the_completion() {
    let engine = engine_on(memory());
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("first attempt runs")
    };
    assert!(!guard.is_lease_lost());
    // An operator deletes the record while the operation runs; another attempt takes the key.
    assert!(
        engine
            .invalidate(&Scope::global(), &key("k"))
            .await
            .unwrap()
    );
    let Begin::Run(usurper) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("the key is free")
    };
    sleep(LEASE).await;
    assert!(guard.is_lease_lost(), "the next renewal noticed");
    assert_eq!(engine.stats().leases_lost, 1);
    let err = guard
        .complete(StoredOutcome::new("late", None))
        .await
        .unwrap_err();
    assert!(matches!(err, IdempotencyError::LeaseLost), "{err:?}");
    // The usurper's claim was renewed and untouched by the stale guard.
    assert!(!usurper.is_lease_lost());
    usurper
        .complete(StoredOutcome::new("second", None))
        .await
        .unwrap();
    let Begin::Replay(outcome) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("replay")
    };
    assert_eq!(&outcome.body[..], b"second");
}

#[tokio::test(start_paused = true)]
async fn renewal_stops_after_complete_release_and_drop() {
    let store = CountingStore::new();
    let engine = engine_on(store.clone());
    for (n, end) in ["complete", "release", "drop"].into_iter().enumerate() {
        let k = key(end);
        let Begin::Run(guard) = engine.begin(&Scope::global(), &k, fp()).await.unwrap() else {
            panic!("runs")
        };
        sleep(LEASE * 2).await;
        let renewed = store.extends();
        assert!(
            renewed >= 5 * (n + 1),
            "{end}: renewed about every third of the lease while alive ({renewed})"
        );
        match end {
            "complete" => guard.complete(StoredOutcome::new("x", None)).await.unwrap(),
            "release" => guard.release().await.unwrap(),
            _ => drop(guard),
        }
        sleep(LEASE * 10).await;
        assert_eq!(store.extends(), renewed, "{end}: no renewal after the end");
    }
    // Released and dropped keys are free again, the completed one replays.
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key("drop"), fp())
            .await
            .unwrap(),
        Begin::Run(_)
    ));
}

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
        matches!(duplicate, Err(IdempotencyError::InFlight { .. })),
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
        Err(IdempotencyError::InFlight { .. })
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
        Err(IdempotencyError::InFlight { retry_after }) => retry_after,
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
        .in_flight_retry_after(Duration::from_secs(2))
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
        matches!(err, IdempotencyError::InFlight { retry_after } if retry_after == Duration::from_secs(2)),
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
    assert_eq!((stats.fallback, stats.hits), (1, 2));
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
        Err(IdempotencyError::InFlight { .. })
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
        Err(IdempotencyError::InFlight { .. })
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
        .wait_for_in_flight(Duration::from_secs(5), Duration::from_millis(10))
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
        Err(IdempotencyError::InFlight { .. })
    ));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4990) && waited <= Duration::from_secs(5),
        "{waited:?}"
    );
}
