//! Reporting a failure that repeats without flooding the log: the first, then one per interval.
//!
//! Used for the ACL set-up's retries ([`crate::server`]) and for requests refused because the
//! gateway's Redis ACL user was disabled or changed by someone else ([`crate::backend`]).

/// How often a setup that keeps failing is reported at `warn`: the first failure after the
/// start's own attempt, then once per [`SetupRetries::EVERY`] (the retries themselves run
/// every second at most, so a Redis that stays unreachable, or busy with a script, for hours
/// would otherwise be a line per second or, at `debug`, silent while every request gets 503).
#[derive(Debug)]
pub(crate) struct SetupRetries {
    /// Since when the setup has been failing.
    since: tokio::time::Instant,
    /// Failed attempts in the background so far.
    pub(crate) failed: u64,
    /// When a failure was last reported, if one was.
    reported: Option<tokio::time::Instant>,
}

/// A failure to report: attempts failed so far and time since the first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Report {
    /// Failures so far.
    pub(crate) failed: u64,
    /// Time since the first.
    pub(crate) waited: std::time::Duration,
}

impl SetupRetries {
    /// At most one `warn` per this interval.
    pub(crate) const EVERY: std::time::Duration = std::time::Duration::from_secs(30);

    pub(crate) fn new(since: tokio::time::Instant) -> Self {
        Self {
            since,
            failed: 0,
            reported: None,
        }
    }

    /// Count a failed attempt at `now`; `Some` when it is to be reported.
    pub(crate) fn failure(&mut self, now: tokio::time::Instant) -> Option<Report> {
        self.failed += 1;
        let due = self
            .reported
            .is_none_or(|last| now.saturating_duration_since(last) >= Self::EVERY);
        due.then(|| {
            self.reported = Some(now);
            Report {
                failed: self.failed,
                waited: now.saturating_duration_since(self.since),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Report, SetupRetries};

    /// A setup failing every second for two minutes is reported at its first failure, then once
    /// per 30 s with the count and the time waited; nothing in between.
    #[test]
    fn a_setup_failing_for_long_is_reported_first_then_every_30_s() {
        let start = Instant::now();
        let mut retries = SetupRetries::new(start);
        let mut reports = Vec::new();
        for second in 1..=120u64 {
            if let Some(report) = retries.failure(start + Duration::from_secs(second)) {
                reports.push(report);
            }
        }
        let expected: Vec<Report> = [1u64, 31, 61, 91]
            .into_iter()
            .map(|second| Report {
                failed: second,
                waited: Duration::from_secs(second),
            })
            .collect();
        assert_eq!(reports, expected);
        assert_eq!(retries.failed, 120);
    }

    /// Failures closer together than the interval (the first retries run every 50–800 ms) are
    /// one report.
    #[test]
    fn quick_retries_are_one_report() {
        let start = Instant::now();
        let mut retries = SetupRetries::new(start);
        let mut at = start;
        let mut reported = 0;
        for delay_ms in [50u64, 100, 200, 400, 800, 1000, 1000] {
            at += Duration::from_millis(delay_ms);
            reported += usize::from(retries.failure(at).is_some());
        }
        assert_eq!(reported, 1);
    }
}
