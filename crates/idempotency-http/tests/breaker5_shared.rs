//! breaker5: the per-request shared state (`record::Shared`: claim slot, side-effects marker and
//! head hand-off in one allocation) under cancellation, failures and concurrent duplicates, on
//! the memory store and on a real Redis, with a multi-thread runtime and many iterations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use idempotency_core::{Idempotency, IdempotencyKey, IdempotencyStore, Record, Scope, StoreKey};
use idempotency_http::{IdempotencyLayer, SideEffects, SideEffectsMarker, TransactionalClaim};
use idempotency_memory::MemoryStore;
use idempotency_redis::RedisStore;
use idempotency_testkit::fixtures::RedisServer;
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};

type Req = Request<Full<Bytes>>;

/// A response body that yields the given frames (an `Err` is a body failure) with an optional
/// exact size hint.
struct Frames {
    frames: VecDeque<Result<Bytes, std::io::Error>>,
    exact: Option<u64>,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.frames.pop_front().map(|f| f.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

fn engine<S: IdempotencyStore + 'static>(store: S) -> Idempotency<S> {
    Idempotency::builder(store)
        .max_outcome_size(64 * 1024)
        .ignore_env()
        .build()
        .unwrap()
}

fn post(key: &str) -> Req {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .unwrap()
}

async fn state<S: IdempotencyStore + 'static>(
    store: &S,
    engine: &Idempotency<S>,
    key: &str,
) -> &'static str {
    let key = StoreKey::derive(
        engine.config().prefix(),
        &Scope::global(),
        &IdempotencyKey::new(key).unwrap(),
    );
    match store.get(&key).await.unwrap() {
        None => "absent",
        Some(Record::InProgress(_)) => "in progress",
        Some(Record::Completed(_)) => "completed",
    }
}

