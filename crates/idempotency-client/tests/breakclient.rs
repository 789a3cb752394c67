//! breakclient: the middleware against an adversarial server (raw HTTP/1.1 over a
//! `tokio::net::TcpListener` on 127.0.0.1, so every header byte and every reset is scripted) and
//! a demanding caller: odd keys, odd `Retry-After` values, connections reset or never answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, fast};
use idempotency_client::{IdempotencyMiddleware, Outcome, RetryPolicy};
use reqwest_middleware::ClientBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server does with request `n` (0-based), after reading it whole.
enum Act {
    /// Wait, then write these raw response bytes (head and body) and close.
    Answer(Duration, String),
    /// Close the connection without answering (the client sees a reset / an early close).
    Close,
    /// Keep the connection open and never answer.
    Hang,
}

/// A request as the server read it.
#[derive(Debug, Clone)]
struct Seen {
    /// Every `Idempotency-Key` line's raw value bytes, in order.
    keys: Vec<Vec<u8>>,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Raw {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<dyn Fn(usize) -> Act + Send + Sync>,
}

/// A response with `status` and extra header lines (each ending in `\r\n`).
fn answer(status: u16, headers: &str) -> String {
    format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n{headers}\r\nok")
}

impl Raw {
    fn new(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Self {
        Self {
            seen: Arc::default(),
            script: Arc::new(script),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn serve(self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let this = self.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let head_end = loop {
                        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let mut keys = Vec::new();
                    let mut length = 0usize;
                    for line in buffer[..head_end].split(|&b| b == b'\n') {
                        if let Some(colon) = line.iter().position(|&b| b == b':') {
                            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
                            let value = line[colon + 1..].trim_ascii().to_vec();
                            if name == "idempotency-key" {
                                keys.push(value);
                            } else if name == "content-length" {
                                length = String::from_utf8_lossy(&value).parse().unwrap();
                            }
                        }
                    }
                    while buffer.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buffer[head_end..head_end + length].to_vec();
                    let n = {
                        let mut seen = this.seen.lock().unwrap();
                        seen.push(Seen { keys, body });
                        seen.len() - 1
                    };
                    match (this.script)(n) {
                        Act::Answer(delay, raw) => {
                            tokio::time::sleep(delay).await;
                            let _ = socket.write_all(raw.as_bytes()).await;
                            let _ = socket.shutdown().await;
                        }
                        Act::Close => drop(socket),
                        Act::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                    }
                });
            }
        });
        addr
    }
}

/// A caller's key that is a valid header value but not visible ASCII (a business reference
/// with an accent: `HeaderValue::from_str` takes it, `to_str` refuses it) is still a key: the
/// request carries it on every attempt, so it is retried like any keyed request, and the
/// `Outcome` reports it. It used to count as "no key": sent once, `Outcome::key` `None`.
#[tokio::test]
async fn a_non_ascii_callers_key_is_retried_and_reported() {
    let server = Raw::new(|n| {
        if n == 0 {
            Act::Answer(Duration::ZERO, answer(503, ""))
        } else {
            Act::Answer(Duration::ZERO, answer(201, ""))
        }
    });
    let addr = server.clone().serve().await;
    let response = client(fast())
        .post(format!("http://{addr}/orders"))
        .header("Idempotency-Key", "commande-née-42")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "the 503 was not retried");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.keys, vec!["commande-née-42".as_bytes().to_vec()]);
        assert_eq!(request.body, b"{}");
    }
    let outcome = Outcome::of(&response).unwrap();
    assert_eq!(outcome.attempts, 2);
    assert_eq!(outcome.key.as_deref(), Some("commande-née-42"));
}

