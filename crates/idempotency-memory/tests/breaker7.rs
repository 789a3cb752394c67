//! breaker7: the compact records of the memory store (inline keys at the 62-byte boundary,
//! shared content types, `Held` records) against a model: exact byte accounting, records read
//! back exactly, eviction of mixed key lengths, content types across threads, wake-ups.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use idempotency_memory::idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken, Record,
    StoreError, StoreKey, StoredOutcome, Waited,
};
use idempotency_memory::{ManualClock, MemoryStore};

/// The store's fixed per-record overhead (`ENTRY_OVERHEAD` in `src/lib.rs`).
const OVERHEAD: usize = 96;

/// What the store counts for `record` under `key` (as before the compact records:
/// overhead + key + `Record::approximate_size`).
fn counted(key: &StoreKey, record: &Record) -> usize {
    OVERHEAD + key.as_str().len() + record.approximate_size()
}

/// A deterministic generator (no dependency): xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Keys around the inline boundary (62 bytes): ASCII of 0..=3, 60..=65, 100, 300 bytes, and
/// multi-byte UTF-8 ending just before, on, and across byte 62; plus prefixes of each other.
fn boundary_keys() -> Vec<StoreKey> {
    let mut keys = Vec::new();
    for len in [0usize, 1, 2, 3, 60, 61, 62, 63, 64, 65, 100, 300] {
        keys.push("k".repeat(len));
        // Same length, different last byte (same prefix up to the boundary).
        if len > 0 {
            keys.push(format!("{}z", "k".repeat(len - 1)));
        }
    }
    // "é" is 2 bytes, "€" 3, "🔑" 4: straddling byte 62 (inline up to 62 bytes).
    for (filler, ch) in [
        (60, "é"),
        (61, "é"),
        (59, "€"),
        (60, "€"),
        (58, "🔑"),
        (59, "🔑"),
        (61, "🔑"),
    ] {
        keys.push(format!("{}{ch}", "k".repeat(filler)));
        keys.push(format!("{}{ch}", "q".repeat(filler)));
    }
    keys.push("idem::".to_owned()); // empty scope and key
    keys.push("idempotency:tenant-42:0123456789abcdef0123456789abcdef0123".to_owned());
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys.into_iter().map(StoreKey::from_raw).collect()
}

fn content_types() -> Vec<Option<String>> {
    vec![
        None,
        Some(String::new()),
        Some("application/json".into()),
        Some("text/plain; charset=utf-8".into()),
        Some("täxt/ünïcode; q=\"é\"".into()),
        Some("a\"b\\c\n\u{1}".into()),
        Some("x".repeat(5000)),
        Some("application/json".into()),
    ]
}

#[derive(Clone, Debug)]
struct Modelled {
    record: Record,
    expires_at_ms: u64,
    size: usize,
}

fn claim_record(token: LeaseToken, now: u64) -> InProgress {
    InProgress {
        token,
        fingerprint: Fingerprint::of(token.to_hex()),
        created_at_ms: now,
    }
}

fn completed_record(claim: &InProgress, now: u64, body: Vec<u8>, ct: Option<String>) -> Completed {
    Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: claim.created_at_ms,
        completed_at_ms: now,
        outcome: StoredOutcome::new(body, ct),
    }
}

