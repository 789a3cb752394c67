//! breaker22: attacks on "the sweep wakes the waiters of lapsed claims" (commit 1cf1e1a) under
//! a real multi-thread runtime, several deterministic seeds. A lost wake-up shows as a waiter
//! answering `TimedOut` (its 30 s bound) instead of `Changed`; a double run as two `Run`s of
//! one key. No timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_core::{
    Begin, Claim, Completed, Fenced, Fingerprint, Idempotency, IdempotencyKey, IdempotencyStore,
    InProgress, LeaseToken, Scope, StoreKey, StoredOutcome, Waited,
};
use idempotency_memory::{ManualClock, MemoryStore};

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const SEEDS: [u64; 4] = [0x9e37_79b9, 7, 0xdead_beef, 12_345];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn claim(n: u64) -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("a"),
        created_at_ms: n,
    }
}

fn store_key(n: u64) -> StoreKey {
    // Long keys too (past the map's inline size), and non-ASCII ones.
    match n % 3 {
        0 => StoreKey::from_raw(format!("k{n}")),
        1 => StoreKey::from_raw(format!("idem:scope:{:0>80}", n)),
        _ => StoreKey::from_raw(format!("clé-{n}-ü")),
    }
}

/// Many waiters on many lapsed keys, one sweep pass, while other threads claim the same keys
/// (taking them at once after the removal), complete some with the lapsed token (refused) and
/// claim unrelated keys (their amortised sweeps race the explicit one). Every waiter must be
/// woken (`Changed`), and the waited keys must go back to zero.
#[test]
fn breaker22_one_sweep_wakes_every_waiter_of_many_lapsed_keys_under_racing_claims() {
    const KEYS: u64 = 96;
    const WAITERS: usize = 4;
    for seed in SEEDS {
        let rt = runtime();
        rt.block_on(async move {
            let clock = ManualClock::new();
            let store = MemoryStore::builder()
                .clock(clock.clone())
                .sweep_interval(Duration::from_millis(500))
                .build();
            let mut tokens = Vec::new();
            for n in 0..KEYS {
                let c = claim(n);
                let claimed = store
                    .try_claim(&store_key(n), &c, Duration::from_secs(1))
                    .await;
                assert_eq!(claimed.unwrap(), Claim::Claimed);
                tokens.push(c.token);
            }
            let mut waiters = Vec::new();
            for (n, token) in tokens.iter().enumerate() {
                for _ in 0..WAITERS {
                    let (store, k, token) = (store.clone(), store_key(n as u64), *token);
                    waiters.push(tokio::spawn(async move {
                        store
                            .wait_for_change(&k, &token, Duration::from_secs(30))
                            .await
                    }));
                }
            }
            while store.waited_keys() < KEYS as usize {
                tokio::task::yield_now().await;
            }
            clock.advance(Duration::from_secs(2));
            let mut rng = Rng(seed);
            let mut racers = Vec::new();
            // The explicit sweep.
            racers.push(tokio::spawn({
                let store = store.clone();
                async move {
                    store.sweep_expired();
                }
            }));
            // Claims of the lapsed keys (takeover or insert into the slot the sweep vacated),
            // lapsed completions, and claims of other keys.
            for i in 0..64u64 {
                let store = store.clone();
                let pick = rng.next() % KEYS;
                let what = rng.next() % 3;
                let token = tokens[pick as usize];
                racers.push(tokio::spawn(async move {
                    match what {
                        0 => {
                            let c = claim(1000 + i);
                            let _ = store
                                .try_claim(&store_key(pick), &c, Duration::from_secs(60))
                                .await
                                .unwrap();
                        }
                        1 => {
                            let done = Completed {
                                token,
                                fingerprint: Fingerprint::of("a"),
                                created_at_ms: 0,
                                completed_at_ms: 0,
                                outcome: StoredOutcome::new("late", None),
                            };
                            let fenced = store
                                .complete(&store_key(pick), &token, &done, Duration::from_secs(60))
                                .await
                                .unwrap();
                            assert_eq!(fenced, Fenced::LeaseLost, "the lease lapsed");
                        }
                        _ => {
                            let c = claim(2000 + i);
                            let other = StoreKey::from_raw(format!("other-{i}"));
                            let _ = store
                                .try_claim(&other, &c, Duration::from_secs(60))
                                .await
                                .unwrap();
                        }
                    }
                }));
            }
            for racer in racers {
                racer.await.unwrap();
            }
            for (i, waiter) in waiters.into_iter().enumerate() {
                let waited = waiter.await.unwrap().unwrap();
                assert_eq!(waited, Waited::Changed, "seed {seed:#x}, waiter {i}");
            }
            assert_eq!(store.waited_keys(), 0, "seed {seed:#x}");
        });
    }
}

fn idem_key(n: u64) -> IdempotencyKey {
    IdempotencyKey::new(format!("key-{n}")).unwrap()
}

