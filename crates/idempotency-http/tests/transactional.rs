//! `TransactionalClaim`: a handler completes inside its own database transaction (SQLite, a
//! real database file; no server needed). The layer writes no second completion, retries replay
//! the handler's exact response, and a failing or panicking handler leaves no claim behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt as _;
use idempotency_core::Idempotency;
use idempotency_http::{IdempotencyLayer, REPLAYED_HEADER, TransactionalClaim};
use idempotency_sql::SqliteStore;
use idempotency_sql::sqlx::{self, SqlitePool};
use tower::ServiceExt as _;

#[derive(Clone)]
struct App {
    pool: SqlitePool,
    store: SqliteStore,
}

/// Inserts an order and completes in the same transaction. `x-fail: after-prepare` rolls back
/// after preparing the completion and answers 500; `x-fail: panic` panics after the write.
async fn create_order(
    State(app): State<App>,
    Extension(claim): Extension<TransactionalClaim<SqliteStore>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fail = headers
        .get("x-fail")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut tx = app.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let id: i64 = sqlx::query_scalar("INSERT INTO orders (item) VALUES (?) RETURNING id")
        .bind(String::from_utf8_lossy(&body).into_owned())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    if fail == "panic" {
        panic!("handler panicked after its write");
    }
    let response = (
        StatusCode::CREATED,
        [
            ("location", format!("/orders/{id}")),
            ("x-order", id.to_string()),
        ],
        format!("{{\"id\":{id},\"note\":\"created once\"}}"),
    )
        .into_response();
    let (pending, response) = claim.prepare(response).await.unwrap();
    let pending = match app.store.write_in(&mut tx, pending).await {
        Ok(pending) => pending,
        Err(error) => return (StatusCode::CONFLICT, error.to_string()).into_response(),
    };
    if fail == "after-prepare" {
        tx.rollback().await.unwrap();
        pending.release().await.unwrap();
        return (StatusCode::INTERNAL_SERVER_ERROR, "rolled back").into_response();
    }
    tx.commit().await.unwrap();
    pending.committed();
    response.into_response()
}

async fn setup() -> (tempfile::TempDir, App, Router) {
    let dir = tempfile::tempdir().unwrap();
    let pool = SqlitePool::connect_with(idempotency_sql::sqlite_connect_options(
        dir.path().join("app.db"),
    ))
    .await
    .unwrap();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let store = SqliteStore::builder(pool.clone()).migrate().await.unwrap();
    let engine = Idempotency::builder(store.clone())
        .lease(Duration::from_secs(30))
        .build()
        .unwrap();
    let app = App { pool, store };
    let router = Router::new()
        .route("/orders", post(create_order))
        .with_state(app.clone())
        .layer(IdempotencyLayer::builder(engine).global_scope().build());
    (dir, app, router)
}

fn request(key: &str, body: &'static str, fail: Option<&str>) -> Request<Body> {
    let mut builder = Request::post("/orders")
        .header("idempotency-key", key)
        .header("content-type", "text/plain");
    if let Some(fail) = fail {
        builder = builder.header("x-fail", fail);
    }
    builder.body(Body::from(body)).unwrap()
}

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = router.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

async fn orders(app: &App) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn completion_commits_with_the_write_and_retries_replay_the_exact_response() {
    let (_dir, app, router) = setup().await;
    let (status, headers, body) = send(&router, request("k-1", "tea", None)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get(REPLAYED_HEADER).is_none());
    assert_eq!(&body[..], br#"{"id":1,"note":"created once"}"#);

    // The record was written by the handler's transaction, once: completed, in the table.
    let state: String =
        sqlx::query_scalar("SELECT state FROM idempotency_records WHERE store_key LIKE '%k-1%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(state, "completed");

    for _ in 0..3 {
        let (again, replay_headers, replayed) = send(&router, request("k-1", "tea", None)).await;
        assert_eq!(again, StatusCode::CREATED);
        assert_eq!(replayed, body, "byte-identical replay");
        assert_eq!(replay_headers.get(REPLAYED_HEADER).unwrap(), "true");
        for name in ["location", "x-order", "content-type"] {
            assert_eq!(replay_headers.get(name), headers.get(name), "{name}");
        }
    }
    assert_eq!(orders(&app).await, 1, "the side effect ran once");
}

#[tokio::test]
async fn a_rolled_back_transaction_releases_the_claim_and_the_retry_runs() {
    let (_dir, app, router) = setup().await;
    let (status, _, _) = send(&router, request("k-2", "tea", Some("after-prepare"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(orders(&app).await, 0, "rolled back with the record");

    let (status, _, body) = send(&router, request("k-2", "tea", None)).await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    assert_eq!(orders(&app).await, 1);
    let (status, headers, replayed) = send(&router, request("k-2", "tea", None)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers.get(REPLAYED_HEADER).unwrap(), "true");
    assert_eq!(replayed, body);
}

#[tokio::test]
async fn a_panicking_handler_rolls_back_and_the_claim_is_released() {
    let (_dir, app, router) = setup().await;
    let panicked = tokio::spawn({
        let router = router.clone();
        async move { send(&router, request("k-3", "tea", Some("panic"))).await }
    })
    .await;
    assert!(panicked.is_err(), "the panic reaches the connection");
    assert_eq!(orders(&app).await, 0, "the transaction was dropped");

    // The panic came before `prepare`: the claim was still the layer's, which released it
    // before the panic reached the connection. The retry runs the handler.
    let (status, _, _) = send(&router, request("k-3", "tea", None)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(orders(&app).await, 1);
}
