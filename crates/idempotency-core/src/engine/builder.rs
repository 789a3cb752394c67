//! The engine's builder: settings, validation, and the engine it builds.

use std::time::Duration;

use super::config::{Config, FailurePolicy, InProgressWait, kill_switch_from_env};
use super::handle::Idempotency;
use crate::{ConfigError, IdempotencyStore};

/// Builder for [`crate::Idempotency`]; every setting has a production default.
#[derive(Debug)]
pub struct IdempotencyBuilder<S> {
    pub(crate) store: S,
    pub(crate) config: Config,
    pub(crate) read_env: bool,
    pub(crate) fallback: Option<std::sync::Arc<dyn crate::DynIdempotencyStore>>,
}

impl<S> IdempotencyBuilder<S> {
    /// How long completed outcomes are replayed (default 24 h).
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = retention;
        self
    }

    /// How long a claim holds the key before it lapses if its owner dies (default 60 s). While
    /// the owner lives its guard renews the lease by itself (see [`Self::renew_leases`]), so
    /// the lease bounds how long a **crashed** attempt blocks its key, not how long a live one
    /// may run.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Time budget for each store operation (default 1.5 s).
    #[must_use]
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.config.store_timeout = timeout;
        self
    }

    /// Prefix of every store key, to share a database between services (default
    /// `idempotency:`; 1..=64 visible ASCII bytes).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// Behaviour when the store fails before an operation runs (default fail closed).
    /// [`FailurePolicy::Fallback`] also needs [`Self::fallback_store`].
    #[must_use]
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.config.failure_policy = policy;
        self
    }

    /// The store claims go to while the main store fails, under [`FailurePolicy::Fallback`]
    /// (typically `idempotency_memory::MemoryStore`, one per process). Ignored under the other
    /// policies.
    #[must_use]
    pub fn fallback_store(mut self, store: impl crate::IdempotencyStore + 'static) -> Self {
        self.fallback = Some(std::sync::Arc::new(store));
        self
    }

    /// Renew the lease of every live guard about every third of the lease, until it completes,
    /// releases or is dropped (default on). Off, a claim lapses one lease after it was made (or
    /// last [extended](crate::Guard::extend)), even while its operation still runs.
    #[must_use]
    pub fn renew_leases(mut self, renew: bool) -> Self {
        self.config.renew_leases = renew;
        self
    }

    /// Derive the `Retry-After` of an "in progress" answer from the remaining lease (default
    /// on; see [`crate::IdempotencyError::InProgress`]). It costs one more store round trip on
    /// that path only (Redis / KV REST: `PTTL`; measured on a local Redis: the 409 path's p50
    /// from ~61 µs to ~129 µs; fresh claims and replays are unchanged). Off, the fixed
    /// [`Self::in_progress_retry_after`] is always used.
    #[must_use]
    pub fn retry_after_from_lease(mut self, enabled: bool) -> Self {
        self.config.retry_after_from_lease = enabled;
        self
    }

    /// How long [`Guard::complete`](crate::Guard::complete) keeps retrying through transient
    /// store failures (timeouts, connection trouble, writes refused), with backoff (50 ms
    /// doubling to 1 s), counted from the first failure, while the lease is kept alive (default
    /// 30 s; `Duration::ZERO` turns retries off). The caller waits
    /// meanwhile; past the bound it gets `StoreUnavailable` and the claim lapses after its lease.
    #[must_use]
    pub fn completion_retry(mut self, bound: Duration) -> Self {
        self.config.completion_retry = bound;
        self
    }

    /// Most claims waiting to be released in the background at once (claims whose outcome is
    /// unknown after a store failure, failed releases, dropped guards; default 10 000). Past it
    /// such claims lapse at the end of their lease instead (logged and counted).
    #[must_use]
    pub fn background_releases(mut self, max: usize) -> Self {
        self.config.background_releases = max;
        self
    }

    /// Largest outcome stored, in bytes before compression (default 1 MiB).
    #[must_use]
    pub fn max_outcome_size(mut self, bytes: usize) -> Self {
        self.config.max_outcome_size = bytes;
        self
    }

    /// Compress outcomes of at least this many bytes (default 4 KiB; `usize::MAX` disables).
    #[must_use]
    pub fn compression_threshold(mut self, bytes: usize) -> Self {
        self.config.compression_threshold = bytes;
        self
    }

    /// Turn every check off: operations always run. Also switched on by
    /// `DISABLE_IDEMPOTENCY_CHECKS=true` (or `1`, `yes`) unless [`Self::ignore_env`] is used;
    /// see [`parse_kill_switch`](crate::parse_kill_switch) for the accepted values.
    #[must_use]
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.config.disabled = disabled;
        self
    }

    /// Do not read `DISABLE_IDEMPOTENCY_CHECKS` (for tests and embedded uses).
    #[must_use]
    pub fn ignore_env(mut self) -> Self {
        self.read_env = false;
        self
    }

    /// Wait up to `max_wait` for an in-progress first attempt to finish before answering
    /// `InProgress` (default: answer at once). On a store that notifies (memory, Redis,
    /// Postgres), the waiter is woken by the completion or release and re-reads once; a lease
    /// that lapses (its owner is gone) ends the wait when it ends, and the waiter takes the key
    /// over; a safety re-read comes at the end of the wait. On other stores it looks every
    /// `poll_interval`.
    #[must_use]
    pub fn wait_for_in_progress(mut self, max_wait: Duration, poll_interval: Duration) -> Self {
        self.config.in_progress_wait = Some(InProgressWait {
            max_wait,
            poll_interval,
        });
        self
    }

    /// The `Retry-After` suggested with an in-progress answer when the first attempt is alive
    /// (default 1 s); see [`crate::IdempotencyError::InProgress`] for when the remaining lease is
    /// used instead.
    #[must_use]
    pub fn in_progress_retry_after(mut self, retry_after: Duration) -> Self {
        self.config.in_progress_retry_after = retry_after;
        self
    }
}

