//! Shared by the breaker10 tests: the memory store behind a switch that hides or shows its
//! at-once answers (and scripts failures), and a counting metrics recorder.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use idempotency_core::{
    Begin, Claim, Completed, Fenced, Fingerprint, Guard, Idempotency, IdempotencyKey,
    IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoreKey, StoredOutcome,
    Waited,
};
use idempotency_memory::{ManualClock, MemoryStore};

/// How a [`Probe`] answers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mode {
    /// Answer `try_claim_now` / `complete_now` (else `None`: async only).
    pub at_once: bool,
    /// The first completion attempts (at once when `at_once`, else async) answer a transient
    /// error this many times.
    pub transient_completions: u32,
    /// The first this many completion attempts are not scripted (they reach the store), the
    /// ones after them are (`transient_completions`, `lease_lost_first`).
    pub unscripted_first: u32,
    /// The first completion attempt answers `LeaseLost` without touching the store.
    pub lease_lost_first: bool,
    /// The async primitives never answer (the contract says they must, the engine must not
    /// need them after an at-once claim anyway, except on its retry path).
    pub hang_async: bool,
    /// With `at_once`: only the first completion is answered at once, later ones `None`.
    pub at_once_first_completion_only: bool,
    /// The async `complete` takes this long (tokio's clock) before it reaches the store.
    pub slow_async_complete: Option<Duration>,
}

/// The memory store behind a switch, counting which path every claim and completion took.
#[derive(Debug)]
pub struct Probe {
    pub inner: MemoryStore,
    pub mode: Mode,
    pub completions_seen: AtomicU32,
    pub claims_now: AtomicU32,
    pub claims_async: AtomicU32,
    pub completes_now: AtomicU32,
    pub completes_async: AtomicU32,
}

impl Probe {
    pub fn new(inner: MemoryStore, mode: Mode) -> Self {
        Self {
            inner,
            mode,
            completions_seen: AtomicU32::new(0),
            claims_now: AtomicU32::new(0),
            claims_async: AtomicU32::new(0),
            completes_now: AtomicU32::new(0),
            completes_async: AtomicU32::new(0),
        }
    }

    /// The scripted answer for the next completion attempt, if any.
    fn scripted(&self) -> Option<Result<Fenced, StoreError>> {
        let seen = self.completions_seen.fetch_add(1, Ordering::SeqCst);
        let n = seen.checked_sub(self.mode.unscripted_first)?;
        if n == 0 && self.mode.lease_lost_first {
            return Some(Ok(Fenced::LeaseLost));
        }
        (n < self.mode.transient_completions).then(|| {
            Err(StoreError::Unavailable {
                source: "scripted outage".into(),
            })
        })
    }

    async fn hang(&self) {
        if self.mode.hang_async {
            std::future::pending::<()>().await;
        }
    }
}

impl IdempotencyStore for Probe {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.claims_async.fetch_add(1, Ordering::SeqCst);
        self.hang().await;
        self.inner.try_claim(key, record, lease).await
    }
    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        self.completes_async.fetch_add(1, Ordering::SeqCst);
        self.hang().await;
        if let Some(slow) = self.mode.slow_async_complete {
            tokio::time::sleep(slow).await;
        }
        if let Some(answer) = self.scripted() {
            return answer;
        }
        self.inner.complete(key, token, record, retention).await
    }
    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        self.hang().await;
        self.inner.release(key, token).await
    }
    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.hang().await;
        self.inner.extend(key, token, lease).await
    }
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        self.inner.time_to_live(key).await
    }
    async fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> Result<Waited, StoreError> {
        self.inner.wait_for_change(key, seen, timeout).await
    }
    fn try_claim_now(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
        now: std::time::Instant,
    ) -> Option<Result<Claim, StoreError>> {
        if !self.mode.at_once {
            return None;
        }
        self.claims_now.fetch_add(1, Ordering::SeqCst);
        self.inner.try_claim_now(key, record, lease, now)
    }
    fn complete_now(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
        now: std::time::Instant,
    ) -> Option<Result<Fenced, StoreError>> {
        if !self.mode.at_once
            || (self.mode.at_once_first_completion_only
                && self.completes_now.load(Ordering::SeqCst) > 0)
        {
            return None;
        }
        self.completes_now.fetch_add(1, Ordering::SeqCst);
        if let Some(answer) = self.scripted() {
            return Some(answer);
        }
        self.inner.complete_now(key, token, record, retention, now)
    }
}

#[path = "../counting/mod.rs"]
mod counting;
pub use counting::{Counting, Totals};

pub fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(name).unwrap()
}

pub fn outcome(body: &str) -> StoredOutcome {
    StoredOutcome::new(body.to_owned(), Some("text/plain".into()))
}

/// What one scenario saw: its transcript, the engine's counters, the metrics recorded, and
/// how many claims / completions went each way (at once, async).
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub transcript: Vec<String>,
    pub stats: String,
    pub metrics: Totals,
}

/// Begin `name` (a key nobody claimed) in `scope` with the fingerprint of `"a"`: the guard that
/// runs it.
pub async fn fresh<S: IdempotencyStore + 'static>(
    engine: &Idempotency<S>,
    scope: &Scope,
    name: &str,
) -> Guard<S> {
    match engine.begin(scope, &key(name), Fingerprint::of("a")).await {
        Ok(Begin::Run(guard)) => guard,
        Ok(_) => panic!("a fresh key runs"),
        Err(error) => panic!("begin {name}: {error}"),
    }
}

/// A [`Probe`] in `mode` over a memory store whose clock follows tokio's (paused) clock in
/// 1 ms steps, and an engine on it with a 1 s lease. The clock stops when this is dropped.
pub struct Leased {
    pub store: Arc<Probe>,
    pub engine: Idempotency<Arc<Probe>>,
    ticking: tokio::task::JoinHandle<()>,
}

impl Leased {
    pub fn new(mode: Mode) -> Self {
        let clock = ManualClock::new();
        let store = Arc::new(Probe::new(
            MemoryStore::builder().clock(clock.clone()).build(),
            mode,
        ));
        // The store's clock moves with tokio's (1 ms steps).
        let ticking = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                clock.advance(Duration::from_millis(1));
            }
        });
        let engine = Idempotency::builder(Arc::clone(&store))
            .ignore_env()
            .lease(Duration::from_secs(1))
            .build()
            .unwrap();
        Self {
            store,
            engine,
            ticking,
        }
    }

    /// How many completions took the async path.
    pub fn completes_async(&self) -> u32 {
        self.store.completes_async.load(Ordering::SeqCst)
    }

    /// Panics unless `name` in `scope` replays the body `body` (`what`: the panic message's
    /// start).
    pub async fn assert_replays(&self, scope: &Scope, name: &str, body: &str, what: &str) {
        let replay = self
            .engine
            .begin(scope, &key(name), Fingerprint::of("a"))
            .await
            .unwrap();
        assert!(
            matches!(replay, Begin::Replay(ref o) if o.body == body),
            "{what}{replay:?}"
        );
    }
}

impl Drop for Leased {
    fn drop(&mut self) {
        self.ticking.abort();
    }
}
