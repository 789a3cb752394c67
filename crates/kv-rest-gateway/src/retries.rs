//! Reporting a failure that repeats without flooding the log: the first, then one per interval
//! (`idempotency_core::RepeatedFailure`, 30 s).
//!
//! Used for the ACL set-up's retries ([`crate::server`]: the retries run every second at most,
//! so a Redis that stays unreachable, or busy with a script, for hours would otherwise be a line
//! per second or, at `debug`, silent while every request gets 503) and for requests refused
//! because the gateway's Redis ACL user was disabled or changed by someone else
//! ([`crate::backend`]).

pub(crate) use idempotency_core::{FailureReport as Report, RepeatedFailure as SetupRetries};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::SetupRetries;

    /// Failures closer together than the interval (the set-up's first retries run every
    /// 50–800 ms) are one report.
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