/// Random claim / complete / release / delete / extend / expire / sweep over the boundary
/// keys, against a model: after every operation the store's record count and bytes equal the
/// model's, and every key reads back exactly the modelled record.
#[tokio::test]
async fn breaker7_byte_accounting_matches_a_model_without_drift() {
    let keys = boundary_keys();
    let cts = content_types();
    let mut total_ops = 0usize;
    for seed in 1..=6u64 {
        let clock = ManualClock::new();
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .sweep_interval(Duration::from_secs(1_000_000_000))
            .build();
        let mut model: HashMap<String, Modelled> = HashMap::new();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for step in 0..1500 {
            let now = clock_now(&clock);
            let key = &keys[rng.below(keys.len())];
            let held = model.get(key.as_str()).cloned();
            let live = held.as_ref().filter(|m| m.expires_at_ms > now);
            match rng.below(10) {
                0..=2 => {
                    let claim = claim_record(LeaseToken::generate(), now);
                    let lease_ms = 1 + rng.below(3000) as u64;
                    let got = store
                        .try_claim(key, &claim, Duration::from_millis(lease_ms))
                        .await
                        .unwrap();
                    match live {
                        Some(m) => assert_eq!(got, Claim::Existing(m.record.clone()), "{step}"),
                        None => {
                            assert_eq!(got, Claim::Claimed, "{step}");
                            let record = Record::InProgress(claim);
                            model.insert(
                                key.as_str().to_owned(),
                                Modelled {
                                    size: counted(key, &record),
                                    record,
                                    expires_at_ms: now + lease_ms,
                                },
                            );
                        }
                    }
                }
                3..=4 => {
                    // Complete with the holder's token (or a stranger's).
                    let (claim, ours) = match held.as_ref().map(|m| &m.record) {
                        Some(Record::InProgress(c)) if rng.below(6) != 0 => (c.clone(), true),
                        _ => (claim_record(LeaseToken::generate(), now), false),
                    };
                    let body: Vec<u8> = (0..rng.below(300)).map(|n| n as u8).collect();
                    let ct = cts[rng.below(cts.len())].clone();
                    let done = completed_record(&claim, now, body, ct);
                    let retention_ms = 1 + rng.below(5000) as u64;
                    let got = store
                        .complete(
                            key,
                            &claim.token,
                            &done,
                            Duration::from_millis(retention_ms),
                        )
                        .await
                        .unwrap();
                    let applies = ours && live.is_some();
                    if applies {
                        assert_eq!(got, Fenced::Applied, "{step}");
                        let record = Record::Completed(done);
                        model.insert(
                            key.as_str().to_owned(),
                            Modelled {
                                size: counted(key, &record),
                                record,
                                expires_at_ms: now + retention_ms,
                            },
                        );
                    } else {
                        assert_eq!(got, Fenced::LeaseLost, "{step}");
                    }
                }
                5 => {
                    let token = match held.as_ref().map(|m| &m.record) {
                        Some(Record::InProgress(c)) => c.token,
                        _ => LeaseToken::generate(),
                    };
                    let got = store.release(key, &token).await.unwrap();
                    let applies = matches!(live.map(|m| &m.record), Some(Record::InProgress(_)));
                    if applies {
                        assert_eq!(got, Fenced::Applied, "{step}");
                        model.remove(key.as_str());
                    } else {
                        assert_eq!(got, Fenced::LeaseLost, "{step}");
                    }
                }
                6 => {
                    let got = store.delete(key).await.unwrap();
                    assert_eq!(got, live.is_some(), "{step}");
                    model.remove(key.as_str());
                }
                7 => {
                    clock.advance(Duration::from_millis(rng.below(2000) as u64));
                }
                8 => {
                    let swept = store.sweep_expired();
                    let before = model.len();
                    model.retain(|_, m| m.expires_at_ms > now);
                    assert_eq!(swept, before - model.len(), "{step}");
                }
                _ => {
                    let ttl = store.time_to_live(key).await.unwrap();
                    assert_eq!(
                        ttl,
                        live.map(|m| Duration::from_millis(m.expires_at_ms - now)),
                        "{step}"
                    );
                }
            }
            total_ops += 1;
            let bytes: usize = model.values().map(|m| m.size).sum();
            assert_eq!(store.len(), model.len(), "seed {seed} step {step}");
            assert_eq!(store.approximate_bytes(), bytes, "seed {seed} step {step}");
            let now = clock_now(&clock);
            for k in &keys {
                let expect = model
                    .get(k.as_str())
                    .filter(|m| m.expires_at_ms > now)
                    .map(|m| m.record.clone());
                assert_eq!(
                    store.get(k).await.unwrap(),
                    expect,
                    "seed {seed} step {step} {k}"
                );
            }
        }
        // Everything out: no residue.
        for k in &keys {
            store.delete(k).await.unwrap();
        }
        assert_eq!((store.len(), store.approximate_bytes()), (0, 0));
    }
    assert_eq!(total_ops, 6 * 1500);
}

fn clock_now(clock: &ManualClock) -> u64 {
    use idempotency_memory::Clock;
    clock.now_ms()
}

