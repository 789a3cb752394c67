//! breaker8: the per-request `Drive` future (the handler, then its recording in the same place),
//! the boxed completion and the boxed claim. A client gone at every await point of a fresh
//! request, a slow store (the boxed store-call timer), a runtime shut down with detached
//! recordings in flight, and 64 duplicates of one key on a multi-thread runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use idempotency_core::{
    Claim, Completed, Fenced, Idempotency, IdempotencyKey, IdempotencyStore, InProgress,
    LeaseToken, Record, Scope, StoreError, StoreKey,
};
use idempotency_http::IdempotencyLayer;
use idempotency_memory::MemoryStore;
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};

type Req = Request<Full<Bytes>>;

/// A memory store whose `try_claim` and `complete` can be made to wait (past the first poll):
/// `claim_delay_ms` / `complete_delay_ms` sleep on the (paused) clock; `hold_complete` waits for
/// `complete_gate` after signalling `complete_entered`. No operation bound: the engine arms its
/// own timer.
#[derive(Debug, Clone, Default)]
struct Slow {
    inner: MemoryStore,
    claim_delay_ms: Arc<AtomicU64>,
    complete_delay_ms: Arc<AtomicU64>,
    hold_complete: Arc<AtomicBool>,
    complete_entered: Arc<Notify>,
    complete_gate: Arc<Notify>,
    completes: Arc<AtomicUsize>,
    releases: Arc<AtomicUsize>,
}

impl IdempotencyStore for Slow {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let delay = self.claim_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.inner.try_claim(key, record, lease).await
    }
    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        if self.hold_complete.load(Ordering::SeqCst) {
            self.complete_entered.notify_one();
            self.complete_gate.notified().await;
        }
        let delay = self.complete_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let fenced = self.inner.complete(key, token, record, retention).await;
        self.completes.fetch_add(1, Ordering::SeqCst);
        fenced
    }
    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.inner.release(key, token).await
    }
    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner.extend(key, token, lease).await
    }
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
}

/// A body of two frames; the second waits for `gate` (`exact`: a known length).
struct Gated {
    first: Option<Bytes>,
    second: Option<Bytes>,
    gate: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    exact: bool,
}

impl Body for Gated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if let Some(gate) = self.gate.as_mut() {
            if gate.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.gate = None;
        }
        Poll::Ready(self.second.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.second.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            let len = self.first.as_ref().map_or(0, Bytes::len)
                + self.second.as_ref().map_or(0, Bytes::len);
            SizeHint::with_exact(len as u64)
        } else {
            SizeHint::default()
        }
    }
}

#[derive(Clone, Default)]
struct Handler {
    runs: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
    body_gate: Arc<Notify>,
    body_waiting: Arc<Notify>,
}