impl<S: IdempotencyStore + 'static> IdempotencyBuilder<S> {
    /// Validate the settings and build the engine. Logs a warning when the kill switch is on.
    ///
    /// # Errors
    /// [`ConfigError`] for zero durations, a retention shorter than the lease, a bad prefix,
    /// [`FailurePolicy::Fallback`] without a fallback store, or (unless [`Self::ignore_env`])
    /// a `DISABLE_IDEMPOTENCY_CHECKS` value that is not one of the accepted spellings
    /// ([`ConfigError::KillSwitchValue`]: a typo stops start-up, like a typo in any other
    /// setting, instead of leaving the operator believing the checks are off).
    pub fn build(mut self) -> Result<Idempotency<S>, ConfigError> {
        if self.read_env && kill_switch_from_env()? {
            self.config.disabled = true;
        }
        self.config.validate()?;
        if self.config.lease <= self.config.store_timeout {
            // Accepted (tests and paused clocks use short leases), but in production a claim
            // can lapse while its own renewal is still waiting on the store, and a duplicate
            // then runs.
            tracing::warn!(
                lease = ?self.config.lease,
                store_timeout = ?self.config.store_timeout,
                "the lease is not longer than the store timeout: a claim can lapse before its \
                 renewal answers, and a duplicate may then run; use a lease of several store \
                 timeouts (default 60 s)"
            );
        }
        if self.config.failure_policy == FailurePolicy::Fallback && self.fallback.is_none() {
            return Err(ConfigError::MissingFallbackStore);
        }
        Ok(Idempotency::assemble(
            self.store,
            self.fallback,
            self.config,
        ))
    }
}

impl<S: IdempotencyStore + 'static> Idempotency<S> {
    /// Start configuring an engine over `store`.
    pub fn builder(store: S) -> IdempotencyBuilder<S> {
        IdempotencyBuilder {
            store,
            config: Config::default(),
            read_env: true,
            fallback: None,
        }
    }
}
