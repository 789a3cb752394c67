//! A job consumer on at-least-once delivery: the queue redelivers messages (after a consumer
//! crash, a visibility timeout, a rebalance), sometimes to two workers at once. Wrapping the
//! handler in [`Idempotency::run`] makes each charge happen once, and every redelivery gets the
//! first result back.
//!
//! ```sh
//! cargo run -p idempotency-examples --example job_consumer
//! ```
//!
//! The key is the message's business id (not the broker's delivery id, which changes on
//! redelivery); the fingerprint covers the payload, so a different payload under a reused id is
//! refused instead of silently answered with the old result.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency::memory::MemoryStore;
use idempotency::{Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, RunError, Scope};
use serde::{Deserialize, Serialize};

/// A message as it arrives from the queue.
#[derive(Clone, Debug)]
struct Message {
    /// The producer's id for this piece of work: stable across redeliveries.
    payment_id: String,
    tenant: String,
    cents: u64,
}

/// What the handler returns; stored as JSON and replayed to redeliveries.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Receipt {
    charge_id: String,
    cents: u64,
}

#[derive(Debug)]
struct CardDeclined;

impl std::fmt::Display for CardDeclined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("card declined")
    }
}

impl std::error::Error for CardDeclined {}

/// Handle one delivery. Returns the receipt (fresh or replayed).
async fn handle(
    engine: &Idempotency<MemoryStore>,
    charges: &AtomicUsize,
    message: &Message,
) -> Result<Receipt, RunError<CardDeclined, Receipt>> {
    // Scope per tenant: tenant A's payment id never replays tenant B's receipt.
    let scope = Scope::new(&message.tenant);
    let key = IdempotencyKey::new(&message.payment_id)
        .map_err(|e| RunError::Idempotency(IdempotencyError::InvalidKey(e)))?;
    let fingerprint = Fingerprint::builder()
        .part("charge")
        .part(message.cents.to_string())
        .finish();
    engine
        .run(&scope, &key, fingerprint, || async {
            // The side effect. Slow enough that concurrent duplicates overlap.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Receipt {
                charge_id: format!("ch_{n}"),
                cents: message.cents,
            })
        })
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let engine = Arc::new(Idempotency::builder(MemoryStore::new()).build()?);
    let charges = Arc::new(AtomicUsize::new(0));

    let message = Message {
        payment_id: "pay_2f9c".into(),
        tenant: "acme".into(),
        cents: 1999,
    };

    // 1. Delivered once, then redelivered after the consumer "crashed" before acking.
    let first = handle(&engine, &charges, &message).await?;
    let redelivered = handle(&engine, &charges, &message).await?;
    println!("first delivery  -> {first:?}");
    println!("redelivery      -> {redelivered:?} (replayed)");
    assert_eq!(first, redelivered);

    // 2. Two workers get the same new message at the same moment: one runs it, the other is
    //    told it is in progress and should not ack (the broker redelivers it later, and then it
    //    replays).
    let twin = Message {
        payment_id: "pay_77aa".into(),
        ..message.clone()
    };
    let (a, b) = tokio::join!(
        handle(&engine, &charges, &twin),
        handle(&engine, &charges, &twin)
    );
    for (worker, result) in [("worker A", a), ("worker B", b)] {
        match result {
            Ok(receipt) => println!("{worker}        -> {receipt:?}"),
            Err(RunError::Idempotency(IdempotencyError::InProgress { retry_after })) => {
                println!("{worker}        -> in progress; nack and retry in {retry_after:?}")
            }
            Err(other) => return Err(other.into()),
        }
    }

    // 3. Same tenant reuses the id with a different amount: refused, nothing runs.
    let reused = Message {
        cents: 5000,
        ..message.clone()
    };
    match handle(&engine, &charges, &reused).await {
        Err(RunError::Idempotency(IdempotencyError::FingerprintMismatch)) => {
            println!("reused id       -> refused: different payload under the same key")
        }
        other => println!("reused id       -> unexpected {other:?}"),
    }

    // 4. Another tenant with the same payment id is a different operation.
    let other_tenant = Message {
        tenant: "globex".into(),
        ..message
    };
    let receipt = handle(&engine, &charges, &other_tenant).await?;
    println!("other tenant    -> {receipt:?} (its own charge)");

    let total = charges.load(Ordering::SeqCst);
    println!("charges run: {total} (one per distinct payment, whatever the deliveries)");
    assert_eq!(total, 3);
    Ok(())
}
