//! Engine behaviour on the memory store: failure policies, kill switch, waiting, guards, and
//! the at-most-once guarantee under a storm of duplicates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use idempotency_core::{
    Begin, Claim, Completed, ConfigError, DynIdempotencyStore, FailurePolicy, Fenced, Fingerprint,
    Idempotency, IdempotencyError, IdempotencyKey, IdempotencyStore, InProgress, LeaseToken,
    Record, RunError, Scope, StoreError, StoreKey, StoreOperation, StoredOutcome, Unprotected,
};
use idempotency_memory::{MemoryStore, TokioClock};
use idempotency_testkit::faults::{Fault, FaultyStore};

fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::new(s).unwrap()
}

fn faulty() -> FaultyStore {
    FaultyStore::new(Arc::new(MemoryStore::new()))
}

#[tokio::test]
async fn fail_closed_refuses_with_a_retryable_error() {
    let store = faulty();
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    store.set(Fault::Unavailable);
    let err = engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            IdempotencyError::StoreUnavailable(StoreError::Unavailable { .. })
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(engine.stats().store_errors, 1);
}

#[tokio::test]
async fn fail_open_runs_unprotected_and_counts_it() {
    let store = faulty();
    let engine = Idempotency::builder(store.clone())
        .failure_policy(FailurePolicy::FailOpen)
        .ignore_env()
        .build()
        .unwrap();
    store.set(Fault::Unavailable);
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("fail-open runs");
    };
    assert_eq!(guard.unprotected_reason(), Some(Unprotected::FailOpen));
    guard.complete(StoredOutcome::new("x", None)).await.unwrap();
    assert_eq!(engine.stats().fail_open, 1);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_times_out_within_budget() {
    let store = faulty();
    let engine = Idempotency::builder(store.clone())
        .store_timeout(Duration::from_millis(100))
        .ignore_env()
        .build()
        .unwrap();
    store.set(Fault::Hang);
    let started = Instant::now();
    let err = engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            IdempotencyError::StoreUnavailable(StoreError::Timeout {
                operation: StoreOperation::TryClaim,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(100),
        "no hang: the budget, on tokio's clock"
    );
}

#[tokio::test]
async fn kill_switch_runs_everything() {
    let store = faulty();
    let engine = Idempotency::builder(store.clone())
        .disabled(true)
        .ignore_env()
        .build()
        .unwrap();
    for _ in 0..2 {
        let Begin::Run(guard) = engine
            .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
            .await
            .unwrap()
        else {
            panic!("disabled engines always run");
        };
        assert_eq!(guard.unprotected_reason(), Some(Unprotected::Disabled));
        guard.complete(StoredOutcome::new("x", None)).await.unwrap();
    }
    assert_eq!(
        store.calls(),
        0,
        "a disabled engine never touches the store"
    );
}

#[test]
fn kill_switch_values() {
    for on in ["true", "TRUE", " 1", "yes"] {
        assert_eq!(idempotency_core::parse_kill_switch(on), Ok(true), "{on}");
    }
    for off in ["", "false", "0", "no"] {
        assert_eq!(idempotency_core::parse_kill_switch(off), Ok(false), "{off}");
    }
    for typo in ["maybe", "flase", "on"] {
        assert!(idempotency_core::parse_kill_switch(typo).is_err(), "{typo}");
    }
}

/// A network store that retries a claim after losing the first reply sees its own record.
#[derive(Debug)]
struct LostReplyStore(MemoryStore);

impl IdempotencyStore for LostReplyStore {
    async fn try_claim(
        &self,
        k: &StoreKey,
        r: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let _lost = self.0.try_claim(k, r, lease).await?;
        self.0.try_claim(k, r, lease).await
    }
    async fn complete(
        &self,
        k: &StoreKey,
        t: &LeaseToken,
        r: &Completed,
        ret: Duration,
    ) -> Result<Fenced, StoreError> {
        let _lost = self.0.complete(k, t, r, ret).await?;
        self.0.complete(k, t, r, ret).await
    }
    async fn release(&self, k: &StoreKey, t: &LeaseToken) -> Result<Fenced, StoreError> {
        self.0.release(k, t).await
    }
    async fn extend(
        &self,
        k: &StoreKey,
        t: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.0.extend(k, t, lease).await
    }
    async fn get(&self, k: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.0.get(k).await
    }
    async fn delete(&self, k: &StoreKey) -> Result<bool, StoreError> {
        self.0.delete(k).await
    }
}

#[tokio::test]
async fn retried_claim_and_completion_recognise_their_own_token() {
    let engine = Idempotency::builder(LostReplyStore(MemoryStore::new()))
        .ignore_env()
        .build()
        .unwrap();
    let begun = engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap();
    let Begin::Run(guard) = begun else {
        panic!("own claim seen again is still a claim")
    };
    guard
        .complete(StoredOutcome::new("once", None))
        .await
        .unwrap();
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
            .await
            .unwrap(),
        Begin::Replay(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn waiting_for_in_progress_returns_the_outcome() {
    let engine = Idempotency::builder(MemoryStore::new())
        .wait_for_in_progress(Duration::from_secs(5), Duration::from_millis(10))
        .ignore_env()
        .build()
        .unwrap();
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!()
    };
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        guard
            .complete(StoredOutcome::new("done", None))
            .await
            .unwrap();
    });
    match engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap()
    {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
        Begin::Run(_) => panic!("must wait, not run"),
    }
    finisher.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiting_gives_up_with_in_progress() {
    let engine = Idempotency::builder(MemoryStore::new())
        .wait_for_in_progress(Duration::from_millis(50), Duration::from_millis(10))
        .in_progress_retry_after(Duration::from_secs(3))
        .ignore_env()
        .build()
        .unwrap();
    let _held = engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap();
    let started = Instant::now();
    let err = engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IdempotencyError::InProgress { retry_after } if retry_after == Duration::from_secs(3))
    );
    assert_eq!(started.elapsed(), Duration::from_millis(50));
}

