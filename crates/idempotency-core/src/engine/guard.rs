//! The claim guard handed to the code that runs the operation.

use std::time::Duration;

use crate::engine::stats::{Stats, names};
use crate::{
    Completed, Fenced, IdempotencyError, IdempotencyStore, InProgress, StoreKey, StoredOutcome,
    unix_millis_now,
};

use super::Idempotency;

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
/// # Dropping
/// A guard dropped without either (an early return, a panic, a cancelled request) releases the
/// claim in the background on the current tokio runtime, best effort: if there is no runtime, or
/// the store is unreachable, the claim lapses by itself when its lease expires, and until then
/// retries are answered "in flight".
#[derive(Debug)]
#[must_use = "complete or release the claim"]
pub struct Guard<S: IdempotencyStore + 'static> {
    engine: Idempotency<S>,
    claim: Result<Claim, Unprotected>,
}

#[derive(Debug)]
pub(crate) struct Claim {
    pub(crate) key: StoreKey,
    pub(crate) record: InProgress,
}

impl<S: IdempotencyStore + 'static> Guard<S> {
    pub(crate) fn claimed(engine: Idempotency<S>, key: StoreKey, record: InProgress) -> Self {
        Self {
            engine,
            claim: Ok(Claim { key, record }),
        }
    }

    pub(crate) fn engine(&self) -> &Idempotency<S> {
        &self.engine
    }

    pub(crate) fn unprotected(engine: Idempotency<S>, why: Unprotected) -> Self {
        Self {
            engine,
            claim: Err(why),
        }
    }

    /// `None` when the guard holds a claim; otherwise why the operation runs unprotected.
    pub fn unprotected_reason(&self) -> Option<Unprotected> {
        self.claim.as_ref().err().copied()
    }

    /// The store key claimed, if any.
    pub fn store_key(&self) -> Option<&StoreKey> {
        self.claim.as_ref().ok().map(|c| &c.key)
    }

    /// Store `outcome` so that every retry replays it. Bodies above the compression threshold are
    /// compressed.
    ///
    /// # Errors
    /// - [`IdempotencyError::OutcomeTooLarge`]: nothing stored; the claim is released so a retry
    ///   runs again;
    /// - [`IdempotencyError::LeaseLost`]: the claim lapsed (or was deleted) first;
    /// - [`IdempotencyError::StoreUnavailable`]: the store failed; the claim lapses after its lease.
    pub async fn complete(mut self, outcome: StoredOutcome) -> Result<(), IdempotencyError> {
        let Some(Claim { key, record }) = self.take_claim() else {
            return Ok(());
        };
        let engine = &self.engine;
        let config = engine.config();
        let max = config.max_outcome_size();
        if outcome.body.len() > max {
            let size = outcome.body.len();
            tracing::warn!(size, max, "outcome too large to store; releasing the claim");
            let _ = engine.release_claim(&key, &record).await;
            return Err(IdempotencyError::OutcomeTooLarge { size, max });
        }
        let completed = Completed {
            token: record.token,
            fingerprint: record.fingerprint,
            created_at_ms: record.created_at_ms,
            completed_at_ms: unix_millis_now(),
            outcome: outcome.compressed_above(config.compression_threshold()),
        };
        let retention = config.retention();
        let fenced = engine
            .timed(
                "complete",
                engine
                    .store()
                    .complete(&key, &record.token, &completed, retention),
            )
            .await?;
        match fenced {
            Fenced::Applied => {
                Stats::bump(&engine.inner.stats.writes);
                metrics::counter!(names::COMPLETIONS).increment(1);
                tracing::debug!(key = %key, "outcome stored");
                Ok(())
            }
            Fenced::LeaseLost => {
                metrics::counter!(names::LEASE_LOST).increment(1);
                tracing::warn!(key = %key, "lease lost before completion; outcome not stored");
                Err(IdempotencyError::LeaseLost)
            }
        }
    }

    /// Give the key up so that a retry runs the operation again (it failed in a way worth
    /// retrying, e.g. a 5xx).
    ///
    /// # Errors
    /// [`IdempotencyError::LeaseLost`] when the claim had already lapsed (harmless), or
    /// [`IdempotencyError::StoreUnavailable`] (the claim lapses after its lease).
    pub async fn release(mut self) -> Result<(), IdempotencyError> {
        match self.take_claim() {
            Some(claim) => self.engine.release_claim(&claim.key, &claim.record).await,
            None => Ok(()),
        }
    }

    /// Move the claim out (so `Drop` has nothing left to release).
    pub(crate) fn take_claim(&mut self) -> Option<Claim> {
        match std::mem::replace(&mut self.claim, Err(Unprotected::Disabled)) {
            Ok(claim) => Some(claim),
            Err(why) => {
                self.claim = Err(why);
                None
            }
        }
    }

    /// Reset the lease to `lease` from now (default: the configured lease), for operations that
    /// run longer than one lease.
    ///
    /// # Errors
    /// [`IdempotencyError::LeaseLost`] when the claim already lapsed: stop the operation if you
    /// can, another attempt may be running it; or [`IdempotencyError::StoreUnavailable`].
    pub async fn extend(&self, lease: Option<Duration>) -> Result<(), IdempotencyError> {
        let Ok(claim) = &self.claim else {
            return Ok(());
        };
        let lease = lease.unwrap_or(self.engine.config().lease());
        let engine = &self.engine;
        let fenced = engine
            .timed(
                "extend",
                engine
                    .store()
                    .extend(&claim.key, &claim.record.token, lease),
            )
            .await?;
        match fenced {
            Fenced::Applied => Ok(()),
            Fenced::LeaseLost => {
                metrics::counter!(names::LEASE_LOST).increment(1);
                Err(IdempotencyError::LeaseLost)
            }
        }
    }
}

impl<S: IdempotencyStore + 'static> Idempotency<S> {
    pub(crate) async fn release_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
    ) -> Result<(), IdempotencyError> {
        let fenced = self
            .timed("release", self.store().release(key, &record.token))
            .await?;
        metrics::counter!(names::RELEASES).increment(1);
        match fenced {
            Fenced::Applied => {
                tracing::debug!(key = %key, "claim released");
                Ok(())
            }
            Fenced::LeaseLost => {
                metrics::counter!(names::LEASE_LOST).increment(1);
                Err(IdempotencyError::LeaseLost)
            }
        }
    }
}

impl<S: IdempotencyStore + 'static> Drop for Guard<S> {
    fn drop(&mut self) {
        // Completed or released guards have already given their claim up.
        let Some(Claim { key, record }) = self.take_claim() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::debug!(key = %key, "guard dropped without completion; releasing in the background");
                let engine = self.engine.clone();
                runtime.spawn(async move {
                    if let Err(error) = engine.release_claim(&key, &record).await {
                        tracing::debug!(key = %key, %error, "background release failed; the lease will lapse");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(key = %key, "guard dropped outside a tokio runtime; the claim lapses when its lease expires");
            }
        }
    }
}
