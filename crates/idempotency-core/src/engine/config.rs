//! Engine configuration and its builder.

use std::time::Duration;

use crate::{ConfigError, validate_prefix};

/// Environment variable that turns every check off when set to `true` (an emergency kill switch
/// for operators; logged loudly at start-up).
pub const DISABLE_ENV_VAR: &str = "DISABLE_IDEMPOTENCY_CHECKS";

/// What to do when the store fails or times out before an operation runs.
///
/// Whatever the policy, a store that is up but refuses writes
/// ([`StoreError::WriteRefused`](crate::StoreError::WriteRefused)) is first asked for the record
/// (one read): a completed record is replayed, an in-progress one answered "in progress", and
/// only an absent key reaches the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Refuse the operation with a retryable error (HTTP 503). The default: a duplicate side
    /// effect is usually worse than a refused request.
    #[default]
    FailClosed,
    /// Run the operation without protection, logging and counting every such pass. For
    /// operations where availability matters more than at-most-once.
    FailOpen,
    /// Claim in a per-process fallback store instead (given with
    /// [`IdempotencyBuilder::fallback_store`](crate::IdempotencyBuilder::fallback_store), usually an in-memory store), logged and counted
    /// (`idempotency_fallback_claims_total`). Between fail-closed and fail-open: a duplicate
    /// that reaches **the same process** during the outage still runs once and gets the replay.
    ///
    /// Limits: no protection across instances (a duplicate sent to another instance runs
    /// again); records written to the fallback are not copied back, so after the store recovers
    /// a retry of a key completed in the fallback runs again; and the fallback's own limits apply
    /// (a full fallback store refuses with the original error). If the fallback store fails
    /// too, the request is refused as under fail-closed.
    Fallback,
}

/// Bounded waiting for a key whose first attempt is still running, instead of answering
/// [`crate::IdempotencyError::InProgress`] at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InProgressWait {
    /// Give up and answer `InProgress` after this long.
    pub max_wait: Duration,
    /// How often to look again (each look is one store round trip) on stores that cannot
    /// notify ([`crate::IdempotencyStore::wait_for_change`] answers
    /// [`crate::Waited::Unsupported`]). Stores that notify wake the waiter instead and it
    /// re-reads once; the interval is then unused.
    pub poll_interval: Duration,
}

/// The engine's settings. Build one with [`crate::Idempotency::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) retention: Duration,
    pub(crate) lease: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) prefix: String,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) max_outcome_size: usize,
    pub(crate) compression_threshold: usize,
    pub(crate) disabled: bool,
    pub(crate) in_progress_wait: Option<InProgressWait>,
    pub(crate) in_progress_retry_after: Duration,
    pub(crate) renew_leases: bool,
    pub(crate) retry_after_from_lease: bool,
    pub(crate) completion_retry: Duration,
    pub(crate) background_releases: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(60),
            store_timeout: Duration::from_millis(1500),
            prefix: "idempotency:".to_owned(),
            failure_policy: FailurePolicy::FailClosed,
            max_outcome_size: 1024 * 1024,
            compression_threshold: 4 * 1024,
            disabled: false,
            in_progress_wait: None,
            in_progress_retry_after: crate::DEFAULT_RETRY_AFTER,
            renew_leases: true,
            retry_after_from_lease: true,
            completion_retry: Duration::from_secs(30),
            background_releases: 10_000,
        }
    }
}

