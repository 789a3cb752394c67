//! The `idempotency-probe` binary against the demo, in-process on 127.0.0.1: exit status 0 and
//! a passing JSON report on the real app; exit status 1 and the failed checks on the same routes
//! without the layer; 2 for unusable arguments.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use idempotency::memory::MemoryStore;
use idempotency::{AnyStore, Idempotency};
use idempotency_demo::{AppState, app, serve, unprotected_app};

const BODY: &str = r#"{"name":"Tea","price":450}"#;

async fn start(protected: bool) -> String {
    let engine = Idempotency::builder(AnyStore::from(MemoryStore::new()))
        .ignore_env()
        .build()
        .unwrap();
    let state = AppState::new(engine, None);
    let router = if protected {
        app(state)
    } else {
        unprotected_app(state)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, router, std::future::pending()));
    url
}

async fn probe(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_idempotency-probe"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(base: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--url",
        &format!("{base}/api/products/bin"),
        "--method",
        "PUT",
        "--body",
        BODY,
        "-H",
        "Authorization: Bearer bin",
        "--concurrency",
        "4",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_and_json_follow_the_verdict() {
    let good = start(true).await;
    let broken = start(false).await;
    for (base, expect_ok) in [(&good, true), (&broken, false)] {
        let output = probe(args(base, &["--json"])).await;
        assert_eq!(
            output.status.code(),
            Some(if expect_ok { 0 } else { 1 }),
            "{output:?}"
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["passed"], expect_ok);
        assert_eq!(report["checks"].as_array().unwrap().len(), 5);
    }
    let table = probe(args(&broken, &[])).await;
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("FAIL") && text.contains("4 failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_arguments_exit_with_2() {
    let output = probe(vec!["--url".into(), "ftp://x".into()]).await;
    assert_eq!(output.status.code(), Some(2));
    let output = probe(args("http://127.0.0.1:1", &["-H", "Authorization secret"])).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("secret"), "{stderr}");
}

/// Without credentials the demo answers every request 401: the probe says it cannot run
/// (exit 2) instead of reporting five failed checks (exit 1), and prints no table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_401_is_cannot_run_exit_2() {
    let good = start(true).await;
    let mut no_credentials = args(&good, &[]);
    let at = no_credentials.iter().position(|a| a == "-H").unwrap();
    no_credentials.drain(at..at + 2);
    for extra in [&[][..], &["--json"]] {
        let mut run = no_credentials.clone();
        run.extend(extra.iter().map(|s| (*s).to_owned()));
        let output = probe(run).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        assert!(
            stderr.contains("cannot run: every request got 401 Unauthorized"),
            "{stderr}"
        );
        assert!(stderr.contains("-H"), "{stderr}");
        assert!(output.stdout.is_empty(), "{output:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_percentiles_are_reported_and_checked_against_the_budget() {
    let good = start(true).await;
    let output = probe(args(
        &good,
        &["--json", "--latency", "40", "--budget-ms", "5000"],
    ))
    .await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 6);
    assert_eq!(checks[5]["id"], "f");
    let latency = &report["latency"];
    for kind in ["fresh", "replay"] {
        assert_eq!(latency[kind]["count"], 40, "{latency}");
        let p50 = latency[kind]["p50_ms"].as_f64().unwrap();
        let p95 = latency[kind]["p95_ms"].as_f64().unwrap();
        let p99 = latency[kind]["p99_ms"].as_f64().unwrap();
        assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{latency}");
    }
    assert_eq!(latency["budget_p95_ms"], 5000.0);

    // A budget nothing can meet fails the run (exit 1) and says which side is over.
    let output = probe(args(&good, &["--latency", "5", "--budget-ms", "0.001"])).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("over the 0.00 ms budget"), "{table}");
    assert!(table.contains("p95"), "{table}");

    // An unusable budget is an argument error.
    let output = probe(args(&good, &["--latency", "5", "--budget-ms", "-1"])).await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}
