//! breaker9 (issue 15): without any `tracing` dispatcher, the `idempotency.http` span reaches a
//! `log` logger (tracing's `log` feature, on in this test build through sqlx/tower) exactly when
//! `log` records at debug level: below debug nothing of the span is built or logged; at debug
//! its fields (with the request's key) are logged as before the elision. The level is read per
//! request, so raising it on a running layer takes effect at once. Its own binary: the `log`
//! logger and the dispatcher state are process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use idempotency_core::Idempotency;
use idempotency_http::IdempotencyLayer;
use idempotency_memory::MemoryStore;
use tower::{Layer as _, ServiceExt as _};

/// Every record the logger was given: (target, message).
static RECORDS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        RECORDS
            .lock()
            .unwrap()
            .push((record.target().to_owned(), record.args().to_string()));
    }
    fn flush(&self) {}
}

fn span_records(key: &str) -> usize {
    RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, message)| message.contains("idempotency.http") && message.contains(key))
        .count()
}

#[test]
fn the_span_reaches_a_log_logger_exactly_at_debug() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let service = runtime.block_on(async {
        let engine = Idempotency::builder(MemoryStore::new())
            .ignore_env()
            .build()
            .unwrap();
        let handler = tower::service_fn(|_: Request<Full<Bytes>>| async {
            let mut response = Response::new(Full::new(Bytes::from_static(b"{\"id\":1}")));
            *response.status_mut() = StatusCode::CREATED;
            Ok::<_, Infallible>(response)
        });
        IdempotencyLayer::builder(engine)
            .global_scope()
            .build()
            .layer(handler)
    });
    let serve = |key: &str| {
        let request = Request::post("/orders")
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        runtime.block_on(async {
            let response = service.clone().oneshot(request).await.unwrap();
            let status = response.status();
            response.into_body().collect().await.unwrap();
            status
        })
    };

    assert!(!tracing::dispatcher::has_been_set());
    assert_eq!(serve("at-info"), StatusCode::CREATED);
    assert_eq!(serve("at-info"), StatusCode::CREATED);
    assert_eq!(span_records("at-info"), 0, "{:?}", RECORDS.lock().unwrap());

    log::set_max_level(log::LevelFilter::Debug);
    assert_eq!(serve("at-debug"), StatusCode::CREATED);
    assert_eq!(serve("at-debug"), StatusCode::CREATED);
    assert!(
        span_records("at-debug") >= 2,
        "one span record per request: {:?}",
        RECORDS.lock().unwrap()
    );

    log::set_max_level(log::LevelFilter::Off);
    assert_eq!(serve("off"), StatusCode::CREATED);
    assert_eq!(span_records("off"), 0);
}
