//! The engine: runs an operation at most once per `(scope, key)` on any store.

mod background;
mod config;
mod external;
mod guard;
mod registry;
mod run;
mod stats;

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use tracing::Instrument as _;

pub use config::{
    Config, DISABLE_ENV_VAR, FailurePolicy, IdempotencyBuilder, InProgressWait, kill_switch_value,
};
pub use external::{CompletionParts, PendingCompletion};
pub use guard::{Guard, Unprotected};
pub use run::{RUN_CONTENT_TYPE, RunError};
pub use stats::{StatsSnapshot, names as metric_names};

use crate::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyError, IdempotencyKey, IdempotencyStore,
    InProgress, LeaseToken, Record, Scope, StoreError, StoreKey, StoreOperation, StoredOutcome,
    Waited, unix_millis_now,
};
use background::{Background, Which};
use guard::Claim as HeldClaim;
use stats::{Event, Stats, names};

/// First delay between two completion attempts; doubles per attempt.
const COMPLETION_BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest delay between two completion attempts.
const COMPLETION_BACKOFF_MAX: Duration = Duration::from_secs(1);

fn completion_backoff(attempt: u32) -> Duration {
    COMPLETION_BACKOFF_START
        .saturating_mul(1u32 << attempt.min(16))
        .min(COMPLETION_BACKOFF_MAX)
}

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
    fallback: Option<Arc<dyn IdempotencyStore>>,
    config: Config,
    stats: Stats,
    background: Background,
}

/// Where a duplicate's wait for an in-progress first attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitState {
    /// Not waited yet.
    NotYet,
    /// Woken by the store at least once.
    Woken,
    /// The store's wait timed out; the claim after it was the last look.
    SafetyChecked,
    /// The store cannot notify (or its wait failed): poll.
    Polling,
}

/// What an existing record means for a new attempt with `fingerprint`.
enum Seen {
    /// Our own claim, seen again because a retried request's first reply was lost.
    Own,
    Mismatch,
    Replay(StoredOutcome),
    /// Another attempt holds the key under this token.
    InProgress(LeaseToken),
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

    /// An engine with every default (the kill switch still follows
    /// [`DISABLE_IDEMPOTENCY_CHECKS`](DISABLE_ENV_VAR)). The defaults are valid, so this cannot
    /// fail; [`IdempotencyBuilder::build`] validates custom settings.
    pub fn new(store: S) -> Self {
        let config = Config {
            disabled: config::disabled_by_env(),
            ..Config::default()
        };
        Self::assemble(store, None, config)
    }

    /// An engine over validated parts. Logs a warning when the kill switch is on.
    pub(crate) fn assemble(
        store: S,
        fallback: Option<Arc<dyn IdempotencyStore>>,
        config: Config,
    ) -> Self {
        if config.disabled {
            tracing::warn!(
                "IDEMPOTENCY CHECKS ARE DISABLED (kill switch or {DISABLE_ENV_VAR}=true): \
                 every retry will run its side effect again"
            );
        }
        let background = Background::new(config.lease);
        Self {
            inner: Arc::new(Inner {
                store,
                fallback,
                config,
                stats: Stats::default(),
                background,
            }),
        }
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
    /// - [`IdempotencyError::InProgress`]: the first attempt is still running (after waiting, if
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
        let wait_deadline = config.in_progress_wait.map(|w| Instant::now() + w.max_wait);
        let mut waits = WaitState::NotYet;
        loop {
            let claimed = self
                .timed(
                    StoreOperation::TryClaim,
                    self.inner
                        .store
                        .try_claim(&store_key, &record, config.lease),
                )
                .await;
            let existing = match claimed {
                Ok(Claim::Claimed) => return Ok(self.claimed(store_key, record, Which::Primary)),
                Ok(Claim::Existing(existing)) => existing,
                // Boxed: the failure paths' state stays out of the common path's future.
                Err(error) => {
                    return Box::pin(self.claim_failed(store_key, record, error)).await;
                }
            };
            match self.seen(existing, &record)? {
                Seen::Own => return Ok(self.claimed(store_key, record, Which::Primary)),
                Seen::Mismatch => return Err(self.mismatch()),
                Seen::Replay(outcome) => return Ok(self.replay(outcome)),
                Seen::InProgress(seen) => {
                    if !Box::pin(self.wait_in_progress(
                        &store_key,
                        &seen,
                        wait_deadline,
                        &mut waits,
                    ))
                    .await
                    {
                        return Err(Box::pin(self.in_progress(Which::Primary, &store_key)).await);
                    }
                }
            }
        }
    }

