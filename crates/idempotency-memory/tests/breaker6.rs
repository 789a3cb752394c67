//! breaker6: the slot/hash map and the one-look-up claim under concurrency — claim, complete,
//! release, extend and expiry racing on a multi-thread runtime over thousands of keys, with the
//! capacity bound reached; the entry and byte counters must be exact after the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken, Record,
    StoreError, StoreKey, StoredOutcome, Waited,
};
use idempotency_memory::{ManualClock, MemoryStore};

fn k(n: usize) -> StoreKey {
    StoreKey::from_raw(format!("b6:scope:{n}"))
}

fn fresh() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("b6"),
        created_at_ms: 0,
    }
}

fn done(r: &InProgress, body: usize) -> Completed {
    Completed {
        token: r.token,
        fingerprint: r.fingerprint,
        created_at_ms: 0,
        completed_at_ms: 0,
        outcome: StoredOutcome::new(vec![7u8; body], None),
    }
}

/// xorshift: deterministic per-task choices without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Delete every key the run could have touched: afterwards the counters must be back at zero
/// exactly (any drift in `entries` / `bytes` accounting shows here).
async fn drain(store: &MemoryStore, keys: usize) {
    for n in 0..keys {
        store.delete(&k(n)).await.unwrap();
    }
    assert_eq!(store.len(), 0, "entries counter drifted");
    assert_eq!(store.approximate_bytes(), 0, "bytes counter drifted");
}

