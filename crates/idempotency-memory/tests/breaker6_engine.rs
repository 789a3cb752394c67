//! breaker6: the engine's fewer clock reads and cancelled claims, on the memory store — a
//! `begin()` dropped at each of its await points, renewal timing from the claim's end (paused
//! clock), and `Retry-After` for young and stale claims.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use idempotency_core::{
    Begin, Claim, Completed, Fenced, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey,
    IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoreKey, StoredOutcome,
    Waited,
};
use idempotency_memory::MemoryStore;

/// Where the gated store stops (forever: the caller drops the future there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Nowhere,
    BeforeClaim,
    AfterClaim,
    TimeToLive,
    WaitForChange,
}

#[derive(Debug)]
struct Gated {
    inner: MemoryStore,
    stop: Mutex<Stop>,
    reached: Notify,
    /// How long `try_claim` takes (tokio's clock) before it reaches the inner store.
    claim_delay: Mutex<Duration>,
    /// When each `extend` was called (tokio's clock).
    extends: Mutex<Vec<Instant>>,
    claim_ended: Mutex<Option<Instant>>,
    /// Every `release` call and its answer.
    releases: Mutex<Vec<(StoreKey, LeaseToken, Fenced)>>,
}

impl Gated {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(),
            stop: Mutex::new(Stop::Nowhere),
            reached: Notify::new(),
            claim_delay: Mutex::new(Duration::ZERO),
            extends: Mutex::new(Vec::new()),
            claim_ended: Mutex::new(None),
            releases: Mutex::new(Vec::new()),
        })
    }

    async fn park_if(&self, at: Stop) {
        if *self.stop.lock() == at {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

impl IdempotencyStore for Gated {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let delay = *self.claim_delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.park_if(Stop::BeforeClaim).await;
        let claimed = self.inner.try_claim(key, record, lease).await;
        self.park_if(Stop::AfterClaim).await;
        *self.claim_ended.lock() = Some(Instant::now());
        claimed
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
        let answer = self.inner.release(key, token).await?;
        self.releases.lock().push((key.clone(), *token, answer));
        Ok(answer)
    }
    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.extends.lock().push(Instant::now());
        self.inner.extend(key, token, lease).await
    }
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        self.park_if(Stop::TimeToLive).await;
        self.inner.time_to_live(key).await
    }
    async fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> Result<Waited, StoreError> {
        self.park_if(Stop::WaitForChange).await;
        self.inner.wait_for_change(key, seen, timeout).await
    }
}

fn key() -> IdempotencyKey {
    IdempotencyKey::new("b6-key").unwrap()
}

/// Poll `begin` until the gated store parks it, then drop it there.
async fn drop_at(engine: &Idempotency<Arc<Gated>>, store: &Gated) {
    let (scope, key) = (Scope::global(), key());
    let reached = store.reached.notified();
    let begin = engine.begin(&scope, &key, Fingerprint::of("b6"));
    tokio::select! {
        biased;
        answer = begin => panic!("begin answered instead of parking: {:?}", answer.map(|_| ())),
        () = reached => {}
    }
}

