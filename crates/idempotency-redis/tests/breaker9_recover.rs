//! breaker9 (issue 15): the Redis store's lean attempt and its one boxed `recover`, driven
//! command by command. A connection wrapper (`Faulty`) in front of a real server injects, per
//! command the store sends, a broken connection, a `SCRIPT FLUSH` just before it (a real
//! `NOSCRIPT` answer), or a reply that never comes, and logs the command names: every primitive
//! sends exactly the commands the recovery rules allow (one `EVAL` after `NOSCRIPT`, one more
//! attempt after a broken connection), answers as before, and stays inside its operation
//! timeout whichever step hangs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotency_core::{
    Claim, Fenced, IdempotencyStore, LeaseToken, Record, StoreError, StoreKey, StoreOperation,
    StoredOutcome, lua,
};
use idempotency_redis::redis::aio::{ConnectionLike, ConnectionManager};
use idempotency_redis::redis::{self, Cmd, RedisFuture, Value};
use idempotency_redis::{ClaimStrategy, RedisStore};
use idempotency_testkit::fixtures::RedisServer;

mod common;
use common::{claim_record, completed};

const BUDGET: Duration = Duration::from_millis(400);
/// Scheduling slack on top of the budget (a hang must end at the budget, not at a later one).
const SLACK: Duration = Duration::from_millis(400);

/// What happens to the next command the store sends.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Answered by the server.
    Pass,
    /// Fails as a dropped connection (`BrokenPipe`), without reaching the server.
    Broken,
    /// `SCRIPT FLUSH` first, then sent: an `EVALSHA` answers `NOSCRIPT`.
    Flush,
    /// Never answered.
    Hang,
}

