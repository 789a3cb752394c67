//! breaker9 (issue 15): the `idempotency.http` span is decided per request, not when the layer
//! is built. A layer built (and used) before any `tracing` dispatcher exists, then a global
//! subscriber installed: the same layer's services — cloned on other threads — build the span
//! with the request's key, the engine's events happen inside it, and a recording detached by a
//! client that left keeps it (`Span::current()`), completes the claim, and the retry replays.
//! Its own binary: the global dispatcher is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use idempotency_core::Idempotency;
use idempotency_http::IdempotencyLayer;
use idempotency_memory::MemoryStore;
use tokio::sync::Notify;
use tower::{Layer as _, ServiceExt as _};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

thread_local! {
    /// The spans entered on this thread, innermost last.
    static STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

#[derive(Default)]
struct Seen {
    /// Span id → (name, key field).
    spans: HashMap<u64, (String, String)>,
    /// Per request key: events inside its `idempotency.http` span.
    events_in: HashMap<String, usize>,
    /// Per request key: how often its `idempotency.http` span was entered.
    entered: HashMap<String, usize>,
}

#[derive(Default, Clone)]
struct Spans {
    seen: Arc<Mutex<Seen>>,
    next: Arc<AtomicU64>,
}

struct KeyField(String);

impl Visit for KeyField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "key" {
            self.0 = format!("{value:?}").trim_matches('"').to_owned();
        }
    }
}

impl Spans {
    fn http_key(&self, id: u64) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        match seen.spans.get(&id) {
            Some((name, key)) if name == "idempotency.http" => Some(key.clone()),
            _ => None,
        }
    }
    fn events_in(&self, key: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .events_in
            .get(key)
            .copied()
            .unwrap_or(0)
    }
    fn entered(&self, key: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .entered
            .get(key)
            .copied()
            .unwrap_or(0)
    }
    fn http_spans(&self, key: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.spans
            .values()
            .filter(|(name, k)| name == "idempotency.http" && k == key)
            .count()
    }
}

impl Subscriber for Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut key = KeyField(String::new());
        span.record(&mut key);
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let name = span.metadata().name().to_owned();
        self.seen.lock().unwrap().spans.insert(id, (name, key.0));
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {
        let stack = STACK.with(|s| s.borrow().clone());
        for id in stack {
            if let Some(key) = self.http_key(id) {
                *self.seen.lock().unwrap().events_in.entry(key).or_default() += 1;
            }
        }
    }
    fn enter(&self, id: &Id) {
        STACK.with(|s| s.borrow_mut().push(id.into_u64()));
        if let Some(key) = self.http_key(id.into_u64()) {
            *self.seen.lock().unwrap().entered.entry(key).or_default() += 1;
        }
    }
    fn exit(&self, id: &Id) {
        STACK.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(at) = s.iter().rposition(|x| *x == id.into_u64()) {
                s.remove(at);
            }
        });
    }
}

/// A handler that holds on `x-hold` until released, counting runs.
#[derive(Clone, Default)]
struct Handler {
    runs: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    gate: Arc<Notify>,
}

type Req = Request<Full<Bytes>>;

impl Handler {
    fn service(
        h: Handler,
    ) -> impl tower::Service<
        Req,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |req: Req| {
            let h = h.clone();
            async move {
                let n = h.runs.fetch_add(1, Ordering::SeqCst) + 1;
                if req.headers().contains_key("x-hold") {
                    h.entered.notify_one();
                    h.gate.notified().await;
                }
                tracing::info!(n, "handler ran");
                let mut response = Response::new(Full::new(Bytes::from(format!("run {n}"))));
                *response.status_mut() = StatusCode::CREATED;
                Ok::<_, Infallible>(response)
            }
        })
    }
}

fn post(key: &str) -> Req {
    Request::post("/orders")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

#[test]
fn a_subscriber_installed_after_the_layer_sees_spans_events_and_the_detached_recording() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let handler = Handler::default();
    let (layer, service) = runtime.block_on(async {
        let engine = Idempotency::builder(MemoryStore::new())
            .ignore_env()
            .build()
            .unwrap();
        let layer = IdempotencyLayer::builder(engine).global_scope().build();
        let service = layer.layer(Handler::service(handler.clone()));
        (layer, service)
    });
    // Used before any dispatcher exists: no span (nobody to see it), same answers.
    assert!(!tracing::dispatcher::has_been_set());
    runtime.block_on(async {
        let first = service.clone().oneshot(post("before")).await.unwrap();
        assert_eq!(first.status(), StatusCode::CREATED);
        let replay = service.clone().oneshot(post("before")).await.unwrap();
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
    });

    let spans = Spans::default();
    tracing::subscriber::set_global_default(spans.clone()).unwrap();

    // The same layer, cloned and layered on other threads.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (layer, handle, h) = (layer.clone(), runtime.handle().clone(), handler.clone());
            std::thread::spawn(move || {
                let service = layer.layer(Handler::service(h));
                handle.block_on(async move {
                    let key = format!("thread-{t}");
                    let first = service.clone().oneshot(post(&key)).await.unwrap();
                    assert_eq!(first.status(), StatusCode::CREATED);
                    first.into_body().collect().await.unwrap();
                    let replay = service.clone().oneshot(post(&key)).await.unwrap();
                    assert_eq!(replay.headers()["idempotent-replayed"], "true");
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..4 {
        let key = format!("thread-{t}");
        assert_eq!(spans.http_spans(&key), 2, "{key}: one span per request");
        assert!(
            spans.events_in(&key) >= 1,
            "{key}: the handler's event inside"
        );
        assert!(spans.entered(&key) >= 2, "{key}");
    }
    assert_eq!(spans.http_spans("before"), 0);

    // A recording detached by a client that left: it keeps the request's span.
    runtime.block_on(async {
        let key = "gone";
        let mut req = post(key);
        req.headers_mut().insert("x-hold", "1".parse().unwrap());
        let call = tokio::spawn(service.clone().oneshot(req));
        handler.entered.notified().await;
        call.abort();
        let _ = call.await;
        let entered_before = spans.entered(key);
        let events_before = spans.events_in(key);
        let runs_before = handler.runs.load(Ordering::SeqCst);
        handler.gate.notify_one();
        // The detached recording ends on its own; the retry then replays, never a second run.
        let mut replayed = false;
        for _ in 0..200 {
            let retry = service.clone().oneshot(post(key)).await.unwrap();
            if retry.status() == StatusCode::CREATED {
                assert_eq!(retry.headers()["idempotent-replayed"], "true");
                let body = retry.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, Bytes::from(format!("run {runs_before}")));
                replayed = true;
                break;
            }
            assert_eq!(retry.status(), StatusCode::CONFLICT);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(replayed, "the detached recording completed the claim");
        assert_eq!(handler.runs.load(Ordering::SeqCst), runs_before);
        assert!(
            spans.entered(key) > entered_before,
            "the detached recording runs in the request's span"
        );
        assert!(
            spans.events_in(key) > events_before,
            "the handler's event after the client left is inside the request's span"
        );
    });
}
