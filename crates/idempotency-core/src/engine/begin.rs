//! Deciding what to do with a request: claim the key, replay a stored outcome, wait for an
//! in-progress first attempt, or apply the failure policy when the store fails.

use std::time::Duration;

use tokio::time::Instant;

use tracing::Instrument as _;

use super::background::{later, renewal_interval};
use super::config::FailurePolicy;
use super::guard::{Guard, Unprotected};
use super::handle::Idempotency;
use super::registry::Which;
use super::stats::{Event, names};
use crate::{
    Claim, Fingerprint, IdempotencyError, IdempotencyKey, IdempotencyStore, InProgress, LeaseToken,
    Record, Scope, StoreError, StoreKey, StoreOperation, StoredOutcome, Waited, unix_millis_now,
};

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
    /// Another attempt holds the key under this token, claimed at this time (Unix ms, the
    /// claimer's clock).
    InProgress(LeaseToken, u64),
}

/// Armed while a claim is on its way to the store: dropped before [`ClaimInFlight::answered`]
/// (the caller's future was dropped mid-claim), it releases the claim in the background with
/// its token, so that a claim that landed with nobody to hold it does not block the key for a
/// whole lease.
struct ClaimInFlight<'a, S: IdempotencyStore + 'static> {
    engine: &'a Idempotency<S>,
    key: &'a StoreKey,
    token: LeaseToken,
    which: Which,
}

impl<S: IdempotencyStore + 'static> ClaimInFlight<'_, S> {
    /// The store answered (whatever the answer): nothing to clean up here.
    fn answered(self) {
        std::mem::forget(self);
    }
}

impl<S: IdempotencyStore + 'static> Drop for ClaimInFlight<'_, S> {
    fn drop(&mut self) {
        tracing::debug!(key = %self.key, "claim cancelled before its reply; releasing in the background");
        self.engine
            .release_in_background(self.key.clone(), self.token, self.which);
    }
}

