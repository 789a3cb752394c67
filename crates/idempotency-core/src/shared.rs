//! Facts every crate of the workspace shares, stated once: the conversion of durations to the
//! milliseconds stores expire records by, the default `Retry-After`, the KV REST
//! environment variable names, when a debug span is worth building, and a deadline that
//! cannot overflow the clock.

use std::time::Duration;

use tokio::time::Instant;

/// About 30 years: where [`instant_after`] puts a time that does not fit the clock (tokio's
/// `sleep` does the same).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + after`, or about 30 years from `now` when the sum does not fit the monotonic clock
/// (`Instant + Duration` panics then). For deadlines built from a duration a user chose: the
/// engine's and the stores' builders take any duration, `Duration::MAX` ("no limit") too.
pub fn instant_after(now: Instant, after: Duration) -> Instant {
    now.checked_add(after).unwrap_or_else(|| now + FAR_FUTURE)
}

/// The `Retry-After` suggested when nothing better is known (1 s): for a retry refused while
/// the first attempt is in progress (the engine's default
/// [`in_progress_retry_after`](crate::IdempotencyBuilder::in_progress_retry_after)), and for an
/// unavailable store ([`IdempotencyError::retry_after`](crate::IdempotencyError::retry_after),
/// HTTP 503).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Environment variable pairs (URL, token) of the Upstash Redis REST API, in the order they
/// are read: the official Upstash names first, then the (deprecated) Vercel KV names, as the
/// official clients do. Read by `idempotency-kv-rest` and by the facade's store selection.
pub const KV_REST_ENV_PAIRS: [(&str, &str); 2] = [
    ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN"),
    ("KV_REST_API_URL", "KV_REST_API_TOKEN"),
];

/// `duration` as whole milliseconds for a store's expiry (`PX`, `PEXPIRE`, an expiry column):
/// rounded down, at least 1 (Redis refuses 0, and a zero lease would expire at once), and
/// saturating at `u64::MAX` instead of wrapping. Add it to a clock with `saturating_add`.
pub fn expiry_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Whether a debug-level span could reach anyone: a `tracing` dispatcher has been set (then its
/// filters decide), or `log` records at debug level can be emitted (a disabled span logs its
/// fields through `log` when tracing's `log` feature is on and no dispatcher exists). When
/// neither holds, such a span would be disabled and silent: the engine's `idempotency.begin`
/// and the HTTP layer's `idempotency.http` spans are then not built (building one costs ~150
/// instructions even disabled).
pub fn debug_spans_can_be_seen() -> bool {
    // `has_been_set` is what tracing's own macros use to elide trace points when tracing is not
    // in use; it never turns false again once a dispatcher was set.
    tracing::dispatcher::has_been_set() || log::max_level() >= log::LevelFilter::Debug
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_millis_is_never_zero_and_saturates() {
        assert_eq!(expiry_millis(Duration::ZERO), 1);
        assert_eq!(expiry_millis(Duration::from_micros(10)), 1);
        assert_eq!(expiry_millis(Duration::from_micros(2_999)), 2);
        assert_eq!(expiry_millis(Duration::from_secs(2)), 2_000);
        assert_eq!(expiry_millis(Duration::MAX), u64::MAX);
    }
}
