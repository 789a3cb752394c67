//! Through the KV REST API (the gateway in front of a real redis-server): a full server's
//! `OOM command not allowed` is the typed `WriteRefused`, completed records still replay, and
//! `PTTL` answers `time_to_live`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use idempotency_core::{
    Begin, Fingerprint, Idempotency, IdempotencyError, IdempotencyKey, IdempotencyStore, Scope,
    StoreError, StoredOutcome,
};
use idempotency_testkit::fixtures::{GatewayServer, RedisServer};

#[tokio::test(flavor = "multi_thread")]
async fn completed_records_replay_while_redis_is_out_of_memory() {
    let redis = RedisServer::start_local().expect("local redis-server");
    let gateway = GatewayServer::start(redis.url(), common::TOKEN).expect("gateway");
    let store = common::rest_store(gateway.url());
    let engine = Idempotency::builder(store.clone())
        .completion_retry(Duration::ZERO)
        .ignore_env()
        .build()
        .unwrap();
    let scope = Scope::new("tenant");
    let (done, fresh) = (
        IdempotencyKey::new("done").unwrap(),
        IdempotencyKey::new("fresh").unwrap(),
    );
    let fp = Fingerprint::of("request");
    let Begin::Run(guard) = engine.begin(&scope, &done, fp).await.unwrap() else {
        panic!("first attempt runs")
    };
    guard
        .complete(StoredOutcome::new("stored", None))
        .await
        .unwrap();
    let ttl = store
        .time_to_live(&engine.store_key(&scope, &done))
        .await
        .unwrap()
        .expect("a completed record expires after its retention");
    assert!(ttl > Duration::from_secs(86_000), "{ttl:?}");
    assert_eq!(
        store
            .time_to_live(&engine.store_key(&scope, &fresh))
            .await
            .unwrap(),
        None
    );

    for (name, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        let reply = common::raw_command(
            gateway.url(),
            serde_json::json!(["CONFIG", "SET", name, value]),
        )
        .await;
        if reply.get("error").is_some() {
            // The gateway may refuse CONFIG; set it on the server directly instead.
            redis_config_set(redis.url(), name, value).await;
        }
    }

    let Begin::Replay(outcome) = engine.begin(&scope, &done, fp).await.unwrap() else {
        panic!("replayed from a read")
    };
    assert_eq!(&outcome.body[..], b"stored");
    let err = engine.begin(&scope, &fresh, fp).await.unwrap_err();
    assert!(
        matches!(
            &err,
            IdempotencyError::StoreUnavailable(StoreError::WriteRefused { source })
                if source.to_string().contains("OOM")
        ),
        "{err:?}"
    );
}

/// `CONFIG SET` over a plain RESP connection (the test's own, to its own server).
async fn redis_config_set(url: &str, name: &str, value: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("redis://").trim_end_matches('/');
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let parts = ["CONFIG", "SET", name, value];
    let mut command = format!("*{}\r\n", parts.len());
    for part in parts {
        command.push_str(&format!("${}\r\n{part}\r\n", part.len()));
    }
    socket.write_all(command.as_bytes()).await.unwrap();
    let mut reply = [0u8; 64];
    let n = socket.read(&mut reply).await.unwrap();
    assert!(reply[..n].starts_with(b"+OK"), "{:?}", &reply[..n]);
}