impl Config {
    /// How long completed records are kept (default 24 h).
    pub fn retention(&self) -> Duration {
        self.retention
    }
    /// How long a claim holds a key before it lapses (default 60 s).
    pub fn lease(&self) -> Duration {
        self.lease
    }
    /// Time budget of one store operation (default 1.5 s).
    pub fn store_timeout(&self) -> Duration {
        self.store_timeout
    }
    /// Prefix of every store key (default `idempotency:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// Behaviour on store failure (default fail closed).
    pub fn failure_policy(&self) -> FailurePolicy {
        self.failure_policy
    }
    /// Largest outcome body stored, before compression (default 1 MiB).
    pub fn max_outcome_size(&self) -> usize {
        self.max_outcome_size
    }
    /// Bodies at least this large are compressed (default 4 KiB).
    pub fn compression_threshold(&self) -> usize {
        self.compression_threshold
    }
    /// Whether the kill switch is on.
    pub fn disabled(&self) -> bool {
        self.disabled
    }
    /// Waiting for an in-progress first attempt, if configured.
    pub fn in_progress_wait(&self) -> Option<InProgressWait> {
        self.in_progress_wait
    }
    /// The `Retry-After` suggested with an in-progress answer when the lease says nothing better
    /// (default 1 s); see [`crate::IdempotencyError::InProgress`].
    pub fn in_progress_retry_after(&self) -> Duration {
        self.in_progress_retry_after
    }
    /// Whether live guards renew their lease by themselves (default on), about every third of
    /// the lease.
    pub fn renew_leases(&self) -> bool {
        self.renew_leases
    }
    /// Whether an "in progress" answer asks the store for the remaining lease to derive
    /// `Retry-After` (default on; one more round trip on that path for Redis and KV REST).
    pub fn retry_after_from_lease(&self) -> bool {
        self.retry_after_from_lease
    }
    /// How long a completion keeps retrying through transient store failures (default 30 s;
    /// zero: no retries).
    pub fn completion_retry(&self) -> Duration {
        self.completion_retry
    }
    /// Most claims waiting to be released in the background (default 10 000).
    pub fn background_releases(&self) -> usize {
        self.background_releases
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("retention", self.retention),
            ("lease", self.lease),
            ("store_timeout", self.store_timeout),
        ];
        for (setting, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { setting });
            }
        }
        if let Some(wait) = self.in_progress_wait
            && wait.poll_interval.is_zero()
        {
            return Err(ConfigError::ZeroDuration {
                setting: "in_progress_wait.poll_interval",
            });
        }
        if self.retention < self.lease {
            return Err(ConfigError::RetentionShorterThanLease {
                retention: self.retention,
                lease: self.lease,
            });
        }
        validate_prefix(&self.prefix)?;
        Ok(())
    }
}

/// The kill switch as the process environment sets it: `Ok(false)` when the variable is unset.
///
/// # Errors
/// [`ConfigError::KillSwitchValue`] when it holds anything but an accepted spelling (or is not
/// UTF-8).
pub(crate) fn kill_switch_from_env() -> Result<bool, ConfigError> {
    match std::env::var(DISABLE_ENV_VAR) {
        Ok(value) => parse_kill_switch(&value),
        Err(std::env::VarError::NotPresent) => Ok(false),
        Err(std::env::VarError::NotUnicode(value)) => Err(ConfigError::KillSwitchValue {
            value: value.to_string_lossy().into_owned(),
        }),
    }
}

/// The spellings of `DISABLE_IDEMPOTENCY_CHECKS` that turn every check **off**.
const KILL_SWITCH_ON: [&str; 3] = ["true", "1", "yes"];
/// The spellings of `DISABLE_IDEMPOTENCY_CHECKS` that keep the checks **on** (as does leaving
/// it unset or empty).
const KILL_SWITCH_OFF: [&str; 3] = ["false", "0", "no"];

/// The accepted values of `DISABLE_IDEMPOTENCY_CHECKS`, as every refusal of another value
/// states them (see [`parse_kill_switch`]).
pub const KILL_SWITCH_ACCEPTED: &str = "use `true`, `1` or `yes` to turn every idempotency \
     check off, or `false`, `0`, `no` (or leave it unset or empty) to keep them on";

