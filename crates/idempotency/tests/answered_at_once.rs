//! `AnyStore` forwards the at-once primitives (`try_claim_now`, `complete_now`) to the memory
//! store, so an engine built by the facade gets the memory store's direct path, and answers
//! "not available" for a store that needs I/O (the engine then makes the async call).

#![cfg(feature = "memory")]

use std::time::Duration;

#[cfg(feature = "kv-rest")]
use idempotency::kv_rest::{KvRestConfig, KvRestStore};
use idempotency::memory::MemoryStore;
use idempotency::{
    AnyStore, Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken,
    Record, StoreKey, StoredOutcome,
};

fn in_progress() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("fp"),
        created_at_ms: 1,
    }
}

#[tokio::test]
async fn the_memory_store_behind_any_store_answers_at_once() {
    let store = AnyStore::from(MemoryStore::new());
    let key = StoreKey::from_raw("idem:facade:now");
    let lease = Duration::from_secs(60);
    let claim = in_progress();
    assert_eq!(
        store
            .try_claim_now(&key, &claim, lease, tokio::time::Instant::now().into_std())
            .unwrap()
            .unwrap(),
        Claim::Claimed
    );
    // What the at-once claim did is what the async primitives see.
    assert_eq!(
        store.get(&key).await.unwrap(),
        Some(Record::InProgress(claim.clone()))
    );
    let done = Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: 1,
        completed_at_ms: 2,
        outcome: StoredOutcome::new("body", Some("text/plain".into())),
    };
    let retention = Duration::from_secs(600);
    assert_eq!(
        store
            .complete_now(
                &key,
                &LeaseToken::generate(),
                &done,
                retention,
                tokio::time::Instant::now().into_std()
            )
            .unwrap()
            .unwrap(),
        Fenced::LeaseLost,
        "fenced by the token, as `complete`"
    );
    assert_eq!(
        store
            .complete_now(
                &key,
                &claim.token,
                &done,
                retention,
                tokio::time::Instant::now().into_std()
            )
            .unwrap()
            .unwrap(),
        Fenced::Applied
    );
    assert_eq!(
        store.try_claim(&key, &in_progress(), lease).await.unwrap(),
        Claim::Existing(Record::Completed(done))
    );
}

#[cfg(feature = "kv-rest")]
#[tokio::test]
async fn a_store_that_needs_io_is_not_answered_at_once() {
    // Nothing listens on this address and nothing is sent: `_now` answers before any I/O.
    let config = KvRestConfig::new("http://127.0.0.1:9", "token").unwrap();
    let store = AnyStore::from(KvRestStore::new(config).unwrap());
    let key = StoreKey::from_raw("idem:facade:io");
    assert!(
        store
            .try_claim_now(
                &key,
                &in_progress(),
                Duration::from_secs(60),
                tokio::time::Instant::now().into_std()
            )
            .is_none()
    );
    let claim = in_progress();
    let done = Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: 1,
        completed_at_ms: 2,
        outcome: StoredOutcome::new("body", None),
    };
    assert!(
        store
            .complete_now(
                &key,
                &claim.token,
                &done,
                Duration::from_secs(1),
                tokio::time::Instant::now().into_std()
            )
            .is_none()
    );
}
