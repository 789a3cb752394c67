//! The CLI against a real Redis server: every command, bad input, secrets kept out of output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{json, run, seed, seed_many, store_key};
use idempotency::redis::{RedisStore, redis};
use idempotency::{IdempotencyStore, StoredOutcome};
use idempotency_testkit::fixtures::RedisServer;

#[tokio::test(flavor = "multi_thread")]
async fn inspect_release_and_delete_one_record() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::connect(server.url()).await.unwrap();
    let env = [("REDIS_URL", server.url())];
    let token = seed(&store, "alice", "order-1", None).await;

    let inspected = run(&env, &["inspect", "alice", "order-1", "--json"]);
    assert_eq!(inspected.code, 0, "{}", inspected.all());
    let value = json(&inspected);
    assert_eq!(value["state"], "in_progress");
    assert_eq!(value["fencing_token"], token.to_hex());
    assert_eq!(value["key"], "idempotency:alice:order-1");
    let lease_left = value["lease_left_ms"].as_u64().unwrap();
    assert!(lease_left > 0 && lease_left <= 600_000, "{lease_left}");

    // No terminal, no --yes: refused, nothing released.
    let refused = run(&env, &["release", "alice", "order-1"]);
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert!(
        store
            .get(&store_key("alice", "order-1"))
            .await
            .unwrap()
            .is_some()
    );

    let released = run(&env, &["release", "alice", "order-1", "--yes"]);
    assert_eq!(released.code, 0, "{}", released.all());
    assert!(
        store
            .get(&store_key("alice", "order-1"))
            .await
            .unwrap()
            .is_none()
    );

    // A completed record: its outcome is described; release refuses, delete removes it.
    seed(
        &store,
        "alice",
        "order-2",
        Some(StoredOutcome::new("hello", Some("text/plain".into()))),
    )
    .await;
    let inspected = run(&env, &["inspect", "alice", "order-2", "--json"]);
    let value = json(&inspected);
    assert_eq!(value["state"], "completed");
    assert_eq!(value["outcome"]["stored_bytes"], 5);
    assert_eq!(value["outcome"]["content_type"], "text/plain");
    assert!(value["retention_left_ms"].as_u64().unwrap() > 600_000);
    let text = run(&env, &["inspect", "alice", "order-2"]);
    assert!(
        text.stdout.contains("state           completed"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("5 bytes stored"), "{}", text.stdout);

    let release_completed = run(&env, &["release", "alice", "order-2", "--yes"]);
    assert_eq!(release_completed.code, 2, "{}", release_completed.all());
    assert!(release_completed.stderr.contains("completed"));

    let deleted = run(&env, &["delete", "alice", "order-2", "--yes"]);
    assert_eq!(deleted.code, 0, "{}", deleted.all());
    let gone = run(&env, &["inspect", "alice", "order-2"]);
    assert_eq!(gone.code, 3, "{}", gone.all());
    assert!(gone.stderr.contains("no record"), "{}", gone.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_clearly() {
    let server = RedisServer::start_local().expect("local redis-server");
    let env = [("REDIS_URL", server.url())];

    // A space is part of a stored key (the header's quoted form allows it); a tab is not.
    let bad_key = run(&env, &["inspect", "alice", "has\ttab"]);
    assert_eq!(bad_key.code, 2, "{}", bad_key.all());
    assert!(bad_key.stderr.contains("invalid key"), "{}", bad_key.stderr);
    let malformed = run(&env, &["inspect", "alice", "\"open"]);
    assert_eq!(malformed.code, 2, "{}", malformed.all());
    assert!(
        malformed.stderr.contains("no closing"),
        "{}",
        malformed.stderr
    );
    // One line, said once, no colour codes (stderr is a pipe here).
    assert_eq!(malformed.stderr.lines().count(), 1, "{}", malformed.stderr);
    assert!(
        !malformed.stderr.contains("caused by"),
        "{}",
        malformed.stderr
    );
    assert!(!malformed.stderr.contains('\x1b'), "{:?}", malformed.stderr);

    let bad_prefix = run(&env, &["--key-prefix", "", "inspect", "alice", "k"]);
    assert_eq!(bad_prefix.code, 2, "{}", bad_prefix.all());

    let outside = run(&env, &["purge", "--prefix", "sessions:"]);
    assert_eq!(outside.code, 2, "{}", outside.all());
    assert!(outside.stderr.contains("does not start with"));

    let both = run(&env, &["purge", "--scope", "a", "--prefix", "idempotency:"]);
    assert_eq!(both.code, 2, "{}", both.all());

    // A key holding something that is not a record.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("idempotency:alice:junk")
        .arg("not a record")
        .query_async(&mut conn)
        .await
        .unwrap();
    let junk = run(&env, &["inspect", "alice", "junk"]);
    assert_eq!(junk.code, 1, "{}", junk.all());
    // Says what it is and what repairs it, on one line (was "store error: corrupt idempotency
    // record").
    assert!(
        junk.stderr
            .contains("`idempotency:alice:junk` holds something that is not an idempotency record")
            && junk.stderr.contains("`delete` removes it"),
        "{}",
        junk.stderr
    );
    assert_eq!(
        junk.stderr
            .lines()
            .filter(|line| !line.contains(" WARN "))
            .count(),
        1,
        "{}",
        junk.stderr
    );
    // ... and `delete` is its repair.
    let repaired = run(&env, &["delete", "alice", "junk", "--yes"]);
    assert_eq!(repaired.code, 0, "{}", repaired.all());
    let exists: u64 = redis::cmd("EXISTS")
        .arg("idempotency:alice:junk")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

#[test]
fn missing_or_memory_configuration_is_refused() {
    let nothing = run(&[], &["stats"]);
    assert_eq!(nothing.code, 2, "{}", nothing.all());
    assert!(
        nothing.stderr.contains("memory store"),
        "{}",
        nothing.stderr
    );

    let memory = run(&[("IDEMPOTENCY_STORE", "memory")], &["stats"]);
    assert_eq!(memory.code, 2, "{}", memory.all());

    let half_rest = run(
        &[("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")],
        &["stats"],
    );
    assert_eq!(half_rest.code, 2, "{}", half_rest.all());
    assert!(half_rest.stderr.contains("UPSTASH_REDIS_REST_TOKEN"));
}

#[test]
fn passwords_are_never_printed() {
    // Nothing listens on port 1: the store cannot be reached, and the message names it
    // without its password.
    let unreachable = run(
        &[("REDIS_URL", "redis://:hunter2-secret@127.0.0.1:1/0")],
        &["doctor"],
    );
    assert_eq!(unreachable.code, 1, "{}", unreachable.all());
    assert!(
        unreachable.stderr.contains("cannot reach"),
        "{}",
        unreachable.stderr
    );
    assert!(
        !unreachable.all().contains("hunter2-secret"),
        "{}",
        unreachable.all()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_a_scope_in_batches_with_a_dry_run_first() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::connect(server.url()).await.unwrap();
    let env = [("REDIS_URL", server.url())];
    seed_many(&store, "alice", 1_050).await;
    // Glob characters in a scope are escaped twice over: by the engine (percent) and for MATCH.
    seed_many(&store, "a*ce", 3).await;
    seed_many(&store, "bob", 7).await;

    let dry = run(&env, &["purge", "--scope", "alice", "--batch", "100"]);
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(dry.stdout.starts_with("1050 records"), "{}", dry.stdout);
    assert!(dry.stdout.contains("dry run"));
    let stats = json(&run(&env, &["stats", "--json"]));
    assert_eq!(stats["in_progress"], 525 + 2 + 4);
    assert_eq!(stats["completed"], 525 + 1 + 3);

    let purged = run(
        &env,
        &["purge", "--scope", "alice", "--yes", "--batch", "100"],
    );
    assert_eq!(purged.code, 0, "{}", purged.all());
    assert!(
        purged.stdout.contains("deleted 1050 records"),
        "{}",
        purged.stdout
    );

    let stats = json(&run(&env, &["stats", "--json"]));
    assert_eq!(stats["in_progress"], 2 + 4);
    assert_eq!(stats["completed"], 1 + 3);

    let star = run(&env, &["purge", "--scope", "a*ce", "--yes"]);
    assert!(star.stdout.contains("deleted 3 records"), "{}", star.all());
    assert!(store.get(&store_key("bob", "k0")).await.unwrap().is_some());

    let everything = run(&env, &["purge", "--prefix", "idempotency:", "--yes"]);
    assert!(
        everything.stdout.contains("deleted 7 records"),
        "{}",
        everything.all()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_reports_the_server_checks() {
    let server = RedisServer::start_local().expect("local redis-server");
    let env = [("REDIS_URL", server.url())];
    let doctor = run(&env, &["doctor"]);
    assert_eq!(doctor.code, 0, "{}", doctor.all());
    assert!(
        doctor.stdout.contains("store: redis at redis://127.0.0.1"),
        "{}",
        doctor.stdout
    );
    assert!(doctor.stdout.contains("maxmemory"), "{}", doctor.stdout);
}
