//! newuser5 (new-user pass): the CLI on a new user's first runs.
//!
//! With no store configured the tool said "set REDIS_URL,
//! REDIS_CLUSTER_URLS, or UPSTASH_REDIS_REST_URL + UPSTASH_REDIS_REST_TOKEN as the app does",
//! leaving out the variables of Vercel KV (`KV_URL`, `KV_REST_API_*`) and the only way to the
//! SQL store (`IDEMPOTENCY_STORE=sql` + `DATABASE_URL`), which the README lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[test]
fn the_memory_store_refusal_names_every_way_to_a_shared_store() {
    for env in [vec![], vec![("IDEMPOTENCY_STORE", "memory")]] {
        let run = common::run(&env, &["stats"]);
        assert_eq!(run.code, 2, "{}", run.all());
        for variable in [
            "REDIS_URL",
            "KV_URL",
            "REDIS_CLUSTER_URLS",
            "UPSTASH_REDIS_REST_URL",
            "KV_REST_API_URL",
            "IDEMPOTENCY_STORE=sql",
            "DATABASE_URL",
        ] {
            assert!(run.stderr.contains(variable), "{variable}: {}", run.stderr);
        }
    }
}

/// `doctor` on a Redis whose eviction policy may drop records printed the warning three times:
/// once in its report (stdout) and twice more as log lines on stderr (the store logs it when it
/// connects and again when `doctor` reads the settings). The report is the answer; stderr
/// stays quiet. `doctor --strict` still exits 1 on it.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_states_each_warning_once() {
    use idempotency::redis::redis;
    use idempotency_testkit::fixtures::RedisServer;

    let server = RedisServer::start_local().expect("local redis-server");
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut connection)
        .await
        .unwrap();
    let env = [("REDIS_URL", server.url())];
    let doctor = common::run(&env, &["doctor", "--strict"]);
    assert_eq!(doctor.code, 1, "{}", doctor.all());
    assert_eq!(
        doctor.stdout.matches("allkeys-lru").count(),
        2,
        "the settings line and one warning: {}",
        doctor.stdout
    );
    assert!(!doctor.stderr.contains("allkeys-lru"), "{}", doctor.stderr);
}
