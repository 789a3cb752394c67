//! Waiting duplicates are woken by the completion or release, not polling (issue 12 item 4):
//! on the paused clock, the waiter answers at the instant of the completion, and it costs one
//! re-read (a second claim), whatever the poll interval.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_core::{
    Begin, Claim, Completed, Fenced, Fingerprint, Guard, Idempotency, IdempotencyError,
    IdempotencyKey, IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoreKey,
    StoredOutcome, Waited,
};
use idempotency_memory::MemoryStore;
use tokio::time::Instant;

/// Counts the primitives a waiting duplicate costs.
#[derive(Debug, Clone, Default)]
struct Counting {
    inner: MemoryStore,
    claims: Arc<AtomicUsize>,
    gets: Arc<AtomicUsize>,
    waits: Arc<AtomicUsize>,
    /// `false`: answer `Unsupported`, as a store that cannot notify.
    cannot_notify: bool,
}

impl IdempotencyStore for Counting {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.try_claim(key, record, lease).await
    }
    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner.complete(key, token, record, retention).await
    }
    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        self.inner.release(key, token).await
    }
    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner.extend(key, token, lease).await
    }
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> Result<Waited, StoreError> {
        self.waits.fetch_add(1, Ordering::SeqCst);
        if self.cannot_notify {
            return Ok(Waited::Unsupported);
        }
        self.inner.wait_for_change(key, seen, timeout).await
    }
}

fn key() -> IdempotencyKey {
    IdempotencyKey::new("k").unwrap()
}

/// An engine that would poll only every 10 s: any answer sooner is a wake-up.
fn engine(store: Counting, max_wait: Duration) -> Idempotency<Counting> {
    Idempotency::builder(store)
        .wait_for_in_progress(max_wait, Duration::from_secs(10))
        .renew_leases(false)
        .ignore_env()
        .build()
        .unwrap()
}

/// The first attempt at `key()`: it runs.
async fn first_attempt(engine: &Idempotency<Counting>) -> Guard<Counting> {
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key(), Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("first attempt runs")
    };
    guard
}

/// A duplicate of the first attempt, as a task of its own (it waits while the key is in
/// progress).
fn duplicate(
    engine: &Idempotency<Counting>,
) -> tokio::task::JoinHandle<Result<Begin<Counting>, IdempotencyError>> {
    let engine = engine.clone();
    tokio::spawn(async move {
        engine
            .begin(&Scope::global(), &key(), Fingerprint::of("a"))
            .await
    })
}

