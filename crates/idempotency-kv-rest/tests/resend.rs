//! A kept-alive connection that the server closes just as a request goes out (a server whose
//! idle timeout is shorter than the client pool's) must not turn into a store error: the request
//! is sent again on a fresh connection. Timeouts are never resent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_core::{IdempotencyStore, StoreError, StoreKey};
use idempotency_kv_rest::{KvRestConfig, KvRestStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server that reads each request, hangs up without a reply on the first `drop_first`
/// requests, and answers `{"result":null}` after that. Counts requests.
async fn flaky_server(drop_first: usize, stall: bool) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                while common::raw::read_request(&mut socket).await {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    if n < drop_first {
                        if stall {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        return; // hang up without a reply
                    }
                    let body = r#"{"result":null}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
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
        .operation_timeout(Duration::from_millis(500));
    KvRestStore::new(config).unwrap()
}

#[tokio::test]
async fn a_request_cut_off_before_any_reply_is_sent_again() {
    let (url, seen) = flaky_server(1, false).await;
    let store = store(&url);
    let key = StoreKey::from_raw("resend:k");
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "sent once more after the hang-up"
    );
}

#[tokio::test]
async fn retries_are_bounded() {
    let (url, seen) = flaky_server(usize::MAX, false).await;
    let store = store(&url);
    let error = store
        .get(&StoreKey::from_raw("resend:k"))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "the first try and 2 retries"
    );
}

#[tokio::test]
async fn a_timeout_is_not_sent_again() {
    let (url, seen) = flaky_server(1, true).await;
    let store = store(&url);
    let error = store
        .get(&StoreKey::from_raw("resend:k"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Timeout { .. }), "{error:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

/// A server that answers every request with a status line and headers announcing a longer body
/// than it sends, then hangs up. Counts requests.
async fn cut_body_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buffer).await;
                let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: 100\r\n\r\n{\"result\":";
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_reply_cut_off_after_its_status_is_unavailable_and_not_sent_again() {
    let (url, seen) = cut_body_server().await;
    let store = store(&url);
    let error = store
        .get(&StoreKey::from_raw("resend:k"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "an answered request is never resent"
    );
}
