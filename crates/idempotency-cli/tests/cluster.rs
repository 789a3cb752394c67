//! The CLI on a real 3-master Redis Cluster: `purge` and `stats` walk every primary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{json, run, seed, seed_many, store_key};
use idempotency::redis::RedisStore;
use idempotency::{IdempotencyStore, StoredOutcome};
use idempotency_testkit::fixtures::RedisCluster;

#[tokio::test(flavor = "multi_thread")]
async fn purge_and_stats_cover_every_primary() {
    let cluster = RedisCluster::start(3).expect("local redis cluster");
    let urls = cluster.urls();
    let store = RedisStore::builder()
        .connect_cluster(urls.clone())
        .await
        .unwrap();
    let joined = urls.join(",");
    let env = [("REDIS_CLUSTER_URLS", joined.as_str())];
    // 300 keys spread over the slots of all three primaries.
    seed_many(&store, "alice", 300).await;
    seed_many(&store, "bob", 5).await;
    seed(
        &store,
        "carol",
        "one",
        Some(StoredOutcome::new("{}", Some("application/json".into()))),
    )
    .await;

    let stats = json(&run(&env, &["stats", "--json", "--batch", "50"]));
    assert_eq!(stats["in_progress"], 150 + 3);
    assert_eq!(stats["completed"], 150 + 2 + 1);

    let inspected = json(&run(&env, &["inspect", "carol", "one", "--json"]));
    assert_eq!(inspected["outcome"]["content_type"], "application/json");

    let dry = run(&env, &["purge", "--scope", "alice", "--batch", "50"]);
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(dry.stdout.starts_with("300 records"), "{}", dry.stdout);

    let purged = run(
        &env,
        &["purge", "--scope", "alice", "--yes", "--batch", "50"],
    );
    assert_eq!(purged.code, 0, "{}", purged.all());
    assert!(
        purged.stdout.contains("deleted 300 records"),
        "{}",
        purged.stdout
    );
    for i in [0, 99, 299] {
        let key = store_key("alice", &format!("k{i}"));
        assert!(store.get(&key).await.unwrap().is_none());
    }
    let stats = json(&run(&env, &["stats", "--json"]));
    assert_eq!(stats["in_progress"], 3);
    assert_eq!(stats["completed"], 3);

    let doctor = run(&env, &["doctor"]);
    assert_eq!(doctor.code, 0, "{}", doctor.all());
    assert!(doctor.stdout.contains("(cluster)"), "{}", doctor.stdout);
}
