//! The claim guard handed to the code that runs the operation.

use std::time::Duration;

use tokio::time::Instant;

use crate::engine::background::{Ticket, Which};
use crate::engine::stats::{Event, names};
use crate::{
    Completed, Fenced, IdempotencyError, IdempotencyStore, InProgress, StoreError, StoreKey,
    StoreOperation, StoredOutcome, unix_millis_now,
};

use super::Idempotency;

/// First delay between two completion attempts; doubles per attempt.
const COMPLETION_BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest delay between two completion attempts.
const COMPLETION_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why a guard holds no claim: the operation runs without protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unprotected {
    /// The kill switch is on.
    Disabled,
    /// The store failed and the policy is fail open.
    FailOpen,
}

/// Proof of a claim on a key. End it with [`Guard::complete`] or [`Guard::release`].
///
/// # Lease renewal
/// While the guard lives, the engine renews its lease about every third of the lease (unless
/// switched off with [`IdempotencyBuilder::renew_leases`](crate::IdempotencyBuilder::renew_leases)),
/// so an operation may run longer than one lease and a retry meanwhile is still answered "in
/// progress". Renewal stops when the guard completes, releases or is dropped. If a renewal finds
/// the lease lost (the store lost the record, or it lapsed during an outage and another attempt
/// took the key), a warning and `idempotency_lease_renewals_total{result="lease_lost"}` are
/// emitted, [`Guard::is_lease_lost`] turns true and [`Guard::complete`] answers
/// [`IdempotencyError::LeaseLost`] without writing.
///
/// # Dropping
/// A guard dropped without either (an early return, a panic, a cancelled request) releases the
/// claim in the background, with bounded retries while the store is unreachable. Without a tokio
/// runtime, or if the store stays unreachable, the claim lapses by itself when its lease
/// expires, and until then retries are answered "in progress". A guard dropped while
/// [`Guard::complete`] is running (its future cancelled) does not release: the operation ran,
/// so its claim stands until the lease ends rather than inviting a second run.
#[derive(Debug)]
#[must_use = "complete or release the claim"]
pub struct Guard<S: IdempotencyStore + 'static> {
    engine: Idempotency<S>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// A claim the guard holds: dropping releases it.
    Held(Claim),
    /// A completion is under way: dropping (cancellation) only stops renewal.
    Completing(Claim),
    /// No claim: the operation runs without protection.
    Unprotected(Unprotected),
    /// The claim was completed, released or handed away.
    Done,
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
    ticket: Option<Ticket>,
}

impl Claim {
    /// Whether the claim lives in the engine's own store (not the fallback store).
    #[allow(dead_code)]
    pub(crate) fn is_primary(&self) -> bool {
        self.which == Which::Primary
    }
}

fn completion_backoff(attempt: u32) -> Duration {
    COMPLETION_BACKOFF_START
        .saturating_mul(1u32 << attempt.min(16))
        .min(COMPLETION_BACKOFF_MAX)
}