    /// A duplicate found the key in progress under `seen`: wait, if configured, for the record
    /// to change. `true`: look again (claim); `false`: answer "in progress".
    ///
    /// On a store that notifies, the first wait lasts until the wake-up or the deadline, and
    /// the claim that follows is the one re-read (after a timeout it is the safety re-check
    /// that catches a missed notification or an expired lease). A second "in progress" after a
    /// wake-up (another duplicate claimed first, or a spurious wake) waits again, still bounded
    /// by the deadline. Stores that cannot notify are polled every `poll_interval`, as before.
    async fn wait_in_progress(
        &self,
        store_key: &StoreKey,
        seen: &LeaseToken,
        deadline: Option<Instant>,
        waits: &mut WaitState,
    ) -> bool {
        let (Some(deadline), Some(wait)) = (deadline, self.inner.config.in_progress_wait) else {
            return false;
        };
        let now = Instant::now();
        if now >= deadline || *waits == WaitState::SafetyChecked {
            return false;
        }
        if *waits != WaitState::Polling {
            let waited = self
                .inner
                .store
                .wait_for_change(store_key, seen, deadline - now)
                .await;
            match waited {
                Ok(Waited::Changed) => {
                    metrics::counter!(names::WAKE_UPS, "result" => "changed").increment(1);
                    *waits = WaitState::Woken;
                    return true;
                }
                Ok(Waited::TimedOut) => {
                    metrics::counter!(names::WAKE_UPS, "result" => "timed_out").increment(1);
                    *waits = WaitState::SafetyChecked;
                    return true;
                }
                Ok(Waited::Unsupported) => *waits = WaitState::Polling,
                Err(error) => {
                    tracing::debug!(%error, "waiting for a wake-up failed; polling instead");
                    *waits = WaitState::Polling;
                }
            }
        }
        if Instant::now() + wait.poll_interval > deadline {
            return false;
        }
        tokio::time::sleep(wait.poll_interval).await;
        true
    }

    /// Classify what a claim found under the key.
    fn seen(&self, existing: Record, ours: &InProgress) -> Result<Seen, IdempotencyError> {
        Ok(match existing {
            Record::InProgress(r) if r.token == ours.token => Seen::Own,
            r if *r.fingerprint() != ours.fingerprint => Seen::Mismatch,
            Record::Completed(done) => Seen::Replay(
                done.outcome.decompressed().map_err(|error| {
                    tracing::error!(%error, "the stored outcome under this key is corrupt; it blocks the key until an operator deletes it or its retention ends");
                    IdempotencyError::CorruptRecord(error)
                })?,
            ),
            Record::InProgress(r) => Seen::InProgress(r.token),
        })
    }

    fn mismatch(&self) -> IdempotencyError {
        self.inner.stats.record(Event::Mismatch);
        tracing::debug!("fingerprint mismatch");
        IdempotencyError::FingerprintMismatch
    }

    fn replay(&self, outcome: StoredOutcome) -> Begin<S> {
        self.inner.stats.record(Event::Replay);
        tracing::debug!("replaying stored outcome");
        Begin::Replay(outcome)
    }