/// Eviction under `max_entries` and `max_bytes` with inline and boxed keys (and keys that
/// differ only past byte 62): the counts stay equal to what is present, in-progress records
/// are never evicted, and the survivors read back exactly.
#[tokio::test]
async fn breaker7_eviction_of_mixed_key_lengths_keeps_exact_accounting() {
    let lens = [1usize, 40, 61, 62, 63, 64, 120];
    let key_of = |n: usize| {
        let len = lens[n % lens.len()];
        let tail = format!("-{n}");
        // Keys of one length differ only in their tail (near byte 62 for the boundary ones).
        StoreKey::from_raw(format!(
            "{}{tail}",
            "p".repeat(len.saturating_sub(tail.len()))
        ))
    };
    for (max_entries, max_bytes) in [(16usize, usize::MAX), (1000, 8_000), (10, 6_000)] {
        let clock = ManualClock::new();
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .max_entries(max_entries)
            .max_bytes(max_bytes)
            .build();
        let mut written: HashMap<String, Record> = HashMap::new();
        let mut full = 0;
        for n in 0..400 {
            let key = key_of(n);
            let claim = claim_record(LeaseToken::generate(), n as u64);
            match store.try_claim(&key, &claim, Duration::from_secs(60)).await {
                Ok(Claim::Claimed) => {}
                Ok(other) => panic!("{n}: fresh key answered {other:?}"),
                Err(StoreError::Full { .. }) => {
                    full += 1;
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
            // Every third one stays in progress.
            let record = if n % 3 == 0 {
                Record::InProgress(claim)
            } else {
                let ct = Some(format!("type/{}", n % 5));
                let done = completed_record(&claim, n as u64, vec![n as u8; n % 90], ct);
                let fenced = store
                    .complete(
                        &key,
                        &claim.token,
                        &done,
                        Duration::from_secs(600 + n as u64),
                    )
                    .await
                    .unwrap();
                assert_eq!(fenced, Fenced::Applied);
                Record::Completed(done)
            };
            written.insert(key.as_str().to_owned(), record);
            // Reconcile: what is present must be exactly what was written, and counted exactly.
            let mut present = 0;
            let mut bytes = 0;
            for (k, record) in &written {
                let k = StoreKey::from_raw(k.as_str());
                match store.get(&k).await.unwrap() {
                    Some(got) => {
                        assert_eq!(&got, record, "{k}");
                        present += 1;
                        bytes += counted(&k, record);
                    }
                    None => assert!(
                        matches!(record, Record::Completed(_)),
                        "in-progress {k} was evicted"
                    ),
                }
            }
            assert_eq!(store.len(), present, "{max_entries}/{max_bytes} at {n}");
            assert_eq!(
                store.approximate_bytes(),
                bytes,
                "{max_entries}/{max_bytes} at {n}"
            );
            // (A completion past `max_bytes` evicts older completed records at once; it stays
            // over only when nothing but in-progress records is left.)
            assert!(store.len() <= max_entries);
        }
        assert!(
            store.evictions() > 0,
            "{max_entries}/{max_bytes}: nothing evicted"
        );
        // Full only once in-progress records alone fill the bound.
        let _ = full;
        clock.advance(Duration::from_secs(100_000));
        store.sweep_expired();
        assert_eq!((store.len(), store.approximate_bytes()), (0, 0));
    }
}

/// Many distinct content types alternating on a multi-thread runtime and in blocking threads
/// (each thread shares its last content type): every replay answers exactly what was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker7_content_types_alternating_across_threads_replay_exactly() {
    let store = MemoryStore::new();
    let types: Arc<Vec<Option<String>>> = Arc::new({
        let mut t = content_types();
        for n in 0..40 {
            t.push(Some(format!("application/vnd.t{n}+json")));
            // Equal prefixes, different lengths (an `Arc<str>` compared by content).
            t.push(Some(format!("application/vnd.t{n}+json").repeat(2)));
        }
        t.push(Some("\u{0}".into()));
        t.push(Some("ü".repeat(100)));
        t
    });
    let mut tasks = Vec::new();
    for task in 0..32usize {
        let store = store.clone();
        let types = Arc::clone(&types);
        let run = async move {
            let mut done = Vec::new();
            for n in 0..60usize {
                let key = StoreKey::from_raw(format!("{}:{task}:{n}", "s".repeat((n * 7) % 70)));
                let claim = claim_record(LeaseToken::generate(), 1);
                assert_eq!(
                    store
                        .try_claim(&key, &claim, Duration::from_secs(60))
                        .await
                        .unwrap(),
                    Claim::Claimed
                );
                let ct = types[(task * 13 + n * 7) % types.len()].clone();
                let record = completed_record(&claim, 2, format!("{task}/{n}").into_bytes(), ct);
                let fenced = store
                    .complete(&key, &claim.token, &record, Duration::from_secs(600))
                    .await
                    .unwrap();
                assert_eq!(fenced, Fenced::Applied);
                done.push((key, Record::Completed(record)));
                tokio::task::yield_now().await;
            }
            for (key, record) in &done {
                let again = claim_record(LeaseToken::generate(), 3);
                let got = store
                    .try_claim(key, &again, Duration::from_secs(60))
                    .await
                    .unwrap();
                assert_eq!(&got, &Claim::Existing(record.clone()), "{key}");
            }
            done.len()
        };
        if task % 4 == 0 {
            tasks.push(tokio::task::spawn_blocking(move || {
                futures::executor::block_on(run)
            }));
        } else {
            tasks.push(tokio::spawn(run));
        }
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, 32 * 60);
    // Every record read once more, from this thread.
    assert_eq!(store.len(), 32 * 60);
}

/// 32 tasks claiming, completing and replaying keys of mixed lengths, with duplicates waiting
/// (`wait_for_change`) on each in-progress key: every waiter is woken by the completion (a
/// lost wake-up would time out after 30 s and fail) and then reads the completed record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker7_waiting_duplicates_are_woken_for_mixed_length_keys() {
    let store = MemoryStore::new();
    let mut tasks = Vec::new();
    for task in 0..32usize {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut woken = 0;
            for n in 0..25usize {
                let len = [0usize, 50, 51, 52, 53, 60, 120][(task + n) % 7];
                let key = StoreKey::from_raw(format!("{}{task:02}:{n:02}", "w".repeat(len)));
                let claim = claim_record(LeaseToken::generate(), 1);
                let got = store
                    .try_claim(&key, &claim, Duration::from_secs(60))
                    .await
                    .unwrap();
                assert_eq!(got, Claim::Claimed);
                // Waiters registered (and checked "still held") before the completion.
                let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(4);
                let mut waiters = Vec::new();
                for _ in 0..3 {
                    let store = store.clone();
                    let key = key.clone();
                    let token = claim.token;
                    let ready = ready_tx.clone();
                    waiters.push(tokio::spawn(async move {
                        let wait = store.wait_for_change(&key, &token, Duration::from_secs(30));
                        let _ = ready.send(()).await;
                        let waited = wait.await.unwrap();
                        (waited, store.get(&key).await.unwrap())
                    }));
                }
                drop(ready_tx);
                for _ in 0..3 {
                    ready_rx.recv().await.unwrap();
                }
                let record =
                    completed_record(&claim, 2, vec![7; n], Some(format!("t/{}", (task + n) % 3)));
                let fenced = store
                    .complete(&key, &claim.token, &record, Duration::from_secs(600))
                    .await
                    .unwrap();
                assert_eq!(fenced, Fenced::Applied);
                for waiter in waiters {
                    let (waited, read) = waiter.await.unwrap();
                    assert_eq!(waited, Waited::Changed, "{key}");
                    assert_eq!(read, Some(Record::Completed(record.clone())), "{key}");
                    woken += 1;
                }
            }
            woken
        }));
    }
    let mut woken = 0;
    for task in tasks {
        woken += task.await.unwrap();
    }
    assert_eq!(woken, 32 * 25 * 3);
    assert_eq!(store.waited_keys(), 0);
}

