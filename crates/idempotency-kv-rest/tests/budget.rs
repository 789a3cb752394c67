//! One time budget per primitive: the requests a primitive makes after its first (the `EVAL`
//! sent after `NOSCRIPT`, the `GET` made after a script answered "lease lost") get only what is
//! left of the primitive's `operation_timeout`, so the store keeps the bound it announces
//! (`IdempotencyStore::operation_bound`), on which the engine relies to arm no timer of its own.
//! Each used to get a whole budget of its own: up to twice (three times) the timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotency_core::{
    Completed, Fenced, Fingerprint, IdempotencyStore, LeaseToken, StoreError, StoreKey,
    StoreOperation, StoredOutcome,
};
use idempotency_kv_rest::{KvRestConfig, KvRestStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// The budget of each primitive in these tests.
const BUDGET: Duration = Duration::from_secs(2);
/// When the first request is answered: three quarters into the budget, so a later request
/// given a whole budget of its own would end well past it.
const FIRST_REPLY_AFTER: Duration = Duration::from_millis(1500);
/// Past the budget, well before `FIRST_REPLY_AFTER + BUDGET` (3.5 s).
const WITHIN: Duration = Duration::from_millis(2900);

/// A server that answers the first request (an `EVALSHA`) with `first` (status, body) after
/// `FIRST_REPLY_AFTER` and never answers any later one. Records each request's command name.
async fn server(first: (u16, &'static str)) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                while let Some(body) = common::raw::read_request_body(&mut socket).await {
                    let command: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
                    let name = command[0].as_str().unwrap_or_default().to_owned();
                    let n = {
                        let mut log = log.lock().unwrap();
                        log.push(name);
                        log.len()
                    };
                    if n > 1 {
                        // Never answers (the connection stays open).
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    tokio::time::sleep(FIRST_REPLY_AFTER).await;
                    let (status, body) = first;
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

fn store(url: &str) -> KvRestStore {
    let config = KvRestConfig::new(url, "a-token-of-at-least-32-characters-long")
        .unwrap()
        .operation_timeout(BUDGET);
    KvRestStore::new(config).unwrap()
}

fn completed(token: LeaseToken) -> Completed {
    Completed {
        token,
        fingerprint: Fingerprint::of(b"request"),
        created_at_ms: 1,
        completed_at_ms: 2,
        outcome: StoredOutcome::new(b"answer".to_vec(), None),
    }
}

#[tokio::test]
async fn the_store_announces_its_operation_timeout_as_its_bound() {
    let store = store("http://127.0.0.1:9");
    assert_eq!(store.operation_bound(), Some(BUDGET));
}

/// `EVALSHA` answered `NOSCRIPT` late in the budget; the `EVAL` that follows never gets an
/// answer: the completion times out at the budget, not a whole budget after the `NOSCRIPT`.
#[tokio::test]
async fn the_eval_after_noscript_gets_what_is_left_of_the_budget() {
    let (url, seen) = server((400, r#"{"error":"NOSCRIPT No matching script."}"#)).await;
    let store = store(&url);
    let token = LeaseToken::generate();
    let started = Instant::now();
    let answer = store
        .complete(
            &StoreKey::from_raw("budget:noscript"),
            &token,
            &completed(token),
            Duration::from_secs(60),
        )
        .await;
    let took = started.elapsed();
    assert!(
        matches!(
            answer,
            Err(StoreError::Timeout {
                operation: StoreOperation::Complete,
                after: BUDGET
            })
        ),
        "{answer:?}"
    );
    assert!(took < WITHIN, "took {took:?}, budget {BUDGET:?}");
    assert_eq!(*seen.lock().unwrap(), ["EVALSHA", "EVAL"]);
}

/// The release script answers 0 ("lease lost") late in the budget; the `GET` that checks the
/// key holds a record never gets an answer: the script's answer stands, within the budget.
#[tokio::test]
async fn the_read_after_lease_lost_gets_what_is_left_of_the_budget() {
    let (url, seen) = server((200, r#"{"result":0}"#)).await;
    let store = store(&url);
    let started = Instant::now();
    let answer = store
        .release(&StoreKey::from_raw("budget:lost"), &LeaseToken::generate())
        .await;
    let took = started.elapsed();
    assert!(matches!(answer, Ok(Fenced::LeaseLost)), "{answer:?}");
    assert!(took < WITHIN, "took {took:?}, budget {BUDGET:?}");
    assert_eq!(*seen.lock().unwrap(), ["EVALSHA", "GET"]);
}