/// A policy that honours any `Retry-After` (`max_backoff` and `max_elapsed` at
/// `Duration::MAX`) and a server that answers, a second after the first attempt started,
/// `Retry-After: 18446744073709551615`: the bound check added the elapsed time to the delay
/// and overflowed (a panic in the caller's task, from a header the network controls). Now
/// the delay is beyond any bound: the answer is returned as it is.
#[tokio::test]
async fn a_huge_retry_after_under_an_unbounded_policy_does_not_panic() {
    let server = Raw::new(|_| {
        Act::Answer(
            Duration::from_millis(1100),
            answer(503, "retry-after: 18446744073709551615\r\n"),
        )
    });
    let addr = server.clone().serve().await;
    let response = client(RetryPolicy {
        max_backoff: Duration::MAX,
        max_elapsed: Duration::MAX,
        ..fast()
    })
    .post(format!("http://{addr}/orders"))
    .body("{}")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(Outcome::of(&response).unwrap().attempts, 1);
    assert_eq!(server.seen().len(), 1);
}

// ---- probes that held (kept as regression tests) ----

/// A server that reads the request and closes the connection without answering, twice: the
/// request (and its body) is sent again with the same key.
#[tokio::test]
async fn reset_connections_are_retried_with_the_same_key_and_body() {
    let server = Raw::new(|n| {
        if n < 2 {
            Act::Close
        } else {
            Act::Answer(Duration::ZERO, answer(201, ""))
        }
    });
    let addr = server.clone().serve().await;
    let response = client(fast())
        .post(format!("http://{addr}/orders"))
        .body("payload-bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].keys.len(), 1);
    assert!(
        seen.iter()
            .all(|s| s.keys == seen[0].keys && s.body == b"payload-bytes")
    );
    assert_eq!(Outcome::of(&response).unwrap().attempts, 3);
}

/// A server that never answers: with a request timeout, each attempt times out and is
/// retried with the same key, until `max_attempts`; the last error is returned.
#[tokio::test]
async fn a_server_that_never_answers_is_bounded_by_attempts() {
    let server = Raw::new(|_| Act::Hang);
    let addr = server.clone().serve().await;
    let error = client(RetryPolicy {
        max_attempts: 3,
        ..fast()
    })
    .post(format!("http://{addr}/orders"))
    .timeout(Duration::from_millis(100))
    .body("{}")
    .send()
    .await
    .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| s.keys == seen[0].keys && s.keys.len() == 1)
    );
}

/// A 409 forever: the total time bounds the retries (generous bound).
#[tokio::test]
async fn a_conflict_forever_is_bounded_by_time() {
    let server = Raw::new(|_| Act::Answer(Duration::ZERO, answer(409, "")));
    let addr = server.clone().serve().await;
    let started = std::time::Instant::now();
    let response = client(RetryPolicy {
        max_attempts: u32::MAX,
        max_elapsed: Duration::from_millis(300),
        ..fast()
    })
    .post(format!("http://{addr}/orders"))
    .body("{}")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 409);
    assert!(started.elapsed() < Duration::from_secs(10));
    let outcome = Outcome::of(&response).unwrap();
    assert_eq!(outcome.attempts as usize, server.seen().len());
    assert!(outcome.attempts > 1);
}

