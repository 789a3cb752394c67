//! newuser3 (new-user pass): `--help` says "Exit status: 0 every check passed, 1 a check
//! failed, 2 the probe could not run". Against an endpoint that refuses every connection the
//! probe ran nothing, yet it prints five FAIL rows and exits 1, so a CI job cannot tell "the
//! endpoint is not idempotent" from "the endpoint is not there". Fails today.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn an_endpoint_that_refuses_every_connection_exits_2() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let output = Command::new(env!("CARGO_BIN_EXE_idempotency-probe"))
        .args([
            "--url",
            &format!("http://127.0.0.1:{port}/x"),
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
