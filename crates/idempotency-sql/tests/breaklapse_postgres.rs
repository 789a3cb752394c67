//! The Postgres flag statement answers the lease's time left (`expires_at` less the clock, in
//! microseconds). A row whose lease never ends (`expires_at = 'infinity'`, written by an
//! operator or a tool: Postgres accepts it in a `timestamptz`) made that subtraction fail
//! (`cannot subtract infinite timestamps`), so the wait failed and the engine polled a key it
//! could have waited on (it was flagged and would notify).
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use idempotency_core::{
    Claim, Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreKey, Waited, unix_millis_now,
};
use idempotency_sql::sqlx;

async fn wait_on_a_row_expiring_at(expires_at: &str) {
    let store = common::pg_store(4).await;
    assert!(store.notifies_waiters());
    let admin = common::pg_pool(1).await;
    let key = StoreKey::from_raw(format!("{}endless", idempotency_testkit::unique_prefix()));
    let owner = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("a"),
        created_at_ms: unix_millis_now(),
    };
    let claim = store
        .try_claim(&key, &owner, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claim, Claim::Claimed);
    let updated = sqlx::query(&format!(
        "UPDATE {} SET expires_at = '{expires_at}' WHERE store_key = $1",
        store.table()
    ))
    .bind(key.as_str())
    .execute(&admin)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    let started = Instant::now();
    let waited = store
        .wait_for_change(&key, &owner.token, Duration::from_millis(300))
        .await;
    let after = started.elapsed();
    assert!(
        matches!(waited, Ok(Waited::TimedOut)),
        "a row held until {expires_at}: the wait times out (not an error, which makes the \
         engine poll): {waited:?} after {after:?}"
    );
    assert!(after >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ending_at_infinity_leaves_the_wait_to_its_timeout() {
    wait_on_a_row_expiring_at("infinity").await;
}
