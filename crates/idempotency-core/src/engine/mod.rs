//! The engine: runs an operation at most once per `(scope, key)` on any store.

mod config;
mod external;
mod guard;
mod run;
mod stats;

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tracing::Instrument as _;

pub use config::{
    Config, DISABLE_ENV_VAR, FailurePolicy, IdempotencyBuilder, InFlightWait, kill_switch_value,
};
pub use external::{CompletionParts, PendingCompletion};
pub use guard::{Guard, Unprotected};
pub use run::{RUN_CONTENT_TYPE, RunError};
pub use stats::{StatsSnapshot, names as metric_names};

use crate::{
    Claim, ConfigError, Fingerprint, IdempotencyError, IdempotencyKey, IdempotencyStore,
    InProgress, LeaseToken, Record, Scope, StoreError, StoreKey, StoredOutcome, unix_millis_now,
};
use stats::{Stats, names};

/// What [`Idempotency::begin`] decided.
#[derive(Debug)]
#[must_use = "a Run guard must be completed or released"]
pub enum Begin<S: IdempotencyStore + 'static> {
    /// Run the operation, then call [`Guard::complete`] (or [`Guard::release`] on a failure a
    /// retry should repeat).
    Run(Guard<S>),
    /// A previous attempt completed: answer with its outcome (identity-encoded).
    Replay(StoredOutcome),
}

/// Runs operations at most once per `(scope, key)` during the retention window, replaying the
/// first outcome to every retry.
///
/// Cheap to clone (an `Arc`); share one per store. See the crate docs for an example.
#[derive(Debug)]
pub struct Idempotency<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct Inner<S> {
    store: S,
    config: Config,
    stats: Stats,
}

