//! The shared behaviour suite and model, run against the memory store with a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use idempotency_testkit::async_trait;
use std::sync::Arc;
use std::time::Duration;

use idempotency_core::DynIdempotencyStore;
use idempotency_memory::{ManualClock, MemoryStore};
use idempotency_testkit::{Capabilities, StoreHarness};

struct MemoryHarness {
    store: MemoryStore,
    clock: ManualClock,
    prefix: String,
}

#[async_trait]
impl StoreHarness for MemoryHarness {
    fn store(&self) -> Arc<dyn DynIdempotencyStore> {
        Arc::new(self.store.clone())
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

async fn harness() -> MemoryHarness {
    let clock = ManualClock::new();
    MemoryHarness {
        store: MemoryStore::builder().clock(clock.clone()).build(),
        clock,
        prefix: idempotency_testkit::unique_prefix(),
    }
}

idempotency_testkit::behaviour_suite!(harness());

/// The same suite through the testkit's fault-injecting store, passing every call through: the
/// wrapper the fault tests rely on changes no behaviour.
mod through_the_fault_injecting_store {
    use idempotency_testkit::faults::FaultyHarness;

    idempotency_testkit::behaviour_suite!(async { FaultyHarness::new(super::harness().await) });
}
