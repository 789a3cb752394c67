//! The layer over real sockets (axum on 127.0.0.1, raw TCP and reqwest clients): streamed
//! responses pass through as produced; a client that disconnects before the handler, during it
//! or mid-body never causes a second execution (the retry gets the replay); an oversize request
//! body is answered 413, not a broken pipe.
//!
//! Every wait is on an explicit gate (`Notify`), bounded by a timeout that fails with what was
//! being waited for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body::Frame;
use idempotency_core::{Idempotency, Scope};
use idempotency_http::{IdempotencyLayer, ScopeRejection};
use idempotency_memory::MemoryStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Gates and counters shared by the handlers, the probe and the test.
#[derive(Default)]
struct Shared {
    /// Side effects performed (one per handler execution that got past its gate).
    writes: AtomicUsize,
    /// A request reached the probe (outside the layer).
    request_seen: Notify,
    /// The probe's request future was dropped before it finished (the client went away).
    request_dropped: Notify,
    /// The probe's request future ended, answered or dropped.
    request_ended: Notify,
    /// A response body was dropped before its end.
    body_dropped: Notify,
    /// The slow handler started.
    entered: Notify,
    /// Let the slow handler do its write.
    proceed: Notify,
    /// Let a streaming handler send its second part.
    next_part: Notify,
}

type Ctx = Arc<Shared>;

async fn wait(notify: &Notify, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), notify.notified())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

fn principal(parts: &http::request::Parts) -> Result<Scope, ScopeRejection> {
    parts
        .headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .map(Scope::new)
        .ok_or_else(|| ScopeRejection::unauthorized("sign in first"))
}

async fn serve() -> (SocketAddr, Ctx) {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        // A retry that arrives while the detached first attempt still records waits for it.
        .wait_for_in_progress(Duration::from_secs(10), Duration::from_millis(5))
        .build()
        .unwrap();
    let layer = IdempotencyLayer::builder(engine)
        .scope(principal)
        .max_request_body(1024)
        .build();
    let ctx = Ctx::default();
    let router = Router::new()
        .route("/slow", post(slow))
        .route("/stream", post(stream))
        .route("/sse", post(sse))
        .route("/echo", post(echo))
        .route("/broken", post(broken))
        .route("/ticks", post(ticks))
        .layer(layer)
        .layer(middleware::from_fn_with_state(ctx.clone(), probe))
        .with_state(ctx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, ctx)
}

/// Tells the test when the server gave up on a request (its future or body dropped early).
async fn probe(State(ctx): State<Ctx>, request: Request, next: Next) -> Response {
    ctx.request_seen.notify_one();
    let mut on_drop = OnDrop(Some(ctx.clone()));
    let response = next.run(request).await;
    on_drop.0 = None;
    ctx.request_ended.notify_one();
    response.map(|inner| {
        Body::new(ProbeBody {
            inner,
            ctx: Some(ctx),
        })
    })
}

struct OnDrop(Option<Ctx>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(ctx) = self.0.take() {
            ctx.request_dropped.notify_one();
            ctx.request_ended.notify_one();
        }
    }
}

struct ProbeBody {
    inner: Body,
    /// `None` once the body ended.
    ctx: Option<Ctx>,
}

impl http_body::Body for ProbeBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let next = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = next {
            self.ctx = None;
        }
        next
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ProbeBody {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            ctx.body_dropped.notify_one();
        }
    }
}

async fn slow(State(ctx): State<Ctx>) -> impl IntoResponse {
    ctx.entered.notify_one();
    ctx.proceed.notified().await;
    let n = ctx.writes.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("order {n}"))
}

async fn echo(State(ctx): State<Ctx>, body: Bytes) -> impl IntoResponse {
    let n = ctx.writes.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        format!("run {n}: {} bytes", body.len()),
    )
}

/// Two parts of unknown total length, the second behind the `next_part` gate.
fn gated_body(ctx: Ctx, first: &'static str, second: &'static str) -> Body {
    let parts = futures::stream::unfold(0, move |step| {
        let ctx = ctx.clone();
        async move {
            match step {
                0 => Some((
                    Ok::<_, std::io::Error>(Bytes::from_static(first.as_bytes())),
                    1,
                )),
                1 => {
                    ctx.next_part.notified().await;
                    Some((Ok(Bytes::from_static(second.as_bytes())), 2))
                }
                _ => None,
            }
        }
    });
    Body::from_stream(parts)
}

async fn stream(State(ctx): State<Ctx>) -> impl IntoResponse {
    ctx.writes.fetch_add(1, Ordering::SeqCst);
    (
        [("content-type", "text/plain")],
        gated_body(ctx, "chunk-1\n", "chunk-2\n"),
    )
}

async fn sse(State(ctx): State<Ctx>) -> impl IntoResponse {
    ctx.writes.fetch_add(1, Ordering::SeqCst);
    (
        [("content-type", "text/event-stream")],
        gated_body(ctx, "data: 1\n\n", "data: 2\n\n"),
    )
}

