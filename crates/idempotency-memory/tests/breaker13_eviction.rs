//! breaker13: the memory store's byte bound on completions (a completion past `max_bytes`
//! evicts older completed records at once, never its own; batches are 1/16 of the records
//! held) under concurrency and at the edges: accounting back to exactly 0, in-progress
//! records never evicted, `max_bytes` 0 or tiny, huge bodies, `max_entries` 1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken, Record,
    StoreError, StoreKey, StoredOutcome,
};
use idempotency_memory::MemoryStore;

fn k(n: usize) -> StoreKey {
    StoreKey::from_raw(format!("b13:{n}"))
}

fn claim_record() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 0,
    }
}

fn completed(r: &InProgress, body: usize) -> Completed {
    Completed {
        token: r.token,
        fingerprint: r.fingerprint,
        created_at_ms: 0,
        completed_at_ms: 0,
        outcome: StoredOutcome::new(vec![0xab; body], None),
    }
}

/// A body size from a small deterministic sequence: mostly small, sometimes large.
fn body_of(n: usize) -> usize {
    match n % 7 {
        0 => 24 * 1024,
        1 | 2 => 0,
        3 => 3 * 1024,
        _ => 200,
    }
}

/// 4 tasks × 400 keys each: claim, complete (often past the byte bound, so completions evict
/// while other tasks claim and make room), sometimes release or delete; in-progress records
/// held by a fifth party all along. Every completion is applied, every in-progress record
/// survives, and after deleting every key the counts are exactly 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completions_past_the_byte_bound_account_back_to_zero() {
    const MAX: usize = 96 * 1024;
    let store = Arc::new(MemoryStore::builder().max_bytes(MAX).build());
    // Held in progress throughout: must never be evicted.
    let held: Vec<(StoreKey, InProgress)> = (0..32)
        .map(|n| (StoreKey::from_raw(format!("held:{n}")), claim_record()))
        .collect();
    for (key, r) in &held {
        assert_eq!(
            store
                .try_claim(key, r, Duration::from_secs(3600))
                .await
                .unwrap(),
            Claim::Claimed
        );
    }
    let tasks: Vec<_> = (0..4)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut full = 0;
                for i in 0..400 {
                    let n = task * 1000 + i;
                    let r = claim_record();
                    match store.try_claim(&k(n), &r, Duration::from_secs(60)).await {
                        Ok(Claim::Claimed) => {}
                        Err(StoreError::Full { .. }) => {
                            full += 1;
                            continue;
                        }
                        other => panic!("claim {n}: {other:?}"),
                    }
                    match i % 10 {
                        // Released instead of completed.
                        9 => assert_eq!(
                            store.release(&k(n), &r.token).await.unwrap(),
                            Fenced::Applied
                        ),
                        _ => {
                            let done = completed(&r, body_of(n));
                            assert_eq!(
                                store
                                    .complete(&k(n), &r.token, &done, Duration::from_secs(3600))
                                    .await
                                    .unwrap(),
                                Fenced::Applied,
                                "completion {n}"
                            );
                            // Another task's claim or completion may have evicted it since;
                            // if it is there, it is the completed record.
                            if let Some(record) = store.get(&k(n)).await.unwrap() {
                                assert!(matches!(record, Record::Completed(_)), "{n}");
                            }
                        }
                    }
                    if i % 13 == 0 {
                        store.delete(&k(n)).await.unwrap();
                    }
                }
                full
            })
        })
        .collect();
    let mut full = 0;
    for task in tasks {
        full += task.await.unwrap();
    }
    assert_eq!(
        full, 0,
        "claims refused although completed records could go"
    );
    assert!(store.evictions() > 0, "the bound was never reached");
    for (key, r) in &held {
        assert!(
            matches!(store.get(key).await.unwrap(), Some(Record::InProgress(ref p)) if p.token == r.token),
            "in-progress {key:?} was evicted"
        );
    }
    assert!(
        store.approximate_bytes() <= MAX,
        "{} > {MAX} at rest",
        store.approximate_bytes()
    );
    for task in 0..4 {
        for i in 0..400 {
            store.delete(&k(task * 1000 + i)).await.unwrap();
        }
    }
    for (key, _) in &held {
        assert!(store.delete(key).await.unwrap());
    }
    assert_eq!(store.len(), 0);
    assert_eq!(store.approximate_bytes(), 0, "bytes not back to 0");
}

