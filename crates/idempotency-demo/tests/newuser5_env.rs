//! newuser5 (new-user pass): a bad `DEMO_*` variable stopped start-up with clap's message,
//! which names only the flag (`invalid value 'abc' for '--work-ms <WORK_MS>'`): an operator
//! who set `DEMO_WORK_MS` and never typed `--work-ms` was not told which setting was wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

/// The demo on an ephemeral port with no store in its environment (the memory store) and
/// `variable=value`.
fn demo_with(variable: &str, value: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idempotency-demo"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("REDIS_URL")
        .env_remove("KV_URL")
        .env_remove("UPSTASH_REDIS_REST_URL")
        .env_remove("KV_REST_API_URL")
        .env_remove("IDEMPOTENCY_STORE")
        .env("NO_COLOR", "1")
        .env(variable, value)
        .stdin(Stdio::null());
    command
}

fn start_with(variable: &str, value: &str) -> (Option<i32>, String) {
    let output = demo_with(variable, value).output().expect("run the demo");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_demo_variable_stops_start_up_naming_the_variable() {
    for (variable, value) in [
        ("DEMO_WORK_MS", "abc"),
        ("DEMO_AFTER_WRITE_MS", "-1"),
        ("DEMO_WAIT_IN_PROGRESS_MS", "1.5"),
        ("DEMO_REQUIRE_DISTRIBUTED", "maybe"),
        ("DEMO_MAX_CONNECTIONS", "many"),
        ("DEMO_HEADER_READ_TIMEOUT_MS", "10s"),
    ] {
        let (code, stderr) = start_with(variable, value);
        assert_eq!(code, Some(2), "{variable}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("{variable}={value:?} is not usable")),
            "{variable}={value}: {stderr}"
        );
    }
}

#[test]
fn a_bad_flag_is_still_clap_s_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_idempotency-demo"))
        .args(["--work-ms", "abc"])
        .env_remove("DEMO_WORK_MS")
        .output()
        .expect("run the demo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'--work-ms <WORK_MS>'"), "{stderr}");
    assert!(!stderr.contains("DEMO_WORK_MS="), "{stderr}");
}

/// `DEMO_IDLE_TIMEOUT_MS=0` started a demo that closed every connection before reading its
/// first request (curl: empty reply, no log line); a zero header or body timeout is as
/// unusable. Each is refused at start-up naming the variable.
#[test]
fn a_zero_timeout_or_connection_limit_stops_start_up_naming_the_variable() {
    for variable in [
        "DEMO_IDLE_TIMEOUT_MS",
        "DEMO_HEADER_READ_TIMEOUT_MS",
        "DEMO_BODY_READ_TIMEOUT_MS",
        "DEMO_MAX_CONNECTIONS",
    ] {
        let mut child = demo_with(variable, "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the demo");
        // A demo that accepted the value serves until stopped: give it a bounded time to exit.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "{variable}=0 was accepted: {stderr}"
        );
        assert!(
            stderr.contains(&format!("{variable}=\"0\" is not usable")),
            "{variable}=0: {stderr}"
        );
    }
}