/// Poll the store until the key leaves "in progress" (a detached recording ends on its own
/// schedule); bounded, so a claim left behind fails the test instead of hanging it.
async fn settled<S: IdempotencyStore + 'static>(
    store: &S,
    engine: &Idempotency<S>,
    key: &str,
) -> &'static str {
    for _ in 0..500 {
        let s = state(store, engine, key).await;
        if s != "in progress" {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    "in progress"
}

// ---------------------------------------------------------------------------------------------
// 1. SideEffects::Committed as a RESPONSE EXTENSION, then the body fails.
//
// Docs (effects.rs table, lib.rs "Streaming and memory"): Committed + a failure = a stored 500
// `response-lost`, replayed; the operation never runs again. The layer only reads the marker
// when the body fails (`handler_failed(guard, marker, ..)` in `Pump::run` and
// `failed_before_head`), not the response extension it read a moment before.
// ---------------------------------------------------------------------------------------------

async fn committed_extension_then_body_fails(
    exact: Option<u64>,
    frames: Vec<Result<Bytes, std::io::Error>>,
) -> (usize, StatusCode, &'static str) {
    let store = MemoryStore::new();
    let engine = engine(store.clone());
    let layer = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let frames = Arc::new(std::sync::Mutex::new(Some(frames)));
    let svc = {
        let runs = Arc::clone(&runs);
        tower::service_fn(move |_req: Req| {
            let runs = Arc::clone(&runs);
            let frames = frames.lock().unwrap().take().unwrap_or_default();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let mut response = Response::new(Frames {
                    frames: frames.into(),
                    exact,
                });
                *response.status_mut() = StatusCode::CREATED;
                response.extensions_mut().insert(SideEffects::Committed);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let service = layer.layer(svc);
    let first = service.clone().oneshot(post("ext-commit")).await.unwrap();
    // The client reads what it can (the body fails midway).
    let _ = first.into_body().collect().await;
    let after = settled(&store, &engine, "ext-commit").await;
    let retry = service.oneshot(post("ext-commit")).await.unwrap();
    (runs.load(Ordering::SeqCst), retry.status(), after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_response_extension_then_streamed_body_fails_is_not_run_again() {
    let (runs, retry, after) = committed_extension_then_body_fails(
        None,
        vec![
            Ok(Bytes::from_static(b"part")),
            Err(std::io::Error::other("boom")),
        ],
    )
    .await;
    assert_eq!(
        (runs, retry, after),
        (1, StatusCode::INTERNAL_SERVER_ERROR, "completed"),
        "a response marked SideEffects::Committed whose body failed midway must be recorded as \
         a 500 response-lost, not released (runs, retry status, store state after the first)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_response_extension_then_body_fails_before_head_is_not_run_again() {
    let (runs, retry, after) =
        committed_extension_then_body_fails(Some(4), vec![Err(std::io::Error::other("boom"))])
            .await;
    assert_eq!(
        (runs, retry, after),
        (1, StatusCode::INTERNAL_SERVER_ERROR, "completed"),
        "a response marked SideEffects::Committed whose (exact-length) body failed before the \
         head must be recorded as a 500 response-lost, not released"
    );
}

// The marker (not the extension) path holds: control for the two tests above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_marker_then_streamed_body_fails_is_replayed_as_500() {
    let store = MemoryStore::new();
    let engine = engine(store.clone());
    let layer = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = {
        let runs = Arc::clone(&runs);
        tower::service_fn(move |req: Req| {
            let runs = Arc::clone(&runs);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                req.extensions()
                    .get::<SideEffectsMarker>()
                    .unwrap()
                    .committed();
                Ok::<_, Infallible>(Response::new(Frames {
                    frames: vec![
                        Ok(Bytes::from_static(b"part")),
                        Err(std::io::Error::other("x")),
                    ]
                    .into(),
                    exact: None,
                }))
            }
        })
    };
    let service = layer.layer(svc);
    let first = service
        .clone()
        .oneshot(post("marker-commit"))
        .await
        .unwrap();
    let _ = first.into_body().collect().await;
    assert_eq!(settled(&store, &engine, "marker-commit").await, "completed");
    let retry = service.oneshot(post("marker-commit")).await.unwrap();
    assert_eq!(retry.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Races on the shared state, memory store and real Redis, multi-thread runtime.
// ---------------------------------------------------------------------------------------------

/// A handler that counts runs per key; `x-hold` waits on `gate` after `entered`; the response
/// carries a clone of the request's marker and claim (in its extensions AND its body), to tie
/// the head to the shared state (an `Arc` cycle through the head slot would leak it).
#[derive(Clone, Default)]
struct Handler {
    runs: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    gate: Arc<Notify>,
}

struct Holding<S: IdempotencyStore + 'static> {
    data: Option<Bytes>,
    marker: SideEffectsMarker,
    claim: TransactionalClaim<S>,
}

/// Dropping the body takes the claim lock and reads the marker: a head (or body) dropped while
/// the layer holds one of the shared state's locks would deadlock here.
impl<S: IdempotencyStore + 'static> Drop for Holding<S> {
    fn drop(&mut self) {
        let _ = self.claim.is_available();
        let _ = self.marker.get();
    }
}

impl<S: IdempotencyStore + 'static> Body for Holding<S> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown length: the pump path (head out first, body forwarded through the channel).
        SizeHint::default()
    }
}

impl Handler {
    fn service<S: IdempotencyStore + 'static>(
        &self,
    ) -> tower::util::BoxCloneService<Req, Response<Holding<S>>, Infallible> {
        let me = self.clone();
        tower::util::BoxCloneService::new(tower::service_fn(move |req: Req| {
            let me = me.clone();
            async move {
                let n = me.runs.fetch_add(1, Ordering::SeqCst) + 1;
                let marker = req.extensions().get::<SideEffectsMarker>().unwrap().clone();
                let claim = req
                    .extensions()
                    .get::<TransactionalClaim<S>>()
                    .unwrap()
                    .clone();
                if req.headers().contains_key("x-hold") {
                    me.entered.notify_one();
                    me.gate.notified().await;
                } else {
                    tokio::task::yield_now().await;
                }
                let mut response = Response::new(Holding {
                    data: Some(Bytes::from(format!("run {n}"))),
                    marker: marker.clone(),
                    claim: claim.clone(),
                });
                *response.status_mut() = StatusCode::CREATED;
                if req.headers().contains_key("x-none") {
                    // Released; the handler's body goes out in the head itself.
                    response.extensions_mut().insert(SideEffects::None);
                }
                response.extensions_mut().insert(marker);
                response.extensions_mut().insert(claim);
                Ok::<_, Infallible>(response)
            }
        }))
    }
}

async fn storm<S: IdempotencyStore + Clone + 'static>(store: S, tag: &str, iterations: usize) {
    let engine = engine(store.clone());
    let layer = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build();
    let handler = Handler::default();
    let service = layer.layer(handler.service::<S>());
    for i in 0..iterations {
        let key = format!("{tag}-storm-{i}");
        let before = handler.runs.load(Ordering::SeqCst);
        let mut tasks = Vec::new();
        for _ in 0..24 {
            let service = service.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let response = service.oneshot(post(&key)).await.unwrap();
                let status = response.status();
                let replayed = response.headers().contains_key("idempotent-replayed");
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, replayed, body)
            }));
        }
        let mut bodies = Vec::new();
        for task in tasks {
            let (status, replayed, body) = task.await.unwrap();
            match status {
                StatusCode::CREATED => bodies.push(body),
                StatusCode::CONFLICT => assert!(!replayed),
                other => panic!("{key}: unexpected {other}"),
            }
        }
        let runs = handler.runs.load(Ordering::SeqCst) - before;
        assert_eq!(runs, 1, "{key}: exactly one handler run");
        assert!(!bodies.is_empty(), "{key}: the winner answered");
        assert!(bodies.iter().all(|b| b == &bodies[0]), "{key}: one answer");
        assert_eq!(settled(&store, &engine, &key).await, "completed", "{key}");
        let replay = service.clone().oneshot(post(&key)).await.unwrap();
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        assert_eq!(
            replay.into_body().collect().await.unwrap().to_bytes(),
            bodies[0]
        );
    }
}

