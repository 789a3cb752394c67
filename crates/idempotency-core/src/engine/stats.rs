//! Cheap counters for apps that expose them, and `metrics` names.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counter and histogram names emitted through the `metrics` facade (no-ops unless the
/// application installs a recorder).
pub mod names {
    /// Successful claims (the operation ran under protection).
    pub const CLAIMS: &str = "idempotency_claims_total";
    /// Replays of a stored outcome.
    pub const REPLAYS: &str = "idempotency_replays_total";
    /// Retries refused because the first attempt was still running.
    pub const IN_FLIGHT: &str = "idempotency_in_flight_conflicts_total";
    /// Retries refused because their fingerprint differed.
    pub const MISMATCHES: &str = "idempotency_fingerprint_mismatches_total";
    /// Outcomes stored.
    pub const COMPLETIONS: &str = "idempotency_completions_total";
    /// Claims released (failed operations).
    pub const RELEASES: &str = "idempotency_releases_total";
    /// Completions or releases refused because the lease was lost.
    pub const LEASE_LOST: &str = "idempotency_lease_lost_total";
    /// Store failures, labelled by `op`.
    pub const STORE_ERRORS: &str = "idempotency_store_errors_total";
    /// Operations run without protection under the fail-open policy.
    pub const FAIL_OPEN: &str = "idempotency_fail_open_total";
    /// Store operation latency in seconds, labelled by `op`.
    pub const STORE_LATENCY: &str = "idempotency_store_op_duration_seconds";
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) mismatches: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) fail_open: AtomicU64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            hits: load(&self.hits),
            misses: load(&self.misses),
            writes: load(&self.writes),
            in_flight: load(&self.in_flight),
            mismatches: load(&self.mismatches),
            store_errors: load(&self.store_errors),
            fail_open: load(&self.fail_open),
        }
    }
}

/// A point-in-time copy of one engine's counters (since it was built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Retries answered from a stored outcome.
    pub hits: u64,
    /// First attempts that claimed the key and ran.
    pub misses: u64,
    /// Outcomes stored.
    pub writes: u64,
    /// Retries refused as in flight.
    pub in_flight: u64,
    /// Retries refused for a different fingerprint.
    pub mismatches: u64,
    /// Store failures.
    pub store_errors: u64,
    /// Operations run unprotected under fail-open.
    pub fail_open: u64,
}

impl StatsSnapshot {
    /// `hits / (hits + misses)`, 0 when nothing was looked up.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}
