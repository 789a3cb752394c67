//! Automatic lease renewal, with tokio's paused clock (the memory store reads the same clock,
//! so leases expire in virtual time).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{CountingStore, LEASE, engine_on, fp, key, memory};
use idempotency_core::{
    Begin, Idempotency, IdempotencyError, IdempotencyStore, RunError, Scope, StoredOutcome,
};
use idempotency_testkit::faults::FaultyStore;
use tokio::time::sleep;

/// The measurement: a 1.5 s operation on a 500 ms lease, the same request again at
/// 800 ms. Returns (executions, the first attempt's result, the duplicate's answer).
async fn slow_operation_with_a_duplicate<S: IdempotencyStore + 'static>(
    engine: Idempotency<S>,
) -> (
    usize,
    Result<u32, RunError<std::io::Error, u32>>,
    Result<u32, RunError<std::io::Error, u32>>,
) {
    let runs = Arc::new(AtomicUsize::new(0));
    let first = {
        let (engine, runs) = (engine.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            engine
                .run(&Scope::global(), &key("slow"), fp(), || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    sleep(Duration::from_millis(1500)).await;
                    Ok::<_, std::io::Error>(7u32)
                })
                .await
        })
    };
    sleep(Duration::from_millis(800)).await;
    let duplicate = engine
        .run(&Scope::global(), &key("slow"), fp(), || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(8u32)
        })
        .await;
    let first = first.await.unwrap();
    (runs.load(Ordering::SeqCst), first, duplicate)
}

fn assert_in_progress(answer: &Result<u32, RunError<std::io::Error, u32>>) {
    assert!(
        matches!(
            answer,
            Err(RunError::Idempotency(IdempotencyError::InProgress { retry_after }))
                if *retry_after == Duration::from_secs(1)
        ),
        "the duplicate is told the first attempt is in progress (alive: fixed Retry-After): {answer:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn operation_longer_than_its_lease_runs_once() {
    let engine = engine_on(memory());
    let (runs, first, duplicate) = slow_operation_with_a_duplicate(engine.clone()).await;
    assert_eq!(runs, 1);
    assert_eq!(first.unwrap(), 7, "the first attempt completes");
    assert_in_progress(&duplicate);
    let replay = engine
        .run(&Scope::global(), &key("slow"), fp(), || async {
            Ok::<_, std::io::Error>(9u32)
        })
        .await;
    assert_eq!(
        replay.unwrap(),
        7,
        "a later retry replays the first outcome"
    );
}

#[tokio::test(start_paused = true)]
async fn operation_longer_than_its_lease_runs_once_through_the_fault_store() {
    let store = FaultyStore::new(Arc::new(memory()));
    let (runs, first, duplicate) = slow_operation_with_a_duplicate(engine_on(store.clone())).await;
    assert_eq!(runs, 1);
    assert_eq!(first.unwrap(), 7, "the first attempt completes");
    assert!(
        store.calls() >= 2 + 8,
        "renewals went through the fault store"
    );
    assert_in_progress(&duplicate);
}

/// The control: without renewal the same schedule runs the operation twice (what the issue
/// measured), so the tests above prove renewal and not a lucky schedule.
#[tokio::test(start_paused = true)]
async fn without_renewal_the_lease_lapses_and_the_duplicate_runs() {
    let engine = Idempotency::builder(memory())
        .lease(LEASE)
        .renew_leases(false)
        .ignore_env()
        .build()
        .unwrap();
    let (runs, first, duplicate) = slow_operation_with_a_duplicate(engine).await;
    assert_eq!(runs, 2);
    assert_eq!(duplicate.unwrap(), 8);
    assert!(
        matches!(
            first,
            Err(RunError::NotRecorded {
                value: 7,
                error: IdempotencyError::LeaseLost
            })
        ),
        "the first attempt's late completion is fenced off: {first:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn renewal_that_finds_the_lease_lost_fails_the_completion() {
    let engine = engine_on(memory());
    let Begin::Run(guard) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("first attempt runs")
    };
    assert!(!guard.is_lease_lost());
    // An operator deletes the record while the operation runs; another attempt takes the key.
    assert!(
        engine
            .invalidate(&Scope::global(), &key("k"))
            .await
            .unwrap()
    );
    let Begin::Run(usurper) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("the key is free")
    };
    sleep(LEASE).await;
    assert!(guard.is_lease_lost(), "the next renewal noticed");
    assert_eq!(engine.stats().lease_lost, 1);
    let err = guard
        .complete(StoredOutcome::new("late", None))
        .await
        .unwrap_err();
    assert!(matches!(err, IdempotencyError::LeaseLost), "{err:?}");
    // The usurper's claim was renewed and untouched by the stale guard.
    assert!(!usurper.is_lease_lost());
    usurper
        .complete(StoredOutcome::new("second", None))
        .await
        .unwrap();
    let Begin::Replay(outcome) = engine
        .begin(&Scope::global(), &key("k"), fp())
        .await
        .unwrap()
    else {
        panic!("replay")
    };
    assert_eq!(&outcome.body[..], b"second");
}

#[tokio::test(start_paused = true)]
async fn renewal_stops_after_complete_release_and_drop() {
    let store = CountingStore::new();
    let engine = engine_on(store.clone());
    for (n, end) in ["complete", "release", "drop"].into_iter().enumerate() {
        let k = key(end);
        let Begin::Run(guard) = engine.begin(&Scope::global(), &k, fp()).await.unwrap() else {
            panic!("runs")
        };
        sleep(LEASE * 2).await;
        let renewed = store.extends();
        assert!(
            renewed >= 5 * (n + 1),
            "{end}: renewed about every third of the lease while alive ({renewed})"
        );
        match end {
            "complete" => guard.complete(StoredOutcome::new("x", None)).await.unwrap(),
            "release" => guard.release().await.unwrap(),
            _ => drop(guard),
        }
        sleep(LEASE * 10).await;
        assert_eq!(store.extends(), renewed, "{end}: no renewal after the end");
    }
    // Released and dropped keys are free again, the completed one replays.
    assert!(matches!(
        engine
            .begin(&Scope::global(), &key("drop"), fp())
            .await
            .unwrap(),
        Begin::Run(_)
    ));
}
