//! The claim guard handed to the code that runs the operation.

use std::time::Duration;

use tokio::time::Instant;

use super::handle::{Claim, Idempotency};
use super::registry::Which;
use super::stats::Event;
use crate::{
    Completed, Fenced, IdempotencyError, IdempotencyStore, InProgress, StoreKey, StoreOperation,
    StoredOutcome,
};

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

/// Everything a guard can be, in one place: `Drop` and every method match on it.
#[derive(Debug)]
enum State {
    /// A claim the guard holds, and what is happening to it.
    Claimed(Claim, Phase),
    /// No claim: the operation runs without protection.
    Unprotected(Unprotected),
    /// The claim was completed, released or handed away.
    Done,
}

/// What is happening to a held claim; decides what dropping the guard does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The operation runs: dropping releases the claim.
    Running,
    /// A completion is under way: dropping (cancellation) only stops renewal, since the
    /// operation ran and a release would invite a second run.
    Completing,
}

impl<S: IdempotencyStore + 'static> Guard<S> {
    /// The engine this guard belongs to.
    pub(crate) fn engine(&self) -> &Idempotency<S> {
        &self.engine
    }

    /// A guard for the claim `record` on `key`: `created_at` is the monotonic clock when
    /// `record.created_at_ms` was read, `claimed_at` when the claim's store call ended.
    pub(crate) fn claimed(
        engine: Idempotency<S>,
        key: StoreKey,
        record: InProgress,
        which: Which,
        created_at: Instant,
        claimed_at: Instant,
    ) -> Self {
        let ticket = engine.register_claim(&key, record.token, which, claimed_at);
        Self {
            engine,
            state: State::Claimed(
                Claim {
                    key,
                    record,
                    which,
                    ticket,
                    created_at,
                },
                Phase::Running,
            ),
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
            State::Claimed(claim, _) => Some(&claim.key),
            _ => None,
        }
    }

    /// Whether the claim is held in the fallback store ([`crate::FailurePolicy::Fallback`]):
    /// protection within this process only.
    pub fn is_fallback(&self) -> bool {
        matches!(&self.state, State::Claimed(c, _) if c.which == Which::Fallback)
    }

    /// Whether a lease renewal found this claim's lease lost: the outcome will not be stored
    /// and another attempt may be running the operation. Stop early if you can.
    pub fn is_lease_lost(&self) -> bool {
        match &self.state {
            State::Claimed(
                Claim {
                    ticket: Some(ticket),
                    ..
                },
                Phase::Running,
            ) => self.engine.inner.background.is_lost(*ticket),
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
        // Borrowed, not cloned: the guard owns its engine for the whole call (a clone was two
        // atomic read-modify-writes on the engine's shared count per completion).
        let engine = &self.engine;
        let background = &engine.inner.background;
        let State::Claimed(claim, phase @ Phase::Running) = &mut self.state else {
            // Unprotected (or already ended): nothing to store.
            return Ok(());
        };
        // A store that answers completions at once (the memory store) stores the outcome
        // before this call returns, with no await in between: renewal ends here, in the same
        // registry lock that tells whether the lease was lost (one lock per completion instead
        // of two). A renewal still in flight then finds the claim gone and says nothing, as
        // when it finishes after the guard. Other stores keep renewing while the completion
        // (and its retries) run: the claim is marked completing, and deregistered after.
        let renewal_ended = claim.which == Which::Primary && engine.completes_at_once();
        let lost = match claim.ticket {
            Some(ticket) if renewal_ended => {
                claim.ticket = None;
                background.deregister(ticket)
            }
            Some(ticket) => {
                let lost = background.mark_completing(ticket);
                if lost {
                    background.deregister(ticket);
                }
                lost
            }
            None => false,
        };
        if lost {
            tracing::warn!(key = %claim.key, "lease lost before completion; outcome not stored");
            self.state = State::Done;
            return Err(IdempotencyError::LeaseLost);
        }
        let config = engine.config();
        let max = config.max_outcome_size();
        if outcome.body.len() > max {
            let size = outcome.body.len();
            tracing::warn!(size, max, "outcome too large to store; releasing the claim");
            if let Some(claim) = self.take_claim() {
                // Boxed: this rare path's future stays out of every completion's.
                let _ = Box::pin(self.engine.release_claim(claim)).await;
            }
            return Err(IdempotencyError::OutcomeTooLarge { size, max });
        }
        // From here on, a cancelled future stops renewal but does not release (see Dropping).
        *phase = Phase::Completing;
        // One clock read for the completion's timestamp and its store call's latency: the
        // wall clock at the claim plus the monotonic time since (a wall clock stepped while the
        // operation ran does not show in `completed_at_ms`, which is informative only).
        let started = Instant::now();
        let since_created = started.saturating_duration_since(claim.created_at);
        let completed = Completed {
            token: claim.record.token,
            fingerprint: claim.record.fingerprint,
            created_at_ms: claim.record.created_at_ms,
            completed_at_ms: claim
                .record
                .created_at_ms
                .saturating_add(u64::try_from(since_created.as_millis()).unwrap_or(u64::MAX)),
            outcome: outcome.compressed_above(config.compression_threshold()),
        };
        let (result, attempts) = engine
            .store_completion(claim, &completed, started, renewal_ended)
            .await;
        if let Some(ticket) = claim.ticket {
            background.deregister(ticket);
        }
        let answer = match result {
            Ok(Fenced::Applied) => {
                engine.inner.stats.record(Event::Completion);
                tracing::debug!(key = %claim.key, "outcome stored");
                Ok(())
            }
            Ok(Fenced::LeaseLost) => {
                engine.inner.stats.record(Event::LeaseLost);
                tracing::warn!(key = %claim.key, "lease lost before completion; outcome not stored");
                Err(IdempotencyError::LeaseLost)
            }
            Err(error) => {
                tracing::warn!(
                    key = %claim.key, %error, attempts,
                    "outcome not stored: the store kept failing; the claim lapses after its lease"
                );
                Err(error.into())
            }
        };
        if let State::Claimed(claim, _) = std::mem::replace(&mut self.state, State::Done) {
            // The key's buffer serves the thread's next key (`StoreKey::recycle`).
            claim.key.recycle();
        }
        answer
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
            State::Claimed(mut claim, Phase::Running) => {
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
        let State::Claimed(claim, Phase::Running) = &self.state else {
            return Ok(());
        };
        let engine = &self.engine;
        let fenced = engine
            .timed(
                claim.which,
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

impl<S: IdempotencyStore + 'static> Drop for Guard<S> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Claimed(claim, Phase::Running) => {
                if let Some(ticket) = claim.ticket {
                    self.engine.inner.background.deregister(ticket);
                }
                tracing::debug!(key = %claim.key, "guard dropped without completion; releasing in the background");
                self.engine
                    .release_in_background(claim.key, claim.record.token, claim.which);
            }
            State::Claimed(claim, Phase::Completing) => {
                if let Some(ticket) = claim.ticket {
                    self.engine.inner.background.deregister(ticket);
                }
                tracing::warn!(key = %claim.key, "completion cancelled; the claim stands until its lease ends");
            }
            State::Unprotected(_) | State::Done => {}
        }
    }
}
