//! Workers on our own code: the engine over any store (`Idempotency::begin` →
//! `guard.complete`), and the memory store's primitives without the engine.

use anyhow::{Result, bail};
use idempotency_core::{
    Begin, Claim, Completed, Fenced, Fingerprint, Guard, Idempotency, IdempotencyError,
    IdempotencyKey, IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreKey,
    StoredOutcome, unix_millis_now,
};
use idempotency_memory::MemoryStore;

use crate::load::Worker;
use crate::scenario::{Keys, LEASE, RETENTION, Scenario, fingerprint, outcome, scope};

/// `Idempotency::begin` and, on a fresh key, `guard.complete`.
pub(crate) struct EngineWorker<S: IdempotencyStore + 'static> {
    engine: Idempotency<S>,
    scenario: Scenario,
    scope: Scope,
    /// A distinct key per fresh operation: `prefix` and a counter.
    keys: Keys,
    fixed: IdempotencyKey,
    fingerprint: Fingerprint,
    outcome: StoredOutcome,
}

impl<S: IdempotencyStore + 'static> EngineWorker<S> {
    pub(crate) fn new(
        engine: Idempotency<S>,
        scenario: Scenario,
        prefix: String,
        fixed: IdempotencyKey,
    ) -> Self {
        Self {
            engine,
            scenario,
            scope: scope(),
            keys: Keys::new(&prefix),
            fixed,
            fingerprint: fingerprint(),
            outcome: outcome(),
        }
    }
}

impl<S: IdempotencyStore + 'static> Worker for EngineWorker<S> {
    async fn op(&mut self) -> Result<()> {
        match self.scenario {
            Scenario::Fresh => {
                let key = IdempotencyKey::new(self.keys.next_key())?;
                match self
                    .engine
                    .begin(&self.scope, &key, self.fingerprint)
                    .await?
                {
                    Begin::Run(guard) => Ok(guard.complete(self.outcome.clone()).await?),
                    Begin::Replay(_) => bail!("a fresh key was replayed"),
                }
            }
            Scenario::Replay => {
                match self
                    .engine
                    .begin(&self.scope, &self.fixed, self.fingerprint)
                    .await?
                {
                    Begin::Replay(_) => Ok(()),
                    Begin::Run(_) => bail!("a completed key was claimed again"),
                }
            }
            Scenario::Conflict => {
                match self
                    .engine
                    .begin(&self.scope, &self.fixed, self.fingerprint)
                    .await
                {
                    Err(IdempotencyError::InProgress { .. }) => Ok(()),
                    Err(other) => Err(other.into()),
                    Ok(_) => bail!("an in-progress key was not reported in progress"),
                }
            }
        }
    }
}

/// Put `key` in the state the scenario needs: completed for `replay`, claimed (the returned
/// guard, to release after the cell) for `conflict`.
pub(crate) async fn prepare<S: IdempotencyStore + 'static>(
    engine: &Idempotency<S>,
    scenario: Scenario,
    key: &IdempotencyKey,
) -> Result<Option<Guard<S>>> {
    if scenario == Scenario::Fresh {
        return Ok(None);
    }
    let Begin::Run(guard) = engine.begin(&scope(), key, fingerprint()).await? else {
        bail!("the scenario key {key} was already used");
    };
    if scenario == Scenario::Replay {
        guard.complete(outcome()).await?;
        return Ok(None);
    }
    Ok(Some(guard))
}

/// The memory store's primitives alone: what the engine adds on top shows as the difference
/// between the `memory-store` and `memory` rows.
pub(crate) struct MemoryStoreWorker {
    store: MemoryStore,
    scenario: Scenario,
    keys: Keys,
    fixed: StoreKey,
    fingerprint: Fingerprint,
    outcome: StoredOutcome,
}

impl MemoryStoreWorker {
    pub(crate) fn new(store: MemoryStore, scenario: Scenario, prefix: String, fixed: &str) -> Self {
        Self {
            store,
            scenario,
            keys: Keys::new(&prefix),
            fixed: StoreKey::from_raw(fixed),
            fingerprint: fingerprint(),
            outcome: outcome(),
        }
    }

    fn claim(&self) -> InProgress {
        InProgress {
            token: LeaseToken::generate(),
            fingerprint: self.fingerprint,
            created_at_ms: unix_millis_now(),
        }
    }
}

impl Worker for MemoryStoreWorker {
    async fn op(&mut self) -> Result<()> {
        let claim = self.claim();
        match self.scenario {
            Scenario::Fresh => {
                let key = StoreKey::from_raw(self.keys.next_key());
                if self.store.try_claim(&key, &claim, LEASE).await? != Claim::Claimed {
                    bail!("a fresh key was held");
                }
                let done = Completed {
                    token: claim.token,
                    fingerprint: claim.fingerprint,
                    created_at_ms: claim.created_at_ms,
                    completed_at_ms: unix_millis_now(),
                    outcome: self.outcome.clone(),
                };
                match self
                    .store
                    .complete(&key, &claim.token, &done, RETENTION)
                    .await?
                {
                    Fenced::Applied => Ok(()),
                    Fenced::LeaseLost => bail!("lease lost"),
                }
            }
            Scenario::Replay | Scenario::Conflict => {
                match self.store.try_claim(&self.fixed, &claim, LEASE).await? {
                    Claim::Existing(Record::Completed(_)) if self.scenario == Scenario::Replay => {
                        Ok(())
                    }
                    Claim::Existing(Record::InProgress(_))
                        if self.scenario == Scenario::Conflict =>
                    {
                        Ok(())
                    }
                    other => bail!("unexpected claim answer {other:?}"),
                }
            }
        }
    }
}

/// The store-level counterpart of [`prepare`].
pub(crate) async fn prepare_store(
    store: &MemoryStore,
    scenario: Scenario,
    key: &str,
) -> Result<()> {
    if scenario == Scenario::Fresh {
        return Ok(());
    }
    let worker = MemoryStoreWorker::new(store.clone(), scenario, String::new(), key);
    let claim = worker.claim();
    let key = StoreKey::from_raw(key);
    if store.try_claim(&key, &claim, LEASE).await? != Claim::Claimed {
        bail!("the scenario key was held");
    }
    if scenario == Scenario::Replay {
        let done = Completed {
            token: claim.token,
            fingerprint: claim.fingerprint,
            created_at_ms: claim.created_at_ms,
            completed_at_ms: unix_millis_now(),
            outcome: outcome(),
        };
        store.complete(&key, &claim.token, &done, RETENTION).await?;
    }
    Ok(())
}