impl Handler {
    fn service(&self) -> tower::util::BoxCloneService<Req, Response<Gated>, Infallible> {
        let me = self.clone();
        tower::util::BoxCloneService::new(tower::service_fn(move |req: Req| {
            let me = me.clone();
            async move {
                let n = me.runs.fetch_add(1, Ordering::SeqCst) + 1;
                if req.headers().contains_key("x-hold") {
                    me.entered.notify_one();
                    me.release.notified().await;
                }
                let streamed = req.headers().contains_key("x-stream");
                let gated = streamed || req.headers().contains_key("x-gate");
                let gate: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>> = if gated {
                    let g = Arc::clone(&me.body_gate);
                    let waiting = Arc::clone(&me.body_waiting);
                    Some(Box::pin(async move {
                        waiting.notify_one();
                        g.notified().await;
                    }))
                } else {
                    None
                };
                let response = Response::builder()
                    .status(201)
                    .header("content-type", "text/plain")
                    .body(Gated {
                        first: Some(Bytes::from(format!("run {n};"))),
                        second: Some(Bytes::from_static(b"end")),
                        gate,
                        exact: !streamed,
                    })
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        }))
    }
}

type Svc<S> = idempotency_http::IdempotencyService<
    tower::util::BoxCloneService<Req, Response<Gated>, Infallible>,
    S,
    idempotency_http::GlobalScope,
>;

fn setup(store: Slow, timeout: Duration) -> (Idempotency<Slow>, Handler, Svc<Slow>) {
    setup_with(store, timeout, Duration::from_secs(30))
}

fn setup_with(
    store: Slow,
    timeout: Duration,
    completion_retry: Duration,
) -> (Idempotency<Slow>, Handler, Svc<Slow>) {
    let engine = Idempotency::builder(store)
        .store_timeout(timeout)
        .completion_retry(completion_retry)
        .ignore_env()
        .build()
        .unwrap();
    let (handler, service) = serve(&engine);
    (engine, handler, service)
}

/// The test handler behind the layer over `engine`.
fn serve(engine: &Idempotency<Slow>) -> (Handler, Svc<Slow>) {
    let handler = Handler::default();
    let service = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build()
        .layer(handler.service());
    (handler, service)
}

fn post(key: &str, extra: &[&str]) -> Req {
    let mut builder = Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", key);
    for h in extra {
        builder = builder.header(*h, "1");
    }
    builder.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
}

async fn state(store: &Slow, engine: &Idempotency<Slow>, key: &str) -> &'static str {
    let key = StoreKey::derive(
        engine.config().prefix(),
        &Scope::global(),
        &IdempotencyKey::new(key).unwrap(),
    );
    match store.inner.get(&key).await.unwrap() {
        None => "absent",
        Some(Record::InProgress(_)) => "in progress",
        Some(Record::Completed(_)) => "completed",
    }
}

