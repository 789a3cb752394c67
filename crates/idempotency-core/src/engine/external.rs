//! Completing a claim somewhere the engine cannot see: inside the application's own database
//! transaction (the SQL store's transactional completion).
//!
//! The engine stays backend-neutral: see [`PendingCompletion`] for the flow.

use std::time::Duration;

use super::guard::Guard;
use super::handle::Idempotency;
use super::registry::Which;
use super::stats::{Event, names};
use crate::{
    Completed, Fenced, IdempotencyError, IdempotencyStore, InProgress, LeaseToken, StoreKey,
    StoreOperation, StoredOutcome,
};

/// What the fenced write of an external completion needs: replace the record under `key`, only
/// if it is still in progress under `token`, by `completed`, kept for `retention`.
#[derive(Debug, Clone, Copy)]
pub struct CompletionParts<'a> {
    /// The claimed store key.
    pub key: &'a StoreKey,
    /// The fencing token the claim holds.
    pub token: &'a LeaseToken,
    /// The completed record to write (outcome already compressed above the threshold).
    pub completed: &'a Completed,
    /// How long the completed record is kept (the engine's retention).
    pub retention: Duration,
    /// The engine's store operation timeout: the budget for the fenced write.
    pub timeout: Duration,
}

/// A completion prepared by [`Guard::prepare`] and written by someone else (inside the
/// application's transaction), then settled once the transaction's fate is known.
///
/// [`Guard::prepare`] applies the engine's policy (size limit, compression, timestamps) and
/// hands out this value holding everything the fenced write needs ([`PendingCompletion::parts`]).
/// A backend that can write inside a caller's transaction (`idempotency-sql`'s `complete_in`)
/// runs that write there; then the caller settles it:
///
/// | what happened | call | effect |
/// |---|---|---|
/// | fenced write applied, transaction committed | [`PendingCompletion::committed`] | counted as a completion |
/// | fenced write found the lease lost | [`PendingCompletion::lease_lost`] | an [`IdempotencyError::LeaseLost`] to roll back with |
/// | the transaction cannot write the live claim | (drop it) | an [`IdempotencyError::TransactionConflict`] to roll back with; released |
/// | transaction rolled back (or failed) | [`PendingCompletion::release`] | the claim is released so a retry runs |
/// | dropped unsettled | (drop) | released in the background, best effort |
///
/// Releasing after a commit is harmless: a release is fenced on the record being *in progress*
/// under the token, and a committed completion made it completed, so the release changes
/// nothing. That is why dropping a pending completion may always release: the only cost of
/// forgetting [`PendingCompletion::committed`] is one extra store round trip.
///
/// # Dropping
/// A pending completion dropped unsettled releases the claim in the background on the current
/// tokio runtime (harmless if the completion in fact committed, see above), so a rolled-back
/// transaction does not leave the key blocked for a whole lease.
#[derive(Debug)]
#[must_use = "settle with committed(), lease_lost() or release() once the transaction ends"]
pub struct PendingCompletion<S: IdempotencyStore + 'static> {
    engine: Idempotency<S>,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    key: StoreKey,
    /// The store holding the claim (the engine's own, or its fallback store).
    which: Which,
    claim: InProgress,
    completed: Completed,
}

impl<S: IdempotencyStore + 'static> Guard<S> {
    /// Prepare the completion of this claim with `outcome`, to be written by a backend inside
    /// the application's own transaction (for example `idempotency_sql`'s `complete_in`).
    ///
    /// Applies what [`Guard::complete`] applies before writing: the maximum stored size and
    /// compression above the threshold. The guard's claim moves into the returned
    /// [`PendingCompletion`]; an unprotected guard (kill switch, fail open) gives one without
    /// parts, which backends treat as "nothing to write".
    ///
    /// # Errors
    /// [`IdempotencyError::OutcomeTooLarge`]: nothing will be stored; the claim is released in
    /// the background (best effort, once the caller's transaction lets go of the row) so a retry
    /// runs again.
    pub async fn prepare(
        mut self,
        outcome: StoredOutcome,
    ) -> Result<PendingCompletion<S>, IdempotencyError> {
        let engine = self.engine().clone();
        let Some(claim) = self.take_claim() else {
            return Ok(PendingCompletion {
                engine,
                pending: None,
            });
        };
        let config = engine.config();
        let max = config.max_outcome_size();
        if outcome.body.len() > max {
            let size = outcome.body.len();
            tracing::warn!(size, max, "outcome too large to store; releasing the claim");
            // Released in the background, not awaited: the caller's transaction may hold the
            // record's row (or SQLite's write lock) until it rolls back.
            drop(PendingCompletion {
                engine: engine.clone(),
                pending: Some(Pending {
                    key: claim.key.clone(),
                    which: claim.which,
                    claim: claim.record.clone(),
                    completed: Completed {
                        token: claim.record.token,
                        fingerprint: claim.record.fingerprint,
                        created_at_ms: claim.record.created_at_ms,
                        completed_at_ms: 0,
                        outcome: StoredOutcome::default(),
                    },
                }),
            });
            return Err(IdempotencyError::OutcomeTooLarge { size, max });
        }
        let completed = Completed {
            token: claim.record.token,
            fingerprint: claim.record.fingerprint,
            created_at_ms: claim.record.created_at_ms,
            // As `Guard::complete` stamps it: the claim's wall-clock time plus the monotonic
            // time since. `created_at_ms` is derived from the monotonic clock (`wall.rs`), so
            // a direct reading here could come out before it.
            completed_at_ms: claim.record.created_at_ms.saturating_add(
                u64::try_from(claim.created_at.elapsed().as_millis()).unwrap_or(u64::MAX),
            ),
            outcome: outcome.compressed_above(config.compression_threshold()),
        };
        Ok(PendingCompletion {
            pending: Some(Pending {
                key: claim.key.clone(),
                which: claim.which,
                claim: claim.record.clone(),
                completed,
            }),
            engine,
        })
    }
}

