//! Every row of the HTTP table, the stored-status and header policies, body limits, handler
//! errors and panics, and the kill switch, through tower's `oneshot`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use idempotency_core::{Idempotency, IdempotencyStore, Scope};
use idempotency_http::{IdempotencyLayer, ScopeRejection};
use idempotency_memory::MemoryStore;
use idempotency_testkit::faults::{Fault, FaultyStore};
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};

type Req = Request<Full<Bytes>>;

/// A handler that counts executions and answers with the status in `x-status` (default 201),
/// echoing the body and the execution number. With `x-hold`, it signals `entered` and waits for
/// `release` before answering: a test decides when the first attempt ends, without racing a
/// sleep.
#[derive(Clone, Default)]
struct Handler {
    runs: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl Handler {
    fn service(&self) -> tower::util::BoxCloneService<Req, Response<Full<Bytes>>, Infallible> {
        let runs = Arc::clone(&self.runs);
        let (entered, release) = (Arc::clone(&self.entered), Arc::clone(&self.release));
        tower::util::BoxCloneService::new(tower::service_fn(move |req: Req| {
            let runs = Arc::clone(&runs);
            let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                let status = req
                    .headers()
                    .get("x-status")
                    .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
                    .unwrap_or(201);
                if req.headers().contains_key("x-panic") {
                    panic!("handler panicked");
                }
                if req.headers().contains_key("x-hold") {
                    entered.notify_one();
                    release.notified().await;
                }
                let size = req
                    .headers()
                    .get("x-size")
                    .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let out = match size {
                    Some(size) => Bytes::from(vec![b'z'; size]),
                    None => Bytes::from(format!("run {n}: {}", String::from_utf8_lossy(&body))),
                };
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "text/plain")
                    .header("set-cookie", "session=abc")
                    .header("connection", "keep-alive")
                    .header("location", format!("/orders/{n}"))
                    .body(Full::new(out))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }))
    }
}

fn principal_scope(parts: &http::request::Parts) -> Result<Scope, ScopeRejection> {
    parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| Scope::new(v.trim_start_matches("Bearer ")))
        .ok_or_else(|| ScopeRejection::unauthorized("no bearer token"))
}

fn engine<S: IdempotencyStore + 'static>(store: S) -> Idempotency<S> {
    Idempotency::builder(store)
        .max_outcome_size(64 * 1024)
        .ignore_env()
        .build()
        .unwrap()
}

type ScopeFn = fn(&http::request::Parts) -> Result<Scope, ScopeRejection>;

struct App<S: IdempotencyStore + 'static> {
    handler: Handler,
    layer: IdempotencyLayer<S, ScopeFn>,
}

impl<S: IdempotencyStore + 'static> App<S> {
    fn new(engine: Idempotency<S>) -> Self {
        let scope: ScopeFn = principal_scope;
        Self {
            handler: Handler::default(),
            layer: IdempotencyLayer::builder(engine)
                .scope(scope)
                .max_request_body(1024)
                .build(),
        }
    }

    async fn send(&self, req: Req) -> (StatusCode, http::HeaderMap, Bytes) {
        let response = self
            .layer
            .layer(self.handler.service())
            .oneshot(req)
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    fn runs(&self) -> usize {
        self.handler.runs.load(Ordering::SeqCst)
    }
}

fn post(key: Option<&str>, body: &str) -> http::request::Builder {
    let builder = Request::post("/orders?x=1")
        .header("authorization", "Bearer alice")
        .header("content-type", "application/json");
    let _ = body;
    match key {
        Some(key) => builder.header("idempotency-key", key),
        None => builder,
    }
}

