//! breaker21: the engine after a2c3e84 (store keys reuse the thread's last finished key
//! buffer; on a store that answers completions at once, the guard ends renewal before the
//! completion and starts it again if the completion goes on) on the memory store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::FutureExt;
use idempotency_core::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, Record, Scope, StoredOutcome,
};
use idempotency_memory::MemoryStore;

// Shared with the breaker10 tests; its counting recorder is not used here.
#[allow(unused_imports)]
mod breaker10_common;

use breaker10_common::{Leased, Mode, fresh, outcome};

fn scopes() -> Vec<Scope> {
    vec![
        Scope::global(),
        Scope::new("t1"),
        // Escaped (not copied whole), longer than its text.
        Scope::new("tenant with spaces/ü:%"),
        // Just under the bound on an escaped scope (kept in the store key as it is) and over
        // it (replaced by its digest: `idempotency_core::MAX_ESCAPED_SCOPE_LEN`).
        Scope::new("s".repeat(idempotency_core::MAX_ESCAPED_SCOPE_LEN)),
        Scope::new("s".repeat(200)),
    ]
}

/// Key `i` of task `task`: lengths 1 to 255 (with the longest kept scope, the longest store
/// keys the engine derives, ~400 bytes).
fn name(task: usize, i: usize) -> String {
    let base = format!("{task}.{i}.");
    let len = [1usize, 9, 40, 120, 255][(task + i) % 5].max(base.len());
    format!("{base}{}", "k".repeat(len - base.len()))
}

fn body_of(scope: &Scope, name: &str) -> String {
    format!("{scope:?}|{name}")
}

/// 16 tasks on a 2-worker runtime, 120 keys each over 5 scopes: each key is begun, and its
/// guard completed (body naming its scope and key), released, dropped, dropped by a panic
/// (caught), or dropped with its future mid-way; between, tasks yield (moving threads),
/// replay, and mismatch (answers that hand the key buffer back). Every guard's store key is
/// the one its scope and key derive, every completed key replays its own body, and no other
/// key holds a completed record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker21_recycled_key_buffers_never_store_under_the_wrong_key() {
    let store = MemoryStore::new();
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut completed = Vec::new();
                let mut other = Vec::new();
                for i in 0..120 {
                    let scopes = scopes();
                    let scope = &scopes[(task + i) % scopes.len()];
                    let name = name(task, i);
                    let k = IdempotencyKey::new(name.clone()).unwrap();
                    let fp = Fingerprint::of("a");
                    let Begin::Run(guard) = engine.begin(scope, &k, fp).await.unwrap() else {
                        panic!("{name}: a fresh key runs");
                    };
                    assert_eq!(
                        guard.store_key().unwrap(),
                        &engine.store_key(scope, &k),
                        "{name}: the guard's key"
                    );
                    if i % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    // Other answers on this thread meanwhile (each hands a buffer back).
                    if let Some((s, n)) = completed.last().cloned() {
                        let s: &Scope = &s;
                        let k2 = IdempotencyKey::new(n).unwrap();
                        match engine.begin(s, &k2, Fingerprint::of("a")).await.unwrap() {
                            Begin::Replay(_) => {}
                            Begin::Run(_) => panic!("a completed key runs again"),
                        }
                        let mismatch = engine.begin(s, &k2, Fingerprint::of("b")).await;
                        assert!(matches!(
                            mismatch,
                            Err(IdempotencyError::FingerprintMismatch)
                        ));
                    }
                    assert_eq!(guard.store_key().unwrap(), &engine.store_key(scope, &k));
                    match i % 6 {
                        0 => {
                            let body = body_of(scope, &name);
                            guard
                                .complete(StoredOutcome::new(body, None))
                                .await
                                .unwrap();
                            completed.push((scope.clone(), name));
                        }
                        1 => {
                            guard.release().await.unwrap();
                            other.push((scope.clone(), name));
                        }
                        2 => {
                            drop(guard);
                            other.push((scope.clone(), name));
                        }
                        3 => {
                            let caught = std::panic::AssertUnwindSafe(async move {
                                let _guard = guard;
                                tokio::task::yield_now().await;
                                panic!("handler panics");
                            })
                            .catch_unwind()
                            .await;
                            assert!(caught.is_err());
                            other.push((scope.clone(), name));
                        }
                        4 => {
                            // The completion's future dropped before it is polled.
                            let body = body_of(scope, &name);
                            let fut = guard.complete(StoredOutcome::new(body, None));
                            drop(fut);
                            other.push((scope.clone(), name));
                        }
                        _ => {
                            let body = body_of(scope, &name);
                            tokio::task::yield_now().await;
                            guard
                                .complete(StoredOutcome::new(body, None))
                                .await
                                .unwrap();
                            completed.push((scope.clone(), name));
                        }
                    }
                }
                (completed, other)
            })
        })
        .collect();
    let mut completed = Vec::new();
    let mut other = Vec::new();
    for task in tasks {
        let (c, o) = task.await.unwrap();
        completed.extend(c);
        other.extend(o);
    }
    for (scope, name) in &completed {
        let k = IdempotencyKey::new(name.clone()).unwrap();
        match engine.begin(scope, &k, Fingerprint::of("a")).await.unwrap() {
            Begin::Replay(outcome) => assert_eq!(
                outcome.body,
                body_of(scope, name),
                "{name}: another key's outcome"
            ),
            Begin::Run(_) => panic!("{name}: completed, runs again"),
        }
    }
    for (scope, name) in &other {
        let k = IdempotencyKey::new(name.clone()).unwrap();
        let record = idempotency_core::IdempotencyStore::get(&store, &engine.store_key(scope, &k))
            .await
            .unwrap();
        assert!(
            !matches!(record, Some(Record::Completed(_))),
            "{name}: never completed, holds {record:?}"
        );
    }
}

/// A store that answers the first completion at once (the engine learns it), then, for the
/// next one, does not (`complete_now` is `None`: renewal starts again) and its async
/// completion takes 1.5 s and fails transiently, then takes 1.5 s again and lands: 3 s past
/// a 1 s lease, the renewal restarted by the first non-at-once answer must keep the lease the
/// whole time (the transient failure must not end it).
#[tokio::test(start_paused = true)]
async fn breaker21_stops_answering_at_once_then_fails_transiently_keeps_the_lease() {
    let leased = Leased::new(Mode {
        at_once: true,
        at_once_first_completion_only: true,
        unscripted_first: 1,
        transient_completions: 1,
        slow_async_complete: Some(Duration::from_millis(1500)),
        ..Mode::default()
    });
    let engine = &leased.engine;
    let scope = Scope::new("b21");
    fresh(engine, &scope, "first")
        .await
        .complete(outcome("one"))
        .await
        .unwrap();
    let guard = fresh(engine, &scope, "second").await;
    let started = tokio::time::Instant::now();
    let answer = guard.complete(outcome("two")).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(3000));
    assert_eq!(leased.completes_async(), 2);
    leased.assert_replays(&scope, "second", "two", "").await;
}
