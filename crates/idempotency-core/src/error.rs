//! The engine's errors.

use std::time::Duration;

use thiserror::Error;

use crate::{BoxError, CorruptRecord, KeyError, PrefixError, StoreError};

/// Why the engine did not run or record an operation. Match on the variant to choose a response:
///
/// | variant | HTTP answer | retry? |
/// |---|---|---|
/// | [`InvalidKey`](Self::InvalidKey) | 400 | no, fix the key |
/// | [`InProgress`](Self::InProgress) | 409 + `Retry-After` | yes, later |
/// | [`FingerprintMismatch`](Self::FingerprintMismatch) | 422 | no, use a new key |
/// | [`StoreUnavailable`](Self::StoreUnavailable) | 503 + `Retry-After` | yes |
/// | [`CorruptRecord`](Self::CorruptRecord) | 500 | no, an operator must look |
/// | [`LeaseLost`](Self::LeaseLost) | (after the fact) | the outcome was not recorded |
/// | [`OutcomeTooLarge`](Self::OutcomeTooLarge) | (after the fact) | the outcome was not recorded |
/// | [`TransactionConflict`](Self::TransactionConflict) | (after the fact) | roll back; a retry runs, but fix the transaction first |
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The client key is not acceptable.
    #[error("invalid idempotency key")]
    InvalidKey(#[from] KeyError),
    /// Another attempt with this key is running.
    ///
    /// `retry_after` comes from the remaining lease where the store can tell
    /// ([`IdempotencyStore::time_to_live`](crate::IdempotencyStore::time_to_live)): when the
    /// lease was refreshed within about half a renewal interval of its full length, its owner is
    /// alive and may finish any moment, so the configured fixed value (default 1 s) is
    /// suggested; when it has not been refreshed for longer (its owner crashed, or its claim
    /// was orphaned by a store outage) the key frees when the lease ends, so the remaining lease
    /// is suggested, clamped to 1 s..=lease. Stores that cannot tell give the fixed value.
    #[error("a request with this idempotency key is still in progress")]
    InProgress {
        /// When the caller should try again.
        retry_after: Duration,
    },
    /// The key was first used with a different request.
    #[error("this idempotency key was used with a different request")]
    FingerprintMismatch,
    /// The store failed or timed out (and the policy is fail closed, or the failure came after
    /// the operation ran).
    #[error("idempotency store unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The value under the key is not a readable record.
    #[error("idempotency record is corrupt")]
    CorruptRecord(#[source] CorruptRecord),
    /// The claim lapsed (lease expired, or the key was deleted or taken over) before the
    /// operation finished, so its outcome was not stored. Also answered by a completion after a
    /// lease renewal found the lease lost.
    #[error("the lease on this idempotency key was lost before completion")]
    LeaseLost,
    /// The outcome is larger than the configured maximum; the claim was released.
    #[error("outcome of {size} bytes exceeds the maximum stored size of {max} bytes")]
    OutcomeTooLarge {
        /// Size of the refused outcome.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The outcome could not be recorded inside the application's own transaction (a completion
    /// written by a backend in the caller's transaction, such as `idempotency_sql`'s
    /// `complete_in`) because of that transaction, while the claim is still this attempt's:
    /// the transaction cannot update the claim's record (its snapshot was taken before the
    /// claim or before a renewal of its lease, as at `REPEATABLE READ` / `SERIALIZABLE`), or it
    /// failed with a serialization failure or a deadlock.
    ///
    /// Roll the transaction back. The claim was given up (released in the background once the
    /// transaction lets go of the record), so a retry runs the operation at once; but a retry
    /// in the same kind of transaction usually fails the same way: `source` (the backend's
    /// typed error) says what to change.
    #[error(
        "the outcome cannot be recorded in this transaction; roll it back (the claim was released)"
    )]
    TransactionConflict {
        /// What the backend found, and what to change.
        #[source]
        source: BoxError,
    },
}

impl IdempotencyError {
    /// Whether the same request may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::InProgress { .. } => true,
            Self::StoreUnavailable(e) => {
                e.is_transient() || matches!(e, StoreError::Backend { .. })
            }
            _ => false,
        }
    }

    /// When a client should retry, for errors where retrying makes sense.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::InProgress { retry_after } => Some(*retry_after),
            Self::StoreUnavailable(_) => Some(crate::DEFAULT_RETRY_AFTER),
            _ => None,
        }
    }
}

impl From<StoreError> for IdempotencyError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Corrupt(c) => Self::CorruptRecord(c),
            other => Self::StoreUnavailable(other),
        }
    }
}

/// An engine configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration that must be positive was zero.
    #[error("`{setting}` must be greater than zero")]
    ZeroDuration {
        /// The setting's name.
        setting: &'static str,
    },
    /// The retention is shorter than the lease, so a completed record would vanish before an
    /// in-progress claim could have lapsed.
    #[error("retention ({retention:?}) must not be shorter than the lease ({lease:?})")]
    RetentionShorterThanLease {
        /// Configured retention.
        retention: Duration,
        /// Configured lease.
        lease: Duration,
    },
    /// The key prefix is not acceptable.
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    /// [`FailurePolicy::Fallback`](crate::FailurePolicy::Fallback) was chosen without a
    /// fallback store ([`IdempotencyBuilder::fallback_store`](crate::IdempotencyBuilder::fallback_store)).
    #[error("the fallback failure policy needs a fallback store")]
    MissingFallbackStore,
    /// `DISABLE_IDEMPOTENCY_CHECKS` holds a value that is neither an "off" nor an "on"
    /// spelling (see [`parse_kill_switch`](crate::parse_kill_switch)). Refused rather than read
    /// as "checks on", so that a typo is noticed at start-up.
    #[error(
        "{variable}={value:?} is not recognised: {accepted}",
        variable = crate::DISABLE_ENV_VAR,
        accepted = crate::KILL_SWITCH_ACCEPTED
    )]
    KillSwitchValue {
        /// The value as found in the environment (it never carries a secret).
        value: String,
    },
}

/// `error` and its causes on one line, `outer: cause: cause`, for logs and command-line
/// messages that must say *why* (connection refused, a name that does not resolve, a refused
/// password), not only *what*. A cause whose text the message so far already holds is not
/// repeated (some errors print their source in their own message).
///
/// ```
/// use idempotency_core::{StoreError, error_chain};
///
/// let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// let error = StoreError::Unavailable { source: Box::new(refused) };
/// assert_eq!(error_chain(&error), "store unreachable: connection refused");
/// ```
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    /// Each cause once, in order; a cause the outer message already prints is not repeated.
    #[test]
    fn the_chain_keeps_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("store unreachable")]
        struct Outer(#[source] Middle);
        #[derive(Debug, thiserror::Error)]
        #[error("connecting to 127.0.0.1:6379: {0}")]
        struct Middle(#[source] std::io::Error);
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        assert_eq!(
            error_chain(&Outer(Middle(refused))),
            "store unreachable: connecting to 127.0.0.1:6379: Connection refused (os error 111)"
        );
    }
}
