//! breaker10: the engine's at-once path (`try_claim_now` / `complete_now`) against the async
//! path on what the seeded model test (`fast_path.rs`) does not cover: the completion retry
//! path, a completion answered "lease lost" at once, async calls that hang, waiting duplicates
//! woken, lease renewals, concurrency on a multi-thread runtime, `max_outcome_size`, extensions and takeovers,
//! cancellation and a runtime shut down under a guard.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt as _;
use idempotency_core::{Begin, Fingerprint, Idempotency, IdempotencyError, Scope, StoreError};
use idempotency_memory::{ManualClock, MemoryStore};

mod breaker10_common;

use breaker10_common::{Counting, Mode, Probe, Seen, fresh, key, outcome};

/// A completion whose first attempt fails transiently, then succeeds: same answer, same retry
/// count, same backoff, same metrics whether the first attempt was answered at once or made
/// through the async call; on the at-once path the retry is an async call.
#[tokio::test(start_paused = true)]
async fn a_transient_first_completion_is_retried_the_same_on_both_paths() {
    let mut runs = Vec::new();
    for at_once in [true, false] {
        let recorder = Counting::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let store = Arc::new(Probe::new(
            MemoryStore::new(),
            Mode {
                at_once,
                transient_completions: 2,
                ..Mode::default()
            },
        ));
        let engine = Idempotency::builder(Arc::clone(&store))
            .ignore_env()
            .renew_leases(false)
            .build()
            .unwrap();
        let scope = Scope::new("b10");
        let guard = fresh(&engine, &scope, "retry").await;
        let started = tokio::time::Instant::now();
        let answer = guard.complete(outcome("done")).await;
        let waited = started.elapsed();
        let replay = engine
            .begin(&scope, &key("retry"), Fingerprint::of("a"))
            .await
            .unwrap();
        let transcript = vec![
            format!("{answer:?}"),
            format!("waited {waited:?}"),
            format!(
                "{:?}",
                matches!(replay, Begin::Replay(ref o) if o.body == "done")
            ),
        ];
        let seen = Seen {
            transcript,
            stats: format!("{:?}", engine.stats()),
            metrics: recorder.nonzero_totals(),
        };
        let ways = (
            store.claims_now.load(Ordering::SeqCst),
            store.claims_async.load(Ordering::SeqCst),
            store.completes_now.load(Ordering::SeqCst),
            store.completes_async.load(Ordering::SeqCst),
        );
        runs.push((seen, ways));
    }
    let (at_once, ways_now) = &runs[0];
    let (through_calls, ways_async) = &runs[1];
    assert_eq!(at_once, through_calls);
    assert_eq!(at_once.transcript[0], "Ok(())");
    // Two backoffs: 50 ms then 100 ms.
    assert_eq!(at_once.transcript[1], "waited 150ms");
    assert_eq!(
        at_once
            .metrics
            .0
            .get("idempotency_completion_retries_total{result=recovered}"),
        Some(&1)
    );
    assert_eq!(
        at_once
            .metrics
            .1
            .get("idempotency_store_op_duration_seconds{op=complete}"),
        Some(&3),
        "one latency per attempt: {:?}",
        at_once.metrics.1
    );
    assert!(
        at_once.stats.contains("completion_retries: 2"),
        "{}",
        at_once.stats
    );
    assert!(
        at_once.stats.contains("store_errors: 2"),
        "{}",
        at_once.stats
    );
    // (claims now, claims async, completions now, completions async): the first completion
    // at once, its retries through the async call.
    assert_eq!(*ways_now, (2, 0, 1, 2));
    assert_eq!(*ways_async, (0, 2, 0, 3));
}

/// A first completion answered "lease lost" at once is final: no retry, the same answer,
/// counters and metrics as through the async call.
#[tokio::test(start_paused = true)]
async fn a_lease_lost_at_once_completion_is_not_retried() {
    let mut runs = Vec::new();
    for at_once in [true, false] {
        let recorder = Counting::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let store = Arc::new(Probe::new(
            MemoryStore::new(),
            Mode {
                at_once,
                lease_lost_first: true,
                ..Mode::default()
            },
        ));
        let engine = Idempotency::builder(Arc::clone(&store))
            .ignore_env()
            .renew_leases(false)
            .build()
            .unwrap();
        let scope = Scope::new("b10");
        let guard = fresh(&engine, &scope, "lost").await;
        let answer = guard.complete(outcome("done")).await;
        assert!(
            matches!(answer, Err(IdempotencyError::LeaseLost)),
            "{answer:?}"
        );
        let attempts = store.completes_now.load(Ordering::SeqCst)
            + store.completes_async.load(Ordering::SeqCst);
        assert_eq!(attempts, 1, "not retried");
        runs.push(Seen {
            transcript: vec![format!("{answer:?}")],
            stats: format!("{:?}", engine.stats()),
            metrics: recorder.nonzero_totals(),
        });
    }
    assert_eq!(runs[0], runs[1]);
}

