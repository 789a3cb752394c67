//! Shared by the breaker10 tests: the memory store behind a switch that hides or shows its
//! at-once answers (and scripts failures), and a counting metrics recorder.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotency_core::{
    Begin, Claim, Completed, Fenced, Fingerprint, Guard, Idempotency, IdempotencyKey,
    IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoreKey, StoredOutcome,
    Waited, async_trait,
};
use idempotency_memory::MemoryStore;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// How a [`Probe`] answers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mode {
    /// Answer `try_claim_now` / `complete_now` (else `None`: async only).
    pub at_once: bool,
    /// The first completion attempts (at once when `at_once`, else async) answer a transient
    /// error this many times.
    pub transient_completions: u32,
    /// The first completion attempt answers `LeaseLost` without touching the store.
    pub lease_lost_first: bool,
    /// The async primitives never answer (the contract says they must, the engine must not
    /// need them after an at-once claim anyway, except on its retry path).
    pub hang_async: bool,
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
        let n = self.completions_seen.fetch_add(1, Ordering::SeqCst);
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

#[async_trait]
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
    ) -> Option<Result<Claim, StoreError>> {
        if !self.mode.at_once {
            return None;
        }
        self.claims_now.fetch_add(1, Ordering::SeqCst);
        self.inner.try_claim_now(key, record, lease)
    }
    fn complete_now(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Option<Result<Fenced, StoreError>> {
        if !self.mode.at_once {
            return None;
        }
        self.completes_now.fetch_add(1, Ordering::SeqCst);
        if let Some(answer) = self.scripted() {
            return Some(answer);
        }
        self.inner.complete_now(key, token, record, retention)
    }
}

/// Counts every counter increment and histogram value by metric key (`name{label=value}`).
#[derive(Default)]
pub struct Counting {
    pub counters: Mutex<BTreeMap<String, Arc<Total>>>,
    pub histograms: Mutex<BTreeMap<String, Arc<Total>>>,
}

#[derive(Default)]
pub struct Total(pub AtomicU64);

impl CounterFn for Total {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl HistogramFn for Total {
    fn record(&self, value: f64) {
        assert!(value >= 0.0, "a latency is never negative: {value}");
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn metric_name(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

pub type Totals = (BTreeMap<String, u64>, BTreeMap<String, u64>);

impl Counting {
    pub fn totals(&self) -> Totals {
        let read = |map: &Mutex<BTreeMap<String, Arc<Total>>>| {
            map.lock()
                .unwrap()
                .iter()
                .map(|(k, t)| (k.clone(), t.0.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        (read(&self.counters), read(&self.histograms))
    }
}

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut map = self.counters.lock().unwrap();
        Counter::from_arc(Arc::clone(map.entry(metric_name(key)).or_default()))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut map = self.histograms.lock().unwrap();
        Histogram::from_arc(Arc::clone(map.entry(metric_name(key)).or_default()))
    }
}

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
