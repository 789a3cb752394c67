//! The CLI on the SQL store (`IDEMPOTENCY_STORE=sql` + `DATABASE_URL`), on SQLite and on a real
//! Postgres: inspect, release and delete one record; purge a scope in batches after a dry run
//! (and the expired rows with `purge_expired`); stats; doctor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{json, run, seed, seed_many, store_key};
use idempotency::sql::sqlx;
use idempotency::sql::{PostgresStore, SqliteStore};
use idempotency::{Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoredOutcome};
use idempotency_testkit::fixtures::{HOW_TO_GET_POSTGRES, PostgresServer};

/// Every command against `store`, opened by the CLI from `env`.
async fn every_command(store: &impl IdempotencyStore, env: &[(&str, &str)]) {
    let token = seed(store, "alice", "order-1", None).await;
    let inspected = run(env, &["inspect", "alice", "order-1", "--json"]);
    assert_eq!(inspected.code, 0, "{}", inspected.all());
    let value = json(&inspected);
    assert_eq!(value["state"], "in_progress");
    assert_eq!(value["fencing_token"], token.to_hex());

    let released = run(env, &["release", "alice", "order-1", "--yes"]);
    assert_eq!(released.code, 0, "{}", released.all());
    assert!(
        store
            .get(&store_key("alice", "order-1"))
            .await
            .unwrap()
            .is_none()
    );

    seed(
        store,
        "alice",
        "order-2",
        Some(StoredOutcome::new("hello", Some("text/plain".into()))),
    )
    .await;
    let value = json(&run(env, &["inspect", "alice", "order-2", "--json"]));
    assert_eq!(value["state"], "completed");
    let deleted = run(env, &["delete", "alice", "order-2", "--yes"]);
    assert_eq!(deleted.code, 0, "{}", deleted.all());
    let missing = run(env, &["inspect", "alice", "order-2"]);
    assert_eq!(missing.code, 3, "{}", missing.all());

    // A scope of 250 records walked in steps of 100, next to another scope left alone, and one
    // expired row (of another scope) that only `purge_expired` collects.
    seed_many(store, "alice", 250).await;
    seed_many(store, "bob", 3).await;
    let expiring = store_key("carol", "gone");
    let claim = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of("gone"),
        created_at_ms: 1,
    };
    store
        .try_claim(&expiring, &claim, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await; // real time: the database's clock

    let dry = run(env, &["purge", "--scope", "alice", "--batch", "100"]);
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(dry.stdout.contains("250 records"), "{}", dry.stdout);
    let stats = json(&run(env, &["stats", "--json"]));
    assert_eq!(stats["in_progress"], 125 + 2, "{stats}");
    assert_eq!(stats["completed"], 125 + 1, "{stats}");

    let purged = run(
        env,
        &["purge", "--scope", "alice", "--yes", "--batch", "100"],
    );
    assert_eq!(purged.code, 0, "{}", purged.all());
    assert!(
        purged.stdout.contains("deleted 250 records"),
        "{}",
        purged.stdout
    );
    assert!(
        purged.stdout.contains("deleted 1 expired rows"),
        "{}",
        purged.stdout
    );
    let stats = json(&run(env, &["stats", "--json"]));
    assert_eq!(stats["in_progress"], 2, "{stats}");
    assert_eq!(stats["completed"], 1, "{stats}");
    assert_eq!(stats["expired_during_scan"], 0, "{stats}");

    let doctor = run(env, &["doctor", "--strict"]);
    assert_eq!(doctor.code, 0, "{}", doctor.all());
    assert!(doctor.stdout.contains("3 rows"), "{}", doctor.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let pool =
        sqlx::sqlite::SqlitePool::connect_with(idempotency::sql::sqlite_connect_options(&path))
            .await
            .unwrap();
    let store = SqliteStore::builder(pool).migrate().await.unwrap();
    let url = format!("sqlite://{}", path.display());
    let env = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", url.as_str())];
    every_command(&store, &env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_on_postgres() {
    let server = PostgresServer::start().unwrap_or_else(|e| panic!("{e}: {HOW_TO_GET_POSTGRES}"));
    let pool = sqlx::postgres::PgPool::connect(server.url()).await.unwrap();
    let store = PostgresStore::builder(pool).migrate().await.unwrap();
    let env = [("IDEMPOTENCY_STORE", "sql"), ("DATABASE_URL", server.url())];
    every_command(&store, &env).await;
}

/// `purge --scope` on Postgres walks the table with `pg_catalog`'s functions and operators and
/// the table the store pinned: a `=` on text that matches everything, in a schema the CLI's
/// connection lists before `pg_catalog`, used to make the walk list every key, and the purge
/// of one scope deleted another's records too (here bob's 3, beside alice's 5).
#[tokio::test(flavor = "multi_thread")]
async fn purge_on_postgres_deletes_only_its_scope_under_a_hostile_search_path() {
    let server =
        PostgresServer::start_local().unwrap_or_else(|e| panic!("{e}: {HOW_TO_GET_POSTGRES}"));
    let pool = sqlx::postgres::PgPool::connect(server.url()).await.unwrap();
    for statement in [
        "CREATE SCHEMA evil",
        "CREATE FUNCTION evil.always(text, text) RETURNS boolean \
         LANGUAGE sql IMMUTABLE AS 'SELECT true'",
        "CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.always)",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let store = PostgresStore::builder(pool).migrate().await.unwrap();
    seed_many(&store, "alice", 5).await;
    seed_many(&store, "bob", 3).await;
    let hostile = format!(
        "{}?options=-c%20search_path%3Devil%2Cpg_catalog%2Cpublic",
        server.url()
    );
    let env = [
        ("IDEMPOTENCY_STORE", "sql"),
        ("DATABASE_URL", hostile.as_str()),
    ];
    let purged = run(&env, &["purge", "--scope", "alice", "--yes"]);
    assert_eq!(purged.code, 0, "{}", purged.all());
    assert!(
        purged.stdout.contains("deleted 5 records"),
        "{}",
        purged.stdout
    );
    for i in 0..3 {
        assert!(
            store
                .get(&store_key("bob", &format!("k{i}")))
                .await
                .unwrap()
                .is_some(),
            "bob's record k{i} survives alice's purge"
        );
    }
}
