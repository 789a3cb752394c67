//! Break pass on the bounded wait of an abandoned claim's release (`release_orphan` gives its
//! connection up past lease + operation timeout): repeated give-ups behind a row lock held
//! for long must not multiply the server's connections until it refuses everyone.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::abandoned::attempt;

use std::time::{Duration, Instant};

use idempotency_core::{Claim, IdempotencyStore, StoreKey};
use idempotency_sql::sqlx::postgres::{PgConnection, PgPoolOptions};
use idempotency_sql::sqlx::{Connection as _, PgPool};
use idempotency_sql::{PostgresStore, sqlx};
use idempotency_testkit::fixtures::PostgresServer;

async fn pool(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .unwrap()
}

/// A row lock held for long (an application transaction stuck on the record's row), and new
/// attempts at its lapsed claim keep coming, each abandoned by its 200 ms budget. Each release
/// gives its connection up after lease + timeout (0.5 s) and the pool opens a replacement, but
/// the detached connection's backend stays on the server, waiting for the lock (Postgres does
/// not notice the closed socket while it waits). Before, the pool's own connections stayed
/// stuck (the pool stopped serving that key's claims, the server kept pool-size backends);
/// with the give-up alone, the backends multiplied, two per half second, until the server
/// refused every new connection of every application ("too many clients already").
///
/// The server may see the pool's connections plus at most as many detached ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_repeated_give_ups_keep_the_servers_connections_bounded() {
    const MAX: u32 = 2;
    let server = PostgresServer::start_local_with(&["max_connections=24"]).expect("postgres");
    let url = server.url();
    let monitor = pool(url, 1).await;
    let store = PostgresStore::builder(pool(url, MAX).await)
        .operation_timeout(Duration::from_millis(200))
        .migrate()
        .await
        .unwrap();
    let key = StoreKey::from_raw("locked-for-long".to_owned());
    let first = store
        .try_claim(&key, &attempt(), Duration::from_millis(1))
        .await
        .unwrap();
    assert!(matches!(first, Claim::Claimed), "{first:?}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let holder_pool = pool(url, 1).await;
    let mut holder = holder_pool.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT 1 FROM {} WHERE store_key = $1 FOR UPDATE",
        store.quoted_table()
    ))
    .bind(key.as_str())
    .fetch_one(&mut *holder)
    .await
    .unwrap();

    let count = "SELECT count(*) FROM pg_catalog.pg_stat_activity \
                 WHERE backend_type = 'client backend'";
    let start = Instant::now();
    let (mut peak, mut attempts, mut refused) = (0_i64, 0, None);
    while start.elapsed() < Duration::from_secs(8) {
        attempts += 1;
        let got = store
            .try_claim(&key, &attempt(), Duration::from_millis(300))
            .await;
        let text = format!("{got:?}");
        if text.contains("too many clients") || text.contains("53300") {
            refused.get_or_insert(text);
        }
        let n: i64 = sqlx::query_scalar(count).fetch_one(&monitor).await.unwrap();
        peak = peak.max(n);
    }
    // Another application's connection.
    let fresh = PgConnection::connect(url).await.map(|_| ());
    println!(
        "{attempts} abandoned claims in {:?}: peak {peak} client backends (pool {MAX}, \
         monitor 1, holder 1); the store saw 'too many clients': {}; a fresh connection: {fresh:?}",
        start.elapsed(),
        refused.is_some()
    );
    holder.rollback().await.unwrap();
    assert!(
        fresh.is_ok(),
        "the server refused a new connection after {attempts} abandoned claims: {fresh:?}"
    );
    assert!(
        peak <= i64::from(2 * MAX) + 2,
        "the server saw {peak} client backends: pool {MAX} + at most {MAX} detached + monitor + \
         holder allowed"
    );
}

/// A claim with an unbounded lease (`Duration::MAX`, "no limit": the stores cap it at 100
/// years), abandoned by its budget while it waits for the row lock, lands once the lock is
/// free; its release must then free the key. The release computed its deadline as
/// `Instant::now() + lease`, which panics for such a lease: the task died, the claim was never
/// released, and the key stayed "in progress" for 100 years.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_abandoned_claim_with_an_unbounded_lease_is_released() {
    let store = PostgresStore::builder(common::pg_pool(2).await)
        .operation_timeout(Duration::from_millis(200))
        .migrate()
        .await
        .unwrap();
    let key = StoreKey::from_raw(format!(
        "{}-unbounded",
        idempotency_testkit::unique_prefix()
    ));
    let holder =
        common::abandoned::claimed_row_locked(&store, &key, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let abandoned = store.try_claim(&key, &attempt(), Duration::MAX).await;
    assert!(abandoned.is_err(), "{abandoned:?}");
    holder.rollback().await.unwrap();
    let freed = tokio::time::timeout(Duration::from_secs(15), async {
        while store.get(&key).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let after = store.get(&key).await.unwrap();
    assert!(
        freed.is_ok(),
        "the abandoned claim was never released: {after:?}"
    );
}
