//! F4 + F9: the shop's Postgres is down when the demo starts. The demo still starts (its pool
//! connects lazily), and requests get 503 `application/problem+json` with `Retry-After` within
//! the pool's acquire timeout (the store's budget) instead of the demo exiting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use idempotency::AnyStore;
use idempotency::memory::MemoryStore;
use idempotency_demo::{AppState, Database, SlowWork};
use idempotency_testkit::RefusedPort;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_at_start_serves_503_problem_json_with_retry_after() {
    // Nothing listens there, and no other server takes the port while the test runs.
    let down = RefusedPort::new();
    let url = format!("postgres://postgres@{}/shop", down.addr());
    let db = Database::connect(&url)
        .await
        .expect("a database that is down does not stop the demo");
    let engine = common::engine(AnyStore::from(MemoryStore::new()));
    let state = AppState::with_database(engine, None, SlowWork::default(), None, db);
    let demo = common::Demo::start_with_state(state).await;

    let client = reqwest::Client::new();
    let started = Instant::now();
    let response = client
        .put(format!("{}/api/products/tea", demo.url))
        .bearer_auth("alice")
        .header("idempotency-key", "down-1")
        .header("content-type", "application/json")
        .body(r#"{"name":"Tea","price":300}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.expect("problem+json body");
    assert_eq!(body["status"], 503);
    assert_eq!(body["code"], "DATABASE_UNAVAILABLE");
    // The pool's acquire timeout is the store's 1 s budget (not 5 s); generous slack for load.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// The shop's Postgres is frozen (SIGSTOP) when the demo starts: requests get 503 meanwhile;
/// once it answers again the tables are created in the background and a request succeeds,
/// without restarting the demo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_back_after_start_serves_requests() {
    let server = idempotency_testkit::fixtures::PostgresServer::start().unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            idempotency_testkit::fixtures::HOW_TO_GET_POSTGRES
        )
    });
    server.pause().expect("pause postgres");
    let db = Database::connect(server.url())
        .await
        .expect("a frozen database does not stop the demo");
    let engine = common::engine(AnyStore::from(MemoryStore::new()));
    let state = AppState::with_database(engine, None, SlowWork::default(), None, db);
    let demo = common::Demo::start_with_state(state).await;
    let client = reqwest::Client::new();
    let put = |key: String| {
        client
            .put(format!("{}/api/products/tea", demo.url))
            .bearer_auth("alice")
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(r#"{"name":"Tea","price":300}"#)
            .send()
    };
    let refused = put("frozen".to_owned()).await.expect("request");
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().contains_key("retry-after"));

    server.resume().expect("resume postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let answer = put(format!("back-{attempt}")).await.expect("request");
        match answer.status().as_u16() {
            201 | 200 => return,
            503 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("expected the shop to work again, got {other}"),
        }
    }
}
