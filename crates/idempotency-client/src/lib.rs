//! # idempotency-client
//!
//! The client half of the `Idempotency-Key` protocol, as a [`reqwest_middleware`] middleware.
//! What Stripe's SDKs do and most hand-written clients get wrong:
//!
//! - **one key per logical request**: a mutating request (by default `POST`, `PUT`, `PATCH`,
//!   `DELETE`) without an `Idempotency-Key` gets a fresh UUID v7, and **every retry of that
//!   request carries the same key** — so the server runs the side effect once and replays its
//!   first answer to the retries. A key the caller set is never overwritten (use one when the
//!   logical request outlives the process, e.g. a job that may be re-run).
//! - **retries only when they are safe and useful**: connection failures, timeouts, `409`
//!   (the first attempt is still in progress), `429`, `503`, and a gateway's `502` and `504` (a
//!   proxy that timed out waiting for the server, or found it restarting: the request may have
//!   reached it, which is what the key makes safe to retry); never `400`, `422` or another
//!   `4xx`, which would fail again the same way, and never an answer marked
//!   `Idempotent-Replayed: true` (the server's stored answer to this key: a retry would get the
//!   same bytes). `Retry-After` (seconds or an HTTP date) is honoured; otherwise exponential
//!   backoff with full jitter. Bounded by a number of attempts and a total time in which
//!   attempts may start ([`RetryPolicy::max_elapsed`]); how long one attempt may take is the
//!   client's or the request's timeout, which reqwest leaves unset: without one, a server that
//!   accepts the connection and never answers holds the first attempt forever.
//!
//! # Retried statuses, and why
//! Stripe's SDKs (the reference for this middleware) retry connection errors, `409` and every
//! `5xx`, unless the API's `Stripe-Should-Retry` header says otherwise, reusing the request's
//! key. The IETF draft (draft-ietf-httpapi-idempotency-key-header) defines the server's answers
//! (`400` missing key, `409` a request with the key still in progress, `422` the key reused with
//! another payload) and leaves retry policy to the client. The default here is narrower than
//! Stripe's: `409`, `429`, `503` (the server says "later"), `502` and `504` (a gateway between
//! client and server failed; the key turns "did it run?" into a replay or a first run).
//! `500` is not retried by default: an application's own error usually repeats; add it to
//! [`RetryPolicy::retry_statuses`] if your server releases the claim on a `5xx` (this
//! workspace's layer does) and you want Stripe's behaviour.
//! - **tells you what happened**: [`Outcome`] in the response's extensions says how many attempts
//!   it took, which key was used and whether the answer was a replay (`Idempotent-Replayed:
//!   true`, Stripe's header, which servers following Stripe set; the IETF draft defines no
//!   response header).
//!
//! ```no_run
//! use idempotency_client::{IdempotencyMiddleware, Outcome};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(IdempotencyMiddleware::default())
//!     .build();
//! let response = client
//!     .post("http://127.0.0.1:3000/api/orders")
//!     .bearer_auth("alice")
//!     .header("content-type", "application/json")
//!     .body(r#"{"product":"tea","quantity":2}"#)
//!     .send()
//!     .await?;
//! let outcome = Outcome::of(&response).expect("set by the middleware");
//! println!("{} after {} attempt(s), key {}, replayed: {}",
//!     response.status(), outcome.attempts, outcome.key.as_deref().unwrap_or("-"), outcome.replayed);
//! # Ok(()) }
//! ```
//!
//! # Which requests are retried
//! Only requests whose body can be replayed (reqwest's `try_clone`: bytes, strings, JSON — not
//! a stream) and, unless [`RetryPolicy::retry_without_key`] is on, only requests that carry a
//! key (every method in [`RetryPolicy::methods`] gets one). A request without a key is sent
//! once: retrying a non-idempotent request without a key is exactly how duplicates happen.
//!
//! After the last attempt the last response is returned as it is (e.g. the final `503`), or
//! the last transport error; the caller decides what to do next — and may retry later **with
//! the same key** (read it from [`Outcome::key`]). A transport error has no response and so
//! no [`Outcome`]: the generated key is lost with it. When a request may have to be re-sent
//! after one (e.g. its attempts all timed out: it may have run), set the key yourself
//! (`Idempotency-Key` header, e.g. a `uuid::Uuid::now_v7()`) and keep it.
//!
//! # The key on the wire
//! The generated key is sent bare (`Idempotency-Key: 0190…`), as Stripe's clients send it
//! and as most servers (this workspace's included) accept it. The IETF draft makes the value
//! a Structured Field String, quoted (`Idempotency-Key: "0190…"`); for a server that requires
//! that form, set the key yourself, quoted: a caller's key is sent exactly as given.

