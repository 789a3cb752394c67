//! newuser3 (new-user pass): `--help` says "Exit status: 0 every check passed, 1 a check
//! failed, 2 the probe could not run". Against an endpoint that refuses every connection the
//! probe ran nothing, yet it prints five FAIL rows and exits 1, so a CI job cannot tell "the
//! endpoint is not idempotent" from "the endpoint is not there". Fails today.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use idempotency_testkit::RefusedPort;

#[test]
fn an_endpoint_that_refuses_every_connection_exits_2() {
    // Nothing listens there, and no other server takes the port while the test runs.
    let down = RefusedPort::new();
    let output = Command::new(env!("CARGO_BIN_EXE_idempotency-probe"))
        .args([
            "--url",
            &format!("http://{}/x", down.addr()),
            "--timeout-ms",
            "2000",
        ])
        .output()
        .expect("run the probe");
    assert_eq!(
        output.status.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_refusal_says_why_and_no_check_rows_are_printed() {
    let down = RefusedPort::new();
    let output = Command::new(env!("CARGO_BIN_EXE_idempotency-probe"))
        .args([
            "--url",
            &format!("http://{}/x", down.addr()),
            "--timeout-ms",
            "2000",
            "--json",
        ])
        .output()
        .expect("run the probe");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert!(output.stdout.is_empty(), "{:?}", output.stdout);
}

#[test]
fn zero_concurrency_and_zero_timeout_are_usage_errors() {
    for args in [
        ["--concurrency", "0"],
        ["--concurrency", "1"],
        ["--timeout-ms", "0"],
    ] {
        // clap refuses the value before any request is sent.
        let output = Command::new(env!("CARGO_BIN_EXE_idempotency-probe"))
            .args(["--url", "http://127.0.0.1:9/x"])
            .args(args)
            .output()
            .expect("run the probe");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error: invalid value"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn zero_latency_requests_are_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_idempotency-probe"))
        .args(["--url", "http://127.0.0.1:9/x", "--latency", "0"])
        .output()
        .expect("run the probe");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--latency"), "{stderr}");
    assert!(stderr.contains("error: invalid value"), "{stderr}");
    assert!(output.stdout.is_empty(), "{:?}", output.stdout);
}

/// A header argument without `:` is refused naming its position, without printing it (it may
/// be a credential typed without its name) and without a `<redacted>` placeholder.
#[test]
fn a_header_without_a_colon_is_named_by_its_position() {
    let output = Command::new(env!("CARGO_BIN_EXE_idempotency-probe"))
        .args(["--url", "http://127.0.0.1:9/x"])
        .args(["-H", "Accept: application/json", "-H", "Bearer-s3cret"])
        .output()
        .expect("run the probe");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("-H argument 2"), "{stderr}");
    assert!(stderr.contains("no `:`"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(!stderr.contains("redacted"), "{stderr}");
}
