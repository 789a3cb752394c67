//! breaker6 repro (not a regression of the timer anchor): a Redis store under
//! `#[tokio::test(start_paused = true)]` is unreliable. Copy into
//! `crates/idempotency-redis/tests/` and run
//! `cargo test -p idempotency-redis --test breaker6_paused_clock_redis` a few times with other
//! tests in parallel: `connect` fails with `Timeout { operation: Connect, after: 2s }` whenever
//! the socket is not ready the first time the runtime idles (auto-advance jumps to the connect
//! budget). It failed 15 of 15 runs alongside two other tests, passed alone
//! (`--test-threads=1`). The timeout fires in `ConnectionManager::new`, before the anchor
//! exists; once connected, the anchor's timer (half the operation timeout) is the first one
//! auto-advance reaches, so a read gets one more idle poll than without it, not fewer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use idempotency_core::{IdempotencyStore, StoreError};
use idempotency_redis::RedisStore;

mod common;

/// A store under a paused clock (`start_paused`): connect and a round trip. The anchor keeps a
/// timer armed for as long as the store lives, so the runtime auto-advances whenever it idles.
#[tokio::test(start_paused = true)]
async fn a_store_under_a_paused_clock() {
    let connected = RedisStore::builder()
        .operation_timeout(Duration::from_secs(1))
        .connect(url())
        .await;
    let store = match connected {
        Ok(store) => store,
        Err(error) => panic!("connect under a paused clock: {error:?}"),
    };
    let k = common::unique_key("b6", "paused");
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        outcomes.push(store.get(&k).await.map(|r| r.is_none()));
    }
    let timeouts = outcomes
        .iter()
        .filter(|o| matches!(o, Err(StoreError::Timeout { .. })))
        .count();
    eprintln!("paused clock: {timeouts} of 20 reads timed out: {outcomes:?}");
    assert_eq!(timeouts, 0, "{outcomes:?}");
    let _ = IdempotencyStore::operation_bound(&store);
}
