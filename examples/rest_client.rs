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
use idempotency_kv_rest::KvRestStore;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
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
            Err(IdempotencyError::StoreUnavailable(error)) => {
                return Err(format!(
                    "the KV REST endpoint is not answering ({error}); is kv-rest-gateway running?"
                )
                .into());
            }
            Err(other) => return Err(other.into()),
        }
    }

    // Records expire by themselves (retention 24 h by default); delete this one now.
    engine.invalidate(&scope, &key).await?;
    println!("invalidated {key:?}");
    Ok(())
}