/// Bounded: the background release runs on the runtime within a few turns.
async fn until(mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("condition not reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_dropped_after_its_claim_landed_releases_it() {
    let store = Gated::new();
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .lease(Duration::from_secs(300))
        .build()
        .unwrap();
    *store.stop.lock() = Stop::AfterClaim;
    drop_at(&engine, &store).await;
    until(|| store.inner.is_empty()).await;
    *store.stop.lock() = Stop::Nowhere;
    let again = engine
        .begin(&Scope::global(), &key(), Fingerprint::of("b6"))
        .await
        .unwrap();
    assert!(matches!(again, Begin::Run(_)), "the key is free at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_dropped_before_its_claim_landed_leaves_anothers_claim_alone() {
    let store = Gated::new();
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    // The other instance claims straight on the inner store, while ours is parked.
    let other = Idempotency::builder(store.inner.clone())
        .ignore_env()
        .build()
        .unwrap();
    *store.stop.lock() = Stop::BeforeClaim;
    drop_at(&engine, &store).await;
    let Begin::Run(theirs) = other
        .begin(&Scope::global(), &key(), Fingerprint::of("b6"))
        .await
        .unwrap()
    else {
        panic!("the other instance claims")
    };
    // The dropped claim's background release ran, with its own token: refused.
    let sk = engine.store_key(&Scope::global(), &key());
    until(|| !store.releases.lock().is_empty()).await;
    assert_eq!(store.releases.lock().len(), 1);
    assert_eq!(store.releases.lock()[0].2, Fenced::LeaseLost);
    assert!(matches!(
        store.inner.get(&sk).await.unwrap(),
        Some(Record::InProgress(_))
    ));
    theirs
        .complete(StoredOutcome::new("theirs", None))
        .await
        .unwrap();
    assert!(matches!(
        store.inner.get(&sk).await.unwrap(),
        Some(Record::Completed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_dropped_while_answering_or_waiting_leaves_the_holder_alone() {
    for stop in [Stop::TimeToLive, Stop::WaitForChange] {
        let store = Gated::new();
        let mut builder = Idempotency::builder(store.clone())
            .ignore_env()
            .retry_after_from_lease(true);
        if stop == Stop::WaitForChange {
            builder =
                builder.wait_for_in_progress(Duration::from_secs(5), Duration::from_millis(50));
        }
        let engine = builder.build().unwrap();
        let sk = engine.store_key(&Scope::global(), &key());
        // A stale holder (created long ago) so that the in-progress answer asks the store.
        let holder = InProgress {
            token: LeaseToken::generate(),
            fingerprint: Fingerprint::of("b6"),
            created_at_ms: 0,
        };
        store
            .inner
            .try_claim(&sk, &holder, Duration::from_secs(2))
            .await
            .unwrap();
        *store.stop.lock() = stop;
        drop_at(&engine, &store).await;
        // No release was queued (the claim was answered): one queued now, for another key,
        // is the only one ever made.
        *store.stop.lock() = Stop::AfterClaim;
        let flush = IdempotencyKey::new("b6-flush").unwrap();
        let scope = Scope::global();
        let reached = store.reached.notified();
        tokio::select! {
            biased;
            _ = engine.begin(&scope, &flush, Fingerprint::of("b6")) => panic!("parks"),
            () = reached => {}
        }
        until(|| !store.releases.lock().is_empty()).await;
        let releases = store.releases.lock().clone();
        assert_eq!(releases.len(), 1, "{stop:?}: {releases:?}");
        assert_eq!(releases[0].0, engine.store_key(&Scope::global(), &flush));
        assert!(
            matches!(store.inner.get(&sk).await.unwrap(), Some(Record::InProgress(r)) if r.token == holder.token),
            "{stop:?}: the holder's claim is untouched"
        );
    }
}

/// `Retry-After` on memory: the fixed value for a young claim, the remaining lease for a
/// claim neither young nor recently refreshed.
#[tokio::test]
async fn retry_after_for_young_and_stale_claims() {
    let store = MemoryStore::new();
    let lease = Duration::from_secs(30);
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .lease(lease)
        .retry_after_from_lease(true)
        .in_progress_retry_after(Duration::from_secs(2))
        .build()
        .unwrap();
    let Begin::Run(_held) = engine
        .begin(&Scope::global(), &key(), Fingerprint::of("b6"))
        .await
        .unwrap()
    else {
        panic!("claims")
    };
    let young = engine
        .begin(&Scope::global(), &key(), Fingerprint::of("b6"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(young, IdempotencyError::InProgress { retry_after } if retry_after == Duration::from_secs(2)),
        "{young:?}"
    );
    // A stale claim: created long ago, 7 s of lease left (not refreshed within 1.5 renewal
    // intervals of 10 s): the key frees in ~7 s.
    let other = IdempotencyKey::new("b6-stale").unwrap();
    let sk = engine.store_key(&Scope::global(), &other);
    let stale = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("b6"),
        created_at_ms: 1,
    };
    store
        .try_claim(&sk, &stale, Duration::from_secs(7))
        .await
        .unwrap();
    let answer = engine
        .begin(&Scope::global(), &other, Fingerprint::of("b6"))
        .await
        .err()
        .unwrap();
    let IdempotencyError::InProgress { retry_after } = answer else {
        panic!("{answer:?}")
    };
    assert!(
        retry_after <= Duration::from_secs(7) && retry_after > Duration::from_secs(5),
        "{retry_after:?}"
    );
    // Stale by its creation time but refreshed just now (its full lease left): the fixed value.
    let refreshed = IdempotencyKey::new("b6-refreshed").unwrap();
    let sk = engine.store_key(&Scope::global(), &refreshed);
    store.try_claim(&sk, &stale, lease).await.unwrap();
    let answer = engine
        .begin(&Scope::global(), &refreshed, Fingerprint::of("b6"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(answer, IdempotencyError::InProgress { retry_after } if retry_after == Duration::from_secs(2)),
        "{answer:?}"
    );
}

/// Renewal is scheduled from the end of the claim's store call, every renewal interval
/// (lease / 3), for a handler far longer than the lease (paused clock: exact instants).
#[tokio::test(start_paused = true)]
async fn renewal_on_time_from_the_claims_end_with_a_slow_claim() {
    let store = Gated::new();
    *store.claim_delay.lock() = Duration::from_millis(700);
    let lease = Duration::from_secs(3);
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .lease(lease)
        .store_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let began = Instant::now();
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key(), Fingerprint::of("b6"))
        .await
        .unwrap()
    else {
        panic!("claims")
    };
    let claim_ended = store.claim_ended.lock().unwrap();
    assert_eq!(claim_ended - began, Duration::from_millis(700));
    // The handler runs for ten leases.
    tokio::time::sleep(lease * 10).await;
    guard
        .complete(StoredOutcome::new("done", None))
        .await
        .unwrap();
    let extends = store.extends.lock().clone();
    assert!(extends.len() >= 29, "{} renewals in 30 s", extends.len());
    let mut last = claim_ended;
    for (i, at) in extends.iter().enumerate() {
        let gap = *at - last;
        assert!(
            gap <= Duration::from_secs(1) + Duration::from_millis(5),
            "renewal {i} came {gap:?} after the previous (lease {lease:?})"
        );
        last = *at;
    }
    assert!(
        extends[0] - claim_ended >= Duration::from_millis(995),
        "the first renewal is due one interval after the claim ended, not before: {:?}",
        extends[0] - claim_ended
    );
}

/// The fallback store's claim (primary down) dropped after it landed: released in the
/// fallback at once, with its own token (`ClaimInFlight` for `Which::Fallback`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_dropped_after_its_fallback_claim_landed_releases_it() {
    use idempotency_core::FailurePolicy;
    use idempotency_testkit::faults::{Fault, FaultyStore};
    let primary = FaultyStore::new(Arc::new(MemoryStore::new()));
    primary.set(Fault::Unavailable);
    let fallback = Gated::new();
    let engine = Idempotency::builder(primary.clone())
        .ignore_env()
        .failure_policy(FailurePolicy::Fallback)
        .fallback_store(fallback.clone())
        .lease(Duration::from_secs(300))
        .build()
        .unwrap();
    *fallback.stop.lock() = Stop::AfterClaim;
    let (scope, key) = (Scope::global(), key());
    let reached = fallback.reached.notified();
    tokio::select! {
        biased;
        _ = engine.begin(&scope, &key, Fingerprint::of("b6")) => panic!("parks in the fallback"),
        () = reached => {}
    }
    until(|| fallback.inner.is_empty()).await;
    let releases = fallback.releases.lock().clone();
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(releases[0].2, Fenced::Applied);
}
