//! Capacity bound, eviction order and sweeping of the memory store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreError,
    StoreKey, StoredOutcome,
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
