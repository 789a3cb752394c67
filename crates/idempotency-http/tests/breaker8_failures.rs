//! breaker8: the failure paths of the `Drive` future's recording step, each with the client
//! gone while the handler runs (so the drive future finishes detached, on its own task): a
//! handler that panics or errs (released: the retry runs again), one that marks
//! `SideEffects::Committed` then panics (a stored 500 `response-lost`, replayed), a response
//! whose known-length body fails in the recording step (released), and a handler that takes
//! its claim (`TransactionalClaim`) and completes it itself (its record, completed once). The
//! process survives the detached panics and no task is left behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use idempotency_core::{
    Idempotency, IdempotencyKey, IdempotencyStore, Record, Scope, StoreKey, StoredOutcome,
};
use idempotency_http::{IdempotencyLayer, SideEffectsMarker, TransactionalClaim};
use idempotency_memory::MemoryStore;
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};

type Req = Request<Full<Bytes>>;

/// A known-length body whose second frame fails when `fail` is set.
struct Failing {
    frames: u8,
    fail: bool,
    panic: bool,
}

impl Body for Failing {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.frames {
            0 => Poll::Ready(None),
            n => {
                self.frames -= 1;
                if n == 1 && self.panic {
                    panic!("body panicked (on purpose)");
                }
                if n == 1 && self.fail {
                    return Poll::Ready(Some(Err(std::io::Error::other("body failed"))));
                }
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"abcd")))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(u64::from(self.frames) * 4)
    }
}

