//! breaker4 (issue 15): the own sharded map under a real multi-thread runtime. Many tasks
//! claim, complete, release, extend, delete and read the same and different keys while the
//! injected clock moves and the capacity bound bites; the entry bound must hold (up to one
//! in-flight claim per task), and once everything has expired and been swept the `entries`
//! and `bytes` counters must be back to exactly zero (no drift).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreError,
    StoreKey, StoredOutcome,
};
use idempotency_memory::{ManualClock, MemoryStore};

const TASKS: usize = 8;
const OPS: usize = 4000;
const KEYS: u64 = 3000;
const MAX_ENTRIES: usize = 400;
const MAX_BYTES: usize = 120_000;

/// A small deterministic generator per task (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(n: u64) -> StoreKey {
    // Keys that differ only in their suffix.
    StoreKey::from_raw(format!("idem:scope:{:0>40}", n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_do_not_drift_and_the_bound_holds_under_concurrency() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .max_entries(MAX_ENTRIES)
        .max_bytes(MAX_BYTES)
        .sweep_interval(Duration::from_millis(500))
        .clock(clock.clone())
        .build();
    let max_seen = Arc::new(AtomicUsize::new(0));
    let max_bytes_seen = Arc::new(AtomicUsize::new(0));
    let full = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, clock) = (store.clone(), clock.clone());
        let (max_seen, max_bytes_seen, full) =
            (max_seen.clone(), max_bytes_seen.clone(), full.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678_9abc));
            let mut held: Vec<(StoreKey, LeaseToken)> = Vec::new();
            for i in 0..OPS {
                // Half the tasks share a small hot key range, the others roam.
                let n = if t % 2 == 0 {
                    rng.next() % 16
                } else {
                    rng.next() % KEYS
                };
                let k = key(n);
                match rng.next() % 10 {
                    0..=3 => {
                        let r = InProgress {
                            token: LeaseToken::generate(),
                            fingerprint: Fingerprint::of("x"),
                            created_at_ms: 0,
                        };
                        let lease = Duration::from_millis(100 + rng.next() % 3000);
                        match store.try_claim(&k, &r, lease).await {
                            Ok(Claim::Claimed) => held.push((k, r.token)),
                            Ok(Claim::Existing(_)) => {}
                            Err(StoreError::Full { .. }) => {
                                full.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("claim: {e}"),
                        }
                    }
                    4..=5 => {
                        if let Some((k, token)) = held.pop() {
                            let body = vec![0xA5u8; (rng.next() % 2000) as usize];
                            let done = Completed {
                                token,
                                fingerprint: Fingerprint::of("x"),
                                created_at_ms: 0,
                                completed_at_ms: 0,
                                outcome: StoredOutcome::new(body, None),
                            };
                            let retention = Duration::from_millis(200 + rng.next() % 5000);
                            store.complete(&k, &token, &done, retention).await.unwrap();
                        }
                    }
                    6 => {
                        if let Some((k, token)) = held.pop() {
                            store.release(&k, &token).await.unwrap();
                        }
                    }
                    7 => {
                        if let Some((k, token)) = held.last() {
                            let r = store
                                .extend(k, token, Duration::from_millis(1000))
                                .await
                                .unwrap();
                            assert!(matches!(r, Fenced::Applied | Fenced::LeaseLost));
                        }
                    }
                    8 => {
                        if rng.next().is_multiple_of(4) {
                            store.delete(&k).await.unwrap();
                        } else {
                            let _ = store.get(&k).await.unwrap();
                            let _ = store.time_to_live(&k).await.unwrap();
                        }
                    }
                    _ => {
                        if t == 0 {
                            clock.advance(Duration::from_millis(rng.next() % 50));
                        }
                        if i.is_multiple_of(500) {
                            store.sweep_expired();
                        }
                    }
                }
                max_seen.fetch_max(store.len(), Ordering::Relaxed);
                max_bytes_seen.fetch_max(store.approximate_bytes(), Ordering::Relaxed);
                if i.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let max = max_seen.load(Ordering::Relaxed);
    assert!(
        max <= MAX_ENTRIES + TASKS,
        "entry bound exceeded: {max} > {MAX_ENTRIES} + {TASKS}"
    );
    // Everything expires; after a sweep the counters must be exactly zero.
    clock.advance(Duration::from_secs(3600));
    store.sweep_expired();
    assert_eq!(store.len(), 0, "entries counter drifted");
    assert_eq!(store.approximate_bytes(), 0, "bytes counter drifted");
    eprintln!(
        "max entries seen {max}, max bytes seen {}, full {}, evictions {}",
        max_bytes_seen.load(Ordering::Relaxed),
        full.load(Ordering::Relaxed),
        store.evictions()
    );
}
