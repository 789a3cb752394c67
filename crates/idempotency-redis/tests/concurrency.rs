//! Concurrency against real Redis: exactly one winner per key; fencing after a real lease lapse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;

use idempotency_core::{
    Claim, Completed, DynIdempotencyStore, Fenced, Fingerprint, IdempotencyStore, InProgress,
    LeaseToken, Record, StoreKey, StoredOutcome, unix_millis_now,
};
use idempotency_testkit::unique_prefix;

const KEYS: usize = 2_000;
const CLAIMERS: usize = 16;

fn record(seed: u64) -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of(seed.to_string()),
        created_at_ms: unix_millis_now(),
    }
}

/// 2 000 keys, 16 concurrent claimers each (32 000 claims racing on one multiplexed connection): exactly one `Claimed` per key, and every loser
/// sees the winner's record.
async fn one_winner_per_key(store: Arc<dyn DynIdempotencyStore>, in_flight_per_claimer: usize) {
    let prefix = unique_prefix();
    let keys: Arc<Vec<StoreKey>> = Arc::new(
        (0..KEYS)
            .map(|i| StoreKey::from_raw(format!("{prefix}k{i}")))
            .collect(),
    );
    let mut tasks = Vec::with_capacity(CLAIMERS);
    for claimer in 0..CLAIMERS {
        let store = Arc::clone(&store);
        let keys = Arc::clone(&keys);
        tasks.push(tokio::spawn(async move {
            // Each claimer walks the keys in its own order so claims truly race.
            let mut order: Vec<usize> = (0..KEYS).collect();
            order.rotate_left(claimer * KEYS / CLAIMERS);
            let claims = order.into_iter().map(|i| {
                let store = Arc::clone(&store);
                let keys = Arc::clone(&keys);
                async move {
                    let mine = record(claimer as u64);
                    let claim = store
                        .try_claim(&keys[i], &mine, Duration::from_secs(60))
                        .await
                        .expect("try_claim");
                    (i, mine, claim)
                }
            });
            // Bounded per claimer: the point is the race, not queueing 32 000 requests behind
            // each other past the 1 s operation budget.
            futures::stream::iter(claims)
                .buffer_unordered(in_flight_per_claimer)
                .collect::<Vec<_>>()
                .await
        }));
    }
    let mut winners: Vec<Option<InProgress>> = vec![None; KEYS];
    let mut losers = Vec::new();
    for task in tasks {
        for (i, mine, claim) in task.await.unwrap() {
            match claim {
                Claim::Claimed => {
                    assert!(winners[i].is_none(), "two winners for key {i}");
                    winners[i] = Some(mine);
                }
                Claim::Existing(existing) => losers.push((i, existing)),
            }
        }
    }
    assert!(
        winners.iter().all(Option::is_some),
        "every key has a winner"
    );
    assert_eq!(losers.len(), KEYS * (CLAIMERS - 1));
    for (i, existing) in losers {
        assert_eq!(
            existing,
            Record::InProgress(winners[i].clone().unwrap()),
            "key {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn single_server_one_winner_per_key() {
    one_winner_per_key(Arc::new(common::single_store().await), 64).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_one_winner_per_key() {
    // The cluster client funnels every request through one driver task; with 1 024 requests in
    // flight on a 2-core machine (debug build) its tail passes the 1 s budget, so 16 x 16 here.
    one_winner_per_key(Arc::new(common::cluster_store().await), 16).await;
}

/// A claimer whose short real lease lapsed, and whose key was taken over, cannot complete,
/// release or extend: the fencing token belongs to the new claim.
#[tokio::test(flavor = "multi_thread")]
async fn completion_after_a_real_lease_lapse_is_fenced() {
    let store = common::single_store().await;
    let k = StoreKey::from_raw(format!("{}fenced", unique_prefix()));
    let lease = Duration::from_millis(250);
    let first = record(1);
    assert_eq!(
        store.try_claim(&k, &first, lease).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.extend(&k, &first.token, lease).await.unwrap(),
        Fenced::Applied,
        "still held"
    );
    tokio::time::sleep(lease + Duration::from_millis(150)).await;
    assert_eq!(store.get(&k).await.unwrap(), None, "expired by the server");

    let second = record(2);
    assert_eq!(
        store
            .try_claim(&k, &second, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed
    );
    let late = Completed {
        token: first.token,
        fingerprint: first.fingerprint,
        created_at_ms: first.created_at_ms,
        completed_at_ms: unix_millis_now(),
        outcome: StoredOutcome::new("stale", None),
    };
    let retention = Duration::from_secs(60);
    assert_eq!(
        store
            .complete(&k, &first.token, &late, retention)
            .await
            .unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        store.release(&k, &first.token).await.unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        store.extend(&k, &first.token, lease).await.unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        store.get(&k).await.unwrap(),
        Some(Record::InProgress(second.clone()))
    );

    // The new owner completes; a retry of its completion is accepted unchanged.
    let done = Completed {
        token: second.token,
        ..late.clone()
    };
    assert_eq!(
        store
            .complete(&k, &second.token, &done, retention)
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert_eq!(
        store
            .complete(&k, &second.token, &done, retention)
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert_eq!(store.get(&k).await.unwrap(), Some(Record::Completed(done)));
}
