//! The memory store answers the engine's claims and completions at once
//! (`IdempotencyStore::try_claim_now` / `complete_now`, no future per call): the engine's
//! answers, counters, metrics and the records left behind are the same as through the async
//! primitives, which every other store goes through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod counting;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use counting::Counting;
use idempotency_core::{
    Begin, Claim, Completed, DynIdempotencyStore, Fenced, Fingerprint, Guard, Idempotency,
    IdempotencyKey, IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoreKey,
    StoredOutcome, Waited,
};
use idempotency_memory::{ManualClock, MemoryStore, TokioClock};

/// The memory store with its at-once answers hidden: every call goes through the async
/// primitives, as for any store that does not implement them.
#[derive(Debug, Clone)]
struct AsyncOnly(MemoryStore);

impl IdempotencyStore for AsyncOnly {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.0.try_claim(key, record, lease).await
    }
    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        self.0.complete(key, token, record, retention).await
    }
    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        self.0.release(key, token).await
    }
    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.0.extend(key, token, lease).await
    }
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.0.get(key).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.0.delete(key).await
    }
    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        self.0.time_to_live(key).await
    }
    async fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> Result<Waited, StoreError> {
        self.0.wait_for_change(key, seen, timeout).await
    }
}

fn claim_record() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 1,
    }
}

#[tokio::test]
async fn the_memory_store_answers_at_once_and_other_stores_do_not() {
    let lease = Duration::from_secs(60);
    let retention = Duration::from_secs(600);
    let store = MemoryStore::new();
    let key = StoreKey::from_raw("idem:s:now");
    let claim = claim_record();
    assert_eq!(
        store
            .try_claim_now(&key, &claim, lease, now())
            .unwrap()
            .unwrap(),
        Claim::Claimed
    );
    // The async primitive sees what the at-once claim did, and the other way round.
    let other = claim_record();
    assert_eq!(
        store.try_claim(&key, &other, lease).await.unwrap(),
        Claim::Existing(Record::InProgress(claim.clone()))
    );
    let done = Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: 1,
        completed_at_ms: 2,
        outcome: StoredOutcome::new("body", Some("text/plain".into())),
    };
    let wrong = LeaseToken::generate();
    assert_eq!(
        store
            .complete_now(&key, &wrong, &done, retention, now())
            .unwrap()
            .unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        store
            .complete_now(&key, &claim.token, &done, retention, now())
            .unwrap()
            .unwrap(),
        Fenced::Applied
    );
    // A retried completion under the same token is applied, as through `complete`.
    assert_eq!(
        store
            .complete(&key, &claim.token, &done, retention)
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert_eq!(
        store
            .try_claim_now(&key, &other, lease, now())
            .unwrap()
            .unwrap(),
        Claim::Existing(Record::Completed(done.clone()))
    );
    // Full: the same typed error as the async claim.
    let full = MemoryStore::builder().max_entries(1).build();
    let first = StoreKey::from_raw("idem:s:1");
    let second = StoreKey::from_raw("idem:s:2");
    full.try_claim_now(&first, &claim_record(), lease, now())
        .unwrap()
        .unwrap();
    assert!(matches!(
        full.try_claim_now(&second, &claim_record(), lease, now())
            .unwrap(),
        Err(StoreError::Full { entries: 1 })
    ));
    assert!(matches!(
        full.try_claim(&second, &claim_record(), lease).await,
        Err(StoreError::Full { entries: 1 })
    ));

    // Wrappers forward it; a store that does not implement it answers `None` and does nothing.
    let shared: Arc<dyn DynIdempotencyStore> = Arc::new(MemoryStore::new());
    assert!(
        shared
            .try_claim_now(&key, &claim_record(), lease, now())
            .is_some()
    );
    let boxed: Box<dyn DynIdempotencyStore> = Box::new(MemoryStore::new());
    assert!(
        boxed
            .complete_now(&key, &claim.token, &done, retention, now())
            .is_some()
    );
    let hidden = AsyncOnly(MemoryStore::new());
    assert!(
        hidden
            .try_claim_now(&key, &claim_record(), lease, now())
            .is_none()
    );
    assert!(
        hidden
            .complete_now(&key, &claim.token, &done, retention, now())
            .is_none()
    );
    assert_eq!(hidden.get(&key).await.unwrap(), None, "nothing was done");
}

