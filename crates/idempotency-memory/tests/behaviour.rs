//! The shared behaviour suite and model, run against the memory store with a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use idempotency_core::{IdempotencyStore, StoreKey, async_trait};
use idempotency_memory::{ManualClock, MemoryStore};
use idempotency_testkit::{RawValue, StoreHarness, TimeControl};

struct MemoryHarness {
    store: MemoryStore,
    clock: ManualClock,
    prefix: String,
}

#[async_trait]
impl StoreHarness for MemoryHarness {
    fn store(&self) -> Arc<dyn IdempotencyStore> {
        Arc::new(self.store.clone())
    }
    fn time_control(&self) -> TimeControl {
        TimeControl::Manual
    }
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
    fn short_lease(&self) -> Duration {
        Duration::from_secs(30)
    }
    async fn put_raw(&self, _key: &StoreKey, _value: RawValue) -> bool {
        false
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
