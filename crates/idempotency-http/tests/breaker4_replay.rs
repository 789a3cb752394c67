//! breaker4 (issue 15): the recorded response is now encoded straight from its head. A replay
//! must give back the first answer exactly: status, every replayable header in order (two
//! `Set-Cookie`s when kept, values with obs-text bytes), binary and empty bodies (201 with all
//! 256 byte values, 204, 200 empty).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use idempotency_core::Idempotency;
use idempotency_http::IdempotencyLayer;
use idempotency_memory::MemoryStore;
use tower::{Layer, ServiceExt};

type Req = Request<Full<Bytes>>;

fn handler(
    runs: Arc<AtomicUsize>,
) -> tower::util::BoxCloneService<Req, Response<Full<Bytes>>, Infallible> {
    tower::util::BoxCloneService::new(tower::service_fn(move |req: Req| {
        let runs = Arc::clone(&runs);
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let status: u16 = req
                .headers()
                .get("x-status")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(201);
            let body = match status {
                201 => Bytes::from((0..=255u8).collect::<Vec<u8>>()),
                _ => Bytes::new(),
            };
            let mut builder = Response::builder()
                .status(status)
                .header("set-cookie", "a=1; Path=/; HttpOnly")
                .header("x-first", "1")
                .header("set-cookie", "b=2; Secure")
                .header("x-multi", "one")
                .header("x-multi", "two")
                .header("connection", "keep-alive");
            if status == 201 {
                builder = builder.header(
                    "content-type",
                    HeaderValue::from_bytes(b"application/octet-stream; name=\"caf\xe9\"").unwrap(),
                );
            }
            Ok::<_, Infallible>(builder.body(Full::new(body)).unwrap())
        }
    }))
}

#[tokio::test]
async fn replays_are_byte_for_byte_with_cookies_binary_and_empty_bodies() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let layer = IdempotencyLayer::builder(engine)
        .global_scope()
        .store_set_cookie(true)
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    for (n, status) in ["201", "204", "200"].into_iter().enumerate() {
        let key = format!("breaker4-{status}");
        let mut answers = Vec::new();
        for _ in 0..2 {
            let r = layer
                .layer(handler(Arc::clone(&runs)))
                .oneshot(
                    Request::post("/x")
                        .header("idempotency-key", &key)
                        .header("x-status", status)
                        .body(Full::new(Bytes::from_static(b"{}")))
                        .unwrap(),
                )
                .await
                .unwrap();
            let (parts, body) = r.into_parts();
            answers.push((parts, body.collect().await.unwrap().to_bytes()));
        }
        assert_eq!(runs.load(Ordering::SeqCst), n + 1, "{status}: ran once");
        let (first, replay) = (&answers[0], &answers[1]);
        assert_eq!(first.0.status, replay.0.status, "{status}");
        assert_eq!(first.1, replay.1, "{status}: body");
        assert!(replay.0.headers.contains_key("idempotent-replayed"));
        for name in ["set-cookie", "x-multi", "x-first", "content-type"] {
            let a: Vec<_> = first.0.headers.get_all(name).iter().collect();
            let b: Vec<_> = replay.0.headers.get_all(name).iter().collect();
            assert_eq!(a, b, "{status}: {name}");
        }
        assert_eq!(replay.0.headers.get_all("set-cookie").iter().count(), 2);
        assert!(!replay.0.headers.contains_key("connection"));
    }
}

/// The 409 and 422 problem bodies, now fixed strings, read as RFC 9457 objects: the media type,
/// the `status` member equal to the HTTP status, `type` an absolute URI, `title`, `detail`.
#[tokio::test]
async fn conflict_and_reuse_problems_are_rfc_9457() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let layer = IdempotencyLayer::builder(engine).global_scope().build();
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (e2, r2) = (Arc::clone(&entered), Arc::clone(&release));
    let slow = tower::util::BoxCloneService::new(tower::service_fn(move |_req: Req| {
        let (e, r) = (Arc::clone(&e2), Arc::clone(&r2));
        async move {
            e.notify_one();
            r.notified().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    }));
    let send = |body: &'static str| {
        layer.layer(slow.clone()).oneshot(
            Request::post("/x")
                .header("idempotency-key", "k")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
    };
    let first = tokio::spawn(send("a"));
    entered.notified().await;
    for (body, status, slug) in [
        ("a", StatusCode::CONFLICT, "in-progress"),
        ("b", StatusCode::UNPROCESSABLE_ENTITY, "key-reused"),
    ] {
        let r = send(body).await.unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        if status == StatusCode::CONFLICT {
            let after: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(after >= 1);
        }
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["status"], status.as_u16(), "{json}");
        assert!(json["type"].as_str().unwrap().starts_with("https://"));
        assert!(json["type"].as_str().unwrap().ends_with(slug));
        assert!(json["title"].is_string() && json["detail"].is_string());
        assert_eq!(json.as_object().unwrap().len(), 4, "{json}");
    }
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
}
