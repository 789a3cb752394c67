//! A real redis-server that refuses writes (`maxmemory` reached under `noeviction`): claims fail
//! with the typed `WriteRefused`, and the engine still replays completed records from a read.
//! Also `Retry-After` from `PTTL` on the "in progress" path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use idempotency_core::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, IdempotencyStore,
    InProgress, LeaseToken, Scope, StoreError, StoredOutcome, unix_millis_now,
};
use idempotency_redis::{RedisStore, redis};
use idempotency_testkit::fixtures::RedisServer;

async fn config_set(store: &RedisStore, name: &str, value: &str) {
    let mut conn = store.connection().clone();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn completed_records_replay_while_redis_is_out_of_memory() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::connect(server.url()).await.expect("connect");
    let engine = Idempotency::builder(store.clone())
        .completion_retry(Duration::ZERO)
        .ignore_env()
        .build()
        .unwrap();
    let scope = Scope::new("tenant");
    let (done, running, fresh) = (
        IdempotencyKey::new("done").unwrap(),
        IdempotencyKey::new("running").unwrap(),
        IdempotencyKey::new("fresh").unwrap(),
    );
    let fp = Fingerprint::of("request");
    let Begin::Run(guard) = engine.begin(&scope, &done, fp).await.unwrap() else {
        panic!("first attempt runs")
    };
    guard
        .complete(StoredOutcome::new("stored before the outage", None))
        .await
        .unwrap();
    let Begin::Run(in_progress) = engine.begin(&scope, &running, fp).await.unwrap() else {
        panic!("runs")
    };

    // Full: every write is refused with `OOM command not allowed ...`, reads still work.
    config_set(&store, "maxmemory-policy", "noeviction").await;
    config_set(&store, "maxmemory", "1").await;

    let raw = store
        .try_claim(
            &engine.store_key(&scope, &fresh),
            &InProgress {
                token: LeaseToken::generate(),
                fingerprint: fp,
                created_at_ms: unix_millis_now(),
            },
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(&raw, Err(StoreError::WriteRefused { source }) if source.to_string().contains("OOM")),
        "{raw:?}"
    );

    let Begin::Replay(outcome) = engine.begin(&scope, &done, fp).await.unwrap() else {
        panic!("a completed record is replayed from a read")
    };
    assert_eq!(&outcome.body[..], b"stored before the outage");
    assert!(matches!(
        engine.begin(&scope, &done, Fingerprint::of("other")).await,
        Err(IdempotencyError::FingerprintMismatch)
    ));
    assert!(matches!(
        engine.begin(&scope, &running, fp).await,
        Err(IdempotencyError::InProgress { .. })
    ));
    let err = engine.begin(&scope, &fresh, fp).await.unwrap_err();
    assert!(
        matches!(
            err,
            IdempotencyError::StoreUnavailable(StoreError::WriteRefused { .. })
        ),
        "nothing to replay: fail closed with a retryable error: {err:?}"
    );
    assert!(err.is_retryable());
    // The fenced scripts are writes too.
    let completion = in_progress.complete(StoredOutcome::new("x", None)).await;
    assert!(
        matches!(
            completion,
            Err(IdempotencyError::StoreUnavailable(
                StoreError::WriteRefused { .. }
            ))
        ),
        "{completion:?}"
    );

    // Memory again: writes work.
    config_set(&store, "maxmemory", "0").await;
    assert!(matches!(
        engine.begin(&scope, &fresh, fp).await.unwrap(),
        Begin::Run(_)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_comes_from_pttl_for_an_abandoned_claim() {
    let server = RedisServer::start().expect("redis");
    let store = RedisStore::connect(server.url()).await.expect("connect");
    let lease = Duration::from_secs(4);
    let engine = Idempotency::builder(store.clone())
        .lease(lease)
        .retention(Duration::from_secs(60))
        .in_progress_retry_after(Duration::from_millis(100))
        .prefix(format!("ttl{:x}:", rand::random::<u32>()))
        .ignore_env()
        .build()
        .unwrap();
    let scope = Scope::global();
    let k = IdempotencyKey::new("abandoned").unwrap();
    let fp = Fingerprint::of("request");
    // A claim whose owner died: nobody renews it.
    store
        .try_claim(
            &engine.store_key(&scope, &k),
            &InProgress {
                token: LeaseToken::generate(),
                fingerprint: fp,
                created_at_ms: unix_millis_now(),
            },
            lease,
        )
        .await
        .unwrap();
    let retry_after = |r: Result<Begin<RedisStore>, IdempotencyError>| match r {
        Err(IdempotencyError::InProgress { retry_after }) => retry_after,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        retry_after(engine.begin(&scope, &k, fp).await),
        Duration::from_millis(100),
        "just claimed: the owner may be alive"
    );
    // Expiry lives on the server: a real wait past half the lease.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stale = retry_after(engine.begin(&scope, &k, fp).await);
    assert!(
        stale >= Duration::from_millis(1200) && stale <= Duration::from_millis(1500),
        "the rest of the lease, from PTTL: {stale:?}"
    );
}