fn req(builder: http::request::Builder, body: &str) -> Req {
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn problem_type(body: &Bytes) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    json["type"]
        .as_str()
        .unwrap()
        .rsplit('#')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn missing_and_malformed_keys_are_400() {
    let app = App::new(engine(MemoryStore::new()));
    let (status, headers, body) = app.send(req(post(None, "{}"), "{}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(problem_type(&body), "missing-key");
    for bad in ["has space", &"k".repeat(256)] {
        let (status, _, body) = app.send(req(post(Some(bad), "{}"), "{}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(problem_type(&body), "invalid-key");
    }
    assert_eq!(app.runs(), 0);
}

#[tokio::test]
async fn completed_requests_replay_byte_for_byte() {
    let app = App::new(engine(MemoryStore::new()));
    let first = app
        .send(req(post(Some("k1"), "{\"a\":1}"), "{\"a\":1}"))
        .await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert!(!first.1.contains_key("idempotent-replayed"));
    let retry = app
        .send(req(post(Some("k1"), "{\"a\":1}"), "{\"a\":1}"))
        .await;
    assert_eq!(retry.0, StatusCode::CREATED);
    assert_eq!(retry.2, first.2);
    assert_eq!(retry.1["idempotent-replayed"], "true");
    assert_eq!(retry.1["location"], first.1["location"]);
    assert_eq!(retry.1["content-type"], "text/plain");
    assert!(
        !retry.1.contains_key("set-cookie"),
        "Set-Cookie is not stored by default"
    );
    assert!(
        !retry.1.contains_key("connection"),
        "hop-by-hop headers are never stored"
    );
    assert_eq!(app.runs(), 1);
}

#[tokio::test]
async fn same_key_different_request_is_422() {
    let app = App::new(engine(MemoryStore::new()));
    app.send(req(post(Some("k"), ""), "{\"a\":1}")).await;
    let (status, _, body) = app.send(req(post(Some("k"), ""), "{\"a\":2}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_type(&body), "key-reused");
    let other_query = Request::post("/orders?x=2")
        .header("authorization", "Bearer alice")
        .header("content-type", "application/json")
        .header("idempotency-key", "k");
    assert_eq!(
        app.send(req(other_query, "{\"a\":1}")).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(app.runs(), 1);
}

#[tokio::test]
async fn in_progress_duplicate_is_409_with_retry_after() {
    let app = Arc::new(App::new(engine(MemoryStore::new())));
    let first = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            app.send(req(post(Some("slow"), "").header("x-hold", "1"), "x"))
                .await
        })
    };
    // The first attempt holds its claim inside the handler until released.
    app.handler.entered.notified().await;
    let (status, headers, body) = app
        .send(req(post(Some("slow"), "").header("x-hold", "1"), "x"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(problem_type(&body), "in-progress");
    app.handler.release.notify_one();
    assert_eq!(first.await.unwrap().0, StatusCode::CREATED);
    let (status, headers, _) = app.send(req(post(Some("slow"), ""), "x")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(app.runs(), 1);
}

#[tokio::test]
async fn store_down_fail_closed_is_503_with_retry_after() {
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));
    let app = App::new(engine(store.clone()));
    store.set(Fault::Unavailable);
    let (status, headers, body) = app.send(req(post(Some("k"), ""), "x")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(problem_type(&body), "store-unavailable");
    assert_eq!(app.runs(), 0);
}

#[tokio::test]
async fn oversize_request_body_is_413() {
    let app = App::new(engine(MemoryStore::new()));
    let big = "x".repeat(2000);
    let (status, _, body) = app.send(req(post(Some("k"), ""), &big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_type(&body), "body-too-large");
    assert_eq!(app.runs(), 0);
}

#[tokio::test]
async fn uncovered_methods_and_optional_keys_pass_through() {
    let app = App::new(engine(MemoryStore::new()));
    let get = Request::get("/orders")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(app.send(get).await.0, StatusCode::CREATED);
    let handler = Handler::default();
    let layer = IdempotencyLayer::builder(engine(MemoryStore::new()))
        .global_scope()
        .key_required(false)
        .build();
    for _ in 0..2 {
        let response = layer
            .layer(handler.service())
            .oneshot(req(Request::post("/x"), "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    assert_eq!(
        handler.runs.load(Ordering::SeqCst),
        2,
        "no key, no protection"
    );
}

#[tokio::test]
async fn stored_status_policy() {
    let app = App::new(engine(MemoryStore::new()));
    for (status, stored) in [
        ("500", false),
        ("503", false),
        ("429", false),
        ("409", false),
        ("408", false),
        ("404", true),
        ("400", true),
        ("200", true),
    ] {
        let key = format!("status-{status}");
        let before = app.runs();
        app.send(req(post(Some(&key), "").header("x-status", status), "x"))
            .await;
        let (got, headers, _) = app
            .send(req(post(Some(&key), "").header("x-status", status), "x"))
            .await;
        assert_eq!(got.as_u16().to_string(), status);
        let ran_again = app.runs() - before == 2;
        assert_eq!(!ran_again, stored, "status {status}");
        assert_eq!(
            headers.contains_key("idempotent-replayed"),
            stored,
            "status {status}"
        );
    }
    let handler = Handler::default();
    let layer = IdempotencyLayer::builder(engine(MemoryStore::new()))
        .global_scope()
        .store_status(|s| s.is_success())
        .store_set_cookie(true)
        .build();
    for _ in 0..2 {
        let r = layer
            .layer(handler.service())
            .oneshot(req(Request::post("/x").header("idempotency-key", "k"), "x"))
            .await
            .unwrap();
        assert_eq!(r.headers()["set-cookie"], "session=abc");
    }
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn handler_errors_release_the_claim() {
    let layer = IdempotencyLayer::builder(engine(MemoryStore::new()))
        .global_scope()
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let failing = {
        let runs = Arc::clone(&runs);
        tower::service_fn(move |_req: Req| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Err::<Response<Full<Bytes>>, _>(std::io::Error::other("db down")) }
        })
    };
    for _ in 0..2 {
        let result = layer
            .layer(failing.clone())
            .oneshot(req(Request::post("/x").header("idempotency-key", "k"), "x"))
            .await;
        assert!(result.is_err());
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the failed attempt did not hold the key"
    );
}

/// Paused clock: each 10 ms step below only passes once every task (the release of the claim
/// in the background among them) is idle, so the loop measures steps, not machine speed.
#[tokio::test(start_paused = true)]
async fn a_panicking_handler_releases_the_claim() {
    let app = Arc::new(App::new(engine(MemoryStore::new())));
    let crashed = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            app.send(req(post(Some("boom"), "").header("x-panic", "1"), "x"))
                .await
        })
    };
    assert!(crashed.await.unwrap_err().is_panic());
    let mut status = StatusCode::CONFLICT;
    for _ in 0..50 {
        status = app.send(req(post(Some("boom"), ""), "x")).await.0;
        if status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the retry ran once the claim was released"
    );
}

#[tokio::test]
async fn oversize_responses_are_recorded_without_body() {
    let app = App::new(engine(MemoryStore::new()));
    let (status, _, body) = app
        .send(req(post(Some("big"), "").header("x-size", "100000"), "x"))
        .await;
    assert_eq!((status, body.len()), (StatusCode::CREATED, 100_000));
    let (status, headers, body) = app
        .send(req(post(Some("big"), "").header("x-size", "100000"), "x"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-body-omitted"], "true");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert!(body.is_empty());
    assert_eq!(app.runs(), 1, "no re-execution");
}

#[tokio::test]
async fn scopes_isolate_principals_and_rejections_answer() {
    let app = App::new(engine(MemoryStore::new()));
    let alice = app.send(req(post(Some("same"), ""), "x")).await;
    let bob_req = Request::post("/orders?x=1")
        .header("authorization", "Bearer bob")
        .header("content-type", "application/json")
        .header("idempotency-key", "same");
    let bob = app.send(req(bob_req, "x")).await;
    assert_ne!(alice.2, bob.2, "bob never sees alice's response");
    assert_eq!(app.runs(), 2);
    let anonymous = Request::post("/orders").header("idempotency-key", "same");
    let (status, _, body) = app.send(req(anonymous, "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem_type(&body), "scope-rejected");
}

#[tokio::test]
async fn kill_switch_runs_every_request() {
    let engine = Idempotency::builder(MemoryStore::new())
        .disabled(true)
        .ignore_env()
        .build()
        .unwrap();
    let app = App::new(engine);
    for _ in 0..3 {
        assert_eq!(
            app.send(req(post(Some("k"), ""), "x")).await.0,
            StatusCode::CREATED
        );
    }
    assert_eq!(app.runs(), 3);
}