/// A claim answered at once, a first completion that fails transiently at once, and async
/// calls that never answer: the retry path's async calls are bounded by the engine's timer,
/// and the completion gives up after its retry bound (the engine does not spin on the
/// at-once form, nor wait forever).
#[tokio::test(start_paused = true)]
async fn an_at_once_claim_then_hanging_async_retries_end_at_the_retry_bound() {
    let store = Arc::new(Probe::new(
        MemoryStore::new(),
        Mode {
            at_once: true,
            transient_completions: 1,
            hang_async: true,
            ..Mode::default()
        },
    ));
    let engine = Idempotency::builder(Arc::clone(&store))
        .ignore_env()
        .renew_leases(false)
        .store_timeout(Duration::from_millis(200))
        .completion_retry(Duration::from_secs(2))
        .build()
        .unwrap();
    let scope = Scope::new("b10");
    let guard = fresh(&engine, &scope, "hang").await;
    assert_eq!(store.claims_async.load(Ordering::SeqCst), 0);
    let answer = tokio::time::timeout(Duration::from_secs(60), guard.complete(outcome("x")))
        .await
        .expect("the completion ends within its retry bound");
    assert!(
        matches!(
            answer,
            Err(IdempotencyError::StoreUnavailable(
                StoreError::Timeout { .. }
            ))
        ),
        "{answer:?}"
    );
    assert_eq!(store.completes_now.load(Ordering::SeqCst), 1);
    assert!(store.completes_async.load(Ordering::SeqCst) >= 2);
    assert!(engine.stats().completion_retries >= 2);
}

