//! The KV REST store (Upstash Redis REST API, formerly Vercel KV) against `kv-rest-gateway`, or
//! against the hosted service with the variables it gives you.
//!
//! ```sh
//! redis-server --port 6379 &
//! cargo run -p kv-rest-gateway -- --token dev-token &
//! KV_REST_API_URL=http://127.0.0.1:8079 KV_REST_API_TOKEN=dev-token \
//!   cargo run -p idempotency-examples --example rest_client
//! ```
//!
//! (`docker compose up redis kv-rest-gateway` starts the same two servers.) The store reads
//! `UPSTASH_REDIS_REST_URL` / `UPSTASH_REDIS_REST_TOKEN` first, then `KV_REST_API_URL` /
//! `KV_REST_API_TOKEN`, as the official clients do.

use idempotency::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, Scope, StoredOutcome,
};
use std::io::IsTerminal as _;

use idempotency::StoreError;
use idempotency_kv_rest::KvRestStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let store = KvRestStore::from_env()?;
    println!("KV REST endpoint: {}", store.config().url()); // the URL only; never the token
    let engine = Idempotency::builder(store).build()?;

    let scope = Scope::new("tenant-7");
    // A fresh key per run, so the example shows a first run and a replay every time.
    let key = IdempotencyKey::new(format!("example-{}", std::process::id()))?;
    let fingerprint = Fingerprint::builder()
        .part("POST")
        .part("/refunds")
        .part(r#"{"order":"o-9","cents":500}"#)
        .finish();

    for attempt in 1..=2 {
        match engine.begin(&scope, &key, fingerprint).await {
            Ok(Begin::Run(guard)) => {
                println!("attempt {attempt}: claimed; issuing the refund once");
                let receipt = r#"{"refund":"re_1","status":"issued"}"#;
                guard
                    .complete(StoredOutcome::new(receipt, Some("application/json".into())))
                    .await?;
            }
            Ok(Begin::Replay(outcome)) => println!(
                "attempt {attempt}: replayed {} (nothing ran)",
                String::from_utf8_lossy(&outcome.body)
            ),
            Err(IdempotencyError::StoreUnavailable(error)) => return Err(explain(&error).into()),
            Err(other) => return Err(other.into()),
        }
    }

    // Records expire by themselves (retention 24 h by default); delete this one now.
    engine.invalidate(&scope, &key).await?;
    println!("invalidated {key:?}");
    Ok(())
}

/// What went wrong, for the person running the example: an endpoint that does not answer
/// (connection refused, timeout) is told apart from one that answers and refuses (a wrong token
/// is `401 Unauthorized`: the gateway is running, the token is not its token).
fn explain(error: &StoreError) -> String {
    let mut causes = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        causes.push_str(": ");
        causes.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_transient() {
        format!("the KV REST endpoint is not answering ({causes}); is kv-rest-gateway running?")
    } else {
        format!(
            "the KV REST endpoint refused the request ({causes}); is the token \
             (KV_REST_API_TOKEN or UPSTASH_REDIS_REST_TOKEN) the endpoint's?"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_not_reported_as_an_endpoint_that_is_down() {
        let refused = StoreError::Backend {
            source: "KV REST API answered 401 Unauthorized".into(),
        };
        let text = explain(&refused);
        assert!(text.contains("refused the request"), "{text}");
        assert!(text.contains("401 Unauthorized"), "{text}");
        assert!(!text.contains("is kv-rest-gateway running"), "{text}");

        let down = StoreError::Unavailable {
            source: "connection refused".into(),
        };
        let text = explain(&down);
        assert!(text.contains("is kv-rest-gateway running?"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
    }
}
