//! A tour of the engine on the embedded memory store: a claim, a replay, a payload mismatch and
//! an in-progress conflict.
//!
//! Run with `cargo run --example run_once -p idempotency`.

use std::time::Duration;

use idempotency::memory::MemoryStore;
use idempotency::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, Scope, StoredOutcome,
};

fn payment_fingerprint(body: &str) -> Fingerprint {
    Fingerprint::builder()
        .part("POST")
        .part("/payments")
        .part("application/json")
        .part(body)
        .finish()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let engine = Idempotency::builder(MemoryStore::new())
        .lease(Duration::from_secs(30))
        .build()?;
    let customer = Scope::new("customer-42");
    let key = IdempotencyKey::new("8e03978e-40d5-43e8-bc93-6894a57f9324")?;
    let body = r#"{"amount":1999,"currency":"EUR"}"#;

    println!("1. first request  -> claims the key and runs the payment");
    match engine
        .begin(&customer, &key, payment_fingerprint(body))
        .await?
    {
        Begin::Run(guard) => {
            let receipt = r#"{"payment":"pay_001","status":"captured"}"#;
            println!("   side effect ran; storing {receipt}");
            guard
                .complete(StoredOutcome::new(receipt, Some("application/json".into())))
                .await?;
        }
        Begin::Replay(_) => unreachable!("nothing stored yet"),
    }

    println!("2. client retries -> gets the stored response, nothing runs");
    match engine
        .begin(&customer, &key, payment_fingerprint(body))
        .await?
    {
        Begin::Replay(outcome) => {
            println!("   replayed {}", String::from_utf8_lossy(&outcome.body))
        }
        Begin::Run(_) => unreachable!("the payment already ran"),
    }

    println!("3. same key, different amount -> refused (HTTP 422)");
    match engine
        .begin(
            &customer,
            &key,
            payment_fingerprint(r#"{"amount":5000,"currency":"EUR"}"#),
        )
        .await
    {
        Err(IdempotencyError::FingerprintMismatch) => {
            println!("   refused: {}", IdempotencyError::FingerprintMismatch)
        }
        other => unreachable!("expected a mismatch, got {other:?}"),
    }

    println!(
        "4. a retry while the first attempt still runs -> in progress (HTTP 409 + Retry-After)"
    );
    let slow_key = IdempotencyKey::new("slow-refund-1")?;
    let Begin::Run(slow) = engine
        .begin(&customer, &slow_key, payment_fingerprint("refund"))
        .await?
    else {
        unreachable!("first attempt")
    };
    match engine
        .begin(&customer, &slow_key, payment_fingerprint("refund"))
        .await
    {
        Err(IdempotencyError::InProgress { retry_after }) => {
            println!("   refused: in progress, retry after {retry_after:?}")
        }
        other => unreachable!("expected in-progress, got {other:?}"),
    }
    slow.complete(StoredOutcome::new("refunded", None)).await?;

    println!("5. another customer may use the same key -> runs independently");
    let other = Scope::new("customer-7");
    if let Begin::Run(guard) = engine
        .begin(&other, &key, payment_fingerprint(body))
        .await?
    {
        println!("   ran for customer-7 (scopes never share records)");
        guard.release().await?;
    }

    let stats = engine.stats();
    println!(
        "\nstats: {} runs, {} replays, {} in progress, {} mismatches, hit rate {:.0}%",
        stats.claims,
        stats.replays,
        stats.in_progress,
        stats.mismatches,
        stats.hit_rate() * 100.0
    );
    Ok(())
}
