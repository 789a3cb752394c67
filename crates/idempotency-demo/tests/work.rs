//! Simulated slow work (`DEMO_WORK_MS`, `DEMO_AFTER_WRITE_MS`) and the execution journal
//! (`DEMO_EXECUTION_LOG`) that `cargo xtask chaos` relies on, over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Demo, send};
use idempotency_demo::{AppState, ExecutionLog, SlowWork};
use reqwest::Method;

fn journal_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "idempotency-demo-{tag}-{}-{}.jsonl",
        std::process::id(),
        rand::random::<u64>()
    ))
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn every_execution_is_journalled_once_and_replays_are_not() {
    let path = journal_path("journal");
    let state = AppState::with_work(
        common::engine(common::store(Backend::Memory).await),
        None,
        SlowWork::default(),
        Some(ExecutionLog::open(&path).unwrap()),
    );
    let demo = Demo::start_with_state(state).await;
    let client = reqwest::Client::new();
    let tea = format!("{}/api/products/tea", demo.url);
    let body = r#"{"name":"Tea","price":450}"#;
    let first = send(
        &client,
        Method::PUT,
        &tea,
        Some("alice"),
        Some("k-1"),
        Some(body),
    )
    .await;
    assert_eq!(first.status, 201);
    let again = send(
        &client,
        Method::PUT,
        &tea,
        Some("alice"),
        Some("k-1"),
        Some(body),
    )
    .await;
    assert!(again.replayed);
    let order = send(
        &client,
        Method::POST,
        &format!("{}/api/orders", demo.url),
        Some("bob"),
        Some("\"k-2\""),
        Some(r#"{"productId":"tea","quantity":2}"#),
    )
    .await;
    assert_eq!(order.status, 201);

    let journal = lines(&path);
    assert_eq!(journal.len(), 2, "{journal:?}");
    assert_eq!(journal[0]["key"], "k-1");
    assert_eq!(journal[0]["principal"], "alice");
    assert_eq!(journal[0]["route"], "PUT /api/products/{id}");
    assert_eq!(journal[0]["resource"], "tea");
    assert_eq!(journal[0]["pid"], std::process::id());
    assert!(journal[0]["at"].as_u64().unwrap() > 1_700_000_000_000);
    // The header as sent, quotes included.
    assert_eq!(journal[1]["key"], "\"k-2\"");
    assert_eq!(journal[1]["resource"], order.json()["data"]["id"]);
    assert_eq!(demo.state.handler_runs(), 2);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn slow_work_delays_the_answer_around_the_write() {
    let path = journal_path("slow");
    let work = SlowWork::from_millis(150, 100);
    let state = AppState::with_work(
        common::engine(common::store(Backend::Memory).await),
        None,
        work,
        Some(ExecutionLog::open(&path).unwrap()),
    );
    assert_eq!(state.work(), work);
    let demo = Demo::start_with_state(state).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/products/slow", demo.url);
    let started = Instant::now();
    let sent_at = idempotency::unix_millis_now();
    let answer = send(
        &client,
        Method::PUT,
        &url,
        Some("alice"),
        Some("k-slow"),
        Some(r#"{"name":"Slow","price":1}"#),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(answer.status, 201);
    // Sleeps last at least their duration: the answer cannot come sooner than both delays, and
    // the write happened after the first one.
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    let journal = lines(&path);
    assert_eq!(journal.len(), 1);
    assert!(journal[0]["at"].as_u64().unwrap() >= sent_at + 150);
    let _ = std::fs::remove_file(&path);
}