#[derive(Clone)]
struct Faulty {
    inner: ConnectionManager,
    plan: Arc<Mutex<VecDeque<Fault>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Faulty {
    fn plan(&self, faults: &[Fault]) {
        *self.plan.lock().unwrap() = faults.iter().copied().collect();
        self.log.lock().unwrap().clear();
    }

    /// The server's script cache holds the store's four scripts again (as after connecting),
    /// then `plan`.
    async fn fresh(&self, faults: &[Fault]) {
        let mut conn = self.inner.clone();
        for source in [lua::CLAIM, lua::COMPLETE, lua::RELEASE, lua::EXTEND] {
            redis::Script::new(source)
                .load_async(&mut conn)
                .await
                .unwrap();
        }
        self.plan(faults);
    }

    /// The names of the commands sent since the last `plan`.
    fn sent(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl ConnectionLike for Faulty {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let name = match cmd.args_iter().next() {
            Some(redis::Arg::Simple(bytes)) => String::from_utf8_lossy(bytes).to_uppercase(),
            _ => "?".to_owned(),
        };
        self.log.lock().unwrap().push(name);
        let fault = self.plan.lock().unwrap().pop_front().unwrap_or(Fault::Pass);
        Box::pin(async move {
            match fault {
                Fault::Pass => self.inner.req_packed_command(cmd).await,
                Fault::Broken => Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "injected: connection broken",
                )
                .into()),
                Fault::Flush => {
                    redis::cmd("SCRIPT")
                        .arg("FLUSH")
                        .query_async::<()>(&mut self.inner)
                        .await?;
                    self.inner.req_packed_command(cmd).await
                }
                Fault::Hang => std::future::pending().await,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

async fn faulty_store(
    server: &RedisServer,
    strategy: ClaimStrategy,
) -> (RedisStore<Faulty>, Faulty) {
    let inner = redis::Client::open(server.url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let faulty = Faulty {
        inner,
        plan: Arc::default(),
        log: Arc::default(),
    };
    let store = RedisStore::builder()
        .operation_timeout(BUDGET)
        .claim_strategy(strategy)
        .with_connection(faulty.clone())
        .await
        .unwrap();
    (store, faulty)
}

fn key(name: &str) -> StoreKey {
    common::unique_key("b9", name)
}

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(60);

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The recovery paths a script command can take, the commands each must send, and whether the
/// primitive then answers (`true`) or fails with `Unavailable` (`false`).
fn script_paths() -> Vec<(Vec<Fault>, Vec<String>, bool)> {
    use Fault::*;
    vec![
        (vec![], strs(&["EVALSHA"]), true),
        (vec![Flush], strs(&["EVALSHA", "EVAL"]), true),
        (vec![Broken], strs(&["EVALSHA", "EVALSHA"]), true),
        (
            vec![Broken, Flush],
            strs(&["EVALSHA", "EVALSHA", "EVAL"]),
            true,
        ),
        (
            vec![Flush, Broken, Flush],
            strs(&["EVALSHA", "EVAL", "EVALSHA", "EVAL"]),
            true,
        ),
        (vec![Broken, Broken], strs(&["EVALSHA", "EVALSHA"]), false),
        (
            vec![Flush, Broken, Broken],
            strs(&["EVALSHA", "EVAL", "EVALSHA"]),
            false,
        ),
        (
            vec![Broken, Flush, Broken],
            strs(&["EVALSHA", "EVALSHA", "EVAL"]),
            false,
        ),
    ]
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "{what}: {result:?}"
    );
}

/// Every fenced primitive and the script claim, along every recovery path: the commands sent
/// are exactly the ones listed (one `EVAL` per `NOSCRIPT`, at most one more attempt after a
/// broken connection), the answers are the same as on the plain path, and a second broken
/// connection is `Unavailable` with the record untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_primitive_sends_only_what_the_recovery_rules_allow() {
    let server = RedisServer::start_local().expect("local redis-server");
    let (store, faulty) = faulty_store(&server, ClaimStrategy::Script).await;
    for (n, (faults, expected, answers)) in script_paths().into_iter().enumerate() {
        let what = format!("path {n} {faults:?}");
        let k = key(&format!("path-{n}"));
        let r = claim_record();
        let stale = LeaseToken::generate();

        faulty.fresh(&faults).await;
        let claimed = store.try_claim(&k, &r, LEASE).await;
        assert_eq!(faulty.sent(), expected, "claim, {what}");
        if !answers {
            assert_unavailable(claimed, &format!("claim, {what}"));
            assert_eq!(store.get(&k).await.unwrap(), None, "{what}");
            faulty.fresh(&[]).await;
            assert_eq!(
                store.try_claim(&k, &r, LEASE).await.unwrap(),
                Claim::Claimed
            );
        } else {
            assert_eq!(claimed.unwrap(), Claim::Claimed, "{what}");
        }

        // The claim again (held by the same record now): `Existing`, along the same path.
        faulty.fresh(&faults).await;
        let again = store.try_claim(&k, &r, LEASE).await;
        assert_eq!(faulty.sent(), expected, "claim held, {what}");
        if answers {
            assert_eq!(
                again.unwrap(),
                Claim::Existing(Record::InProgress(r.clone())),
                "{what}"
            );
        } else {
            assert_unavailable(again, &format!("claim held, {what}"));
        }

        for (token, applied) in [(&r.token, true), (&stale, false)] {
            faulty.fresh(&faults).await;
            let extended = store.extend(&k, token, LEASE).await;
            let mut sent = expected.clone();
            if answers && !applied {
                // The lease-lost check after a fenced "lease lost".
                sent.push("GET".to_owned());
            }
            assert_eq!(faulty.sent(), sent, "extend (own {applied}), {what}");
            if answers {
                let want = if applied {
                    Fenced::Applied
                } else {
                    Fenced::LeaseLost
                };
                assert_eq!(extended.unwrap(), want, "extend, {what}");
            } else {
                assert_unavailable(extended, &format!("extend, {what}"));
            }
        }

        // A completion with a stale token never applies, whatever the path.
        let done = completed(
            &r,
            StoredOutcome::new(format!("{n}"), Some("text/plain".into())),
        );
        faulty.fresh(&faults).await;
        let stale_done = store.complete(&k, &stale, &done, RETENTION).await;
        if answers {
            assert_eq!(stale_done.unwrap(), Fenced::LeaseLost, "{what}");
        } else {
            assert_unavailable(stale_done, &format!("stale complete, {what}"));
        }
        faulty.fresh(&[]).await;
        assert_eq!(
            store.get(&k).await.unwrap(),
            Some(Record::InProgress(r.clone())),
            "{what}"
        );

        faulty.fresh(&faults).await;
        let fenced = store.complete(&k, &r.token, &done, RETENTION).await;
        assert_eq!(faulty.sent(), expected, "complete, {what}");
        if answers {
            assert_eq!(fenced.unwrap(), Fenced::Applied, "{what}");
        } else {
            assert_unavailable(fenced, &format!("complete, {what}"));
            faulty.fresh(&[]).await;
            assert_eq!(
                store
                    .complete(&k, &r.token, &done, RETENTION)
                    .await
                    .unwrap(),
                Fenced::Applied
            );
        }
        faulty.fresh(&[]).await;
        assert_eq!(
            store.get(&k).await.unwrap(),
            Some(Record::Completed(done.clone()))
        );

        // Release: of a completed record (lease lost), then of a fresh claim.
        let k2 = key(&format!("release-{n}"));
        let r2 = claim_record();
        faulty.fresh(&[]).await;
        assert_eq!(
            store.try_claim(&k2, &r2, LEASE).await.unwrap(),
            Claim::Claimed
        );
        faulty.fresh(&faults).await;
        let released = store.release(&k2, &r2.token).await;
        assert_eq!(faulty.sent(), expected, "release, {what}");
        faulty.fresh(&[]).await;
        if answers {
            assert_eq!(released.unwrap(), Fenced::Applied, "{what}");
            assert_eq!(store.get(&k2).await.unwrap(), None);
        } else {
            assert_unavailable(released, &format!("release, {what}"));
            assert_eq!(
                store.get(&k2).await.unwrap(),
                Some(Record::InProgress(r2.clone()))
            );
        }
    }
}

/// The plain commands (`SET NX GET` claim, `GET`, `DEL`, `PTTL`): one more attempt after a
/// broken connection, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_commands_retry_a_broken_connection_once() {
    use Fault::*;
    let server = RedisServer::start_local().expect("local redis-server");
    let (store, faulty) = faulty_store(&server, ClaimStrategy::SetNxGet).await;
    let k = key("plain");
    let r = claim_record();

    faulty.fresh(&[Broken]).await;
    assert_eq!(
        store.try_claim(&k, &r, LEASE).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(faulty.sent(), strs(&["SET", "SET"]));
    faulty.fresh(&[Broken, Broken]).await;
    assert_unavailable(store.try_claim(&k, &r, LEASE).await, "claim");
    assert_eq!(faulty.sent(), strs(&["SET", "SET"]));

    faulty.fresh(&[Broken]).await;
    assert_eq!(
        store.get(&k).await.unwrap(),
        Some(Record::InProgress(r.clone()))
    );
    assert_eq!(faulty.sent(), strs(&["GET", "GET"]));
    faulty.fresh(&[Broken, Broken]).await;
    assert_unavailable(store.get(&k).await, "get");
    assert_eq!(faulty.sent(), strs(&["GET", "GET"]));

    faulty.fresh(&[Broken]).await;
    let ttl = store.time_to_live(&k).await.unwrap().unwrap();
    assert!(ttl <= LEASE && ttl > Duration::ZERO, "{ttl:?}");
    assert_eq!(faulty.sent(), strs(&["PTTL", "PTTL"]));

    faulty.fresh(&[Broken, Broken]).await;
    assert_unavailable(store.delete(&k).await, "delete");
    assert_eq!(faulty.sent(), strs(&["DEL", "DEL"]));
    faulty.fresh(&[Broken]).await;
    assert!(store.delete(&k).await.unwrap());
    assert_eq!(faulty.sent(), strs(&["DEL", "DEL"]));

    // A `NOSCRIPT`-like flush before a plain command changes nothing: no `EVAL` is sent.
    faulty.fresh(&[Flush]).await;
    assert_eq!(
        store.try_claim(&k, &r, LEASE).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(faulty.sent(), strs(&["SET"]));
}

/// The lease-lost check after a fenced "lease lost" is one more command (`GET`), retried once
/// on a broken connection, and it runs inside the primitive's operation timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_lost_check_retries_once_and_is_bounded() {
    use Fault::*;
    let server = RedisServer::start_local().expect("local redis-server");
    let (store, faulty) = faulty_store(&server, ClaimStrategy::Script).await;
    let k = key("lease-lost");
    let r = claim_record();
    let stale = LeaseToken::generate();
    assert_eq!(
        store.try_claim(&k, &r, LEASE).await.unwrap(),
        Claim::Claimed
    );

    faulty.fresh(&[Pass, Broken]).await;
    assert_eq!(
        store.extend(&k, &stale, LEASE).await.unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(faulty.sent(), strs(&["EVALSHA", "GET", "GET"]));

    faulty.fresh(&[Flush, Pass, Broken]).await;
    assert_eq!(store.release(&k, &stale).await.unwrap(), Fenced::LeaseLost);
    assert_eq!(faulty.sent(), strs(&["EVALSHA", "EVAL", "GET", "GET"]));

    // A lease-lost check that fails (but for `Corrupt`) does not hide the lease loss.
    faulty.fresh(&[Pass, Broken, Broken]).await;
    assert_eq!(store.release(&k, &stale).await.unwrap(), Fenced::LeaseLost);
    assert_eq!(faulty.sent(), strs(&["EVALSHA", "GET", "GET"]));

    let started = Instant::now();
    faulty.fresh(&[Pass, Hang]).await;
    let done = completed(&r, StoredOutcome::new("x", None));
    let err = store
        .complete(&k, &stale, &done, RETENTION)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, StoreError::Timeout { operation: StoreOperation::Complete, after } if after == BUDGET),
        "{err:?}"
    );
    assert!(took >= BUDGET && took < BUDGET + SLACK, "{took:?}");
    assert_eq!(
        store.get(&k).await.unwrap(),
        Some(Record::InProgress(r.clone()))
    );
}

/// Whichever step hangs — the first attempt, the `EVAL` after `NOSCRIPT`, the attempt after a
/// broken connection, or the `EVAL` after that — the primitive ends with `Timeout` at its
/// operation timeout, the whole primitive bounded by one timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_at_any_step_of_recover_times_out_within_the_budget() {
    use Fault::*;
    let server = RedisServer::start_local().expect("local redis-server");
    let (store, faulty) = faulty_store(&server, ClaimStrategy::Script).await;
    let paths: [&[Fault]; 5] = [
        &[Hang],
        &[Flush, Hang],
        &[Broken, Hang],
        &[Broken, Flush, Hang],
        &[Flush, Broken, Flush, Hang],
    ];
    for faults in paths {
        let k = key("hang");
        let r = claim_record();
        faulty.fresh(&[]).await;
        assert_eq!(
            store.try_claim(&k, &r, LEASE).await.unwrap(),
            Claim::Claimed
        );
        type Op<'a> = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>,
        >;
        let done = completed(&r, StoredOutcome::new("x", None));
        let r2 = claim_record();
        let ops: Vec<(StoreOperation, Op<'_>)> = vec![
            (
                StoreOperation::TryClaim,
                Box::pin(async {
                    store
                        .try_claim(&key("hang-claim"), &r2, LEASE)
                        .await
                        .map(drop)
                }),
            ),
            (
                StoreOperation::Extend,
                Box::pin(async { store.extend(&k, &r.token, LEASE).await.map(drop) }),
            ),
            (
                StoreOperation::Complete,
                Box::pin(async {
                    store
                        .complete(&k, &r.token, &done, RETENTION)
                        .await
                        .map(drop)
                }),
            ),
            (
                StoreOperation::Release,
                Box::pin(async { store.release(&k, &r.token).await.map(drop) }),
            ),
        ];
        for (operation, op) in ops {
            faulty.fresh(faults).await;
            let started = Instant::now();
            let err = op.await.unwrap_err();
            let took = started.elapsed();
            assert!(
                matches!(&err, StoreError::Timeout { operation: o, after } if *o == operation && *after == BUDGET),
                "{operation} {faults:?}: {err:?}"
            );
            assert!(
                took >= BUDGET && took < BUDGET + SLACK,
                "{operation} {faults:?}: {took:?}"
            );
            assert_eq!(
                faulty.sent().len(),
                faults.len(),
                "{operation} {faults:?}: {:?}",
                faulty.sent()
            );
        }
        // Nothing was written by the hung commands.
        faulty.fresh(&[]).await;
        assert_eq!(
            store.get(&k).await.unwrap(),
            Some(Record::InProgress(r.clone()))
        );
    }
}

/// An error reply from inside a script (`WRONGTYPE`: a hash under the key) maps to `Corrupt` for
/// every primitive, on the plain path, after `NOSCRIPT` (the `EVAL` answers it) and after a
/// broken connection: the lean attempt's `extract_error` and the recovery map it as
/// `query_async` did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_inside_a_script_is_corrupt_on_every_path() {
    use Fault::*;
    let server = RedisServer::start_local().expect("local redis-server");
    for strategy in [ClaimStrategy::Script, ClaimStrategy::SetNxGet] {
        let (store, faulty) = faulty_store(&server, strategy).await;
        let k = key("hash");
        let mut raw = faulty.inner.clone();
        redis::cmd("HSET")
            .arg(k.as_str())
            .arg("f")
            .arg("v")
            .query_async::<()>(&mut raw)
            .await
            .unwrap();
        let r = claim_record();
        let done = completed(&r, StoredOutcome::new("x", None));
        let paths: [&[Fault]; 4] = [&[], &[Flush], &[Broken], &[Broken, Flush]];
        for faults in paths {
            let what = format!("{strategy:?} {faults:?}");
            faulty.fresh(faults).await;
            let results = [
                ("claim", store.try_claim(&k, &r, LEASE).await.map(drop)),
                ("extend", {
                    faulty.fresh(faults).await;
                    store.extend(&k, &r.token, LEASE).await.map(drop)
                }),
                ("complete", {
                    faulty.fresh(faults).await;
                    store
                        .complete(&k, &r.token, &done, RETENTION)
                        .await
                        .map(drop)
                }),
                ("release", {
                    faulty.fresh(faults).await;
                    store.release(&k, &r.token).await.map(drop)
                }),
                ("get", {
                    faulty.fresh(faults).await;
                    store.get(&k).await.map(drop)
                }),
            ];
            for (name, result) in results {
                let err = result.unwrap_err();
                assert!(
                    matches!(&err, StoreError::Corrupt(c) if c.reason().contains("WRONGTYPE")),
                    "{name} {what}: {err:?}"
                );
            }
        }
        let kind: String = redis::cmd("TYPE")
            .arg(k.as_str())
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(kind, "hash", "the hash is left as it was");
    }
}

/// Resumes the server even when an assertion fails.
struct Paused<'a>(&'a mut RedisServer);
impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume();
    }
}

