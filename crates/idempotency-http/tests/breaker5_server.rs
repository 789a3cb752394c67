//! breaker5: the per-request shared state over a real socket (axum on 127.0.0.1, an ephemeral
//! port): clients that leave mid-handler and mid-body (raw TCP, closed at a gate), a tower-http
//! `TimeoutLayer` outside the layer firing mid-handler, graceful shutdown with a request in
//! flight, duplicate storms; on the memory store and a real Redis; and `TransactionalClaim`
//! (SQLite) with a client that leaves before the handler commits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::StatusCode;
use idempotency_core::{Idempotency, IdempotencyKey, IdempotencyStore, Record, Scope, StoreKey};
use idempotency_http::{IdempotencyLayer, TransactionalClaim};
use idempotency_memory::MemoryStore;
use idempotency_redis::RedisStore;
use idempotency_sql::SqliteStore;
use idempotency_sql::sqlx::{self, SqlitePool};
use idempotency_testkit::fixtures::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

const CAP: usize = 64 * 1024;

#[derive(Clone, Default)]
struct Gates {
    runs: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    gate: Arc<Notify>,
}

async fn hold(State(g): State<Gates>) -> Response {
    let n = g.runs.fetch_add(1, Ordering::SeqCst) + 1;
    g.entered.notify_one();
    g.gate.notified().await;
    (StatusCode::CREATED, format!("held run {n}")).into_response()
}

async fn fast(State(g): State<Gates>) -> Response {
    let n = g.runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::task::yield_now().await;
    (StatusCode::CREATED, format!("fast run {n}")).into_response()
}

/// A chunked body: `FIRST`, then (after the gate) `rest` chunks of 8 KiB.
fn gated_stream(g: Gates, rest: usize) -> Response {
    g.runs.fetch_add(1, Ordering::SeqCst);
    let stream = futures::stream::unfold(0_usize, move |i| {
        let g = g.clone();
        async move {
            match i {
                0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"FIRST")), 1)),
                i if i <= rest => {
                    if i == 1 {
                        g.entered.notify_one();
                        g.gate.notified().await;
                    }
                    Some((Ok(Bytes::from(vec![b'a'; 8 * 1024])), i + 1))
                }
                _ => None,
            }
        }
    });
    (StatusCode::CREATED, Body::from_stream(stream)).into_response()
}

async fn small_stream(State(g): State<Gates>) -> Response {
    // 5 + 4 * 8 KiB: within the cap.
    gated_stream(g, 4)
}

async fn big_stream(State(g): State<Gates>) -> Response {
    // 5 + 32 * 8 KiB: over the cap.
    gated_stream(g, 32)
}

fn engine<S: IdempotencyStore + 'static>(store: S) -> Idempotency<S> {
    Idempotency::builder(store)
        .max_outcome_size(CAP)
        .ignore_env()
        .build()
        .unwrap()
}

fn router<S: IdempotencyStore + 'static>(engine: Idempotency<S>, g: Gates) -> Router {
    let layer = IdempotencyLayer::builder(engine).global_scope().build();
    let timed = Router::new()
        .route("/timeout", post(hold))
        .layer(layer.clone())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(200),
        ));
    Router::new()
        .route("/hold", post(hold))
        .route("/fast", post(fast))
        .route("/small", post(small_stream))
        .route("/big", post(big_stream))
        .layer(layer)
        .merge(timed)
        .with_state(g)
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

async fn serve(router: Router) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Server {
        addr,
        stop: Some(stop),
        done,
    }
}

/// A request written on a raw socket (to close it when the test says).
async fn raw(addr: SocketAddr, path: &str, key: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\nidempotency-key: {key}\r\n\
         content-type: text/plain\r\ncontent-length: 3\r\n\r\ntea"
    );
    socket.write_all(req.as_bytes()).await.unwrap();
    socket
}

/// Read until `needle` has arrived.
async fn read_until(socket: &mut TcpStream, needle: &[u8]) {
    let mut seen = Vec::new();
    let mut buf = [0_u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
        seen.extend_from_slice(&buf[..n]);
    }
}