async fn settled(store: &Slow, engine: &Idempotency<Slow>, key: &str) -> &'static str {
    for _ in 0..500 {
        let s = state(store, engine, key).await;
        if s != "in progress" {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    "in progress"
}

async fn body_of(response: Response<idempotency_http::ResponseBody<Gated>>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// A retry of `key` is answered by a replay of run `run`'s recorded body.
async fn assert_replays_run(service: &Svc<Slow>, key: &str, run: usize) {
    let retry = service.clone().oneshot(post(key, &[])).await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED, "{key}");
    assert!(
        retry.headers().get("idempotent-replayed").is_some(),
        "{key}"
    );
    assert_eq!(body_of(retry).await, format!("run {run};end"), "{key}");
}

/// Alive tasks once one request went through (the engine starts its background worker on the
/// first request).
async fn warm_baseline(service: &Svc<Slow>) -> usize {
    let warm = service.clone().oneshot(post("warm-up", &[])).await.unwrap();
    let _ = body_of(warm).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Alive tasks settle back to `baseline` (detached recordings end on their own schedule).
async fn tasks_back_to(baseline: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..500 {
        if metrics.num_alive_tasks() <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    metrics.num_alive_tasks()
}

/// The client leaves while the handler runs: the drive future is detached, runs the handler to
/// its end and records it; the retry replays it; no task is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker8_client_gone_before_the_handler_ends_records_once() {
    let store = Slow::default();
    let (engine, handler, service) = setup(store.clone(), Duration::from_secs(5));
    let baseline = warm_baseline(&service).await;
    for i in 0..50 {
        let key = format!("gone-handler-{i}");
        let call = tokio::spawn(service.clone().oneshot(post(&key, &["x-hold"])));
        handler.entered.notified().await;
        call.abort();
        assert!(matches!(call.await, Err(e) if e.is_cancelled()));
        handler.release.notify_one();
        assert_eq!(settled(&store, &engine, &key).await, "completed", "{key}");
        assert_replays_run(&service, &key, i + 2).await;
    }
    // 50 and the warm-up.
    assert_eq!(handler.runs.load(Ordering::SeqCst), 51);
    assert_eq!(store.completes.load(Ordering::SeqCst), 51);
    assert_eq!(store.releases.load(Ordering::SeqCst), 0);
    assert_eq!(tasks_back_to(baseline).await, baseline, "tasks left behind");
}

/// The client leaves while the completion's (boxed) store call waits: the recording finishes
/// detached, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker8_client_gone_during_the_completion_store_call() {
    let store = Slow::default();
    let (engine, handler, service) = setup(store.clone(), Duration::from_secs(5));
    let baseline = warm_baseline(&service).await;
    store.hold_complete.store(true, Ordering::SeqCst);
    for i in 0..50 {
        let key = format!("gone-complete-{i}");
        let call = tokio::spawn(service.clone().oneshot(post(&key, &[])));
        store.complete_entered.notified().await;
        call.abort();
        let _ = call.await;
        assert_eq!(state(&store, &engine, &key).await, "in progress");
        store.complete_gate.notify_one();
        assert_eq!(settled(&store, &engine, &key).await, "completed", "{key}");
        assert_replays_run(&service, &key, i + 2).await;
    }
    // 50 and the warm-up.
    assert_eq!(handler.runs.load(Ordering::SeqCst), 51);
    assert_eq!(store.completes.load(Ordering::SeqCst), 51);
    assert_eq!(tasks_back_to(baseline).await, baseline, "tasks left behind");
}

/// The client leaves mid-body of a streamed response (the pump): the recording still reads the
/// handler's body to its end and completes the claim; the retry replays it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker8_client_gone_mid_streamed_body() {
    let store = Slow::default();
    let (engine, handler, service) = setup(store.clone(), Duration::from_secs(5));
    let baseline = warm_baseline(&service).await;
    let mut outcomes = std::collections::BTreeMap::<&'static str, usize>::new();
    for i in 0..50 {
        let key = format!("gone-body-{i}");
        let response = service
            .clone()
            .oneshot(post(&key, &["x-stream"]))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, format!("run {};", i + 2));
        drop(body);
        handler.body_gate.notify_one();
        let s = settled(&store, &engine, &key).await;
        assert_ne!(s, "in progress", "{key}");
        *outcomes.entry(s).or_default() += 1;
        if s == "completed" {
            assert_replays_run(&service, &key, i + 2).await;
        } else {
            // A released claim: the retry runs the handler again (as before this helper).
            service.clone().oneshot(post(&key, &[])).await.unwrap();
        }
    }
    eprintln!("client gone mid-body: {outcomes:?}");
    assert_eq!(tasks_back_to(baseline).await, baseline, "tasks left behind");
}

