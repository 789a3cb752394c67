//! Key syntax (RFC 8941 sf-strings, several headers), canonical JSON fingerprints, the
//! side-effect marker and the `Content-Encoding` check on replay, through an axum router driven
//! in process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::BodyExt;
use idempotency_core::{Idempotency, Scope};
use idempotency_http::{
    IdempotencyLayer, JsonFingerprint, OversizePolicy, ScopeRejection, SideEffects,
    SideEffectsMarker,
};
use idempotency_memory::MemoryStore;
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn principal(parts: &http::request::Parts) -> Result<Scope, ScopeRejection> {
    // In a real app: the principal id your authentication layer put into the extensions.
    parts
        .headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .map(Scope::new)
        .ok_or_else(|| ScopeRejection::unauthorized("sign in first"))
}

fn app(json: JsonFingerprint) -> (Router, Runs) {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .build()
        .unwrap();
    let layer = IdempotencyLayer::builder(engine)
        .scope(principal)
        .fingerprint_json(json)
        .build();
    let runs = Runs::default();
    let router = Router::new()
        .route("/echo", post(echo))
        .route("/gz", post(gzipped))
        .route("/commit-then-500", post(commit_then_500))
        .route("/commit-then-panic", post(commit_then_panic))
        .route("/none-then-201", post(none_then_201))
        .route("/extension-503", post(extension_503))
        .layer(layer)
        .with_state(runs.clone());
    (router, runs)
}

async fn echo(State(runs): State<Runs>, body: Bytes) -> impl IntoResponse {
    let n = runs.bump();
    (
        StatusCode::CREATED,
        format!("run {n}: {}", String::from_utf8_lossy(&body)),
    )
}

/// What a compression layer placed under the idempotency layer produces.
async fn gzipped(State(runs): State<Runs>) -> impl IntoResponse {
    runs.bump();
    (
        [("content-encoding", "gzip"), ("content-type", "text/plain")],
        Bytes::from_static(b"\x1f\x8b\x08\x00fake-gzip"),
    )
}

async fn commit_then_500(
    State(runs): State<Runs>,
    Extension(effects): Extension<SideEffectsMarker>,
) -> impl IntoResponse {
    runs.bump();
    effects.committed();
    (StatusCode::INTERNAL_SERVER_ERROR, "follow-up call failed")
}

async fn commit_then_panic(
    State(runs): State<Runs>,
    Extension(effects): Extension<SideEffectsMarker>,
) -> &'static str {
    runs.bump();
    effects.committed();
    panic!("after the write");
}

async fn none_then_201(
    State(runs): State<Runs>,
    Extension(effects): Extension<SideEffectsMarker>,
) -> impl IntoResponse {
    runs.bump();
    effects.none();
    (StatusCode::CREATED, "nothing changed")
}

async fn extension_503(State(runs): State<Runs>) -> impl IntoResponse {
    let n = runs.bump();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Extension(SideEffects::Committed),
        format!("run {n}"),
    )
}

