//! newuser5 (new-user pass): bad input to the probe.
//!
//! - `--url http://` and `--url http://127.0.0.1:99999/x` are bad arguments, but the probe
//!   printed five FAIL rows ("request failed: builder error: empty host") and exited 1, the
//!   code for "the endpoint is not idempotent", not 2.
//! - `--concurrency 3000` against a server that times some of them out printed every failed
//!   duplicate's error in check (e)'s cell: one line of 43 KB for 129 copies of one message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::Duration;

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idempotency-probe"))
        .args(args)
        .output()
        .expect("run the probe")
}

fn show(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_url_without_a_host_or_with_a_bad_port_exits_2_before_any_check() {
    for url in ["http://", "http://127.0.0.1:99999/x", "http://:3000/x"] {
        let output = probe(&["--url", url, "--timeout-ms", "2000"]);
        assert_eq!(output.status.code(), Some(2), "{url}: {}", show(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("invalid URL"), "{url}: {}", show(&output));
        assert!(output.stdout.is_empty(), "{url}: {}", show(&output));
    }
}

/// A server that answers every request `500` with the same body: check (e)'s cell counts the
/// identical answers instead of listing each.
#[test]
fn identical_failed_answers_are_counted_in_one_short_cell() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the same failure every time",
        )
    });
    runtime.spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://127.0.0.1:{port}/x");
    let output = probe(&["--url", &url, "--concurrency", "200", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let detail = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "e")
        .map(|c| c["detail"].as_str().unwrap().to_owned())
        .unwrap();
    assert!(
        detail.contains("200 answers neither 2xx nor 409: 200 × 500 the same failure every time"),
        "{detail}"
    );
    assert!(detail.len() < 300, "{} bytes: {detail}", detail.len());
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// `--concurrency` is bounded: 30 000 duplicates took 112 s with `--timeout-ms 3000` (each one a
/// connection, queued in the client and the kernel). Over the bound is a bad argument (exit 2)
/// before any request; the bound itself is accepted by the parser.
#[test]
fn concurrency_over_the_bound_exits_2_before_any_request() {
    let over = (idempotency_probe::MAX_CONCURRENCY + 1).to_string();
    let output = probe(&["--url", "http://127.0.0.1:9/x", "--concurrency", &over]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--concurrency"),
        "{}",
        show(&output)
    );
    assert!(output.stdout.is_empty(), "{}", show(&output));
}
