//! `idempotency-probe` against the demo: every check passes on the real app and the right ones
//! fail, with a readable table, on the same routes without the idempotency layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Demo};
use idempotency_probe::{ProbeConfig, run};

const BODY: &str = r#"{"name":"Tea","price":450}"#;

fn config(demo: &Demo) -> ProbeConfig {
    ProbeConfig::new(format!("{}/api/products/probe-tea", demo.url), BODY)
        .method("PUT")
        .unwrap()
        .header("Authorization: Bearer prober")
        .unwrap()
        .concurrency(8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_passes_against_the_demo() {
    let demo = Demo::start(Backend::Memory).await;
    let report = run(&config(&demo)).await.unwrap();
    println!("{}", report.table());
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.checks.len(), 5);
    // a: 1 run, b: 1, c: none (refused), d: none, e: 1.
    assert_eq!(demo.state.handler_runs(), 3);
    let json = report.to_json();
    assert_eq!(json["passed"], true);
    assert_eq!(json["checks"][4]["id"], "e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_passes_against_the_demo_on_redis() {
    let demo = Demo::start(Backend::Redis).await;
    let report = run(&config(&demo)).await.unwrap();
    assert!(report.passed(), "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_fails_a_service_without_the_layer() {
    let demo = Demo::start_unprotected().await;
    let report = run(&config(&demo)).await.unwrap();
    let table = report.table();
    println!("{table}");
    assert!(!report.passed());
    let verdicts: Vec<(&str, bool)> = report.checks.iter().map(|c| (c.id, c.passed)).collect();
    assert_eq!(
        verdicts,
        [
            ("a", false),
            ("b", true),
            ("c", false),
            ("d", false),
            ("e", false)
        ],
        "{table}"
    );
    assert!(table.contains("FAIL"));
    assert!(
        table.contains("no `Idempotent-Replayed: true` on the duplicate"),
        "{table}"
    );
    assert!(table.contains("expected 400"), "{table}");
    assert!(table.contains("expected 422"), "{table}");
    assert!(table.contains("8 of 8 answers executed"), "{table}");
    assert!(table.contains("5 checks: 1 passed, 4 failed"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reports_an_unreachable_endpoint_as_unreachable() {
    // Nothing listens on the port, and no other server takes it while the test runs.
    let down = idempotency_testkit::RefusedPort::new();
    let port = down.port();
    let config = ProbeConfig::new(format!("http://127.0.0.1:{port}/api/products/x"), BODY)
        .method("PUT")
        .unwrap()
        .timeout(std::time::Duration::from_secs(2));
    // No check could say anything about the endpoint: the probe could not run (exit 2), not
    // "checks failed" (exit 1).
    match run(&config).await {
        Err(idempotency_probe::ProbeError::Unreachable { url, detail }) => {
            assert!(url.contains(&port.to_string()), "{url}");
            assert!(!detail.is_empty());
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}