fn request(path: &str, keys: &[&str], content_type: &str, body: &str) -> Request<Body> {
    let mut builder = Request::post(path)
        .header("x-user-id", "user-42")
        .header("content-type", content_type);
    for key in keys {
        builder = builder.header("idempotency-key", *key);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn problem(body: &Bytes) -> (String, String) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    (
        json["type"]
            .as_str()
            .unwrap()
            .rsplit('#')
            .next()
            .unwrap()
            .to_owned(),
        json["detail"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn quoted_and_bare_keys_are_one_key() {
    let (router, runs) = app(JsonFingerprint::Bytes);
    let json = "application/json";
    let first = send(&router, request("/echo", &["\"k-1\""], json, "{}")).await;
    assert_eq!(first.0, StatusCode::CREATED);
    let bare = send(&router, request("/echo", &["k-1"], json, "{}")).await;
    assert_eq!(bare.1["idempotent-replayed"], "true");
    assert_eq!(bare.2, first.2);
    // A space is allowed inside quotes (the IETF draft's sf-string), and escapes unfold.
    let spaced = send(
        &router,
        request("/echo", &[r#""order 7 \"a\"""#], json, "{}"),
    )
    .await;
    assert_eq!(spaced.0, StatusCode::CREATED);
    let again = send(
        &router,
        request("/echo", &[r#" "order 7 \"a\"" "#], json, "{}"),
    )
    .await;
    assert_eq!(again.1["idempotent-replayed"], "true");
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn malformed_quoted_keys_are_400_saying_what_is_wrong() {
    let (router, runs) = app(JsonFingerprint::Bytes);
    let cases = [
        ("\"unterminated", "closing"),
        (r#""bad \n escape""#, "escape"),
        (r#""a" b"#, "after its closing quote"),
        (r#""a";B=1"#, "malformed parameter"),
        ("\"\"", "empty"),
        ("bare space", "0x20"),
    ];
    for (key, says) in cases {
        let (status, headers, body) =
            send(&router, request("/echo", &[key], "text/plain", "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}");
        assert_eq!(headers["content-type"], "application/problem+json");
        let (kind, detail) = problem(&body);
        assert_eq!(kind, "invalid-key", "{key}");
        assert!(detail.contains(says), "{key}: {detail}");
    }
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn several_key_headers_are_400() {
    let (router, runs) = app(JsonFingerprint::Bytes);
    for keys in [&["a", "b"][..], &["a", "a"][..]] {
        let (status, _, body) = send(&router, request("/echo", keys, "text/plain", "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (kind, detail) = problem(&body);
        assert_eq!(kind, "multiple-keys");
        assert!(detail.contains("2 `idempotency-key` headers"), "{detail}");
    }
    // One header holding a list is the same mistake, with the same problem type.
    for list in ["a, b", r#""a", "b""#] {
        let (status, _, body) = send(&router, request("/echo", &[list], "text/plain", "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (kind, detail) = problem(&body);
        assert_eq!(kind, "multiple-keys", "{list}");
        assert!(detail.contains("several keys"), "{detail}");
    }
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn canonical_json_fingerprints_survive_reserialisation() {
    let (router, runs) = app(JsonFingerprint::Canonical);
    let first = send(
        &router,
        request(
            "/echo",
            &["c-1"],
            "application/json",
            r#"{"name":"Tea","price":450}"#,
        ),
    )
    .await;
    assert_eq!(first.0, StatusCode::CREATED);
    for (content_type, body) in [
        ("application/json", r#"{"price":450,"name":"Tea"}"#),
        (
            "application/json; charset=utf-8",
            r#"{ "name": "Tea", "price": 450 }"#,
        ),
        (
            "Application/JSON;charset=UTF-8",
            "{\"price\":4.5e2,\n\"name\":\"Tea\"}",
        ),
    ] {
        let retry = send(&router, request("/echo", &["c-1"], content_type, body)).await;
        assert_eq!(retry.0, StatusCode::CREATED, "{content_type} {body}");
        assert_eq!(retry.1["idempotent-replayed"], "true");
        assert_eq!(retry.2, first.2);
    }
    // A different value is still a different request.
    let other = send(
        &router,
        request(
            "/echo",
            &["c-1"],
            "application/json",
            r#"{"name":"Tea","price":451}"#,
        ),
    )
    .await;
    assert_eq!(other.0, StatusCode::UNPROCESSABLE_ENTITY);
    // Not JSON (by type or by content): bytes, exactly.
    let text = send(
        &router,
        request("/echo", &["t-1"], "text/plain", "{\"a\":1}"),
    )
    .await;
    assert_eq!(text.0, StatusCode::CREATED);
    let text_spaced = send(
        &router,
        request("/echo", &["t-1"], "text/plain", "{ \"a\":1}"),
    )
    .await;
    assert_eq!(text_spaced.0, StatusCode::UNPROCESSABLE_ENTITY);
    let broken = send(
        &router,
        request("/echo", &["b-1"], "application/json", "{\"a\":"),
    )
    .await;
    assert_eq!(broken.0, StatusCode::CREATED);
    let broken_again = send(
        &router,
        request("/echo", &["b-1"], "application/json", "{\"a\":"),
    )
    .await;
    assert_eq!(broken_again.1["idempotent-replayed"], "true");
    let broken_spaced = send(
        &router,
        request("/echo", &["b-1"], "application/json", "{ \"a\":"),
    )
    .await;
    assert_eq!(broken_spaced.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(runs.get(), 3);
}

#[tokio::test]
async fn byte_exact_fingerprints_are_the_default() {
    let (router, runs) = app(JsonFingerprint::Bytes);
    let json = "application/json";
    let first = send(
        &router,
        request("/echo", &["d-1"], json, r#"{"a":1,"b":2}"#),
    )
    .await;
    assert_eq!(first.0, StatusCode::CREATED);
    let reordered = send(
        &router,
        request("/echo", &["d-1"], json, r#"{"b":2,"a":1}"#),
    )
    .await;
    assert_eq!(reordered.0, StatusCode::UNPROCESSABLE_ENTITY);
    let charset = send(
        &router,
        request(
            "/echo",
            &["d-1"],
            "application/json; charset=utf-8",
            r#"{"a":1,"b":2}"#,
        ),
    )
    .await;
    assert_eq!(charset.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_committed_500_is_replayed_not_rerun() {
    let (router, runs) = app(JsonFingerprint::Bytes);
    let first = send(
        &router,
        request("/commit-then-500", &["m-1"], "text/plain", ""),
    )
    .await;
    assert_eq!(first.0, StatusCode::INTERNAL_SERVER_ERROR);
    let retry = send(
        &router,
        request("/commit-then-500", &["m-1"], "text/plain", ""),
    )
    .await;
    assert_eq!(retry.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(retry.1["idempotent-replayed"], "true");
    assert_eq!(retry.2, first.2);
    // The same through a response extension, on a status the policy would release.
    let first = send(
        &router,
        request("/extension-503", &["m-2"], "text/plain", ""),
    )
    .await;
    let retry = send(
        &router,
        request("/extension-503", &["m-2"], "text/plain", ""),
    )
    .await;
    assert_eq!(retry.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry.1["idempotent-replayed"], "true");
    assert_eq!(retry.2, first.2);
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn a_panic_after_a_committed_write_is_replayed_as_a_500() {
    let (router, runs) = app(JsonFingerprint::Bytes);
    let crashed = {
        let router = router.clone();
        tokio::spawn(async move {
            send(
                &router,
                request("/commit-then-panic", &["p-1"], "text/plain", ""),
            )
            .await
        })
    };
    // The panic reaches the caller (a CatchPanicLayer outside would turn it into a 500)...
    assert!(crashed.await.unwrap_err().is_panic());
    // ...and the retry gets the recorded 500 instead of running the write again.
    let (status, headers, body) = send(
        &router,
        request("/commit-then-panic", &["p-1"], "text/plain", ""),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(problem(&body).0, "response-lost");
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn side_effects_none_releases_even_a_201() {
    let (router, runs) = app(JsonFingerprint::Bytes);
    for _ in 0..2 {
        let (status, headers, _) = send(
            &router,
            request("/none-then-201", &["n-1"], "text/plain", ""),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(!headers.contains_key("idempotent-replayed"));
    }
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn a_stored_content_encoding_is_replayed_only_to_a_retry_that_accepts_it() {
    let (router, runs) = app(JsonFingerprint::Bytes);
    let with = |accept: Option<&str>| {
        let mut request = request("/gz", &["g-1"], "text/plain", "");
        if let Some(accept) = accept {
            request
                .headers_mut()
                .insert("accept-encoding", accept.parse().unwrap());
        }
        request
    };
    let first = send(&router, with(Some("gzip, br"))).await;
    assert_eq!(first.1["content-encoding"], "gzip");
    for refused in [None, Some("identity"), Some("br"), Some("gzip;q=0")] {
        let (status, headers, body) = send(&router, with(refused)).await;
        assert_eq!(status, StatusCode::NOT_ACCEPTABLE, "{refused:?}");
        assert!(!headers.contains_key("content-encoding"));
        let (kind, detail) = problem(&body);
        assert_eq!(kind, "encoding-not-acceptable");
        assert!(detail.contains("`gzip`"), "{detail}");
    }
    let accepted = send(&router, with(Some("gzip"))).await;
    assert_eq!(accepted.0, StatusCode::OK);
    assert_eq!(accepted.1["idempotent-replayed"], "true");
    assert_eq!(accepted.2, first.2);
    assert_eq!(runs.get(), 1);
}

/// A layer with a 1 KiB outcome cap, `policy` for what does not fit, and a stream predicate
/// on an `x-stream` response header.
fn small_app(policy: OversizePolicy) -> (Router, Runs) {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .max_outcome_size(1024)
        .build()
        .unwrap();
    let layer = IdempotencyLayer::builder(engine)
        .scope(principal)
        .oversize_response(policy)
        .stream_responses(|parts| {
            idempotency_http::default_is_stream(parts) || parts.headers.contains_key("x-stream")
        })
        .build();
    let runs = Runs::default();
    let router = Router::new()
        .route("/big", post(big))
        .layer(layer)
        .with_state(runs.clone());
    (router, runs)
}

/// 4 KiB, or a "stream" (by the predicate) of 10 bytes with `x-stream` in the request.
async fn big(State(runs): State<Runs>, headers: HeaderMap) -> axum::response::Response {
    runs.bump();
    if headers.contains_key("x-stream") {
        return ([("x-stream", "1")], "tiny body").into_response();
    }
    "z".repeat(4096).into_response()
}

#[tokio::test]
async fn oversize_policy_release_runs_the_retry_again() {
    let (router, runs) = small_app(OversizePolicy::Release);
    for _ in 0..2 {
        let (status, headers, body) =
            send(&router, request("/big", &["o-1"], "text/plain", "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 4096, "the client always gets the whole body");
        assert!(!headers.contains_key("idempotent-replayed"));
    }
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn oversize_policy_omit_body_and_a_stream_predicate() {
    let (router, runs) = small_app(OversizePolicy::OmitBody);
    let first = send(&router, request("/big", &["o-2"], "text/plain", "")).await;
    assert_eq!(first.2.len(), 4096);
    let retry = send(&router, request("/big", &["o-2"], "text/plain", "")).await;
    assert_eq!(retry.1["idempotent-replayed"], "true");
    assert_eq!(retry.1["idempotent-body-omitted"], "true");
    assert!(retry.2.is_empty());
    // Small, but a stream by the user's predicate: passed through, not copied.
    let mut streamed = request("/big", &["o-3"], "text/plain", "");
    streamed
        .headers_mut()
        .insert("x-stream", "1".parse().unwrap());
    let first = send(&router, streamed).await;
    assert_eq!(first.2, "tiny body");
    let mut again = request("/big", &["o-3"], "text/plain", "");
    again.headers_mut().insert("x-stream", "1".parse().unwrap());
    let retry = send(&router, again).await;
    assert_eq!(retry.1["idempotent-body-omitted"], "true");
    assert!(retry.2.is_empty());
    assert_eq!(runs.get(), 2);
}

/// A server-side timeout (here `tokio::time::timeout`, as `tower::timeout` does) that drops the
/// request future while the handler runs does not undo protection: the handler finishes in its
/// own task, its answer is recorded, and the retry gets it. Paused clock: the timeout fires when
/// everything else is idle, with no real waiting.
#[tokio::test(start_paused = true)]
async fn a_timeout_that_drops_the_request_does_not_cause_a_second_run() {
    let engine = Idempotency::builder(MemoryStore::new())
        .ignore_env()
        .wait_for_in_progress(Duration::from_secs(30), Duration::from_millis(10))
        .build()
        .unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let runs = Runs::default();
    let handler = {
        let (gate, runs) = (gate.clone(), runs.clone());
        move || async move {
            gate.notified().await;
            let n = runs.bump();
            (StatusCode::CREATED, format!("charged once ({n})"))
        }
    };
    let router = Router::new()
        .route("/pay", post(handler))
        .layer(IdempotencyLayer::builder(engine).scope(principal).build());
    let first = tokio::time::timeout(
        Duration::from_secs(5),
        router
            .clone()
            .oneshot(request("/pay", &["t-1"], "text/plain", "")),
    )
    .await;
    assert!(first.is_err(), "the timeout dropped the request future");
    assert_eq!(runs.get(), 0);
    gate.notify_one();
    let (status, headers, body) = send(&router, request("/pay", &["t-1"], "text/plain", "")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(body, "charged once (1)");
    assert_eq!(runs.get(), 1);
}
