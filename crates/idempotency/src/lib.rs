//! # idempotency
//!
//! Make retried requests safe: a retried request (a double-clicked "Pay", a client retry after a
//! timeout, a re-invoked serverless function) runs its side effect **once**, and every retry gets
//! the first response back.
//!
//! This facade re-exports [`idempotency_core`] (the engine, keys, fingerprints, the store trait)
//! and, behind features, the stores.
//!
//! ```
//! use idempotency::{Fingerprint, Idempotency, IdempotencyKey, RunError, Scope};
//! use idempotency::memory::MemoryStore;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Idempotency::builder(MemoryStore::new()).build()?;
//! let key = IdempotencyKey::new("charge-order-17")?;
//! let charge = || async { Ok::<_, std::io::Error>(1999u64) }; // the side effect
//! let first: Result<u64, RunError<_, _>> = engine.run(&Scope::global(), &key, Fingerprint::of("order-17"), charge).await;
//! let retry: Result<u64, RunError<_, _>> = engine.run(&Scope::global(), &key, Fingerprint::of("order-17"), charge).await;
//! assert_eq!(first?, retry?); // the retry replayed; the charge ran once
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//! - `memory` (default): [`memory::MemoryStore`], the embedded store for development, tests and
//!   single-instance services.
//!
//! # Crates
//! | crate | what |
//! |---|---|
//! | `idempotency-core` | traits, record protocol, engine (no I/O) |
//! | `idempotency-memory` | embedded store |
//! | `idempotency-testkit` | behaviour suite every store passes |

#![deny(missing_docs)]

pub use idempotency_core::*;

/// The embedded in-memory store.
#[cfg(feature = "memory")]
pub mod memory {
    pub use idempotency_memory::{
        Clock, EVICTIONS_METRIC, ManualClock, MemoryStore, MemoryStoreBuilder, SystemClock,
    };
}
