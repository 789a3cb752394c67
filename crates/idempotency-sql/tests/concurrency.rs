//! 1 000 keys × 16 concurrent claimers released together per key: exactly one winner per key,
//! and every loser sees the winner's record, on Postgres and on SQLite.
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{
    Claim, DynIdempotencyStore, Fingerprint, IdempotencyStore, InProgress, LeaseToken, Record,
    StoreKey,
};
use tokio::sync::Barrier;

const KEYS: usize = 1_000;
const CLAIMERS: usize = 16;
/// Keys raced at once: enough to keep every pooled connection busy, few enough that the 16
/// claimers of a key really start together.
const WAVE: usize = 25;

async fn one_winner_per_key(store: Arc<dyn DynIdempotencyStore>, prefix: &str) {
    let mut winners_total = 0;
    for wave in 0..KEYS / WAVE {
        let mut tasks = Vec::with_capacity(WAVE * CLAIMERS);
        for n in wave * WAVE..(wave + 1) * WAVE {
            let key = StoreKey::from_raw(format!("{prefix}race-{n}"));
            // Every claimer of a key waits here until all 16 are ready, then they claim at once.
            let gate = Arc::new(Barrier::new(CLAIMERS));
            for _ in 0..CLAIMERS {
                let (store, key, gate) = (Arc::clone(&store), key.clone(), Arc::clone(&gate));
                tasks.push(tokio::spawn(async move {
                    let record = InProgress {
                        token: LeaseToken::generate(),
                        fingerprint: Fingerprint::of("same"),
                        created_at_ms: 1,
                    };
                    gate.wait().await;
                    let claim = store
                        .try_claim(&key, &record, Duration::from_secs(120))
                        .await
                        .expect("try_claim");
                    (n, claim, record)
                }));
            }
        }
        let mut per_key: Vec<(Vec<InProgress>, Vec<Record>)> = vec![(Vec::new(), Vec::new()); WAVE];
        for task in tasks {
            let (n, claim, record) = task.await.expect("task");
            let slot = &mut per_key[n - wave * WAVE];
            match claim {
                Claim::Claimed => slot.0.push(record),
                Claim::Existing(seen) => slot.1.push(seen),
            }
        }
        for (i, (winners, seen)) in per_key.into_iter().enumerate() {
            let n = wave * WAVE + i;
            assert_eq!(
                winners.len(),
                1,
                "key {n}: exactly one of {CLAIMERS} claimers wins"
            );
            let winner = Record::InProgress(winners[0].clone());
            assert_eq!(seen.len(), CLAIMERS - 1);
            assert!(
                seen.iter().all(|r| *r == winner),
                "key {n}: losers see the winner"
            );
            winners_total += 1;
        }
    }
    assert_eq!(winners_total, KEYS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_thousand_keys_sixteen_claimers_one_winner_each() {
    let store = common::pg_store(32).await;
    one_winner_per_key(Arc::new(store), &idempotency_testkit::unique_prefix()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_thousand_keys_sixteen_claimers_one_winner_each() {
    let (store, _dir) = common::sqlite_store(8).await;
    one_winner_per_key(Arc::new(store), &idempotency_testkit::unique_prefix()).await;
}

/// Expired rows are taken over by exactly one of many concurrent claimers too (the upsert's
/// takeover branch, not only the insert).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_takeover_of_expired_claims_has_one_winner() {
    let pg: Arc<dyn DynIdempotencyStore> = Arc::new(common::pg_store(32).await);
    let (lite, _dir) = common::sqlite_store(8).await;
    let lite: Arc<dyn DynIdempotencyStore> = Arc::new(lite);
    for store in [pg, lite] {
        let prefix = idempotency_testkit::unique_prefix();
        for n in 0..50 {
            let key = StoreKey::from_raw(format!("{prefix}stale-{n}"));
            let first = InProgress {
                token: LeaseToken::generate(),
                fingerprint: Fingerprint::of("same"),
                created_at_ms: 1,
            };
            store
                .try_claim(&key, &first, Duration::from_millis(1))
                .await
                .expect("claim");
        }
        // Every lease above is 1 ms on the database clock.
        tokio::time::sleep(Duration::from_millis(20)).await;
        one_winner_per_key_on(&store, &prefix, 50).await;
    }
}

async fn one_winner_per_key_on(store: &Arc<dyn DynIdempotencyStore>, prefix: &str, keys: usize) {
    for n in 0..keys {
        let key = StoreKey::from_raw(format!("{prefix}stale-{n}"));
        let gate = Arc::new(Barrier::new(CLAIMERS));
        let mut tasks = Vec::new();
        for _ in 0..CLAIMERS {
            let (store, key, gate) = (Arc::clone(store), key.clone(), Arc::clone(&gate));
            tasks.push(tokio::spawn(async move {
                let record = InProgress {
                    token: LeaseToken::generate(),
                    fingerprint: Fingerprint::of("same"),
                    created_at_ms: 2,
                };
                gate.wait().await;
                store
                    .try_claim(&key, &record, Duration::from_secs(120))
                    .await
                    .expect("claim")
            }));
        }
        let mut winners = 0;
        for task in tasks {
            if task.await.expect("task") == Claim::Claimed {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "expired key {n}: exactly one takeover");
    }
}
