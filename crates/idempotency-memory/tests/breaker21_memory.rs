//! breaker21: the memory store after d3597ea (a claim's `make_room` counts the claim in at
//! once; the second look-up inserts without a check, undoing the count when the key was claimed
//! live meanwhile) and 744beb5 (a completion reads whether anyone waits under its shard lock,
//! no fence). Stress on real threads (2 cores here): mixed claims (same keys from several
//! threads, keys of many lengths), completions with big bodies, releases, deletes, expiry on a
//! `ManualClock` and takeovers, against the entries bound and against the byte bound.
//! Invariants: the entries bound is never exceeded, `Full` is never answered while few records
//! are in progress, a live in-progress record is never lost, counts back to exactly 0 after
//! every key is deleted; and no waiter misses a wake-up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use futures::executor::block_on;
use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreError,
    StoreKey, StoredOutcome, Waited,
};
use idempotency_memory::{Clock, ManualClock, MemoryStore};

/// xorshift64*: deterministic per thread, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const KEYS: usize = 48;

/// Key `n`: lengths from 3 to ~300 bytes (inline and boxed in the map, spread over shards).
fn key(n: usize) -> StoreKey {
    let pad = match n % 4 {
        0 => 0,
        1 => 20,
        2 => 70,
        _ => 280,
    };
    StoreKey::from_raw(format!("b21:{n}:{}", "x".repeat(pad)))
}

fn in_progress() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 0,
    }
}

fn done(claim: &InProgress, body: usize) -> Completed {
    Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: 0,
        completed_at_ms: 0,
        outcome: StoredOutcome::new(vec![7u8; body], None),
    }
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    Entries(usize),
    Bytes(usize),
}

/// One thread's claim it has not finished yet.
struct Mine {
    n: usize,
    claim: InProgress,
    /// The clock before the claim: the lease ends no sooner than this plus the lease.
    claimed_before_ms: u64,
    /// The clock after the claim: the lease ends no later than this plus the lease.
    claimed_after_ms: u64,
    lease_ms: u64,
    /// The key's delete count before the claim (odd: a delete was running; a delete by another
    /// thread takes the claim away).
    deletes: u64,
}