/// A completion run from a thread-local's destructor (a worker's per-thread state flushed at
/// thread exit) after the store's own thread-local (the shared content type) was destroyed:
/// it must store the record, not panic ("cannot access a Thread Local Storage value during or
/// after destruction": a panic in a destructor aborts the process).
#[test]
fn breaker7_completion_from_a_thread_local_destructor_does_not_panic() {
    struct FlushOnExit {
        store: MemoryStore,
        key: StoreKey,
        claim: InProgress,
        done: std::sync::mpsc::Sender<std::thread::Result<Fenced>>,
    }
    impl Drop for FlushOnExit {
        fn drop(&mut self) {
            let record = completed_record(&self.claim, 2, b"late".to_vec(), Some("text/x".into()));
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                futures::executor::block_on(self.store.complete(
                    &self.key,
                    &self.claim.token,
                    &record,
                    Duration::from_secs(600),
                ))
                .unwrap()
            }));
            let _ = self.done.send(outcome);
        }
    }
    thread_local! {
        static FLUSH: std::cell::RefCell<Option<FlushOnExit>> = const { std::cell::RefCell::new(None) };
    }
    let store = MemoryStore::new();
    let key = StoreKey::from_raw("idem:scope:flushed-at-exit");
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_store = store.clone();
    let thread_key = key.clone();
    std::thread::spawn(move || {
        let store = thread_store;
        let claim = claim_record(LeaseToken::generate(), 1);
        let claimed = futures::executor::block_on(store.try_claim(
            &thread_key,
            &claim,
            Duration::from_secs(60),
        ))
        .unwrap();
        assert_eq!(claimed, Claim::Claimed);
        // Ours first (its destructor registered first, so run last)...
        FLUSH.with(|flush| {
            *flush.borrow_mut() = Some(FlushOnExit {
                store: store.clone(),
                key: thread_key.clone(),
                claim: claim.clone(),
                done: tx,
            });
        });
        // ... then a completion on this thread (the store's thread-local comes to life).
        let other = StoreKey::from_raw("idem:scope:other");
        let claim = claim_record(LeaseToken::generate(), 1);
        futures::executor::block_on(store.try_claim(&other, &claim, Duration::from_secs(60)))
            .unwrap();
        let record = completed_record(&claim, 2, b"x".to_vec(), Some("text/y".into()));
        futures::executor::block_on(store.complete(
            &other,
            &claim.token,
            &record,
            Duration::from_secs(600),
        ))
        .unwrap();
    })
    .join()
    .unwrap();
    let outcome = rx.recv().unwrap();
    assert!(matches!(outcome, Ok(Fenced::Applied)), "{outcome:?}");
    let stored = futures::executor::block_on(store.get(&key)).unwrap();
    let Some(Record::Completed(done)) = stored else {
        panic!("{stored:?}");
    };
    assert_eq!(done.outcome.content_type.as_deref(), Some("text/x"));
    assert_eq!(&done.outcome.body[..], b"late");
}

