//! The binary's log output.

use crate::common::TOKEN;

/// stderr is a pipe here, not a terminal: the log lines carry no ANSI colour codes (they would
/// be noise in a log file or a collector).
#[test]
fn logs_without_colour_codes_when_stderr_is_not_a_terminal() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kv-rest-gateway"))
        // Neither NO_COLOR nor a terminal: only the terminal check can turn colour off.
        .env_clear()
        .env("RUST_LOG", "info")
        .env("KV_REST_GATEWAY_TOKEN", TOKEN)
        // An empty read-only token: the gateway logs an error and exits at once.
        .env("KV_REST_GATEWAY_READ_ONLY_TOKEN", "")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("ERROR"), "a log line was written: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
}
