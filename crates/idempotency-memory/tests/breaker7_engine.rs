//! breaker7: the engine on the compact memory store — 32 tasks claiming, completing (the
//! guard's borrowed engine) and replaying keys of mixed lengths around the 62-byte inline
//! bound, with duplicates waiting (`wait_for_in_progress`) on each first attempt: every
//! duplicate is woken and replays exactly what was completed, content type byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use idempotency_core::{Begin, Fingerprint, Idempotency, IdempotencyKey, Scope, StoredOutcome};
use idempotency_memory::MemoryStore;

fn content_type(n: usize) -> Option<String> {
    match n % 7 {
        0 => None,
        1 => Some(String::new()),
        2 => Some("application/json".into()),
        3 => Some(format!("application/vnd.k{n}+json")),
        4 => Some("t\u{e9}xt/\u{fc}ber; charset=\"utf-8\"".into()),
        5 => Some("x".repeat(300 + n)),
        _ => Some("text/plain".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker7_engine_duplicates_wait_and_replay_exactly_for_mixed_length_keys() {
    let store = MemoryStore::new();
    // A poll interval longer than the test's bound: only a wake-up answers in time.
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .wait_for_in_progress(Duration::from_secs(120), Duration::from_secs(60))
        .build()
        .unwrap();
    let scopes = [
        Scope::global(),
        Scope::new(""),
        Scope::new("tenant-\u{e9}t\u{e9}"),
    ];
    // The store keys span both sides of the 62-byte inline bound.
    let lens: Vec<usize> = (0..32usize)
        .flat_map(|task| (0..20usize).map(move |n| (task, n)))
        .map(|(task, n)| {
            let scope = &scopes[(task + n) % scopes.len()];
            let len = 20 + (task * 3 + n) % 40;
            let key = IdempotencyKey::new(format!("{task:02}-{n:02}-{}", "k".repeat(len))).unwrap();
            engine.store_key(scope, &key).as_str().len()
        })
        .collect();
    for bound in [61, 62, 63] {
        assert!(lens.contains(&bound), "{bound}: {lens:?}");
    }
    assert!(lens.iter().any(|&l| l > 80) && lens.iter().any(|&l| l < 50));
    let mut tasks = Vec::new();
    for task in 0..32usize {
        let engine = engine.clone();
        let scopes = scopes.clone();
        tasks.push(tokio::spawn(async move {
            let mut replays = 0;
            for n in 0..20usize {
                let scope = &scopes[(task + n) % scopes.len()];
                // Key lengths stepping across the inline bound once the prefix is added.
                let len = 20 + (task * 3 + n) % 40;
                let key =
                    IdempotencyKey::new(format!("{task:02}-{n:02}-{}", "k".repeat(len))).unwrap();
                let fingerprint = Fingerprint::of(key.as_str());
                let Begin::Run(guard) = engine.begin(scope, &key, fingerprint).await.unwrap()
                else {
                    panic!("fresh key replayed");
                };
                let duplicates: Vec<_> = (0..2)
                    .map(|_| {
                        let engine = engine.clone();
                        let scope = scope.clone();
                        let key = key.clone();
                        tokio::spawn(async move {
                            tokio::time::timeout(
                                Duration::from_secs(30),
                                engine.begin(&scope, &key, fingerprint),
                            )
                            .await
                        })
                    })
                    .collect();
                tokio::task::yield_now().await;
                let outcome = StoredOutcome::new(
                    format!("{task}/{n}/{}", "b".repeat(n * 10)).into_bytes(),
                    content_type(task * 20 + n),
                );
                guard.complete(outcome.clone()).await.unwrap();
                for duplicate in duplicates {
                    let answered = duplicate.await.unwrap().expect("woken within 30 s");
                    let Begin::Replay(replayed) = answered.unwrap() else {
                        panic!("{key:?}: ran again");
                    };
                    assert_eq!(replayed.body, outcome.body);
                    assert_eq!(replayed.content_type, outcome.content_type);
                    replays += 1;
                }
            }
            replays
        }));
    }
    let mut replays = 0;
    for task in tasks {
        replays += task.await.unwrap();
    }
    assert_eq!(replays, 32 * 20 * 2);
    assert_eq!(store.waited_keys(), 0);
    assert_eq!(store.len(), 32 * 20);
}