/// The request future dropped mid-handler (what a `TimeoutLayer` outside the layer, or a
/// client that leaves, does): the handler ends in the detached task, the outcome is recorded,
/// the retry replays; many times, on a multi-thread runtime.
async fn dropped_mid_handler<S: IdempotencyStore + Clone + 'static>(
    store: S,
    tag: &str,
    iterations: usize,
) {
    let engine = engine(store.clone());
    let layer = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build();
    let handler = Handler::default();
    let service = layer.layer(handler.service::<S>());
    for i in 0..iterations {
        let key = format!("{tag}-gone-{i}");
        let mut req = post(&key);
        req.headers_mut().insert("x-hold", "1".parse().unwrap());
        let call = tokio::spawn(service.clone().oneshot(req));
        handler.entered.notified().await;
        // Dropped (aborted) while the handler waits: the recording detaches.
        call.abort();
        let _ = call.await;
        assert_eq!(state(&store, &engine, &key).await, "in progress", "{key}");
        // A duplicate meanwhile: 409, never a second run.
        let dup = service.clone().oneshot(post(&key)).await.unwrap();
        assert_eq!(dup.status(), StatusCode::CONFLICT, "{key}");
        handler.gate.notify_one();
        assert_eq!(settled(&store, &engine, &key).await, "completed", "{key}");
        let replay = service.clone().oneshot(post(&key)).await.unwrap();
        assert_eq!(replay.status(), StatusCode::CREATED, "{key}");
        assert_eq!(replay.headers()["idempotent-replayed"], "true", "{key}");
    }
    assert_eq!(handler.runs.load(Ordering::SeqCst), iterations);
}

