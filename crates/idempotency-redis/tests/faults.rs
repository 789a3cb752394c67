//! Fault tests on a real, dedicated server: pause (SIGSTOP), restart, non-record data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Claim, FailurePolicy, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey,
    IdempotencyStore, LeaseToken, Scope, StoreError, StoreKey, StoredOutcome, unix_millis_now,
};
use idempotency_redis::RedisStore;
use idempotency_testkit::fixtures::RedisServer;

mod common;
use common::claim_record;

const BUDGET: Duration = Duration::from_millis(300);
/// How long an operation bounded by [`BUDGET`] may take as the tests measure it: ten times the
/// budget. Without the bound an operation on a paused server never ends, so this still proves
/// the timeout; the budget plus 500 ms (the old margin) was thin for a loaded 2-core machine,
/// where scheduling alone can delay the timer and the measuring task by hundreds of ms.
const BOUND: Duration = Duration::from_millis(3000);

fn key(name: &str) -> StoreKey {
    common::unique_key("faults", name)
}

async fn store_on(server: &RedisServer) -> RedisStore {
    store_with_budget(server, BUDGET).await
}

async fn store_with_budget(server: &RedisServer, budget: Duration) -> RedisStore {
    RedisStore::builder()
        .operation_timeout(budget)
        .connect(server.url())
        .await
        .expect("connect")
}

/// The budget of the restart test's store: the first operation after a restart reconnects
/// and may reload a script, which took more than [`BUDGET`] on a loaded machine (1 run in 100);
/// the test is about that operation succeeding, not about how fast.
const RESTART_BUDGET: Duration = Duration::from_secs(1);

