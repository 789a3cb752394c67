//! Canonical JSON fingerprints never make two different requests one (issue 12 §3, the
//! tester's cases): integers beyond 2^53, more than 17 significant digits, repeated member
//! names and non-UTF-8 charsets each get `422` on a changed retry, through an axum router
//! driven in process. The kind is covered by the property tests in `src/fingerprint/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::BodyExt;
use idempotency_core::Idempotency;
use idempotency_http::{IdempotencyLayer, JsonFingerprint};
use idempotency_memory::MemoryStore;
use tower::ServiceExt;

fn app() -> (Router, Arc<AtomicUsize>) {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let layer = IdempotencyLayer::builder(engine)
        .global_scope()
        .fingerprint_json(JsonFingerprint::Canonical)
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route("/products", post(create))
        .layer(layer)
        .with_state(runs.clone());
    (router, runs)
}

async fn create(State(runs): State<Arc<AtomicUsize>>, body: Bytes) -> (StatusCode, String) {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        format!("run {n}: {}", String::from_utf8_lossy(&body)),
    )
}

async fn send(
    router: &Router,
    key: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, HeaderMap) {
    let request = Request::post("/products")
        .header("idempotency-key", key)
        .header("content-type", content_type)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    body.collect().await.unwrap();
    (parts.status, parts.headers)
}

const JSON: &str = "application/json";

/// First request, then a changed one under the same key: `422`, the handler ran once.
async fn changed_retry_is_refused(first: &str, changed: &str) {
    let (router, runs) = app();
    let (status, _) = send(&router, "k", JSON, first).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, _) = send(&router, "k", JSON, changed).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{first} then {changed} must not replay"
    );
    // And the very same bytes still replay.
    let (status, headers) = send(&router, "k", JSON, first).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn integers_beyond_2_pow_53_are_not_merged() {
    changed_retry_is_refused(
        r#"{"price":9007199254740993}"#,
        r#"{"price":9007199254740992}"#,
    )
    .await;
    changed_retry_is_refused(
        r#"{"price":9007199254740992}"#,
        r#"{"price":9007199254740993}"#,
    )
    .await;
    changed_retry_is_refused(
        r#"{"price":12345678901234567890}"#,
        r#"{"price":12345678901234567000}"#,
    )
    .await;
    changed_retry_is_refused(
        r#"{"price":-9007199254740993}"#,
        r#"{"price":-9007199254740992}"#,
    )
    .await;
}

#[tokio::test]
async fn decimals_past_17_digits_are_not_merged() {
    changed_retry_is_refused(r#"{"rate":0.10000000000000001}"#, r#"{"rate":0.1}"#).await;
    changed_retry_is_refused(
        r#"{"rate":1.2345678901234567891}"#,
        r#"{"rate":1.2345678901234567892}"#,
    )
    .await;
    changed_retry_is_refused(r#"{"tiny":1e-400}"#, r#"{"tiny":0}"#).await;
}

#[tokio::test]
async fn duplicate_names_are_not_merged() {
    changed_retry_is_refused(
        r#"{"name":"Bronze","price":100,"name":"Silver"}"#,
        r#"{"price":100,"name":"Silver"}"#,
    )
    .await;
    changed_retry_is_refused(
        r#"{"name":"Bronze","price":100,"name":"Silver"}"#,
        r#"{"name":"Bronze","price":100}"#,
    )
    .await;
    changed_retry_is_refused(
        r#"{"price":100,"name":"Silver"}"#,
        r#"{"name":"Bronze","price":100,"\u006eame":"Silver"}"#,
    )
    .await;
}

#[tokio::test]
async fn equal_values_in_other_spellings_still_replay() {
    let (router, runs) = app();
    let (status, _) = send(&router, "k", JSON, r#"{"name":"Tea","price":450}"#).await;
    assert_eq!(status, StatusCode::CREATED);
    for body in [
        r#"{"price":450.0,"name":"Tea"}"#,
        r#"{ "price" : 4.5e2 , "name" : "T\u0065a" }"#,
        r#"{"price":45000E-2,"name":"Tea"}"#,
    ] {
        let (status, headers) = send(&router, "k", "application/json; charset=UTF-8", body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(headers["idempotent-replayed"], "true", "{body}");
    }
    // Exact large integers and long decimals are canonical too, when JCS writes their value.
    let (status, _) = send(&router, "big", JSON, r#"{"a":1,"id":9007199254740992}"#).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, headers) = send(&router, "big", JSON, r#"{"id":9007199254740992.0,"a":1}"#).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    // A lossy body still replays to its exact bytes, only a re-serialised copy differs.
    let lossy = r#"{"a":1,"id":9007199254740993}"#;
    let (status, _) = send(&router, "lossy", JSON, lossy).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, headers) = send(&router, "lossy", JSON, lossy).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    let (status, _) = send(&router, "lossy", JSON, r#"{"id":9007199254740993,"a":1}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn other_charsets_are_bytes() {
    let (router, runs) = app();
    let latin1 = "application/json; charset=latin1";
    let (status, _) = send(&router, "l", latin1, r#"{"name":"Tea","price":450}"#).await;
    assert_eq!(status, StatusCode::CREATED);
    // Not canonicalised: a re-ordered body is another request...
    let (status, _) = send(&router, "l", latin1, r#"{"price":450,"name":"Tea"}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // ...and the charset is part of the content type: UTF-8 JSON is another request too.
    let (status, _) = send(&router, "l", JSON, r#"{"name":"Tea","price":450}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, headers) = send(&router, "l", latin1, r#"{"name":"Tea","price":450}"#).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
