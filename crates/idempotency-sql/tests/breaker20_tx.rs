//! breaker20: attacks on the Postgres `complete_in` as changed by 54e3f0c — the lock bound and
//! the completion sent as ONE simple-query message, every value written into the text as hex
//! digits (`pg_catalog.decode('…', 'hex')`).
#![cfg(all(feature = "postgres", feature = "sqlite"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::orders::{Fixture, orders_table, unique};
use idempotency_core::{
    Begin, Fingerprint, IdempotencyError, IdempotencyKey, Scope, StoredOutcome,
};
use idempotency_sql::sqlx::postgres::{PgPool, PgPoolOptions};
use idempotency_sql::{PostgresStore, sqlx};
use idempotency_testkit::fixtures::PostgresServer;

/// A pool on `server`.
async fn pool_on(server: &PostgresServer, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(server.url())
        .await
        .expect("connecting to the local postgres server")
}

/// A store on its own records table (no waking).
async fn store_on(pool: PgPool) -> PostgresStore {
    PostgresStore::builder(pool)
        .table(unique("b20_records"))
        .operation_timeout(Duration::from_secs(10))
        .wake_waiters(false)
        .migrate()
        .await
        .expect("migrating")
}

/// Lower-case hexadecimal digits of `bytes` (as `pg_catalog.encode(…, 'hex')` writes them).
fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The server's log (`postgres.log` next to the data directory, as the testkit's local
/// fixture writes it), read by the server itself (the test may run as another user).
async fn server_log(pool: &PgPool) -> String {
    sqlx::query_scalar::<_, String>(
        "SELECT pg_catalog.pg_read_file(pg_catalog.current_setting('data_directory') \
         || '/../postgres.log')",
    )
    .fetch_one(pool)
    .await
    .expect("reading the server log (a local testkit server, connected as a superuser)")
}

