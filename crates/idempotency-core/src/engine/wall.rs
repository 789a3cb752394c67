//! The wall clock of new claims (`created_at_ms`), derived from a monotonic reading the engine
//! makes anyway: the system's wall clock is read at most once per [`REFRESH`] instead of once
//! per claim (a clock read costs tens of nanoseconds on virtual machines: ~2 % of a fresh
//! operation on the memory store).
//!
//! Exactness: the derived time is the last wall-clock reading plus the monotonic time elapsed
//! since, in microseconds, then truncated to milliseconds as [`crate::unix_millis_now`] does.
//! It differs from a direct reading only by how far the two clocks drift apart within
//! [`REFRESH`] (NTP slews at most 500 ppm: 0.5 ms), and a wall clock that is stepped shows up
//! at the next refresh, within [`REFRESH`]. Records keep their millisecond timestamps, which
//! are informative (expiry is the store's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// How often the wall clock is read again.
pub(super) const REFRESH: Duration = Duration::from_secs(1);

/// Never read yet (the first derivation reads the wall clock).
const NEVER: u64 = u64::MAX;

/// The largest Unix time in microseconds taken as one (year ~294,000): a derived time above it
/// wrapped below 1970 (see [`WallClock::unix_millis_at`]).
const MAX_UNIX_US: u64 = i64::MAX as u64;

/// Unix milliseconds from monotonic readings; see the module docs.
#[derive(Debug)]
pub(super) struct WallClock {
    /// The monotonic origin the offsets are measured from.
    origin: Instant,
    /// Microseconds since `origin` of the last wall-clock reading ([`NEVER`] before the first).
    read_at_us: AtomicU64,
    /// Unix microseconds minus microseconds since `origin`, at the last reading, modulo 2^64
    /// (added back with wrapping arithmetic: exact whenever the result is a time after 1970).
    offset_us: AtomicU64,
}

impl WallClock {
    pub(super) fn new() -> Self {
        Self {
            origin: Instant::now(),
            read_at_us: AtomicU64::new(NEVER),
            offset_us: AtomicU64::new(0),
        }
    }

    /// Unix milliseconds at the monotonic time `now` (a reading the caller just made).
    ///
    /// Concurrent callers may each read the wall clock at a refresh; the offset and its
    /// reading time are two atomics, so a caller may pair one reading's offset with another's
    /// time: both are within [`REFRESH`] of each other, and the offsets differ only by drift
    /// (or by a step of the wall clock, which is then seen).
    pub(super) fn unix_millis_at(&self, now: Instant) -> u64 {
        // A reading before the origin: tokio's clock was ahead where this engine was built (a
        // paused runtime advanced, the engine then used from another runtime). Counted as the
        // origin, every such reading would derive the same time, and no refresh would ever be
        // due: read the wall clock instead.
        let Some(since) = now.checked_duration_since(self.origin) else {
            return crate::unix_millis_now();
        };
        let mono_us = micros(since);
        // Acquire, paired with the Release in `refresh`: whoever sees a reading's time sees its
        // offset or a later one (never the 0 from before the first reading).
        let read_at = self.read_at_us.load(Ordering::Acquire);
        if read_at == NEVER || mono_us.saturating_sub(read_at) >= micros(REFRESH) {
            return self.refresh(mono_us);
        }
        let unix_us = mono_us.wrapping_add(self.offset_us.load(Ordering::Relaxed));
        if unix_us > MAX_UNIX_US {
            // Wrapped below 1970: a reading made before the last refresh while the wall clock
            // was before the epoch (the offset is then "negative"). 0, as `unix_millis_now`.
            return 0;
        }
        unix_us / 1000
    }

    #[cold]
    fn refresh(&self, mono_us: u64) -> u64 {
        // The monotonic clock is read again beside the wall clock: the caller's reading may be
        // old (its thread preempted between the reading and here), and pairing it with a fresh
        // wall-clock reading would move every time derived until the next refresh ahead by
        // that delay. One more clock read per refresh (once a second at most).
        let fresh_us = micros(Instant::now().saturating_duration_since(self.origin)).max(mono_us);
        let unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, micros);
        self.offset_us
            .store(unix_us.wrapping_sub(fresh_us), Ordering::Relaxed);
        self.read_at_us.store(fresh_us, Ordering::Release);
        unix_us.saturating_sub(fresh_us - mono_us) / 1000
    }
}