/// A claim that waits past the first poll but within `store_timeout`: answered normally, after
/// exactly the store's delay (paused clock). A claim past `store_timeout`: the boxed timer fires
/// at `store_timeout` and the request answers a problem+json 503; the handler never runs.
#[tokio::test(start_paused = true)]
async fn breaker8_slow_claim_within_and_past_the_store_timeout() {
    let store = Slow::default();
    let (engine, handler, service) = setup(store.clone(), Duration::from_millis(500));
    store.claim_delay_ms.store(300, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let ok = service.clone().oneshot(post("slow-ok", &[])).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(body_of(ok).await, "run 1;end");
    assert_eq!(state(&store, &engine, "slow-ok").await, "completed");

    store.claim_delay_ms.store(10_000, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let late = service
        .clone()
        .oneshot(post("slow-late", &[]))
        .await
        .unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(500),
        "the timer fires on time"
    );
    assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        late.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let problem: serde_json::Value = serde_json::from_slice(&body_of(late).await).unwrap();
    assert_eq!(problem["status"], 503, "{problem}");
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
}

/// A completion past `store_timeout` (completion retries off): the known-length body waits for
/// its recording, which the boxed timer ends at exactly `store_timeout` (paused clock); the
/// response still goes out (the handler ran).
#[tokio::test(start_paused = true)]
async fn breaker8_slow_completion_past_the_store_timeout() {
    let store = Slow::default();
    let (engine, handler, service) =
        setup_with(store.clone(), Duration::from_millis(500), Duration::ZERO);
    store.complete_delay_ms.store(10_000, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let response = service
        .clone()
        .oneshot(post("slow-done", &[]))
        .await
        .unwrap();
    let head_after = start.elapsed();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(body_of(response).await, "run 1;end");
    let body_after = start.elapsed();
    // The known-length body waits for its recording, which the boxed timer ends at
    // store_timeout.
    assert_eq!(
        body_after,
        Duration::from_millis(500),
        "the timer fires on time"
    );
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
    let s = state(&store, &engine, "slow-done").await;
    let retry = service
        .clone()
        .oneshot(post("slow-done", &[]))
        .await
        .unwrap();
    eprintln!(
        "completion past the timeout: head after {head_after:?}, body after {body_after:?}, \
         then {s}, retry {}",
        retry.status()
    );
}

/// A runtime shut down while detached recordings wait (on the handler, or on the completion's
/// store call): no panic, no abort.
#[test]
fn breaker8_runtime_shutdown_with_detached_recordings_in_flight() {
    for shutdown_background in [false, true] {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = Slow::default();
        let (handler, service) = runtime.block_on(async {
            let (_engine, handler, service) = setup(store.clone(), Duration::from_secs(5));
            for i in 0..8 {
                let call = tokio::spawn(
                    service
                        .clone()
                        .oneshot(post(&format!("shutdown-h-{i}"), &["x-hold"])),
                );
                handler.entered.notified().await;
                call.abort();
                let _ = call.await;
            }
            store.hold_complete.store(true, Ordering::SeqCst);
            for i in 0..8 {
                let call = tokio::spawn(
                    service
                        .clone()
                        .oneshot(post(&format!("shutdown-c-{i}"), &[])),
                );
                store.complete_entered.notified().await;
                call.abort();
                let _ = call.await;
            }
            (handler, service)
        });
        if shutdown_background {
            runtime.shutdown_background();
        } else {
            drop(runtime);
        }
        // The service and its state outlive the runtime; dropping them must not panic either.
        drop(service);
        assert_eq!(handler.runs.load(Ordering::SeqCst), 16);
    }
}

/// 64 duplicates of one key with a slow handler, mixed with 64 fresh keys, on a multi-thread
/// runtime, 20 times: one run per key; duplicates get 409 while it runs, or the replay after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker8_64_duplicates_of_one_key_mixed_with_fresh_keys() {
    let store = Slow::default();
    let (engine, handler, service) = setup(store.clone(), Duration::from_secs(5));
    let baseline = warm_baseline(&service).await;
    for round in 0..20 {
        let runs_before = handler.runs.load(Ordering::SeqCst);
        let key = format!("dup-{round}");
        // The first one claims and holds.
        let first = tokio::spawn(service.clone().oneshot(post(&key, &["x-hold"])));
        handler.entered.notified().await;
        let mut calls = Vec::new();
        for j in 0..64 {
            calls.push((
                true,
                tokio::spawn(service.clone().oneshot(post(&key, &["x-hold"]))),
            ));
            calls.push((
                false,
                tokio::spawn(
                    service
                        .clone()
                        .oneshot(post(&format!("fresh-{round}-{j}"), &[])),
                ),
            ));
        }
        let mut conflicts = 0;
        for (dup, call) in calls {
            let response = call.await.unwrap().unwrap();
            if dup {
                assert_eq!(response.status(), StatusCode::CONFLICT);
                conflicts += 1;
            } else {
                assert_eq!(response.status(), StatusCode::CREATED);
            }
        }
        assert_eq!(conflicts, 64);
        handler.release.notify_one();
        let first = first.await.unwrap().unwrap();
        assert_eq!(first.status(), StatusCode::CREATED);
        let first_body = body_of(first).await;
        assert_eq!(settled(&store, &engine, &key).await, "completed");
        let mut replays = Vec::new();
        for _ in 0..64 {
            replays.push(tokio::spawn(service.clone().oneshot(post(&key, &[]))));
        }
        for call in replays {
            let response = call.await.unwrap().unwrap();
            assert!(response.headers().get("idempotent-replayed").is_some());
            assert_eq!(body_of(response).await, first_body);
        }
        assert_eq!(
            handler.runs.load(Ordering::SeqCst) - runs_before,
            65,
            "round {round}: one run for the duplicated key, one per fresh key"
        );
    }
    assert_eq!(tasks_back_to(baseline).await, baseline, "tasks left behind");
}

/// The same with duplicates waiting for the first attempt (`wait_for_in_progress`): every
/// duplicate gets the first attempt's answer replayed, one run per key, 20 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker8_64_waiting_duplicates_of_one_key_mixed_with_fresh_keys() {
    let store = Slow::default();
    let engine = Idempotency::builder(store.clone())
        .store_timeout(Duration::from_secs(5))
        .wait_for_in_progress(Duration::from_secs(10), Duration::from_millis(5))
        .ignore_env()
        .build()
        .unwrap();
    let (handler, service) = serve(&engine);
    let baseline = warm_baseline(&service).await;
    for round in 0..20 {
        let runs_before = handler.runs.load(Ordering::SeqCst);
        let key = format!("wdup-{round}");
        let first = tokio::spawn(service.clone().oneshot(post(&key, &["x-hold"])));
        handler.entered.notified().await;
        let mut dups = Vec::new();
        let mut fresh = Vec::new();
        for j in 0..64 {
            dups.push(tokio::spawn(
                service.clone().oneshot(post(&key, &["x-hold"])),
            ));
            fresh.push(tokio::spawn(
                service
                    .clone()
                    .oneshot(post(&format!("wfresh-{round}-{j}"), &[])),
            ));
        }
        for call in fresh {
            assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::CREATED);
        }
        handler.release.notify_one();
        let first = first.await.unwrap().unwrap();
        assert_eq!(first.status(), StatusCode::CREATED);
        let first_body = body_of(first).await;
        for call in dups {
            let response = call.await.unwrap().unwrap();
            assert_eq!(response.status(), StatusCode::CREATED, "round {round}");
            assert!(response.headers().get("idempotent-replayed").is_some());
            assert_eq!(body_of(response).await, first_body);
        }
        assert_eq!(
            handler.runs.load(Ordering::SeqCst) - runs_before,
            65,
            "round {round}: one run for the duplicated key, one per fresh key"
        );
    }
    assert_eq!(tasks_back_to(baseline).await, baseline, "tasks left behind");
}

/// The client leaves while the recording reads a known-length body that waits (the head is not
/// out yet): the detached recording reads it to its end and completes the claim once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker8_client_gone_while_the_recording_reads_a_known_length_body() {
    let store = Slow::default();
    let (engine, handler, service) = setup(store.clone(), Duration::from_secs(5));
    let baseline = warm_baseline(&service).await;
    for i in 0..50 {
        let key = format!("gone-reading-{i}");
        let call = tokio::spawn(service.clone().oneshot(post(&key, &["x-gate"])));
        handler.body_waiting.notified().await;
        call.abort();
        let _ = call.await;
        assert_eq!(state(&store, &engine, &key).await, "in progress");
        handler.body_gate.notify_one();
        assert_eq!(settled(&store, &engine, &key).await, "completed", "{key}");
        assert_replays_run(&service, &key, i + 2).await;
    }
    assert_eq!(handler.runs.load(Ordering::SeqCst), 51);
    assert_eq!(store.completes.load(Ordering::SeqCst), 51);
    assert_eq!(tasks_back_to(baseline).await, baseline, "tasks left behind");
}
