//! What a backend provides to run the behaviour suite.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idempotency_core::{IdempotencyStore, StoreKey};

/// How expiry time passes for a store under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeControl {
    /// The store reads an injected clock; [`StoreHarness::advance`] moves it instantly, so expiry
    /// tests can use realistic leases without sleeping.
    Manual,
    /// Expiry lives on a server (Redis `PX`); `advance` sleeps for real, so expiry tests use
    /// [`StoreHarness::short_lease`] and the proptest model does not advance time.
    Real,
}

/// Something that is not a record, to write under a record key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawValue {
    /// A string value with these bytes.
    String(Vec<u8>),
    /// A value of another type (a Redis hash), so reads fail with a type error.
    Hash,
}

/// A backend's entry into the behaviour suite: the store plus the few controls the suite needs.
///
/// One harness serves one test; build a fresh one (with its own key prefix) per test.
#[async_trait]
pub trait StoreHarness: Send + Sync + 'static {
    /// The store under test (the suite also runs it through `Arc<dyn …>` and `Box<dyn …>`).
    fn store(&self) -> Arc<dyn IdempotencyStore>;

    /// How time passes for this store.
    fn time_control(&self) -> TimeControl;

    /// Let `by` pass for the store (move the clock, or sleep).
    async fn advance(&self, by: Duration);

    /// The lease to use in expiry tests: realistic (e.g. 30 s) for manual clocks, a few hundred
    /// milliseconds for server-side expiry.
    fn short_lease(&self) -> Duration;

    /// Write `value` under `key` bypassing the record codec, for corrupt-data tests. Return
    /// `false` when the store holds typed records and cannot hold anything else (an embedded
    /// store); the suite then checks the codec instead.
    async fn put_raw(&self, key: &StoreKey, value: RawValue) -> bool;

    /// A prefix unique to this harness (e.g. a random hex string with a trailing `:`) so tests
    /// sharing a server never see each other's keys.
    fn key_prefix(&self) -> &str;
}