/// A small deterministic generator (xorshift64*), so both runs make the same choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// What a step saw, without what differs between runs by design (lease tokens, wall-clock
/// timestamps).
fn record_summary(record: Option<Record>) -> String {
    match record {
        None => "absent".to_owned(),
        Some(Record::InProgress(r)) => format!("in progress {:?}", r.fingerprint),
        Some(Record::Completed(r)) => format!(
            "completed {:?} {:?} {:?}",
            r.fingerprint, r.outcome.body, r.outcome.content_type
        ),
    }
}

/// `steps` random engine operations on a few keys of a small bounded store whose clock moves
/// (lease 1 s, retention 3 s, at most 4 records): claims, replays, conflicts, mismatches,
/// completions (some after their lease ended), releases, a full store (fail closed), reads.
/// Returns the transcript, the engine's counters and the metrics recorded.
async fn run<S: IdempotencyStore + 'static>(
    store: S,
    clock: &ManualClock,
    seed: u64,
    steps: usize,
) -> (
    Vec<String>,
    String,
    (BTreeMap<String, u64>, BTreeMap<String, u64>),
) {
    let recorder = Counting::default();
    let _local = metrics::set_default_local_recorder(&recorder);
    let engine = Idempotency::builder(store)
        .ignore_env()
        .lease(Duration::from_secs(1))
        .retention(Duration::from_secs(3))
        .renew_leases(false)
        .build()
        .unwrap();
    let scope = Scope::new("fast-path");
    let keys: Vec<IdempotencyKey> = (0..6)
        .map(|n| IdempotencyKey::new(format!("key-{n}")).unwrap())
        .collect();
    let fingerprints = [Fingerprint::of("a"), Fingerprint::of("b")];
    let mut held: Vec<(usize, Guard<S>)> = Vec::new();
    let mut rng = Rng(seed);
    let mut transcript = Vec::new();
    for step in 0..steps {
        let seen = match rng.below(10) {
            0..=3 => {
                let k = rng.below(keys.len() as u64) as usize;
                let fingerprint = fingerprints[rng.below(2) as usize];
                match engine.begin(&scope, &keys[k], fingerprint).await {
                    Ok(Begin::Run(guard)) => {
                        held.push((k, guard));
                        format!("begin {k}: run")
                    }
                    Ok(Begin::Replay(outcome)) => format!(
                        "begin {k}: replay {:?} {:?}",
                        outcome.body, outcome.content_type
                    ),
                    Err(error) => format!("begin {k}: {error:?}"),
                }
            }
            4..=5 if !held.is_empty() => {
                let (k, guard) = held.swap_remove(rng.below(held.len() as u64) as usize);
                let outcome = StoredOutcome::new(format!("out-{step}"), Some("text/plain".into()));
                format!("complete {k}: {:?}", guard.complete(outcome).await)
            }
            6 if !held.is_empty() => {
                let (k, guard) = held.swap_remove(rng.below(held.len() as u64) as usize);
                format!("release {k}: {:?}", guard.release().await)
            }
            7 => {
                let by = Duration::from_millis(rng.below(900));
                clock.advance(by);
                format!("advance {by:?}")
            }
            _ => {
                let k = rng.below(keys.len() as u64) as usize;
                let record = engine.get(&scope, &keys[k]).await.unwrap();
                format!("get {k}: {}", record_summary(record))
            }
        };
        transcript.push(seen);
    }
    for (_, guard) in held {
        guard.release().await.ok();
    }
    let stats = format!("{:?}", engine.stats());
    drop(engine);
    (transcript, stats, recorder.totals())
}

fn bounded(clock: &ManualClock) -> MemoryStore {
    MemoryStore::builder()
        .clock(clock.clone())
        .max_entries(4)
        .build()
}

