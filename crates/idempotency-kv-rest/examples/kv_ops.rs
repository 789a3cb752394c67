//! A fixed number of store operations against a KV REST endpoint, on one thread: the client
//! half of the instruction counts in the crate's performance notes.
//!
//! ```text
//! cargo run --release -p idempotency-kv-rest --example kv_ops -- URL TOKEN fresh|replay N
//! valgrind --tool=callgrind target/release/examples/kv_ops URL TOKEN replay 2000
//! ```
//!
//! Run it twice with different `N` under `valgrind --tool=callgrind`: the difference of the
//! totals divided by the difference of `N` is the client's instructions per operation, without
//! start-up. `fresh` is one claim plus one completion per operation (two requests), `replay` one
//! claim that finds a completed record (one request).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use idempotency_core::{
    Claim, Completed, Fenced, Fingerprint, IdempotencyStore, InProgress, LeaseToken, StoreKey,
    StoredOutcome, unix_millis_now,
};
use idempotency_kv_rest::{KvRestConfig, KvRestStore};

const LEASE: Duration = Duration::from_secs(60);
const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

fn records() -> (InProgress, Completed) {
    let fingerprint = Fingerprint::builder()
        .part("POST")
        .part("/orders")
        .part("application/json")
        .part(r#"{"sku":"widget","qty":1}"#)
        .finish();
    let token = LeaseToken::generate();
    let now = unix_millis_now();
    let claim = InProgress {
        token,
        fingerprint,
        created_at_ms: now,
    };
    let done = Completed {
        token,
        fingerprint,
        created_at_ms: now,
        completed_at_ms: now,
        outcome: StoredOutcome::new(
            &br#"{"id":12345,"status":"created"}"#[..],
            Some("application/json".into()),
        ),
    };
    (claim, done)
}

async fn fresh(store: &KvRestStore, key: &StoreKey) {
    let (claim, done) = records();
    let claimed = store.try_claim(key, &claim, LEASE).await.unwrap();
    assert!(matches!(claimed, Claim::Claimed), "{claimed:?}");
    let applied = store
        .complete(key, &claim.token, &done, RETENTION)
        .await
        .unwrap();
    assert!(matches!(applied, Fenced::Applied), "{applied:?}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, token, scenario, n, tasks) = match &args[..] {
        [url, token, scenario, n] => (url, token, scenario, n, 1),
        [url, token, scenario, n, tasks] => (url, token, scenario, n, tasks.parse().unwrap()),
        _ => panic!("usage: kv_ops URL TOKEN fresh|replay N [TASKS]"),
    };
    let n: u64 = n.parse().expect("N is a number");
    let store = KvRestStore::new(
        KvRestConfig::new(url.as_str(), token.as_str())
            .unwrap()
            .operation_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    // One task: a current-thread runtime (exact counts under callgrind). More: two worker
    // threads, as the load generator runs its network cells.
    let runtime = if tasks == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let run = format!("kvops:{}:{}", std::process::id(), unix_millis_now());
    let started = std::time::Instant::now();
    runtime.block_on(async {
        let workers = (0..tasks).map(|task| {
            let store = store.clone();
            let scenario = scenario.clone();
            let run = format!("{run}:{task}");
            tokio::spawn(async move { work(&store, &scenario, &run, n).await })
        });
        for worker in workers.collect::<Vec<_>>() {
            worker.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    eprintln!("{} x {n} {scenario} operations in {elapsed:?}", tasks);
}

async fn work(store: &KvRestStore, scenario: &str, run: &str, n: u64) {
    match scenario {
        "fresh" => {
            for i in 0..n {
                fresh(store, &StoreKey::from_raw(format!("{run}:{i}"))).await;
            }
        }
        "replay" => {
            let key = StoreKey::from_raw(format!("{run}:fixed"));
            fresh(store, &key).await;
            let (claim, _) = records();
            for _ in 0..n {
                let existing = store.try_claim(&key, &claim, LEASE).await.unwrap();
                assert!(matches!(existing, Claim::Existing(_)), "{existing:?}");
            }
        }
        other => panic!("unknown scenario {other}"),
    }
}
