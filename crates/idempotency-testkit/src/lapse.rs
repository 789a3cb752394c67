//! A duplicate waiting on a claim whose owner is gone (crashed, or hung without renewing:
//! it neither completes nor releases) gets the key when the lease lapses, not when its own
//! wait runs out.
//!
//! Stores that notify waiters (`IdempotencyStore::wait_for_change`) hear nothing when a lease
//! lapses: no completion, release or delete announces it. Each such store bounds its wait by
//! the lease it found; [`duplicate_takes_over_a_lapsed_claim`] is the check its tests share.

use std::time::Duration;

use idempotency_core::{
    Begin, Claim, Fingerprint, Idempotency, IdempotencyKey, IdempotencyStore, InProgress,
    LeaseToken, Scope,
};
use tokio::time::Instant;

/// Claim a new key directly on `store` for `lease` as an owner that then vanishes, and begin
/// the same request through an engine (default key prefix, a random key) that waits up to `max_wait` for a key in progress, polling only once per `max_wait` (so a store
/// that cannot notify would answer "in progress"). Asserts the duplicate **runs** (takes the
/// key over) and **not before the lease lapsed**; returns when it did, from just before the
/// owner's claim on tokio's clock (exact under a paused clock), for the caller to bound (the
/// point: well before `max_wait`).
///
/// # Panics
/// On a store error, an answer other than `Begin::Run`, or a takeover before `lease` had
/// passed (less 2 ms: stores count whole milliseconds).
pub async fn duplicate_takes_over_a_lapsed_claim<S>(
    store: S,
    lease: Duration,
    max_wait: Duration,
) -> Duration
where
    S: IdempotencyStore + Clone + 'static,
{
    let engine = Idempotency::builder(store.clone())
        .wait_for_in_progress(max_wait, max_wait)
        .ignore_env()
        .build()
        .expect("engine");
    let scope = Scope::global();
    let key =
        IdempotencyKey::new(format!("lapsed-owner-{:016x}", rand::random::<u64>())).expect("key");
    let owner = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("lapse"),
        created_at_ms: 1_764_000_000_000,
    };
    let started = Instant::now();
    let claim = store
        .try_claim(&engine.store_key(&scope, &key), &owner, lease)
        .await
        .expect("the owner's claim");
    assert_eq!(claim, Claim::Claimed, "the owner claims a new key");
    let answer = engine
        .begin(&scope, &key, Fingerprint::of("lapse"))
        .await
        .expect("the duplicate's begin");
    let after = started.elapsed();
    let Begin::Run(guard) = answer else {
        panic!("the duplicate takes the lapsed claim over and runs");
    };
    drop(guard);
    eprintln!(
        "a {lease:?} lease whose owner is gone: taken over after {after:?} (wait up to {max_wait:?})"
    );
    assert!(
        after + Duration::from_millis(2) >= lease,
        "the duplicate took the key over after {after:?}, before the {lease:?} lease lapsed"
    );
    after
}
