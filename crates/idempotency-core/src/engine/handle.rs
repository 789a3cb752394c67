//! The engine handle: its shared state and every store call it makes (under the timeout,
//! counted), including the ones on a held claim (completion with retries, release). Request
//! handling (`begin`), the guard and the background driver build on this module.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use super::background::Background;
use super::config::{self, Config, DISABLE_ENV_VAR};
use super::registry::{Ticket, Which};
use super::stats::{Event, Stats, StatsSnapshot, names};
use super::wall::WallClock;
use crate::{
    Claim as Claimed, Completed, DynIdempotencyStore, Fenced, IdempotencyError, IdempotencyKey,
    IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoreKey, StoreOperation,
    Waited,
};

/// First delay between two completion attempts; doubles per attempt.
const COMPLETION_BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest delay between two completion attempts.
const COMPLETION_BACKOFF_MAX: Duration = Duration::from_secs(1);

fn completion_backoff(attempt: u32) -> Duration {
    COMPLETION_BACKOFF_START
        .saturating_mul(1u32 << attempt.min(16))
        .min(COMPLETION_BACKOFF_MAX)
}

/// Runs operations at most once per `(scope, key)` during the retention window, replaying the
/// first outcome to every retry.
///
/// Cheap to clone (an `Arc`); share one per store. See the crate docs for an example.
#[derive(Debug)]
pub struct Idempotency<S> {
    pub(super) inner: Arc<Inner<S>>,
}

impl<S> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
pub(super) struct Inner<S> {
    pub(super) store: S,
    pub(super) fallback: Option<Arc<dyn DynIdempotencyStore>>,
    pub(super) config: Config,
    /// Written by every operation, from every thread: on cache lines of its own, away from the
    /// configuration and the store handle that every operation only reads (false sharing
    /// would move those lines between cores with each operation).
    pub(super) stats: CachePadded<Stats>,
    pub(super) background: Background,
    /// The wall clock of new claims, derived from the monotonic reading each claim makes.
    pub(super) wall: WallClock,
    /// Whether the primary store was seen answering a completion at once
    /// ([`IdempotencyStore::complete_now`]; a store either always does or never does). Set
    /// once, then only read: a guard then ends its renewal and learns whether its lease was
    /// lost in one registry lock before the completion, instead of marking itself completing
    /// in one and ending renewal in another after it (see `Guard::complete`).
    pub(super) completes_at_once: AtomicBool,
}

/// A claim on a key, as held by a guard.
#[derive(Debug)]
pub(crate) struct Claim {
    /// The claimed key.
    pub(crate) key: StoreKey,
    /// The in-progress record written by the claim (its token is the fencing token).
    pub(crate) record: InProgress,
    /// The store holding the claim.
    pub(crate) which: Which,
    /// Its place in the renewal registry (`None`: not renewed).
    pub(crate) ticket: Option<Ticket>,
    /// The monotonic clock when `record.created_at_ms` was read: the completion's
    /// `completed_at_ms` is that plus the time elapsed since (one clock read fewer per
    /// operation than reading the wall clock again).
    pub(crate) created_at: Instant,
}

impl Claim {
    /// Whether the claim lives in the engine's own store (not the fallback store).
    #[allow(dead_code)]
    pub(crate) fn is_primary(&self) -> bool {
        self.which == Which::Primary
    }
}