/// An engine on `store` whose claims hold a 5 s lease, not renewed.
fn unrenewed(store: MemoryStore) -> Idempotency<MemoryStore> {
    Idempotency::builder(store)
        .renew_leases(false)
        .lease(Duration::from_secs(5))
        .ignore_env()
        .build()
        .unwrap()
}

/// `begin` on key `k`: what it answered.
async fn begin_k(
    engine: &Idempotency<MemoryStore>,
) -> Result<Begin<MemoryStore>, IdempotencyError> {
    engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
}

/// On `TokioClock` the memory store's leases run on tokio's clock, paused here, as the engine's
/// timers do. A claim held without renewal lapses once the paused clock has moved past its
/// lease (a duplicate then takes it over, and the first holder's completion is refused as a
/// lost lease), and not before. The default clock keeps real time (next test).
#[tokio::test(start_paused = true)]
async fn a_store_on_tokio_clock_runs_on_the_paused_clock() {
    let engine = unrenewed(MemoryStore::builder().clock(TokioClock::new()).build());
    let Ok(Begin::Run(first)) = begin_k(&engine).await else {
        panic!("the first attempt runs");
    };
    tokio::time::advance(Duration::from_secs(4)).await;
    let err = begin_k(&engine).await.err();
    assert!(
        matches!(err, Some(IdempotencyError::InProgress { .. })),
        "{err:?}"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let Ok(Begin::Run(second)) = begin_k(&engine).await else {
        panic!("the lapsed claim is taken over");
    };
    let lost = first.complete(StoredOutcome::new("first", None)).await;
    assert!(matches!(lost, Err(IdempotencyError::LeaseLost)), "{lost:?}");
    second
        .complete(StoredOutcome::new("second", None))
        .await
        .unwrap();
    let Ok(Begin::Replay(outcome)) = begin_k(&engine).await else {
        panic!("replayed");
    };
    assert_eq!(outcome.body, "second");
}

/// The default clock (`SystemClock`) keeps real time when a test pauses tokio's clock: hours of
/// paused time leave a lease live (a store shared by runtimes whose clocks differ stays
/// consistent; `TokioClock` is the opt-in that follows the paused clock).
#[tokio::test(start_paused = true)]
async fn the_default_clock_keeps_real_time_under_a_paused_clock() {
    let engine = unrenewed(MemoryStore::new());
    let Ok(Begin::Run(first)) = begin_k(&engine).await else {
        panic!("the first attempt runs");
    };
    tokio::time::advance(Duration::from_secs(3 * 3600)).await;
    let err = begin_k(&engine).await.err();
    assert!(
        matches!(err, Some(IdempotencyError::InProgress { .. })),
        "{err:?}"
    );
    first
        .complete(StoredOutcome::new("first", None))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropped_guard_releases_in_the_background() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let begun = engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap();
    drop(begun);
    for _ in 0..100 {
        if engine
            .get(&Scope::global(), &key("k"))
            .await
            .unwrap()
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
            .await
            .unwrap(),
        Begin::Run(_)
    ));
}