/// The head taken, the body (unknown length, pump path) not read: the response dropped after
/// its head. Recorded all the same; the retry replays.
async fn dropped_after_head<S: IdempotencyStore + Clone + 'static>(
    store: S,
    tag: &str,
    iterations: usize,
) {
    let engine = engine(store.clone());
    let layer = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build();
    let handler = Handler::default();
    let service = layer.layer(handler.service::<S>());
    for i in 0..iterations {
        let key = format!("{tag}-head-{i}");
        let response = service.clone().oneshot(post(&key)).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        drop(response);
        assert_eq!(settled(&store, &engine, &key).await, "completed", "{key}");
        let replay = service.clone().oneshot(post(&key)).await.unwrap();
        assert_eq!(replay.headers()["idempotent-replayed"], "true", "{key}");
        assert_eq!(
            replay.into_body().collect().await.unwrap().to_bytes(),
            Bytes::from(format!("run {}", i + 1)),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_storm_one_run_per_key() {
    storm(MemoryStore::new(), "mem", 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_dropped_mid_handler_is_recorded_and_replayed() {
    dropped_mid_handler(MemoryStore::new(), "mem", 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_dropped_after_head_is_recorded_and_replayed() {
    dropped_after_head(MemoryStore::new(), "mem", 300).await;
}

async fn redis() -> (RedisServer, RedisStore) {
    let server = RedisServer::start().expect("redis-server must be installed (/usr/bin)");
    let store = RedisStore::connect(server.url()).await.unwrap();
    (server, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_storm_one_run_per_key() {
    let (_server, store) = redis().await;
    storm(store, "redis", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_dropped_mid_handler_is_recorded_and_replayed() {
    let (_server, store) = redis().await;
    dropped_mid_handler(store, "redis", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_dropped_after_head_is_recorded_and_replayed() {
    let (_server, store) = redis().await;
    dropped_after_head(store, "redis", 100).await;
}

// ---------------------------------------------------------------------------------------------
// 3. The request future dropped at arbitrary points (before the claim, mid-handler, between the
//    head and the body, mid-body): the key is never left in progress; a completed key was run
//    once and replays; an absent one was released (or never claimed) and runs again.
// ---------------------------------------------------------------------------------------------

/// A body of unknown length, four frames, each after one `Pending` (so the head hand-off and
/// the frames race the drop).
struct Yielding {
    next: usize,
    ready: bool,
}

impl Body for Yielding {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.next == 4 {
            return Poll::Ready(None);
        }
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        let i = self.next;
        self.next += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!("chunk {i};"))))))
    }
}

type Runs = Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

fn yielding_service(
    runs: Runs,
) -> tower::util::BoxCloneService<Req, Response<Yielding>, Infallible> {
    tower::util::BoxCloneService::new(tower::service_fn(move |req: Req| {
        let runs = Arc::clone(&runs);
        async move {
            let key = req.headers()["idempotency-key"]
                .to_str()
                .unwrap()
                .to_owned();
            *runs.lock().unwrap().entry(key).or_default() += 1;
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            Ok(Response::new(Yielding {
                next: 0,
                ready: false,
            }))
        }
    }))
}

async fn random_drops<S: IdempotencyStore + Clone + 'static>(
    store: S,
    tag: &str,
    iterations: usize,
) {
    let engine = engine(store.clone());
    let layer = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build();
    let runs = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let service = layer.layer(yielding_service(Arc::clone(&runs)));
    let mut outcomes = [0_usize; 2];
    for i in 0..iterations {
        let key = format!("{tag}-drop-{i}");
        let service2 = service.clone();
        let k = key.clone();
        let call = tokio::spawn(async move {
            let response = service2.oneshot(post(&k)).await.unwrap();
            let _ = response.into_body().collect().await;
        });
        // Abort after a varying number of scheduler turns.
        for _ in 0..(i % 13) {
            tokio::task::yield_now().await;
        }
        call.abort();
        let _ = call.await;
        let after = settled(&store, &engine, &key).await;
        let ran = runs.lock().unwrap().get(&key).copied().unwrap_or(0);
        match after {
            "completed" => {
                outcomes[0] += 1;
                assert_eq!(ran, 1, "{key}");
                let replay = service.clone().oneshot(post(&key)).await.unwrap();
                assert_eq!(replay.headers()["idempotent-replayed"], "true", "{key}");
                assert_eq!(
                    replay.into_body().collect().await.unwrap().to_bytes(),
                    Bytes::from_static(b"chunk 0;chunk 1;chunk 2;chunk 3;"),
                    "{key}"
                );
            }
            "absent" => {
                outcomes[1] += 1;
                assert_eq!(ran, 0, "{key}: released although the handler ran");
            }
            other => panic!("{key}: {other}"),
        }
    }
    eprintln!(
        "{tag}: completed {}, never reached the handler {}",
        outcomes[0], outcomes[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_random_drops_never_leave_a_claim() {
    random_drops(MemoryStore::new(), "mem", 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_random_drops_never_leave_a_claim() {
    let (_server, store) = redis().await;
    random_drops(store, "redis", 300).await;
}

/// Marked committed, the client gone, then the handler panics in the detached recording: the
/// 500 `response-lost` is recorded and replayed, never a second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_then_panic_after_the_client_left_is_replayed_as_500() {
    let store = MemoryStore::new();
    let engine = engine(store.clone());
    let layer = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let svc = {
        let (runs, entered, gate) = (Arc::clone(&runs), Arc::clone(&entered), Arc::clone(&gate));
        tower::service_fn(move |req: Req| {
            let (runs, entered, gate) =
                (Arc::clone(&runs), Arc::clone(&entered), Arc::clone(&gate));
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                req.extensions()
                    .get::<SideEffectsMarker>()
                    .unwrap()
                    .committed();
                entered.notify_one();
                gate.notified().await;
                if runs.load(Ordering::SeqCst) > 0 {
                    panic!("after the commit");
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        })
    };
    let service = layer.layer(svc);
    let call = tokio::spawn(service.clone().oneshot(post("panic-gone")));
    entered.notified().await;
    call.abort();
    let _ = call.await;
    gate.notify_one();
    assert_eq!(settled(&store, &engine, "panic-gone").await, "completed");
    let retry = service.oneshot(post("panic-gone")).await.unwrap();
    assert_eq!(retry.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// 4. The client leaves while the claim is on its way to the store (found by the random drops on
//    Redis): the claim lands, nobody holds its token, and the key stays "in progress" for a whole
//    lease (60 s by default: every retry gets 409 meanwhile). A claim whose reply is lost to a
//    timeout is released in the background (DESIGN: "Leases while work runs"); a claim whose
//    caller is dropped is not.
// ---------------------------------------------------------------------------------------------

/// A memory store whose `try_claim` applies the claim, then (while `hang` is on) never answers,
/// like a Redis reply still on the wire when the request future is dropped.
#[derive(Debug, Clone, Default)]
struct ClaimThenHang {
    inner: MemoryStore,
    hang: Arc<std::sync::atomic::AtomicBool>,
    landed: Arc<Notify>,
}

impl IdempotencyStore for ClaimThenHang {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &idempotency_core::InProgress,
        lease: Duration,
    ) -> Result<idempotency_core::Claim, idempotency_core::StoreError> {
        let claimed = self.inner.try_claim(key, record, lease).await;
        if self.hang.load(Ordering::SeqCst) {
            self.landed.notify_one();
            std::future::pending::<()>().await;
        }
        claimed
    }
    async fn complete(
        &self,
        key: &StoreKey,
        token: &idempotency_core::LeaseToken,
        record: &idempotency_core::Completed,
        retention: Duration,
    ) -> Result<idempotency_core::Fenced, idempotency_core::StoreError> {
        self.inner.complete(key, token, record, retention).await
    }
    async fn release(
        &self,
        key: &StoreKey,
        token: &idempotency_core::LeaseToken,
    ) -> Result<idempotency_core::Fenced, idempotency_core::StoreError> {
        self.inner.release(key, token).await
    }
    async fn extend(
        &self,
        key: &StoreKey,
        token: &idempotency_core::LeaseToken,
        lease: Duration,
    ) -> Result<idempotency_core::Fenced, idempotency_core::StoreError> {
        self.inner.extend(key, token, lease).await
    }
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, idempotency_core::StoreError> {
        self.inner.get(key).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool, idempotency_core::StoreError> {
        self.inner.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_during_the_claim_round_trip_does_not_block_the_key_for_a_lease() {
    let store = ClaimThenHang::default();
    let engine = engine(store.clone());
    let layer = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build();
    let handler = Handler::default();
    let service = layer.layer(handler.service::<ClaimThenHang>());
    store.hang.store(true, Ordering::SeqCst);
    let call = tokio::spawn(service.clone().oneshot(post("claim-in-flight")));
    store.landed.notified().await;
    // The client leaves (or a timeout layer fires) before the claim's reply arrives.
    call.abort();
    let _ = call.await;
    store.hang.store(false, Ordering::SeqCst);
    let after = settled(&store, &engine, "claim-in-flight").await;
    let retry = service.oneshot(post("claim-in-flight")).await.unwrap();
    assert_eq!(
        (after, retry.status(), handler.runs.load(Ordering::SeqCst)),
        ("absent", StatusCode::CREATED, 1),
        "a claim whose caller was dropped before its reply must be released (like a lost \
         reply), not left in progress for the lease (store state, retry status, runs)"
    );
}

/// Released (`SideEffects::None`) with the client gone mid-handler: the head, carrying the
/// handler's own body (whose drop takes the claim lock), is dropped by the hand-off; no
/// deadlock, the key is free and the retry runs again.
async fn released_after_the_client_left<S: IdempotencyStore + Clone + 'static>(
    store: S,
    tag: &str,
    iterations: usize,
) {
    let engine = engine(store.clone());
    let layer = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build();
    let handler = Handler::default();
    let service = layer.layer(handler.service::<S>());
    for i in 0..iterations {
        let key = format!("{tag}-none-{i}");
        let mut req = post(&key);
        req.headers_mut().insert("x-hold", "1".parse().unwrap());
        req.headers_mut().insert("x-none", "1".parse().unwrap());
        let call = tokio::spawn(service.clone().oneshot(req));
        handler.entered.notified().await;
        call.abort();
        let _ = call.await;
        handler.gate.notify_one();
        assert_eq!(settled(&store, &engine, &key).await, "absent", "{key}");
        let again = service.clone().oneshot(post(&key)).await.unwrap();
        assert_eq!(again.status(), StatusCode::CREATED, "{key}");
        assert!(
            again.headers().get("idempotent-replayed").is_none(),
            "{key}"
        );
    }
    assert_eq!(handler.runs.load(Ordering::SeqCst), 2 * iterations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_released_after_the_client_left() {
    released_after_the_client_left(MemoryStore::new(), "mem", 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_released_after_the_client_left() {
    let (_server, store) = redis().await;
    released_after_the_client_left(store, "redis", 100).await;
}