impl<S: IdempotencyStore + 'static> Guard<S> {
    /// The engine this guard belongs to.
    pub(crate) fn engine(&self) -> &Idempotency<S> {
        &self.engine
    }

    pub(crate) fn claimed(
        engine: Idempotency<S>,
        key: StoreKey,
        record: InProgress,
        which: Which,
    ) -> Self {
        let ticket = engine.register_claim(&key, record.token, which);
        Self {
            engine,
            state: State::Held(Claim {
                key,
                record,
                which,
                ticket,
            }),
        }
    }

    pub(crate) fn unprotected(engine: Idempotency<S>, why: Unprotected) -> Self {
        Self {
            engine,
            state: State::Unprotected(why),
        }
    }

    /// `None` when the guard holds a claim; otherwise why the operation runs unprotected.
    pub fn unprotected_reason(&self) -> Option<Unprotected> {
        match self.state {
            State::Unprotected(why) => Some(why),
            _ => None,
        }
    }

    /// The store key claimed, if any.
    pub fn store_key(&self) -> Option<&StoreKey> {
        match &self.state {
            State::Held(claim) | State::Completing(claim) => Some(&claim.key),
            _ => None,
        }
    }

    /// Whether the claim is held in the fallback store ([`crate::FailurePolicy::Fallback`]):
    /// protection within this process only.
    pub fn is_fallback(&self) -> bool {
        matches!(&self.state, State::Held(c) | State::Completing(c) if c.which == Which::Fallback)
    }

    /// Whether a lease renewal found this claim's lease lost: the outcome will not be stored
    /// and another attempt may be running the operation. Stop early if you can.
    pub fn is_lease_lost(&self) -> bool {
        match &self.state {
            State::Held(Claim {
                ticket: Some(ticket),
                ..
            }) => self.engine.inner.background.is_lost(*ticket),
            _ => false,
        }
    }

    /// Store `outcome` so that every retry replays it. Bodies above the compression threshold are
    /// compressed.
    ///
    /// A transient store failure (timeout, connection trouble, writes refused) is retried with
    /// backoff (50 ms doubling to 1 s) for up to
    /// [`completion_retry`](crate::IdempotencyBuilder::completion_retry) (default 30 s) while the
    /// lease keeps being renewed, so a short outage delays this call instead of losing the
    /// outcome; retries are counted in `idempotency_completion_retries_total`. A retried
    /// completion is safe: one under the same token that already landed is accepted.
    ///
    /// # Errors
    /// - [`IdempotencyError::OutcomeTooLarge`]: nothing stored; the claim is released so a retry
    ///   runs again;
    /// - [`IdempotencyError::LeaseLost`]: the claim lapsed (or was deleted or taken over) first,
    ///   or a renewal found it lost;
    /// - [`IdempotencyError::StoreUnavailable`]: the store kept failing past the retry bound (or
    ///   failed in a way retrying cannot fix); the outcome is not stored and the claim lapses
    ///   after its lease, after which a retry runs the operation again.
    pub async fn complete(mut self, outcome: StoredOutcome) -> Result<(), IdempotencyError> {
        let claim = match std::mem::replace(&mut self.state, State::Done) {
            State::Held(claim) => claim,
            other => {
                self.state = other;
                return Ok(());
            }
        };
        let engine = self.engine.clone();
        let background = &engine.inner.background;
        if let Some(ticket) = claim.ticket
            && background.mark_completing(ticket)
        {
            background.deregister(ticket);
            tracing::warn!(key = %claim.key, "lease lost before completion; outcome not stored");
            return Err(IdempotencyError::LeaseLost);
        }
        let config = engine.config();
        let max = config.max_outcome_size();
        if outcome.body.len() > max {
            let size = outcome.body.len();
            tracing::warn!(size, max, "outcome too large to store; releasing the claim");
            self.state = State::Held(claim);
            if let Some(claim) = self.take_claim() {
                let _ = engine.release_claim(claim).await;
            }
            return Err(IdempotencyError::OutcomeTooLarge { size, max });
        }
        let completed = Completed {
            token: claim.record.token,
            fingerprint: claim.record.fingerprint,
            created_at_ms: claim.record.created_at_ms,
            completed_at_ms: unix_millis_now(),
            outcome: outcome.compressed_above(config.compression_threshold()),
        };
        let retention = config.retention();
        // From here on, a cancelled future stops renewal but does not release (see Dropping).
        self.state = State::Completing(claim);
        let State::Completing(claim) = &self.state else {
            return Ok(());
        };
        let store = engine.store_of(claim.which);
        let first = engine
            .timed(
                StoreOperation::Complete,
                store.complete(&claim.key, &claim.record.token, &completed, retention),
            )
            .await;
        let (result, attempts) = match first {
            // Boxed: the retry loop's state stays out of the common path's future.
            Err(error) if error.is_transient() => {
                Box::pin(engine.retry_completion(claim, &completed, error)).await
            }
            other => (other, 1),
        };
        let State::Completing(claim) = std::mem::replace(&mut self.state, State::Done) else {
            return Ok(());
        };
        if let Some(ticket) = claim.ticket {
            background.deregister(ticket);
        }
        let key = claim.key;
        match result {
            Ok(Fenced::Applied) => {
                engine.inner.stats.record(Event::Completion);
                tracing::debug!(key = %key, "outcome stored");
                Ok(())
            }
            Ok(Fenced::LeaseLost) => {
                engine.inner.stats.record(Event::LeaseLost);
                tracing::warn!(key = %key, "lease lost before completion; outcome not stored");
                Err(IdempotencyError::LeaseLost)
            }
            Err(error) => {
                tracing::warn!(
                    key = %key, %error, attempts,
                    "outcome not stored: the store kept failing; the claim lapses after its lease"
                );
                Err(error.into())
            }
        }
    }

    /// Give the key up so that a retry runs the operation again (it failed in a way worth
    /// retrying, e.g. a 5xx).
    ///
    /// # Errors
    /// [`IdempotencyError::LeaseLost`] when the claim had already lapsed (harmless), or
    /// [`IdempotencyError::StoreUnavailable`]: the release is then retried in the background
    /// until the store answers (or the lease ends).
    pub async fn release(mut self) -> Result<(), IdempotencyError> {
        match self.take_claim() {
            Some(claim) => self.engine.release_claim(claim).await,
            None => Ok(()),
        }
    }

    /// Move the claim out of the guard: `Drop` will not release it and its lease renewal stops.
    /// The caller now owns the claim's fate (complete it elsewhere, or let it lapse).
    pub(crate) fn take_claim(&mut self) -> Option<Claim> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Held(mut claim) => {
                if let Some(ticket) = claim.ticket.take() {
                    self.engine.inner.background.deregister(ticket);
                }
                Some(claim)
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Reset the lease to the configured lease from now. With renewal on (the default) this is
    /// rarely needed.
    ///
    /// # Errors
    /// As [`Guard::extend_by`].
    pub async fn extend(&self) -> Result<(), IdempotencyError> {
        self.extend_by(self.engine.config().lease()).await
    }

    /// Reset the lease to `lease` from now; later renewals keep the new lease length.
    ///
    /// # Errors
    /// [`IdempotencyError::LeaseLost`] when the claim already lapsed: stop the operation if you
    /// can, another attempt may be running it; or [`IdempotencyError::StoreUnavailable`].
    pub async fn extend_by(&self, lease: Duration) -> Result<(), IdempotencyError> {
        let State::Held(claim) = &self.state else {
            return Ok(());
        };
        let engine = &self.engine;
        let fenced = engine
            .timed(
                StoreOperation::Extend,
                engine
                    .store_of(claim.which)
                    .extend(&claim.key, &claim.record.token, lease),
            )
            .await?;
        let background = &engine.inner.background;
        match fenced {
            Fenced::Applied => {
                if let Some(ticket) = claim.ticket {
                    background.extended(ticket, lease);
                }
                Ok(())
            }
            Fenced::LeaseLost => {
                if let Some(ticket) = claim.ticket {
                    background.mark_lost(ticket);
                }
                engine.inner.stats.record(Event::LeaseLost);
                Err(IdempotencyError::LeaseLost)
            }
        }
    }
}

impl<S: IdempotencyStore + 'static> Idempotency<S> {
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

impl<S: IdempotencyStore + 'static> Drop for Guard<S> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Held(claim) => {
                if let Some(ticket) = claim.ticket {
                    self.engine.inner.background.deregister(ticket);
                }
                tracing::debug!(key = %claim.key, "guard dropped without completion; releasing in the background");
                self.engine
                    .release_in_background(claim.key, claim.record.token, claim.which);
            }
            State::Completing(claim) => {
                if let Some(ticket) = claim.ticket {
                    self.engine.inner.background.deregister(ticket);
                }
                tracing::warn!(key = %claim.key, "completion cancelled; the claim stands until its lease ends");
            }
            State::Unprotected(_) | State::Done => {}
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