/// Resumes the server even when an assertion fails, so the test binary does not leave a frozen
/// process behind for long (the watchdog would kill it at exit anyway).
struct Paused<'a>(&'a mut RedisServer);
impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_server_times_out_within_budget_and_policies_apply() {
    let mut server = RedisServer::start_local().expect("local redis-server");
    let store = store_on(&server).await;
    // The store bounds every primitive by its budget, so the engines below (2 s) arm no timer
    // of their own: the timeouts they report are the store's.
    assert_eq!(IdempotencyStore::operation_bound(&store), Some(BUDGET));
    assert_eq!(store.operation_timeout(), BUDGET);
    let fail_closed = Idempotency::builder(store.clone())
        .store_timeout(Duration::from_secs(2))
        .ignore_env()
        .build()
        .unwrap();
    let fail_open = Idempotency::builder(store.clone())
        .store_timeout(Duration::from_secs(2))
        .failure_policy(FailurePolicy::FailOpen)
        .ignore_env()
        .build()
        .unwrap();
    // Warm up: the connection is up and the scripts are loaded.
    assert_eq!(
        store
            .try_claim(&key("warm"), &claim_record(), Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Claimed
    );

    let paused = Paused(&mut server);
    paused.0.pause().expect("pause");

    // Every primitive: a typed timeout, within the store's budget (plus scheduling slack).
    let k = key("paused");
    let r = claim_record();
    let started = Instant::now();
    let err = store
        .try_claim(&k, &r, Duration::from_secs(5))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, StoreError::Timeout { operation: idempotency_core::StoreOperation::TryClaim, after } if after == BUDGET),
        "{err:?}"
    );
    assert!(took >= BUDGET && took < BOUND, "{took:?}");
    assert!(matches!(
        store.get(&k).await,
        Err(StoreError::Timeout { .. })
    ));
    assert!(matches!(
        store.release(&k, &r.token).await,
        Err(StoreError::Timeout { .. })
    ));
    assert!(matches!(
        store.delete(&k).await,
        Err(StoreError::Timeout { .. })
    ));

    // Fail closed: refused with a retryable error, the operation does not run.
    let scope = Scope::new("tenant");
    let ik = IdempotencyKey::new("paused-op").unwrap();
    let started = Instant::now();
    let refused = fail_closed.begin(&scope, &ik, Fingerprint::of("req")).await;
    assert!(
        matches!(
            &refused,
            Err(IdempotencyError::StoreUnavailable(
                StoreError::Timeout { .. }
            ))
        ),
        "{refused:?}"
    );
    assert!(refused.as_ref().unwrap_err().is_retryable());
    assert!(started.elapsed() < BOUND);

    // Fail open: runs without protection.
    let runs = Arc::new(AtomicUsize::new(0));
    match fail_open
        .begin(&scope, &ik, Fingerprint::of("req"))
        .await
        .expect("fail open")
    {
        Begin::Run(guard) => {
            assert!(guard.unprotected_reason().is_some());
            runs.fetch_add(1, Ordering::SeqCst);
            guard
                .complete(StoredOutcome::new("done", None))
                .await
                .unwrap();
        }
        Begin::Replay(_) => panic!("nothing to replay"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    drop(paused); // resume
    // The same store works again once the server answers.
    let k2 = key("after-resume");
    assert_eq!(
        store
            .try_claim(&k2, &claim_record(), Duration::from_secs(5))
            .await
            .unwrap(),
        Claim::Claimed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_server_the_store_reconnects_without_rebuild() {
    let mut server = RedisServer::start_local().expect("local redis-server");
    let store = store_with_budget(&server, RESTART_BUDGET).await;
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    let scope = Scope::global();
    let ik = IdempotencyKey::new("before-restart").unwrap();
    let Begin::Run(guard) = engine
        .begin(&scope, &ik, Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("first attempt runs")
    };
    guard
        .complete(StoredOutcome::new("one", None))
        .await
        .unwrap();

    let old_pid = server.pid();
    server.restart().expect("restart");
    assert_ne!(server.pid(), old_pid);

    // While down the store reports Unavailable/Timeout; once up, the very first operation on
    // the same store works (the broken connection is replaced and the call retried once), and
    // the scripts are reloaded after NOSCRIPT.
    let ik2 = IdempotencyKey::new("after-restart").unwrap();
    let Begin::Run(guard) = engine
        .begin(&scope, &ik2, Fingerprint::of("b"))
        .await
        .unwrap()
    else {
        panic!("the restarted server is empty")
    };
    guard
        .complete(StoredOutcome::new("two", None))
        .await
        .unwrap();
    let Begin::Replay(outcome) = engine
        .begin(&scope, &ik2, Fingerprint::of("b"))
        .await
        .unwrap()
    else {
        panic!("replay")
    };
    assert_eq!(&outcome.body[..], b"two");
    // Persistence is off: the record from before the restart is gone (what `doctor` warns of).
    assert!(engine.get(&scope, &ik).await.unwrap().is_none());

    // Stopped for good: typed errors, quickly, never a hang.
    server.stop().unwrap();
    let started = Instant::now();
    let err = store.get(&key("down")).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unavailable { .. } | StoreError::Timeout { .. }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(started.elapsed() < BOUND);
    server.restart().unwrap();
    assert!(store.get(&key("up-again")).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn non_records_under_record_keys_are_typed_errors() {
    let server = RedisServer::start().expect("redis");
    let store = store_on(&server).await;
    let mut raw = store.connection().clone();
    let r = claim_record();

    let text = key("text");
    let _: () = redis::cmd("SET")
        .arg(text.as_str())
        .arg("hello")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(matches!(
        store.get(&text).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.try_claim(&text, &r, Duration::from_secs(5)).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.release(&text, &r.token).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.extend(&text, &r.token, Duration::from_secs(5)).await,
        Err(StoreError::Corrupt(_))
    ));
    let untouched: String = redis::cmd("GET")
        .arg(text.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(untouched, "hello");

    let hash = key("hash");
    let _: () = redis::cmd("HSET")
        .arg(hash.as_str())
        .arg("f")
        .arg("v")
        .query_async(&mut raw)
        .await
        .unwrap();
    for result in [
        store.get(&hash).await.map(|_| ()),
        store
            .try_claim(&hash, &r, Duration::from_secs(5))
            .await
            .map(|_| ()),
        store.release(&hash, &r.token).await.map(|_| ()),
        store
            .extend(&hash, &r.token, Duration::from_secs(5))
            .await
            .map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(c) if c.reason().contains("WRONGTYPE")),
            "{err:?}"
        );
    }
    assert!(
        store.delete(&hash).await.unwrap(),
        "delete removes anything"
    );

    // Through the engine: CorruptRecord, the operation does not run.
    let engine = Idempotency::builder(store.clone())
        .prefix("faults:")
        .ignore_env()
        .build()
        .unwrap();
    let ik = IdempotencyKey::new("corrupt").unwrap();
    let sk = engine.store_key(&Scope::global(), &ik);
    let _: () = redis::cmd("HSET")
        .arg(sk.as_str())
        .arg("f")
        .arg("v")
        .query_async(&mut raw)
        .await
        .unwrap();
    let begun = engine
        .begin(&Scope::global(), &ik, Fingerprint::of("a"))
        .await;
    assert!(
        matches!(begun, Err(IdempotencyError::CorruptRecord(_))),
        "{begun:?}"
    );
}

use idempotency_redis::redis;

/// The store sends its own `EVALSHA` commands: after `SCRIPT FLUSH` (the server forgot the
/// scripts loaded at connect) every fenced primitive answers `NOSCRIPT` first, then resends the
/// same command as `EVAL` of the script's source (which also caches it again), with the same
/// fencing as before.
#[tokio::test(flavor = "multi_thread")]
async fn flushed_scripts_are_loaded_again_by_every_fenced_primitive() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = store_on(&server).await;
    let flush = || async {
        let mut conn = store.connection().clone();
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    };
    let lease = Duration::from_secs(30);
    let k = key("noscript");
    let record = claim_record();
    assert!(matches!(
        store.try_claim(&k, &record, lease).await.unwrap(),
        Claim::Claimed
    ));

    flush().await;
    let other = LeaseToken::generate();
    assert_eq!(
        store.extend(&k, &other, lease).await.unwrap(),
        idempotency_core::Fenced::LeaseLost
    );
    flush().await;
    assert_eq!(
        store.extend(&k, &record.token, lease).await.unwrap(),
        idempotency_core::Fenced::Applied
    );
    flush().await;
    let done = idempotency_core::Completed {
        token: record.token,
        fingerprint: record.fingerprint,
        created_at_ms: record.created_at_ms,
        completed_at_ms: unix_millis_now(),
        outcome: StoredOutcome::new("stored", Some("text/plain".into())),
    };
    assert_eq!(
        store
            .complete(&k, &record.token, &done, Duration::from_secs(60))
            .await
            .unwrap(),
        idempotency_core::Fenced::Applied
    );
    assert_eq!(
        store.get(&k).await.unwrap(),
        Some(idempotency_core::Record::Completed(done))
    );

    let k2 = key("noscript-release");
    let record2 = claim_record();
    store.try_claim(&k2, &record2, lease).await.unwrap();
    flush().await;
    assert_eq!(
        store.release(&k2, &other).await.unwrap(),
        idempotency_core::Fenced::LeaseLost
    );
    flush().await;
    assert_eq!(
        store.release(&k2, &record2.token).await.unwrap(),
        idempotency_core::Fenced::Applied
    );
    assert!(store.get(&k2).await.unwrap().is_none());
}
