//! The `Idempotency-Key` header as it arrives over a real socket (axum on 127.0.0.1, requests
//! written byte for byte on raw TCP, so nothing between the test and the server joins, splits
//! or drops header lines):
//!
//! - two header lines are refused (`multiple-keys`): the second line is not silently ignored
//!   (`HeaderMap::get` would return only the first);
//! - one line holding a list (`t-1, t-2`, what a proxy makes of two lines) is refused the same
//!   way, not as "a bad byte 0x20";
//! - RFC 8941 parameters on a quoted key are ignored: `"k";a=1`, `"k"` and `k` are one record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use idempotency_core::Idempotency;
use idempotency_http::{GlobalScope, IdempotencyLayer};
use idempotency_memory::MemoryStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Serves `/orders` behind the layer; the counter is the number of handler runs.
async fn serve() -> (SocketAddr, Arc<AtomicUsize>) {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route(
            "/orders",
            post(|State(runs): State<Arc<AtomicUsize>>| async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                format!("order {n}")
            }),
        )
        .layer(IdempotencyLayer::builder(engine).scope(GlobalScope).build())
        .with_state(runs.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, runs)
}

/// Sends a POST with these `Idempotency-Key` header lines, exactly as given; returns the status
/// and the body.
async fn post_with_key_lines(addr: SocketAddr, lines: &[&str]) -> (u16, String) {
    let mut request = String::from("POST /orders HTTP/1.1\r\nHost: test\r\n");
    for line in lines {
        request.push_str(&format!("Idempotency-Key: {line}\r\n"));
    }
    request.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the server answers within 10 s")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The problem `type` slug and `detail` of a problem+json body.
fn problem(body: &str) -> (String, String) {
    // The body may be chunked; the JSON object is the part between the outer braces.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    let kind = value["type"].as_str().unwrap().rsplit('#').next().unwrap();
    (
        kind.to_owned(),
        value["detail"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn two_key_header_lines_are_refused_not_half_read() {
    let (addr, runs) = serve().await;
    for lines in [
        &["t-1", "t-2"][..],
        &["t-1", "t-1"][..],
        &["\"t-1\"", "t-2"][..],
    ] {
        let (status, body) = post_with_key_lines(addr, lines).await;
        assert_eq!(status, 400, "{lines:?}: {body}");
        let (kind, detail) = problem(&body);
        assert_eq!(kind, "multiple-keys", "{lines:?}");
        assert!(detail.contains("2 `idempotency-key` headers"), "{detail}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran");
}

#[tokio::test]
async fn a_list_in_one_header_line_is_refused_as_several_keys() {
    let (addr, runs) = serve().await;
    for line in [
        "t-1, t-2",
        "\"t-1\", \"t-2\"",
        "t-1 , t-2",
        "\"t-1\";v=1, \"t-2\"",
    ] {
        let (status, body) = post_with_key_lines(addr, &[line]).await;
        assert_eq!(status, 400, "{line}: {body}");
        let (kind, detail) = problem(&body);
        assert_eq!(kind, "multiple-keys", "{line}");
        assert!(detail.contains("several keys"), "{line}: {detail}");
        assert!(!detail.contains("0x20"), "{line}: {detail}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran");
}

#[tokio::test]
async fn parameters_on_a_quoted_key_name_the_same_record() {
    let (addr, runs) = serve().await;
    let (status, first) = post_with_key_lines(addr, &["\"k-1\";a=1"]).await;
    assert_eq!(status, 200, "{first}");
    assert!(first.contains("order 1"), "{first}");
    for retry in ["\"k-1\"", "k-1", "\"k-1\";b=?0;c=\"x\"", "\"k-1\"; a=2"] {
        let (status, body) = post_with_key_lines(addr, &[retry]).await;
        assert_eq!(status, 200, "{retry}: {body}");
        assert!(body.contains("order 1"), "{retry} is a replay: {body}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one execution for one key");
    // A malformed parameter is a malformed key.
    let (status, body) = post_with_key_lines(addr, &["\"k-2\";A=1"]).await;
    assert_eq!(status, 400, "{body}");
    let (kind, detail) = problem(&body);
    assert_eq!(kind, "invalid-key");
    assert!(detail.contains("malformed parameter"), "{detail}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
