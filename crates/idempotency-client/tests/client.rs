//! The middleware over real sockets: against a scripted server (what is retried, with which key,
//! after how long) and against the demo shop API (on memory, and on a Redis server that is
//! paused and restarted while the clients retry).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use common::{client, fast};
use idempotency_client::{Outcome, RetryPolicy};

/// A scripted answer: status and optional `Retry-After`.
type Answer = (StatusCode, Option<&'static str>);

/// A server answering from a script (then 201), recording the key of every request it saw.
#[derive(Clone, Default)]
struct Scripted {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    keys: Arc<Mutex<Vec<Option<String>>>>,
}

impl Scripted {
    fn new(answers: &[(u16, Option<&'static str>)]) -> Self {
        let this = Self::default();
        this.answers.lock().unwrap().extend(
            answers
                .iter()
                .map(|(s, r)| (StatusCode::from_u16(*s).unwrap(), *r)),
        );
        this
    }

    fn keys(&self) -> Vec<Option<String>> {
        self.keys.lock().unwrap().clone()
    }

    async fn serve(self) -> SocketAddr {
        let app = Router::new().route(
            "/{*path}",
            any(move |headers: HeaderMap| {
                let this = self.clone();
                async move {
                    this.keys.lock().unwrap().push(
                        headers
                            .get("idempotency-key")
                            .map(|v| v.to_str().unwrap().to_owned()),
                    );
                    let (status, retry_after) = this
                        .answers
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or((StatusCode::CREATED, None));
                    let mut response = axum::response::Response::new(axum::body::Body::from("ok"));
                    *response.status_mut() = status;
                    if let Some(retry_after) = retry_after {
                        response
                            .headers_mut()
                            .insert("retry-after", retry_after.parse().unwrap());
                    }
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }
}

#[tokio::test]
async fn one_generated_key_for_every_retry_of_a_request() {
    let server = Scripted::new(&[(503, None), (409, None), (429, None)]);
    let addr = server.clone().serve().await;
    let client = client(fast());
    let response = client
        .post(format!("http://{addr}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let outcome = Outcome::of(&response).unwrap().clone();
    assert_eq!(outcome.attempts, 4);
    assert!(!outcome.replayed);
    let keys = server.keys();
    assert_eq!(keys.len(), 4);
    let key = keys[0].clone().expect("a key was attached");
    assert!(
        keys.iter().all(|k| k.as_deref() == Some(key.as_str())),
        "{keys:?}"
    );
    assert_eq!(outcome.key.as_deref(), Some(key.as_str()));
    let uuid = uuid::Uuid::parse_str(&key).unwrap();
    assert_eq!(uuid.get_version_num(), 7);

    // The next logical request gets another key.
    client
        .post(format!("http://{addr}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let keys = server.keys();
    assert_ne!(keys[4].as_deref(), Some(key.as_str()));
}

#[tokio::test]
async fn a_callers_key_is_kept_and_reads_are_left_alone() {
    let server = Scripted::new(&[(503, None)]);
    let addr = server.clone().serve().await;
    let client = client(fast());
    let response = client
        .put(format!("http://{addr}/p"))
        .header("Idempotency-Key", "\"my-own key\"")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        server.keys(),
        vec![Some("\"my-own key\"".to_owned()); 2],
        "never overwritten"
    );
    // A GET gets no key and is not retried by default.
    let server = Scripted::new(&[(503, None)]);
    let addr = server.clone().serve().await;
    let response = client.get(format!("http://{addr}/p")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(server.keys(), vec![None]);
    assert_eq!(Outcome::of(&response).unwrap().attempts, 1);
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    for status in [400u16, 401, 403, 404, 413, 422, 500] {
        let server = Scripted::new(&[(status, None)]);
        let addr = server.clone().serve().await;
        let response = client(fast())
            .post(format!("http://{addr}/x"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(server.keys().len(), 1, "{status} was retried");
        assert_eq!(Outcome::of(&response).unwrap().attempts, 1);
    }
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = Scripted::new(&[(409, Some("1"))]);
    let addr = server.clone().serve().await;
    let started = std::time::Instant::now();
    let response = client(fast())
        .post(format!("http://{addr}/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    // Retry-After: 1 is clamped to this policy's longest backoff (50 ms), and then honoured
    // exactly (no jitter below it).
    assert_eq!(response.status(), 201);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(50), "{waited:?}");

    let server = Scripted::new(&[(503, Some("1"))]);
    let addr = server.clone().serve().await;
    let policy = RetryPolicy {
        max_backoff: Duration::from_secs(2),
        ..fast()
    };
    let started = std::time::Instant::now();
    client(policy)
        .post(format!("http://{addr}/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn attempts_and_total_time_are_bounded() {
    let always = vec![(503u16, None); 100];
    let server = Scripted::new(&always);
    let addr = server.clone().serve().await;
    let policy = RetryPolicy {
        max_attempts: 3,
        ..fast()
    };
    let response = client(policy)
        .post(format!("http://{addr}/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "the last answer is returned as it is"
    );
    assert_eq!(server.keys().len(), 3);

    let server = Scripted::new(&always);
    let addr = server.clone().serve().await;
    let policy = RetryPolicy {
        max_attempts: 1000,
        max_elapsed: Duration::from_millis(300),
        ..fast()
    };
    let started = std::time::Instant::now();
    let response = client(policy)
        .post(format!("http://{addr}/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(server.keys().len() < 1000);
}

#[tokio::test]
async fn connection_failures_are_retried_until_the_server_is_up() {
    // A port where nothing listens, held (connects refused, no other server takes it) until
    // the server starts there a little later.
    let reserved = idempotency_testkit::RefusedPort::new();
    let port = reserved.port();
    let server = Scripted::new(&[]);
    let late = server.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let app = Router::new().route(
            "/{*path}",
            any(move |headers: HeaderMap| {
                let late = late.clone();
                async move {
                    late.keys.lock().unwrap().push(
                        headers
                            .get("idempotency-key")
                            .map(|v| v.to_str().unwrap().to_owned()),
                    );
                    StatusCode::CREATED
                }
            }),
        );
        let listener = reserved.listen(1024).unwrap();
        axum::serve(listener, app).await
    });
    let response = client(RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_attempts: 30,
        ..RetryPolicy::default()
    })
    .post(format!("http://127.0.0.1:{port}/x"))
    .body("{}")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    assert!(Outcome::of(&response).unwrap().attempts > 1);
    assert_eq!(server.keys().len(), 1);
}

mod demo {
    use super::*;
    use idempotency::{AnyStore, Idempotency, StoreSelection, store_from_lookup};
    use idempotency_demo::{AppState, app};
    use idempotency_testkit::fixtures::RedisServer;

    async fn serve_demo(store: AnyStore, store_timeout: Duration) -> (String, AppState) {
        let engine = Idempotency::builder(store)
            .ignore_env()
            .store_timeout(store_timeout)
            .build()
            .unwrap();
        let state = AppState::new(engine, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = app(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (url, state)
    }

    /// Concurrent logical requests (each retried by the middleware) against the demo: every
    /// order is created once, and re-sending a request with its key is a replay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn against_the_demo_each_logical_request_runs_once() {
        let store = AnyStore::from(idempotency::memory::MemoryStore::new());
        let (url, state) = serve_demo(store, Duration::from_secs(1)).await;
        let client = client(fast());
        let first = client
            .put(format!("{url}/api/products/tea"))
            .bearer_auth("alice")
            .header("content-type", "application/json")
            .body(r#"{"name":"Tea","price":450}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 201);
        let key = Outcome::of(&first).unwrap().key.clone().unwrap();
        let body = first.bytes().await.unwrap();
        // The same logical request again (e.g. a re-run job that kept its key): a replay.
        let again = client
            .put(format!("{url}/api/products/tea"))
            .bearer_auth("alice")
            .header("idempotency-key", &key)
            .header("content-type", "application/json")
            .body(r#"{"name":"Tea","price":450}"#)
            .send()
            .await
            .unwrap();
        assert!(Outcome::of(&again).unwrap().replayed);
        assert!(idempotency_client::was_replayed(&again));
        assert_eq!(again.bytes().await.unwrap(), body);
        assert_eq!(state.handler_runs(), 1);
    }

    /// The chaos schedule: the Redis store is paused (every request 503s after the store
    /// timeout) and resumed while clients retry; every logical request ends with one 201 and
    /// the shop ran each one exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_ride_out_a_paused_store() {
        let mut server = RedisServer::start().expect("redis-server (apt-get install redis-server)");
        let url_var = server.url().to_owned();
        let store = store_from_lookup(StoreSelection::RequireDistributed, move |name| {
            (name == "REDIS_URL").then(|| url_var.clone())
        })
        .await
        .unwrap();
        let (url, state) = serve_demo(store, Duration::from_millis(200)).await;
        let client = client(RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(300),
            max_attempts: 100,
            max_elapsed: Duration::from_secs(20),
            ..RetryPolicy::default()
        });
        server.pause().unwrap();
        let requests: Vec<_> = (0..20)
            .map(|i| {
                let client = client.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    client
                        .put(format!("{url}/api/products/p{i}"))
                        .bearer_auth("alice")
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"name":"P{i}","price":{i}}}"#))
                        .send()
                        .await
                        .unwrap()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(800)).await;
        server.resume().unwrap();
        let mut retried = 0;
        for request in requests {
            let response = request.await.unwrap();
            assert_eq!(
                response.status(),
                201,
                "every logical request gets its answer"
            );
            let outcome = Outcome::of(&response).unwrap();
            if outcome.attempts > 1 {
                retried += 1;
            }
        }
        assert!(retried > 0, "the pause must have made clients retry");
        assert_eq!(state.handler_runs(), 20, "each product written once");
    }
}