    /// The answer for a retry that finds the first attempt in progress, with a `Retry-After`
    /// from the remaining lease where the store can tell (see [`IdempotencyError::InProgress`]).
    async fn in_progress(&self, which: Which, key: &StoreKey) -> IdempotencyError {
        self.inner.stats.record(Event::InProgress);
        tracing::debug!("first attempt still in progress");
        let config = &self.inner.config;
        if !config.retry_after_from_lease {
            return IdempotencyError::InProgress {
                retry_after: config.in_progress_retry_after,
            };
        }
        let remaining = self
            .timed(
                StoreOperation::TimeToLive,
                self.store_of(which).time_to_live(key),
            )
            .await;
        let retry_after = match remaining {
            Ok(Some(remaining)) => {
                retry_after_from_lease(remaining, config.lease, config.in_progress_retry_after)
            }
            _ => config.in_progress_retry_after,
        };
        IdempotencyError::InProgress { retry_after }
    }

    fn claimed(&self, store_key: StoreKey, record: InProgress, which: Which) -> Begin<S> {
        self.inner.stats.record(Event::Claim);
        tracing::debug!("claimed");
        Begin::Run(Guard::claimed(self.clone(), store_key, record, which))
    }

    /// The claim failed: clean up a claim that may have been applied, answer from a read when
    /// the store only refuses writes, else apply the failure policy.
    async fn claim_failed(
        &self,
        store_key: StoreKey,
        record: InProgress,
        error: StoreError,
    ) -> Result<Begin<S>, IdempotencyError> {
        if error.outcome_unknown() {
            // The claim may have landed with nobody holding its token: free the key as soon as
            // the store answers again, instead of blocking it for a whole lease.
            self.release_in_background(store_key.clone(), record.token, Which::Primary);
        }
        if matches!(error, StoreError::Corrupt(_)) {
            // Answered 500 and never retried by itself: say so loudly, with the key, so an
            // operator can inspect and delete it (the `idempotency` CLI's inspect / delete).
            tracing::error!(key = %store_key, %error, "the record under this key is corrupt; it blocks the key until an operator deletes it or its retention ends");
            return Err(error.into());
        }
        if matches!(error, StoreError::WriteRefused { .. })
            && let Some(answer) = self.answer_from_read(&store_key, &record).await
        {
            return answer;
        }
        match self.inner.config.failure_policy {
            FailurePolicy::FailOpen => {
                self.inner.stats.record(Event::FailOpen);
                tracing::warn!(%error, "idempotency store failed; running WITHOUT protection (fail-open)");
                Ok(Begin::Run(Guard::unprotected(
                    self.clone(),
                    Unprotected::FailOpen,
                )))
            }
            FailurePolicy::Fallback if self.inner.fallback.is_some() => {
                self.claim_in_fallback(store_key, record, error).await
            }
            _ => {
                tracing::warn!(%error, "idempotency store failed; refusing (fail-closed)");
                Err(error.into())
            }
        }
    }

    /// The store refuses writes but may still read: replay a completed record, or answer
    /// "in progress" / mismatch from what is there. `None`: nothing to answer from.
    async fn answer_from_read(
        &self,
        store_key: &StoreKey,
        record: &InProgress,
    ) -> Option<Result<Begin<S>, IdempotencyError>> {
        let read = self
            .timed(StoreOperation::Get, self.inner.store.get(store_key))
            .await;
        let (result, answer) = match read {
            Ok(Some(existing)) => match self.seen(existing, record) {
                Ok(Seen::Replay(outcome)) => ("replayed", Ok(self.replay(outcome))),
                Ok(Seen::Mismatch) => ("mismatch", Err(self.mismatch())),
                Ok(Seen::InProgress(_) | Seen::Own) => (
                    "in_progress",
                    Err(self.in_progress(Which::Primary, store_key).await),
                ),
                Err(error) => ("corrupt", Err(error)),
            },
            Ok(None) | Err(_) => {
                metrics::counter!(names::WRITE_REFUSED, "result" => "policy").increment(1);
                return None;
            }
        };
        metrics::counter!(names::WRITE_REFUSED, "result" => result).increment(1);
        tracing::debug!(result, "store refuses writes; answered from a read");
        Some(answer)
    }