impl<S: IdempotencyStore + 'static> Idempotency<S> {
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
        if !crate::debug_spans_can_be_seen() {
            // Building a span nobody can see is not free (with tracing's `log` feature a
            // disabled span still checks `log` when it is built and dropped): ~150
            // instructions per operation (`cargo xtask instructions`).
            return self.begin_claim(store_key, fingerprint).await;
        }
        let span = tracing::debug_span!("idempotency.begin", key = %store_key);
        if span.is_disabled() {
            // No subscriber wants it: skip entering and leaving a disabled span on every poll
            // (with tracing's `log` feature each of those still asks `log` whether to emit).
            return self.begin_claim(store_key, fingerprint).await;
        }
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
        // One monotonic reading: the claim's store call is timed from it, its renewal is
        // scheduled from when that call ends, the completion's timestamp is derived from it,
        // and so is `created_at_ms` (the wall clock is read once per second at most, see
        // `wall.rs`): two clock reads per claim, not five.
        let created_at = Instant::now();
        let record = InProgress {
            token,
            fingerprint,
            created_at_ms: self.inner.wall.unix_millis_at(created_at),
        };
        let wait_deadline = config
            .in_progress_wait
            .map(|w| later(created_at, w.max_wait));
        let mut waits = WaitState::NotYet;
        let mut started = created_at;
        loop {
            let store = &self.inner.store;
            // An embedded store answers at once: no future for the async call, and
            // nothing to cancel (see `IdempotencyStore::try_claim_now`). Its latency and
            // failure are recorded as for the call.
            //
            // `if let`, not `match`: a `match` keeps its scrutinee (the at-once answer, ~130
            // bytes) alive across the `await` of the other arm, which made this future (boxed
            // per request by the HTTP layer) outgrow glibc's per-thread cache (1032 bytes;
            // `idempotency-memory` test `future_sizes`). Edition 2024 drops an `if let`
            // scrutinee before the `else` block.
            let (claimed, ended) = if let Some(answer) =
                store.try_claim_now(&store_key, &record, config.lease, started.into_std())
            {
                let ended = self.store_call_ended(started, StoreOperation::TryClaim, &answer);
                (answer, ended)
            } else {
                // A caller that drops this future while the claim is on its way (a client
                // gone, a timeout layer) may leave a claim applied with nobody holding its
                // token: released in the background, as a claim whose reply was lost
                // (fenced: a no-op if it never landed).
                let in_flight = ClaimInFlight {
                    engine: self,
                    key: &store_key,
                    token: record.token,
                    which: Which::Primary,
                };
                let timed = self
                    .timed_since(
                        started,
                        Which::Primary,
                        StoreOperation::TryClaim,
                        store.try_claim(&store_key, &record, config.lease),
                    )
                    .await;
                in_flight.answered();
                timed
            };
            let claimed_at = (created_at, ended);
            let existing = match claimed {
                Ok(Claim::Claimed) => {
                    return Ok(self.claimed(store_key, record, Which::Primary, claimed_at));
                }
                Ok(Claim::Existing(existing)) => existing,
                // Boxed: the failure paths' state stays out of the common path's future.
                Err(error) => {
                    return Box::pin(self.claim_failed(store_key, record, created_at, error)).await;
                }
            };
            // Answers that end here hand the key's buffer back for the thread's next key
            // (`StoreKey::recycle`); a claim keeps it in its guard.
            let seen = match self.seen(existing, &record) {
                Ok(seen) => seen,
                Err(error) => {
                    store_key.recycle();
                    return Err(error);
                }
            };
            match seen {
                Seen::Own => {
                    return Ok(self.claimed(store_key, record, Which::Primary, claimed_at));
                }
                Seen::Mismatch => {
                    store_key.recycle();
                    return Err(self.mismatch());
                }
                Seen::Replay(outcome) => {
                    store_key.recycle();
                    return Ok(self.replay(outcome));
                }
                Seen::InProgress(seen, created_at_ms) => {
                    // Without a configured wait there is nothing to wait for: no boxed future
                    // built for it (two boxes per "in progress" answer, this one and the
                    // store's when its calls were boxed, cost ~300 instructions, `cargo xtask
                    // instructions`, conflict).
                    let look_again = wait_deadline.is_some()
                        && Box::pin(self.wait_in_progress(
                            &store_key,
                            &seen,
                            wait_deadline,
                            &mut waits,
                        ))
                        .await;
                    if !look_again {
                        let answer = match self.in_progress_at_once(Some(created_at_ms)) {
                            Some(answer) => answer,
                            None => {
                                Box::pin(self.in_progress_from_lease(Which::Primary, &store_key))
                                    .await
                            }
                        };
                        store_key.recycle();
                        return Err(answer);
                    }
                    started = Instant::now();
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
        if later(Instant::now(), wait.poll_interval) > deadline {
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
            Record::InProgress(r) => Seen::InProgress(r.token, r.created_at_ms),
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
    /// `created_at_ms`: when the claim found was made, if known.
    async fn in_progress(
        &self,
        which: Which,
        key: &StoreKey,
        created_at_ms: Option<u64>,
    ) -> IdempotencyError {
        match self.in_progress_at_once(created_at_ms) {
            Some(answer) => answer,
            None => self.in_progress_from_lease(which, key).await,
        }
    }

    /// [`Self::in_progress`] up to the store: counts and logs the answer, and returns it when
    /// the remaining lease is not needed (`Retry-After` from the lease is off, or the claim
    /// found was made or refreshed recently); `None`: ask the store
    /// ([`Self::in_progress_from_lease`]).
    fn in_progress_at_once(&self, created_at_ms: Option<u64>) -> Option<IdempotencyError> {
        self.inner.stats.record(Event::InProgress);
        tracing::debug!("first attempt still in progress");
        let config = &self.inner.config;
        (!config.retry_after_from_lease
            || created_at_ms.is_some_and(|created| {
                refreshed_recently(unix_millis_now().saturating_sub(created), config.lease)
            }))
        .then_some(IdempotencyError::InProgress {
            retry_after: config.in_progress_retry_after,
        })
    }

    /// The "in progress" answer with a `Retry-After` from the remaining lease (`PTTL`), after
    /// [`Self::in_progress_at_once`] said the store must be asked.
    async fn in_progress_from_lease(&self, which: Which, key: &StoreKey) -> IdempotencyError {
        let config = &self.inner.config;
        let remaining = self
            .timed(
                which,
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

    /// The claim is ours. `(created_at, ended)`: the monotonic clock when the record's
    /// `created_at_ms` was read, and when the store call that claimed ended.
    fn claimed(
        &self,
        store_key: StoreKey,
        record: InProgress,
        which: Which,
        (created_at, ended): (Instant, Instant),
    ) -> Begin<S> {
        self.inner.stats.record(Event::Claim);
        tracing::debug!("claimed");
        Begin::Run(Guard::claimed(
            self.clone(),
            store_key,
            record,
            which,
            created_at,
            ended,
        ))
    }

    /// The claim failed: clean up a claim that may have been applied, answer from a read when
    /// the store only refuses writes, else apply the failure policy.
    async fn claim_failed(
        &self,
        store_key: StoreKey,
        record: InProgress,
        created_at: Instant,
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
                self.claim_in_fallback(store_key, record, created_at, error)
                    .await
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
            .timed(
                Which::Primary,
                StoreOperation::Get,
                self.inner.store.get(store_key),
            )
            .await;
        let (result, answer) = match read {
            Ok(Some(existing)) => match self.seen(existing, record) {
                Ok(Seen::Replay(outcome)) => ("replayed", Ok(self.replay(outcome))),
                Ok(Seen::Mismatch) => ("mismatch", Err(self.mismatch())),
                Ok(Seen::InProgress(_, created_at_ms)) => (
                    "in_progress",
                    Err(self
                        .in_progress(Which::Primary, store_key, Some(created_at_ms))
                        .await),
                ),
                Ok(Seen::Own) => (
                    "in_progress",
                    Err(self.in_progress(Which::Primary, store_key, None).await),
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
        created_at: Instant,
        primary_error: StoreError,
    ) -> Result<Begin<S>, IdempotencyError> {
        let fallback = self.store_of(Which::Fallback);
        let in_flight = ClaimInFlight {
            engine: self,
            key: &store_key,
            token: record.token,
            which: Which::Fallback,
        };
        let (claimed, ended) = self
            .timed_since(
                Instant::now(),
                Which::Fallback,
                StoreOperation::TryClaim,
                fallback.try_claim(&store_key, &record, self.inner.config.lease),
            )
            .await;
        in_flight.answered();
        let claimed_at = (created_at, ended);
        let existing = match claimed {
            Ok(Claim::Claimed) => {
                self.inner.stats.record(Event::FallbackClaim);
                tracing::warn!(
                    error = %primary_error,
                    "idempotency store failed; protecting this request with the per-process \
                     fallback store (no protection across instances)"
                );
                return Ok(self.claimed(store_key, record, Which::Fallback, claimed_at));
            }
            Ok(Claim::Existing(existing)) => existing,
            Err(error) => {
                tracing::warn!(%primary_error, fallback_error = %error, "idempotency store and fallback store failed; refusing");
                return Err(primary_error.into());
            }
        };
        match self.seen(existing, &record)? {
            Seen::Own => Ok(self.claimed(store_key, record, Which::Fallback, claimed_at)),
            Seen::Mismatch => Err(self.mismatch()),
            Seen::Replay(outcome) => Ok(self.replay(outcome)),
            Seen::InProgress(_, created_at_ms) => Err(self
                .in_progress(Which::Fallback, &store_key, Some(created_at_ms))
                .await),
        }
    }
}

/// Whether a claim `age` ms old was necessarily refreshed within 1.5 renewal intervals: its
/// lease was set when it was made, so the time since its last refresh is at most its age. Then
/// [`retry_after_from_lease`] answers the fixed value whatever the store's time to live says,
/// and the engine skips asking (`time_to_live` is a round trip on Redis): the common case of a
/// duplicate arriving while the first attempt runs costs one round trip, not two. The age comes
/// from the claimer's clock; skew between instances only moves that shortcut's edge by the
/// skew (a `Retry-After` is a hint).
fn refreshed_recently(age_ms: u64, lease: Duration) -> bool {
    let interval = renewal_interval(lease);
    u128::from(age_ms) <= (interval + interval / 2).as_millis()
}

/// `Retry-After` for an in-progress answer, from the remaining lease (see
/// [`IdempotencyError::InProgress`]). A lease refreshed within 1.5 renewal intervals of its full
/// length has a live owner that may finish any moment: suggest `fixed`. Otherwise the key frees
/// when the lease ends: suggest the remaining lease, clamped to 1 s..=lease.
fn retry_after_from_lease(remaining: Duration, lease: Duration, fixed: Duration) -> Duration {
    let since_refresh = lease.saturating_sub(remaining);
    let interval = renewal_interval(lease);
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
    fn young_claims_need_no_time_to_live() {
        let lease = Duration::from_secs(60);
        // Renewed every 20 s: up to 30 s old, a claim was refreshed within 1.5 intervals.
        assert!(refreshed_recently(0, lease));
        assert!(refreshed_recently(30_000, lease));
        assert!(!refreshed_recently(30_001, lease));
        // And whatever the time to live of such a claim, the answer would be the fixed value.
        let fixed = Duration::from_secs(1);
        for remaining in [lease, Duration::from_secs(30)] {
            assert_eq!(retry_after_from_lease(remaining, lease, fixed), fixed);
        }
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
