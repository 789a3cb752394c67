//! Records written through the Redis store are read and completed through the REST store on the
//! same database, and the other way round; plus REST-specific failure handling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Claim, Fenced, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey,
    IdempotencyStore, InProgress, LeaseToken, Record, Scope, StoreError, StoreKey, StoredOutcome,
};
use idempotency_kv_rest::{KvRestConfig, KvRestStore};
use idempotency_redis::RedisStore;

fn claim_record() -> InProgress {
    InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("interop"),
        created_at_ms: 1,
    }
}

#[tokio::test]
async fn redis_written_records_complete_through_rest() {
    let gateway = common::shared_gateway();
    let redis = RedisStore::connect(common::shared_redis().url())
        .await
        .unwrap();
    let rest = common::rest_store(gateway.url());
    let prefix = idempotency_testkit::unique_prefix();
    let scope = Scope::new("tenant");
    let key = IdempotencyKey::new("interop-1").unwrap();
    let via_redis = Idempotency::builder(redis)
        .prefix(&prefix)
        .ignore_env()
        .build()
        .unwrap();
    let via_rest = Idempotency::builder(rest)
        .prefix(&prefix)
        .ignore_env()
        .build()
        .unwrap();

    let Begin::Run(guard) = via_redis
        .begin(&scope, &key, Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!()
    };
    // The REST store sees the Redis store's claim...
    let seen = via_rest.begin(&scope, &key, Fingerprint::of("a")).await;
    assert!(
        matches!(seen, Err(IdempotencyError::InProgress { .. })),
        "{seen:?}"
    );
    guard
        .complete(StoredOutcome::new(
            vec![7u8; 10_000],
            Some("application/x".into()),
        ))
        .await
        .unwrap();
    // ...and replays its (compressed) outcome.
    match via_rest
        .begin(&scope, &key, Fingerprint::of("a"))
        .await
        .unwrap()
    {
        Begin::Replay(outcome) => assert_eq!(outcome.body.to_vec(), vec![7u8; 10_000]),
        Begin::Run(_) => panic!("must replay"),
    }
}

#[tokio::test]
async fn rest_written_claims_complete_through_redis() {
    let gateway = common::shared_gateway();
    let redis = RedisStore::connect(common::shared_redis().url())
        .await
        .unwrap();
    let rest = common::rest_store(gateway.url());
    let key = StoreKey::from_raw(format!(
        "{}rest-first",
        idempotency_testkit::unique_prefix()
    ));
    let claim = claim_record();
    assert_eq!(
        rest.try_claim(&key, &claim, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        redis
            .try_claim(&key, &claim_record(), Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Existing(Record::InProgress(claim.clone()))
    );
    let done = idempotency_core::Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: 1,
        completed_at_ms: 2,
        outcome: StoredOutcome::new("from redis", None),
    };
    // Scripts loaded by one store (flagged text via the gateway, plain via redis) coexist.
    assert_eq!(
        redis
            .complete(&key, &claim.token, &done, Duration::from_secs(60))
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert_eq!(
        rest.complete(&key, &claim.token, &done, Duration::from_secs(60))
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert_eq!(rest.get(&key).await.unwrap(), Some(Record::Completed(done)));
    assert!(redis.delete(&key).await.unwrap());
    assert_eq!(rest.get(&key).await.unwrap(), None);
}

#[tokio::test]
async fn wrong_token_is_a_typed_backend_error() {
    let gateway = common::shared_gateway();
    let store = KvRestStore::connect(gateway.url(), "wrong-token").unwrap();
    let err = store.get(&StoreKey::from_raw("x")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend { source } if source.to_string().contains("401")),
        "{err:?}"
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_quickly() {
    // Nothing listens on that port, and no other server takes it while the test runs.
    let down = idempotency_testkit::RefusedPort::new();
    let config = KvRestConfig::new(format!("http://{}", down.addr()), "t")
        .unwrap()
        .reconnect_attempts(2);
    let store = KvRestStore::new(config).unwrap();
    let started = Instant::now();
    let err = store.get(&StoreKey::from_raw("x")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn paused_redis_behind_the_gateway_times_out() {
    let mut redis = idempotency_testkit::fixtures::RedisServer::start_local().unwrap();
    let gateway =
        idempotency_testkit::fixtures::GatewayServer::start(redis.url(), common::TOKEN).unwrap();
    let store = KvRestStore::new(
        KvRestConfig::new(gateway.url(), common::TOKEN)
            .unwrap()
            .operation_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    assert_eq!(store.get(&StoreKey::from_raw("warm")).await.unwrap(), None);
    redis.pause().unwrap();
    let started = Instant::now();
    let err = store.get(&StoreKey::from_raw("x")).await.unwrap_err();
    redis.resume().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            StoreError::Timeout { .. } | StoreError::Unavailable { .. }
        ),
        "{err:?}"
    );
}
