//! The engine's completion on a store that answers at once (`complete_now`): once the engine
//! has seen the store do so, a guard ends its lease renewal before the completion (one
//! registry lock instead of two). A transient failure answered at once starts the retries,
//! which may outlast the lease: renewal must start again for them, as it never stopped for
//! a store that answers through the async call.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use idempotency_core::Scope;

// Shared with the breaker10 tests; its counting recorder is not used here.
#[allow(unused_imports)]
mod breaker10_common;

use breaker10_common::{Leased, Mode, fresh, outcome};

/// Lease 1 s (renewed every ~333 ms), the second completion failing transiently five times
/// (backoff 50 + 100 + 200 + 400 + 800 ms = 1.55 s, past the lease): it is stored, because the
/// lease was renewed meanwhile, on both paths. The store's clock follows tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn retries_after_an_at_once_transient_failure_keep_the_lease() {
    for at_once in [true, false] {
        let leased = Leased::new(Mode {
            at_once,
            // The first completion teaches the engine that the store answers at once.
            unscripted_first: 1,
            transient_completions: 5,
            ..Mode::default()
        });
        let engine = &leased.engine;
        let scope = Scope::new("at-once");
        let first = fresh(engine, &scope, "first").await;
        first.complete(outcome("one")).await.unwrap();

        let guard = fresh(engine, &scope, "second").await;
        let started = tokio::time::Instant::now();
        let answer = guard.complete(outcome("two")).await;
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "at once {at_once}: the retries outlasted the lease ({:?})",
            started.elapsed()
        );
        assert!(answer.is_ok(), "at once {at_once}: {answer:?}");
        leased
            .assert_replays(&scope, "second", "two", &format!("at once {at_once}: "))
            .await;
    }
}

/// A store that answered one completion at once and then does not (`complete_now` is
/// `None`): the guard already ended the claim's renewal, expecting an answer at once, and the
/// async completion then takes 1.5 s, past the 1 s lease. Renewal starts again for it, so the
/// outcome is stored (without that, the lease lapses and the completion answers `LeaseLost`).
#[tokio::test(start_paused = true)]
async fn a_store_that_stops_answering_at_once_keeps_the_lease() {
    let leased = Leased::new(Mode {
        at_once: true,
        at_once_first_completion_only: true,
        slow_async_complete: Some(Duration::from_millis(1500)),
        ..Mode::default()
    });
    let engine = &leased.engine;
    let scope = Scope::new("sometimes-at-once");
    let first = fresh(engine, &scope, "first").await;
    first.complete(outcome("one")).await.unwrap();

    let guard = fresh(engine, &scope, "second").await;
    let answer = guard.complete(outcome("two")).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(leased.completes_async(), 1);
    leased.assert_replays(&scope, "second", "two", "").await;
}