/// Whole microseconds (u64 arithmetic, no 128-bit division), saturating below [`NEVER`].
fn micros(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()))
        .min(NEVER - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn derived_times_follow_the_monotonic_clock_and_refresh_each_second() {
        let clock = WallClock::new();
        let before = crate::unix_millis_now();
        let first = clock.unix_millis_at(Instant::now());
        let after = crate::unix_millis_now();
        assert!(
            before <= first && first <= after,
            "the first one is a reading"
        );
        // Within a refresh: the wall time at the reading plus the monotonic time since,
        // to the millisecond (the paused clock does not move by itself).
        tokio::time::advance(Duration::from_micros(250_700)).await;
        let later = clock.unix_millis_at(Instant::now());
        assert!((250..=251).contains(&(later - first)), "{}", later - first);
        tokio::time::advance(Duration::from_millis(700)).await;
        let still = clock.unix_millis_at(Instant::now());
        assert!((950..=951).contains(&(still - first)), "{}", still - first);
        // Past a refresh the wall clock is read again: the paused clock ran ahead of it, so
        // the answer comes back to the real wall time.
        tokio::time::advance(Duration::from_millis(300)).await;
        let refreshed = clock.unix_millis_at(Instant::now());
        let now = crate::unix_millis_now();
        assert!(
            refreshed <= now && now - refreshed < 1_000,
            "{refreshed} vs {now}"
        );
        assert_eq!(
            clock.read_at_us.load(Ordering::Relaxed),
            micros(Duration::from_micros(250_700 + 1_000_000))
        );
    }

    /// breaker10: a refresh made for an old reading (its thread preempted between the reading
    /// and the refresh) paired that reading with a fresh wall-clock reading, so every time
    /// derived until the next refresh ran ahead by the delay (here 500 ms).
    #[tokio::test(start_paused = true)]
    async fn breaker10_a_refresh_for_an_old_reading_does_not_move_later_times_ahead() {
        let clock = WallClock::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        let old = clock.origin + Duration::from_millis(4_500);
        let for_old = clock.unix_millis_at(old);
        let derived = clock.unix_millis_at(Instant::now());
        let direct = crate::unix_millis_now();
        assert!(
            derived.abs_diff(direct) <= 2,
            "derived {derived} vs direct {direct}"
        );
        assert!(
            (499..=501).contains(&(derived - for_old)),
            "{for_old} {derived}"
        );
    }

    /// breaker10: with the wall clock before the epoch (the offset "negative"), a reading made
    /// before the last refresh (another thread refreshed in between) wrapped to a time ~584,000
    /// years ahead instead of 1970.
    #[test]
    fn breaker10_an_older_reading_before_the_epoch_does_not_wrap() {
        let clock = WallClock::new();
        clock.read_at_us.store(5_000_000, Ordering::Relaxed);
        clock
            .offset_us
            .store(0u64.wrapping_sub(5_000_000), Ordering::Relaxed);
        let earlier = clock.origin + Duration::from_millis(4_000);
        assert_eq!(clock.unix_millis_at(earlier), 0);
    }

    #[test]
    fn a_wall_clock_before_the_epoch_is_not_a_panic() {
        // `refresh` answers 0 for a wall clock before 1970; the offset then wraps, and the
        // derivation adds it back without overflowing.
        let clock = WallClock::new();
        clock.read_at_us.store(5_000_000, Ordering::Relaxed);
        clock
            .offset_us
            .store(0u64.wrapping_sub(5_000_000), Ordering::Relaxed);
        let later = clock.origin + Duration::from_millis(5_400);
        assert_eq!(clock.unix_millis_at(later), 400);
        assert_eq!(micros(Duration::MAX), NEVER - 1);
    }
}
