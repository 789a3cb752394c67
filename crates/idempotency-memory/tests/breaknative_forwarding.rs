//! Every pointer to a store is a store that forwards all of it: `&S`, `Arc<S>`, `Box<S>`,
//! `dyn DynIdempotencyStore` behind `Arc` / `Box` / `&` (with or without `+ Send + Sync`, as
//! `dyn IdempotencyStore + Send + Sync` was written before the trait was native), and the
//! engine's own calls through them. A wrapper that forgot one of the provided methods
//! (`time_to_live`, `wait_for_change`, `operation_bound`, `try_claim_now`, `complete_now`) would
//! answer its default silently: the memory store's at-once path, the Redis store's operation
//! bound and the wake-ups of waiting duplicates would be lost without an error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Claim, Completed, DynIdempotencyStore, FailurePolicy, Fenced, Fingerprint, Idempotency,
    IdempotencyKey, IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoreKey,
    StoredOutcome, Waited,
};
use idempotency_memory::MemoryStore;

const BOUND: Duration = Duration::from_millis(250);

/// The memory store, every call recorded by name, with an operation bound of its own: each
/// provided method answers something its default does not.
#[derive(Debug, Clone)]
struct Probe {
    inner: MemoryStore,
    hits: Arc<Mutex<Vec<&'static str>>>,
}

impl Probe {
    fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            hits: Arc::default(),
        }
    }
    fn hit(&self, name: &'static str) {
        self.hits.lock().unwrap().push(name);
    }
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.hits.lock().unwrap())
    }
}

impl IdempotencyStore for Probe {
    async fn try_claim(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.hit("try_claim");
        self.inner.try_claim(key, record, lease).await
    }
    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
    ) -> Result<Fenced, StoreError> {
        self.hit("complete");
        self.inner.complete(key, token, record, retention).await
    }
    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<Fenced, StoreError> {
        self.hit("release");
        self.inner.release(key, token).await
    }
    async fn extend(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<Fenced, StoreError> {
        self.hit("extend");
        self.inner.extend(key, token, lease).await
    }
    async fn get(&self, key: &StoreKey) -> Result<Option<Record>, StoreError> {
        self.hit("get");
        self.inner.get(key).await
    }
    async fn delete(&self, key: &StoreKey) -> Result<bool, StoreError> {
        self.hit("delete");
        self.inner.delete(key).await
    }
    async fn time_to_live(&self, key: &StoreKey) -> Result<Option<Duration>, StoreError> {
        self.hit("time_to_live");
        self.inner.time_to_live(key).await
    }
    async fn wait_for_change(
        &self,
        key: &StoreKey,
        seen: &LeaseToken,
        timeout: Duration,
    ) -> Result<Waited, StoreError> {
        self.hit("wait_for_change");
        self.inner.wait_for_change(key, seen, timeout).await
    }
    fn operation_bound(&self) -> Option<Duration> {
        self.hit("operation_bound");
        Some(BOUND)
    }
    fn try_claim_now(
        &self,
        key: &StoreKey,
        record: &InProgress,
        lease: Duration,
        now: Instant,
    ) -> Option<Result<Claim, StoreError>> {
        self.hit("try_claim_now");
        self.inner.try_claim_now(key, record, lease, now)
    }
    fn complete_now(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &Completed,
        retention: Duration,
        now: Instant,
    ) -> Option<Result<Fenced, StoreError>> {
        self.hit("complete_now");
        self.inner.complete_now(key, token, record, retention, now)
    }
}

fn in_progress() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 1,
    }
}

fn completed(token: &LeaseToken) -> Completed {
    Completed {
        token: *token,
        fingerprint: Fingerprint::of("x"),
        created_at_ms: 1,
        completed_at_ms: 2,
        outcome: StoredOutcome::new("done", None),
    }
}