#![deny(missing_docs)]

use std::time::Duration;

use async_trait::async_trait;
use http::{Extensions, HeaderName, HeaderValue, Method, StatusCode};
use rand::Rng as _;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

/// The request header carrying the key (draft-ietf-httpapi-idempotency-key-header).
pub const KEY_HEADER: &str = "idempotency-key";
/// The response header saying the answer is a replay of the first one (Stripe's; the IETF
/// draft defines no response header).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// When and how often to retry. The defaults suit interactive calls: up to 8 attempts within
/// 30 s, backoff from 100 ms doubling up to 5 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Methods that get a key (and so may be retried). Default `POST`, `PUT`, `PATCH`, `DELETE`.
    pub methods: Vec<Method>,
    /// Attempts in all, the first included (default 8; 1 disables retries).
    pub max_attempts: u32,
    /// No attempt starts after this much time since the first (default 30 s).
    pub max_elapsed: Duration,
    /// First backoff; doubled after each attempt (default 100 ms).
    pub initial_backoff: Duration,
    /// Longest backoff, and the longest `Retry-After` honoured (default 5 s; a longer
    /// `Retry-After` is clamped to it).
    pub max_backoff: Duration,
    /// Statuses worth another attempt (default 409, 429, 502, 503, 504). A response with
    /// `Idempotent-Replayed: true` is never retried, whatever its status: it is the server's
    /// stored answer to this key.
    pub retry_statuses: Vec<StatusCode>,
    /// Also retry requests without a key (methods outside [`Self::methods`], e.g. `GET`).
    /// Default `false`.
    pub retry_without_key: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            methods: vec![Method::POST, Method::PUT, Method::PATCH, Method::DELETE],
            max_attempts: 8,
            max_elapsed: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retry_statuses: vec![
                StatusCode::CONFLICT,
                StatusCode::TOO_MANY_REQUESTS,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ],
            retry_without_key: false,
        }
    }
}

/// What the middleware did for a response, in the response's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// The key sent with every attempt (`None`: the request had none and got none). A caller's
    /// key that is not UTF-8 is given lossily (`U+FFFD` for the bytes that are not); of
    /// several `Idempotency-Key` headers, the first.
    pub key: Option<String>,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// The server answered with a replay of an earlier response (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl Outcome {
    /// The outcome recorded on `response`, if it came through the middleware.
    pub fn of(response: &Response) -> Option<&Outcome> {
        response.extensions().get::<Outcome>()
    }
}

