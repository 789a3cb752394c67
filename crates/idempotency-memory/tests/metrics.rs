//! The engine's `metrics` reach a recorder installed after the engine was built (users install
//! recorders at any time: nothing is resolved once at build time and kept).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod counting;

use counting::Counting;
use idempotency_core::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, Scope, StoredOutcome,
};
use idempotency_memory::MemoryStore;

fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::new(s).unwrap()
}

/// One fresh operation (claim + complete), one replay, one in-progress conflict and one
/// fingerprint mismatch.
async fn traffic(engine: &Idempotency<MemoryStore>, prefix: &str) {
    let scope = Scope::new("tenant");
    let fresh = key(&format!("{prefix}-fresh"));
    let Begin::Run(guard) = engine
        .begin(&scope, &fresh, Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("a new key runs");
    };
    guard.complete(StoredOutcome::new("x", None)).await.unwrap();
    assert!(matches!(
        engine
            .begin(&scope, &fresh, Fingerprint::of("a"))
            .await
            .unwrap(),
        Begin::Replay(_)
    ));
    let err = engine
        .begin(&scope, &fresh, Fingerprint::of("b"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, IdempotencyError::FingerprintMismatch),
        "{err:?}"
    );
    let running = key(&format!("{prefix}-running"));
    let Begin::Run(held) = engine
        .begin(&scope, &running, Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("a new key runs");
    };
    let err = engine
        .begin(&scope, &running, Fingerprint::of("a"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, IdempotencyError::InProgress { .. }),
        "{err:?}"
    );
    held.complete(StoredOutcome::new("y", None)).await.unwrap();
}

#[tokio::test]
async fn a_recorder_installed_after_the_engine_is_built_gets_every_metric() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    // Traffic before any recorder: nobody counts it (and nothing is cached by it).
    traffic(&engine, "before").await;

    let recorder = Counting::default();
    {
        let _installed = metrics::set_default_local_recorder(&recorder);
        traffic(&engine, "after").await;
    }
    assert_eq!(recorder.counter("idempotency_claims_total{}"), 2);
    assert_eq!(recorder.counter("idempotency_completions_total{}"), 2);
    assert_eq!(recorder.counter("idempotency_replays_total{}"), 1);
    assert_eq!(
        recorder.counter("idempotency_fingerprint_mismatches_total{}"),
        1
    );
    assert_eq!(
        recorder.counter("idempotency_in_progress_conflicts_total{}"),
        1
    );
    // Every store call is timed: 2 claims + 3 answered begins, 2 completions.
    assert_eq!(
        recorder.histogram("idempotency_store_op_duration_seconds{op=try_claim}"),
        5
    );
    assert_eq!(
        recorder.histogram("idempotency_store_op_duration_seconds{op=complete}"),
        2
    );
    // The engine's own snapshot counted both rounds.
    assert_eq!(engine.stats().claims, 4);

    // Uninstalled again: later traffic is not recorded.
    traffic(&engine, "later").await;
    assert_eq!(recorder.counter("idempotency_claims_total{}"), 2);
}
