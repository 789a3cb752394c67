//! breaker11 (issue 15): the engine's counters moved into a `CachePadded<Stats>`. A snapshot
//! after 8 workers on 4 threads each ran claims, completions, replays and mismatches is exact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use idempotency_core::{Begin, Fingerprint, Idempotency, IdempotencyKey, Scope, StoredOutcome};
use idempotency_memory::MemoryStore;

const WORKERS: u64 = 8;
const EACH: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker11_stats_snapshot_is_exact_under_concurrency() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let scope = Scope::global();
            for i in 0..EACH {
                let key = IdempotencyKey::new(format!("k-{w}-{i}")).unwrap();
                let Begin::Run(guard) = engine
                    .begin(&scope, &key, Fingerprint::of("a"))
                    .await
                    .unwrap()
                else {
                    panic!("fresh key replayed")
                };
                guard
                    .complete(StoredOutcome::new("done", None))
                    .await
                    .unwrap();
                let Begin::Replay(_) = engine
                    .begin(&scope, &key, Fingerprint::of("a"))
                    .await
                    .unwrap()
                else {
                    panic!("completed key ran again")
                };
                assert!(
                    engine
                        .begin(&scope, &key, Fingerprint::of("b"))
                        .await
                        .is_err()
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = engine.stats();
    let n = WORKERS * EACH;
    assert_eq!(
        (s.claims, s.completions, s.replays, s.mismatches),
        (n, n, n, n),
        "{s:?}"
    );
    assert_eq!(
        (s.in_progress, s.store_errors, s.lease_lost),
        (0, 0, 0),
        "{s:?}"
    );
}
