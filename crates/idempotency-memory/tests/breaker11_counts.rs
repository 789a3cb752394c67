//! breaker11 (issue 15): the store's counts moved into one `CachePadded<Counts>`. Under
//! concurrent claims, completions, releases, deletes, sweeps and evictions on a multi-thread
//! runtime, `len()` never exceeds `max_entries`, `approximate_bytes()` never exceeds
//! `max_bytes` by more than the completions in flight (a completion is never refused for size:
//! one past the bound evicts other completed records right after it is stored, so a sample
//! taken in between may see it over), and once every
//! key is deleted both are exactly 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreError, StoreKey,
    StoredOutcome, unix_millis_now,
};
use idempotency_memory::MemoryStore;

const MAX_ENTRIES: usize = 48;
const MAX_BYTES: usize = 48 * 1024;
const KEYS: usize = 200;
const WORKERS: usize = 8;

fn key(i: usize) -> StoreKey {
    StoreKey::from_raw(format!("b11:{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker11_bounds_hold_and_counts_return_to_zero_under_concurrency() {
    let store = MemoryStore::builder()
        .max_entries(MAX_ENTRIES)
        .max_bytes(MAX_BYTES)
        .sweep_interval(Duration::from_millis(1))
        .build();
    let stop = Arc::new(AtomicBool::new(false));
    // A watcher samples the counts the whole time.
    let watcher = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                assert!(store.len() <= MAX_ENTRIES, "len {}", store.len());
                // A completion may take the bytes over the bound until it has evicted
                // others (crate docs): by at most one body per worker in flight.
                assert!(
                    store.approximate_bytes() <= MAX_BYTES + WORKERS * 4096,
                    "bytes {}",
                    store.approximate_bytes()
                );
                samples += 1;
                tokio::task::yield_now().await;
            }
            samples
        })
    };
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut full = 0u64;
            for round in 0..400usize {
                let i = (w * 7919 + round * 31) % KEYS;
                let k = key(i);
                let claim = InProgress {
                    token: LeaseToken::generate(),
                    fingerprint: Fingerprint::of("r"),
                    created_at_ms: unix_millis_now(),
                };
                // Short leases on some: the sweep removes them.
                let lease = if round % 5 == 0 {
                    Duration::from_millis(1)
                } else {
                    Duration::from_secs(30)
                };
                match store.try_claim(&k, &claim, lease).await {
                    Ok(Claim::Claimed) => {}
                    Ok(Claim::Existing(_)) => {
                        if round % 3 == 0 {
                            let _ = store.delete(&k).await.unwrap();
                        }
                        continue;
                    }
                    Err(StoreError::Full { .. }) => {
                        full += 1;
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                }
                match round % 4 {
                    0 => {
                        store.release(&k, &claim.token).await.unwrap();
                    }
                    1 => {
                        let _ = store.delete(&k).await.unwrap();
                    }
                    _ => {
                        let body = vec![b'x'; (round * 97) % 3000];
                        let done = Completed {
                            token: claim.token,
                            fingerprint: claim.fingerprint,
                            created_at_ms: claim.created_at_ms,
                            completed_at_ms: unix_millis_now(),
                            outcome: StoredOutcome::new(body, Some("text/plain".into())),
                        };
                        let retention = if round % 6 == 2 {
                            Duration::from_millis(1)
                        } else {
                            Duration::from_secs(30)
                        };
                        let _ = store
                            .complete(&k, &claim.token, &done, retention)
                            .await
                            .unwrap();
                    }
                }
                if round % 50 == 0 {
                    let _ = store.sweep_expired();
                }
            }
            full
        }));
    }
    let mut full = 0;
    for w in workers {
        full += w.await.unwrap();
    }
    eprintln!("full answers {full}, evictions {}", store.evictions());
    // The bounds were actually pressed.
    assert!(full + store.evictions() > 0);
    stop.store(true, Ordering::Relaxed);
    assert!(watcher.await.unwrap() > 0);
    for i in 0..KEYS {
        let _ = store.delete(&key(i)).await.unwrap();
    }
    assert_eq!(store.len(), 0, "entries after deleting every key");
    assert_eq!(
        store.approximate_bytes(),
        0,
        "bytes after deleting every key"
    );
}
