//! Reporting a failure that repeats (a store or server that stays unreachable while something
//! retries it every second) without flooding the log: the first failure, then at most one report
//! per [`RepeatedFailure::EVERY`], each with the failures so far and the time since the first.

use std::time::Duration;

use tokio::time::Instant;

/// Counts the failures of something retried in the background and says when one is to be
/// reported: the first, then at most one per [`RepeatedFailure::EVERY`] (30 s). Time is passed
/// in (`now`), so the schedule is tested with any clock.
///
/// ```
/// use std::time::Duration;
/// use idempotency_core::{FailureReport, RepeatedFailure};
/// use tokio::time::Instant;
///
/// let start = Instant::now();
/// let mut failures = RepeatedFailure::new(start);
/// let reported: Vec<u64> = (1..=120u64)
///     .filter_map(|s| failures.failure(start + Duration::from_secs(s)))
///     .map(|report: FailureReport| report.failed)
///     .collect();
/// assert_eq!(reported, [1, 31, 61, 91]);
/// ```
#[derive(Debug)]
pub struct RepeatedFailure {
    /// Since when it has been failing.
    since: Instant,
    /// Failures so far.
    failed: u64,
    /// When a failure was last reported, if one was.
    reported: Option<Instant>,
}

/// A failure to report ([`RepeatedFailure::failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureReport {
    /// Failures so far, this one included.
    pub failed: u64,
    /// Time since the first failure's count started ([`RepeatedFailure::new`]'s `since`).
    pub waited: Duration,
}

impl RepeatedFailure {
    /// At most one report per this interval (30 s).
    pub const EVERY: Duration = Duration::from_secs(30);

    /// No failure yet; `since` is when the trouble started (the `waited` of each report counts
    /// from it).
    pub fn new(since: Instant) -> Self {
        Self {
            since,
            failed: 0,
            reported: None,
        }
    }

    /// Count a failure at `now`; `Some` when it is to be reported (the first, then the first
    /// one at least [`Self::EVERY`] after the last report).
    pub fn failure(&mut self, now: Instant) -> Option<FailureReport> {
        self.failed += 1;
        let due = self
            .reported
            .is_none_or(|last| now.saturating_duration_since(last) >= Self::EVERY);
        due.then(|| {
            self.reported = Some(now);
            FailureReport {
                failed: self.failed,
                waited: now.saturating_duration_since(self.since),
            }
        })
    }

    /// Failures counted so far.
    pub fn failed(&self) -> u64 {
        self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failing every second for two minutes: reported at the first failure, then once per 30 s
    /// with the count and the time waited; nothing in between. A failure long after a report is
    /// reported at once.
    #[test]
    fn reported_first_then_every_30_s() {
        let start = Instant::now();
        let mut failures = RepeatedFailure::new(start);
        let reports: Vec<FailureReport> = (1..=120u64)
            .filter_map(|second| failures.failure(start + Duration::from_secs(second)))
            .collect();
        let expected: Vec<FailureReport> = [1u64, 31, 61, 91]
            .into_iter()
            .map(|second| FailureReport {
                failed: second,
                waited: Duration::from_secs(second),
            })
            .collect();
        assert_eq!(reports, expected);
        assert_eq!(failures.failed(), 120);
        let late = failures.failure(start + Duration::from_secs(1000));
        assert_eq!(
            late,
            Some(FailureReport {
                failed: 121,
                waited: Duration::from_secs(1000)
            })
        );
    }
}