/// Let the spawned waiter run until it is registered on the key (no time passes).
async fn until_waiting(store: &MemoryStore) {
    while store.waited_keys() == 0 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn completion_wakes_the_waiter_at_once_with_one_re_read() {
    let store = Counting::default();
    let engine = engine(store.clone(), Duration::from_secs(30));
    let guard = first_attempt(&engine).await;
    let claims_before = store.claims.load(Ordering::SeqCst);
    let started = Instant::now();
    let waiter = duplicate(&engine);
    until_waiting(&store.inner).await;
    guard
        .complete(StoredOutcome::new("done", None))
        .await
        .unwrap();
    match waiter.await.unwrap().unwrap() {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
        Begin::Run(_) => panic!("must wait, not run"),
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "woken, not polled");
    assert_eq!(
        store.claims.load(Ordering::SeqCst) - claims_before,
        2,
        "the first look and one re-read"
    );
    assert_eq!(store.gets.load(Ordering::SeqCst), 0);
    assert_eq!(store.waits.load(Ordering::SeqCst), 1);
    assert_eq!(store.inner.waited_keys(), 0, "the notification is dropped");
}

#[tokio::test(start_paused = true)]
async fn release_wakes_the_waiter_which_then_runs() {
    let store = Counting::default();
    let engine = engine(store.clone(), Duration::from_secs(30));
    let guard = first_attempt(&engine).await;
    let started = Instant::now();
    let waiter = duplicate(&engine);
    until_waiting(&store.inner).await;
    guard.release().await.unwrap();
    let Begin::Run(second) = waiter.await.unwrap().unwrap() else {
        panic!("a released key is claimed by the waiter")
    };
    assert_eq!(started.elapsed(), Duration::ZERO);
    second.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silent_wait_ends_with_one_safety_re_read_then_in_progress() {
    let store = Counting::default();
    let engine = engine(store.clone(), Duration::from_secs(3));
    let _held = engine
        .begin(&Scope::global(), &key(), Fingerprint::of("a"))
        .await
        .unwrap();
    let claims_before = store.claims.load(Ordering::SeqCst);
    let started = Instant::now();
    let err = engine
        .begin(&Scope::global(), &key(), Fingerprint::of("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IdempotencyError::InProgress { .. }),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3), "bounded wait");
    assert_eq!(
        store.claims.load(Ordering::SeqCst) - claims_before,
        2,
        "the first look and the safety re-read, no polling"
    );
}

#[tokio::test(start_paused = true)]
async fn a_change_before_the_wait_began_is_not_missed() {
    let store = MemoryStore::new();
    let k = StoreKey::from_raw("k");
    let first = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("a"),
        created_at_ms: 1,
    };
    assert_eq!(
        store
            .try_claim(&k, &first, Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Claimed
    );
    // Released after the duplicate's read, before its wait: the wait returns at once.
    store.release(&k, &first.token).await.unwrap();
    let started = Instant::now();
    let waited = store
        .wait_for_change(&k, &first.token, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(waited, Waited::Changed);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(store.waited_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_leaves_nothing_behind() {
    let store = MemoryStore::new();
    let k = StoreKey::from_raw("k");
    let first = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("a"),
        created_at_ms: 1,
    };
    store
        .try_claim(&k, &first, Duration::from_secs(60))
        .await
        .unwrap();
    let waits: Vec<_> = (0..3)
        .map(|_| {
            let (store, k) = (store.clone(), k.clone());
            tokio::spawn(async move {
                store
                    .wait_for_change(&k, &first.token, Duration::from_secs(30))
                    .await
            })
        })
        .collect();
    until_waiting(&store).await;
    assert_eq!(store.waited_keys(), 1, "one notification per key, shared");
    for wait in &waits {
        wait.abort();
    }
    for wait in waits {
        assert!(wait.await.unwrap_err().is_cancelled());
    }
    assert_eq!(store.waited_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn stores_that_cannot_notify_are_polled_as_before() {
    let store = Counting {
        cannot_notify: true,
        ..Counting::default()
    };
    let engine = Idempotency::builder(store.clone())
        .wait_for_in_progress(Duration::from_secs(1), Duration::from_millis(100))
        .renew_leases(false)
        .ignore_env()
        .build()
        .unwrap();
    let guard = first_attempt(&engine).await;
    let claims_before = store.claims.load(Ordering::SeqCst);
    let started = Instant::now();
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        guard
            .complete(StoredOutcome::new("done", None))
            .await
            .unwrap();
    });
    let answer = engine
        .begin(&Scope::global(), &key(), Fingerprint::of("a"))
        .await
        .unwrap();
    assert!(matches!(answer, Begin::Replay(_)));
    // Looks at 0, 100, 200 (in progress), 300 ms (completed): the next poll after 250 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(store.claims.load(Ordering::SeqCst) - claims_before, 4);
    assert_eq!(
        store.waits.load(Ordering::SeqCst),
        1,
        "asked once, then polled"
    );
    finisher.await.unwrap();
}

/// What removes an in-progress record whose lease lapsed (the record is not touched by its
/// owner, which died or stalled).
#[derive(Debug, Clone, Copy)]
enum Removal {
    /// `MemoryStore::sweep_expired`.
    ExplicitSweep,
    /// The amortised sweep run by a claim of another key.
    SweepInAnotherClaim,
    /// The amortised sweep run by a claim of the same key, which then inserts into the vacant
    /// slot (no takeover is seen: the sweep took the record out first).
    SweepInAClaimOfTheKey,
    /// The sweep of a full store's making room for a claim of another key.
    MakingRoom,
}

/// lowfix A: every path that removes a lapsed in-progress record wakes its waiters at once
/// (the key is free to claim), instead of leaving them asleep until their `max_wait` ends.
/// Before, only a takeover, release, delete or completion woke them: each case here waited the
/// whole 60 s and answered `TimedOut`.
async fn removing_a_lapsed_in_progress_record_wakes_its_waiters(removal: Removal) {
    let clock = idempotency_memory::ManualClock::new();
    let builder = MemoryStore::builder().clock(clock.clone());
    let store = match removal {
        Removal::ExplicitSweep | Removal::MakingRoom => {
            // No amortised sweep during the test.
            builder.sweep_interval(Duration::from_secs(3600))
        }
        Removal::SweepInAnotherClaim | Removal::SweepInAClaimOfTheKey => {
            builder.sweep_interval(Duration::from_secs(1))
        }
    };
    let store = match removal {
        Removal::MakingRoom => store.max_entries(2),
        _ => store,
    }
    .build();
    let claim = |n: u8| InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("a"),
        created_at_ms: u64::from(n),
    };
    let k = StoreKey::from_raw("k");
    let lapsing = claim(1);
    let claimed = store.try_claim(&k, &lapsing, Duration::from_secs(1)).await;
    assert_eq!(claimed.unwrap(), Claim::Claimed);
    // Another key, held all along (fills the 2-record store).
    let other = StoreKey::from_raw("other");
    let held = claim(2);
    let claimed = store.try_claim(&other, &held, Duration::from_secs(3600));
    assert_eq!(claimed.await.unwrap(), Claim::Claimed);

    let started = Instant::now();
    let waiter = tokio::spawn({
        let (store, k) = (store.clone(), k.clone());
        async move {
            store
                .wait_for_change(&k, &lapsing.token, Duration::from_secs(60))
                .await
        }
    });
    until_waiting(&store).await;
    // The lease lapses (store time only: the tokio clock does not move).
    clock.advance(Duration::from_secs(2));
    let newcomer = claim(3);
    match removal {
        Removal::ExplicitSweep => assert_eq!(store.sweep_expired(), 1),
        Removal::SweepInAnotherClaim | Removal::MakingRoom => {
            let third = StoreKey::from_raw("third");
            let claimed = store.try_claim(&third, &newcomer, Duration::from_secs(60));
            assert_eq!(claimed.await.unwrap(), Claim::Claimed, "{removal:?}");
        }
        Removal::SweepInAClaimOfTheKey => {
            let claimed = store.try_claim(&k, &newcomer, Duration::from_secs(60));
            assert_eq!(claimed.await.unwrap(), Claim::Claimed, "{removal:?}");
        }
    }
    let waited = waiter.await.unwrap().unwrap();
    assert_eq!(waited, Waited::Changed, "{removal:?}");
    assert_eq!(started.elapsed(), Duration::ZERO, "{removal:?}: woken");
    assert_eq!(store.waited_keys(), 0, "{removal:?}");
}

#[tokio::test(start_paused = true)]
async fn an_explicit_sweep_wakes_the_waiters_of_a_lapsed_claim() {
    removing_a_lapsed_in_progress_record_wakes_its_waiters(Removal::ExplicitSweep).await;
}

#[tokio::test(start_paused = true)]
async fn the_sweep_in_a_claim_of_another_key_wakes_the_waiters_of_a_lapsed_claim() {
    removing_a_lapsed_in_progress_record_wakes_its_waiters(Removal::SweepInAnotherClaim).await;
}

#[tokio::test(start_paused = true)]
async fn the_sweep_in_a_claim_of_the_key_wakes_the_waiters_of_its_lapsed_claim() {
    removing_a_lapsed_in_progress_record_wakes_its_waiters(Removal::SweepInAClaimOfTheKey).await;
}

#[tokio::test(start_paused = true)]
async fn making_room_wakes_the_waiters_of_a_lapsed_claim() {
    removing_a_lapsed_in_progress_record_wakes_its_waiters(Removal::MakingRoom).await;
}

/// lowfix A through the engine: a duplicate waiting on a key whose owner died is woken when
/// the sweep removes the lapsed claim, and claims the key itself, long before its `max_wait`.
#[tokio::test(start_paused = true)]
async fn a_waiter_on_a_lapsed_claim_is_woken_by_the_sweep_and_runs() {
    let clock = idempotency_memory::ManualClock::new();
    let store = Counting {
        inner: MemoryStore::builder()
            .clock(clock.clone())
            .sweep_interval(Duration::from_secs(3600))
            .build(),
        ..Counting::default()
    };
    let engine = Idempotency::builder(store.clone())
        .lease(Duration::from_secs(5))
        .wait_for_in_progress(Duration::from_secs(60), Duration::from_secs(10))
        .renew_leases(false)
        .ignore_env()
        .build()
        .unwrap();
    let dead_owner = first_attempt(&engine).await;
    let started = Instant::now();
    let waiter = duplicate(&engine);
    until_waiting(&store.inner).await;
    clock.advance(Duration::from_secs(6));
    assert_eq!(store.inner.sweep_expired(), 1);
    let Begin::Run(second) = waiter.await.unwrap().unwrap() else {
        panic!("the lapsed key is claimed by the waiter")
    };
    assert_eq!(started.elapsed(), Duration::ZERO, "woken, not timed out");
    second
        .complete(StoredOutcome::new("done", None))
        .await
        .unwrap();
    drop(dead_owner);
}

/// A duplicate of a claim whose owner is gone, with nothing else happening on the store (no
/// completion, release, sweep or other claim), takes the key over when the lease lapses. On
/// tokio's paused clock (`TokioClock`) exactly then: it used to sleep until its `max_wait`
/// ended and take over only at the safety re-read (60 s here, not 5 s).
#[tokio::test(start_paused = true)]
async fn a_waiter_takes_a_lapsed_claim_over_when_its_lease_ends() {
    let store = MemoryStore::builder()
        .clock(idempotency_memory::TokioClock::new())
        .sweep_interval(Duration::from_secs(3600))
        .build();
    let lease = Duration::from_secs(5);
    let after = idempotency_testkit::lapse::duplicate_takes_over_a_lapsed_claim(
        store.clone(),
        lease,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        after, lease,
        "taken over at the lapse, not at the 60 s deadline"
    );
    assert_eq!(store.waited_keys(), 0);
}

/// The same on the default clock (the system's) in real time: a 200 ms lease is taken over
/// after about 200 ms, not after the 20 s wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_takes_a_lapsed_claim_over_when_its_lease_ends_on_the_system_clock() {
    let lease = Duration::from_millis(200);
    let after = idempotency_testkit::lapse::duplicate_takes_over_a_lapsed_claim(
        MemoryStore::new(),
        lease,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        after < Duration::from_secs(5),
        "taken over at the lapse ({after:?}), not at the 20 s deadline"
    );
}

/// A lease extended while a duplicate waits (the owner is alive and renews): the duplicate,
/// woken when the lease it found would have ended, finds the key still in progress and waits
/// on; the owner's completion then reaches it as a replay.
#[tokio::test(start_paused = true)]
async fn a_waiter_on_an_extended_lease_waits_on_and_gets_the_completion() {
    let store = Counting {
        inner: MemoryStore::builder()
            .clock(idempotency_memory::TokioClock::new())
            .build(),
        ..Counting::default()
    };
    let engine = Idempotency::builder(store.clone())
        .lease(Duration::from_secs(5))
        .wait_for_in_progress(Duration::from_secs(60), Duration::from_secs(60))
        .renew_leases(false)
        .ignore_env()
        .build()
        .unwrap();
    let owner = first_attempt(&engine).await;
    let token = match store.inner.get(owner.store_key().unwrap()).await.unwrap() {
        Some(Record::InProgress(r)) => r.token,
        other => panic!("in progress: {other:?}"),
    };
    let started = Instant::now();
    let waiter = duplicate(&engine);
    until_waiting(&store.inner).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let extended = store
        .inner
        .extend(owner.store_key().unwrap(), &token, Duration::from_secs(30))
        .await;
    assert_eq!(extended.unwrap(), Fenced::Applied);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        !waiter.is_finished(),
        "still waiting past the first lease's end"
    );
    owner
        .complete(StoredOutcome::new(&b"done"[..], None))
        .await
        .unwrap();
    let Begin::Replay(outcome) = waiter.await.unwrap().unwrap() else {
        panic!("the duplicate replays the owner's outcome")
    };
    assert_eq!(&outcome.body[..], b"done");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(
        store.claims.load(Ordering::SeqCst),
        4,
        "the owner's claim, the duplicate's first look, its look at the first lease's end and \
         the one after the completion"
    );
}