/// A frozen server (SIGSTOP) with the script cache flushed just before: every primitive — the
/// script claim, extend, complete, release, and the lease-lost path — ends with `Timeout` at the
/// operation timeout; once thawed, the same store answers through `NOSCRIPT` with the fencing
/// intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_after_a_flush_times_out_every_primitive_within_the_budget() {
    let mut server = RedisServer::start_local().expect("local redis-server");
    let store = RedisStore::builder()
        .operation_timeout(BUDGET)
        .claim_strategy(ClaimStrategy::Script)
        .connect(server.url())
        .await
        .unwrap();
    let k = key("frozen");
    let r = claim_record();
    let stale = LeaseToken::generate();
    assert_eq!(
        store.try_claim(&k, &r, LEASE).await.unwrap(),
        Claim::Claimed
    );
    let mut admin = store.connection().clone();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let done = completed(&r, StoredOutcome::new("x", None));
    {
        let paused = Paused(&mut server);
        paused.0.pause().expect("pause");
        let r2 = claim_record();
        let k2 = key("frozen-2");
        type Op<'a> = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + 'a>,
        >;
        let ops: Vec<(StoreOperation, Op<'_>)> = vec![
            (
                StoreOperation::TryClaim,
                Box::pin(async { store.try_claim(&k2, &r2, LEASE).await.map(drop) }),
            ),
            (
                StoreOperation::Extend,
                Box::pin(async { store.extend(&k, &r.token, LEASE).await.map(drop) }),
            ),
            (
                StoreOperation::Release,
                Box::pin(async { store.release(&k, &stale).await.map(drop) }),
            ),
            (
                StoreOperation::Complete,
                Box::pin(async { store.complete(&k, &stale, &done, RETENTION).await.map(drop) }),
            ),
        ];
        for (operation, op) in ops {
            let started = Instant::now();
            let err = op.await.unwrap_err();
            let took = started.elapsed();
            assert!(
                matches!(&err, StoreError::Timeout { operation: o, after } if *o == operation && *after == BUDGET),
                "{operation}: {err:?}"
            );
            assert!(
                took >= BUDGET && took < BUDGET + SLACK,
                "{operation}: {took:?}"
            );
        }
    }
    // Thawed: the commands sent while frozen may still run now (the replies were dropped with
    // the timed-out futures); whatever ran, the fencing holds.
    let mut answered = None;
    for _ in 0..50 {
        match store.extend(&k, &stale, LEASE).await {
            Ok(f) => {
                answered = Some(f);
                break;
            }
            Err(StoreError::Timeout { .. } | StoreError::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(answered, Some(Fenced::LeaseLost));
    assert_eq!(
        store.complete(&k, &stale, &done, RETENTION).await.unwrap(),
        Fenced::LeaseLost
    );
    assert_eq!(
        store
            .complete(&k, &r.token, &done, RETENTION)
            .await
            .unwrap(),
        Fenced::Applied
    );
    assert_eq!(store.get(&k).await.unwrap(), Some(Record::Completed(done)));
}

/// `maxmemory` reached under `noeviction`: an `OOM` error reply from inside a script (its
/// `SET`) or from `SET NX GET` is `WriteRefused` on the plain path, after `NOSCRIPT` and after a
/// broken connection; the scripts that only expire or delete still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_reply_inside_a_script_is_write_refused_on_every_path() {
    use Fault::*;
    let server = RedisServer::start_local().expect("local redis-server");
    for strategy in [ClaimStrategy::Script, ClaimStrategy::SetNxGet] {
        let (store, faulty) = faulty_store(&server, strategy).await;
        let raw = faulty.inner.clone();
        let paths: [&[Fault]; 3] = [&[], &[Flush], &[Broken, Flush]];
        for faults in paths {
            let what = format!("{strategy:?} {faults:?}");
            let k = key("oom");
            let r = claim_record();
            faulty.fresh(&[]).await;
            assert_eq!(
                store.try_claim(&k, &r, LEASE).await.unwrap(),
                Claim::Claimed
            );
            let config = |name: &'static str, value: &'static str| {
                let mut raw = raw.clone();
                async move {
                    redis::cmd("CONFIG")
                        .arg("SET")
                        .arg(name)
                        .arg(value)
                        .query_async::<()>(&mut raw)
                        .await
                        .unwrap();
                }
            };
            config("maxmemory-policy", "noeviction").await;
            config("maxmemory", "1").await;

            faulty.fresh(faults).await;
            let claimed = store
                .try_claim(&key("oom-new"), &claim_record(), LEASE)
                .await;
            assert!(
                matches!(claimed, Err(StoreError::WriteRefused { .. })),
                "claim {what}: {claimed:?}"
            );
            let done = completed(&r, StoredOutcome::new("x", None));
            faulty.fresh(faults).await;
            let fenced = store.complete(&k, &r.token, &done, RETENTION).await;
            assert!(
                matches!(fenced, Err(StoreError::WriteRefused { .. })),
                "complete {what}: {fenced:?}"
            );
            faulty.fresh(faults).await;
            assert_eq!(
                store.release(&k, &LeaseToken::generate()).await.unwrap(),
                Fenced::LeaseLost,
                "{what}"
            );
            faulty.fresh(faults).await;
            let extended = store.extend(&k, &r.token, LEASE).await;
            faulty.fresh(faults).await;
            let released = store.release(&k, &r.token).await;

            config("maxmemory", "0").await;
            // Expiring and deleting need no memory: answered under OOM as before.
            assert_eq!(extended.unwrap(), Fenced::Applied, "extend {what}");
            assert_eq!(released.unwrap(), Fenced::Applied, "release {what}");
            faulty.fresh(&[]).await;
            assert_eq!(store.get(&k).await.unwrap(), None, "{what}");
        }
    }
}