#[tokio::test]
async fn oversize_outcome_is_refused_and_the_claim_released() {
    let engine = Idempotency::builder(MemoryStore::new())
        .max_outcome_size(10)
        .ignore_env()
        .build()
        .unwrap();
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!()
    };
    let err = guard
        .complete(StoredOutcome::new(vec![0u8; 11], None))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        IdempotencyError::OutcomeTooLarge { size: 11, max: 10 }
    ));
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
            .await
            .unwrap(),
        Begin::Run(_)
    ));
}

#[tokio::test]
async fn guard_extend_and_release() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!()
    };
    guard.extend_by(Duration::from_secs(600)).await.unwrap();
    guard.release().await.unwrap();
    assert!(
        engine
            .get(&Scope::global(), &key("k"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !engine
            .invalidate(&Scope::global(), &key("k"))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn stats_count_hits_misses_and_writes() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let (scope, k) = (Scope::global(), key("k"));
    for _ in 0..3 {
        let value = engine
            .run(&scope, &k, Fingerprint::of("a"), || async {
                Ok::<_, std::io::Error>(7u32)
            })
            .await;
        assert_eq!(value.unwrap(), 7);
    }
    let stats = engine.stats();
    assert_eq!((stats.claims, stats.replays, stats.completions), (1, 2, 1));
    assert!((stats.hit_rate() - 2.0 / 3.0).abs() < 1e-9);
}

#[tokio::test]
async fn run_releases_on_error_and_reports_bad_replays() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let failed: Result<u32, RunError<&str, u32>> = engine
        .run(
            &Scope::global(),
            &key("k"),
            Fingerprint::of("a"),
            || async { Err("boom") },
        )
        .await;
    assert!(matches!(failed, Err(RunError::Operation("boom"))));
    let ok: Result<String, RunError<&str, String>> = engine
        .run(
            &Scope::global(),
            &key("k"),
            Fingerprint::of("a"),
            || async { Ok("text".to_owned()) },
        )
        .await;
    assert_eq!(ok.unwrap(), "text");
    let wrong_type: Result<u32, RunError<&str, u32>> = engine
        .run(
            &Scope::global(),
            &key("k"),
            Fingerprint::of("a"),
            || async { Ok(1) },
        )
        .await;
    assert!(matches!(wrong_type, Err(RunError::Deserialize(_))));
}

#[test]
fn invalid_configurations_are_typed_errors() {
    let build =
        |b: idempotency_core::IdempotencyBuilder<MemoryStore>| b.ignore_env().build().map(|_| ());
    assert_eq!(
        build(Idempotency::builder(MemoryStore::new()).lease(Duration::ZERO)),
        Err(ConfigError::ZeroDuration { setting: "lease" })
    );
    assert!(matches!(
        build(Idempotency::builder(MemoryStore::new()).retention(Duration::from_secs(1))),
        Err(ConfigError::RetentionShorterThanLease { .. })
    ));
    assert!(matches!(
        build(Idempotency::builder(MemoryStore::new()).prefix("a b")),
        Err(ConfigError::Prefix(_))
    ));
}

#[test]
fn store_and_engine_build_without_a_runtime() {
    let store = MemoryStore::new();
    let engine = Idempotency::builder(store).ignore_env().build().unwrap();
    assert_eq!(engine.config().lease(), Duration::from_secs(60));
    assert_eq!(engine.config().retention(), Duration::from_secs(86_400));
}

/// 10 000 keys × 16 concurrent duplicate callers: every operation ran exactly once and all
/// callers of a key got the identical outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_keys_sixteen_duplicates_each() {
    const KEYS: usize = 10_000;
    const CALLERS: usize = 16;
    let engine = Idempotency::builder(MemoryStore::new())
        .wait_for_in_progress(Duration::from_secs(30), Duration::from_millis(1))
        .ignore_env()
        .build()
        .unwrap();
    let executions: Arc<Vec<AtomicUsize>> =
        Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::with_capacity(KEYS * CALLERS);
    for caller in 0..CALLERS {
        for n in 0..KEYS {
            let engine = engine.clone();
            let executions = Arc::clone(&executions);
            tasks.push(tokio::spawn(async move {
                let k = key(&format!("storm-{n}"));
                let scope = Scope::new(format!("tenant-{}", n % 7));
                let out: Result<String, RunError<std::io::Error, String>> = engine
                    .run(&scope, &k, Fingerprint::of(n.to_le_bytes()), || async {
                        executions[n].fetch_add(1, Ordering::SeqCst);
                        Ok(format!("key {n} ran by caller {caller}"))
                    })
                    .await;
                (n, out.unwrap())
            }));
        }
    }
    let mut outcomes: Vec<Option<String>> = vec![None; KEYS];
    for task in tasks {
        let (n, out) = task.await.unwrap();
        match &outcomes[n] {
            Some(first) => assert_eq!(first, &out, "key {n}: identical outcomes"),
            None => outcomes[n] = Some(out),
        }
    }
    for (n, count) in executions.iter().enumerate() {
        assert_eq!(count.load(Ordering::SeqCst), 1, "key {n} ran exactly once");
    }
    let stats = engine.stats();
    assert_eq!(stats.claims, KEYS as u64);
    assert_eq!(stats.completions, KEYS as u64);
    assert_eq!(stats.replays, (KEYS * (CALLERS - 1)) as u64);
}