/// A retry of `key` with the documented flow (errors handled): one more order, unless the key
/// replays. Waits (within 10 s) for a claim released in the background.
async fn retry_unless_replayed(f: &Fixture, key: &IdempotencyKey) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let guard = loop {
        match f
            .engine
            .begin(&Scope::global(), key, Fingerprint::of("order"))
            .await
        {
            Ok(Begin::Run(guard)) => break guard,
            Ok(Begin::Replay(_)) => return,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "still refused after 10 s: {error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut tx = f.pool.begin().await.expect("begin tx");
    f.insert(&mut tx, "retry").await;
    let pending = f
        .complete_in(&mut tx, guard, "retry")
        .await
        .expect("the retry completes");
    tx.commit().await.expect("commit");
    pending.committed();
}

/// A completion in the caller's transaction that does not apply (the record was deleted by an
/// operator: the lease is lost) fails in the statement (SQLSTATE 22P02), and Postgres logs a
/// failing statement's text at `log_min_error_statement = error` (its default). Since 54e3f0c
/// that text holds every value — the response body (hex), its content type, the key — so
/// every failed completion (a lost lease, a lock timeout, a serialization failure) writes the
/// whole stored response into the server log: whatever the response held (personal data,
/// tokens) ends up in the database's logs and their shipping, and a 1 MiB body adds a 2 MiB
/// log line per failure. With bound parameters (2a048f5 and before) the log names `$6`, not
/// the body (`log_parameter_max_length_on_error` is 0 by default).
///
/// Fails on 54e3f0c (the hex of the body is in the log); passes on 2a048f5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_completion_does_not_write_the_response_body_into_the_server_log() {
    let server = PostgresServer::start_local().expect("local postgres (see the testkit docs)");
    let pool = pool_on(&server, 4).await;
    let f = Fixture::on_store(
        store_on(pool.clone()).await,
        Duration::from_secs(30),
        false,
        Duration::from_secs(2),
    )
    .await;
    let key = IdempotencyKey::new("b20-log").unwrap();
    let guard = f.run(&key).await;
    // The operator deletes the claim: the completion cannot apply.
    sqlx::query(&format!("DELETE FROM {} WHERE store_key = $1", f.table()))
        .bind(f.store_key(&key))
        .execute(&f.pool)
        .await
        .expect("operator deletes the claim");

    let secret = "{\"card\":\"4111111111111111\",\"token\":\"b20-very-secret-session\"}";
    let mut tx = f.pool.begin().await.expect("begin tx");
    f.insert(&mut tx, "first").await;
    let result = f
        .engine
        .store()
        .complete_in(
            &mut tx,
            guard,
            StoredOutcome::new(secret.to_owned(), Some("application/json".into())),
        )
        .await;
    let error = result.expect_err("the record is gone: the completion cannot apply");
    assert!(matches!(error, IdempotencyError::LeaseLost), "{error:?}");
    drop(tx);

    // The failure is in the log (the server writes it before answering the client).
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = server_log(&pool).await;
        if log.contains("could not be completed in this transaction") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the failed completion never reached the server log: {log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let body_hex = hex_of(secret.as_bytes());
    assert!(
        !log.contains(&body_hex[..64]) && !log.contains(secret),
        "the failed completion wrote the stored response body into the server log \
         (log_min_error_statement = error logs the statement text, which now holds every \
         value as hex digits):\n{}",
        log.lines()
            .filter(|line| line.contains(&body_hex[..64]))
            .map(|line| &line[..line.len().min(400)])
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A large body (30 MB, compression off, a raised `max_outcome_size`) under a short store
/// timeout: the one message (~60 MB of hex digits) is still being written, or parsed, when the
/// client gives up. The handler ignores the `Timeout` and commits; a retry then runs the
/// documented flow. One order per key, never an order without its record, and the caller's
/// commit answers (the connection is not left mid-message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_body_cut_by_the_timeout_then_ignored_commit_orders_once() {
    let server = PostgresServer::start_local().expect("local postgres (see the testkit docs)");
    let pool = pool_on(&server, 4).await;
    let f = Fixture::build(store_on(pool).await, orders_table(), |builder| {
        builder
            .lease(Duration::from_secs(30))
            .renew_leases(false)
            .store_timeout(Duration::from_millis(100))
            .max_outcome_size(64 * 1024 * 1024)
            .compression_threshold(usize::MAX)
    })
    .await;
    let key = IdempotencyKey::new("b20-huge").unwrap();
    let guard = f.run(&key).await;
    // Incompressible-looking bytes (no run Postgres or the wire could shortcut).
    let body: Vec<u8> = (0..30 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut tx = f.pool.begin().await.expect("begin tx");
    f.insert(&mut tx, "first").await;
    let result = f
        .engine
        .store()
        .complete_in(&mut tx, guard, StoredOutcome::new(body, None))
        .await;
    // Whatever it answered, the handler commits (errors ignored), within a bound.
    let committed = tokio::time::timeout(Duration::from_secs(60), tx.commit()).await;
    assert!(
        committed.is_ok(),
        "the caller's COMMIT after complete_in ({result:?}) never answered"
    );
    let after_ignored_commit = f.count().await;
    retry_unless_replayed(&f, &key).await;
    let after_retry = f.count().await;
    assert!(
        matches!((after_ignored_commit, after_retry), (0 | 1, 1)),
        "one order per key (complete_in: {:?}; orders after the ignored commit ({committed:?}): \
         {after_ignored_commit}, after the retry: {after_retry})",
        result.as_ref().map(|_| "applied")
    );
}

/// The caller bounds `complete_in` with its own deadline (`tokio::time::timeout` around it)
/// while a 30 MB completion (~60 MB of text in one message) is still being written: the
/// future is dropped mid-message. The handler then commits. Whatever sqlx does with the rest
/// of the message, the commit answers (within 60 s), and there is never an order without its
/// record: after a retry, exactly one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_completion_dropped_mid_message_then_commit_orders_once() {
    let server = PostgresServer::start_local().expect("local postgres (see the testkit docs)");
    let pool = pool_on(&server, 4).await;
    let f = Fixture::build(store_on(pool).await, orders_table(), |builder| {
        builder
            .lease(Duration::from_secs(30))
            .renew_leases(false)
            .store_timeout(Duration::from_secs(20))
            .max_outcome_size(64 * 1024 * 1024)
            .compression_threshold(usize::MAX)
    })
    .await;
    let key = IdempotencyKey::new("b20-dropped").unwrap();
    let guard = f.run(&key).await;
    let body: Vec<u8> = (0..30 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut tx = f.pool.begin().await.expect("begin tx");
    f.insert(&mut tx, "first").await;
    // The engine's prepare (compression off) is quick; the caller's deadline hits while the
    // message is built, written or run.
    let pending = f.engine.store().write_in(
        &mut tx,
        guard
            .prepare(StoredOutcome::new(body, None))
            .await
            .expect("prepare"),
    );
    let result = tokio::time::timeout(Duration::from_millis(200), pending).await;
    let committed = tokio::time::timeout(Duration::from_secs(60), tx.commit()).await;
    assert!(
        committed.is_ok(),
        "the caller's COMMIT after a dropped complete_in never answered"
    );
    let after_ignored_commit = f.count().await;
    retry_unless_replayed(&f, &key).await;
    let after_retry = f.count().await;
    assert!(
        matches!((after_ignored_commit, after_retry), (0 | 1, 1)),
        "one order per key (complete_in finished in time: {}; orders after the commit \
         ({committed:?}): {after_ignored_commit}, after the retry: {after_retry})",
        result.is_ok()
    );
}
