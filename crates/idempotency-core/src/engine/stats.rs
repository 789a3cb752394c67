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
    pub const IN_PROGRESS: &str = "idempotency_in_progress_conflicts_total";
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
    /// Lease renewals of live guards, labelled by `result`: `applied`, `lease_lost` (the guard
    /// learns it; its completion answers `LeaseLost`), `failed` (store error; retried sooner).
    pub const RENEWALS: &str = "idempotency_lease_renewals_total";
    /// Background releases of claims whose outcome is unknown, failed releases and dropped
    /// guards, labelled by `result`: `released`, `absent` (nothing of ours was left), `retry`,
    /// `abandoned` (the lease ended first, or the data is corrupt), `dropped` (queue full).
    pub const BACKGROUND_RELEASES: &str = "idempotency_background_releases_total";
    /// Completions that met a transient store failure, labelled by `result`: `retry` (one per
    /// retried attempt), `recovered` (stored after retrying), `exhausted` (the bound ran out; not
    /// stored).
    pub const COMPLETION_RETRIES: &str = "idempotency_completion_retries_total";
    /// Operations claimed in the fallback store under the fallback policy.
    pub const FALLBACK: &str = "idempotency_fallback_claims_total";
    /// Claims refused because the store refuses writes (out of memory, read-only replica),
    /// labelled by `result`: `replayed`, `in_progress`, `mismatch` (answered from one read),
    /// `policy` (nothing to answer from: the failure policy applied).
    pub const WRITE_REFUSED: &str = "idempotency_write_refused_total";
    /// Waits of duplicates on a store that notifies, labelled by `result`: `changed` (woken by
    /// a completion, release or delete, or at the end of the lease the waiter found: lapsed,
    /// or extended by a first attempt that renews it, which counts one per lease period) or
    /// `timed_out` (the safety re-read followed).
    pub const WAKE_UPS: &str = "idempotency_in_progress_wake_ups_total";
    /// Store operation latency in seconds, labelled by `op`.
    pub const STORE_LATENCY: &str = "idempotency_store_op_duration_seconds";
}

/// The metric keys of the request path, built at compile time: what `metrics::counter!` and
/// `metrics::histogram!` build on every call when the name or a label is not a literal (a
/// label vector and a hash of the key, ~10 % of a replay's client-side instructions on Redis
/// before; `cargo xtask instructions`).
mod keys {
    use metrics::{Key, Label, Metadata};

    use crate::StoreOperation;
    use crate::engine::stats::names;

    /// What the macros register with (`target` and module of the engine).
    pub(super) static METADATA: Metadata<'static> =
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

    pub(super) static REPLAYS: Key = Key::from_static_name(names::REPLAYS);
    pub(super) static CLAIMS: Key = Key::from_static_name(names::CLAIMS);
    pub(super) static COMPLETIONS: Key = Key::from_static_name(names::COMPLETIONS);
    pub(super) static IN_PROGRESS: Key = Key::from_static_name(names::IN_PROGRESS);
    pub(super) static MISMATCHES: Key = Key::from_static_name(names::MISMATCHES);
    pub(super) static FAIL_OPEN: Key = Key::from_static_name(names::FAIL_OPEN);
    pub(super) static FALLBACK: Key = Key::from_static_name(names::FALLBACK);
    pub(super) static LEASE_LOST: Key = Key::from_static_name(names::LEASE_LOST);

    /// `names::STORE_LATENCY` with `op` = every [`StoreOperation`], in one static each.
    macro_rules! latency_keys {
        ($($op:ident => $label:literal),* $(,)?) => {
            pub(super) fn store_latency(operation: StoreOperation) -> &'static Key {
                match operation {
                    $(StoreOperation::$op => {
                        static LABELS: [Label; 1] = [Label::from_static_parts("op", $label)];
                        static KEY: Key = Key::from_static_parts(names::STORE_LATENCY, &LABELS);
                        &KEY
                    })*
                }
            }
        };
    }

    latency_keys! {
        TryClaim => "try_claim",
        Complete => "complete",
        Release => "release",
        Extend => "extend",
        Get => "get",
        Delete => "delete",
        TimeToLive => "time_to_live",
        WaitForChange => "wait_for_change",
        Connect => "connect",
        Inspect => "inspect",
        Purge => "purge",
    }
}

/// Add one to the counter `key` (a no-op without a recorder).
fn increment(key: &'static metrics::Key) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &keys::METADATA).increment(1));
}

/// Record one store call's latency, in seconds, in `names::STORE_LATENCY{op}`.
pub(crate) fn record_store_latency(operation: crate::StoreOperation, seconds: f64) {
    let key = keys::store_latency(operation);
    metrics::with_recorder(|recorder| {
        recorder
            .register_histogram(key, &keys::METADATA)
            .record(seconds)
    });
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) replays: AtomicU64,
    pub(crate) claims: AtomicU64,
    pub(crate) completions: AtomicU64,
    pub(crate) in_progress: AtomicU64,
    pub(crate) mismatches: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) fail_open: AtomicU64,
    pub(crate) fallback_claims: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) background_releases: AtomicU64,
    pub(crate) completion_retries: AtomicU64,
}

