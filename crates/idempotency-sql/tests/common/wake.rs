//! Helpers of the Postgres wake-up tests (`wake_postgres.rs`, `wake_figures.rs`).

use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Fingerprint, Guard, Idempotency, IdempotencyError, IdempotencyKey, Scope, StoreKey,
};
use idempotency_sql::PostgresStore;
use idempotency_sql::sqlx;

/// Polling, if it happened, would look every 5 ms.
pub const POLL: Duration = Duration::from_millis(5);
pub const MAX_WAIT: Duration = Duration::from_secs(20);

pub fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(format!("{name}-{}", rand::random::<u64>())).unwrap()
}

pub fn engine_of(store: PostgresStore, max_wait: Duration) -> Idempotency<PostgresStore> {
    Idempotency::builder(store)
        .wait_for_in_progress(max_wait, POLL)
        .ignore_env()
        .build()
        .unwrap()
}

pub async fn shared_engine() -> Idempotency<PostgresStore> {
    let store = super::pg_store(8).await;
    assert!(store.notifies_waiters());
    engine_of(store, MAX_WAIT)
}

pub async fn first_attempt(
    engine: &Idempotency<PostgresStore>,
    scope: &Scope,
    k: &IdempotencyKey,
) -> Guard<PostgresStore> {
    match engine.begin(scope, k, Fingerprint::of("a")).await.unwrap() {
        Begin::Run(guard) => guard,
        Begin::Replay(_) => panic!("the first attempt runs"),
    }
}

pub fn spawn_duplicate(
    engine: &Idempotency<PostgresStore>,
    scope: &Scope,
    k: &IdempotencyKey,
) -> tokio::task::JoinHandle<(Result<Begin<PostgresStore>, IdempotencyError>, Instant)> {
    let (engine, scope, k) = (engine.clone(), scope.clone(), k.clone());
    tokio::spawn(async move {
        let answer = engine.begin(&scope, &k, Fingerprint::of("a")).await;
        (answer, Instant::now())
    })
}

/// Gate: a duplicate of this process waits on a key with the listener up.
pub async fn until_waiting(store: &PostgresStore) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.waited_keys() == 0 || !store.wake_up_listener().0 {
        assert!(Instant::now() < deadline, "the duplicate never waited");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Gate: a duplicate waits on `key` and its row is flagged as waited on (so the completion or
/// release notifies).
pub async fn until_flagged(store: &PostgresStore, key: &StoreKey) {
    until_waiting(store).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flagged: Option<bool> = sqlx::query_scalar(&format!(
            "SELECT waiters FROM {} WHERE store_key = $1",
            store.quoted_table()
        ))
        .bind(key.as_str())
        .fetch_optional(store.pool())
        .await
        .unwrap();
        if flagged == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "the row was never flagged");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