/// Calls every method of `store` once, checks each answer is the probe's (not the trait's
/// default), and that each call reached the probe.
async fn every_method_reaches_the_probe<S: IdempotencyStore + ?Sized>(
    what: &str,
    store: &S,
    probe: &Probe,
) {
    let lease = Duration::from_secs(60);
    let retention = Duration::from_secs(600);
    probe.take();

    let key = StoreKey::from_raw(format!("idem:{what}:async"));
    let claim = in_progress();
    assert_eq!(
        store.try_claim(&key, &claim, lease).await.unwrap(),
        Claim::Claimed,
        "{what}"
    );
    assert_eq!(
        store.extend(&key, &claim.token, lease).await.unwrap(),
        Fenced::Applied,
        "{what}"
    );
    let ttl = store.time_to_live(&key).await.unwrap();
    assert!(ttl.is_some(), "{what}: time_to_live answered the default");
    let other = LeaseToken::generate();
    assert_eq!(
        store
            .wait_for_change(&key, &other, Duration::from_secs(5))
            .await
            .unwrap(),
        Waited::Changed,
        "{what}: wait_for_change answered the default"
    );
    assert_eq!(
        store
            .complete(&key, &claim.token, &completed(&claim.token), retention)
            .await
            .unwrap(),
        Fenced::Applied,
        "{what}"
    );
    assert!(store.get(&key).await.unwrap().is_some(), "{what}");
    assert!(store.delete(&key).await.unwrap(), "{what}");
    let released = in_progress();
    store.try_claim(&key, &released, lease).await.unwrap();
    assert_eq!(
        store.release(&key, &released.token).await.unwrap(),
        Fenced::Applied,
        "{what}"
    );

    assert_eq!(
        store.operation_bound(),
        Some(BOUND),
        "{what}: operation_bound answered the default"
    );
    let key = StoreKey::from_raw(format!("idem:{what}:now"));
    let claim = in_progress();
    assert_eq!(
        store
            .try_claim_now(&key, &claim, lease, Instant::now())
            .unwrap_or_else(|| panic!("{what}: try_claim_now answered the default"))
            .unwrap(),
        Claim::Claimed,
        "{what}"
    );
    assert_eq!(
        store
            .complete_now(
                &key,
                &claim.token,
                &completed(&claim.token),
                retention,
                Instant::now()
            )
            .unwrap_or_else(|| panic!("{what}: complete_now answered the default"))
            .unwrap(),
        Fenced::Applied,
        "{what}"
    );

    assert_eq!(
        probe.take(),
        [
            "try_claim",
            "extend",
            "time_to_live",
            "wait_for_change",
            "complete",
            "get",
            "delete",
            "try_claim",
            "release",
            "operation_bound",
            "try_claim_now",
            "complete_now",
        ],
        "{what}: a call did not reach the store"
    );
}

#[tokio::test]
async fn every_pointer_to_a_store_forwards_every_method() {
    let probe = Probe::new();
    every_method_reaches_the_probe("S", &probe, &probe).await;
    every_method_reaches_the_probe("&S", &&probe, &probe).await;
    every_method_reaches_the_probe("Arc<S>", &Arc::new(probe.clone()), &probe).await;
    every_method_reaches_the_probe("Box<S>", &Box::new(probe.clone()), &probe).await;

    let shared: Arc<dyn DynIdempotencyStore> = Arc::new(probe.clone());
    every_method_reaches_the_probe("dyn", &*shared, &probe).await;
    every_method_reaches_the_probe("Arc<dyn>", &shared, &probe).await;
    every_method_reaches_the_probe("&dyn", &&*shared, &probe).await;
    let boxed: Box<dyn DynIdempotencyStore> = Box::new(probe.clone());
    every_method_reaches_the_probe("Box<dyn>", &boxed, &probe).await;
    // An `Arc<dyn ..>` handed to an API that takes `impl IdempotencyStore + 'static` and
    // erases it again (`fallback_store`, `StoreHarness::store`).
    let twice: Arc<dyn DynIdempotencyStore> = Arc::new(shared.clone());
    every_method_reaches_the_probe("Arc<dyn> of Arc<dyn>", &twice, &probe).await;

    // Written as `dyn IdempotencyStore + Send + Sync` was before the trait was native.
    let send_sync: Arc<dyn DynIdempotencyStore + Send + Sync> = Arc::new(probe.clone());
    every_method_reaches_the_probe("Arc<dyn + Send + Sync>", &send_sync, &probe).await;
    let send: Box<dyn DynIdempotencyStore + Send> = Box::new(probe.clone());
    every_method_reaches_the_probe("Box<dyn + Send>", &send, &probe).await;
    let sync: &(dyn DynIdempotencyStore + Sync) = &probe;
    every_method_reaches_the_probe("&dyn + Sync", &sync, &probe).await;
}