/// Read a value of `DISABLE_IDEMPOTENCY_CHECKS`: `true`, `1` or `yes` turn the checks off
/// (`Ok(true)`); `false`, `0`, `no` or an empty value keep them on (`Ok(false)`). Case and
/// surrounding whitespace are ignored.
///
/// Anything else is refused rather than read as "off": an operator who typed `flase`, `ture`,
/// `on` or `2` believes they switched something, and should learn at start-up that they did not
/// (the same rule as the other settings: a typo stops start-up, it is never silently replaced
/// by a default). `on`/`off` are deliberately not accepted: `DISABLE_…=off` reads both ways.
///
/// ```
/// use idempotency_core::parse_kill_switch;
/// assert_eq!(parse_kill_switch(" TRUE "), Ok(true));
/// assert_eq!(parse_kill_switch(""), Ok(false));
/// assert!(parse_kill_switch("flase").is_err());
/// ```
///
/// # Errors
/// [`ConfigError::KillSwitchValue`] for any other value; its message names the variable, the
/// value and the accepted spellings.
pub fn parse_kill_switch(value: &str) -> Result<bool, ConfigError> {
    let normalised = value.trim().to_ascii_lowercase();
    if KILL_SWITCH_ON.contains(&normalised.as_str()) {
        Ok(true)
    } else if normalised.is_empty() || KILL_SWITCH_OFF.contains(&normalised.as_str()) {
        Ok(false)
    } else {
        Err(ConfigError::KillSwitchValue {
            value: value.to_owned(),
        })
    }
}

/// How a value of `DISABLE_IDEMPOTENCY_CHECKS` is read: `true`, `1` or `yes` (any case, trimmed)
/// switch the checks off; anything else leaves them on.
#[deprecated(
    since = "0.1.0",
    note = "use `parse_kill_switch`, which reports unrecognised values instead of reading them \
            as \"checks on\""
)]
pub fn kill_switch_value(value: &str) -> bool {
    parse_kill_switch(value).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value an operator might type, and what it does.
    #[test]
    fn kill_switch_values_are_on_off_or_refused() {
        #[derive(Debug, PartialEq)]
        enum Reading {
            ChecksOff,
            ChecksOn,
            Refused,
        }
        use Reading::*;
        let table = [
            ("true", ChecksOff),
            ("TRUE", ChecksOff),
            ("True ", ChecksOff),
            (" 1", ChecksOff),
            ("yes", ChecksOff),
            ("\tYES\n", ChecksOff),
            ("", ChecksOn),
            ("   ", ChecksOn),
            ("false", ChecksOn),
            ("FALSE", ChecksOn),
            ("0", ChecksOn),
            ("no", ChecksOn),
            ("flase", Refused),
            ("ture", Refused),
            ("2", Refused),
            ("-1", Refused),
            ("on", Refused),
            ("off", Refused),
            ("y", Refused),
            ("n", Refused),
            ("enabled", Refused),
            ("disabled", Refused),
            ("true false", Refused),
            ("\"true\"", Refused),
            ("truee", Refused),
        ];
        for (value, expected) in table {
            let reading = match parse_kill_switch(value) {
                Ok(true) => ChecksOff,
                Ok(false) => ChecksOn,
                Err(ConfigError::KillSwitchValue { value: reported }) => {
                    assert_eq!(reported, value, "the error carries the value as given");
                    Refused
                }
                Err(other) => panic!("{value:?}: unexpected {other:?}"),
            };
            assert_eq!(reading, expected, "{value:?}");
        }
    }

    #[test]
    fn the_refusal_names_the_variable_the_value_and_the_accepted_spellings() {
        let message = parse_kill_switch("flase")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for needle in [DISABLE_ENV_VAR, "\"flase\"", "`true`", "`false`", "unset"] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
    }

    #[test]
    #[allow(deprecated)]
    fn the_old_lenient_reading_is_unchanged() {
        assert!(kill_switch_value("yes"));
        assert!(!kill_switch_value("flase"));
        assert!(!kill_switch_value("false"));
    }
}