async fn mixed_run(
    store: MemoryStore,
    clock: ManualClock,
    (keys, tasks, ops): (usize, usize, usize),
    retention: Duration,
) {
    let full = Arc::new(AtomicUsize::new(0));
    let mut joins = Vec::new();
    for t in 0..tasks {
        let (store, clock, full) = (store.clone(), clock.clone(), full.clone());
        joins.push(tokio::spawn(async move {
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (t as u64 + 1).wrapping_mul(0x1234_5678_9abc);
            for _ in 0..ops {
                let n = (next(&mut rng) % keys as u64) as usize;
                let key = k(n);
                let r = fresh();
                let lease = Duration::from_millis(1 + next(&mut rng) % 40);
                match store.try_claim(&key, &r, lease).await {
                    Ok(Claim::Claimed) => {}
                    Ok(Claim::Existing(Record::InProgress(other))) => {
                        assert_ne!(other.token, r.token);
                        continue;
                    }
                    Ok(Claim::Existing(_)) => continue,
                    Err(StoreError::Full { .. }) => {
                        full.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                }
                if next(&mut rng).is_multiple_of(8) {
                    clock.advance(Duration::from_millis(3));
                }
                if next(&mut rng).is_multiple_of(3) {
                    let _ = store.extend(&key, &r.token, lease).await.unwrap();
                }
                tokio::task::yield_now().await;
                match next(&mut rng) % 4 {
                    0 => {
                        let _ = store.release(&key, &r.token).await.unwrap();
                    }
                    1 => {}
                    _ => {
                        let body = (next(&mut rng) % 300) as usize;
                        let _ = store
                            .complete(&key, &r.token, &done(&r, body), retention)
                            .await
                            .unwrap();
                    }
                }
                // A stale token never wins.
                assert_eq!(
                    store.release(&key, &LeaseToken::generate()).await.unwrap(),
                    Fenced::LeaseLost
                );
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    eprintln!(
        "held {} bytes {} evictions {} full {}",
        store.len(),
        store.approximate_bytes(),
        store.evictions(),
        full.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_exact_after_racing_operations_unbounded() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .sweep_interval(Duration::from_millis(20))
        .build();
    mixed_run(
        store.clone(),
        clock,
        (3000, 8, 4000),
        Duration::from_millis(50),
    )
    .await;
    drain(&store, 3000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_exact_after_racing_operations_on_a_full_store() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_entries(200)
        .max_bytes(200 * 400)
        .sweep_interval(Duration::from_secs(3600))
        .build();
    mixed_run(
        store.clone(),
        clock,
        (3000, 8, 4000),
        Duration::from_secs(3600),
    )
    .await;
    assert!(store.evictions() > 0, "the bound was reached");
    drain(&store, 3000).await;
}

/// In-progress records are never evicted: concurrent claims of distinct keys on a store whose
/// bound is only in-progress records must not hold more than `max_entries`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_do_not_overshoot_max_entries() {
    const MAX: usize = 64;
    let mut worst = 0;
    for round in 0..50 {
        let store = MemoryStore::builder().max_entries(MAX).build();
        let gate = Arc::new(tokio::sync::Barrier::new(16));
        let mut joins = Vec::new();
        for t in 0..16 {
            let (store, gate) = (store.clone(), gate.clone());
            joins.push(tokio::spawn(async move {
                gate.wait().await;
                let mut claimed = 0;
                for i in 0..16 {
                    let key = StoreKey::from_raw(format!("ov:{round}:{t}:{i}"));
                    match store
                        .try_claim(&key, &fresh(), Duration::from_secs(600))
                        .await
                    {
                        Ok(Claim::Claimed) => claimed += 1,
                        Err(StoreError::Full { .. }) => {}
                        other => panic!("{other:?}"),
                    }
                }
                claimed
            }));
        }
        let mut claimed = 0;
        for j in joins {
            claimed += j.await.unwrap();
        }
        assert_eq!(claimed, store.len());
        worst = worst.max(store.len());
    }
    assert!(
        worst <= MAX,
        "{worst} in-progress records held with max_entries({MAX})"
    );
}

/// Takeover of an expired in-progress record on a store full of live in-progress records:
/// the takeover replaces one record by one, so it must succeed, wake the waiter, and leave
/// the counters exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_of_an_expired_claim_on_a_full_store() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_entries(8)
        .sweep_interval(Duration::from_secs(3600))
        .build();
    let first = fresh();
    store
        .try_claim(&k(0), &first, Duration::from_millis(100))
        .await
        .unwrap();
    for n in 1..8 {
        store
            .try_claim(&k(n), &fresh(), Duration::from_secs(600))
            .await
            .unwrap();
    }
    assert!(matches!(
        store
            .try_claim(&k(99), &fresh(), Duration::from_secs(600))
            .await,
        Err(StoreError::Full { .. })
    ));
    // A duplicate waits on key 0 while it is held.
    let waiter = {
        let store = store.clone();
        let token = first.token;
        tokio::spawn(async move {
            store
                .wait_for_change(&k(0), &token, Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    while store.waited_keys() == 0 {
        tokio::task::yield_now().await;
    }
    clock.advance(Duration::from_millis(200));
    let second = fresh();
    assert_eq!(
        store
            .try_claim(&k(0), &second, Duration::from_secs(600))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woken by the takeover")
            .unwrap(),
        Waited::Changed
    );
    assert_eq!(store.len(), 8);
    assert_eq!(
        store.release(&k(0), &first.token).await.unwrap(),
        Fenced::LeaseLost,
        "the expired claim's token no longer releases"
    );
    drain(&store, 100).await;
}

/// Waiting duplicates on many keys, woken by completions and releases racing from other
/// threads: every waiter returns `Changed` and no notification is left registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_on_thousands_of_keys_are_woken() {
    const KEYS: usize = 2000;
    let store = MemoryStore::new();
    let mut held = Vec::new();
    for n in 0..KEYS {
        let r = fresh();
        store
            .try_claim(&k(n), &r, Duration::from_secs(600))
            .await
            .unwrap();
        held.push(r);
    }
    let mut waiters = Vec::new();
    for (n, r) in held.iter().enumerate() {
        for _ in 0..2 {
            let (store, token) = (store.clone(), r.token);
            waiters.push(tokio::spawn(async move {
                store
                    .wait_for_change(&k(n), &token, Duration::from_secs(60))
                    .await
                    .unwrap()
            }));
        }
    }
    let mut writers = Vec::new();
    for (n, r) in held.into_iter().enumerate() {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            tokio::task::yield_now().await;
            if n % 2 == 0 {
                store
                    .complete(&k(n), &r.token, &done(&r, 10), Duration::from_secs(60))
                    .await
                    .unwrap()
            } else {
                store.release(&k(n), &r.token).await.unwrap()
            }
        }));
    }
    for w in writers {
        assert_eq!(w.await.unwrap(), Fenced::Applied);
    }
    for w in waiters {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(20), w)
                .await
                .expect("a waiter was not woken")
                .unwrap(),
            Waited::Changed
        );
    }
    assert_eq!(store.waited_keys(), 0);
    assert_eq!(store.len(), KEYS / 2);
    drain(&store, KEYS).await;
}