/// Duplicates waiting for an in-progress first attempt are woken by its completion and by its
/// release the same way on both paths (answers, wake-up counters, stats), and leave no waiter
/// behind.
#[tokio::test(start_paused = true)]
async fn waiting_duplicates_are_woken_the_same_on_both_paths() {
    let mut runs = Vec::new();
    for at_once in [true, false] {
        let recorder = Counting::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let memory = MemoryStore::new();
        let store = Arc::new(Probe::new(
            memory.clone(),
            Mode {
                at_once,
                ..Mode::default()
            },
        ));
        let engine = Idempotency::builder(Arc::clone(&store))
            .ignore_env()
            .renew_leases(false)
            .wait_for_in_progress(Duration::from_secs(10), Duration::from_millis(50))
            .build()
            .unwrap();
        let scope = Scope::new("b10");
        let mut transcript = Vec::new();
        for (name, finish) in [("completed", true), ("released", false)] {
            let guard = fresh(&engine, &scope, name).await;
            let waiters: Vec<_> = ["a", "a", "b"]
                .into_iter()
                .map(|fp| {
                    let engine = engine.clone();
                    let scope = scope.clone();
                    let k = key(name);
                    tokio::spawn(async move {
                        match engine.begin(&scope, &k, Fingerprint::of(fp)).await {
                            Ok(Begin::Run(guard)) => {
                                guard.complete(outcome("second")).await.unwrap();
                                "run".to_owned()
                            }
                            Ok(Begin::Replay(o)) => format!("replay {:?}", o.body),
                            Err(error) => format!("{error:?}"),
                        }
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(memory.waited_keys(), 1, "the duplicates wait");
            if finish {
                guard.complete(outcome("first")).await.unwrap();
            } else {
                guard.release().await.unwrap();
            }
            let mut answers = Vec::new();
            for waiter in waiters {
                answers.push(waiter.await.unwrap());
            }
            answers.sort();
            transcript.push(format!("{name}: {answers:?}"));
            assert_eq!(memory.waited_keys(), 0, "no waiter left behind");
        }
        runs.push(Seen {
            transcript,
            stats: format!("{:?}", engine.stats()),
            metrics: recorder.nonzero_totals(),
        });
    }
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0]
            .metrics
            .0
            .contains_key("idempotency_in_progress_wake_ups_total{result=changed}"),
        "{:?}",
        runs[0].metrics
    );
}

/// Many tasks on a multi-thread runtime race for a few keys: on both paths, exactly one runs
/// per key, every other one replays or is told "in progress", and the counters add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_on_a_multi_thread_runtime_run_once_per_key() {
    for at_once in [true, false] {
        for round in 0..20 {
            let store = Arc::new(Probe::new(
                MemoryStore::new(),
                Mode {
                    at_once,
                    ..Mode::default()
                },
            ));
            let engine = Idempotency::builder(Arc::clone(&store))
                .ignore_env()
                .renew_leases(false)
                .build()
                .unwrap();
            let tasks: Vec<_> = (0..32)
                .map(|n| {
                    let engine = engine.clone();
                    tokio::spawn(async move {
                        let k = n % 4;
                        let scope = Scope::new("b10");
                        match engine
                            .begin(&scope, &key(&format!("k{k}")), Fingerprint::of("a"))
                            .await
                        {
                            Ok(Begin::Run(guard)) => {
                                tokio::task::yield_now().await;
                                guard.complete(outcome(&format!("{k}"))).await.unwrap();
                                (k, "run")
                            }
                            Ok(Begin::Replay(o)) => {
                                assert_eq!(o.body, format!("{k}"));
                                (k, "replay")
                            }
                            Err(IdempotencyError::InProgress { .. }) => (k, "in progress"),
                            Err(other) => panic!("{other:?}"),
                        }
                    })
                })
                .collect();
            let mut runs = [0u32; 4];
            for task in tasks {
                let (k, what) = task.await.unwrap();
                if what == "run" {
                    runs[k] += 1;
                }
            }
            assert_eq!(runs, [1; 4], "at once {at_once}, round {round}");
            let stats = engine.stats();
            assert_eq!((stats.claims, stats.completions), (4, 4));
            assert_eq!(stats.claims + stats.replays + stats.in_progress, 32);
            if at_once {
                assert_eq!(store.claims_async.load(Ordering::SeqCst), 0);
                assert_eq!(store.completes_async.load(Ordering::SeqCst), 0);
            } else {
                assert_eq!(store.claims_now.load(Ordering::SeqCst), 0);
            }
        }
    }
}

/// `max_outcome_size`, extensions, a completion after the lease ran out and after a takeover,
/// a release after a takeover: the same answers, counters and metrics on both paths.
#[tokio::test(start_paused = true)]
async fn oversized_outcomes_extensions_and_takeovers_answer_the_same() {
    let mut runs = Vec::new();
    for at_once in [true, false] {
        let recorder = Counting::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let clock = ManualClock::new();
        let store = Probe::new(
            MemoryStore::builder().clock(clock.clone()).build(),
            Mode {
                at_once,
                ..Mode::default()
            },
        );
        let engine = Idempotency::builder(store)
            .ignore_env()
            .renew_leases(false)
            .lease(Duration::from_secs(2))
            .max_outcome_size(8)
            .build()
            .unwrap();
        let scope = Scope::new("b10");
        let k = key("big");
        let fp = Fingerprint::of("a");
        let mut t = Vec::new();
        let run = |b: Result<Begin<Probe>, IdempotencyError>| match b {
            Ok(Begin::Run(guard)) => Ok(guard),
            Ok(Begin::Replay(o)) => Err(format!("replay {:?}", o.body)),
            Err(e) => Err(format!("{e:?}")),
        };
        // Too large: nothing stored, the key free again.
        let guard = run(engine.begin(&scope, &k, fp).await).unwrap();
        t.push(format!(
            "{:?}",
            guard.complete(outcome("much too large")).await
        ));
        t.push(format!(
            "{:?}",
            engine.get(&scope, &k).await.unwrap().is_none()
        ));
        // Extend, then let the lease run out: extension and completion find it lost.
        let guard = run(engine.begin(&scope, &k, fp).await).unwrap();
        t.push(format!(
            "{:?}",
            guard.extend_by(Duration::from_secs(3)).await
        ));
        clock.advance(Duration::from_millis(2_500));
        t.push(format!("{:?}", guard.extend().await));
        clock.advance(Duration::from_secs(3));
        t.push(format!("{:?}", guard.extend().await));
        // Taken over by another attempt, then the first completes and the other releases.
        let other = run(engine.begin(&scope, &k, fp).await).unwrap();
        t.push(format!("{:?}", guard.complete(outcome("late")).await));
        t.push(format!("{:?}", other.complete(outcome("ok")).await));
        t.push(format!(
            "{:?}",
            run(engine.begin(&scope, &k, fp).await).err()
        ));
        runs.push(Seen {
            transcript: t,
            stats: format!("{:?}", engine.stats()),
            metrics: recorder.nonzero_totals(),
        });
    }
    assert_eq!(runs[0], runs[1]);
    let t = &runs[0].transcript;
    assert!(t[0].contains("OutcomeTooLarge"), "{t:?}");
    assert_eq!(t[1], "true");
    assert_eq!(t[2], "Ok(())");
    assert_eq!(t[3], "Ok(())");
    assert_eq!(t[4], "Err(LeaseLost)");
    assert_eq!(t[5], "Err(LeaseLost)");
    assert_eq!(t[6], "Ok(())");
    assert_eq!(t[7], "Some(\"replay b\\\"ok\\\"\")");
}

/// `begin` on an embedded store hands the guard out in one poll (no await between the claim
/// and the guard, so there is nothing to cancel in between); a guard dropped without
/// completing releases the claim in the background on both paths.
#[tokio::test]
async fn an_at_once_claim_is_handed_out_in_one_poll_and_a_dropped_guard_releases() {
    for at_once in [true, false] {
        let store = Probe::new(
            MemoryStore::new(),
            Mode {
                at_once,
                ..Mode::default()
            },
        );
        let engine = Idempotency::builder(store)
            .ignore_env()
            .renew_leases(false)
            .build()
            .unwrap();
        let scope = Scope::new("b10");
        let k = key("drop");
        let first = engine
            .begin(&scope, &k, Fingerprint::of("a"))
            .now_or_never()
            .expect("answered in one poll")
            .unwrap();
        // A begin future dropped before it is polled claims nothing.
        drop(engine.begin(&scope, &key("never"), Fingerprint::of("a")));
        assert_eq!(engine.get(&scope, &key("never")).await.unwrap(), None);
        drop(first);
        for _ in 0..100 {
            if engine.get(&scope, &k).await.unwrap().is_none() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(engine.get(&scope, &k).await.unwrap(), None, "released");
        assert!(matches!(
            engine.begin(&scope, &k, Fingerprint::of("a")).await,
            Ok(Begin::Run(_))
        ));
        assert_eq!(engine.stats().background_releases, 1);
    }
}

/// A guard that outlives its runtime is dropped without a panic on both paths; its claim then
/// lapses with its lease.
#[test]
fn a_guard_outliving_its_runtime_is_dropped_quietly() {
    for at_once in [true, false] {
        let clock = ManualClock::new();
        let store = Probe::new(
            MemoryStore::builder().clock(clock.clone()).build(),
            Mode {
                at_once,
                ..Mode::default()
            },
        );
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let engine = first.block_on(async {
            Idempotency::builder(store)
                .ignore_env()
                .lease(Duration::from_secs(5))
                .build()
                .unwrap()
        });
        let scope = Scope::new("b10");
        let k = key("shutdown");
        let guard = first
            .block_on(engine.begin(&scope, &k, Fingerprint::of("a")))
            .unwrap();
        drop(first);
        drop(guard);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        second.block_on(async {
            let answer = engine.begin(&scope, &k, Fingerprint::of("a")).await;
            match answer {
                // Released after all (some work survived the runtime), or still held.
                Ok(Begin::Run(_)) | Err(IdempotencyError::InProgress { .. }) => {}
                other => panic!("{other:?}"),
            }
            clock.advance(Duration::from_secs(6));
            assert!(matches!(
                engine.begin(&scope, &k, Fingerprint::of("a")).await,
                Ok(Begin::Run(_))
            ));
        });
    }
}

/// Lease renewal (the heartbeat) of a claim made at once is scheduled and counted as for one
/// made through the async call: the same renewals in the same virtual time, duplicates told
/// "in progress" meanwhile, the completion stored.
#[tokio::test(start_paused = true)]
async fn renewals_of_an_at_once_claim_match_the_async_path() {
    let mut runs = Vec::new();
    for at_once in [true, false] {
        let recorder = Counting::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let store = Probe::new(
            MemoryStore::new(),
            Mode {
                at_once,
                ..Mode::default()
            },
        );
        let engine = Idempotency::builder(store)
            .ignore_env()
            .lease(Duration::from_secs(3))
            .build()
            .unwrap();
        let scope = Scope::new("b10");
        let guard = fresh(&engine, &scope, "renewed").await;
        let mut t = Vec::new();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1_900)).await;
            t.push(format!(
                "{:?} lost {}",
                engine
                    .begin(&scope, &key("renewed"), Fingerprint::of("a"))
                    .await
                    .err(),
                guard.is_lease_lost()
            ));
        }
        t.push(format!("{:?}", guard.complete(outcome("late")).await));
        runs.push(Seen {
            transcript: t,
            stats: format!("{:?}", engine.stats()),
            metrics: recorder.nonzero_totals(),
        });
    }
    assert_eq!(runs[0], runs[1]);
    let renewals: u64 = runs[0]
        .metrics
        .0
        .iter()
        .filter(|(k, _)| k.starts_with("idempotency_lease_renewals_total"))
        .map(|(_, n)| n)
        .sum();
    assert!(renewals >= 8, "{:?}", runs[0].metrics);
    assert_eq!(runs[0].transcript[5], "Ok(())");
}
