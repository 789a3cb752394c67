//! Waiting duplicates are woken by pub/sub, not polling (issue 12 item 4), on a real server of
//! their own (so `INFO commandstats` counts only this test's commands).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use idempotency_core::{
    Begin, Completed, Fingerprint, Idempotency, IdempotencyKey, IdempotencyStore, Record, Scope,
    StoreKey, StoredOutcome, Waited, lua, unix_millis_now,
};
use idempotency_redis::RedisStore;
use idempotency_redis::redis::{self, aio::MultiplexedConnection};
use idempotency_testkit::fixtures::RedisServer;

/// Polling, if it happened, would look every 5 ms.
const POLL: Duration = Duration::from_millis(5);

async fn engine_on(server: &RedisServer, max_wait: Duration) -> Idempotency<RedisStore> {
    let store = RedisStore::builder()
        .connect(server.url())
        .await
        .expect("connect");
    assert!(store.notifies_waiters());
    Idempotency::builder(store)
        .wait_for_in_progress(max_wait, POLL)
        .ignore_env()
        .build()
        .unwrap()
}

async fn admin(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `cmdstat_<name>` call counts from `INFO commandstats`.
async fn command_calls(conn: &mut MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn delta(after: &HashMap<String, u64>, before: &HashMap<String, u64>, name: &str) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

/// Gate: the waiter's subscription is live on the server.
async fn until_subscribed(conn: &mut MultiplexedConnection, key: &StoreKey) {
    let channel = lua::wake_channel(key);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, count): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(conn)
            .await
            .unwrap();
        if count == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "the waiter never subscribed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_wakes_the_waiter_with_no_polling_commands() {
    let server = RedisServer::start_local().expect("local redis-server (apt install redis-server)");
    let engine = engine_on(&server, Duration::from_secs(20)).await;
    let mut admin = admin(&server).await;
    let (scope, k) = (Scope::global(), key("wake-complete"));
    let Begin::Run(guard) = engine
        .begin(&scope, &k, Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("first attempt runs")
    };
    let before = command_calls(&mut admin).await;
    let waiter = tokio::spawn({
        let engine = engine.clone();
        let (scope, k) = (scope.clone(), k.clone());
        async move {
            let answer = engine.begin(&scope, &k, Fingerprint::of("a")).await;
            (answer, Instant::now())
        }
    });
    until_subscribed(&mut admin, &engine.store_key(&scope, &k)).await;
    // The first attempt keeps working for a while: 100 polls' worth.
    tokio::time::sleep(POLL * 100).await;
    let completing = Instant::now();
    guard
        .complete(StoredOutcome::new("done", None))
        .await
        .unwrap();
    let (answer, answered) = waiter.await.unwrap();
    match answer.unwrap() {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
        Begin::Run(_) => panic!("must wait, not run"),
    }
    let after = command_calls(&mut admin).await;
    // `INFO commandstats` also counts the commands a script runs: the completion script's
    // GET and SET are in these figures (one each).
    let in_script = 1;
    // The duplicate's commands: its claim, the check after subscribing (`GET` and `PTTL`, one
    // round trip), the re-read (a claim).
    assert_eq!(
        delta(&after, &before, "set") - in_script,
        2,
        "{after:?} {before:?}"
    );
    assert_eq!(delta(&after, &before, "get") - in_script, 1, "{after:?}");
    assert_eq!(delta(&after, &before, "pttl"), 1, "{after:?}");
    // The completion (the first attempt's), publishing inside its script.
    assert_eq!(delta(&after, &before, "evalsha"), 1, "{after:?}");
    assert_eq!(delta(&after, &before, "publish"), 1, "{after:?}");
    assert_eq!(delta(&after, &before, "subscribe"), 1, "{after:?}");
    eprintln!(
        "wake-up: answered {:?} after the completion began",
        answered.saturating_duration_since(completing)
    );
    // The last waiter unsubscribed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.store().waited_keys() != 0
        || delta(&command_calls(&mut admin).await, &before, "unsubscribe") != 1
    {
        assert!(Instant::now() < deadline, "the channel stays subscribed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wakes_the_waiter_which_runs() {
    let server = RedisServer::start_local().expect("local redis-server (apt install redis-server)");
    let engine = engine_on(&server, Duration::from_secs(20)).await;
    let mut admin = admin(&server).await;
    let (scope, k) = (Scope::global(), key("wake-release"));
    let Begin::Run(guard) = engine
        .begin(&scope, &k, Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("first attempt runs")
    };
    let started = Instant::now();
    let waiter = tokio::spawn({
        let engine = engine.clone();
        let (scope, k) = (scope.clone(), k.clone());
        async move { engine.begin(&scope, &k, Fingerprint::of("a")).await }
    });
    until_subscribed(&mut admin, &engine.store_key(&scope, &k)).await;
    guard.release().await.unwrap();
    let Begin::Run(second) = waiter.await.unwrap().unwrap() else {
        panic!("a released key is claimed by the waiter")
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken, not timed out"
    );
    second.release().await.unwrap();
}

/// A duplicate of a claim whose owner is gone (it neither completes nor releases: nothing is
/// published) takes the key over when the 300 ms lease lapses: the read after subscribing takes
/// the key's `PTTL` too, and the wait ends then. It used to sleep until its `max_wait` (20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_takes_a_lapsed_claim_over_when_its_lease_ends() {
    let server = RedisServer::start_local().expect("local redis-server (apt install redis-server)");
    let store = RedisStore::builder()
        .connect(server.url())
        .await
        .expect("connect");
    assert!(store.notifies_waiters());
    let mut admin = admin(&server).await;
    let before = command_calls(&mut admin).await;
    let after = idempotency_testkit::lapse::duplicate_takes_over_a_lapsed_claim(
        store,
        Duration::from_millis(300),
        Duration::from_secs(20),
    )
    .await;
    assert!(
        after < Duration::from_secs(5),
        "taken over at the lapse ({after:?}), not at the 20 s deadline"
    );
    let calls = command_calls(&mut admin).await;
    assert_eq!(
        delta(&calls, &before, "pttl"),
        1,
        "one PTTL, with the GET after subscribing"
    );
}

/// A record whose lease ends in ~146 million years (`PX` of `i64::MAX / 2` ms, written by
/// hand): the wait is bounded by its own timeout and ends `TimedOut` (the lease's end, far past
/// it, is compared as a duration and never added to an instant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_longer_than_any_instant_leaves_the_wait_to_its_timeout() {
    let server = RedisServer::start_local().expect("local redis-server (apt install redis-server)");
    let store = RedisStore::builder()
        .connect(server.url())
        .await
        .expect("connect");
    let mut admin = admin(&server).await;
    let k = StoreKey::from_raw("endless-lease");
    let record = common::put_in_progress(&mut admin, &k, i64::MAX / 2).await;
    let started = Instant::now();
    let waited = store
        .wait_for_change(&k, &record.token, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(waited, Waited::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// A completion whose message the subscriber never saw (here: written by a store without a
/// subscriber, so nothing is published, while the subscriber connection is being killed) is
/// caught by the re-read every waiter makes when the subscriber reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_missed_while_reconnecting_is_caught() {
    let server = RedisServer::start_local().expect("local redis-server (apt install redis-server)");
    let max_wait = Duration::from_secs(30);
    let engine = engine_on(&server, max_wait).await;
    let mut admin = admin(&server).await;
    let silent = RedisStore::builder()
        .with_connection(admin.clone())
        .await
        .unwrap();
    assert!(!silent.notifies_waiters());
    let (scope, k) = (Scope::global(), key("wake-reconnect"));
    let Begin::Run(guard) = engine
        .begin(&scope, &k, Fingerprint::of("a"))
        .await
        .unwrap()
    else {
        panic!("first attempt runs")
    };
    let store_key = engine.store_key(&scope, &k);
    let Some(Record::InProgress(held)) = engine.store().get(&store_key).await.unwrap() else {
        panic!("in progress")
    };
    // Completed below through the silent store; the guard is kept alive until then.
    let _guard = guard;
    let started = Instant::now();
    let waiter = tokio::spawn({
        let engine = engine.clone();
        let (scope, k) = (scope.clone(), k.clone());
        async move { engine.begin(&scope, &k, Fingerprint::of("a")).await }
    });
    until_subscribed(&mut admin, &store_key).await;
    assert_eq!(engine.store().wake_up_subscriber(), (true, 1));
    // Keep the subscriber from reconnecting (no new connections), drop its connection, then
    // complete without a message while it is down.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(1)
        .query_async(&mut admin)
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    let completed = Completed {
        token: held.token,
        fingerprint: held.fingerprint,
        created_at_ms: held.created_at_ms,
        completed_at_ms: unix_millis_now(),
        outcome: StoredOutcome::new("done", None),
    };
    silent
        .complete(&store_key, &held.token, &completed, Duration::from_secs(60))
        .await
        .unwrap();
    // Gate: the subscriber saw its connection end (and cannot open another).
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.store().wake_up_subscriber().0 {
        assert!(Instant::now() < deadline, "the subscriber never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(1000)
        .query_async(&mut admin)
        .await
        .unwrap();
    match waiter.await.unwrap().unwrap() {
        Begin::Replay(outcome) => assert_eq!(&outcome.body[..], b"done"),
        Begin::Run(_) => panic!("must replay"),
    }
    assert!(
        started.elapsed() < max_wait / 2,
        "caught on reconnect, not by the end of the wait"
    );
    assert_eq!(engine.store().wake_up_subscriber().1, 2, "reconnected once");
}

/// The figure for the issue: time from the start of the completion to the waiter's answer, on
/// loopback, and the store commands per waiting duplicate. Printed, not asserted (timing
/// targets belong to benchmarks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_up_latency_figures() {
    let server = RedisServer::start_local().expect("local redis-server (apt install redis-server)");
    let engine = engine_on(&server, Duration::from_secs(20)).await;
    let mut admin = admin(&server).await;
    let rounds = 200;
    let before = command_calls(&mut admin).await;
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (scope, k) = (Scope::global(), key(&format!("wake-figure-{round}")));
        let Begin::Run(guard) = engine
            .begin(&scope, &k, Fingerprint::of("a"))
            .await
            .unwrap()
        else {
            panic!("first attempt runs")
        };
        let waiter = tokio::spawn({
            let engine = engine.clone();
            let (scope, k) = (scope.clone(), k.clone());
            async move {
                let answer = engine.begin(&scope, &k, Fingerprint::of("a")).await;
                (answer, Instant::now())
            }
        });
        until_subscribed(&mut admin, &engine.store_key(&scope, &k)).await;
        let completing = Instant::now();
        guard
            .complete(StoredOutcome::new("done", None))
            .await
            .unwrap();
        let (answer, answered) = waiter.await.unwrap();
        assert!(matches!(answer.unwrap(), Begin::Replay(_)));
        latencies.push(answered.saturating_duration_since(completing));
    }
    let after = command_calls(&mut admin).await;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let per = |name: &str| delta(&after, &before, name) as f64 / rounds as f64;
    eprintln!(
        "wake-up latency over {rounds} rounds (completion start -> waiter answer): p50 {:?}, p99 {:?}, max {:?}",
        at(0.50),
        at(0.99),
        at(1.0)
    );
    eprintln!(
        "per round (first attempt + one waiting duplicate; commandstats include the completion script's GET and SET): set {:.2}, get {:.2}, evalsha {:.2}, pttl {:.2}, subscribe {:.2}, unsubscribe {:.2}",
        per("set"),
        per("get"),
        per("evalsha"),
        per("pttl"),
        per("subscribe"),
        per("unsubscribe")
    );
}