/// A body that fails after its first part: with an error, or (`x-panic`) by panicking.
async fn broken(State(ctx): State<Ctx>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    ctx.writes.fetch_add(1, Ordering::SeqCst);
    let panics = headers.contains_key("x-panic");
    let parts = futures::stream::unfold(0, move |step| async move {
        match step {
            0 => Some((Ok(Bytes::from_static(b"part-1\n")), 1)),
            1 if panics => panic!("body panicked"),
            1 => Some((Err(std::io::Error::other("disk on fire")), 2)),
            _ => None,
        }
    });
    Body::from_stream(parts)
}

/// Three server-sent events 1.5 s apart, in real time.
async fn ticks(State(ctx): State<Ctx>) -> impl IntoResponse {
    ctx.writes.fetch_add(1, Ordering::SeqCst);
    let events = futures::stream::unfold(0, |n| async move {
        if n == 3 {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Some((
            Ok::<_, std::io::Error>(Bytes::from(format!("data: {n}\n\n"))),
            n + 1,
        ))
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(events),
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn request(addr: SocketAddr, path: &str, key: &str) -> reqwest::RequestBuilder {
    client()
        .post(format!("http://{addr}{path}"))
        .header("x-user-id", "user-1")
        .header("idempotency-key", key)
        .header("content-type", "text/plain")
}

/// An HTTP/1.1 request written by hand, so the test decides exactly when the client leaves.
async fn raw(addr: SocketAddr, path: &str, key: &str, length: usize, body: &[u8]) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nx-user-id: user-1\r\nidempotency-key: {key}\r\n\
         content-type: text/plain\r\ncontent-length: {length}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body).await.unwrap();
    socket
}

async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out reading {needle:?}"))
            .unwrap();
        assert!(n > 0, "connection closed before {needle:?}");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(needle) {
            return text;
        }
    }
}