/// A result that does not serialise is `RunError::Serialize` (not "store unavailable"), hands
/// the value back, and releases the claim so that a retry runs again.
#[tokio::test(start_paused = true)]
async fn a_result_that_does_not_serialize_is_its_own_error() {
    use std::collections::HashMap;
    let store = MemoryStore::new();
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    // JSON object keys must be strings: a tuple key does not serialise.
    let value: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
    let result: Result<_, RunError<std::io::Error, _>> = engine
        .run(&Scope::global(), &key("ser"), Fingerprint::of("x"), || {
            let value = value.clone();
            async move { Ok(value) }
        })
        .await;
    match result {
        Err(RunError::Serialize { value: back, error }) => {
            assert_eq!(back, value);
            assert!(
                error.to_string().contains("key must be a string"),
                "{error}"
            );
        }
        other => panic!("expected RunError::Serialize, got {other:?}"),
    }
    // The dropped guard releases the claim in the background.
    let store_key = engine.store_key(&Scope::global(), &key("ser"));
    for _ in 0..100 {
        if store.get(&store_key).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the claim was not released");
}

/// A store whose claims wait `delay` and then fail with its own timeout, and that declares
/// `bound` as the bound on its operations (`IdempotencyStore::operation_bound`).
#[derive(Debug)]
struct SelfBoundedStore {
    inner: MemoryStore,
    delay: Duration,
    bound: Option<Duration>,
}

impl IdempotencyStore for SelfBoundedStore {
    async fn try_claim(
        &self,
        _k: &StoreKey,
        _r: &InProgress,
        _lease: Duration,
    ) -> Result<Claim, StoreError> {
        tokio::time::sleep(self.delay).await;
        Err(StoreError::Timeout {
            operation: StoreOperation::TryClaim,
            after: self.delay,
        })
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
        self.inner.extend(k, t, lease).await
    }
    async fn get(&self, k: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(k).await
    }
    async fn delete(&self, k: &StoreKey) -> Result<bool, StoreError> {
        self.inner.delete(k).await
    }
    fn operation_bound(&self) -> Option<Duration> {
        self.bound
    }
}

/// The timeout a claim on `store` fails with, under an engine whose budget is 1 s.
async fn claim_timeout(store: SelfBoundedStore) -> Duration {
    let engine = Idempotency::builder(store)
        .store_timeout(Duration::from_secs(1))
        .ignore_env()
        .build()
        .unwrap();
    match engine
        .begin(&Scope::global(), &key("k"), Fingerprint::of("a"))
        .await
    {
        Err(IdempotencyError::StoreUnavailable(StoreError::Timeout { after, .. })) => after,
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_bounded_within_the_budget_is_trusted_with_its_own_timer() {
    // Declares 800 ms (within the engine's 1 s): the engine arms no timer of its own. Shown
    // with a store that overruns its declaration (2 s): nothing cuts it at the engine's 1 s,
    // and the store's own timeout is the one reported.
    let started = Instant::now();
    let after = claim_timeout(SelfBoundedStore {
        inner: MemoryStore::new(),
        delay: Duration::from_secs(2),
        bound: Some(Duration::from_millis(800)),
    })
    .await;
    assert_eq!(after, Duration::from_secs(2));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_engine_keeps_its_timer_for_stores_bounded_beyond_the_budget_or_not_at_all() {
    for bound in [Some(Duration::from_secs(5)), None] {
        // The store would take 5 s: the engine's 1 s budget still holds.
        let started = Instant::now();
        let after = claim_timeout(SelfBoundedStore {
            inner: MemoryStore::new(),
            delay: Duration::from_secs(5),
            bound,
        })
        .await;
        assert_eq!(after, Duration::from_secs(1), "bound {bound:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(1), "bound {bound:?}");
    }
}

#[test]
fn arc_and_box_forward_the_operation_bound() {
    let bounded = || SelfBoundedStore {
        inner: MemoryStore::new(),
        delay: Duration::ZERO,
        bound: Some(Duration::from_millis(250)),
    };
    assert_eq!(
        Arc::new(bounded()).operation_bound(),
        Some(Duration::from_millis(250))
    );
    let boxed: Box<dyn DynIdempotencyStore> = Box::new(bounded());
    assert_eq!(boxed.operation_bound(), Some(Duration::from_millis(250)));
    assert_eq!(MemoryStore::new().operation_bound(), None);
}

#[tokio::test(start_paused = true)]
async fn completed_at_is_the_claims_wall_clock_plus_the_time_the_operation_took() {
    // The completion reads the monotonic clock once (for its store call's latency too) and
    // dates itself from the claim's wall-clock time plus the time elapsed since.
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let (scope, k) = (Scope::global(), key("dated"));
    let Begin::Run(guard) = engine
        .begin(&scope, &k, Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("a fresh key runs");
    };
    tokio::time::advance(Duration::from_millis(4_250)).await;
    guard
        .complete(StoredOutcome::new("done", None))
        .await
        .unwrap();
    let Some(Record::Completed(done)) = engine.get(&scope, &k).await.unwrap() else {
        panic!("completed");
    };
    assert_eq!(done.completed_at_ms - done.created_at_ms, 4_250);
    let wall = idempotency_core::unix_millis_now();
    assert!(done.created_at_ms <= wall && wall - done.created_at_ms < 60_000);
}
