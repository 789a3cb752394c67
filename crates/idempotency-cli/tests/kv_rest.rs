//! The CLI through the KV REST API (the in-process gateway in front of a real Redis): the
//! REST API's `SCAN` and `UNLINK`, and the token never printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{json, run, seed, seed_many};
use idempotency::StoredOutcome;
use idempotency::redis::RedisStore;
use idempotency_testkit::fixtures::{GatewayServer, RedisServer};

const TOKEN: &str = "cli-test-token-do-not-print";

#[tokio::test(flavor = "multi_thread")]
async fn every_command_through_the_rest_api() {
    // `start` (not `start_local`): the gateway provisions its ACL users on it.
    let server = RedisServer::start().expect("redis-server");
    let gateway = GatewayServer::start(server.url(), TOKEN).expect("kv rest gateway");
    let store = RedisStore::connect(server.url()).await.unwrap();
    let env = [
        ("UPSTASH_REDIS_REST_URL", gateway.url()),
        ("UPSTASH_REDIS_REST_TOKEN", TOKEN),
    ];
    seed_many(&store, "alice", 120).await;
    seed(
        &store,
        "bob",
        "order-1",
        Some(StoredOutcome::new("done", Some("text/plain".into()))),
    )
    .await;

    let inspected = run(&env, &["inspect", "bob", "order-1", "--json"]);
    assert_eq!(inspected.code, 0, "{}", inspected.all());
    assert_eq!(json(&inspected)["outcome"]["stored_bytes"], 4);

    let stats = json(&run(&env, &["stats", "--json", "--batch", "25"]));
    assert_eq!(stats["in_progress"], 60);
    assert_eq!(stats["completed"], 61);

    let dry = run(&env, &["purge", "--scope", "alice", "--batch", "25"]);
    assert!(dry.stdout.starts_with("120 records"), "{}", dry.all());
    let purged = run(
        &env,
        &["purge", "--scope", "alice", "--yes", "--batch", "25"],
    );
    assert_eq!(purged.code, 0, "{}", purged.all());
    assert!(
        purged.stdout.contains("deleted 120 records"),
        "{}",
        purged.stdout
    );
    let stats = json(&run(&env, &["stats", "--json"]));
    assert_eq!(
        (stats["in_progress"].as_u64(), stats["completed"].as_u64()),
        (Some(0), Some(1))
    );

    let doctor = run(&env, &["doctor"]);
    assert_eq!(doctor.code, 0, "{}", doctor.all());
    assert!(doctor.stdout.contains("kv-rest"), "{}", doctor.stdout);

    for output in [inspected, dry, purged, doctor] {
        assert!(
            !output.all().contains(TOKEN),
            "the token was printed: {}",
            output.all()
        );
    }

    // A wrong token: a clear failure, still without the token.
    let wrong = run(
        &[
            ("UPSTASH_REDIS_REST_URL", gateway.url()),
            ("UPSTASH_REDIS_REST_TOKEN", "wrong-token-secret"),
        ],
        &["stats"],
    );
    assert_ne!(wrong.code, 0, "{}", wrong.all());
    assert!(
        !wrong.all().contains("wrong-token-secret"),
        "{}",
        wrong.all()
    );
}
