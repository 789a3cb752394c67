//! Round trips: a fresh begin + complete through the engine is exactly two commands (`SET` +
//! `EVALSHA`), a replay exactly one (`SET`). Counted twice: by the client (a counting connection
//! under the store) and by the server (`INFO commandstats` deltas on a dedicated server, where
//! the fenced script's own `GET` + `SET` also show up, executed inside the one `EVALSHA`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use idempotency_core::{Begin, Fingerprint, Idempotency, IdempotencyKey, Scope, StoredOutcome};
use idempotency_redis::RedisStore;
use idempotency_redis::redis;
use idempotency_redis::redis::aio::{ConnectionLike, ConnectionManager};
use idempotency_redis::redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection that counts requests (each one is a round trip).
#[derive(Clone)]
struct Counting {
    inner: ConnectionManager,
    requests: Arc<AtomicUsize>,
}

impl ConnectionLike for Counting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
use idempotency_testkit::fixtures::RedisServer;

/// `cmdstat_<name>` → calls, from `INFO commandstats`, without the `INFO` calls themselves.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .filter(|(name, _)| name != "info")
        .collect()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(name, n)| {
            let d = n - before.get(name).copied().unwrap_or(0);
            (d > 0).then(|| (name.clone(), d))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn begin_complete_is_two_commands_and_a_replay_one() {
    let server = RedisServer::start_local().expect("a dedicated local redis-server");
    let manager = ConnectionManager::new(redis::Client::open(server.url()).unwrap())
        .await
        .unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counting = Counting {
        inner: manager,
        requests: Arc::clone(&requests),
    };
    let store = RedisStore::builder()
        .with_connection(counting)
        .await
        .unwrap();
    let engine = Idempotency::builder(store).ignore_env().build().unwrap();
    let mut probe = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let scope = Scope::new("tenant");
    let key = IdempotencyKey::new("count-me").unwrap();
    let fp = Fingerprint::of("request");

    let before = command_calls(&mut probe).await;
    requests.store(0, Ordering::SeqCst);
    let Begin::Run(guard) = engine.begin(&scope, &key, fp).await.unwrap() else {
        panic!("first attempt runs")
    };
    guard
        .complete(StoredOutcome::new("result", None))
        .await
        .unwrap();
    assert_eq!(
        requests.swap(0, Ordering::SeqCst),
        2,
        "client round trips of begin + complete"
    );
    let after_first = command_calls(&mut probe).await;
    let first = delta(&before, &after_first);
    assert_eq!(
        first,
        BTreeMap::from([
            // The claim (SET NX PX GET) and the completion script (EVALSHA, no SCRIPT LOAD or
            // EVAL: the script was loaded at connect)...
            ("evalsha".to_owned(), 1),
            // ...whose GET and SET run inside the script and are counted by the server too.
            ("get".to_owned(), 1),
            ("set".to_owned(), 2),
        ]),
        "server-side commands of a fresh begin + complete"
    );

    let Begin::Replay(outcome) = engine.begin(&scope, &key, fp).await.unwrap() else {
        panic!("replay")
    };
    assert_eq!(&outcome.body[..], b"result");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "client round trips of a replay"
    );
    let replay = delta(&after_first, &command_calls(&mut probe).await);
    assert_eq!(
        replay,
        BTreeMap::from([("set".to_owned(), 1)]),
        "server-side commands of a replay"
    );
}
