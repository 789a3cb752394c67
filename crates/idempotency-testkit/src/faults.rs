//! A store wrapper that injects failures, for testing failure policies without a real outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use idempotency_core::{
    Claim, Completed, DynIdempotencyStore, Fenced, IdempotencyStore, InProgress, LeaseToken,
    Record, StoreError, StoreKey, Waited,
};

/// What the wrapped store does on the next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Pass every call through.
    None = 0,
    /// Fail every call with [`StoreError::Unavailable`].
    Unavailable = 1,
    /// Never answer (the engine's timeout must fire).
    Hang = 2,
    /// Refuse writes with [`StoreError::WriteRefused`] (like Redis at `maxmemory` with
    /// `noeviction`); reads pass through.
    RefuseWrites = 3,
    /// Fail [`IdempotencyStore::complete`] with [`StoreError::Unavailable`]; every other call
    /// passes through (an outage that starts after the claim).
    FailCompletions = 4,
    /// Fail [`IdempotencyStore::try_claim`] with [`StoreError::Timeout`] *after* passing it
    /// through: the claim is applied but its reply is lost (a claim orphaned by a timeout).
    LoseClaimReplies = 5,
}

/// Which primitive a call is, for faults that hit only some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Claim,
    Complete,
    Write,
    Read,
}

/// Wraps a store; [`FaultyStore::set`] switches failures on and off for all clones.
#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: Arc<dyn DynIdempotencyStore>,
    fault: Arc<AtomicU8>,
    calls: Arc<AtomicU64>,
}

impl FaultyStore {
    /// Wrap `inner`, passing calls through until told otherwise.
    pub fn new(inner: Arc<dyn DynIdempotencyStore>) -> Self {
        Self {
            inner,
            fault: Arc::new(AtomicU8::new(Fault::None as u8)),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Switch the failure mode.
    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Calls made so far (all primitives).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        match self.fault.load(Ordering::SeqCst) {
            1 => Fault::Unavailable,
            2 => Fault::Hang,
            3 => Fault::RefuseWrites,
            4 => Fault::FailCompletions,
            5 => Fault::LoseClaimReplies,
            _ => Fault::None,
        }
    }

    async fn gate(&self, op: Op) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.fault() {
            Fault::Unavailable => Err(StoreError::Unavailable {
                source: "injected fault: connection refused".into(),
            }),
            Fault::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(StoreError::Unavailable {
                    source: "injected hang ended".into(),
                })
            }
            Fault::RefuseWrites if op != Op::Read => Err(StoreError::WriteRefused {
                source: "OOM command not allowed when used memory > 'maxmemory'. (injected)".into(),
            }),
            Fault::FailCompletions if op == Op::Complete => Err(StoreError::Unavailable {
                source: "injected fault: connection reset during completion".into(),
            }),
            _ => Ok(()),
        }
    }
}

impl IdempotencyStore for FaultyStore {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.gate(Op::Claim).await?;
        let claimed = self.inner.try_claim(key, record, lease).await?;
        if self.fault() == Fault::LoseClaimReplies {
            return Err(StoreError::Timeout {
                operation: idempotency_core::StoreOperation::TryClaim,
                after: Duration::from_millis(1),
            });
        }
        Ok(claimed)
    }
    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        self.gate(Op::Complete).await?;
        self.inner.complete(key, token, record, retention).await
    }
    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        self.gate(Op::Write).await?;
        self.inner.release(key, token).await
    }
    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.gate(Op::Write).await?;
        self.inner.extend(key, token, lease).await
    }
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.gate(Op::Read).await?;
        self.inner.get(key).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.gate(Op::Write).await?;
        self.inner.delete(key).await
    }
    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        self.gate(Op::Read).await?;
        self.inner.time_to_live(key).await
    }
    async fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> Result<Waited, StoreError> {
        self.gate(Op::Read).await?;
        self.inner.wait_for_change(key, seen, timeout).await
    }
}

/// A harness that runs another harness's store through a [`FaultyStore`] passing every call
/// through, so the behaviour suite checks that the wrapper changes nothing (as object_store runs
/// its suite through `Arc<dyn …>`): `behaviour_suite!(async { FaultyHarness::new(h().await) })`.
#[derive(Debug)]
pub struct FaultyHarness<H>(H);

impl<H: crate::StoreHarness> FaultyHarness<H> {
    /// Wrap `inner`'s store.
    pub fn new(inner: H) -> Self {
        Self(inner)
    }
}

#[async_trait]
impl<H: crate::StoreHarness> crate::StoreHarness for FaultyHarness<H> {
    fn store(&self) -> Arc<dyn DynIdempotencyStore> {
        Arc::new(FaultyStore::new(self.0.store()))
    }
    fn capabilities(&self) -> crate::Capabilities {
        self.0.capabilities()
    }
    async fn advance(&self, by: Duration) {
        self.0.advance(by).await;
    }
    fn short_lease(&self) -> Duration {
        self.0.short_lease()
    }
    async fn put_raw(&self, key: &StoreKey, value: crate::RawValue) {
        self.0.put_raw(key, value).await;
    }
    fn key_prefix(&self) -> &str {
        self.0.key_prefix()
    }
}
