//! newuser4: the client's retries as a new user relies on them: a timed-out attempt (the server
//! did receive it) retried with the same key; a gateway's 502/504 in front of a slow server; a
//! 409 that is a replay of a stored answer rather than "still in progress".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use idempotency_client::{IdempotencyMiddleware, Outcome, RetryPolicy};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

/// A server that records each request's key and answers attempt `n` (0-based) with
/// `answer(n)` after `delay(n)`.
#[derive(Clone)]
struct Server {
    keys: Arc<Mutex<Vec<Option<String>>>>,
    seen: Arc<AtomicUsize>,
    answer: fn(usize) -> (Duration, Response),
}

impl Server {
    fn new(answer: fn(usize) -> (Duration, Response)) -> Self {
        Self {
            keys: Arc::default(),
            seen: Arc::default(),
            answer,
        }
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
                    let n = this.seen.fetch_add(1, Ordering::SeqCst);
                    let (delay, response) = (this.answer)(n);
                    tokio::time::sleep(delay).await;
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

fn client() -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyMiddleware::new(RetryPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            ..RetryPolicy::default()
        }))
        .build()
}

fn all_the_same(keys: &[Option<String>]) -> bool {
    keys.first()
        .and_then(Option::as_deref)
        .is_some_and(|first| keys.iter().all(|k| k.as_deref() == Some(first)))
}

/// The first attempt reaches the server and takes longer than the request's timeout; the retry
/// carries the same key (so the server can replay instead of running again) and succeeds.
#[tokio::test]
async fn a_timed_out_attempt_is_retried_with_the_same_key() {
    let server = Server::new(|n| {
        let delay = if n == 0 {
            Duration::from_millis(800)
        } else {
            Duration::ZERO
        };
        (delay, (StatusCode::CREATED, "ok").into_response())
    });
    let addr = server.clone().serve().await;
    let response = client()
        .post(format!("http://{addr}/orders"))
        .timeout(Duration::from_millis(200))
        .body("{}")
        .send()
        .await
        .expect("the retry succeeds");
    assert_eq!(response.status(), StatusCode::CREATED);
    let outcome = Outcome::of(&response).unwrap();
    assert_eq!(outcome.attempts, 2);
    let keys = server.keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(all_the_same(&keys), "{keys:?}");
    assert_eq!(outcome.key, keys[0]);
}

/// Pins: `422` (the key reused with another payload) is final, sent once.
#[tokio::test]
async fn a_key_mismatch_is_final() {
    let server = Server::new(|_| {
        (
            Duration::ZERO,
            (StatusCode::UNPROCESSABLE_ENTITY, "key-reused").into_response(),
        )
    });
    let addr = server.clone().serve().await;
    let response = client()
        .post(format!("http://{addr}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(server.keys().len(), 1);
}

/// A reverse proxy in front of the API answers `504` when the upstream is slow (the request did
/// reach the API) and `502` when it restarts: exactly the "retry after a timeout" case the key
/// makes safe. Both are retried, with the same key.
#[tokio::test]
async fn a_gateway_timeout_is_retried_with_the_same_key() {
    for status in [StatusCode::GATEWAY_TIMEOUT, StatusCode::BAD_GATEWAY] {
        let server = Server::new(match status {
            StatusCode::GATEWAY_TIMEOUT => |n| {
                let status = if n == 0 {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::CREATED
                };
                (Duration::ZERO, status.into_response())
            },
            _ => |n| {
                let status = if n == 0 {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::CREATED
                };
                (Duration::ZERO, status.into_response())
            },
        });
        let addr = server.clone().serve().await;
        let response = client()
            .post(format!("http://{addr}/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "after {status}");
        assert!(all_the_same(&server.keys()));
    }
}

/// A `409` that is itself a replay (`Idempotent-Replayed: true`: the server stored a 409 answer,
/// e.g. a handler that marked its side effects committed and then answered 409) is the final
/// answer to this key: every retry gets the same bytes. The middleware used to retry it up to
/// `max_attempts` (8 by default, with backoff: seconds of waiting for nothing); it is returned
/// at once, marked replayed.
#[tokio::test]
async fn a_replayed_conflict_is_final() {
    let server = Server::new(|_| {
        (
            Duration::ZERO,
            (
                StatusCode::CONFLICT,
                [("idempotent-replayed", "true")],
                "already shipped",
            )
                .into_response(),
        )
    });
    let addr = server.clone().serve().await;
    let response = client()
        .post(format!("http://{addr}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(server.keys().len(), 1, "a replayed answer was retried");
    let outcome = Outcome::of(&response).unwrap();
    assert_eq!((outcome.attempts, outcome.replayed), (1, true));
}

/// A 409 without the replay header (the first attempt still in progress) is still retried, with
/// the same key, until the stored answer comes back.
#[tokio::test]
async fn an_in_progress_conflict_is_still_retried() {
    let server = Server::new(|n| {
        let response = if n < 2 {
            (StatusCode::CONFLICT, "in progress").into_response()
        } else {
            (StatusCode::CREATED, [("idempotent-replayed", "true")], "ok").into_response()
        };
        (Duration::ZERO, response)
    });
    let addr = server.clone().serve().await;
    let response = client()
        .post(format!("http://{addr}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let keys = server.keys();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(all_the_same(&keys), "{keys:?}");
    assert!(Outcome::of(&response).unwrap().replayed);
}
