//! breaker13: the `Idempotency-Key` header over a real socket (raw TCP, bytes as written):
//! the HTTP layer's 400 `multiple-keys` / `invalid-key` answers for odd values, and quoted keys
//! with commas and parameters naming one record.

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
async fn post_with_key_lines(addr: SocketAddr, lines: &[&[u8]]) -> (u16, String) {
    let mut request = b"POST /orders HTTP/1.1\r\nHost: test\r\n".to_vec();
    for line in lines {
        request.extend_from_slice(b"Idempotency-Key: ");
        request.extend_from_slice(line);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"Content-Length: 0\r\nConnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the server answers within 10 s")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
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

/// Sends one header line and returns (status, problem type or "ok").
async fn kind_of(addr: SocketAddr, line: &[u8]) -> (u16, String) {
    let (status, body) = post_with_key_lines(addr, &[line]).await;
    if status == 200 {
        return (status, "ok".into());
    }
    (status, problem(&body).0)
}

#[tokio::test]
async fn odd_values_get_the_right_problem() {
    let (addr, runs) = serve().await;
    for (line, expected) in [
        (&b"t-1,\tt-2"[..], "multiple-keys"),
        (b"\"a\"\t,\t\"b\"", "multiple-keys"),
        (b"\"a\";p=\"x\", \"b\"", "multiple-keys"),
        (b"", "invalid-key"),
        (b"\"\"", "invalid-key"),
        (b"\"\";p=1", "invalid-key"),
        (b"\"a\";p=@1659578233", "invalid-key"),
        (b"\"a\";p=1.2345", "invalid-key"),
        (b"\"a\" ;p=1", "invalid-key"),
        (b"\"caf\xc3\xa9\"", "invalid-key"),
        (b"caf\xc3\xa9", "invalid-key"),
        (b"\"a\";p=\"\xff\"", "invalid-key"),
        (b"a b", "invalid-key"),
        (b"\"open", "invalid-key"),
    ] {
        let (status, kind) = kind_of(addr, line).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, expected),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran");
}

#[tokio::test]
async fn quoted_keys_with_commas_and_parameters_are_one_record() {
    let (addr, runs) = serve().await;
    let (status, first) = post_with_key_lines(addr, &[b"\"a, b\";p=\"x, y\""]).await;
    assert_eq!(status, 200, "{first}");
    for retry in [
        &b"\"a, b\""[..],
        b"\t\"a, b\";q=?1;r=:aGk=:\t",
        b"\"a, b\"; p=1",
    ] {
        let (status, body) = post_with_key_lines(addr, &[retry]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            first,
            "{} is a replay",
            String::from_utf8_lossy(retry)
        );
    }
    // `a,b` (bare, no space) is another key than `"a, b"`.
    let (status, other) = post_with_key_lines(addr, &[b"a,b"]).await;
    assert_eq!(status, 200);
    assert_ne!(other, first);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A header line at hyper's limits with a long parameter list: answered (no hang), one key.
#[tokio::test]
async fn a_long_parameter_list_is_answered() {
    let (addr, runs) = serve().await;
    let mut line = b"\"long\"".to_vec();
    for _ in 0..4000 {
        line.extend_from_slice(b";p=1");
    }
    let (status, body) = post_with_key_lines(addr, &[&line]).await;
    assert!(matches!(status, 200 | 431), "{status}: {body}");
    if status == 200 {
        let (status, replay) = post_with_key_lines(addr, &[b"long"]).await;
        assert_eq!((status, replay), (200, body));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