    /// [`FailurePolicy::Fallback`]: claim in the per-process fallback store.
    async fn claim_in_fallback(
        &self,
        store_key: StoreKey,
        record: InProgress,
        primary_error: StoreError,
    ) -> Result<Begin<S>, IdempotencyError> {
        let fallback = self.store_of(Which::Fallback);
        let claimed = self
            .timed(
                StoreOperation::TryClaim,
                fallback.try_claim(&store_key, &record, self.inner.config.lease),
            )
            .await;
        let existing = match claimed {
            Ok(Claim::Claimed) => {
                self.inner.stats.record(Event::FallbackClaim);
                tracing::warn!(
                    error = %primary_error,
                    "idempotency store failed; protecting this request with the per-process \
                     fallback store (no protection across instances)"
                );
                return Ok(self.claimed(store_key, record, Which::Fallback));
            }
            Ok(Claim::Existing(existing)) => existing,
            Err(error) => {
                tracing::warn!(%primary_error, fallback_error = %error, "idempotency store and fallback store failed; refusing");
                return Err(primary_error.into());
            }
        };
        match self.seen(existing, &record)? {
            Seen::Own => Ok(self.claimed(store_key, record, Which::Fallback)),
            Seen::Mismatch => Err(self.mismatch()),
            Seen::Replay(outcome) => Ok(self.replay(outcome)),
            Seen::InProgress(_) => Err(self.in_progress(Which::Fallback, &store_key).await),
        }
    }

    /// The store holding claims of kind `which`.
    pub(crate) fn store_of(&self, which: Which) -> &dyn IdempotencyStore {
        match (which, &self.inner.fallback) {
            (Which::Fallback, Some(fallback)) => &**fallback,
            _ => &self.inner.store,
        }
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
        Ok(self
            .timed(StoreOperation::Get, self.inner.store.get(&store_key))
            .await?)
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
            .timed(StoreOperation::Delete, self.inner.store.delete(&store_key))
            .await?)
    }

    /// Run a store call under the timeout, recording its latency and failures.
    pub(crate) async fn timed<T>(
        &self,
        operation: StoreOperation,
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
        metrics::histogram!(names::STORE_LATENCY, "op" => operation.as_str())
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            self.inner.stats.record(Event::StoreError(operation));
            tracing::debug!(%error, %operation, "store operation failed");
        }
        result
    }
}

