//! The figures for issue 12 item 4 on Postgres: time from the start of a completion to a
//! waiting duplicate's answer on loopback, and what the `pg_notify` costs a completion.
//! Printed, not asserted (timing targets belong to benchmarks); run with
//! `cargo test --release -p idempotency-sql --test wake_figures -- --nocapture`.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Completed, Fingerprint, IdempotencyStore, Scope, StoreKey, StoredOutcome,
    unix_millis_now,
};
use idempotency_sql::PostgresStore;
use idempotency_sql::sqlx;

use common::wake::{first_attempt, key, shared_engine, spawn_duplicate, until_flagged};

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    format!("p50 {:?}, p99 {:?}, max {:?}", at(0.50), at(0.99), at(1.0))
}

/// The figure for the issue: time from the start of the completion to the waiter's answer on
/// loopback, and what the `pg_notify` in the completion statement costs it. Printed, not
/// asserted (timing targets belong to benchmarks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_up_latency_figures() {
    let engine = shared_engine().await;
    let rounds = 200;
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (scope, k) = (Scope::global(), key(&format!("wake-figure-{round}")));
        let guard = first_attempt(&engine, &scope, &k).await;
        let duplicate = spawn_duplicate(&engine, &scope, &k);
        until_flagged(engine.store(), &engine.store_key(&scope, &k)).await;
        let completing = Instant::now();
        guard
            .complete(StoredOutcome::new("done", None))
            .await
            .unwrap();
        let (answer, answered) = duplicate.await.unwrap();
        assert!(matches!(answer.unwrap(), Begin::Replay(_)));
        latencies.push(answered.saturating_duration_since(completing));
    }
    eprintln!(
        "wake-up latency over {rounds} rounds (completion start -> waiter's answer): {}",
        percentiles(latencies)
    );
    // What the `pg_notify` costs a completion: the same store and statement, on rows flagged
    // as waited on (it notifies) or not (it does not). The flag is set by hand, out of the
    // measured time.
    let mut took = [Vec::with_capacity(rounds), Vec::with_capacity(rounds)];
    for round in 0..rounds {
        for (notify, samples) in [true, false].into_iter().zip(took.iter_mut()) {
            let store_key = claimed(engine.store(), &format!("cost-{round}"), notify).await;
            let start = Instant::now();
            complete(engine.store(), &store_key).await;
            samples.push(start.elapsed());
        }
    }
    let [with, without] = took;
    eprintln!(
        "complete() notifying, {rounds} rounds: {}",
        percentiles(with)
    );
    eprintln!(
        "complete() not notifying, {rounds} rounds: {}",
        percentiles(without)
    );
    // Concurrent completions: a transaction that queued a notification takes a cluster-wide
    // lock at commit (Postgres `PreCommit_Notify`), so notifying commits serialise. Measured
    // with `fsync` on (the fixture runs with it off), so each commit's WAL flush is inside
    // the lock; restored afterwards.
    set_fsync(engine.store(), true).await;
    for notify in [true, false, true, false] {
        let (workers, each) = (8, 50);
        let started = Instant::now();
        let tasks: Vec<_> = (0..workers)
            .map(|worker| {
                let store = engine.store().clone();
                tokio::spawn(async move {
                    for round in 0..each {
                        let store_key =
                            claimed(&store, &format!("tput-{worker}-{round}"), notify).await;
                        complete(&store, &store_key).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        eprintln!(
            "claim+flag+complete, notifying {notify} (fsync on), {workers} concurrent workers x \
             {each}: {:.0} per second",
            f64::from(workers * each) / started.elapsed().as_secs_f64()
        );
    }
    set_fsync(engine.store(), false).await;
}

async fn set_fsync(store: &PostgresStore, on: bool) {
    sqlx::query(&format!("ALTER SYSTEM SET fsync = {on}"))
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(store.pool())
        .await
        .unwrap();
}

/// A fresh key claimed on `store`, its row flagged as waited on or not.
async fn claimed(store: &PostgresStore, name: &str, waited: bool) -> (StoreKey, Completed) {
    let store_key = StoreKey::from_raw(format!("wake-{name}-{}", rand::random::<u64>()));
    let record = idempotency_core::InProgress {
        token: idempotency_core::LeaseToken::generate(),
        fingerprint: Fingerprint::of("a"),
        created_at_ms: unix_millis_now(),
    };
    store
        .try_claim(&store_key, &record, Duration::from_secs(60))
        .await
        .unwrap();
    sqlx::query(&format!(
        "UPDATE {} SET waiters = $2 WHERE store_key = $1",
        store.table()
    ))
    .bind(store_key.as_str())
    .bind(waited)
    .execute(store.pool())
    .await
    .unwrap();
    let completed = Completed {
        token: record.token,
        fingerprint: record.fingerprint,
        created_at_ms: record.created_at_ms,
        completed_at_ms: unix_millis_now(),
        outcome: StoredOutcome::new("done", None),
    };
    (store_key, completed)
}

async fn complete(store: &PostgresStore, (store_key, completed): &(StoreKey, Completed)) {
    let applied = store
        .complete(
            store_key,
            &completed.token,
            completed,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(applied, idempotency_core::Fenced::Applied);
}