/// 32 tasks claiming, completing, releasing and deleting keys of mixed lengths (both sides of
/// the inline bound, shared between tasks) under a small `max_entries` (evictions racing the
/// writers): once quiet, the counts equal exactly what is present, no drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker7_concurrent_writers_and_evictions_leave_no_accounting_drift() {
    let store = MemoryStore::builder().max_entries(64).build();
    let keys: Arc<Vec<StoreKey>> = Arc::new(
        (0..160usize)
            .map(|n| {
                let len = [1usize, 30, 58, 59, 60, 61, 62, 63, 64, 90][n % 10];
                let tail = format!(":{n}");
                StoreKey::from_raw(format!(
                    "{}{tail}",
                    "c".repeat(len.saturating_sub(tail.len()))
                ))
            })
            .collect(),
    );
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let store = store.clone();
        let keys = Arc::clone(&keys);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng((task + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut applied = 0usize;
            for _ in 0..400 {
                let key = &keys[rng.below(keys.len())];
                let claim = claim_record(LeaseToken::generate(), 1);
                match store.try_claim(key, &claim, Duration::from_secs(60)).await {
                    Ok(Claim::Claimed) => {}
                    Ok(Claim::Existing(_)) | Err(StoreError::Full { .. }) => continue,
                    Err(e) => panic!("{e}"),
                }
                match rng.below(4) {
                    0 => {
                        store.release(key, &claim.token).await.unwrap();
                    }
                    1 => {
                        store.delete(key).await.unwrap();
                    }
                    _ => {
                        let ct =
                            Some(format!("type/{}", rng.below(9))).filter(|_| rng.below(5) != 0);
                        let done = completed_record(&claim, 2, vec![1; rng.below(200)], ct);
                        let fenced = store
                            .complete(key, &claim.token, &done, Duration::from_secs(600))
                            .await
                            .unwrap();
                        applied += usize::from(fenced == Fenced::Applied);
                    }
                }
                tokio::task::yield_now().await;
            }
            applied
        }));
    }
    let mut applied = 0;
    for task in tasks {
        applied += task.await.unwrap();
    }
    assert!(applied > 100, "{applied}");
    assert!(store.evictions() > 0);
    let (mut present, mut bytes) = (0, 0);
    for key in keys.iter() {
        if let Some(record) = store.get(key).await.unwrap() {
            present += 1;
            bytes += counted(key, &record);
        }
    }
    assert_eq!(store.len(), present);
    assert_eq!(store.approximate_bytes(), bytes);
    for key in keys.iter() {
        store.delete(key).await.unwrap();
    }
    assert_eq!((store.len(), store.approximate_bytes()), (0, 0));
}