async fn state<S: IdempotencyStore + 'static>(store: &S, key: &str) -> &'static str {
    let key = StoreKey::derive(
        "idempotency:",
        &Scope::global(),
        &IdempotencyKey::new(key).unwrap(),
    );
    match store.get(&key).await.unwrap() {
        None => "absent",
        Some(Record::InProgress(_)) => "in progress",
        Some(Record::Completed(_)) => "completed",
    }
}

async fn settled<S: IdempotencyStore + 'static>(store: &S, key: &str) -> &'static str {
    for _ in 0..500 {
        let s = state(store, key).await;
        if s != "in progress" {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    "in progress"
}

async fn retry(addr: SocketAddr, path: &str, key: &str) -> (StatusCode, Option<String>, Bytes) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .post(format!("http://{addr}{path}"))
        .header("idempotency-key", key)
        .header("content-type", "text/plain")
        .body("tea")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, response.bytes().await.unwrap())
}

async fn scenarios<S: IdempotencyStore + Clone + 'static>(store: S, iterations: usize) {
    let engine = engine(store.clone());
    assert_eq!(
        engine.config().prefix(),
        "idempotency:",
        "the test derives keys with this prefix"
    );
    let g = Gates::default();
    let server = serve(router(engine, g.clone())).await;
    let addr = server.addr;
    for i in 0..iterations {
        // Client leaves mid-handler.
        let key = format!("gone-{i}");
        let before = g.runs.load(Ordering::SeqCst);
        let socket = raw(addr, "/hold", &key).await;
        g.entered.notified().await;
        drop(socket);
        let (status, _, _) = retry(addr, "/hold", &key).await;
        assert_eq!(status, StatusCode::CONFLICT, "{key}: in progress meanwhile");
        g.gate.notify_one();
        assert_eq!(settled(&store, &key).await, "completed", "{key}");
        let (status, replayed, body) = retry(addr, "/hold", &key).await;
        assert_eq!(
            (status, replayed.as_deref()),
            (StatusCode::CREATED, Some("true")),
            "{key}"
        );
        assert_eq!(
            body,
            Bytes::from(format!("held run {}", before + 1)),
            "{key}"
        );

        // Client leaves mid-body (within the cap): the rest is read and recorded whole.
        let key = format!("small-{i}");
        let mut socket = raw(addr, "/small", &key).await;
        read_until(&mut socket, b"FIRST").await;
        g.entered.notified().await;
        drop(socket);
        g.gate.notify_one();
        assert_eq!(settled(&store, &key).await, "completed", "{key}");
        let (status, replayed, body) = retry(addr, "/small", &key).await;
        assert_eq!(
            (status, replayed.as_deref()),
            (StatusCode::CREATED, Some("true")),
            "{key}"
        );
        assert_eq!(
            body.len(),
            5 + 4 * 8 * 1024,
            "{key}: the whole body replayed"
        );

        // Client leaves mid-body of a body over the cap: recorded without its body.
        let key = format!("big-{i}");
        let mut socket = raw(addr, "/big", &key).await;
        read_until(&mut socket, b"FIRST").await;
        g.entered.notified().await;
        drop(socket);
        g.gate.notify_one();
        assert_eq!(settled(&store, &key).await, "completed", "{key}");
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = client
            .post(format!("http://{addr}/big"))
            .header("idempotency-key", &key)
            .header("content-type", "text/plain")
            .body("tea")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{key}");
        assert_eq!(
            response.headers()["idempotent-body-omitted"],
            "true",
            "{key}"
        );

        // A TimeoutLayer outside the layer fires mid-handler: 408 to the client, the handler
        // ends in the detached recording, the retry replays.
        let key = format!("timeout-{i}");
        let before = g.runs.load(Ordering::SeqCst);
        let waiting = tokio::spawn({
            let key = key.clone();
            async move { retry(addr, "/timeout", &key).await }
        });
        g.entered.notified().await;
        let (status, _, _) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{key}");
        assert_eq!(state(&store, &key).await, "in progress", "{key}");
        g.gate.notify_one();
        assert_eq!(settled(&store, &key).await, "completed", "{key}");
        let (status, replayed, body) = retry(addr, "/timeout", &key).await;
        assert_eq!(
            (status, replayed.as_deref()),
            (StatusCode::CREATED, Some("true")),
            "{key}"
        );
        assert_eq!(
            body,
            Bytes::from(format!("held run {}", before + 1)),
            "{key}"
        );

        // A storm of 24 duplicates.
        let key = format!("storm-{i}");
        let before = g.runs.load(Ordering::SeqCst);
        let storm: Vec<_> = (0..24)
            .map(|_| {
                let key = key.clone();
                tokio::spawn(async move { retry(addr, "/fast", &key).await })
            })
            .collect();
        let mut answers = Vec::new();
        for call in storm {
            let (status, _, body) = call.await.unwrap();
            match status {
                StatusCode::CREATED => answers.push(body),
                StatusCode::CONFLICT => {}
                other => panic!("{key}: {other}"),
            }
        }
        assert_eq!(g.runs.load(Ordering::SeqCst) - before, 1, "{key}: one run");
        assert!(
            answers.iter().all(|b| b == &answers[0]),
            "{key}: one answer"
        );
        assert_eq!(settled(&store, &key).await, "completed", "{key}");
    }

    // Graceful shutdown with a request in flight whose client already left: the server stops,
    // the recording still ends (the runtime runs on).
    let key = "shutdown";
    let socket = raw(addr, "/hold", key).await;
    g.entered.notified().await;
    drop(socket);
    let Server { stop, done, .. } = server;
    let _ = stop.unwrap().send(());
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("graceful shutdown ends")
        .unwrap();
    assert_eq!(state(&store, key).await, "in progress");
    g.gate.notify_one();
    assert_eq!(settled(&store, key).await, "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_over_a_real_socket() {
    scenarios(MemoryStore::new(), 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_over_a_real_socket() {
    let server = RedisServer::start().expect("redis-server must be installed (/usr/bin)");
    let store = RedisStore::connect(server.url()).await.unwrap();
    scenarios(store, 25).await;
}

// ---------------------------------------------------------------------------------------------
// TransactionalClaim: the client leaves before the handler commits.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Tx {
    pool: SqlitePool,
    store: SqliteStore,
    g: Gates,
}

async fn create_order(
    State(app): State<Tx>,
    Extension(claim): Extension<TransactionalClaim<SqliteStore>>,
    body: Bytes,
) -> Response {
    app.g.runs.fetch_add(1, Ordering::SeqCst);
    app.g.entered.notify_one();
    app.g.gate.notified().await;
    let mut tx = app.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let id: i64 = sqlx::query_scalar("INSERT INTO orders (item) VALUES (?) RETURNING id")
        .bind(String::from_utf8_lossy(&body).into_owned())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let response = (StatusCode::CREATED, format!("order {id}")).into_response();
    let (pending, response) = claim.prepare(response).await.unwrap();
    let pending = app.store.write_in(&mut tx, pending).await.unwrap();
    tx.commit().await.unwrap();
    pending.committed();
    response.into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_claim_completes_once_when_the_client_left() {
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
        .ignore_env()
        .lease(Duration::from_secs(30))
        .build()
        .unwrap();
    let g = Gates::default();
    let app = Tx {
        pool: pool.clone(),
        store: store.clone(),
        g: g.clone(),
    };
    let router = Router::new()
        .route("/orders", post(create_order))
        .with_state(app)
        .layer(IdempotencyLayer::builder(engine).global_scope().build());
    let server = serve(router).await;
    for i in 0..20 {
        let key = format!("tx-{i}");
        let socket = raw(server.addr, "/orders", &key).await;
        g.entered.notified().await;
        drop(socket);
        g.gate.notify_one();
        assert_eq!(settled(&store, &key).await, "completed", "{key}");
        let (status, replayed, body) = retry(server.addr, "/orders", &key).await;
        assert_eq!(
            (status, replayed.as_deref()),
            (StatusCode::CREATED, Some("true")),
            "{key}"
        );
        assert_eq!(body, Bytes::from(format!("order {}", i + 1)), "{key}");
    }
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 20, "each order written once");
    assert_eq!(g.runs.load(Ordering::SeqCst), 20);
    let Server { stop, done, .. } = server;
    let _ = stop.unwrap().send(());
    done.await.unwrap();
}
