//! Capacity bound, eviction order and sweeping of the memory store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken, Record,
    StoreError, StoreKey, StoredOutcome,
};
use idempotency_memory::{ManualClock, MemoryStore};

fn k(n: usize) -> StoreKey {
    StoreKey::from_raw(format!("cap:{n}"))
}

fn claim_record() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 0,
    }
}

async fn claim_and_complete(store: &MemoryStore, n: usize, body: usize) {
    let r = claim_record();
    assert_eq!(
        store
            .try_claim(&k(n), &r, Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Claimed
    );
    let done = Completed {
        token: r.token,
        fingerprint: r.fingerprint,
        created_at_ms: 0,
        completed_at_ms: 0,
        outcome: StoredOutcome::new(vec![0u8; body], None),
    };
    assert_eq!(
        store
            .complete(&k(n), &r.token, &done, Duration::from_secs(3600))
            .await
            .unwrap(),
        Fenced::Applied
    );
}

#[tokio::test]
async fn full_store_evicts_oldest_completed_first() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .max_entries(64)
        .clock(clock.clone())
        .build();
    for n in 0..64 {
        claim_and_complete(&store, n, 10).await;
        clock.advance(Duration::from_millis(10));
    }
    assert_eq!(store.len(), 64);
    claim_and_complete(&store, 1000, 10).await;
    assert!(store.evictions() >= 1);
    assert!(store.len() <= 64);
    assert!(
        store.get(&k(0)).await.unwrap().is_none(),
        "the oldest completed record went first"
    );
    assert!(
        store.get(&k(63)).await.unwrap().is_some(),
        "the newest stayed"
    );
    assert!(store.get(&k(1000)).await.unwrap().is_some());
}

#[tokio::test]
async fn in_progress_records_are_never_evicted() {
    let store = MemoryStore::builder().max_entries(8).build();
    let mut held = Vec::new();
    for n in 0..8 {
        let r = claim_record();
        assert_eq!(
            store
                .try_claim(&k(n), &r, Duration::from_secs(60))
                .await
                .unwrap(),
            Claim::Claimed
        );
        held.push(r);
    }
    let refused = store
        .try_claim(&k(99), &claim_record(), Duration::from_secs(60))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Full { entries: 8 })),
        "{refused:?}"
    );
    for (n, r) in held.iter().enumerate() {
        assert!(
            matches!(store.try_claim(&k(n), &claim_record(), Duration::from_secs(60)).await.unwrap(),
            Claim::Existing(rec) if *rec.token() == r.token)
        );
    }
    assert_eq!(store.evictions(), 0);
    // Releasing one makes room again.
    assert_eq!(
        store.release(&k(0), &held[0].token).await.unwrap(),
        Fenced::Applied
    );
    assert_eq!(
        store
            .try_claim(&k(99), &claim_record(), Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Claimed
    );
}

#[tokio::test]
async fn expired_records_are_reclaimed_before_evicting() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .max_entries(4)
        .clock(clock.clone())
        .build();
    for n in 0..4 {
        store
            .try_claim(&k(n), &claim_record(), Duration::from_secs(1))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        store
            .try_claim(&k(10), &claim_record(), Duration::from_secs(1))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(store.len(), 1);
    assert_eq!(store.evictions(), 0);
}

#[tokio::test]
async fn byte_bound_evicts_large_outcomes() {
    let store = MemoryStore::builder().max_bytes(64 * 1024).build();
    for n in 0..6 {
        claim_and_complete(&store, n, 16 * 1024).await;
    }
    assert!(
        store.approximate_bytes() <= 64 * 1024 + 16 * 1024 + 1024,
        "{}",
        store.approximate_bytes()
    );
    assert!(store.evictions() >= 2);
}

