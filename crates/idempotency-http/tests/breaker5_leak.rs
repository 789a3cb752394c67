//! breaker5: no protected request's shared state (`record::Shared`: claim slot, marker state,
//! head hand-off) outlives the request, whatever path it took, even when the handler ties the
//! response to that state (a clone of the marker and of the `TransactionalClaim` in the
//! response's extensions and body: an `Arc` cycle through the head slot would leak it). Live heap
//! bytes are counted (`peak_alloc` is this binary's global allocator, hence its own binary); a
//! calibration run that leaks the state on purpose shows the count would see it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use idempotency_core::{
    Idempotency, IdempotencyKey, IdempotencyStore, Scope, StoreKey, StoredOutcome,
};
use idempotency_http::{IdempotencyLayer, SideEffectsMarker, TransactionalClaim};
use idempotency_memory::MemoryStore;
use peak_alloc::PeakAlloc;
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

type Req = Request<Full<Bytes>>;

/// A body holding clones of the request's marker and claim; `exact` chooses the inline path
/// (known length, recorded before the head) or the pump (unknown length).
struct Holding {
    data: Option<Bytes>,
    exact: bool,
    _marker: SideEffectsMarker,
    _claim: TransactionalClaim<MemoryStore>,
}

impl Body for Holding {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, self.exact) {
            (Some(d), true) => SizeHint::with_exact(d.len() as u64),
            (None, true) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[derive(Clone, Default)]
struct Handler {
    entered: Arc<Notify>,
    gate: Arc<Notify>,
    leak_on_purpose: Arc<AtomicBool>,
    runs: Arc<AtomicUsize>,
}

impl Handler {
    fn service(&self) -> tower::util::BoxCloneService<Req, Response<Holding>, std::io::Error> {
        let me = self.clone();
        tower::util::BoxCloneService::new(tower::service_fn(move |req: Req| {
            let me = me.clone();
            async move {
                me.runs.fetch_add(1, Ordering::SeqCst);
                let marker = req.extensions().get::<SideEffectsMarker>().unwrap().clone();
                let claim = req
                    .extensions()
                    .get::<TransactionalClaim<MemoryStore>>()
                    .unwrap()
                    .clone();
                if me.leak_on_purpose.load(Ordering::SeqCst) {
                    std::mem::forget(marker.clone());
                }
                let mode = req
                    .headers()
                    .get("x-mode")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                match mode.as_str() {
                    "hold" => {
                        me.entered.notify_one();
                        me.gate.notified().await;
                    }
                    "error" => return Err(std::io::Error::other("handler error")),
                    "panic" => panic!("handler panicked (on purpose)"),
                    "committed-panic" => {
                        marker.committed();
                        panic!("handler panicked after a commit (on purpose)");
                    }
                    "transactional" => {
                        let guard = claim.take_guard().unwrap();
                        guard
                            .complete(StoredOutcome::new(Bytes::from_static(b"x"), None))
                            .await
                            .unwrap();
                    }
                    _ => tokio::task::yield_now().await,
                }
                let mut response = Response::new(Holding {
                    data: Some(Bytes::from_static(b"{\"ok\":true}")),
                    exact: mode != "pump",
                    _marker: marker.clone(),
                    _claim: claim.clone(),
                });
                *response.status_mut() = StatusCode::CREATED;
                response.extensions_mut().insert(marker);
                response.extensions_mut().insert(claim);
                Ok(response)
            }
        }))
    }
}

const MODES: &[&str] = &[
    "",
    "pump",
    "hold",
    "head-only",
    "error",
    "panic",
    "committed-panic",
    "transactional",
];

async fn round(
    service: &tower::util::BoxCloneService<
        Req,
        Response<idempotency_http::ResponseBody<Holding>>,
        std::io::Error,
    >,
    handler: &Handler,
    store: &MemoryStore,
    engine: &Idempotency<MemoryStore>,
    i: usize,
) {
    let mode = MODES[i % MODES.len()];
    let key = format!("k{}", i % 4);
    let req = Request::post("/orders")
        .header("idempotency-key", &key)
        .header("x-mode", if mode == "head-only" { "pump" } else { mode })
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    match mode {
        "hold" => {
            let call = tokio::spawn(service.clone().oneshot(req));
            handler.entered.notified().await;
            call.abort();
            let _ = call.await;
            handler.gate.notify_one();
        }
        "panic" | "committed-panic" => {
            let call = tokio::spawn(service.clone().oneshot(req));
            assert!(matches!(call.await, Err(e) if e.is_panic()));
        }
        "head-only" => drop(service.clone().oneshot(req).await.unwrap()),
        "error" => assert!(service.clone().oneshot(req).await.is_err()),
        _ => {
            let response = service.clone().oneshot(req).await.unwrap();
            let _ = response.into_body().collect().await.unwrap();
        }
    }
    // Wait until the claim is ended (a detached recording ends on its own schedule), then
    // forget the record so that the store does not grow.
    let store_key = StoreKey::derive(
        engine.config().prefix(),
        &Scope::global(),
        &IdempotencyKey::new(&key).unwrap(),
    );
    let mut ended = false;
    for _ in 0..2000 {
        match store.get(&store_key).await.unwrap() {
            Some(record) if record.is_in_progress() => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "{mode}: claim left in progress");
    store.delete(&store_key).await.unwrap();
}

async fn growth(leak_on_purpose: bool) -> isize {
    let store = MemoryStore::new();
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    let handler = Handler::default();
    let service = tower::util::BoxCloneService::new(
        IdempotencyLayer::builder(engine.clone())
            .global_scope()
            .build()
            .layer(handler.service()),
    );
    for i in 0..400 {
        round(&service, &handler, &store, &engine, i).await;
    }
    // Let detached tasks and background releases finish.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = ALLOCATOR.current_usage() as isize;
    handler
        .leak_on_purpose
        .store(leak_on_purpose, Ordering::SeqCst);
    for i in 400..4400 {
        round(&service, &handler, &store, &engine, i).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = ALLOCATOR.current_usage() as isize;
    after - before
}

// One test in this binary (the allocator count is process-wide).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shared_state_outlives_its_request() {
    // Silence the on-purpose panics' messages.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .unwrap_or_default();
        if !message.contains("on purpose") {
            default(info);
        }
    }));
    let clean = growth(false).await;
    let leaking = growth(true).await;
    eprintln!("live heap growth over 4000 requests: {clean} bytes; leaking on purpose: {leaking}");
    // Calibration: one leaked shared state per request is visible.
    assert!(
        leaking > 4000 * 64,
        "the count would see a leak ({leaking} bytes)"
    );
    assert!(
        clean < 64 * 1024,
        "live heap grew by {clean} bytes over 4000 requests: shared state outlives requests"
    );
}
