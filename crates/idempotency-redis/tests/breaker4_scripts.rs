//! breaker4 (issue 15): the store's own `EVALSHA` commands and the `NOSCRIPT` reload path under
//! a concurrent `SCRIPT FLUSH` storm, a server restart, a least-privilege ACL user, and record
//! bodies at the edges (1 MiB, empty, every byte value, odd content types).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idempotency_core::{Claim, Fenced, IdempotencyStore, Record, StoreKey, StoredOutcome};
use idempotency_redis::{RedisStore, redis};
use idempotency_testkit::fixtures::RedisServer;

mod common;
use common::{claim_record, completed};

fn key(name: &str) -> StoreKey {
    common::unique_key("b4", name)
}

async fn claim_complete(store: &RedisStore, k: &StoreKey, outcome: StoredOutcome) -> Fenced {
    let r = claim_record();
    let lease = Duration::from_secs(30);
    assert_eq!(store.try_claim(k, &r, lease).await.unwrap(), Claim::Claimed);
    assert_eq!(
        store.extend(k, &r.token, lease).await.unwrap(),
        Fenced::Applied
    );
    let c = completed(&r, outcome);
    let fenced = store
        .complete(k, &r.token, &c, Duration::from_secs(60))
        .await
        .unwrap();
    if fenced == Fenced::Applied {
        assert_eq!(store.get(k).await.unwrap(), Some(Record::Completed(c)));
    }
    fenced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_flush_storm_during_a_concurrent_run_loses_no_completion() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::builder()
        .operation_timeout(Duration::from_secs(2))
        .connect(server.url())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (mut conn, stop) = (store.connection().clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut flushes = 0u32;
            while !stop.load(Ordering::Relaxed) {
                redis::cmd("SCRIPT")
                    .arg("FLUSH")
                    .query_async::<()>(&mut conn)
                    .await
                    .unwrap();
                flushes += 1;
                tokio::task::yield_now().await;
            }
            flushes
        })
    };
    let mut workers = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            for i in 0..40 {
                let k = key(&format!("storm-{w}-{i}"));
                let outcome = StoredOutcome::new(format!("{w}/{i}"), None);
                assert_eq!(claim_complete(&store, &k, outcome).await, Fenced::Applied);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let flushes = flusher.await.unwrap();
    assert!(flushes > 10, "the storm ran ({flushes} flushes)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_mid_run_loads_the_scripts_again() {
    let mut server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::builder()
        .operation_timeout(Duration::from_secs(2))
        .connect(server.url())
        .await
        .unwrap();
    let r = claim_record();
    let k = key("restart");
    let lease = Duration::from_secs(30);
    assert_eq!(
        store.try_claim(&k, &r, lease).await.unwrap(),
        Claim::Claimed
    );
    server.restart().unwrap();
    // The record is gone with the restart (no persistence): the completion is fenced out, via
    // a freshly loaded script, not an error.
    let mut last = None;
    for _ in 0..20 {
        match store
            .complete(
                &k,
                &r.token,
                &completed(&r, StoredOutcome::new("x", None)),
                lease,
            )
            .await
        {
            Ok(f) => {
                last = Some(f);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(last, Some(Fenced::LeaseLost));
    let k2 = key("restart-2");
    assert_eq!(
        claim_complete(&store, &k2, StoredOutcome::new("y", None)).await,
        Fenced::Applied
    );
}

/// A user with only the commands the protocol table lists (and the scripts' own commands)
/// works through a flush, with or without `SCRIPT LOAD`: the crate docs promise `EVAL` after
/// `NOSCRIPT` (before the fix, the store sent `SCRIPT LOAD` and failed with NOPERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_acl_user_works_through_the_reload_path() {
    let server = RedisServer::start_local().expect("local redis-server");
    let admin = RedisStore::builder().connect(server.url()).await.unwrap();
    let mut conn = admin.connection().clone();
    let base = "+set +get +del +pttl +pexpire +evalsha +eval +publish +subscribe +unsubscribe +ping +hello +info +client";
    for (user, extra) in [("full", " +script|load"), ("noload", "")] {
        let rules = format!("on >pw ~* &* {base}{extra}");
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(user);
        for rule in rules.split(' ') {
            cmd.arg(rule);
        }
        cmd.query_async::<()>(&mut conn).await.unwrap();
    }
    let url_for = |user: &str| {
        server
            .url()
            .replacen("redis://", &format!("redis://{user}:pw@"), 1)
    };
    let full = RedisStore::builder()
        .connect(&url_for("full"))
        .await
        .expect("connect as the least-privilege user");
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        claim_complete(&full, &key("acl"), StoredOutcome::new("ok", None)).await,
        Fenced::Applied
    );

    let noload = RedisStore::builder()
        .connect(&url_for("noload"))
        .await
        .unwrap();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        claim_complete(&noload, &key("acl-noload"), StoredOutcome::new("ok", None)).await,
        Fenced::Applied,
        "the reload path needs no SCRIPT permission (EVAL after NOSCRIPT, as the crate docs say)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_bodies_and_content_types_round_trip() {
    let server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::builder()
        .operation_timeout(Duration::from_secs(5))
        .connect(server.url())
        .await
        .unwrap();
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(4099).collect();
    let cases = [
        StoredOutcome::new(
            vec![0xFFu8; 1 << 20],
            Some("application/octet-stream".into()),
        ),
        StoredOutcome::new(Vec::new(), None),
        StoredOutcome::new(Vec::new(), Some(String::new())),
        StoredOutcome::new(
            all_bytes,
            Some("text/plain; charset=\"utf-8\"\\\u{1}\u{7f}é€".into()),
        ),
        StoredOutcome::new(vec![0u8; 1], Some("a\"b\\c\nd\te".into())),
    ];
    for (i, outcome) in cases.into_iter().enumerate() {
        let k = key(&format!("edge-{i}"));
        assert_eq!(
            claim_complete(&store, &k, outcome).await,
            Fenced::Applied,
            "case {i}"
        );
    }
}

/// Redis Cluster: the `EVALSHA` command the store builds (and its `EVAL` form after `NOSCRIPT`)
/// is routed by its key; after `SCRIPT FLUSH` on every master, completions on keys spread over
/// all slots still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_completions_apply_after_every_master_flushed_its_scripts() {
    use idempotency_testkit::fixtures::RedisCluster;
    let cluster = RedisCluster::start(3).expect("local redis cluster");
    let store = RedisStore::builder()
        .connect_cluster(cluster.urls())
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    let mut claims = Vec::new();
    for i in 0..30 {
        let (k, r) = (key(&format!("cluster-{i}")), claim_record());
        assert_eq!(
            store.try_claim(&k, &r, lease).await.unwrap(),
            Claim::Claimed
        );
        claims.push((k, r));
    }
    for url in cluster.urls() {
        let node = RedisStore::builder().connect(&url).await.unwrap();
        let mut conn = node.connection().clone();
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    for (k, r) in claims {
        let c = completed(
            &r,
            StoredOutcome::new(vec![0u8, 255, 10], Some("x/y".into())),
        );
        assert_eq!(
            store
                .complete(&k, &r.token, &c, Duration::from_secs(60))
                .await
                .unwrap(),
            Fenced::Applied
        );
        assert_eq!(store.get(&k).await.unwrap(), Some(Record::Completed(c)));
    }
}