#[tokio::test]
async fn amortised_sweep_removes_dead_records() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .sweep_interval(Duration::from_secs(5))
        .clock(clock.clone())
        .build();
    for n in 0..100 {
        store
            .try_claim(&k(n), &claim_record(), Duration::from_secs(1))
            .await
            .unwrap();
    }
    assert_eq!(store.len(), 100);
    clock.advance(Duration::from_secs(6));
    store
        .try_claim(&k(1000), &claim_record(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.len(),
        1,
        "the claim that noticed the interval swept the dead records"
    );
    assert_eq!(store.sweep_expired(), 0);
    assert!(store.approximate_bytes() < 1024);
}

#[tokio::test]
async fn initial_capacity_keeps_the_bound() {
    // Room made up front for more records than the bound allows: the bound still decides.
    let store = MemoryStore::builder()
        .max_entries(32)
        .initial_capacity(1_000)
        .build();
    for n in 0..64 {
        claim_and_complete(&store, n, 10).await;
    }
    assert!(store.len() <= 32, "held {}", store.len());
    assert!(store.evictions() >= 32);
    // And every record the store holds is still found.
    let mut held = 0;
    for n in 0..64 {
        if store.get(&k(n)).await.unwrap().is_some() {
            held += 1;
        }
    }
    assert_eq!(held, store.len());
}