impl<S: IdempotencyStore + 'static> Idempotency<S> {
    /// An engine with every default (the kill switch still follows
    /// [`DISABLE_IDEMPOTENCY_CHECKS`](DISABLE_ENV_VAR)). The defaults are valid, so this cannot
    /// fail; [`IdempotencyBuilder::build`](crate::IdempotencyBuilder::build) validates custom settings.
    ///
    /// A kill-switch value that is not one of the accepted spellings
    /// ([`parse_kill_switch`](crate::parse_kill_switch)) cannot be refused here: it is logged
    /// as a warning naming the variable, the value and the accepted spellings, and the checks
    /// stay **on**. `build()` refuses it instead.
    pub fn new(store: S) -> Self {
        let disabled = config::kill_switch_from_env().unwrap_or_else(|error| {
            tracing::warn!(
                variable = DISABLE_ENV_VAR,
                %error,
                "unrecognised kill-switch value: idempotency checks stay ON"
            );
            false
        });
        let config = Config {
            disabled,
            ..Config::default()
        };
        Self::assemble(store, None, config)
    }

    /// An engine over validated parts. Logs a warning when the kill switch is on.
    pub(crate) fn assemble(
        store: S,
        fallback: Option<Arc<dyn DynIdempotencyStore>>,
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
                stats: CachePadded::new(Stats::default()),
                background,
                wall: WallClock::new(),
                completes_at_once: AtomicBool::new(false),
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

    /// The store holding claims of kind `which`: the engine's own store is called directly
    /// (its futures are not boxed), the fallback store through `dyn`.
    pub(crate) fn store_of(&self, which: Which) -> StoreOf<'_, S> {
        match (which, &self.inner.fallback) {
            (Which::Fallback, Some(fallback)) => StoreOf::Fallback(&**fallback),
            _ => StoreOf::Primary(&self.inner.store),
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
            .timed(
                Which::Primary,
                StoreOperation::Get,
                self.inner.store.get(&store_key),
            )
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
            .timed(
                Which::Primary,
                StoreOperation::Delete,
                self.inner.store.delete(&store_key),
            )
            .await?)
    }

    /// Whether calls on the store of kind `which` need the engine's timer: not when the store
    /// bounds its own operations within the engine's budget
    /// ([`IdempotencyStore::operation_bound`]).
    pub(crate) fn needs_timer(&self, which: Which) -> bool {
        let after = self.inner.config.store_timeout;
        self.store_of(which)
            .operation_bound()
            .is_none_or(|bound| bound > after)
    }

    /// Run a call on the store of kind `which` under the timeout, recording its latency and
    /// failures.
    pub(crate) async fn timed<T>(
        &self,
        which: Which,
        operation: StoreOperation,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.timed_since(Instant::now(), which, operation, call)
            .await
            .0
    }

    /// [`Idempotency::timed`] for a call that starts at `started` (a clock read the caller
    /// made just before and needs itself); also returns when the call ended (the read that
    /// measured it), for a caller whose next step needs the time. Clock reads are not free
    /// (tens of ns each on virtual machines): the fresh path shares them.
    pub(crate) async fn timed_since<T>(
        &self,
        started: Instant,
        which: Which,
        operation: StoreOperation,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> (Result<T, StoreError>, Instant) {
        self.timed_since_pinned(started, which, operation, std::pin::pin!(call))
            .await
    }

    /// [`Idempotency::timed_since`] for a call the caller pinned: the call's future (the
    /// store's own, not boxed) is then held once, in the caller's future, instead of once more
    /// here (an `async fn` keeps its argument and the local it is moved into apart).
    pub(crate) async fn timed_since_pinned<T>(
        &self,
        started: Instant,
        which: Which,
        operation: StoreOperation,
        mut call: std::pin::Pin<&mut impl Future<Output = Result<T, StoreError>>>,
    ) -> (Result<T, StoreError>, Instant) {
        let after = self.inner.config.store_timeout;
        let result = if self.needs_timer(which) {
            // Embedded stores answer on the first poll: only arm a timer when the call must wait.
            let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
            match first {
                Poll::Ready(result) => result,
                // Boxed: the timer stays out of every caller's future (embedded stores answer
                // on the first poll and never get here).
                Poll::Pending => match Box::pin(tokio::time::timeout(after, call)).await {
                    Ok(result) => result,
                    Err(_) => Err(StoreError::Timeout { operation, after }),
                },
            }
        } else {
            // The store's own timer bounds the call (one timer, not two nested ones).
            call.await
        };
        let ended = self.store_call_ended(started, operation, &result);
        (result, ended)
    }

    /// The end of a store call that started at `started`, however it was made (a future, or
    /// answered at once: [`IdempotencyStore::try_claim_now`]): its latency and failure are
    /// recorded the same way. Returns when it ended (the clock read that measured it).
    pub(crate) fn store_call_ended<T>(
        &self,
        started: Instant,
        operation: StoreOperation,
        result: &Result<T, StoreError>,
    ) -> Instant {
        let ended = Instant::now();
        super::stats::record_store_latency(
            operation,
            ended.saturating_duration_since(started).as_secs_f64(),
        );
        if let Err(error) = result {
            self.inner.stats.record(Event::StoreError(operation));
            tracing::debug!(%error, %operation, "store operation failed");
        }
        ended
    }
}

