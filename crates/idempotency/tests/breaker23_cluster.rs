//! breaker23: Redis Cluster seeds after the background TCP probe (f0bb18e): a seed list whose
//! first seeds refuse connections still comes up, at once and after a start-up outage.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use idempotency::{
    Begin, Fingerprint, Idempotency, IdempotencyKey, Scope, StoreSelection, StoredOutcome,
    store_from_lookup,
};
use idempotency_testkit::RefusedPort;
use idempotency_testkit::fixtures::RedisCluster;

async fn open(urls: String) -> idempotency::AnyStore {
    store_from_lookup(StoreSelection::RequireDistributed, move |name| {
        (name == "REDIS_CLUSTER_URLS").then(|| urls.clone())
    })
    .await
    .unwrap()
}

async fn round_trip(store: idempotency::AnyStore, name: &str) {
    let engine = Idempotency::builder(store).ignore_env().build().unwrap();
    let key = IdempotencyKey::new(format!("b23-{name}-{}", std::process::id())).unwrap();
    let scope = Scope::new("t");
    let Begin::Run(guard) = engine
        .begin(&scope, &key, Fingerprint::of("x"))
        .await
        .unwrap()
    else {
        panic!("first attempt must run");
    };
    guard
        .complete(StoredOutcome::new(b"ok".to_vec(), None))
        .await
        .unwrap();
    assert!(matches!(
        engine.begin(&scope, &key, Fingerprint::of("x")).await,
        Ok(Begin::Replay(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker23_cluster_with_one_live_seed_comes_up() {
    let mut cluster = RedisCluster::start(3).expect("redis-server (apt-get install redis-server)");
    let live = cluster.urls()[1].clone();
    // Seeds that refuse: ports held for the whole test, so no server (the cluster's restarted
    // nodes included) takes them. The reservation is on 127.0.0.1; nothing in the tests listens
    // on [::1], so the second one refuses there as well.
    let (down_v4, down_v6) = (RefusedPort::new(), RefusedPort::new());
    let seeds = format!(
        "redis://{}, redis://[::1]:{}, {live}",
        down_v4.addr(),
        down_v6.port()
    );
    // Up at start-up: the first connection goes to the cluster client directly.
    let store = open(seeds.clone()).await;
    assert!(store.is_connected());
    round_trip(store, "up").await;

    // Down at start-up, then up: the background attempts (TCP probe first) connect.
    for node in cluster.nodes() {
        node.stop().unwrap();
    }
    let store = open(seeds).await;
    assert!(!store.is_connected());
    for node in cluster.nodes() {
        node.restart().unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !store.is_connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "not connected after the cluster came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted nodes reload their cluster config and gossip until `cluster_state:ok`;
    // requests before that may time out. Then the store must work without a restart.
    let engine = Idempotency::builder(store.clone())
        .ignore_env()
        .build()
        .unwrap();
    let probe = IdempotencyKey::new("b23-probe").unwrap();
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match engine
            .begin(&Scope::new("probe"), &probe, Fingerprint::of("p"))
            .await
        {
            Ok(_) => {
                last = None;
                break;
            }
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last.is_none(), "never served after the restart: {last:?}");
    round_trip(store, "back").await;
}
