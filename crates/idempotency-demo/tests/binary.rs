//! The `idempotency-demo` binary: starts on the memory store with a warning, logs the store and
//! its URL, serves, and stops cleanly on SIGTERM; refuses to start without a distributed store
//! when asked to; logs a Redis URL without its password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const STORE_VARS: [&str; 15] = [
    "UPSTASH_REDIS_REST_URL",
    "UPSTASH_REDIS_REST_TOKEN",
    "KV_REST_API_URL",
    "KV_REST_API_TOKEN",
    "REDIS_URL",
    "KV_URL",
    "PORT",
    "DEMO_REQUIRE_DISTRIBUTED",
    "IDEMPOTENCY_STORE",
    "IDEMPOTENCY_RETENTION",
    "IDEMPOTENCY_LEASE",
    "IDEMPOTENCY_STORE_TIMEOUT",
    "IDEMPOTENCY_FAILURE_POLICY",
    "IDEMPOTENCY_WAIT_IN_PROGRESS",
    "DISABLE_IDEMPOTENCY_CHECKS",
];

fn demo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idempotency-demo"));
    for var in STORE_VARS {
        command.env_remove(var);
    }
    command
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Read stderr until the "listening" line; return everything read and the URL.
fn wait_listening(child: &mut Child) -> (String, String) {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("idempotency-demo listening") {
                let url = line
                    .split("url=")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_owned();
                tx.send((seen.clone(), url)).unwrap();
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the demo logs its URL")
}

fn stop(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the demo did not stop within 5 s of SIGTERM");
}

#[test]
fn starts_on_memory_with_a_warning_serves_and_stops_on_sigterm() {
    let mut child = demo().args(["--listen", "127.0.0.1:0"]).spawn().unwrap();
    let (log, url) = wait_listening(&mut child);
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("does NOT deduplicate"), "{log}");
    assert!(log.contains("store=memory"), "{log}");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let put = || {
            client
                .put(format!("{url}/api/products/tea"))
                .bearer_auth("alice")
                .header("idempotency-key", "bin-1")
                .body(r#"{"name":"Tea","price":450}"#)
        };
        let first = put().send().await.unwrap();
        assert_eq!(first.status(), 201);
        let first = first.bytes().await.unwrap();
        let retry = put().send().await.unwrap();
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(retry.bytes().await.unwrap(), first);
    });
    stop(&mut child);
}

#[test]
fn refuses_memory_when_a_distributed_store_is_required() {
    let output = demo()
        .args(["--listen", "127.0.0.1:0", "--require-distributed"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("a distributed idempotency store is required"),
        "{log}"
    );
}

/// A Redis that is down at start-up does not keep the service down: it starts, says so loudly,
/// and answers protected requests with the failure policy (fail closed: 503 + Retry-After)
/// until the store is back; the password is never shown.
#[test]
fn an_unreachable_redis_starts_and_answers_503_without_showing_its_password() {
    let mut child = demo()
        .args(["--listen", "127.0.0.1:0"])
        .env("REDIS_URL", "redis://:hunter2@127.0.0.1:1")
        .env("IDEMPOTENCY_STORE_TIMEOUT", "300ms")
        .spawn()
        .unwrap();
    let (log, url) = wait_listening(&mut child);
    assert!(log.contains("redis://:<redacted>@127.0.0.1:1"), "{log}");
    assert!(log.contains("NOT REACHABLE"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .put(format!("{url}/api/products/tea"))
            .bearer_auth("alice")
            .header("idempotency-key", "down-1")
            .body(r#"{"name":"Tea","price":450}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let body = response.text().await.unwrap();
        assert!(!body.contains("hunter2"), "{body}");
    });
    stop(&mut child);
}

/// The kill switch works in the emergency it exists for: the store is down and the service
/// still starts, running every request (no replays).
#[test]
fn the_kill_switch_starts_the_demo_with_the_store_down() {
    let mut child = demo()
        .args(["--listen", "127.0.0.1:0"])
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("DISABLE_IDEMPOTENCY_CHECKS", "true")
        .spawn()
        .unwrap();
    let (log, url) = wait_listening(&mut child);
    assert!(log.contains("not opened"), "{log}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..2 {
            let response = client
                .put(format!("{url}/api/products/tea"))
                .bearer_auth("alice")
                .header("idempotency-key", "kill-1")
                .body(r#"{"name":"Tea","price":450}"#)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            assert!(!response.headers().contains_key("idempotent-replayed"));
        }
    });
    stop(&mut child);
}

/// A setting that cannot be read stops start-up with its variable named.
#[test]
fn an_invalid_setting_stops_start_up_naming_the_variable() {
    for (variable, value) in [
        ("IDEMPOTENCY_LEASE", "soon"),
        ("IDEMPOTENCY_RETENTION", "0"),
        ("IDEMPOTENCY_FAILURE_POLICY", "maybe"),
        ("IDEMPOTENCY_STORE", "postgress"),
        // A kill-switch typo is not silently "checks on" (nor "off").
        ("DISABLE_IDEMPOTENCY_CHECKS", "flase"),
        ("DISABLE_IDEMPOTENCY_CHECKS", "ture"),
    ] {
        let output = demo()
            .args(["--listen", "127.0.0.1:0"])
            .env(variable, value)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{variable}={value}");
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(log.contains(variable), "{variable}: {log}");
        assert!(log.contains(value), "{variable}={value}: {log}");
    }
    // A retention shorter than the lease is refused as a combination.
    let output = demo()
        .args(["--listen", "127.0.0.1:0"])
        .env("IDEMPOTENCY_RETENTION", "10s")
        .env("IDEMPOTENCY_LEASE", "1m")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn a_body_that_stops_arriving_is_408_and_leaves_no_claim() {
    use std::io::{Read as _, Write as _};
    let mut child = demo()
        .args(["--listen", "127.0.0.1:0"])
        .env("DEMO_BODY_READ_TIMEOUT_MS", "300")
        .spawn()
        .unwrap();
    let (_, url) = wait_listening(&mut child);
    let addr = url.trim_start_matches("http://").to_owned();
    // Promise 40 bytes, send 1, then nothing.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice\r\n\
              Idempotency-Key: slow-1\r\nContent-Type: application/json\r\n\
              Content-Length: 40\r\n\r\n{",
        )
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // Nothing was claimed: the same key with a whole body runs (a product is needed first).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let made = client
            .put(format!("{url}/api/products/tea"))
            .bearer_auth("alice")
            .header("idempotency-key", "slow-p")
            .body(r#"{"name":"Tea","price":450}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), 201);
        let order = client
            .post(format!("{url}/api/orders"))
            .bearer_auth("alice")
            .header("idempotency-key", "slow-1")
            .body(r#"{"productId":"tea","quantity":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(order.status(), 201);
        assert!(!order.headers().contains_key("idempotent-replayed"));
    });
    stop(&mut child);
}
