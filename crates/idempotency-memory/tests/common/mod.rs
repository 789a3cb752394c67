//! Helpers for the paused-clock engine tests: the memory store on tokio's clock, keys, and a
//! store that counts lease extensions.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, Idempotency, IdempotencyKey, IdempotencyStore,
    InProgress, LeaseToken, Record, StoreError, StoreKey,
};
use idempotency_memory::{Clock, MemoryStore};
use tokio::time::Instant;

pub const LEASE: Duration = Duration::from_millis(500);

/// The memory store's expiry clock on tokio's (paused) clock.
#[derive(Debug)]
pub struct TokioClock(pub Instant);

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

pub fn memory() -> MemoryStore {
    MemoryStore::builder()
        .clock(TokioClock(Instant::now()))
        .build()
}

pub fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::new(s).unwrap()
}

pub fn fp() -> Fingerprint {
    Fingerprint::of("request")
}

/// Counts `extend` calls on the way to a memory store.
#[derive(Debug, Clone)]
pub struct CountingStore {
    inner: MemoryStore,
    extends: Arc<AtomicUsize>,
}

impl CountingStore {
    pub fn new() -> Self {
        Self {
            inner: memory(),
            extends: Arc::new(AtomicUsize::new(0)),
        }
    }
    pub fn extends(&self) -> usize {
        self.extends.load(Ordering::SeqCst)
    }
}

impl IdempotencyStore for CountingStore {
    async fn try_claim(
        &self,
        k: &StoreKey,
        r: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.inner.try_claim(k, r, lease).await
    }
    async fn complete(
        &self,
        k: &StoreKey,
        t: &LeaseToken,
        r: &Completed,
        ret: Duration,
    ) -> Result<Fenced, StoreError> {
        self.inner.complete(k, t, r, ret).await
    }
    async fn release(&self, k: &StoreKey, t: &LeaseToken) -> Result<Fenced, StoreError> {
        self.inner.release(k, t).await
    }
    async fn extend(
        &self,
        k: &StoreKey,
        t: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.extends.fetch_add(1, Ordering::SeqCst);
        self.inner.extend(k, t, lease).await
    }
    async fn get(&self, k: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(k).await
    }
    async fn delete(&self, k: &StoreKey) -> Result<bool, StoreError> {
        self.inner.delete(k).await
    }
}

pub fn engine_on<S: IdempotencyStore + 'static>(store: S) -> Idempotency<S> {
    Idempotency::builder(store)
        .lease(LEASE)
        .ignore_env()
        .build()
        .unwrap()
}