impl<S: IdempotencyStore + 'static> Idempotency<S> {
    /// Start configuring an engine over `store`.
    pub fn builder(store: S) -> IdempotencyBuilder<S> {
        IdempotencyBuilder {
            store,
            config: Config::default(),
            read_env: true,
        }
    }

    /// An engine with every default.
    ///
    /// # Errors
    /// Only if `DISABLE_IDEMPOTENCY_CHECKS` handling or defaults were invalid (they are not).
    pub fn new(store: S) -> Result<Self, ConfigError> {
        Self::builder(store).build()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Counters since the engine was built.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// The store key for `(scope, key)` under this engine's prefix.
    pub fn store_key(&self, scope: &Scope, key: &IdempotencyKey) -> StoreKey {
        StoreKey::derive(&self.inner.config.prefix, scope, key)
    }

    /// Claim `(scope, key)` for a request with `fingerprint`, or find what happened before.
    ///
    /// One store round trip in the common cases (a first attempt, a replay).
    ///
    /// # Errors
    /// - [`IdempotencyError::InFlight`]: the first attempt is still running (after waiting, if
    ///   configured);
    /// - [`IdempotencyError::FingerprintMismatch`]: the key was used for another request;
    /// - [`IdempotencyError::StoreUnavailable`]: the store failed and the policy is fail closed;
    /// - [`IdempotencyError::CorruptRecord`]: the key holds something unreadable.
    pub async fn begin(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
    ) -> Result<Begin<S>, IdempotencyError> {
        if self.inner.config.disabled {
            return Ok(Begin::Run(Guard::unprotected(
                self.clone(),
                Unprotected::Disabled,
            )));
        }
        let store_key = self.store_key(scope, key);
        let span = tracing::debug_span!("idempotency.begin", key = %store_key);
        self.begin_claim(store_key, fingerprint)
            .instrument(span)
            .await
    }

    async fn begin_claim(
        &self,
        store_key: StoreKey,
        fingerprint: Fingerprint,
    ) -> Result<Begin<S>, IdempotencyError> {
        let config = &self.inner.config;
        let token = LeaseToken::generate();
        let record = InProgress {
            token,
            fingerprint,
            created_at_ms: unix_millis_now(),
        };
        let wait_deadline = config.in_flight_wait.map(|w| Instant::now() + w.max_wait);
        loop {
            let claimed = self
                .timed(
                    "try_claim",
                    self.inner
                        .store
                        .try_claim(&store_key, &record, config.lease),
                )
                .await;
            let existing = match claimed {
                Ok(Claim::Claimed) => return Ok(self.claimed(store_key, record)),
                Ok(Claim::Existing(existing)) => existing,
                Err(error) => return self.claim_failed(error),
            };
            match existing {
                // Our own claim, seen again because a retried request's first reply was lost.
                Record::InProgress(r) if r.token == token => {
                    return Ok(self.claimed(store_key, record));
                }
                r if *r.fingerprint() != fingerprint => {
                    Stats::bump(&self.inner.stats.mismatches);
                    metrics::counter!(names::MISMATCHES).increment(1);
                    tracing::debug!("fingerprint mismatch");
                    return Err(IdempotencyError::FingerprintMismatch);
                }
                Record::Completed(done) => {
                    Stats::bump(&self.inner.stats.hits);
                    metrics::counter!(names::REPLAYS).increment(1);
                    tracing::debug!("replaying stored outcome");
                    let outcome = done
                        .outcome
                        .decompressed()
                        .map_err(IdempotencyError::CorruptRecord)?;
                    return Ok(Begin::Replay(outcome));
                }
                Record::InProgress(_) => {
                    let poll = config.in_flight_wait.map(|w| w.poll_interval);
                    match (wait_deadline, poll) {
                        (Some(deadline), Some(poll)) if Instant::now() + poll <= deadline => {
                            tokio::time::sleep(poll).await;
                        }
                        _ => {
                            Stats::bump(&self.inner.stats.in_flight);
                            metrics::counter!(names::IN_FLIGHT).increment(1);
                            tracing::debug!("first attempt still in flight");
                            return Err(IdempotencyError::InFlight {
                                retry_after: config.in_flight_retry_after,
                            });
                        }
                    }
                }
            }
        }
    }

    fn claimed(&self, store_key: StoreKey, record: InProgress) -> Begin<S> {
        Stats::bump(&self.inner.stats.misses);
        metrics::counter!(names::CLAIMS).increment(1);
        tracing::debug!("claimed");
        Begin::Run(Guard::claimed(self.clone(), store_key, record))
    }

    fn claim_failed(&self, error: StoreError) -> Result<Begin<S>, IdempotencyError> {
        let corrupt = matches!(error, StoreError::Corrupt(_));
        if self.inner.config.failure_policy == FailurePolicy::FailOpen && !corrupt {
            Stats::bump(&self.inner.stats.fail_open);
            metrics::counter!(names::FAIL_OPEN).increment(1);
            tracing::warn!(%error, "idempotency store failed; running WITHOUT protection (fail-open)");
            return Ok(Begin::Run(Guard::unprotected(
                self.clone(),
                Unprotected::FailOpen,
            )));
        }
        tracing::warn!(%error, "idempotency store failed; refusing (fail-closed)");
        Err(error.into())
    }

    /// Read the record for `(scope, key)` (inspection).
    ///
    /// # Errors
    /// [`IdempotencyError::StoreUnavailable`] or [`IdempotencyError::CorruptRecord`].
    pub async fn get(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
    ) -> Result<Option<Record>, IdempotencyError> {
        let store_key = self.store_key(scope, key);
        Ok(self.timed("get", self.inner.store.get(&store_key)).await?)
    }

    /// Forget `(scope, key)` whatever its state, so the next attempt runs again. Returns whether
    /// a record existed.
    ///
    /// # Errors
    /// [`IdempotencyError::StoreUnavailable`].
    pub async fn invalidate(
        &self,
        scope: &Scope,
        key: &IdempotencyKey,
    ) -> Result<bool, IdempotencyError> {
        let store_key = self.store_key(scope, key);
        Ok(self
            .timed("delete", self.inner.store.delete(&store_key))
            .await?)
    }

    /// Run a store call under the timeout, recording its latency and failures.
    pub(crate) async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let after = self.inner.config.store_timeout;
        let started = Instant::now();
        let mut call = std::pin::pin!(call);
        // Embedded stores answer on the first poll: only arm a timer when the call must wait.
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        let result = match first {
            Poll::Ready(result) => result,
            Poll::Pending => match tokio::time::timeout(after, call).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout { operation, after }),
            },
        };
        metrics::histogram!(names::STORE_LATENCY, "op" => operation)
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            Stats::bump(&self.inner.stats.store_errors);
            metrics::counter!(names::STORE_ERRORS, "op" => operation).increment(1);
            tracing::debug!(%error, operation, "store operation failed");
        }
        result
    }
}

impl<S: IdempotencyStore + 'static> IdempotencyBuilder<S> {
    /// Validate the settings and build the engine. Logs a warning when the kill switch is on.
    ///
    /// # Errors
    /// [`ConfigError`] for zero durations, a retention shorter than the lease, or a bad prefix.
    pub fn build(mut self) -> Result<Idempotency<S>, ConfigError> {
        if self.read_env && config::disabled_by_env() {
            self.config.disabled = true;
        }
        self.config.validate()?;
        if self.config.disabled {
            tracing::warn!(
                "IDEMPOTENCY CHECKS ARE DISABLED (kill switch or {DISABLE_ENV_VAR}=true): \
                 every retry will run its side effect again"
            );
        }
        Ok(Idempotency {
            inner: Arc::new(Inner {
                store: self.store,
                config: self.config,
                stats: Stats::default(),
            }),
        })
    }
}