/// An engine event counted both in [`StatsSnapshot`] and by the `metrics` facade: recorded
/// with one [`Stats::record`] call, so the two can never count different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Replay,
    Claim,
    Completion,
    InProgress,
    Mismatch,
    FailOpen,
    FallbackClaim,
    LeaseLost,
    StoreError(crate::StoreOperation),
    /// One retried completion attempt.
    CompletionRetry,
    /// A claim handed to the background releaser.
    BackgroundRelease,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Count `event` in the snapshot and in the metric of the same name.
    pub(crate) fn record(&self, event: Event) {
        let (counter, metric) = match event {
            Event::Replay => (&self.replays, Some(&keys::REPLAYS)),
            Event::Claim => (&self.claims, Some(&keys::CLAIMS)),
            Event::Completion => (&self.completions, Some(&keys::COMPLETIONS)),
            Event::InProgress => (&self.in_progress, Some(&keys::IN_PROGRESS)),
            Event::Mismatch => (&self.mismatches, Some(&keys::MISMATCHES)),
            Event::FailOpen => (&self.fail_open, Some(&keys::FAIL_OPEN)),
            Event::FallbackClaim => (&self.fallback_claims, Some(&keys::FALLBACK)),
            Event::LeaseLost => (&self.lease_lost, Some(&keys::LEASE_LOST)),
            Event::StoreError(operation) => {
                metrics::counter!(names::STORE_ERRORS, "op" => operation.as_str()).increment(1);
                (&self.store_errors, None)
            }
            Event::CompletionRetry => {
                metrics::counter!(names::COMPLETION_RETRIES, "result" => "retry").increment(1);
                (&self.completion_retries, None)
            }
            // Its metric is labelled by how the release ended, recorded when it does.
            Event::BackgroundRelease => (&self.background_releases, None),
        };
        Self::bump(counter);
        if let Some(metric) = metric {
            increment(metric);
        }
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            replays: load(&self.replays),
            claims: load(&self.claims),
            completions: load(&self.completions),
            in_progress: load(&self.in_progress),
            mismatches: load(&self.mismatches),
            store_errors: load(&self.store_errors),
            fail_open: load(&self.fail_open),
            fallback_claims: load(&self.fallback_claims),
            lease_lost: load(&self.lease_lost),
            background_releases: load(&self.background_releases),
            completion_retries: load(&self.completion_retries),
        }
    }
}

/// A point-in-time copy of one engine's counters (since it was built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Retries answered from a stored outcome ([`names::REPLAYS`]).
    pub replays: u64,
    /// First attempts that claimed the key and ran ([`names::CLAIMS`]).
    pub claims: u64,
    /// Outcomes stored ([`names::COMPLETIONS`]).
    pub completions: u64,
    /// Retries refused because the first attempt was still in progress ([`names::IN_PROGRESS`]).
    pub in_progress: u64,
    /// Retries refused for a different fingerprint ([`names::MISMATCHES`]).
    pub mismatches: u64,
    /// Store failures ([`names::STORE_ERRORS`]).
    pub store_errors: u64,
    /// Operations run unprotected under fail-open ([`names::FAIL_OPEN`]).
    pub fail_open: u64,
    /// Operations claimed in the fallback store ([`names::FALLBACK`]).
    pub fallback_claims: u64,
    /// Completions, releases, extensions and renewals that found the lease lost
    /// ([`names::LEASE_LOST`]).
    pub lease_lost: u64,
    /// Claims released in the background (orphaned claims, failed releases, dropped guards).
    pub background_releases: u64,
    /// Completion attempts retried after a transient store failure.
    pub completion_retries: u64,
}

impl StatsSnapshot {
    /// `replays / (replays + claims)`, 0 when nothing was looked up.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.replays + self.claims;
        if lookups == 0 {
            0.0
        } else {
            self.replays as f64 / lookups as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOperation;

    #[test]
    fn static_latency_keys_carry_the_operation_label() {
        for operation in [
            StoreOperation::TryClaim,
            StoreOperation::Complete,
            StoreOperation::Release,
            StoreOperation::Extend,
            StoreOperation::Get,
            StoreOperation::Delete,
            StoreOperation::TimeToLive,
            StoreOperation::WaitForChange,
            StoreOperation::Connect,
            StoreOperation::Inspect,
            StoreOperation::Purge,
        ] {
            let key = keys::store_latency(operation);
            assert_eq!(key.name(), names::STORE_LATENCY);
            let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
            assert_eq!(labels, [("op", operation.as_str())]);
            // The same key the macro builds at run time (same hash: a recorder sees one metric).
            let dynamic = metrics::Key::from_parts(
                names::STORE_LATENCY,
                vec![metrics::Label::new("op", operation.as_str())],
            );
            assert_eq!(*key, dynamic);
            assert_eq!(key.get_hash(), dynamic.get_hash());
        }
        assert_eq!(keys::CLAIMS, metrics::Key::from_name(names::CLAIMS));
    }
}