/// `max_entries` 1: a completed record makes way for the next claim; an in-progress one does
/// not (`Full`), and completing it past a tiny byte bound keeps it.
#[tokio::test]
async fn max_entries_one() {
    let store = MemoryStore::builder()
        .max_entries(1)
        .max_bytes(1024)
        .build();
    let a = claim_record();
    assert_eq!(
        store
            .try_claim(&k(1), &a, Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Claimed
    );
    let b = claim_record();
    assert!(matches!(
        store.try_claim(&k(2), &b, Duration::from_secs(60)).await,
        Err(StoreError::Full { entries: 1 })
    ));
    // A huge outcome over a 1 KiB bound: stored, the only record.
    assert_eq!(
        store
            .complete(
                &k(1),
                &a.token,
                &completed(&a, 4 << 20),
                Duration::from_secs(60)
            )
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert!(
        matches!(store.get(&k(1)).await.unwrap(), Some(Record::Completed(ref c)) if c.outcome.body.len() == 4 << 20)
    );
    assert_eq!(store.evictions(), 0);
    // The next claim evicts it and fits.
    assert_eq!(
        store
            .try_claim(&k(2), &b, Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(store.evictions(), 1);
    assert_eq!(store.len(), 1);
    assert!(store.get(&k(1)).await.unwrap().is_none());
    store.delete(&k(2)).await.unwrap();
    assert_eq!((store.len(), store.approximate_bytes()), (0, 0));
}

/// A huge body into a tiny store: stored over the bound (evicting every other completed
/// record), then the next claim evicts it and the store is back under the bound.
#[tokio::test]
async fn a_huge_body_in_a_tiny_store() {
    const MAX: usize = 8 * 1024;
    let store = MemoryStore::builder().max_bytes(MAX).build();
    for n in 0..8 {
        let r = claim_record();
        store
            .try_claim(&k(n), &r, Duration::from_secs(60))
            .await
            .unwrap();
        store
            .complete(
                &k(n),
                &r.token,
                &completed(&r, 100),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
    }
    let evictions = store.evictions();
    let r = claim_record();
    store
        .try_claim(&k(100), &r, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store
            .complete(
                &k(100),
                &r.token,
                &completed(&r, 16 << 20),
                Duration::from_secs(60)
            )
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert!(store.get(&k(100)).await.unwrap().is_some());
    assert!(store.evictions() > evictions);
    assert_eq!(store.len(), 1, "every other completed record went");
    let next = claim_record();
    assert_eq!(
        store
            .try_claim(&k(101), &next, Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert!(store.approximate_bytes() <= MAX);
    assert!(store.get(&k(100)).await.unwrap().is_none());
}

/// `max_bytes(0)` built a store that refused every claim (`Full` with 0 entries), while
/// `max_entries(0)` is raised to 1: a bound below `MIN_MAX_BYTES` is raised to it now.
#[tokio::test]
async fn max_bytes_zero_is_not_a_store_that_refuses_everything() {
    for max in [0, 1, 200, idempotency_memory::MIN_MAX_BYTES - 1] {
        let store = MemoryStore::builder().max_bytes(max).build();
        let r = claim_record();
        let claimed = store.try_claim(&k(1), &r, Duration::from_secs(60)).await;
        assert!(
            matches!(claimed, Ok(Claim::Claimed)),
            "max_bytes({max}): {claimed:?}"
        );
        // Still a bound, of 1 KiB.
        assert!(store.approximate_bytes() <= idempotency_memory::MIN_MAX_BYTES);
    }
}
