//! Quick timing: `RedisStore` claim + complete against the raw `redis` crate sending the same two
//! commands (`SET NX PX GET`, then `EVALSHA` of the completion script), on a local server.
//!
//! ```text
//! cargo run --release -p idempotency-redis --example compare_raw [-- <seconds per case>]
//! ```
//! Uses `IDEMPOTENCY_TEST_REDIS_URL` or starts a local `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_core::{
    Completed, Fingerprint, IdempotencyStore, InProgress, LeaseToken, Record, StoreKey,
    StoredOutcome, codec, lua,
};
use idempotency_redis::RedisStore;
use idempotency_redis::redis::{self, Script, aio::ConnectionManager};
use idempotency_testkit::fixtures::RedisServer;

const LEASE: Duration = Duration::from_secs(60);
const RETENTION: Duration = Duration::from_secs(600);

fn records(n: u64) -> (InProgress, Completed) {
    let claim = InProgress {
        token: LeaseToken::generate(),
        fingerprint: Fingerprint::of(n.to_string()),
        created_at_ms: 1,
    };
    let done = Completed {
        token: claim.token,
        fingerprint: claim.fingerprint,
        created_at_ms: 1,
        completed_at_ms: 2,
        outcome: StoredOutcome::new(
            &b"{\"id\":12345,\"status\":\"ok\"}"[..],
            Some("application/json".into()),
        ),
    };
    (claim, done)
}

async fn via_store(store: &RedisStore, key: &StoreKey, n: u64) {
    let (claim, done) = records(n);
    store.try_claim(key, &claim, LEASE).await.unwrap();
    store
        .complete(key, &claim.token, &done, RETENTION)
        .await
        .unwrap();
}

async fn via_raw(conn: &mut ConnectionManager, script: &Script, key: &StoreKey, n: u64) {
    let (claim, done) = records(n);
    let _: Option<Vec<u8>> = redis::cmd("SET")
        .arg(key.as_str())
        .arg(codec::encode(&Record::InProgress(claim.clone())))
        .arg("NX")
        .arg("PX")
        .arg(LEASE.as_millis() as u64)
        .arg("GET")
        .query_async(conn)
        .await
        .unwrap();
    let _: i64 = script
        .key(key.as_str())
        .arg(claim.token.to_hex())
        .arg(codec::encode(&Record::Completed(done)))
        .arg(RETENTION.as_millis() as u64)
        .invoke_async(conn)
        .await
        .unwrap();
}

struct Figures {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn run(
    tasks: usize,
    for_: Duration,
    raw: bool,
    store: &RedisStore,
    conn: &ConnectionManager,
) -> Figures {
    let script = Arc::new(Script::new(lua::COMPLETE));
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let mut conn = conn.clone();
        let script = Arc::clone(&script);
        let prefix = format!("bench:{}:{t}:", if raw { "raw" } else { "store" });
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while started.elapsed() < for_ {
                let key = StoreKey::from_raw(format!("{prefix}{n}"));
                let op = Instant::now();
                if raw {
                    via_raw(&mut conn, &script, &key, n).await;
                } else {
                    via_store(&store, &key, n).await;
                }
                latencies.push(op.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    Figures {
        ops_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
    }
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let server = RedisServer::start().expect("redis");
    let store = RedisStore::connect(server.url()).await.unwrap();
    let conn = store.connection().clone();
    println!(
        "claim + complete (2 round trips), {seconds} s per case, server {}",
        server.url()
    );
    println!("| client | tasks | ops/s | p50 | p99 |\n|---|---|---|---|---|");
    for tasks in [1, 16] {
        // Alternate so drift on a shared machine hits both sides alike.
        for raw in [true, false, true, false] {
            let f = run(
                tasks,
                Duration::from_secs_f64(seconds / 2.0),
                raw,
                &store,
                &conn,
            )
            .await;
            println!(
                "| {} | {tasks} | {:.0} | {:?} | {:?} |",
                if raw { "raw redis" } else { "RedisStore" },
                f.ops_per_sec,
                f.p50,
                f.p99
            );
        }
    }
}
