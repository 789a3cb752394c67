//! The layer's `idempotency.http` span is built only when someone can see it (a `tracing`
//! dispatcher has been set, or `log` at debug level); with a subscriber in place it is still
//! there, with the request's key, around the engine's `idempotency.begin` span. Its own binary:
//! whether a dispatcher was ever set is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use idempotency_core::Idempotency;
use idempotency_http::IdempotencyLayer;
use idempotency_memory::MemoryStore;
use tower::{Layer as _, ServiceExt as _};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records the name and the `key` field of every span created, and how often spans are entered.
#[derive(Default, Clone)]
struct Spans {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    next: Arc<AtomicU64>,
    entered: Arc<AtomicU64>,
}

struct KeyField(String);

impl Visit for KeyField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "key" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut key = KeyField(String::new());
        span.record(&mut key);
        let name = span.metadata().name().to_owned();
        self.seen.lock().unwrap().push((name, key.0));
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {
        self.entered.fetch_add(1, Ordering::Relaxed);
    }
    fn exit(&self, _: &Id) {}
}

async fn serve(engine: &Idempotency<MemoryStore>, key: &str) -> StatusCode {
    let handler = tower::service_fn(|_: Request<Full<Bytes>>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"{\"id\":1}")));
        *response.status_mut() = StatusCode::CREATED;
        Ok::<_, std::convert::Infallible>(response)
    });
    let service = IdempotencyLayer::builder(engine.clone())
        .global_scope()
        .build()
        .layer(handler);
    let request = Request::post("/orders")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[test]
fn a_subscriber_sees_the_request_span_with_its_key() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = runtime.block_on(async {
        Idempotency::builder(MemoryStore::new())
            .ignore_env()
            .build()
            .unwrap()
    });
    // Before any dispatcher exists (and `log` below debug): no span, same answers.
    assert!(!tracing::dispatcher::has_been_set());
    assert_eq!(
        runtime.block_on(serve(&engine, "before")),
        StatusCode::CREATED
    );
    assert_eq!(
        runtime.block_on(serve(&engine, "before")),
        StatusCode::CREATED
    );

    let spans = Spans::default();
    tracing::subscriber::with_default(spans.clone(), || {
        assert_eq!(
            runtime.block_on(serve(&engine, "order-1")),
            StatusCode::CREATED
        );
    });
    let seen = spans.seen.lock().unwrap();
    let http: Vec<_> = seen
        .iter()
        .filter(|(name, _)| name == "idempotency.http")
        .collect();
    assert_eq!(http.len(), 1, "spans seen: {seen:?}");
    assert_eq!(http[0].1, "\"order-1\"");
    assert!(
        seen.iter().any(|(name, _)| name == "idempotency.begin"),
        "spans seen: {seen:?}"
    );
    // The request's span is entered while its future (and the recording in it) runs.
    assert!(spans.entered.load(Ordering::Relaxed) >= 2);
}