/// Through the engine: every key's owner died; several duplicates per key wait; the sweep
/// removes the lapsed claims while more duplicates arrive. Per key exactly one duplicate runs
/// (and completes); every other one replays its outcome. None answers "in progress" (the
/// wait is 30 s, far longer than the test), none runs twice.
#[test]
fn breaker22_duplicates_of_dead_owners_run_once_per_key_after_the_sweep() {
    const KEYS: u64 = 48;
    const DUPLICATES: u64 = 5;
    for seed in SEEDS {
        let rt = runtime();
        rt.block_on(async move {
            let clock = ManualClock::new();
            let store = MemoryStore::builder()
                .clock(clock.clone())
                .sweep_interval(Duration::from_secs(3600))
                .build();
            let engine = Idempotency::builder(store.clone())
                .lease(Duration::from_secs(5))
                .wait_for_in_progress(Duration::from_secs(30), Duration::from_secs(10))
                .renew_leases(false)
                .ignore_env()
                .build()
                .unwrap();
            let mut dead = Vec::new();
            for n in 0..KEYS {
                let Begin::Run(guard) = engine
                    .begin(&Scope::global(), &idem_key(n), Fingerprint::of("a"))
                    .await
                    .unwrap()
                else {
                    panic!("first attempt runs")
                };
                dead.push(guard);
            }
            let runs: Arc<Vec<AtomicUsize>> =
                Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
            let spawn_duplicate = |n: u64, id: u64| {
                let (engine, runs) = (engine.clone(), Arc::clone(&runs));
                tokio::spawn(async move {
                    let begun = engine
                        .begin(&Scope::global(), &idem_key(n), Fingerprint::of("a"))
                        .await;
                    match begun {
                        Ok(Begin::Run(guard)) => {
                            runs[n as usize].fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            guard
                                .complete(StoredOutcome::new(format!("by {id}"), None))
                                .await
                                .unwrap();
                            None
                        }
                        Ok(Begin::Replay(outcome)) => Some(outcome.body.to_vec()),
                        Err(error) => panic!("seed {seed:#x}, key {n}, dup {id}: {error:?}"),
                    }
                })
            };
            let mut duplicates = Vec::new();
            for n in 0..KEYS {
                for id in 0..DUPLICATES {
                    duplicates.push((n, spawn_duplicate(n, id)));
                }
            }
            while store.waited_keys() < KEYS as usize {
                tokio::task::yield_now().await;
            }
            clock.advance(Duration::from_secs(6));
            let sweeper = tokio::spawn({
                let store = store.clone();
                async move { store.sweep_expired() }
            });
            // Late duplicates race the sweep.
            let mut rng = Rng(seed);
            for id in 100..120 {
                let n = rng.next() % KEYS;
                duplicates.push((n, spawn_duplicate(n, id)));
            }
            sweeper.await.unwrap();
            let mut replays = 0;
            for (n, duplicate) in duplicates {
                if let Some(body) = duplicate.await.unwrap() {
                    assert!(body.starts_with(b"by "), "key {n}: {body:?}");
                    replays += 1;
                }
            }
            for (n, count) in runs.iter().enumerate() {
                assert_eq!(
                    count.load(Ordering::SeqCst),
                    1,
                    "seed {seed:#x}: key {n} runs"
                );
            }
            assert_eq!(replays, KEYS * DUPLICATES + 20 - KEYS, "seed {seed:#x}");
            assert_eq!(store.waited_keys(), 0, "seed {seed:#x}");
            drop(dead);
        });
    }
}

/// A waiter woken by the sweep while another claimant takes the key at once (before the
/// waiter's re-read): the waiter must not run; it waits again for the new claim and, that
/// one never finishing, answers "in progress" at its deadline; then, the new claimant
/// completing, a later duplicate replays. On the paused clock; the store clock injected.
#[tokio::test(start_paused = true)]
async fn breaker22_a_waiter_woken_by_the_sweep_loses_the_key_to_a_claimant_and_waits_again() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .sweep_interval(Duration::from_secs(3600))
        .build();
    let engine = Idempotency::builder(store.clone())
        .lease(Duration::from_secs(5))
        .wait_for_in_progress(Duration::from_secs(3), Duration::from_secs(10))
        .renew_leases(false)
        .ignore_env()
        .build()
        .unwrap();
    let Begin::Run(dead) = engine
        .begin(&Scope::global(), &idem_key(1), Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("first attempt runs")
    };
    let started = tokio::time::Instant::now();
    let waiter = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .begin(&Scope::global(), &idem_key(1), Fingerprint::of("a"))
                .await
        }
    });
    while store.waited_keys() == 0 {
        tokio::task::yield_now().await;
    }
    clock.advance(Duration::from_secs(6));
    // The sweep and the claimant's claim, with no yield between: the waiter is woken but has
    // not re-read yet.
    assert_eq!(store.sweep_expired(), 1);
    let Begin::Run(claimant) = engine
        .begin(&Scope::global(), &idem_key(1), Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("the swept key is free: the claimant runs")
    };
    let err = match waiter.await.unwrap() {
        Err(err) => err,
        Ok(Begin::Run(_)) => panic!("double run: the woken waiter ran beside the claimant"),
        Ok(Begin::Replay(_)) => panic!("nothing completed yet"),
    };
    assert!(
        matches!(err, idempotency_core::IdempotencyError::InProgress { .. }),
        "{err:?}"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(3),
        "waited to its deadline"
    );
    assert_eq!(store.waited_keys(), 0);
    claimant
        .complete(StoredOutcome::new("claimant", None))
        .await
        .unwrap();
    match engine
        .begin(&Scope::global(), &idem_key(1), Fingerprint::of("a"))
        .await
        .unwrap()
    {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"claimant"),
        Begin::Run(_) => panic!("must replay"),
    }
    drop(dead);
}
