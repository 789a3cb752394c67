//! What a backend provides to run the behaviour suite.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idempotency_core::{DynIdempotencyStore, StoreKey};

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

/// What a store under test can do, as one value (in the manner of opendal's `Capability`):
/// the suite adapts to it instead of asking one `bool` question per feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// How expiry time passes.
    pub time: TimeControl,
    /// Whether the store can hold values that are not records ([`StoreHarness::put_raw`]), so
    /// the suite can check that they are reported as corrupt. Embedded stores of typed records
    /// cannot; the suite then checks the codec instead.
    pub raw_values: bool,
}

impl Capabilities {
    /// A store behind a server: expiry on the server's clock, raw values writable. The default.
    pub const SERVER: Self = Self {
        time: TimeControl::Real,
        raw_values: true,
    };

    /// An embedded store of typed records on an injected clock (the memory store).
    pub const EMBEDDED: Self = Self {
        time: TimeControl::Manual,
        raw_values: false,
    };
}

impl Capabilities {
    /// These capabilities with [`raw_values`](Self::raw_values) set to `raw_values`.
    #[must_use]
    pub const fn with_raw_values(mut self, raw_values: bool) -> Self {
        self.raw_values = raw_values;
        self
    }

    /// These capabilities with expiry time passing as `time` says.
    #[must_use]
    pub const fn with_time(mut self, time: TimeControl) -> Self {
        self.time = time;
        self
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::SERVER
    }
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
/// One harness serves one test; build a fresh one (with its own key prefix) per test. The
/// defaults fit a store behind a server ([`Capabilities::SERVER`]: expiry measured by the
/// server, so [`advance`](Self::advance) sleeps and [`short_lease`](Self::short_lease) is
/// 300 ms); such a backend implements only [`store`](Self::store),
/// [`put_raw`](Self::put_raw) and [`key_prefix`](Self::key_prefix).
#[async_trait]
pub trait StoreHarness: Send + Sync + 'static {
    /// The store under test (the suite also runs it through `Arc<dyn …>` and `Box<dyn …>`).
    fn store(&self) -> Arc<dyn DynIdempotencyStore>;

    /// What the store can do (default: [`Capabilities::SERVER`]).
    fn capabilities(&self) -> Capabilities {
        Capabilities::SERVER
    }

    /// Let `by` pass for the store: move the injected clock, or (the default, for server-side
    /// expiry) sleep on tokio's clock.
    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }

    /// The lease to use in expiry tests: realistic (e.g. 30 s) for manual clocks, a few hundred
    /// milliseconds (the default, 300 ms) for server-side expiry.
    fn short_lease(&self) -> Duration {
        Duration::from_millis(300)
    }

    /// Write `value` under `key` bypassing the record codec, for corrupt-data tests. Called only
    /// when [`Capabilities::raw_values`] is true; the default panics, naming the mismatch.
    async fn put_raw(&self, key: &StoreKey, value: RawValue) {
        let _ = value;
        panic!(
            "the harness declares raw_values but does not implement put_raw (key {})",
            key.as_str()
        );
    }

    /// A prefix unique to this harness (e.g. a random hex string with a trailing `:`) so tests
    /// sharing a server never see each other's keys.
    fn key_prefix(&self) -> &str;
}