/// Store calls on a claim, beside [`Idempotency::timed`]: storing an outcome (with retries)
/// and releasing.
impl<S: IdempotencyStore + 'static> Idempotency<S> {
    /// Store `completed` under `claim`, retrying transient failures (see
    /// [`Guard::complete`]). Returns the last result and the number of attempts made in all.
    async fn store_completion(
        &self,
        claim: &HeldClaim,
        completed: &Completed,
    ) -> (Result<Fenced, StoreError>, u32) {
        let store = self.store_of(claim.which);
        let retention = self.config().retention();
        let first = self
            .timed(
                StoreOperation::Complete,
                store.complete(&claim.key, &claim.record.token, completed, retention),
            )
            .await;
        match first {
            // Boxed: the retry loop's state stays out of the common path's future.
            Err(error) if error.is_transient() => {
                Box::pin(self.retry_completion(claim, completed, error)).await
            }
            other => (other, 1),
        }
    }

    /// Retry a completion that failed transiently, with backoff, for up to the configured
    /// bound from the first failure (the lease keeps being renewed meanwhile). Returns the last
    /// result and the number of attempts made in all.
    async fn retry_completion(
        &self,
        claim: &HeldClaim,
        completed: &Completed,
        first_error: StoreError,
    ) -> (Result<Fenced, StoreError>, u32) {
        let bound = self.config().completion_retry();
        let retention = self.config().retention();
        let store = self.store_of(claim.which);
        let started = Instant::now();
        let mut error = first_error;
        let mut attempt = 0u32;
        loop {
            let backoff = completion_backoff(attempt);
            if started.elapsed() + backoff > bound {
                if attempt > 0 {
                    metrics::counter!(names::COMPLETION_RETRIES, "result" => "exhausted")
                        .increment(1);
                }
                return (Err(error), attempt + 1);
            }
            attempt += 1;
            self.inner.stats.record(Event::CompletionRetry);
            tracing::debug!(key = %claim.key, %error, attempt, "completion failed; retrying");
            tokio::time::sleep(backoff).await;
            let result = self
                .timed(
                    StoreOperation::Complete,
                    store.complete(&claim.key, &claim.record.token, completed, retention),
                )
                .await;
            match result {
                Err(again) if again.is_transient() => error = again,
                other => {
                    if other.is_ok() {
                        metrics::counter!(names::COMPLETION_RETRIES, "result" => "recovered")
                            .increment(1);
                    }
                    return (other, attempt + 1);
                }
            }
        }
    }

    /// Release a claim now; if the store fails, keep releasing it in the background.
    pub(crate) async fn release_claim(&self, claim: HeldClaim) -> Result<(), IdempotencyError> {
        let HeldClaim {
            key, record, which, ..
        } = claim;
        let fenced = match self
            .timed(
                StoreOperation::Release,
                self.store_of(which).release(&key, &record.token),
            )
            .await
        {
            Ok(fenced) => fenced,
            Err(error) => {
                if !matches!(error, StoreError::Corrupt(_)) {
                    self.release_in_background(key, record.token, which);
                }
                return Err(error.into());
            }
        };
        metrics::counter!(names::RELEASES).increment(1);
        match fenced {
            Fenced::Applied => {
                tracing::debug!(key = %key, "claim released");
                Ok(())
            }
            Fenced::LeaseLost => {
                self.inner.stats.record(Event::LeaseLost);
                Err(IdempotencyError::LeaseLost)
            }
        }
    }
}

/// `Retry-After` for an in-progress answer, from the remaining lease (see
/// [`IdempotencyError::InProgress`]). A lease refreshed within 1.5 renewal intervals of its full
/// length has a live owner that may finish any moment: suggest `fixed`. Otherwise the key frees
/// when the lease ends: suggest the remaining lease, clamped to 1 s..=lease.
fn retry_after_from_lease(remaining: Duration, lease: Duration, fixed: Duration) -> Duration {
    let since_refresh = lease.saturating_sub(remaining);
    let interval = background::renewal_interval(lease);
    if since_refresh <= interval + interval / 2 {
        return fixed;
    }
    let floor = Duration::from_secs(1);
    remaining.clamp(floor, lease.max(floor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_backoff_doubles_to_a_cap() {
        assert_eq!(completion_backoff(0), Duration::from_millis(50));
        assert_eq!(completion_backoff(3), Duration::from_millis(400));
        assert_eq!(completion_backoff(30), COMPLETION_BACKOFF_MAX);
    }

    #[test]
    fn retry_after_follows_the_remaining_lease_of_stale_claims() {
        let lease = Duration::from_secs(60);
        let fixed = Duration::from_secs(1);
        // Fresh or recently renewed: the owner is alive.
        assert_eq!(retry_after_from_lease(lease, lease, fixed), fixed);
        assert_eq!(
            retry_after_from_lease(Duration::from_secs(31), lease, fixed),
            fixed
        );
        // Not refreshed for longer than 1.5 renewal intervals: wait for the lease to end.
        assert_eq!(
            retry_after_from_lease(Duration::from_secs(29), lease, fixed),
            Duration::from_secs(29)
        );
        assert_eq!(
            retry_after_from_lease(Duration::from_millis(200), lease, fixed),
            Duration::from_secs(1),
            "at least 1 s"
        );
        // Odd store answers are clamped to the lease.
        assert_eq!(
            retry_after_from_lease(Duration::from_secs(3600), lease, fixed),
            fixed
        );
        let short = Duration::from_millis(500);
        assert_eq!(
            retry_after_from_lease(Duration::from_millis(10), short, fixed),
            Duration::from_secs(1)
        );
    }
}
