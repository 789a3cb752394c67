//! newuser5 (new-user pass): with no store configured the tool said "set REDIS_URL,
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