#[tokio::test]
async fn a_takeover_on_a_full_store_makes_room_first_and_stays_within_the_bound() {
    // The claim looks its key up once, under the shard's write lock: an expired record there
    // is taken over only when the bound leaves room, else room is made (here: the expired
    // records are swept, the key's own among them) and the key is looked up again.
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .max_entries(2)
        .sweep_interval(Duration::from_secs(3600))
        .clock(clock.clone())
        .build();
    for n in 0..2 {
        store
            .try_claim(&k(n), &claim_record(), Duration::from_secs(1))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(2));
    let again = claim_record();
    assert_eq!(
        store
            .try_claim(&k(0), &again, Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(store.len(), 1, "the other expired record was swept");
    assert_eq!(store.evictions(), 0);
    // The new claim holds the key: a second claimer finds it, room or not.
    store
        .try_claim(&k(1), &claim_record(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(
        store.try_claim(&k(0), &claim_record(), Duration::from_secs(60)).await.unwrap(),
        Claim::Existing(rec) if *rec.token() == again.token
    ));
    assert!(matches!(
        store
            .try_claim(&k(2), &claim_record(), Duration::from_secs(60))
            .await,
        Err(StoreError::Full { entries: 2 })
    ));
}

/// A completion that takes the bytes held past `max_bytes` restores the bound at once, by
/// evicting other completed records oldest first, never the outcome it just stored (before,
/// the bytes stayed over the bound until the next claim).
#[tokio::test]
async fn a_completion_past_the_byte_bound_evicts_older_outcomes_at_once_never_its_own() {
    const MAX: usize = 64 * 1024;
    for body in [8 * 1024, 20 * 1024, 40 * 1024] {
        let store = MemoryStore::builder().max_bytes(MAX).build();
        // Claims first (small records: they fit), then completions: the bytes grow on the
        // completions alone, no claim comes after them to restore the bound.
        let keys = 12;
        let claims: Vec<_> = (0..keys)
            .map(|n| {
                let r = claim_record();
                (n, r)
            })
            .collect();
        for (n, r) in &claims {
            assert_eq!(
                store
                    .try_claim(&k(*n), r, Duration::from_secs(60))
                    .await
                    .unwrap(),
                Claim::Claimed
            );
        }
        let mut evictions_seen = 0;
        for (n, r) in &claims {
            let done = Completed {
                token: r.token,
                fingerprint: r.fingerprint,
                created_at_ms: 0,
                completed_at_ms: 0,
                outcome: StoredOutcome::new(vec![*n as u8; body], None),
            };
            assert_eq!(
                store
                    .complete(
                        &k(*n),
                        &r.token,
                        &done,
                        Duration::from_secs(3600 + *n as u64)
                    )
                    .await
                    .unwrap(),
                Fenced::Applied,
                "body {body}, key {n}: a completion is never refused for size"
            );
            assert!(
                matches!(store.get(&k(*n)).await.unwrap(), Some(Record::Completed(ref c)) if c.outcome.body.len() == body),
                "body {body}, key {n}: the outcome just stored is kept"
            );
            if store.evictions() > evictions_seen {
                evictions_seen = store.evictions();
                assert!(
                    store.approximate_bytes() <= MAX,
                    "body {body}, key {n}: evicted, yet {} > {MAX}",
                    store.approximate_bytes()
                );
            }
        }
        // Enough outcomes to pass the bound several times over: it was restored each time.
        assert!(store.evictions() > 0, "body {body}: nothing evicted");
        assert!(
            store.approximate_bytes() <= MAX,
            "body {body}: {} > {MAX} after the last completion",
            store.approximate_bytes()
        );
        // The evicted ones are the oldest completed: the last completed key survives, and
        // every key still held is newer than every key evicted.
        let held: Vec<bool> = {
            let mut held = Vec::new();
            for n in 0..keys {
                held.push(store.get(&k(n)).await.unwrap().is_some());
            }
            held
        };
        assert!(held[keys - 1], "body {body}: {held:?}");
        let first_held = held.iter().position(|h| *h).unwrap();
        assert!(
            held[first_held..].iter().all(|h| *h),
            "body {body}: evicted out of order {held:?}"
        );
    }
}

/// When nothing else can go (the other records are in progress), the outcome is still
/// stored and kept, over the bound: refusing it would let a retry run the operation again.
#[tokio::test]
async fn a_completion_past_the_byte_bound_with_nothing_to_evict_is_still_stored() {
    let store = MemoryStore::builder().max_bytes(16 * 1024).build();
    let held = claim_record();
    store
        .try_claim(&k(1), &held, Duration::from_secs(60))
        .await
        .unwrap();
    let r = claim_record();
    store
        .try_claim(&k(2), &r, Duration::from_secs(60))
        .await
        .unwrap();
    let done = Completed {
        token: r.token,
        fingerprint: r.fingerprint,
        created_at_ms: 0,
        completed_at_ms: 0,
        outcome: StoredOutcome::new(vec![7u8; 32 * 1024], None),
    };
    assert_eq!(
        store
            .complete(&k(2), &r.token, &done, Duration::from_secs(3600))
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert_eq!(
        store.get(&k(2)).await.unwrap(),
        Some(Record::Completed(done))
    );
    assert!(matches!(
        store.get(&k(1)).await.unwrap(),
        Some(Record::InProgress(_))
    ));
    assert_eq!(store.evictions(), 0);
    assert!(store.approximate_bytes() > 16 * 1024);
}

/// A store that reaches its byte bound long before its entry bound evicts a part of what it
/// holds, not all of it: batches are a sixteenth of the records held (a sixteenth of
/// `max_entries`, 62 500 by default, emptied such a store at each eviction).
#[tokio::test]
async fn the_byte_bound_evicts_a_part_of_what_is_held_not_everything() {
    const MAX: usize = 100 * 1024;
    let store = MemoryStore::builder().max_bytes(MAX).build();
    for n in 0..400 {
        claim_and_complete(&store, n, 1024).await;
        // Once the bound has been reached, the store stays near it: never emptied.
        if store.evictions() > 0 {
            assert!(
                store.approximate_bytes() >= MAX / 2,
                "after key {n}: {} bytes, {} records held",
                store.approximate_bytes(),
                store.len()
            );
        }
        assert!(store.approximate_bytes() <= MAX, "after key {n}");
    }
    assert!(store.evictions() > 0);
    // The newest records are the ones held.
    assert!(store.get(&k(399)).await.unwrap().is_some());
    assert!(store.get(&k(0)).await.unwrap().is_none());
}