/// Store calls on a claim, beside `Idempotency::timed`: storing an outcome (with retries)
/// and releasing.
impl<S: IdempotencyStore + 'static> Idempotency<S> {
    /// Store `completed` under `claim`, retrying transient failures (see
    /// [`Guard::complete`](super::Guard::complete)); the first attempt starts at `started`.
    /// Returns the last result and the number of attempts made in all.
    ///
    /// `renewal_ended`: the guard ended the claim's renewal before this call, expecting the
    /// store to answer at once (see `Guard::complete`). Should that answer be a transient
    /// failure, renewal starts again (first renewal due at once) for the retries, which may
    /// last up to `completion_retry`.
    pub(super) async fn store_completion(
        &self,
        claim: &mut Claim,
        completed: &Completed,
        started: Instant,
        renewal_ended: bool,
    ) -> (Result<Fenced, StoreError>, u32) {
        let store = self.store_of(claim.which);
        let retention = self.config().retention();
        let token = &claim.record.token;
        // An embedded store answers at once, without building the async call's future (see
        // `IdempotencyStore::complete_now`); latency and failures are recorded as for the call.
        let now = store.complete_now(&claim.key, token, completed, retention, started.into_std());
        let first = match now {
            Some(answer) => {
                self.store_call_ended(started, StoreOperation::Complete, &answer);
                if claim.which == Which::Primary && !self.completes_at_once() {
                    self.inner.completes_at_once.store(true, Ordering::Relaxed);
                }
                answer
            }
            None => {
                // Not at once after all (a store that answers at once only sometimes): the
                // claim is renewed again while the call runs.
                self.renew_again(claim, renewal_ended);
                let token = &claim.record.token;
                let call = std::pin::pin!(store.complete(&claim.key, token, completed, retention));
                self.timed_since_pinned(started, claim.which, StoreOperation::Complete, call)
                    .await
                    .0
            }
        };
        match first {
            // Boxed: the retry loop's state stays out of the common path's future.
            Err(error) if error.is_transient() => {
                self.renew_again(claim, renewal_ended);
                Box::pin(self.retry_completion(claim, completed, error)).await
            }
            other => (other, 1),
        }
    }

    /// When the guard ended `claim`'s renewal expecting an answer at once
    /// (`renewal_ended`) and the completion goes on (a transient failure to retry, or a store
    /// that did not answer at once), registers the claim for renewal again, first renewal due
    /// at once, marked completing as the guard marks a claim it keeps renewing.
    fn renew_again(&self, claim: &mut Claim, renewal_ended: bool) {
        if !renewal_ended || claim.ticket.is_some() {
            return;
        }
        let ticket =
            self.register_claim_due(&claim.key, claim.record.token, claim.which, Instant::now());
        if let Some(ticket) = ticket {
            self.inner.background.mark_completing(ticket);
        }
        claim.ticket = ticket;
    }

    /// Whether the primary store answers completions at once (seen at least once; see
    /// [`Inner::completes_at_once`]).
    pub(super) fn completes_at_once(&self) -> bool {
        self.inner.completes_at_once.load(Ordering::Relaxed)
    }

    /// Retry a completion that failed transiently, with backoff, for up to the configured
    /// bound from the first failure (the lease keeps being renewed meanwhile). Returns the last
    /// result and the number of attempts made in all.
    async fn retry_completion(
        &self,
        claim: &Claim,
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
                    claim.which,
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
    pub(crate) async fn release_claim(&self, claim: Claim) -> Result<(), IdempotencyError> {
        let Claim {
            key, record, which, ..
        } = claim;
        let fenced = match self
            .timed(
                which,
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

/// The store holding a claim ([`Idempotency::store_of`]): the engine's own store, or its
/// fallback store behind `dyn`. Each call's future is the primary store's own future or the
/// fallback's boxed one, without a box of its own.
#[derive(Debug)]
pub(crate) enum StoreOf<'a, S> {
    /// The engine's store.
    Primary(&'a S),
    /// The fallback store ([`crate::FailurePolicy::Fallback`]).
    Fallback(&'a dyn DynIdempotencyStore),
}

impl<S> Clone for StoreOf<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for StoreOf<'_, S> {}

pin_project_lite::pin_project! {
    /// The future of a [`StoreOf`] call: the primary store's own future, or the fallback's.
    #[project = StoreCallProj]
    pub(crate) enum StoreCall<P, F> {
        /// A call on the engine's store.
        Primary { #[pin] call: P },
        /// A call on the fallback store.
        Fallback { #[pin] call: F },
    }
}

impl<T, P: Future<Output = T>, F: Future<Output = T>> Future for StoreCall<P, F> {
    type Output = T;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<T> {
        match self.project() {
            StoreCallProj::Primary { call } => call.poll(cx),
            StoreCallProj::Fallback { call } => call.poll(cx),
        }
    }
}

/// `$call` on the store of a [`StoreOf`]: the fallback's boxed future is awaited in an
/// `async` block, which holds each argument's lifetime (the box's is their intersection).
macro_rules! store_call {
    ($self:expr, $method:ident($($arg:expr),*)) => {
        match *$self {
            StoreOf::Primary(store) => StoreCall::Primary { call: store.$method($($arg),*) },
            StoreOf::Fallback(store) => StoreCall::Fallback {
                call: async move { store.$method($($arg),*).await },
            },
        }
    };
}

impl<S: IdempotencyStore> IdempotencyStore for StoreOf<'_, S> {
    fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> impl Future<Output = Result<Claimed, StoreError>> + Send {
        store_call!(self, try_claim(key, record, lease))
    }

    fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> impl Future<Output = Result<Fenced, StoreError>> + Send {
        store_call!(self, complete(key, token, record, retention))
    }

    fn release(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
    ) -> impl Future<Output = Result<Fenced, StoreError>> + Send {
        store_call!(self, release(key, token))
    }

    fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<Fenced, StoreError>> + Send {
        store_call!(self, extend(key, token, lease))
    }

    fn get(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        store_call!(self, get(key))
    }

    fn delete(&self, key: &StoreKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
        store_call!(self, delete(key))
    }

    fn time_to_live(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        store_call!(self, time_to_live(key))
    }

    fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> impl Future<Output = Result<Waited, StoreError>> + Send {
        store_call!(self, wait_for_change(key, seen, timeout))
    }

    fn operation_bound(&self) -> Option<Duration> {
        match *self {
            Self::Primary(store) => store.operation_bound(),
            Self::Fallback(store) => store.operation_bound(),
        }
    }

    fn try_claim_now(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
        now: std::time::Instant,
    ) -> Option<Result<Claimed, StoreError>> {
        match *self {
            Self::Primary(store) => store.try_claim_now(key, record, lease, now),
            Self::Fallback(store) => store.try_claim_now(key, record, lease, now),
        }
    }

    fn complete_now(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
        now: std::time::Instant,
    ) -> Option<Result<Fenced, StoreError>> {
        match *self {
            Self::Primary(store) => store.complete_now(key, token, record, retention, now),
            Self::Fallback(store) => store.complete_now(key, token, record, retention, now),
        }
    }
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
}
