//! Helpers of the abandoned-claim tests (`claim_timeout.rs`, `abandoned_claims.rs`).

use std::time::{Duration, Instant};

use idempotency_core::{Fingerprint, InProgress, LeaseToken};
use idempotency_sql::sqlx;

/// A fresh in-progress record (its own random token).
pub fn attempt() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("order"),
        created_at_ms: idempotency_core::unix_millis_now(),
    }
}

/// Wait (at most 20 s) until every connection of `pool` is back and idle: a statement
/// abandoned by a timeout keeps its connection until it has run (sqlx pings a connection
/// before it goes back to the pool, and the ping waits for the statement), and here until its
/// release has run too.
pub async fn settled<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.num_idle() != pool.size() as usize {
        assert!(Instant::now() < deadline, "the pool never went idle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Claim `key` on `store` with `lease` (a record whose lease is to lapse), then lock its row in
/// a transaction on a connection of its own, which holds the lock until it commits or is
/// dropped. The claim must succeed.
pub async fn claimed_row_locked(
    store: &idempotency_sql::PostgresStore,
    key: &idempotency_core::StoreKey,
    lease: Duration,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    use idempotency_core::IdempotencyStore as _;
    let first = store.try_claim(key, &attempt(), lease).await;
    assert!(
        matches!(first, Ok(idempotency_core::Claim::Claimed)),
        "{first:?}"
    );
    let mut holder = super::pg_pool(1).await.begin().await.expect("begin");
    sqlx::query(&format!(
        "SELECT 1 FROM {} WHERE store_key = $1 FOR UPDATE",
        store.quoted_table()
    ))
    .bind(key.as_str())
    .fetch_one(&mut *holder)
    .await
    .expect("lock the key's row");
    holder
}