/// Whether `response` is a replay of an earlier answer (`Idempotent-Replayed: true`), whether
/// or not it came through the middleware.
pub fn was_replayed(response: &Response) -> bool {
    response
        .headers()
        .get(REPLAYED_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// The middleware. Add it with `reqwest_middleware::ClientBuilder::with`.
#[derive(Debug, Clone, Default)]
pub struct IdempotencyMiddleware {
    policy: RetryPolicy,
}

impl IdempotencyMiddleware {
    /// A middleware with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy }
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// How long to wait before the attempt after `attempt` (1-based): the server's
    /// `Retry-After` if it sent one (clamped to `max_backoff`), else full-jitter exponential
    /// backoff.
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(retry_after) = retry_after {
            return retry_after.min(self.policy.max_backoff);
        }
        let exponent = attempt.saturating_sub(1).min(16);
        let ceiling = self
            .policy
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(self.policy.max_backoff);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

#[async_trait]
impl Middleware for IdempotencyMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let header = HeaderName::from_static(KEY_HEADER);
        if self.policy.methods.contains(request.method())
            && !request.headers().contains_key(&header)
        {
            // A retry middleware outside this one (e.g. `reqwest-retry`) runs it again per
            // attempt, with a copy of the request made before the key was set: the key
            // generated for the first run is kept in this send's extensions and reused.
            let value = match extensions.get::<GeneratedKey>() {
                Some(GeneratedKey(value)) => Some(value.clone()),
                None => {
                    let key = uuid::Uuid::now_v7().to_string();
                    HeaderValue::from_str(&key)
                        .map_err(|_| unreachable_key(&key))
                        .ok()
                }
            };
            if let Some(value) = value {
                extensions.insert(GeneratedKey(value.clone()));
                request.headers_mut().insert(header.clone(), value);
            }
        }
        // Any value is a key, visible ASCII or not (`HeaderValue::from_str` takes UTF-8 text,
        // `to_str` refuses it): every attempt carries the same bytes, so a retry is as safe.
        let key = request
            .headers()
            .get(&header)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let retryable = key.is_some() || self.policy.retry_without_key;
        let started = tokio::time::Instant::now();
        let mut attempt = 1u32;
        loop {
            // A body that cannot be replayed (a stream) means this attempt is the only one.
            let spare = if retryable && attempt < self.policy.max_attempts {
                request.try_clone()
            } else {
                None
            };
            let result = next.clone().run(request, extensions).await;
            let retry_after = match &result {
                // A replayed answer (even a 409 or 429 the server chose to store) is final:
                // every retry under this key would get the same bytes.
                Ok(response)
                    if self.policy.retry_statuses.contains(&response.status())
                        && !was_replayed(response) =>
                {
                    Some(retry_after(response))
                }
                Ok(_) => None,
                Err(error) if is_transient(error) => Some(None),
                Err(_) => None,
            };
            let next_try = match (spare, retry_after) {
                (Some(spare), Some(retry_after)) => {
                    let delay = self.delay(attempt, retry_after);
                    // `checked_add`: the delay may come from a `Retry-After` of up to
                    // `u64::MAX` seconds when `max_backoff` is unbounded.
                    started
                        .elapsed()
                        .checked_add(delay)
                        .is_some_and(|end| end <= self.policy.max_elapsed)
                        .then_some((spare, delay))
                }
                _ => None,
            };
            let Some((spare, delay)) = next_try else {
                return result.map(|mut response| {
                    let replayed = was_replayed(&response);
                    response.extensions_mut().insert(Outcome {
                        key,
                        attempts: attempt,
                        replayed,
                    });
                    response
                });
            };
            match &result {
                Ok(response) => tracing::debug!(
                    status = %response.status(), attempt, ?delay, key = key.as_deref(),
                    "retrying with the same idempotency key"
                ),
                Err(error) => tracing::debug!(
                    %error, attempt, ?delay, key = key.as_deref(),
                    "retrying with the same idempotency key"
                ),
            }
            // Free the connection of a response we will not read before waiting.
            drop(result);
            tokio::time::sleep(delay).await;
            request = spare;
            attempt += 1;
        }
    }
}

/// The key generated for one send (one logical request), in its middleware extensions.
#[derive(Clone)]
struct GeneratedKey(HeaderValue);

/// A UUID's text is always a valid header value; kept out of line so the request path has no
/// panic.
#[cold]
fn unreachable_key(key: &str) {
    tracing::error!(
        key,
        "generated key is not a header value; sending without a key"
    );
}

/// Connection failures and timeouts: the request may or may not have reached the server, and
/// the key makes a retry safe either way.
fn is_transient(error: &reqwest_middleware::Error) -> bool {
    match error {
        reqwest_middleware::Error::Reqwest(error) => {
            error.is_connect() || error.is_timeout() || error.is_request()
        }
        reqwest_middleware::Error::Middleware(_) => false,
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3); `None` when absent or
/// unreadable.
fn retry_after(response: &Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let middleware = IdempotencyMiddleware::default();
        for attempt in 1..20 {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(Duration::from_secs(5));
            for _ in 0..50 {
                assert!(middleware.delay(attempt, None) <= ceiling);
            }
        }
        // Retry-After wins, clamped to the longest backoff.
        assert_eq!(
            middleware.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            middleware.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(5)
        );
    }
}
