//! The shared behaviour suite and model through the facade's `AnyStore` (over the memory store
//! with a manual clock): the enum dispatch must not change any behaviour of the store it holds.

#![cfg(feature = "memory")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use idempotency_testkit::async_trait;
use std::sync::Arc;
use std::time::Duration;

use idempotency::memory::{ManualClock, MemoryStore};
use idempotency::{AnyStore, DynIdempotencyStore};
use idempotency_testkit::{Capabilities, StoreHarness};

struct AnyStoreHarness {
    store: Arc<AnyStore>,
    clock: ManualClock,
    prefix: String,
}

#[async_trait]
impl StoreHarness for AnyStoreHarness {
    fn store(&self) -> Arc<dyn DynIdempotencyStore> {
        self.store.clone()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::EMBEDDED
    }
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
    fn short_lease(&self) -> Duration {
        Duration::from_secs(30)
    }
    fn key_prefix(&self) -> &str {
        &self.prefix
    }
}

async fn harness() -> AnyStoreHarness {
    let clock = ManualClock::new();
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    AnyStoreHarness {
        store: Arc::new(AnyStore::from(memory)),
        clock,
        prefix: idempotency_testkit::unique_prefix(),
    }
}

idempotency_testkit::behaviour_suite!(harness());
