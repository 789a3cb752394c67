//! breaker11 (issue 15): a streamed response (no known length) whose first frame went out and
//! whose rest waits: the client's body and the request's response are dropped on a thread in no
//! runtime. The recording, run to its end by the runtime that polled it, is replayed whole;
//! the handler ran once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use idempotency_core::Idempotency;
use idempotency_http::IdempotencyLayer;
use idempotency_memory::MemoryStore;
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};

type Req = Request<Full<Bytes>>;
type RespBody = UnsyncBoxBody<Bytes, Infallible>;

fn post(key: &str) -> Req {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker11_streamed_body_dropped_on_a_plain_thread_mid_stream() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (r, g) = (Arc::clone(&runs), Arc::clone(&gate));
    let inner = tower::service_fn(move |_req: Req| {
        let (r, g) = (Arc::clone(&r), Arc::clone(&g));
        async move {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            let frames = futures::stream::unfold(0u8, move |step| {
                let g = Arc::clone(&g);
                async move {
                    match step {
                        0 => Some((Ok(Frame::data(Bytes::from(format!("run {n};")))), 1)),
                        1 => {
                            drop(g.acquire().await.unwrap());
                            Some((Ok(Frame::data(Bytes::from_static(b"end"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            let body: RespBody = UnsyncBoxBody::new(StreamBody::new(frames));
            Ok::<_, Infallible>(Response::builder().status(201).body(body).unwrap())
        }
    });
    let service = IdempotencyLayer::builder(engine)
        .global_scope()
        .build()
        .layer(inner);
    let response = service.clone().oneshot(post("s")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "run 1;");
    std::thread::spawn(move || drop(body)).join().unwrap();
    gate.add_permits(1000);
    for _ in 0..500 {
        let retry = service.clone().oneshot(post("s")).await.unwrap();
        if retry.status() == StatusCode::CONFLICT {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let replayed = retry.headers().get("idempotent-replayed").is_some();
        let status = retry.status();
        let bytes = retry.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::CREATED, "{bytes:?}");
        assert!(replayed, "{bytes:?}");
        assert_eq!(bytes, "run 1;end");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        return;
    }
    panic!("still in progress");
}