#[tokio::test(flavor = "current_thread")]
async fn the_engine_answers_the_same_on_both_paths() {
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 1..=40u64 {
        let seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let now_clock = ManualClock::new();
        let at_once = run(bounded(&now_clock), &now_clock, seed, 300).await;
        let async_clock = ManualClock::new();
        let through_calls = run(AsyncOnly(bounded(&async_clock)), &async_clock, seed, 300).await;
        for (step, (a, b)) in at_once.0.iter().zip(&through_calls.0).enumerate() {
            assert_eq!(a, b, "seed {seed}, step {step}");
        }
        assert_eq!(at_once.1, through_calls.1, "counters, seed {seed}");
        assert_eq!(at_once.2, through_calls.2, "metrics, seed {seed}");
        for line in &at_once.0 {
            let kind = line.split_once(": ").map_or(line.as_str(), |(_, k)| k);
            kinds.insert(kind.split([' ', '(', '{']).next().unwrap_or("").to_owned());
        }
        let (counters, histograms) = &at_once.2;
        assert!(
            histograms.contains_key("idempotency_store_op_duration_seconds{op=try_claim}")
                && histograms.contains_key("idempotency_store_op_duration_seconds{op=complete}"),
            "{histograms:?}"
        );
        assert!(
            counters.contains_key("idempotency_claims_total{}"),
            "{counters:?}"
        );
    }
    // The runs met every kind of answer the paths could differ on.
    for kind in [
        "run",
        "replay",
        "InProgress",
        "FingerprintMismatch",
        "StoreUnavailable",
        "Ok",
        "Err",
        "completed",
        "absent",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
}

/// `store.try_claim_now(key, record, lease, at)`, answered.
/// The engine's clock read, as it passes it to the at-once calls.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn claim_at(
    store: &MemoryStore,
    key: &StoreKey,
    record: &InProgress,
    lease: Duration,
    at: std::time::Instant,
) -> Claim {
    store
        .try_claim_now(key, record, lease, at)
        .expect("the memory store answers at once")
        .unwrap()
}

/// On `TokioClock` the at-once forms take the caller's clock read as the time of the call (no
/// clock read of their own): a claim made "at" an instant 10 minutes from now with a 1 s lease
/// is still live for a claim made now through the async primitive, which reads the clock; a
/// claim made "at" now with a 1 s lease is not, 2 s later, for an at-once claim made "at" that
/// later instant. The default clock and a manual clock ignore the caller's instant.
#[tokio::test]
async fn the_at_once_forms_take_the_callers_instant_as_the_time_of_the_call() {
    let lease = Duration::from_secs(1);
    let now = std::time::Instant::now();
    let store = MemoryStore::builder().clock(TokioClock::new()).build();

    let ahead = StoreKey::from_raw("idem:s:ahead");
    let first = claim_record();
    let at = now + Duration::from_secs(600);
    assert_eq!(claim_at(&store, &ahead, &first, lease, at), Claim::Claimed);
    match store
        .try_claim(&ahead, &claim_record(), lease)
        .await
        .unwrap()
    {
        Claim::Existing(Record::InProgress(held)) => assert_eq!(held.token, first.token),
        other => panic!("the lease runs from the caller's instant: {other:?}"),
    }

    let lapsing = StoreKey::from_raw("idem:s:lapsing");
    let held = claim_record();
    assert_eq!(
        claim_at(&store, &lapsing, &held, lease, now),
        Claim::Claimed
    );
    let later = now + Duration::from_secs(2);
    assert_eq!(
        claim_at(&store, &lapsing, &claim_record(), lease, later),
        Claim::Claimed,
        "taken over: the lease had lapsed at the caller's instant"
    );
    // Completing "at" an instant after the lapse: the lease is lost.
    let done = Completed {
        token: held.token,
        fingerprint: held.fingerprint,
        created_at_ms: held.created_at_ms,
        completed_at_ms: held.created_at_ms,
        outcome: StoredOutcome::new("x", None),
    };
    assert_eq!(
        store
            .complete_now(&lapsing, &held.token, &done, lease, later)
            .unwrap()
            .unwrap(),
        Fenced::LeaseLost
    );

    // The default clock reads its own, and a manual clock keeps its own time: an instant an
    // hour ahead does not lapse a live lease.
    let clock = ManualClock::new();
    let manual = MemoryStore::builder().clock(clock.clone()).build();
    for (which, store) in [("default", MemoryStore::new()), ("manual", manual.clone())] {
        let key = StoreKey::from_raw(format!("idem:s:{which}"));
        let mine = claim_record();
        assert_eq!(claim_at(&store, &key, &mine, lease, now), Claim::Claimed);
        let hour = now + Duration::from_secs(3600);
        match claim_at(&store, &key, &claim_record(), lease, hour) {
            Claim::Existing(Record::InProgress(held)) => assert_eq!(held.token, mine.token),
            other => panic!("the {which} clock ignores the caller's instant: {other:?}"),
        }
    }
    let key = StoreKey::from_raw("idem:s:manual");
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        claim_at(&manual, &key, &claim_record(), lease, now),
        Claim::Claimed
    );
}