/// Four threads x 2500 operations on 48 shared keys. A thread holds at most 2 unfinished
/// claims (its own, and the ones it let lapse while their lease may still run), so at most 8
/// live in-progress records exist: far under either bound, so `Full` is
/// never a right answer (completed or expired records can always go).
fn run_mixed(bound: Bound, seed: u64) {
    const THREADS: usize = 4;
    const OPS: usize = 2500;
    let clock = ManualClock::new();
    let builder = MemoryStore::builder()
        .clock(clock.clone())
        .sweep_interval(Duration::from_millis(40));
    let store = match bound {
        Bound::Entries(max) => builder.max_entries(max),
        Bound::Bytes(max) => builder.max_bytes(max),
    }
    .build();
    let deletes: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let full = Arc::new(AtomicUsize::new(0));
    let over_entries = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, clock, deletes, full, over_entries, start) = (
                store.clone(),
                clock.clone(),
                Arc::clone(&deletes),
                Arc::clone(&full),
                Arc::clone(&over_entries),
                Arc::clone(&start),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(t as u64 + 1)));
                let mut mine: Vec<Mine> = Vec::new();
                // Claims let lapse: live (at most) until these instants of the clock.
                let mut forgotten: Vec<u64> = Vec::new();
                start.wait();
                for op in 0..OPS {
                    // The clock moves only between phases of 20 operations, all threads
                    // stopped: a claim's clock reading is then the clock of every operation
                    // it races with (a record that lapsed after a claim read the clock is, to
                    // that claim, in progress: not a wrong `Full`).
                    if op % 20 == 0 {
                        start.wait();
                        if t == 0 {
                            clock.advance(Duration::from_millis(rng.below(12)));
                        }
                        start.wait();
                    }
                    let now = clock.now_ms();
                    forgotten.retain(|&until| until > now);
                    let unfinished = mine.len() + forgotten.len();
                    match rng.below(10) {
                        // Claim (two threads often want the same key).
                        0..=3 if unfinished < 2 => {
                            let n = rng.below(KEYS as u64) as usize;
                            let claim = in_progress();
                            let lease_ms = 5 + rng.below(40);
                            let claimed_before_ms = clock.now_ms();
                            let dels = deletes[n].load(Ordering::SeqCst);
                            let answer = store.try_claim_now(
                                &key(n),
                                &claim,
                                Duration::from_millis(lease_ms),
                                tokio::time::Instant::now().into_std(),
                            );
                            match answer.unwrap() {
                                Ok(Claim::Claimed) => mine.push(Mine {
                                    n,
                                    claim,
                                    claimed_before_ms,
                                    claimed_after_ms: clock.now_ms(),
                                    lease_ms,
                                    deletes: dels,
                                }),
                                Ok(Claim::Existing(_)) => {}
                                Err(StoreError::Full { .. }) => {
                                    full.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(other) => panic!("claim: {other}"),
                            }
                        }
                        // Finish one of mine: mostly complete (big bodies sometimes), else
                        // release, or forget it (it lapses: a later claim takes it over).
                        0..=6 if !mine.is_empty() => {
                            let i = rng.below(mine.len() as u64) as usize;
                            let m = mine.swap_remove(i);
                            let how = rng.below(10);
                            let answer = match how {
                                0 => {
                                    // Live until no later than the clock after the claim
                                    // plus the lease: counted as unfinished until then.
                                    forgotten.push(m.claimed_after_ms + m.lease_ms + 1);
                                    continue;
                                }
                                1 | 2 => block_on(store.release(&key(m.n), &m.claim.token)),
                                _ => {
                                    let body = match rng.below(6) {
                                        0 => 4000 + rng.below(2000) as usize,
                                        1 => 1500,
                                        _ => rng.below(200) as usize,
                                    };
                                    store
                                        .complete_now(
                                            &key(m.n),
                                            &m.claim.token,
                                            &done(&m.claim, body),
                                            Duration::from_millis(10 + rng.below(200)),
                                            tokio::time::Instant::now().into_std(),
                                        )
                                        .unwrap()
                                }
                            }
                            .unwrap();
                            let after = clock.now_ms();
                            if answer == Fenced::LeaseLost {
                                let expired = after >= m.claimed_before_ms + m.lease_ms;
                                let deleted = m.deletes % 2 == 1
                                    || deletes[m.n].load(Ordering::SeqCst) != m.deletes;
                                assert!(
                                    expired || deleted,
                                    "{bound:?}: a live in-progress record of key {} was lost \
                                     (claimed at >= {} ms, lease {} ms, now {after} ms)",
                                    m.n,
                                    m.claimed_before_ms,
                                    m.lease_ms
                                );
                            }
                        }
                        7 => {
                            let n = rng.below(KEYS as u64) as usize;
                            // Counted before and after: odd while a delete may be running.
                            deletes[n].fetch_add(1, Ordering::SeqCst);
                            block_on(store.delete(&key(n))).unwrap();
                            deletes[n].fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            let n = rng.below(KEYS as u64) as usize;
                            block_on(store.get(&key(n))).unwrap();
                        }
                    }
                    if let Bound::Entries(max) = bound
                        && store.len() > max
                    {
                        over_entries.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(
        over_entries.load(Ordering::SeqCst),
        0,
        "{bound:?}: the entries bound was exceeded"
    );
    assert_eq!(
        full.load(Ordering::SeqCst),
        0,
        "{bound:?}: claims refused Full with at most 8 records in progress"
    );
    assert!(
        store.evictions() > 0,
        "{bound:?}: the bound was never reached"
    );
    if let Bound::Bytes(max) = bound {
        // At rest: every completion restored the bound (a completed record, at most ~6.6 KB,
        // and 8 records in progress, ~0.5 KB each, fit: there is always something to evict
        // while over it).
        assert!(
            store.approximate_bytes() <= max,
            "{bound:?}: {} bytes at rest",
            store.approximate_bytes()
        );
    }
    for n in 0..KEYS {
        block_on(store.delete(&key(n))).unwrap();
    }
    assert_eq!(
        (store.len(), store.approximate_bytes()),
        (0, 0),
        "{bound:?}: counts not back to 0 after every key was deleted"
    );
    assert_eq!(store.waited_keys(), 0);
}

#[test]
fn breaker21_mixed_concurrent_ops_hold_the_entries_bound_and_account_back_to_zero() {
    for seed in 1..=40 {
        run_mixed(Bound::Entries(12), seed);
    }
}

#[test]
fn breaker21_mixed_concurrent_ops_hold_the_byte_bound_and_account_back_to_zero() {
    for seed in 1..=40 {
        run_mixed(Bound::Bytes(16 * 1024), seed);
    }
}

/// How a waited-on in-progress record changes.
#[derive(Debug, Clone, Copy)]
enum Change {
    Complete,
    Release,
    Delete,
    /// Lease expired (the clock moves) and another claim takes the key over.
    Takeover,
}

/// A duplicate starts waiting while the record changes on another thread (the completion's
/// no-fence read of `waiting` under its shard lock, and the other writers' fence): every
/// wait must end `Changed` at once, never by its 10 s timeout. 4 x 1500 rounds.
#[test]
fn breaker21_a_waiter_racing_a_change_is_never_left_waiting() {
    const ROUNDS: usize = 5000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for change in [
        Change::Complete,
        Change::Release,
        Change::Delete,
        Change::Takeover,
    ] {
        let clock = ManualClock::new();
        // Full at 2 records: a takeover sometimes goes through `make_room`.
        // No amortised sweep in the way: a sweep of the lapsed record before the takeover
        // would do the waking (a sweep wakes the waiters of the in-progress records it
        // removes) and make the takeover a plain new claim: the takeover's own wake-up would
        // go untested.
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .max_entries(2)
            .sweep_interval(Duration::from_secs(1 << 30))
            .build();
        let k = StoreKey::from_raw("b21:waited");
        let writer_go = Arc::new(Barrier::new(2));
        let writer = {
            let (store, clock, writer_go, k) = (
                store.clone(),
                clock.clone(),
                Arc::clone(&writer_go),
                k.clone(),
            );
            std::thread::spawn(move || {
                let mut spins = 0u64;
                for round in 0..ROUNDS {
                    writer_go.wait(); // the claim is in: change it
                    let claim = block_on(store.get(&k)).unwrap();
                    let Some(idempotency_core::Record::InProgress(claim)) = claim else {
                        panic!("round {round}: no claim");
                    };
                    // Vary the moment of the change against the waiter's registration.
                    for _ in 0..(round % 64) {
                        spins = spins.wrapping_add(1);
                        std::hint::spin_loop();
                    }
                    match change {
                        Change::Complete => {
                            let fenced = store
                                .complete_now(
                                    &k,
                                    &claim.token,
                                    &done(&claim, 10),
                                    Duration::from_secs(60),
                                    tokio::time::Instant::now().into_std(),
                                )
                                .unwrap()
                                .unwrap();
                            assert_eq!(fenced, Fenced::Applied);
                        }
                        Change::Release => {
                            assert_eq!(
                                block_on(store.release(&k, &claim.token)).unwrap(),
                                Fenced::Applied
                            );
                        }
                        Change::Delete => assert!(block_on(store.delete(&k)).unwrap()),
                        Change::Takeover => {
                            clock.advance(Duration::from_millis(1000));
                            let other = store
                                .try_claim_now(
                                    &k,
                                    &in_progress(),
                                    Duration::from_secs(60),
                                    tokio::time::Instant::now().into_std(),
                                )
                                .unwrap()
                                .unwrap();
                            assert_eq!(other, Claim::Claimed);
                        }
                    }
                    writer_go.wait(); // changed
                }
                spins
            })
        };
        let mut slow = 0;
        for round in 0..ROUNDS {
            // A fresh in-progress record (the filler keeps the store at its bound).
            block_on(store.delete(&k)).unwrap();
            let filler = StoreKey::from_raw("b21:filler");
            if round == 0 {
                let f = in_progress();
                store
                    .try_claim_now(
                        &filler,
                        &f,
                        Duration::from_secs(1),
                        tokio::time::Instant::now().into_std(),
                    )
                    .unwrap()
                    .unwrap();
                store
                    .complete_now(
                        &filler,
                        &f.token,
                        &done(&f, 0),
                        Duration::from_secs(1 << 30),
                        tokio::time::Instant::now().into_std(),
                    )
                    .unwrap()
                    .unwrap();
            }
            let claim = in_progress();
            assert_eq!(
                store
                    .try_claim_now(
                        &k,
                        &claim,
                        Duration::from_millis(500),
                        tokio::time::Instant::now().into_std()
                    )
                    .unwrap()
                    .unwrap(),
                Claim::Claimed,
                "{change:?} round {round}"
            );
            writer_go.wait();
            let started = std::time::Instant::now();
            let waited = runtime
                .block_on(store.wait_for_change(&k, &claim.token, Duration::from_secs(10)))
                .unwrap();
            assert_eq!(
                waited,
                Waited::Changed,
                "{change:?} round {round}: wake-up lost"
            );
            if started.elapsed() > Duration::from_secs(2) {
                slow += 1;
            }
            writer_go.wait();
        }
        writer.join().unwrap();
        assert_eq!(slow, 0, "{change:?}");
        assert_eq!(store.waited_keys(), 0, "{change:?}");
    }
}

/// A duplicate waits on an in-progress record whose lease then lapses; the record is swept
/// (amortised sweep, or another claim's `make_room`) before a new claim takes the key, so that
/// claim is a plain new one and wakes nobody. The waiter is not stranded until its timeout for
/// all that: the sweep wakes it (since lowfix A; see `tests/wake.rs`), and before that the new
/// claim's completion did (its notification is the key's).
#[tokio::test(start_paused = true)]
async fn breaker21_a_waiter_on_a_swept_record_is_woken_by_the_next_change() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let k = StoreKey::from_raw("b21:swept");
    let first = in_progress();
    let claimed = store.try_claim_now(
        &k,
        &first,
        Duration::from_millis(10),
        tokio::time::Instant::now().into_std(),
    );
    assert_eq!(claimed.unwrap().unwrap(), Claim::Claimed);
    let waiter = tokio::spawn({
        let (store, k, token) = (store.clone(), k.clone(), first.token);
        async move {
            let started = tokio::time::Instant::now();
            let waited = store
                .wait_for_change(&k, &token, Duration::from_secs(60))
                .await
                .unwrap();
            (waited, started.elapsed())
        }
    });
    while store.waited_keys() == 0 {
        tokio::task::yield_now().await;
    }
    clock.advance(Duration::from_millis(20));
    assert_eq!(store.sweep_expired(), 1);
    let second = in_progress();
    let claimed = store.try_claim_now(
        &k,
        &second,
        Duration::from_secs(60),
        tokio::time::Instant::now().into_std(),
    );
    assert_eq!(claimed.unwrap().unwrap(), Claim::Claimed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fenced = store.complete_now(
        &k,
        &second.token,
        &done(&second, 3),
        Duration::from_secs(60),
        tokio::time::Instant::now().into_std(),
    );
    assert_eq!(fenced.unwrap().unwrap(), Fenced::Applied);
    let (waited, after) = waiter.await.unwrap();
    assert_eq!(waited, Waited::Changed);
    assert!(
        after < Duration::from_secs(60),
        "the waiter ran into its timeout ({after:?})"
    );
    assert_eq!(store.waited_keys(), 0);
}