#[derive(Clone, Default)]
struct Handler {
    runs: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

impl Handler {
    fn service(&self) -> tower::util::BoxCloneService<Req, Response<Failing>, std::io::Error> {
        let me = self.clone();
        tower::util::BoxCloneService::new(tower::service_fn(move |req: Req| {
            let me = me.clone();
            async move {
                me.runs.fetch_add(1, Ordering::SeqCst);
                let mode = req
                    .headers()
                    .get("x-mode")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let marker = req.extensions().get::<SideEffectsMarker>().unwrap().clone();
                let claim = req
                    .extensions()
                    .get::<TransactionalClaim<MemoryStore>>()
                    .unwrap()
                    .clone();
                if req.headers().contains_key("x-hold") {
                    me.entered.notify_one();
                    me.release.notified().await;
                }
                match mode.as_str() {
                    "panic" => panic!("handler panicked (on purpose)"),
                    "error" => return Err(std::io::Error::other("handler error")),
                    "committed-panic" => {
                        marker.committed();
                        panic!("handler panicked after a commit (on purpose)");
                    }
                    "transactional" => {
                        let guard = claim.take_guard().unwrap();
                        guard
                            .complete(StoredOutcome::new(Bytes::from_static(b"own"), None))
                            .await
                            .unwrap();
                    }
                    _ => {}
                }
                Ok(Response::builder()
                    .status(201)
                    .body(Failing {
                        frames: 2,
                        fail: mode == "body-error",
                        panic: mode == "body-panic",
                    })
                    .unwrap())
            }
        }))
    }
}

fn post(key: &str, mode: &str, hold: bool) -> Req {
    let mut builder = Request::post("/orders")
        .header("idempotency-key", key)
        .header("x-mode", mode);
    if hold {
        builder = builder.header("x-hold", "1");
    }
    builder.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
}

async fn settled(
    store: &MemoryStore,
    engine: &Idempotency<MemoryStore>,
    key: &str,
) -> Option<Record> {
    let key = StoreKey::derive(
        engine.config().prefix(),
        &Scope::global(),
        &IdempotencyKey::new(key).unwrap(),
    );
    for _ in 0..500 {
        let record = store.get(&key).await.unwrap();
        if !matches!(record, Some(Record::InProgress(_))) {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{key:?} left in progress");
}

fn quiet_panics() {
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
}

/// A body that panics while the recording reads it (known length: read before the head goes
/// out), with the client waiting (the panic reaches the request's future, as a handler panic
/// does) and with the client gone (the detached task dies alone): the claim is released by the
/// guard's drop, the retry runs again, the runtime lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker8_a_body_panicking_in_the_recording_releases_the_claim() {
    quiet_panics();
    let store = MemoryStore::new();
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    let handler = Handler::default();
    let service = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build()
        .layer(handler.service());
    for i in 0..40 {
        let key = format!("body-panic-{i}");
        let gone = i % 2 == 1;
        let call = tokio::spawn(service.clone().oneshot(post(&key, "body-panic", gone)));
        if gone {
            handler.entered.notified().await;
            call.abort();
            let _ = call.await;
            handler.release.notify_one();
        } else {
            // The head may go out before the failing frame is read: then reading the body
            // must fail (an error or the panic), never end cleanly.
            match call.await {
                Err(e) => assert!(e.is_panic(), "{key}"),
                Ok(Ok(response)) => {
                    let read = tokio::spawn(response.into_body().collect()).await;
                    assert!(!matches!(read, Ok(Ok(_))), "{key}: a clean body end");
                }
                Ok(Err(_)) => {}
            }
        }
        let record = settled(&store, &engine, &key).await;
        assert!(record.is_none(), "{key}: released, got {record:?}");
        let retry = service
            .clone()
            .oneshot(post(&key, "", false))
            .await
            .unwrap();
        assert_eq!(retry.status(), StatusCode::CREATED, "{key}");
        assert!(
            retry.headers().get("idempotent-replayed").is_none(),
            "{key}"
        );
    }
    assert_eq!(handler.runs.load(Ordering::SeqCst), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker8_failures_with_the_client_gone_end_the_claim_as_documented() {
    quiet_panics();
    let store = MemoryStore::new();
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    let handler = Handler::default();
    let service = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build()
        .layer(handler.service());
    // Warm-up: the engine's background worker starts with the first request.
    let warm = service
        .clone()
        .oneshot(post("warm", "", false))
        .await
        .unwrap();
    let _ = warm.into_body().collect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let modes = [
        "panic",
        "error",
        "committed-panic",
        "body-error",
        "transactional",
        "",
    ];
    for i in 0..120 {
        let mode = modes[i % modes.len()];
        let key = format!("fail-{i}");
        let runs = handler.runs.load(Ordering::SeqCst);
        let call = tokio::spawn(service.clone().oneshot(post(&key, mode, true)));
        handler.entered.notified().await;
        call.abort();
        let _ = call.await;
        handler.release.notify_one();
        let record = settled(&store, &engine, &key).await;
        let retry = service
            .clone()
            .oneshot(post(&key, "", false))
            .await
            .unwrap();
        let status = retry.status();
        let replayed = retry.headers().get("idempotent-replayed").is_some();
        let body = retry.into_body().collect().await.unwrap().to_bytes();
        let retry_runs = handler.runs.load(Ordering::SeqCst) - runs - 1;
        match mode {
            "panic" | "error" | "body-error" => {
                assert!(record.is_none(), "{mode}: released, got {record:?}");
                assert_eq!(
                    (status, replayed, retry_runs),
                    (StatusCode::CREATED, false, 1),
                    "{mode}"
                );
            }
            "committed-panic" => {
                assert!(matches!(record, Some(Record::Completed(_))), "{mode}");
                assert_eq!(
                    (status, replayed, retry_runs),
                    (StatusCode::INTERNAL_SERVER_ERROR, true, 0),
                    "{mode}"
                );
            }
            "transactional" => {
                let Some(Record::Completed(completed)) = &record else {
                    panic!("{mode}: completed by the handler, got {record:?}");
                };
                assert_eq!(&completed.outcome.body[..], b"own", "{mode}");
                assert_eq!(retry_runs, 0, "{mode}");
            }
            _ => {
                assert!(matches!(record, Some(Record::Completed(_))), "{mode}");
                assert_eq!(
                    (status, replayed, retry_runs),
                    (StatusCode::CREATED, true, 0),
                    "{mode}"
                );
                assert_eq!(&body[..], b"abcdabcd");
            }
        }
    }
    for _ in 0..500 {
        if metrics.num_alive_tasks() <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(metrics.num_alive_tasks(), baseline, "tasks left behind");
}

/// A request future polled on a runtime that then shuts down, dropped afterwards outside any
/// runtime: the drive future (handler in flight) is handed to the dead runtime's handle
/// (`Detachable`'s drop) and the claim guard is dropped with it; nothing panics or aborts.
#[test]
fn breaker8_a_request_dropped_after_its_runtime_shut_down() {
    for shutdown_background in [false, true] {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = MemoryStore::new();
        let handler = Handler::default();
        let (mut calls, service) = runtime.block_on(async {
            let engine = Idempotency::builder(store.clone())
                .ignore_env()
                .build()
                .unwrap();
            let service = IdempotencyLayer::builder(engine)
                .global_scope()
                .build()
                .layer(handler.service());
            let mut calls = Vec::new();
            for i in 0..4 {
                let mut call = Box::pin(service.clone().oneshot(post(
                    &format!("dead-rt-{i}"),
                    "",
                    true,
                )));
                tokio::select! {
                    _ = &mut call => panic!("the handler holds"),
                    () = handler.entered.notified() => {}
                }
                calls.push(call);
            }
            (calls, service)
        });
        if shutdown_background {
            runtime.shutdown_background();
        } else {
            drop(runtime);
        }
        // Outside any runtime now.
        calls.clear();
        drop(service);
        assert_eq!(handler.runs.load(Ordering::SeqCst), 4);
    }
}
