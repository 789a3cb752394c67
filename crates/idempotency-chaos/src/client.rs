//! The retrying client: one logical request, the same `Idempotency-Key` and body on every
//! attempt (Stripe's client semantics), until a final answer or its deadline.
//!
//! - 2xx: final. Any other 4xx but 409 / 429: final too (and unexpected: the request never
//!   changes, so a 4xx means it was refused as a different one).
//! - 409 / 429 / 503: wait `Retry-After` (seconds; capped at 5 s), then again — 503 on another
//!   instance.
//! - other 5xx, a connection error, or no answer within the attempt timeout: another instance,
//!   after a jittered backoff (100 ms doubling to 1 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// What every client of a scenario shares.
#[derive(Debug)]
pub struct Target {
    /// The demo instances' base URLs.
    pub urls: Vec<String>,
    /// Per instance: how many times it was killed so far (a timeout across a kill is no hang).
    pub kills: Vec<AtomicU64>,
    /// The HTTP client (connection pool shared by all clients).
    pub http: reqwest::Client,
    /// One attempt without an answer for this long is a hang.
    pub attempt_timeout: Duration,
}

/// One logical request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `Idempotency-Key`.
    pub key: String,
    /// The product id in the path.
    pub product: String,
    /// The JSON body.
    pub body: String,
}

/// How one client's request ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The final status, `None` when the client gave up.
    pub status: Option<u16>,
    /// The final answer's body.
    pub body: Bytes,
    /// `Idempotent-Replayed: true` on the final answer.
    pub replayed: bool,
    /// From the first attempt to the final answer.
    pub time_to_final: Option<Duration>,
    /// Attempts sent.
    pub attempts: u32,
    /// Statuses of every answer, in order.
    pub statuses: Vec<u16>,
    /// Attempts that ended in a connection error.
    pub connection_errors: u32,
    /// 5xx answers with neither an `application/problem+json` body (the idempotency layer's)
    /// nor the API's own JSON error envelope (`{"error": {"code": ...}}`, e.g. the demo's 503
    /// when its database is down).
    pub bare_5xx: u32,
    /// Attempts with no answer within the attempt timeout, on an instance not killed meanwhile.
    pub hangs: u32,
}

/// Send `request` from instance `first_instance` on, retrying until a final answer or
/// `give_up` after the first attempt.
pub async fn run(
    target: Arc<Target>,
    request: Request,
    first_instance: usize,
    give_up: Duration,
    seed: u64,
) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcome = Outcome::default();
    let started = Instant::now();
    let instances = target.urls.len().max(1);
    let mut instance = first_instance % instances;
    let mut backoff = Duration::from_millis(100);
    loop {
        let remaining = give_up.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return outcome;
        }
        outcome.attempts += 1;
        let kills_before = target.kills[instance].load(Ordering::SeqCst);
        let url = format!("{}/api/products/{}", target.urls[instance], request.product);
        let attempt = target
            .http
            .put(url)
            .header("authorization", "Bearer chaos")
            .header("idempotency-key", &request.key)
            .header("content-type", "application/json")
            .body(request.body.clone())
            .send();
        let wait = match tokio::time::timeout(target.attempt_timeout, async {
            let response = attempt.await?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
            let content_type = header("content-type").unwrap_or_default();
            let replayed = header("idempotent-replayed").is_some_and(|v| v == "true");
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, retry_after, content_type, replayed, body))
        })
        .await
        {
            Err(_elapsed) => {
                if target.kills[instance].load(Ordering::SeqCst) == kills_before {
                    outcome.hangs += 1;
                }
                instance = (instance + 1) % instances;
                None
            }
            Ok(Err(_)) => {
                outcome.connection_errors += 1;
                instance = (instance + 1) % instances;
                None
            }
            Ok(Ok((status, retry_after, content_type, replayed, body))) => {
                outcome.statuses.push(status);
                match status {
                    200..=299 | 400..=408 | 410..=428 | 430..=499 => {
                        outcome.status = Some(status);
                        outcome.body = body;
                        outcome.replayed = replayed;
                        outcome.time_to_final = Some(started.elapsed());
                        return outcome;
                    }
                    409 | 429 | 503 => {
                        if status == 503 {
                            instance = (instance + 1) % instances;
                        }
                        if status >= 500 && !described(&content_type, &body) {
                            outcome.bare_5xx += 1;
                        }
                        retry_after.map(|s| Duration::from_secs(s.min(5)))
                    }
                    _ => {
                        if status >= 500 && !described(&content_type, &body) {
                            outcome.bare_5xx += 1;
                        }
                        instance = (instance + 1) % instances;
                        None
                    }
                }
            }
        };
        let wait = wait.unwrap_or_else(|| {
            let jittered = backoff.mul_f64(rng.random_range(0.5..1.0));
            backoff = (backoff * 2).min(Duration::from_secs(1));
            jittered
        });
        let remaining = give_up.saturating_sub(started.elapsed());
        tokio::time::sleep(wait.min(remaining)).await;
    }
}

/// Whether an error answer says what went wrong in a machine-readable body: RFC 9457
/// `application/problem+json`, or the API's JSON envelope with an `error.code`.
fn described(content_type: &str, body: &[u8]) -> bool {
    if content_type.starts_with("application/problem+json") {
        return true;
    }
    content_type.starts_with("application/json")
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .is_some_and(|v| v.pointer("/error/code").is_some_and(|c| c.is_string()))
}

#[cfg(test)]
mod tests {
    use super::described;

    #[test]
    fn a_5xx_body_counts_as_described_only_when_machine_readable() {
        assert!(described("application/problem+json", b"{}"));
        assert!(described(
            "application/json",
            br#"{"data":null,"error":{"code":"DATABASE_UNAVAILABLE","message":"x"}}"#
        ));
        assert!(!described("application/json", br#"{"data":null}"#));
        assert!(!described("text/plain", b"Internal Server Error"));
        assert!(!described("", b""));
    }
}