/// The engine over a store behind `dyn` still answers claims and completions at once (the
/// memory store's path), and still trusts the store's own operation bound.
async fn engine_answers_at_once<S: IdempotencyStore + 'static>(
    what: &str,
    store: S,
    probe: &Probe,
) {
    let engine = Idempotency::builder(store)
        .store_timeout(Duration::from_secs(1))
        .ignore_env()
        .build()
        .unwrap();
    probe.take();
    let key = IdempotencyKey::new(format!("k-{}", what.replace(' ', "_"))).unwrap();
    // Spawned: the engine's futures over a store behind `dyn` are `Send + 'static`.
    let task_engine = engine.clone();
    let task_key = key.clone();
    tokio::spawn(async move {
        let Begin::Run(guard) = task_engine
            .begin(&Scope::global(), &task_key, Fingerprint::of("a"))
            .await
            .unwrap()
        else {
            panic!("a fresh key runs");
        };
        guard
            .complete(StoredOutcome::new("done", None))
            .await
            .unwrap();
    })
    .await
    .unwrap();
    let hits = probe.take();
    assert!(
        hits.contains(&"try_claim_now") && !hits.contains(&"try_claim"),
        "{what}: the claim was not answered at once: {hits:?}"
    );
    assert!(
        hits.contains(&"complete_now") && !hits.contains(&"complete"),
        "{what}: the completion was not answered at once: {hits:?}"
    );
    let Begin::Replay(outcome) = engine
        .begin(&Scope::global(), &key, Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("{what}: a retry replays");
    };
    assert_eq!(&outcome.body[..], b"done");
}

#[tokio::test]
async fn an_engine_over_a_store_behind_dyn_keeps_the_at_once_path() {
    let probe = Probe::new();
    engine_answers_at_once("S", probe.clone(), &probe).await;
    let shared: Arc<dyn DynIdempotencyStore> = Arc::new(probe.clone());
    engine_answers_at_once("Arc<dyn>", shared, &probe).await;
    let boxed: Box<dyn DynIdempotencyStore> = Box::new(probe.clone());
    engine_answers_at_once("Box<dyn>", boxed, &probe).await;
    let send_sync: Arc<dyn DynIdempotencyStore + Send + Sync> = Arc::new(probe.clone());
    engine_answers_at_once("Arc<dyn + Send + Sync>", send_sync, &probe).await;
    let leaked: &'static Probe = Box::leak(Box::new(probe.clone()));
    engine_answers_at_once("&'static S", leaked, &probe).await;
}

/// A store that is down.
#[derive(Debug)]
struct Down;

impl IdempotencyStore for Down {
    async fn try_claim(
        &self,
        _: &StoreKey,
        _: &InProgress,
        _: Duration,
    ) -> Result<Claim, StoreError> {
        Err(StoreError::Unavailable {
            source: "down".into(),
        })
    }
    async fn complete(
        &self,
        _: &StoreKey,
        _: &LeaseToken,
        _: &Completed,
        _: Duration,
    ) -> Result<Fenced, StoreError> {
        Err(StoreError::Unavailable {
            source: "down".into(),
        })
    }
    async fn release(&self, _: &StoreKey, _: &LeaseToken) -> Result<Fenced, StoreError> {
        Err(StoreError::Unavailable {
            source: "down".into(),
        })
    }
    async fn extend(
        &self,
        _: &StoreKey,
        _: &LeaseToken,
        _: Duration,
    ) -> Result<Fenced, StoreError> {
        Err(StoreError::Unavailable {
            source: "down".into(),
        })
    }
    async fn get(&self, _: &StoreKey) -> Result<Option<Record>, StoreError> {
        Err(StoreError::Unavailable {
            source: "down".into(),
        })
    }
    async fn delete(&self, _: &StoreKey) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable {
            source: "down".into(),
        })
    }
}

#[tokio::test]
async fn the_fallback_store_behind_dyn_keeps_the_at_once_path() {
    let probe = Probe::new();
    let fallback: Arc<dyn DynIdempotencyStore + Send + Sync> = Arc::new(probe.clone());
    let primary: Arc<dyn DynIdempotencyStore> = Arc::new(Down);
    let engine = Idempotency::builder(primary)
        .failure_policy(FailurePolicy::Fallback)
        .fallback_store(fallback)
        .ignore_env()
        .build()
        .unwrap();
    let key = IdempotencyKey::new("k-fallback").unwrap();
    let task_engine = engine.clone();
    tokio::spawn(async move {
        let Begin::Run(guard) = task_engine
            .begin(&Scope::global(), &key, Fingerprint::of("a"))
            .await
            .unwrap()
        else {
            panic!("a fresh key runs");
        };
        assert!(guard.is_fallback());
        guard
            .complete(StoredOutcome::new("done", None))
            .await
            .unwrap();
    })
    .await
    .unwrap();
    // The fallback's claim is the async one (the engine's fallback path has always been);
    // its completion goes through `dyn` and is answered at once.
    let hits = probe.take();
    assert!(
        hits.contains(&"try_claim")
            && hits.contains(&"complete_now")
            && !hits.contains(&"complete"),
        "the fallback's completion was not answered at once: {hits:?}"
    );
}