#[tokio::test]
async fn sse_events_reach_the_client_as_they_are_produced() {
    let (addr, ctx) = serve().await;
    let started = Instant::now();
    let mut response = request(addr, "/sse", "s-1").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The second event is gated: the first must arrive without it (the body is not buffered).
    let first = response.chunk().await.unwrap().unwrap();
    let head_and_first = started.elapsed();
    assert_eq!(first, "data: 1\n\n");
    ctx.next_part.notify_one();
    let second = response.chunk().await.unwrap().unwrap();
    assert_eq!(second, "data: 2\n\n");
    assert!(response.chunk().await.unwrap().is_none());
    eprintln!("SSE: first event after {head_and_first:?} while the second was held back");
    // Streams are not recorded: the retry gets the head, no events, and the handler does not
    // run again.
    let retry = request(addr, "/sse", "s-1").send().await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()["idempotent-body-omitted"], "true");
    assert_eq!(retry.headers()["content-type"], "text/event-stream");
    assert_eq!(retry.bytes().await.unwrap(), "");
    assert_eq!(ctx.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_streamed_body_of_unknown_length_passes_through_and_is_replayed_whole() {
    let (addr, ctx) = serve().await;
    let mut response = request(addr, "/stream", "u-1").send().await.unwrap();
    assert_eq!(response.chunk().await.unwrap().unwrap(), "chunk-1\n");
    ctx.next_part.notify_one();
    assert_eq!(response.chunk().await.unwrap().unwrap(), "chunk-2\n");
    assert!(response.chunk().await.unwrap().is_none());
    // The end of the body is sent after the record is written: an immediate retry replays.
    let retry = request(addr, "/stream", "u-1").send().await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.bytes().await.unwrap(), "chunk-1\nchunk-2\n");
    assert_eq!(ctx.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_leaves_before_the_handler_leaves_no_claim() {
    let (addr, ctx) = serve().await;
    // Headers and part of the body: the layer is still reading it when the client leaves.
    let socket = raw(addr, "/echo", "b-1", 100, &[b'x'; 10]).await;
    wait(&ctx.request_seen, "the request to reach the server").await;
    drop(socket);
    // The server either drops the request or answers it (a 400 for the cut-off body).
    wait(&ctx.request_ended, "the server to end the request").await;
    // No claim was left behind: the retry runs at once (no 409, no wait for a lease).
    let retry = request(addr, "/echo", "b-1")
        .body(vec![b'x'; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(!retry.headers().contains_key("idempotent-replayed"));
    assert_eq!(retry.text().await.unwrap(), "run 1: 100 bytes");
    assert_eq!(ctx.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_leaves_during_the_handler_gets_the_replay_on_retry() {
    let (addr, ctx) = serve().await;
    let socket = raw(addr, "/slow", "d-1", 1, b"x").await;
    wait(&ctx.entered, "the handler to start").await;
    drop(socket);
    wait(&ctx.request_dropped, "the server to drop the request").await;
    // The connection is gone; the handler, detached from it, goes on and its answer is stored.
    ctx.proceed.notify_one();
    let retry = request(addr, "/slow", "d-1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.text().await.unwrap(), "order 1");
    assert_eq!(ctx.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_gets_the_whole_replay_on_retry() {
    let (addr, ctx) = serve().await;
    let mut socket = raw(addr, "/stream", "m-1", 1, b"x").await;
    let head = read_until(&mut socket, "chunk-1").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(socket);
    wait(&ctx.body_dropped, "the server to drop the response body").await;
    // The rest of the body is produced with nobody listening; the recorder keeps draining it.
    ctx.next_part.notify_one();
    let retry = request(addr, "/stream", "m-1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.text().await.unwrap(), "chunk-1\nchunk-2\n");
    assert_eq!(ctx.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_oversize_request_body_gets_the_413_not_a_broken_pipe() {
    let (addr, ctx) = serve().await;
    let client = client();
    for _ in 0..2 {
        let response = client
            .post(format!("http://{addr}/echo"))
            .header("x-user-id", "user-1")
            .header("idempotency-key", "big-1")
            .body(vec![b'x'; 4 * 1024 * 1024])
            .send()
            .await
            .expect("the client must get the 413, not a connection error");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let problem: serde_json::Value = response.json().await.unwrap();
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("#body-too-large"),
            "{problem}"
        );
    }
    // The connection stayed usable (the body was drained, not cut off).
    let small = client
        .post(format!("http://{addr}/echo"))
        .header("x-user-id", "user-1")
        .header("idempotency-key", "small-1")
        .body("ok")
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), StatusCode::CREATED);
    assert_eq!(ctx.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_oversize_request_body_is_drained_and_the_connection_kept() {
    let (addr, ctx) = serve().await;
    let socket = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    // Larger than loopback socket buffers: without draining, the server would close while this
    // is still being written, and the client would see a reset instead of the answer.
    let size = 6 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /echo HTTP/1.1\r\nhost: {addr}\r\nx-user-id: user-1\r\nidempotency-key: big-2\r\n\
             content-length: {size}\r\n\r\n"
        );
        write.write_all(head.as_bytes()).await?;
        write.write_all(&vec![b'x'; size]).await?;
        // A second request on the same connection.
        let next = format!(
            "POST /echo HTTP/1.1\r\nhost: {addr}\r\nx-user-id: user-1\r\nidempotency-key: small-2\r\n\
             content-length: 2\r\n\r\nok"
        );
        write.write_all(next.as_bytes()).await?;
        Ok::<_, std::io::Error>(write)
    });
    let mut seen = Vec::new();
    let mut buf = [0_u8; 4096];
    let text = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf))
            .await
            .expect("timed out waiting for both answers")
            .expect("the connection must not be reset");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains("run 1: 2 bytes") {
            break text;
        }
    };
    writer.await.unwrap().expect("the whole body was accepted");
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("body-too-large"), "{text}");
    assert!(text.contains("HTTP/1.1 201"), "{text}");
    assert_eq!(ctx.writes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sse_events_1_5_s_apart_arrive_as_they_are_sent() {
    let (addr, _ctx) = serve().await;
    let started = Instant::now();
    let mut response = request(addr, "/ticks", "t-1").send().await.unwrap();
    let mut arrivals = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        arrivals.push((started.elapsed(), chunk));
    }
    eprintln!("SSE events 1.5 s apart, arrivals: {arrivals:?}");
    assert_eq!(arrivals.len(), 3, "{arrivals:?}");
    // Generous bounds: the first event long before the second is produced, the others after
    // their producer's sleeps (never all at the end).
    assert!(arrivals[0].0 < Duration::from_millis(1000), "{arrivals:?}");
    assert!(arrivals[1].0 >= Duration::from_millis(1500), "{arrivals:?}");
    assert!(arrivals[1].0 < arrivals[2].0, "{arrivals:?}");
}

#[tokio::test]
async fn a_body_that_fails_midway_aborts_the_response_and_releases_the_claim() {
    let (addr, ctx) = serve().await;
    for (key, panics) in [("e-1", false), ("e-2", true)] {
        let mut first = request(addr, "/broken", key);
        if panics {
            first = first.header("x-panic", "1");
        }
        // Not a clean end: the client can tell the answer is incomplete (the server may abort
        // before or after the head is flushed).
        let outcome = match first.send().await {
            Err(error) => Err(error),
            Ok(response) => response.bytes().await,
        };
        assert!(
            outcome.is_err(),
            "a failed body must not look complete ({key}): {outcome:?}"
        );
        // Nothing was recorded and the claim was released before the abort: the retry runs the
        // handler again (and fails the same way) instead of getting a replay or a 409.
        let before = ctx.writes.load(Ordering::SeqCst);
        let mut retry = request(addr, "/broken", key);
        if panics {
            retry = retry.header("x-panic", "1");
        }
        let outcome = match retry.send().await {
            Err(error) => Err(error),
            Ok(response) => response.bytes().await,
        };
        assert!(outcome.is_err(), "{key}: {outcome:?}");
        assert_eq!(ctx.writes.load(Ordering::SeqCst), before + 1, "{key}");
    }
    assert_eq!(ctx.writes.load(Ordering::SeqCst), 4);
}
