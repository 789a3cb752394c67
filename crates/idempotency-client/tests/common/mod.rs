//! Shared helpers of the middleware's test binaries.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use idempotency_client::{IdempotencyMiddleware, RetryPolicy};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

/// A client with the middleware under `policy`.
pub fn client(policy: RetryPolicy) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyMiddleware::new(policy))
        .build()
}

/// The default policy with short back-offs (5 ms doubling to 50 ms), for tests.
pub fn fast() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..RetryPolicy::default()
    }
}
