//! breaker10: `created_at_ms` of new claims, now derived from the claim's monotonic reading
//! plus a wall-clock offset refreshed at most once a second (`engine/wall.rs`), against the
//! system's wall clock: under the real clock from many threads, under tokio's paused clock
//! advanced by hours, with two engines in one process, and with an engine used from a runtime
//! other than the one it was built in.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use idempotency_core::{
    Begin, Fingerprint, Idempotency, IdempotencyKey, Record, Scope, StoredOutcome, unix_millis_now,
};
use idempotency_memory::MemoryStore;

/// How far a derived time may be from a direct reading made around it, in ms: the truncation
/// to milliseconds, plus drift within a second (NTP slews at most 0.5 ms/s).
const SLACK_MS: u64 = 2;

fn new_engine() -> Idempotency<MemoryStore> {
    Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .renew_leases(false)
        .build()
        .unwrap()
}

/// Claim a fresh key and return its `created_at_ms`, with direct wall-clock readings made
/// just before and just after the claim.
async fn claim_once(engine: &Idempotency<MemoryStore>, name: &str) -> (u64, u64, u64) {
    let scope = Scope::new("b10-wall");
    let key = IdempotencyKey::new(name).unwrap();
    let before = unix_millis_now();
    let begun = engine.begin(&scope, &key, Fingerprint::of("a")).await;
    let after = unix_millis_now();
    let Ok(Begin::Run(guard)) = begun else {
        panic!("{name}: a fresh key runs");
    };
    let Some(Record::InProgress(record)) = engine.get(&scope, &key).await.unwrap() else {
        panic!("{name}: in progress");
    };
    guard.release().await.unwrap();
    (before, record.created_at_ms, after)
}

/// Under the real clock, from 4 threads for ~1.5 s (past a refresh): every `created_at_ms` is
/// between direct readings made just before and just after its claim (within the slack), and
/// it never goes back on one thread by more than the slack.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn created_at_follows_the_system_clock_from_many_threads() {
    let engine = new_engine();
    let tasks: Vec<_> = (0..4)
        .map(|thread| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut worst = 0u64;
                let mut last = 0u64;
                let mut n = 0u32;
                let end = std::time::Instant::now() + Duration::from_millis(1_500);
                while std::time::Instant::now() < end {
                    let (before, created, after) =
                        claim_once(&engine, &format!("t{thread}-{n}")).await;
                    assert!(
                        before <= created + SLACK_MS && created <= after + SLACK_MS,
                        "thread {thread}, claim {n}: {before} <= {created} <= {after}"
                    );
                    assert!(created + SLACK_MS >= last, "went back: {last} -> {created}");
                    worst = worst.max(before.saturating_sub(created));
                    worst = worst.max(created.saturating_sub(after));
                    last = created;
                    n += 1;
                    if n.is_multiple_of(64) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                (n, worst)
            })
        })
        .collect();
    let mut claims = 0;
    for task in tasks {
        let (n, worst) = task.await.unwrap();
        eprintln!("{n} claims, furthest from a direct reading: {worst} ms");
        claims += n;
    }
    assert!(claims > 100, "{claims} claims");
}

/// Under tokio's paused clock advanced by hours, the derived time comes back to the system's
/// wall clock at the next claim (the refresh), and between refreshes it moves with the paused
/// clock by less than a refresh period; `completed_at_ms` is never before `created_at_ms`.
#[tokio::test(start_paused = true)]
async fn created_at_comes_back_to_the_wall_clock_after_hours_of_paused_time() {
    let engine = new_engine();
    let other = new_engine();
    let scope = Scope::new("b10-wall");
    for round in 0..4 {
        tokio::time::advance(Duration::from_secs(3 * 3600)).await;
        for (which, engine) in [("first", &engine), ("second", &other)] {
            let (before, created, after) = claim_once(engine, &format!("{which}-{round}")).await;
            assert!(
                before <= created + SLACK_MS && created <= after + SLACK_MS,
                "{which}, round {round}: {before} <= {created} <= {after}"
            );
        }
        // Within a refresh period the paused clock moves the derived time, at most a second.
        tokio::time::advance(Duration::from_millis(900)).await;
        let (before, created, _) = claim_once(&engine, &format!("within-{round}")).await;
        assert!(
            created >= before && created - before <= 1_000 + SLACK_MS,
            "{before} vs {created}"
        );
        // A completion after hours of paused time: completed_at_ms >= created_at_ms.
        let key = IdempotencyKey::new(format!("done-{round}")).unwrap();
        let Ok(Begin::Run(guard)) = engine.begin(&scope, &key, Fingerprint::of("a")).await else {
            panic!("runs");
        };
        tokio::time::advance(Duration::from_secs(7200)).await;
        guard
            .complete(StoredOutcome::new("x", Some("text/plain".into())))
            .await
            .unwrap();
        let Some(Record::Completed(done)) = engine.get(&scope, &key).await.unwrap() else {
            panic!("completed");
        };
        assert_eq!(done.completed_at_ms - done.created_at_ms, 7_200_000);
    }
}

/// An engine built where tokio's clock is ahead of the real one (a paused runtime advanced by
/// hours) and then used from another runtime: its claims' `created_at_ms` still follows the
/// wall clock, instead of freezing at the first claim's time (every reading before the
/// engine's monotonic origin counted as the origin, so the offset was never refreshed).
#[test]
fn an_engine_used_outside_the_runtime_it_was_built_in_keeps_the_wall_time() {
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let engine = paused.block_on(async {
        tokio::time::advance(Duration::from_secs(3600)).await;
        new_engine()
    });
    drop(paused);
    let real = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    real.block_on(async {
        let (_, first, _) = claim_once(&engine, "first").await;
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let (before, created, after) = claim_once(&engine, "later").await;
        assert!(
            before <= created + SLACK_MS && created <= after + SLACK_MS,
            "{before} <= {created} <= {after} (first claim at {first})"
        );
    });
}

/// A completion prepared for a transaction (`Guard::prepare`, the SQL store's `complete_in`)
/// is never stamped before its claim: `completed_at_ms` was a direct wall-clock reading while
/// `created_at_ms` is derived from the monotonic clock, so a claim derived ahead of the wall
/// clock (tokio's paused clock within a refresh period here; a wall clock stepped back, or
/// drift and truncation, under the real one) completed "before" it was created.
#[tokio::test(start_paused = true)]
async fn a_prepared_completion_is_not_stamped_before_its_claim() {
    let engine = new_engine();
    let scope = Scope::new("b10-wall");
    // The first claim reads the wall clock; the next one, 900 ms of paused time later, is
    // derived from it (the real wall clock has hardly moved).
    let _ = claim_once(&engine, "first").await;
    tokio::time::advance(Duration::from_millis(900)).await;
    let key = IdempotencyKey::new("prepared").unwrap();
    let Ok(Begin::Run(guard)) = engine.begin(&scope, &key, Fingerprint::of("a")).await else {
        panic!("runs");
    };
    tokio::time::advance(Duration::from_millis(40)).await;
    let pending = guard
        .prepare(StoredOutcome::new("x", Some("text/plain".into())))
        .await
        .unwrap();
    let parts = pending.parts().expect("a claim");
    let (created, completed) = (
        parts.completed.created_at_ms,
        parts.completed.completed_at_ms,
    );
    assert!(
        completed >= created,
        "completed {completed} < created {created}"
    );
    // The time the operation took, as `Guard::complete` stamps it.
    assert_eq!(completed - created, 40);
    pending.release().await.unwrap();
}
