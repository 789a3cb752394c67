//! breaker9 (issue 15): the crate docs' least-privilege ACL user runs every primitive — both
//! claim strategies, extend, complete, release, get, delete, time to live, and a wait woken by
//! a completion — with the script cache flushed before each one (the lean attempt's `recover`
//! resends as `EVAL`, which this user may run; it may not run `SCRIPT`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use idempotency_core::{
    Claim, Fenced, IdempotencyStore, LeaseToken, Record, StoredOutcome, Waited,
};
use idempotency_redis::{ClaimStrategy, RedisStore, redis};
use idempotency_testkit::fixtures::RedisServer;

mod common;
use common::{claim_record, completed};

/// The rules of the crate docs' "Least privilege" section, word for word.
const RULES: &str = "on >pw ~* &* +set +get +del +pttl +pexpire +evalsha +eval +publish +subscribe +unsubscribe +ping +hello +info +client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_user_runs_every_primitive_through_flushes() {
    let server = RedisServer::start_local().expect("local redis-server");
    let admin = RedisStore::builder().connect(server.url()).await.unwrap();
    let mut conn = admin.connection().clone();
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg("idem");
    for rule in RULES.split(' ') {
        cmd.arg(rule);
    }
    cmd.query_async::<()>(&mut conn).await.unwrap();
    let url = server.url().replacen("redis://", "redis://idem:pw@", 1);
    let flush = {
        let conn = conn.clone();
        move || {
            let mut conn = conn.clone();
            async move {
                redis::cmd("SCRIPT")
                    .arg("FLUSH")
                    .query_async::<()>(&mut conn)
                    .await
                    .unwrap();
            }
        }
    };

    for strategy in [ClaimStrategy::Script, ClaimStrategy::SetNxGet] {
        let store = RedisStore::builder()
            .claim_strategy(strategy)
            .connect(&url)
            .await
            .expect("connect as the documented least-privilege user");
        // The user may not flush or load scripts itself: the reload must not need it.
        let mut own = store.connection().clone();
        assert!(
            redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async::<()>(&mut own)
                .await
                .is_err(),
            "the ACL user is least-privilege"
        );
        let lease = Duration::from_secs(30);
        let k = common::unique_key("b9acl", &format!("{strategy:?}"));
        let r = claim_record();
        let stale = LeaseToken::generate();

        flush().await;
        assert_eq!(
            store.try_claim(&k, &r, lease).await.unwrap(),
            Claim::Claimed
        );
        flush().await;
        assert_eq!(
            store.try_claim(&k, &claim_record(), lease).await.unwrap(),
            Claim::Existing(Record::InProgress(r.clone()))
        );
        flush().await;
        assert_eq!(
            store.extend(&k, &stale, lease).await.unwrap(),
            Fenced::LeaseLost
        );
        flush().await;
        assert_eq!(
            store.extend(&k, &r.token, lease).await.unwrap(),
            Fenced::Applied
        );
        flush().await;
        assert!(store.time_to_live(&k).await.unwrap().is_some());
        flush().await;
        assert_eq!(store.release(&k, &stale).await.unwrap(), Fenced::LeaseLost);

        // A waiter woken by the completion (the completion script publishes).
        let waiter = {
            let (store, k, token) = (store.clone(), k.clone(), r.token);
            tokio::spawn(async move {
                store
                    .wait_for_change(&k, &token, Duration::from_secs(10))
                    .await
            })
        };
        // The waiter is subscribed before the completion is sent.
        for _ in 0..200 {
            if store.waited_keys() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(store.waited_keys(), 1, "the waiter subscribed");
        flush().await;
        let done = completed(&r, StoredOutcome::new("ok", Some("text/plain".into())));
        let stale_done = completed(&r, StoredOutcome::new("stale", None));
        assert_eq!(
            store
                .complete(&k, &stale, &stale_done, lease)
                .await
                .unwrap(),
            Fenced::LeaseLost
        );
        flush().await;
        assert_eq!(
            store.complete(&k, &r.token, &done, lease).await.unwrap(),
            Fenced::Applied
        );
        assert_eq!(waiter.await.unwrap().unwrap(), Waited::Changed);
        flush().await;
        assert_eq!(
            store.get(&k).await.unwrap(),
            Some(Record::Completed(done.clone()))
        );

        let k2 = common::unique_key("b9acl", "release");
        let r2 = claim_record();
        flush().await;
        assert_eq!(
            store.try_claim(&k2, &r2, lease).await.unwrap(),
            Claim::Claimed
        );
        flush().await;
        assert_eq!(
            store.release(&k2, &r2.token).await.unwrap(),
            Fenced::Applied
        );
        flush().await;
        assert!(store.delete(&k).await.unwrap());
        assert_eq!(store.get(&k).await.unwrap(), None);
    }
}