/// `Retry-After` values the network controls: garbage, negative, fractional, an HTTP date in
/// the past, a date far in the future, several headers, overflowing digits: none panics, each
/// 503 is retried (clamped to `max_backoff`), the request ends with the 201.
#[tokio::test]
async fn odd_retry_after_values_are_survived() {
    const VALUES: [&str; 9] = [
        "retry-after: soon\r\n",
        "retry-after: -1\r\n",
        "retry-after: 1.5\r\n",
        "retry-after: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        "retry-after: Fri, 31 Dec 9999 23:59:59 GMT\r\n",
        "retry-after: 0\r\nretry-after: 3600\r\n",
        "retry-after: 99999999999999999999999999\r\n",
        "retry-after: \r\n",
        "retry-after: é\r\n",
    ];
    let server = Raw::new(|n| match VALUES.get(n) {
        Some(value) => Act::Answer(Duration::ZERO, answer(503, value)),
        None => Act::Answer(Duration::ZERO, answer(201, "")),
    });
    let addr = server.clone().serve().await;
    let started = std::time::Instant::now();
    let response = client(RetryPolicy {
        max_attempts: 20,
        ..fast()
    })
    .post(format!("http://{addr}/orders"))
    .body("{}")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(Outcome::of(&response).unwrap().attempts, 10);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `Idempotent-Replayed` in any casing with the value in any casing is a replay (final, even
/// on a 503); other values are not.
#[tokio::test]
async fn replayed_header_casing_and_values() {
    for (header, replayed) in [
        ("Idempotent-Replayed: TRUE\r\n", true),
        ("IDEMPOTENT-REPLAYED: true\r\n", true),
        ("idempotent-replayed: false\r\n", false),
        ("idempotent-replayed: 1\r\n", false),
    ] {
        let server = Raw::new(move |n| {
            if n == 0 {
                Act::Answer(Duration::ZERO, answer(503, header))
            } else {
                Act::Answer(Duration::ZERO, answer(201, ""))
            }
        });
        let addr = server.clone().serve().await;
        let response = client(fast())
            .post(format!("http://{addr}/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        let outcome = Outcome::of(&response).unwrap();
        if replayed {
            assert_eq!((response.status().as_u16(), outcome.attempts), (503, 1));
            assert!(outcome.replayed);
        } else {
            assert_eq!((response.status().as_u16(), outcome.attempts), (201, 2));
            assert!(!outcome.replayed);
        }
    }
}

/// Methods outside the policy (GET, a custom method) get no key and are sent once; a GET the
/// caller gave a key is retried with it; `max_attempts: 0` sends once.
#[tokio::test]
async fn methods_outside_the_policy_and_zero_attempts() {
    let script = |n| {
        if n == 0 {
            Act::Answer(Duration::ZERO, answer(503, ""))
        } else {
            Act::Answer(Duration::ZERO, answer(201, ""))
        }
    };
    for method in [
        reqwest::Method::GET,
        reqwest::Method::from_bytes(b"CHARGE").unwrap(),
    ] {
        let server = Raw::new(script);
        let addr = server.clone().serve().await;
        let response = client(fast())
            .request(method.clone(), format!("http://{addr}/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{method}");
        assert!(server.seen()[0].keys.is_empty());
        assert_eq!(Outcome::of(&response).unwrap().key, None);
    }
    let server = Raw::new(script);
    let addr = server.clone().serve().await;
    let response = client(fast())
        .get(format!("http://{addr}/x"))
        .header("idempotency-key", "mine")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(server.seen().len(), 2);

    let server = Raw::new(script);
    let addr = server.clone().serve().await;
    let response = client(RetryPolicy {
        max_attempts: 0,
        ..fast()
    })
    .post(format!("http://{addr}/x"))
    .body("{}")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(server.seen().len(), 1);
}

/// A retry middleware of the caller's, outside this one (as `reqwest-retry`'s
/// `RetryTransientMiddleware` is when added first): one retry of a 503, re-running the rest of
/// the chain with a copy of the request made before it.
struct OuterRetry;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for OuterRetry {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let copy = request.try_clone().unwrap();
        let response = next.clone().run(request, extensions).await?;
        if response.status() != 503 {
            return Ok(response);
        }
        next.run(copy, extensions).await
    }
}

/// The outer retry re-runs this middleware with the key-less copy: it used to generate a
/// second key for the same logical request (the server ran it twice). The key generated for
/// a send is now kept in its extensions and reused; the next send gets a new one.
#[tokio::test]
async fn an_outer_retry_middleware_keeps_the_generated_key() {
    let server = Raw::new(|n| {
        if n % 2 == 0 {
            Act::Answer(Duration::ZERO, answer(503, ""))
        } else {
            Act::Answer(Duration::ZERO, answer(201, ""))
        }
    });
    let addr = server.clone().serve().await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(OuterRetry)
        .with(IdempotencyMiddleware::new(RetryPolicy {
            max_attempts: 1,
            ..fast()
        }))
        .build();
    for _ in 0..2 {
        let response = client
            .post(format!("http://{addr}/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let keys: Vec<_> = server.seen().into_iter().map(|s| s.keys).collect();
    assert_eq!(keys.len(), 4);
    assert!(keys.iter().all(|k| k.len() == 1), "{keys:?}");
    assert_eq!(keys[0], keys[1], "one logical request, two keys");
    assert_eq!(keys[2], keys[3], "one logical request, two keys");
    assert_ne!(keys[0], keys[2], "two logical requests, one key");
}
