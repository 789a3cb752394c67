//! Duplicate storms over real sockets on every backend: K keys × 8 concurrent copies of
//! `PUT /api/products/{id}`. Every key must run exactly once (each product's `version` advances
//! once per key) and every answer for one key must be byte-identical.
//!
//! Keys are sent in batches so at most `BATCH_KEYS × 8` requests are in flight. Sizes: 2 000
//! keys on memory and Redis, 500 through the KV REST gateway; `DEMO_STORM_KEYS=N` sets every
//! backend's size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use common::{Answer, Backend, Demo, send};
use reqwest::Method;

const DUPLICATES: usize = 8;
/// Keys per product: each product's version must end at exactly this.
const KEYS_PER_PRODUCT: usize = 10;
const BATCH_KEYS: usize = 32;

fn keys(default: usize) -> usize {
    std::env::var("DEMO_STORM_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn storm(backend: Backend, keys: usize) {
    // Warnings (a store error behind a 503, say) in the test's captured output: shown when it
    // fails.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let demo = Demo::start(backend).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(BATCH_KEYS * DUPLICATES)
        .build()
        .unwrap();
    let run = format!("{:08x}", rand::random::<u32>());
    let product_of = |k: usize| format!("storm-{run}-{}", k / KEYS_PER_PRODUCT);
    let started = Instant::now();
    // product → the version each key's execution produced.
    let mut versions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let (mut replays, mut conflicts) = (0usize, 0usize);
    for batch in (0..keys).collect::<Vec<_>>().chunks(BATCH_KEYS) {
        let requests = batch.iter().flat_map(|&k| {
            let url = format!("{}/api/products/{}", demo.url, product_of(k));
            let key = format!("{run}-key-{k}");
            let body = format!(r#"{{"name":"item {k}","price":{k}}}"#);
            let client = &client;
            (0..DUPLICATES).map(move |_| {
                let (url, key, body) = (url.clone(), key.clone(), body.clone());
                async move {
                    let answer = send(
                        client,
                        Method::PUT,
                        &url,
                        Some("storm"),
                        Some(&key),
                        Some(&body),
                    )
                    .await;
                    (k, answer)
                }
            })
        });
        let answers = futures::future::join_all(requests).await;
        let mut by_key: BTreeMap<usize, Vec<Answer>> = BTreeMap::new();
        for (k, answer) in answers {
            by_key.entry(k).or_default().push(answer);
        }
        for (k, answers) in by_key {
            assert_eq!(answers.len(), DUPLICATES);
            conflicts += answers.iter().filter(|a| a.status == 409).count();
            let ok: Vec<&Answer> = answers
                .iter()
                .filter(|a| (200..300).contains(&a.status))
                .collect();
            assert!(
                answers
                    .iter()
                    .all(|a| (200..300).contains(&a.status) || a.status == 409),
                "key {k}: unexpected answers {:?}; first unexpected: {:?}",
                answers.iter().map(|a| a.status).collect::<Vec<_>>(),
                answers
                    .iter()
                    .find(|a| !(200..300).contains(&a.status) && a.status != 409)
                    .map(|a| String::from_utf8_lossy(&a.body))
            );
            let executed: Vec<&&Answer> = ok.iter().filter(|a| !a.replayed).collect();
            assert_eq!(executed.len(), 1, "key {k}: {} executions", executed.len());
            replays += ok.len() - 1;
            let first = executed[0];
            for other in &ok {
                assert_eq!(other.status, first.status, "key {k}: status differs");
                assert_eq!(other.content_type, first.content_type, "key {k}");
                assert_eq!(other.body, first.body, "key {k}: body differs");
            }
            let version = first.json()["data"]["version"].as_u64().unwrap();
            assert!(
                versions.entry(product_of(k)).or_default().insert(version),
                "key {k}: version {version} produced twice"
            );
        }
    }
    let elapsed = started.elapsed();
    for (product, seen) in &versions {
        let count = (0..keys).filter(|&k| product_of(k) == *product).count() as u64;
        let expected: BTreeSet<u64> = (1..=count).collect();
        assert_eq!(seen, &expected, "{product}: versions seen");
        let id = product.as_str();
        assert_eq!(demo.state.product(id).unwrap().version, count, "{product}");
    }
    assert_eq!(demo.state.handler_runs(), keys as u64);
    let requests = keys * DUPLICATES;
    eprintln!(
        "storm {backend:?}: {keys} keys x {DUPLICATES} = {requests} requests in {elapsed:.2?} \
         ({:.0} req/s): {keys} executions, {replays} replays, {conflicts} x 409",
        requests as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_memory() {
    storm(Backend::Memory, keys(2000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_redis() {
    storm(Backend::Redis, keys(2000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_rest_via_gateway() {
    // Every store operation is an HTTP request to the (debug-built) gateway and then a Redis
    // command, about three times the cost of the other backends: 500 keys keep the test near
    // ten seconds. DEMO_STORM_KEYS=2000 runs the full size (about 40 s in a debug build).
    storm(Backend::Rest, keys(500)).await;
}
