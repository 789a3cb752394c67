//! `time_to_live` on both databases: the rest of the lease of an in-progress record and of the
//! retention of a completed one, by the database's clock, in one statement; `None` for a key
//! without a live row. (The behaviour suite checks the bounds when a store answers; this checks
//! that the SQL stores do answer.)
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use idempotency_core::{
    Completed, DynIdempotencyStore, Fenced, Fingerprint, IdempotencyKey, IdempotencyStore,
    InProgress, LeaseToken, Scope, StoreKey, StoredOutcome,
};

const LEASE: Duration = Duration::from_secs(60);
const RETAIN: Duration = Duration::from_secs(3600);

fn key(name: &str) -> StoreKey {
    StoreKey::derive(
        &idempotency_testkit::unique_prefix(),
        &Scope::global(),
        &IdempotencyKey::new(name).unwrap(),
    )
}

/// Claim, complete, lapse: what `time_to_live` reports at each step.
async fn reports_the_time_left(store: &dyn DynIdempotencyStore) {
    let k = key("ttl");
    assert_eq!(store.time_to_live(&k).await.unwrap(), None, "absent");
    let claim = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("order"),
        created_at_ms: 1,
    };
    store.try_claim(&k, &claim, LEASE).await.unwrap();
    let left = store.time_to_live(&k).await.unwrap().expect("in progress");
    assert!(
        left <= LEASE && left > LEASE - Duration::from_secs(5),
        "{left:?}"
    );
    let done = Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: 1,
        completed_at_ms: 2,
        outcome: StoredOutcome::new("done", None),
    };
    assert_eq!(
        store
            .complete(&k, &claim.token, &done, RETAIN)
            .await
            .unwrap(),
        Fenced::Applied
    );
    let left = store.time_to_live(&k).await.unwrap().expect("completed");
    assert!(
        left <= RETAIN && left > RETAIN - Duration::from_secs(5),
        "{left:?}"
    );
    let short = key("short");
    store
        .try_claim(&short, &claim, Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.time_to_live(&short).await.unwrap(), None, "lapsed");
}

#[tokio::test]
async fn postgres_time_to_live_reports_the_time_left() {
    reports_the_time_left(&common::pg_store(4).await).await;
}

#[tokio::test]
async fn sqlite_time_to_live_reports_the_time_left() {
    let (store, _dir) = common::sqlite_store(4).await;
    reports_the_time_left(&store).await;
}