impl<S: IdempotencyStore + 'static> PendingCompletion<S> {
    /// What to write, or `None` when the guard held no claim (the operation ran unprotected) or
    /// the completion was already settled.
    pub fn parts(&self) -> Option<CompletionParts<'_>> {
        let config = self.engine.config();
        self.pending.as_ref().map(|p| CompletionParts {
            key: &p.key,
            token: &p.claim.token,
            completed: &p.completed,
            retention: config.retention(),
            timeout: config.store_timeout(),
        })
    }

    /// The fenced write was applied and the transaction holding it committed: the outcome is
    /// stored. Counts the completion; nothing is sent to the store.
    pub fn committed(mut self) {
        if let Some(p) = self.pending.take() {
            self.engine.inner.stats.record(Event::Completion);
            tracing::debug!(key = %p.key, "outcome stored in the application's transaction");
        }
    }

    /// The fenced write found the claim lost (lapsed, deleted or taken over): returns
    /// [`IdempotencyError::LeaseLost`], for the caller to roll its transaction back with, so the
    /// stale attempt's side effect is undone too. Nothing is released: the claim is not ours.
    pub fn lease_lost(mut self) -> IdempotencyError {
        if let Some(p) = self.pending.take() {
            self.engine.inner.stats.record(Event::LeaseLost);
            tracing::warn!(key = %p.key, "lease lost before completion; roll the transaction back");
        }
        IdempotencyError::LeaseLost
    }

    /// The transaction rolled back (or its fate is unknown and the caller chose to retry): give
    /// the claim up so a retry runs the operation again.
    ///
    /// # Errors
    /// [`IdempotencyError::LeaseLost`] when the record is not in progress under the token (also
    /// when the completion did commit: nothing changes then), or
    /// [`IdempotencyError::StoreUnavailable`] (the claim lapses after its lease).
    pub async fn release(mut self) -> Result<(), IdempotencyError> {
        match self.pending.take() {
            Some(p) => {
                let engine = &self.engine;
                let released = engine
                    .timed(
                        p.which,
                        StoreOperation::Release,
                        engine.store_of(p.which).release(&p.key, &p.claim.token),
                    )
                    .await;
                match released {
                    Ok(Fenced::Applied) => {
                        metrics::counter!(names::RELEASES).increment(1);
                        Ok(())
                    }
                    Ok(Fenced::LeaseLost) => Err(IdempotencyError::LeaseLost),
                    Err(error) => {
                        // Keep trying in the background, so the key frees once the store
                        // answers again.
                        engine.release_in_background(p.key, p.claim.token, p.which);
                        Err(error.into())
                    }
                }
            }
            None => Ok(()),
        }
    }
}

impl<S: IdempotencyStore + 'static> Drop for PendingCompletion<S> {
    fn drop(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::debug!(key = %p.key, "pending completion dropped unsettled; releasing in the background");
                let engine = self.engine.clone();
                runtime.spawn(async move {
                    // `LeaseLost` is the normal answer after a commit (the record is completed),
                    // so it is neither counted nor logged as a lost lease.
                    let released = engine
                        .timed(
                            p.which,
                            StoreOperation::Release,
                            engine.store_of(p.which).release(&p.key, &p.claim.token),
                        )
                        .await;
                    match released {
                        Ok(Fenced::Applied) => {
                            metrics::counter!(names::RELEASES).increment(1);
                            tracing::debug!(key = %p.key, "uncommitted claim released");
                        }
                        Ok(Fenced::LeaseLost) => {}
                        Err(error) => {
                            // The store is unreachable (or timed out): keep trying with the
                            // bounded retries orphaned claims get, so the key frees as soon as
                            // the store answers again instead of when the lease lapses. Safe
                            // whatever the transaction's fate: after a commit the record is
                            // completed and a release under this token changes nothing.
                            tracing::debug!(key = %p.key, %error, "release of an uncommitted claim failed; retrying in the background");
                            engine.release_in_background(p.key, p.claim.token, p.which);
                        }
                    }
                });
            }
            Err(_) => {
                tracing::warn!(key = %p.key, "pending completion dropped outside a tokio runtime; an uncommitted claim lapses when its lease expires");
            }
        }
    }
}
